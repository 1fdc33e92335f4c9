//! Builds as the core sees them: requests go into the scheduler's one queue, results
//! come back as verdicts (remembered per drvPath) or as infrastructure trouble (retried
//! elsewhere, counted against the builder, never remembered and never blamed).

use super::scheduler::{Health, StepInfo};
use super::{BuilderIdentity, CandId, Command, Core, Memo, Millis, Record};
use crate::core::outcome::{BuildReport, OutcomeClass};

/// The longest a quarantined builder waits between probes.
const PROBE_DELAY_MAX_MS: Millis = 600_000;

impl Core {
    /// Requests a build unless its result is remembered or it is already queued or
    /// running. Returns whether a new step was queued.
    pub(crate) fn request_build(&mut self, drv: &str, prio: u8, now: Millis) -> bool {
        if self.known(drv, now).is_some() {
            return false;
        }
        if !self.scheduler.enqueue(drv, prio) {
            return false;
        }
        self.out.push(Command::Inspect {
            drvs: vec![drv.to_string()],
        });
        true
    }

    pub(crate) fn dispatch_builds(&mut self, now: Millis) {
        for (drv, builder) in self.scheduler.dispatch(now) {
            let system = self
                .scheduler
                .step(&drv)
                .and_then(|s| s.system.as_deref())
                .unwrap_or("")
                .to_string();
            self.out.push(Command::Build {
                drv,
                system,
                builder,
            });
        }
    }

    pub(crate) fn on_inspected(
        &mut self,
        infos: Vec<(String, Result<StepInfo, String>)>,
        now: Millis,
    ) {
        for (drv, info) in infos {
            let info = info.unwrap_or_else(|_| {
                // An unreadable .drv (garbage-collected?): dispatch it by the system its job
                // was evaluated for and let the attempt report what is wrong, rather than
                // leave the step waiting forever.
                StepInfo {
                    system: self.system_hint(&drv),
                    ..StepInfo::default()
                }
            });
            let what = format!("system {}, features {:?}", info.system, info.features);
            self.scheduler.set_info(&drv, info);
            if self.scheduler.unbuildable(&drv) {
                self.event(now, "", format!("no configured builder can build {drv} ({what}); it waits until one is configured"));
            }
        }
    }

    /// The system a derivation's job was evaluated for.
    fn system_hint(&self, drv: &str) -> String {
        self.candidates
            .values()
            .flat_map(|c| c.targets.iter())
            .find(|t| t.drv == drv || t.base_drv.as_deref() == Some(drv))
            .map(|t| t.key.system.clone())
            .or_else(|| {
                self.cfg()
                    .builders
                    .first()
                    .and_then(|b| b.systems.iter().next().cloned())
            })
            .unwrap_or_else(|| "x86_64-linux".into())
    }

    pub(crate) fn on_built(&mut self, r: BuildReport, now: Millis) {
        if !r.class.is_verdict() {
            self.on_infrastructure(r, now);
            return;
        }
        let failed_before = self
            .scheduler
            .step(&r.drv_path)
            .map_or(0, |s| s.failed_attempts);
        if r.class == OutcomeClass::Failed && failed_before < self.cfg().failure_retries {
            // A failure blames a change: make sure it is not a flaky one first. (A stale
            // or duplicate report is not retried and is dropped by `finish` below.)
            if let Some(n) = self.scheduler.retry_failed(&r.drv_path, &r.builder) {
                let tail = r.log_tail.lines().last().unwrap_or("").to_string();
                self.event(
                    now,
                    "",
                    format!(
                        "{} failed on {} (attempt {n}); building it again before blaming anyone: {tail}",
                        r.drv_path, r.builder
                    ),
                );
                return;
            }
        }
        if self
            .scheduler
            .finish(&r.drv_path, &r.builder, None, r.duration_ms)
            .is_none()
        {
            return; // a duplicate or stale report
        }
        if r.class == OutcomeClass::Success && failed_before > 0 {
            self.event(
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
            self.event(
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
            self.out.push(Command::QueryReferrers { root });
        }
        self.record_verdict(&r.drv_path, r.class, r.log_tail, r.root_drv, now);
    }

    fn on_infrastructure(&mut self, r: BuildReport, now: Millis) {
        let attempts = self
            .scheduler
            .step(&r.drv_path)
            .map_or(0, |s| s.infra_attempts);
        let delay = self
            .cfg()
            .retry_delay_ms
            .saturating_mul(1 << attempts.min(6))
            .min(300_000);
        let err = r.log_tail.lines().last().unwrap_or("").to_string();
        if self.scheduler.running_on(&r.drv_path) != Some(r.builder.as_str()) {
            return;
        }
        self.scheduler.finish(
            &r.drv_path,
            &r.builder,
            Some((err.clone(), now + delay)),
            r.duration_ms,
        );
        self.wakes.insert(now + delay);
        self.event(
            now,
            "",
            format!(
                "{} on {}: infrastructure failure, retrying elsewhere in {} s: {err}",
                r.drv_path,
                r.builder,
                delay / 1000
            ),
        );
        let (after, probe) = (self.cfg().quarantine_after, self.cfg().probe_delay_ms);
        if let Some(b) = self.scheduler.builder_mut(&r.builder) {
            if b.consecutive_infra >= after && matches!(b.health, Health::Up | Health::Unknown) {
                b.health = Health::Quarantined { until: now + probe };
                let id = b.spec.id.clone();
                self.event(
                    now,
                    "",
                    format!(
                        "builder {id} quarantined after {after} infrastructure failures in a row"
                    ),
                );
                self.later(now + probe, Command::ProbeBuilder { builder: id });
            }
        }
        if attempts + 1 > self.cfg().infra_retries {
            // Out of retries: the requesters cannot be judged now. Their changes go back to
            // the queue (never blamed); the step leaves the queue.
            self.scheduler.abandon(&r.drv_path);
            let waiting: Vec<CandId> = self
                .candidates
                .values()
                .filter(|c| c.waits_for(&r.drv_path))
                .map(|c| c.id)
                .collect();
            for id in waiting {
                self.abandon(
                    id,
                    now,
                    &format!("{} could not be built on any builder: {err}", r.drv_path),
                );
            }
            self.channels_build_abandoned(&r.drv_path, &err, now);
        }
    }

    pub(crate) fn record_verdict(
        &mut self,
        drv: &str,
        class: OutcomeClass,
        log_tail: String,
        root_drv: Option<String>,
        now: Millis,
    ) {
        let expires_at = (class != OutcomeClass::Success).then(|| now + self.cfg().failure_ttl_ms);
        let memo = Memo {
            class,
            log_tail,
            root_drv,
            expires_at,
        };
        self.memo.insert(drv.to_string(), memo.clone());
        self.out.push(Command::Record(Record::Memo {
            drv: drv.to_string(),
            memo,
        }));
        let waiting: Vec<CandId> = self
            .candidates
            .values()
            .filter(|c| c.waits_for(drv))
            .map(|c| c.id)
            .collect();
        for id in waiting {
            self.on_build_done(id, drv, now);
        }
        self.channels_built(drv, now);
    }

    /// Queued steps that depend on a failed derivation are dependency-failed at once,
    /// naming the root, without being built.
    pub(crate) fn on_referrers(&mut self, root: &str, drvs: Vec<String>, now: Millis) {
        for d in drvs {
            if d == root || !self.scheduler.remove(&d) {
                continue;
            }
            let tail = format!("not built: its dependency {root} failed");
            self.record_verdict(
                &d,
                OutcomeClass::DependencyFailed,
                tail,
                Some(root.to_string()),
                now,
            );
        }
    }

    pub(crate) fn on_builder_probed(
        &mut self,
        builder: &str,
        result: Result<BuilderIdentity, String>,
        now: Millis,
    ) {
        let probe = self.cfg().probe_delay_ms;
        let Some(b) = self.scheduler.builder_mut(builder) else {
            return;
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
                    self.event(now, "", format!("builder {builder} is healthy again"));
                    self.tick(now);
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
                self.event(
                    now,
                    "",
                    format!(
                        "builder {builder} unreachable, probing again in {} s: {e}",
                        wait / 1000
                    ),
                );
                self.later(
                    now + wait,
                    Command::ProbeBuilder {
                        builder: builder.to_string(),
                    },
                );
            }
        }
    }

    /// Takes a builder out of service (running builds finish) or puts it back.
    pub fn drain(&mut self, builder: &str, drained: bool, now: Millis) -> bool {
        let Some(b) = self.scheduler.builder_mut(builder) else {
            return false;
        };
        b.health = if drained {
            Health::Draining
        } else {
            Health::Unknown
        };
        self.out.push(Command::Record(Record::BuilderDrained {
            builder: builder.to_string(),
            drained,
        }));
        if !drained {
            self.out.push(Command::ProbeBuilder {
                builder: builder.to_string(),
            });
        }
        self.event(
            now,
            "",
            format!(
                "builder {builder} {}",
                if drained {
                    "drained"
                } else {
                    "returned to service"
                }
            ),
        );
        self.tick(now);
        true
    }

    /// Restores an operator's drain after a restart (no record: it is already stored).
    pub fn set_drained(&mut self, builder: &str) {
        if let Some(b) = self.scheduler.builder_mut(builder) {
            b.health = Health::Draining;
        }
    }

    pub fn scheduler(&self) -> &super::scheduler::Scheduler {
        &self.scheduler
    }

    /// Priority class of a candidate's builds: its most urgent change's.
    pub(crate) fn cand_prio(&self, id: CandId) -> u8 {
        self.candidates
            .get(&id)
            .and_then(|c| {
                let lane = self.cfg().repos.get(&c.repo)?.lanes.get(&c.branch)?;
                if let Some(p) = lane.build_priority {
                    return Some(p as u8);
                }
                c.changes
                    .iter()
                    .filter_map(|x| self.changes.get(x))
                    .map(|x| x.priority as u8)
                    .min()
            })
            .unwrap_or(2)
    }
}
