# Infra deployment: the merge queue for a large package set on a coordinator that
# dispatches to remote ssh-ng builders, with a gated channel.
{ ... }:
{
  services.mergequeue = {
    enable = true;
    openFirewall = true;

    # Secrets are files outside the store (sops-nix, agenix, ...), handed to the
    # service with LoadCredential.
    apiTokenFile = "/run/secrets/mergequeue/api-token";
    gitSshKeyFile = "/run/secrets/mergequeue/git-deploy-key";

    builders = [
      {
        hostName = "build01.infra.example.org";
        sshUser = "mergequeue-builder";
        # Its services.mergequeue-builder.signingKeyFile's public half.
        publicKey = "build01.infra.example.org-1:ZwNGvWQOeFPup8JyGFpGCqL1PAy9wIqejH6+7VLDS9o=";
        sshKey = "/run/secrets/mergequeue/builder-key";
        systems = [
          "x86_64-linux"
          "i686-linux"
        ];
        maxJobs = 16;
        speedFactor = 2;
        supportedFeatures = [
          "kvm"
          "big-parallel"
          "nixos-test"
          "benchmark"
        ];
        publicHostKey = "c3NoLWVkMjU1MTkgQUFBQUMzTnphQzFsWkRJMU5URTVBQUFBSUxQUXNoWkRZU0wxREgySklnVmxzZ2hZTWllTzBLcERZK3VDRlpUQTl3R0Ugcm9vdEBidWlsZDAxCg==";
      }
      {
        hostName = "build02.infra.example.org";
        sshUser = "mergequeue-builder";
        publicKey = "build02.infra.example.org-1:Pcg81WXoYMjGexcUyCeG1nAMGnBZSvRrz0o89KJ7cqA=";
        sshKey = "/run/secrets/mergequeue/builder-key";
        systems = [ "x86_64-linux" ];
        maxJobs = 8;
        supportedFeatures = [
          "kvm"
          "big-parallel"
        ];
      }
      {
        hostName = "arm01.infra.example.org";
        sshUser = "mergequeue-builder";
        publicKey = "arm01.infra.example.org-1:7PumNX/BDnc9MApNjaH6o+wmkr7I1IMnO+/ea4jXwxU=";
        sshKey = "/run/secrets/mergequeue/builder-key";
        system = "aarch64-linux";
        maxJobs = 8;
      }
    ];

    settings = {
      listen = "[::]:8080";
      nix = {
        # Use the binary cache from nix.conf; cap builds at a day.
        options = { };
        max_silent_time_secs = 7200;
        build_timeout_secs = 86400;
      };
      repos = [
        {
          name = "nixpkgs";
          url = "ssh://git@git.infra.example.org/nixpkgs.git";
          jobset = "pkgs/top-level/release.nix";
          systems = [
            "x86_64-linux"
            "aarch64-linux"
          ];
          branches = [
            {
              name = "master";
              batch_max = 16;
              required = [ "tested" ];
            }
            {
              name = "staging";
              batch_max = 32;
            }
          ];
          # Pull requests on the team's Forgejo drive the queue: `@mergequeue r+`.
          forge = {
            kind = "forgejo";
            api_url = "https://git.infra.example.org/api/v1";
            repository = "infra/nixpkgs";
            tokenFile = "/var/lib/secrets/forge-token";
            webhookSecretFile = "/var/lib/secrets/forge-webhook-secret";
            queue_label = "merge-queue";
          };
        }
      ];
      channels = [
        {
          name = "nixos-unstable";
          repo = "nixpkgs";
          source = "master";
          target = "nixos-unstable";
          gate = [ "tested" ];
          min_interval_secs = 3600;
        }
      ];
    };
  };

  # Host keys of the git server (build02 and arm01 are pinned here rather than
  # with publicHostKey).
  programs.ssh.knownHosts = {
    "git.infra.example.org".publicKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINDZMrDoIBkdKdw5URqZ3GhaMsBYG17FdjDuWNSA5FD2";
    "build02.infra.example.org".publicKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK9SAJXBrOka+dQvON/FvuBb2QO3qgz2YZLLDaPX08/u";
    "arm01.infra.example.org".publicKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDPreI+lmWylGd4+XltGabEBcbKlJwWegC0irD3fZtaO";
  };
}
