//! The mass-rebuild stage, the first of a lane's two stages (seed 004's "two-stage
//! queue"). A change whose own evaluation shows that it rebuilds at least
//! `mass_rebuild_threshold` jobs on some system leaves the queue for the stage. The
//! stage batches such changes on the target's current tip and builds them beside the
//! queue's chain at the lowest build priority, so the queue's small changes are
//! dispatched first; culprits are removed by attribution like in any candidate. A batch
//! that passes is queued into the target as one group, merged in the same order, so the
//! queue rebuilds only what changed on the target meanwhile (the rest is remembered).
//! A passed change that no longer merges there, or that fails there, goes back to the
//! stage, which tests it again on the new tip, at most `MAX_RETURNS` times; after that
//! the queue's verdict stands. There is no staging branch that moves forward: the
//! stage's current batch is a ref the queue rewrites (`Command::PublishStage`).

use std::collections::BTreeMap;

use super::candidate::{Candidates, Ctx};
use super::queue::Queue;
use super::{CandId, Command, Millis};
use crate::core::change::{list, short, ChangeId, ChangeState, Priority, Stage};

/// The build priority of the stage's builds: below every change priority of the queue.
pub(crate) const STAGE_PRIO: u8 = Priority::Low as u8 + 1;

/// Times a passed change goes back from the queue to the stage before the queue's
/// verdict stands (a change that keeps failing on a moving target is rejected).
pub(crate) const MAX_RETURNS: u32 = 2;

impl Candidates {
    /// The candidate's evaluation diff is known, with `rebuilds` jobs to build per
    /// system. Returns true when its changes leave it for the stage (the candidate is
    /// finished), false when it goes on to build.
    pub(crate) fn route_by_rebuilds(
        &mut self,
        cx: &mut Ctx,
        id: CandId,
        rebuilds: &BTreeMap<String, usize>,
        now: Millis,
    ) -> bool {
        let cand = &self.by_id[&id];
        let changes = cand.changes.clone();
        if cand.group.is_some() || cand.stage != Stage::Queue {
            return false;
        }
        if let [only] = changes[..] {
            // Its own size: known now, shown by the API.
            let c = cx.queue.changes.get_mut(&only).expect("known");
            if c.route.rebuilds != *rebuilds {
                c.route.rebuilds = rebuilds.clone();
                let c = c.clone();
                cx.fx.record(super::Record::Change(c));
            }
        }
        let lane = &cx.cfg.repos[&cand.repo].lanes[&cand.branch];
        let Some(threshold) = lane.mass_rebuild_threshold else {
            return false;
        };
        // Passed the stage already: the queue builds it whatever its size. An urgent
        // change is never held back by the stage.
        if changes
            .iter()
            .any(|c| cx.queue.changes[c].route.passed_by.is_some())
            || self.is_urgent(cx, id)
        {
            return false;
        }
        let Some((system, n)) = rebuilds
            .iter()
            .filter(|(_, n)| **n >= threshold)
            .max_by_key(|(_, n)| **n)
        else {
            return false;
        };
        let repo = cand.repo.clone();
        let size = format!("{n} jobs rebuild on {system} (mass_rebuild_threshold {threshold})");
        if let [only] = changes[..] {
            let c = cx.queue.changes.get_mut(&only).expect("known");
            c.route.stage = Stage::MassRebuild;
            let reason = format!("a mass rebuild: {size}; tested in the mass-rebuild stage first");
            cx.set_state(only, ChangeState::Queued, Some(reason.clone()), now);
            cx.fx.event(now, &repo, format!("#{only} {reason}"));
            self.finish(
                cx,
                id,
                format!("routed #{only} to the mass-rebuild stage"),
                now,
            );
        } else {
            // Which change it is shows only in evaluations of fewer of them: halves, as
            // in a bisection, so the others stay batched.
            let half = (changes.len() / 2).max(1);
            let reason = format!(
                "candidate {id} is a mass rebuild ({size}): its changes are tested in batches of at most {half} to find which"
            );
            for c in &changes {
                cx.queue.split(*c, changes.len());
                cx.set_state(*c, ChangeState::Queued, Some(reason.clone()), now);
            }
            cx.fx.event(now, &repo, format!("candidate {id}: {reason}"));
            self.finish(
                cx,
                id,
                "split: a mass rebuild among its changes".into(),
                now,
            );
        }
        true
    }

    /// The stage's candidate passed: its changes are queued into the target together.
    pub(crate) fn stage_passed(&mut self, cx: &mut Ctx, id: CandId, now: Millis) {
        let cand = self.by_id[&id].clone();
        let list = list(&cand.changes);
        let base = short(cand.base.as_deref().unwrap_or("")).to_string();
        let reason = format!(
            "passed the mass-rebuild stage in candidate {id} (on {base}, with {list}); queued into {}",
            cand.branch
        );
        for c in &cand.changes {
            cx.queue.changes.get_mut(c).expect("known").route.passed_by = Some(id);
            cx.set_state(*c, ChangeState::Queued, Some(reason.clone()), now);
        }
        cx.fx.event(
            now,
            &cand.repo,
            format!(
                "candidate {id}: mass-rebuild stage passed on {base}; {list} queued into {}",
                cand.branch
            ),
        );
        let commit = cand.commit().unwrap_or_default().to_string();
        self.finish(
            cx,
            id,
            format!("passed the mass-rebuild stage at {commit}"),
            now,
        );
    }

    /// A change the queue would reject: when it passed the stage and has returns left,
    /// it goes back to the stage instead (tested there again on the new tip). Returns
    /// whether it went back.
    pub(crate) fn return_to_stage(
        &mut self,
        cx: &mut Ctx,
        change: ChangeId,
        why: &str,
        now: Millis,
    ) -> bool {
        let c = cx.queue.changes.get_mut(&change).expect("known");
        if c.route.passed_by.is_none() || c.route.returns >= MAX_RETURNS {
            return false;
        }
        c.route.passed_by = None;
        c.route.stage = Stage::MassRebuild;
        c.route.returns += 1;
        let (n, repo) = (c.route.returns, c.repo.clone());
        let first = why.lines().next().unwrap_or("");
        let reason = format!(
            "back to the mass-rebuild stage (return {n} of {MAX_RETURNS}), to be tested on the new tip: {first}"
        );
        cx.set_state(change, ChangeState::Queued, Some(reason.clone()), now);
        cx.fx.event(now, &repo, format!("#{change} {reason}"));
        true
    }

    /// The build priority of a stage candidate's builds; `None` for the queue's.
    pub(crate) fn stage_prio(&self, id: CandId) -> Option<u8> {
        (self.by_id.get(&id)?.stage == Stage::MassRebuild).then_some(STAGE_PRIO)
    }

    /// Whether the lane's stage has a candidate in flight.
    fn stage_busy(&self, repo: &str, branch: &str) -> bool {
        self.by_id.values().rev().any(|c| {
            c.stage == Stage::MassRebuild
                && c.phase != super::Phase::Done
                && c.repo == repo
                && c.branch == branch
        })
    }

    /// Starts the lane's stage candidate when it has none and changes wait for it.
    pub(crate) fn fill_stage(&mut self, cx: &mut Ctx, repo: &str, branch: &str, now: Millis) {
        let max = cx.cfg.repos[repo].lanes[branch].batch_max;
        let ids = cx.queue.stage_next(repo, branch, max, now);
        if ids.is_empty() || self.stage_busy(repo, branch) {
            return;
        }
        self.start_candidate(cx, repo, branch, ids, None, None, now);
    }

    /// The stage's candidate is merged: its batch is published as the stage's ref.
    pub(crate) fn publish_stage(&self, cx: &mut Ctx, id: CandId) {
        let c = &self.by_id[&id];
        if let (Stage::MassRebuild, Some(commit)) = (c.stage, c.commit()) {
            cx.fx.push(Command::PublishStage {
                repo: c.repo.clone(),
                branch: c.branch.clone(),
                commit: commit.to_string(),
            });
        }
    }
}

impl Queue {
    /// Whether `id` waits for (or is in) the mass-rebuild stage.
    pub(crate) fn in_stage(&self, id: ChangeId) -> bool {
        self.changes.get(&id).is_some_and(|c| c.route.in_stage())
    }

    /// An urgent change is tested in the queue at once, whatever its size.
    pub(crate) fn unstage(&mut self, id: ChangeId) {
        if let Some(c) = self.changes.get_mut(&id) {
            c.route.stage = Stage::Queue;
        }
    }
}
