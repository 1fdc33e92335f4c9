//! Answers to read-only queries (changes, queues, candidates, builders, events) and the
//! Prometheus metrics. What lives in memory is answered on the driver task ([`answer`],
//! which is given no database connection); what lives in the database is read off it
//! ([`from_store`], [`StoreFacts`], [`candidate`]), so the single writer never waits on a
//! log, a stored evaluation or an aggregate.

/// The candidate page's answer, in steps on and off the driver task.
pub mod candidate;
/// Two evaluations compared (Hydra's tabs).
pub mod compare;
pub mod report;
pub mod why;

use serde_json::{json, Value};

use crate::core::change::{Change, ChangeId, ChangeState, Stage};
use crate::core::outcome::OutcomeClass;
use crate::core::{Core, Millis};
use crate::shell::config::Config;
use crate::shell::store::{Store, StoreError};

/// Read-only questions the HTTP layer asks; answered from the core's state.
pub enum Query {
    Change {
        repo: String,
        id: ChangeId,
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
    /// Verified builds' comparisons, newest first (of one derivation, when given).
    Verifications {
        drv: Option<String>,
    },
    Log {
        attempt: i64,
    },
    Metrics,
    /// All channels (`None`) or one.
    Channels {
        name: Option<String>,
    },
    /// A page of a repo's changes, newest first (from the database, which holds them all).
    Changes {
        repo: String,
        state: Option<ChangeState>,
        limit: usize,
        offset: usize,
    },
    /// Two stored evaluations compared, each tab cut to `limit` rows.
    Compare {
        from: String,
        to: String,
        limit: usize,
    },
    /// A candidate's newly-broken report, each tab cut to `limit` rows.
    Report {
        repo: String,
        id: u64,
        limit: usize,
    },
    /// A change as the database holds it (after `Change` found none in memory).
    StoredChange {
        repo: String,
        id: ChangeId,
    },
    /// The broken registry of a repo (`docs/breakage.md`).
    Broken {
        repo: String,
    },
    /// What the driver knows of these derivations' builds (the candidate page).
    JobStates {
        drvs: Vec<String>,
    },
}

pub enum Reply {
    Json(serde_json::Value),
    Text(String),
    /// `Query::Candidate` as the driver answers it: see [`candidate`].
    CandidateCore(Box<candidate::CandidateCore>),
    /// `Query::JobStates`.
    JobStates(std::collections::BTreeMap<String, candidate::JobState>),
}

/// The database's part of `/metrics` and the builder views, read off the driver task.
#[derive(Debug, Default)]
pub struct StoreFacts {
    change_counts: Vec<(String, u64)>,
    attempt_counts: Vec<(String, String, u64)>,
    /// Recent infrastructure attempts: (builder, log tail, finished at).
    infrastructure: Vec<(String, String, Millis)>,
    flaky: u64,
    extra_builds: u64,
    /// Verified builds: (matched, differing, differing but known non-deterministic).
    verifications: (u64, u64, u64),
}

impl StoreFacts {
    /// What `q` needs of the database (nothing for most queries).
    pub fn read(store: &Store, q: &Query) -> Result<StoreFacts, StoreError> {
        Ok(match q {
            Query::Metrics => StoreFacts {
                change_counts: store.change_counts()?,
                attempt_counts: store.attempt_counts()?,
                flaky: store.flaky_count()?,
                extra_builds: store.extra_builds_total()?,
                verifications: store.verification_counts()?,
                ..StoreFacts::default()
            },
            Query::Builders => StoreFacts {
                attempt_counts: store.attempt_counts()?,
                ..StoreFacts::default()
            },
            Query::Implementations => StoreFacts {
                attempt_counts: store.attempt_counts()?,
                infrastructure: store.infrastructure_tails(CRASHES_READ)?,
                ..StoreFacts::default()
            },
            _ => StoreFacts::default(),
        })
    }

    /// Whether `q` needs [`StoreFacts::read`] before the driver answers it.
    pub fn needed(q: &Query) -> bool {
        matches!(q, Query::Metrics | Query::Builders | Query::Implementations)
    }
}

/// Answers the queries that need nothing but the database; `Err` gives back the others.
pub fn from_store(store: &Store, q: Query) -> Result<Option<Reply>, Query> {
    Ok(match q {
        Query::Events { after } => store.events_after(after, 500).ok().map(|events| {
            Reply::Json(Value::Array(
                events
                    .into_iter()
                    .map(|(id, at, repo, text)| json!({ "id": id, "at": at, "repo": repo, "text": text }))
                    .collect(),
            ))
        }),
        Query::Attempts { drv } => store.attempts_of(&drv).ok().map(|attempts| {
            Reply::Json(Value::Array(
                attempts
                    .into_iter()
                    .map(|a| json!({"id": a.id, "drv": a.drv, "builder": a.builder, "class": a.class, "duration_ms": a.duration_ms, "log": format!("/api/v1/attempts/{}/log", a.id)}))
                    .collect(),
            ))
        }),
        Query::Verifications { drv } => store
            .verifications(drv.as_deref(), 500)
            .ok()
            .map(|vs| Reply::Json(serde_json::to_value(vs).expect("serialisable"))),
        Query::Log { attempt } => (|| {
            let a = store.attempt(attempt).ok()??;
            Some(Reply::Text(read_log(a.log_path.as_deref()?).ok()?))
        })(),
        Query::Changes {
            repo,
            state,
            limit,
            offset,
        } => store
            .changes_page(&repo, state.map(|s| s.as_str()), limit.min(QUEUE_PAGE_MAX), offset)
            .ok()
            .map(|cs| Reply::Json(Value::Array(cs.iter().map(|c| change_json(c, None)).collect()))),
        Query::Compare { from, to, limit } => compare::answer(store, &from, &to, limit)
            .ok()
            .flatten()
            .map(Reply::Json),
        Query::Report { repo, id, limit } => report::answer(store, &repo, id, limit)
            .ok()
            .flatten()
            .map(Reply::Json),
        // A final change the engine no longer holds.
        Query::StoredChange { repo, id } => store
            .change(id)
            .ok()
            .flatten()
            .filter(|c| c.repo == repo)
            .map(|c| Reply::Json(change_json(&c, None))),
        q => return Err(q),
    })
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
        "pr": c.pr,
        "approver": c.approver,
        "held": c.held,
        // Where it is tested now: a change that passed the stage is the queue's again.
        "stage": if candidate.is_some_and(|k| k.stage == Stage::MassRebuild) || c.route.in_stage() {
            "mass-rebuild"
        } else {
            "queue"
        },
        "rebuilds": (!c.route.rebuilds.is_empty()).then_some(&c.route.rebuilds),
        "passed_stage_in": c.route.passed_by,
        "stage_returns": c.route.returns,
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
        "stage": k.stage.as_str(),
        "ahead": k.ahead,
        "ref": (k.stage == Stage::MassRebuild && k.phase != crate::core::Phase::Done)
            .then(|| crate::shell::git::stage_ref(&k.branch)),
        "follow_up_of": k.follow_up_of,
        "builds": k.builds,
        "extra_builds": k.extra_builds,
        "created_at": k.created_at,
        "last_build_at": k.last_build_at,
        "finished_at": k.finished_at,
        "summary": k.summary,
    })
}

/// Answers `q` as of `now` (for ages) from the driver's memory and `facts`, which the
/// caller read off the driver task (see [`StoreFacts::needed`]). `None`: not found, or a
/// query only [`from_store`] answers.
pub fn answer(
    config: &Config,
    core: &Core,
    q: Query,
    facts: &StoreFacts,
    now: Millis,
) -> Option<Reply> {
    Some(match q {
        Query::Change { repo, id } => {
            let c = core.change(id)?;
            if c.repo != repo {
                return None;
            }
            let cand = core.candidates().filter(|k| k.changes.contains(&id)).last();
            Reply::Json(change_json(c, cand))
        }
        Query::Broken { repo } => Reply::Json(
            serde_json::to_value(core.broken().of(&repo).collect::<Vec<_>>())
                .expect("serialisable"),
        ),
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
            QueuePaging {
                branch: branch.as_deref(),
                offset,
                limit: limit.min(QUEUE_PAGE_MAX),
            },
        )?),
        Query::Candidate { id, .. } => {
            Reply::CandidateCore(Box::new(candidate::core_parts(core, id)))
        }
        Query::JobStates { drvs } => Reply::JobStates(candidate::job_states(core, &drvs)),
        Query::Builders => Reply::Json(builders_json(core, facts)),
        Query::Implementations => Reply::Json(implementations_json(core, facts)),
        Query::Metrics => Reply::Text(metrics(config, core, facts, now)),
        Query::Channels { name: None } => Reply::Json(channels_json(config, core, now)),
        Query::Channels { name: Some(n) } => Reply::Json(channel_json(config, core, &n, now)?),
        Query::Events { .. }
        | Query::Attempts { .. }
        | Query::Verifications { .. }
        | Query::Log { .. }
        | Query::StoredChange { .. }
        | Query::Compare { .. }
        | Query::Report { .. }
        | Query::Changes { .. } => return None,
    })
}

fn metrics(config: &Config, core: &Core, facts: &StoreFacts, now: Millis) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    // From the database, not the engine's memory, which holds recent final changes only.
    let counts = &facts.change_counts;
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
    let counts = &facts.attempt_counts;
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
    let (same, differ, nondet) = facts.verifications;
    let _ = writeln!(out, "# HELP mergequeue_verifications_total Verified builds by result.\n# TYPE mergequeue_verifications_total counter\nmergequeue_verifications_total{{result=\"matched\"}} {same}\nmergequeue_verifications_total{{result=\"mismatched\"}} {differ}\nmergequeue_verifications_total{{result=\"nondeterministic\"}} {nondet}");
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
    let _ = writeln!(out, "# HELP mergequeue_flaky_derivations_total Derivations that failed and later built unchanged.\n# TYPE mergequeue_flaky_derivations_total counter\nmergequeue_flaky_derivations_total {}", facts.flaky);
    out.push_str("# HELP mergequeue_attribution_extra_builds_total Builds spent on attribution beyond the batches' own.\n# TYPE mergequeue_attribution_extra_builds_total counter\n");
    let extra = facts.extra_builds;
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
fn builders_json(core: &Core, facts: &StoreFacts) -> Value {
    let counts = &facts.attempt_counts;
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
                "verification_mismatches": b.mismatches,
                "last_error": b.last_error,
                "attempts": attempts_by_class(counts, |x| x == b.spec.id),
            })
        })
        .collect();
    Value::Array(builders)
}

/// Attempts by outcome class per implementation (Nix, Lix, ...), with its builders.
fn implementations_json(core: &Core, facts: &StoreFacts) -> Value {
    let counts = &facts.attempt_counts;
    let sched = core.scheduler();
    let mut crashes = crashes_by_implementation(sched, &facts.infrastructure);
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
            let attempts = attempts_by_class(counts, |x| ids.iter().any(|id| *id == x));
            let crashes = crashes.remove(&i).unwrap_or_default();
            (
                i,
                json!({ "builders": ids, "attempts": attempts, "crashes": crashes }),
            )
        })
        .collect();
    Value::Object(by_impl)
}

/// Infrastructure attempts read for the crash groups (the most recent).
const CRASHES_READ: usize = 5000;

/// Crashes by builder implementation, each grouped by (version, signature): how many, on
/// which builders, when last, and the last one's output (the attempt's log tail, which
/// holds the remote side's last words as ssh passed them on). By the builder's version now.
fn crashes_by_implementation(
    sched: &crate::core::scheduler::Scheduler,
    infra: &[(String, String, Millis)],
) -> std::collections::BTreeMap<String, Vec<Value>> {
    use std::collections::BTreeMap;
    /// One group: crashes, builders, the last crash's time and output.
    type Group = (u64, Vec<String>, Millis, String);
    let mut groups: BTreeMap<(String, String, String), Group> = BTreeMap::new();
    // Newest first: the first of a group is its last crash.
    for (builder, tail, at) in infra {
        let Some(b) = sched.builders().find(|b| &b.spec.id == builder) else {
            continue;
        };
        let Some(sig) = crate::shell::nix::crash::signature(tail) else {
            continue;
        };
        let version = b.version.clone().unwrap_or_else(|| "unknown".into());
        let g = groups
            .entry((implementation(b), version, sig))
            .or_insert_with(|| (0, vec![], *at, tail.clone()));
        g.0 += 1;
        if !g.1.contains(builder) {
            g.1.push(builder.clone());
        }
    }
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for ((imp, version, signature), (count, builders, last_at, last_output)) in groups {
        out.entry(imp).or_default().push(json!({
            "version": version,
            "signature": signature,
            "count": count,
            "builders": builders,
            "last_at": last_at,
            "last_output": last_output,
        }));
    }
    out
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

/// Queued changes per page when the client names no `limit`.
pub const QUEUE_PAGE_DEFAULT: usize = 100;
/// The largest page: a queue of ten thousand changes is never turned into JSON at once.
pub const QUEUE_PAGE_MAX: usize = 1000;

/// One page of a queue: `limit` changes from `offset` of `branch` (every branch when
/// `None`; the others start at 0).
pub struct QueuePaging<'a> {
    pub branch: Option<&'a str>,
    pub offset: usize,
    pub limit: usize,
}

/// `/queue`'s answer: per branch its candidates in flight and one page of its queued
/// changes, with `queued_total`, `offset` and `limit`.
pub fn queue_json(config: &Config, core: &Core, repo: &str, p: QueuePaging) -> Option<Value> {
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
                    "queued_total": all.len(), "offset": from, "limit": p.limit })
        })
        .collect();
    Some(json!({ "repo": repo, "branches": branches }))
}
