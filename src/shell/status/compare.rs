//! `GET /api/v1/repos/{repo}/compare?from=A&to=B`: two stored evaluations compared with
//! Hydra's tabs (`core::compare`), the verdicts read from the remembered builds. Off the
//! driver: the evaluations of a Nixpkgs commit are tens of megabytes.

use std::collections::BTreeMap;

use rusqlite::OptionalExtension;
use serde_json::{json, Value};

use crate::core::compare::{compare, Row};
use crate::core::evaluation::{Evaluation, JobResult};
use crate::core::outcome::OutcomeClass;
use crate::core::report::Remembered;
use crate::shell::store::{Store, StoreError};

/// What the memo holds of every derivation the two evaluations build (one query per
/// distinct derivation, on the reader's connection).
pub fn remembered(
    store: &Store,
    old: &Evaluation,
    new: &Evaluation,
) -> Result<BTreeMap<String, Remembered>, StoreError> {
    let mut memo: BTreeMap<String, Remembered> = BTreeMap::new();
    let mut st = store
        .conn()
        .prepare_cached("SELECT class, root_drv FROM memo WHERE drv = ?1")?;
    for (_, r) in old.jobs.iter().chain(new.jobs.iter()) {
        let JobResult::Ok(job) = r else { continue };
        if memo.contains_key(&job.drv_path) {
            continue;
        }
        let row: Option<(String, Option<String>)> = st
            .query_row([&job.drv_path], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        if let Some((class, root_drv)) = row {
            if let Some(class) = OutcomeClass::parse(&class) {
                memo.insert(job.drv_path.clone(), Remembered { class, root_drv });
            }
        }
    }
    Ok(memo)
}

/// The comparison, each tab cut to `limit` rows (`counts` has every tab's size); `None`
/// when an evaluation of `from` or `to` is not stored.
pub fn answer(
    store: &Store,
    from: &str,
    to: &str,
    limit: usize,
) -> Result<Option<Value>, StoreError> {
    let (Some(old), Some(new)) = (store.get_eval(from)?, store.get_eval(to)?) else {
        return Ok(None);
    };
    let verdicts = remembered(store, &old, &new)?;
    let c = compare(&old, &new, &|d| verdicts.get(d).map(|m| m.class));
    let tabs: [(&str, &Vec<Row>); 8] = [
        ("newly_failing", &c.newly_failing),
        ("newly_succeeding", &c.newly_succeeding),
        ("still_failing", &c.still_failing),
        ("unfinished", &c.unfinished),
        ("added", &c.added),
        ("removed", &c.removed),
        ("changed", &c.changed),
        ("still_succeeding", &c.still_succeeding),
    ];
    let mut out = json!({ "from": from, "to": to, "limit": limit, "counts": {} });
    for (name, rows) in tabs {
        out["counts"][name] = json!(rows.len());
        out[name] = json!(rows.iter().take(limit).collect::<Vec<_>>());
    }
    Ok(Some(out))
}
