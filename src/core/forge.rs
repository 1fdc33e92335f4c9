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
    /// The labels it carries now (Gitea and Forgejo say which changed no other way).
    LabelsSet(Vec<String>),
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

/// What a group candidate keeps of its merge group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRef {
    pub head_sha: String,
    /// `refs/heads/gh-readonly-queue/BASE/pr-N-SHA`: fetched to test the group.
    pub head_ref: String,
    pub base_sha: String,
    /// Each pull request's change with the group commit that adds it, oldest first.
    pub chain: Vec<(crate::core::change::ChangeId, String)>,
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
                    PullAction::LabelsSet(ls) => format!("labels set to {ls:?}"),
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

/// What a user may do in the repository, as the forge's collaborator-permission endpoint
/// answers (`admin`, `maintain`, `write`, `triage`, `read`, `none`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    Admin,
    Maintain,
    Write,
    Triage,
    Read,
    None,
}

impl Permission {
    pub fn parse(s: &str) -> Permission {
        match s {
            "admin" | "owner" => Permission::Admin,
            "maintain" => Permission::Maintain,
            "write" => Permission::Write,
            "triage" => Permission::Triage,
            "read" => Permission::Read,
            _ => Permission::None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Admin => "admin",
            Permission::Maintain => "maintain",
            Permission::Write => "write",
            Permission::Triage => "triage",
            Permission::Read => "read",
            Permission::None => "none",
        }
    }

    /// Approving, cancelling, prioritising and retrying need write access or more.
    pub fn may_approve(self) -> bool {
        matches!(
            self,
            Permission::Admin | Permission::Maintain | Permission::Write
        )
    }
}

/// What the shell learned from the forge, for the core to decide on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForgeInput {
    /// A comment's commands, with the pull request as it is now and the commenter's
    /// permission, both read from the forge when the comment arrived.
    Commands {
        repo: String,
        pr: PullRequest,
        author: String,
        permission: Permission,
        commands:
            Vec<Result<crate::core::commands::BotCommand, crate::core::commands::CommandError>>,
    },
    /// Something happened to a pull request (a push, closing, reopening).
    Pull {
        repo: String,
        action: PullAction,
        pr: PullRequest,
    },
    /// GitHub asks for a merge group's checks: its pull requests as the forge has them,
    /// each with the group commit that adds it, oldest first.
    MergeGroup {
        repo: String,
        group: MergeGroup,
        prs: Vec<(PullRequest, String)>,
    },
    /// The merge group is gone.
    MergeGroupDestroyed { head_sha: String },
    /// Every open pull request, read in full at a resync: what the queue holds of the
    /// others was closed, and a moved head was pushed to, while nobody was listening.
    Open {
        repo: String,
        open: Vec<PullRequest>,
    },
}

/// A commit status's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusState {
    Pending,
    Success,
    Failure,
    Error,
}

/// What mergequeue tells the forge. Stored in the outbox with the step that decided it,
/// delivered (and retried) by the shell until the forge took it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ForgeCommand {
    Status {
        sha: String,
        state: StatusState,
        /// At most 140 characters (GitHub's limit).
        description: String,
    },
    Comment {
        pr: u64,
        body: String,
    },
    /// After the push that landed it: Gitea and Forgejo are told (`manually-merged`);
    /// GitHub sees it by itself.
    MarkMerged {
        pr: u64,
        sha: String,
    },
}

/// `s` cut to GitHub's 140 characters for a status description.
pub fn status_description(s: &str) -> String {
    const MAX: usize = 140;
    if s.chars().count() <= MAX {
        return s.to_string();
    }
    let cut: String = s.chars().take(MAX - 1).collect();
    format!("{cut}…")
}
