# Shared parts of the VM tests: a git server node, a builder node, the coordinator
# base configuration, the fixture package set and Python helpers for testScripts.
{ pkgs }:

let
  keys = import ./keys;
  system = pkgs.stdenv.hostPlatform.system;

  # The fixture package set, with a busybox from the host store as the only builder.
  fixture = pkgs.runCommand "mergequeue-vm-fixture" { } ''
    cp -r ${./fixture} $out
    chmod -R u+w $out
    sed -i 's|@busybox@|${pkgs.busybox}|' $out/release.nix
  '';

  # Host key shared by the git server and the builder (a test shortcut).
  hostKeyModule = {
    services.openssh = {
      enable = true;
      hostKeys = [
        {
          path = "/etc/ssh/mq_test_host_ed25519";
          type = "ed25519";
        }
      ];
    };
    environment.etc."ssh/mq_test_host_ed25519" = {
      source = keys.hostPrivate;
      mode = "0600";
    };
  };

  # `mq-seed-repo NAME`: a bare repository /srv/git/NAME.git with the fixture on
  # master and a work clone. Run as the git user.
  seedRepo = pkgs.writeShellScriptBin "mq-seed-repo" ''
    set -euo pipefail
    name=$1
    git init -q --bare "/srv/git/$name.git"
    git -C "/srv/git/$name.git" symbolic-ref HEAD refs/heads/master
    rm -rf "/srv/git/work-$name"
    git clone -q "/srv/git/$name.git" "/srv/git/work-$name" 2>/dev/null
    cd "/srv/git/work-$name"
    git checkout -q -b master
    cp -r ${fixture}/. .
    chmod -R u+w .
    git add -A
    git commit -q -m "initial package set"
    git push -q origin HEAD:refs/heads/master
    git rev-parse HEAD
  '';

  # `mq-commit REPO BASE BRANCH FILE CONTENT MESSAGE`: commit FILE=CONTENT on top of
  # BASE as BRANCH, push it, print the commit. Run as the git user.
  commit = pkgs.writeShellScriptBin "mq-commit" ''
    set -euo pipefail
    repo=$1 base=$2 branch=$3 file=$4 content=$5 message=$6
    cd "/srv/git/work-$repo"
    git fetch -q origin
    git checkout -q -B "$branch" "origin/$base"
    mkdir -p "$(dirname "$file")"
    printf '%s\n' "$content" > "$file"
    git add -A
    git commit -q -m "$message"
    git push -q -f origin "HEAD:refs/heads/$branch"
    git rev-parse HEAD
  '';

  # `mq-log-refs REPO`: record every committed update of REPO's refs in
  # /srv/git/REPO.ref-log ("REF NEW-COMMIT" lines), whoever pushes.
  logRefs = pkgs.writeShellScriptBin "mq-log-refs" ''
    set -euo pipefail
    repo=$1
    hook="/srv/git/$repo.git/hooks/reference-transaction"
    cat > "$hook" <<EOF
    #!${pkgs.runtimeShell}
    [ "\$1" = committed ] || exit 0
    while read -r old new ref; do echo "\$ref \$new" >> /srv/git/$repo.ref-log; done
    EOF
    chmod +x "$hook"
    touch "/srv/git/$repo.ref-log"
  '';
in
{
  inherit keys system fixture;

  apiToken = "vm-test-token";
  port = 8080;

  gitServer =
    { ... }:
    {
      imports = [ hostKeyModule ];
      users.users.git = {
        isSystemUser = true;
        group = "git";
        home = "/srv/git";
        createHome = true;
        useDefaultShell = true;
        openssh.authorizedKeys.keys = [ keys.clientPublic ];
      };
      users.groups.git = { };
      programs.git = {
        enable = true;
        config = {
          user.name = "VM test";
          user.email = "vm-test@example.org";
          init.defaultBranch = "master";
          safe.directory = "*";
        };
      };
      environment.systemPackages = [
        seedRepo
        commit
        logRefs
      ];
      networking.firewall.allowedTCPPorts = [ 22 ];
    };

  builderNode =
    { ... }:
    {
      imports = [ hostKeyModule ];
      services.mergequeue-builder = {
        enable = true;
        authorizedKeys = [ keys.clientPublic ];
        signingKeyFile = "/etc/nix/signing-key";
      };
      environment.etc."nix/signing-key" = {
        source = keys.signingPrivate;
        mode = "0400";
      };
      nix.settings.substituters = pkgs.lib.mkForce [ ];
      virtualisation.memorySize = 1536;
      virtualisation.writableStore = true;
      networking.firewall.allowedTCPPorts = [ 22 ];
    };

  # The coordinator: mergequeue with the test token and git key, knowing the host key
  # of the git server and the builder. Tests add repos, builders and channels.
  coordinator =
    { lib, ... }:
    {
      environment.etc = {
        # `mode` makes these copies in /etc, not links into the store.
        "mergequeue/api-token" = {
          text = "vm-test-token";
          mode = "0400";
        };
        "mergequeue/ssh-key" = {
          source = keys.clientPrivate;
          mode = "0400";
        };
      };
      programs.ssh.knownHosts = {
        gitserver.publicKey = keys.hostPublic;
        builder.publicKey = keys.hostPublic;
        builder2.publicKey = keys.hostPublic;
      };
      services.mergequeue = {
        enable = true;
        apiTokenFile = "/etc/mergequeue/api-token";
        gitSshKeyFile = "/etc/mergequeue/ssh-key";
        settings = {
          listen = "0.0.0.0:8080";
          # The VMs are offline.
          nix.options.substituters = "";
        };
      };
      nix.settings.substituters = lib.mkForce [ ];
      environment.systemPackages = [
        pkgs.jq
        pkgs.git
      ];
      # Evaluation needs the fixture's busybox in the store.
      system.extraDependencies = [ fixture ];
      virtualisation.memorySize = 2048;
      virtualisation.writableStore = true;
    };

  # Python for testScripts; expects a node named `coordinator`.
  helpers = ''
    import json
    import shlex

    TOKEN_HEADER = "-H 'Authorization: Bearer vm-test-token'"
    BASE = "http://127.0.0.1:8080"


    def api_get(path):
        return json.loads(coordinator.succeed(f"curl -sSf {BASE}{path}"))


    def submit(repo, git_ref, target, title):
        body = json.dumps({"ref": git_ref, "target": target, "title": title})
        out = coordinator.succeed(
            f"curl -sSf {TOKEN_HEADER} -H 'Content-Type: application/json' "
            f"-X POST --data {shlex.quote(body)} {BASE}/api/v1/repos/{repo}/changes"
        )
        return json.loads(out)["id"]


    def wait_for_state(repo, change, state, timeout=900):
        coordinator.wait_until_succeeds(
            f"curl -sSf {BASE}/api/v1/repos/{repo}/changes/{change} "
            f"| jq -e '.state == \"{state}\"'",
            timeout=timeout,
        )


    def git(node, cmd):
        return node.succeed(f"runuser -u git -- {cmd}").strip()


    def as_git(node, *args):
        return git(node, " ".join(shlex.quote(a) for a in args))
  '';
}
