//! Property tests of the marking-broken policy over the generated batches of
//! `attribution_props`, under `breakage = "grace"` with a generated protected set and
//! limit. What each breaking change breaks is derived from the case alone: a build break
//! or a `throw` of package p breaks p and every dependent healthy on the base (an upper
//! bound adds the new packages of other changes that depend on them), a new failing
//! package breaks itself. Then: innocents land; a change whose breakage the policy
//! allows (no protected job, at most `max_newly_broken`, even at the upper bound) lands,
//! no earlier than its grace period; one that breaks a protected job never lands; the
//! registry holds no protected job, and each entry was broken by a change that landed.

use super::*;

const GRACE: Millis = 86_400_000;

#[derive(Debug, Clone)]
struct Policy {
    protected_pkgs: BTreeSet<usize>,
    protect_new: bool,
    max: usize,
}

impl Policy {
    fn protects(&self, job: &str) -> bool {
        match job.strip_prefix("pkg") {
            Some(p) => self
                .protected_pkgs
                .contains(&p.parse::<usize>().expect("pkgN")),
            None => self.protect_new,
        }
    }

    fn patterns(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .protected_pkgs
            .iter()
            .map(|p| format!("pkg{p}"))
            .collect();
        if self.protect_new {
            v.push("new*".into());
        }
        v
    }

    fn allows(&self, jobs: &BTreeSet<String>) -> bool {
        jobs.len() <= self.max && !jobs.iter().any(|j| self.protects(j))
    }
}

/// Packages that depend on `p`, transitively, and `p` itself.
fn dependents(case: &Case, p: usize) -> BTreeSet<usize> {
    let mut out = BTreeSet::from([p]);
    for q in 0..case.n() {
        if case.deps[q].iter().any(|d| out.contains(d)) {
            out.insert(q);
        }
    }
    out
}

/// (lower, upper) bounds of the jobs change `i` newly breaks; `None` for a change that
/// breaks none.
fn breaks(case: &Case, i: usize) -> Option<(BTreeSet<String>, BTreeSet<String>)> {
    match case.changes[i] {
        Kind::BuildBreak(p) | Kind::Throw(p) => {
            let hit = dependents(case, p);
            let lower: BTreeSet<String> = hit
                .iter()
                .filter(|&&q| !case.sick(q))
                .map(|q| format!("pkg{q}"))
                .collect();
            let mut upper = lower.clone();
            for (j, k) in case.changes.iter().enumerate() {
                if let Kind::NewBuilds(d) | Kind::NewFails(d) = k {
                    if hit.contains(d) && j != i {
                        upper.insert(format!("new{j}"));
                    }
                }
            }
            Some((lower, upper))
        }
        Kind::NewFails(_) => {
            let own = BTreeSet::from([format!("new{i}")]);
            Some((own.clone(), own))
        }
        _ => None,
    }
}

fn grace_config(batch_max: usize, p: &Policy) -> CoreConfig {
    let mut cfg = config(batch_max, 1, None);
    let lane = cfg
        .repos
        .get_mut(REPO)
        .and_then(|r| r.lanes.get_mut(BRANCH))
        .expect("lane");
    lane.breakage = crate::core::breakage::BreakagePolicy {
        mode: crate::core::breakage::Breakage::Grace,
        protected: p.patterns(),
        grace_ms: GRACE,
        max_newly_broken: p.max,
    };
    cfg
}

fn run_grace(case: &Case, policy: &Policy) -> Result<Run, String> {
    let mut run = Run {
        core: Core::new(grace_config(case.batch_max, policy)),
        world: World::new(case.clone()),
        now: 1_700_000_000_000,
        queue: VecDeque::new(),
        ids: vec![],
        infra: (0, 0, 0),
        infra_at: vec![],
    };
    let start = run.now;
    run.pump();
    for i in 0..case.changes.len() {
        let c = run
            .core
            .submit(
                Submission {
                    repo: REPO.into(),
                    target: BRANCH.into(),
                    git_ref: head_of(i),
                    head: head_of(i),
                    title: format!("{:?}", case.changes[i]),
                    author: "alice".into(),
                    priority: Priority::Normal,
                    pr: None,
                    approver: None,
                },
                run.now,
            )
            .expect("accepted");
        run.ids.push(c.id);
    }
    run.pump();
    run.run();
    let index: BTreeMap<ChangeId, usize> =
        run.ids.iter().enumerate().map(|(i, c)| (*c, i)).collect();
    let tip = run.world.commits[&run.world.tip].clone();
    conflicts_consistent(case, &tip, |i| {
        run.core.change(run.ids[i]).expect("known").state
    })?;
    for (i, kind) in case.changes.iter().enumerate() {
        let ch = run.core.change(run.ids[i]).expect("known");
        let reason = ch.reason.clone().unwrap_or_default();
        let state = ch.state;
        if matches!(kind, Kind::ConflictsWith(_)) {
            continue; // judged by conflicts_consistent
        }
        match breaks(case, i) {
            _ if matches!(kind, Kind::WholeEval | Kind::Conflict)
                && state != ChangeState::Rejected =>
            {
                return Err(format!("{i} {kind:?} is {state:?}"));
            }
            _ if matches!(kind, Kind::WholeEval | Kind::Conflict) => {}
            None if state != ChangeState::Merged => {
                return Err(format!("innocent {i} {kind:?} is {state:?}: {reason}"));
            }
            None => {}
            Some((lower, upper)) => {
                if state == ChangeState::Rejected && policy.allows(&upper) {
                    return Err(format!(
                        "{i} {kind:?} rejected though the policy allows {upper:?}: {reason}"
                    ));
                }
                if state == ChangeState::Merged && lower.iter().any(|j| policy.protects(j)) {
                    return Err(format!("{i} {kind:?} landed breaking a protected job"));
                }
                if !state.is_final() {
                    return Err(format!("{i} {kind:?} never finished: {state:?} {reason}"));
                }
            }
        }
    }
    for j in run.core.broken().of(REPO) {
        if policy.protects(&j.attr) {
            return Err(format!("protected {} in the registry", j.attr));
        }
        let Some(&i) = index.get(&j.broken_by) else {
            return Err(format!("{} broken by unknown #{}", j.attr, j.broken_by));
        };
        let ch = run.core.change(j.broken_by).expect("known");
        if ch.state != ChangeState::Merged || breaks(case, i).is_none() {
            return Err(format!(
                "{} broken by #{} {:?}, {:?}",
                j.attr, j.broken_by, case.changes[i], ch.state
            ));
        }
        if j.since < start + GRACE {
            return Err(format!(
                "{} marked broken before the grace period ended",
                j.attr
            ));
        }
    }
    Ok(run)
}

fn policy() -> impl Strategy<Value = Policy> {
    (any::<u16>(), any::<bool>(), 1usize..5).prop_map(|(bits, protect_new, max)| Policy {
        protected_pkgs: (0..12)
            .filter(|p| bits & (1 << p) != 0 && p % 2 == 0)
            .collect(),
        protect_new,
        max,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn the_grace_policy_holds_what_it_allows_and_never_breaks_a_protected_job(
        case in case(),
        policy in policy(),
    ) {
        if let Err(msg) = run_grace(&case, &policy).map(drop) {
            prop_assert!(false, "{msg}\n{case:?}\n{policy:?}");
        }
    }
}

#[test]
fn a_new_failing_package_waits_out_its_grace_period_and_lands_marked_broken() {
    let case = Case {
        deps: vec![vec![], vec![0], vec![1]],
        broken: BTreeSet::new(),
        changes: vec![Kind::Good(1), Kind::NewFails(0), Kind::Good(2)],
        batch_max: 8,
        window: 1,
        urgent: BTreeSet::new(),
        mass: None,
    };
    let policy = Policy {
        protected_pkgs: BTreeSet::new(),
        protect_new: false,
        max: 2,
    };
    let run = run_grace(&case, &policy).unwrap_or_else(|m| panic!("{m}"));
    let broken: Vec<(&str, ChangeId)> = run
        .core
        .broken()
        .of(REPO)
        .map(|j| (j.attr.as_str(), j.broken_by))
        .collect();
    assert_eq!(broken, vec![("new1", run.ids[1])]);
    let c = run.core.change(run.ids[1]).expect("known");
    assert_eq!(c.state, ChangeState::Merged);
    assert!(c.held.is_none(), "landed: no longer held");
    // The two good changes did not wait for it.
    let landed_at = |i: usize| run.core.change(run.ids[i]).expect("known").updated_at;
    assert!(landed_at(0) < landed_at(1) && landed_at(2) < landed_at(1));
    assert!(landed_at(1) >= 1_700_000_000_000 + GRACE);
}
