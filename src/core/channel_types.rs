//! Data of channels: configuration, persisted state, gate results, git facts.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{LandResult, Millis};
use crate::core::outcome::OutcomeClass;

/// Advances kept in memory (and shown by the API) per channel; SQLite keeps them all.
pub const HISTORY_KEEP: usize = 50;

#[derive(Debug, Clone, PartialEq)]
pub struct ChannelConfig {
    pub repo: String,
    pub source: String,
    pub target: String,
    /// Attribute paths that must build (a path naming a nested set means all its jobs).
    pub gate: Vec<String>,
    pub min_interval_ms: Millis,
    pub poll_interval_ms: Millis,
    /// When the source head fails, look for the newest passing commit between the
    /// channel's revision and the head.
    pub look_back: bool,
    /// Publish artifacts (`PublishArtifacts`) after each advance.
    pub artifacts: bool,
}

/// One gate job at one commit, as judged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateJob {
    pub attr: String,
    pub system: String,
    pub drv: Option<String>,
    /// (output name, store path).
    pub outputs: Vec<(String, String)>,
    /// An outcome class (`success`, `failed`, ...), or `eval-error`, `missing`, `pending`.
    pub status: String,
    /// The build log's tail, or the evaluation error.
    pub log_tail: String,
}

impl GateJob {
    pub fn ok(&self) -> bool {
        self.status == OutcomeClass::Success.as_str()
    }
}

/// Why the channel is not at the source head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocked {
    pub rev: String,
    pub at: Millis,
    /// The whole jobset failed to evaluate.
    pub error: Option<String>,
    /// The failing gate jobs.
    pub jobs: Vec<GateJob>,
}

/// One move of the channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advance {
    pub at: Millis,
    pub from: Option<String>,
    pub rev: String,
    pub gate: Vec<GateJob>,
}

/// An advance decided and not yet confirmed by the remote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advancing {
    pub old: Option<String>,
    pub new: String,
    pub gate: Vec<GateJob>,
}

/// What SQLite keeps of a channel (one row; the advances are rows of their own).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChannelState {
    pub name: String,
    /// The target's revision; `None` while the target branch does not exist.
    pub rev: Option<String>,
    /// When mergequeue last advanced the channel.
    pub advanced_at: Option<Millis>,
    /// Committer time of `rev` (for the age of a channel mergequeue never moved).
    pub rev_time: Option<Millis>,
    pub blocked: Option<Blocked>,
    pub advancing: Option<Advancing>,
    /// The revision whose artifacts were published last.
    pub published: Option<String>,
    pub advances: u64,
    pub blocks: u64,
}

/// Git facts about a channel, gathered by the shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePoll {
    pub head: String,
    /// The target branch's revision (`None`: it does not exist).
    pub target: Option<String>,
    pub target_time: Option<Millis>,
    /// `head` is `target` or a descendant of it (always true without a target).
    pub descends: bool,
    /// Commits strictly between `target` and `head` on head's first-parent chain, newest
    /// first, capped (only when `descends`).
    pub between: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdvanceResult {
    Advanced,
    /// The target is not at `old` (someone else moved it).
    Moved {
        tip: Option<String>,
    },
    /// `new` is no longer in the source branch (it was force-pushed).
    NotOnSource {
        head: String,
    },
    /// Could not reach a remote; retried later.
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestPhase {
    Evaluating,
    Building,
}

impl TestPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            TestPhase::Evaluating => "evaluating",
            TestPhase::Building => "building",
        }
    }
}

/// The gate being checked at one commit.
#[derive(Debug, Clone, PartialEq)]
pub struct GateTest {
    pub commit: String,
    /// The source head (as opposed to an older commit tried by look-back).
    pub head: bool,
    pub phase: TestPhase,
    pub jobs: Vec<GateJob>,
    pub pending: BTreeSet<String>,
    pub started_at: Millis,
    /// Older commits still to try if this one fails (look-back), newest first.
    pub(crate) older: Vec<String>,
}

/// A channel: persisted state, recent history and the working state.
#[derive(Debug, Clone, PartialEq)]
pub struct Channel {
    pub config: ChannelConfig,
    pub state: ChannelState,
    /// Recent advances, oldest first.
    pub history: Vec<Advance>,
    pub test: Option<GateTest>,
    /// The last source head seen, with its facts.
    pub poll: Option<SourcePoll>,
    /// A source head that does not descend from the channel (a force-push), ignored.
    pub diverged: Option<String>,
    /// A passed commit waiting for `min_interval` to elapse: (commit, gate, due).
    pub hold: Option<(String, Vec<GateJob>, Millis)>,
    pub(crate) polling: bool,
    pub(crate) next_poll: Millis,
    pub(crate) last_error: Option<String>,
}

impl Channel {
    pub(crate) fn new(name: &str, config: ChannelConfig, state: Option<ChannelState>) -> Channel {
        Channel {
            config,
            state: state.unwrap_or_else(|| ChannelState {
                name: name.to_string(),
                ..Default::default()
            }),
            history: vec![],
            test: None,
            poll: None,
            diverged: None,
            hold: None,
            polling: false,
            next_poll: 0,
            last_error: None,
        }
    }

    /// Milliseconds since the channel last moved (or since its revision was committed).
    pub fn age_ms(&self, now: Millis) -> Option<Millis> {
        self.state
            .advanced_at
            .or(self.state.rev_time)
            .map(|t| (now - t).max(0))
    }
}

/// `LandResult` of the queue, for shells that share the push code.
impl From<LandResult> for AdvanceResult {
    fn from(r: LandResult) -> Self {
        match r {
            LandResult::Landed => AdvanceResult::Advanced,
            LandResult::Moved { tip } => AdvanceResult::Moved { tip: Some(tip) },
            LandResult::Failed(m) => AdvanceResult::Failed(m),
        }
    }
}
