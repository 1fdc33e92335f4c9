//! Simulation tests: determinism, and 1,000 seeds of the small scenario with faults
//! (crashes and restores of the real core, lost and duplicated build results, killed
//! builders), invariants checked after every step. A failing seed is printed; replay it
//! with `mergequeue simulate --scenario scenarios/small.toml --faults --seed N`.

use mergequeue::sim::{simulate, simulate_with, to_json, Scenario, SimOptions};

fn small() -> Scenario {
    Scenario::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scenarios/small.toml"
    )))
    .expect("scenario")
}

#[test]
fn same_seed_same_report_bytes() {
    let sc = small();
    for policy in ["mergequeue", "bors", "github"] {
        let a = to_json(&[simulate(&sc, 7, policy, true).unwrap()]);
        let b = to_json(&[simulate(&sc, 7, policy, true).unwrap()]);
        assert_eq!(a, b, "policy {policy}: reports differ");
    }
    let c = to_json(&[simulate(&sc, 8, "mergequeue", true).unwrap()]);
    let a = to_json(&[simulate(&sc, 7, "mergequeue", true).unwrap()]);
    assert_ne!(a, c, "different seeds should give different runs");
}

#[test]
fn thousand_seeds_with_faults_keep_the_invariants() {
    let sc = small();
    let seeds: u64 = std::env::var("MQ_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let mut failed = vec![];
    let (mut landed, mut crashes, mut lost, mut advances) = (0, 0, 0, 0.0);
    for seed in 1..=seeds {
        let r = simulate(&sc, seed, "mergequeue", true).unwrap();
        landed += r.landed;
        crashes += r.crashes;
        lost += r.lost_build_results;
        advances += r.channel_advances_per_day.unwrap_or(0.0) * r.simulated_hours / 24.0;
        if let Some(v) = &r.violation {
            failed.push(format!("seed {seed}: {v}"));
        } else if r.not_final_at_end > 0 {
            failed.push(format!(
                "seed {seed}: {} changes not final after the drain (liveness)",
                r.not_final_at_end
            ));
        }
    }
    eprintln!("{seeds} seeds: {landed} changes landed, {crashes} crashes, {lost} lost results, {advances:.0} channel advances");
    assert!(
        failed.is_empty(),
        "{} of {seeds} seeds failed; replay with `mergequeue simulate --scenario scenarios/small.toml --faults --seed N`:\n{}",
        failed.len(),
        failed.join("\n")
    );
    assert!(crashes > 100, "faults were not exercised");
    assert!(advances > seeds as f64, "the channel was not exercised");
}

/// The marking-broken policy under faults: the invariants hold (a breaking change lands
/// only after being held and only while the required aggregate builds; the database and
/// the core agree), nothing is left waiting, and the policy was exercised.
#[test]
fn the_grace_policy_keeps_the_invariants_under_faults() {
    let sc = small();
    let seeds: u64 = std::env::var("MQ_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(100, |n: u64| n.min(100));
    let mut failed = vec![];
    let (mut held, mut marked, mut world_marked) = (0, 0, 0);
    for seed in 1..=seeds {
        let r = simulate(&sc, seed, "mergequeue-grace", true).unwrap();
        let b = r
            .breakage
            .clone()
            .expect("the grace run reports what it did");
        held += b.held;
        marked += b.landed_marked_broken;
        world_marked += b.world_marked_broken;
        if let Some(v) = &r.violation {
            failed.push(format!("seed {seed}: {v}"));
        } else if r.not_final_at_end > 0 {
            failed.push(format!(
                "seed {seed}: {} changes not final after the drain",
                r.not_final_at_end
            ));
        } else if b.landed_marked_broken > b.held || b.registry_end > b.registry_max {
            failed.push(format!("seed {seed}: inconsistent counts {b:?}"));
        }
    }
    eprintln!("{seeds} seeds: {held} held, {marked} landed marked broken ({world_marked} seen by the world)");
    assert!(
        failed.is_empty(),
        "{} of {seeds} seeds failed; replay with `mergequeue simulate --scenario scenarios/small.toml --policy mergequeue-grace --faults --seed N`:\n{}",
        failed.len(),
        failed.join("\n")
    );
    assert!(
        held > seeds as usize && marked > 0,
        "the policy was not exercised"
    );
    assert!(
        world_marked >= marked,
        "a change the core marked broken landed unseen"
    );
}

#[test]
fn the_channel_follows_the_queue_and_catches_up() {
    let sc = small();
    for seed in 1..=50 {
        let r = simulate(&sc, seed, "mergequeue", false).unwrap();
        assert!(r.violation.is_none(), "seed {seed}: {:?}", r.violation);
        let chan = r.latency_channel_hours.as_ref().expect("channel latency");
        let landed = &r.latency_landed_hours["lane:master"];
        assert_eq!(chan["all"].n, landed.n, "seed {seed}");
        // Every landed master change reached the channel, never before it landed.
        let (c, l) = (chan["all"].p99.expect("all reached"), landed.p99.unwrap());
        assert!(c >= l, "seed {seed}: channel p99 {c} < landed p99 {l}");
        assert!(r.channel_advances_per_day.unwrap() > 0.0, "seed {seed}");
    }
    // Baselines gate no channel: reported as absent, not as zero.
    let r = simulate(&sc, 1, "bors", false).unwrap();
    assert!(r.latency_channel_hours.is_none() && r.channel_advances_per_day.is_none());
}

#[test]
fn baselines_keep_the_invariants() {
    let sc = small();
    for seed in 1..=100 {
        for policy in ["one-at-a-time", "bors", "github"] {
            let r = simulate(&sc, seed, policy, false).unwrap();
            assert!(
                r.violation.is_none(),
                "{policy} seed {seed}: {:?}",
                r.violation
            );
            assert_eq!(r.not_final_at_end, 0, "{policy} seed {seed}: not drained");
        }
    }
}

/// The crash loop against the real SQLite store (on tmpfs when `/dev/shm` exists): every
/// record goes through `Store::apply`, every restart reads the store back, which must hold
/// exactly what was written, and the invariants hold as with the in-memory model.
#[test]
fn crash_loop_on_the_real_sqlite_store() {
    let sc = small();
    let seeds: u64 = std::env::var("MQ_SIM_SQLITE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let (mut crashes, mut failed) = (0, vec![]);
    for seed in 1..=seeds {
        let db = dir.path().join(format!("seed-{seed}.sqlite"));
        let opts = SimOptions {
            sqlite: Some(db.clone()),
            ..SimOptions::default()
        };
        let r = simulate_with(&sc, seed, "mergequeue", true, &opts).unwrap();
        crashes += r.crashes;
        // Same run as on the in-memory model: the store changes nothing about decisions.
        let m = simulate(&sc, seed, "mergequeue", true).unwrap();
        if let Some(v) = &r.violation {
            failed.push(format!("seed {seed}: {v}"));
        } else if (r.landed, r.rejected_failure) != (m.landed, m.rejected_failure) {
            failed.push(format!(
                "seed {seed}: SQLite run landed/rejected {}/{}, in-memory {}/{}",
                r.landed, r.rejected_failure, m.landed, m.rejected_failure
            ));
        }
        let c = rusqlite::Connection::open(&db).unwrap();
        let ok: String = c
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .unwrap();
        assert_eq!(ok, "ok", "seed {seed}");
        drop(c);
        let _ = std::fs::remove_file(&db);
    }
    eprintln!("{seeds} seeds on SQLite: {crashes} crashes restored from the store");
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    assert!(crashes > 20, "faults were not exercised");
}

/// Pruning finished things from memory changes no decision: runs that keep 16 final
/// changes and candidates in memory and runs that keep everything give the same report,
/// byte for byte, with and without faults.
#[test]
fn pruning_memory_changes_no_decision() {
    let sc = small();
    for seed in 1..=40 {
        for faults in [false, true] {
            let run = |keep| {
                let opts = SimOptions {
                    keep_final: Some(keep),
                    ..SimOptions::default()
                };
                to_json(&[simulate_with(&sc, seed, "mergequeue", faults, &opts).unwrap()])
            };
            assert_eq!(run(16), run(usize::MAX), "seed {seed}, faults {faults}");
        }
    }
}

/// Every change targets master and the core routes it by its rebuild count: the mass
/// rebuilds go through the stage and then the queue, under faults, over many seeds.
#[test]
fn mass_rebuilds_routed_by_the_core_land_through_the_stage_under_faults() {
    let mut sc = small();
    for s in &mut sc.sizes {
        s.lane = None;
    }
    sc.lanes.retain(|l| l.branch == "master");
    let threshold = 101;
    sc.lanes[0].mass_rebuild_threshold = Some(threshold);
    let (mut staged, mut mass) = (0, 0);
    let mut failed = vec![];
    for seed in 1..=200 {
        let r = simulate(&sc, seed, "mergequeue", true).unwrap();
        if let Some(v) = &r.violation {
            failed.push(format!("seed {seed}: {v}"));
        }
        if r.not_final_at_end > 0 {
            failed.push(format!("seed {seed}: {} not final", r.not_final_at_end));
        }
        for c in &r.changes {
            let big = c.size >= threshold;
            mass += usize::from(big);
            if c.stage == "mass-rebuild" {
                staged += 1;
                assert!(big, "seed {seed}: {c:?} is no mass rebuild");
            }
            if big && c.state == "merged" {
                assert_eq!(c.stage, "mass-rebuild", "seed {seed}: {c:?}");
                assert!(
                    c.channel_h.is_some(),
                    "seed {seed}: {c:?} never reached the channel"
                );
            }
        }
    }
    eprintln!("200 seeds: {mass} mass rebuilds, {staged} through the stage");
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    assert!(staged >= 20, "the stage was hardly used: {staged}");
}
