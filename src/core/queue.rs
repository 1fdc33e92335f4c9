//! The queue machine: changes and the lanes they wait in. A lane is one (repository,
//! branch) pair of the configuration, with its queue in priority order; this machine
//! decides which changes a lane tests next (batch size, batch delay, changes to be
//! tested alone, lanes held because the target itself fails).

use std::collections::{BTreeMap, BTreeSet};

use super::effects::Effects;
use super::{CoreConfig, LaneConfig, Millis, Record, Refusal, Submission};
use crate::core::change::{Change, ChangeId, ChangeState, Priority};

#[derive(Debug, Default)]
pub(crate) struct Queue {
    pub(crate) changes: BTreeMap<ChangeId, Change>,
    next_change: ChangeId,
    /// Changes to be tested one at a time (attribution could not pin a failure).
    solo: BTreeSet<ChangeId>,
    /// Lanes waiting because required jobs fail on the target itself.
    holds: BTreeMap<(String, String), Hold>,
    /// Changes held by the grace policy, by the time they are tested again: the lane
    /// wakes then.
    grace: BTreeSet<(Millis, ChangeId)>,
    /// Changes whose candidates were given up for infrastructure reasons, in a row: how
    /// many times, and until when they wait once over the budget. In memory: a restart
    /// forgives them, as it forgets every backoff.
    infra: BTreeMap<ChangeId, InfraHold>,
    /// Changes that conflicted with changes merged before them (in their batch or in a
    /// candidate ahead): they wait until that candidate is decided, then go alone.
    waits: BTreeMap<ChangeId, super::CandId>,
    /// Largest batch a change may be tested in: it was in a batch that rebuilt too much
    /// together, and each split halves it, so the mass rebuild among them is found in a
    /// few evaluations while the others stay batched (`stage.rs`).
    caps: BTreeMap<ChangeId, usize>,
    /// Consecutive holds of a lane on the same base: each waits twice as long.
    hold_rounds: BTreeMap<(String, String), (String, u32)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InfraHold {
    failures: u32,
    until: Millis,
}

/// The first wait of a change over its infrastructure budget; doubling, at most `INFRA_HOLD_MAX_MS`.
const INFRA_HOLD_MS: Millis = 15 * 60_000;
const INFRA_HOLD_MAX_MS: Millis = 4 * 3_600_000;
/// The first hold of a lane waits this long (then twice as long each time on the same
/// base, at most `failure_ttl_ms`): a required job that fails on the target may have
/// failed spuriously twice, and one build of it to find out is cheap.
const HOLD_RETRY_MS: Millis = 30 * 60_000;

/// A held lane waits until its target moves away from `base` (a fix pushed outside the
/// queue), noticed by polling the target, or until `until`, when the remembered
/// failures that held it have expired and are worth building again.
#[derive(Debug, Clone, PartialEq)]
struct Hold {
    base: String,
    until: Millis,
    next_poll: Millis,
    polling: bool,
}

/// What a lane with nothing in flight does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Next {
    /// Test these changes together.
    Test(Vec<ChangeId>),
    /// Wait for a fuller batch until this time.
    Gather(Millis),
    /// Nothing to test now (empty queue, or the lane is held).
    Idle,
}

impl Queue {
    pub(crate) fn new(changes: Vec<Change>) -> Queue {
        let grace = changes
            .iter()
            .filter(|c| c.state == ChangeState::Queued)
            .filter_map(|c| Some((c.held.as_ref()?.until, c.id)))
            .collect();
        Queue {
            next_change: changes.iter().map(|c| c.id + 1).max().unwrap_or(1),
            changes: changes.into_iter().map(|c| (c.id, c)).collect(),
            grace,
            ..Queue::default()
        }
    }

    /// A change held by the grace policy until `until`: its lane wakes then.
    pub(crate) fn held_until(&mut self, id: ChangeId, until: Millis) {
        self.grace.insert((until, id));
    }

    /// Forgets the grace wake-ups that have come: those changes are ordinary queued
    /// changes again (tested alone).
    pub(crate) fn expire_holds(&mut self, now: Millis) {
        while self.grace.first().is_some_and(|(t, _)| *t <= now) {
            self.grace.pop_first();
        }
    }

    /// Queued changes of one lane in queue order.
    pub(crate) fn lane(&self, repo: &str, branch: &str) -> Vec<&Change> {
        let mut q: Vec<&Change> = self
            .changes
            .values()
            .filter(|c| c.repo == repo && c.target == branch && c.state == ChangeState::Queued)
            .collect();
        q.sort_by_key(|c| c.queue_key());
        q
    }

    pub(crate) fn submit(
        &mut self,
        cfg: &CoreConfig,
        s: Submission,
        now: Millis,
        fx: &mut Effects,
    ) -> Result<Change, Refusal> {
        let repo = cfg.repos.get(&s.repo).ok_or(Refusal::UnknownRepo)?;
        if !repo.lanes.contains_key(&s.target) {
            return Err(Refusal::UnknownTarget);
        }
        let id = self.next_change;
        self.next_change += 1;
        let change = Change {
            id,
            repo: s.repo,
            target: s.target,
            git_ref: s.git_ref,
            submitted_head: s.head.clone(),
            head: s.head,
            title: s.title,
            author: s.author,
            priority: s.priority,
            state: ChangeState::Queued,
            reason: None,
            landed_commit: None,
            submitted_at: now,
            updated_at: now,
            pr: s.pr,
            approver: s.approver,
            held: None,
            route: Default::default(),
        };
        fx.event(
            now,
            &change.repo,
            format!(
                "queued #{id} {:?} ({})",
                change.title,
                change.priority.as_str()
            ),
        );
        fx.record(Record::Change(change.clone()));
        self.changes.insert(id, change.clone());
        Ok(change)
    }

    pub(crate) fn set_state(
        &mut self,
        id: ChangeId,
        state: ChangeState,
        reason: Option<String>,
        now: Millis,
        fx: &mut Effects,
    ) {
        let c = self.changes.get_mut(&id).expect("known change");
        c.state = state;
        if reason.is_some() || state == ChangeState::Queued {
            c.reason = reason;
        }
        c.updated_at = now;
        fx.record(Record::Change(c.clone()));
        if state.is_final() {
            self.infra.remove(&id);
        }
    }

    /// The lane's changes that may be tested now, in queue order; `None` while the lane
    /// is held. A change in its grace period waits; after it, it is tested alone (it may
    /// break exactly the jobs it was held for, and nothing else's verdict may ride on it).
    /// So do changes held after infrastructure failures and changes waiting for the
    /// candidate they may conflict with.
    fn testable(&self, repo: &str, branch: &str, now: Millis) -> Option<Vec<&Change>> {
        if self
            .holds
            .get(&(repo.to_string(), branch.to_string()))
            .is_some_and(|h| h.until > now)
        {
            return None;
        }
        let mut queue = self.lane(repo, branch);
        queue.retain(|c| c.held.as_ref().is_none_or(|h| h.until <= now));
        queue.retain(|c| self.infra.get(&c.id).is_none_or(|h| h.until <= now));
        queue.retain(|c| !self.waits.contains_key(&c.id));
        Some(queue)
    }

    /// Whether `c` is tested by itself: attribution could not pin a failure, it waited
    /// for a candidate it conflicted with, or it is held by the grace policy.
    fn alone(&self, c: &Change) -> bool {
        self.solo.contains(&c.id) || c.held.is_some()
    }

    /// The next urgent change of a lane, tested alone and at once (unless the lane or
    /// the change is held).
    pub(crate) fn urgent(&self, repo: &str, branch: &str, now: Millis) -> Option<ChangeId> {
        self.testable(repo, branch, now)?
            .into_iter()
            .find(|c| c.priority == Priority::Urgent)
            .map(|c| c.id)
    }

    /// What a lane with room in its window does next; `batch_max` is the batch size for
    /// now (at most the lane's).
    pub(crate) fn next(
        &self,
        repo: &str,
        branch: &str,
        lane: &LaneConfig,
        batch_max: usize,
        now: Millis,
    ) -> Next {
        let (batch_max, delay) = (
            batch_max.clamp(1, lane.batch_max.max(1)),
            lane.batch_delay_ms,
        );
        let Some(mut queue) = self.testable(repo, branch, now) else {
            return Next::Idle;
        };
        // Mass rebuilds wait for the stage; what passed it comes back as a group.
        queue.retain(|c| !self.in_stage(c.id));
        let alone = |c: &Change| self.alone(c);
        let oldest = queue.iter().map(|c| c.submitted_at).min();
        // A change to be tested separately goes alone; a batch stops before one. A group
        // that passed the stage goes together, merged in the order the stage built it.
        let ids: Vec<ChangeId> = match queue.first() {
            Some(c) if alone(c) => vec![c.id],
            Some(c) if c.route.passed_by.is_some() => {
                let group = c.route.passed_by;
                return Next::Test(
                    queue
                        .iter()
                        .filter(|x| x.route.passed_by == group && !alone(x))
                        .map(|x| x.id)
                        .collect(),
                );
            }
            Some(_) | None => {
                let mut ids = vec![];
                let mut limit = batch_max;
                for c in queue
                    .iter()
                    .take_while(|c| !alone(c) && c.route.passed_by.is_none())
                {
                    limit = limit.min(self.caps.get(&c.id).copied().unwrap_or(usize::MAX));
                    if ids.len() >= limit {
                        break;
                    }
                    ids.push(c.id);
                }
                ids
            }
        };
        if let Some(oldest) = oldest {
            // Gather a fuller batch first, unless it is full already.
            if delay > 0 && ids.len() < batch_max && oldest + delay > now {
                return Next::Gather(oldest + delay);
            }
        }
        if ids.is_empty() {
            Next::Idle
        } else {
            Next::Test(ids)
        }
    }

    /// The changes the lane's mass-rebuild stage tests next, in queue order: up to
    /// `batch_max`, a change to be tested alone by itself.
    pub(crate) fn stage_next(
        &self,
        repo: &str,
        branch: &str,
        batch_max: usize,
        now: Millis,
    ) -> Vec<ChangeId> {
        let Some(mut queue) = self.testable(repo, branch, now) else {
            return vec![];
        };
        queue.retain(|c| self.in_stage(c.id));
        let alone = |c: &Change| self.alone(c);
        match queue.first() {
            Some(c) if alone(c) => vec![c.id],
            _ => queue
                .iter()
                .take(batch_max.max(1))
                .take_while(|c| !alone(c))
                .map(|c| c.id)
                .collect(),
        }
    }

    /// A candidate holding `id` was given up for infrastructure reasons. Returns when the
    /// change is tested again if that used up its budget (`None`: at once, as before).
    pub(crate) fn infra_failed(
        &mut self,
        id: ChangeId,
        budget: u32,
        now: Millis,
    ) -> Option<Millis> {
        let h = self.infra.entry(id).or_insert(InfraHold {
            failures: 0,
            until: now,
        });
        h.failures += 1;
        if h.failures < budget.max(1) {
            return None;
        }
        let over = (h.failures - budget.max(1)).min(16);
        h.until = now
            + INFRA_HOLD_MS
                .saturating_mul(1 << over)
                .min(INFRA_HOLD_MAX_MS);
        Some(h.until)
    }

    /// `id` conflicted with changes merged before it in candidate `cand`: it waits until
    /// that candidate is decided, then is tested alone (a conflict is only certain on the
    /// target's tip with nothing merged before it).
    pub(crate) fn wait_for(&mut self, id: ChangeId, cand: super::CandId) {
        self.waits.insert(id, cand);
        self.solo.insert(id);
    }

    /// Candidate `cand` is decided: the changes waiting for it are free to go.
    pub(crate) fn candidate_done(&mut self, cand: super::CandId) {
        self.waits.retain(|_, c| *c != cand);
    }

    /// `id` was in a batch of `n` that rebuilt too much together: from now on it is
    /// tested in batches of at most half that.
    pub(crate) fn split(&mut self, id: ChangeId, n: usize) {
        let cap = (n / 2).max(1);
        let c = self.caps.entry(id).or_insert(cap);
        *c = (*c).min(cap);
    }

    /// Attribution could not pin a failure: test `id` alone from now on.
    pub(crate) fn test_alone(&mut self, id: ChangeId) {
        self.solo.insert(id);
    }

    /// Holds a lane: required jobs fail on its target `base` itself, so nothing can land
    /// until the target is fixed. Returns when the lane tests again even if the target
    /// did not move.
    pub(crate) fn hold(
        &mut self,
        cfg: &CoreConfig,
        lane: (String, String),
        base: &str,
        now: Millis,
    ) -> Millis {
        let round = match self.hold_rounds.get(&lane) {
            Some((b, n)) if b == base => n + 1,
            _ => 0,
        };
        self.hold_rounds
            .insert(lane.clone(), (base.to_string(), round));
        let delay = HOLD_RETRY_MS
            .saturating_mul(1 << round.min(16))
            .min(cfg.failure_ttl_ms.max(1));
        let until = now + delay;
        self.holds.insert(
            lane,
            Hold {
                base: base.to_string(),
                until,
                next_poll: now + cfg.target_poll_ms.max(1),
                polling: false,
            },
        );
        until
    }

    /// The held lanes whose target is due to be read, marked as being read.
    pub(crate) fn polls_due(&mut self, cfg: &CoreConfig, now: Millis) -> Vec<(String, String)> {
        // An ended hold is gone (its lane tested again already, or has nothing to test).
        self.holds.retain(|_, h| h.until > now);
        let mut due = vec![];
        for (lane, h) in self.holds.iter_mut() {
            if !h.polling && h.next_poll <= now {
                h.polling = true;
                h.next_poll = now + cfg.target_poll_ms.max(1);
                due.push(lane.clone());
            }
        }
        due
    }

    /// What the remote says the target of a lane is. Returns the lane's old base when the
    /// target moved and the hold ended.
    pub(crate) fn on_target_polled(
        &mut self,
        lane: &(String, String),
        result: &Result<String, String>,
    ) -> Option<String> {
        let h = self.holds.get_mut(lane)?;
        h.polling = false;
        match result {
            Ok(tip) if *tip != h.base => self.holds.remove(lane).map(|h| h.base),
            Ok(_) | Err(_) => None,
        }
    }

    /// When a held lane must be looked at again: a poll or the end of the hold.
    pub(crate) fn next_wakeup(&self) -> Option<Millis> {
        self.holds
            .values()
            .flat_map(|h| {
                (!h.polling)
                    .then_some(h.next_poll)
                    .into_iter()
                    .chain([h.until])
            })
            .chain(self.grace.first().map(|(t, _)| *t))
            .min()
    }

    /// Something landed on the lane: its target is fine again.
    pub(crate) fn release(&mut self, lane: &(String, String)) {
        self.holds.remove(lane);
        self.hold_rounds.remove(lane);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::RepoConfig;

    fn cfg(batch_max: usize, delay: Millis) -> (CoreConfig, LaneConfig) {
        let lane = LaneConfig {
            batch_max,
            required: vec![],
            batch_delay_ms: delay,
            build_priority: None,
            breakage: Default::default(),
            mass_rebuild_threshold: None,
            window: 1,
            window_floor: 1,
        };
        let mut c = CoreConfig::default();
        c.repos.insert(
            "r".into(),
            RepoConfig {
                lanes: [("main".to_string(), lane.clone())].into(),
            },
        );
        (c, lane)
    }

    fn submit(q: &mut Queue, cfg: &CoreConfig, prio: Priority, now: Millis) -> ChangeId {
        let s = Submission {
            repo: "r".into(),
            target: "main".into(),
            git_ref: "refs/x".into(),
            head: "h".into(),
            title: "t".into(),
            author: "a".into(),
            priority: prio,
            pr: None,
            approver: None,
        };
        q.submit(cfg, s, now, &mut Effects::default()).unwrap().id
    }

    #[test]
    fn a_batch_takes_the_most_urgent_first_up_to_its_size() {
        let (c, lane) = cfg(2, 0);
        let mut q = Queue::new(vec![]);
        let a = submit(&mut q, &c, Priority::Normal, 1);
        let b = submit(&mut q, &c, Priority::Normal, 2);
        let u = submit(&mut q, &c, Priority::Urgent, 3);
        assert_eq!(
            q.next("r", "main", &lane, lane.batch_max, 3),
            Next::Test(vec![u, a])
        );
        let _ = b;
    }

    #[test]
    fn a_change_to_be_tested_alone_goes_alone_and_ends_a_batch() {
        let (c, lane) = cfg(5, 0);
        let mut q = Queue::new(vec![]);
        let a = submit(&mut q, &c, Priority::Normal, 1);
        let b = submit(&mut q, &c, Priority::Normal, 2);
        let d = submit(&mut q, &c, Priority::Normal, 3);
        q.test_alone(b);
        assert_eq!(
            q.next("r", "main", &lane, lane.batch_max, 3),
            Next::Test(vec![a])
        );
        q.set_state(a, ChangeState::Merged, None, 4, &mut Effects::default());
        assert_eq!(
            q.next("r", "main", &lane, lane.batch_max, 4),
            Next::Test(vec![b])
        );
        let _ = d;
    }

    #[test]
    fn a_short_batch_waits_for_the_delay_unless_full() {
        let (c, lane) = cfg(2, 100);
        let mut q = Queue::new(vec![]);
        submit(&mut q, &c, Priority::Normal, 10);
        assert_eq!(
            q.next("r", "main", &lane, lane.batch_max, 50),
            Next::Gather(110)
        );
        assert!(matches!(
            q.next("r", "main", &lane, lane.batch_max, 110),
            Next::Test(_)
        ));
        submit(&mut q, &c, Priority::Normal, 60);
        assert!(
            matches!(q.next("r", "main", &lane, lane.batch_max, 60), Next::Test(v) if v.len() == 2)
        );
    }

    #[test]
    fn a_held_lane_waits_for_its_target_to_move() {
        let (c, lane) = cfg(1, 0);
        let mut q = Queue::new(vec![]);
        submit(&mut q, &c, Priority::Normal, 0);
        let key = ("r".to_string(), "main".to_string());
        let until = q.hold(&c, key.clone(), "b0", 0);
        assert_eq!(until, HOLD_RETRY_MS.min(c.failure_ttl_ms));
        assert_eq!(q.next("r", "main", &lane, lane.batch_max, 1), Next::Idle);
        assert_eq!(q.next_wakeup(), Some(c.target_poll_ms));
        assert!(q.polls_due(&c, 1).is_empty(), "not due yet");
        let t = c.target_poll_ms;
        assert_eq!(q.polls_due(&c, t), vec![key.clone()]);
        assert!(q.polls_due(&c, t).is_empty(), "one read at a time");
        assert_eq!(q.on_target_polled(&key, &Ok("b0".into())), None);
        assert_eq!(q.on_target_polled(&key, &Err("offline".into())), None);
        assert_eq!(q.next("r", "main", &lane, lane.batch_max, t), Next::Idle);
        assert_eq!(
            q.on_target_polled(&key, &Ok("b1".into())),
            Some("b0".into())
        );
        assert!(matches!(
            q.next("r", "main", &lane, lane.batch_max, t),
            Next::Test(_)
        ));
    }

    #[test]
    fn a_hold_ends_when_the_failures_that_caused_it_expire() {
        let (c, lane) = cfg(1, 0);
        let mut q = Queue::new(vec![]);
        submit(&mut q, &c, Priority::Normal, 0);
        let until = q.hold(&c, ("r".into(), "main".into()), "b0", 0);
        assert_eq!(
            q.next("r", "main", &lane, lane.batch_max, until - 1),
            Next::Idle
        );
        assert!(matches!(
            q.next("r", "main", &lane, lane.batch_max, until),
            Next::Test(_)
        ));
        assert!(q.polls_due(&c, until).is_empty());
        assert_eq!(q.next_wakeup(), None, "an ended hold wakes nobody");
    }

    #[test]
    fn holds_on_the_same_base_wait_twice_as_long_each_time_up_to_the_failure_ttl() {
        let (c, _) = cfg(1, 0);
        let mut q = Queue::new(vec![]);
        let key = ("r".to_string(), "main".to_string());
        let waits: Vec<Millis> = (0..10).map(|_| q.hold(&c, key.clone(), "b0", 0)).collect();
        assert_eq!(waits[0], HOLD_RETRY_MS);
        assert_eq!(waits[1], 2 * HOLD_RETRY_MS);
        assert!(waits.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*waits.last().unwrap(), c.failure_ttl_ms);
        // Another base, or a landing, starts again from the first wait.
        assert_eq!(q.hold(&c, key.clone(), "b1", 0), HOLD_RETRY_MS);
        q.hold(&c, key.clone(), "b1", 0);
        q.release(&key);
        assert_eq!(q.hold(&c, key.clone(), "b1", 0), HOLD_RETRY_MS);
    }

    #[test]
    fn a_batch_that_rebuilt_too_much_is_split_in_halves() {
        let (c, lane) = cfg(8, 0);
        let mut q = Queue::new(vec![]);
        let ids: Vec<ChangeId> = (0..8)
            .map(|i| submit(&mut q, &c, Priority::Normal, i))
            .collect();
        for id in &ids {
            q.split(*id, 8);
        }
        let Next::Test(first) = q.next("r", "main", &lane, 8, 10) else {
            panic!("nothing to test");
        };
        assert_eq!(first, ids[..4]);
        // A half that rebuilt too much again is halved again; a cap never grows.
        for id in &ids[..4] {
            q.split(*id, 4);
            q.split(*id, 8);
        }
        assert_eq!(
            q.next("r", "main", &lane, 8, 10),
            Next::Test(ids[..2].to_vec())
        );
    }

    #[test]
    fn numbering_goes_on_after_restored_changes() {
        let (c, _) = cfg(1, 0);
        let mut first = Queue::new(vec![]);
        submit(&mut first, &c, Priority::Normal, 0);
        submit(&mut first, &c, Priority::Normal, 0);
        let restored: Vec<Change> = first.changes.values().cloned().collect();
        let mut q = Queue::new(restored);
        assert_eq!(submit(&mut q, &c, Priority::Normal, 0), 3);
    }
}
