//! `GET /api/v1/repos/{repo}/candidates/{id}/why`: why the candidate's changed jobs
//! rebuild (`core::why`), from its two stored evaluations and the derivations in the
//! store. Off the driver: the database is read on the reader pool, the derivations with
//! `nix show-derivation`, one level of the changed subgraph at a time.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::core::evaluation::{diff, Evaluation, JobKey};
use crate::core::why::{explain, Cause, ChangedJob};
use crate::shell::builder::read_inputs;
use crate::shell::status::report::candidate_evals;
use crate::shell::store::{Reader, Store, StoreError};

/// At most this many changed jobs are walked (the first, by attribute), and at most this
/// many derivations read for them: a mass rebuild's walk would otherwise read the whole
/// package set. Past either, the answer says `"complete": false`.
pub const JOBS_MAX: usize = 2000;
pub const DRVS_MAX: usize = 20_000;

/// What the walk starts from: the candidate's header, its changed jobs and every job's
/// attribute by derivation (to name the inputs that are jobs themselves).
pub struct Start {
    head: Value,
    jobs: Vec<ChangedJob>,
    changed_total: usize,
    attrs: BTreeMap<String, String>,
}

/// `None`: no such candidate in `repo`.
pub fn start(store: &Store, repo: &str, id: u64) -> Result<Option<Start>, StoreError> {
    let Some((head, evals)) = candidate_evals(store, repo, id)? else {
        return Ok(None);
    };
    let Some((base, new)) = evals else {
        return Ok(Some(Start {
            head,
            jobs: vec![],
            changed_total: 0,
            attrs: BTreeMap::new(),
        }));
    };
    let drv = |e: &Evaluation, k: &JobKey| Some(e.get(k)?.job()?.drv_path.clone());
    let changed = diff(&base, &new).changed;
    let changed_total = changed.len();
    let jobs = changed
        .into_iter()
        .filter_map(|k| {
            let (b, n) = (drv(&base, &k)?, drv(&new, &k)?);
            Some((k, b, n))
        })
        .take(JOBS_MAX)
        .collect();
    let attrs = base
        .jobs
        .iter()
        .chain(&new.jobs)
        .filter_map(|(k, r)| Some((r.job()?.drv_path.clone(), k.attr.clone())))
        .collect();
    Ok(Some(Start {
        head,
        jobs,
        changed_total,
        attrs,
    }))
}

/// The answer: each changed job (the first `limit`) with its first changed inputs, and
/// the inputs that rebuild the most jobs (the first `limit`, over every walked job).
pub async fn answer(
    reader: &Reader,
    (nix_args, timeout): (&[String], std::time::Duration),
    repo: String,
    id: u64,
    limit: usize,
) -> Result<Option<Value>, StoreError> {
    let Some(start) = reader.read(move |s| start(s, &repo, id)).await? else {
        return Ok(None);
    };
    let Start {
        mut head,
        jobs,
        changed_total,
        attrs,
    } = start;
    head["limit"] = json!(limit);
    if head["evaluated"] == false {
        return Ok(Some(head));
    }
    let mut known = BTreeMap::new();
    let mut error = None;
    let why = loop {
        let why = explain(&jobs, &known);
        if why.missing.is_empty() || known.len() + why.missing.len() > DRVS_MAX {
            break why;
        }
        match read_inputs(nix_args, &why.missing, timeout).await {
            // A derivation the store no longer has (collected) ends the walk there.
            Ok(read) if read.is_empty() => break why,
            Ok(read) => known.extend(read),
            Err(e) => {
                error = Some(e);
                break why;
            }
        }
    };
    let cause = |c: &Cause| {
        let mut v = json!(c);
        if let Cause::Derivation { new, .. } | Cause::Added { new, .. } = c {
            if let Some(a) = attrs.get(new) {
                v["attr"] = json!(a);
            }
        }
        v
    };
    head["changed_total"] = json!(changed_total);
    head["explained"] = json!(why.jobs.len());
    head["complete"] = json!(why.missing.is_empty() && why.jobs.len() == changed_total);
    if let Some(e) = error {
        head["error"] = json!(format!("reading derivations: {e}"));
    }
    head["jobs"] = why
        .jobs
        .iter()
        .take(limit)
        .map(|j| {
            json!({
                "attr": j.attr, "system": j.system, "base_drv": j.base_drv, "drv": j.drv,
                "causes": j.causes.iter().map(cause).collect::<Vec<_>>(),
            })
        })
        .collect();
    head["top"] = why
        .top
        .iter()
        .take(limit)
        .map(|t| {
            let mut v = cause(&t.cause);
            v["jobs"] = json!(t.jobs);
            v
        })
        .collect();
    Ok(Some(head))
}
