//! The JSON views the pages need that no earlier query answered, computed on the driver
//! task like every other answer: a candidate with its rebuild set, each job's build state
//! and builder (`Query::Candidate`, `GET /api/v1/repos/{repo}/candidates/{id}`), and one
//! page of a queue (`Query::QueuePage`, `GET /api/v1/repos/{repo}/queue?limit=N`), so a
//! queue of ten thousand changes is not turned into JSON to show fifty.

use serde_json::{json, Value};

use crate::core::evaluation::{diff, Evaluation, JobKey};
use crate::core::Core;
use crate::shell::config::Config;
use crate::shell::store::Store;

/// One job of the rebuild set and what became of its build.
fn job(core: &Core, store: &Store, key: &JobKey, drv: &str, base_drv: Option<&str>) -> Value {
    let sched = core.scheduler();
    let attempts = store.attempts_of(drv).unwrap_or_default();
    let last = attempts.last();
    let (state, builder) = match (core.memo(drv), sched.running_on(drv), sched.step(drv)) {
        (_, Some(b), _) => ("building".to_string(), Some(b.to_string())),
        (_, None, Some(_)) => ("queued".to_string(), None),
        (Some(m), None, None) => (
            m.class.as_str().to_string(),
            last.map(|a| a.builder.clone()),
        ),
        (None, None, None) => match last {
            // An infrastructure outcome is never remembered: say what the last try was.
            Some(a) => (a.class.clone(), Some(a.builder.clone())),
            None => ("not built".to_string(), None),
        },
    };
    // What the base's version of the job did: a failure here that also fails there is
    // not newly broken.
    let base_state = base_drv.map(|b| core.memo(b).map_or("not built", |m| m.class.as_str()));
    let failing = !matches!(
        state.as_str(),
        "success" | "building" | "queued" | "not built"
    );
    let newly_broken = failing && base_state.is_none_or(|b| b == "success");
    json!({
        "attr": key.attr,
        "system": key.system,
        "drv": drv,
        "base_drv": base_drv,
        "base_state": base_state,
        "newly_broken": newly_broken,
        "state": state,
        "builder": builder,
        "attempts": attempts.len(),
        "log": last.map(|a| format!("/api/v1/attempts/{}/log", a.id)),
    })
}

fn evaluation(core: &Core, store: &Store, commit: &str) -> Option<Evaluation> {
    match core.evals.get(commit) {
        Some(e) => Some((**e).clone()),
        None => store.get_eval(commit).ok().flatten(),
    }
}

/// A candidate as `/candidates` lists it, plus `rebuild` (its jobs, each with `state`:
/// an outcome class, `building`, `queued` or `not built`, and `builder`), `builds_done`,
/// `builds_to_do`, and `rebuild_source`: `live` while the candidate is in flight (its
/// verdict's own targets, the required jobs included), `evaluations` once it is done
/// (added and changed jobs, recomputed from the stored evaluations of base and commit),
/// `none` when neither is known (still preparing or evaluating).
pub fn candidate(core: &Core, store: &Store, repo: &str, id: u64) -> Option<Value> {
    let k = core.candidate(id).filter(|k| k.repo == repo)?;
    let mut v = crate::shell::status::candidate_json(k);
    let (rebuild, source): (Vec<Value>, &str) = if !k.targets.is_empty() {
        let jobs = k
            .targets
            .iter()
            .map(|t| job(core, store, &t.key, &t.drv, t.base_drv.as_deref()))
            .collect();
        (jobs, "live")
    } else {
        let evals =
            k.base.as_deref().zip(k.commit()).and_then(|(b, c)| {
                Some((evaluation(core, store, b)?, evaluation(core, store, c)?))
            });
        match evals {
            Some((base, new)) => {
                let d = diff(&base, &new);
                let jobs = d
                    .rebuild_set()
                    .filter_map(|key| {
                        let drv = new.get(key)?.job()?.drv_path.clone();
                        let base_drv = base
                            .get(key)
                            .and_then(|r| r.job())
                            .map(|j| j.drv_path.as_str());
                        Some(job(core, store, key, &drv, base_drv))
                    })
                    .collect();
                (jobs, "evaluations")
            }
            None => (vec![], "none"),
        }
    };
    let to_do = rebuild
        .iter()
        .filter(|j| {
            matches!(
                j["state"].as_str(),
                Some("building" | "queued" | "not built")
            )
        })
        .count();
    v["builds_done"] = json!(rebuild.len() - to_do);
    v["builds_to_do"] = json!(to_do);
    v["rebuild_source"] = json!(source);
    v["rebuild"] = Value::Array(rebuild);
    Some(v)
}

/// `/queue`'s answer with, per branch, `queued` cut to `limit` changes from `offset` (for
/// `branch`, or every branch when `None`; the others start at 0), and `queued_total`.
pub fn queue_page(
    config: &Config,
    core: &Core,
    repo: &str,
    branch: Option<&str>,
    offset: usize,
    limit: usize,
) -> Option<Value> {
    let r = config.repo(repo)?;
    let branches: Vec<Value> = r
        .branches
        .iter()
        .map(|b| {
            let name = b.name.get_ref();
            let testing: Vec<Value> = core
                .candidates()
                .filter(|k| {
                    k.repo == repo && &k.branch == name && k.phase != crate::core::Phase::Done
                })
                .map(crate::shell::status::candidate_json)
                .collect();
            let all = core.queue(repo, name);
            let from = if branch.is_none_or(|x| x == name) {
                offset.min(all.len())
            } else {
                0
            };
            let queued: Vec<Value> = all[from..(from + limit).min(all.len())]
                .iter()
                .map(|c| crate::shell::status::change_json(c, None))
                .collect();
            json!({ "branch": name, "testing": testing, "queued": queued,
                    "queued_total": all.len(), "offset": from })
        })
        .collect();
    Some(json!({ "repo": repo, "branches": branches }))
}
