//! Simulated builders: machines with slots per system, FIFO queues per system (long
//! builds in a separate queue that big-parallel machines serve), durations from the
//! package's sampled build time, spurious and infrastructure failures, machines that die.

use std::collections::{BTreeMap, VecDeque};

use super::graph::Pkg;
use super::scenario::Scenario;
use crate::core::outcome::OutcomeClass;
use crate::core::Millis;

pub struct Machine {
    pub name: String,
    systems: u8,
    slots: usize,
    busy: usize,
    speed: f64,
    big: bool,
    pub down: bool,
}

#[derive(Debug, Clone)]
pub struct BuildJob {
    pub drv: String,
    pub pkg: Pkg,
    pub sys: u8,
    /// Who asked: 0 = the core, otherwise a baseline's CI run.
    pub owner: u64,
    pub epoch: u32,
    /// Dispatch priority: the lane's index (0 first). A stand-in for the scheduler.
    pub prio: u8,
    pub broken: bool,
    pub root: bool,
}

#[derive(Debug, Clone)]
pub struct Running {
    pub job: BuildJob,
    pub machine: usize,
    pub started: Millis,
    pub class: OutcomeClass,
    pub spurious: bool,
}

type Queues = (VecDeque<(u64, BuildJob)>, VecDeque<(u64, BuildJob)>);

pub struct Pool {
    pub machines: Vec<Machine>,
    /// Per system and priority: (ordinary queue, long-build queue), entries (seq, job).
    queues: Vec<Vec<Queues>>,
    pub running: BTreeMap<u64, Running>,
    seq: u64,
    next_id: u64,
    big_above_ms: u64,
    overhead_ms: u64,
    flaky: f64,
    tested_flaky: f64,
    infra: f64,
    /// Attempts finished and slot-milliseconds used.
    pub attempts: u64,
    pub slot_ms: u64,
}

impl Pool {
    pub fn new(sc: &Scenario) -> Pool {
        let sys = |s: &String| {
            sc.graph
                .systems
                .iter()
                .position(|x| &x.name == s)
                .expect("validated")
        };
        let mut machines = vec![];
        for b in &sc.builders {
            for i in 0..b.count {
                machines.push(Machine {
                    name: super::mq::machine_name(&b.name, b.count, i),
                    systems: b.systems.iter().fold(0, |m, s| m | 1 << sys(s)),
                    slots: b.slots,
                    busy: 0,
                    speed: b.speed,
                    big: b.big_parallel,
                    down: false,
                });
            }
        }
        Pool {
            machines,
            queues: (0..sc.graph.systems.len())
                .map(|_| {
                    (0..sc.lanes.len().max(1))
                        .map(|_| (VecDeque::new(), VecDeque::new()))
                        .collect()
                })
                .collect(),
            running: BTreeMap::new(),
            seq: 0,
            next_id: 1,
            big_above_ms: (sc.build_times.big_parallel_above_secs * 1000.0) as u64,
            overhead_ms: (sc.build_times.overhead_secs * 1000.0) as u64,
            flaky: sc.failures.flaky_build,
            tested_flaky: sc.failures.tested_flaky,
            infra: sc.failures.infrastructure,
            attempts: 0,
            slot_ms: 0,
        }
    }

    /// Queues a build; call `dispatch` afterwards.
    pub fn submit(&mut self, job: BuildJob, dur_ms: &[u64]) {
        self.seq += 1;
        let levels = &mut self.queues[job.sys as usize];
        let top = levels.len() - 1;
        let q = &mut levels[(job.prio as usize).min(top)];
        if dur_ms[job.pkg as usize] > self.big_above_ms {
            q.1.push_back((self.seq, job));
        } else {
            q.0.push_back((self.seq, job));
        }
    }

    /// Drops queued (not started) builds of an owner, or of an old epoch.
    pub fn cancel_queued(&mut self, owner: Option<u64>, live_epoch: u32) {
        for q in self.queues.iter_mut().flatten() {
            for d in [&mut q.0, &mut q.1] {
                d.retain(|(_, j)| Some(j.owner) != owner && j.epoch == live_epoch);
            }
        }
    }

    /// Ends the running builds of the core from before a crash: the process that
    /// supervised them is gone, and so are they.
    pub fn abort_stale(&mut self, live_epoch: u32) {
        let ids: Vec<u64> = self
            .running
            .iter()
            .filter(|(_, r)| r.job.owner == 0 && r.job.epoch != live_epoch)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(r) = self.running.remove(&id) {
                self.machines[r.machine].busy -= 1;
            }
        }
    }

    pub fn queued(&self) -> usize {
        self.queues
            .iter()
            .flatten()
            .map(|q| q.0.len() + q.1.len())
            .sum()
    }

    /// Starts queued builds on free slots. Returns (id, finish time) of each started.
    #[allow(clippy::too_many_arguments)]
    pub fn dispatch(
        &mut self,
        now: Millis,
        dur_ms: &[u64],
        tested: Option<Pkg>,
        rng: &mut fastrand::Rng,
        stale: &dyn Fn(&BuildJob) -> bool,
    ) -> Vec<(u64, Millis)> {
        let mut started = vec![];
        for m in 0..self.machines.len() {
            loop {
                let mach = &self.machines[m];
                if mach.down || mach.busy >= mach.slots {
                    break;
                }
                // The oldest eligible queue head of the most urgent level among the
                // machine's systems.
                let mut best: Option<((usize, u64), usize, usize, bool)> = None;
                for s in 0..self.queues.len() {
                    if mach.systems & (1 << s) == 0 {
                        continue;
                    }
                    for (lvl, (small, long)) in self.queues[s].iter().enumerate() {
                        let heads = [(small.front(), false), (long.front(), true)];
                        for (head, is_long) in heads {
                            if mach.big && !is_long {
                                continue;
                            }
                            if let Some((seq, _)) = head {
                                let k = (lvl, *seq);
                                if best.is_none_or(|b| k < b.0) {
                                    best = Some((k, s, lvl, is_long));
                                }
                            }
                        }
                    }
                }
                let Some((_, s, lvl, long)) = best else { break };
                let q = &mut self.queues[s][lvl];
                let (_, job) = if long {
                    q.1.pop_front()
                } else {
                    q.0.pop_front()
                }
                .expect("non-empty");
                if stale(&job) {
                    continue;
                }
                started.push(self.start(m, job, now, dur_ms, tested, rng));
            }
        }
        started
    }

    pub fn machine(&self, name: &str) -> Option<usize> {
        self.machines.iter().position(|m| m.name == name)
    }

    /// Starts a build on a machine (its slots are the caller's business: the core's
    /// scheduler decides). A machine that is down fails it at once.
    pub fn start(
        &mut self,
        m: usize,
        job: BuildJob,
        now: Millis,
        dur_ms: &[u64],
        tested: Option<Pkg>,
        rng: &mut fastrand::Rng,
    ) -> (u64, Millis) {
        let speed = self.machines[m].speed;
        let base = dur_ms[job.pkg as usize];
        let mut dur = (base as f64 / speed) as u64 + self.overhead_ms;
        let flaky = if Some(job.pkg) == tested {
            self.tested_flaky
        } else {
            self.flaky
        };
        let (class, spurious) = if self.machines[m].down {
            dur = 1000;
            (OutcomeClass::Infrastructure, false)
        } else if rng.f64() < self.infra {
            dur = (dur as f64 * rng.f64()) as u64;
            (OutcomeClass::Infrastructure, false)
        } else if job.broken {
            if job.root {
                dur = (dur as f64 * (0.2 + 0.8 * rng.f64())) as u64;
                (OutcomeClass::Failed, false)
            } else {
                // A dependency failed: fails at once.
                dur = self.overhead_ms;
                (OutcomeClass::DependencyFailed, false)
            }
        } else if rng.f64() < flaky {
            dur = (dur as f64 * (0.2 + 0.8 * rng.f64())) as u64;
            (OutcomeClass::Failed, true)
        } else {
            (OutcomeClass::Success, false)
        };
        self.machines[m].busy += 1;
        let id = self.next_id;
        self.next_id += 1;
        self.running.insert(
            id,
            Running {
                job,
                machine: m,
                started: now,
                class,
                spurious,
            },
        );
        (id, now + dur.max(1) as Millis)
    }

    /// A build ended (None when it was already ended by a machine kill).
    pub fn finish(&mut self, id: u64, now: Millis) -> Option<Running> {
        let r = self.running.remove(&id)?;
        self.machines[r.machine].busy -= 1;
        self.attempts += 1;
        self.slot_ms += (now - r.started).max(0) as u64;
        Some(r)
    }

    /// Kills a machine: its running builds end now as infrastructure failures.
    pub fn kill(&mut self, m: usize, now: Millis) -> Vec<Running> {
        self.machines[m].down = true;
        let ids: Vec<u64> = self
            .running
            .iter()
            .filter(|(_, r)| r.machine == m)
            .map(|(id, _)| *id)
            .collect();
        ids.into_iter()
            .filter_map(|id| {
                let mut r = self.finish(id, now)?;
                r.class = OutcomeClass::Infrastructure;
                r.spurious = false;
                Some(r)
            })
            .collect()
    }

    pub fn revive(&mut self, m: usize) {
        self.machines[m].down = false;
    }

    /// Busy and total slots per system (a machine serving several systems counts for each).
    pub fn utilisation(&self, nsys: usize) -> Vec<(usize, usize)> {
        let mut u = vec![(0, 0); nsys];
        for m in self.machines.iter().filter(|m| !m.down) {
            for (s, x) in u.iter_mut().enumerate() {
                if m.systems & (1 << s) != 0 {
                    x.0 += m.busy;
                    x.1 += m.slots;
                }
            }
        }
        u
    }

    pub fn total_slots(&self) -> usize {
        self.machines.iter().map(|m| m.slots).sum()
    }

    pub fn busy_slots(&self) -> usize {
        self.machines.iter().map(|m| m.busy).sum()
    }
}
