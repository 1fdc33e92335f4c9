//! `GET /api/v1/repos/{repo}/compare?from=A&to=B`: two stored evaluations compared with
//! Hydra's tabs (`core::compare`), the verdicts read from the remembered builds. Off the
//! driver: the evaluations of a Nixpkgs commit are tens of megabytes.

use std::collections::BTreeMap;

use rusqlite::OptionalExtension;
use serde_json::{json, Value};

use crate::core::compare::{compare, Row};
use crate::core::evaluation::JobResult;
use crate::core::outcome::OutcomeClass;
use crate::shell::store::{Store, StoreError};

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
    let mut verdicts: BTreeMap<String, OutcomeClass> = BTreeMap::new();
    {
        let mut st = store
            .conn()
            .prepare_cached("SELECT class FROM memo WHERE drv = ?1")?;
        for (_, r) in old.jobs.iter().chain(new.jobs.iter()) {
            let JobResult::Ok(job) = r else { continue };
            if verdicts.contains_key(&job.drv_path) {
                continue;
            }
            let class: Option<String> = st.query_row([&job.drv_path], |r| r.get(0)).optional()?;
            if let Some(c) = class.as_deref().and_then(OutcomeClass::parse) {
                verdicts.insert(job.drv_path.clone(), c);
            }
        }
    }
    let c = compare(&old, &new, &|d| verdicts.get(d).copied());
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
