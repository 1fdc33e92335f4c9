//! The queue's verdicts on the model world: batches, attribution and bisection, base
//! failures, conflicts, cancellation, priorities, required jobs.

use super::*;

#[test]
fn batch_of_eight_good_changes_lands_in_one_candidate() {
    let mut sim = Sim::new(config(8, 60_000), world());
    let ids = submit_batch(&mut sim, 8, &[]);
    sim.run();
    assert_eq!(sim.prepares(), vec![ids.clone()]);
    let cand = sim.cand(1);
    assert_eq!(cand.phase, Phase::Done);
    assert_eq!(cand.changes, ids);
    assert_eq!(sim.world.tip, cand.commit().unwrap());
    assert_eq!(sim.core.candidates().count(), 1);
    sim.assert_merged(&ids);
    for id in &ids {
        assert_eq!(sim.change(*id).landed_commit.as_deref(), cand.commit());
    }
    assert_eq!(sim.builds(), 8);
    assert_eq!(cand.builds, 8);
    assert_eq!(cand.extra_builds, 0);
    assert_eq!(sim.lands(), 1);
    assert_eq!(sim.world.tip_heads().len(), 8);
}

#[test]
fn culprit_altering_its_own_job_is_found_without_extra_builds() {
    let mut w = world();
    w.bad_tags.insert("c4".into());
    let mut sim = Sim::new(config(8, 60_000), w);
    let ids = submit_batch(&mut sim, 8, &[]);
    sim.run();
    assert_eq!(sim.state(4), ChangeState::Rejected);
    let reason = sim.reason(4);
    assert!(reason.contains("pkg4 (x86_64-linux)"), "{reason}");
    assert!(reason.contains("/nix/store/c4-pkg4.drv"), "{reason}");
    assert!(reason.contains("Makefile:12: all] Error 2"), "{reason}");
    assert!(
        reason.contains("this change alone on the base gives the same failing derivation"),
        "{reason}"
    );
    let innocents = without(&ids, &[4]);
    sim.assert_merged(&innocents);
    let follow = sim.cand(2);
    assert_eq!(follow.follow_up_of, Some(1));
    assert_eq!(follow.changes, innocents);
    assert_eq!(sim.change(1).landed_commit.as_deref(), follow.commit());
    let root = sim.cand(1);
    // The batch's own: 8 derivations plus the base version of the failing job.
    assert_eq!(root.builds, 9);
    assert!(root.extra_builds <= 1, "extra {}", root.extra_builds);
    assert!(sim.builds() <= root.builds as usize + 1);
    let counted: u32 = sim
        .core
        .candidates()
        .map(|c| c.builds + c.extra_builds)
        .sum();
    assert_eq!(sim.builds(), counted as usize);
    assert_eq!(sim.builds_of("/nix/store/base-pkg4.drv"), 1);
    assert_eq!(sim.lands(), 1);
}

/// Two changes alter the failing job: one bumps a dependency, the other breaks it.
fn bisection(bump_at: usize, break_at: usize) -> Sim {
    let mut w = world();
    w.bad_tags.insert("bad".into());
    let mut sim = Sim::new(config(8, 60_000), w);
    let ids = submit_batch(
        &mut sim,
        8,
        &[
            (bump_at, Patch::alter("pkg11", "dep")),
            (break_at, Patch::alter("pkg11", "bad")),
        ],
    );
    sim.run();
    let culprit = ids[break_at - 1];
    assert_eq!(sim.state(culprit), ChangeState::Rejected);
    let reason = sim.reason(culprit);
    assert!(reason.contains("found by testing prefixes"), "{reason}");
    assert!(reason.contains("pkg11"), "{reason}");
    sim.assert_merged(&without(&ids, &[culprit]));
    let root = sim.cand(1);
    assert_eq!(root.builds, 8); // 7 altered jobs + the base version of pkg11
    let counted: u32 = sim
        .core
        .candidates()
        .map(|c| c.builds + c.extra_builds)
        .sum();
    assert_eq!(sim.builds(), counted as usize);
    sim
}

#[test]
fn bisection_over_prefixes_finds_the_breaking_change_after_the_bump() {
    let sim = bisection(2, 6);
    // One build, of the prefix whose pkg11 is neither the base's nor the batch's; the
    // follow-up reuses it (its pkg11 is that same prefix's).
    assert_eq!(sim.builds_of("/nix/store/dep-pkg11.drv"), 1);
    assert_eq!(sim.builds_of("/nix/store/dep_bad-pkg11.drv"), 1);
    assert_eq!(sim.cand(1).extra_builds, 1);
    assert_eq!(sim.builds(), 9);
}

#[test]
fn bisection_over_prefixes_finds_the_breaking_change_before_the_bump() {
    let sim = bisection(6, 2);
    // One bisection build (the prefix with only the breaking change), then the
    // follow-up builds pkg11 with the bump alone: the innocent's own build, not
    // attribution's.
    assert_eq!(sim.builds_of("/nix/store/bad-pkg11.drv"), 1);
    assert_eq!(sim.builds_of("/nix/store/bad_dep-pkg11.drv"), 1);
    assert_eq!(sim.builds_of("/nix/store/dep-pkg11.drv"), 1);
    assert_eq!(sim.cand(1).extra_builds, 1);
    assert_eq!(sim.builds(), 10);
}

#[test]
fn whole_jobset_evaluation_failure_rejects_its_cause() {
    let mut sim = Sim::new(config(8, 60_000), world());
    let ids = submit_batch(
        &mut sim,
        8,
        &[(3, Patch::alter("pkg3", "c3").breaks_eval())],
    );
    sim.run();
    assert_eq!(sim.state(3), ChangeState::Rejected);
    let reason = sim.reason(3);
    assert!(reason.contains("jobset fails to evaluate"), "{reason}");
    assert!(reason.contains("syntax error"), "{reason}");
    sim.assert_merged(&without(&ids, &[3]));
    assert_eq!(sim.cand(1).builds, 0);
    assert_eq!(sim.builds(), 7);
}

#[test]
fn attribute_evaluation_error_rejects_its_cause() {
    let mut sim = Sim::new(config(8, 60_000), world());
    let ids = submit_batch(&mut sim, 8, &[(5, Patch::default().eval_error("pkg9"))]);
    sim.run();
    assert_eq!(sim.state(5), ChangeState::Rejected);
    let reason = sim.reason(5);
    assert!(
        reason.contains("pkg9 (x86_64-linux) fails to evaluate"),
        "{reason}"
    );
    assert!(reason.contains("attribute 'src' missing"), "{reason}");
    sim.assert_merged(&without(&ids, &[5]));
}

#[test]
fn failures_already_on_the_base_do_not_block_but_new_failing_jobs_do() {
    let mut w = world();
    w.broken_attrs.insert("pkg5".into());
    w.broken_attrs.insert("newpkg".into());
    let mut sim = Sim::new(config(8, 60_000), w);
    let a = sim.submit("h1", Patch::alter("pkg5", "c1"), Priority::Normal);
    let b = sim.submit("h2", Patch::alter("pkg2", "c2"), Priority::Normal);
    sim.run();
    sim.assert_merged(&[a, b]);
    assert_eq!(sim.core.candidates().count(), 1);
    assert_eq!(sim.builds_of("/nix/store/base-pkg5.drv"), 1);
    assert!(sim
        .events
        .iter()
        .any(|e| e.contains("1 failures already on the base ignored")));

    let c = sim.submit("h3", Patch::alter("newpkg", "c3"), Priority::Normal);
    let d = sim.submit("h4", Patch::alter("pkg6", "c4"), Priority::Normal);
    sim.run();
    assert_eq!(sim.state(c), ChangeState::Rejected);
    let reason = sim.reason(c);
    assert!(reason.contains("newpkg (x86_64-linux)"), "{reason}");
    assert!(reason.contains("/nix/store/c3-newpkg.drv"), "{reason}");
    sim.assert_merged(&[d]);
}

#[test]
fn conflicting_change_waits_for_the_batch_then_is_rejected_alone_on_the_tip() {
    let mut sim = Sim::new(config(8, 60_000), world());
    let ids = submit_batch(&mut sim, 8, &[(5, Patch::alter("pkg5", "c5").conflict())]);
    sim.run();
    assert_eq!(sim.state(5), ChangeState::Rejected);
    let reason = sim.reason(5);
    // Not on the first try: changes merged before it might never land. Alone on the
    // tip, the conflict is certain.
    assert!(
        reason.starts_with("merge conflict with master at m"),
        "{reason}"
    );
    assert!(reason.contains("CONFLICT (content)"), "{reason}");
    assert!(sim
        .events
        .iter()
        .any(|e| e.contains("#5 conflicts with what is merged before it (#1 #2 #3 #4)")));
    let rest = without(&ids, &[5]);
    sim.assert_merged(&rest);
    // The batch went on without it; it was tried once more, alone.
    assert_eq!(sim.core.candidates().count(), 2);
    assert_eq!(sim.cand(1).changes, rest);
    assert_eq!(sim.cand(2).changes, Vec::<ChangeId>::new());
    assert_eq!(sim.builds(), 7);
}

#[test]
fn target_moved_at_landing_prepares_the_candidate_again() {
    let mut w = world();
    w.patch("ext", Patch::alter("pkg10", "ext"));
    w.move_on_land = Some("ext".into());
    let mut sim = Sim::new(config(8, 60_000), w);
    let ids = submit_batch(&mut sim, 3, &[]);
    sim.run();
    sim.assert_merged(&ids);
    assert_eq!(sim.prepares(), vec![ids.clone(), ids.clone()]);
    assert_eq!(sim.lands(), 2);
    assert_eq!(sim.core.candidates().count(), 1);
    let cand = sim.cand(1);
    assert_ne!(cand.base.as_deref(), Some("c0"));
    assert_eq!(sim.world.tip, cand.commit().unwrap());
    assert_eq!(sim.world.tip_heads(), ["ext", "h1", "h2", "h3"]);
    // The drvs did not change with the rebase: nothing built twice.
    assert_eq!(sim.builds(), 3);
}

#[test]
fn cancelled_changes_never_land() {
    let mut sim = Sim::new(config(4, 60_000), world());
    let ids = submit_batch(&mut sim, 6, &[]);
    assert_eq!(sim.prepares(), vec![vec![1, 2, 3, 4]]);
    // A queued change.
    assert_eq!(sim.state(5), ChangeState::Queued);
    assert_eq!(sim.cancel(5).unwrap().state, ChangeState::Cancelled);
    // A testing change, while its candidate is preparing.
    assert_eq!(sim.cancel(2).unwrap().state, ChangeState::Cancelled);
    assert_eq!(sim.cand(1).phase, Phase::Done);
    assert_eq!(sim.prepares()[1], vec![1, 3, 4, 6]);
    // A testing change, while building.
    sim.run_until(|s| {
        s.core
            .candidate(2)
            .is_some_and(|c| c.phase == Phase::Building)
    });
    assert_eq!(sim.cancel(6).unwrap().state, ChangeState::Cancelled);
    assert_eq!(sim.cand(2).phase, Phase::Done);
    // Back in the queue, a short batch waits for the batch delay again.
    assert_eq!(sim.prepares().len(), 2);
    sim.run_until(|s| s.core.candidate(3).is_some());
    assert!(sim.now >= T0 + 60_000);
    assert_eq!(sim.prepares()[2], vec![1, 3, 4]);
    sim.run_until(|s| {
        s.core
            .candidate(3)
            .is_some_and(|c| c.phase == Phase::Landing)
    });
    assert_eq!(
        sim.cancel(3).unwrap_err(),
        Refusal::TooLate(ChangeState::Testing)
    );
    sim.run();
    sim.assert_merged(&[1, 3, 4]);
    for id in [2, 5, 6] {
        assert_eq!(sim.state(id), ChangeState::Cancelled);
        assert!(!sim.world.tip_heads().contains(&format!("h{id}")));
    }
    assert_eq!(
        sim.cancel(1).unwrap_err(),
        Refusal::TooLate(ChangeState::Merged)
    );
    assert_eq!(sim.cancel(99).unwrap_err(), Refusal::UnknownChange);
    assert_eq!(ids.len(), 6);
}

#[test]
fn queue_order_is_priority_then_submission_and_batches_are_capped_and_urgent_goes_at_once() {
    let mut sim = Sim::new(config(2, 0), world());
    // Occupies the lane while the others queue up.
    let first = sim.submit("h0", Patch::alter("pkg0", "c0"), Priority::Low);
    let l1 = sim.submit("h1", Patch::alter("pkg1", "c1"), Priority::Low);
    let n1 = sim.submit("h2", Patch::alter("pkg2", "c2"), Priority::Normal);
    sim.now += 1000;
    let u1 = sim.submit("h3", Patch::alter("pkg3", "c3"), Priority::Urgent);
    let n2 = sim.submit("h4", Patch::alter("pkg4", "c4"), Priority::Normal);
    sim.now += 1000;
    let l2 = sim.submit("h5", Patch::alter("pkg5", "c5"), Priority::Low);
    let h1 = sim.submit("h6", Patch::alter("pkg6", "c6"), Priority::High);
    let order: Vec<ChangeId> = sim.core.queue(REPO, BRANCH).iter().map(|c| c.id).collect();
    // The urgent change is not queued: it is tested alone at once.
    assert_eq!(order, vec![h1, n1, n2, l1, l2]);
    assert_eq!(sim.state(u1), ChangeState::Testing);
    sim.run();
    assert_eq!(
        sim.prepares(),
        // The urgent change goes ahead of the one in flight, which is prepared again
        // on top of it.
        vec![
            vec![first],
            vec![u1],
            vec![first],
            vec![h1, n1],
            vec![n2, l1],
            vec![l2]
        ]
    );
    sim.assert_merged(&[first, l1, n1, u1, n2, l2, h1]);
}

#[test]
fn batch_delay_waits_for_a_fuller_batch() {
    let mut sim = Sim::new(config(4, 60_000), world());
    sim.submit("h1", Patch::alter("pkg1", "c1"), Priority::Normal);
    assert!(sim.prepares().is_empty());
    assert_eq!(sim.core.next_wakeup(), Some(T0 + 60_000));
    sim.now += 30_000;
    sim.submit("h2", Patch::alter("pkg2", "c2"), Priority::Normal);
    assert!(sim.prepares().is_empty());
    sim.run();
    assert_eq!(sim.prepares(), vec![vec![1, 2]]);
    let (at, _) = sim
        .issued
        .iter()
        .find(|(_, c)| matches!(c, Command::Prepare { .. }))
        .unwrap();
    assert!(*at >= T0 + 60_000);
    sim.assert_merged(&[1, 2]);
}

#[test]
fn bisection_with_three_suspects_spends_few_builds() {
    let mut w = world();
    w.bad_tags.insert("bad".into());
    let mut sim = Sim::new(config(8, 60_000), w);
    let ids = submit_batch(
        &mut sim,
        8,
        &[
            (2, Patch::alter("pkg11", "dep")),
            (4, Patch::alter("pkg11", "dep2")),
            (6, Patch::alter("pkg11", "bad")),
        ],
    );
    sim.run();
    assert_eq!(sim.state(6), ChangeState::Rejected);
    sim.assert_merged(&without(&ids, &[6]));
    let root = sim.cand(1);
    // Positions [2, 4, 6, 8]: the prefix through #4 is built (good), then the one
    // through #6 equals the batch's derivation (bad, no build).
    assert_eq!(root.extra_builds, 1);
    assert_eq!(sim.builds_of("/nix/store/dep_dep2-pkg11.drv"), 1);
    assert_eq!(sim.builds_of("/nix/store/dep-pkg11.drv"), 0);
}

#[test]
fn two_culprits_in_one_batch_are_both_rejected() {
    let mut w = world();
    w.bad_tags.insert("c3".into());
    w.bad_tags.insert("c6".into());
    let mut sim = Sim::new(config(8, 60_000), w);
    let ids = submit_batch(&mut sim, 8, &[]);
    sim.run();
    assert_eq!(sim.state(3), ChangeState::Rejected);
    assert_eq!(sim.state(6), ChangeState::Rejected);
    assert!(sim.reason(3).contains("pkg3"));
    assert!(sim.reason(6).contains("pkg6"));
    sim.assert_merged(&without(&ids, &[3, 6]));
    // Failing fast, the first failure starts attribution; the second culprit is found
    // either with it or by the follow-up candidate, whose builds are already remembered.
    assert!(sim.core.candidates().count() <= 3);
    assert_eq!(sim.cand(1).extra_builds, 0);
}

#[test]
fn a_batch_that_merges_nothing_ends_without_evaluating() {
    let mut sim = Sim::new(config(8, 60_000), world());
    let a = sim.submit(
        "h1",
        Patch::alter("pkg1", "c1").conflict(),
        Priority::Normal,
    );
    let b = sim.submit(
        "h2",
        Patch::alter("pkg2", "c2").conflict(),
        Priority::Normal,
    );
    sim.run();
    assert_eq!(sim.state(a), ChangeState::Rejected);
    assert_eq!(sim.state(b), ChangeState::Rejected);
    assert!(!sim
        .issued
        .iter()
        .any(|(_, c)| matches!(c, Command::Evaluate { .. } | Command::Land { .. })));
    assert_eq!(sim.cand(1).summary.as_deref(), Some("nothing merged"));
    // The lane is free again.
    let c = sim.submit("h3", Patch::alter("pkg3", "c3"), Priority::Normal);
    sim.run();
    sim.assert_merged(&[c]);
}

#[test]
fn required_jobs_are_built_and_must_exist() {
    let mut sim = Sim::new(config_required(8, 60_000, &["pkg0", "pkg1"]), world());
    let a = sim.submit("h2", Patch::alter("pkg2", "c2"), Priority::Normal);
    sim.run();
    sim.assert_merged(&[a]);
    // Unchanged required jobs are built too (once, then remembered).
    assert_eq!(sim.builds_of("/nix/store/base-pkg0.drv"), 1);
    assert_eq!(sim.builds_of("/nix/store/base-pkg1.drv"), 1);

    // Removing a required job blocks; the change that removed it is rejected.
    let c = sim.submit("h4", Patch::default().remove("pkg1"), Priority::Normal);
    let d = sim.submit("h5", Patch::alter("pkg5", "c5"), Priority::Normal);
    sim.run();
    assert_eq!(sim.state(c), ChangeState::Rejected);
    assert!(
        sim.reason(c).contains("required job pkg1 is missing"),
        "{}",
        sim.reason(c)
    );
    sim.assert_merged(&[d]);
    assert_eq!(sim.builds_of("/nix/store/base-pkg1.drv"), 1);
}

#[test]
fn a_required_job_failing_on_the_target_holds_the_lane_until_a_fix_is_pushed() {
    let mut w = world();
    w.broken_attrs.insert("pkg0".into());
    let mut sim = Sim::new(config_required(8, 60_000, &["pkg0", "pkg1"]), w);
    let a = sim.submit("h2", Patch::alter("pkg2", "c2"), Priority::Normal);
    let b = sim.submit("h3", Patch::alter("pkg3", "c3"), Priority::Normal);
    sim.run_until(|s| s.reason(a).starts_with("waiting"));
    // Nobody is blamed, nothing lands: the changes wait, saying why and until when.
    for id in [a, b] {
        assert_eq!(sim.state(id), ChangeState::Queued);
        let why = sim.reason(id);
        assert!(why.contains("required jobs fail on"), "{why}");
        assert!(why.contains("pkg0"), "{why}");
        assert!(why.contains("tested again when master moves"), "{why}");
    }
    assert_eq!(sim.world.lands, 0);
    // While the target stays where it is, the lane only reads it: no new candidate.
    let candidates = sim.core.candidates().count();
    let until = sim.now + 20 * 60_000;
    sim.run_until(|s| s.now >= until);
    assert_eq!(sim.core.candidates().count(), candidates);
    assert!(sim
        .issued
        .iter()
        .any(|(_, c)| matches!(c, Command::PollTarget { branch, .. } if branch == BRANCH)));
    assert_eq!(sim.state(a), ChangeState::Queued);
    // Someone pushes a fix to the target outside the queue: the lane notices and lands.
    sim.world
        .patches
        .insert("fix".into(), Patch::alter("pkg0", "fixed"));
    let tip = sim.world.tip.clone();
    sim.world.tip = sim.world.merge(&tip, "fix");
    sim.world.broken_attrs.remove("pkg0");
    sim.run();
    sim.assert_merged(&[a, b]);
    assert!(
        sim.events.iter().any(|e| e.contains("moved from")),
        "{:?}",
        sim.events
    );
}

#[test]
fn with_a_cache_a_landing_uploads_its_required_jobs_and_only_then() {
    let uploads = |sim: &Sim| -> Vec<Vec<String>> {
        sim.issued
            .iter()
            .filter_map(|(_, c)| match c {
                Command::Upload { drvs, .. } => Some(drvs.clone()),
                _ => None,
            })
            .collect()
    };
    let mut sim = Sim::new(config_required(8, 0, &["pkg1"]), world());
    submit_batch(&mut sim, 2, &[]);
    sim.run();
    assert!(uploads(&sim).is_empty(), "no cache, no upload");

    let cfg = CoreConfig {
        cache: Some(crate::core::CacheUpload::Gated),
        ..config_required(8, 0, &["pkg1"])
    };
    let mut sim = Sim::new(cfg.clone(), world());
    let ids = submit_batch(&mut sim, 2, &[]);
    sim.run();
    sim.assert_merged(&ids);
    let got = uploads(&sim);
    assert!(sim.lands() >= 1);
    assert_eq!(got.len(), sim.lands(), "one upload per landing: {got:?}");
    for drvs in &got {
        assert_eq!(drvs.len(), 1, "the required job's derivation only: {got:?}");
        assert!(drvs[0].ends_with("-pkg1.drv"), "{got:?}");
    }

    // `all`: every successful build goes up as well.
    let cfg = CoreConfig {
        cache: Some(crate::core::CacheUpload::All),
        ..cfg
    };
    let mut sim = Sim::new(cfg, world());
    submit_batch(&mut sim, 2, &[]);
    sim.run();
    assert_eq!(
        uploads(&sim).len(),
        sim.builds() + sim.lands(),
        "each build, and each landing"
    );
}
