# One node: the service starts with the hardened unit, reports READY, answers the
# API and /metrics, refuses unauthenticated writes, keeps its state across a
# restart; and a configuration check-config rejects fails the build.
{ pkgs, self, common }:

let
  # The same module, evaluated with a channel that names an unknown repository:
  # the build of its checked config file must fail with FILE:LINE:COL.
  badSystem = pkgs.nixos {
    imports = [ self.nixosModules.default ];
    boot.loader.grub.enable = false;
    fileSystems."/".device = "nodev";
    system.stateVersion = "25.05";
    services.mergequeue = {
      enable = true;
      settings = {
        repos = [
          {
            name = "pkgs";
            url = "file:///srv/git/pkgs.git";
          }
        ];
        channels = [
          {
            name = "unstable";
            repo = "pkgz";
            source = "master";
            target = "nixos-unstable";
            gate = [ "tested" ];
          }
        ];
      };
    };
  };
  badConfigBuild = pkgs.testers.testBuildFailure badSystem.config.services.mergequeue.configFile;
in
{
  name = "mergequeue-basic";

  nodes.machine =
    { ... }:
    {
      imports = [ common.coordinator ];
      services.mergequeue.settings.repos = [
        {
          name = "pkgs";
          url = "file:///srv/git/pkgs.git";
          branches = [
            {
              name = "master";
              required = [ "tested" ];
            }
          ];
        }
      ];
      environment.etc."mergequeue-bad-config".source = badConfigBuild;

      # The repository the service fetches, on the same machine.
      systemd.services.seed-repo = {
        before = [ "mergequeue.service" ];
        requiredBy = [ "mergequeue.service" ];
        path = [ pkgs.git ];
        serviceConfig.Type = "oneshot";
        script = ''
          if [ ! -d /srv/git/pkgs.git ]; then
            work=$(mktemp -d)
            cp -r ${common.fixture}/. "$work"
            chmod -R u+w "$work"
            git -C "$work" init -q -b master
            git -C "$work" add -A
            git -C "$work" -c user.name=test -c user.email=test@example.org commit -q -m initial
            git init -q --bare /srv/git/pkgs.git
            git -C "$work" push -q /srv/git/pkgs.git master
            chown -R mergequeue:mergequeue /srv/git
          fi
        '';
      };
    };

  testScript = ''
    machine.wait_for_unit("mergequeue.service")
    machine.wait_for_open_port(${toString common.port})

    with subtest("Type=notify: active means READY=1 was sent"):
        machine.succeed("systemctl show -p Type mergequeue.service | grep -x Type=notify")
        machine.succeed("systemctl show -p WatchdogUSec mergequeue.service | grep -v '=0$'")
        machine.succeed("systemctl is-active mergequeue.service")

    with subtest("runs as the static user with its state directory"):
        machine.succeed("test \"$(stat -c %U /var/lib/mergequeue)\" = mergequeue")
        pid = machine.succeed("systemctl show -p MainPID --value mergequeue.service").strip()
        machine.succeed(f"test \"$(stat -c %U /proc/{pid})\" = mergequeue")
        machine.wait_until_succeeds("ls /var/lib/mergequeue/mergequeue.sqlite")

    with subtest("the API answers"):
        machine.succeed("curl -sSf http://127.0.0.1:8080/api/v1/repos/pkgs/queue | jq -e .")
        machine.succeed("curl -sSf http://127.0.0.1:8080/api/v1/builders | jq -e .")
        metrics = machine.succeed("curl -sSf http://127.0.0.1:8080/metrics")
        assert metrics.startswith("# "), metrics
        machine.fail("curl -sSf http://127.0.0.1:8080/api/v1/repos/nope/queue")

    with subtest("writes need the token from the credential"):
        machine.fail(
            "curl -sSf -X POST -H 'Content-Type: application/json' "
            "--data '{\"ref\":\"refs/heads/x\",\"target\":\"master\"}' "
            "http://127.0.0.1:8080/api/v1/repos/pkgs/changes"
        )
        machine.fail(
            "curl -sSf -X POST -H 'Authorization: Bearer wrong' "
            "-H 'Content-Type: application/json' "
            "--data '{\"ref\":\"refs/heads/x\",\"target\":\"master\"}' "
            "http://127.0.0.1:8080/api/v1/repos/pkgs/changes"
        )
        # The secret reaches the service as a credential; the config has no secret.
        unit = machine.succeed("systemctl cat mergequeue.service")
        assert "LoadCredential=api-token:/etc/mergequeue/api-token" in unit.splitlines(), unit
        configs = [w for w in unit.split() if w.startswith("/nix/store/") and w.endswith(".toml")]
        assert configs, f"no config file in ExecStart: {unit}"
        machine.fail(f"grep -q vm-test-token {configs[0]}")

    with subtest("hardening is in effect"):
        props = machine.succeed(
            "systemctl show -p NoNewPrivileges -p ProtectSystem -p ProtectHome "
            "-p PrivateTmp mergequeue.service"
        )
        for want in ["NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes"]:
            assert want in props, f"{want} missing in {props}"

    with subtest("state survives a restart"):
        machine.succeed("systemctl restart mergequeue.service")
        machine.wait_for_unit("mergequeue.service")
        machine.wait_for_open_port(${toString common.port})
        machine.succeed("curl -sSf http://127.0.0.1:8080/api/v1/repos/pkgs/queue | jq -e .")
        # Not `| grep -q`: the driver runs commands with pipefail, and journalctl
        # dies of SIGPIPE when grep stops reading early.
        journal = machine.succeed("journalctl -u mergequeue.service -o verbose")
        assert "VERSION=" in journal, "no structured journal records"

    with subtest("a configuration check-config rejects fails the build"):
        machine.succeed("test \"$(cat /etc/mergequeue-bad-config/testBuildFailure.exit)\" != 0")
        machine.succeed(
            "grep -E 'mergequeue.toml:[0-9]+:[0-9]+: .*unknown repo' "
            "/etc/mergequeue-bad-config/testBuildFailure.log"
        )
  '';
}
