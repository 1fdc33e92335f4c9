//! The candidates machine: a batch merged onto the target tip, evaluated, built,
//! judged and landed, or attributed when it fails (`attribution.rs`). It owns the
//! candidates and their probes; it works through `Ctx`, the parts of the queue and
//! builds machines it uses, and tells `Core` what the other machines must hear.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::attribution::Attribution;
use super::blocker::Blocker;
use super::builds::Builds;
use super::effects::Effects;
use super::queue::Queue;
use super::{CandId, Command, CoreConfig, LandResult, Memo, Millis, Prepared, ProbeId, Record};
use crate::core::change::{short, ChangeId, ChangeState};
use crate::core::evaluation::{diff, EvalOutcome, Evaluation, JobKey, JobResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Preparing,
    Evaluating,
    Building,
    Attributing,
    Landing,
    Done,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Preparing => "preparing",
            Phase::Evaluating => "evaluating",
            Phase::Building => "building",
            Phase::Attributing => "attributing",
            Phase::Landing => "landing",
            Phase::Done => "done",
        }
    }

    pub fn parse(s: &str) -> Option<Phase> {
        [
            Phase::Preparing,
            Phase::Evaluating,
            Phase::Building,
            Phase::Attributing,
            Phase::Landing,
            Phase::Done,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
    }
}

/// A job the verdict depends on: its derivation on the candidate and on the base.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Target {
    pub key: JobKey,
    pub drv: String,
    pub base_drv: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub id: CandId,
    pub repo: String,
    pub branch: String,
    /// Changes in batch order (conflicting ones are dropped after preparing).
    pub changes: Vec<ChangeId>,
    pub base: Option<String>,
    /// The merge chain: each merged change with the commit after it. The last one is
    /// the candidate commit; earlier ones are the prefixes bisection tests.
    pub merged: Vec<(ChangeId, String)>,
    pub phase: Phase,
    /// Set on a candidate that retests the innocent changes of a failed batch.
    pub follow_up_of: Option<CandId>,
    /// Builds dispatched for this candidate's own verdict.
    pub builds: u32,
    /// Builds attribution itself asked for as evidence (prefixes of the batch): builds
    /// beyond the batch's own.
    pub extra_builds: u32,
    pub created_at: Millis,
    pub last_build_at: Option<Millis>,
    pub finished_at: Option<Millis>,
    /// A one-line summary once done ("landed abc", "rejected #3", ...).
    pub summary: Option<String>,
    pub(crate) targets: Vec<Target>,
    pub(crate) pending: BTreeSet<String>,
    pub(crate) eval_blockers: Vec<Blocker>,
    pub(crate) attribution: Option<Attribution>,
    /// Jobs attribution found failing on the base just the same: they do not block.
    pub(crate) preexisting: Vec<JobKey>,
}

impl Candidate {
    pub fn commit(&self) -> Option<&str> {
        self.merged.last().map(|(_, c)| c.as_str())
    }

    pub(crate) fn waits_for(&self, drv: &str) -> bool {
        self.pending.contains(drv)
            || self
                .attribution
                .as_ref()
                .is_some_and(|a| a.waiting.contains(drv))
    }

    /// What the database keeps of a candidate: everything but the working state, which a
    /// restart rebuilds by preparing the candidate again.
    pub fn persisted(&self) -> Candidate {
        let mut c = self.clone();
        c.clear_working_state();
        c
    }

    /// Forgets what evaluating, building and attributing worked out.
    fn clear_working_state(&mut self) {
        self.targets.clear();
        self.pending.clear();
        self.eval_blockers.clear();
        self.attribution = None;
        self.preexisting.clear();
    }

    pub(crate) fn reset_for_prepare(&mut self) {
        self.phase = Phase::Preparing;
        self.base = None;
        self.merged.clear();
        self.clear_working_state();
    }
}

#[derive(Debug, Default)]
pub(crate) struct Candidates {
    pub(crate) by_id: BTreeMap<CandId, Candidate>,
    /// The candidate in flight per lane (repository, branch).
    pub(crate) in_flight: BTreeMap<(String, String), CandId>,
    /// Attribution probes out, by id: whose they are.
    pub(crate) probes: BTreeMap<ProbeId, CandId>,
    pub(crate) next_cand: CandId,
    pub(crate) next_probe: ProbeId,
    /// Consecutive infrastructure failures per candidate being prepared.
    prepare_failures: BTreeMap<CandId, u32>,
}

/// What the candidates machine uses of the others: the configuration, the changes it
/// tests, the builds it asks for and reads, and where its commands go.
pub(crate) struct Ctx<'a> {
    pub(crate) cfg: &'a CoreConfig,
    pub(crate) queue: &'a mut Queue,
    pub(crate) builds: &'a mut Builds,
    pub(crate) fx: &'a mut Effects,
}

impl Ctx<'_> {
    pub(crate) fn set_state(
        &mut self,
        id: ChangeId,
        state: ChangeState,
        reason: Option<String>,
        now: Millis,
    ) {
        self.queue.set_state(id, state, reason, now, self.fx);
    }

    pub(crate) fn request_build(&mut self, drv: &str, prio: u8, now: Millis) -> bool {
        self.builds.request_build(drv, prio, now, self.fx)
    }

    pub(crate) fn request_eval(&mut self, repo: &str, commit: &str) {
        self.builds.request_eval(repo, commit, self.fx);
    }
}

impl Candidates {
    pub(crate) fn new() -> Candidates {
        Candidates {
            next_cand: 1,
            next_probe: 1,
            ..Candidates::default()
        }
    }

    /// Takes back persisted candidates: finished ones as history, the others in flight
    /// again, prepared again (evaluations and build results are reused) or, caught
    /// while landing, landed again (idempotent). Returns the changes they hold.
    pub(crate) fn restore(
        &mut self,
        cx: &mut Ctx,
        candidates: Vec<Candidate>,
    ) -> BTreeSet<ChangeId> {
        self.next_cand = candidates.iter().map(|c| c.id + 1).max().unwrap_or(1);
        let mut attached = BTreeSet::new();
        for mut cand in candidates {
            if matches!(cand.phase, Phase::Done) {
                // History for the API, and the root of a follow-up still counting builds.
                self.by_id.insert(cand.id, cand);
                continue;
            }
            attached.extend(cand.changes.iter().copied());
            let lane = (cand.repo.clone(), cand.branch.clone());
            if cand.phase == Phase::Landing {
                self.emit_land(cx, &cand);
            } else {
                cand.reset_for_prepare();
                self.emit_prepare(cx, &cand);
            }
            cx.fx.record(Record::Candidate(cand.clone()));
            self.in_flight.insert(lane, cand.id);
            self.by_id.insert(cand.id, cand);
        }
        attached
    }

    /// The candidates whose verdict waits for `drv`.
    fn waiting_for(&self, drv: &str) -> Vec<CandId> {
        self.by_id
            .values()
            .filter(|c| c.waits_for(drv))
            .map(|c| c.id)
            .collect()
    }

    /// `drv` has a remembered result now.
    pub(crate) fn built(&mut self, cx: &mut Ctx, drv: &str, now: Millis) {
        for id in self.waiting_for(drv) {
            self.on_build_done(cx, id, drv, now);
        }
    }

    /// `drv` could not be built anywhere: its candidates cannot be judged now. Their
    /// changes go back to the queue, never blamed.
    pub(crate) fn build_abandoned(&mut self, cx: &mut Ctx, drv: &str, err: &str, now: Millis) {
        for id in self.waiting_for(drv) {
            let why = format!("{drv} could not be built on any builder: {err}");
            self.abandon(cx, id, now, &why);
        }
    }

    /// The system a derivation's job was evaluated for.
    pub(crate) fn system_of(&self, drv: &str) -> Option<String> {
        self.by_id
            .values()
            .flat_map(|c| c.targets.iter())
            .find(|t| t.drv == drv || t.base_drv.as_deref() == Some(drv))
            .map(|t| t.key.system.clone())
    }

    /// The unfinished candidate holding `change`, with its phase.
    pub(crate) fn holding(&self, change: ChangeId) -> Option<(CandId, Phase)> {
        self.by_id
            .values()
            .find(|c| c.phase != Phase::Done && c.changes.contains(&change))
            .map(|c| (c.id, c.phase))
    }

    /// Priority class of a candidate's builds: its most urgent change's.
    pub(crate) fn cand_prio(&self, cx: &Ctx, id: CandId) -> u8 {
        self.by_id
            .get(&id)
            .and_then(|c| {
                let lane = cx.cfg.repos.get(&c.repo)?.lanes.get(&c.branch)?;
                if let Some(p) = lane.build_priority {
                    return Some(p as u8);
                }
                c.changes
                    .iter()
                    .filter_map(|x| cx.queue.changes.get(x))
                    .map(|x| x.priority as u8)
                    .min()
            })
            .unwrap_or(2)
    }

    pub(crate) fn start_candidate(
        &mut self,
        cx: &mut Ctx,
        repo: &str,
        branch: &str,
        ids: Vec<ChangeId>,
        follow_up_of: Option<CandId>,
        now: Millis,
    ) {
        let id = self.next_cand;
        self.next_cand += 1;
        for &c in &ids {
            cx.set_state(c, ChangeState::Testing, None, now);
        }
        let cand = Candidate {
            id,
            repo: repo.to_string(),
            branch: branch.to_string(),
            changes: ids,
            base: None,
            merged: vec![],
            phase: Phase::Preparing,
            follow_up_of,
            builds: 0,
            extra_builds: 0,
            created_at: now,
            last_build_at: None,
            finished_at: None,
            summary: None,
            targets: vec![],
            pending: BTreeSet::new(),
            eval_blockers: vec![],
            attribution: None,
            preexisting: vec![],
        };
        let list = cand
            .changes
            .iter()
            .map(|c| format!("#{c}"))
            .collect::<Vec<_>>()
            .join(" ");
        let why = follow_up_of.map_or(String::new(), |f| format!(" (innocents of candidate {f})"));
        cx.fx.event(
            now,
            repo,
            format!("candidate {id} on {branch}: testing {list}{why}"),
        );
        self.emit_prepare(cx, &cand);
        self.in_flight
            .insert((repo.to_string(), branch.to_string()), id);
        self.save(cx, cand);
    }

    pub(crate) fn save(&mut self, cx: &mut Ctx, cand: Candidate) {
        cx.fx.record(Record::Candidate(cand.clone()));
        self.by_id.insert(cand.id, cand);
    }

    pub(crate) fn save_id(&mut self, cx: &mut Ctx, id: CandId) {
        let cand = self.by_id[&id].clone();
        cx.fx.push(Command::Record(Record::Candidate(cand)));
    }

    pub(crate) fn emit_prepare(&mut self, cx: &mut Ctx, cand: &Candidate) {
        let changes = cand
            .changes
            .iter()
            .map(|id| (*id, cx.queue.changes[id].git_ref.clone()))
            .collect();
        cx.fx.push(Command::Prepare {
            cand: cand.id,
            repo: cand.repo.clone(),
            branch: cand.branch.clone(),
            changes,
        });
    }

    pub(crate) fn emit_land(&mut self, cx: &mut Ctx, cand: &Candidate) {
        if let (Some(old), Some(new)) = (cand.base.clone(), cand.commit()) {
            cx.fx.push(Command::Land {
                cand: cand.id,
                repo: cand.repo.clone(),
                branch: cand.branch.clone(),
                old,
                new: new.to_string(),
            });
        }
    }

    /// The candidate failed on `blockers`: find who is to blame.
    fn attribute(&mut self, cx: &mut Ctx, id: CandId, blockers: Vec<Blocker>, now: Millis) {
        self.by_id.get_mut(&id).expect("known").phase = Phase::Attributing;
        self.begin_attribution(cx, id, blockers, now);
    }

    fn active(&self, id: CandId, phase: Phase) -> bool {
        self.by_id.get(&id).is_some_and(|c| c.phase == phase)
    }

    pub(crate) fn on_prepared(
        &mut self,
        cx: &mut Ctx,
        id: CandId,
        result: Result<Prepared, String>,
        now: Millis,
    ) {
        if !self.active(id, Phase::Preparing) {
            return;
        }
        let repo = self.by_id[&id].repo.clone();
        let p = match result {
            Ok(p) => p,
            Err(msg) => {
                // Git could not fetch or merge (network, disk, a broken mirror): an
                // infrastructure outcome, never a verdict on the changes.
                let n = super::next_attempt(&mut self.prepare_failures, id);
                let delay = cx.cfg.backoff(n);
                cx.fx.event(
                    now,
                    &repo,
                    format!(
                        "candidate {id}: preparing failed (attempt {n}), retrying in {} s: {msg}",
                        delay / 1000
                    ),
                );
                let cand = self.by_id[&id].clone();
                self.emit_prepare(cx, &cand);
                let cmd = cx.fx.pop().expect("just pushed");
                cx.fx.later(now + delay, cmd);
                return;
            }
        };
        self.prepare_failures.remove(&id);
        for (cid, head) in &p.heads {
            let c = cx.queue.changes.get_mut(cid).expect("known");
            if &c.head != head {
                let old = std::mem::replace(&mut c.head, head.clone());
                let c = c.clone();
                cx.fx.push(Command::Record(Record::Change(c)));
                cx.fx.event(
                    now,
                    &repo,
                    format!(
                        "#{cid} moved from {} to {}; testing the new head",
                        short(&old),
                        short(head)
                    ),
                );
            }
        }
        let branch = self.by_id[&id].branch.clone();
        for (cid, why) in &p.conflicts {
            let reason = format!("merge conflict with {branch} at {}: {why}", short(&p.base));
            self.reject(cx, *cid, reason, now);
        }
        for (cid, why) in &p.vanished {
            let reason = format!("the change's ref no longer exists: {why}");
            self.reject(cx, *cid, reason, now);
        }
        let cand = self.by_id.get_mut(&id).expect("active");
        cand.changes = p.merged.iter().map(|(c, _)| *c).collect();
        cand.base = Some(p.base.clone());
        cand.merged = p.merged;
        if cand.merged.is_empty() {
            self.finish(cx, id, "nothing merged".into(), now);
            return;
        }
        cand.phase = Phase::Evaluating;
        let commit = cand.commit().expect("non-empty").to_string();
        self.save_id(cx, id);
        cx.request_eval(&repo, &p.base);
        cx.request_eval(&repo, &commit);
        self.advance_eval(cx, id, now);
    }

    /// An evaluation arrived: the candidates waiting for it go on.
    pub(crate) fn on_evaluated(&mut self, cx: &mut Ctx, commit: &str, now: Millis) {
        let waiting: Vec<CandId> = self
            .by_id
            .values()
            .filter(|c| {
                c.phase == Phase::Evaluating
                    && (c.base.as_deref() == Some(commit) || c.commit() == Some(commit))
            })
            .map(|c| c.id)
            .collect();
        for id in waiting {
            self.advance_eval(cx, id, now);
        }
    }

    /// Once both evaluations are known: diff them and build the rebuild set plus the
    /// required jobs.
    fn advance_eval(&mut self, cx: &mut Ctx, id: CandId, now: Millis) {
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
        if !blockers.is_empty() {
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
    fn build_unknown(
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
        if self.by_id[&id].preexisting.contains(&t.key) {
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
    fn judge(&mut self, cx: &mut Ctx, id: CandId, now: Millis) {
        let targets = self.by_id[&id].targets.clone();
        let pre = self.by_id[&id].preexisting.clone();
        let mut blockers: Vec<Blocker> = self.by_id[&id]
            .eval_blockers
            .iter()
            .filter(|b| b.key().is_none_or(|k| !pre.contains(k)))
            .cloned()
            .collect();
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
            let base_fails = match &t.base_drv {
                _ if pre.contains(&t.key) => true,
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
        let repo = self.by_id[&id].repo.clone();
        if blockers.is_empty() {
            let cand = self.by_id.get_mut(&id).expect("known");
            cand.phase = Phase::Landing;
            let cand = cand.clone();
            let extra = if preexisting > 0 {
                format!(" ({preexisting} failures already on the base ignored)")
            } else {
                String::new()
            };
            cx.fx.event(
                now,
                &repo,
                format!(
                    "candidate {id}: gate passed{extra}; landing {}",
                    short(cand.commit().unwrap_or(""))
                ),
            );
            self.emit_land(cx, &cand);
            self.save_id(cx, id);
        } else {
            self.attribute(cx, id, blockers, now);
        }
    }

    /// Returns the lane whose branch moved, if one did.
    pub(crate) fn on_landed(
        &mut self,
        cx: &mut Ctx,
        id: CandId,
        result: LandResult,
        now: Millis,
    ) -> Option<(String, String)> {
        if !self.active(id, Phase::Landing) {
            return None;
        }
        let cand = self.by_id[&id].clone();
        match result {
            LandResult::Landed => {
                let commit = cand.commit().expect("landing has a commit").to_string();
                for c in &cand.changes {
                    let ch = cx.queue.changes.get_mut(c).expect("known");
                    ch.landed_commit = Some(commit.clone());
                    cx.set_state(*c, ChangeState::Merged, None, now);
                }
                let list = cand
                    .changes
                    .iter()
                    .map(|c| format!("#{c}"))
                    .collect::<Vec<_>>()
                    .join(" ");
                let cost = cand.follow_up_of.map_or(String::new(), |root| {
                    let extra: u32 = self
                        .by_id
                        .values()
                        .filter(|c| c.id == root || c.follow_up_of == Some(root))
                        .map(|c| c.extra_builds)
                        .sum();
                    format!(
                        "; attribution of candidate {root} and its follow-ups cost {extra} builds beyond the batches' own"
                    )
                });
                cx.queue.release(&(cand.repo.clone(), cand.branch.clone()));
                cx.fx.event(
                    now,
                    &cand.repo,
                    format!(
                        "landed {list} on {} at {}{cost}",
                        cand.branch,
                        short(&commit)
                    ),
                );
                self.finish(cx, id, format!("landed {commit}"), now);
                return Some((cand.repo, cand.branch));
            }
            LandResult::Moved { tip } => {
                cx.fx.event(
                    now,
                    &cand.repo,
                    format!(
                        "candidate {id}: {} moved to {}; rebasing and testing again",
                        cand.branch,
                        short(&tip)
                    ),
                );
                let c = self.by_id.get_mut(&id).expect("known");
                c.reset_for_prepare();
                let c = c.clone();
                self.emit_prepare(cx, &c);
                self.save_id(cx, id);
            }
            LandResult::Failed(msg) => {
                cx.fx.event(
                    now,
                    &cand.repo,
                    format!("candidate {id}: push failed, retrying: {msg}"),
                );
                self.emit_land(cx, &cand);
                let cmd = cx.fx.pop().expect("just pushed");
                cx.fx.later(now + cx.cfg.retry_delay_ms, cmd);
            }
        }
        None
    }

    pub(crate) fn reject(&mut self, cx: &mut Ctx, change: ChangeId, reason: String, now: Millis) {
        let repo = cx.queue.changes[&change].repo.clone();
        cx.fx.event(
            now,
            &repo,
            format!(
                "rejected #{change}: {}",
                reason.lines().next().unwrap_or("")
            ),
        );
        cx.set_state(change, ChangeState::Rejected, Some(reason), now);
    }

    pub(crate) fn finish(&mut self, cx: &mut Ctx, id: CandId, summary: String, now: Millis) {
        let cand = self.by_id.get_mut(&id).expect("known");
        cand.phase = Phase::Done;
        cand.finished_at = Some(now);
        cand.summary = Some(summary);
        cand.pending.clear();
        cand.attribution = None;
        cand.targets = vec![];
        let cand = &self.by_id[&id];
        let lane = (cand.repo.clone(), cand.branch.clone());
        if self.in_flight.get(&lane) == Some(&id) {
            self.in_flight.remove(&lane);
        }
        self.save_id(cx, id);
        self.probes.retain(|_, c| *c != id);
        // Evaluations only live in memory while a candidate needs them.
        let mut keep: BTreeSet<String> = BTreeSet::new();
        for c in self.by_id.values().filter(|c| c.phase != Phase::Done) {
            keep.extend(c.base.iter().cloned());
            keep.extend(c.merged.iter().map(|(_, m)| m.clone()));
        }
        cx.builds.keep_evals(&keep);
    }

    /// Drops a candidate without a verdict: its changes go back to the queue.
    pub(crate) fn abandon(&mut self, cx: &mut Ctx, id: CandId, now: Millis, why: &str) {
        let cand = self.by_id[&id].clone();
        for c in &cand.changes {
            if cx.queue.changes[c].state == ChangeState::Testing {
                cx.set_state(*c, ChangeState::Queued, None, now);
            }
        }
        cx.fx
            .event(now, &cand.repo, format!("candidate {id} abandoned: {why}"));
        self.finish(cx, id, format!("abandoned: {why}"), now);
    }

    /// Ends a candidate that cannot land through no fault of its changes (required jobs
    /// fail on the target itself): the changes wait in the queue with the reason, and
    /// the lane tries again after a growing delay (or as soon as something lands).
    pub(crate) fn hold(&mut self, cx: &mut Ctx, id: CandId, why: &str, now: Millis) {
        let cand = self.by_id[&id].clone();
        let lane = (cand.repo.clone(), cand.branch.clone());
        let until = cx.queue.hold(cx.cfg, lane, now);
        cx.fx.wake(until);
        let reason = format!("waiting: {why}; tested again in {} s", (until - now) / 1000);
        for c in &cand.changes {
            if cx.queue.changes[c].state == ChangeState::Testing {
                cx.set_state(*c, ChangeState::Queued, Some(reason.clone()), now);
            }
        }
        cx.fx
            .event(now, &cand.repo, format!("candidate {id} held: {reason}"));
        self.finish(cx, id, format!("held: {why}"), now);
    }

    /// Back to building after attribution found every failure on the base too: those
    /// jobs no longer block, the rest of the verdict is still to come.
    pub(crate) fn resume_building(&mut self, cx: &mut Ctx, id: CandId, now: Millis) {
        let targets = self.by_id[&id].targets.clone();
        let pending = self.build_unknown(cx, id, &targets, now);
        let cand = self.by_id.get_mut(&id).expect("known");
        cand.attribution = None;
        cand.phase = Phase::Building;
        cand.pending = pending;
        self.save_id(cx, id);
        if self.by_id[&id].pending.is_empty() {
            self.judge(cx, id, now);
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
