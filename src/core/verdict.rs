//! The candidates machine's verdict: once the base's and the candidate's evaluations
//! are known, the rebuild set plus the required jobs are built and judged. A failing job
//! whose base version was never built gets that version built first, so failures that
//! already exist on the base never block.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::blocker::Blocker;
use super::candidate::{Candidates, Ctx, Phase, Target};
use super::{CandId, Memo, Millis};
use crate::core::change::{short, Stage};
use crate::core::evaluation::{diff, EvalOutcome, Evaluation, JobKey, JobResult};

impl Candidates {
    /// Once both evaluations are known: diff them and build the rebuild set plus the
    /// required jobs.
    pub(crate) fn advance_eval(&mut self, cx: &mut Ctx, id: CandId, now: Millis) {
        let cand = &self.by_id[&id];
        let (Some(base), Some(commit)) = (cand.base.as_deref(), cand.commit()) else {
            return;
        };
        let (Some(base_eval), Some(new_eval)) = (
            cx.builds.evals.get(base).cloned(),
            cx.builds.evals.get(commit).cloned(),
        ) else {
            return;
        };
        if let EvalOutcome::Failed(msg) = &new_eval.outcome {
            self.attribute(
                cx,
                id,
                vec![Blocker::WholeEval {
                    message: msg.clone(),
                }],
                now,
            );
            return;
        }
        let base_eval = if base_eval.failed() {
            Arc::new(Evaluation::new(base.to_string(), EvalOutcome::Ok, vec![]))
        } else {
            base_eval
        };
        let d = diff(&base_eval, &new_eval);
        let mut rebuilds: std::collections::BTreeMap<String, usize> = Default::default();
        for k in d.rebuild_set() {
            *rebuilds.entry(k.system.clone()).or_default() += 1;
        }
        if self.route_by_rebuilds(cx, id, &rebuilds, now) {
            return;
        }
        let cand = &self.by_id[&id];
        let mut keys: BTreeSet<JobKey> = d.rebuild_set().cloned().collect();
        let mut blockers: Vec<Blocker> = d
            .failing
            .iter()
            .map(|k| Blocker::EvalError {
                key: k.clone(),
                message: error_of(&new_eval, k),
            })
            .collect();
        let required = cx.cfg.repos[&cand.repo].lanes[&cand.branch]
            .required
            .clone();
        for attr in &required {
            let jobs: Vec<_> = new_eval.by_attr(attr).collect();
            if jobs.is_empty() {
                blockers.push(Blocker::Missing { attr: attr.clone() });
            }
            for (k, r) in jobs {
                match r {
                    JobResult::Ok(_) => {
                        keys.insert(k.clone());
                    }
                    JobResult::Error(m) if !blockers.iter().any(|b| b.key() == Some(k)) => blockers
                        .push(Blocker::EvalError {
                            key: k.clone(),
                            message: m.clone(),
                        }),
                    JobResult::Error(_) => {}
                }
            }
        }
        let targets: Vec<Target> = keys
            .into_iter()
            .filter_map(|key| {
                let drv = new_eval.get(&key)?.job()?.drv_path.clone();
                let base_drv = base_eval
                    .get(&key)
                    .and_then(|r| r.job())
                    .map(|j| j.drv_path.clone());
                Some(Target { key, drv, base_drv })
            })
            .collect();
        // A held change past its grace period may fail to evaluate these: the verdict
        // marks them broken (`judge`) instead of failing on them.
        let decisive = blockers
            .iter()
            .any(|b| b.key().is_none_or(|k| !self.permitted(cx, id, k, now)));
        if decisive {
            // Fail fast: an evaluation error already decides the verdict. Find its cause
            // now; the follow-up candidate builds what the innocent changes need.
            let cand = self.by_id.get_mut(&id).expect("active");
            cand.targets = targets;
            cand.eval_blockers = blockers.clone();
            self.attribute(cx, id, blockers, now);
            return;
        }
        let pending = self.build_unknown(cx, id, &targets, now);
        let repo = self.by_id[&id].repo.clone();
        cx.fx.event(
            now,
            &repo,
            format!(
                "candidate {id}: {} jobs to check ({} added, {} changed, {} newly failing to evaluate); {} builds, {} remembered",
                targets.len(),
                d.added.len(),
                d.changed.len(),
                d.failing.len(),
                pending.len(),
                targets.len() - pending.len()
            ),
        );
        let cand = self.by_id.get_mut(&id).expect("active");
        cand.targets = targets;
        cand.pending = pending;
        cand.eval_blockers = blockers;
        cand.phase = Phase::Building;
        self.save_id(cx, id);
        if self.by_id[&id].pending.is_empty() {
            self.judge(cx, id, now);
        }
    }

    /// Requests a build of every target without a remembered result, counted as the
    /// candidate's own; returns the derivations the verdict now waits for.
    pub(crate) fn build_unknown(
        &mut self,
        cx: &mut Ctx,
        id: CandId,
        targets: &[Target],
        now: Millis,
    ) -> BTreeSet<String> {
        let prio = self.cand_prio(cx, id);
        let mut pending = BTreeSet::new();
        let mut dispatched = vec![];
        for t in targets {
            if cx.builds.known(&t.drv, now).is_none() {
                pending.insert(t.drv.clone());
                if cx.request_build(&t.drv, prio, now) {
                    dispatched.push(t.drv.clone());
                }
            }
        }
        self.count_builds(id, &dispatched);
        pending
    }

    /// Counts the builds a candidate dispatched for its own verdict.
    pub(crate) fn count_builds(&mut self, id: CandId, drvs: &[impl AsRef<str>]) {
        let cand = self.by_id.get_mut(&id).expect("known");
        cand.builds += drvs.len() as u32;
    }

    pub(crate) fn on_build_done(&mut self, cx: &mut Ctx, id: CandId, drv: &str, now: Millis) {
        let cand = self.by_id.get_mut(&id).expect("known");
        cand.last_build_at = Some(now);
        let removed = cand.pending.remove(drv);
        if removed && cand.pending.is_empty() && cand.phase == Phase::Building {
            self.judge(cx, id, now);
        } else if removed && cand.phase == Phase::Building {
            // Fail fast: a job that builds on the base (or is new) failed on the candidate;
            // the verdict is decided, so attribute now instead of waiting for the rest
            // (they keep building and are remembered for the follow-up candidate).
            // Only a failure can decide it early: look at its own target first (a scan
            // of every target per finished build would be quadratic in a mass rebuild).
            if self.blocks(cx, id, drv, now) {
                let blockers = self.known_blockers(cx, id, now);
                self.attribute(cx, id, blockers, now);
            }
        } else if cand.phase == Phase::Attributing {
            self.attribution_build_done(cx, id, drv, now);
        }
    }

    /// Whether `drv` just failed as a target that builds on the base (or is new).
    fn blocks(&self, cx: &Ctx, id: CandId, drv: &str, now: Millis) -> bool {
        if cx.builds.known(drv, now).is_none_or(|m| m.ok()) {
            return false;
        }
        self.by_id[&id]
            .targets
            .iter()
            .any(|t| t.drv == drv && self.certain_blocker(cx, id, t, now).is_some())
    }

    /// The remembered failure of a target whose base version builds or does not exist.
    fn certain_blocker<'c>(
        &self,
        cx: &'c Ctx,
        id: CandId,
        t: &Target,
        now: Millis,
    ) -> Option<&'c Memo> {
        if self.by_id[&id].preexisting.contains(&t.key) || self.permitted(cx, id, &t.key, now) {
            return None;
        }
        let m = cx.builds.known(&t.drv, now).filter(|m| !m.ok())?;
        let base_ok = match &t.base_drv {
            None => true,
            Some(b) if b == &t.drv => false,
            Some(b) => cx.builds.known(b, now).is_some_and(|bm| bm.ok()),
        };
        base_ok.then_some(m)
    }

    /// Blockers already certain from remembered results: targets that failed while
    /// their base version builds or does not exist.
    fn known_blockers(&self, cx: &Ctx, id: CandId, now: Millis) -> Vec<Blocker> {
        let cand = &self.by_id[&id];
        cand.targets
            .iter()
            .filter_map(|t| {
                let m = self.certain_blocker(cx, id, t, now)?;
                Some(build_blocker(t, m))
            })
            .collect()
    }

    /// The verdict: every required job builds and no job that builds on the base fails
    /// on the candidate. A failing job whose base version was never built gets that
    /// base version built first, so pre-existing failures never block.
    pub(crate) fn judge(&mut self, cx: &mut Ctx, id: CandId, now: Millis) {
        let targets = self.by_id[&id].targets.clone();
        let pre = self.by_id[&id].preexisting.clone();
        let repo = self.by_id[&id].repo.clone();
        let mut marks = vec![];
        let mut blockers: Vec<Blocker> = vec![];
        for b in self.by_id[&id].eval_blockers.clone() {
            match &b {
                Blocker::EvalError { key, message } if self.permitted(cx, id, key, now) => {
                    marks.push(self.mark_eval(cx, id, key, message));
                }
                b if b.key().is_some_and(|k| pre.contains(k)) => {}
                b => blockers.push(b.clone()),
            }
        }
        let mut pending = BTreeSet::new();
        let mut dispatched: Vec<String> = vec![];
        let mut preexisting = 0;
        let prio = self.cand_prio(cx, id);
        for t in &targets {
            let Some(m) = cx.builds.known(&t.drv, now).cloned() else {
                // Expired while we waited: build again.
                pending.insert(t.drv.clone());
                if cx.request_build(&t.drv, prio, now) {
                    dispatched.push(t.drv.clone());
                }
                continue;
            };
            if m.ok() {
                continue;
            }
            if self.permitted(cx, id, &t.key, now) {
                // A held change's grace period is over: it lands with this job broken.
                marks.push(self.mark(cx, id, t, &m));
                continue;
            }
            if self.requires(cx, id, &t.key.attr) {
                // A required job must build, whatever the base does; attribution tells
                // whether the batch broke it or the target did (then the lane waits).
                blockers.push(build_blocker(t, &m));
                continue;
            }
            let base_fails = match &t.base_drv {
                // In the broken registry: broken on the target already, it blocks no one.
                _ if pre.contains(&t.key)
                    || cx
                        .broken
                        .get(&repo, &t.key)
                        .is_some_and(|j| j.on(&self.by_id[&id].branch)) =>
                {
                    true
                }
                None => false,
                Some(b) if b == &t.drv => true,
                Some(b) => match cx.builds.known(b, now) {
                    Some(bm) => !bm.ok(),
                    None => {
                        pending.insert(b.clone());
                        if cx.request_build(b, prio, now) {
                            dispatched.push(b.clone());
                        }
                        continue;
                    }
                },
            };
            if base_fails {
                preexisting += 1;
            } else {
                blockers.push(build_blocker(t, &m));
            }
        }
        self.count_builds(id, &dispatched);
        if !pending.is_empty() {
            self.by_id.get_mut(&id).expect("known").pending = pending;
            return;
        }
        if blockers.is_empty() && self.by_id[&id].group.is_some() {
            self.group_passed(cx, id, now);
        } else if blockers.is_empty() && self.by_id[&id].stage == Stage::MassRebuild {
            self.stage_passed(cx, id, now);
        } else if blockers.is_empty() {
            let cand = self.by_id.get_mut(&id).expect("known");
            cand.phase = Phase::Landing;
            let n_marks = marks.len();
            cand.marks = marks;
            let cand = cand.clone();
            let mut extra = if preexisting > 0 {
                format!(" ({preexisting} failures already on the base ignored)")
            } else {
                String::new()
            };
            if n_marks > 0 {
                extra.push_str(&format!(
                    " ({n_marks} jobs to be marked broken: grace period over)"
                ));
            }
            cx.fx.event(
                now,
                &repo,
                format!(
                    "candidate {id}: gate passed{extra}; landing {}{}",
                    short(cand.commit().unwrap_or("")),
                    self.onto_text(id)
                ),
            );
            self.save_id(cx, id);
            // It lands once every candidate ahead of it has.
            let lane = (cand.repo.clone(), cand.branch.clone());
            self.kick(cx, &lane, now);
        } else {
            self.attribute(cx, id, blockers, now);
        }
    }
}

fn error_of(eval: &Evaluation, key: &JobKey) -> String {
    match eval.get(key) {
        Some(JobResult::Error(m)) => m.clone(),
        _ => String::new(),
    }
}

/// The blocker a target's remembered failure makes.
fn build_blocker(t: &Target, m: &Memo) -> Blocker {
    Blocker::Build {
        key: t.key.clone(),
        drv: t.drv.clone(),
        base_drv: t.base_drv.clone(),
        class: m.class,
        log_tail: m.log_tail.clone(),
        root_drv: m.root_drv.clone(),
    }
}
