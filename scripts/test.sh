#!/bin/sh
# The test command: installs prerequisites, then runs every check CI runs.
set -eu
cd "$(dirname "$0")/.."
sh scripts/install-prereqs.sh
# Prism, which checks the forge client against GitHub's API description (tests/forge_contract.rs).
bash scripts/forge-contract.sh prism >/dev/null
export NIX_CONFIG="substituters ="
cargo fmt --check
cargo clippy --all-targets -- -D warnings
cargo build --release
cargo test --release -- --test-threads 2
# The NixOS module and VM tests cannot be built here (no nixpkgs): parse them, and
# validate the configs the VM tests use with the real binary.
# check-config must accept every vm-tests/config/*.toml and reject each *-bad.toml
# with FILE:LINE:COL (scripts/check-nix.sh does both).
MERGEQUEUE_BIN=./target/release/mergequeue bash scripts/check-nix.sh
# A short fuzzing run of every parser (longer runs: sh scripts/fuzz.sh SECS).
sh scripts/fuzz.sh 20
echo "all checks passed"
