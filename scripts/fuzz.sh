#!/bin/sh
# Short fuzzing run of every parser (cargo fuzz, nightly toolchain): SECS seconds each.
# Installs cargo-fuzz when missing. A crash fails the run and leaves its input under
# fuzz/artifacts/. Seed inputs are committed under fuzz/seeds/TARGET; what a run finds goes
# to fuzz/corpus/TARGET (not committed).
set -eu
cd "$(dirname "$0")/.."
SECS="${1:-30}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "cargo fuzz needs a nightly toolchain: rustup toolchain install nightly" >&2
  exit 1
fi
for t in config machines nix_eval_jobs_line api_body refname webhook commands derivation; do
  mkdir -p "fuzz/corpus/$t" "fuzz/seeds/$t"
  cargo +nightly fuzz run "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
    -max_total_time="$SECS" -max_len=4096 -timeout=10 -rss_limit_mb=1024
done
