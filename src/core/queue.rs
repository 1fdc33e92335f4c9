//! The queue machine: changes and the lanes they wait in. A lane is one (repository,
//! branch) pair of the configuration, with its queue in priority order; this machine
//! decides which changes a lane tests next (batch size, batch delay, changes to be
//! tested alone, lanes held because the target itself fails).

use std::collections::{BTreeMap, BTreeSet};

use super::effects::Effects;
use super::{CoreConfig, LaneConfig, Millis, Record, Refusal, Submission};
use crate::core::change::{Change, ChangeId, ChangeState};

#[derive(Debug, Default)]
pub(crate) struct Queue {
    pub(crate) changes: BTreeMap<ChangeId, Change>,
    next_change: ChangeId,
    /// Changes to be tested one at a time (attribution could not pin a failure).
    solo: BTreeSet<ChangeId>,
    /// Lanes waiting because required jobs fail on the target itself: (until, times).
    holds: BTreeMap<(String, String), (Millis, u32)>,
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
        Queue {
            next_change: changes.iter().map(|c| c.id + 1).max().unwrap_or(1),
            changes: changes.into_iter().map(|c| (c.id, c)).collect(),
            ..Queue::default()
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
    }

    /// What an idle lane does next.
    pub(crate) fn next(&self, repo: &str, branch: &str, lane: &LaneConfig, now: Millis) -> Next {
        let (batch_max, delay) = (lane.batch_max, lane.batch_delay_ms);
        if self
            .holds
            .get(&(repo.to_string(), branch.to_string()))
            .is_some_and(|h| h.0 > now)
        {
            return Next::Idle;
        }
        let queue = self.lane(repo, branch);
        let oldest = queue.iter().map(|c| c.submitted_at).min();
        // A change to be tested separately goes alone; a batch stops before one.
        let ids: Vec<ChangeId> = match queue.first() {
            Some(c) if self.solo.contains(&c.id) => vec![c.id],
            Some(_) | None => queue
                .iter()
                .take(batch_max)
                .take_while(|c| !self.solo.contains(&c.id))
                .map(|c| c.id)
                .collect(),
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

    /// Attribution could not pin a failure: test `id` alone from now on.
    pub(crate) fn test_alone(&mut self, id: ChangeId) {
        self.solo.insert(id);
    }

    /// Holds a lane: its target fails on its own. Returns when the lane tries again; the
    /// delay grows with each hold in a row.
    pub(crate) fn hold(&mut self, cfg: &CoreConfig, lane: (String, String), now: Millis) -> Millis {
        let n = self.holds.get(&lane).map_or(0, |h| h.1) + 1;
        let until = now + cfg.backoff(n);
        self.holds.insert(lane, (until, n));
        until
    }

    /// Something landed on the lane: its target is fine again.
    pub(crate) fn release(&mut self, lane: &(String, String)) {
        self.holds.remove(lane);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::change::Priority;
    use crate::core::RepoConfig;

    fn cfg(batch_max: usize, delay: Millis) -> (CoreConfig, LaneConfig) {
        let lane = LaneConfig {
            batch_max,
            required: vec![],
            batch_delay_ms: delay,
            build_priority: None,
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
        assert_eq!(q.next("r", "main", &lane, 3), Next::Test(vec![u, a]));
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
        assert_eq!(q.next("r", "main", &lane, 3), Next::Test(vec![a]));
        q.set_state(a, ChangeState::Merged, None, 4, &mut Effects::default());
        assert_eq!(q.next("r", "main", &lane, 4), Next::Test(vec![b]));
        let _ = d;
    }

    #[test]
    fn a_short_batch_waits_for_the_delay_unless_full() {
        let (c, lane) = cfg(2, 100);
        let mut q = Queue::new(vec![]);
        submit(&mut q, &c, Priority::Normal, 10);
        assert_eq!(q.next("r", "main", &lane, 50), Next::Gather(110));
        assert!(matches!(q.next("r", "main", &lane, 110), Next::Test(_)));
        submit(&mut q, &c, Priority::Normal, 60);
        assert!(matches!(q.next("r", "main", &lane, 60), Next::Test(v) if v.len() == 2));
    }

    #[test]
    fn a_held_lane_waits_longer_each_time_and_is_released_by_a_landing() {
        let (c, lane) = cfg(1, 0);
        let mut q = Queue::new(vec![]);
        submit(&mut q, &c, Priority::Normal, 0);
        let key = ("r".to_string(), "main".to_string());
        let first = q.hold(&c, key.clone(), 0);
        let second = q.hold(&c, key.clone(), 0);
        assert!(second > first);
        assert_eq!(q.next("r", "main", &lane, 1), Next::Idle);
        q.release(&key);
        assert!(matches!(q.next("r", "main", &lane, 1), Next::Test(_)));
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
