//! The builds machine: evaluations, the build memo and the scheduler. Requests go into
//! the scheduler's one queue, results come back as verdicts (remembered per drvPath) or
//! as infrastructure trouble (retried elsewhere, counted against the builder, never
//! remembered and never blamed). It knows nothing of candidates or channels: what they
//! wait for is told back to `Core` as `BuildNews`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::effects::Effects;
use super::scheduler::{Health, Scheduler, StepInfo};
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
            fx.push(Command::Evaluate {
                repo: repo.to_string(),
                commit: commit.to_string(),
            });
        }
    }

    pub(crate) fn on_evaluated(&mut self, eval: Arc<Evaluation>) -> BuildNews {
        let commit = eval.commit.clone();
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
        fx.later(
            now + delay,
            Command::Evaluate {
                repo: repo.to_string(),
                commit: commit.to_string(),
            },
        );
    }

    pub(crate) fn dispatch(&mut self, now: Millis, fx: &mut Effects) {
        for (drv, builder) in self.scheduler.dispatch(now) {
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
            let what = format!("system {}, features {:?}", info.system, info.features);
            self.scheduler.set_info(&drv, info);
            if self.scheduler.unbuildable(&drv) {
                fx.event(now, "", format!("no configured builder can build {drv} ({what}); it waits until one is configured"));
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
        if self
            .scheduler
            .finish(&r.drv_path, &r.builder, None, r.duration_ms)
            .is_none()
        {
            return BuildNews::Nothing; // a duplicate or stale report
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
            return BuildNews::Abandoned {
                drv: r.drv_path,
                err,
            };
        }
        BuildNews::Nothing
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
        if drv == root || !self.scheduler.remove(drv) {
            return false;
        }
        let tail = format!("not built: its dependency {root} failed");
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::scheduler::BuilderSpec;

    fn cfg() -> CoreConfig {
        CoreConfig {
            builders: vec![BuilderSpec {
                id: "b1".into(),
                systems: ["x86_64-linux".to_string()].into(),
                supported: Default::default(),
                mandatory: Default::default(),
                max_jobs: 4,
                speed: 1.0,
            }],
            infra_retries: 2,
            failure_retries: 1,
            ..CoreConfig::default()
        }
    }

    fn report(drv: &str, class: OutcomeClass) -> BuildReport {
        BuildReport {
            drv_path: drv.into(),
            class,
            log_tail: format!("{drv}: {}", class.as_str()),
            root_drv: None,
            builder: "b1".into(),
            duration_ms: 10,
            log_path: None,
        }
    }

    /// Queues `drv`, learns its system and dispatches it; returns the builds sent.
    fn start(b: &mut Builds, c: &CoreConfig, drv: &str, fx: &mut Effects) -> usize {
        b.request_build(drv, 2, 0, fx);
        let info = StepInfo {
            system: "x86_64-linux".into(),
            ..StepInfo::default()
        };
        b.on_inspected(c, vec![(drv.into(), Ok(info))], |_| None, 0, fx);
        b.dispatch(0, fx);
        fx.take()
            .iter()
            .filter(|c| matches!(c, Command::Build { .. }))
            .count()
    }

    #[test]
    fn a_remembered_or_queued_build_is_not_requested_again() {
        let c = cfg();
        let mut b = Builds::new(&c);
        let mut fx = Effects::default();
        assert!(b.request_build("/a.drv", 2, 0, &mut fx));
        assert!(!b.request_build("/a.drv", 2, 0, &mut fx));
        assert_eq!(start(&mut b, &c, "/a.drv", &mut fx), 1);
        let news = b.on_built(&c, report("/a.drv", OutcomeClass::Success), 5, &mut fx);
        assert_eq!(news, BuildNews::Verdict("/a.drv".into()));
        assert!(!b.request_build("/a.drv", 2, 6, &mut fx));
    }

    #[test]
    fn a_failure_is_built_again_before_it_is_believed_and_then_expires() {
        let c = cfg();
        let mut b = Builds::new(&c);
        let mut fx = Effects::default();
        start(&mut b, &c, "/f.drv", &mut fx);
        let first = b.on_built(&c, report("/f.drv", OutcomeClass::Failed), 1, &mut fx);
        assert_eq!(first, BuildNews::Nothing, "one retry before blaming");
        assert!(b.known("/f.drv", 1).is_none());
        b.dispatch(1, &mut fx);
        let second = b.on_built(&c, report("/f.drv", OutcomeClass::Failed), 2, &mut fx);
        assert_eq!(second, BuildNews::Verdict("/f.drv".into()));
        assert!(b.known("/f.drv", 2).is_some_and(|m| !m.ok()));
        assert!(
            b.known("/f.drv", 2 + c.failure_ttl_ms).is_none(),
            "failures expire"
        );
    }

    #[test]
    fn infrastructure_trouble_is_never_remembered_and_gives_up_after_the_retries() {
        let c = cfg();
        let mut b = Builds::new(&c);
        let mut fx = Effects::default();
        start(&mut b, &c, "/i.drv", &mut fx);
        let mut now = 0;
        let mut last = BuildNews::Nothing;
        for _ in 0..=c.infra_retries {
            last = b.on_built(
                &c,
                report("/i.drv", OutcomeClass::Infrastructure),
                now,
                &mut fx,
            );
            assert!(b.known("/i.drv", now).is_none());
            now += 3_600_000;
            b.dispatch(now, &mut fx);
        }
        assert!(matches!(last, BuildNews::Abandoned { ref drv, .. } if drv == "/i.drv"));
    }

    #[test]
    fn only_queued_dependents_of_a_failure_fail_without_a_build() {
        let c = cfg();
        let mut b = Builds::new(&c);
        let mut fx = Effects::default();
        b.request_build("/dep.drv", 2, 0, &mut fx);
        assert!(!b.fail_dependent(&c, "/root.drv", "/root.drv", 0, &mut fx));
        assert!(!b.fail_dependent(&c, "/root.drv", "/other.drv", 0, &mut fx));
        assert!(b.fail_dependent(&c, "/root.drv", "/dep.drv", 0, &mut fx));
        let m = b.known("/dep.drv", 0).expect("remembered");
        assert_eq!(m.class, OutcomeClass::DependencyFailed);
        assert_eq!(m.root_drv.as_deref(), Some("/root.drv"));
    }

    #[test]
    fn an_evaluation_that_could_not_run_is_asked_for_again_later() {
        let c = cfg();
        let mut b = Builds::new(&c);
        let mut fx = Effects::default();
        b.request_eval("r", "abc", &mut fx);
        b.request_eval("r", "abc", &mut fx);
        assert_eq!(fx.take().len(), 1, "one request per commit");
        b.on_eval_failed(&c, ("r", "abc", "disk full"), 0, &mut fx);
        assert_eq!(fx.next_due(), Some(c.backoff(1)));
        fx.fire(c.backoff(1));
        assert!(fx
            .take()
            .iter()
            .any(|x| matches!(x, Command::Evaluate { commit, .. } if commit == "abc")));
    }
}
