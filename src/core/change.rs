//! Changes: proposed updates submitted as git refs, and their queue order.

use serde::{Deserialize, Serialize};

use super::Millis;

pub type ChangeId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    // Declared most urgent first so that the derived `Ord` sorts the queue.
    Urgent,
    High,
    Normal,
    Low,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Urgent => "urgent",
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }

    pub fn parse(s: &str) -> Option<Priority> {
        Some(match s {
            "urgent" => Priority::Urgent,
            "high" => Priority::High,
            "normal" => Priority::Normal,
            "low" => Priority::Low,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeState {
    Queued,
    Testing,
    Merged,
    Rejected,
    Cancelled,
}

impl ChangeState {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeState::Queued => "queued",
            ChangeState::Testing => "testing",
            ChangeState::Merged => "merged",
            ChangeState::Rejected => "rejected",
            ChangeState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<ChangeState> {
        Some(match s {
            "queued" => ChangeState::Queued,
            "testing" => ChangeState::Testing,
            "merged" => ChangeState::Merged,
            "rejected" => ChangeState::Rejected,
            "cancelled" => ChangeState::Cancelled,
            _ => return None,
        })
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            ChangeState::Merged | ChangeState::Rejected | ChangeState::Cancelled
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub id: ChangeId,
    pub repo: String,
    pub target: String,
    /// The git ref the change was submitted as; re-resolved when it is tested.
    pub git_ref: String,
    /// The head commit when the change was accepted.
    pub submitted_head: String,
    /// The head commit it was last tested at (differs after a force-push).
    pub head: String,
    pub title: String,
    pub author: String,
    pub priority: Priority,
    pub state: ChangeState,
    pub reason: Option<String>,
    pub landed_commit: Option<String>,
    /// Unix seconds.
    /// Milliseconds since the epoch, like every time in the core.
    pub submitted_at: Millis,
    pub updated_at: Millis,
    /// The pull request it came from, on the repository's forge.
    #[serde(default)]
    pub pr: Option<u64>,
    /// Who approved it (on the forge; `r=NAME` approves in NAME's name).
    #[serde(default)]
    pub approver: Option<String>,
    /// Held by the grace policy: it newly breaks these unprotected jobs and is tested
    /// again (alone, allowed to break them) once `until` passes (`docs/breakage.md`).
    #[serde(default)]
    pub held: Option<Held>,
    /// Where the change is tested: the queue, or first the mass-rebuild stage.
    #[serde(default)]
    pub route: Route,
}

impl Change {
    /// Queue order: priority class, then submission time, then id.
    pub fn queue_key(&self) -> (Priority, i64, ChangeId) {
        (self.priority, self.submitted_at, self.id)
    }
}

/// A change held by the grace policy: queued, tested again alone once `until` passes,
/// allowed then to break exactly `breaks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub until: Millis,
    pub breaks: Vec<crate::core::evaluation::JobKey>,
}

/// The two stages of a lane (`docs/design.md`, "The mass-rebuild stage").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Tested on the target (speculatively, in batches) and landed.
    #[default]
    Queue,
    /// Rebuilds too much for the queue: batched and built on the target's tip at low
    /// priority first, then queued into the target with its batch.
    MassRebuild,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Queue => "queue",
            Stage::MassRebuild => "mass-rebuild",
        }
    }

    pub fn parse(s: &str) -> Option<Stage> {
        [Stage::Queue, Stage::MassRebuild]
            .into_iter()
            .find(|x| x.as_str() == s)
    }
}

/// What the lane knows of a change's size and way through the stages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub stage: Stage,
    /// Jobs it rebuilds per system, once known: from an evaluation of it on its own.
    #[serde(default)]
    pub rebuilds: std::collections::BTreeMap<String, usize>,
    /// The stage candidate it passed: it is queued into the target with the changes that
    /// passed with it, merged in the same order, so the stage's builds are reused.
    #[serde(default)]
    pub passed_by: Option<u64>,
    /// Times it went back from the queue to the stage (it no longer merged, or what
    /// changed on the target meanwhile broke it).
    #[serde(default)]
    pub returns: u32,
}

impl Route {
    /// Waits for (or is in) the mass-rebuild stage: routed there and not passed yet.
    pub fn in_stage(&self) -> bool {
        self.stage == Stage::MassRebuild && self.passed_by.is_none()
    }
}

/// Changes as messages name them: "#3 #5".
pub fn list<'a>(ids: impl IntoIterator<Item = &'a ChangeId>) -> String {
    ids.into_iter()
        .map(|c| format!("#{c}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A commit's abbreviation in messages: its first 12 hex digits.
pub fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_orders_urgent_first() {
        let mut v = vec![
            Priority::Low,
            Priority::Urgent,
            Priority::Normal,
            Priority::High,
        ];
        v.sort();
        assert_eq!(
            v,
            vec![
                Priority::Urgent,
                Priority::High,
                Priority::Normal,
                Priority::Low
            ]
        );
        for p in v {
            assert_eq!(Priority::parse(p.as_str()), Some(p));
        }
    }
}
