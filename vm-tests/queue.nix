# Three nodes: a git server, the coordinator and an SSH builder. Three changes are
# queued, the second breaks a package that builds on master; the branch ends with
# the two good ones, the bad one is rejected and blamed, and every build ran on
# the builder.
{ pkgs, self, common }:

{
  name = "mergequeue-queue";

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
              maxJobs = 2;
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
                  batch_max = 3;
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

    gitserver.start()
    builder.start()
    gitserver.wait_for_unit("sshd.service")
    builder.wait_for_unit("sshd.service")

    with subtest("seed the repository and push three changes"):
        base = as_git(gitserver, "mq-seed-repo", "pkgs")
        a = as_git(gitserver, "mq-commit", "pkgs", "master", "change-a",
                   "pkgs/a.nix", '{ mk }: mk "a-1" "echo a > $out"', "add a")
        b = as_git(gitserver, "mq-commit", "pkgs", "master", "change-b",
                   "pkgs/hello.nix", '{ mk }: mk "hello-broken" "exit 1"', "break hello")
        c = as_git(gitserver, "mq-commit", "pkgs", "master", "change-c",
                   "pkgs/c.nix", '{ mk }: mk "c-1" "echo c > $out"', "add c")

    coordinator.start()
    coordinator.wait_for_unit("mergequeue.service")
    coordinator.wait_for_open_port(${toString common.port})

    with subtest("the builder is reachable as the service user"):
        builders = coordinator.succeed("curl -sSf http://127.0.0.1:8080/api/v1/builders")
        assert "ssh-ng://mergequeue-builder@builder" in builders, builders

    with subtest("submit three changes, one bad"):
        ids = [
            submit("pkgs", "refs/heads/change-a", "master", "add a"),
            submit("pkgs", "refs/heads/change-b", "master", "break hello"),
            submit("pkgs", "refs/heads/change-c", "master", "add c"),
        ]
        coordinator.succeed("curl -sSf http://127.0.0.1:8080/api/v1/repos/pkgs/queue | jq -e .")

    with subtest("the good changes land, the bad one is rejected and blamed"):
        wait_for_state("pkgs", ids[0], "merged")
        wait_for_state("pkgs", ids[2], "merged")
        wait_for_state("pkgs", ids[1], "rejected")
        reason = api_get(f"/api/v1/repos/pkgs/changes/{ids[1]}")["reason"]
        assert reason and "hello" in reason, f"rejection does not name the failing job: {reason!r}"

    with subtest("master holds exactly the two good changes"):
        git(gitserver, "git -C /srv/git/pkgs.git merge-base --is-ancestor " + base + " master")
        git(gitserver, "git -C /srv/git/pkgs.git merge-base --is-ancestor " + a + " master")
        git(gitserver, "git -C /srv/git/pkgs.git merge-base --is-ancestor " + c + " master")
        gitserver.fail(f"runuser -u git -- git -C /srv/git/pkgs.git merge-base --is-ancestor {b} master")
        git(gitserver, "git -C /srv/git/pkgs.git cat-file -e master:pkgs/a.nix")
        git(gitserver, "git -C /srv/git/pkgs.git cat-file -e master:pkgs/c.nix")
        hello = git(gitserver, "git -C /srv/git/pkgs.git show master:pkgs/hello.nix")
        assert "hello-1" in hello, hello

    with subtest("the builds ran on the builder"):
        builder.succeed("ls -d /nix/store/*-a-1 /nix/store/*-c-1 /nix/store/*-tested")

    with subtest("state survives a restart"):
        coordinator.succeed("systemctl restart mergequeue.service")
        coordinator.wait_for_unit("mergequeue.service")
        wait_for_state("pkgs", ids[0], "merged", timeout=120)
        wait_for_state("pkgs", ids[1], "rejected", timeout=120)
  '';
}
