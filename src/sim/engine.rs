//! The discrete-event loop: a virtual clock, a heap of (time, sequence, event), one seeded
//! PRNG for everything that happens at run time, the world, the builders, and a policy
//! queue (the real core, or a baseline) that reacts to events.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use super::builders::{BuildJob, Pool, Running};
use super::scenario::Scenario;
use super::world::{World, DAY};
use crate::core::{Command, Millis};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RejectKind {
    Conflict,
    /// Rejected for a build or evaluation failure.
    Failure,
}

#[derive(Debug, Clone)]
pub struct Sample {
    pub t: Millis,
    pub queued: usize,
    pub testing: usize,
    pub builds_queued: usize,
    /// (busy, total) slots per system.
    pub util: Vec<(usize, usize)>,
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub landed: Vec<Option<Millis>>,
    /// When a channel (the earliest of those following the change's lane) contained it.
    pub channelled: Vec<Option<Millis>>,
    /// Channel moves, over all channels; `None` when the policy gates no channel.
    pub channel_advances: Option<u64>,
    pub rejected: Vec<Option<(Millis, RejectKind)>>,
    pub arrived: usize,
    pub finals: usize,
    pub extra_builds: u64,
    pub samples: Vec<Sample>,
    pub crashes: u64,
    pub lost_results: u64,
    pub duplicated_results: u64,
    pub builder_kills: u64,
    pub violation: Option<String>,
    pub end: Millis,
}

pub enum Ev {
    Arrive(usize),
    Sample,
    BuildDone(u64),
    Kill(usize),
    Revive(usize),
    /// A shell command of the core finishing (with the core's epoch: results of commands
    /// issued before a crash are dropped).
    Perform(Box<Command>, u32),
    Wake,
    /// A baseline CI run's stage finished.
    Ci(u64),
    Heal,
}

struct Entry(Millis, u64, Ev);
impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        (self.0, self.1) == (o.0, o.1)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.0, self.1).cmp(&(o.0, o.1))
    }
}

pub struct Env<'a> {
    pub sc: &'a Scenario,
    pub world: World,
    pub pool: Pool,
    pub rng: fastrand::Rng,
    pub now: Millis,
    pub faults: bool,
    pub m: Metrics,
    /// Builds from an older epoch are dropped when they reach the head of a queue.
    pub live_epoch: u32,
    heap: BinaryHeap<Reverse<Entry>>,
    seq: u64,
}

pub trait Queue {
    fn arrive(&mut self, env: &mut Env, idx: usize);
    fn event(&mut self, env: &mut Env, ev: Ev);
    fn built(&mut self, env: &mut Env, r: Running);
    /// (queued, testing) changes.
    fn depth(&self, env: &Env) -> (usize, usize);
    /// Faults end: recover from whatever they left behind (an operator restart).
    fn heal(&mut self, env: &mut Env);
    /// Nothing left to wait for besides final changes (channels caught up).
    fn settled(&self, _env: &Env) -> bool {
        true
    }
    /// Final checks once the run ends.
    fn finish(&mut self, env: &mut Env);
    /// What the marking-broken policy did, for a queue that runs one (`end`: the run's
    /// last instant).
    fn breakage(&self, _end: i64) -> Option<super::breakage::BreakageStats> {
        None
    }
    /// The changes (by index) that went through a mass-rebuild stage.
    fn staged(&self) -> std::collections::BTreeSet<usize> {
        Default::default()
    }
}

impl<'a> Env<'a> {
    pub fn new(sc: &'a Scenario, seed: u64, faults: bool) -> Env<'a> {
        let world = World::new(sc, seed);
        let n = world.changes.len();
        Env {
            sc,
            pool: Pool::new(sc),
            world,
            rng: fastrand::Rng::with_seed(seed ^ 0x7275_6e74_696d_6500),
            now: 0,
            faults,
            m: Metrics {
                landed: vec![None; n],
                channelled: vec![None; n],
                rejected: vec![None; n],
                ..Default::default()
            },
            live_epoch: 0,
            heap: BinaryHeap::new(),
            seq: 0,
        }
    }

    pub fn at(&mut self, t: Millis, ev: Ev) {
        self.seq += 1;
        self.heap
            .push(Reverse(Entry(t.max(self.now), self.seq, ev)));
    }

    pub fn secs(&self, s: f64) -> Millis {
        (s * 1000.0) as Millis
    }

    pub fn violate(&mut self, what: String) {
        if self.m.violation.is_none() {
            self.m.violation = Some(format!("at {:.3} h: {what}", self.now as f64 / 3.6e6));
        }
    }

    pub fn landed(&mut self, idx: usize) {
        if self.m.landed[idx].is_none() && self.m.rejected[idx].is_none() {
            self.m.finals += 1;
        } else if self.m.landed[idx].is_some() {
            return;
        }
        self.m.landed[idx] = Some(self.now);
    }

    /// A channel moved to a commit containing the change.
    pub fn channelled(&mut self, idx: usize) {
        if self.world.landed_at[idx].is_none() {
            self.violate(format!("change {idx} reached a channel before it landed"));
        }
        self.m.channelled[idx].get_or_insert(self.now);
    }

    pub fn rejected(&mut self, idx: usize, kind: RejectKind) {
        if self.m.landed[idx].is_some() {
            self.violate(format!("change {idx} rejected after it landed"));
            return;
        }
        if self.m.rejected[idx].is_none() {
            self.m.finals += 1;
            self.m.rejected[idx] = Some((self.now, kind));
        }
    }

    pub fn submit_build(&mut self, job: BuildJob) {
        self.pool.submit(job, &self.world.graph.dur_ms);
    }

    /// Starts a build on the machine the core's scheduler chose.
    pub fn start_on(&mut self, m: usize, job: BuildJob) -> (u64, Millis) {
        self.pool.start(
            m,
            job,
            self.now,
            &self.world.graph.dur_ms,
            self.world.graph.tested,
            &mut self.rng,
        )
    }

    /// Starts whatever builds fit on free slots (the baselines' dispatcher).
    pub fn dispatch(&mut self) {
        let epoch = self.live_epoch;
        let started = self.pool.dispatch(
            self.now,
            &self.world.graph.dur_ms,
            self.world.graph.tested,
            &mut self.rng,
            &|j: &BuildJob| j.owner == 0 && j.epoch != epoch,
        );
        for (id, t) in started {
            self.at(t, Ev::BuildDone(id));
        }
    }
}

/// Runs one policy over the scenario; returns the metrics.
pub fn run(
    sc: &Scenario,
    seed: u64,
    faults: bool,
    queue: &mut dyn Queue,
) -> (Metrics, World, u64, u64) {
    let mut env = Env::new(sc, seed, faults);
    env.world.marking_broken = queue.breakage(0).is_some();
    for i in 0..env.world.changes.len() {
        let t = env.world.changes[i].at;
        env.at(t, Ev::Arrive(i));
    }
    let end_arrivals = (sc.days * DAY as f64) as Millis;
    let horizon = end_arrivals + (sc.drain_days * DAY as f64) as Millis;
    let step = ((sc.sample_minutes * 60_000.0) as Millis).max(60_000);
    env.at(0, Ev::Sample);
    if faults {
        let kills = (sc.faults.builder_kills_per_day * sc.days).round() as usize;
        for _ in 0..kills {
            let t = env.rng.i64(0..end_arrivals.max(1));
            let m = env.rng.usize(..env.pool.machines.len());
            env.at(t, Ev::Kill(m));
        }
        env.at(end_arrivals, Ev::Heal);
    }
    while let Some(Reverse(Entry(t, _, ev))) = env.heap.pop() {
        if t > horizon || env.m.violation.is_some() {
            break;
        }
        env.now = t;
        match ev {
            Ev::Arrive(i) => {
                env.m.arrived += 1;
                queue.arrive(&mut env, i);
            }
            Ev::Sample => {
                let (queued, testing) = queue.depth(&env);
                let util = env.pool.utilisation(env.world.systems.len());
                let builds_queued = env.pool.queued();
                env.m.samples.push(super::engine::Sample {
                    t,
                    queued,
                    testing,
                    builds_queued,
                    util,
                });
                if !over(&env, &*queue, end_arrivals) {
                    env.at(t + step, Ev::Sample);
                }
            }
            Ev::BuildDone(id) => {
                if let Some(r) = env.pool.finish(id, t) {
                    if r.spurious {
                        env.world.spurious += 1;
                    }
                    queue.built(&mut env, r);
                }
                env.dispatch();
            }
            Ev::Kill(m) => {
                env.m.builder_kills += 1;
                let down = (sc.faults.builder_down_minutes * 60_000.0) as Millis;
                for r in env.pool.kill(m, t) {
                    queue.built(&mut env, r);
                }
                env.at(t + down, Ev::Revive(m));
            }
            Ev::Revive(m) => {
                env.pool.revive(m);
                env.dispatch();
            }
            Ev::Heal => {
                env.faults = false;
                queue.heal(&mut env);
            }
            other => queue.event(&mut env, other),
        }
        if over(&env, &*queue, end_arrivals) {
            break;
        }
    }
    env.m.end = env.now;
    queue.finish(&mut env);
    (env.m, env.world, env.pool.attempts, env.pool.slot_ms)
}

/// Arrivals ended, every change is final and the queue has nothing left to wait for.
fn over(env: &Env, queue: &dyn Queue, end_arrivals: Millis) -> bool {
    env.now >= end_arrivals && env.m.finals == env.world.changes.len() && queue.settled(env)
}

/// Sorted latencies in hours from accept to `reached` (landed, or in a channel) of the
/// changes selected by `pick` that were not rejected; changes that had not got there by
/// the end count as infinite (they are reported as "> end").
pub fn latencies(
    m: &Metrics,
    w: &World,
    reached: &[Option<Millis>],
    pick: &dyn Fn(usize) -> bool,
) -> Vec<f64> {
    let mut v: Vec<f64> = (0..w.changes.len())
        .filter(|&i| pick(i) && m.rejected[i].is_none())
        .map(|i| match reached[i] {
            Some(t) => (t - w.changes[i].at) as f64 / 3.6e6,
            None => f64::INFINITY,
        })
        .collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

pub fn percentile(v: &[f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let i = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[i.clamp(1, v.len()) - 1])
}

pub type Counts = BTreeMap<String, u64>;
