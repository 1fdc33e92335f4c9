//! The core's vocabulary with the shell: the inputs it takes (each owned by one of its
//! machines), the commands it returns and the records the shell persists.

use std::sync::Arc;

use super::channel_types::{Advance, AdvanceResult, ChannelState, GateJob, SourcePoll};
use super::scheduler;
use super::{CandId, Candidate, Memo, Millis, ProbeId};
use crate::core::change::{Change, ChangeId, ChangeState, Priority};
use crate::core::evaluation::{Evaluation, JobKey, JobResult};
use crate::core::outcome::BuildReport;
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
    /// A job entered the broken registry (or its entry changed).
    Broken(crate::core::breakage::BrokenJob),
    /// A job left the broken registry: it builds again, or is gone.
    Unbroken {
        repo: String,
        key: JobKey,
    },
    /// Something maintainers are to hear, kept until the notifier delivered it.
    Notice(crate::core::breakage::Notice),
    /// A verified build's comparison (`/api/v1/verifications`).
    Verification(crate::core::verify::Verification),
    /// Something to tell the repository's forge, kept in the outbox until delivered.
    Forge {
        repo: String,
        command: crate::core::forge::ForgeCommand,
    },
}

/// Effects for the shell. Each is idempotent and carries the id its result refers to.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum Command {
    Record(Record),
    /// Fetch the target tip and the changes' refs, merge them one by one onto the tip
    /// (a chain of merge commits; conflicting ones skipped) and report
    /// `CandidateInput::Prepared`.
    Prepare {
        cand: CandId,
        repo: String,
        branch: String,
        changes: Vec<(ChangeId, String)>,
        /// Merge onto this commit (the candidate ahead's) instead of the branch's tip.
        onto: Option<String>,
    },
    /// Fetch a merge group's head and report `CandidateInput::Prepared` with its chain
    /// as the merge chain (GitHub made the commits; nothing is merged here).
    PrepareGroup {
        cand: CandId,
        repo: String,
        group: crate::core::forge::GroupRef,
    },
    /// Evaluate the jobset at a commit (served from the evaluation store when known).
    Evaluate {
        repo: String,
        commit: String,
    },
    /// Learn derivations' systems, required features and inputs (`BuildInput::Inspected`).
    Inspect {
        drvs: Vec<String>,
    },
    /// Realise one derivation on one builder.
    Build {
        drv: String,
        system: String,
        builder: String,
    },
    /// Stop the attempt of `drv` running on `builder`: nobody waits for it any more. The
    /// attempt reports `cancelled` (`BuildInput::Built`) once it has stopped.
    CancelBuild {
        drv: String,
        builder: String,
    },
    /// Build `drv`, which `first` built, again on `builder` and compare the outputs' NAR
    /// hashes (`BuildInput::Verified`).
    Verify {
        drv: String,
        first: String,
        builder: String,
    },
    /// Find the derivations that depend on a failed one (`BuildInput::Referrers`).
    QueryReferrers {
        root: String,
    },
    /// Connect to a builder: implementation, version, health (`BuildInput::BuilderProbed`).
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
    /// Read a lane's target tip and report `QueueInput::TargetPolled` (a held lane
    /// waits for its target to move).
    PollTarget {
        repo: String,
        branch: String,
    },
    /// Fetch a channel's source and target and report `ChannelInput::SourcePolled`.
    PollSource {
        channel: String,
    },
    /// Move a channel's target from `old` (`None`: create it) to `new`: a descendant
    /// only, still in the source, compare-and-swap on `old`. Reports `ChannelInput::Advanced`.
    /// First the closures of `upload` (the gate's derivations' outputs; empty without a
    /// cache) go to the binary cache: when that fails the target does not move and the
    /// result is `AdvanceResult::Failed`, so a channel never points where its users find
    /// no substitutes.
    AdvanceChannel {
        channel: String,
        old: Option<String>,
        new: String,
        upload: Vec<String>,
    },
    /// Upload the closures of the outputs of `drvs` to the binary cache, signed. Best
    /// effort: retried by the shell, nothing waits for it (`why` says what it is for).
    Upload {
        drvs: Vec<String>,
        why: String,
    },
    /// Point the lane's mass-rebuild ref at the stage's current batch, for inspection.
    /// Best effort: nothing waits for it.
    PublishStage {
        repo: String,
        branch: String,
        commit: String,
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
    /// The record a `Record` command carries.
    pub fn record(&self) -> Option<&Record> {
        match self {
            Command::Record(r) => Some(r),
            Command::Prepare { .. }
            | Command::PrepareGroup { .. }
            | Command::Evaluate { .. }
            | Command::Inspect { .. }
            | Command::Build { .. }
            | Command::CancelBuild { .. }
            | Command::Verify { .. }
            | Command::QueryReferrers { .. }
            | Command::ProbeBuilder { .. }
            | Command::Probe { .. }
            | Command::Land { .. }
            | Command::PollTarget { .. }
            | Command::PollSource { .. }
            | Command::AdvanceChannel { .. }
            | Command::Upload { .. }
            | Command::PublishStage { .. }
            | Command::PublishArtifacts { .. } => None,
        }
    }

    /// The channel a channel command is for; `None` for every other command.
    pub fn channel(&self) -> Option<&str> {
        match self {
            Command::PollSource { channel }
            | Command::AdvanceChannel { channel, .. }
            | Command::PublishArtifacts { channel, .. } => Some(channel),
            Command::Record(_)
            | Command::Prepare { .. }
            | Command::PrepareGroup { .. }
            | Command::Evaluate { .. }
            | Command::Inspect { .. }
            | Command::Build { .. }
            | Command::CancelBuild { .. }
            | Command::Verify { .. }
            | Command::QueryReferrers { .. }
            | Command::ProbeBuilder { .. }
            | Command::Probe { .. }
            | Command::Land { .. }
            | Command::Upload { .. }
            | Command::PublishStage { .. }
            | Command::PollTarget { .. } => None,
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

/// An input, addressed to the machine that owns it (see `docs/design.md`).
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// For the queue: what a lane's target is now.
    Queue(QueueInput),
    /// For the candidates: preparations, attribution probes, landings.
    Candidate(CandidateInput),
    /// For the builds: evaluations, build results, derivation facts, builder probes.
    Build(BuildInput),
    /// For channel gating: polls of the source, advances, published artifacts.
    Channel(ChannelInput),
    /// A timer came due (see `Core::next_wakeup`).
    Tick,
}

#[derive(Debug, Clone, PartialEq)]
pub enum QueueInput {
    /// The tip of `branch` as the remote has it now (`Command::PollTarget`).
    TargetPolled {
        repo: String,
        branch: String,
        result: Result<String, String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum CandidateInput {
    Prepared {
        cand: CandId,
        result: Result<Prepared, String>,
    },
    Probed {
        probe: ProbeId,
        result: Result<ProbeResult, String>,
    },
    Landed {
        cand: CandId,
        result: LandResult,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum BuildInput {
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
    /// The NAR hashes of `drv`'s outputs as `first` built them and as `second` did, or why
    /// the second build could not run.
    Verified {
        drv: String,
        first: String,
        second: String,
        result: Result<[String; 2], String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum ChannelInput {
    SourcePolled {
        channel: String,
        result: Result<SourcePoll, String>,
    },
    Advanced {
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

impl From<QueueInput> for Input {
    fn from(i: QueueInput) -> Input {
        Input::Queue(i)
    }
}

impl From<CandidateInput> for Input {
    fn from(i: CandidateInput) -> Input {
        Input::Candidate(i)
    }
}

impl From<BuildInput> for Input {
    fn from(i: BuildInput) -> Input {
        Input::Build(i)
    }
}

impl From<ChannelInput> for Input {
    fn from(i: ChannelInput) -> Input {
        Input::Channel(i)
    }
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
    /// The pull request it comes from, when it came from the forge.
    pub pr: Option<u64>,
    pub approver: Option<String>,
}
