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
mod candidate;
pub mod change;
mod channel;
#[cfg(test)]
mod channel_tests;
mod channel_types;
mod dispatch;
pub mod evaluation;
pub mod outcome;
pub mod scheduler;
mod snapshot;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::core::change::{Change, ChangeId, ChangeState, Priority};
use crate::core::evaluation::{Evaluation, JobKey, JobResult};
use crate::core::outcome::{BuildReport, OutcomeClass};

pub use candidate::{Candidate, Phase};
pub use channel::{
    Advance, AdvanceResult, Advancing, Blocked, Channel, ChannelConfig, ChannelState, GateJob,
    GateTest, SourcePoll, TestPhase, HISTORY_KEEP,
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
    /// Failed builds are built again this many times before the failure is believed.
    pub failure_retries: u32,
    /// Consecutive infrastructure failures that quarantine a builder.
    pub quarantine_after: u32,
    /// First delay before probing a quarantined builder again; doubles up to 10 min.
    pub probe_delay_ms: Millis,
    /// Channels by name.
    pub channels: BTreeMap<String, ChannelConfig>,
}

/// Counts one more consecutive failure of `key`; returns the count (1 the first time).
fn next_attempt<K: Ord>(failures: &mut BTreeMap<K, u32>, key: K) -> u32 {
    let n = failures.entry(key).or_insert(0);
    *n += 1;
    *n
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
            failure_retries: 1,
            quarantine_after: 3,
            probe_delay_ms: 30_000,
            channels: BTreeMap::new(),
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

/// State changes the shell must persist before performing the step's effects.
#[derive(Debug, Clone, PartialEq)]
// Records and commands are short-lived values handed straight to the shell; boxing the
// large variants would only add allocations.
#[allow(clippy::large_enum_variant)]
pub enum Record {
    Change(Change),
    Candidate(Candidate),
    Memo {
        drv: String,
        memo: Memo,
    },
    /// An operator drained (or returned) a builder.
    BuilderDrained {
        builder: String,
        drained: bool,
    },
    /// A line of progress for operators and the demo ("testing #3 #4", "landed ...").
    Event {
        at: Millis,
        repo: String,
        text: String,
    },
    /// A channel's row (revision, blocking jobs, advance in flight, counters).
    Channel(ChannelState),
    /// One advance of a channel, appended to its history.
    ChannelAdvance {
        channel: String,
        advance: Advance,
    },
}

/// Effects for the shell. Each is idempotent and carries the id its result refers to.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum Command {
    Record(Record),
    /// Fetch the target tip and the changes' refs, merge them one by one onto the tip
    /// (a chain of merge commits; conflicting ones skipped) and report `Input::Prepared`.
    Prepare {
        cand: CandId,
        repo: String,
        branch: String,
        changes: Vec<(ChangeId, String)>,
    },
    /// Evaluate the jobset at a commit (served from the evaluation store when known).
    Evaluate {
        repo: String,
        commit: String,
    },
    /// Learn derivations' systems, required features and inputs (`Input::Inspected`).
    Inspect {
        drvs: Vec<String>,
    },
    /// Realise one derivation on one builder.
    Build {
        drv: String,
        system: String,
        builder: String,
    },
    /// Find the derivations that depend on a failed one (`Input::Referrers`).
    QueryReferrers {
        root: String,
    },
    /// Connect to a builder: implementation, version, health (`Input::BuilderProbed`).
    ProbeBuilder {
        builder: String,
    },
    /// Merge `heads` onto `base` and evaluate `attrs` there (all jobs when `None`).
    Probe {
        probe: ProbeId,
        repo: String,
        base: String,
        heads: Vec<String>,
        attrs: Option<Vec<String>>,
    },
    /// Move `branch` from `old` to `new`: fast-forward only, compare-and-swap on `old`.
    Land {
        cand: CandId,
        repo: String,
        branch: String,
        old: String,
        new: String,
    },
    /// Fetch a channel's source and target and report `Input::SourcePolled`.
    PollSource {
        channel: String,
    },
    /// Move a channel's target from `old` (`None`: create it) to `new`: a descendant
    /// only, still in the source, compare-and-swap on `old`. Reports `ChannelAdvanced`.
    AdvanceChannel {
        channel: String,
        old: Option<String>,
        new: String,
    },
    /// Write a channel's artifacts for `rev` atomically; reports `ArtifactsPublished`.
    PublishArtifacts {
        channel: String,
        rev: String,
        at: Millis,
        gate: Vec<GateJob>,
    },
}

impl Command {
    /// The channel a channel command is for; `None` for every other command.
    pub fn channel(&self) -> Option<&str> {
        match self {
            Command::PollSource { channel }
            | Command::AdvanceChannel { channel, .. }
            | Command::PublishArtifacts { channel, .. } => Some(channel),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    pub base: String,
    /// Every change's head as resolved now.
    pub heads: Vec<(ChangeId, String)>,
    /// Merged changes in order, each with the commit after merging it.
    pub merged: Vec<(ChangeId, String)>,
    pub conflicts: Vec<(ChangeId, String)>,
    /// Changes whose ref no longer exists on the remote (deleted branch, closed pull
    /// request), with the message. A ref that could not be fetched for another reason
    /// is an infrastructure failure of the whole preparation, not listed here.
    pub vanished: Vec<(ChangeId, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProbeResult {
    /// The jobs of the requested attributes. An attribute that does not exist at that
    /// commit (or holds no job) yields no entry: absent is not failing.
    Attrs {
        commit: String,
        jobs: Vec<(JobKey, JobResult)>,
    },
    Full {
        eval: Arc<Evaluation>,
    },
    Conflict(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum LandResult {
    Landed,
    /// The target is no longer at `old`; it is at `tip`.
    Moved {
        tip: String,
    },
    /// Could not reach the remote; retried later.
    Failed(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Prepared {
        cand: CandId,
        result: Result<Prepared, String>,
    },
    Evaluated {
        eval: Arc<Evaluation>,
    },
    /// The evaluation of `commit` could not run (checkout or fetch failed, the evaluator
    /// could not start or was killed, the disk is full): an infrastructure outcome,
    /// retried with backoff, never stored as the commit's evaluation.
    EvalFailed {
        repo: String,
        commit: String,
        error: String,
    },
    Built(BuildReport),
    Inspected {
        infos: Vec<(String, Result<scheduler::StepInfo, String>)>,
    },
    Referrers {
        root: String,
        drvs: Vec<String>,
    },
    BuilderProbed {
        builder: String,
        result: Result<BuilderIdentity, String>,
    },
    Probed {
        probe: ProbeId,
        result: Result<ProbeResult, String>,
    },
    Landed {
        cand: CandId,
        result: LandResult,
    },
    /// A timer came due (see `Core::next_wakeup`).
    Tick,
    SourcePolled {
        channel: String,
        result: Result<SourcePoll, String>,
    },
    ChannelAdvanced {
        channel: String,
        new: String,
        result: AdvanceResult,
    },
    ArtifactsPublished {
        channel: String,
        rev: String,
        result: Result<(), String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuilderIdentity {
    /// `Nix`, `Lix`, `Determinate Nix`, ...
    pub implementation: String,
    pub version: String,
}

/// Outcome of a submission or cancellation through the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    UnknownRepo,
    UnknownTarget,
    UnknownChange,
    /// The change already reached a final state or is being landed.
    TooLate(ChangeState),
}

#[derive(Debug, Clone)]
pub struct Submission {
    pub repo: String,
    pub target: String,
    pub git_ref: String,
    pub head: String,
    pub title: String,
    pub author: String,
    pub priority: Priority,
}

#[derive(Debug, Default)]
pub struct Core {
    pub(crate) config: Option<CoreConfig>,
    pub(crate) changes: BTreeMap<ChangeId, Change>,
    pub(crate) candidates: BTreeMap<CandId, Candidate>,
    /// Active candidate per (repo, branch).
    pub(crate) in_flight: BTreeMap<(String, String), CandId>,
    pub(crate) evals: BTreeMap<String, Arc<Evaluation>>,
    pub(crate) evals_requested: BTreeSet<String>,
    pub(crate) memo: BTreeMap<String, Memo>,
    /// Every build step, queued or running, and the builders.
    pub(crate) scheduler: scheduler::Scheduler,
    pub(crate) probes: BTreeMap<ProbeId, CandId>,
    /// Delayed commands, by due time and sequence.
    pub(crate) timers: BTreeMap<(Millis, u64), Command>,
    /// Times at which `tick` must look at the lanes again (batch delays).
    pub(crate) wakes: BTreeSet<Millis>,
    pub(crate) next_change: ChangeId,
    pub(crate) next_cand: CandId,
    pub(crate) next_probe: ProbeId,
    pub(crate) seq: u64,
    pub(crate) out: Vec<Command>,
    pub(crate) channels: BTreeMap<String, Channel>,
    /// Consecutive infrastructure failures per commit being evaluated (for the backoff).
    pub(crate) eval_failures: BTreeMap<String, u32>,
    /// Consecutive infrastructure failures per candidate being prepared.
    pub(crate) prepare_failures: BTreeMap<CandId, u32>,
    /// Changes to be tested one at a time (attribution could not pin a failure).
    pub(crate) solo: BTreeSet<ChangeId>,
    /// Lanes waiting because required jobs fail on the target itself: (until, times).
    pub(crate) holds: BTreeMap<(String, String), (Millis, u32)>,
}

impl Core {
    pub fn new(config: CoreConfig) -> Core {
        let mut out = vec![];
        for b in &config.builders {
            out.push(Command::ProbeBuilder {
                builder: b.id.clone(),
            });
        }
        let mut core = Core {
            scheduler: scheduler::Scheduler::new(config.builders.clone()),
            out,
            config: Some(config),
            next_change: 1,
            next_cand: 1,
            next_probe: 1,
            ..Default::default()
        };
        core.init_channels(vec![]);
        core
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
        let mut core = Core::new(config);
        core.channels.clear();
        core.init_channels(channels);
        core.next_change = changes.iter().map(|c| c.id + 1).max().unwrap_or(1);
        core.next_cand = candidates.iter().map(|c| c.id + 1).max().unwrap_or(1);
        core.memo = memo.into_iter().collect();
        core.changes = changes.into_iter().map(|c| (c.id, c)).collect();
        let mut attached = BTreeSet::new();
        for mut cand in candidates {
            if matches!(cand.phase, Phase::Done) {
                // History for the API, and the root of a follow-up still counting builds.
                core.candidates.insert(cand.id, cand);
                continue;
            }
            attached.extend(cand.changes.iter().copied());
            let lane = (cand.repo.clone(), cand.branch.clone());
            if cand.phase == Phase::Landing {
                core.emit_land(&cand);
            } else {
                cand.reset_for_prepare();
                core.emit_prepare(&cand);
            }
            core.out
                .push(Command::Record(Record::Candidate(cand.clone())));
            core.in_flight.insert(lane, cand.id);
            core.candidates.insert(cand.id, cand);
        }
        let orphans: Vec<ChangeId> = core
            .changes
            .values()
            .filter(|c| c.state == ChangeState::Testing && !attached.contains(&c.id))
            .map(|c| c.id)
            .collect();
        for id in orphans {
            core.set_state(id, ChangeState::Queued, None, now);
        }
        core.tick(now);
        core
    }

    fn cfg(&self) -> &CoreConfig {
        self.config.as_ref().expect("core built without config")
    }

    /// Drains the commands produced so far.
    pub fn take_commands(&mut self) -> Vec<Command> {
        std::mem::take(&mut self.out)
    }

    pub fn next_wakeup(&self) -> Option<Millis> {
        let t = self.timers.keys().next().map(|(t, _)| *t);
        let w = self.wakes.first().copied();
        t.into_iter().chain(w).chain(self.channel_wakeup()).min()
    }

    pub fn change(&self, id: ChangeId) -> Option<&Change> {
        self.changes.get(&id)
    }

    pub fn changes(&self) -> impl Iterator<Item = &Change> {
        self.changes.values()
    }

    pub fn candidates(&self) -> impl Iterator<Item = &Candidate> {
        self.candidates.values()
    }

    pub fn candidate(&self, id: CandId) -> Option<&Candidate> {
        self.candidates.get(&id)
    }

    pub fn memo(&self, drv: &str) -> Option<&Memo> {
        self.memo.get(drv)
    }

    /// Queued changes of one lane in queue order.
    pub fn queue(&self, repo: &str, branch: &str) -> Vec<&Change> {
        let mut q: Vec<&Change> = self
            .changes
            .values()
            .filter(|c| c.repo == repo && c.target == branch && c.state == ChangeState::Queued)
            .collect();
        q.sort_by_key(|c| c.queue_key());
        q
    }

    /// Every configured lane: (repository, branch).
    pub fn lanes(&self) -> Vec<(String, String)> {
        self.cfg()
            .repos
            .iter()
            .flat_map(|(r, rc)| rc.lanes.keys().map(move |b| (r.clone(), b.clone())))
            .collect()
    }

    pub fn submit(&mut self, s: Submission, now: Millis) -> Result<Change, Refusal> {
        let repo = self.cfg().repos.get(&s.repo).ok_or(Refusal::UnknownRepo)?;
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
        self.event(
            now,
            &change.repo,
            format!(
                "queued #{id} {:?} ({})",
                change.title,
                change.priority.as_str()
            ),
        );
        self.out
            .push(Command::Record(Record::Change(change.clone())));
        self.changes.insert(id, change.clone());
        self.tick(now);
        Ok(change)
    }

    /// Cancels a queued or testing change. A change whose candidate is already being
    /// landed cannot be cancelled: it may already be on the target.
    pub fn cancel(&mut self, id: ChangeId, now: Millis) -> Result<Change, Refusal> {
        let change = self.changes.get(&id).ok_or(Refusal::UnknownChange)?;
        match change.state {
            ChangeState::Queued => {}
            ChangeState::Testing => {
                let cand = self
                    .candidates
                    .values()
                    .find(|c| c.phase != Phase::Done && c.changes.contains(&id))
                    .map(|c| (c.id, c.phase));
                if let Some((cid, phase)) = cand {
                    if phase == Phase::Landing {
                        return Err(Refusal::TooLate(ChangeState::Testing));
                    }
                    self.abandon(cid, now, &format!("#{id} was cancelled"));
                }
            }
            s => return Err(Refusal::TooLate(s)),
        }
        self.set_state(
            id,
            ChangeState::Cancelled,
            Some("cancelled by request".into()),
            now,
        );
        let repo = self.changes[&id].repo.clone();
        self.event(now, &repo, format!("cancelled #{id}"));
        self.tick(now);
        Ok(self.changes[&id].clone())
    }

    pub fn handle(&mut self, input: Input, now: Millis) {
        match input {
            Input::Prepared { cand, result } => self.on_prepared(cand, result, now),
            Input::Evaluated { eval } => self.on_evaluated(eval, now),
            Input::Built(report) => self.on_built(report, now),
            Input::Inspected { infos } => self.on_inspected(infos, now),
            Input::Referrers { root, drvs } => self.on_referrers(&root, drvs, now),
            Input::BuilderProbed { builder, result } => {
                self.on_builder_probed(&builder, result, now)
            }
            Input::Probed { probe, result } => self.on_probed(probe, result, now),
            Input::Landed { cand, result } => self.on_landed(cand, result, now),
            Input::EvalFailed {
                repo,
                commit,
                error,
            } => self.on_eval_failed(&repo, &commit, &error, now),
            Input::Tick => {}
            input @ (Input::SourcePolled { .. }
            | Input::ChannelAdvanced { .. }
            | Input::ArtifactsPublished { .. }) => self.handle_channel(input, now),
        }
        self.fire_timers(now);
        self.tick(now);
    }

    fn fire_timers(&mut self, now: Millis) {
        self.wakes.retain(|&w| w > now);
        while let Some((&(at, seq), _)) = self.timers.iter().next() {
            if at > now {
                break;
            }
            let cmd = self.timers.remove(&(at, seq)).expect("present");
            self.out.push(cmd);
        }
    }

    fn later(&mut self, at: Millis, cmd: Command) {
        self.seq += 1;
        self.timers.insert((at, self.seq), cmd);
    }

    /// Starts a candidate on every idle lane that has queued changes.
    fn tick(&mut self, now: Millis) {
        for (repo, branch) in self.lanes() {
            if self.in_flight.contains_key(&(repo.clone(), branch.clone())) {
                continue;
            }
            let lane = &self.cfg().repos[&repo].lanes[&branch];
            let (batch_max, delay) = (lane.batch_max, lane.batch_delay_ms);
            if self
                .holds
                .get(&(repo.clone(), branch.clone()))
                .is_some_and(|h| h.0 > now)
            {
                continue;
            }
            let queue = self.queue(&repo, &branch);
            let oldest = queue.iter().map(|c| c.submitted_at).min();
            // A change to be tested separately goes alone; a batch stops before one.
            let ids: Vec<ChangeId> = match queue.first() {
                Some(c) if self.solo.contains(&c.id) => vec![c.id],
                _ => queue
                    .iter()
                    .take(batch_max)
                    .take_while(|c| !self.solo.contains(&c.id))
                    .map(|c| c.id)
                    .collect(),
            };
            if let Some(oldest) = oldest {
                // Gather a fuller batch first, unless it is full already.
                if delay > 0 && ids.len() < batch_max && oldest + delay > now {
                    self.wakes.insert(oldest + delay);
                    continue;
                }
            }
            if !ids.is_empty() {
                self.start_candidate(&repo, &branch, ids, None, now);
            }
        }
        self.tick_channels(now);
        self.dispatch_builds(now);
    }

    pub(crate) fn set_state(
        &mut self,
        id: ChangeId,
        state: ChangeState,
        reason: Option<String>,
        now: Millis,
    ) {
        let c = self.changes.get_mut(&id).expect("known change");
        c.state = state;
        if reason.is_some() || state == ChangeState::Queued {
            c.reason = reason;
        }
        c.updated_at = now;
        self.out.push(Command::Record(Record::Change(c.clone())));
    }

    pub(crate) fn event(&mut self, at: Millis, repo: &str, text: String) {
        self.out.push(Command::Record(Record::Event {
            at,
            repo: repo.to_string(),
            text,
        }));
    }

    /// A remembered result that has not expired.
    pub(crate) fn known(&self, drv: &str, now: Millis) -> Option<&Memo> {
        self.memo
            .get(drv)
            .filter(|m| m.expires_at.is_none_or(|t| t > now))
    }

    /// The delay before the `n`th retry (1-based): the retry delay, doubling, at most
    /// ten minutes.
    pub(crate) fn backoff(&self, n: u32) -> Millis {
        let base = self.cfg().retry_delay_ms.max(1);
        base.saturating_mul(1 << n.saturating_sub(1).min(16))
            .min(600_000.max(base))
    }

    fn on_eval_failed(&mut self, repo: &str, commit: &str, error: &str, now: Millis) {
        if self.evals.contains_key(commit) {
            return;
        }
        let n = next_attempt(&mut self.eval_failures, commit.to_string());
        let delay = self.backoff(n);
        self.event(
            now,
            repo,
            format!(
                "evaluation of {} could not run (attempt {n}), retrying in {} s: {error}",
                change::short(commit),
                delay / 1000
            ),
        );
        self.evals_requested.insert(commit.to_string());
        self.later(
            now + delay,
            Command::Evaluate {
                repo: repo.to_string(),
                commit: commit.to_string(),
            },
        );
    }

    pub(crate) fn request_eval(&mut self, repo: &str, commit: &str) {
        if !self.evals.contains_key(commit) && self.evals_requested.insert(commit.to_string()) {
            self.out.push(Command::Evaluate {
                repo: repo.to_string(),
                commit: commit.to_string(),
            });
        }
    }
}
