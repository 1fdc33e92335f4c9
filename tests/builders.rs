//! Builder dispatch with real parts: loopback sshd builders with their own chroot stores.

mod common;

use std::time::{Duration, Instant};

use common::sshd::Sshd;
use common::{harness, never_built_version, state, LONG};
use hyper::Method;
use mergequeue::tools::harness::BranchOpts;
use serde_json::Value;

fn builders_toml(builders: &[(&Sshd, f64)]) -> String {
    builders
        .iter()
        .map(|(s, speed)| {
            format!("[[builders]]\nuri = {:?}\nsystems = [\"x86_64-linux\"]\nmax_jobs = 1\nspeed_factor = {speed}\n", s.uri())
        })
        .collect()
}

async fn builders(h: &mergequeue::tools::harness::Harness) -> Vec<Value> {
    h.client
        .ok(Method::GET, "/api/v1/builders", None)
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn attempts(b: &Value, class: &str) -> u64 {
    b["attempts"][class].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_builder_daemon_is_retried_on_the_other_builder_and_the_change_lands() {
    common::require_tools();
    let dir = tempfile::tempdir().unwrap();
    let ssh_config = dir.path().join("ssh_config");
    let b1 = Sshd::start(dir.path(), "b1", &ssh_config);
    let b2 = Sshd::start(dir.path(), "b2", &ssh_config);
    let opts = common::over_ssh(builders_toml(&[(&b1, 2.0), (&b2, 1.0)]), &ssh_config, "");
    let mut h = harness(&dir.path().join("h"), 30, 4, opts);
    let (_, _, id) = common::submit_slow(&mut h, 6.0).await;
    // Wait for the slow build under either builder's daemon, then kill that daemon.
    let t = Instant::now();
    let (victim, on) = loop {
        let found = [&b1, &b2]
            .iter()
            .enumerate()
            .find_map(|(i, b)| b.daemons_running("sleep 6").first().map(|p| (*p, i)));
        if let Some(f) = found {
            break f;
        }
        if t.elapsed() > Duration::from_secs(60) {
            panic!(
                "the slow build never started; server log:\n{}",
                std::fs::read_to_string(h.root.join("server.log")).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    unsafe { libc::kill(victim as i32, libc::SIGKILL) };
    let done = h.wait_final(&[id], LONG).await.unwrap();
    assert_eq!(state(&done[0]), "merged", "{}", done[0]);
    let bs = builders(&h).await;
    let (crashed, other) = (&bs[on], &bs[1 - on]);
    assert!(
        attempts(crashed, "infrastructure") >= 1,
        "the crash counted on its builder: {bs:?}"
    );
    let failed = attempts(crashed, "failed") + attempts(other, "failed");
    assert_eq!(failed, 0, "never a package failure: {bs:?}");
    assert!(
        attempts(other, "success") >= 1,
        "the retry ran on the other builder: {bs:?}"
    );
    for b in &bs {
        assert_eq!(b["implementation"], "Nix", "{b}");
        assert_eq!(b["version"], "2.8.0", "{b}");
    }
    // The crash is kept as evidence: grouped by signature for Nix 2.8.0, with its output.
    let imps = h
        .client
        .ok(Method::GET, "/api/v1/implementations", None)
        .await
        .unwrap();
    let crashes = imps["Nix"]["crashes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let eof = crashes
        .iter()
        .find(|c| c["signature"] == "unexpected end-of-file")
        .unwrap_or_else(|| panic!("no crash group: {imps}"));
    assert_eq!(eof["version"], "2.8.0", "{eof}");
    assert!(eof["count"].as_u64() >= Some(1), "{eof}");
    assert_eq!(eof["builders"][0], crashed["uri"], "{eof}");
    assert!(
        eof["last_output"]
            .as_str()
            .is_some_and(|o| o.contains("unexpected end-of-file")),
        "{eof}"
    );
    let metrics = h
        .client
        .call(Method::GET, "/metrics", None)
        .await
        .unwrap()
        .1;
    assert!(!metrics
        .as_str()
        .unwrap()
        .contains("mergequeue_builds_total{outcome=\"infrastructure\"} 0"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_builder_is_quarantined_the_work_moves_and_it_returns() {
    common::require_tools();
    let dir = tempfile::tempdir().unwrap();
    let ssh_config = dir.path().join("ssh_config");
    let mut b1 = Sshd::start(dir.path(), "down", &ssh_config);
    let b2 = Sshd::start(dir.path(), "up", &ssh_config);
    b1.stop();
    let opts = common::over_ssh(
        builders_toml(&[(&b1, 4.0), (&b2, 1.0)]),
        &ssh_config,
        "[dispatch]\nprobe_delay_secs = 1\nretry_delay_secs = 1\n",
    );
    let mut h = harness(&dir.path().join("h"), 30, 6, opts);
    let leaf = h.set.healthy_leaves()[0].clone();
    h.change("c", "change", |s| s.bump(&leaf).map(|_| ()))
        .unwrap();
    h.start_server().await.unwrap();
    let id = h.submit("c", "c", "normal").await.unwrap()["id"]
        .as_u64()
        .unwrap();
    let done = h.wait_final(&[id], LONG).await.unwrap();
    assert_eq!(state(&done[0]), "merged", "{}", done[0]);
    let bs = builders(&h).await;
    assert_eq!(bs[0]["state"], "quarantined", "{bs:?}");
    assert!(
        bs[0]["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{bs:?}"
    );
    assert_eq!(attempts(&bs[0], "success"), 0);
    assert!(
        attempts(&bs[1], "success") >= 1,
        "work moved to the healthy builder: {bs:?}"
    );
    // Back by itself once its sshd answers again.
    b1.resume();
    let t = Instant::now();
    loop {
        let bs = builders(&h).await;
        if bs[0]["state"] == "up" {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "never returned: {bs:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_build_that_times_out_is_rejected_as_timed_out() {
    let dir = tempfile::tempdir().unwrap();
    let opts = BranchOpts {
        extra_toml: String::new(),
        ..BranchOpts::default()
    };
    let mut h = harness(dir.path(), 30, 8, opts);
    let cfg = std::fs::read_to_string(&h.config_path).unwrap();
    std::fs::write(
        &h.config_path,
        cfg.replace(
            "options = { substituters = \"\" }",
            "options = { substituters = \"\" }\nbuild_timeout_secs = 2",
        ),
    )
    .unwrap();
    let leaf = h.set.healthy_leaves()[0].clone();
    h.change("hang", "hangs", |s| {
        s.bump(&leaf)?;
        s.set_sleep(&leaf, 30.0)
    })
    .unwrap();
    h.start_server().await.unwrap();
    let id = h.submit("hang", "hang", "normal").await.unwrap()["id"]
        .as_u64()
        .unwrap();
    let done = h.wait_final(&[id], LONG).await.unwrap();
    assert_eq!(state(&done[0]), "rejected", "{}", done[0]);
    assert!(
        done[0]["reason"].as_str().unwrap().contains("times out"),
        "{}",
        done[0]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn drained_builders_get_no_work() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path(), 30, 10, BranchOpts::default());
    let leaf = h.set.healthy_leaves()[0].clone();
    h.change("c", "change", |s| s.bump(&leaf).map(|_| ()))
        .unwrap();
    h.start_server().await.unwrap();
    h.client
        .ok(
            Method::POST,
            "/api/v1/builders/drain",
            Some(serde_json::json!({"uri": "local"})),
        )
        .await
        .unwrap();
    let id = h.submit("c", "c", "normal").await.unwrap()["id"]
        .as_u64()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        state(&h.change_status(id).await.unwrap()),
        "testing",
        "nothing builds while drained"
    );
    // Drains survive a restart.
    h.stop_server(false).unwrap();
    h.start_server().await.unwrap();
    assert_eq!(builders(&h).await[0]["state"], "draining");
    h.client
        .ok(
            Method::POST,
            "/api/v1/builders/undrain",
            Some(serde_json::json!({"uri": "local"})),
        )
        .await
        .unwrap();
    let done = h.wait_final(&[id], LONG).await.unwrap();
    assert_eq!(state(&done[0]), "merged");
}

/// Rewrites `leaf` to need a private helper derivation (not a job) that only a builder
/// with `big` can build, while the leaf itself needs `small`.
fn leaf_with_helper(
    s: &mut mergequeue::tools::fixture::PackageSet,
    leaf: &str,
    version: &str,
    fail: bool,
) -> std::io::Result<()> {
    let pname = leaf.rsplit('.').next().unwrap();
    std::fs::write(
        s.file(leaf),
        format!(
            "{{ mk, pkgs, m }}:\nlet\n  helper = mk {{ pname = \"helper\"; version = \"{version}\"; sleep = \"1\"; fail = {fail}; features = [ \"big\" ]; }};\nin\nmk {{ pname = \"{pname}\"; version = \"{version}\"; deps = [ helper ]; features = [ \"small\" ]; }}\n"
        ),
    )
}

/// The input derivation of `drv` whose name starts with `name`.
fn input_named(drv: &str, name: &str) -> String {
    let out = std::process::Command::new("nix-store")
        .args(["-q", "--references", drv])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| {
            l.ends_with(".drv") && l.split_once('-').is_some_and(|(_, n)| n.starts_with(name))
        })
        .unwrap_or_else(|| panic!("no input {name} of {drv}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_steps_of_one_closure_are_built_on_the_builders_that_fit_each() {
    common::require_tools();
    let dir = tempfile::tempdir().unwrap();
    let ssh_config = dir.path().join("ssh_config");
    let big = Sshd::start(dir.path(), "big", &ssh_config);
    let small = Sshd::start(dir.path(), "small", &ssh_config);
    big.add_nix_conf("system-features = big");
    small.add_nix_conf("system-features = small");
    let toml = format!(
        "[[builders]]\nuri = {:?}\nsystems = [\"x86_64-linux\"]\nmax_jobs = 2\nsupported_features = [\"big\"]\n\
         [[builders]]\nuri = {:?}\nsystems = [\"x86_64-linux\"]\nmax_jobs = 2\nsupported_features = [\"small\"]\n",
        big.uri(),
        small.uri()
    );
    let opts = common::over_ssh(toml, &ssh_config, "");
    let mut h = harness(&dir.path().join("h"), 30, 4, opts);
    let leaf = h
        .set
        .healthy_leaves()
        .into_iter()
        .find(|l| !l.contains('.'))
        .unwrap();
    let (bad_v, good_v) = (never_built_version(), never_built_version());
    h.change("bad", "helper breaks", |s| {
        leaf_with_helper(s, &leaf, &bad_v, true)
    })
    .unwrap();
    h.change("good", "helper builds", |s| {
        leaf_with_helper(s, &leaf, &good_v, false)
    })
    .unwrap();
    h.start_server().await.unwrap();
    let bad = h.submit("bad", "helper breaks", "normal").await.unwrap()["id"]
        .as_u64()
        .unwrap();
    let done = h.wait_final(&[bad], LONG).await.unwrap();
    assert_eq!(state(&done[0]), "rejected", "{}", done[0]);
    let top = common::drv_of(&h, "bad", &leaf);
    let helper = input_named(&top, "helper");
    // The helper, not a job, was a step of its own on the one builder that fits it; the leaf
    // was never started: it is dependency-failed naming the helper.
    let tried = common::attempts_of(&h, &helper).await;
    assert!(!tried.is_empty(), "the helper was built as its own step");
    for a in &tried {
        assert_eq!(a["builder"], big.uri(), "{a}");
        assert_eq!(a["class"], "failed", "{a}");
    }
    assert_eq!(
        common::attempts_of(&h, &top).await,
        Vec::<Value>::new(),
        "the leaf was never started"
    );
    let reason = done[0]["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains(&leaf) && reason.contains("helper"),
        "{}",
        done[0]
    );

    let good = h.submit("good", "helper builds", "normal").await.unwrap()["id"]
        .as_u64()
        .unwrap();
    let done = h.wait_final(&[good], LONG).await.unwrap();
    assert_eq!(state(&done[0]), "merged", "{}", done[0]);
    let top = common::drv_of(&h, "good", &leaf);
    let helper = input_named(&top, "helper");
    let on = |xs: &[Value]| -> Vec<String> {
        xs.iter()
            .filter(|a| a["class"] == "success")
            .map(|a| a["builder"].as_str().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(on(&common::attempts_of(&h, &helper).await), vec![big.uri()]);
    assert_eq!(on(&common::attempts_of(&h, &top).await), vec![small.uri()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_build_nobody_waits_for_is_stopped_on_its_builder() {
    common::require_tools();
    let dir = tempfile::tempdir().unwrap();
    let ssh_config = dir.path().join("ssh_config");
    let b1 = Sshd::start(dir.path(), "b1", &ssh_config);
    let opts = common::over_ssh(builders_toml(&[(&b1, 1.0)]), &ssh_config, "");
    let mut h = harness(&dir.path().join("h"), 30, 4, opts);
    let (leaf, version, id) = common::submit_slow(&mut h, 120.0).await;
    let t = Instant::now();
    while b1.daemons_running("sleep 120").is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the slow build never started"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !processes_with(&version).is_empty(),
        "the builder process is seen"
    );
    let (status, v) = h
        .client
        .call(
            Method::DELETE,
            &format!("/api/v1/repos/pkgs/changes/{id}"),
            None,
        )
        .await
        .unwrap();
    assert!(status.is_success(), "{status} {v}");
    // The remote build stops: its builder process is gone well before the 120 s are up
    // (anywhere on the machine: not merely orphaned by a dead daemon).
    let t = Instant::now();
    while !b1.daemons_running("sleep 120").is_empty() || !processes_with(&version).is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the remote build still runs {:?} after the cancel",
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drv = common::drv_of(&h, "slow", &leaf);
    let t = Instant::now();
    let tried = loop {
        let tried = common::attempts_of(&h, &drv).await;
        if !tried.is_empty() || t.elapsed() > Duration::from_secs(30) {
            break tried;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(tried.len(), 1, "{tried:?}");
    assert_eq!(tried[0]["class"], "cancelled", "{tried:?}");
    assert_eq!(tried[0]["builder"], b1.uri(), "{tried:?}");
    let bs = builders(&h).await;
    assert_eq!(
        attempts(&bs[0], "failed") + attempts(&bs[0], "infrastructure"),
        0,
        "{bs:?}"
    );
}

/// Processes anywhere on the machine whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
        })
        .collect()
}

async fn verifications(h: &mergequeue::tools::harness::Harness, drv: &str) -> Vec<Value> {
    common::list(h, &format!("/api/v1/verifications?drv={drv}")).await
}

#[tokio::test(flavor = "multi_thread")]
async fn verified_builds_compare_two_builders_and_a_mismatch_blames_no_change() {
    common::require_tools();
    let dir = tempfile::tempdir().unwrap();
    let ssh_config = dir.path().join("ssh_config");
    let b1 = Sshd::start(dir.path(), "b1", &ssh_config);
    let b2 = Sshd::start(dir.path(), "b2", &ssh_config);
    let opts = common::over_ssh(builders_toml(&[(&b1, 1.0), (&b2, 1.0)]), &ssh_config, "");
    let mut h = harness(&dir.path().join("h"), 30, 4, opts);
    h.append_config("[verify]\nsample = 1.0\n").unwrap();
    let leaf = h.set.healthy_leaves()[0].clone();
    let version = never_built_version();
    h.change("bump", "bump a leaf", |s| s.set_version(&leaf, &version))
        .unwrap();
    let dice_v = never_built_version();
    h.change("dice", "a package whose output is random", |s| {
        std::fs::write(
            s.file("dice"),
            format!("{{ mk, pkgs, m }}:\nmk {{ pname = \"dice\"; version = \"{dice_v}\"; random = true; }}\n"),
        )
    })
    .unwrap();
    h.start_server().await.unwrap();
    let mut ids = vec![];
    for b in ["bump", "dice"] {
        ids.push(
            h.submit(b, b, "normal").await.unwrap()["id"]
                .as_u64()
                .unwrap(),
        );
    }
    for c in h.wait_final(&ids, LONG).await.unwrap() {
        assert_eq!(state(&c), "merged", "a mismatch never blocks a change: {c}");
    }
    let wait_for = |drv: String| {
        let h = &h;
        async move {
            let t = Instant::now();
            loop {
                let vs = verifications(h, &drv).await;
                if !vs.is_empty() {
                    return vs[0].clone();
                }
                assert!(
                    t.elapsed() < Duration::from_secs(60),
                    "{drv} never verified"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let same = wait_for(common::drv_of(&h, "bump", &leaf)).await;
    assert_eq!(same["matched"], true, "{same}");
    assert_eq!(same["nondeterministic"], false, "{same}");
    assert_ne!(same["builders"][0], same["builders"][1], "{same}");
    assert_eq!(same["nar_hashes"][0], same["nar_hashes"][1], "{same}");
    assert!(
        same["nar_hashes"][0]
            .as_str()
            .unwrap()
            .starts_with("sha256"),
        "{same}"
    );
    let differ = wait_for(common::drv_of(&h, "dice", "dice")).await;
    assert_eq!(differ["matched"], false, "{differ}");
    assert_ne!(differ["nar_hashes"][0], differ["nar_hashes"][1], "{differ}");
    // Both builders' trust is lowered; the metric counts the mismatch.
    for b in builders(&h).await {
        assert_eq!(b["verification_mismatches"], 1, "{b}");
    }
    let metrics = h
        .client
        .call(Method::GET, "/metrics", None)
        .await
        .unwrap()
        .1;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("mergequeue_verifications_total{result=\"mismatched\"} 1"),
        "{metrics}"
    );
}
