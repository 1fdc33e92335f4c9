#!/usr/bin/env bash
# The forge contract's inputs, from the forges' own published descriptions:
#
#   scripts/forge-contract.sh slice     regenerate tests/contract/github-rest.json (GitHub's
#                                       REST description, @octokit/openapi, cut to the
#                                       operations mergequeue calls) and
#                                       tests/contract/github-webhooks.json (examples of
#                                       @octokit/webhooks-examples); commit the result
#   scripts/forge-contract.sh prism     install Prism (@stoplight/prism-cli) and print the
#                                       path of its command (tests/forge_contract.rs runs it)
#
# Packages go to target/forge-contract/{slice,prism} (npm, the machine's Node.js).
set -euo pipefail
cd "$(dirname "$0")/.."

OPENAPI=@octokit/openapi@23.0.2
EXAMPLES=@octokit/webhooks-examples@7.6.1
PRISM=@stoplight/prism-cli@5.14.2
dir=target/forge-contract

need_npm() {
    command -v npm >/dev/null || {
        echo "forge-contract: npm not found (apt-get install nodejs npm)" >&2
        exit 2
    }
}

# install SUBDIR PACKAGE...: each set in its own folder (npm drops what package.json lacks)
install() {
    need_npm
    local d="$dir/$1"
    shift
    mkdir -p "$d"
    [ -f "$d/package.json" ] || echo '{"private": true}' >"$d/package.json"
    (cd "$d" && npm install --no-audit --no-fund --loglevel=error "$@" >&2)
}

case "${1:-}" in
slice)
    install slice "$OPENAPI" "$EXAMPLES"
    node scripts/forge-contract/slice.mjs \
        "$dir/slice/node_modules/@octokit/openapi/generated/api.github.com.json" \
        "$dir/slice/node_modules/@octokit/webhooks-examples/api.github.com/index.json" \
        tests/contract
    ;;
prism)
    [ -x "$dir/prism/node_modules/.bin/prism" ] || install prism "$PRISM"
    echo "$PWD/$dir/prism/node_modules/.bin/prism"
    ;;
*)
    echo "usage: scripts/forge-contract.sh slice|prism" >&2
    exit 2
    ;;
esac
