//! The synthetic package-set generator: determinism, and that its sets evaluate and build
//! with real Nix (local store and a chroot store).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use mergequeue::tools::fixture::{generate, Spec, AGGREGATE, BUILD_FAILURE_MARKER};

fn require_nix() {
    let ok = Command::new("nix-build")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "nix-build is not on PATH: these tests need real Nix. Run the prerequisite installer \
         first (apt-get update && apt-get install -y nix-bin git busybox-static, see \
         docs/nix-here.md), then re-run the tests."
    );
}

/// All files under `dir` (relative path -> contents).
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// `nix-build release.nix -A attr` (offline, no out link): (success, stdout+stderr).
fn nix_build(dir: &Path, attr: &str, store: Option<&Path>) -> (bool, String) {
    let mut cmd = Command::new("nix-build");
    cmd.current_dir(dir)
        .args(["--option", "substituters", ""])
        .args(["release.nix", "-A", attr, "--no-out-link"]);
    if let Some(s) = store {
        cmd.arg("--store").arg(s);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn generation_is_deterministic_per_seed() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let spec = Spec {
        packages: 120,
        seed: 42,
        build_secs: (0.0, 1.0),
        ..Spec::default()
    };
    let sa = generate(a.path(), &spec).unwrap();
    let sb = generate(b.path(), &spec).unwrap();
    let sc = generate(
        c.path(),
        &Spec {
            seed: 43,
            ..spec.clone()
        },
    )
    .unwrap();
    assert_eq!(tree(a.path()), tree(b.path()));
    assert_eq!(sa.names, sb.names);
    assert_eq!(sa.deps, sb.deps);
    assert_eq!(sa.broken, sb.broken);
    assert_ne!(tree(a.path()), tree(c.path()));
    assert_ne!(sa.names, sc.names);
    assert_eq!(sa.names.len(), 121);
    assert_eq!(sa.names.last().unwrap(), AGGREGATE);
    assert!(tree(a.path()).contains_key("bootstrap/busybox"));
}

#[test]
fn generated_set_is_a_layered_dag() {
    let dir = tempfile::tempdir().unwrap();
    let set = generate(dir.path(), &Spec::default()).unwrap();
    // Dependencies only point backwards in generation order.
    for (i, n) in set.names.iter().enumerate() {
        for d in &set.deps[n] {
            let j = set.names.iter().position(|x| x == d).unwrap();
            assert!(j < i, "{n} depends on later {d}");
        }
    }
    // nixpkgs-like fan-out: a few core libraries are behind most packages.
    let mut fan: Vec<(usize, String)> = set
        .names
        .iter()
        .map(|n| (set.reverse_deps(n).len(), n.clone()))
        .collect();
    fan.sort();
    fan.reverse();
    assert!(fan[0].0 > 250, "{fan:?}");
    assert!(set.core.contains(&fan[0].1));
    let median = fan[fan.len() / 2].0;
    assert!(median <= 2, "median fan-out {median}");
    assert!(!set.nested().is_empty());
    for b in &set.broken {
        assert!(!set.core.contains(b));
    }
}

#[test]
fn generated_set_evaluates_and_builds() {
    require_nix();
    let dir = tempfile::tempdir().unwrap();
    let mut set = generate(
        dir.path(),
        &Spec {
            packages: 40,
            seed: 11,
            broken: 2,
            ..Spec::default()
        },
    )
    .unwrap();
    // Every .nix file parses.
    for f in ["lib.nix", "release.nix", "maintainers.nix"] {
        let ok = Command::new("nix-instantiate")
            .current_dir(dir.path())
            .args(["--parse", f])
            .output()
            .unwrap()
            .status
            .success();
        assert!(ok, "{f} does not parse");
    }
    // nix-env sees every job (nested ones through recurseForDerivations).
    let out = Command::new("nix-env")
        .current_dir(dir.path())
        .args(["--option", "substituters", ""])
        .args(["-f", "release.nix", "-qaP", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jobs: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(jobs.len(), set.names.len());

    // The aggregate (and so the core) builds; so does a nested package.
    let (ok, log) = nix_build(dir.path(), AGGREGATE, None);
    assert!(ok, "{log}");
    let nested = set.nested()[0].clone();
    let (ok, log) = nix_build(dir.path(), &nested, None);
    assert!(ok, "{log}");
    // $out is derived from the dependencies.
    let out_path = log.lines().next().unwrap().trim().to_string(); // stdout first
    let content = std::fs::read_to_string(&out_path).unwrap();
    assert!(content.starts_with(nested.rsplit('.').next().unwrap()));

    // A broken package fails with the marker line.
    let broken = set.broken[0].clone();
    let (ok, log) = nix_build(dir.path(), &broken, None);
    assert!(!ok);
    assert!(log.contains(BUILD_FAILURE_MARKER), "{log}");
    assert!(log.contains("failed with exit code 1"), "{log}");

    // fix() makes it build; break_build() another one.
    set.fix(&broken).unwrap();
    let (ok, log) = nix_build(dir.path(), &broken, None);
    assert!(ok, "{log}");
    let leaf = set.healthy_leaves()[0].clone();
    set.break_build(&leaf).unwrap();
    let (ok, log) = nix_build(dir.path(), &leaf, None);
    assert!(!ok && log.contains(BUILD_FAILURE_MARKER), "{log}");

    // break_eval: nix reports the throw.
    set.fix(&leaf).unwrap();
    set.break_eval(&leaf).unwrap();
    let (ok, log) = nix_build(dir.path(), &leaf, None);
    assert!(!ok && log.contains("does not evaluate (throw)"), "{log}");
}

#[test]
fn builds_in_a_chroot_store() {
    require_nix();
    let dir = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let set = generate(
        dir.path(),
        &Spec {
            packages: 12,
            seed: 12,
            broken: 0,
            ..Spec::default()
        },
    )
    .unwrap();
    let leaf = set.leaves()[0].clone();
    let (ok, log) = nix_build(dir.path(), &leaf, Some(store.path()));
    assert!(ok, "{log}");
    let (ok, log) = nix_build(dir.path(), AGGREGATE, Some(store.path()));
    assert!(ok, "{log}");
    // Chroot stores make read-only dirs; let the tempdir cleanup succeed.
    let _ = Command::new("chmod")
        .arg("-R")
        .arg("u+w")
        .arg(store.path())
        .status();
}
