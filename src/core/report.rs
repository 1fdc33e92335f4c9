//! The newly-broken report of a candidate (Hydra's semantics per attribute and system):
//! the jobs that built on the base and fail on the candidate, each direct failure apart
//! from the dependency failures (which name their root), the newly succeeding and the
//! still failing jobs, grouped by who can act on them; and the rebuild counts per system
//! in the buckets Nixpkgs' `rebuild` labels use.
//!
//! Only remembered verdicts count (`core::compare`): infrastructure and cancelled
//! outcomes are never failures, and a job not built yet on either side is in no tab.

use std::collections::BTreeMap;

use serde::Serialize;

use super::compare::{compare, JobStatus, Row};
use super::evaluation::{diff, Evaluation, JobKey, JobResult, Maintainer};
use super::outcome::OutcomeClass;

/// What is remembered of a derivation's build: its verdict and, for a dependency
/// failure, the derivation that failed first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remembered {
    pub class: OutcomeClass,
    pub root_drv: Option<String>,
}

/// The failing root of a dependency failure, as the candidate's evaluation names it
/// (`attr` is `None` when the root is not a job itself, say a fetcher).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Root {
    pub drv: String,
    pub attr: Option<String>,
    pub maintainers: Vec<Maintainer>,
}

/// One job of a tab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportRow {
    pub attr: String,
    pub system: String,
    /// The candidate's derivation (`None`: it fails to evaluate there).
    pub drv: Option<String>,
    /// The candidate side: an outcome class (`failed`, `dependency-failed`,
    /// `timed-out`, `success`) or `eval-error`.
    pub class: String,
    /// For a dependency failure: what failed first.
    pub root: Option<Root>,
    pub maintainers: Vec<Maintainer>,
}

/// Rebuilds on one system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rebuilds {
    pub count: usize,
    pub bucket: &'static str,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub newly_failing: Vec<ReportRow>,
    pub newly_succeeding: Vec<ReportRow>,
    pub still_failing: Vec<ReportRow>,
    /// Maintainer id → the newly failing jobs (`attr (system)`) they can act on: a direct
    /// failure's own maintainers, a dependency failure's root's maintainers (its own when
    /// the root has none), as notifications go (`docs/breakage.md`).
    pub by_maintainer: BTreeMap<String, Vec<String>>,
    /// System → added and changed jobs there (the rebuild set).
    pub rebuilds: BTreeMap<String, Rebuilds>,
}

/// The bucket of Nixpkgs' `10.rebuild-*` labels a rebuild count falls in.
pub fn bucket(count: usize) -> &'static str {
    match count {
        0 => "0",
        1..=10 => "1-10",
        11..=100 => "11-100",
        101..=500 => "101-500",
        501..=1000 => "501-1000",
        1001..=2500 => "1001-2500",
        2501..=5000 => "2501-5000",
        _ => "5001+",
    }
}

/// The report of `new` (a candidate's evaluation) against `base`.
pub fn report(
    base: &Evaluation,
    new: &Evaluation,
    memo: &dyn Fn(&str) -> Option<Remembered>,
) -> Report {
    // The root of a remembered dependency failure failed, whether or not it was built as
    // a job of its own (a rejected candidate's other builds are cancelled).
    let roots: std::collections::BTreeSet<String> = base
        .jobs
        .iter()
        .chain(&new.jobs)
        .filter_map(|(_, r)| memo(&r.job()?.drv_path)?.root_drv)
        .collect();
    let memo = |d: &str| {
        memo(d).or_else(|| {
            roots.contains(d).then_some(Remembered {
                class: OutcomeClass::Failed,
                root_drv: None,
            })
        })
    };
    let memo = &memo;
    let cmp = compare(base, new, &|d| memo(d).map(|m| m.class));
    // The candidate's jobs by derivation, to name a dependency failure's root.
    let by_drv: BTreeMap<&str, (&str, &[Maintainer])> = new
        .jobs
        .iter()
        .filter_map(|(k, r)| match r {
            JobResult::Ok(j) => Some((j.drv_path.as_str(), (k.attr.as_str(), &j.maintainers[..]))),
            JobResult::Error(_) => None,
        })
        .collect();
    let row = |r: &Row| {
        let key = JobKey {
            attr: r.attr.clone(),
            system: r.system.clone(),
        };
        // A job that no longer evaluates has no meta on the candidate: its maintainers
        // are the base's.
        let maintainers = [new, base]
            .iter()
            .find_map(|e| e.get(&key).and_then(|j| j.job()))
            .map(|j| j.maintainers.clone())
            .unwrap_or_default();
        let remembered = r.new_drv.as_deref().and_then(memo);
        let class = match (r.new, &remembered) {
            (Some(JobStatus::EvalError), _) => "eval-error".to_string(),
            (_, Some(m)) => m.class.as_str().to_string(),
            _ => "not built".to_string(),
        };
        let root = remembered
            .filter(|m| m.class == OutcomeClass::DependencyFailed)
            .and_then(|m| m.root_drv)
            .map(|drv| {
                let (attr, maintainers) = match by_drv.get(drv.as_str()) {
                    Some((a, ms)) => (Some(a.to_string()), ms.to_vec()),
                    None => (None, vec![]),
                };
                Root {
                    drv,
                    attr,
                    maintainers,
                }
            });
        ReportRow {
            attr: r.attr.clone(),
            system: r.system.clone(),
            drv: r.new_drv.clone(),
            class,
            root,
            maintainers,
        }
    };
    let rows = |tab: &[Row]| tab.iter().map(row).collect::<Vec<_>>();
    let mut out = Report {
        newly_failing: rows(&cmp.newly_failing),
        newly_succeeding: rows(&cmp.newly_succeeding),
        still_failing: rows(&cmp.still_failing),
        ..Report::default()
    };
    for r in &out.newly_failing {
        let who = match &r.root {
            Some(root) if !root.maintainers.is_empty() => &root.maintainers,
            _ => &r.maintainers,
        };
        let mut ids: Vec<&str> = who.iter().map(Maintainer::id).collect();
        ids.sort();
        ids.dedup();
        for id in ids {
            out.by_maintainer
                .entry(id.to_string())
                .or_default()
                .push(format!("{} ({})", r.attr, r.system));
        }
    }
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for k in diff(base, new).rebuild_set() {
        *counts.entry(k.system.clone()).or_default() += 1;
    }
    out.rebuilds = counts
        .into_iter()
        .map(|(system, count)| {
            (
                system,
                Rebuilds {
                    count,
                    bucket: bucket(count),
                },
            )
        })
        .collect();
    out
}

#[cfg(test)]
mod report_props;
