//! The service run the way the NixOS module runs it: as an unprivileged user that is not
//! a Nix trusted user, talking to a root `nix-daemon` that requires signatures
//! (`require-sigs = true`), with remote `ssh-ng://` builders. Builders sign what they build
//! (`secret-key-files`); the daemon trusts the keys of the builders it should trust.
//!
//! Needs root (it starts the daemon and drops to `nobody`), as CI runs the tests.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::sshd::Sshd;
use common::{harness, never_built_version, state, LONG};
use hyper::Method;
use mergequeue::tools::harness::{BranchOpts, Harness};
use serde_json::Value;

/// The unprivileged user the server runs as (Debian's `nobody`).
const NOBODY: (u32, u32) = (65534, 65534);

/// A root `nix-daemon` on its own socket and settings, over the machine's `/nix/store`.
struct Daemon {
    socket: PathBuf,
    child: Child,
}

impl Daemon {
    fn start(dir: &Path, trusted_keys: &[String]) -> Daemon {
        let conf = dir.join("daemon-conf");
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::write(
            conf.join("nix.conf"),
            format!(
                "sandbox = false\nsubstituters =\nrequire-sigs = true\ntrusted-users = root\n\
                 allowed-users = *\nbuild-users-group =\ntrusted-public-keys = {}\n",
                trusted_keys.join(" ")
            ),
        )
        .unwrap();
        let socket = dir.join("daemon.socket");
        let child = Command::new("nix-daemon")
            .env("NIX_CONF_DIR", &conf)
            .env("NIX_DAEMON_SOCKET_PATH", &socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("daemon.log")).unwrap())
            .spawn()
            .expect("nix-daemon: install nix-bin (scripts/install-prereqs.sh)");
        let t = Instant::now();
        while !socket.exists() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "nix-daemon did not create its socket"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Daemon { socket, child }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A binary cache signing key pair: (secret key file, public key).
fn signing_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let secret = dir.join(format!("{name}.sec"));
    let public = dir.join(format!("{name}.pub"));
    let out = Command::new("nix-store")
        .arg("--generate-binary-cache-key")
        .arg(name)
        .arg(&secret)
        .arg(&public)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    (
        secret,
        std::fs::read_to_string(public).unwrap().trim().into(),
    )
}

fn is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() == 0 }
}

/// Hands every file under `dir` to the unprivileged user (the module's state directory
/// belongs to the service user too).
fn give_to_nobody(dir: &Path) {
    let out = Command::new("chown")
        .args(["-R", &format!("{}:{}", NOBODY.0, NOBODY.1)])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// The server's environment: the daemon, and a HOME of its own, as the module sets.
fn daemon_env(daemon: &Daemon, home: &Path) -> Vec<(String, String)> {
    vec![
        ("NIX_REMOTE".into(), "daemon".into()),
        (
            "NIX_DAEMON_SOCKET_PATH".into(),
            daemon.socket.display().to_string(),
        ),
        ("HOME".into(), home.display().to_string()),
        (
            "XDG_CACHE_HOME".into(),
            home.join(".cache").display().to_string(),
        ),
    ]
}

fn builders_toml(builders: &[(&Sshd, f64)]) -> String {
    builders
        .iter()
        .map(|(s, speed)| {
            format!(
                "[[builders]]\nuri = {:?}\nsystems = [\"x86_64-linux\"]\nmax_jobs = 1\n\
                 speed_factor = {speed}\n",
                s.uri()
            )
        })
        .collect()
}

fn uid_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .expect("Uid line")
}

/// The output paths of `attr` at the work clone's branch `branch`.
fn outputs_of(h: &Harness, branch: &str, attr: &str) -> Vec<String> {
    let drv = common::drv_of(h, branch, attr);
    let outs = Command::new("nix-store")
        .args(["-q", "--outputs", &drv])
        .output()
        .unwrap();
    String::from_utf8_lossy(&outs.stdout)
        .lines()
        .map(String::from)
        .collect()
}

/// The signatures on `path` in the local store.
fn signatures(path: &str) -> Vec<String> {
    let out = Command::new("nix")
        .args([
            "--extra-experimental-features",
            "nix-command",
            "path-info",
            "--json",
            "--sigs",
            path,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    info[0]["signatures"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The set-up every test here shares: a root daemon (trusting `trusted_keys`), a HOME
/// for the service, and a harness whose server will talk to that daemon (`extra_env` too).
fn deployed(
    dir: &Path,
    trusted_keys: &[String],
    extra_env: Vec<(String, String)>,
    opts: BranchOpts,
    (packages, seed): (usize, u64),
) -> (Daemon, Harness) {
    common::require_tools();
    assert!(
        is_root(),
        "this test starts a root nix-daemon and runs the service as nobody: run it as root"
    );
    let daemon = Daemon::start(dir, trusted_keys);
    let home = dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let mut env = daemon_env(&daemon, &home);
    env.extend(extra_env);
    let h = harness(&dir.join("h"), packages, seed, BranchOpts { env, ..opts });
    (daemon, h)
}

/// Hands the test's files to `nobody` and starts the server as that user.
async fn start_as_nobody(h: &mut Harness, dir: &Path) {
    give_to_nobody(dir);
    h.run_as = Some(NOBODY);
    h.start_server().await.unwrap();
}

/// Branch `bump`: a healthy leaf at a version never built before. Returns the leaf.
fn bump_a_leaf(h: &mut Harness) -> String {
    let leaf = h.set.healthy_leaves()[0].clone();
    let version = never_built_version();
    h.change("bump", "bump a leaf", |s| s.set_version(&leaf, &version))
        .unwrap();
    leaf
}

/// A `[cache]` table.
fn cache_toml(uri: &str, secret: &Path) -> String {
    format!(
        "[cache]\nuri = {uri:?}\nsecret_key_file = {:?}\n",
        secret.display().to_string()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn as_an_untrusted_user_remote_outputs_import_signed_and_an_unsigned_builder_is_never_blamed()
{
    let dir = tempfile::tempdir().unwrap();
    let ssh_config = dir.path().join("ssh_config");
    let (b1_secret, b1_public) = signing_key(dir.path(), "deployed-b1-1");
    // b1 signs with a key the coordinator's daemon trusts; b2, the faster one, signs
    // nothing (a builder set up without `signingKeyFile`).
    let b1 = Sshd::start_with(dir.path(), "signed", &ssh_config, Some(&b1_secret));
    let b2 = Sshd::start(dir.path(), "unsigned", &ssh_config);
    let ssh = vec![("NIX_SSHOPTS".into(), format!("-F {}", ssh_config.display()))];
    let opts = BranchOpts {
        builders_toml: Some(builders_toml(&[(&b1, 1.0), (&b2, 4.0)])),
        ..BranchOpts::default()
    };
    let (daemon, mut h) = deployed(dir.path(), &[b1_public], ssh, opts, (20, 5));
    let leaf = bump_a_leaf(&mut h);
    start_as_nobody(&mut h, dir.path()).await;
    assert_eq!(
        uid_of(h.server_pid().unwrap()),
        NOBODY.0,
        "the server runs unprivileged"
    );
    let id = h.submit("bump", "bump", "normal").await.unwrap()["id"]
        .as_u64()
        .unwrap();
    let done = h.wait_final(&[id], LONG).await.unwrap();
    let log = || std::fs::read_to_string(h.root.join("server.log")).unwrap_or_default();
    assert_eq!(state(&done[0]), "merged", "{}\n{}", done[0], log());

    let bs = h
        .client
        .ok(Method::GET, "/api/v1/builders", None)
        .await
        .unwrap();
    let by_uri = |b: &Sshd| {
        bs.as_array()
            .unwrap()
            .iter()
            .find(|x| x["uri"] == b.uri().as_str() || x["id"] == b.uri().as_str())
            .cloned()
            .unwrap_or_else(|| panic!("builder {} in {bs}", b.uri()))
    };
    let (signed, unsigned) = (by_uri(&b1), by_uri(&b2));
    let count = |b: &Value, class: &str| b["attempts"][class].as_u64().unwrap_or(0);
    assert!(
        count(&unsigned, "infrastructure") >= 1,
        "the unsigned builder's outputs were refused, as infrastructure: {bs}"
    );
    assert_eq!(
        count(&signed, "failed") + count(&unsigned, "failed"),
        0,
        "never a package failure: {bs}"
    );
    assert!(count(&signed, "success") >= 1, "{bs}");
    // The refusal says what to configure.
    let events = h
        .client
        .ok(Method::GET, "/api/v1/events?after=0", None)
        .await
        .unwrap()
        .to_string();
    assert!(
        events.contains("trusted-public-keys") && events.contains("secret-key-files"),
        "the infrastructure failure names the settings to fix: {events}"
    );
    // The landed job's output is in the local store, signed by the builder that built it.
    for out in outputs_of(&h, "bump", &leaf) {
        let sigs = signatures(&out);
        assert!(
            sigs.iter().any(|s| s.starts_with("deployed-b1-1:")),
            "{out} carries b1's signature: {sigs:?}"
        );
    }
    drop(daemon);
}

/// The store paths of a channel release (`store-paths`).
fn release_paths(artifacts: &Path, rev: &str) -> Vec<String> {
    std::fs::read_to_string(artifacts.join(rev).join("store-paths"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

/// `nix store verify` of `paths` and their closures in `store`, trusting only `public`.
fn verify(store: &str, public: &str, paths: &[String]) -> std::process::Output {
    Command::new("nix")
        .args(["--extra-experimental-features", "nix-command"])
        .args(["--option", "substituters", ""])
        .args(["--option", "trusted-public-keys", public])
        .args(["store", "verify", "--recursive", "--store", store])
        .args(paths)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn as_an_untrusted_user_gated_closures_reach_a_signed_cache_before_the_channel_moves() {
    let dir = tempfile::tempdir().unwrap();
    let (secret, public) = signing_key(dir.path(), "deployed-cache-1");
    let (daemon, mut h) = deployed(dir.path(), &[], vec![], BranchOpts::default(), (20, 6));
    let artifacts = dir.path().join("artifacts");
    let cache_uri = format!("file://{}", dir.path().join("cache").display());
    h.append_config(&cache_toml(&cache_uri, &secret)).unwrap();
    h.add_channel(&mergequeue::tools::harness::ChannelSpec {
        artifacts_dir: Some(artifacts.clone()),
        ..Default::default()
    })
    .unwrap();
    bump_a_leaf(&mut h);
    start_as_nobody(&mut h, dir.path()).await;
    let id = h.submit("bump", "bump", "normal").await.unwrap()["id"]
        .as_u64()
        .unwrap();
    let done = h.wait_final(&[id], LONG).await.unwrap();
    assert_eq!(state(&done[0]), "merged", "{}", done[0]);
    let master = h.upstream_head("master").unwrap();
    h.wait_channel("unstable", LONG, |v| {
        v["rev"] == master.as_str() && v["published"] == master.as_str()
    })
    .await
    .unwrap();
    // The gate's closure is in the cache, signed with the cache's key, and the release
    // says where to substitute from.
    let paths = release_paths(&artifacts, &master);
    assert!(!paths.is_empty());
    let verified = verify(&cache_uri, &public, &paths);
    assert!(verified.status.success(), "{verified:?}");
    let (_, other) = signing_key(dir.path(), "someone-else-1");
    let untrusted = verify(&cache_uri, &other, &paths);
    assert!(
        !untrusted.status.success(),
        "the check is real: another key does not verify"
    );
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(artifacts.join(&master).join("manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["cache"]["uri"], cache_uri.as_str(), "{manifest}");
    assert_eq!(
        manifest["cache"]["public_key"],
        public.as_str(),
        "{manifest}"
    );
    assert_eq!(
        std::fs::read_to_string(artifacts.join(&master).join("binary-cache-url")).unwrap(),
        cache_uri
    );
    // The landed commit's required job went up on landing too (the same `tested` here,
    // so check the upload was asked for, in the server's log).
    let log = std::fs::read_to_string(h.root.join("server.log")).unwrap_or_default();
    assert!(
        log.contains("cache: uploaded") && log.contains("(pkgs landed on master at"),
        "the landing's upload is logged:\n{log}"
    );
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_channel_does_not_move_while_its_gate_cannot_reach_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let (secret, _) = signing_key(dir.path(), "deployed-cache-2");
    let (daemon, mut h) = deployed(dir.path(), &[], vec![], BranchOpts::default(), (12, 7));
    // A cache the service cannot write to.
    h.append_config(&cache_toml("file:///proc/mergequeue-no-cache", &secret))
        .unwrap();
    h.add_channel(&mergequeue::tools::harness::ChannelSpec::default())
        .unwrap();
    start_as_nobody(&mut h, dir.path()).await;
    let t = Instant::now();
    loop {
        let events = h
            .client
            .ok(Method::GET, "/api/v1/events?after=0", None)
            .await
            .unwrap()
            .to_string();
        if events.contains("is not in the cache") {
            break;
        }
        assert!(t.elapsed() < LONG, "no upload failure reported: {events}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let v = h.channel("unstable").await.unwrap();
    assert!(v["rev"].is_null(), "the channel did not move: {v}");
    assert!(
        h.upstream_head("unstable").is_err(),
        "the target was not created"
    );
    drop(daemon);
}
