//! The attribution's evidence: what each probe said about each blocker's job, and the
//! state of an attribution in progress (kept on its candidate). The decisions made from
//! it are in `attribution.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::blocker::Blocker;
use super::ProbeId;
use crate::core::change::ChangeId;
use crate::core::evaluation::{attr_under, Evaluation, JobKey, JobResult};

/// What probes say about a blocker's job.
impl Blocker {
    /// What a probe says about this blocker's job.
    pub(crate) fn state(&self, probe: &Probe) -> JobState {
        let (jobs, eval): (&[(JobKey, JobResult)], Option<&Evaluation>) = match probe {
            Probe::Conflict => return JobState::Unknown,
            Probe::Attrs(jobs) => (jobs, None),
            Probe::Full(e) if e.failed() => return JobState::WholeFailed,
            Probe::Full(e) => (&e.jobs, Some(e)),
        };
        match self {
            Blocker::Build { key, .. } | Blocker::EvalError { key, .. } => {
                let r = match eval {
                    Some(e) => e.get(key),
                    None => jobs.iter().find(|(k, _)| k == key).map(|(_, r)| r),
                };
                match r {
                    None => JobState::Absent,
                    Some(JobResult::Error(_)) => JobState::EvalError,
                    Some(JobResult::Ok(j)) => JobState::Drv(j.drv_path.clone()),
                }
            }
            Blocker::Missing { attr } => {
                let present = jobs
                    .iter()
                    .any(|(k, r)| attr_under(&k.attr, attr) && r.job().is_some());
                if present {
                    JobState::Present
                } else {
                    JobState::Absent
                }
            }
            Blocker::WholeEval { .. } => JobState::Present,
        }
    }
}

/// A probe's answer, kept for the attribution's decisions.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Probe {
    Attrs(Vec<(JobKey, JobResult)>),
    Full(Arc<Evaluation>),
    /// Did not merge there (a change that needs an earlier one of the batch).
    Conflict,
}

/// A blocker's job at one commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JobState {
    Absent,
    EvalError,
    Drv(String),
    /// Some job under a `Missing` blocker's attribute exists; or the jobset evaluates.
    Present,
    WholeFailed,
    Unknown,
}

/// Whether a job state shows the blocker's failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Broken {
    Yes,
    No,
    /// Only a build of this derivation can tell.
    Build(String),
    Unknown,
}

/// Where a probe's answer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    Base,
    Alone(usize),
    /// A prefix of the merge chain (index into `merged`), during a search.
    Prefix(usize),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Search {
    pub(crate) blocker: usize,
    /// Merge-chain indices to test; the last is the whole batch, known broken.
    pub(crate) positions: Vec<usize>,
    /// The first broken prefix is at `positions[lo..=hi]`; `positions[hi]` is broken.
    pub(crate) lo: usize,
    pub(crate) hi: usize,
    /// Searching every position between the last two, after the changes altering it.
    pub(crate) refined: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Attribution {
    pub(crate) blockers: Vec<Blocker>,
    /// The attributes every probe evaluates; `None`: full evaluations.
    pub(crate) probe_attrs: Option<Vec<String>>,
    pub(crate) base: Option<Probe>,
    pub(crate) alone: Vec<Option<Probe>>,
    pub(crate) prefix: BTreeMap<usize, Probe>,
    pub(crate) probes: BTreeMap<ProbeId, Slot>,
    /// Blockers still to be attributed, in order.
    pub(crate) todo: Vec<usize>,
    pub(crate) search: Option<Search>,
    pub(crate) culprits: BTreeMap<ChangeId, String>,
    /// The blockers each culprit is answerable for (blamed on it, or explained by it).
    pub(crate) blamed: BTreeMap<ChangeId, BTreeSet<usize>>,
    /// Blockers nothing could be pinned on.
    pub(crate) unexplained: Vec<usize>,
    /// Blockers with a culprit.
    pub(crate) pinned: BTreeSet<usize>,
    /// Blockers left for a prefix search: (blocker, changes altering it alone,
    /// positions to search).
    pub(crate) deferred: Vec<(usize, Vec<usize>, Vec<usize>)>,
    /// Blockers that also fail on the base and are about required jobs.
    pub(crate) held: Vec<usize>,
    /// Jobs of blockers that fail on the base just the same.
    pub(crate) preexisting: Vec<JobKey>,
    /// Builds attribution waits for (evidence).
    pub(crate) waiting: BTreeSet<String>,
}
