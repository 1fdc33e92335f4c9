//! The two-stage queue with the real binary, real nix and real git: a change that
//! rebuilds many packages goes through the mass-rebuild stage (built on the tip beside
//! the queue) while small changes keep landing, then through the queue, where only
//! what changed on the target meanwhile is built again. `kill -9` in each stage.

mod common;

use std::time::{Duration, Instant};

use common::{list, state, LONG};
use mergequeue::tools::harness::{git, BranchOpts, Harness};
use serde_json::Value;

const THRESHOLD: usize = 10;

async fn candidates(h: &Harness) -> Vec<Value> {
    list(h, "/api/v1/repos/pkgs/candidates").await
}

/// Waits for a candidate in flight that matches `pred`, and returns it.
async fn wait_candidate(h: &Harness, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let t = Instant::now();
    loop {
        if let Some(c) = candidates(h)
            .await
            .into_iter()
            .find(|c| c["phase"] != "done" && pred(c))
        {
            return c;
        }
        assert!(
            t.elapsed() < LONG,
            "never {what}: {:?}",
            candidates(h).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn holds(c: &Value, id: u64) -> bool {
    c["changes"]
        .as_array()
        .is_some_and(|v| v.iter().any(|x| x.as_u64() == Some(id)))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mass_rebuild_goes_through_both_stages_while_small_changes_land_even_across_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let opts = BranchOpts {
        batch_max: 4,
        branch_toml: format!("window = 2\nmass_rebuild_threshold = {THRESHOLD}\n"),
        ..BranchOpts::default()
    };
    let mut h = common::harness(dir.path(), 120, 31, opts);
    // The mass rebuild: a package many others depend on, all of them healthy.
    let set = &h.set;
    let healthy = |n: &String| {
        !set.broken.contains(n)
            && !set.eval_broken.contains(n)
            && set
                .transitive_deps(n)
                .iter()
                .all(|d| !set.broken.contains(d) && !set.eval_broken.contains(d))
    };
    let mass_pkg = set
        .names
        .iter()
        .filter(|n| healthy(n))
        .filter(|n| set.reverse_deps(n).iter().all(healthy))
        .find(|n| (THRESHOLD + 5..60).contains(&set.reverse_deps(n).len()))
        .expect("a package with a fan-out between 15 and 60")
        .clone();
    let fan_out = set.reverse_deps(&mass_pkg);
    // Small changes: a slow leaf inside the mass rebuild (the queue has to build it
    // again on top of the mass rebuild), and two leaves outside it.
    let leaves = set.healthy_leaves();
    let inside = leaves
        .iter()
        .find(|l| fan_out.contains(l))
        .expect("a leaf inside the mass rebuild")
        .clone();
    let mut smalls = vec![inside.clone()];
    smalls.extend(leaves.into_iter().filter(|l| !fan_out.contains(l)).take(2));
    assert_eq!(smalls.len(), 3);
    h.change("mass", "mass rebuild", |s| {
        s.set_version(&mass_pkg, &common::never_built_version())?;
        // Long enough for the small changes to land while the stage builds.
        s.set_sleep(&mass_pkg, 20.0)
    })
    .unwrap();
    h.change("s0", "small", |s| {
        s.set_version(&inside, &common::never_built_version())?;
        s.set_sleep(&inside, 6.0)
    })
    .unwrap();
    for (i, l) in smalls.iter().enumerate().skip(1) {
        h.change(&format!("s{i}"), "small", |s| s.bump(l).map(|_| ()))
            .unwrap();
    }
    h.start_server().await.unwrap();
    let mass = h.submit("mass", "mass rebuild", "normal").await.unwrap()["id"]
        .as_u64()
        .unwrap();

    // Routed by its evaluation diff, not by anyone's label.
    let stage = wait_candidate(&h, "a mass-rebuild stage candidate", |c| {
        c["stage"] == "mass-rebuild" && holds(c, mass)
    })
    .await;
    let change = h.change_status(mass).await.unwrap();
    assert_eq!(change["stage"], "mass-rebuild", "{change}");
    let rebuilds = change["rebuilds"]["x86_64-linux"].as_u64().unwrap_or(0) as usize;
    assert!(rebuilds >= THRESHOLD, "{change}");
    assert!(stage["ref"].is_string(), "{stage}");
    let mut small_ids = vec![];
    for i in 0..smalls.len() {
        let (branch, title) = (format!("s{i}"), format!("small {i}"));
        let v = h.submit(&branch, &title, "normal").await.unwrap();
        small_ids.push(v["id"].as_u64().unwrap());
    }
    // The stage's batch is a ref on the remote, rewritten by the queue.
    let stage_ref = wait_for_ref(&h).await;
    let stage_commit = wait_candidate(&h, "the stage's merge", |c| {
        c["id"] == stage["id"] && c["commit"].is_string()
    })
    .await["commit"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(stage_ref, stage_commit);
    // kill -9 while the stage builds.
    h.stop_server(true).unwrap();
    h.start_server().await.unwrap();

    // Small changes land while the stage is still at work.
    let smalls_done = h.wait_final(&small_ids, LONG).await.unwrap();
    for s in &smalls_done {
        assert_eq!(state(s), "merged", "{s}");
    }
    let cands = candidates(&h).await;
    let staged: Vec<&Value> = cands
        .iter()
        .filter(|c| c["stage"] == "mass-rebuild")
        .collect();
    let from = staged.iter().filter_map(|c| c["created_at"].as_i64()).min();
    let to = staged
        .iter()
        .map(|c| c["finished_at"].as_i64().unwrap_or(i64::MAX))
        .max();
    let (from, to) = (from.unwrap(), to.unwrap());
    let landed_meanwhile = cands
        .iter()
        .filter(|c| c["stage"] == "queue" && small_ids.iter().any(|s| holds(c, *s)))
        .filter(|c| {
            c["summary"]
                .as_str()
                .is_some_and(|s| s.starts_with("landed"))
        })
        .filter(|c| {
            c["finished_at"]
                .as_i64()
                .is_some_and(|f| from < f && f < to)
        })
        .count();
    assert!(
        landed_meanwhile >= 1,
        "small changes landed while the mass rebuild was in its stage: {cands:?}"
    );

    // Then the queue: on the new tip, kill -9 there too.
    let queued = wait_candidate(&h, "the mass rebuild's queue candidate", |c| {
        c["stage"] == "queue" && holds(c, mass)
    })
    .await;
    h.stop_server(true).unwrap();
    h.start_server().await.unwrap();
    let done = h.wait_final(&[mass], LONG).await.unwrap();
    assert_eq!(state(&done[0]), "merged", "{}", done[0]);
    let landed = done[0]["landed_commit"].as_str().unwrap();
    let cands = candidates(&h).await;
    let lander = cands
        .iter()
        .find(|k| k["commit"] == landed)
        .unwrap_or_else(|| panic!("{landed} was not a tested candidate: {cands:?}"));
    assert_eq!(lander["stage"], "queue", "{lander}");
    assert!(
        lander["summary"]
            .as_str()
            .is_some_and(|s| s.starts_with("landed")),
        "{lander}"
    );
    assert_eq!(h.upstream_head("master").unwrap().trim(), landed);
    for s in &smalls_done {
        let c = s["landed_commit"].as_str().unwrap();
        git(&h.upstream, &["merge-base", "--is-ancestor", c, landed]).unwrap();
    }
    // The queue built only what changed on the target meanwhile: the stage's builds
    // were reused.
    let stage_builds: u64 = cands
        .iter()
        .filter(|k| k["stage"] == "mass-rebuild")
        .map(|k| k["builds"].as_u64().unwrap())
        .sum();
    let queue_builds: u64 = cands
        .iter()
        .filter(|k| k["stage"] == "queue" && holds(k, mass))
        .map(|k| k["builds"].as_u64().unwrap())
        .sum();
    assert!(
        stage_builds as usize >= THRESHOLD,
        "the stage built the rebuild set: {cands:?}"
    );
    assert!(
        queue_builds * 3 <= stage_builds,
        "the queue rebuilt {queue_builds} of the stage's {stage_builds}: {queued} {cands:?}"
    );
}

/// The stage's ref on the remote, once published.
async fn wait_for_ref(h: &Harness) -> String {
    let t = Instant::now();
    loop {
        let out = git(
            &h.upstream,
            &[
                "for-each-ref",
                "--format=%(objectname)",
                "refs/mergequeue/mass-rebuild/master",
            ],
        )
        .unwrap_or_default();
        if !out.trim().is_empty() {
            return out.trim().to_string();
        }
        assert!(t.elapsed() < LONG, "the stage's ref was never published");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
