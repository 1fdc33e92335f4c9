# Wraps one VM test file for flake checks: `import ./lib.nix { inherit pkgs self; }
# ./basic.nix`. Test files are functions of { pkgs, self, common } returning a
# runNixOSTest module; every node gets services.mergequeue from the flake.
{ pkgs, self }:

let
  common = import ./common.nix { inherit pkgs; };
in
test:
pkgs.testers.runNixOSTest {
  imports = [ (import test { inherit pkgs self common; }) ];
  defaults = {
    imports = [ self.nixosModules.default ];
    # Option documentation warnings fail the test build (buildbot-nix does the
    # same). The manual only covers nixpkgs' own modules (includeAllModules is
    # off); scripts/check-nix.sh checks that every mergequeue option has a
    # description.
    documentation.nixos.options.warningsAreErrors = true;
  };
  node.specialArgs = { inherit self; };
}
