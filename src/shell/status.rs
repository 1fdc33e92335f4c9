//! Answers to read-only queries (changes, queues, candidates, builders, events) and the
//! Prometheus metrics, computed on the driver task from the core's state and the store.

use serde_json::{json, Value};

use crate::core::change::{Change, ChangeId, ChangeState};
use crate::core::evaluation::{diff, Evaluation, JobKey};
use crate::core::outcome::OutcomeClass;
use crate::core::{Core, Millis};
use crate::shell::config::Config;
use crate::shell::store::Store;

/// Read-only questions the HTTP layer asks; answered from the core's state.
pub enum Query {
    Change {
        repo: String,
        id: ChangeId,
    },
    Queue {
        repo: String,
    },
    Candidates {
        repo: String,
    },
    /// One page of a queue: `limit` queued changes from `offset` (of `branch`, or each).
    QueuePage {
        repo: String,
        branch: Option<String>,
        offset: usize,
        limit: usize,
    },
    /// One candidate with its rebuild set (the web UI's candidate page).
    Candidate {
        repo: String,
        id: crate::core::CandId,
    },
    Events {
        after: i64,
    },
    Builders,
    Implementations,
    Attempts {
        drv: String,
    },
    Log {
        attempt: i64,
    },
    Metrics,
    /// All channels (`None`) or one.
    Channels {
        name: Option<String>,
    },
}

pub enum Reply {
    Json(serde_json::Value),
    Text(String),
}

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
/// Answers `q` as of `now` (for ages).
pub fn answer(config: &Config, core: &Core, store: &Store, q: Query, now: Millis) -> Option<Reply> {
    Some(match q {
        Query::Change { repo, id } => {
            // A final change the engine no longer holds is answered from the database.
            let Some(c) = core.change(id) else {
                let c = store.change(id).ok()??;
                return (c.repo == repo).then(|| Reply::Json(change_json(&c, None)));
            };
            if c.repo != repo {
                return None;
            }
            let cand = core.candidates().filter(|k| k.changes.contains(&id)).last();
            Reply::Json(change_json(c, cand))
        }
        Query::Queue { repo } => Reply::Json(queue_json(config, core, &repo, None)?),
        Query::Candidates { repo } => Reply::Json(Value::Array(
            core.candidates()
                .filter(|k| k.repo == repo)
                .map(candidate_json)
                .collect(),
        )),
        Query::QueuePage {
            repo,
            branch,
            offset,
            limit,
        } => Reply::Json(queue_json(
            config,
            core,
            &repo,
            Some(QueuePaging {
                branch: branch.as_deref(),
                offset,
                limit,
            }),
        )?),
        Query::Candidate { repo, id } => {
            Reply::Json(candidate_detail(core, store, &repo, id)?)
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
        Query::Metrics => Reply::Text(metrics(config, core, store, now)),
        Query::Channels { name: None } => Reply::Json(channels_json(config, core, now)),
        Query::Channels { name: Some(n) } => {
            Reply::Json(channel_json(config, core, &n, now)?)
        }
    })
}

fn metrics(config: &Config, core: &Core, store: &Store, now: Millis) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    // From the database, not the engine's memory, which holds recent final changes only.
    let counts = store.change_counts().unwrap_or_default();
    out.push_str("# HELP mergequeue_changes_total Changes by state (stored, within retention).\n# TYPE mergequeue_changes_total gauge\n");
    for s in [
        ChangeState::Queued,
        ChangeState::Testing,
        ChangeState::Merged,
        ChangeState::Rejected,
        ChangeState::Cancelled,
    ] {
        let n = counts
            .iter()
            .find(|(state, _)| state == s.as_str())
            .map_or(0, |(_, n)| *n);
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
    let extra = store.extra_builds_total().unwrap_or(0);
    let _ = writeln!(out, "mergequeue_attribution_extra_builds_total {extra}");
    channel_metrics(core, now, &mut out);
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

/// A channel as `GET /api/v1/channels/{name}` shows it.
pub fn channel_json(config: &Config, core: &Core, name: &str, now: Millis) -> Option<Value> {
    let ch = core.channel(name)?;
    let cfg = config.channels.iter().find(|c| c.name.get_ref() == name)?;
    let history: Vec<Value> = ch
        .history
        .iter()
        .rev()
        .map(|a| json!({ "at": a.at, "time": a.at / 1000, "rev": a.rev, "from": a.from }))
        .collect();
    let blocked = ch.state.blocked.as_ref().map(|b| {
        json!({
            "rev": b.rev,
            "at": b.at,
            "error": b.error,
            "jobs": b.jobs.iter().map(|j| json!({
                "attr": j.attr, "system": j.system, "drv": j.drv, "status": j.status, "log_tail": j.log_tail,
            })).collect::<Vec<_>>(),
        })
    });
    let testing = ch.test.as_ref().map(|t| {
        json!({
            "rev": t.commit,
            "head": t.head,
            "phase": t.phase.as_str(),
            "jobs": t.jobs.len(),
            "pending": t.pending.len(),
            "started_at": t.started_at,
        })
    });
    Some(json!({
        "name": name,
        "repo": ch.config.repo,
        "source": ch.config.source,
        "target": ch.config.target,
        "remote": cfg.remote,
        "gate": ch.config.gate,
        "rev": ch.state.rev,
        "age_secs": ch.age_ms(now).map(|a| a / 1000),
        "advanced_at": ch.state.advanced_at,
        "source_head": ch.poll.as_ref().map(|p| p.head.clone()),
        "diverged": ch.diverged,
        "testing": testing,
        "advancing": ch.state.advancing.as_ref().map(|a| a.new.clone()),
        "waiting": ch.hold.as_ref().map(|h| json!({ "rev": h.0, "until": h.2 })),
        "blocked": blocked,
        "advances": ch.state.advances,
        "blocks": ch.state.blocks,
        "published": ch.state.published,
        "history": history,
    }))
}

pub fn channels_json(config: &Config, core: &Core, now: Millis) -> Value {
    Value::Array(
        core.channels()
            .filter_map(|(n, _)| channel_json(config, core, n, now))
            .collect(),
    )
}

fn channel_metrics(core: &Core, now: Millis, out: &mut String) {
    use std::fmt::Write;
    let mut age = String::new();
    let mut adv = String::new();
    let mut blk = String::new();
    for (name, ch) in core.channels() {
        if let Some(a) = ch.age_ms(now) {
            let _ = writeln!(
                age,
                "mergequeue_channel_age_seconds{{channel=\"{name}\"}} {}",
                a / 1000
            );
        }
        let _ = writeln!(
            adv,
            "mergequeue_channel_advances_total{{channel=\"{name}\"}} {}",
            ch.state.advances
        );
        let _ = writeln!(
            blk,
            "mergequeue_channel_blocks_total{{channel=\"{name}\"}} {}",
            ch.state.blocks
        );
    }
    out.push_str("# HELP mergequeue_channel_age_seconds Seconds since the channel last moved.\n# TYPE mergequeue_channel_age_seconds gauge\n");
    out.push_str(&age);
    out.push_str("# HELP mergequeue_channel_advances_total Advances of the channel.\n# TYPE mergequeue_channel_advances_total counter\n");
    out.push_str(&adv);
    out.push_str("# HELP mergequeue_channel_blocks_total Source heads whose gate failed.\n# TYPE mergequeue_channel_blocks_total counter\n");
    out.push_str(&blk);
}

// ---------------------------------------------------------------------------------------
// The JSON views the pages need that no earlier query answered, computed on the driver
// task like every other answer: a candidate with its rebuild set, each job's build state
// and builder (`Query::Candidate`, `GET /api/v1/repos/{repo}/candidates/{id}`), and one
// page of a queue (`Query::QueuePage`, `GET /api/v1/repos/{repo}/queue?limit=N`), so a
// queue of ten thousand changes is not turned into JSON to show fifty.
// ---------------------------------------------------------------------------------------

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
    match core.evaluation(commit) {
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
pub fn candidate_detail(core: &Core, store: &Store, repo: &str, id: u64) -> Option<Value> {
    // An old candidate the engine no longer holds is answered from the database.
    let stored;
    let k = match core.candidate(id) {
        Some(k) => k,
        None => {
            stored = store.candidate(id).ok()??;
            &stored
        }
    };
    if k.repo != repo {
        return None;
    }
    let mut v = candidate_json(k);
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

/// One page of a queue: `limit` changes from `offset` of `branch` (every branch when
/// `None`; the others start at 0).
pub struct QueuePaging<'a> {
    pub branch: Option<&'a str>,
    pub offset: usize,
    pub limit: usize,
}

/// `/queue`'s answer: per branch its candidates in flight and its queued changes, all of
/// them, or with `paging` one page of them plus `queued_total` and `offset`.
pub fn queue_json(
    config: &Config,
    core: &Core,
    repo: &str,
    paging: Option<QueuePaging>,
) -> Option<Value> {
    let r = config.repo(repo)?;
    let branches: Vec<Value> = r
        .branches
        .iter()
        .map(|b| {
            let name = b.name.get_ref();
            let testing: Vec<Value> = core
                .in_flight(repo, name)
                .into_iter()
                .map(candidate_json)
                .collect();
            let all = core.queue(repo, name);
            let Some(p) = &paging else {
                let queued: Vec<Value> = all.iter().map(|c| change_json(c, None)).collect();
                return json!({ "branch": name, "testing": testing, "queued": queued });
            };
            let from = if p.branch.is_none_or(|x| x == name) {
                p.offset.min(all.len())
            } else {
                0
            };
            let queued: Vec<Value> = all[from..(from + p.limit).min(all.len())]
                .iter()
                .map(|c| change_json(c, None))
                .collect();
            json!({ "branch": name, "testing": testing, "queued": queued,
                    "queued_total": all.len(), "offset": from })
        })
        .collect();
    Some(json!({ "repo": repo, "branches": branches }))
}
