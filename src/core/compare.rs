//! Two evaluations compared job by job, with Hydra's tabs: per (attribute, system), what
//! each side's job is (failing to evaluate, built, failed, or not built yet) and how that
//! changed. Only remembered verdicts count (`success`, `failed`, `dependency-failed`,
//! `timed-out`); infrastructure and cancelled outcomes are "not built".

use serde::Serialize;

use super::evaluation::{join, Evaluation, JobKey, JobResult, Joined};
use super::outcome::OutcomeClass;

/// What a job is on one side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobStatus {
    Built,
    Failed,
    EvalError,
    NotBuilt,
}

impl JobStatus {
    fn of(result: &JobResult, built: &dyn Fn(&str) -> Option<OutcomeClass>) -> JobStatus {
        match result {
            JobResult::Error(_) => JobStatus::EvalError,
            JobResult::Ok(j) => match built(&j.drv_path) {
                Some(OutcomeClass::Success) => JobStatus::Built,
                Some(c) if c.is_verdict() => JobStatus::Failed,
                _ => JobStatus::NotBuilt,
            },
        }
    }

    fn failing(self) -> bool {
        matches!(self, JobStatus::Failed | JobStatus::EvalError)
    }
}

/// One job in a tab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    pub attr: String,
    pub system: String,
    pub old_drv: Option<String>,
    pub new_drv: Option<String>,
    pub old: Option<JobStatus>,
    pub new: Option<JobStatus>,
}

/// Hydra's tabs. A job is in exactly one of `newly_failing`, `newly_succeeding`,
/// `still_failing`, `still_succeeding` and `unfinished` when it is on both sides, and in
/// `added` or `removed` when on one; `changed` (its derivation differs) overlaps the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Comparison {
    pub newly_failing: Vec<Row>,
    pub newly_succeeding: Vec<Row>,
    pub still_failing: Vec<Row>,
    pub still_succeeding: Vec<Row>,
    /// On both sides, not judged yet on one of them.
    pub unfinished: Vec<Row>,
    pub added: Vec<Row>,
    pub removed: Vec<Row>,
    pub changed: Vec<Row>,
}

/// Compares `old` and `new`; `built` says what is remembered of a derivation's build.
pub fn compare(
    old: &Evaluation,
    new: &Evaluation,
    built: &dyn Fn(&str) -> Option<OutcomeClass>,
) -> Comparison {
    let mut out = Comparison::default();
    let drv = |r: &JobResult| match r {
        JobResult::Ok(job) => Some(job.drv_path.clone()),
        JobResult::Error(_) => None,
    };
    let row = |k: &JobKey, o: Option<&JobResult>, n: Option<&JobResult>| Row {
        attr: k.attr.clone(),
        system: k.system.clone(),
        old_drv: o.and_then(drv),
        new_drv: n.and_then(drv),
        old: o.map(|r| JobStatus::of(r, built)),
        new: n.map(|r| JobStatus::of(r, built)),
    };
    for step in join(old, new) {
        let r = match step {
            Joined::Old(k, o) => {
                out.removed.push(row(k, Some(o), None));
                continue;
            }
            Joined::New(k, n) => {
                out.added.push(row(k, None, Some(n)));
                continue;
            }
            Joined::Both(k, o, n) => row(k, Some(o), Some(n)),
        };
        if r.old_drv != r.new_drv {
            out.changed.push(r.clone());
        }
        let (o, n) = (r.old.expect("both"), r.new.expect("both"));
        let tab = match (o.failing(), n.failing()) {
            _ if o == JobStatus::NotBuilt || n == JobStatus::NotBuilt => &mut out.unfinished,
            (false, true) => &mut out.newly_failing,
            (true, false) => &mut out.newly_succeeding,
            (true, true) => &mut out.still_failing,
            (false, false) => &mut out.still_succeeding,
        };
        tab.push(r);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::evaluation::{EvalOutcome, Job};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// A job on one side: absent, failing to evaluate, or a derivation with a verdict.
    #[derive(Debug, Clone, Copy)]
    enum Side {
        Absent,
        EvalError,
        Drv(u8, Option<bool>),
    }

    fn side() -> impl Strategy<Value = Side> {
        prop_oneof![
            Just(Side::Absent),
            Just(Side::EvalError),
            (
                0u8..3,
                prop_oneof![Just(None), Just(Some(true)), Just(Some(false))]
            )
                .prop_map(|(d, v)| Side::Drv(d, v)),
        ]
    }

    /// A side's status given the verdicts recorded for job `n`'s derivations.
    fn status(n: usize, s: Side, verdicts: &BTreeMap<String, OutcomeClass>) -> Option<JobStatus> {
        match s {
            Side::Absent => None,
            Side::EvalError => Some(JobStatus::EvalError),
            Side::Drv(d, _) => Some(match verdicts.get(&format!("/nix/store/{n}-{d}.drv")) {
                None => JobStatus::NotBuilt,
                Some(OutcomeClass::Success) => JobStatus::Built,
                Some(_) => JobStatus::Failed,
            }),
        }
    }

    proptest! {
        /// Generated pairs of sides per job: each job lands in the tab its two statuses
        /// name, worked out here from the case alone.
        #[test]
        fn every_job_lands_in_the_tab_its_two_sides_name(
            jobs in prop::collection::vec((side(), side()), 0..40)
        ) {
            let mut verdicts: BTreeMap<String, OutcomeClass> = BTreeMap::new();
            let mut evals = [vec![], vec![]];
            for (n, (o, nw)) in jobs.iter().enumerate() {
                for (k, s) in [o, nw].into_iter().enumerate() {
                    let key = JobKey { attr: format!("p{n:03}"), system: "x86_64-linux".into() };
                    let result = match *s {
                        Side::Absent => continue,
                        Side::EvalError => JobResult::Error("boom".into()),
                        Side::Drv(d, v) => {
                            // The same derivation on both sides has one verdict: the first.
                            let drv = format!("/nix/store/{n}-{d}.drv");
                            if let Some(ok) = v {
                                let class = if ok { OutcomeClass::Success } else { OutcomeClass::Failed };
                                verdicts.entry(drv.clone()).or_insert(class);
                            }
                            JobResult::Ok(Job { drv_path: drv, outputs: vec![], maintainers: vec![] })
                        }
                    };
                    evals[k].push((key, result));
                }
            }
            let old = Evaluation::new("a".into(), EvalOutcome::Ok, evals[0].clone());
            let new = Evaluation::new("b".into(), EvalOutcome::Ok, evals[1].clone());
            let c = compare(&old, &new, &|d| verdicts.get(d).copied());
            let tabs: [(&str, &Vec<Row>); 7] = [
                ("newly_failing", &c.newly_failing), ("newly_succeeding", &c.newly_succeeding),
                ("still_failing", &c.still_failing), ("still_succeeding", &c.still_succeeding),
                ("unfinished", &c.unfinished), ("added", &c.added), ("removed", &c.removed),
            ];
            for (n, (o, nw)) in jobs.iter().enumerate() {
                let attr = format!("p{n:03}");
                let (so, sn) = (status(n, *o, &verdicts), status(n, *nw, &verdicts));
                let fails = |s: JobStatus| matches!(s, JobStatus::Failed | JobStatus::EvalError);
                let want = match (so, sn) {
                    (None, None) => None,
                    (None, Some(_)) => Some("added"),
                    (Some(_), None) => Some("removed"),
                    (Some(JobStatus::NotBuilt), _) | (_, Some(JobStatus::NotBuilt)) => Some("unfinished"),
                    (Some(x), Some(y)) => Some(match (fails(x), fails(y)) {
                        (false, true) => "newly_failing",
                        (true, false) => "newly_succeeding",
                        (true, true) => "still_failing",
                        (false, false) => "still_succeeding",
                    }),
                };
                let found: Vec<&str> = tabs
                    .iter()
                    .filter(|(_, rows)| rows.iter().any(|r| r.attr == attr))
                    .map(|(t, _)| *t)
                    .collect();
                prop_assert_eq!(found, want.into_iter().collect::<Vec<_>>(), "job {}: {:?} -> {:?}", attr, o, nw);
                let drv_of = |s: &Side| match s { Side::Drv(d, _) => Some(*d), _ => None };
                let in_changed = c.changed.iter().any(|r| r.attr == attr);
                // On both sides with different derivations (an evaluation error has none).
                let want_changed = so.is_some() && sn.is_some() && drv_of(o) != drv_of(nw);
                prop_assert_eq!(in_changed, want_changed, "changed of {}", attr);
            }
        }
    }
}
