//! Faults and recovery on the model world: infrastructure failures, flaky builds,
//! force-pushes, duplicated results and crashes at every step.

use super::*;

#[test]
fn infrastructure_outcomes_are_retried_later_and_never_blamed() {
    let mut w = world();
    w.infra.insert("/nix/store/c2-pkg2.drv".into(), 2);
    let mut sim = Sim::new(config(8, 60_000), w);
    let ids = submit_batch(&mut sim, 3, &[]);
    sim.run();
    sim.assert_merged(&ids);
    assert_eq!(sim.builds_of("/nix/store/c2-pkg2.drv"), 3);
    let times: Vec<Millis> = sim
        .issued
        .iter()
        .filter(|(_, c)| matches!(c, Command::Build { drv, .. } if drv == "/nix/store/c2-pkg2.drv"))
        .map(|(t, _)| *t)
        .collect();
    // Doubling delays after each infrastructure outcome.
    assert!(times[1] - times[0] >= 5_000, "{times:?}");
    assert!(times[2] - times[1] >= 10_000, "{times:?}");
    assert_eq!(sim.core.candidates().count(), 1);
    assert_eq!(
        sim.core.memo("/nix/store/c2-pkg2.drv").map(|m| m.class),
        Some(OutcomeClass::Success)
    );
    assert!(sim.db.memo.values().all(|m| m.class.is_verdict()));
}

#[test]
fn a_flaky_failure_is_built_again_and_never_blamed() {
    let mut w = world();
    w.flaky.insert("/nix/store/c2-pkg2.drv".into(), 1);
    let mut cfg = config(8, 60_000);
    cfg.failure_retries = 1;
    let mut sim = Sim::new(cfg, w);
    let ids = submit_batch(&mut sim, 3, &[]);
    sim.run();
    sim.assert_merged(&ids);
    assert_eq!(sim.builds_of("/nix/store/c2-pkg2.drv"), 2);
    assert_eq!(
        sim.core.memo("/nix/store/c2-pkg2.drv").map(|m| m.class),
        Some(OutcomeClass::Success)
    );
    assert_eq!(sim.core.candidates().count(), 1);
}

#[test]
fn a_real_failure_is_believed_after_the_retries() {
    let mut w = world();
    w.bad_tags.insert("c2".into());
    let mut cfg = config(8, 0);
    cfg.failure_retries = 1;
    let mut sim = Sim::new(cfg, w);
    let ids = submit_batch(&mut sim, 3, &[]);
    sim.run();
    assert_eq!(sim.change(ids[1]).state, ChangeState::Rejected);
    assert!(sim.reason(ids[1]).contains("pkg2"));
    sim.assert_merged(&[ids[0], ids[2]]);
    // Once more than it failed, then remembered: attribution reuses the result.
    assert_eq!(sim.builds_of("/nix/store/c2-pkg2.drv"), 2);
    // Without retries the first failure is believed.
    let mut w = world();
    w.flaky.insert("/nix/store/c2-pkg2.drv".into(), 1);
    let mut sim = Sim::new(config(8, 0), w);
    let ids = submit_batch(&mut sim, 3, &[]);
    sim.run();
    assert_eq!(sim.change(ids[1]).state, ChangeState::Rejected);
}

#[test]
fn force_pushed_change_is_tested_at_its_new_head() {
    let mut sim = Sim::new(config(8, 0), world());
    sim.world.patch("h1b", Patch::alter("pkg1", "c1b"));
    let id = sim.submit("h1", Patch::alter("pkg1", "c1"), Priority::Normal);
    // The author force-pushes before the candidate is prepared.
    let git_ref = sim.change(id).git_ref.clone();
    sim.world.refs.insert(git_ref, "h1b".into());
    sim.run();
    sim.assert_merged(&[id]);
    let c = sim.change(id);
    assert_eq!(c.head, "h1b");
    assert_eq!(c.submitted_head, "h1");
    assert_eq!(sim.db.changes[&id].head, "h1b");
    assert_eq!(sim.world.tip_heads(), ["h1b"]);
    assert_eq!(sim.builds_of("/nix/store/c1b-pkg1.drv"), 1);
    assert_eq!(sim.builds_of("/nix/store/c1-pkg1.drv"), 0);
}

#[test]
fn duplicate_results_are_harmless() {
    let mut w = world();
    w.bad_tags.insert("bad".into());
    w.bad_tags.insert("c7".into());
    w.patch("ext", Patch::alter("pkg10", "ext"));
    w.move_on_land = Some("ext".into());
    let mut sim = Sim::new(config(8, 60_000), w);
    sim.duplicate = true;
    let ids = submit_batch(
        &mut sim,
        8,
        &[
            (2, Patch::alter("pkg11", "dep")),
            (5, Patch::alter("pkg11", "bad")),
        ],
    );
    sim.run();
    assert_eq!(sim.state(5), ChangeState::Rejected);
    assert_eq!(sim.state(7), ChangeState::Rejected);
    sim.assert_merged(&without(&ids, &[5, 7]));
}

/// A busy scenario: a conflict, a single-suspect culprit, a bisection, an
/// infrastructure failure and a moved target.
fn busy(sim: &mut Sim) -> Vec<ChangeId> {
    sim.world.bad_tags.insert("bad".into());
    sim.world.bad_tags.insert("c7".into());
    sim.world.infra.insert("/nix/store/c1-pkg1.drv".into(), 1);
    sim.world.patch("ext", Patch::alter("pkg10", "ext"));
    sim.world.move_on_land = Some("ext".into());
    let mut ids = submit_batch(
        sim,
        8,
        &[
            (2, Patch::alter("pkg11", "dep")),
            (4, Patch::alter("pkg4", "c4").conflict()),
            (5, Patch::alter("pkg11", "bad")),
        ],
    );
    ids.push(sim.submit("h9", Patch::alter("pkg9", "c9"), Priority::Normal));
    ids
}

fn expected_busy(id: ChangeId) -> ChangeState {
    match id {
        4 | 5 | 7 => ChangeState::Rejected,
        _ => ChangeState::Merged,
    }
}

fn check_busy(sim: &Sim, ids: &[ChangeId], what: &str) {
    for &id in ids {
        assert_eq!(sim.state(id), expected_busy(id), "#{id} {what}");
    }
    let merged: Vec<ChangeId> = ids
        .iter()
        .copied()
        .filter(|&i| expected_busy(i) == ChangeState::Merged)
        .collect();
    sim.assert_merged(&merged);
    for &id in ids {
        let on_target = sim
            .world
            .tip_heads()
            .iter()
            .filter(|h| **h == format!("h{id}"))
            .count();
        let want = usize::from(expected_busy(id) == ChangeState::Merged);
        assert_eq!(on_target, want, "#{id} on the target {what}");
    }
    assert_eq!(sim.world.tip_heads()[0], "ext");
}

#[test]
fn busy_scenario_without_crash() {
    let mut sim = Sim::new(config(8, 60_000), world());
    let ids = busy(&mut sim);
    sim.run();
    check_busy(&sim, &ids, "");
}

#[test]
fn restore_after_a_crash_at_any_step_finishes_the_same_way() {
    let mut reference = Sim::new(config(8, 60_000), world());
    let ids = busy(&mut reference);
    reference.run();
    let total = reference.steps;
    let mut phases = BTreeSet::new();
    for crash_at in 0..=total {
        let mut sim = Sim::new(config(8, 60_000), world());
        busy(&mut sim);
        for _ in 0..crash_at {
            if !sim.step() {
                break;
            }
        }
        phases.extend(
            sim.db
                .candidates
                .values()
                .filter(|c| c.phase != Phase::Done)
                .map(|c| c.phase.as_str()),
        );
        sim.crash_and_restore();
        sim.run();
        check_busy(&sim, &ids, &format!("after a crash at step {crash_at}"));
    }
    for p in [
        Phase::Preparing,
        Phase::Evaluating,
        Phase::Building,
        Phase::Attributing,
        Phase::Landing,
    ] {
        assert!(phases.contains(p.as_str()), "never crashed in {p:?}");
    }
}

#[test]
fn restore_after_repeated_crashes_finishes_the_same_way() {
    for every in [3, 5, 8, 13] {
        let mut sim = Sim::new(config(8, 60_000), world());
        let ids = busy(&mut sim);
        // Crashes faster than a candidate can progress would livelock any design:
        // crash a bounded number of times.
        let (mut n, mut crashes) = (0, 0);
        while sim.step() {
            n += 1;
            if n % every == 0 && crashes < 8 {
                crashes += 1;
                sim.crash_and_restore();
            }
        }
        sim.check_db();
        check_busy(&sim, &ids, &format!("crashing every {every} steps"));
    }
}

#[test]
fn restore_requeues_orphaned_testing_changes_and_relands_a_landing_candidate() {
    let mut sim = Sim::new(config(8, 60_000), world());
    let ids = submit_batch(&mut sim, 3, &[]);
    sim.run_until(|s| {
        s.core
            .candidate(1)
            .is_some_and(|c| c.phase == Phase::Landing)
    });
    // Landed on the remote, but the process died before hearing so.
    let new = sim
        .queue
        .iter()
        .find_map(|c| {
            let Command::Land { new, .. } = c else {
                return None;
            };
            Some(new.clone())
        })
        .expect("a Land in flight");
    sim.world.tip = new.clone();
    sim.crash_and_restore();
    sim.run();
    sim.assert_merged(&ids);
    assert_eq!(sim.world.tip, new);
    assert_eq!(sim.core.candidates().count(), 1);

    // A change recorded as testing whose candidate row is missing goes back to the queue.
    let mut sim = Sim::new(config(8, 60_000), world());
    let ids = submit_batch(&mut sim, 2, &[]);
    sim.run_until(|s| !s.db.candidates.is_empty());
    assert_eq!(sim.db.changes[&1].state, ChangeState::Testing);
    sim.db.candidates.clear();
    sim.crash_and_restore();
    sim.run();
    sim.assert_merged(&ids);
}

#[test]
fn a_change_past_its_infrastructure_budget_waits_with_the_reason_instead_of_looping() {
    let mut w = world();
    // This derivation's builds end in infrastructure failures for a long while.
    w.infra.insert("/nix/store/c2-pkg2.drv".into(), 10_000);
    let mut sim = Sim::new(config(8, 60_000), w);
    let ids = submit_batch(&mut sim, 3, &[]);
    let budget = sim.cfg.infra_budget as usize;
    sim.run_until(|s| {
        s.change(2)
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with("held after"))
    });
    assert_eq!(
        sim.prepares().len(),
        budget,
        "one candidate per try, then it waits"
    );
    for id in &ids {
        let c = sim.change(*id);
        assert_eq!(c.state, ChangeState::Queued, "never blamed: {c:?}");
        assert!(
            c.reason
                .as_deref()
                .is_some_and(|r| r.contains("could not be built on any builder")),
            "{c:?}"
        );
    }
    let held_at = sim.now;
    // The trouble ends; the change is tried again after the hold, and lands.
    sim.world.infra.clear();
    sim.run();
    sim.assert_merged(&ids);
    let prepares: Vec<Millis> = sim
        .issued
        .iter()
        .filter(|(_, c)| matches!(c, Command::Prepare { .. }))
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(prepares.len(), budget + 1, "{prepares:?}");
    assert!(
        prepares[budget] - held_at >= 15 * 60_000,
        "held 15 minutes: {prepares:?}, held at {held_at}"
    );
    // The trouble left no remembered verdict behind.
    assert!(sim.db.memo.values().all(|m| m.class.is_verdict()));
}

#[test]
fn a_build_nobody_waits_for_is_stopped_and_its_stop_is_never_a_verdict() {
    let mut sim = Sim::new(config(8, 60_000), world());
    let ids = submit_batch(&mut sim, 1, &[]);
    let drv = "/nix/store/c1-pkg1.drv";
    // Until its build is dispatched (queued here: "running" on its builder).
    sim.run_until(|s| {
        s.queue
            .iter()
            .any(|c| matches!(c, Command::Build { drv: d, .. } if d == drv))
    });
    sim.cancel(ids[0]).expect("cancellable while testing");
    let stops: Vec<(String, String)> = sim
        .issued
        .iter()
        .filter_map(|(_, c)| match c {
            Command::CancelBuild { drv, builder } => Some((drv.clone(), builder.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(stops.len(), 1, "{stops:?}");
    assert_eq!(stops[0].0, drv);
    // The attempt reports that it stopped: its slot is free, nothing is remembered.
    let at = sim
        .queue
        .iter()
        .position(|c| matches!(c, Command::Build { drv: d, .. } if d == drv))
        .unwrap();
    sim.queue.remove(at);
    let report = BuildReport {
        drv_path: drv.into(),
        class: OutcomeClass::Cancelled,
        log_tail: "stopped".into(),
        root_drv: None,
        builder: stops[0].1.clone(),
        duration_ms: 5,
        log_path: None,
    };
    sim.core
        .handle(Input::Build(BuildInput::Built(report)), sim.now);
    sim.pump();
    assert!(sim.core.memo(drv).is_none(), "a stop is no verdict");
    // Submitted again, it is built again from the start.
    let again = sim.submit("h1b", Patch::alter("pkg1", "c1"), Priority::Normal);
    sim.run();
    sim.assert_merged(&[again]);
}

#[test]
fn a_build_or_evaluation_whose_result_never_arrives_is_timed_out_and_retried() {
    let mut cfg = config(8, 0);
    cfg.build_deadline_ms = 3_600_000;
    cfg.eval_deadline_ms = 1_800_000;
    let mut sim = Sim::new(cfg, world());
    let ids = submit_batch(&mut sim, 2, &[]);
    // The first evaluation and the first build are lost on the way: no result ever comes.
    let lost_eval = lose_next(&mut sim, |c| matches!(c, Command::Evaluate { .. }));
    let start = sim.now;
    let lost_build = lose_next(&mut sim, |c| matches!(c, Command::Build { .. }));
    let Command::Build { drv, builder, .. } = lost_build else {
        panic!("{lost_build:?}")
    };
    sim.run();
    sim.assert_merged(&ids);
    assert!(sim.now >= start + 1_800_000, "waited for the deadline");
    let evals_of = |c: &str| {
        sim.issued
            .iter()
            .filter(|(_, x)| matches!(x, Command::Evaluate { commit, .. } if commit == c))
            .count()
    };
    let Command::Evaluate { commit, .. } = &lost_eval else {
        panic!("{lost_eval:?}")
    };
    assert_eq!(
        evals_of(commit),
        2,
        "the lost evaluation was asked for again"
    );
    // The lost build was stopped where it was sent and built again, never blamed.
    assert!(sim.issued.iter().any(|(_, c)| matches!(c,
        Command::CancelBuild { drv: d, builder: b } if *d == drv && *b == builder)));
    assert_eq!(
        sim.core.memo(&drv).map(|m| m.class),
        Some(OutcomeClass::Success)
    );
    assert!(
        sim.events.iter().any(|e| e.contains("timeouts.build_secs")),
        "{:#?}",
        sim.events
    );
}

/// Runs until a command matching `is` is due to be performed, and drops it: lost on the
/// way, it never gets a result.
fn lose_next(sim: &mut Sim, is: impl Fn(&Command) -> bool) -> Command {
    sim.run_until(|s| s.queue.iter().any(&is));
    let i = sim.queue.iter().position(&is).expect("issued");
    sim.queue.remove(i).expect("present")
}
