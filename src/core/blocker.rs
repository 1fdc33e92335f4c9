//! Blockers: what keeps a candidate from landing (a job that fails to build or to
//! evaluate, a missing required job, a jobset that does not evaluate), with the rejection
//! reason each gives.

use super::evaluation::JobKey;
use super::outcome::OutcomeClass;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Blocker {
    Build {
        key: JobKey,
        drv: String,
        base_drv: Option<String>,
        class: OutcomeClass,
        log_tail: String,
        root_drv: Option<String>,
    },
    EvalError {
        key: JobKey,
        message: String,
    },
    Missing {
        attr: String,
    },
    WholeEval {
        message: String,
    },
}

impl Blocker {
    pub(crate) fn key(&self) -> Option<&JobKey> {
        match self {
            Blocker::Build { key, .. } | Blocker::EvalError { key, .. } => Some(key),
            Blocker::Missing { .. } | Blocker::WholeEval { .. } => None,
        }
    }

    pub(crate) fn drv(&self) -> Option<&String> {
        match self {
            Blocker::Build { drv, .. } => Some(drv),
            _ => None,
        }
    }

    pub(crate) fn attr(&self) -> Option<&str> {
        match self {
            Blocker::Build { key, .. } | Blocker::EvalError { key, .. } => Some(&key.attr),
            Blocker::Missing { attr } => Some(attr),
            Blocker::WholeEval { .. } => None,
        }
    }

    /// The rejection reason: job, derivation, log tail, and the evidence (`how`).
    pub(crate) fn reason(&self, how: &str) -> String {
        match self {
            Blocker::Build {
                key,
                drv,
                class,
                log_tail,
                root_drv,
                ..
            } => {
                let root = root_drv
                    .as_ref()
                    .map_or(String::new(), |r| format!(" (dependency {r} failed)"));
                format!(
                    "job {key} {} on the candidate: {drv}{root}; it builds on the base or is new there; {how}\nlog tail:\n{log_tail}",
                    class_verb(*class)
                )
            }
            Blocker::EvalError { key, message } => {
                format!("job {key} fails to evaluate ({how}): {message}")
            }
            Blocker::Missing { attr } => format!("required job {attr} is missing ({how})"),
            Blocker::WholeEval { message } => {
                format!("the jobset fails to evaluate ({how}): {message}")
            }
        }
    }

    pub(crate) fn summary(&self) -> String {
        match self {
            Blocker::Build { key, class, .. } => format!("{key} {}", class_verb(*class)),
            Blocker::EvalError { key, .. } => format!("{key} fails to evaluate"),
            Blocker::Missing { attr } => format!("required {attr} missing"),
            Blocker::WholeEval { .. } => "jobset fails to evaluate".into(),
        }
    }

    /// Root failures before the jobs that only failed because a dependency did.
    pub(crate) fn rank(&self) -> u8 {
        match self {
            Blocker::WholeEval { .. } => 0,
            Blocker::EvalError { .. } | Blocker::Missing { .. } => 1,
            Blocker::Build { class, .. } if *class == OutcomeClass::DependencyFailed => 3,
            Blocker::Build { .. } => 2,
        }
    }
}

fn class_verb(c: OutcomeClass) -> &'static str {
    match c {
        OutcomeClass::DependencyFailed => "fails (a dependency failed)",
        OutcomeClass::TimedOut => "times out",
        _ => "fails to build",
    }
}
