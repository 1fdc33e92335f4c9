//! The pull-request machine: commands from comments and pull-request events in, queue
//! operations and answers for the forge out (commit statuses, comments, "merged"), each
//! answer a `Record::Forge` stored with the step that decided it (the outbox).
//!
//! Rules (`docs/forge.md`): only users with write access (or more) may give commands; a
//! comment with any command from someone without it gets one reply and changes nothing.
//! `r+` queues the pull request at its current head for its base branch, which must be
//! managed. A push to an approved pull request removes the approval; closing it cancels
//! it; reopening does not approve it again. Statuses follow the change's state.

use std::collections::BTreeMap;

use super::change::{Change, ChangeId, ChangeState, Priority};
use super::commands::BotCommand;
use super::forge::{
    status_description, ForgeCommand, ForgeInput, PullAction, PullRequest, StatusState,
};
use super::{Core, Millis, Record, Refusal, Submission};

/// The status each pull-request change last got, so a status is posted when it changes.
#[derive(Debug, Default)]
pub(crate) struct Pulls {
    posted: BTreeMap<ChangeId, ChangeState>,
}

impl Core {
    /// Acts on what the forge said.
    pub fn forge(&mut self, input: ForgeInput, now: Millis) {
        match input {
            ForgeInput::Commands {
                repo,
                pr,
                author,
                permission,
                commands,
            } => {
                if commands.is_empty() {
                    return;
                }
                if !permission.may_approve() {
                    let text = format!(
                        "commands need write access to this repository; you have {}. Nothing was done.",
                        permission.as_str()
                    );
                    self.reply(&repo, pr.number, &author, &text);
                    return;
                }
                for c in commands {
                    match c {
                        Ok(c) => self.command(&repo, &pr, &author, c, now),
                        Err(e) => self.reply(&repo, pr.number, &author, &e.to_string()),
                    }
                }
            }
            ForgeInput::Pull { repo, action, pr } => match action {
                PullAction::Pushed => self.pushed(&repo, &pr, now),
                PullAction::Closed if !pr.merged => {
                    if let Some(c) = self.pull_change(&repo, pr.number) {
                        let _ = self.cancel_with(c.id, "the pull request was closed", now);
                    }
                }
                // Reopening does not approve again; labels are not read yet.
                _ => {}
            },
            ForgeInput::MergeGroup { repo, group, prs } => self.merge_group(&repo, group, prs, now),
            ForgeInput::MergeGroupDestroyed { head_sha } => {
                self.merge_group_destroyed(&head_sha, now)
            }
            ForgeInput::Open { repo, open } => {
                let active: Vec<Change> = self
                    .queue
                    .changes
                    .values()
                    .filter(|c| c.repo == repo && c.pr.is_some() && !c.state.is_final())
                    .cloned()
                    .collect();
                for c in active {
                    match open.iter().find(|p| Some(p.number) == c.pr) {
                        Some(p) => self.pushed(&repo, p, now),
                        None => {
                            let _ = self.cancel_with(c.id, "the pull request was closed", now);
                        }
                    }
                }
            }
        }
    }

    /// The pull request's head is `pr.head_sha` now: an approval of another head is void.
    fn pushed(&mut self, repo: &str, pr: &PullRequest, now: Millis) {
        let Some(c) = self.pull_change(repo, pr.number) else {
            return;
        };
        if c.head == pr.head_sha {
            return;
        }
        let reason = format!(
            "new commits were pushed ({}): the approval is removed; approve again to queue it",
            super::change::short(&pr.head_sha)
        );
        if self.cancel_with(c.id, &reason, now).is_ok() {
            self.answer(
                repo,
                ForgeCommand::Status {
                    sha: pr.head_sha.clone(),
                    state: StatusState::Error,
                    description: status_description(&reason),
                },
            );
            let body = format!("#{} {reason}.", c.id);
            self.answer(
                repo,
                ForgeCommand::Comment {
                    pr: pr.number,
                    body,
                },
            );
        }
    }

    /// The queued or testing change of a pull request.
    fn pull_change(&self, repo: &str, pr: u64) -> Option<Change> {
        self.queue
            .changes
            .values()
            .filter(|c| c.repo == repo && c.pr == Some(pr) && !c.state.is_final())
            .max_by_key(|c| c.id)
            .cloned()
    }

    /// A comment addressed to `author` on the pull request.
    fn reply(&mut self, repo: &str, pr: u64, author: &str, text: &str) {
        let body = format!("@{author}: {text}");
        self.answer(repo, ForgeCommand::Comment { pr, body });
    }

    fn answer(&mut self, repo: &str, command: ForgeCommand) {
        self.fx.record(Record::Forge {
            repo: repo.to_string(),
            command,
        });
    }

    fn command(&mut self, repo: &str, pr: &PullRequest, author: &str, c: BotCommand, now: Millis) {
        let reply = |core: &mut Core, text: String| core.reply(repo, pr.number, author, &text);
        let active = self.pull_change(repo, pr.number);
        match c {
            BotCommand::Approve {
                approvers,
                priority,
            } => self.approve(repo, pr, author, approvers, priority, active, now),
            BotCommand::Retry => match active {
                Some(c) => reply(self, format!("#{} is already {}.", c.id, c.state.as_str())),
                None => self.approve(repo, pr, author, vec![], None, None, now),
            },
            BotCommand::Cancel => match active {
                Some(c) => {
                    let why = format!("cancelled by {author}");
                    if let Err(Refusal::TooLate(_)) = self.cancel_with(c.id, &why, now) {
                        reply(
                            self,
                            format!("#{} is being landed and can no longer be cancelled.", c.id),
                        );
                    }
                }
                None => reply(self, "this pull request is not in the queue.".into()),
            },
            BotCommand::SetPriority(p) => match active {
                Some(c) => self.set_priority(c.id, p, now),
                None => reply(
                    self,
                    format!(
                        "this pull request is not in the queue; approve it with `r+ p={}`.",
                        p.as_str()
                    ),
                ),
            },
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn approve(
        &mut self,
        repo: &str,
        pr: &PullRequest,
        author: &str,
        approvers: Vec<String>,
        priority: Option<Priority>,
        active: Option<Change>,
        now: Millis,
    ) {
        let reply = |core: &mut Core, text: String| core.reply(repo, pr.number, author, &text);
        if !pr.open {
            return reply(
                self,
                "this pull request is closed; nothing was queued.".into(),
            );
        }
        let managed = self
            .config
            .repos
            .get(repo)
            .is_some_and(|r| r.lanes.contains_key(&pr.base_ref));
        if !managed {
            return reply(
                self,
                format!(
                    "the base branch `{}` is not managed by mergequeue; nothing was queued.",
                    pr.base_ref
                ),
            );
        }
        if let Some(c) = active {
            if c.head == pr.head_sha {
                match priority {
                    Some(p) if p != c.priority => self.set_priority(c.id, p, now),
                    _ => reply(self, format!("already {} as #{}.", c.state.as_str(), c.id)),
                }
                return;
            }
            // The head moved without the push being seen: the old approval is void.
            let _ = self.cancel_with(c.id, "superseded by a new approval at a new head", now);
        }
        let approver = if approvers.is_empty() {
            author.to_string()
        } else {
            approvers.join(",")
        };
        let sub = Submission {
            repo: repo.to_string(),
            target: pr.base_ref.clone(),
            git_ref: format!("refs/pull/{}/head", pr.number),
            head: pr.head_sha.clone(),
            title: pr.title.clone(),
            author: pr.author.clone(),
            priority: priority.unwrap_or(Priority::Normal),
            pr: Some(pr.number),
            approver: Some(approver),
        };
        if let Err(e) = self.submit(sub, now) {
            reply(self, format!("cannot queue it: {e:?}."));
        }
    }

    /// Statuses, comments and "merged" for the pull-request changes whose state changed
    /// in this step, derived from the step's change records.
    pub(crate) fn pull_answers(&mut self, cmds: &mut Vec<super::Command>) {
        let changed: Vec<Change> = cmds
            .iter()
            .filter_map(|c| match c {
                // A merge group's pull requests are answered on the group's head.
                super::Command::Record(Record::Change(c))
                    if c.pr.is_some() && !super::groups::is_group_ref(&c.git_ref) =>
                {
                    Some(c.clone())
                }
                _ => None,
            })
            .collect();
        for c in changed {
            if self.pulls.posted.get(&c.id) == Some(&c.state) {
                continue;
            }
            // Queued and taken into a candidate in the same step: only the state it is in
            // now is worth a status (its position is gone already).
            let now_state = self.queue.changes.get(&c.id).map(|n| n.state);
            if now_state.is_some_and(|s| s != c.state && !c.state.is_final()) {
                continue;
            }
            let pr = c.pr.expect("filtered");
            let status = |state, text: String| {
                super::Command::Record(Record::Forge {
                    repo: c.repo.clone(),
                    command: ForgeCommand::Status {
                        sha: c.head.clone(),
                        state,
                        description: status_description(&text),
                    },
                })
            };
            let comment = |body: String| {
                super::Command::Record(Record::Forge {
                    repo: c.repo.clone(),
                    command: ForgeCommand::Comment { pr, body },
                })
            };
            let reason = c.reason.clone().unwrap_or_default();
            match c.state {
                ChangeState::Queued if c.held.is_some() => {
                    cmds.push(status(StatusState::Pending, reason.clone()));
                }
                ChangeState::Queued => {
                    let position = self
                        .queue
                        .lane(&c.repo, &c.target)
                        .iter()
                        .position(|q| q.id == c.id)
                        .map_or(0, |p| p + 1);
                    cmds.push(status(
                        StatusState::Pending,
                        format!(
                            "queued as #{} at position {position} for {}",
                            c.id, c.target
                        ),
                    ));
                }
                ChangeState::Testing => {
                    let cand = self
                        .cands
                        .holding(c.id)
                        .map_or(String::new(), |(k, _)| format!(" in candidate {k}"));
                    cmds.push(status(
                        StatusState::Pending,
                        format!("testing #{}{cand}", c.id),
                    ));
                }
                ChangeState::Merged => {
                    let sha = c.landed_commit.clone().unwrap_or_default();
                    cmds.push(status(
                        StatusState::Success,
                        format!("landed on {} as {}", c.target, super::change::short(&sha)),
                    ));
                    cmds.push(comment(format!(
                        "Landed on `{}` as {sha} (#{}, approved by {}).",
                        c.target,
                        c.id,
                        c.approver.as_deref().unwrap_or("?")
                    )));
                    cmds.push(super::Command::Record(Record::Forge {
                        repo: c.repo.clone(),
                        command: ForgeCommand::MarkMerged { pr, sha },
                    }));
                }
                ChangeState::Rejected => {
                    let first = reason.lines().next().unwrap_or("rejected").to_string();
                    cmds.push(status(StatusState::Failure, first));
                    cmds.push(comment(format!("#{} was rejected.\n\n{reason}", c.id)));
                }
                ChangeState::Cancelled => {
                    cmds.push(status(StatusState::Error, format!("not queued: {reason}")));
                }
            }
            if c.state.is_final() {
                self.pulls.posted.remove(&c.id);
            } else {
                self.pulls.posted.insert(c.id, c.state);
            }
        }
    }
}
