#!/usr/bin/env bash
# Checks the Nix side of the repository on machines without nixpkgs.
#
#   scripts/check-nix.sh            parse every .nix file (nix-instantiate --parse);
#                                   with busybox installed, also build the VM tests'
#                                   package set (vm-tests/fixture) with it
#   NIXPKGS_LIB=/path/to/nixpkgs.lib scripts/check-nix.sh
#                                   also evaluate nixos/module.nix with that `lib`
#                                   (nixos/check/eval.nix), check the scenarios, and
#                                   compare vm-tests/config/*.toml with what the VM
#                                   tests' settings render to, and that every option
#                                   has a description
#   ... scripts/check-nix.sh --update   rewrite vm-tests/config/*.toml instead
#   MERGEQUEUE_BIN=target/debug/mergequeue scripts/check-nix.sh
#                                   also run `mergequeue check-config` on them
#
# NIXPKGS_LIB is a checkout of nix-community/nixpkgs.lib (its root or its lib/
# directory) or of nixpkgs itself. Never commit it. Exits non-zero on any failure.
set -euo pipefail

cd "$(dirname "$0")/.."
export NIX_CONFIG="${NIX_CONFIG:-}
substituters =
experimental-features = nix-command"

update=0
[ "${1:-}" = "--update" ] && update=1

fail=0
die() {
    echo "check-nix: $*" >&2
    fail=1
}

command -v nix-instantiate >/dev/null || {
    echo "check-nix: nix-instantiate not found (apt-get install nix-bin)" >&2
    exit 2
}

# ---- 1. parse every .nix file -------------------------------------------------
count=0
while IFS= read -r -d '' file; do
    count=$((count + 1))
    if ! out=$(nix-instantiate --parse "$file" 2>&1 >/dev/null); then
        die "parse error in $file:"
        echo "$out" >&2
    fi
done < <(find . \( -path ./target -o -path ./.git -o -name node_modules \) -prune -o -name '*.nix' -type f -print0)
echo "check-nix: parsed $count .nix files"
[ "$count" -gt 0 ] || die "no .nix files found"

# ---- 2. the documented examples are the evaluated ones -------------------------
for example in nixos/examples/*.nix; do
    if ! python3 - "$example" docs/nixos.md <<'EOF'; then
import sys
example, doc = (open(p).read() for p in sys.argv[1:])
sys.exit(0 if example.strip() in doc else 1)
EOF
        die "$example is not reproduced verbatim in docs/nixos.md"
    fi
done

# ---- 3. check-config on the rendered files --------------------------------------
if [ -n "${MERGEQUEUE_BIN:-}" ]; then
    for toml in vm-tests/config/*.toml; do
        case $toml in
        *-bad.toml)
            if out=$("$MERGEQUEUE_BIN" check-config --config "$toml" 2>&1); then
                die "check-config accepted $toml"
            elif ! grep -Eq "^$toml:[0-9]+:[0-9]+: " <<<"$out"; then
                die "check-config's error for $toml has no FILE:LINE:COL: $out"
            fi
            ;;
        *)
            "$MERGEQUEUE_BIN" check-config --config "$toml" || die "check-config rejected $toml"
            ;;
        esac
    done
fi

# ---- 4. the VM tests' package set builds, and a broken package breaks its gate --
# With a local busybox standing in for nixpkgs' (as vm-tests/common.nix substitutes
# @busybox@), and the package contents the VM tests push.
if bb=$(command -v busybox); then
    fx=$(mktemp -d)
    mkdir -p "$fx/bb/bin"
    cp "$bb" "$fx/bb/bin/busybox"
    for applet in $("$bb" --list); do
        [ "$applet" = busybox ] || ln -s busybox "$fx/bb/bin/$applet"
    done
    bb_path=$(nix-store --add "$fx/bb")
    cp -r vm-tests/fixture "$fx/fixture"
    chmod -R u+w "$fx/fixture"
    sed -i "s|@busybox@|$bb_path|" "$fx/fixture/release.nix"
    printf '%s\n' '{ mk }: mk "slow-1" ": mq-slow-marker; sleep 1; echo slow > $out"' >"$fx/fixture/pkgs/slow.nix"
    if ! nix-build "$fx/fixture/release.nix" -A tested --no-out-link >/dev/null 2>"$fx/log"; then
        die "vm-tests/fixture does not build:"
        tail -5 "$fx/log" >&2
    fi
    printf '%s\n' '{ mk }: mk "hello-broken" "exit 1"' >"$fx/fixture/pkgs/hello.nix"
    if nix-build "$fx/fixture/release.nix" -A tested --no-out-link >/dev/null 2>&1; then
        die "vm-tests/fixture: the gate builds with a broken package"
    fi
    rm -rf "$fx"
    echo "check-nix: built vm-tests/fixture with $bb"
else
    echo "check-nix: busybox not found; skipping the VM tests' fixture"
fi

# ---- 5. evaluate the module with nixpkgs' lib -----------------------------------
if [ -z "${NIXPKGS_LIB:-}" ]; then
    echo "check-nix: NIXPKGS_LIB not set; skipping module evaluation"
    [ "$fail" = 0 ] && echo "check-nix: ok"
    exit "$fail"
fi
lib_dir=$NIXPKGS_LIB
[ -f "$lib_dir/lib/default.nix" ] && lib_dir=$lib_dir/lib
[ -f "$lib_dir/default.nix" ] && [ -f "$lib_dir/modules.nix" ] ||
    { echo "check-nix: $NIXPKGS_LIB is not a nixpkgs lib checkout" >&2; exit 2; }
lib_dir=$(cd "$lib_dir" && pwd)
echo "check-nix: evaluating with lib $(nix-instantiate --eval --expr "(import $lib_dir).version" 2>/dev/null) from $lib_dir"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# eval_json ATTR WHAT: nixos/check/eval.nix's ATTR as JSON in $work/ATTR.json; exits on error.
eval_json() {
    if ! nix-instantiate --eval --strict --json nixos/check/eval.nix \
        --arg lib "import $lib_dir" -A "$1" >"$work/$1.json"; then
        echo "check-nix: $2 failed" >&2
        exit 1
    fi
}
eval_json scenarios "evaluating nixos/check/eval.nix"
scenarios=$work/scenarios.json

python3 - "$scenarios" "$update" <<'EOF' || fail=1
import json
import re
import sys
import tomllib

scenarios = json.load(open(sys.argv[1]))
update = sys.argv[2] == "1"
ok = True


def problem(msg):
    global ok
    ok = False
    print(f"check-nix: {msg}", file=sys.stderr)


# --- TOML rendering (what pkgs.formats.toml's json2toml produces, modulo layout) --
BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def key(k):
    return k if BARE.match(k) else json.dumps(k)


def inline(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return json.dumps(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(inline(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{key(k)} = {inline(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML for {v!r}")


def is_table_array(v):
    return isinstance(v, list) and v and all(isinstance(x, dict) for x in v)


def emit(table, path, out):
    for k, v in table.items():
        if not isinstance(v, dict) and not is_table_array(v):
            out.append(f"{key(k)} = {inline(v)}")
    for k, v in table.items():
        sub = path + [key(k)]
        if isinstance(v, dict):
            out.append(f"\n[{'.'.join(sub)}]")
            emit(v, sub, out)
        elif is_table_array(v):
            for elem in v:
                out.append(f"\n[[{'.'.join(sub)}]]")
                emit(elem, sub, out)


def render(name, settings):
    out = [
        f"# What vm-tests/{name.removesuffix('-bad')}.nix's settings render to; generated by",
        "# scripts/check-nix.sh --update from nixos/check/eval.nix. Do not edit.",
    ]
    if name.endswith("-bad"):
        out.append("# Deliberately invalid: check-config must reject it (FILE:LINE:COL).")
    emit(settings, [], out)
    text = "\n".join(out) + "\n"
    if tomllib.loads(text) != settings:
        problem(f"{name}: rendered TOML does not round-trip")
    return text


# --- expectations -----------------------------------------------------------------
positive = ["basic", "queue", "builder-crash", "channel", "infra", "community"]
for name in positive + ["disabled", "builder-node"]:
    s = scenarios[name]
    if s.get("failedAssertions"):
        problem(f"{name}: failed assertions: {s['failedAssertions']}")
    if s.get("warnings"):
        problem(f"{name}: warnings: {s['warnings']}")
for name in ["store-secret", "relative-key", "forge-secret-in-settings",
             "notify-secret-in-settings", "notify-secret-without-relay",
             "cache-key-in-settings", "cache-without-key"]:
    if not scenarios[name]["failedAssertions"]:
        problem(f"{name}: expected a failed assertion")

nej = scenarios["nix-eval-jobs"]
if "nix-eval-jobs" not in nej["unit"]["path"]:
    problem(f"nix-eval-jobs: not on the service's PATH: {nej['unit']['path']}")
if nej["settings"].get("nix", {}).get("evaluator") != "nix-eval-jobs":
    problem(f"nix-eval-jobs: evaluator is {nej['settings'].get('nix')}")
if nej["settings"]["nix"].get("eval_workers") != 4 or nej["settings"]["nix"].get("eval_max_memory_mib") != 2048:
    problem(f"nix-eval-jobs: limits not rendered: {nej['settings']['nix']}")
if nej.get("failedAssertions") or nej.get("warnings"):
    problem(f"nix-eval-jobs: {nej.get('failedAssertions')} {nej.get('warnings')}")
if "nix-eval-jobs" in scenarios["basic"]["unit"]["path"]:
    problem("basic: nix-eval-jobs on PATH without nixEvalJobs.enable")

for name in positive + ["basic-bad"]:
    s = scenarios[name]
    if "mergequeue check-config --config" not in (s.get("checkScript") or ""):
        problem(f"{name}: the config file is not checked with check-config")
for name in positive:
    unit = scenarios[name]["unit"]
    sc = unit["serviceConfig"]
    want = {
        "Type": "notify",
        "User": "mergequeue",
        "StateDirectory": "mergequeue",
        "NoNewPrivileges": True,
        "ProtectSystem": "strict",
        "ProtectHome": True,
        "PrivateTmp": True,
    }
    for k, v in want.items():
        if sc.get(k) != v:
            problem(f"{name}: serviceConfig.{k} = {sc.get(k)!r}, want {v!r}")
    if unit["environment"].get("HOME") != "/var/lib/mergequeue":
        problem(f"{name}: HOME is not the state directory")
    if sorted(unit["path"]) != ["git", "nix", "openssh"]:
        problem(f"{name}: unit path {unit['path']}")
    for cred in sc.get("LoadCredential", []):
        if cred.split(":", 1)[1].startswith("/nix/store/"):
            problem(f"{name}: credential from the store: {cred}")
    settings = json.dumps(scenarios[name]["settings"])
    if "api_token" in settings or "vm-test-token" in settings:
        problem(f"{name}: a secret is in the rendered settings")

# Forge secrets: credential paths in the settings, the files delivered by LoadCredential.
creds = "/run/credentials/mergequeue.service"
for name, repo, want in [
    ("infra", "nixpkgs", {"token_file": ("token", "/var/lib/secrets/forge-token"),
                          "webhook_secret_file": ("webhook-secret", "/var/lib/secrets/forge-webhook-secret")}),
    ("github-app", "nixpkgs", {"app_private_key_file": ("app-key", "/run/keys/github-app.pem"),
                               "webhook_secret_file": ("webhook-secret", "/run/keys/webhook-secret")}),
]:
    s = scenarios[name]
    if s.get("failedAssertions"):
        problem(f"{name}: failed assertions: {s['failedAssertions']}")
    forge = next(r for r in s["settings"]["repos"] if r["name"] == repo)["forge"]
    loaded = s["unit"]["serviceConfig"].get("LoadCredential", [])
    for key_, (suffix, path) in want.items():
        cred = f"forge-{repo}-{suffix}"
        if forge.get(key_) != f"{creds}/{cred}":
            problem(f"{name}: forge {key_} = {forge.get(key_)!r}, want the credential {cred}")
        if f"{cred}:{path}" not in loaded:
            problem(f"{name}: {cred} is not loaded from {path}: {loaded}")
    for camel in ["tokenFile", "webhookSecretFile", "appPrivateKeyFile", "appId", "installationId"]:
        if camel in forge:
            problem(f"{name}: module option {camel} leaked into the settings")
if scenarios["github-app"]["settings"]["repos"][0]["forge"].get("app_id") != 123456:
    problem("github-app: app_id is not rendered")

# Notifier secrets: credential paths in settings.notify, the files loaded as credentials.
s = scenarios["notify-secrets"]
if s.get("failedAssertions"):
    problem(f"notify-secrets: failed assertions: {s['failedAssertions']}")
notify = s["settings"].get("notify", {})
loaded = s["unit"]["serviceConfig"].get("LoadCredential", [])
for table, key_, cred, path in [("email", "password_file", "smtp-password", "/run/keys/smtp-password"),
                                ("webhook", "secret_file", "notify-webhook-secret", "/run/keys/notify-hook")]:
    if notify.get(table, {}).get(key_) != f"{creds}/{cred}":
        problem(f"notify-secrets: notify.{table}.{key_} = {notify.get(table, {}).get(key_)!r}, want the credential {cred}")
    if f"{cred}:{path}" not in loaded:
        problem(f"notify-secrets: {cred} is not loaded from {path}: {loaded}")
if notify.get("email", {}).get("username") != "mergequeue" or notify.get("cap_per_maintainer_per_day") != 3:
    problem(f"notify-secrets: the rest of settings.notify is lost: {notify}")

s = scenarios["cache-key"]
if s.get("failedAssertions"):
    problem(f"cache-key: failed assertions: {s['failedAssertions']}")
cache = s["settings"].get("cache", {})
if cache != {"uri": "file:///var/lib/mergequeue/cache", "upload": "all", "secret_key_file": f"{creds}/cache-key"}:
    problem(f"cache-key: settings.cache = {cache}, want the key as the credential cache-key")
if "cache-key:/run/keys/cache-key" not in s["unit"]["serviceConfig"].get("LoadCredential", []):
    problem(f"cache-key: cache-key is not loaded: {s['unit']['serviceConfig'].get('LoadCredential')}")

# openFirewall opens the port of settings.listen, and nothing without it.
for name, want in [("infra", [8080]), ("community", []), ("basic", [])]:
    if scenarios[name]["firewall"] != want:
        problem(f"{name}: firewall ports {scenarios[name]['firewall']}, want {want}")

if scenarios["builder-node"]["trusted"] != ["mergequeue-builder"]:
    problem("builder-node: the builder user is not a trusted nix user")
if scenarios["builder-node"]["secretKeyFiles"] != ["/etc/nix/signing-key"]:
    problem(f"builder-node: the builder does not sign what it builds: {scenarios['builder-node']['secretKeyFiles']}")
signing_public = open("vm-tests/keys/signing.pub").read().strip()
if scenarios["queue-coordinator-keys"] != [signing_public]:
    problem(f"queue: the coordinator's daemon does not trust the builder's key: {scenarios['queue-coordinator-keys']}")

# --- vm-tests/config/*.toml --------------------------------------------------------
for name in ["basic", "basic-bad", "queue", "builder-crash", "channel"]:
    path = f"vm-tests/config/{name}.toml"
    text = render(name, scenarios[name]["settings"])
    if update:
        open(path, "w").write(text)
        print(f"check-nix: wrote {path}")
        continue
    try:
        current = open(path).read()
    except FileNotFoundError:
        current = None
    if current != text:
        problem(f"{path} is out of date; run scripts/check-nix.sh --update")

sys.exit(0 if ok else 1)
EOF

# ---- 6. every option has a description --------------------------------------------
eval_json optionDocs "rendering the option documentation"
python3 - "$work/optionDocs.json" <<'EOF' || fail=1
import json
import sys

options = json.load(open(sys.argv[1]))
bad = [o["name"] for o in options if not o["description"].strip()]
for name in bad:
    print(f"check-nix: option {name} has no description", file=sys.stderr)
if not options:
    print("check-nix: no options found", file=sys.stderr)
if bad or not options:
    sys.exit(1)
print(f"check-nix: all {len(options)} options are documented")
EOF

# ---- 7. the flake's outputs and the VM tests' Python ----------------------------
eval_json flake "evaluating flake.nix's outputs"
python3 - "$work/flake.json" <<'EOF' || fail=1
import json
import os
import subprocess
import sys
import tempfile

flake = json.load(open(sys.argv[1]))
ok = True


def problem(msg):
    global ok
    ok = False
    print(f"check-nix: {msg}", file=sys.stderr)


want = {"packages", "overlays", "nixosModules", "checks", "devShells", "formatter"}
if set(flake["outputs"]) != want:
    problem(f"flake outputs {sorted(flake['outputs'])}, want {sorted(want)}")
if set(flake["checks"]) != {"package", "basic", "queue", "builder-crash", "channel"}:
    problem(f"checks: {flake['checks']}")
if "default" not in flake["outputs"]["nixosModules"]:
    problem("no nixosModules.default")
if flake["packageMeta"].get("mainProgram") != "mergequeue":
    problem("package has no meta.mainProgram")
if not flake["cargoLock"].endswith("/Cargo.lock"):
    problem(f"cargoLock.lockFile = {flake['cargoLock']}")

# What the NixOS test driver treats as defined when it lints testScript.
driver_globals = [
    "start_all", "subtest", "machines", "driver", "log", "retry", "join_all",
    "serial_stdout_off", "serial_stdout_on", "polling_condition", "Machine",
    "create_machine", "run_tests", "vlans", "os", "t",
]
try:
    import pyflakes  # noqa: F401
    have_pyflakes = True
except ImportError:
    have_pyflakes = False
    print("check-nix: pyflakes not installed; VM test scripts are only compiled")
for name, test in sorted(flake["tests"].items()):
    try:
        compile(test["testScript"], f"vm-tests/{name}.nix:testScript", "exec")
    except SyntaxError as e:
        problem(f"vm-tests/{name}.nix: testScript: {e}")
    if have_pyflakes:
        with tempfile.NamedTemporaryFile("w", suffix=f"-{name}.py", delete=False) as f:
            f.write(test["testScript"])
        env = dict(os.environ, PYFLAKES_BUILTINS=",".join(driver_globals + test["nodes"]))
        r = subprocess.run([sys.executable, "-m", "pyflakes", f.name], env=env,
                           capture_output=True, text=True)
        os.unlink(f.name)
        if r.returncode != 0:
            problem(f"vm-tests/{name}.nix: pyflakes:\n{r.stdout}{r.stderr}")
sys.exit(0 if ok else 1)
EOF

if [ "$fail" = 0 ]; then
    echo "check-nix: ok"
fi
exit "$fail"
