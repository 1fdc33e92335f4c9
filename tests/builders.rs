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
    let opts = BranchOpts {
        builders_toml: Some(builders_toml(&[(&b1, 2.0), (&b2, 1.0)])),
        env: vec![("NIX_SSHOPTS".into(), format!("-F {}", ssh_config.display()))],
        ..BranchOpts::default()
    };
    let mut h = harness(&dir.path().join("h"), 30, 4, opts);
    let leaf = h.set.healthy_leaves()[0].clone();
    // A version never built before on this machine: outputs valid in the local store
    // from an earlier run would make the remote build a no-op.
    let version = never_built_version();
    h.change("slow", "slow leaf", |s| {
        s.set_version(&leaf, &version)?;
        s.set_sleep(&leaf, 6.0)
    })
    .unwrap();
    h.start_server().await.unwrap();
    let id = h.submit("slow", "slow", "normal").await.unwrap()["id"]
        .as_u64()
        .unwrap();
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
    let opts = BranchOpts {
        builders_toml: Some(builders_toml(&[(&b1, 4.0), (&b2, 1.0)])),
        env: vec![("NIX_SSHOPTS".into(), format!("-F {}", ssh_config.display()))],
        extra_toml: "[dispatch]\nprobe_delay_secs = 1\nretry_delay_secs = 1\n".into(),
        ..BranchOpts::default()
    };
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
