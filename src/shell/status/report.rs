//! `GET /api/v1/repos/{repo}/candidates/{id}/report`: a candidate's newly-broken report
//! (`core::report`) from its stored evaluations (base and candidate commit) and the
//! remembered builds. Off the driver, like the comparison it extends.

use serde_json::{json, Value};

use crate::core::evaluation::Evaluation;
use crate::core::report::report;
use crate::shell::status::compare::remembered;
use crate::shell::store::{Store, StoreError};

/// A candidate's base's evaluation and its own.
pub type BaseAndNew = (Evaluation, Evaluation);

/// A candidate of `repo` as a JSON header (`evaluated` says whether both evaluations are
/// stored) and its base's and its own evaluation. `None`: no such candidate.
pub fn candidate_evals(
    store: &Store,
    repo: &str,
    id: u64,
) -> Result<Option<(Value, Option<BaseAndNew>)>, StoreError> {
    let Some(cand) = store.candidate(id)?.filter(|c| c.repo == repo) else {
        return Ok(None);
    };
    let mut head = json!({
        "candidate": cand.id,
        "branch": cand.branch,
        "changes": cand.changes,
        "base": cand.base,
        "commit": cand.commit(),
    });
    let evals = match (cand.base.as_deref(), cand.commit()) {
        (Some(b), Some(c)) => (store.get_eval(b)?, store.get_eval(c)?),
        _ => (None, None),
    };
    let evals = match evals {
        (Some(b), Some(n)) => Some((b, n)),
        _ => None,
    };
    head["evaluated"] = json!(evals.is_some());
    Ok(Some((head, evals)))
}

/// The report, each tab cut to `limit` rows (`counts` has every tab's size). `None`: no
/// such candidate in `repo`. A candidate whose evaluations are not stored (still
/// evaluating, or deleted by retention) answers with `"evaluated": false` and no tabs.
pub fn answer(
    store: &Store,
    repo: &str,
    id: u64,
    limit: usize,
) -> Result<Option<Value>, StoreError> {
    let Some((mut out, evals)) = candidate_evals(store, repo, id)? else {
        return Ok(None);
    };
    out["limit"] = json!(limit);
    let Some((base, new)) = evals else {
        return Ok(Some(out));
    };
    let memo = remembered(store, &base, &new)?;
    let r = report(&base, &new, &|d| memo.get(d).cloned());
    out["counts"] = json!({
        "newly_failing": r.newly_failing.len(),
        "newly_succeeding": r.newly_succeeding.len(),
        "still_failing": r.still_failing.len(),
    });
    out["newly_failing"] = json!(r.newly_failing.iter().take(limit).collect::<Vec<_>>());
    out["newly_succeeding"] = json!(r.newly_succeeding.iter().take(limit).collect::<Vec<_>>());
    out["still_failing"] = json!(r.still_failing.iter().take(limit).collect::<Vec<_>>());
    out["by_maintainer"] = json!(r.by_maintainer);
    out["rebuilds"] = json!(r.rebuilds);
    Ok(Some(out))
}
