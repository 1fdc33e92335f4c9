//! The mass-rebuild stage over the generated cases: which changes go through it is
//! derived from the case (how many jobs each rebuilds on its own), never from the core.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::strategy::{Strategy, ValueTree};

use super::{Case, Kind};
use crate::core::change::{Change, ChangeState, Stage};

/// The packages a bump of `p` rebuilds: `p` and everything that depends on it.
fn affected(case: &Case, p: usize) -> BTreeSet<usize> {
    let mut set = BTreeSet::from([p]);
    for q in p + 1..case.n() {
        if case.deps[q].iter().any(|d| set.contains(d)) {
            set.insert(q);
        }
    }
    set
}

/// The fewest and most jobs change `i` rebuilds on its own, on whatever tip it is
/// evaluated: packages under a `throw` of another change fail to evaluate (fewer), and
/// added packages that depend on what it bumps rebuild too (more).
pub(super) fn size_range(case: &Case, i: usize) -> (usize, usize) {
    let thrown: BTreeSet<usize> = case
        .changes
        .iter()
        .filter_map(|k| match k {
            Kind::Throw(p) => Some(affected(case, *p)),
            _ => None,
        })
        .flatten()
        .collect();
    match &case.changes[i] {
        Kind::Good(p) | Kind::BuildBreak(p) | Kind::TouchBroken(p) | Kind::Flaky(p) => {
            let set = affected(case, *p);
            let news = case
                .changes
                .iter()
                .filter(|k| matches!(k, Kind::NewFails(d) | Kind::NewBuilds(d) if set.contains(d)))
                .count();
            (set.difference(&thrown).count(), set.len() + news)
        }
        Kind::NewFails(_) | Kind::NewBuilds(_) => (0, 1),
        _ => (0, 0),
    }
}

/// Changes the generated cases landed through the stage (all tests of this run).
static LANDED_THROUGH_STAGE: AtomicUsize = AtomicUsize::new(0);

/// With a threshold: a landed change (not urgent) that rebuilds at least that many jobs
/// wherever it is evaluated went through the stage, and one that rebuilds fewer never
/// did.
pub(super) fn routed_by_size<'a>(
    case: &Case,
    change: impl Fn(usize) -> &'a Change,
) -> Result<(), String> {
    let Some(t) = case.mass else {
        return Ok(());
    };
    for i in 0..case.changes.len() {
        let c = change(i);
        if c.state == ChangeState::Merged && c.route.passed_by.is_some() {
            LANDED_THROUGH_STAGE.fetch_add(1, Ordering::Relaxed);
        }
        let (lo, hi) = size_range(case, i);
        let staged = c.route.stage == Stage::MassRebuild || c.route.passed_by.is_some();
        if hi < t && staged {
            return Err(format!(
                "change {i} {:?} rebuilds at most {hi} < {t} jobs but went to the stage",
                case.changes[i]
            ));
        }
        if lo >= t
            && !case.urgent.contains(&i)
            && c.state == ChangeState::Merged
            && c.route.passed_by.is_none()
        {
            return Err(format!(
                "change {i} {:?} rebuilds at least {lo} >= {t} jobs but landed without the stage",
                case.changes[i]
            ));
        }
    }
    Ok(())
}

/// The generated cases do exercise the stage: mass rebuilds land through it.
#[test]
fn generated_mass_rebuilds_land_through_the_stage() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut with_threshold = 0;
    for _ in 0..300 {
        let case = super::case().new_tree(&mut runner).expect("case").current();
        with_threshold += usize::from(case.mass.is_some());
        super::run_case(&case).unwrap_or_else(|m| panic!("{m}\n{case:?}"));
    }
    let n = LANDED_THROUGH_STAGE.load(Ordering::Relaxed);
    println!(
        "{with_threshold} of 300 cases with a threshold; {n} changes landed through the stage"
    );
    assert!(n >= 50, "only {n} changes landed through the stage");
}
