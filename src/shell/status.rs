//! Answers to read-only queries (changes, queues, candidates, builders, events) and the
//! Prometheus metrics, computed on the driver task from the core's state and the store.

use serde_json::{json, Value};

use crate::core::change::{Change, ChangeState};
use crate::core::outcome::OutcomeClass;
use crate::core::Core;
use crate::shell::config::Config;
use crate::shell::driver::{Query, Reply};
use crate::shell::store::Store;

pub fn change_json(c: &Change, candidate: Option<&crate::core::Candidate>) -> Value {
    json!({
        "id": c.id,
        "repo": c.repo,
        "target": c.target,
        "ref": c.git_ref,
        "head": c.head,
        "submitted_head": c.submitted_head,
        "title": c.title,
        "author": c.author,
        "priority": c.priority.as_str(),
        "state": c.state.as_str(),
        "reason": c.reason,
        "landed_commit": c.landed_commit,
        "submitted_at": c.submitted_at,
        "updated_at": c.updated_at,
        "candidate": candidate.map(|k| k.id),
    })
}

pub(crate) fn candidate_json(k: &crate::core::Candidate) -> Value {
    json!({
        "id": k.id,
        "branch": k.branch,
        "changes": k.changes,
        "base": k.base,
        "commit": k.commit(),
        "phase": k.phase.as_str(),
        "follow_up_of": k.follow_up_of,
        "builds": k.builds,
        "extra_builds": k.extra_builds,
        "created_at": k.created_at,
        "last_build_at": k.last_build_at,
        "finished_at": k.finished_at,
        "summary": k.summary,
    })
}

/// Answers a query from the driver's state (runs on the driver task).
pub fn answer(config: &Config, core: &Core, store: &Store, q: Query) -> Option<Reply> {
    Some(match q {
        Query::Change { repo, id } => {
            let c = core.change(id).filter(|c| c.repo == repo)?;
            let cand = core.candidates().filter(|k| k.changes.contains(&id)).last();
            Reply::Json(change_json(c, cand))
        }
        Query::Queue { repo } => {
            let r = config.repo(&repo)?;
            let branches: Vec<Value> = r
                .branches
                .iter()
                .map(|b| {
                    let name = b.name.get_ref();
                    let testing: Vec<Value> = core
                        .candidates()
                        .filter(|k| {
                            k.repo == repo
                                && &k.branch == name
                                && k.phase != crate::core::Phase::Done
                        })
                        .map(candidate_json)
                        .collect();
                    let queued: Vec<Value> = core
                        .queue(&repo, name)
                        .into_iter()
                        .map(|c| change_json(c, None))
                        .collect();
                    json!({ "branch": name, "testing": testing, "queued": queued })
                })
                .collect();
            Reply::Json(json!({ "repo": repo, "branches": branches }))
        }
        Query::Candidates { repo } => Reply::Json(Value::Array(
            core.candidates()
                .filter(|k| k.repo == repo)
                .map(candidate_json)
                .collect(),
        )),
        Query::QueuePage { repo, branch, offset, limit } => Reply::Json(
            crate::shell::ui::twin::queue_page(config, core, &repo, branch.as_deref(), offset, limit)?,
        ),
        Query::Candidate { repo, id } => {
            Reply::Json(crate::shell::ui::twin::candidate(core, store, &repo, id)?)
        }
        Query::Events { after } => {
            let events = store.events_after(after, 500).ok()?;
            Reply::Json(Value::Array(
                events
                    .into_iter()
                    .map(|(id, at, repo, text)| json!({ "id": id, "at": at, "repo": repo, "text": text }))
                    .collect(),
            ))
        }
        Query::Builders => Reply::Json(builders_json(core, store)),
        Query::Implementations => Reply::Json(implementations_json(core, store)),
        Query::Attempts { drv } => Reply::Json(Value::Array(
            store
                .attempts_of(&drv)
                .ok()?
                .into_iter()
                .map(|a| json!({"id": a.id, "drv": a.drv, "builder": a.builder, "class": a.class, "duration_ms": a.duration_ms, "log": format!("/api/v1/attempts/{}/log", a.id)}))
                .collect(),
        )),
        Query::Log { attempt } => {
            let a = store.attempt(attempt).ok()??;
            Reply::Text(read_log(a.log_path.as_deref()?).ok()?)
        }
        Query::Metrics => Reply::Text(metrics(config, core, store)),
        Query::Channels { name: None } => Reply::Json(crate::shell::channel::channels_json(config, core, crate::shell::driver::now_ms())),
        Query::Channels { name: Some(n) } => {
            Reply::Json(crate::shell::channel::channel_json(config, core, &n, crate::shell::driver::now_ms())?)
        }
    })
}

fn metrics(config: &Config, core: &Core, store: &Store) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    out.push_str("# HELP mergequeue_changes_total Changes by state.\n# TYPE mergequeue_changes_total gauge\n");
    for s in [
        ChangeState::Queued,
        ChangeState::Testing,
        ChangeState::Merged,
        ChangeState::Rejected,
        ChangeState::Cancelled,
    ] {
        let n = core.changes().filter(|c| c.state == s).count();
        let _ = writeln!(
            out,
            "mergequeue_changes_total{{state=\"{}\"}} {n}",
            s.as_str()
        );
    }
    out.push_str("# HELP mergequeue_queue_depth Queued changes per branch.\n# TYPE mergequeue_queue_depth gauge\n");
    for r in &config.repos {
        for b in &r.branches {
            let n = core.queue(r.name.get_ref(), b.name.get_ref()).len();
            let _ = writeln!(
                out,
                "mergequeue_queue_depth{{repo=\"{}\",branch=\"{}\"}} {n}",
                r.name.get_ref(),
                b.name.get_ref()
            );
        }
    }
    out.push_str("# HELP mergequeue_builds_total Build attempts by outcome class.\n# TYPE mergequeue_builds_total counter\n");
    let counts = store.attempt_counts().unwrap_or_default();
    for c in OutcomeClass::ALL {
        let n: u64 = counts
            .iter()
            .filter(|(_, cl, _)| cl == c.as_str())
            .map(|x| x.2)
            .sum();
        let _ = writeln!(
            out,
            "mergequeue_builds_total{{outcome=\"{}\"}} {n}",
            c.as_str()
        );
    }
    out.push_str("# HELP mergequeue_builder_attempts_total Build attempts per builder, implementation and outcome class.\n# TYPE mergequeue_builder_attempts_total counter\n");
    for b in core.scheduler().builders() {
        for c in OutcomeClass::ALL {
            let n: u64 = counts
                .iter()
                .filter(|(bu, cl, _)| *bu == b.spec.id && cl == c.as_str())
                .map(|x| x.2)
                .sum();
            let _ = writeln!(
                out,
                "mergequeue_builder_attempts_total{{builder=\"{}\",implementation=\"{}\",outcome=\"{}\"}} {n}",
                b.spec.id,
                implementation(b),
                c.as_str()
            );
        }
    }
    out.push_str("# HELP mergequeue_builder_up Whether a builder takes new builds (1) or is quarantined or drained (0).\n# TYPE mergequeue_builder_up gauge\n");
    for b in core.scheduler().builders() {
        let up = matches!(
            b.health,
            crate::core::scheduler::Health::Up | crate::core::scheduler::Health::Unknown
        ) as u8;
        let _ = writeln!(
            out,
            "mergequeue_builder_up{{builder=\"{}\",state=\"{}\"}} {up}",
            b.spec.id,
            b.health.as_str()
        );
    }
    let _ = writeln!(out, "# HELP mergequeue_flaky_derivations_total Derivations that failed and later built unchanged.\n# TYPE mergequeue_flaky_derivations_total counter\nmergequeue_flaky_derivations_total {}", store.flaky_count().unwrap_or(0));
    out.push_str("# HELP mergequeue_attribution_extra_builds_total Builds spent on attribution beyond the batches' own.\n# TYPE mergequeue_attribution_extra_builds_total counter\n");
    let extra: u64 = core.candidates().map(|k| k.extra_builds as u64).sum();
    let _ = writeln!(out, "mergequeue_attribution_extra_builds_total {extra}");
    crate::shell::channel::metrics(core, crate::shell::driver::now_ms(), &mut out);
    out
}

fn attempts_by_class(
    counts: &[(String, String, u64)],
    keep: impl Fn(&str) -> bool,
) -> serde_json::Map<String, Value> {
    OutcomeClass::ALL
        .iter()
        .map(|c| {
            let n: u64 = counts
                .iter()
                .filter(|(b, cl, _)| keep(b) && cl == c.as_str())
                .map(|x| x.2)
                .sum();
            (c.as_str().to_string(), json!(n))
        })
        .collect()
}

/// Each builder's state, identity and attempts by outcome class.
fn builders_json(core: &Core, store: &Store) -> Value {
    let counts = store.attempt_counts().unwrap_or_default();
    let sched = core.scheduler();
    let builders: Vec<Value> = sched
        .builders()
        .map(|b| {
            json!({
                "uri": b.spec.id,
                "state": b.health.as_str(),
                "systems": b.spec.systems,
                "supported_features": b.spec.supported,
                "mandatory_features": b.spec.mandatory,
                "max_jobs": b.spec.max_jobs,
                "speed_factor": b.spec.speed,
                "running": b.running.len(),
                "implementation": b.implementation,
                "version": b.version,
                "consecutive_infrastructure_failures": b.consecutive_infra,
                "last_error": b.last_error,
                "attempts": attempts_by_class(&counts, |x| x == b.spec.id),
            })
        })
        .collect();
    Value::Array(builders)
}

/// Attempts by outcome class per implementation (Nix, Lix, ...), with its builders.
fn implementations_json(core: &Core, store: &Store) -> Value {
    let counts = store.attempt_counts().unwrap_or_default();
    let sched = core.scheduler();
    let mut impls: Vec<String> = sched.builders().map(implementation).collect();
    impls.sort();
    impls.dedup();
    let by_impl: serde_json::Map<String, Value> = impls
        .into_iter()
        .map(|i| {
            let ids: Vec<&String> = sched
                .builders()
                .filter(|b| implementation(b) == i)
                .map(|b| &b.spec.id)
                .collect();
            let attempts = attempts_by_class(&counts, |x| ids.iter().any(|id| *id == x));
            (i, json!({ "builders": ids, "attempts": attempts }))
        })
        .collect();
    Value::Object(by_impl)
}

fn implementation(b: &crate::core::scheduler::BuilderState) -> String {
    b.implementation.clone().unwrap_or_else(|| "unknown".into())
}

fn read_log(path: &str) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path)?).read_to_string(&mut text)?;
    Ok(text)
}
