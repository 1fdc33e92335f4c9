{
  description = "mergequeue: a merge queue, builder dispatcher and channel gate for Nix package sets";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      # A Linux appliance: it drives nix-daemon, systemd and sshd.
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      eachSystem = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = eachSystem (pkgs: rec {
        mergequeue = pkgs.callPackage ./nixos/package.nix { };
        default = mergequeue;
      });

      # For users who want `pkgs.mergequeue`; the modules never set nixpkgs.overlays.
      overlays.default = final: _prev: {
        mergequeue = final.callPackage ./nixos/package.nix { };
      };

      nixosModules = {
        # services.mergequeue and services.mergequeue-builder, with the package
        # defaulting to this flake's build (or pkgs.mergequeue from the overlay).
        default =
          { lib, pkgs, ... }:
          {
            imports = [ ./nixos/module.nix ];
            services.mergequeue.package = lib.mkDefault (
              pkgs.mergequeue or self.packages.${pkgs.stdenv.hostPlatform.system}.default
                or (pkgs.callPackage ./nixos/package.nix { })
            );
          };
        mergequeue = self.nixosModules.default;
        # Only the builder side (services.mergequeue-builder), for builder machines.
        builder = ./nixos/builder.nix;
      };

      checks = eachSystem (
        pkgs:
        let
          vmTest = import ./vm-tests/lib.nix { inherit pkgs self; };
        in
        {
          package = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
          basic = vmTest ./vm-tests/basic.nix;
          queue = vmTest ./vm-tests/queue.nix;
          builder-crash = vmTest ./vm-tests/builder-crash.nix;
          channel = vmTest ./vm-tests/channel.nix;
        }
      );

      devShells = eachSystem (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ self.packages.${pkgs.stdenv.hostPlatform.system}.default ];
          packages = with pkgs; [
            cargo
            clippy
            rustfmt
            rust-analyzer
            sqlite
            git
            openssh
            nixfmt-rfc-style
          ];
        };
      });

      formatter = eachSystem (pkgs: pkgs.nixfmt-rfc-style);
    };
}
