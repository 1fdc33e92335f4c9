//! The candidates machine: a batch merged onto the target tip, evaluated, built,
//! judged and landed, or attributed when it fails (`attribution.rs`). It owns the
//! candidates and their probes; it works through `Ctx`, the parts of the queue and
//! builds machines it uses, and tells `Core` what the other machines must hear.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::blocker::Blocker;
use super::builds::Builds;
use super::effects::Effects;
use super::evidence::Attribution;
use super::queue::Queue;
use super::{CandId, Command, CoreConfig, LandResult, Millis, Prepared, ProbeId, Record};
use crate::core::change::{list, short, ChangeId, ChangeState, Stage};
use crate::core::evaluation::JobKey;

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

/// Working state of a candidate in a chain (never persisted: a restart sends again).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Spec {
    /// Prepares sent and not answered yet: only the answer to the last one counts.
    pub(crate) sent: u32,
    /// Answers still to come to prepares sent before the candidate was merged again on
    /// another base: ignored when they come.
    pub(crate) stale: u32,
    /// The land is out (the head only).
    pub(crate) land_sent: bool,
    /// A failure found while the candidate ahead had not landed yet.
    pub(crate) parked: Option<Vec<Blocker>>,
    /// Builds the candidate waited for before it was prepared again: still wanted (not
    /// cancelled), since most of them come back after the new evaluation.
    pub(crate) warm: BTreeSet<String>,
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
    /// A merge group of GitHub's merge queue: tested, answered with a status, never landed.
    pub group: Option<super::forge::GroupRef>,
    /// Jobs this candidate, once landed, enters in the broken registry: held changes
    /// allowed to break them after their grace period (`breakage.rs`).
    pub marks: Vec<super::breakage::BrokenJob>,
    /// The candidate this one is merged on top of (speculation); `None`: the target's tip.
    pub ahead: Option<CandId>,
    /// The queue's candidate, or the mass-rebuild stage's (never landed: its changes
    /// are queued into the target once it passes).
    pub stage: Stage,
    pub(crate) spec: Spec,
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
        c.spec = Default::default();
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
    /// The candidates in flight per lane (repository, branch), the next to land first:
    /// each is merged onto the commit of the one before it (`window.rs`).
    pub(crate) in_flight: BTreeMap<(String, String), Vec<CandId>>,
    /// The effective window per lane, when it differs from the configured one.
    pub(crate) windows: BTreeMap<(String, String), usize>,
    /// Recent failure rate per lane (rejected among decided changes).
    pub(crate) rates: BTreeMap<(String, String), f64>,
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
    pub(crate) broken: &'a mut super::breakage::Registry,
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
        let mut live = vec![];
        for cand in candidates {
            if cand.phase != Phase::Done {
                attached.extend(cand.changes.iter().copied());
                if cand.group.is_none() && cand.stage == Stage::Queue {
                    live.push(cand.id);
                } else {
                    // Beside the chain (a merge group, the mass-rebuild stage): prepared
                    // again on its own.
                    let mut cand = cand.clone();
                    cand.reset_for_prepare();
                    cx.fx.record(Record::Candidate(cand.clone()));
                    let id = cand.id;
                    self.by_id.insert(id, cand);
                    self.send_prepare(cx, id, None);
                    continue;
                }
            }
            // Done: history for the API, and the root of a follow-up still counting builds.
            self.by_id.insert(cand.id, cand);
        }
        self.restore_chains(live);
        // The head caught while landing lands again (idempotent); every other candidate
        // is prepared again, in chain order, onto the one ahead of it.
        for (lane, chain) in self.in_flight.clone() {
            for (i, id) in chain.iter().enumerate() {
                let cand = self.by_id.get_mut(id).expect("restored");
                if !(i == 0 && cand.phase == Phase::Landing) {
                    cand.reset_for_prepare();
                }
                let cand = cand.clone();
                cx.fx.record(Record::Candidate(cand));
            }
            self.kick(cx, &lane, 0);
        }
        attached
    }

    /// Every derivation some candidate waits for.
    pub(crate) fn wanted(&self) -> impl Iterator<Item = &String> {
        self.by_id
            .values()
            .flat_map(|c| {
                c.pending
                    .iter()
                    .chain(c.attribution.iter().flat_map(|a| a.waiting.iter()))
            })
            .chain(self.warm())
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
            // Not requeued at the front forever: past its budget a change waits, saying why.
            for c in self.by_id[&id].changes.clone() {
                let Some(until) = cx.queue.infra_failed(c, cx.cfg.infra_budget, now) else {
                    continue;
                };
                let reason = format!(
                    "held after {} infrastructure failures in a row, tested again in {} min: {why}",
                    cx.cfg.infra_budget,
                    (until - now) / 60_000
                );
                if cx.queue.changes[&c].state == ChangeState::Queued {
                    cx.set_state(c, ChangeState::Queued, Some(reason.clone()), now);
                }
                cx.fx
                    .event(now, &self.by_id[&id].repo, format!("#{c} {reason}"));
                cx.fx.wake(until);
            }
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
                if let Some(p) = self.stage_prio(c.id) {
                    return Some(p);
                }
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

    // A candidate's whole identity; a struct for the two optional origins would be read
    // at three call sites only.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start_candidate(
        &mut self,
        cx: &mut Ctx,
        repo: &str,
        branch: &str,
        ids: Vec<ChangeId>,
        follow_up_of: Option<CandId>,
        group: Option<super::forge::GroupRef>,
        now: Millis,
    ) {
        let id = self.next_cand;
        self.next_cand += 1;
        // A follow-up stays in its root's stage; else the changes say where they are.
        let stage = match follow_up_of {
            Some(root) => self.by_id.get(&root).map_or(Stage::Queue, |r| r.stage),
            None if group.is_none() && ids.iter().all(|c| cx.queue.in_stage(*c)) => {
                Stage::MassRebuild
            }
            None => Stage::Queue,
        };
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
            group,
            marks: vec![],
            ahead: None,
            stage,
            spec: Default::default(),
            targets: vec![],
            pending: BTreeSet::new(),
            eval_blockers: vec![],
            attribution: None,
            preexisting: vec![],
        };
        let list = list(&cand.changes);
        let why = follow_up_of.map_or(String::new(), |f| format!(" (innocents of candidate {f})"));
        let in_stage = if stage == Stage::MassRebuild {
            " in the mass-rebuild stage, on its tip"
        } else {
            ""
        };
        cx.fx.event(
            now,
            repo,
            format!("candidate {id} on {branch}{in_stage}: testing {list}{why}"),
        );
        // A merge group is not the branch's candidate: groups run beside each other, and
        // so does the mass-rebuild stage's (always on the target's tip).
        let beside = cand.group.is_some() || stage == Stage::MassRebuild;
        self.save(cx, cand);
        if beside {
            self.send_prepare(cx, id, None);
        } else {
            self.join(cx, &(repo.to_string(), branch.to_string()), id, now);
        }
    }

    pub(crate) fn save(&mut self, cx: &mut Ctx, cand: Candidate) {
        cx.fx.record(Record::Candidate(cand.clone()));
        self.by_id.insert(cand.id, cand);
    }

    pub(crate) fn save_id(&mut self, cx: &mut Ctx, id: CandId) {
        let cand = self.by_id[&id].clone();
        cx.fx.push(Command::Record(Record::Candidate(cand)));
    }

    /// Prepares `cand` merged onto `onto` (the commit of the candidate ahead of it), or
    /// onto the target's tip.
    pub(crate) fn emit_prepare(&mut self, cx: &mut Ctx, cand: &Candidate, onto: Option<String>) {
        if let Some(group) = &cand.group {
            cx.fx.push(Command::PrepareGroup {
                cand: cand.id,
                repo: cand.repo.clone(),
                group: group.clone(),
            });
            return;
        }
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
            onto,
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
    pub(crate) fn attribute(
        &mut self,
        cx: &mut Ctx,
        id: CandId,
        blockers: Vec<Blocker>,
        now: Millis,
    ) {
        if self.park(cx, id, &blockers, now) {
            return;
        }
        self.failed_verdict(cx, id);
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
        let lane = (repo.clone(), self.by_id[&id].branch.clone());
        let base = result.as_ref().map_or("", |p| p.base.as_str());
        if !self.current_prepare(id, base) && self.by_id[&id].group.is_none() {
            // Merged onto what is no longer ahead of it, or a newer prepare is out.
            self.kick(cx, &lane, now);
            return;
        }
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
                self.send_prepare(cx, id, self.onto(id).flatten());
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
        let ahead = self.by_id[&id].ahead;
        let order = self.by_id[&id].changes.clone();
        for (cid, why) in &p.conflicts {
            // Certain only on the tip with nothing merged before it: otherwise it may
            // conflict with a change that never lands.
            let before: Vec<ChangeId> = order
                .iter()
                .take_while(|c| *c != cid)
                .filter(|c| p.merged.iter().any(|(m, _)| m == *c))
                .copied()
                .collect();
            if ahead.is_none() && before.is_empty() {
                let reason = format!("merge conflict with {branch} at {}: {why}", short(&p.base));
                if !self.return_to_stage(cx, *cid, &reason, now) {
                    self.reject(cx, *cid, reason, now);
                }
                continue;
            }
            // It waits for the candidate whose changes it may conflict with: its own
            // (changes merged before it), else the one ahead.
            let (after, wait) = match ahead {
                Some(a) if before.is_empty() => (format!("candidate {a} ahead"), a),
                _ => (list(&before), id),
            };
            let reason = format!(
                "conflicts with what is merged before it ({after}); tested again alone once candidate {wait} is decided: {why}"
            );
            cx.queue.wait_for(*cid, wait);
            cx.set_state(*cid, ChangeState::Queued, Some(reason.clone()), now);
            cx.fx.event(now, &repo, format!("#{cid} {reason}"));
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
        self.publish_stage(cx, id);
        cx.request_eval(&repo, &p.base);
        cx.request_eval(&repo, &commit);
        self.advance_eval(cx, id, now);
        // The candidate behind it can be merged onto its commit now.
        self.kick(cx, &lane, now);
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
                let list = list(&cand.changes);
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
                let lane = (cand.repo.clone(), cand.branch.clone());
                cx.queue.release(&lane);
                for _ in &cand.changes {
                    self.decided(&lane, false);
                }
                self.landed_registry(cx, &cand, &commit, now);
                upload_landed(cx, &cand, &commit);
                cx.fx.event(
                    now,
                    &cand.repo,
                    format!(
                        "landed {list} on {} at {}{cost}",
                        cand.branch,
                        short(&commit)
                    ),
                );
                // The one behind it is the head now, on the new tip.
                self.landed_head(cx, id, now);
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
                // It and every candidate behind it are merged again onto the new tip.
                let lane = (cand.repo.clone(), cand.branch.clone());
                let at = self.chain(&lane).iter().position(|c| *c == id).unwrap_or(0);
                self.rebase_from(cx, &lane, at, now);
                self.kick(cx, &lane, now);
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
        cand.spec.warm.clear();
        cx.builds.released = true;
        cx.queue.candidate_done(id);
        if cand.group.is_some() {
            self.group_finished(cx, id, now);
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
        // Those behind it are merged again without it (a landed head left already).
        self.leave(cx, id, now);
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
    /// the lane tests again when its target moves (read every `target_poll_ms`), or when
    /// the remembered failures expire.
    pub(crate) fn hold(&mut self, cx: &mut Ctx, id: CandId, why: &str, now: Millis) {
        let cand = self.by_id[&id].clone();
        let lane = (cand.repo.clone(), cand.branch.clone());
        let base = cand.base.clone().unwrap_or_default();
        let mut again = String::new();
        if cand.group.is_none() {
            // Nothing behind it can land either: its changes wait in the queue too.
            while let Some(&last) = self.chain(&lane).last().filter(|l| **l != id) {
                self.abandon(
                    cx,
                    last,
                    now,
                    "the lane is held: required jobs fail on its target",
                );
            }
            let until = cx.queue.hold(cx.cfg, lane, &base, now);
            again = format!(", or in {} min", (until - now + 59_999) / 60_000);
        }
        let reason = format!(
            "waiting: {why}; tested again when {} moves from {} (read every {} s){again}",
            cand.branch,
            short(&base),
            cx.cfg.target_poll_ms / 1000
        );
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

/// Sends the landed commit's required jobs to the binary cache, when there is one: what
/// users of the branch substitute first.
fn upload_landed(cx: &mut Ctx, cand: &Candidate, commit: &str) {
    if cx.cfg.cache.is_none() {
        return;
    }
    let Some(eval) = cx.builds.evals.get(commit) else {
        return;
    };
    let required = &cx.cfg.repos[&cand.repo].lanes[&cand.branch].required;
    let drvs: Vec<String> = required
        .iter()
        .flat_map(|attr| eval.by_attr(attr))
        .filter_map(|(_, r)| r.job().map(|j| j.drv_path.clone()))
        .collect();
    if !drvs.is_empty() {
        cx.fx.push(Command::Upload {
            drvs,
            why: format!(
                "{} landed on {} at {}",
                cand.repo,
                cand.branch,
                short(commit)
            ),
        });
    }
}
