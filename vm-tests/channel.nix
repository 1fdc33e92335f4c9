# A community channel: it follows `master` of an upstream repository the maintainer
# does not own and advances `community-unstable` in the maintainer's own remote,
# only to commits whose gate built. A commit that breaks the gate is skipped; the
# channel never points at it and never moves backwards.
{ pkgs, self, common }:

{
  name = "mergequeue-channel";

  nodes = {
    gitserver = common.gitServer;
    coordinator =
      { ... }:
      {
        imports = [ common.coordinator ];
        services.mergequeue = {
          # Builds in the coordinator's own store, through its nix-daemon.
          builders = [
            {
              hostName = "localhost";
              protocol = null;
              maxJobs = 2;
            }
          ];
          settings = {
            repos = [
              {
                name = "upstream";
                url = "ssh://git@gitserver/srv/git/upstream.git";
              }
            ];
            channels = [
              {
                name = "community";
                repo = "upstream";
                source = "master";
                target = "community-unstable";
                remote = "ssh://git@gitserver/srv/git/mine.git";
                gate = [ "tested" ];
              }
            ];
          };
        };
      };
  };

  testScript = ''
    ${common.helpers}

    REFLOG = "/srv/git/mine.ref-log"

    def channel_at():
        return git(gitserver, "git -C /srv/git/mine.git rev-parse refs/heads/community-unstable")

    def wait_channel_at(commit, timeout=900):
        gitserver.wait_until_succeeds(
            "test \"$(runuser -u git -- git -C /srv/git/mine.git rev-parse refs/heads/community-unstable)\""
            f" = {commit}",
            timeout=timeout,
        )

    gitserver.start()
    gitserver.wait_for_unit("sshd.service")

    with subtest("upstream at C0, the maintainer's channel branch at C0"):
        c0 = as_git(gitserver, "mq-seed-repo", "upstream")
        git(gitserver, "git init -q --bare /srv/git/mine.git")
        git(gitserver, f"git -C /srv/git/work-upstream push -q /srv/git/mine.git {c0}:refs/heads/community-unstable")
        as_git(gitserver, "mq-log-refs", "mine")
        as_git(gitserver, "mq-log-refs", "upstream")

    with subtest("C1 builds: the channel advances to it"):
        c1 = as_git(gitserver, "mq-commit", "upstream", "master", "master",
                    "pkgs/a.nix", '{ mk }: mk "a-1" "echo a > $out"', "C1: add a")
        coordinator.start()
        coordinator.wait_for_unit("mergequeue.service")
        coordinator.wait_for_open_port(${toString common.port})
        wait_channel_at(c1)
        coordinator.succeed("curl -sSf http://127.0.0.1:8080/api/v1/channels/community | jq -e .")

    with subtest("C2 breaks the gate: the channel stays at C1"):
        c2 = as_git(gitserver, "mq-commit", "upstream", "master", "master",
                    "pkgs/hello.nix", '{ mk }: mk "hello-broken" "exit 1"', "C2: break hello")
        # The gate of C2 was built and failed (nix keeps logs of failed builds) ...
        coordinator.wait_until_succeeds(
            "ls /nix/var/log/nix/drvs/*/*-hello-broken.drv*", timeout=900
        )
        # ... and the channel did not move.
        coordinator.sleep(15)
        assert channel_at() == c1, "channel moved to a commit whose gate failed"

    with subtest("C3 fixes it: the channel advances past C2 to C3"):
        c3 = as_git(gitserver, "mq-commit", "upstream", "master", "master",
                    "pkgs/hello.nix", '{ mk }: mk "hello-2" "echo hello > $out"', "C3: fix hello")
        wait_channel_at(c3)
        git(gitserver, f"git -C /srv/git/mine.git merge-base --is-ancestor {c1} {c3}")

    with subtest("the channel only ever pointed at gated commits, in order"):
        log = gitserver.succeed(f"cat {REFLOG}")
        print(log)
        moves = [line.split()[1] for line in log.splitlines()
                 if line.startswith("refs/heads/community-unstable ")]
        assert c2 not in moves, f"channel pointed at the broken commit {c2}: {moves}"
        assert moves == [c1, c3], f"unexpected channel moves {moves}, wanted {[c1, c3]}"

    with subtest("the upstream is only read"):
        upstream_log = gitserver.succeed("cat /srv/git/upstream.ref-log")
        assert "community-unstable" not in upstream_log, upstream_log

    with subtest("restart: the channel stays put"):
        coordinator.succeed("systemctl restart mergequeue.service")
        coordinator.wait_for_unit("mergequeue.service")
        coordinator.wait_for_open_port(${toString common.port})
        coordinator.sleep(10)
        assert channel_at() == c3
  '';
}
