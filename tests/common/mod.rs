//! Shared set-up for the end-to-end tests: real nix, git and the real binary.
#![allow(dead_code)]

use std::time::Duration;

use mergequeue::tools::fixture::Spec;
use mergequeue::tools::harness::{BranchOpts, Harness};
use serde_json::Value;

/// Fails loudly (never skips) when a prerequisite is missing.
pub fn require_tools() {
    if let Err(e) = mergequeue::tools::prereq::require(&["nix-instantiate", "nix-store", "git"]) {
        panic!("{e}");
    }
    assert!(
        std::path::Path::new("/bin/busybox").exists(),
        "/bin/busybox is missing: run scripts/install-prereqs.sh as root"
    );
}

pub fn harness(dir: &std::path::Path, packages: usize, seed: u64, opts: BranchOpts) -> Harness {
    require_tools();
    let spec = Spec {
        packages,
        seed,
        build_secs: (0.0, 0.0),
        ..Spec::default()
    };
    Harness::create(
        dir,
        &spec,
        &opts,
        std::path::Path::new(env!("CARGO_BIN_EXE_mergequeue")),
    )
    .expect("harness")
}

pub mod hook;
pub mod smtp;
pub mod sshd;

/// Sends `raw` and reads the answer until the server closes: (status, body).
pub async fn raw(addr: &str, raw: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
        .await
        .expect("the server answers within 20 s")
        .unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

pub const LONG: Duration = Duration::from_secs(300);

/// A package version no earlier run on this machine built: outputs already valid in the
/// store from an earlier run would make a deliberately slow build instant.
pub fn never_built_version() -> String {
    format!("9.{}.{}", std::process::id(), fastrand::u32(..))
}

pub fn state(v: &Value) -> &str {
    v["state"].as_str().unwrap_or("?")
}

/// A healthy leaf `P` with a direct dependency `L` outside the aggregate's closure and
/// with few reverse dependencies: changing `L` alters `P`'s derivation but not `tested`.
pub fn leaf_with_private_dep(h: &Harness) -> (String, String) {
    let gated: Vec<String> = {
        let mut g = h.set.transitive_deps("tested");
        g.push("tested".into());
        g
    };
    for p in h.set.healthy_leaves() {
        for l in h.set.deps.get(&p).into_iter().flatten() {
            if !gated.contains(l) && h.set.reverse_deps(l).len() <= 3 && !h.set.broken.contains(l) {
                return (p.clone(), l.clone());
            }
        }
    }
    panic!("no leaf with a private dependency in this package set");
}

/// The derivation of `attr` at the work clone's branch `branch`.
pub fn drv_of(h: &Harness, branch: &str, attr: &str) -> String {
    mergequeue::tools::harness::git(&h.work, &["checkout", "--quiet", branch]).unwrap();
    let drv = std::process::Command::new("nix-instantiate")
        .args(["--option", "substituters", ""])
        .arg(h.work.join("release.nix"))
        .args(["-A", attr])
        .output()
        .unwrap();
    mergequeue::tools::harness::git(&h.work, &["checkout", "--quiet", "master"]).unwrap();
    assert!(drv.status.success(), "{drv:?}");
    String::from_utf8_lossy(&drv.stdout).trim().to_string()
}

/// A JSON list from the API (`[]` when the answer is not a list).
pub async fn list(h: &Harness, path: &str) -> Vec<Value> {
    h.client
        .ok(hyper::Method::GET, path, None)
        .await
        .unwrap()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// `GET /api/v1/attempts?drv=`: every attempt at `drv`, each with its `builder` and `class`.
pub async fn attempts_of(h: &Harness, drv: &str) -> Vec<Value> {
    list(h, &format!("/api/v1/attempts?drv={drv}")).await
}

/// Submits a change that gives a healthy leaf a version never built here and a build of
/// `secs` seconds; returns the leaf, its version and the change id.
pub async fn submit_slow(h: &mut Harness, secs: f64) -> (String, String, u64) {
    let leaf = h.set.healthy_leaves()[0].clone();
    // Outputs valid in the local store from an earlier run would make the build a no-op.
    let version = never_built_version();
    h.change("slow", "slow leaf", |s| {
        s.set_version(&leaf, &version)?;
        s.set_sleep(&leaf, secs)
    })
    .unwrap();
    h.start_server().await.unwrap();
    let id = h.submit("slow", "slow", "normal").await.unwrap()["id"]
        .as_u64()
        .unwrap();
    (leaf, version, id)
}

/// `BranchOpts` for builders reached over ssh through `ssh_config` (`[[builders]]` in
/// `builders_toml`).
pub fn over_ssh(
    builders_toml: String,
    ssh_config: &std::path::Path,
    extra_toml: &str,
) -> BranchOpts {
    BranchOpts {
        builders_toml: Some(builders_toml),
        env: vec![("NIX_SSHOPTS".into(), format!("-F {}", ssh_config.display()))],
        extra_toml: extra_toml.into(),
        ..BranchOpts::default()
    }
}
