# The builder's nix-daemon is killed in the middle of a build. That is an
# infrastructure failure: it is retried, never blamed on the change, and the
# change still lands.
{ pkgs, self, common }:

{
  name = "mergequeue-builder-crash";

  nodes = {
    gitserver = common.gitServer;
    builder = common.builderNode;
    coordinator =
      { ... }:
      {
        imports = [ common.coordinator ];
        services.mergequeue = {
          builders = [
            {
              hostName = "builder";
              sshUser = "mergequeue-builder";
              sshKey = "/etc/mergequeue/ssh-key";
              systems = [ common.system ];
              maxJobs = 1;
              publicHostKey = common.keys.hostPublicBase64;
              publicKey = common.keys.signingPublic;
            }
          ];
          settings.repos = [
            {
              name = "pkgs";
              url = "ssh://git@gitserver/srv/git/pkgs.git";
              branches = [
                {
                  name = "master";
                  required = [ "tested" ];
                }
              ];
            }
          ];
        };
      };
  };

  testScript = ''
    ${common.helpers}
    import re

    gitserver.start()
    builder.start()
    gitserver.wait_for_unit("sshd.service")
    builder.wait_for_unit("sshd.service")

    as_git(gitserver, "mq-seed-repo", "pkgs")
    slow = as_git(gitserver, "mq-commit", "pkgs", "master", "change-slow", "pkgs/slow.nix",
                  '{ mk }: mk "slow-1" ": mq-slow-marker; sleep 20; echo slow > $out"',
                  "add a slow package")

    coordinator.start()
    coordinator.wait_for_unit("mergequeue.service")
    coordinator.wait_for_open_port(${toString common.port})

    change = submit("pkgs", "refs/heads/change-slow", "master", "add a slow package")

    with subtest("kill the builder's daemon mid-build"):
        # The driver runs each command as `timeout N bash -c '...'`, whose command
        # lines contain the pattern too: `[m]` keeps pgrep/pkill from matching them.
        builder.wait_until_succeeds("pgrep -f '[m]q-slow-marker'", timeout=600)
        builder.succeed(
            "pkill -KILL -f '[n]ix-daemon --stdio' || true",
            "systemctl kill --signal=KILL nix-daemon.service",
        )
        builder.wait_until_fails("pgrep -f '[m]q-slow-marker'", timeout=60)

    with subtest("the change is retried and lands"):
        wait_for_state("pkgs", change, "merged")
        git(gitserver, f"git -C /srv/git/pkgs.git merge-base --is-ancestor {slow} master")
        builder.succeed("ls -d /nix/store/*-slow-1")

    with subtest("the crash was recorded as infrastructure, not a failure"):
        metrics = coordinator.succeed("curl -sSf http://127.0.0.1:8080/metrics")
        print(metrics)
        infra = re.search(r'^mergequeue_builds_total\{outcome="infrastructure"\} (\d+)$', metrics, re.M)
        assert infra and int(infra.group(1)) >= 1, "the crash is not counted as infrastructure"
        failed = re.search(r'^mergequeue_builds_total\{outcome="failed"\} (\d+)$', metrics, re.M)
        assert failed and int(failed.group(1)) == 0, "the crash was counted as a package failure"
        coordinator.succeed(
            f"curl -sSf http://127.0.0.1:8080/api/v1/repos/pkgs/changes/{change} | jq -e '.reason == null'"
        )
  '';
}
