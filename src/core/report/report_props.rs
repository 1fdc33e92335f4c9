//! Generated pairs of evaluations with remembered verdicts: every tab, the grouping by
//! maintainer and the rebuild counts are worked out here from the case alone.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;
use crate::core::evaluation::{EvalOutcome, Job};

/// A job's verdict on one side, as remembered.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Verdict {
    None,
    Success,
    Failed,
    /// Failed because job `root` (an index) failed first.
    DepFailed(usize),
    Infrastructure,
}

#[derive(Debug, Clone)]
enum Side {
    Absent,
    EvalError,
    /// Derivation version and verdict.
    Drv(u8, Verdict),
}

#[derive(Debug, Clone)]
struct Case {
    /// Per job: system index, maintainer indexes, base side, candidate side.
    jobs: Vec<(usize, Vec<usize>, Side, Side)>,
}

const SYSTEMS: [&str; 2] = ["x86_64-linux", "aarch64-linux"];
const PEOPLE: [&str; 3] = ["alice", "bob", "carol"];

fn verdict(n: usize) -> impl Strategy<Value = Verdict> {
    prop_oneof![
        Just(Verdict::None),
        Just(Verdict::Success),
        Just(Verdict::Failed),
        (0..n).prop_map(Verdict::DepFailed),
        Just(Verdict::Infrastructure),
    ]
}

fn side(n: usize) -> impl Strategy<Value = Side> {
    prop_oneof![
        1 => Just(Side::Absent),
        1 => Just(Side::EvalError),
        4 => (0u8..2, verdict(n)).prop_map(|(d, v)| Side::Drv(d, v)),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (1usize..24).prop_flat_map(|n| {
        prop::collection::vec(
            (
                0..SYSTEMS.len(),
                prop::collection::vec(0..PEOPLE.len(), 0..3),
                side(n),
                side(n),
            ),
            n,
        )
        .prop_map(|jobs| Case { jobs })
    })
}

fn key(i: usize, sys: usize) -> JobKey {
    JobKey {
        attr: format!("p{i:02}"),
        system: SYSTEMS[sys].into(),
    }
}

/// Base derivations are `b-…`, candidate ones `c-…` unless the version is the same
/// on both sides: then one derivation, shared (as Nix would have it).
fn drv(i: usize, ver: u8) -> String {
    format!("/nix/store/{i:02}-{ver}.drv")
}

/// Both evaluations and the memo. A derivation shared by both sides keeps the verdict
/// of the candidate side when it has one (there is one memo per derivation).
fn build(c: &Case) -> (Evaluation, Evaluation, BTreeMap<String, Remembered>) {
    let mut memo = BTreeMap::new();
    let mut evals = [vec![], vec![]];
    for (i, (sys, people, base, new)) in c.jobs.iter().enumerate() {
        let maintainers: Vec<Maintainer> = people
            .iter()
            .map(|p| Maintainer::handle(PEOPLE[*p]))
            .collect();
        for (k, s) in [base, new].into_iter().enumerate() {
            let result = match s {
                Side::Absent => continue,
                Side::EvalError => JobResult::Error("boom".into()),
                Side::Drv(ver, v) => {
                    let d = drv(i, *ver);
                    let class = match v {
                        Verdict::None => None,
                        Verdict::Success => Some((OutcomeClass::Success, None)),
                        Verdict::Failed => Some((OutcomeClass::Failed, None)),
                        // The root is job `r`'s candidate derivation, whatever it is.
                        Verdict::DepFailed(r) => {
                            Some((OutcomeClass::DependencyFailed, Some(root_drv(c, *r))))
                        }
                        Verdict::Infrastructure => Some((OutcomeClass::Infrastructure, None)),
                    };
                    if let Some((class, root_drv)) = class {
                        memo.insert(d.clone(), Remembered { class, root_drv });
                    }
                    JobResult::Ok(Job {
                        drv_path: d.clone(),
                        outputs: vec![("out".into(), d.replace(".drv", ""))],
                        maintainers: maintainers.clone(),
                    })
                }
            };
            evals[k].push((key(i, *sys), result));
        }
    }
    let [b, n] = evals;
    (
        Evaluation::new("base".into(), EvalOutcome::Ok, b),
        Evaluation::new("cand".into(), EvalOutcome::Ok, n),
        memo,
    )
}

fn root_drv(c: &Case, r: usize) -> String {
    match &c.jobs[r].3 {
        Side::Drv(ver, _) => drv(r, *ver),
        // Not a job of the candidate: a derivation the evaluation does not name.
        _ => format!("/nix/store/fetch-{r}.drv"),
    }
}

/// A side's verdict after the memo (shared derivations: the last writer, the candidate);
/// a derivation without one that a remembered dependency failure names as its root failed.
fn effective(
    i: usize,
    s: &Side,
    memo: &BTreeMap<String, Remembered>,
) -> Option<Option<OutcomeClass>> {
    match s {
        Side::Absent => None,
        Side::EvalError => Some(Some(OutcomeClass::Failed)),
        Side::Drv(ver, _) => {
            let d = drv(i, *ver);
            let named_root = memo
                .values()
                .any(|m| m.root_drv.as_deref() == Some(d.as_str()));
            Some(match memo.get(&d) {
                Some(m) => Some(m.class).filter(|c| c.is_verdict()),
                None => named_root.then_some(OutcomeClass::Failed),
            })
        }
    }
}

fn names(rows: &[ReportRow]) -> BTreeSet<String> {
    rows.iter()
        .map(|r| format!("{} ({})", r.attr, r.system))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn tabs_grouping_and_rebuild_counts_follow_from_the_case(c in case()) {
        let (base, new, memo) = build(&c);
        let r = report(&base, &new, &|d| memo.get(d).cloned());
        let (mut newly_failing, mut newly_succeeding, mut still_failing) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
        let mut by_maintainer: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut rebuilds: BTreeMap<String, usize> = BTreeMap::new();
        for (i, (sys, people, b, n)) in c.jobs.iter().enumerate() {
            let name = format!("{} ({})", key(i, *sys).attr, SYSTEMS[*sys]);
            // Rebuilt: new on the candidate, newly evaluating, or a different derivation.
            let rebuilt = match (b, n) {
                (_, Side::Absent | Side::EvalError) => false,
                (Side::Absent | Side::EvalError, Side::Drv(..)) => true,
                (Side::Drv(x, _), Side::Drv(y, _)) => x != y,
            };
            if rebuilt {
                *rebuilds.entry(SYSTEMS[*sys].to_string()).or_default() += 1;
            }
            let (Some(bv), Some(nv)) = (effective(i, b, &memo), effective(i, n, &memo)) else { continue };
            // Not judged on one side: in no tab of the report.
            let (Some(bv), Some(nv)) = (bv, nv) else { continue };
            let failing = |v: OutcomeClass| v != OutcomeClass::Success;
            match (failing(bv), failing(nv)) {
                (false, true) => {
                    newly_failing.insert(name.clone());
                    // Who can act: the root's maintainers for a dependency failure whose
                    // root is a job with maintainers, else the job's own.
                    let root_people = match (n, memo.get(&match n { Side::Drv(v, _) => drv(i, *v), _ => String::new() })) {
                        (Side::Drv(..), Some(m)) if m.class == OutcomeClass::DependencyFailed => {
                            match &m.root_drv {
                                Some(rd) => c.jobs.iter().enumerate().find(|(j, job)| matches!(&job.3, Side::Drv(v, _) if drv(*j, *v) == *rd)).map(|(_, job)| job.1.clone()).unwrap_or_default(),
                                None => vec![],
                            }
                        }
                        _ => vec![],
                    };
                    let who = if root_people.is_empty() { people.clone() } else { root_people };
                    let who: BTreeSet<&str> = who.iter().map(|p| PEOPLE[*p]).collect();
                    for p in who {
                        by_maintainer.entry(p.to_string()).or_default().push(name.clone());
                    }
                }
                (true, false) => { newly_succeeding.insert(name); }
                (true, true) => { still_failing.insert(name); }
                (false, false) => {}
            }
        }
        prop_assert_eq!(names(&r.newly_failing), newly_failing);
        prop_assert_eq!(names(&r.newly_succeeding), newly_succeeding);
        prop_assert_eq!(names(&r.still_failing), still_failing);
        let mut got = r.by_maintainer.clone();
        for v in got.values_mut() { v.sort(); }
        for v in by_maintainer.values_mut() { v.sort(); }
        prop_assert_eq!(got, by_maintainer);
        let got: BTreeMap<String, usize> = r.rebuilds.iter().map(|(s, x)| (s.clone(), x.count)).collect();
        prop_assert_eq!(got, rebuilds);
        for x in r.rebuilds.values() {
            prop_assert_eq!(x.bucket, bucket(x.count));
        }
        // A dependency failure names its root; no other row does.
        for row in r.newly_failing.iter().chain(&r.still_failing) {
            prop_assert_eq!(row.root.is_some(), row.class == "dependency-failed", "{:?}", row);
        }
    }

    /// Every count falls in the one label whose range holds it.
    #[test]
    fn a_count_falls_in_the_bucket_whose_range_holds_it(n in 0usize..20_000) {
        let ranges: [(usize, usize, &str); 8] = [
            (0, 0, "0"), (1, 10, "1-10"), (11, 100, "11-100"), (101, 500, "101-500"),
            (501, 1000, "501-1000"), (1001, 2500, "1001-2500"), (2501, 5000, "2501-5000"),
            (5001, usize::MAX, "5001+"),
        ];
        let want = ranges.iter().find(|(lo, hi, _)| (*lo..=*hi).contains(&n)).unwrap().2;
        prop_assert_eq!(bucket(n), want);
    }
}
