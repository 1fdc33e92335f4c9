#!/bin/sh
# Installs what mergequeue runs: Nix (nix-bin), git, a static busybox (the offline
# bootstrap of the generated package sets), OpenSSH (remote builders in tests) and
# Chromium with ChromeDriver (the web UI's browser test), Node.js with npm (Prism, the
# forge contract check) and openssl (a GitHub App's key in that test).
# Idempotent: does nothing when everything is present.
set -eu

need=""
command -v nix-instantiate >/dev/null 2>&1 || need="$need nix-bin"
command -v git >/dev/null 2>&1 || need="$need git"
[ -x /bin/busybox ] || need="$need busybox-static"
[ -x /usr/sbin/sshd ] || need="$need openssh-server"
command -v ssh >/dev/null 2>&1 || need="$need openssh-client"
[ -x /usr/bin/chromium ] || need="$need chromium"
[ -x /usr/bin/chromedriver ] || need="$need chromium-driver"
command -v npm >/dev/null 2>&1 || need="$need nodejs npm"
command -v openssl >/dev/null 2>&1 || need="$need openssl"

if [ -z "$need" ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "mergequeue needs:$need" >&2
  echo "Install them as root, e.g.: apt-get update && apt-get install -y nix-bin git busybox-static openssh-server openssh-client chromium chromium-driver nodejs npm openssl" >&2
  exit 1
fi
echo "installing:$need" >&2
apt-get update -qq
# Only what is missing: a Node.js from elsewhere conflicts with Debian's npm package.
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >&2
