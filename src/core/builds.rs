//! The builds machine: evaluations, the build memo and the scheduler. Requests go into
//! the scheduler's one queue, results come back as verdicts (remembered per drvPath) or
//! as infrastructure trouble (retried elsewhere, counted against the builder, never
//! remembered and never blamed). It knows nothing of candidates or channels: what they
//! wait for is told back to `Core` as `BuildNews`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use super::effects::Effects;
use super::liveness::Deadlines;
use super::scheduler::{Health, Scheduler, StepInfo};
use super::steps::StepGraph;
use super::verify::{self, Verifier};
use super::{next_attempt, BuilderIdentity, Command, CoreConfig, Memo, Millis, Record};
use crate::core::change;
use crate::core::evaluation::Evaluation;
use crate::core::outcome::{BuildReport, OutcomeClass};

/// The longest a quarantined builder waits between probes.
const PROBE_DELAY_MAX_MS: Millis = 600_000;

#[derive(Debug, Default)]
pub(crate) struct Builds {
    /// Every build step, queued or running, and the builders.
    pub(crate) scheduler: Scheduler,
    pub(crate) memo: BTreeMap<String, Memo>,
    /// Evaluations by commit, while a candidate or a channel needs them.
    pub(crate) evals: BTreeMap<String, Arc<Evaluation>>,
    evals_requested: BTreeSet<String>,
    /// Consecutive infrastructure failures per commit being evaluated (for the backoff).
    eval_failures: BTreeMap<String, u32>,
    /// Steps waiting for their inputs to be built as steps of their own.
    pub(crate) steps: StepGraph,
    /// What follows from the last input for other steps (dependents of a failed or
    /// abandoned input), for `Core` to tell after the news of the input itself.
    followups: VecDeque<BuildNews>,
    /// A candidate or a channel test ended: some steps may be wanted by no one now.
    pub(crate) released: bool,
    pub(crate) verifier: Verifier,
    /// When each dispatched build and asked-for evaluation is overdue.
    pub(crate) deadlines: Deadlines,
}

/// What the other machines need to hear after a build input.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum BuildNews {
    Nothing,
    /// The evaluation of a commit arrived.
    Evaluated(Arc<Evaluation>),
    /// `drv` has a remembered result now.
    Verdict(String),
    /// `drv` could not be built on any builder, out of retries: its requesters cannot be
    /// judged now.
    Abandoned {
        drv: String,
        err: String,
    },
    /// A quarantined builder is healthy again: work may be dispatched to it.
    BuilderBack,
}

impl Builds {
    pub(crate) fn new(cfg: &CoreConfig) -> Builds {
        Builds {
            scheduler: Scheduler::new(cfg.builders.clone()),
            ..Builds::default()
        }
    }

    /// A remembered result that has not expired.
    pub(crate) fn known(&self, drv: &str, now: Millis) -> Option<&Memo> {
        self.memo
            .get(drv)
            .filter(|m| m.expires_at.is_none_or(|t| t > now))
    }

    /// Requests a build unless its result is remembered or it is already queued or
    /// running. Returns whether a new step was queued.
    pub(crate) fn request_build(
        &mut self,
        drv: &str,
        prio: u8,
        now: Millis,
        fx: &mut Effects,
    ) -> bool {
        if self.known(drv, now).is_some() {
            return false;
        }
        if !self.scheduler.enqueue(drv, prio) {
            return false;
        }
        fx.push(Command::Inspect {
            drvs: vec![drv.to_string()],
        });
        true
    }

    /// Asks for the evaluation of `commit` unless it is known or already asked for.
    pub(crate) fn request_eval(&mut self, repo: &str, commit: &str, fx: &mut Effects) {
        if !self.evals.contains_key(commit) && self.evals_requested.insert(commit.to_string()) {
            self.deadlines.eval_sent(repo, commit, None);
            fx.push(Command::Evaluate {
                repo: repo.to_string(),
                commit: commit.to_string(),
            });
        }
    }

    pub(crate) fn on_evaluated(&mut self, eval: Arc<Evaluation>) -> BuildNews {
        let commit = eval.commit.clone();
        self.deadlines.eval_answered(&commit);
        self.evals_requested.remove(&commit);
        self.eval_failures.remove(&commit);
        self.evals.insert(commit, eval.clone());
        BuildNews::Evaluated(eval)
    }

    pub(crate) fn on_eval_failed(
        &mut self,
        cfg: &CoreConfig,
        (repo, commit, error): (&str, &str, &str),
        now: Millis,
        fx: &mut Effects,
    ) {
        if self.evals.contains_key(commit) {
            return;
        }
        let n = next_attempt(&mut self.eval_failures, commit.to_string());
        let delay = cfg.backoff(n);
        fx.event(
            now,
            repo,
            format!(
                "evaluation of {} could not run (attempt {n}), retrying in {} s: {error}",
                change::short(commit),
                delay / 1000
            ),
        );
        self.evals_requested.insert(commit.to_string());
        let due = now + delay + cfg.eval_deadline_ms;
        self.deadlines.eval_sent(repo, commit, Some(due));
        fx.later(
            now + delay,
            Command::Evaluate {
                repo: repo.to_string(),
                commit: commit.to_string(),
            },
        );
    }

    pub(crate) fn dispatch(&mut self, cfg: &CoreConfig, now: Millis, fx: &mut Effects) {
        for (drv, builder) in self.scheduler.dispatch(now) {
            let due = now.saturating_add(cfg.build_deadline_ms);
            self.deadlines.build_sent(&drv, &builder, due);
            let system = self
                .scheduler
                .step(&drv)
                .and_then(|s| s.system.as_deref())
                .unwrap_or("")
                .to_string();
            fx.push(Command::Build {
                drv,
                system,
                builder,
            });
        }
    }

    /// `hint` names the system a derivation's job was evaluated for, if any requester
    /// knows it.
    pub(crate) fn on_inspected(
        &mut self,
        cfg: &CoreConfig,
        infos: Vec<(String, Result<StepInfo, String>)>,
        hint: impl Fn(&str) -> Option<String>,
        now: Millis,
        fx: &mut Effects,
    ) {
        for (drv, info) in infos {
            let info = info.unwrap_or_else(|_| {
                // An unreadable .drv (garbage-collected?): dispatch it by the system its job
                // was evaluated for and let the attempt report what is wrong, rather than
                // leave the step waiting forever.
                let system = hint(&drv)
                    .or_else(|| {
                        cfg.builders
                            .first()
                            .and_then(|b| b.systems.iter().next().cloned())
                    })
                    .unwrap_or_else(|| "x86_64-linux".into());
                StepInfo {
                    system,
                    ..StepInfo::default()
                }
            });
            let Some(prio) = self.scheduler.step(&drv).map(|s| s.prio) else {
                continue; // nobody needs it any more
            };
            let mut pending = BTreeSet::new();
            let mut failed_root = None;
            for input in &info.missing {
                match self.known(input, now) {
                    Some(m) if m.ok() => {}
                    Some(m) => {
                        failed_root = Some(root_of(input, m));
                        break;
                    }
                    None => {
                        pending.insert(input.clone());
                    }
                }
            }
            if let Some(root) = failed_root {
                if self.fail_dependent(cfg, &root, &drv, now, fx) {
                    self.followups.push_front(BuildNews::Verdict(drv));
                }
                continue;
            }
            if pending.is_empty() {
                self.make_ready(&drv, info, now, fx);
                continue;
            }
            for input in &pending {
                self.request_build(input, prio, now, fx);
            }
            self.steps.park(&drv, info, pending);
        }
    }

    /// Hands a step whose inputs are all built to the scheduler.
    fn make_ready(&mut self, drv: &str, info: StepInfo, now: Millis, fx: &mut Effects) {
        let what = format!("system {}, features {:?}", info.system, info.features);
        self.scheduler.set_info(drv, info);
        if self.scheduler.unbuildable(drv) {
            fx.event(
                now,
                "",
                format!("no configured builder can build {drv} ({what}); it waits until one is configured"),
            );
        }
    }

    /// Cancels every step outside `wanted` (the derivations candidates and channels wait
    /// for) and the inputs parked steps of `wanted` wait for: queued ones leave, running
    /// ones are stopped on their builders and report `cancelled`.
    pub(crate) fn cancel_unwanted(
        &mut self,
        mut wanted: BTreeSet<String>,
        now: Millis,
        fx: &mut Effects,
    ) {
        let mut todo: Vec<String> = wanted.iter().cloned().collect();
        while let Some(d) = todo.pop() {
            for i in self.steps.pending(&d) {
                if wanted.insert(i.clone()) {
                    todo.push(i.clone());
                }
            }
        }
        let mut unwanted: Vec<String> = self
            .scheduler
            .drvs()
            .filter(|d| !wanted.contains(*d))
            .map(String::from)
            .collect();
        unwanted.sort();
        let mut dropped = 0;
        for drv in unwanted {
            self.steps.forget(&drv);
            if self.scheduler.step(&drv).is_some_and(|s| s.cancelled) {
                continue;
            }
            match self.scheduler.cancel(&drv) {
                Some(builder) => {
                    fx.event(
                        now,
                        "",
                        format!("{drv} on {builder}: cancelled, nobody waits for it any more"),
                    );
                    fx.push(Command::CancelBuild { drv, builder });
                }
                None => dropped += 1,
            }
        }
        if dropped > 0 {
            fx.event(
                now,
                "",
                format!("{dropped} queued build(s) dropped: nobody waits for them any more"),
            );
        }
    }

    /// What follows from the last input for other steps, in order.
    pub(crate) fn take_followups(&mut self) -> Option<BuildNews> {
        self.followups.pop_front()
    }

    /// A verdict for `drv` is remembered: its parked dependents become ready or, when it
    /// did not build, fail as `dependency-failed` naming the root, and so on down.
    fn settle(&mut self, cfg: &CoreConfig, drv: &str, now: Millis, fx: &mut Effects) {
        let mut work = VecDeque::from([drv.to_string()]);
        while let Some(d) = work.pop_front() {
            let Some(m) = self.memo.get(&d) else { continue };
            if m.ok() {
                for (r, info) in self.steps.built(&d) {
                    self.make_ready(&r, info, now, fx);
                }
                continue;
            }
            let root = root_of(&d, m);
            for r in self.steps.lost(&d) {
                if self.fail_dependent_only(cfg, &root, &r, now, fx) {
                    self.followups.push_back(BuildNews::Verdict(r.clone()));
                    work.push_back(r);
                }
            }
        }
    }

    /// `drv` could not be built at all: the parked steps that need it cannot be either.
    fn abandon_dependents(&mut self, drv: &str, err: &str) {
        let mut work = VecDeque::from([(drv.to_string(), err.to_string())]);
        while let Some((d, err)) = work.pop_front() {
            for r in self.steps.lost(&d) {
                self.scheduler.abandon(&r);
                let why = format!("its input {d} could not be built: {err}");
                self.followups.push_back(BuildNews::Abandoned {
                    drv: r.clone(),
                    err: why.clone(),
                });
                work.push_back((r, why));
            }
        }
    }

    pub(crate) fn on_built(
        &mut self,
        cfg: &CoreConfig,
        r: BuildReport,
        now: Millis,
        fx: &mut Effects,
    ) -> BuildNews {
        self.deadlines.build_answered(&r.drv_path, &r.builder);
        let cancelled = self
            .scheduler
            .step(&r.drv_path)
            .is_some_and(|s| s.cancelled);
        // A failure of a step being stopped is not believed: it may be the stop itself.
        if r.class == OutcomeClass::Cancelled || (cancelled && r.class != OutcomeClass::Success) {
            if self.scheduler.stopped(&r.drv_path, &r.builder) {
                fx.event(
                    now,
                    "",
                    format!("{} is wanted again: queued once more", r.drv_path),
                );
            }
            return BuildNews::Nothing;
        }
        if !r.class.is_verdict() {
            return self.on_infrastructure(cfg, r, now, fx);
        }
        let failed_before = self
            .scheduler
            .step(&r.drv_path)
            .map_or(0, |s| s.failed_attempts);
        if r.class == OutcomeClass::Failed && failed_before < cfg.failure_retries {
            // A failure blames a change: make sure it is not a flaky one first. (A stale
            // or duplicate report is not retried and is dropped by `finish` below.)
            if let Some(n) = self.scheduler.retry_failed(&r.drv_path, &r.builder) {
                let tail = r.log_tail.lines().last().unwrap_or("").to_string();
                fx.event(
                    now,
                    "",
                    format!(
                        "{} failed on {} (attempt {n}); building it again before blaming anyone: {tail}",
                        r.drv_path, r.builder
                    ),
                );
                return BuildNews::Nothing;
            }
        }
        // Chosen before the step leaves the scheduler, which knows who could build it.
        let verify_on = (r.class == OutcomeClass::Success)
            .then(|| self.verify_on(cfg, &r.drv_path, &r.builder))
            .flatten();
        if self
            .scheduler
            .finish(&r.drv_path, &r.builder, None, r.duration_ms)
            .is_none()
        {
            return BuildNews::Nothing; // a duplicate or stale report
        }
        if let Some(second) = verify_on {
            self.verifier
                .in_flight
                .insert(r.drv_path.clone(), r.builder.clone());
            fx.push(Command::Verify {
                drv: r.drv_path.clone(),
                first: r.builder.clone(),
                builder: second,
            });
        }
        if r.class == OutcomeClass::Success && failed_before > 0 {
            fx.event(
                now,
                "",
                format!(
                    "{} failed {failed_before} time(s) and then built unchanged: flaky",
                    r.drv_path
                ),
            );
        } else if r.class == OutcomeClass::Success
            && self.memo.get(&r.drv_path).is_some_and(|m| !m.ok())
        {
            fx.event(
                now,
                "",
                format!(
                    "{} failed before and now built unchanged: flaky",
                    r.drv_path
                ),
            );
        }
        if matches!(
            r.class,
            OutcomeClass::Failed | OutcomeClass::DependencyFailed | OutcomeClass::TimedOut
        ) {
            // Everything queued that depends on the failed derivation fails too: find it.
            let root = r.root_drv.clone().unwrap_or_else(|| r.drv_path.clone());
            fx.push(Command::QueryReferrers { root });
        }
        let drv = r.drv_path.clone();
        self.remember(cfg, &drv, r.class, r.log_tail, r.root_drv, now, fx);
        self.settle(cfg, &drv, now, fx);
        BuildNews::Verdict(drv)
    }

    fn on_infrastructure(
        &mut self,
        cfg: &CoreConfig,
        r: BuildReport,
        now: Millis,
        fx: &mut Effects,
    ) -> BuildNews {
        let attempts = self
            .scheduler
            .step(&r.drv_path)
            .map_or(0, |s| s.infra_attempts);
        let delay = cfg
            .retry_delay_ms
            .saturating_mul(1 << attempts.min(6))
            .min(300_000);
        let err = r.log_tail.lines().last().unwrap_or("").to_string();
        if self.scheduler.running_on(&r.drv_path) != Some(r.builder.as_str()) {
            return BuildNews::Nothing;
        }
        self.scheduler.finish(
            &r.drv_path,
            &r.builder,
            Some((err.clone(), now + delay)),
            r.duration_ms,
        );
        fx.wake(now + delay);
        fx.event(
            now,
            "",
            format!(
                "{} on {}: infrastructure failure, retrying elsewhere in {} s: {err}",
                r.drv_path,
                r.builder,
                delay / 1000
            ),
        );
        let (after, probe) = (cfg.quarantine_after, cfg.probe_delay_ms);
        if let Some(b) = self.scheduler.builder_mut(&r.builder) {
            if b.consecutive_infra >= after && matches!(b.health, Health::Up | Health::Unknown) {
                b.health = Health::Quarantined { until: now + probe };
                let id = b.spec.id.clone();
                fx.event(
                    now,
                    "",
                    format!(
                        "builder {id} quarantined after {after} infrastructure failures in a row"
                    ),
                );
                fx.later(now + probe, Command::ProbeBuilder { builder: id });
            }
        }
        if attempts + 1 > cfg.infra_retries {
            // Out of retries: the step leaves the queue; its requesters are told.
            self.scheduler.abandon(&r.drv_path);
            self.abandon_dependents(&r.drv_path, &err);
            return BuildNews::Abandoned {
                drv: r.drv_path,
                err,
            };
        }
        BuildNews::Nothing
    }

    /// The second builder a successful build of `drv` on `first` is verified on, when it is
    /// in the `[verify]` sample and another builder can take it.
    fn verify_on(&self, cfg: &CoreConfig, drv: &str, first: &str) -> Option<String> {
        let policy = cfg.verify.as_ref()?;
        if !verify::sampled(drv, policy.per_million) || self.verifier.in_flight.contains_key(drv) {
            return None;
        }
        verify::second_builder(self.scheduler.able(drv), self.scheduler.builder(first))
    }

    /// A verified build's comparison: recorded; a mismatch lowers both builders' trust
    /// unless the derivation is known to be non-deterministic. Never a verdict.
    pub(crate) fn on_verified(
        &mut self,
        cfg: &CoreConfig,
        (drv, first, second): (&str, &str, &str),
        result: Result<[String; 2], String>,
        now: Millis,
        fx: &mut Effects,
    ) {
        if self.verifier.in_flight.remove(drv).is_none() {
            return; // a duplicate, or from before a restart
        }
        let hashes = match result {
            Ok(h) => h,
            Err(e) => {
                fx.event(
                    now,
                    "",
                    format!("verification of {drv} on {second} could not run: {e}"),
                );
                return;
            }
        };
        let policy = cfg.verify.clone().unwrap_or_default();
        let builders = [first.to_string(), second.to_string()];
        let v = self.verifier.judge(&policy, drv, builders, hashes, now);
        if !v.matched && !v.nondeterministic {
            for b in [first, second] {
                if let Some(b) = self.scheduler.builder_mut(b) {
                    b.mismatches += 1;
                }
            }
        }
        let what = match (v.matched, v.nondeterministic) {
            (true, _) => "outputs identical".to_string(),
            (false, true) => {
                "outputs differ; the derivation is known to be non-deterministic".into()
            }
            (false, false) => format!(
                "OUTPUTS DIFFER ({} vs {}); both builders' trust is lowered",
                v.nar_hashes[0], v.nar_hashes[1]
            ),
        };
        fx.event(
            now,
            "",
            format!("verified {drv} on {first} and {second}: {what}"),
        );
        fx.record(Record::Verification(v));
    }

    /// Remembers a verdict and persists it.
    #[allow(clippy::too_many_arguments)]
    fn remember(
        &mut self,
        cfg: &CoreConfig,
        drv: &str,
        class: OutcomeClass,
        log_tail: String,
        root_drv: Option<String>,
        now: Millis,
        fx: &mut Effects,
    ) {
        let expires_at = (class != OutcomeClass::Success).then(|| now + cfg.failure_ttl_ms);
        let memo = Memo {
            class,
            log_tail,
            root_drv,
            expires_at,
        };
        self.memo.insert(drv.to_string(), memo.clone());
        fx.record(Record::Memo {
            drv: drv.to_string(),
            memo,
        });
        if class == OutcomeClass::Success && cfg.cache == Some(super::CacheUpload::All) {
            fx.push(Command::Upload {
                drvs: vec![drv.to_string()],
                why: "built".into(),
            });
        }
    }

    /// A queued step that depends on the failed `root` is dependency-failed at once,
    /// naming the root, without being built. Returns whether `drv` got a verdict (it was
    /// queued); `Core` then tells those waiting, before the next one, as for a build.
    pub(crate) fn fail_dependent(
        &mut self,
        cfg: &CoreConfig,
        root: &str,
        drv: &str,
        now: Millis,
        fx: &mut Effects,
    ) -> bool {
        let failed = self.fail_dependent_only(cfg, root, drv, now, fx);
        if failed {
            self.settle(cfg, drv, now, fx);
        }
        failed
    }

    /// [`Builds::fail_dependent`] without telling `drv`'s own parked dependents.
    fn fail_dependent_only(
        &mut self,
        cfg: &CoreConfig,
        root: &str,
        drv: &str,
        now: Millis,
        fx: &mut Effects,
    ) -> bool {
        if drv == root || !self.scheduler.remove(drv) {
            return false;
        }
        self.steps.forget(drv);
        // The root's own log tail: the reason a person reads is the root cause's output.
        let tail = match self.memo.get(root) {
            Some(m) if !m.log_tail.is_empty() => {
                format!("not built: its dependency {root} failed:\n{}", m.log_tail)
            }
            _ => format!("not built: its dependency {root} failed"),
        };
        self.remember(
            cfg,
            drv,
            OutcomeClass::DependencyFailed,
            tail,
            Some(root.to_string()),
            now,
            fx,
        );
        true
    }

    pub(crate) fn on_builder_probed(
        &mut self,
        cfg: &CoreConfig,
        builder: &str,
        result: Result<BuilderIdentity, String>,
        now: Millis,
        fx: &mut Effects,
    ) -> BuildNews {
        let probe = cfg.probe_delay_ms;
        let Some(b) = self.scheduler.builder_mut(builder) else {
            return BuildNews::Nothing;
        };
        match result {
            Ok(id) => {
                b.implementation = Some(id.implementation);
                b.version = Some(id.version);
                let was_quarantined = matches!(b.health, Health::Quarantined { .. });
                if was_quarantined || b.health == Health::Unknown {
                    b.health = Health::Up;
                    b.consecutive_infra = 0;
                }
                if was_quarantined {
                    fx.event(now, "", format!("builder {builder} is healthy again"));
                    return BuildNews::BuilderBack;
                }
            }
            Err(e) => {
                b.last_error = Some(e.clone());
                let wait = match b.health {
                    Health::Quarantined { until } => {
                        ((until - now).max(probe) * 2).min(PROBE_DELAY_MAX_MS)
                    }
                    _ => probe,
                };
                if b.health != Health::Draining {
                    b.health = Health::Quarantined { until: now + wait };
                }
                fx.event(
                    now,
                    "",
                    format!(
                        "builder {builder} unreachable, probing again in {} s: {e}",
                        wait / 1000
                    ),
                );
                fx.later(
                    now + wait,
                    Command::ProbeBuilder {
                        builder: builder.to_string(),
                    },
                );
            }
        }
        BuildNews::Nothing
    }

    /// Takes a builder out of service (running builds finish) or puts it back.
    pub(crate) fn drain(
        &mut self,
        builder: &str,
        drained: bool,
        now: Millis,
        fx: &mut Effects,
    ) -> bool {
        let Some(b) = self.scheduler.builder_mut(builder) else {
            return false;
        };
        b.health = if drained {
            Health::Draining
        } else {
            Health::Unknown
        };
        fx.record(Record::BuilderDrained {
            builder: builder.to_string(),
            drained,
        });
        if !drained {
            fx.push(Command::ProbeBuilder {
                builder: builder.to_string(),
            });
        }
        let what = if drained {
            "drained"
        } else {
            "returned to service"
        };
        fx.event(now, "", format!("builder {builder} {what}"));
        true
    }

    /// Makes a remembered failure of `drv` expire now, so that it is built again.
    pub(crate) fn forget_failure(&mut self, drv: &str, now: Millis, fx: &mut Effects) {
        let Some(m) = self.memo.get_mut(drv).filter(|m| !m.ok()) else {
            return;
        };
        if m.expires_at.is_some_and(|t| t <= now) {
            return;
        }
        m.expires_at = Some(now);
        fx.record(Record::Memo {
            drv: drv.to_string(),
            memo: m.clone(),
        });
    }

    /// Evaluations only live in memory while someone needs them.
    pub(crate) fn keep_evals(&mut self, keep: &BTreeSet<String>) {
        self.evals.retain(|k, _| keep.contains(k));
    }
}

/// The derivation a failure of `drv` comes down to: its own, or its root's.
fn root_of(drv: &str, m: &Memo) -> String {
    match (&m.class, &m.root_drv) {
        (OutcomeClass::DependencyFailed, Some(root)) => root.clone(),
        _ => drv.to_string(),
    }
}

#[cfg(test)]
mod tests;
