# TEST-ONLY keys for the VM tests: never use them anywhere else. The private halves
# are committed on purpose (as harmonia and buildbot-nix do for their tests).
{
  clientPrivate = ./client;
  clientPublic = builtins.readFile ./client.pub;
  # nix-store --generate-binary-cache-key: the builders sign what they build with it.
  signingPrivate = ./signing;
  signingPublic = builtins.readFile ./signing.pub;
  hostPrivate = ./host;
  hostPublic = builtins.readFile ./host.pub;
  # base64 -w0 host.pub, the form of nix.buildMachines.*.publicHostKey.
  hostPublicBase64 = "c3NoLWVkMjU1MTkgQUFBQUMzTnphQzFsWkRJMU5URTVBQUFBSU5YL1g2ZUpIZnhLUlNmRys5Y1dHTFNwN2MvS20yKzFCekRnamdKYW84WTkgbWVyZ2VxdWV1ZS12bS10ZXN0LWhvc3QgKFRFU1QgT05MWSkK";
}
