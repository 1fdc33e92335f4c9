# services.mergequeue: a merge queue, builder dispatcher and channel gate for Nix
# package sets. Documentation and complete examples: docs/nixos.md.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  inherit (lib)
    literalExpression
    mkDefault
    mkEnableOption
    mkIf
    mkOption
    mkPackageOption
    types
    ;

  cfg = config.services.mergequeue;
  format = pkgs.formats.toml { };

  stateDir = "/var/lib/mergequeue";
  credentialsDir = "/run/credentials/mergequeue.service";

  # TOML has no null: drop null values (and nulls nested in lists and tables) so
  # that unset optional keys fall back to the binary's defaults.
  dropNulls =
    value:
    if builtins.isAttrs value && !lib.isDerivation value then
      lib.mapAttrs (_: dropNulls) (lib.filterAttrs (_: v: v != null) value)
    else if builtins.isList value then
      map dropNulls (builtins.filter (v: v != null) value)
    else
      value;

  absolutePathNotInStore =
    what: path:
    [
      {
        assertion = lib.hasPrefix "/" path;
        message = "services.mergequeue: ${what} must be an absolute path, got \"${path}\".";
      }
      {
        assertion = !lib.isStorePath path && !lib.hasPrefix "${builtins.storeDir}/" path;
        message = "services.mergequeue: ${what} (${path}) is in the Nix store, which is world-readable. Use a path outside the store (agenix, sops-nix, or a file you provision).";
      }
    ];

  # ---- builders ---------------------------------------------------------------

  builderModule =
    { config, ... }:
    {
      options = {
        hostName = mkOption {
          type = types.str;
          example = "builder1.example.org";
          description = ''
            Host name of the builder, as in {option}`nix.buildMachines.*.hostName`.
            `localhost` with `protocol = null` means the local Nix store (via the
            nix-daemon).
          '';
        };
        protocol = mkOption {
          type = types.nullOr (
            types.enum [
              "ssh"
              "ssh-ng"
            ]
          );
          default = "ssh-ng";
          description = ''
            Store protocol. `ssh-ng` is recommended (it reports build logs and
            failures precisely). `null` is only meaningful for `localhost`.
          '';
        };
        system = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "aarch64-linux";
          description = "Single system type of the builder; merged with {option}`systems`.";
        };
        systems = mkOption {
          type = types.listOf types.str;
          default = [ ];
          example = [
            "x86_64-linux"
            "i686-linux"
          ];
          description = ''
            System types the builder can build. When both this and {option}`system`
            are empty, the coordinator's own system is used.
          '';
        };
        sshUser = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "nix-ssh";
          description = ''
            User to log in as. On the builder this user must be in
            {option}`nix.settings.trusted-users` (the coordinator copies unsigned
            derivations to it); {option}`services.mergequeue-builder` sets that up.
          '';
        };
        sshKey = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "/etc/nix/builder_ed25519";
          description = ''
            Private SSH key for this builder: an absolute path **outside the Nix
            store**, readable by root (it is read by systemd and handed to the
            service with `LoadCredential=`, so it may be mode 0400 root:root).
            `null` uses the service user's default key in `${stateDir}/.ssh`.
          '';
        };
        publicHostKey = mkOption {
          type = types.nullOr types.str;
          default = null;
          description = ''
            The builder's SSH host public key, base64-encoded
            (`base64 -w0 /etc/ssh/ssh_host_ed25519_key.pub`), as in
            {option}`nix.buildMachines.*.publicHostKey`. Pins the host key; otherwise
            it must be known through {option}`programs.ssh.knownHosts`.
          '';
        };
        publicKey = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "builder1-1:uNmm7H1HL2T/84W0ZqEzM1RX3HtQmm1BDu3CacAoHMU=";
          description = ''
            Public half of the key the builder signs what it builds with
            ({option}`services.mergequeue-builder.signingKeyFile` there). Added to
            this machine's `trusted-public-keys`: the service is not a trusted Nix
            user, so the local nix-daemon (`require-sigs = true`, the default)
            imports the builder's outputs only with a signature it trusts. Without
            it, every build on this builder ends as an infrastructure failure that
            says so (docs/builders.md, "Trust and signing").
          '';
        };
        maxJobs = mkOption {
          type = types.ints.positive;
          default = 1;
          description = "Number of builds the coordinator runs on this builder at once.";
        };
        speedFactor = mkOption {
          type = types.ints.positive;
          default = 1;
          description = "Relative speed; faster builders are preferred.";
        };
        supportedFeatures = mkOption {
          type = types.listOf types.str;
          default = [ ];
          example = [
            "kvm"
            "big-parallel"
          ];
          description = "System features the builder supports.";
        };
        mandatoryFeatures = mkOption {
          type = types.listOf types.str;
          default = [ ];
          description = "Features a derivation must require to be built on this builder.";
        };
        storeParameters = mkOption {
          type = types.attrsOf types.str;
          default = { };
          example = {
            remote-store = "local?root=/var/lib/builder-store";
            compress = "true";
          };
          description = "Extra Nix store URI parameters appended to the builder URI.";
        };
      };
      config = lib.mkIf (config.hostName == "localhost") {
        protocol = lib.mkDefault null;
      };
    };

  # Credential names are derived from the key path, so builders sharing a key share
  # one credential.
  keyCredential = path: "ssh-key-${builtins.substring 0 12 (builtins.hashString "sha256" path)}";

  percentEncode =
    builtins.replaceStrings
      [
        "%"
        "+"
        "/"
        "="
        "&"
        "?"
        " "
      ]
      [
        "%25"
        "%2B"
        "%2F"
        "%3D"
        "%26"
        "%3F"
        "%20"
      ];

  allBuilders =
    cfg.builders
    ++ lib.optionals cfg.useNixBuildMachines (
      map (m: {
        inherit (m)
          hostName
          sshUser
          sshKey
          maxJobs
          speedFactor
          supportedFeatures
          mandatoryFeatures
          publicHostKey
          ;
        protocol = m.protocol or "ssh";
        # nix.buildMachines has no signing key: trust it in nix.settings yourself.
        publicKey = null;
        system = m.system or null;
        systems = m.systems or [ ];
        storeParameters = { };
      }) config.nix.buildMachines
    );

  builderToSettings =
    b:
    let
      isLocal = b.protocol == null && b.hostName == "localhost";
      params =
        b.storeParameters
        // lib.optionalAttrs (b.publicHostKey != null) {
          base64-ssh-public-host-key = b.publicHostKey;
        };
      query = lib.concatStringsSep "&" (
        lib.mapAttrsToList (k: v: "${k}=${percentEncode v}") params
      );
      protocol = if b.protocol == null then "ssh" else b.protocol;
      user = lib.optionalString (b.sshUser != null) "${b.sshUser}@";
      systems = lib.unique (lib.optional (b.system != null) b.system ++ b.systems);
    in
    {
      uri =
        if isLocal then "local" else "${protocol}://${user}${b.hostName}${lib.optionalString (query != "") "?${query}"}";
      systems = if systems == [ ] then [ pkgs.stdenv.hostPlatform.system ] else systems;
      max_jobs = b.maxJobs;
      speed_factor = b.speedFactor;
      supported_features = b.supportedFeatures;
      mandatory_features = b.mandatoryFeatures;
    }
    # settings.builders entries are freeform TOML, which has no null.
    // lib.optionalAttrs (b.sshKey != null && !isLocal) {
      ssh_key = "${credentialsDir}/${keyCredential b.sshKey}";
    };

  builderPublicKeys = lib.unique (lib.filter (k: k != null) (map (b: b.publicKey) allBuilders));

  builderKeys = lib.unique (
    lib.filter (k: k != null) (
      map (b: if b.protocol == null && b.hostName == "localhost" then null else b.sshKey) allBuilders
    )
  );

  credentials =
    lib.optionalAttrs (cfg.apiTokenFile != null) { api-token = cfg.apiTokenFile; }
    // lib.optionalAttrs (cfg.gitSshKeyFile != null) { git-ssh-key = cfg.gitSshKeyFile; }
    // lib.listToAttrs (map (k: lib.nameValuePair (keyCredential k) k) builderKeys)
    // forgeCredentials
    // notifyCredentials
    // lib.optionalAttrs (cfg.cache.secretKeyFile != null) { cache-key = cfg.cache.secretKeyFile; }
    // cfg.credentials;

  # The notifier's secrets (docs/breakage.md), delivered as credentials.
  notifyCredentials =
    lib.optionalAttrs (cfg.notify.smtpPasswordFile != null) { smtp-password = cfg.notify.smtpPasswordFile; }
    // lib.optionalAttrs (cfg.notify.webhookSecretFile != null) {
      notify-webhook-secret = cfg.notify.webhookSecretFile;
    };

  # settings.notify with the secrets as credential paths.
  renderNotify =
    n:
    n
    // lib.optionalAttrs (cfg.notify.smtpPasswordFile != null) {
      email = (n.email or { }) // { password_file = "${credentialsDir}/smtp-password"; };
    }
    // lib.optionalAttrs (cfg.notify.webhookSecretFile != null) {
      webhook = (n.webhook or { }) // { secret_file = "${credentialsDir}/notify-webhook-secret"; };
    };

  # ---- settings ---------------------------------------------------------------

  branchModule = {
    freeformType = format.type;
    options = {
      name = mkOption {
        type = types.str;
        example = "master";
        description = "Target branch that the merge queue advances.";
      };
      batch_max = mkOption {
        type = types.ints.positive;
        default = 8;
        description = "Most changes tested together in one candidate.";
      };
      required = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "tested" ];
        description = "Attribute paths that must build on every landed commit.";
      };
      window = mkOption {
        type = types.nullOr types.ints.positive;
        default = null;
        example = 4;
        description = "Candidates in flight at once, each built on top of the one ahead (speculation). `null`: the service's default, 1.";
      };
      mass_rebuild_threshold = mkOption {
        type = types.nullOr types.ints.positive;
        default = null;
        example = 1000;
        description = "A change rebuilding at least this many jobs on some system goes through the mass-rebuild stage first. `null`: no stage.";
      };
    };
  };

  # A repository's pull requests on GitHub, Gitea or Forgejo (docs/forge.md). The
  # secrets are files outside the store, delivered as credentials named after the repo.
  forgeModule = {
    freeformType = format.type;
    options = {
      kind = mkOption {
        type = types.enum [
          "github"
          "gitea"
          "forgejo"
        ];
        description = "Which forge hosts the repository.";
      };
      api_url = mkOption {
        type = types.str;
        example = "https://codeberg.org/api/v1";
        description = "GitHub: the REST root (`https://api.github.com`); Gitea and Forgejo: the `/api/v1` root.";
      };
      repository = mkOption {
        type = types.strMatching "[^/]+/[^/]+";
        example = "NixOS/nixpkgs";
        description = "`OWNER/NAME` on the forge.";
      };
      bot = mkOption {
        type = types.str;
        default = "mergequeue";
        description = "The login commands address (`@mergequeue r+`).";
      };
      tokenFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/run/secrets/forge-token";
        description = ''
          A Gitea/Forgejo token or a GitHub token, in a file outside the Nix store;
          delivered as the credential `forge-REPO-token`. Give this or
          {option}`appId` with {option}`appPrivateKeyFile`.
        '';
      };
      webhookSecretFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/run/secrets/webhook-secret";
        description = ''
          The secret the forge signs webhook deliveries with, in a file outside the
          Nix store; delivered as the credential `forge-REPO-webhook-secret`. Without it
          every delivery is refused.
        '';
      };
      appId = mkOption {
        type = types.nullOr types.ints.positive;
        default = null;
        example = 123456;
        description = "A GitHub App's id: the App authenticates instead of a token.";
      };
      appPrivateKeyFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/run/secrets/github-app.pem";
        description = ''
          The GitHub App's private key (PEM), in a file outside the Nix store;
          delivered as the credential `forge-REPO-app-key`.
        '';
      };
      installationId = mkOption {
        type = types.nullOr types.ints.positive;
        default = null;
        description = "The App's installation; looked up from the repository when unset.";
      };
      queue_label = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "merge-queue";
        description = "Adding this label (by a user with write access) queues a pull request; removing it cancels.";
      };
      resync_secs = mkOption {
        type = types.ints.positive;
        default = 300;
        description = "Seconds between reconciliations of the open pull requests with the queue (also at start).";
      };
    };
  };

  forgeSecrets = [
    {
      option = "tokenFile";
      key = "token_file";
      suffix = "token";
    }
    {
      option = "webhookSecretFile";
      key = "webhook_secret_file";
      suffix = "webhook-secret";
    }
    {
      option = "appPrivateKeyFile";
      key = "app_private_key_file";
      suffix = "app-key";
    }
  ];

  # name = path of every forge secret, for LoadCredential.
  forgeCredentials = lib.listToAttrs (
    lib.concatMap (
      r:
      lib.optionals (r.forge != null) (
        lib.concatMap (
          sec:
          lib.optional (r.forge.${sec.option} != null) (
            lib.nameValuePair "forge-${r.name}-${sec.suffix}" r.forge.${sec.option}
          )
        ) forgeSecrets
      )
    ) cfg.settings.repos
  );

  # The forge table as the binary reads it: secrets as credential paths.
  renderForge =
    name: f:
    builtins.removeAttrs f (
      map (sec: sec.option) forgeSecrets
      ++ [
        "appId"
        "installationId"
      ]
    )
    // lib.listToAttrs (
      lib.concatMap (
        sec:
        lib.optional (f.${sec.option} != null) (
          lib.nameValuePair sec.key "${credentialsDir}/forge-${name}-${sec.suffix}"
        )
      ) forgeSecrets
    )
    // lib.optionalAttrs (f.appId != null) { app_id = f.appId; }
    // lib.optionalAttrs (f.installationId != null) { installation_id = f.installationId; };

  renderRepo = r: r // { forge = if r.forge == null then null else renderForge r.name r.forge; };

  repoModule = {
    freeformType = format.type;
    options = {
      name = mkOption {
        type = types.strMatching "[^/]+";
        example = "nixpkgs";
        description = "Name used in the API (`/api/v1/repos/<name>/...`) and by channels.";
      };
      url = mkOption {
        type = types.str;
        example = "ssh://git@git.example.org/nixpkgs.git";
        description = ''
          Any URL the git CLI can fetch from (and push to, for queued branches).
          SSH URLs use {option}`services.mergequeue.gitSshKeyFile`.
        '';
      };
      jobset = mkOption {
        type = types.str;
        default = "release.nix";
        description = "File in the repository that evaluates to an attribute set of derivations.";
      };
      systems = mkOption {
        type = types.listOf types.str;
        default = [ pkgs.stdenv.hostPlatform.system ];
        defaultText = literalExpression "[ pkgs.stdenv.hostPlatform.system ]";
        description = "Systems the jobset is evaluated for.";
      };
      branches = mkOption {
        type = types.listOf (types.submodule branchModule);
        default = [ ];
        description = "Branches with a merge queue. Empty for a repository that only feeds channels.";
      };
      forge = mkOption {
        type = types.nullOr (types.submodule forgeModule);
        default = null;
        description = "Pull requests on GitHub, Gitea or Forgejo drive this repository's queue (docs/forge.md).";
      };
    };
  };

  channelModule = {
    freeformType = format.type;
    options = {
      name = mkOption {
        type = types.str;
        example = "nixos-unstable";
        description = "Channel name, used in the API (`/api/v1/channels/<name>`).";
      };
      repo = mkOption {
        type = types.str;
        description = "Name of an entry in {option}`settings.repos`.";
      };
      source = mkOption {
        type = types.str;
        example = "master";
        description = "Branch the channel follows.";
      };
      target = mkOption {
        type = types.str;
        example = "nixos-unstable";
        description = ''
          Branch the channel advances (only forward, only to commits whose gate
          built), in the repository's URL or in {option}`remote`.
        '';
      };
      gate = mkOption {
        type = types.listOf types.str;
        example = [ "tested" ];
        description = "Attribute paths that must build before the channel moves.";
      };
      remote = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "git@github.com:alice/nixpkgs-channels.git";
        description = ''
          Push the target branch here instead of to the repository's URL: a channel
          over an upstream you do not own.
        '';
      };
      min_interval_secs = mkOption {
        type = types.ints.unsigned;
        default = 0;
        description = "Move the channel at most this often.";
      };
      artifacts_dir = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = ''
          Directory for channel artifacts. Paths outside `${stateDir}` are added to
          the unit's `ReadWritePaths` and must exist.
        '';
      };
    };
  };

  settingsModule = {
    freeformType = format.type;
    options = {
      state_dir = mkOption {
        type = types.str;
        description = ''
          SQLite database, git mirrors and logs. Defaults to `${stateDir}`, the unit's
          `StateDirectory`; another location is added to `ReadWritePaths` and must
          exist and be writable by {option}`services.mergequeue.user`.
        '';
      };
      listen = mkOption {
        type = types.strMatching ".*:[0-9]+";
        description = ''
          `ADDRESS:PORT` of the HTTP API and `/metrics`. Defaults to
          `127.0.0.1:8080`; see {option}`services.mergequeue.openFirewall`.
        '';
        example = "[::]:8080";
      };
      nix = mkOption {
        type = types.submodule {
          freeformType = format.type;
          options = {
            options = mkOption {
              type = types.attrsOf types.str;
              description = ''
                Passed as `--option NAME VALUE` to every nix command. The module
                default is `{ }` (the system's {file}`nix.conf` applies). Note the
                binary's own default, used without the module, disables substituters.
              '';
              example = {
                substituters = "https://cache.example.org";
                max-jobs = "0";
              };
            };
            evaluator = mkOption {
              type = types.enum [
                "auto"
                "nix-eval-jobs"
                "nix-instantiate"
              ];
              description = "Evaluator: `auto` uses nix-eval-jobs when it is on the service's PATH.";
            };
            eval_workers = mkOption {
              type = types.ints.unsigned;
              description = "nix-eval-jobs worker processes (0: one per core, at most 8). Default 0.";
            };
            eval_max_memory_mib = mkOption {
              type = types.ints.unsigned;
              description = "Memory one nix-eval-jobs worker may use before it is restarted, MiB (0: nix-eval-jobs' default). Default 4096.";
            };
            max_silent_time_secs = mkOption {
              type = types.ints.unsigned;
              description = "Kill a build that prints nothing for this long (0: no limit). Default 10800.";
            };
            build_timeout_secs = mkOption {
              type = types.ints.unsigned;
              description = "Kill a build that runs longer than this (0: no limit). Default 36000.";
            };
            failure_ttl_secs = mkOption {
              type = types.ints.unsigned;
              description = "How long a genuine build failure is remembered. Default 86400.";
            };
          };
        };
        default = { };
        description = "How nix is run.";
      };
      repos = mkOption {
        type = types.listOf (types.submodule repoModule);
        default = [ ];
        description = "Repositories: where changes land and what channels follow.";
      };
      builders = mkOption {
        type = types.listOf (types.submodule { freeformType = format.type; });
        default = [ ];
        description = ''
          Raw `[[builders]]` entries (`uri`, `systems`, `max_jobs`, ...). Entries from
          {option}`services.mergequeue.builders` are appended here; prefer that
          option, which also delivers SSH keys as credentials.
        '';
      };
      channels = mkOption {
        type = types.listOf (types.submodule channelModule);
        default = [ ];
        description = "Gated channels.";
      };
    };
  };

  renderedSettings = dropNulls (
    cfg.settings
    // { repos = map renderRepo cfg.settings.repos; }
    // lib.optionalAttrs (cfg.settings ? notify) { notify = renderNotify cfg.settings.notify; }
    // lib.optionalAttrs (cfg.settings ? cache && cfg.cache.secretKeyFile != null) {
      cache = cfg.settings.cache // { secret_key_file = "${credentialsDir}/cache-key"; };
    }
  );
  generatedConfig = format.generate "mergequeue.toml" renderedSettings;

  # Build-time validation, following atticd's checkedConfigFile. check-config only
  # parses and validates: it needs neither the state directory nor the secrets.
  checkedConfig =
    pkgs.runCommand "mergequeue-checked.toml"
      {
        configToCheck = generatedConfig;
        nativeBuildInputs = [ cfg.package ];
        preferLocalBuild = true;
      }
      ''
        mergequeue check-config --config "$configToCheck"
        cp "$configToCheck" "$out"
      '';

  listenPort = lib.toInt (lib.last (lib.splitString ":" cfg.settings.listen));

  extraWritable = lib.filter (p: p != null && !(lib.hasPrefix "${stateDir}/" p) && p != stateDir) (
    [ cfg.settings.state_dir ] ++ map (c: c.artifacts_dir) cfg.settings.channels
  );
in
{
  imports = [ ./builder.nix ];

  options.services.mergequeue = {
    enable = mkEnableOption "mergequeue, a merge queue, builder dispatcher and channel gate for Nix package sets";

    package = mkPackageOption pkgs "mergequeue" {
      extraDescription = ''
        nixpkgs has no mergequeue; the flake's `nixosModules.default` sets this to
        the flake's package, and `overlays.default` provides `pkgs.mergequeue`.
      '';
    };

    settings = mkOption {
      type = types.submodule settingsModule;
      default = { };
      description = ''
        Configuration rendered to TOML (see `docs/configuration.md`); unknown keys are
        rejected by `mergequeue check-config` at build time. Never put secrets here:
        the file is in the world-readable Nix store.
      '';
      example = literalExpression ''
        {
          listen = "[::]:8080";
          repos = [{
            name = "nixpkgs";
            url = "ssh://git@git.example.org/nixpkgs.git";
            branches = [{ name = "master"; required = [ "tested" ]; }];
          }];
          channels = [{
            name = "nixos-unstable"; repo = "nixpkgs";
            source = "master"; target = "nixos-unstable"; gate = [ "tested" ];
          }];
        }
      '';
    };

    configFile = mkOption {
      type = types.path;
      default = if cfg.checkConfig then checkedConfig else generatedConfig;
      defaultText = literalExpression "generated from settings and checked with `mergequeue check-config`";
      description = ''
        The configuration file the service runs with. Set it to use a hand-written
        file instead of {option}`settings`; secrets still come from the `*File`
        options through `$CREDENTIALS_DIRECTORY`.
      '';
    };

    checkConfig = mkOption {
      type = types.bool;
      default = true;
      description = "Validate the generated file with `mergequeue check-config` at build time.";
    };

    apiTokenFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/secrets/mergequeue-api-token";
      description = ''
        File holding the bearer token for write requests (`POST /api/v1/...`). An
        absolute path outside the Nix store, read by systemd and passed as the
        credential `api-token`. Without it every write request is refused.
      '';
    };

    gitSshKeyFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/secrets/mergequeue-git-key";
      description = ''
        Private SSH key git uses to fetch and push (`GIT_SSH_COMMAND`). An absolute
        path outside the Nix store, passed as the credential `git-ssh-key`. Host keys
        come from {option}`programs.ssh.knownHosts`.
      '';
    };

    credentials = mkOption {
      type = types.attrsOf types.str;
      default = { };
      example = {
        forge-token = "/run/secrets/forge-token";
      };
      description = ''
        Further secrets, `name = path`, delivered with `LoadCredential=name:path`; the
        binary reads `$CREDENTIALS_DIRECTORY/name`. Paths must be outside the store.
      '';
    };

    notify = {
      smtpPasswordFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/run/secrets/mergequeue-smtp-password";
        description = ''
          Password for the SMTP relay of {option}`settings.notify.email` (with its
          `username`). An absolute path outside the Nix store, passed as the credential
          `smtp-password` and rendered as `password_file`; read at each mail, so a
          rotated password needs no restart.
        '';
      };
      webhookSecretFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/run/secrets/mergequeue-notify-webhook";
        description = ''
          Secret that signs the notification webhook's bodies
          (`X-Mergequeue-Signature: sha256=HMAC`, {option}`settings.notify.webhook`).
          An absolute path outside the Nix store, passed as the credential
          `notify-webhook-secret` and rendered as `secret_file`.
        '';
      };
    };

    nixEvalJobs = {
      enable = mkEnableOption ''
        evaluation with nix-eval-jobs: several worker processes, each restarted past a
        memory limit ({option}`settings.nix.eval_workers`,
        {option}`settings.nix.eval_max_memory_mib`). Puts it on the service's PATH and
        makes it the evaluator (`settings.nix.evaluator`, overridable)
      '';
      package = mkPackageOption pkgs "nix-eval-jobs" { };
    };

    cache.secretKeyFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/secrets/mergequeue-cache-key";
      description = ''
        Signing key of the binary cache of {option}`settings.cache` (from
        `nix-store --generate-binary-cache-key NAME FILE FILE.pub`): every uploaded path
        carries its signature, and users trust its public half. An absolute path outside
        the Nix store, passed as the credential `cache-key` and rendered as
        `secret_key_file`. A `file://` cache under the state directory
        (`file:///var/lib/mergequeue/cache`) is writable by the service as it is.
      '';
    };

    builders = mkOption {
      type = types.listOf (types.submodule builderModule);
      default = [ ];
      description = ''
        Builders in {option}`nix.buildMachines` form. The service chooses among
        them itself (it is not a Nix trusted user); SSH keys are passed as
        credentials. Rendered into `settings.builders`.
      '';
      example = literalExpression ''
        [{
          hostName = "builder1.example.org";
          sshUser = "nix-ssh";
          sshKey = "/etc/nix/builder_ed25519";
          systems = [ "x86_64-linux" ];
          maxJobs = 8;
          supportedFeatures = [ "kvm" "big-parallel" ];
          publicHostKey = "c3NoLWVkMjU1MTkg...";
        }]
      '';
    };

    useNixBuildMachines = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Also dispatch to every entry of {option}`nix.buildMachines`, so an existing
        fleet definition works unchanged. Their `sshKey`s must be readable by root.
      '';
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the TCP port of {option}`settings.listen` in the firewall.";
    };

    user = mkOption {
      type = types.str;
      default = "mergequeue";
      description = "User the service runs as; created when left at the default.";
    };

    group = mkOption {
      type = types.str;
      default = "mergequeue";
      description = "Group the service runs as; created when left at the default.";
    };

    watchdogSec = mkOption {
      type = types.ints.unsigned;
      default = 60;
      description = "systemd `WatchdogSec=`; the service pings at half this interval. 0 disables.";
    };

    verbose = mkOption {
      type = types.bool;
      default = false;
      description = "Log at debug level.";
    };
  };

  config = mkIf cfg.enable {
    services.mergequeue.settings = {
      state_dir = mkDefault stateDir;
      listen = mkDefault "127.0.0.1:8080";
      nix = {
        options = mkDefault { };
        evaluator = mkDefault (if cfg.nixEvalJobs.enable then "nix-eval-jobs" else "auto");
        eval_workers = mkDefault 0;
        eval_max_memory_mib = mkDefault 4096;
        max_silent_time_secs = mkDefault 10800;
        build_timeout_secs = mkDefault 36000;
        failure_ttl_secs = mkDefault 86400;
      };
      builders = map builderToSettings allBuilders;
    };

    assertions =
      lib.concatMap (f: absolutePathNotInStore "apiTokenFile" f) (lib.optional (cfg.apiTokenFile != null) cfg.apiTokenFile)
      ++ lib.concatMap (f: absolutePathNotInStore "gitSshKeyFile" f) (
        lib.optional (cfg.gitSshKeyFile != null) cfg.gitSshKeyFile
      )
      ++ lib.concatMap (k: absolutePathNotInStore "builder sshKey" k) builderKeys
      ++ lib.concatLists (lib.mapAttrsToList (n: f: absolutePathNotInStore "credentials.${n}" f) cfg.credentials)
      ++ lib.concatLists (lib.mapAttrsToList (n: f: absolutePathNotInStore "the forge secret ${n}" f) forgeCredentials)
      ++ lib.concatLists (lib.mapAttrsToList (n: f: absolutePathNotInStore "notify secret ${n}" f) notifyCredentials)
      ++ lib.concatMap (f: absolutePathNotInStore "cache.secretKeyFile" f) (
        lib.optional (cfg.cache.secretKeyFile != null) cfg.cache.secretKeyFile
      )
      ++ [
        {
          assertion = !(cfg.settings.notify.email or { } ? password_file) && !(cfg.settings.notify.webhook or { } ? secret_file);
          message = "services.mergequeue: give the notifier's secrets as notify.smtpPasswordFile and notify.webhookSecretFile (delivered as credentials), not as settings.notify.*.";
        }
        {
          assertion = !(cfg.settings.cache or { } ? secret_key_file);
          message = "services.mergequeue: give the cache's signing key as cache.secretKeyFile (delivered as a credential), not as settings.cache.secret_key_file.";
        }
        {
          assertion = (cfg.settings ? cache) == (cfg.cache.secretKeyFile != null);
          message = "services.mergequeue: settings.cache (the binary cache) and cache.secretKeyFile (its signing key) go together.";
        }
        {
          assertion = cfg.notify.smtpPasswordFile == null || cfg.settings.notify.email or null != null;
          message = "services.mergequeue: notify.smtpPasswordFile needs settings.notify.email (the relay it is for).";
        }
        {
          assertion = cfg.notify.webhookSecretFile == null || cfg.settings.notify.webhook or null != null;
          message = "services.mergequeue: notify.webhookSecretFile needs settings.notify.webhook (the hook it signs for).";
        }
      ]
      ++ lib.concatMap (
        r:
        lib.optionals (r.forge != null) [
          {
            assertion = lib.all (sec: !(r.forge ? ${sec.key})) forgeSecrets;
            message = "services.mergequeue: repo ${r.name}: give the forge's secrets as tokenFile, webhookSecretFile and appPrivateKeyFile (delivered as credentials), not as settings.";
          }
          {
            assertion = (r.forge.appId == null) == (r.forge.appPrivateKeyFile == null);
            message = "services.mergequeue: repo ${r.name}: a GitHub App needs both forge.appId and forge.appPrivateKeyFile.";
          }
        ]
      ) cfg.settings.repos
      ++ [
        {
          assertion = !(cfg.settings ? api_token_file);
          message = "services.mergequeue: do not set settings.api_token_file; use services.mergequeue.apiTokenFile (delivered as a credential).";
        }
        {
          assertion = lib.all (b: b.protocol != null || b.hostName == "localhost") allBuilders;
          message = "services.mergequeue.builders: protocol = null is only valid for hostName = \"localhost\".";
        }
        {
          assertion = lib.all (c: lib.any (r: r.name == c.repo) cfg.settings.repos) cfg.settings.channels;
          message = "services.mergequeue.settings.channels: every channel's repo must name an entry of settings.repos.";
        }
      ];

    warnings = lib.optional (
      cfg.apiTokenFile == null
      && !(cfg.credentials ? api-token)
      && lib.any (r: r.branches != [ ]) cfg.settings.repos
    ) "services.mergequeue: apiTokenFile is not set, so the API refuses to queue changes.";

    users.users = mkIf (cfg.user == "mergequeue") {
      mergequeue = {
        isSystemUser = true;
        group = cfg.group;
        home = stateDir;
        description = "mergequeue service";
      };
    };
    users.groups = mkIf (cfg.group == "mergequeue") { mergequeue = { }; };

    # Talk to the local nix-daemon as an allowed, not trusted, user. Outputs fetched
    # from builders import only with a signature the daemon trusts: the builders'.
    nix.settings.extra-allowed-users = [ cfg.user ];
    nix.settings.extra-trusted-public-keys = mkIf (builderPublicKeys != [ ]) builderPublicKeys;

    networking.firewall.allowedTCPPorts = mkIf cfg.openFirewall [ listenPort ];

    environment.systemPackages = [ cfg.package ];

    systemd.services.mergequeue = {
      description = "mergequeue: merge queue, builder dispatch and channel gating";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [
        "network-online.target"
        "nix-daemon.socket"
      ];
      # nix evaluates and copies, git fetches and pushes, ssh reaches builders and remotes.
      path = [
        config.nix.package
        pkgs.git
        pkgs.openssh
      ]
      ++ lib.optional cfg.nixEvalJobs.enable cfg.nixEvalJobs.package;
      environment = {
        # nix and ssh misbehave without a writable HOME (see services.harmonia).
        HOME = stateDir;
        XDG_CACHE_HOME = "/var/cache/mergequeue";
        NIX_REMOTE = "daemon";
      }
      // lib.optionalAttrs (cfg.gitSshKeyFile != null) {
        GIT_SSH_COMMAND = "ssh -i %d/git-ssh-key -o IdentitiesOnly=yes -o BatchMode=yes";
      };
      restartTriggers = [ cfg.configFile ];

      serviceConfig = {
        Type = "notify";
        NotifyAccess = "main";
        ExecStart = lib.escapeShellArgs (
          [
            (lib.getExe cfg.package)
            "serve"
            "--config"
            "${cfg.configFile}"
          ]
          ++ lib.optional cfg.verbose "--verbose"
        );
        WatchdogSec = mkIf (cfg.watchdogSec > 0) cfg.watchdogSec;
        Restart = "on-failure";
        RestartSec = 5;
        # SIGTERM to the main process only; it cancels its nix/git children itself
        # and sends STOPPING=1. Leftovers are killed after TimeoutStopSec.
        KillMode = "mixed";
        TimeoutStopSec = 120;
        LimitNOFILE = 65536;

        User = cfg.user;
        Group = cfg.group;
        StateDirectory = "mergequeue";
        StateDirectoryMode = "0750";
        CacheDirectory = "mergequeue";
        CacheDirectoryMode = "0750";
        WorkingDirectory = stateDir;
        ReadWritePaths = extraWritable;
        LoadCredential = lib.mapAttrsToList (name: path: "${name}:${path}") credentials;

        # Hardening: the intersection of services.atticd and services.harmonia, minus
        # what nix and ssh need. nix builds happen in the nix-daemon (or on remote
        # builders), so the client needs no namespaces, privileges or devices.
        # Not set: PrivateUsers (breaks nix-daemon peer credentials), ProcSubset=pid
        # (nix reads /proc/meminfo and /proc/sys), ~@resources (nix sets rlimits).
        CapabilityBoundingSet = "";
        AmbientCapabilities = "";
        NoNewPrivileges = true;
        PrivateTmp = true;
        PrivateDevices = true;
        DeviceAllow = "";
        ProtectSystem = "strict";
        ProtectHome = true;
        ProtectKernelModules = true;
        ProtectKernelTunables = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectClock = true;
        ProtectHostname = true;
        ProtectProc = "invisible";
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        RemoveIPC = true;
        SystemCallArchitectures = "native";
        SystemCallFilter = [
          "@system-service"
          "~@privileged"
        ];
        SystemCallErrorNumber = "EPERM";
        RestrictAddressFamilies = [
          "AF_UNIX"
          "AF_INET"
          "AF_INET6"
        ];
        UMask = "0077";
      };
    };
  };
}
