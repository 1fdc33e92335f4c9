//! The build scheduler: one queue of build steps for every requester (candidates,
//! attribution, channels), matched to builders by system, features, free slots, speed
//! and health. Pure: `dispatch` returns assignments; the shell starts them.
//!
//! Ready steps are indexed per (system, required features) bucket, ordered by priority
//! class, then weight (the critical path when known, else the expected duration), then
//! arrival. A decision looks at the head of each bucket a free builder can serve, so its
//! cost does not grow with the queue length (see `bench schedule`).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use super::Millis;

pub type BuilderId = String;

#[derive(Debug, Clone, PartialEq)]
pub struct BuilderSpec {
    pub id: BuilderId,
    pub systems: BTreeSet<String>,
    pub supported: BTreeSet<String>,
    pub mandatory: BTreeSet<String>,
    pub max_jobs: usize,
    pub speed: f64,
}

impl BuilderSpec {
    /// Nix's rule: the builder has the system and every required feature, and the step
    /// requires every mandatory feature of the builder.
    pub fn can_build(&self, system: &str, features: &BTreeSet<String>) -> bool {
        (self.systems.contains(system) || (system == "builtin"))
            && features
                .iter()
                .all(|f| self.supported.contains(f) || self.mandatory.contains(f))
            && self.mandatory.iter().all(|m| features.contains(m))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Not probed yet: used, and probed at once.
    Unknown,
    Up,
    /// Too many consecutive infrastructure failures; probed again at `until`.
    Quarantined {
        until: Millis,
    },
    /// Taken out of service by an operator: running builds finish, nothing new starts.
    Draining,
}

impl Health {
    pub fn as_str(&self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Up => "up",
            Health::Quarantined { .. } => "quarantined",
            Health::Draining => "draining",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct BuilderState {
    pub spec: BuilderSpec,
    pub health: Health,
    pub running: BTreeSet<Arc<str>>,
    pub consecutive_infra: u32,
    pub implementation: Option<String>,
    pub version: Option<String>,
    pub last_error: Option<String>,
    /// Derivations built there recently (bounded): it holds their outputs.
    pub holds: HashSet<Arc<str>>,
    /// Verified builds whose NAR hashes differed from another builder's: lower trust.
    pub mismatches: u32,
}

impl BuilderState {
    fn free(&self) -> usize {
        self.spec.max_jobs.saturating_sub(self.running.len())
    }

    pub(crate) fn accepts(&self) -> bool {
        matches!(self.health, Health::Up | Health::Unknown)
    }
}

/// What the shell learnt from the derivation file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StepInfo {
    pub system: String,
    pub features: BTreeSet<String>,
    /// Input derivations, to prefer a builder that holds their outputs.
    pub inputs: Vec<String>,
    /// The inputs with an output not valid in the local store: each is built as a step of
    /// its own before this one is dispatched.
    pub missing: Vec<String>,
    /// Length of the longest chain of builds this step is on, when the requester knows.
    pub weight_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub prio: u8,
    pub seq: u64,
    /// Known once the derivation was inspected.
    pub system: Option<Arc<str>>,
    bucket: Option<usize>,
    weight: u64,
    inputs: Vec<String>,
    /// Builders where an attempt ended in an infrastructure failure.
    pub tried: BTreeSet<usize>,
    pub infra_attempts: u32,
    /// Attempts that failed (the package's own failure) and were retried.
    pub failed_attempts: u32,
    /// Not before this time (backoff after an infrastructure failure).
    pub not_before: Millis,
    running_on: Option<usize>,
    /// Running, and being stopped on its builder: nobody waits for it any more.
    pub cancelled: bool,
}

impl Step {
    pub fn running(&self) -> bool {
        self.running_on.is_some()
    }
}

type ReadyKey = (u8, Reverse<u64>, u64);

/// Steps that share a system and required features, and the builders able to take them.
#[derive(Debug, Clone, PartialEq)]
struct Bucket {
    able: Vec<usize>,
    /// Ready steps with their not-before time (so a decision reads no step record).
    ready: BTreeMap<ReadyKey, (Arc<str>, Millis)>,
}

#[derive(Debug, Clone, Default)]
pub struct Scheduler {
    builders: Vec<BuilderState>,
    by_id: BTreeMap<BuilderId, usize>,
    // Hash maps are only looked up, never iterated, so they do not make decisions
    // depend on hashing; order lives in the buckets' BTreeMaps.
    steps: HashMap<Arc<str>, Step>,
    buckets: Vec<Bucket>,
    bucket_ids: BTreeMap<(Arc<str>, BTreeSet<String>), usize>,
    /// Expected durations learnt per package name (drv name without hash).
    durations: HashMap<String, u64>,
    seq: u64,
}

const HOLDS_MAX: usize = 10_000;

/// `/nix/store/<hash>-name-1.0.drv` -> `name-1.0`.
pub fn drv_name(drv: &str) -> &str {
    let base = drv.rsplit('/').next().unwrap_or(drv);
    let base = base.strip_suffix(".drv").unwrap_or(base);
    base.split_once('-').map_or(base, |(_, n)| n)
}

impl Scheduler {
    pub fn new(specs: Vec<BuilderSpec>) -> Scheduler {
        let mut specs = specs;
        specs.sort_by(|a, b| a.id.cmp(&b.id));
        specs.dedup_by(|a, b| a.id == b.id);
        let by_id = specs
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.clone(), i))
            .collect();
        let builders = specs
            .into_iter()
            .map(|spec| BuilderState {
                spec,
                health: Health::Unknown,
                running: BTreeSet::new(),
                consecutive_infra: 0,
                implementation: None,
                version: None,
                last_error: None,
                holds: HashSet::new(),
                mismatches: 0,
            })
            .collect();
        Scheduler {
            builders,
            by_id,
            ..Default::default()
        }
    }

    pub fn builders(&self) -> impl Iterator<Item = &BuilderState> {
        self.builders.iter()
    }

    pub fn builder(&self, id: &str) -> Option<&BuilderState> {
        self.by_id.get(id).map(|&i| &self.builders[i])
    }

    pub fn builder_mut(&mut self, id: &str) -> Option<&mut BuilderState> {
        self.by_id.get(id).map(|&i| &mut self.builders[i])
    }

    pub fn step(&self, drv: &str) -> Option<&Step> {
        self.steps.get(drv)
    }

    /// The builder a step runs on.
    pub fn running_on(&self, drv: &str) -> Option<&str> {
        let i = self.steps.get(drv)?.running_on?;
        Some(&self.builders[i].spec.id)
    }

    /// Adds a step (or raises the priority of a queued one). Returns false when the
    /// derivation is already queued or running: identical requests are built once.
    pub fn enqueue(&mut self, drv: &str, prio: u8) -> bool {
        if let Some(s) = self.steps.get_mut(drv) {
            // Wanted again while being stopped: queued again once it has stopped.
            s.cancelled = false;
            if prio < s.prio && s.running_on.is_none() {
                self.unindex(drv);
                self.steps.get_mut(drv).expect("present").prio = prio;
                self.index(drv);
            }
            return false;
        }
        self.seq += 1;
        let step = Step {
            prio,
            seq: self.seq,
            system: None,
            bucket: None,
            weight: 0,
            inputs: vec![],
            tried: BTreeSet::new(),
            infra_attempts: 0,
            failed_attempts: 0,
            not_before: 0,
            running_on: None,
            cancelled: false,
        };
        self.steps.insert(Arc::from(drv), step);
        true
    }

    pub fn set_info(&mut self, drv: &str, info: StepInfo) {
        let Some(s) = self.steps.get(drv) else { return };
        if s.bucket.is_some() || s.running_on.is_some() {
            return;
        }
        let system: Arc<str> = Arc::from(info.system.as_str());
        let key = (system.clone(), info.features);
        let bucket = match self.bucket_ids.get(&key) {
            Some(&b) => b,
            None => {
                let able = (0..self.builders.len())
                    .filter(|&i| self.builders[i].spec.can_build(&key.0, &key.1))
                    .collect();
                self.buckets.push(Bucket {
                    able,
                    ready: BTreeMap::new(),
                });
                self.bucket_ids.insert(key, self.buckets.len() - 1);
                self.buckets.len() - 1
            }
        };
        let weight = info
            .weight_ms
            .or_else(|| self.durations.get(drv_name(drv)).copied())
            .unwrap_or(0);
        let s = self.steps.get_mut(drv).expect("present");
        s.system = Some(system);
        s.bucket = Some(bucket);
        s.weight = weight;
        s.inputs = info.inputs;
        self.index(drv);
    }

    fn index(&mut self, drv: &str) {
        let Some((key, s)) = self.steps.get_key_value(drv) else {
            return;
        };
        if let Some(b) = s.bucket {
            self.buckets[b].ready.insert(
                (s.prio, Reverse(s.weight), s.seq),
                (key.clone(), s.not_before),
            );
        }
    }

    fn unindex(&mut self, drv: &str) {
        if let Some(s) = self.steps.get(drv) {
            if let Some(b) = s.bucket {
                self.buckets[b]
                    .ready
                    .remove(&(s.prio, Reverse(s.weight), s.seq));
            }
        }
    }

    /// Drops a queued step nobody needs any more (not one that is running).
    pub fn remove(&mut self, drv: &str) -> bool {
        if self.steps.get(drv).is_some_and(|s| s.running_on.is_none()) {
            self.unindex(drv);
            self.steps.remove(drv);
            return true;
        }
        false
    }

    /// Whether no configured builder could ever take this step (system or features).
    pub fn unbuildable(&self, drv: &str) -> bool {
        self.steps
            .get(drv)
            .and_then(|s| s.bucket)
            .is_some_and(|b| self.buckets[b].able.is_empty())
    }

    pub fn queued(&self) -> usize {
        self.steps.len()
    }

    /// Assigns ready steps to free builders until no assignment is possible.
    pub fn dispatch(&mut self, now: Millis) -> Vec<(String, BuilderId)> {
        let mut out = vec![];
        while let Some((drv, key, bucket, b)) = self.decide(now) {
            self.buckets[bucket].ready.remove(&key);
            self.steps.get_mut(&drv).expect("ready step").running_on = Some(b);
            self.builders[b].running.insert(drv.clone());
            out.push((drv.to_string(), self.builders[b].spec.id.clone()));
        }
        out
    }

    /// One decision: the best ready step some free builder can take, and the best such
    /// builder for it (holding most of its inputs, then fastest, then least loaded).
    fn decide(&self, now: Millis) -> Option<(Arc<str>, ReadyKey, usize, usize)> {
        let free = |i: &usize| {
            let b = &self.builders[*i];
            b.accepts() && b.free() > 0
        };
        let mut best: Option<(&ReadyKey, &Arc<str>, usize)> = None;
        for (bi, bucket) in self.buckets.iter().enumerate() {
            if bucket.ready.is_empty() || !bucket.able.iter().any(free) {
                continue;
            }
            // The head, skipping steps still backing off (rare: infrastructure retries).
            let Some((key, (drv, _))) = bucket.ready.iter().find(|(_, (_, nb))| *nb <= now) else {
                continue;
            };
            if best.as_ref().is_none_or(|(k, _, _)| key < *k) {
                best = Some((key, drv, bi));
            }
        }
        let (key, drv, bi) = best?;
        let bucket = &self.buckets[bi];
        let step = &self.steps[drv];
        // A different builder after an infrastructure failure, when there is one.
        let fresh = bucket
            .able
            .iter()
            .filter(|i| free(i))
            .any(|i| !step.tried.contains(i));
        let score = |i: usize| {
            let b = &self.builders[i];
            let held = step
                .inputs
                .iter()
                .filter(|d| b.holds.contains(d.as_str()))
                .count();
            // Trust first: a builder whose outputs differed from others' gets work only
            // when no other can take it.
            (
                Reverse(b.mismatches),
                held,
                (b.spec.speed * 1000.0) as i64,
                b.free(),
                Reverse(i),
            )
        };
        let chosen = bucket
            .able
            .iter()
            .copied()
            .filter(|i| free(i) && (!fresh || !step.tried.contains(i)))
            .max_by_key(|&i| score(i))?;
        Some((drv.clone(), *key, bi, chosen))
    }

    /// Ends an attempt. Infrastructure failures put the step back (on another builder,
    /// after the backoff) and count towards the builder's quarantine. Returns the step if
    /// it is finished (its result is a verdict), or `None` if it was requeued or the report
    /// is stale.
    pub fn finish(
        &mut self,
        drv: &str,
        builder: &str,
        infra: Option<(String, Millis)>,
        duration_ms: u64,
    ) -> Option<Step> {
        let &bi = self.by_id.get(builder)?;
        let step = self.steps.get_mut(drv)?;
        if step.running_on != Some(bi) {
            return None; // a stale or duplicate report
        }
        step.running_on = None;
        let b = &mut self.builders[bi];
        b.running.remove(drv);
        match infra {
            Some((err, not_before)) => {
                b.consecutive_infra += 1;
                b.last_error = Some(err);
                step.tried.insert(bi);
                step.infra_attempts += 1;
                step.not_before = not_before;
                self.index(drv);
                None
            }
            None => {
                b.consecutive_infra = 0;
                if b.holds.len() >= HOLDS_MAX {
                    b.holds.clear();
                }
                if let Some((key, _)) = self.steps.get_key_value(drv) {
                    b.holds.insert(key.clone());
                }
                let name = drv_name(drv);
                match self.durations.get_mut(name) {
                    Some(d) => *d = duration_ms,
                    None => {
                        self.durations.insert(name.to_string(), duration_ms);
                    }
                }
                self.steps.remove(drv)
            }
        }
    }

    /// Queues a step whose attempt failed once more (to tell a flaky failure from a real
    /// one), preferably on another builder; not an infrastructure failure of the builder.
    /// Returns the failed attempts so far; `None` for a stale or duplicate report.
    pub fn retry_failed(&mut self, drv: &str, builder: &str) -> Option<u32> {
        let &bi = self.by_id.get(builder)?;
        let step = self.steps.get_mut(drv)?;
        if step.running_on != Some(bi) {
            return None;
        }
        step.running_on = None;
        step.tried.insert(bi);
        step.failed_attempts += 1;
        let n = step.failed_attempts;
        self.builders[bi].running.remove(drv);
        self.index(drv);
        Some(n)
    }

    /// The builders that could take `drv` (system and features), known once inspected.
    pub fn able(&self, drv: &str) -> impl Iterator<Item = &BuilderState> {
        let able = self
            .steps
            .get(drv)
            .and_then(|s| s.bucket)
            .map_or(&[][..], |b| &self.buckets[b].able[..]);
        able.iter().map(|&i| &self.builders[i])
    }

    /// Every queued or running step.
    pub fn drvs(&self) -> impl Iterator<Item = &str> {
        self.steps.keys().map(|k| &**k)
    }

    /// Takes out a step nobody needs: a queued one leaves at once (`None`); a running one
    /// is marked and its builder returned, to be stopped there. Its slot stays taken until
    /// the attempt reports ([`Scheduler::stopped`]).
    pub fn cancel(&mut self, drv: &str) -> Option<BuilderId> {
        let s = self.steps.get_mut(drv)?;
        match s.running_on {
            Some(b) => {
                s.cancelled = true;
                Some(self.builders[b].spec.id.clone())
            }
            None => {
                self.unindex(drv);
                self.steps.remove(drv);
                None
            }
        }
    }

    /// A cancelled attempt stopped: the slot is free, and the step leaves unless it was
    /// wanted again meanwhile, then it is queued again. Returns whether it was queued.
    pub fn stopped(&mut self, drv: &str, builder: &str) -> bool {
        let Some(&bi) = self.by_id.get(builder) else {
            return false;
        };
        let Some(step) = self.steps.get_mut(drv) else {
            return false;
        };
        if step.running_on != Some(bi) {
            return false;
        }
        step.running_on = None;
        self.builders[bi].running.remove(drv);
        if step.cancelled {
            self.steps.remove(drv);
            return false;
        }
        self.index(drv);
        true
    }

    /// Gives up on a step (retry budget spent): it leaves the queue.
    pub fn abandon(&mut self, drv: &str) -> Option<Step> {
        self.unindex(drv);
        self.steps.remove(drv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(
        id: &str,
        systems: &[&str],
        jobs: usize,
        speed: f64,
        supported: &[&str],
        mandatory: &[&str],
    ) -> BuilderSpec {
        BuilderSpec {
            id: id.into(),
            systems: systems.iter().map(|s| s.to_string()).collect(),
            supported: supported.iter().map(|s| s.to_string()).collect(),
            mandatory: mandatory.iter().map(|s| s.to_string()).collect(),
            max_jobs: jobs,
            speed,
        }
    }

    fn info(system: &str, features: &[&str]) -> StepInfo {
        StepInfo {
            system: system.into(),
            features: features.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn matches_systems_features_and_slots() {
        let mut s = Scheduler::new(vec![
            spec("x86", &["x86_64-linux"], 1, 1.0, &["big-parallel"], &[]),
            spec("arm", &["aarch64-linux"], 2, 1.0, &[], &[]),
            spec("kvm", &["x86_64-linux"], 1, 1.0, &["kvm"], &["kvm"]),
        ]);
        for (d, sys, f) in [
            ("a", "x86_64-linux", vec![]),
            ("b", "aarch64-linux", vec![]),
            ("c", "x86_64-linux", vec!["kvm"]),
            ("d", "x86_64-linux", vec!["big-parallel"]),
            ("e", "riscv64-linux", vec![]),
        ] {
            s.enqueue(d, 2);
            s.set_info(d, info(sys, &f));
        }
        let got: BTreeMap<String, String> = s.dispatch(0).into_iter().collect();
        assert_eq!(got.get("a").map(String::as_str), Some("x86"));
        assert_eq!(got.get("b").map(String::as_str), Some("arm"));
        assert_eq!(
            got.get("c").map(String::as_str),
            Some("kvm"),
            "mandatory feature"
        );
        assert!(
            !got.contains_key("d"),
            "x86 has one slot, taken by a (earlier)"
        );
        assert!(!got.contains_key("e"), "no builder for the system");
        assert!(s.finish("a", "x86", None, 10).is_some());
        assert_eq!(s.dispatch(0), vec![("d".to_string(), "x86".to_string())]);
    }

    #[test]
    fn priority_then_weight_then_arrival() {
        let mut s = Scheduler::new(vec![spec("b", &["x"], 1, 1.0, &[], &[])]);
        for (d, p, w) in [
            ("low", 3, 0),
            ("heavy", 2, 500),
            ("light", 2, 5),
            ("urgent", 0, 0),
        ] {
            s.enqueue(d, p);
            s.set_info(
                d,
                StepInfo {
                    system: "x".into(),
                    weight_ms: Some(w),
                    ..Default::default()
                },
            );
        }
        let mut order = vec![];
        for _ in 0..4 {
            let (d, b) = s.dispatch(0).pop().unwrap();
            s.finish(&d, &b, None, 1);
            order.push(d);
        }
        assert_eq!(order, ["urgent", "heavy", "light", "low"]);
    }

    #[test]
    fn identical_requests_build_once_and_infra_moves_elsewhere() {
        let mut s = Scheduler::new(vec![
            spec("a", &["x"], 1, 2.0, &[], &[]),
            spec("b", &["x"], 1, 1.0, &[], &[]),
        ]);
        assert!(s.enqueue("d", 2));
        assert!(!s.enqueue("d", 2));
        s.set_info("d", info("x", &[]));
        assert_eq!(
            s.dispatch(0),
            vec![("d".to_string(), "a".to_string())],
            "fastest first"
        );
        assert!(s
            .finish("d", "a", Some(("daemon crashed".into(), 100)), 0)
            .is_none());
        assert!(s.dispatch(50).is_empty(), "backing off");
        assert_eq!(
            s.dispatch(100),
            vec![("d".to_string(), "b".to_string())],
            "another builder"
        );
        assert_eq!(s.builder("a").unwrap().consecutive_infra, 1);
    }

    #[test]
    fn prefers_the_builder_holding_inputs_and_skips_unhealthy() {
        let mut s = Scheduler::new(vec![
            spec("a", &["x"], 1, 1.0, &[], &[]),
            spec("b", &["x"], 1, 1.0, &[], &[]),
        ]);
        s.builder_mut("b").unwrap().holds.insert("dep".into());
        s.enqueue("d", 2);
        s.set_info(
            "d",
            StepInfo {
                system: "x".into(),
                inputs: vec!["dep".into()],
                ..Default::default()
            },
        );
        assert_eq!(s.dispatch(0)[0].1, "b");
        s.finish("d", "b", None, 1);
        s.builder_mut("b").unwrap().health = Health::Draining;
        s.enqueue("e", 2);
        s.set_info(
            "e",
            StepInfo {
                system: "x".into(),
                inputs: vec!["d".into()],
                ..Default::default()
            },
        );
        assert_eq!(s.dispatch(0)[0].1, "a", "draining builders get nothing");
    }

    #[test]
    fn a_stopped_step_frees_its_slot_and_leaves_unless_wanted_again() {
        let mut s = Scheduler::new(vec![spec("b", &["x"], 1, 1.0, &[], &[])]);
        for d in ["q", "r"] {
            s.enqueue(d, 2);
            s.set_info(d, info("x", &[]));
        }
        assert_eq!(s.dispatch(0).len(), 1, "one slot");
        let running = s
            .builder("b")
            .unwrap()
            .running
            .iter()
            .next()
            .unwrap()
            .to_string();
        let queued = if running == "q" { "r" } else { "q" };
        assert_eq!(s.cancel(queued), None, "a queued step leaves at once");
        assert!(s.step(queued).is_none());
        assert_eq!(s.cancel(&running).as_deref(), Some("b"));
        assert!(
            s.dispatch(0).is_empty(),
            "the slot is taken until it stopped"
        );
        assert!(!s.stopped(&running, "b"));
        assert!(s.step(&running).is_none() && s.queued() == 0);
        // Wanted again while being stopped: queued again once it stopped.
        s.enqueue("q", 2);
        s.set_info("q", info("x", &[]));
        s.dispatch(0);
        s.cancel("q");
        assert!(!s.enqueue("q", 2));
        assert!(s.stopped("q", "b"));
        assert_eq!(s.dispatch(0), vec![("q".to_string(), "b".to_string())]);
    }

    #[test]
    fn drv_names() {
        assert_eq!(drv_name("/nix/store/abc-hello-2.12.drv"), "hello-2.12");
    }
}
