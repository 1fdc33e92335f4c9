# Community channel maintainer: one small machine runs a channel over an upstream
# it does not own (NixOS/nixpkgs), gated on the packages the maintainer cares
# about, and pushes the channel branch to the maintainer's own repository.
{ ... }:
{
  services.mergequeue = {
    enable = true;

    # A deploy key with write access to the maintainer's repository only.
    gitSshKeyFile = "/var/lib/secrets/mergequeue-deploy-key";

    # Build on this machine, through its nix-daemon (nix.settings.max-jobs applies).
    builders = [
      {
        hostName = "localhost";
        protocol = null;
        maxJobs = 4;
        systems = [ "x86_64-linux" ];
      }
    ];

    settings = {
      repos = [
        {
          # Read only: no branches, so no merge queue and no pushes here.
          name = "nixpkgs";
          url = "https://github.com/NixOS/nixpkgs.git";
          jobset = "pkgs/top-level/release.nix";
          systems = [ "x86_64-linux" ];
        }
      ];
      channels = [
        {
          name = "alice-unstable";
          repo = "nixpkgs";
          # Follow the official channel and advance only when these build too.
          source = "nixos-unstable";
          target = "alice-unstable";
          remote = "git@github.com:alice/nixpkgs-channels.git";
          gate = [
            "emacs"
            "git"
            "haskellPackages.pandoc"
          ];
          min_interval_secs = 21600;
        }
      ];
    };
  };

  # GitHub's published ed25519 host key, for pushes to the remote.
  programs.ssh.knownHosts."github.com".publicKey =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
}
