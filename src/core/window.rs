//! Speculation: up to `window` candidates in flight per lane, each merged onto the
//! commit of the candidate ahead of it (the head onto the target's tip). The chain is
//! level-triggered: `kick` sends whatever a candidate can do now that the one ahead of
//! it has a commit (prepare), has landed (land), or is gone (attribute a parked
//! failure); every change to a chain ends with a kick.
//!
//! Why a failure behind waits: a candidate's verdict is taken against the commit ahead
//! of it. Until that commit has landed, a failure may be the one ahead's doing, so it
//! is parked, not attributed; when the one ahead fails instead, the candidates behind
//! it are prepared again without it and the parked verdict is moot.

use std::collections::BTreeSet;

use super::blocker::Blocker;
use super::candidate::{Candidates, Ctx, Phase};
use super::{CandId, Millis};
use crate::core::change::{short, ChangeState, Priority};

/// A lane: (repository, branch).
pub(crate) type Lane = (String, String);

/// Failure-rate memory: each decided change weighs this much (the last ~10 count).
const RATE_WEIGHT: f64 = 0.1;
/// The failure rate a lane starts with before it has decided anything.
const RATE_PRIOR: f64 = 0.05;

impl Candidates {
    /// The lane's candidates in flight, head (the next to land) first.
    pub(crate) fn chain(&self, lane: &Lane) -> &[CandId] {
        self.in_flight.get(lane).map_or(&[], Vec::as_slice)
    }

    /// How many candidates the lane may have in flight now: between `window_floor` and
    /// `window`, growing by one with each landing and halving with each failure.
    pub(crate) fn window_now(&self, cx: &Ctx, lane: &Lane) -> usize {
        let Some(l) = cx.cfg.repos.get(&lane.0).and_then(|r| r.lanes.get(&lane.1)) else {
            return 1;
        };
        let (floor, max) = (l.window_floor.clamp(1, l.window.max(1)), l.window.max(1));
        self.windows
            .get(lane)
            .copied()
            .unwrap_or(max)
            .clamp(floor, max)
    }

    fn adapt_window(&mut self, cx: &Ctx, lane: &Lane, landed: bool) {
        let w = self.window_now(cx, lane);
        let next = if landed { w + 1 } else { w / 2 };
        self.windows.insert(lane.clone(), next);
    }

    /// The lane's recent failure rate: rejected changes among decided ones, weighted
    /// towards the recent.
    pub(crate) fn failure_rate(&self, lane: &Lane) -> f64 {
        self.rates.get(lane).copied().unwrap_or(RATE_PRIOR)
    }

    pub(crate) fn decided(&mut self, lane: &Lane, failed: bool) {
        let p = self.failure_rate(lane);
        let x = if failed { 1.0 } else { 0.0 };
        self.rates
            .insert(lane.clone(), p * (1.0 - RATE_WEIGHT) + x * RATE_WEIGHT);
    }

    /// A new candidate joins its lane: behind the others, or (a change with `urgent`
    /// priority tested alone) ahead of every candidate not already landing; those behind
    /// it are then prepared again on top of it.
    pub(crate) fn join(&mut self, cx: &mut Ctx, lane: &Lane, id: CandId, now: Millis) {
        let urgent = self.is_urgent(cx, id);
        let chain = self.chain(lane).to_vec();
        // Behind the head if its land is out, and behind urgent candidates already there.
        let at = if urgent {
            chain
                .iter()
                .take_while(|c| self.by_id[c].spec.land_sent || self.is_urgent(cx, **c))
                .count()
        } else {
            chain.len()
        };
        let chain = self.in_flight.entry(lane.clone()).or_default();
        chain.insert(at, id);
        let ahead = at.checked_sub(1).map(|i| chain[i]);
        self.by_id.get_mut(&id).expect("known").ahead = ahead;
        if urgent && at + 1 < self.in_flight[lane].len() {
            cx.fx.event(
                now,
                &lane.0,
                format!(
                    "candidate {id} on {}: urgent, tested at once; the {} candidates behind it are prepared again on top of it",
                    lane.1,
                    self.in_flight[lane].len() - at - 1
                ),
            );
            self.rebase_from(cx, lane, at + 1, now);
        }
        self.kick(cx, lane, now);
    }

    /// A candidate of one change whose priority is `urgent` (the urgent lane).
    pub(crate) fn is_urgent(&self, cx: &Ctx, id: CandId) -> bool {
        self.by_id.get(&id).is_some_and(|c| {
            c.group.is_none()
                && c.changes.len() == 1
                && cx
                    .queue
                    .changes
                    .get(&c.changes[0])
                    .is_some_and(|ch| ch.priority == Priority::Urgent)
        })
    }

    /// `id` ended without landing: it leaves its chain, and the candidates behind it are
    /// prepared again without it, on the right base.
    pub(crate) fn leave(&mut self, cx: &mut Ctx, id: CandId, now: Millis) {
        let Some(lane) = self.lane_of(id) else {
            return;
        };
        let chain = self.in_flight.get_mut(&lane).expect("lane of");
        let i = chain.iter().position(|c| *c == id).expect("lane of");
        chain.remove(i);
        self.rebase_from(cx, &lane, i, now);
        self.kick(cx, &lane, now);
        self.drop_empty(&lane);
    }

    /// The head `id` landed: the one behind it is the head now; its base is the new tip.
    pub(crate) fn landed_head(&mut self, cx: &mut Ctx, id: CandId, now: Millis) {
        let Some(lane) = self.lane_of(id) else {
            return;
        };
        self.in_flight
            .get_mut(&lane)
            .expect("lane of")
            .retain(|c| *c != id);
        if let Some(&next) = self.in_flight[&lane].first() {
            self.by_id.get_mut(&next).expect("known").ahead = None;
        }
        self.adapt_window(cx, &lane, true);
        self.kick(cx, &lane, now);
        self.drop_empty(&lane);
    }

    /// The candidate failed its verdict: the lane's window shrinks.
    pub(crate) fn failed_verdict(&mut self, cx: &Ctx, id: CandId) {
        if let Some(lane) = self.lane_of(id) {
            self.adapt_window(cx, &lane, false);
        }
    }

    fn drop_empty(&mut self, lane: &Lane) {
        if self.in_flight.get(lane).is_some_and(Vec::is_empty) {
            self.in_flight.remove(lane);
        }
    }

    fn lane_of(&self, id: CandId) -> Option<Lane> {
        self.in_flight
            .iter()
            .find(|(_, chain)| chain.contains(&id))
            .map(|(lane, _)| lane.clone())
    }

    /// Prepares again every candidate from position `from` on, each onto the one ahead
    /// of it. What they waited for stays wanted, and every remembered result is reused.
    pub(crate) fn rebase_from(&mut self, cx: &mut Ctx, lane: &Lane, from: usize, now: Millis) {
        let chain = self.chain(lane).to_vec();
        for i in from..chain.len() {
            let id = chain[i];
            let ahead = i.checked_sub(1).map(|a| chain[a]);
            let c = self.by_id.get_mut(&id).expect("in a chain");
            let mut warm = std::mem::take(&mut c.spec.warm);
            warm.extend(c.pending.iter().cloned());
            if let Some(a) = &c.attribution {
                warm.extend(a.waiting.iter().cloned());
            }
            c.reset_for_prepare();
            c.spec.stale += std::mem::take(&mut c.spec.sent);
            c.ahead = ahead;
            c.spec.land_sent = false;
            c.spec.parked = None;
            c.spec.warm = warm;
            let onto = ahead.map_or_else(
                || format!("the tip of {}", lane.1),
                |a| format!("candidate {a}"),
            );
            cx.fx.event(
                now,
                &lane.0,
                format!("candidate {id}: prepared again onto {onto}"),
            );
            for ch in self.by_id[&id].changes.clone() {
                if cx.queue.changes[&ch].state != ChangeState::Testing {
                    cx.set_state(ch, ChangeState::Testing, None, now);
                }
            }
            self.save_id(cx, id);
        }
    }

    /// Sends what the lane's candidates can do now, in chain order.
    pub(crate) fn kick(&mut self, cx: &mut Ctx, lane: &Lane, now: Millis) {
        loop {
            let chain = self.chain(lane).to_vec();
            let mut acted = false;
            for (i, &id) in chain.iter().enumerate() {
                let onto = self.onto(id);
                let c = &self.by_id[&id];
                let phase = c.phase;
                match phase {
                    Phase::Preparing if c.spec.sent == 0 => {
                        if let Some(onto) = onto {
                            self.send_prepare(cx, id, onto);
                            acted = true;
                        }
                    }
                    Phase::Landing if i == 0 && !c.spec.land_sent => {
                        let c = self.by_id.get_mut(&id).expect("known");
                        c.spec.land_sent = true;
                        let c = c.clone();
                        self.emit_land(cx, &c);
                        acted = true;
                    }
                    Phase::Building | Phase::Evaluating if i == 0 && c.spec.parked.is_some() => {
                        let blockers = self
                            .by_id
                            .get_mut(&id)
                            .expect("known")
                            .spec
                            .parked
                            .take()
                            .expect("parked");
                        cx.fx.event(
                            now,
                            &lane.0,
                            format!("candidate {id}: the candidates ahead of it landed; attributing its failure"),
                        );
                        if self.by_id[&id].pending.is_empty() && phase == Phase::Building {
                            self.judge(cx, id, now);
                        } else {
                            self.attribute(cx, id, blockers, now);
                        }
                        acted = true;
                    }
                    _ => {}
                }
                if acted {
                    break;
                }
            }
            if !acted {
                return;
            }
        }
    }

    /// What `id` is to be merged onto: `Some(None)` the target's tip, `Some(commit)` the
    /// commit of the candidate ahead; `None` while that one has no commit yet.
    pub(crate) fn onto(&self, id: CandId) -> Option<Option<String>> {
        match self.by_id[&id].ahead {
            None => Some(None),
            Some(a) => self.by_id[&a].commit().map(|c| Some(c.to_string())),
        }
    }

    /// Sends the prepare of `id` onto `onto` (`None`: the target's tip).
    pub(crate) fn send_prepare(&mut self, cx: &mut Ctx, id: CandId, onto: Option<String>) {
        let c = self.by_id.get_mut(&id).expect("known");
        c.spec.sent += 1;
        let c = c.clone();
        self.emit_prepare(cx, &c, onto);
    }

    /// Whether a prepared result still counts: the last one sent, merged onto the commit
    /// of the candidate that is ahead now.
    pub(crate) fn current_prepare(&mut self, id: CandId, base: &str) -> bool {
        let c = self.by_id.get_mut(&id).expect("known");
        if c.spec.stale > 0 {
            c.spec.stale -= 1;
            return false;
        }
        c.spec.sent = c.spec.sent.saturating_sub(1);
        if c.spec.sent > 0 {
            return false;
        }
        match c.ahead {
            None => true,
            Some(a) => self.by_id.get(&a).and_then(|a| a.commit()) == Some(base),
        }
    }

    /// A failure of `id` while a candidate ahead has not landed: parked (true), or
    /// attributed now (false).
    pub(crate) fn park(
        &mut self,
        cx: &mut Ctx,
        id: CandId,
        blockers: &[Blocker],
        now: Millis,
    ) -> bool {
        let c = self.by_id.get_mut(&id).expect("known");
        let Some(ahead) = c.ahead else {
            return false;
        };
        let first = c.spec.parked.is_none();
        c.spec.parked = Some(blockers.to_vec());
        if first {
            let repo = c.repo.clone();
            cx.fx.event(
                now,
                &repo,
                format!(
                    "candidate {id}: fails on top of candidate {ahead}; attributed once the candidates ahead have landed"
                ),
            );
        }
        true
    }

    /// Rebuilds the chains of restored candidates from their `ahead` links.
    pub(crate) fn restore_chains(&mut self, ids: Vec<CandId>) {
        let live: BTreeSet<CandId> = ids.iter().copied().collect();
        for id in ids.iter().copied() {
            let c = &self.by_id[&id];
            if c.ahead.is_some_and(|a| live.contains(&a)) {
                continue;
            }
            // A chain's head: follow who is behind whom.
            let lane = (c.repo.clone(), c.branch.clone());
            let mut chain = vec![id];
            while let Some(next) = ids
                .iter()
                .copied()
                .find(|n| self.by_id[n].ahead == chain.last().copied() && !chain.contains(n))
            {
                chain.push(next);
            }
            self.in_flight.entry(lane).or_default().extend(chain);
        }
        let heads: Vec<CandId> = self
            .in_flight
            .values()
            .filter_map(|c| c.first().copied())
            .collect();
        for h in heads {
            self.by_id.get_mut(&h).expect("known").ahead = None;
        }
    }

    /// A short description of where a candidate sits, for events.
    pub(crate) fn onto_text(&self, id: CandId) -> String {
        match self.by_id.get(&id).and_then(|c| c.ahead) {
            Some(a) => format!(
                " on top of candidate {a} ({})",
                short(self.by_id[&a].commit().unwrap_or("?"))
            ),
            None => String::new(),
        }
    }
}

/// The batch size for a lane whose recent failure rate is `p`: the `n` (1..=max) that
/// lands the most changes at the first try per candidate run.
///
/// A batch of `n` passes with probability `q^n` (`q = 1 - p`), landing `n`. When it
/// fails, attribution bisects the merge chain (about `ceil(log2 n)` probe runs, one more
/// for the follow-up of the innocents): a batch costs `1 + (1 - q^n) * (1 + ceil(log2
/// n))` runs on average, and lands `n * q^n` changes at once. Maximising the ratio keeps
/// batches small when changes often fail (innocents would wait through bisection) and
/// large when they rarely do.
pub fn adaptive_batch(p: f64, max: usize) -> usize {
    let max = max.max(1);
    let q = (1.0 - p.clamp(0.0, 1.0)).max(0.0);
    let value = |n: usize| -> f64 {
        let pass = q.powi(n as i32);
        let bisect = if n > 1 {
            (n as f64).log2().ceil() + 1.0
        } else {
            0.0
        };
        n as f64 * pass / (1.0 + (1.0 - pass) * bisect)
    };
    (1..=max)
        .max_by(|a, b| {
            value(*a)
                .partial_cmp(&value(*b))
                .unwrap_or(std::cmp::Ordering::Equal)
                // Ties go to the smaller batch.
                .then(b.cmp(a))
        })
        .unwrap_or(1)
}

impl Candidates {
    /// Every derivation a rebased candidate waited for before it was prepared again.
    pub(crate) fn warm(&self) -> impl Iterator<Item = &String> {
        self.by_id.values().flat_map(|c| c.spec.warm.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::adaptive_batch;
    use proptest::prelude::*;

    /// Changes landed at the first try per candidate run, estimated by playing batches
    /// of `n` with a failure rate `p`: a batch that fails costs its bisection probes
    /// and the follow-up run.
    fn simulated(n: usize, p: f64, rng: &mut fastrand::Rng) -> f64 {
        let (mut landed, mut runs) = (0.0, 0.0);
        for _ in 0..20_000 {
            runs += 1.0;
            if (0..n).all(|_| rng.f64() >= p) {
                landed += n as f64;
            } else if n > 1 {
                runs += (n as f64).log2().ceil() + 1.0;
            }
        }
        landed / runs
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

        /// The size chosen is within noise of the best size found by playing the batches.
        #[test]
        fn the_batch_size_is_the_best_one_played(p in 0.0f64..0.6, max in 1usize..=16, seed: u64) {
            let mut rng = fastrand::Rng::with_seed(seed);
            let n = adaptive_batch(p, max);
            prop_assert!((1..=max).contains(&n));
            let chosen = simulated(n, p, &mut rng);
            let best = (1..=max).map(|m| simulated(m, p, &mut rng)).fold(0.0, f64::max);
            prop_assert!(chosen >= best * 0.93 - 0.01, "p {p}: {n} gives {chosen}, best {best}");
        }

        /// More failures never make batches bigger.
        #[test]
        fn batches_shrink_as_failures_grow(p in 0.0f64..0.99, d in 0.0f64..0.3, max in 1usize..=32) {
            prop_assert!(adaptive_batch((p + d).min(1.0), max) <= adaptive_batch(p, max));
        }
    }

    #[test]
    fn figures_quoted_in_the_design() {
        assert_eq!(adaptive_batch(0.0, 16), 16);
        assert_eq!(adaptive_batch(0.02, 8), 8);
        assert_eq!(adaptive_batch(0.10, 16), 4);
        assert_eq!(adaptive_batch(0.30, 16), 1);
    }
}
