//! The build scheduler: one queue of build steps for every requester (candidates,
//! attribution, channels), matched to builders by system, features, free slots, speed
//! and health. Pure: `dispatch` returns assignments; the shell starts them.
//!
//! Ready steps are indexed per (system, required features) bucket, ordered by priority
//! class, then weight (the critical path when known, else the expected duration), then
//! arrival. A decision looks at the head of each bucket a free builder can serve, so its
//! cost does not grow with the queue length (see `bench schedule`).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

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
    pub running: BTreeSet<String>,
    pub consecutive_infra: u32,
    pub implementation: Option<String>,
    pub version: Option<String>,
    pub last_error: Option<String>,
    /// Derivations built there recently (bounded): it holds their outputs.
    pub holds: BTreeSet<String>,
}

impl BuilderState {
    fn free(&self) -> usize {
        self.spec.max_jobs.saturating_sub(self.running.len())
    }

    fn accepts(&self) -> bool {
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
    /// Length of the longest chain of builds this step is on, when the requester knows.
    pub weight_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub drv: String,
    pub prio: u8,
    pub seq: u64,
    pub info: Option<StepInfo>,
    /// Builders where an attempt ended in an infrastructure failure.
    pub tried: BTreeSet<BuilderId>,
    pub infra_attempts: u32,
    /// Not before this time (backoff after an infrastructure failure).
    pub not_before: Millis,
    pub running_on: Option<BuilderId>,
}

type Bucket = (String, BTreeSet<String>);
type ReadyKey = (u8, Reverse<u64>, u64);

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scheduler {
    pub builders: BTreeMap<BuilderId, BuilderState>,
    pub steps: BTreeMap<String, Step>,
    ready: BTreeMap<Bucket, BTreeMap<ReadyKey, String>>,
    /// Expected durations learnt per package name (drv name without hash).
    durations: BTreeMap<String, u64>,
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
        let builders = specs
            .into_iter()
            .map(|spec| {
                (
                    spec.id.clone(),
                    BuilderState {
                        spec,
                        health: Health::Unknown,
                        running: BTreeSet::new(),
                        consecutive_infra: 0,
                        implementation: None,
                        version: None,
                        last_error: None,
                        holds: BTreeSet::new(),
                    },
                )
            })
            .collect();
        Scheduler {
            builders,
            ..Default::default()
        }
    }

    /// Adds a step (or raises the priority of a queued one). Returns false when the
    /// derivation is already queued or running: identical requests are built once.
    pub fn enqueue(&mut self, drv: &str, prio: u8) -> bool {
        if let Some(s) = self.steps.get_mut(drv) {
            if prio < s.prio && s.running_on.is_none() {
                let info = s.info.clone();
                self.unindex(drv);
                self.steps.get_mut(drv).expect("present").prio = prio;
                if info.is_some() {
                    self.index(drv);
                }
            }
            return false;
        }
        self.seq += 1;
        self.steps.insert(
            drv.to_string(),
            Step {
                drv: drv.to_string(),
                prio,
                seq: self.seq,
                info: None,
                tried: BTreeSet::new(),
                infra_attempts: 0,
                not_before: 0,
                running_on: None,
            },
        );
        true
    }

    pub fn set_info(&mut self, drv: &str, info: StepInfo) {
        let Some(s) = self.steps.get_mut(drv) else {
            return;
        };
        if s.info.is_some() || s.running_on.is_some() {
            return;
        }
        s.info = Some(info);
        self.index(drv);
    }

    fn key(&self, s: &Step) -> Option<(Bucket, ReadyKey)> {
        let info = s.info.as_ref()?;
        let weight = info
            .weight_ms
            .or_else(|| self.durations.get(drv_name(&s.drv)).copied())
            .unwrap_or(0);
        Some((
            (info.system.clone(), info.features.clone()),
            (s.prio, Reverse(weight), s.seq),
        ))
    }

    fn index(&mut self, drv: &str) {
        if let Some((bucket, key)) = self.steps.get(drv).and_then(|s| self.key(s)) {
            self.ready
                .entry(bucket)
                .or_default()
                .insert(key, drv.to_string());
        }
    }

    fn unindex(&mut self, drv: &str) {
        if let Some((bucket, key)) = self.steps.get(drv).and_then(|s| self.key(s)) {
            if let Some(b) = self.ready.get_mut(&bucket) {
                b.remove(&key);
                if b.is_empty() {
                    self.ready.remove(&bucket);
                }
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

    pub fn queued(&self) -> usize {
        self.steps.len()
    }

    /// Assigns ready steps to free builders until no assignment is possible.
    pub fn dispatch(&mut self, now: Millis) -> Vec<(String, BuilderId)> {
        let mut out = vec![];
        while let Some((drv, builder)) = self.decide(now) {
            self.unindex(&drv);
            let s = self.steps.get_mut(&drv).expect("ready step");
            s.running_on = Some(builder.clone());
            self.builders
                .get_mut(&builder)
                .expect("known")
                .running
                .insert(drv.clone());
            out.push((drv, builder));
        }
        out
    }

    /// One decision: the best ready step some free builder can take, and the best such
    /// builder for it (holding most of its inputs, then fastest, then least loaded).
    pub fn decide(&self, now: Millis) -> Option<(String, BuilderId)> {
        let free: Vec<&BuilderState> = self
            .builders
            .values()
            .filter(|b| b.accepts() && b.free() > 0)
            .collect();
        if free.is_empty() {
            return None;
        }
        let mut best: Option<(&ReadyKey, &String, Vec<&BuilderState>)> = None;
        for ((system, features), steps) in &self.ready {
            let able: Vec<&BuilderState> = free
                .iter()
                .copied()
                .filter(|b| b.spec.can_build(system, features))
                .collect();
            if able.is_empty() {
                continue;
            }
            // The head, skipping steps still backing off (rare: infrastructure retries).
            let Some((key, drv)) = steps.iter().find(|(_, d)| self.steps[*d].not_before <= now)
            else {
                continue;
            };
            if best.as_ref().is_none_or(|(k, _, _)| key < *k) {
                best = Some((key, drv, able));
            }
        }
        let (_, drv, able) = best?;
        let step = &self.steps[drv];
        // A different builder after an infrastructure failure, when there is one.
        let fresh: Vec<&BuilderState> = able
            .iter()
            .copied()
            .filter(|b| !step.tried.contains(&b.spec.id))
            .collect();
        let pool = if fresh.is_empty() { able } else { fresh };
        let inputs = step.info.as_ref().map_or(&[][..], |i| &i.inputs[..]);
        let score = |b: &BuilderState| {
            let held = inputs.iter().filter(|i| b.holds.contains(*i)).count();
            (held, (b.spec.speed * 1000.0) as i64, b.free())
        };
        let chosen = pool
            .into_iter()
            .max_by(|a, b| score(a).cmp(&score(b)).then(b.spec.id.cmp(&a.spec.id)))?;
        Some((drv.clone(), chosen.spec.id.clone()))
    }

    /// Ends an attempt. Infrastructure failures put the step back (on another builder,
    /// after `backoff`) and count towards the builder's quarantine. Returns the step if it
    /// is finished (its result is a verdict), or `None` if it was requeued.
    pub fn finish(
        &mut self,
        drv: &str,
        builder: &str,
        infra: Option<(String, Millis)>,
        duration_ms: u64,
    ) -> Option<Step> {
        if let Some(b) = self.builders.get_mut(builder) {
            b.running.remove(drv);
            match &infra {
                Some((err, _)) => {
                    b.consecutive_infra += 1;
                    b.last_error = Some(err.clone());
                }
                None => {
                    b.consecutive_infra = 0;
                    if b.holds.len() >= HOLDS_MAX {
                        b.holds.clear();
                    }
                    b.holds.insert(drv.to_string());
                }
            }
        }
        let step = self.steps.get_mut(drv)?;
        if step.running_on.as_deref() != Some(builder) {
            return None; // a stale or duplicate report
        }
        step.running_on = None;
        match infra {
            Some((_, not_before)) => {
                step.tried.insert(builder.to_string());
                step.infra_attempts += 1;
                step.not_before = not_before;
                self.index(drv);
                None
            }
            None => {
                self.durations
                    .insert(drv_name(drv).to_string(), duration_ms);
                self.steps.remove(drv)
            }
        }
    }

    /// Gives up on a step (retry budget spent): it leaves the queue.
    pub fn abandon(&mut self, drv: &str) -> Option<Step> {
        self.unindex(drv);
        self.steps.remove(drv)
    }

    /// Builders that hold running steps, for restarts and quarantine.
    pub fn running_on(&self, builder: &str) -> Vec<String> {
        self.builders
            .get(builder)
            .map(|b| b.running.iter().cloned().collect())
            .unwrap_or_default()
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
        assert_eq!(s.builders["a"].consecutive_infra, 1);
    }

    #[test]
    fn prefers_the_builder_holding_inputs_and_skips_unhealthy() {
        let mut s = Scheduler::new(vec![
            spec("a", &["x"], 1, 1.0, &[], &[]),
            spec("b", &["x"], 1, 1.0, &[], &[]),
        ]);
        s.builders.get_mut("b").unwrap().holds.insert("dep".into());
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
        s.builders.get_mut("b").unwrap().health = Health::Draining;
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
    fn drv_names() {
        assert_eq!(drv_name("/nix/store/abc-hello-2.12.drv"), "hello-2.12");
    }
}
