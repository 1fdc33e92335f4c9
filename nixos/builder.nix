# services.mergequeue-builder: makes a machine a remote builder for a mergequeue
# coordinator: an SSH login the coordinator's key may use, trusted by the local
# nix-daemon (it imports unsigned derivations), as hydra's builder module does.
{ config, lib, ... }:

let
  inherit (lib) mkEnableOption mkIf mkOption types;
  cfg = config.services.mergequeue-builder;
in
{
  options.services.mergequeue-builder = {
    enable = mkEnableOption "a remote builder account for a mergequeue coordinator";

    user = mkOption {
      type = types.str;
      default = "mergequeue-builder";
      description = ''
        Login the coordinator uses (`sshUser` in
        {option}`services.mergequeue.builders`). It is added to
        {option}`nix.settings.trusted-users`, which is root-equivalent on this
        machine: give it to the coordinator's key only.
      '';
    };

    authorizedKeys = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "ssh-ed25519 AAAAC3Nza... mergequeue@coordinator" ];
      description = "Public keys allowed to log in as {option}`user`.";
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.authorizedKeys != [ ];
        message = "services.mergequeue-builder.authorizedKeys must list the coordinator's public key.";
      }
    ];

    users.users.${cfg.user} = {
      isSystemUser = true;
      group = cfg.user;
      # `ssh-ng://` runs `nix-daemon --stdio` through the login shell.
      useDefaultShell = true;
      openssh.authorizedKeys.keys = cfg.authorizedKeys;
    };
    users.groups.${cfg.user} = { };

    nix.settings.trusted-users = [ cfg.user ];
    services.openssh.enable = true;
  };
}
