//! The candidate page's answer (`GET /api/v1/repos/{repo}/candidates/{id}`): a candidate
//! with its rebuild set, each job's build state and builder.
//!
//! Put together in four short steps so that the driver task only looks things up in
//! memory and every database read (stored candidates, stored evaluations, attempts)
//! happens off it: [`core_parts`] (driver) → [`rebuild_jobs`] (reader) → [`job_states`]
//! (driver) → [`assemble`] (reader).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::core::evaluation::{diff, Evaluation, JobKey};
use crate::core::outcome::OutcomeClass;
use crate::core::{CandId, Candidate, Core};
use crate::shell::store::{Store, StoreError};

/// What the driver holds of a candidate: itself and its evaluations, when still in memory.
pub struct CandidateCore {
    pub cand: Option<Candidate>,
    pub base: Option<Arc<Evaluation>>,
    pub new: Option<Arc<Evaluation>>,
}

/// Step 1, on the driver: clones (evaluations are shared, not copied).
pub fn core_parts(core: &Core, id: CandId) -> CandidateCore {
    let cand = core.candidate(id).cloned();
    let eval = |c: Option<&str>| c.and_then(|c| core.evaluation(c)).cloned();
    let (base, new) = match &cand {
        Some(k) => (eval(k.base.as_deref()), eval(k.commit())),
        None => (None, None),
    };
    CandidateCore { cand, base, new }
}

/// One job of a rebuild set.
pub struct RebuildJob {
    key: JobKey,
    drv: String,
    base_drv: Option<String>,
}

/// A candidate and its rebuild set: `live` while the candidate is in flight (its
/// verdict's own targets, the required jobs included), `evaluations` once it is done
/// (added and changed jobs, recomputed from the evaluations of base and commit), `none`
/// when neither is known (still preparing or evaluating).
pub struct Rebuild {
    cand: Candidate,
    jobs: Vec<RebuildJob>,
    source: &'static str,
}

impl Rebuild {
    /// Every derivation whose state [`assemble`] needs: the jobs' and their bases'.
    pub fn drvs(&self) -> Vec<String> {
        let mut drvs: Vec<String> = self
            .jobs
            .iter()
            .flat_map(|j| std::iter::once(j.drv.clone()).chain(j.base_drv.clone()))
            .collect();
        drvs.sort();
        drvs.dedup();
        drvs
    }
}

/// Step 2, off the driver: what memory no longer held is read from the database.
/// `None`: no such candidate in `repo`.
pub fn rebuild_jobs(
    store: &Store,
    parts: CandidateCore,
    repo: &str,
    id: CandId,
) -> Result<Option<Rebuild>, StoreError> {
    let cand = match parts.cand {
        Some(k) => k,
        None => match store.candidate(id)? {
            Some(k) => k,
            None => return Ok(None),
        },
    };
    if cand.repo != repo {
        return Ok(None);
    }
    if !cand.targets.is_empty() {
        let jobs = cand
            .targets
            .iter()
            .map(|t| RebuildJob {
                key: t.key.clone(),
                drv: t.drv.clone(),
                base_drv: t.base_drv.clone(),
            })
            .collect();
        return Ok(Some(Rebuild {
            cand,
            jobs,
            source: "live",
        }));
    }
    let load = |held: Option<Arc<Evaluation>>, commit: Option<&str>| match (held, commit) {
        (Some(e), _) => Ok(Some(e)),
        (None, Some(c)) => store.get_eval(c).map(|e| e.map(Arc::new)),
        (None, None) => Ok(None),
    };
    let base = load(parts.base, cand.base.as_deref())?;
    let new = load(parts.new, cand.commit())?;
    let (jobs, source) = match (base, new) {
        (Some(base), Some(new)) => {
            let jobs = diff(&base, &new)
                .rebuild_set()
                .filter_map(|key| {
                    let drv = new.get(key)?.job()?.drv_path.clone();
                    let base_drv = base
                        .get(key)
                        .and_then(|r| r.job())
                        .map(|j| j.drv_path.clone());
                    Some(RebuildJob {
                        key: key.clone(),
                        drv,
                        base_drv,
                    })
                })
                .collect();
            (jobs, "evaluations")
        }
        _ => (vec![], "none"),
    };
    Ok(Some(Rebuild { cand, jobs, source }))
}

/// What the driver knows of a derivation's build right now.
#[derive(Debug, Clone, Default)]
pub struct JobState {
    memo: Option<OutcomeClass>,
    running_on: Option<String>,
    queued: bool,
}

/// Step 3, on the driver: look-ups in the scheduler and the remembered results.
pub fn job_states(core: &Core, drvs: &[String]) -> BTreeMap<String, JobState> {
    let sched = core.scheduler();
    drvs.iter()
        .map(|d| {
            let state = JobState {
                memo: core.memo(d).map(|m| m.class),
                running_on: sched.running_on(d).map(|b| b.to_string()),
                queued: sched.step(d).is_some(),
            };
            (d.clone(), state)
        })
        .collect()
}

/// Step 4, off the driver: each job with its attempts. The candidate as `/candidates`
/// lists it, plus `rebuild` (its jobs, each with `state`: an outcome class, `building`,
/// `queued` or `not built`, and `builder`), `builds_done`, `builds_to_do` and
/// `rebuild_source`.
pub fn assemble(
    store: &Store,
    r: &Rebuild,
    states: &BTreeMap<String, JobState>,
) -> Result<Value, StoreError> {
    let none = JobState::default();
    let mut rebuild = Vec::with_capacity(r.jobs.len());
    for j in &r.jobs {
        let attempts = store.attempts_of(&j.drv)?;
        let last = attempts.last();
        let st = states.get(&j.drv).unwrap_or(&none);
        let (state, builder) = match (st.memo, &st.running_on, st.queued) {
            (_, Some(b), _) => ("building".to_string(), Some(b.clone())),
            (_, None, true) => ("queued".to_string(), None),
            (Some(m), None, false) => (m.as_str().to_string(), last.map(|a| a.builder.clone())),
            (None, None, false) => match last {
                // An infrastructure outcome is never remembered: say what the last try was.
                Some(a) => (a.class.clone(), Some(a.builder.clone())),
                None => ("not built".to_string(), None),
            },
        };
        // What the base's version of the job did: a failure here that also fails there is
        // not newly broken.
        let base_state = j.base_drv.as_ref().map(|b| {
            states
                .get(b)
                .and_then(|s| s.memo)
                .map_or("not built", |m| m.as_str())
        });
        let failing = !matches!(
            state.as_str(),
            "success" | "building" | "queued" | "not built"
        );
        let newly_broken = failing && base_state.is_none_or(|b| b == "success");
        rebuild.push(json!({
            "attr": j.key.attr,
            "system": j.key.system,
            "drv": j.drv,
            "base_drv": j.base_drv,
            "base_state": base_state,
            "newly_broken": newly_broken,
            "state": state,
            "builder": builder,
            "attempts": attempts.len(),
            "log": last.map(|a| format!("/api/v1/attempts/{}/log", a.id)),
        }));
    }
    let to_do = rebuild
        .iter()
        .filter(|j| {
            matches!(
                j["state"].as_str(),
                Some("building" | "queued" | "not built")
            )
        })
        .count();
    let mut v = super::candidate_json(&r.cand);
    v["builds_done"] = json!(rebuild.len() - to_do);
    v["builds_to_do"] = json!(to_do);
    v["rebuild_source"] = json!(r.source);
    v["rebuild"] = Value::Array(rebuild);
    Ok(v)
}
