# services.mergequeue-builder: makes a machine a remote builder for a mergequeue
# coordinator: an SSH login the coordinator's key may use, trusted by the local
# nix-daemon (it imports unsigned derivations), as hydra's builder module does, and a
# signing key for what it builds: the coordinator's service is not a trusted Nix user,
# so its daemon imports the builder's outputs only with a signature it trusts.
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

    signingKeyFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/var/lib/mergequeue-builder/signing-key";
      description = ''
        Secret key (from `nix-store --generate-binary-cache-key NAME FILE FILE.pub`)
        this machine's Nix signs every path it builds with (`secret-key-files`). An
        absolute path outside the Nix store, readable by root. Give the public half to
        the coordinator ({option}`services.mergequeue.builders.*.publicKey`): its
        service is not a trusted Nix user, and its nix-daemon requires signatures it
        trusts for what it imports. Without it, the coordinator cannot take the
        outputs built here (it reports that as an infrastructure failure, never a
        package's).
      '';
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.authorizedKeys != [ ];
        message = "services.mergequeue-builder.authorizedKeys must list the coordinator's public key.";
      }
      {
        assertion = cfg.signingKeyFile == null || !lib.hasPrefix builtins.storeDir cfg.signingKeyFile;
        message = "services.mergequeue-builder.signingKeyFile must not be in the Nix store (it is world-readable there).";
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

    warnings = lib.optional (cfg.signingKeyFile == null) ''
      services.mergequeue-builder.signingKeyFile is not set: paths built here carry no
      signature, and a mergequeue coordinator (not a trusted Nix user) cannot import them.
    '';

    nix.settings.trusted-users = [ cfg.user ];
    nix.settings.secret-key-files = mkIf (cfg.signingKeyFile != null) [ cfg.signingKeyFile ];
    services.openssh.enable = true;
  };
}
