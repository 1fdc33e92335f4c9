//! The command line as an operator uses it: check-config, submit, status, cancel.

mod common;

use std::process::Command;

use common::{harness, state};
use mergequeue::tools::harness::BranchOpts;

fn mq(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mergequeue"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn check_config_names_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "state_dir = \"/tmp/x\"\n[[repos]]\nname = \"pkgs\"\nurl = \"file:///x\"\n",
    )
    .unwrap();
    let out = mq(&["check-config", "--config", good.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "state_dir = \"/tmp/x\"\n[[repos]]\nname = \"pkgs\"\nurl = \"file:///x\"\nbranch = \"master\"\n").unwrap();
    let out = mq(&["check-config", "--config", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!("{}:5:1: unknown field `branch`", bad.display())),
        "{err}"
    );
    let out = mq(&["check-config", "--config", "/nonexistent.toml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.toml"));
}

#[test]
fn check_config_reads_the_machines_file_and_names_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let machines = dir.path().join("machines");
    let config = dir.path().join("mq.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"/tmp/x\"\nmachines_file = {:?}\n[[repos]]\nname = \"pkgs\"\nurl = \"file:///x\"\n",
            machines.display().to_string()
        ),
    )
    .unwrap();
    let check = || mq(&["check-config", "--config", config.to_str().unwrap()]);
    let out = check();
    assert!(!out.status.success(), "a missing machines file is an error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&machines.display().to_string()), "{err}");
    std::fs::write(
        &machines,
        "# builders\nssh-ng://a x86_64-linux - 4\nssh-ng://b x86_64-linux - many\n",
    )
    .unwrap();
    let out = check();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!("{}:3:", machines.display())),
        "{err}"
    );
    std::fs::write(&machines, "ssh-ng://a x86_64-linux - 4\n").unwrap();
    let out = check();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn submit_status_and_cancel_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let opts = BranchOpts {
        batch_delay_secs: 30,
        ..BranchOpts::default()
    };
    let mut h = harness(dir.path(), 30, 12, opts);
    let leaf = h.set.healthy_leaves()[0].clone();
    h.change("c", "change", |s| s.bump(&leaf).map(|_| ()))
        .unwrap();
    h.start_server().await.unwrap();
    let cfg = h.config_path.to_str().unwrap().to_string();
    let out = mq(&[
        "submit",
        "--config",
        &cfg,
        "--repo",
        "pkgs",
        "--ref",
        "c",
        "--target",
        "master",
        "--title",
        "cli",
        "--priority",
        "high",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["id"].as_u64(), v["ref"].as_str(), v["priority"].as_str()),
        (Some(1), Some("refs/heads/c"), Some("high"))
    );
    let out = mq(&["status", "--config", &cfg, "--repo", "pkgs", "1"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(state(&v), "queued");
    let out = mq(&["status", "--config", &cfg, "--repo", "pkgs"]);
    let q: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(q["branches"][0]["queued"][0]["id"], 1, "{q}");
    let out = mq(&["cancel", "--config", &cfg, "--repo", "pkgs", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(state(&h.change_status(1).await.unwrap()), "cancelled");
    // A refused request exits non-zero with the server's message.
    let out = mq(&["cancel", "--config", &cfg, "--repo", "pkgs", "1"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("409"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
