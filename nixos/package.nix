# The mergequeue binary. Used by flake.nix (packages, overlays.default) and usable
# with `pkgs.callPackage ./nixos/package.nix { }` without the flake.
{
  lib,
  rustPlatform,
  pkg-config,
  zlib,
}:

let
  cargoToml = lib.importTOML ../Cargo.toml;
in
rustPlatform.buildRustPackage {
  pname = cargoToml.package.name;
  inherit (cargoToml.package) version;

  # Only what cargo needs: editing the module, VM tests or docs does not rebuild.
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../src
      (lib.fileset.maybeMissing ../tests)
      (lib.fileset.maybeMissing ../benches)
      (lib.fileset.maybeMissing ../examples)
      (lib.fileset.maybeMissing ../build.rs)
    ];
  };

  cargoLock.lockFile = ../Cargo.lock;

  # git2 builds its vendored libgit2 (no https/ssh features); rusqlite bundles SQLite.
  nativeBuildInputs = [ pkg-config ];
  buildInputs = [ zlib ];

  # The integration tests need a nix-daemon, git and sshd; they run in CI, not in
  # the sandbox.
  doCheck = false;

  meta = {
    inherit (cargoToml.package) description;
    license = lib.licenses.mit;
    mainProgram = "mergequeue";
    platforms = lib.platforms.linux;
  };
}
