//! The product's own policy: the real `crate::core::Core`, driven as the live driver
//! drives it. Commands become timed events against the simulated world; `Record`s are
//! applied to an in-memory database (what SQLite would hold), from which the core is
//! rebuilt with `Core::restore` after a simulated crash. With faults on, the coordinator
//! crashes at random points (before handling a result, after handling it but before its
//! records are committed, after committing but before performing its effects), build
//! results are lost or delivered twice, and builders die.

use crate::core::{BuildInput, CandidateInput, ChannelInput, QueueInput};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use super::builders::{BuildJob, Running};
use super::engine::{Env, Ev, Queue, RejectKind};
use super::world::{head_of, idx_of_ref, ref_of};
use crate::core::change::{ChangeState, Priority};
use crate::core::outcome::{BuildReport, OutcomeClass};
use crate::core::scheduler::{BuilderSpec, StepInfo};
use crate::core::{
    AdvanceResult, BuilderIdentity, ChannelConfig, Command, Core, CoreConfig, Input, LandResult,
    LaneConfig, Phase, Prepared, ProbeResult, Record, RepoConfig, Snapshot, Submission,
};

pub const REPO: &str = "nixpkgs";
const BIG: &str = "big-parallel";

pub fn machine_name(name: &str, count: usize, i: usize) -> String {
    if count > 1 {
        format!("{name}-{i}")
    } else {
        name.to_string()
    }
}

/// Commits strictly between a channel and its source head reported by a poll (look-back).
const BETWEEN_CAP: usize = 50;

pub fn core_config(sc: &super::scenario::Scenario, batch_max: Option<usize>) -> CoreConfig {
    let lanes = sc
        .lanes
        .iter()
        .map(|l| {
            (
                l.branch.clone(),
                LaneConfig {
                    batch_max: batch_max.unwrap_or(l.batch_max),
                    required: l.required.clone(),
                    batch_delay_ms: (l.batch_delay_minutes * 60_000.0) as i64,
                    build_priority: l.build_priority,
                    breakage: Default::default(),
                    mass_rebuild_threshold: l.mass_rebuild_threshold,
                    window: l.window.max(1),
                    window_floor: l.window_floor.clamp(1, l.window.max(1)),
                },
            )
        })
        .collect();
    // The fleet as the core's scheduler sees it. Long builds require `big-parallel`,
    // which big-parallel machines make mandatory and every machine supports.
    let mut builders = vec![];
    for b in &sc.builders {
        for i in 0..b.count {
            let big: BTreeSet<String> = [BIG.to_string()].into();
            builders.push(BuilderSpec {
                id: machine_name(&b.name, b.count, i),
                systems: b.systems.iter().cloned().collect(),
                supported: big.clone(),
                mandatory: if b.big_parallel { big } else { BTreeSet::new() },
                max_jobs: b.slots,
                speed: b.speed,
            });
        }
    }
    CoreConfig {
        target_poll_ms: 60_000,
        repos: BTreeMap::from([(REPO.to_string(), RepoConfig { lanes })]),
        builders,
        channels: sc
            .channels
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    ChannelConfig {
                        repo: REPO.into(),
                        source: c.source.clone(),
                        target: c.name.clone(),
                        gate: c.gate.clone(),
                        min_interval_ms: (c.min_interval_minutes * 60_000.0) as i64,
                        poll_interval_ms: (c.poll_minutes * 60_000.0) as i64,
                        look_back: c.look_back,
                        artifacts: false,
                    },
                )
            })
            .collect(),
        // Few finished things in memory, so every run prunes often; decisions must not
        // depend on it (tests/sim.rs compares with everything kept).
        keep_final: 16,
        ..CoreConfig::default()
    }
}

pub struct CoreQueue {
    cfg: CoreConfig,
    core: Core,
    db: Snapshot,
    /// The real SQLite store, when the crash loop runs against it: records are written to
    /// it as the driver writes them, and a restart restores the core from it (checked
    /// against `db`, the in-memory model of what it must hold).
    sqlite: Option<crate::shell::store::Store>,
    epoch: u32,
    evals_busy: usize,
    eval_queue: VecDeque<Command>,
    wake_at: Option<i64>,
    submitted: usize,
    /// The evaluation scope of each requested commit, fixed when the core asks (the base
    /// and the candidate of one step must be evaluated over the same packages).
    scopes: BTreeMap<String, Vec<usize>>,
    /// The scope each commit was evaluated with, and the base each candidate commit was
    /// merged onto: a candidate is evaluated with its base's scope, so that both
    /// evaluations hold the same unchanged packages (the simulated evaluation is partial;
    /// a real one holds every job) and the diff is exactly what the candidate changes.
    evaluated_scopes: HashMap<String, Vec<usize>>,
    base_of: HashMap<String, String>,
    /// Each channel's target branch in the simulated remote.
    remote: BTreeMap<String, Option<u32>>,
    breakage: super::breakage::Tracker,
}

impl CoreQueue {
    /// The crash loop against the real SQLite store at `path` (a new file).
    pub fn on_sqlite(cfg: CoreConfig, path: &std::path::Path) -> anyhow::Result<CoreQueue> {
        let store = crate::shell::store::Store::open(path)?;
        Ok(CoreQueue {
            sqlite: Some(store),
            ..CoreQueue::new(cfg)
        })
    }

    pub fn new(cfg: CoreConfig) -> CoreQueue {
        CoreQueue {
            sqlite: None,
            remote: cfg.channels.keys().map(|n| (n.clone(), None)).collect(),
            breakage: Default::default(),
            core: Core::new(cfg.clone()),
            cfg,
            db: Snapshot::default(),
            epoch: 0,
            evals_busy: 0,
            eval_queue: VecDeque::new(),
            wake_at: None,
            submitted: 0,
            scopes: BTreeMap::new(),
            evaluated_scopes: HashMap::new(),
            base_of: HashMap::new(),
        }
    }

    fn pump(&mut self, env: &mut Env) {
        for cmd in self.core.take_commands() {
            match cmd {
                Command::Record(r) => self.apply(env, r),
                other => self.launch(env, other),
            }
        }
        if let Some(t) = self.core.next_wakeup() {
            if self.wake_at.is_none_or(|w| t < w) {
                self.wake_at = Some(t);
                env.at(t, Ev::Wake);
            }
        }
    }

    fn apply(&mut self, env: &mut Env, r: Record) {
        if self.check(env, &r) {
            self.breakage.record(env.now, &r);
            if let Some(store) = &mut self.sqlite {
                if let Err(e) = store.apply(&[&r]) {
                    env.violate(format!("SQLite refused a record: {e}"));
                }
            }
            self.db.apply(&r);
        }
    }

    /// Checks a record against the world and counts what it says (landed, rejected);
    /// false when it must not be written.
    fn check(&mut self, env: &mut Env, r: &Record) -> bool {
        match r {
            Record::Change(c) => {
                let Some(idx) = idx_of_ref(&c.git_ref) else {
                    env.violate(format!("unknown ref {}", c.git_ref));
                    return false;
                };
                if let Some(prev) = self.db.changes.get(&c.id) {
                    if prev.state.is_final() && prev.state != c.state {
                        env.violate(format!(
                            "#{} went from {} to {}",
                            c.id,
                            prev.state.as_str(),
                            c.state.as_str()
                        ));
                    }
                }
                match c.state {
                    ChangeState::Merged => match env.world.landed_at[idx] {
                        None => env.violate(format!(
                            "#{} recorded merged but is not on the target",
                            c.id
                        )),
                        Some(t) => {
                            let now = env.now;
                            env.now = t;
                            env.landed(idx);
                            env.now = now;
                        }
                    },
                    ChangeState::Rejected => {
                        if env.world.landed_at[idx].is_some() {
                            env.violate(format!("#{} rejected but it is on the target", c.id));
                        }
                        let kind = if c
                            .reason
                            .as_deref()
                            .unwrap_or("")
                            .starts_with("merge conflict")
                        {
                            RejectKind::Conflict
                        } else {
                            RejectKind::Failure
                        };
                        if std::env::var_os("MQ_SIM_DEBUG").is_some()
                            && !env.world.changes[idx].bad()
                        {
                            eprintln!(
                                "false rejection of change {idx}: {:?}\n  {:?}",
                                c.reason, env.world.changes[idx]
                            );
                        }
                        env.rejected(idx, kind);
                    }
                    ChangeState::Cancelled => env.violate(format!("#{} cancelled unasked", c.id)),
                    _ => {}
                }
            }
            Record::Candidate(_) => {}
            Record::Memo { drv, memo } => {
                if !memo.class.is_verdict() {
                    env.violate(format!(
                        "remembered a non-verdict {:?} for {drv}",
                        memo.class
                    ));
                }
            }
            Record::BuilderDrained { .. } => {}
            Record::Channel(st) => {
                if !self.cfg.channels.contains_key(&st.name) {
                    env.violate(format!("a record of unknown channel {}", st.name));
                    return false;
                }
            }
            Record::ChannelAdvance { .. }
            | Record::Forge { .. }
            | Record::Notice(_)
            | Record::Verification(_) => {}
            Record::Broken(_) | Record::Unbroken { .. } => {}
            Record::Event { text, .. } => {
                if std::env::var_os("MQ_SIM_DEBUG").is_some() {
                    eprintln!("[{:8.3} h] {text}", env.now as f64 / 3.6e6);
                }
            }
        }
        true
    }

    fn eval_duration(&self, env: &mut Env, commit: &str) -> i64 {
        let known = env
            .world
            .commit(commit)
            .is_some_and(|c| env.world.is_evaluated(c));
        if known {
            env.secs(env.sc.timing.eval_cached_secs)
        } else {
            let (lo, hi) = env.sc.timing.eval_minutes;
            let m = lo + env.rng.f64() * (hi - lo).max(0.0);
            (m * 60_000.0) as i64
        }
    }

    fn start_evals(&mut self, env: &mut Env) {
        while self.evals_busy < env.sc.timing.eval_workers {
            let Some(cmd) = self.eval_queue.pop_front() else {
                break;
            };
            let Command::Evaluate { commit, .. } = &cmd else {
                continue;
            };
            let d = self.eval_duration(env, commit);
            self.evals_busy += 1;
            env.at(env.now + d, Ev::Perform(Box::new(cmd), self.epoch));
        }
    }

    fn launch(&mut self, env: &mut Env, cmd: Command) {
        let t = &env.sc.timing;
        let now = env.now;
        match &cmd {
            Command::Prepare { changes, .. } => {
                let d = env.secs(t.prepare_secs * changes.len().max(1) as f64);
                env.at(now + d, Ev::Perform(Box::new(cmd), self.epoch));
            }
            Command::Evaluate { commit, .. } => {
                if let Some(c) = env.world.commit(commit) {
                    let b = env.world.branch_name(c).to_string();
                    let base_scope = self.base_of.get(commit).and_then(|base| {
                        self.scopes
                            .get(base)
                            .or_else(|| self.evaluated_scopes.get(base))
                    });
                    let mut scope = match base_scope {
                        Some(s) => s.clone(),
                        None => self.live(&b),
                    };
                    // Jobs in the broken registry stay in every evaluation (as in a full
                    // one): absent from it, the core would take them for removed.
                    scope.extend(env.world.marked_broken.iter().copied());
                    scope.sort_unstable();
                    scope.dedup();
                    self.scopes.insert(commit.clone(), scope);
                }
                self.eval_queue.push_back(cmd);
                self.start_evals(env);
            }
            Command::Probe { attrs, base, .. } => {
                let d = match attrs {
                    Some(_) => env.secs(t.probe_secs),
                    None => {
                        let b = base.clone();
                        self.eval_duration(env, &b)
                    }
                };
                env.at(now + d, Ev::Perform(Box::new(cmd), self.epoch));
            }
            Command::Land { .. } => {
                let d = env.secs(t.land_secs);
                env.at(now + d, Ev::Perform(Box::new(cmd), self.epoch));
            }
            Command::Build { drv, builder, .. } => {
                let Some(info) = env.world.drvs.get(drv).cloned() else {
                    return env.violate(format!(
                        "asked to build {drv}, which no evaluation produced"
                    ));
                };
                let Some(m) = env.pool.machine(builder) else {
                    return env.violate(format!("asked to build on unknown builder {builder}"));
                };
                let job = BuildJob {
                    drv: drv.clone(),
                    pkg: info.pkg,
                    sys: info.sys,
                    owner: 0,
                    epoch: self.epoch,
                    prio: info.lane,
                    broken: info.broken,
                    root: info.root,
                };
                let (id, at) = env.start_on(m, job);
                env.at(at, Ev::BuildDone(id));
            }
            Command::Inspect { .. }
            | Command::QueryReferrers { .. }
            | Command::ProbeBuilder { .. } => {
                env.at(now + 100, Ev::Perform(Box::new(cmd), self.epoch));
            }
            Command::PollSource { .. }
            | Command::AdvanceChannel { .. }
            | Command::PollTarget { .. } => {
                let d = env.secs(t.land_secs);
                env.at(now + d, Ev::Perform(Box::new(cmd), self.epoch));
            }
            // The simulated builders let a stopped build run out: the core takes its report
            // as it takes a stop (a success is kept, anything else dropped).
            Command::CancelBuild { .. } => {}
            // The simulated builders are deterministic: there is nothing to compare.
            Command::Verify { .. } => {}
            // Nobody inspects the simulated remote.
            Command::PublishStage { .. } => {}
            Command::PublishArtifacts { .. }
            | Command::PrepareGroup { .. }
            | Command::Upload { .. } => env.violate(format!("the simulated world has no {cmd:?}")),
            Command::Record(_) => unreachable!("records are applied in pump"),
        }
    }

    /// Pushes a channel's target: compare-and-swap on `old`, `new` must be on the source's
    /// first-parent chain. Checks the channel invariants: never backwards or sideways, and
    /// never to a commit whose gate cannot build.
    fn advance(
        &mut self,
        env: &mut Env,
        channel: &str,
        old: Option<&str>,
        new: &str,
    ) -> Option<AdvanceResult> {
        let cfg = self.cfg.channels.get(channel)?.clone();
        let w = &mut env.world;
        let b = w.branch_index(&cfg.source)?;
        let cur = *self.remote.get(channel)?;
        let Some(n) = w.commit(new) else {
            env.violate(format!(
                "channel {channel}: advance to unknown commit {new}"
            ));
            return None;
        };
        if cur == Some(n) {
            return Some(AdvanceResult::Advanced); // pushed before a restart
        }
        if cur.map(|c| w.commit_id(c)) != old {
            return Some(AdvanceResult::Moved {
                tip: cur.map(|c| w.commit_id(c).to_string()),
            });
        }
        let Some(ni) = w.tip_index(b, n) else {
            let head = w.commit_id(w.tip(b)).to_string();
            return Some(AdvanceResult::NotOnSource { head });
        };
        if let Some(oi) = cur.and_then(|c| w.tip_index(b, c)) {
            if ni < oi {
                env.violate(format!("channel {channel} moved backwards to {new}"));
                return None;
            }
        }
        if let Some(why) = w.gate_broken(n, &cfg.gate) {
            env.violate(format!(
                "channel {channel} advanced to {new} although {why}"
            ));
            return None;
        }
        let contained: Vec<usize> = w.history_at(b, ni).iter().map(|&x| x as usize).collect();
        self.remote.insert(channel.to_string(), Some(n));
        for x in contained {
            env.channelled(x);
        }
        *env.m.channel_advances.get_or_insert(0) += 1;
        Some(AdvanceResult::Advanced)
    }

    /// Changes still queued or testing on a branch: the evaluation scope.
    fn live(&self, branch: &str) -> Vec<usize> {
        self.core
            .changes()
            .filter(|c| {
                c.target == branch && matches!(c.state, ChangeState::Queued | ChangeState::Testing)
            })
            .filter_map(|c| idx_of_ref(&c.git_ref))
            .collect()
    }

    fn perform(&mut self, env: &mut Env, cmd: Command) -> Option<Input> {
        let w = &mut env.world;
        Some(match cmd {
            Command::Prepare {
                cand,
                branch,
                changes,
                onto,
                ..
            } => {
                let b = w.branch_index(&branch)?;
                let base = match &onto {
                    Some(c) => w.commit(c)?,
                    None => w.tip(b),
                };
                let mut cur = base;
                let (mut heads, mut merged, mut conflicts) = (vec![], vec![], vec![]);
                for (id, git_ref) in changes {
                    let idx = idx_of_ref(&git_ref)?;
                    heads.push((id, head_of(idx)));
                    match w.merge(cur, idx) {
                        Ok(c) => {
                            cur = c;
                            let id_c = w.commit_id(c).to_string();
                            self.base_of
                                .insert(id_c.clone(), w.commit_id(base).to_string());
                            merged.push((id, id_c));
                        }
                        Err(why) => conflicts.push((id, why)),
                    }
                }
                Input::Candidate(CandidateInput::Prepared {
                    cand,
                    result: Ok(Prepared {
                        base: w.commit_id(base).to_string(),
                        heads,
                        merged,
                        conflicts,
                        vanished: vec![],
                    }),
                })
            }
            Command::Evaluate { commit, .. } => {
                self.evals_busy = self.evals_busy.saturating_sub(1);
                let c = w.commit(&commit)?;
                let scope = self.scopes.remove(&commit).unwrap_or_default();
                let eval = Arc::new(env.world.evaluate(c, &scope));
                self.evaluated_scopes.insert(commit, scope);
                Input::Build(BuildInput::Evaluated { eval })
            }
            Command::Probe {
                probe,
                base,
                heads,
                attrs,
                ..
            } => {
                let c = w.commit(&base)?;
                let idxs: Vec<usize> = heads.iter().filter_map(|h| w.change_of_head(h)).collect();
                let result = match w.merge_all(c, &idxs) {
                    Err(why) => ProbeResult::Conflict(why),
                    Ok(pc) => match attrs {
                        Some(attrs) => ProbeResult::Attrs {
                            commit: w.commit_id(pc).to_string(),
                            jobs: w.evaluate_attrs(pc, &attrs),
                        },
                        None => {
                            let branch = w.branch_name(pc).to_string();
                            let scope = self.live(&branch);
                            ProbeResult::Full {
                                eval: Arc::new(env.world.evaluate(pc, &scope)),
                            }
                        }
                    },
                };
                Input::Candidate(CandidateInput::Probed {
                    probe,
                    result: Ok(result),
                })
            }
            Command::Land { cand, old, new, .. } => {
                // Only a recorded, passed candidate may be landed: the database must say
                // so before the push.
                let row = self.db.candidates.get(&cand);
                let ok = row.is_some_and(|r| {
                    r.phase == Phase::Landing
                        && r.commit() == Some(new.as_str())
                        && r.base.as_deref() == Some(old.as_str())
                });
                if !ok {
                    env.violate(format!("Land of candidate {cand} not recorded as passed"));
                    return None;
                }
                let (o, n) = (w.commit(&old)?, w.commit(&new)?);
                let result = match w.land(o, n, env.now) {
                    Err(v) => {
                        env.violate(v);
                        return None;
                    }
                    Ok(None) => LandResult::Landed,
                    Ok(Some(tip)) => LandResult::Moved {
                        tip: w.commit_id(tip).to_string(),
                    },
                };
                Input::Candidate(CandidateInput::Landed { cand, result })
            }
            Command::Inspect { drvs } => {
                let big_ms = (env.sc.build_times.big_parallel_above_secs * 1000.0) as u64;
                let infos = drvs
                    .into_iter()
                    .map(|d| {
                        let info = env.world.drvs.get(&d).map(|i| {
                            let mut features = BTreeSet::new();
                            if env.world.graph.dur_ms[i.pkg as usize] > big_ms {
                                features.insert(BIG.to_string());
                            }
                            // Fresh inputs the core has not seen built are built first,
                            // as their own steps (the core skips those it remembers).
                            let missing: Vec<String> =
                                env.world.inputs.get(&d).map_or(vec![], |v| v.to_vec());
                            StepInfo {
                                system: env.world.systems[i.sys as usize].clone(),
                                features,
                                inputs: missing.clone(),
                                missing,
                                weight_ms: None,
                            }
                        });
                        (d, info.ok_or_else(|| "no such derivation".to_string()))
                    })
                    .collect();
                Input::Build(BuildInput::Inspected { infos })
            }
            // Dependency-failure marking is not modelled: no referrers.
            Command::QueryReferrers { root } => {
                Input::Build(BuildInput::Referrers { root, drvs: vec![] })
            }
            Command::ProbeBuilder { builder } => {
                let up = env
                    .pool
                    .machine(&builder)
                    .is_some_and(|m| !env.pool.machines[m].down);
                Input::Build(BuildInput::BuilderProbed {
                    builder,
                    result: if up {
                        Ok(BuilderIdentity {
                            implementation: "Nix".into(),
                            version: "2.24.0".into(),
                        })
                    } else {
                        Err("ssh: connect to host: Connection refused".into())
                    },
                })
            }
            Command::PollTarget { repo, branch } => {
                let b = w.branch_index(&branch)?;
                let tip = w.commit_id(w.tip(b)).to_string();
                Input::Queue(QueueInput::TargetPolled {
                    repo,
                    branch,
                    result: Ok(tip),
                })
            }
            Command::PollSource { channel } => {
                let cfg = self.cfg.channels.get(&channel)?;
                let b = w.branch_index(&cfg.source)?;
                let target = *self.remote.get(&channel)?;
                Input::Channel(ChannelInput::SourcePolled {
                    channel,
                    result: Ok(w.poll_source(b, target, BETWEEN_CAP)),
                })
            }
            // The simulated world has no binary cache: nothing to upload first.
            Command::AdvanceChannel {
                channel, old, new, ..
            } => {
                let result = self.advance(env, &channel, old.as_deref(), &new)?;
                Input::Channel(ChannelInput::Advanced {
                    channel,
                    new,
                    result,
                })
            }
            Command::Build { .. }
            | Command::CancelBuild { .. }
            | Command::Verify { .. }
            | Command::Record(_)
            | Command::PublishArtifacts { .. }
            | Command::Upload { .. }
            | Command::PublishStage { .. }
            | Command::PrepareGroup { .. } => return None,
        })
    }

    fn deliver(&mut self, env: &mut Env, input: Input) {
        if env.faults && env.rng.f64() < env.sc.faults.crash {
            match env.rng.u32(0..3) {
                0 => {} // crashed before handling the result
                1 => {
                    // Handled, but the step's records were never committed.
                    self.core.handle(input, env.now);
                    self.core.take_commands();
                }
                _ => {
                    // Committed, but the step's effects were never performed.
                    self.core.handle(input, env.now);
                    for cmd in self.core.take_commands() {
                        if let Command::Record(r) = cmd {
                            self.apply(env, r);
                        }
                    }
                }
            }
            env.m.crashes += 1;
            self.restart(env);
            return;
        }
        self.core.handle(input, env.now);
        self.pump(env);
    }

    /// Rebuilds the core from the database, as after `kill -9` and a restart. Everything
    /// in flight is lost with the process.
    fn restart(&mut self, env: &mut Env) {
        self.epoch += 1;
        env.live_epoch = self.epoch;
        self.evals_busy = 0;
        self.eval_queue.clear();
        self.wake_at = None;
        env.pool.cancel_queued(None, self.epoch);
        env.pool.abort_stale(self.epoch);
        self.core = match &self.sqlite {
            None => self.db.restore(self.cfg.clone(), env.now),
            Some(store) => match store.snapshot(usize::MAX) {
                Ok(stored) => {
                    // What SQLite gives back is what was written, row for row.
                    let same = |a: &Snapshot, b: &Snapshot| {
                        format!("{:?}{:?}{:?}", a.changes, a.candidates, a.memo)
                            == format!("{:?}{:?}{:?}", b.changes, b.candidates, b.memo)
                    };
                    if !same(&stored, &self.db) {
                        env.violate("the SQLite store differs from what was written to it".into());
                    }
                    stored.restore(self.cfg.clone(), env.now)
                }
                Err(e) => {
                    env.violate(format!("cannot read the SQLite store: {e}"));
                    self.db.restore(self.cfg.clone(), env.now)
                }
            },
        };
        let n = self.db.changes.len();
        if n != self.submitted {
            env.violate(format!(
                "{} accepted changes, {n} after restart: an accepted change was lost",
                self.submitted
            ));
        }
        // What the restarted core holds is the database plus what it recorded while
        // restoring (orphans queued again, candidates started in free window slots).
        self.pump(env);
        if let Some(c) = self
            .core
            .changes()
            .find(|c| self.db.changes.get(&c.id) != Some(*c))
        {
            env.violate(format!(
                "#{} after restart differs from the database: {c:?} against {:?}",
                c.id,
                self.db.changes.get(&c.id)
            ));
        }
    }
}

impl Queue for CoreQueue {
    fn staged(&self) -> BTreeSet<usize> {
        self.db
            .changes
            .values()
            .filter(|c| {
                c.route.stage == crate::core::change::Stage::MassRebuild
                    || c.route.passed_by.is_some()
            })
            .filter_map(|c| idx_of_ref(&c.git_ref))
            .collect()
    }

    fn breakage(&self, end: i64) -> Option<super::breakage::BreakageStats> {
        let grace = self.cfg.repos.values().flat_map(|r| r.lanes.values());
        grace
            .into_iter()
            .any(|l| l.breakage.mode == crate::core::breakage::Breakage::Grace)
            .then(|| self.breakage.stats(end))
    }

    fn arrive(&mut self, env: &mut Env, idx: usize) {
        let ch = &env.world.changes[idx];
        let s = Submission {
            repo: REPO.into(),
            target: env.sc.lanes[ch.lane].branch.clone(),
            git_ref: ref_of(idx),
            head: head_of(idx),
            title: format!("p{}: update", ch.root),
            author: "sim".into(),
            priority: Priority::Normal,
            pr: None,
            approver: None,
        };
        match self.core.submit(s, env.now) {
            Ok(_) => self.submitted += 1,
            Err(e) => env.violate(format!("submission refused: {e:?}")),
        }
        self.pump(env);
    }

    fn event(&mut self, env: &mut Env, ev: Ev) {
        match ev {
            Ev::Perform(cmd, epoch) => {
                if epoch != self.epoch {
                    return; // issued by a process that has since crashed
                }
                let is_eval = matches!(*cmd, Command::Evaluate { .. });
                if let Some(input) = self.perform(env, *cmd) {
                    self.deliver(env, input);
                }
                if is_eval {
                    self.start_evals(env);
                }
            }
            Ev::Wake => {
                self.wake_at = None;
                self.core.handle(Input::Tick, env.now);
                self.pump(env);
            }
            _ => {}
        }
    }

    fn built(&mut self, env: &mut Env, r: Running) {
        if r.job.owner != 0 || r.job.epoch != self.epoch {
            return;
        }
        let failed = !matches!(r.class, OutcomeClass::Success);
        let report = BuildReport {
            drv_path: r.job.drv.clone(),
            class: r.class,
            log_tail: if failed {
                format!("error: builder for '{}' failed with exit code 2", r.job.drv)
            } else {
                String::new()
            },
            root_drv: None,
            log_path: None,
            builder: env.pool.machines[r.machine].name.clone(),
            duration_ms: (env.now - r.started).max(0) as u64,
        };
        if env.faults {
            if env.rng.f64() < env.sc.faults.lose_build_result {
                env.m.lost_results += 1;
                return;
            }
            if env.rng.f64() < env.sc.faults.duplicate_build_result {
                env.m.duplicated_results += 1;
                self.deliver(env, Input::Build(BuildInput::Built(report.clone())));
            }
        }
        self.deliver(env, Input::Build(BuildInput::Built(report)));
    }

    fn depth(&self, _env: &Env) -> (usize, usize) {
        let mut q = (0, 0);
        for c in self.core.changes() {
            match c.state {
                ChangeState::Queued => q.0 += 1,
                ChangeState::Testing => q.1 += 1,
                _ => {}
            }
        }
        q
    }

    fn heal(&mut self, env: &mut Env) {
        // Lost results leave builds the core waits for forever (it has no timeout): only a
        // restart re-requests them. An operator restart ends the fault phase.
        self.restart(env);
    }

    fn settled(&self, env: &Env) -> bool {
        self.cfg.channels.iter().all(|(name, c)| {
            let head = env.world.branch_index(&c.source).map(|b| env.world.tip(b));
            self.remote.get(name).copied().flatten() == head
        })
    }

    fn finish(&mut self, env: &mut Env) {
        if !self.cfg.channels.is_empty() {
            env.m.channel_advances.get_or_insert(0);
        }
        for (name, ch) in self.core.channels() {
            let remote = self.remote[name].map(|c| env.world.commit_id(c).to_string());
            if ch.state.advancing.is_none() && ch.state.rev != remote {
                env.violate(format!(
                    "channel {name}: the core says {:?}, the remote {remote:?}",
                    ch.state.rev
                ));
            }
            let stored = self.db.channels.get(name).map(|r| &r.0);
            if stored != Some(&ch.state) {
                env.violate(format!(
                    "channel {name}: the database disagrees with the core"
                ));
            }
        }
        // The database holds every change and candidate; the core only the live and the
        // most recent final ones, which must agree with it.
        env.m.extra_builds = self
            .db
            .candidates
            .values()
            .map(|c| c.extra_builds as u64)
            .sum();
        for c in self.core.changes() {
            if self.db.changes.get(&c.id) != Some(c) {
                env.violate(format!("#{}: the database disagrees with the core", c.id));
            }
        }
        let live = |c: &&crate::core::change::Change| !c.state.is_final();
        for c in self.db.changes.values().filter(live) {
            if self.core.change(c.id) != Some(c) {
                env.violate(format!("#{}: live in the database, not in the core", c.id));
            }
        }
        for c in self.db.changes.values() {
            let Some(idx) = idx_of_ref(&c.git_ref) else {
                continue;
            };
            let on_target = env.world.landed_at[idx].is_some();
            if on_target != (c.state == ChangeState::Merged) {
                env.violate(format!(
                    "#{} is {} but {} the target",
                    c.id,
                    c.state.as_str(),
                    if on_target { "on" } else { "not on" }
                ));
            }
        }
    }
}
