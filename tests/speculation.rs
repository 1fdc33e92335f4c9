//! Speculation and the urgent lane with the real binary, real nix and real git: several
//! candidates in flight on one branch, each merged onto the one ahead of it.

mod common;

use common::{drv_of, harness, list, never_built_version, state, LONG};
use mergequeue::tools::harness::{git, BranchOpts, Harness};
use serde_json::Value;

fn opts(window: usize) -> BranchOpts {
    BranchOpts {
        // One change per candidate: the window, not the batch, holds them together.
        batch_max: 1,
        branch_toml: format!("window = {window}\n"),
        ..BranchOpts::default()
    }
}

async fn events(h: &Harness) -> Vec<String> {
    list(h, "/api/v1/events?after=0")
        .await
        .iter()
        .filter_map(|e| e["text"].as_str().map(str::to_string))
        .collect()
}

async fn candidates(h: &Harness) -> Vec<Value> {
    list(h, "/api/v1/repos/pkgs/candidates").await
}

/// Waits until `n` candidates are in flight at once.
async fn wait_in_flight(h: &Harness, n: usize) {
    let t = std::time::Instant::now();
    loop {
        let live = candidates(h)
            .await
            .iter()
            .filter(|c| c["phase"] != "done")
            .count();
        if live >= n {
            return;
        }
        assert!(t.elapsed() < LONG, "never {n} candidates in flight");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Every landed change's commit is the tested commit of a candidate that landed it, and
/// the branch's first-parent history is exactly those commits.
async fn assert_landed_as_tested(h: &Harness, done: &[Value]) {
    let cands = candidates(h).await;
    for c in done.iter().filter(|c| state(c) == "merged") {
        let commit = c["landed_commit"].as_str().unwrap();
        assert!(
            cands.iter().any(|k| k["commit"] == commit
                && k["summary"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("landed"))),
            "{commit} was not a tested candidate: {cands:?}"
        );
        git(
            &h.upstream,
            &["merge-base", "--is-ancestor", commit, "master"],
        )
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_candidate_in_the_middle_of_the_window_lands_the_others_without_it_even_across_kill_9(
) {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path(), 120, 21, opts(3));
    let leaves = h.set.healthy_leaves();
    let (a, b, c) = (leaves[0].clone(), leaves[1].clone(), leaves[2].clone());
    let va = never_built_version();
    // The first builds for a while, so the three are in flight together.
    h.change("c0", "slow bump", |s| {
        s.set_version(&a, &va)?;
        s.set_sleep(&a, 6.0)
    })
    .unwrap();
    h.change("c1", "breaks", |s| {
        s.bump(&b)?;
        s.break_build(&b)
    })
    .unwrap();
    h.change("c2", "bump", |s| s.bump(&c).map(|_| ())).unwrap();
    h.start_server().await.unwrap();
    let mut ids = vec![];
    for i in 0..3 {
        let (branch, title) = (format!("c{i}"), format!("change {i}"));
        let v = h.submit(&branch, &title, "normal").await.unwrap();
        ids.push(v["id"].as_u64().unwrap());
    }
    wait_in_flight(&h, 3).await;
    let cands = candidates(&h).await;
    let ahead: Vec<&Value> = cands.iter().map(|k| &k["ahead"]).collect();
    assert_eq!(
        ahead.iter().filter(|a| a.is_u64()).count(),
        2,
        "each built on top of the one ahead: {cands:?}"
    );
    assert!(cands.iter().all(|k| k["stage"] == "queue"), "{cands:?}");
    // A crash in the middle loses nothing and lands nothing untested.
    h.stop_server(true).unwrap();
    h.start_server().await.unwrap();
    let done = h.wait_final(&ids, LONG).await.unwrap();
    assert_eq!(state(&done[0]), "merged", "{}", done[0]);
    assert_eq!(state(&done[1]), "rejected", "{}", done[1]);
    assert_eq!(state(&done[2]), "merged", "{}", done[2]);
    let reason = done[1]["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("job {b} (x86_64-linux)")),
        "{reason}"
    );
    assert_landed_as_tested(&h, &done).await;
    let (l0, l2) = (
        done[0]["landed_commit"].as_str().unwrap(),
        done[2]["landed_commit"].as_str().unwrap(),
    );
    git(&h.upstream, &["merge-base", "--is-ancestor", l0, l2]).unwrap();
    let c1_head = git(&h.work, &["rev-parse", "c1"]).unwrap();
    assert!(
        git(
            &h.upstream,
            &["merge-base", "--is-ancestor", c1_head.trim(), "master"]
        )
        .is_err(),
        "the culprit is not on master"
    );
    let ev = events(&h).await;
    assert!(
        ev.iter().any(|e| e.contains("prepared again onto")),
        "the one behind the culprit was merged again without it: {ev:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_urgent_change_overtakes_the_candidates_in_flight_which_reuse_their_builds() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path(), 120, 22, opts(2));
    let leaves = h.set.healthy_leaves();
    let (a, u) = (leaves[0].clone(), leaves[3].clone());
    let va = never_built_version();
    h.change("slow", "slow bump", |s| {
        s.set_version(&a, &va)?;
        s.set_sleep(&a, 15.0)
    })
    .unwrap();
    h.change("fix", "security fix", |s| s.bump(&u).map(|_| ()))
        .unwrap();
    let slow_drv = drv_of(&h, "slow", &a);
    h.start_server().await.unwrap();
    let slow = h.submit("slow", "slow", "normal").await.unwrap()["id"]
        .as_u64()
        .unwrap();
    // Its build is running when the urgent change arrives.
    let t = std::time::Instant::now();
    while !candidates(&h)
        .await
        .iter()
        .any(|k| k["phase"] == "building")
    {
        assert!(
            t.elapsed() < LONG,
            "the slow candidate never started building"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let fix = h.submit("fix", "fix", "urgent").await.unwrap()["id"]
        .as_u64()
        .unwrap();
    let done = h.wait_final(&[slow, fix], LONG).await.unwrap();
    assert_eq!(state(&done[0]), "merged", "{}", done[0]);
    assert_eq!(state(&done[1]), "merged", "{}", done[1]);
    let (ls, lf) = (
        done[0]["landed_commit"].as_str().unwrap(),
        done[1]["landed_commit"].as_str().unwrap(),
    );
    assert_ne!(ls, lf, "tested alone");
    git(&h.upstream, &["merge-base", "--is-ancestor", lf, ls])
        .expect("the urgent change landed first, the slow one on top of it");
    assert_landed_as_tested(&h, &done).await;
    let cands = candidates(&h).await;
    assert!(
        cands
            .iter()
            .all(|k| !k["summary"].as_str().unwrap_or("").starts_with("abandoned")),
        "nothing in flight was abandoned: {cands:?}"
    );
    // The slow build was not started again for the new base: its result was reused.
    let attempts = common::attempts_of(&h, &slow_drv).await;
    assert_eq!(attempts.len(), 1, "{attempts:?}");
}
