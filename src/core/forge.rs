//! What the core knows of a forge (GitHub, Gitea, Forgejo): the events the shell reads
//! from webhooks and resyncs, typed, with no JSON and no HTTP.

use serde::{Deserialize, Serialize};

/// A pull request as an event carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequest {
    pub number: u64,
    pub head_sha: String,
    /// The branch it asks to merge into.
    pub base_ref: String,
    pub author: String,
    pub title: String,
    pub open: bool,
    pub merged: bool,
}

/// What happened to a pull request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullAction {
    Opened,
    /// New commits: GitHub's `synchronize`, Gitea's `synchronized`.
    Pushed,
    Closed,
    Reopened,
    Labeled(String),
    Unlabeled(String),
    /// Edited, assigned and the rest: nothing the queue acts on.
    Other(String),
}

/// A merge group of GitHub's merge queue (`merge_group` events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeGroup {
    pub head_sha: String,
    pub head_ref: String,
    pub base_sha: String,
    pub base_ref: String,
}

/// One webhook delivery, understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForgeEvent {
    PullRequest {
        action: PullAction,
        pr: PullRequest,
        sender: String,
    },
    /// A new comment on a pull request (or a review's body): it may hold commands.
    Comment {
        pr: u64,
        comment_id: u64,
        author: String,
        body: String,
    },
    MergeGroupRequested(MergeGroup),
    MergeGroupDestroyed(MergeGroup),
    /// An event or action the queue does not use; answered 2xx and dropped.
    Ignored {
        event: String,
        action: String,
    },
}

impl ForgeEvent {
    /// One line for the events log; `None` for events the queue ignores.
    pub fn summary(&self) -> Option<String> {
        Some(match self {
            ForgeEvent::PullRequest { action, pr, sender } => {
                let what = match action {
                    PullAction::Opened => "opened".to_string(),
                    PullAction::Pushed => format!("pushed to {}", short(&pr.head_sha)),
                    PullAction::Closed if pr.merged => "merged".to_string(),
                    PullAction::Closed => "closed".to_string(),
                    PullAction::Reopened => "reopened".to_string(),
                    PullAction::Labeled(l) => format!("labeled {l:?}"),
                    PullAction::Unlabeled(l) => format!("unlabeled {l:?}"),
                    PullAction::Other(_) => return None,
                };
                format!("forge: pull request #{} {what} by {sender}", pr.number)
            }
            ForgeEvent::Comment { pr, author, .. } => {
                format!("forge: comment by {author} on pull request #{pr}")
            }
            ForgeEvent::MergeGroupRequested(g) => {
                format!("forge: merge group {} requested checks", short(&g.head_sha))
            }
            ForgeEvent::MergeGroupDestroyed(g) => {
                format!("forge: merge group {} destroyed", short(&g.head_sha))
            }
            ForgeEvent::Ignored { .. } => return None,
        })
    }
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}
