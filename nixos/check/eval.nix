# Evaluates nixos/module.nix with nixpkgs' `lib` alone, for machines without
# nixpkgs (see scripts/check-nix.sh and docs/nixos.md "Verification").
#
# The NixOS options the module (and the VM test nodes) touch are stubbed as
# loosely typed options; pkgs is a stub whose derivations are fake store paths and
# whose `formats.toml` has nixpkgs' value type. What is real: lib.evalModules, the
# module's options, types, defaults, priorities, assertions, warnings and the
# settings it renders.
#
#   nix-instantiate --eval --strict --json nixos/check/eval.nix \
#     --arg lib 'import /path/to/nixpkgs.lib/lib' -A scenarios.queue.settings
{
  lib,
  system ? "x86_64-linux",
}:

let
  inherit (lib) mkOption types;

  fakeHash = "0000000000000000000000000000000${toString (builtins.stringLength system)}";
  stubDrv =
    name: extra:
    {
      type = "derivation";
      inherit name;
      outPath = "${builtins.storeDir}/${fakeHash}-${name}";
      drvPath = "${builtins.storeDir}/${fakeHash}-${name}.drv";
      meta = { };
      outputs = [ "out" ];
    }
    // extra;

  tomlType =
    let
      valueType =
        types.oneOf [
          types.bool
          types.int
          types.float
          types.str
          types.path
          (types.attrsOf valueType)
          (types.listOf valueType)
        ]
        // {
          description = "TOML value";
        };
    in
    valueType;

  pkgs = {
    inherit lib;
    stdenv.hostPlatform = {
      inherit system;
    };
    formats.toml =
      { }:
      {
        type = tomlType;
        generate = name: value: stubDrv name { rendered = value; };
      };
    runCommand = name: env: script: stubDrv name { inherit env script; };
    writeShellScriptBin = name: text: stubDrv name { inherit text; };
    runtimeShell = "${builtins.storeDir}/${fakeHash}-bash/bin/bash";
    mergequeue = stubDrv "mergequeue" { meta.mainProgram = "mergequeue"; };
    git = stubDrv "git" { };
    openssh = stubDrv "openssh" { };
    busybox = stubDrv "busybox" { };
    jq = stubDrv "jq" { };
    nix = stubDrv "nix" { };
    nix-eval-jobs = stubDrv "nix-eval-jobs" { };
    nixos = module: evalSystem [ module ];
    testers.testBuildFailure = drv: stubDrv "test-build-failure" { inherit drv; };
    # For flake.nix: the VM test module itself stands in for the test derivation.
    testers.runNixOSTest = module: stubDrv "vm-test" { inherit module; };
    callPackage = fn: args: import fn ({ inherit lib; } // packageInputs // args);
    mkShell = attrs: stubDrv "shell" { inherit attrs; };
  }
  // lib.genAttrs [
    "cargo"
    "clippy"
    "rustfmt"
    "rust-analyzer"
    "sqlite"
    "nixfmt-rfc-style"
    "pkg-config"
    "zlib"
  ] (name: stubDrv name { });
  packageInputs = {
    inherit (pkgs) pkg-config zlib;
    rustPlatform.buildRustPackage = attrs: stubDrv "${attrs.pname}-${attrs.version}" { inherit attrs; };
  };

  # flake.nix's outputs, with a nixpkgs made of the stub pkgs.
  flake =
    let
      nixpkgs = {
        inherit lib;
        legacyPackages = lib.genAttrs [
          "x86_64-linux"
          "aarch64-linux"
        ] (_: pkgs);
      };
      outputs = (import ../../flake.nix).outputs {
        self = outputs;
        inherit nixpkgs;
      };
    in
    outputs;

  freeform = types.submodule { freeformType = types.lazyAttrsOf types.anything; };
  ns = mkOption {
    type = freeform;
    default = { };
  };
  listOpt =
    elem:
    mkOption {
      type = types.listOf elem;
      default = [ ];
    };

  # The slice of NixOS the module and the test nodes use.
  stubs = {
    options = {
      assertions = listOf' types.unspecified;
      warnings = listOf' types.str;
      # One option per service/program, as in NixOS: a single `services` option
      # would make every `mkIf cfg.enable` definition depend on itself.
      services.openssh = ns;
      programs.git = ns;
      programs.ssh = ns;
      virtualisation = ns;
      documentation = ns;
      boot = ns;
      fileSystems = ns;
      system = mkOption {
        type = types.submodule {
          freeformType = types.lazyAttrsOf types.anything;
          options.extraDependencies = listOpt types.package;
        };
        default = { };
      };
      environment = mkOption {
        type = types.submodule {
          freeformType = types.lazyAttrsOf types.anything;
          options.systemPackages = listOpt types.package;
          options.etc = mkOption {
            type = types.attrsOf freeform;
            default = { };
          };
        };
        default = { };
      };
      networking.firewall.allowedTCPPorts = listOpt types.port;
      nix = {
        package = mkOption {
          type = types.package;
          default = pkgs.nix;
        };
        buildMachines = listOpt freeform;
        settings = mkOption {
          type = types.submodule {
            freeformType = types.attrsOf (types.either (types.listOf types.str) types.anything);
          };
          default = { };
        };
      };
      users = {
        users = mkOption {
          type = types.attrsOf (
            types.submodule {
              freeformType = types.lazyAttrsOf types.anything;
              options.isSystemUser = mkOption {
                type = types.bool;
                default = false;
              };
              options.group = mkOption {
                type = types.str;
                default = "";
              };
            }
          );
          default = { };
        };
        groups = mkOption {
          type = types.attrsOf freeform;
          default = { };
        };
      };
      systemd.services = mkOption {
        type = types.attrsOf (
          types.submodule {
            freeformType = types.lazyAttrsOf types.anything;
            options = {
              path = listOpt types.package;
              wantedBy = listOpt types.str;
              wants = listOpt types.str;
              after = listOpt types.str;
              environment = mkOption {
                type = types.attrsOf types.str;
                default = { };
              };
              restartTriggers = listOpt types.unspecified;
              serviceConfig = mkOption {
                type = types.attrsOf (
                  types.oneOf [
                    types.bool
                    types.int
                    types.str
                    (types.listOf types.str)
                  ]
                );
                default = { };
              };
            };
          }
        );
        default = { };
      };
    };
  };
  listOf' =
    t:
    mkOption {
      type = types.listOf t;
      default = [ ];
    };

  evalSystem =
    modules:
    lib.evalModules {
      modules = [
        stubs
        ../module.nix
        { _module.args.pkgs = pkgs; }
      ]
      ++ modules;
    };

  # What a scenario yields: the rendered settings (as the TOML file would hold
  # them), the unit, failed assertions and warnings.
  summarize =
    result:
    let
      cfg = result.config;
      svc = cfg.systemd.services.mergequeue;
    in
    {
      settings = cfg.services.mergequeue.configFile.env.configToCheck.rendered;
      checkScript = cfg.services.mergequeue.configFile.script;
      failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) cfg.assertions);
      inherit (cfg) warnings;
      unit = {
        inherit (svc) environment wantedBy after;
        path = map (p: p.name) svc.path;
        serviceConfig = svc.serviceConfig;
      };
      users = lib.mapAttrs (_: u: { inherit (u) isSystemUser group; }) cfg.users.users;
      firewall = cfg.networking.firewall.allowedTCPPorts;
      nixSettings = cfg.nix.settings;
    };

  # A VM test's node, evaluated with the real test file and vm-tests/common.nix.
  vmTestNode =
    file: node:
    let
      common = import ../../vm-tests/common.nix { inherit pkgs; };
      test = import file {
        inherit pkgs common;
        self.nixosModules.default = { };
      };
    in
    evalSystem [ test.nodes.${node} ];

  examples = {
    infra = ../examples/infra.nix;
    community = ../examples/community.nix;
  };
in
{
  inherit pkgs;

  # The options of services.mergequeue and services.mergequeue-builder as the NixOS
  # manual lists them (defaults and examples rendered, as the manual build does),
  # for the check that each has a description: the VM tests set
  # documentation.nixos.options.warningsAreErrors, and users read these.
  optionDocs =
    let
      services = (evalSystem [ ]).options.services;
      docs = lib.optionAttrSetToDocList {
        services = {
          inherit (services) mergequeue mergequeue-builder;
        };
      };
    in
    map (o: {
      inherit (o) name type;
      description = if o.description == null then "" else o.description;
      default = o.default or null;
      example = o.example or null;
    }) (lib.filter (o: o.visible && !o.internal) docs);

  # Shape of the flake outputs and the VM tests' Python, for scripts/check-nix.sh.
  flake =
    let
      sys = "x86_64-linux";
      checks = flake.checks.${sys};
      tests = lib.filterAttrs (_: c: c ? module) checks;
      testOf = c: builtins.head c.module.imports;
    in
    {
      outputs = lib.mapAttrs (_: v: if builtins.isAttrs v then builtins.attrNames v else "<function>") {
        inherit (flake)
          packages
          overlays
          nixosModules
          checks
          devShells
          formatter
          ;
      };
      checks = builtins.attrNames checks;
      packageName = flake.packages.${sys}.default.name;
      packageMeta = flake.packages.${sys}.default.attrs.meta;
      # Not `src`: lib.fileset needs builtins.readFileType (Nix >= 2.14).
      cargoLock = toString flake.packages.${sys}.default.attrs.cargoLock.lockFile;
      overlayPackage = (flake.overlays.default pkgs pkgs).mergequeue.name;
      # The module through the flake's wrapper (package default from the flake).
      moduleViaFlake =
        let
          r = evalSystem [
            flake.nixosModules.default
            { services.mergequeue.enable = true; }
          ];
        in
        r.config.systemd.services.mergequeue.serviceConfig.ExecStart;
      tests = lib.mapAttrs (_: c: {
        inherit (testOf c) name;
        nodes = builtins.attrNames (testOf c).nodes;
        testScript = (testOf c).testScript;
      }) tests;
    };

  scenarios = {
    disabled = summarize (evalSystem [ ]) // {
      # Nothing but option declarations when disabled.
      settings = null;
      checkScript = null;
      unit = null;
    };
    basic = summarize (vmTestNode ../../vm-tests/basic.nix "machine");
    basic-bad =
      let
        common = import ../../vm-tests/common.nix { inherit pkgs; };
        test = import ../../vm-tests/basic.nix {
          inherit pkgs common;
          self.nixosModules.default = { };
        };
        # basic.nix builds the config of a deliberately bad system; its node
        # references testBuildFailure of that system's checked config file.
        bad = (evalSystem [ test.nodes.machine ]).config.environment.etc."mergequeue-bad-config".source.drv;
      in
      {
        checkScript = bad.script;
        settings = bad.env.configToCheck.rendered;
      };
    queue = summarize (vmTestNode ../../vm-tests/queue.nix "coordinator");
    builder-crash = summarize (vmTestNode ../../vm-tests/builder-crash.nix "coordinator");
    channel = summarize (vmTestNode ../../vm-tests/channel.nix "coordinator");
    builder-node =
      let
        cfg = (vmTestNode ../../vm-tests/queue.nix "builder").config;
      in
      {
        failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) cfg.assertions);
        user = cfg.users.users.mergequeue-builder;
        trusted = cfg.nix.settings.trusted-users;
        secretKeyFiles = cfg.nix.settings.secret-key-files or [ ];
        warnings = cfg.warnings;
      };
    # The coordinator's daemon trusts the builder's signing key.
    queue-coordinator-keys = (vmTestNode ../../vm-tests/queue.nix "coordinator").config.nix.settings.extra-trusted-public-keys or [ ];
    infra = summarize (evalSystem [ examples.infra ]);
    community = summarize (evalSystem [ examples.community ]);
    # Negative cases: each must produce a failed assertion.
    store-secret = summarize (evalSystem [
      {
        services.mergequeue = {
          enable = true;
          apiTokenFile = "${builtins.storeDir}/${fakeHash}-token";
        };
      }
    ]);
    # A GitHub App: its key is a credential, its id and installation rendered.
    github-app = summarize (evalSystem [
      {
        services.mergequeue = {
          enable = true;
          apiTokenFile = "/run/keys/api-token";
          settings.repos = [
            {
              name = "nixpkgs";
              url = "https://github.com/NixOS/nixpkgs.git";
              forge = {
                kind = "github";
                api_url = "https://api.github.com";
                repository = "NixOS/nixpkgs";
                appId = 123456;
                installationId = 7890;
                appPrivateKeyFile = "/run/keys/github-app.pem";
                webhookSecretFile = "/run/keys/webhook-secret";
              };
            }
          ];
        };
      }
    ]);
    # The notifier's SMTP password and webhook secret, delivered as credentials.
    notify-secrets = summarize (evalSystem [
      {
        services.mergequeue = {
          enable = true;
          apiTokenFile = "/run/keys/api-token";
          notify.smtpPasswordFile = "/run/keys/smtp-password";
          notify.webhookSecretFile = "/run/keys/notify-hook";
          settings.notify = {
            cap_per_maintainer_per_day = 3;
            email = {
              smtp = "smtp.example.org:587";
              from = "mergequeue@example.org";
              username = "mergequeue";
            };
            webhook.url = "https://chat.example.org/hook";
          };
        };
      }
    ]);
    # The binary cache's signing key, delivered as a credential.
    cache-key = summarize (evalSystem [
      {
        services.mergequeue = {
          enable = true;
          apiTokenFile = "/run/keys/api-token";
          cache.secretKeyFile = "/run/keys/cache-key";
          settings.cache = {
            uri = "file:///var/lib/mergequeue/cache";
            upload = "all";
          };
        };
      }
    ]);
    cache-key-in-settings = summarize (evalSystem [
      {
        services.mergequeue = {
          enable = true;
          settings.cache = {
            uri = "file:///var/lib/mergequeue/cache";
            secret_key_file = "/run/keys/cache-key";
          };
        };
      }
    ]);
    # nix-eval-jobs on the service's PATH, the evaluator, with its worker limits.
    nix-eval-jobs = summarize (evalSystem [
      {
        services.mergequeue = {
          enable = true;
          nixEvalJobs.enable = true;
          settings.nix = {
            eval_workers = 4;
            eval_max_memory_mib = 2048;
          };
        };
      }
    ]);
    cache-without-key = summarize (evalSystem [
      {
        services.mergequeue = {
          enable = true;
          settings.cache.uri = "file:///var/lib/mergequeue/cache";
        };
      }
    ]);
    notify-secret-in-settings = summarize (evalSystem [
      {
        services.mergequeue = {
          enable = true;
          settings.notify.email = {
            smtp = "smtp.example.org:587";
            from = "mergequeue@example.org";
            password_file = "/run/keys/smtp-password";
          };
        };
      }
    ]);
    notify-secret-without-relay = summarize (evalSystem [
      {
        services.mergequeue = {
          enable = true;
          notify.smtpPasswordFile = "/run/keys/smtp-password";
        };
      }
    ]);
    forge-secret-in-settings = summarize (evalSystem [
      {
        services.mergequeue = {
          enable = true;
          settings.repos = [
            {
              name = "pkgs";
              url = "file:///srv/pkgs.git";
              forge = {
                kind = "gitea";
                api_url = "https://codeberg.org/api/v1";
                repository = "a/b";
                token_file = "/run/keys/token";
              };
            }
          ];
        };
      }
    ]);
    relative-key = summarize (evalSystem [
      {
        services.mergequeue = {
          enable = true;
          builders = [
            {
              hostName = "b";
              sshKey = "keys/id";
            }
          ];
        };
      }
    ]);
  };
}
