//! Outcome classes of build attempts. Only `Failed` and `DependencyFailed` can blame a
//! change; `Infrastructure` is never remembered as a derivation's result.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutcomeClass {
    Success,
    Failed,
    DependencyFailed,
    TimedOut,
    Infrastructure,
    Cancelled,
}

impl OutcomeClass {
    pub const ALL: [OutcomeClass; 6] = [
        OutcomeClass::Success,
        OutcomeClass::Failed,
        OutcomeClass::DependencyFailed,
        OutcomeClass::TimedOut,
        OutcomeClass::Infrastructure,
        OutcomeClass::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeClass::Success => "success",
            OutcomeClass::Failed => "failed",
            OutcomeClass::DependencyFailed => "dependency-failed",
            OutcomeClass::TimedOut => "timed-out",
            OutcomeClass::Infrastructure => "infrastructure",
            OutcomeClass::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<OutcomeClass> {
        OutcomeClass::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// A genuine verdict about the derivation (as opposed to about the builder).
    pub fn is_verdict(self) -> bool {
        matches!(
            self,
            OutcomeClass::Success
                | OutcomeClass::Failed
                | OutcomeClass::DependencyFailed
                | OutcomeClass::TimedOut
        )
    }
}

/// The result of one build attempt as the shell reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildReport {
    pub drv_path: String,
    pub class: OutcomeClass,
    /// Last lines of the build log (size-capped).
    pub log_tail: String,
    /// For dependency failures: the derivation that failed first.
    pub root_drv: Option<String>,
    pub builder: String,
    pub duration_ms: u64,
    /// The attempt's compressed log, when one was written.
    #[serde(default)]
    pub log_path: Option<String>,
}
