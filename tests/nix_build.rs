//! Local realisation with real Nix: success, failure, dependency failure, timeouts,
//! infrastructure failure and cancellation.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use mergequeue::core::outcome::OutcomeClass;
use mergequeue::shell::config::Evaluator;
use mergequeue::shell::nix::build::NixBuilder;
use mergequeue::shell::nix::eval::NixEval;
use mergequeue::tools::fixture::{generate, PackageSet, Spec, BUILD_FAILURE_MARKER};

fn require_nix() {
    let ok = std::process::Command::new("nix-store")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "nix-store is not on PATH: these tests need real Nix. Run the prerequisite installer \
         first (apt-get update && apt-get install -y nix-bin git busybox-static, see \
         docs/nix-here.md), then re-run the tests."
    );
}

fn offline() -> Vec<String> {
    vec!["--option".into(), "substituters".into(), "".into()]
}

fn builder(log_dir: &Path, timeout: u64, silent: u64) -> NixBuilder {
    NixBuilder {
        id: "local".into(),
        store: None,
        ssh_key: None,
        nix_args: offline(),
        max_silent_time_secs: silent,
        timeout_secs: timeout,
        log_dir: log_dir.to_path_buf(),
        transfer_timeout: std::time::Duration::from_secs(600),
        probe_timeout: std::time::Duration::from_secs(60),
        transfers: Default::default(),
    }
}

/// A fresh set whose derivations were never built (a unique version on `libc`, which every
/// other package depends on, directly or not).
fn fresh_set(dir: &Path) -> PackageSet {
    let mut set = generate(
        dir,
        &Spec {
            packages: 20,
            seed: 21,
            broken: 0,
            ..Spec::default()
        },
    )
    .unwrap();
    let nonce = format!(
        "9.{}.{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    set.set_version("libc", &nonce).unwrap();
    set
}

async fn drv(set: &PackageSet, attr: &str) -> String {
    let ev = NixEval {
        nix_args: offline(),
        evaluator: Evaluator::NixInstantiate,
        sandbox: mergequeue::shell::nix::eval::EvalSandbox::default(),
        jobset: Default::default(),
        limits: Default::default(),
    };
    let r = ev
        .evaluate_attrs(
            &set.dir,
            "release.nix",
            &["x86_64-linux".into()],
            &[attr.into()],
        )
        .await
        .expect("the evaluation ran");
    assert_eq!(r.len(), 1, "{r:?}");
    r[0].1
        .job()
        .unwrap_or_else(|| panic!("{attr}: {:?}", r[0].1))
        .drv_path
        .clone()
}

fn gunzip(path: &Path) -> String {
    let mut s = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_string(&mut s)
        .unwrap();
    s
}

#[tokio::test]
async fn success_writes_a_gzipped_log_per_attempt() {
    require_nix();
    let (dir, logs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let set = fresh_set(dir.path());
    let d = drv(&set, "zlib").await;
    let b = builder(logs.path(), 60, 60);
    let r = b.realise(&d).await;
    assert_eq!(r.class, OutcomeClass::Success, "{}", r.log_tail);
    assert_eq!(r.drv_path, d);
    assert_eq!(r.root_drv, None);
    assert_eq!(r.builder, "local");
    let log = gunzip(&b.log_path(&d, 1));
    assert!(log.contains("built zlib-"), "{log}");
    assert!(r.log_tail.contains("built zlib-"), "{}", r.log_tail);
    // Already valid: a second attempt succeeds at once and gets its own log.
    let r = b.realise(&d).await;
    assert_eq!(r.class, OutcomeClass::Success);
    assert!(b.log_path(&d, 2).exists());
    assert!(!logs
        .path()
        .join(format!("{}.1.log", &d[11..d.len() - 4]))
        .exists());
}

#[tokio::test]
async fn own_failure_is_failed() {
    require_nix();
    let (dir, logs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut set = fresh_set(dir.path());
    let leaf = set.leaves()[0].clone();
    set.break_build(&leaf).unwrap();
    let d = drv(&set, &leaf).await;
    let r = builder(logs.path(), 60, 60).realise(&d).await;
    assert_eq!(r.class, OutcomeClass::Failed, "{}", r.log_tail);
    assert_eq!(r.root_drv, None);
    assert!(r.log_tail.contains(BUILD_FAILURE_MARKER), "{}", r.log_tail);
    assert!(
        r.log_tail.contains("failed with exit code 1"),
        "{}",
        r.log_tail
    );
}

#[tokio::test]
async fn dependency_failure_names_the_root() {
    require_nix();
    let (dir, logs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut set = fresh_set(dir.path());
    set.break_build("zlib").unwrap();
    let root = drv(&set, "zlib").await;
    let d = drv(&set, "openssl").await;
    let r = builder(logs.path(), 60, 60).realise(&d).await;
    assert_eq!(r.class, OutcomeClass::DependencyFailed, "{}", r.log_tail);
    assert_eq!(r.root_drv.as_deref(), Some(root.as_str()));
}

#[tokio::test]
async fn timeout_and_silence_are_timed_out() {
    require_nix();
    let (dir, logs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut set = fresh_set(dir.path());
    // Build the dependencies first so that only the slow package times out.
    let leaf = set.leaves()[0].clone();
    for dep in set.deps[&leaf].clone() {
        let dd = drv(&set, &dep).await;
        let r = builder(logs.path(), 0, 0).realise(&dd).await;
        assert_eq!(r.class, OutcomeClass::Success, "{}", r.log_tail);
    }
    set.set_sleep(&leaf, 30.0).unwrap();
    let d = drv(&set, &leaf).await;

    let started = Instant::now();
    let r = builder(logs.path(), 1, 0).realise(&d).await;
    assert_eq!(r.class, OutcomeClass::TimedOut, "{}", r.log_tail);
    assert!(
        r.log_tail.contains("timed out after 1 seconds"),
        "{}",
        r.log_tail
    );
    assert!(started.elapsed() < Duration::from_secs(15));

    let r = builder(logs.path(), 0, 1).realise(&d).await;
    assert_eq!(r.class, OutcomeClass::TimedOut, "{}", r.log_tail);
    assert!(r.log_tail.contains("of silence"), "{}", r.log_tail);

    // A reverse dependency of the slow package: its dependency timed out.
    let rdep = set.reverse_deps(&leaf);
    assert!(rdep.is_empty(), "a leaf");
    set.add_package("waiter", &[leaf.as_str()]).unwrap();
    let w = drv(&set, "waiter").await;
    let r = builder(logs.path(), 1, 0).realise(&w).await;
    assert_eq!(r.class, OutcomeClass::DependencyFailed, "{}", r.log_tail);
    assert_eq!(r.root_drv.as_deref(), Some(d.as_str()));
}

#[tokio::test]
async fn unreachable_store_is_infrastructure() {
    require_nix();
    let (dir, logs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let set = fresh_set(dir.path());
    let d = drv(&set, "zlib").await;
    let mut b = builder(logs.path(), 60, 60);
    b.nix_args.extend([
        "--store".into(),
        "unix:///nonexistent/mergequeue-test.sock".into(),
    ]);
    let r = b.realise(&d).await;
    assert_eq!(r.class, OutcomeClass::Infrastructure, "{}", r.log_tail);
    assert!(
        r.log_tail.contains("cannot connect to socket"),
        "{}",
        r.log_tail
    );
}

/// Processes whose command line mentions `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                out.push(format!("{}: {}", e.file_name().to_string_lossy(), cmd));
            }
        }
    }
    out
}

#[tokio::test]
async fn dropping_the_attempt_stops_the_build() {
    require_nix();
    let (dir, logs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut set = fresh_set(dir.path());
    let leaf = set.leaves()[0].clone();
    let version = format!("{}.cancel", set.version("libc").unwrap());
    set.set_version(&leaf, &version).unwrap();
    set.set_sleep(&leaf, 60.0).unwrap();
    let d = drv(&set, &leaf).await;
    let needle = format!("{}-{version}", leaf.rsplit('.').next().unwrap());
    let b = builder(logs.path(), 0, 0);
    let t = tokio::time::timeout(Duration::from_secs(8), b.realise(&d)).await;
    assert!(t.is_err(), "the build should still be running");
    assert!(
        !processes_with(&needle).is_empty(),
        "the builder should have been running"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while !processes_with(&needle).is_empty() {
        assert!(
            Instant::now() < deadline,
            "builder still running: {:?}",
            processes_with(&needle)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
