//! The pure decision core. It takes inputs (a change was submitted, a candidate was
//! prepared, an evaluation or build finished, a timer fired) with the current time and
//! returns commands as data. It reads no clock, spawns nothing and touches no file: the
//! shell's driver performs the commands and feeds their results back. The core uses
//! nothing outside this module (`tests/purity.rs` checks). SQLite is the source of
//! truth: every state change leaves as a `Record` command, applied before the
//! effects of the same step, and `Core::restore` rebuilds the state after a crash.

mod attribution;
#[cfg(test)]
mod attribution_props;
mod blocker;
pub mod breakage;
mod builds;
mod candidate;
pub mod change;
mod channel;
#[cfg(test)]
mod channel_tests;
mod channel_types;
pub mod commands;
#[cfg(test)]
mod commands_tests;
pub mod compare;
mod effects;
pub mod evaluation;
mod evidence;
pub mod forge;
mod grace;
pub mod groups;
mod liveness;
mod messages;
pub mod notify;
pub mod outcome;
mod pulls;
#[cfg(test)]
mod pulls_tests;
mod queue;
pub mod report;
pub mod scheduler;
mod snapshot;
mod stage;
mod steps;
#[cfg(test)]
mod steps_props;
#[cfg(test)]
mod tests;
mod verdict;
mod window;
pub use window::adaptive_batch;
pub mod verify;
pub mod why;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::core::change::{Change, ChangeId, ChangeState};
use crate::core::evaluation::Evaluation;
use crate::core::outcome::OutcomeClass;

use builds::BuildNews;
pub use candidate::{Candidate, Phase};
pub use channel::{
    Advance, AdvanceResult, Advancing, Blocked, Channel, ChannelConfig, ChannelState, GateJob,
    GateTest, SourcePoll, TestPhase, HISTORY_KEEP,
};
pub use messages::{
    BuildInput, BuilderIdentity, CandidateInput, ChannelInput, Command, Input, LandResult,
    Prepared, ProbeResult, QueueInput, Record, Refusal, Submission,
};
pub use snapshot::Snapshot;

pub type CandId = u64;
pub type ProbeId = u64;
/// Milliseconds since the Unix epoch, always passed in by the shell.
pub type Millis = i64;

#[derive(Debug, Clone)]
pub struct LaneConfig {
    pub batch_max: usize,
    pub required: Vec<String>,
    /// Wait this long after a change is queued to gather a fuller batch.
    pub batch_delay_ms: Millis,
    /// Priority class of the lane's builds; `None`: the most urgent change's.
    pub build_priority: Option<crate::core::change::Priority>,
    /// Candidates in flight at once, each built on top of the one before (1: none).
    pub window: usize,
    /// The least the effective window shrinks to after failures.
    pub window_floor: usize,
    /// What a change that newly breaks jobs gets: rejected, or held and marked broken.
    pub breakage: breakage::BreakagePolicy,
    /// A change that rebuilds at least this many jobs on some system goes through the
    /// mass-rebuild stage first (`stage.rs`); `None`: no stage.
    pub mass_rebuild_threshold: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct RepoConfig {
    pub lanes: BTreeMap<String, LaneConfig>,
}

#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub repos: BTreeMap<String, RepoConfig>,
    /// How long a genuine failure is remembered.
    pub failure_ttl_ms: Millis,
    /// First delay before re-dispatching after an infrastructure outcome; doubles each time.
    pub retry_delay_ms: Millis,
    pub builders: Vec<scheduler::BuilderSpec>,
    /// Infrastructure failures of one step before its requesters give up on it for now.
    pub infra_retries: u32,
    /// Candidates of one change in a row given up for infrastructure reasons before the
    /// change is held (queued, with the reason, tested again after a growing delay).
    pub infra_budget: u32,
    /// Failed builds are built again this many times before the failure is believed.
    pub failure_retries: u32,
    /// Consecutive infrastructure failures that quarantine a builder.
    pub quarantine_after: u32,
    /// First delay before probing a quarantined builder again; doubles up to 10 min.
    pub probe_delay_ms: Millis,
    /// Channels by name.
    pub channels: BTreeMap<String, ChannelConfig>,
    /// How often a held lane (required jobs fail on its target itself) reads its
    /// target, to test again as soon as someone pushes a fix outside the queue.
    pub target_poll_ms: Millis,
    /// Final changes and finished candidates kept in memory (the most recent ones), for the
    /// pages and answers about recent results; older ones are only in the database. Live
    /// state (queued and testing changes, candidates in flight) is always kept.
    pub keep_final: usize,
    /// What goes to the binary cache (`[cache]`); `None`: there is no cache.
    pub cache: Option<CacheUpload>,
    /// Verified builds (`[verify]`); `None`: none.
    pub verify: Option<verify::VerifyPolicy>,
    /// A dispatched build whose result has not arrived after this long is stopped and
    /// retried as an infrastructure failure (`liveness.rs`).
    pub build_deadline_ms: Millis,
    /// The same for an evaluation: asked for again.
    pub eval_deadline_ms: Millis,
}

/// Which outputs the shell uploads to the binary cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheUpload {
    /// Closures of landed commits' required jobs and of channel gates: what users of the
    /// branch and the channel substitute.
    Gated,
    /// Those, and every successful build.
    All,
}

/// Counts one more consecutive failure of `key`; returns the count (1 the first time).
fn next_attempt<K: Ord>(failures: &mut BTreeMap<K, u32>, key: K) -> u32 {
    let n = failures.entry(key).or_insert(0);
    *n += 1;
    *n
}

impl CoreConfig {
    /// The delay before the `n`th retry (1-based): the retry delay, doubling, at most
    /// ten minutes.
    pub(crate) fn backoff(&self, n: u32) -> Millis {
        let base = self.retry_delay_ms.max(1);
        base.saturating_mul(1 << n.saturating_sub(1).min(16))
            .min(600_000.max(base))
    }
}

/// The product's defaults, held once: the configuration's defaults are these.
impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            repos: BTreeMap::new(),
            failure_ttl_ms: 24 * 3_600_000,
            retry_delay_ms: 5_000,
            builders: vec![],
            infra_retries: 5,
            infra_budget: 3,
            failure_retries: 1,
            quarantine_after: 3,
            probe_delay_ms: 30_000,
            channels: BTreeMap::new(),
            target_poll_ms: 60_000,
            keep_final: 1_000,
            cache: None,
            verify: None,
            build_deadline_ms: 48 * 3_600_000,
            eval_deadline_ms: 4 * 3_600_000 + 600_000,
        }
    }
}

/// A remembered build result, by drvPath. Infrastructure outcomes are never remembered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memo {
    pub class: OutcomeClass,
    pub log_tail: String,
    pub root_drv: Option<String>,
    /// Failures expire; successes do not.
    pub expires_at: Option<Millis>,
}

impl Memo {
    pub fn ok(&self) -> bool {
        self.class == OutcomeClass::Success
    }
}

/// The core: four machines composed. Each owns its state and its inputs; what one
/// needs of another it gets through a context borrowed for the call (`Ctx`, `GateCtx`),
/// and what it must tell another comes back here as data (`BuildNews`, a landed lane).
///
/// - `queue`: changes and lanes, which changes a lane tests next (`queue.rs`);
/// - `cands`: candidates with attribution (`candidate.rs`, `attribution.rs`);
/// - `builds`: evaluations, the build memo, the scheduler (`builds.rs`);
/// - `gating`: channels and their gate tests (`channel.rs`).
#[derive(Debug)]
pub struct Core {
    config: CoreConfig,
    queue: queue::Queue,
    cands: candidate::Candidates,
    builds: builds::Builds,
    gating: channel::Gating,
    fx: effects::Effects,
    /// Changes and candidates in memory beyond which the next input prunes (`prune`).
    prune_at: usize,
    pulls: pulls::Pulls,
    /// The broken registry (`breakage.rs`).
    broken: breakage::Registry,
}

impl Core {
    pub fn new(config: CoreConfig) -> Core {
        Core::compose(config, vec![], vec![], vec![])
    }

    /// The machines, before any candidate is taken back or any lane looked at.
    fn compose(
        config: CoreConfig,
        changes: Vec<Change>,
        memo: Vec<(String, Memo)>,
        channels: Vec<(ChannelState, Vec<Advance>)>,
    ) -> Core {
        let mut fx = effects::Effects::default();
        for b in &config.builders {
            fx.push(Command::ProbeBuilder {
                builder: b.id.clone(),
            });
        }
        let mut builds = builds::Builds::new(&config);
        builds.memo = memo.into_iter().collect();
        let gating = channel::Gating::restore(
            &mut channel::GateCtx {
                cfg: &config,
                builds: &mut builds,
                fx: &mut fx,
            },
            channels,
        );
        Core {
            queue: queue::Queue::new(changes),
            cands: candidate::Candidates::new(),
            builds,
            gating,
            fx,
            config,
            prune_at: 0,
            pulls: pulls::Pulls::default(),
            broken: breakage::Registry::default(),
        }
    }

    /// Rebuilds the core from persisted state. Interrupted candidates are prepared again
    /// (evaluations and build results are reused); a candidate caught while landing is
    /// landed again, which is idempotent.
    pub fn restore(
        config: CoreConfig,
        changes: Vec<Change>,
        candidates: Vec<Candidate>,
        memo: Vec<(String, Memo)>,
        channels: Vec<(ChannelState, Vec<Advance>)>,
        now: Millis,
    ) -> Core {
        let mut core = Core::compose(config, changes, memo, channels);
        let (cands, mut cx) = core.split();
        let attached = cands.restore(&mut cx, candidates);
        let orphans: Vec<ChangeId> = cx
            .queue
            .changes
            .values()
            .filter(|c| c.state == ChangeState::Testing && !attached.contains(&c.id))
            .map(|c| c.id)
            .collect();
        for id in orphans {
            cx.set_state(id, ChangeState::Queued, None, now);
        }
        core.tick(now);
        core.prune_if_due();
        core
    }

    /// The candidates machine and the context it works in.
    fn split(&mut self) -> (&mut candidate::Candidates, candidate::Ctx<'_>) {
        (
            &mut self.cands,
            candidate::Ctx {
                cfg: &self.config,
                queue: &mut self.queue,
                builds: &mut self.builds,
                fx: &mut self.fx,
                broken: &mut self.broken,
            },
        )
    }

    fn gate_ctx(&mut self) -> (&mut channel::Gating, channel::GateCtx<'_>) {
        (
            &mut self.gating,
            channel::GateCtx {
                cfg: &self.config,
                builds: &mut self.builds,
                fx: &mut self.fx,
            },
        )
    }

    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// Drains the commands produced so far.
    pub fn take_commands(&mut self) -> Vec<Command> {
        let mut cmds = self.fx.take();
        self.pull_answers(&mut cmds);
        cmds
    }

    pub fn next_wakeup(&self) -> Option<Millis> {
        self.fx
            .next_due()
            .into_iter()
            .chain(self.gating.next_wakeup())
            .chain(self.queue.next_wakeup())
            .chain(self.builds.deadlines.next())
            .min()
    }

    pub fn change(&self, id: ChangeId) -> Option<&Change> {
        self.queue.changes.get(&id)
    }

    pub fn changes(&self) -> impl Iterator<Item = &Change> {
        self.queue.changes.values()
    }

    pub fn candidates(&self) -> impl Iterator<Item = &Candidate> {
        self.cands.by_id.values()
    }

    pub fn candidate(&self, id: CandId) -> Option<&Candidate> {
        self.cands.by_id.get(&id)
    }

    /// The lane's candidate next to land (the head of its window).
    pub fn in_flight(&self, repo: &str, branch: &str) -> Option<&Candidate> {
        self.window(repo, branch).into_iter().next()
    }

    /// The lane's candidates in flight, the next to land first; each is built on top of
    /// the one before it.
    pub fn window(&self, repo: &str, branch: &str) -> Vec<&Candidate> {
        let lane = (repo.to_string(), branch.to_string());
        self.cands
            .chain(&lane)
            .iter()
            .filter_map(|id| self.cands.by_id.get(id))
            .collect()
    }

    pub fn memo(&self, drv: &str) -> Option<&Memo> {
        self.builds.memo.get(drv)
    }

    /// The evaluation of `commit`, while someone needs it.
    pub fn evaluation(&self, commit: &str) -> Option<&Arc<Evaluation>> {
        self.builds.evals.get(commit)
    }

    pub fn scheduler(&self) -> &scheduler::Scheduler {
        &self.builds.scheduler
    }

    pub fn channels(&self) -> impl Iterator<Item = (&String, &Channel)> {
        self.gating.all()
    }

    pub fn channel(&self, name: &str) -> Option<&Channel> {
        self.gating.get(name)
    }

    /// Queued changes of one lane in queue order.
    pub fn queue(&self, repo: &str, branch: &str) -> Vec<&Change> {
        self.queue.lane(repo, branch)
    }

    /// Every configured lane: (repository, branch).
    pub fn lanes(&self) -> Vec<(String, String)> {
        self.config
            .repos
            .iter()
            .flat_map(|(r, rc)| rc.lanes.keys().map(move |b| (r.clone(), b.clone())))
            .collect()
    }

    pub fn submit(&mut self, s: Submission, now: Millis) -> Result<Change, Refusal> {
        let change = self.queue.submit(&self.config, s, now, &mut self.fx)?;
        self.tick(now);
        Ok(change)
    }

    /// Cancels a queued or testing change. A change whose candidate is already being
    /// landed cannot be cancelled: it may already be on the target.
    pub fn cancel(&mut self, id: ChangeId, now: Millis) -> Result<Change, Refusal> {
        self.cancel_with(id, "cancelled by request", now)
    }

    /// [`Core::cancel`], saying why.
    pub fn cancel_with(
        &mut self,
        id: ChangeId,
        reason: &str,
        now: Millis,
    ) -> Result<Change, Refusal> {
        let change = self.queue.changes.get(&id).ok_or(Refusal::UnknownChange)?;
        match change.state {
            ChangeState::Queued => {}
            ChangeState::Testing => {
                if let Some((cid, phase)) = self.cands.holding(id) {
                    if phase == Phase::Landing {
                        return Err(Refusal::TooLate(ChangeState::Testing));
                    }
                    let (cands, mut cx) = self.split();
                    cands.abandon(&mut cx, cid, now, &format!("#{id} was cancelled"));
                }
            }
            s @ (ChangeState::Merged | ChangeState::Rejected | ChangeState::Cancelled) => {
                return Err(Refusal::TooLate(s))
            }
        }
        self.queue.set_state(
            id,
            ChangeState::Cancelled,
            Some(reason.to_string()),
            now,
            &mut self.fx,
        );
        let repo = self.queue.changes[&id].repo.clone();
        self.fx
            .event(now, &repo, format!("cancelled #{id}: {reason}"));
        self.tick(now);
        Ok(self.queue.changes[&id].clone())
    }

    /// Moves a queued change to another priority class (a testing one keeps its place in
    /// its candidate; the new priority counts if it is queued again).
    pub fn set_priority(&mut self, id: ChangeId, priority: change::Priority, now: Millis) {
        let Some(c) = self.queue.changes.get_mut(&id) else {
            return;
        };
        if c.state.is_final() || c.priority == priority {
            return;
        }
        c.priority = priority;
        c.updated_at = now;
        let (repo, rec) = (c.repo.clone(), Record::Change(c.clone()));
        self.fx.record(rec);
        self.fx
            .event(now, &repo, format!("#{id} is now {}", priority.as_str()));
        self.tick(now);
    }

    /// Takes a builder out of service (running builds finish) or puts it back.
    pub fn drain(&mut self, builder: &str, drained: bool, now: Millis) -> bool {
        if !self.builds.drain(builder, drained, now, &mut self.fx) {
            return false;
        }
        self.tick(now);
        true
    }

    /// Restores the broken registry after a restart (no record: it is already stored).
    pub fn restore_broken(&mut self, jobs: Vec<breakage::BrokenJob>) {
        self.broken = breakage::Registry::new(jobs);
    }

    /// The broken registry: every repository's broken jobs.
    pub fn broken(&self) -> &breakage::Registry {
        &self.broken
    }

    /// Restores an operator's drain after a restart (no record: it is already stored).
    pub fn set_drained(&mut self, builder: &str) {
        if let Some(b) = self.builds.scheduler.builder_mut(builder) {
            b.health = scheduler::Health::Draining;
        }
    }

    /// Every input goes to the machine that owns it; what it tells the others is
    /// routed on from here.
    pub fn handle(&mut self, input: Input, now: Millis) {
        match input {
            Input::Queue(QueueInput::TargetPolled {
                repo,
                branch,
                result,
            }) => {
                let lane = (repo, branch);
                if let Some(old) = self.queue.on_target_polled(&lane, &result) {
                    let tip = result.as_deref().unwrap_or_default();
                    let text = format!(
                        "{} moved from {} to {} outside the queue: testing the held changes again",
                        lane.1,
                        change::short(&old),
                        change::short(tip)
                    );
                    self.fx.event(now, &lane.0, text);
                }
            }
            Input::Candidate(i) => self.handle_candidate(i, now),
            Input::Build(i) => self.handle_build(i, now),
            Input::Channel(i) => {
                let (gating, mut cx) = self.gate_ctx();
                gating.handle(&mut cx, i, now);
            }
            Input::Tick => {}
        }
        self.fx.fire(now);
        self.tick(now);
        self.prune_if_due();
    }

    /// Prunes once memory holds `keep_final` more changes and candidates than after the
    /// last prune: amortised, each input costs O(1) for it.
    fn prune_if_due(&mut self) {
        if self.queue.changes.len() + self.cands.by_id.len() > self.prune_at {
            self.prune();
            let held = self.queue.changes.len() + self.cands.by_id.len();
            self.prune_at = held + self.config.keep_final.max(64);
        }
    }

    /// Drops from memory the final changes and finished candidates beyond the
    /// `keep_final` most recent of each (by id, which grows with time). Kept whatever
    /// their age: a change some candidate in flight still holds, and a finished candidate
    /// a probe or a follow-up in flight refers to. Everything dropped is in the database
    /// already: it was recorded when it became final.
    fn prune(&mut self) {
        let keep = self.config.keep_final;
        let live: Vec<&Candidate> = self
            .cands
            .by_id
            .values()
            .filter(|c| c.phase != Phase::Done)
            .collect();
        let mut needed: std::collections::BTreeSet<CandId> =
            live.iter().filter_map(|c| c.follow_up_of).collect();
        needed.extend(self.cands.probes.values().copied());
        needed.extend(self.cands.in_flight.values().flatten().copied());
        let held: std::collections::BTreeSet<ChangeId> = live
            .iter()
            .flat_map(|c| c.changes.iter().copied())
            .collect();
        let done: Vec<CandId> = self
            .cands
            .by_id
            .values()
            .filter(|c| c.phase == Phase::Done && !needed.contains(&c.id))
            .map(|c| c.id)
            .collect();
        for id in &done[..done.len().saturating_sub(keep)] {
            self.cands.by_id.remove(id);
        }
        let fin: Vec<ChangeId> = self
            .queue
            .changes
            .values()
            .filter(|c| c.state.is_final() && !held.contains(&c.id))
            .map(|c| c.id)
            .collect();
        for id in &fin[..fin.len().saturating_sub(keep)] {
            self.queue.changes.remove(id);
        }
    }

    fn handle_candidate(&mut self, input: CandidateInput, now: Millis) {
        let (cands, mut cx) = self.split();
        match input {
            CandidateInput::Prepared { cand, result } => {
                cands.on_prepared(&mut cx, cand, result, now)
            }
            CandidateInput::Probed { probe, result } => {
                cands.on_probed(&mut cx, probe, result, now)
            }
            CandidateInput::Landed { cand, result } => {
                if let Some((repo, branch)) = cands.on_landed(&mut cx, cand, result, now) {
                    self.gating.source_moved(&repo, &branch, now);
                }
            }
        }
    }

    fn handle_build(&mut self, input: BuildInput, now: Millis) {
        let cfg = &self.config;
        let news = match input {
            BuildInput::Evaluated { eval } => self.builds.on_evaluated(eval),
            BuildInput::EvalFailed {
                repo,
                commit,
                error,
            } => {
                let what = (repo.as_str(), commit.as_str(), error.as_str());
                self.builds.on_eval_failed(cfg, what, now, &mut self.fx);
                BuildNews::Nothing
            }
            BuildInput::Built(report) => self.builds.on_built(cfg, report, now, &mut self.fx),
            BuildInput::Inspected { infos } => {
                let cands = &self.cands;
                let hint = |drv: &str| cands.system_of(drv);
                self.builds
                    .on_inspected(cfg, infos, hint, now, &mut self.fx);
                BuildNews::Nothing
            }
            BuildInput::Referrers { root, drvs } => {
                // One verdict at a time, each told before the next is taken.
                for d in drvs {
                    let cfg = &self.config;
                    if self
                        .builds
                        .fail_dependent(cfg, &root, &d, now, &mut self.fx)
                    {
                        self.tell(BuildNews::Verdict(d), now);
                    }
                }
                BuildNews::Nothing
            }
            BuildInput::Verified {
                drv,
                first,
                second,
                result,
            } => {
                let what = (drv.as_str(), first.as_str(), second.as_str());
                self.builds
                    .on_verified(cfg, what, result, now, &mut self.fx);
                BuildNews::Nothing
            }
            BuildInput::BuilderProbed { builder, result } => {
                self.builds
                    .on_builder_probed(cfg, &builder, result, now, &mut self.fx)
            }
        };
        self.tell(news, now);
        // Dependents of what was decided, after it.
        while let Some(news) = self.builds.take_followups() {
            self.tell(news, now);
        }
    }

    /// Routes what the builds machine reports to the candidates and the channels.
    fn tell(&mut self, news: BuildNews, now: Millis) {
        match news {
            BuildNews::Nothing => {}
            BuildNews::Evaluated(eval) => {
                let (cands, mut cx) = self.split();
                cands.on_evaluated(&mut cx, &eval.commit, now);
                let (gating, mut cx) = self.gate_ctx();
                gating.evaluated(&mut cx, &eval, now);
            }
            BuildNews::Verdict(drv) => {
                let (cands, mut cx) = self.split();
                cands.built(&mut cx, &drv, now);
                let (gating, mut cx) = self.gate_ctx();
                gating.built(&mut cx, &drv, now);
            }
            BuildNews::Abandoned { drv, err } => {
                let (cands, mut cx) = self.split();
                cands.build_abandoned(&mut cx, &drv, &err, now);
                let (gating, mut cx) = self.gate_ctx();
                gating.build_abandoned(&mut cx, &drv, &err, now);
            }
            BuildNews::BuilderBack => self.tick(now),
        }
    }

    /// Builds and evaluations whose result is overdue: a build is stopped and retried as
    /// an infrastructure failure of its builder; an evaluation is asked for again.
    fn expire_overdue(&mut self, now: Millis) {
        self.builds.deadlines.arm(now, self.config.eval_deadline_ms);
        let due = self.builds.deadlines.due(now);
        for (drv, builder) in due.builds {
            let secs = self.config.build_deadline_ms / 1000;
            self.fx.push(Command::CancelBuild {
                drv: drv.clone(),
                builder: builder.clone(),
            });
            let report = outcome::BuildReport {
                log_tail: format!(
                    "no result from {builder} within {secs} s (timeouts.build_secs): stopped there and retried"
                ),
                drv_path: drv,
                class: outcome::OutcomeClass::Infrastructure,
                root_drv: None,
                builder,
                duration_ms: 0,
                log_path: None,
            };
            self.handle_build(BuildInput::Built(report), now);
        }
        for (repo, commit) in due.evals {
            let secs = self.config.eval_deadline_ms / 1000;
            let error = format!("no result within {secs} s (timeouts.eval_secs): asked again");
            self.handle_build(
                BuildInput::EvalFailed {
                    repo,
                    commit,
                    error,
                },
                now,
            );
        }
    }

    /// Starts candidates for a lane: every urgent change alone, at once; then batches
    /// (sized by the lane's recent failure rate) until its window is full.
    fn fill_window(&mut self, repo: &str, branch: &str, now: Millis) {
        let lane = (repo.to_string(), branch.to_string());
        while let Some(u) = self.queue.urgent(repo, branch, now) {
            self.queue.unstage(u);
            let (cands, mut cx) = self.split();
            cands.start_candidate(&mut cx, repo, branch, vec![u], None, None, now);
        }
        let (cands, mut cx) = self.split();
        cands.fill_stage(&mut cx, repo, branch, now);
        loop {
            let (cands, mut cx) = self.split();
            if cands.chain(&lane).len() >= cands.window_now(&cx, &lane) {
                return;
            }
            let conf = &cx.cfg.repos[repo].lanes[branch];
            let batch = window::adaptive_batch(cands.failure_rate(&lane), conf.batch_max);
            match cx.queue.next(repo, branch, conf, batch, now) {
                queue::Next::Test(ids) => {
                    cands.start_candidate(&mut cx, repo, branch, ids, None, None, now)
                }
                queue::Next::Gather(until) => {
                    self.fx.wake(until);
                    return;
                }
                queue::Next::Idle => return,
            }
        }
    }

    /// Starts candidates on every lane with room in its window and queued changes,
    /// moves the channels on and dispatches builds.
    fn tick(&mut self, now: Millis) {
        self.queue.expire_holds(now);
        for (repo, branch) in self.lanes() {
            self.fill_window(&repo, &branch, now);
        }
        for (repo, branch) in self.queue.polls_due(&self.config, now) {
            self.fx.push(Command::PollTarget { repo, branch });
        }
        let (gating, mut cx) = self.gate_ctx();
        gating.tick(&mut cx, now);
        if std::mem::take(&mut self.builds.released) {
            let wanted = self
                .cands
                .wanted()
                .chain(self.gating.wanted())
                .cloned()
                .collect();
            self.builds.cancel_unwanted(wanted, now, &mut self.fx);
        }
        self.expire_overdue(now);
        self.builds.dispatch(&self.config, now, &mut self.fx);
    }
}
