//! Crash safety: `kill -9` the real server at many points and restart it. Every accepted
//! change survives, none lands twice, and the target only ever points at a tested commit.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{harness, state, LONG};
use hyper::Method;
use mergequeue::tools::harness::{git, BranchOpts, Harness};

/// The target is the initial commit or the commit of a candidate that passed its gate
/// (phase `landing` or landed), as recorded in the database.
fn assert_target_tested(h: &Harness, initial: &str) {
    let master = h.upstream_head("master").unwrap();
    if master == initial {
        return;
    }
    let db = rusqlite::Connection::open(h.state_dir.join("mergequeue.sqlite")).unwrap();
    let mut st = db
        .prepare("SELECT merged, phase, summary FROM candidates")
        .unwrap();
    let rows: Vec<(String, String, Option<String>)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let tested = rows.iter().any(|(merged, phase, summary)| {
        let chain: Vec<(u64, String)> = serde_json::from_str(merged).unwrap();
        chain.last().is_some_and(|(_, c)| *c == master)
            && (phase == "landing" || summary.as_deref().is_some_and(|s| s.starts_with("landed")))
    });
    assert!(
        tested,
        "master {master} is not a tested candidate: {rows:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_at_many_points_loses_nothing_and_lands_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let opts = BranchOpts {
        batch_max: 2,
        ..BranchOpts::default()
    };
    let mut h = harness(dir.path(), 60, 21, opts);
    let initial = h.upstream_head("master").unwrap();
    let leaves = h.set.healthy_leaves();
    let mut heads = BTreeMap::new();
    for (i, leaf) in leaves.iter().take(6).enumerate() {
        let leaf = leaf.clone();
        let head = h
            .change(&format!("c{i}"), &format!("change {i}"), |s| {
                s.bump(&leaf)?;
                s.set_sleep(&leaf, 0.8)?;
                if i == 3 {
                    s.break_build(&leaf)?;
                }
                Ok(())
            })
            .unwrap();
        heads.insert(i, head);
    }
    h.start_server().await.unwrap();
    let mut ids = vec![];
    for i in 0..6 {
        ids.push(
            h.submit(&format!("c{i}"), &format!("change {i}"), "normal")
                .await
                .unwrap()["id"]
                .as_u64()
                .unwrap(),
        );
    }
    // Kill at spread-out moments: preparing, evaluating, building, attributing, landing.
    let delays_ms = [
        150, 400, 700, 1000, 1300, 1700, 2100, 2600, 300, 900, 1500, 2000,
    ];
    let mut phases = vec![];
    for d in delays_ms {
        tokio::time::sleep(Duration::from_millis(d)).await;
        let q = h
            .client
            .ok(Method::GET, "/api/v1/repos/pkgs/queue", None)
            .await
            .unwrap();
        phases.push(
            q["branches"][0]["testing"][0]["phase"]
                .as_str()
                .unwrap_or("idle")
                .to_string(),
        );
        h.stop_server(true).unwrap();
        assert_target_tested(&h, &initial);
        h.start_server().await.unwrap();
        // Every accepted change is still there after the crash.
        for id in &ids {
            h.change_status(*id)
                .await
                .unwrap_or_else(|e| panic!("change {id} lost after kill -9: {e}"));
        }
    }
    eprintln!("phases at the kills: {phases:?}");
    let done = h.wait_final(&ids, LONG).await.unwrap();
    for (i, c) in done.iter().enumerate() {
        let want = if i == 3 { "rejected" } else { "merged" };
        assert_eq!(state(c), want, "change {i}: {c}");
    }
    assert_target_tested(&h, &initial);
    // Each landed change's head is merged into master exactly once.
    for (i, head) in &heads {
        let n = times_merged(&h, &initial, head);
        assert_eq!(
            n,
            if *i == 3 { 0 } else { 1 },
            "change {i} merged {n} times"
        );
    }
    // Master is still a fast-forward of the initial commit.
    let master = h.upstream_head("master").unwrap();
    assert!(git(
        &h.upstream,
        &["merge-base", "--is-ancestor", &initial, &master]
    )
    .is_ok());
    assert!(
        phases.iter().any(|p| p == "building"),
        "some kill hit a build: {phases:?}"
    );
}

/// The soak: `kill -9` at 50 random moments of a run with changes arriving throughout and a
/// channel following master (builds, evaluations, landings and channel advances in flight),
/// a restart after each. Nothing accepted is lost, nothing lands twice, master and the
/// channel only ever point at tested commits, and the database stays intact.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_soak_at_fifty_random_moments() {
    let dir = tempfile::tempdir().unwrap();
    let opts = BranchOpts {
        batch_max: 3,
        ..BranchOpts::default()
    };
    let mut h = harness(dir.path(), 40, 33, opts);
    h.add_channel(&mergequeue::tools::harness::ChannelSpec::default())
        .unwrap();
    let initial = h.upstream_head("master").unwrap();
    let leaves = h.set.healthy_leaves();
    let n = leaves.len().min(10);
    let version = common::never_built_version();
    let mut heads = BTreeMap::new();
    for (i, leaf) in leaves.iter().take(n).enumerate() {
        let (leaf, version) = (leaf.clone(), format!("{version}.{i}"));
        let head = h
            .change(&format!("s{i}"), &format!("soak change {i}"), |s| {
                s.set_version(&leaf, &version)?;
                s.set_sleep(&leaf, 0.5)?;
                if i % 4 == 3 {
                    s.break_build(&leaf)?;
                }
                Ok(())
            })
            .unwrap();
        heads.insert(i, head);
    }
    let seed = fastrand::u64(..);
    eprintln!("soak seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    h.start_server().await.unwrap();
    let mut ids = vec![];
    let mut next = 0;
    let mut phases = BTreeMap::<String, usize>::new();
    for kill in 0..50 {
        // Changes keep arriving: two at the start, then one every fifth kill.
        while next < n && (next < 2 || kill >= next * 5 - 8) {
            let id = h
                .submit(
                    &format!("s{next}"),
                    &format!("soak change {next}"),
                    "normal",
                )
                .await
                .unwrap()["id"]
                .as_u64()
                .unwrap();
            ids.push((next, id));
            next += 1;
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(50..1200))).await;
        if let Ok(q) = h
            .client
            .ok(Method::GET, "/api/v1/repos/pkgs/queue", None)
            .await
        {
            let p = q["branches"][0]["testing"][0]["phase"]
                .as_str()
                .unwrap_or("idle")
                .to_string();
            *phases.entry(p).or_default() += 1;
        }
        h.stop_server(true).unwrap();
        assert_target_tested(&h, &initial);
        assert_channel_on_master(&h);
        h.start_server().await.unwrap();
        for (i, id) in &ids {
            h.change_status(*id)
                .await
                .unwrap_or_else(|e| panic!("change {i} (#{id}) lost after kill {kill}: {e}"));
        }
    }
    eprintln!("phases at the kills: {phases:?}");
    let all: Vec<u64> = ids.iter().map(|(_, id)| *id).collect();
    let done = h.wait_final(&all, LONG).await.unwrap();
    for ((i, _), c) in ids.iter().zip(&done) {
        let want = if i % 4 == 3 { "rejected" } else { "merged" };
        assert_eq!(state(c), want, "change {i}: {c}");
    }
    assert_target_tested(&h, &initial);
    for (i, _) in &ids {
        let times = times_merged(&h, &initial, &heads[i]);
        assert_eq!(
            times,
            usize::from(i % 4 != 3),
            "change {i} merged {times} times"
        );
    }
    h.stop_server(false).unwrap();
    let db = rusqlite::Connection::open(h.state_dir.join("mergequeue.sqlite")).unwrap();
    let ok: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    // Where random kills land is up to chance (building takes most of the time); the
    // test above kills at chosen moments of every phase.
    assert!(
        phases.contains_key("building"),
        "no kill hit a build: {phases:?}"
    );
}

/// How many merge commits on master since `initial` have `head` as a parent.
fn times_merged(h: &Harness, initial: &str, head: &str) -> usize {
    let master = h.upstream_head("master").unwrap();
    let parents = git(
        &h.upstream,
        &["log", "--format=%P", &format!("{initial}..{master}")],
    )
    .unwrap();
    parents.split_whitespace().filter(|p| *p == head).count()
}

/// The channel's target, when it exists, is a commit of master's history (only tested
/// commits are; `assert_target_tested` covers master itself).
fn assert_channel_on_master(h: &Harness) {
    let Ok(chan) = h.upstream_head("unstable") else {
        return;
    };
    let master = h.upstream_head("master").unwrap();
    assert!(
        git(
            &h.upstream,
            &["merge-base", "--is-ancestor", &chan, &master]
        )
        .is_ok(),
        "the channel {chan} is not on master {master}"
    );
}
