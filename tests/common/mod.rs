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

pub mod sshd;

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
