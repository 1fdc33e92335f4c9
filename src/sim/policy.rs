//! Baselines: small models of other products' policies, run against the same world,
//! workload, builders and seed as the real core. They are not the product; they model
//! what a Nix package set would get from them.
//!
//! - `bors`: one batch at a time (up to `batch_max`); a failing batch is split in halves
//!   that are tested one after the other (bors-ng's `Divider.split_batch`), each a full
//!   CI run; a failing single change is rejected.
//! - `github`: cumulative candidates (entry i is tested on top of entries 0..i) with up to
//!   `github_concurrency` built at once; the head lands when it passes; a failing head is
//!   ejected and every candidate behind it is discarded and rebuilt.
//!
//! A CI run merges its changes onto the target, evaluates (the full evaluation time,
//! or the store's when the commit was evaluated before) and builds every job that differs
//! from the target plus `tested`. Without `baselines.cache` nothing is reused between runs.
//! Like any CI that knows the package set's known failures, a job that also fails on the
//! target does not fail the run. Infrastructure failures are retried.

use std::collections::{BTreeMap, HashSet, VecDeque};

use super::builders::{BuildJob, Running};
use super::engine::{Env, Ev, Queue, RejectKind};
use crate::core::outcome::OutcomeClass;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bors,
    Github,
}

#[derive(Debug, PartialEq)]
enum Stage {
    Preparing,
    Evaluating,
    Building,
    Done,
}

struct Run {
    lane: usize,
    changes: Vec<usize>,
    base: u32,
    commit: u32,
    stage: Stage,
    pending: usize,
    builds: u64,
    /// A bisection step (bors) or a rerun behind an ejected change (github).
    extra: bool,
}

#[derive(Default)]
struct Lane {
    queue: VecDeque<usize>,
    /// bors: split halves still to test (last = next), with whether they are a split.
    stack: Vec<Vec<usize>>,
    running: Option<u64>,
    /// github: entries in queue order with their candidate and its verdict.
    entries: Vec<(usize, Option<u64>, Option<bool>)>,
}

pub struct Baseline {
    kind: Kind,
    lanes: Vec<Lane>,
    runs: BTreeMap<u64, Run>,
    next: u64,
    cache: HashSet<String>,
}

impl Baseline {
    pub fn new(kind: Kind, nlanes: usize) -> Baseline {
        Baseline {
            kind,
            lanes: (0..nlanes).map(|_| Lane::default()).collect(),
            runs: BTreeMap::new(),
            next: 1,
            cache: HashSet::new(),
        }
    }

    fn start(&mut self, env: &mut Env, lane: usize, changes: Vec<usize>, extra: bool) -> u64 {
        let tok = self.next;
        self.next += 1;
        let base = env.world.tip(lane);
        let d = env.secs(env.sc.timing.prepare_secs * changes.len() as f64);
        self.runs.insert(
            tok,
            Run {
                lane,
                changes,
                base,
                commit: base,
                stage: Stage::Preparing,
                pending: 0,
                builds: 0,
                extra,
            },
        );
        env.at(env.now + d, Ev::Ci(tok));
        tok
    }

    fn stage(&mut self, env: &mut Env, tok: u64) {
        let Some(run) = self.runs.get_mut(&tok) else {
            return;
        };
        match run.stage {
            Stage::Preparing => {
                let mut cur = run.base;
                let mut kept = vec![];
                let changes = std::mem::take(&mut run.changes);
                for c in changes {
                    match env.world.merge(cur, c) {
                        Ok(n) => {
                            cur = n;
                            kept.push(c);
                        }
                        Err(_) => env.rejected(c, RejectKind::Conflict),
                    }
                }
                let run = self.runs.get_mut(&tok).expect("present");
                run.changes = kept;
                run.commit = cur;
                if run.changes.is_empty() {
                    return self.complete(env, tok, true);
                }
                run.stage = Stage::Evaluating;
                let d = if env.world.is_evaluated(cur) {
                    env.secs(env.sc.timing.eval_cached_secs)
                } else {
                    let (lo, hi) = env.sc.timing.eval_minutes;
                    ((lo + env.rng.f64() * (hi - lo).max(0.0)) * 60_000.0) as i64
                };
                env.at(env.now + d, Ev::Ci(tok));
            }
            Stage::Evaluating => {
                let (base, commit) = (run.base, run.commit);
                let jobs = match env.world.gate_jobs(base, commit) {
                    Ok(j) => j,
                    Err(_) => return self.complete(env, tok, false),
                };
                let cache = env.sc.baselines.cache;
                let run = self.runs.get_mut(&tok).expect("present");
                run.stage = Stage::Building;
                for j in jobs {
                    if cache && self.cache.contains(&j.drv) {
                        continue;
                    }
                    run.pending += 1;
                    run.builds += 1;
                    env.submit_build(BuildJob {
                        drv: j.drv,
                        pkg: j.pkg,
                        sys: j.sys,
                        owner: tok,
                        epoch: env.live_epoch,
                        prio: run.lane as u8,
                        broken: j.broken,
                        root: j.root,
                    });
                }
                if run.pending == 0 {
                    return self.complete(env, tok, true);
                }
                env.dispatch();
            }
            Stage::Building | Stage::Done => {}
        }
    }

    fn complete(&mut self, env: &mut Env, tok: u64, pass: bool) {
        let run = self.runs.get_mut(&tok).expect("present");
        if run.stage == Stage::Done {
            return;
        }
        run.stage = Stage::Done;
        env.pool.cancel_queued(Some(tok), env.live_epoch);
        let lane = run.lane;
        match self.kind {
            Kind::Bors => {
                let run = self.runs.remove(&tok).expect("present");
                if run.extra {
                    env.m.extra_builds += run.builds;
                }
                self.lanes[lane].running = None;
                if pass {
                    self.land(env, &run);
                } else if run.changes.len() == 1 {
                    env.rejected(run.changes[0], RejectKind::Failure);
                } else {
                    let mut lo = run.changes;
                    let hi = lo.split_off(lo.len() / 2);
                    self.lanes[lane].stack.push(hi);
                    self.lanes[lane].stack.push(lo);
                }
                self.bors_next(env, lane);
            }
            Kind::Github => {
                if let Some(e) = self.lanes[lane]
                    .entries
                    .iter_mut()
                    .find(|e| e.1 == Some(tok))
                {
                    e.2 = Some(pass);
                }
                self.github_advance(env, lane);
            }
        }
    }

    fn land(&mut self, env: &mut Env, run: &Run) {
        if run.changes.is_empty() {
            return;
        }
        let tip = env.world.tip(run.lane);
        match env.world.land(tip, run.commit, env.now) {
            Err(v) => env.violate(v),
            Ok(Some(_)) => env.violate("a baseline's target moved underneath it".into()),
            Ok(None) => {
                for &c in &run.changes {
                    env.landed(c);
                }
            }
        }
    }

    fn bors_next(&mut self, env: &mut Env, lane: usize) {
        if self.lanes[lane].running.is_some() {
            return;
        }
        let (batch, extra) = match self.lanes[lane].stack.pop() {
            Some(b) => (b, true),
            None => {
                let max = env.sc.lanes[lane].batch_max;
                let q = &mut self.lanes[lane].queue;
                let n = q.len().min(max);
                (q.drain(..n).collect::<Vec<_>>(), false)
            }
        };
        if batch.is_empty() {
            return;
        }
        let tok = self.start(env, lane, batch, extra);
        self.lanes[lane].running = Some(tok);
    }

    fn github_advance(&mut self, env: &mut Env, lane: usize) {
        while let Some(&(c, tok, verdict)) = self.lanes[lane].entries.first() {
            match verdict {
                Some(true) => {
                    let run = self.runs.remove(&tok.expect("has a run")).expect("present");
                    if run.extra {
                        env.m.extra_builds += run.builds;
                    }
                    // The head's candidate is the target plus the head alone.
                    self.land(env, &run);
                    self.lanes[lane].entries.remove(0);
                }
                Some(false) => {
                    if let Some(r) = tok.and_then(|t| self.runs.remove(&t)) {
                        if r.extra {
                            env.m.extra_builds += r.builds;
                        }
                    }
                    env.rejected(c, RejectKind::Failure);
                    self.lanes[lane].entries.remove(0);
                    // Everything behind contained the ejected change: discard and rebuild.
                    let behind: Vec<u64> = self.lanes[lane]
                        .entries
                        .iter_mut()
                        .filter_map(|e| {
                            e.2 = None;
                            e.1.take()
                        })
                        .collect();
                    for t in behind {
                        if let Some(r) = self.runs.remove(&t) {
                            env.pool.cancel_queued(Some(t), env.live_epoch);
                            env.m.extra_builds += r.builds;
                        }
                    }
                    break;
                }
                None => break,
            }
        }
        let conc = env.sc.baselines.github_concurrency.max(1);
        let n = self.lanes[lane].entries.len().min(conc);
        let restarted = self.lanes[lane].entries.iter().any(|e| e.1.is_none());
        for i in 0..n {
            if self.lanes[lane].entries[i].1.is_none() {
                let changes: Vec<usize> =
                    self.lanes[lane].entries[..=i].iter().map(|e| e.0).collect();
                let tok = self.start(env, lane, changes, restarted && i > 0);
                self.lanes[lane].entries[i].1 = Some(tok);
            }
        }
    }
}

impl Queue for Baseline {
    fn arrive(&mut self, env: &mut Env, idx: usize) {
        let lane = env.world.changes[idx].lane;
        match self.kind {
            Kind::Bors => {
                self.lanes[lane].queue.push_back(idx);
                self.bors_next(env, lane);
            }
            Kind::Github => {
                // GitHub checks mergeability on entry.
                let ch = &env.world.changes[idx];
                let clash = self.lanes[lane]
                    .entries
                    .iter()
                    .any(|e| env.world.changes[e.0].root == ch.root);
                if ch.conflict || clash {
                    env.rejected(idx, RejectKind::Conflict);
                    return;
                }
                self.lanes[lane].entries.push((idx, None, None));
                self.github_advance(env, lane);
            }
        }
    }

    fn event(&mut self, env: &mut Env, ev: Ev) {
        if let Ev::Ci(tok) = ev {
            self.stage(env, tok);
        }
    }

    fn built(&mut self, env: &mut Env, r: Running) {
        let tok = r.job.owner;
        let Some(run) = self.runs.get_mut(&tok) else {
            return;
        };
        if run.stage != Stage::Building {
            return;
        }
        match r.class {
            OutcomeClass::Success => {
                if env.sc.baselines.cache {
                    self.cache.insert(r.job.drv.clone());
                }
            }
            OutcomeClass::Infrastructure | OutcomeClass::Cancelled => {
                run.builds += 1;
                env.submit_build(r.job.clone());
                env.dispatch();
                return;
            }
            _ => {
                // Known failures on the target do not fail the run.
                if !env.world.graph.broken[r.job.pkg as usize] {
                    return self.complete(env, tok, false);
                }
            }
        }
        run.pending -= 1;
        if run.pending == 0 {
            self.complete(env, tok, true);
        }
    }

    fn depth(&self, _env: &Env) -> (usize, usize) {
        let (mut q, mut t) = (0, 0);
        for l in &self.lanes {
            q += l.queue.len() + l.stack.iter().map(Vec::len).sum::<usize>();
            if let Some(r) = l.running.and_then(|r| self.runs.get(&r)) {
                t += r.changes.len();
            }
            for e in &l.entries {
                if e.1.is_some() {
                    t += 1;
                } else {
                    q += 1;
                }
            }
        }
        (q, t)
    }

    fn heal(&mut self, _env: &mut Env) {}

    fn finish(&mut self, _env: &mut Env) {}
}
