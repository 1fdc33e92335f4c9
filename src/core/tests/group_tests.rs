//! GitHub's merge queue (`mode = "merge-group"`) on the model world: a group's commits
//! are GitHub's, the answer is a status on its head, nothing is ever landed, and
//! attribution names the pull request that breaks the group, never an innocent one.

use proptest::prelude::*;

use super::*;
use crate::core::forge::{ForgeCommand, ForgeInput, MergeGroup, PullRequest, StatusState};

/// Hands the core a merge group of `prs` (number, head, patch) on the world's tip, as
/// GitHub forms it (one commit per pull request); returns the group's head.
fn group(sim: &mut Sim, prs: &[(u64, String, Patch)]) -> String {
    let base = sim.world.tip.clone();
    let mut cur = base.clone();
    let mut list = vec![];
    for (n, head, patch) in prs {
        sim.world.patch(head, patch.clone());
        cur = sim.world.merge(&cur, head);
        let pr = PullRequest {
            number: *n,
            head_sha: head.clone(),
            base_ref: BRANCH.into(),
            author: "alice".into(),
            title: format!("pull request {n}"),
            open: true,
            merged: false,
        };
        list.push((pr, cur.clone()));
    }
    let last = prs.last().map_or(0, |p| p.0);
    let g = MergeGroup {
        head_sha: cur.clone(),
        head_ref: format!("refs/heads/gh-readonly-queue/{BRANCH}/pr-{last}-{base}"),
        base_sha: base,
        base_ref: BRANCH.into(),
    };
    let input = ForgeInput::MergeGroup {
        repo: REPO.into(),
        group: g,
        prs: list,
    };
    sim.core.forge(input, sim.now);
    sim.pump();
    cur
}

/// The statuses posted on `sha`, in order.
fn statuses(sim: &Sim, sha: &str) -> Vec<(StatusState, String)> {
    sim.forge
        .iter()
        .filter_map(|c| match c {
            ForgeCommand::Status {
                sha: s,
                state,
                description,
            } if s == sha => Some((*state, description.clone())),
            _ => None,
        })
        .collect()
}

fn change_of_pr(sim: &Sim, pr: u64) -> Change {
    sim.core
        .changes()
        .find(|c| c.pr == Some(pr))
        .cloned()
        .expect("a change per pull request")
}

#[test]
fn a_good_group_passes_without_landing() {
    let mut sim = Sim::new(config(8, 0), world());
    let tip = sim.world.tip.clone();
    let prs = vec![
        (11, "h1".to_string(), Patch::alter("pkg1", "c1")),
        (12, "h2".to_string(), Patch::alter("pkg2", "c2")),
    ];
    let head = group(&mut sim, &prs);
    // Asked again while it is being checked: nothing new starts.
    group(&mut sim, &prs);
    assert_eq!(sim.core.candidates().count(), 1);
    sim.run();
    let st = statuses(&sim, &head);
    assert_eq!(
        st.first().map(|s| s.0),
        Some(StatusState::Pending),
        "{st:?}"
    );
    assert_eq!(st.last().map(|s| s.0), Some(StatusState::Success), "{st:?}");
    for n in [11, 12] {
        let c = change_of_pr(&sim, n);
        assert_eq!(c.state, ChangeState::Merged, "{c:?}");
        assert_eq!(c.landed_commit.as_deref(), Some(head.as_str()));
    }
    assert_eq!(sim.lands(), 0, "a merge group is never pushed");
    assert_eq!(sim.world.tip, tip);
    // No answers on the pull requests' own heads: the group's head carries them.
    assert!(statuses(&sim, "h1").is_empty() && statuses(&sim, "h2").is_empty());
    // Asked again once answered (a re-run): checked again, from remembered results.
    let builds = sim.builds();
    group(&mut sim, &prs);
    sim.run();
    assert_eq!(sim.builds(), builds);
    assert_eq!(
        statuses(&sim, &head).last().map(|s| s.0),
        Some(StatusState::Success)
    );
}

#[test]
fn a_pull_request_adding_a_failing_package_is_named_and_nobody_else() {
    let mut w = world();
    w.bad_tags.insert("bad".into());
    let mut sim = Sim::new(config(8, 0), w);
    let prs = vec![
        (21, "h1".to_string(), Patch::alter("pkg1", "c1")),
        (22, "h2".to_string(), Patch::alter("brandnew", "bad")),
        (23, "h3".to_string(), Patch::alter("pkg3", "c3")),
    ];
    let head = group(&mut sim, &prs);
    sim.run();
    let (state, text) = statuses(&sim, &head).pop().expect("a final status");
    assert_eq!(state, StatusState::Failure);
    assert!(text.starts_with("broken by #22"), "{text}");
    assert!(text.chars().count() <= 140);
    assert_eq!(change_of_pr(&sim, 22).state, ChangeState::Rejected);
    for n in [21, 23] {
        let c = change_of_pr(&sim, n);
        assert_eq!(c.state, ChangeState::Cancelled, "#{n} is innocent: {c:?}");
    }
    assert_eq!(sim.lands(), 0);
    // GitHub retests the innocents in new groups: no follow-up candidate here.
    assert_eq!(sim.core.candidates().count(), 1);
}

#[test]
fn a_group_in_flight_survives_a_restart() {
    let mut w = world();
    w.bad_tags.insert("bad".into());
    let mut sim = Sim::new(config(8, 0), w);
    let prs = vec![
        (51, "h1".to_string(), Patch::alter("pkg1", "c1")),
        (52, "h2".to_string(), Patch::alter("pkg2", "bad")),
    ];
    let head = group(&mut sim, &prs);
    for _ in 0..3 {
        sim.step();
    }
    sim.crash_and_restore();
    sim.run();
    let (state, text) = statuses(&sim, &head).pop().expect("a final status");
    assert_eq!(state, StatusState::Failure);
    assert!(text.starts_with("broken by #52"), "{text}");
    assert_eq!(change_of_pr(&sim, 51).state, ChangeState::Cancelled);
    assert_eq!(sim.lands(), 0);
}

#[test]
fn a_destroyed_group_is_dropped() {
    let mut sim = Sim::new(config(8, 0), world());
    let prs = vec![(31, "h1".to_string(), Patch::alter("pkg1", "c1"))];
    let head = group(&mut sim, &prs);
    sim.core.forge(
        ForgeInput::MergeGroupDestroyed {
            head_sha: head.clone(),
        },
        sim.now,
    );
    sim.pump();
    sim.run();
    assert_eq!(change_of_pr(&sim, 31).state, ChangeState::Cancelled);
    assert_eq!(sim.lands(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Groups of one to five pull requests, each good, breaking its own package, or
    /// adding a new package that fails: the group passes exactly when no pull request
    /// breaks anything; otherwise at least one breaking one is rejected, no innocent one
    /// is, and the status names a rejected one; nothing lands.
    #[test]
    fn a_group_blames_exactly_its_breaking_pull_requests(kinds in prop::collection::vec(0u8..3, 1..=5)) {
        let mut w = world();
        w.bad_tags.insert("bad".into());
        let mut sim = Sim::new(config(8, 0), w);
        let prs: Vec<(u64, String, Patch)> = kinds
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let patch = match k {
                    0 => Patch::alter(&format!("pkg{}", i + 1), &format!("c{i}")),
                    1 => Patch::alter(&format!("pkg{}", i + 1), "bad"),
                    _ => Patch::alter(&format!("new{i}"), "bad"),
                };
                (100 + i as u64, format!("h{i}"), patch)
            })
            .collect();
        let head = group(&mut sim, &prs);
        sim.run();
        let breaking: Vec<u64> = prs
            .iter()
            .zip(&kinds)
            .filter(|(_, k)| **k != 0)
            .map(|(p, _)| p.0)
            .collect();
        let (state, text) = statuses(&sim, &head).pop().expect("a final status");
        prop_assert_eq!(sim.lands(), 0);
        if breaking.is_empty() {
            prop_assert_eq!(state, StatusState::Success);
        } else {
            prop_assert_eq!(state, StatusState::Failure);
            prop_assert!(breaking.iter().any(|n| text.starts_with(&format!("broken by #{n}:"))), "{}", text);
        }
        let mut rejected = 0;
        for (n, _, _) in &prs {
            let c = change_of_pr(&sim, *n);
            if breaking.is_empty() {
                prop_assert_eq!(c.state, ChangeState::Merged, "#{}: {:?}", n, c.reason);
            } else if breaking.contains(n) {
                // Named, or left for GitHub's next group (a later culprit is not
                // looked for once the group has failed).
                prop_assert!(matches!(c.state, ChangeState::Rejected | ChangeState::Cancelled));
                rejected += usize::from(c.state == ChangeState::Rejected);
            } else {
                prop_assert_eq!(c.state, ChangeState::Cancelled, "innocent #{}: {:?}", n, c.reason);
            }
        }
        prop_assert!(breaking.is_empty() || rejected >= 1);
    }
}
