//! End-to-end tests of channel gating: the real binary, real git, real nix.

mod common;

use std::io::Read;
use std::time::Duration;

use common::{harness, state, LONG};
use hyper::Method;
use mergequeue::tools::harness::{git, BranchOpts, ChannelSpec, Harness};
use serde_json::Value;

fn rev(v: &Value) -> Option<&str> {
    v["rev"].as_str()
}

/// A package in the closure of the `tested` aggregate that builds today.
fn gated_package(h: &Harness) -> String {
    h.set
        .transitive_deps("tested")
        .into_iter()
        .find(|p| !h.set.broken.contains(p))
        .expect("tested has a healthy dependency")
}

/// Entries of a `.tar.xz`.
fn tar_xz_entries(path: &std::path::Path) -> Vec<String> {
    let f = std::fs::File::open(path).unwrap();
    let mut a = tar::Archive::new(xz2::read::XzDecoder::new(f));
    a.entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_channel_advances_when_its_gate_passes() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path(), 40, 21, BranchOpts::default());
    let artifacts = dir.path().join("artifacts");
    h.add_channel(&ChannelSpec {
        artifacts_dir: Some(artifacts.clone()),
        ..ChannelSpec::default()
    })
    .unwrap();
    let leaf = h.set.healthy_leaves()[0].clone();
    h.change("bump", "bump a leaf", |s| s.bump(&leaf).map(|_| ()))
        .unwrap();
    let initial = h.upstream_head("master").unwrap();
    h.start_server().await.unwrap();
    // The target does not exist yet: the first passing commit creates it.
    let v = h
        .wait_channel("unstable", LONG, |v| rev(v) == Some(&initial))
        .await
        .unwrap();
    assert_eq!(h.upstream_head("unstable").unwrap(), initial);
    assert!(v["history"][0]["from"].is_null(), "{v}");
    // A change landed by the queue moves the channel next.
    let id = h.submit("bump", "bump", "normal").await.unwrap()["id"]
        .as_u64()
        .unwrap();
    let done = h.wait_final(&[id], LONG).await.unwrap();
    assert_eq!(state(&done[0]), "merged", "{}", done[0]);
    let master = h.upstream_head("master").unwrap();
    let v = h
        .wait_channel("unstable", LONG, |v| {
            rev(v) == Some(&master) && v["published"].as_str() == Some(&master)
        })
        .await
        .unwrap();
    assert_eq!(h.upstream_head("unstable").unwrap(), master);
    assert!(v["blocked"].is_null(), "{v}");
    assert_eq!(v["advances"], 2, "{v}");
    let history = v["history"].as_array().unwrap();
    assert_eq!(history[0]["rev"], master.as_str(), "newest first: {v}");
    assert_eq!(history[0]["from"], initial.as_str());
    assert!(v["age_secs"].as_i64().unwrap() < 300, "{v}");
    // The queue's results were reused: the landed commit's gate needed no new build.
    let events = h
        .client
        .ok(Method::GET, "/api/v1/events", None)
        .await
        .unwrap();
    let texts: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["text"].as_str())
        .collect();
    assert!(
        texts
            .iter()
            .any(|t| t.contains("channel unstable: 1 gate jobs; 0 to build, 1 remembered")),
        "{texts:#?}"
    );
    // Artifacts, published atomically next to the advance.
    let latest = artifacts.join("latest");
    assert_eq!(
        std::fs::read_link(&latest).unwrap().display().to_string(),
        master
    );
    let read = |f: &str| std::fs::read_to_string(latest.join(f)).unwrap();
    assert_eq!(read("git-revision").trim(), master);
    let paths: Vec<String> = read("store-paths").lines().map(str::to_string).collect();
    assert!(!paths.is_empty());
    for p in &paths {
        assert!(
            p.starts_with("/nix/store/") && std::path::Path::new(p).exists(),
            "{p}"
        );
    }
    let manifest: Value = serde_json::from_str(&read("manifest.json")).unwrap();
    assert_eq!(manifest["revision"], master.as_str());
    assert_eq!(manifest["gate"][0]["attr"], "tested");
    assert_eq!(manifest["gate"][0]["status"], "success");
    // No job is marked broken: the registry published with it is empty.
    assert_eq!(read("broken.json").trim(), "[]");
    assert_eq!(manifest["broken_jobs"], 0);
    let prefix = format!("unstable-{}", &master[..12]);
    let entries = tar_xz_entries(&latest.join("nixexprs.tar.xz"));
    assert!(
        entries.contains(&format!("{prefix}/release.nix")),
        "{entries:?}"
    );
    assert!(entries.contains(&format!("{prefix}/.git-revision")));
    assert!(entries
        .iter()
        .any(|e| e.starts_with(&format!("{prefix}/bootstrap/"))));
    // The previous revision's artifacts are kept too; no temporary directory is left.
    assert!(artifacts.join(&initial).join("manifest.json").exists());
    // (A publish of the previous revision may still be running: it finishes soon.)
    let tmp_left = || {
        std::fs::read_dir(&artifacts)
            .unwrap()
            .any(|e| e.unwrap().file_name().to_string_lossy().starts_with(".tmp"))
    };
    let t = std::time::Instant::now();
    while tmp_left() && t.elapsed() < std::time::Duration::from_secs(60) {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(!tmp_left(), "a temporary directory was left");
    let metrics = h
        .client
        .call(Method::GET, "/metrics", None)
        .await
        .unwrap()
        .1;
    let metrics = metrics.as_str().unwrap();
    assert!(
        metrics.contains("mergequeue_channel_advances_total{channel=\"unstable\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("mergequeue_channel_blocks_total{channel=\"unstable\"} 0"));
    assert!(metrics.contains("mergequeue_channel_age_seconds{channel=\"unstable\"} "));
    // The CLI shows the same.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mergequeue"))
        .args(["channel", "status", "--name", "unstable", "--config"])
        .arg(&h.config_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cli["rev"], master.as_str());
    // Unknown channels are a 404 with a JSON error.
    let (status, v) = h
        .client
        .call(Method::GET, "/api/v1/channels/nope", None)
        .await
        .unwrap();
    assert_eq!(status, hyper::StatusCode::NOT_FOUND, "{v}");
    // After a restart the state is the same (from SQLite) and nothing moves twice.
    h.stop_server(false).unwrap();
    h.start_server().await.unwrap();
    let v = h.channel("unstable").await.unwrap();
    assert_eq!(
        (rev(&v), v["advances"].as_u64()),
        (Some(master.as_str()), Some(2))
    );
    assert_eq!(v["history"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_channel_stays_when_a_direct_push_breaks_its_gate_and_advances_to_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path(), 40, 22, BranchOpts::default());
    h.add_channel(&ChannelSpec::default()).unwrap();
    let victim = gated_package(&h);
    h.start_server().await.unwrap();
    let good = h.upstream_head("master").unwrap();
    h.wait_channel("unstable", LONG, |v| rev(v) == Some(&good))
        .await
        .unwrap();
    let v2 = victim.clone();
    let broken = h
        .push_direct("break a dependency of tested", move |s| s.break_build(&v2))
        .unwrap();
    let v = h
        .wait_channel("unstable", LONG, |v| v["blocked"]["rev"] == broken.as_str())
        .await
        .unwrap();
    assert_eq!(rev(&v), Some(good.as_str()), "the channel stays: {v}");
    assert_eq!(h.upstream_head("unstable").unwrap(), good);
    let job = &v["blocked"]["jobs"][0];
    assert_eq!(job["attr"], "tested", "{v}");
    assert_eq!(job["system"], "x86_64-linux");
    assert!(job["drv"].as_str().unwrap().ends_with(".drv"), "{v}");
    assert_eq!(job["status"], "dependency-failed", "{v}");
    assert!(
        job["log_tail"]
            .as_str()
            .unwrap()
            .contains("FIXTURE-BUILD-FAILURE"),
        "the log tail names the root cause: {v}"
    );
    assert_eq!(v["blocks"], 1);
    let v2 = victim.clone();
    let fixed = h.push_direct("fix it", move |s| s.fix(&v2)).unwrap();
    let v = h
        .wait_channel("unstable", LONG, |v| rev(v) == Some(&fixed))
        .await
        .unwrap();
    assert!(v["blocked"].is_null(), "{v}");
    assert_eq!(h.upstream_head("unstable").unwrap(), fixed);
    assert!(
        git(&h.upstream, &["merge-base", "--is-ancestor", &good, &fixed]).is_ok(),
        "forward only"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_channel_ignores_a_force_pushed_source_history() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path(), 40, 23, BranchOpts::default());
    h.add_channel(&ChannelSpec::default()).unwrap();
    let leaves = h.set.healthy_leaves();
    let (a, b) = (leaves[0].clone(), leaves[1].clone());
    let root = h.upstream_head("master").unwrap();
    h.start_server().await.unwrap();
    let c1 = h
        .push_direct("bump a", move |s| s.bump(&a).map(|_| ()))
        .unwrap();
    h.wait_channel("unstable", LONG, |v| rev(v) == Some(&c1))
        .await
        .unwrap();
    // Rewrite master: a sibling of c1 replaces it.
    git(&h.work, &["checkout", "--quiet", "-B", "rewrite", &root]).unwrap();
    let mut set = h.set.clone();
    set.bump(&b).unwrap();
    git(&h.work, &["commit", "--quiet", "-am", "rewritten history"]).unwrap();
    let x1 = git(&h.work, &["rev-parse", "HEAD"]).unwrap();
    git(
        &h.work,
        &["push", "--quiet", "--force", "origin", "rewrite:master"],
    )
    .unwrap();
    git(&h.work, &["checkout", "--quiet", "master"]).unwrap();
    let v = h
        .wait_channel("unstable", LONG, |v| v["diverged"] == x1.as_str())
        .await
        .unwrap();
    assert_eq!(rev(&v), Some(c1.as_str()), "{v}");
    // Several polls later it still has not moved, and never went sideways.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let v = h.channel("unstable").await.unwrap();
    assert_eq!(rev(&v), Some(c1.as_str()), "{v}");
    assert_eq!(h.upstream_head("unstable").unwrap(), c1);
    assert_eq!(v["advances"], 2, "the initial commit and c1: {v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_community_channel_follows_an_upstream_and_pushes_to_its_own_remote() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path(), 40, 24, BranchOpts::default());
    // A repository the operator does not own (no queue on it) and the operator's remote.
    let theirs = dir.path().join("theirs.git");
    let mine = dir.path().join("mine.git");
    for (p, from) in [(&theirs, Some(&h.upstream)), (&mine, None)] {
        let mut args = vec!["clone", "--quiet", "--bare"];
        let (src, dst) = (
            from.map(|f| f.display().to_string()),
            p.display().to_string(),
        );
        match &src {
            Some(s) => args.extend([s.as_str(), dst.as_str()]),
            None => args = vec!["init", "--quiet", "--bare", dst.as_str()],
        }
        git(dir.path(), &args).unwrap();
    }
    let leaves = h.set.healthy_leaves();
    let (mine_pkg, other_pkg) = (leaves[0].clone(), leaves[1].clone());
    h.append_config(&format!(
        "[[repos]]\nname = \"theirs\"\nurl = \"file://{}\"\n",
        theirs.display()
    ))
    .unwrap();
    h.add_channel(&ChannelSpec {
        name: "community".into(),
        repo: "theirs".into(),
        target: "my-channel".into(),
        gate: vec![mine_pkg.clone()],
        remote: Some(format!("file://{}", mine.display())),
        ..ChannelSpec::default()
    })
    .unwrap();
    h.start_server().await.unwrap();
    let head = git(&theirs, &["rev-parse", "refs/heads/master"]).unwrap();
    let v = h
        .wait_channel("community", LONG, |v| rev(v) == Some(&head))
        .await
        .unwrap();
    assert_eq!(v["remote"], format!("file://{}", mine.display()));
    assert_eq!(
        git(&mine, &["rev-parse", "refs/heads/my-channel"]).unwrap(),
        head
    );
    assert!(
        git(&theirs, &["rev-parse", "--verify", "refs/heads/my-channel"]).is_err(),
        "nothing is pushed upstream"
    );
    // Upstream breaks a package outside the gate: the channel still advances.
    let push_theirs =
        |h: &mut Harness, msg: &str, edit: &dyn Fn(&mut mergequeue::tools::fixture::PackageSet)| {
            git(
                &h.work,
                &["fetch", "--quiet", theirs.to_str().unwrap(), "master"],
            )
            .unwrap();
            git(
                &h.work,
                &["checkout", "--quiet", "-B", "theirs", "FETCH_HEAD"],
            )
            .unwrap();
            let mut set = h.set.clone();
            edit(&mut set);
            git(&h.work, &["commit", "--quiet", "-am", msg]).unwrap();
            git(
                &h.work,
                &["push", "--quiet", theirs.to_str().unwrap(), "theirs:master"],
            )
            .unwrap();
            let c = git(&h.work, &["rev-parse", "HEAD"]).unwrap();
            git(&h.work, &["checkout", "--quiet", "master"]).unwrap();
            c
        };
    let o = other_pkg.clone();
    let c1 = push_theirs(&mut h, "break another package", &move |s| {
        s.break_build(&o).unwrap()
    });
    h.wait_channel("community", LONG, |v| rev(v) == Some(&c1))
        .await
        .unwrap();
    assert_eq!(
        git(&mine, &["rev-parse", "refs/heads/my-channel"]).unwrap(),
        c1
    );
    // Upstream breaks the gated package: the channel stays.
    let m = mine_pkg.clone();
    let c2 = push_theirs(&mut h, "break the gated package", &move |s| {
        s.break_build(&m).unwrap()
    });
    let v = h
        .wait_channel("community", LONG, |v| v["blocked"]["rev"] == c2.as_str())
        .await
        .unwrap();
    assert_eq!(rev(&v), Some(c1.as_str()));
    assert_eq!(v["blocked"]["jobs"][0]["attr"], mine_pkg.as_str(), "{v}");
    assert_eq!(
        git(&mine, &["rev-parse", "refs/heads/my-channel"]).unwrap(),
        c1
    );
    // The queue's own repository is untouched by the community channel.
    let all = h
        .client
        .ok(Method::GET, "/api/v1/channels", None)
        .await
        .unwrap();
    assert_eq!(all.as_array().unwrap().len(), 1);
    let mut buf = String::new();
    std::fs::File::open(h.root.join("server.log"))
        .unwrap()
        .read_to_string(&mut buf)
        .unwrap();
    assert!(!buf.contains("panicked"), "{buf}");
}

/// A community channel over an upstream it does not own, gated on a job that needs the
/// `cuda` system feature: the gate builds only on the builder offering it; while that
/// builder is down the channel waits, nothing is blamed, and it moves once it is back.
#[tokio::test(flavor = "multi_thread")]
async fn a_community_channel_gates_a_cuda_job_on_the_builder_that_offers_the_feature() {
    common::require_tools();
    let dir = tempfile::tempdir().unwrap();
    let ssh_config = dir.path().join("ssh_config");
    let mut gpu = common::sshd::Sshd::start(dir.path(), "gpu", &ssh_config);
    gpu.add_nix_conf("system-features = cuda");
    let opts = BranchOpts {
        builders_toml: Some(format!(
            "[[builders]]\nuri = \"local\"\nsystems = [\"x86_64-linux\"]\nmax_jobs = 2\n\
             [[builders]]\nuri = {:?}\nsystems = [\"x86_64-linux\"]\nmax_jobs = 1\nsupported_features = [\"cuda\"]\n",
            gpu.uri()
        )),
        env: vec![("NIX_SSHOPTS".into(), format!("-F {}", ssh_config.display()))],
        extra_toml: "[dispatch]\nprobe_delay_secs = 1\nretry_delay_secs = 1\n".into(),
        ..BranchOpts::default()
    };
    let mut h = harness(&dir.path().join("h"), 30, 25, opts);
    let cuda = |version: String| {
        move |s: &mut mergequeue::tools::fixture::PackageSet| {
            std::fs::write(
                s.file("cudapkg"),
                format!("{{ mk, pkgs, m }}:\nmk {{ pname = \"cudapkg\"; version = \"{version}\"; features = [ \"cuda\" ]; }}\n"),
            )
        }
    };
    h.push_direct("a CUDA package", cuda(common::never_built_version()))
        .unwrap();
    let theirs = dir.path().join("theirs.git");
    let mine = dir.path().join("mine.git");
    let upstream = h.upstream.display().to_string();
    git(
        dir.path(),
        &[
            "clone",
            "--quiet",
            "--bare",
            &upstream,
            theirs.to_str().unwrap(),
        ],
    )
    .unwrap();
    git(
        dir.path(),
        &["init", "--quiet", "--bare", mine.to_str().unwrap()],
    )
    .unwrap();
    h.append_config(&format!(
        "[[repos]]\nname = \"theirs\"\nurl = \"file://{}\"\n",
        theirs.display()
    ))
    .unwrap();
    h.add_channel(&ChannelSpec {
        name: "cuda".into(),
        repo: "theirs".into(),
        target: "cuda-unstable".into(),
        gate: vec!["cudapkg".into()],
        remote: Some(format!("file://{}", mine.display())),
        poll_interval_secs: 1,
        ..ChannelSpec::default()
    })
    .unwrap();
    h.start_server().await.unwrap();
    let head = git(&theirs, &["rev-parse", "refs/heads/master"]).unwrap();
    h.wait_channel("cuda", LONG, |v| rev(v) == Some(&head))
        .await
        .unwrap();
    let drv = common::drv_of(&h, "origin/master", "cudapkg");
    let tried = common::attempts_of(&h, &drv).await;
    assert!(!tried.is_empty(), "the gate job was built");
    for a in &tried {
        assert_eq!(a["builder"], gpu.uri(), "only the builder with cuda: {a}");
        assert_eq!(a["class"], "success", "{a}");
    }
    // The GPU builder goes away and upstream moves: the channel waits, visibly, unblamed.
    gpu.stop();
    h.push_direct("a new CUDA package", cuda(common::never_built_version()))
        .unwrap();
    git(&theirs, &["fetch", "--quiet", &upstream, "+master:master"]).unwrap();
    let new = git(&theirs, &["rev-parse", "refs/heads/master"]).unwrap();
    let v = h
        .wait_channel("cuda", LONG, |v| {
            v["source_head"] == new.as_str() && !v["testing"].is_null()
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let v2 = h.channel("cuda").await.unwrap();
    assert_eq!(rev(&v2), Some(head.as_str()), "the channel waits: {v2}");
    assert!(
        v2["blocked"].is_null() || v2["blocked"]["rev"] != new.as_str(),
        "nothing is blamed: {v2}"
    );
    let builders = h
        .client
        .ok(Method::GET, "/api/v1/builders", None)
        .await
        .unwrap();
    let gpu_state = builders
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["uri"] == gpu.uri())
        .map(|b| b["state"].clone());
    assert_eq!(gpu_state, Some("quarantined".into()), "{builders} {v}");
    let drv = common::drv_of(&h, "origin/master", "cudapkg");
    let tried = common::attempts_of(&h, &drv).await;
    assert!(
        tried.iter().all(|a| a["class"] == "infrastructure"),
        "{tried:?}"
    );
    // Back: the gate builds there and the channel moves.
    gpu.resume();
    h.wait_channel("cuda", LONG, |v| rev(v) == Some(&new))
        .await
        .unwrap();
    let tried = common::attempts_of(&h, &drv).await;
    assert!(
        tried
            .iter()
            .any(|a| a["class"] == "success" && a["builder"] == gpu.uri()),
        "{tried:?}"
    );
}
