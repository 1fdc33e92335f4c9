//! GitHub's merge queue (`mode = "merge-group"`): GitHub forms the group commit (its
//! base, then one commit per pull request) and lands it; mergequeue is its required
//! check. A group is a candidate whose merge chain is GitHub's: it is evaluated and
//! built like any, attribution names the pull request of the group that breaks it, and
//! the answer is a commit status on the group's head. Nothing is pushed; a failed group
//! is not retested here (GitHub forms new groups without the culprit).

use super::candidate::{Candidates, Ctx, Phase};
use super::change::{short, ChangeId, ChangeState, Priority};
use super::forge::{
    status_description, ForgeCommand, GroupRef, MergeGroup, PullRequest, StatusState,
};
use super::{CandId, Command, Core, Millis, Record, Submission};

/// The git ref of a change that is part of a merge group: its answers go to the group.
pub fn is_group_ref(git_ref: &str) -> bool {
    git_ref.contains("gh-readonly-queue/")
}

/// Which pull request each commit of a group adds. `chain` is the group's first-parent
/// history above its base, oldest first, as (commit, message). A commit names its pull
/// request as GitHub writes it: `Merge pull request #N from …` (merge) or a subject
/// ending in `(#N)` (squash). Commits that name none (a rebase) belong to the next one
/// that does, and the last ones to the group's own pull request, read from `head_ref`.
/// Returns (pull request, the last commit of its run), oldest first.
pub fn group_pulls(
    chain: &[(String, String)],
    head_ref: &str,
) -> Result<Vec<(u64, String)>, String> {
    let own = head_ref
        .rsplit('/')
        .next()
        .and_then(|tail| tail.strip_prefix("pr-"))
        .and_then(|rest| rest.split('-').next())
        .and_then(|n| n.parse::<u64>().ok());
    let mut out: Vec<(u64, String)> = vec![];
    for (i, (commit, message)) in chain.iter().enumerate() {
        // A commit that names nothing waits for the next that does (its run ends there).
        let n = match pull_of_message(message) {
            Some(n) => n,
            None if i + 1 < chain.len() => continue,
            None => own.ok_or_else(|| {
                format!(
                    "commit {} names no pull request, and {head_ref:?} names none either",
                    short(commit)
                )
            })?,
        };
        match out.last_mut() {
            // A pull request's several commits (a rebase that kept its number).
            Some((last, c)) if *last == n => *c = commit.clone(),
            _ => out.push((n, commit.clone())),
        }
    }
    if out.is_empty() {
        return Err("the merge group holds no commit".into());
    }
    Ok(out)
}

/// The pull request a commit message names, as GitHub's merge methods write it.
fn pull_of_message(message: &str) -> Option<u64> {
    let subject = message.lines().next().unwrap_or("").trim();
    let number = |s: &str| -> Option<u64> {
        let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    if let Some(rest) = subject.strip_prefix("Merge pull request #") {
        return number(rest);
    }
    let open = subject.strip_suffix(')')?.rfind("(#")?;
    let inner = &subject[open + 2..subject.len() - 1];
    (inner.chars().all(|c| c.is_ascii_digit()) && !inner.is_empty())
        .then(|| inner.parse().ok())
        .flatten()
}

impl Core {
    /// GitHub asks for the checks of a merge group: `prs` are its pull requests (as the
    /// forge has them now) with the group commit that adds each, oldest first.
    pub(crate) fn merge_group(
        &mut self,
        repo: &str,
        group: MergeGroup,
        prs: Vec<(PullRequest, String)>,
        now: Millis,
    ) {
        let status = |core: &mut Core, state, text: String| {
            core.fx.record(Record::Forge {
                repo: repo.to_string(),
                command: ForgeCommand::Status {
                    sha: group.head_sha.clone(),
                    state,
                    description: status_description(&text),
                },
            });
        };
        let managed = self
            .config
            .repos
            .get(repo)
            .is_some_and(|r| r.lanes.contains_key(&group.base_ref));
        if !managed {
            let text = format!("{} is not a branch mergequeue manages", group.base_ref);
            self.fx.event(
                now,
                repo,
                format!("merge group {}: {text}", short(&group.head_sha)),
            );
            return status(self, StatusState::Failure, text);
        }
        let known = self.cands.by_id.values().any(|c| {
            c.phase != Phase::Done
                && c.group
                    .as_ref()
                    .is_some_and(|g| g.head_sha == group.head_sha)
        });
        if known || prs.is_empty() {
            return;
        }
        let mut chain = vec![];
        for (pr, commit) in prs {
            let sub = Submission {
                repo: repo.to_string(),
                target: group.base_ref.clone(),
                git_ref: group.head_ref.clone(),
                head: pr.head_sha.clone(),
                title: pr.title.clone(),
                author: pr.author.clone(),
                priority: Priority::Normal,
                pr: Some(pr.number),
                approver: Some("GitHub merge queue".into()),
            };
            match self.queue.submit(&self.config, sub, now, &mut self.fx) {
                Ok(c) => chain.push((c.id, commit)),
                Err(e) => return status(self, StatusState::Error, format!("not tested: {e:?}")),
            }
        }
        let list: Vec<String> = chain
            .iter()
            .map(|(c, _)| format!("#{}", self.queue.changes[c].pr.unwrap_or(0)))
            .collect();
        status(
            self,
            StatusState::Pending,
            format!("testing pull requests {}", list.join(" ")),
        );
        let g = GroupRef {
            head_sha: group.head_sha.clone(),
            head_ref: group.head_ref.clone(),
            base_sha: group.base_sha.clone(),
            chain,
        };
        let (cands, mut cx) = self.split();
        cands.start_group(&mut cx, repo, g, now);
        self.tick(now);
    }

    /// The merge group is gone (merged, or dequeued): its work is dropped.
    pub(crate) fn merge_group_destroyed(&mut self, head_sha: &str, now: Millis) {
        let live: Vec<CandId> = self
            .cands
            .by_id
            .values()
            .filter(|c| c.phase != Phase::Done)
            .filter(|c| c.group.as_ref().is_some_and(|g| g.head_sha == head_sha))
            .map(|c| c.id)
            .collect();
        let (cands, mut cx) = self.split();
        for id in live {
            cands.abandon(&mut cx, id, now, "GitHub destroyed the merge group");
        }
        self.tick(now);
    }
}

impl Candidates {
    fn start_group(&mut self, cx: &mut Ctx, repo: &str, group: GroupRef, now: Millis) {
        let ids: Vec<ChangeId> = group.chain.iter().map(|(c, _)| *c).collect();
        let branch = cx.queue.changes[&ids[0]].target.clone();
        self.start_candidate(cx, repo, &branch, ids, None, Some(group), now);
    }

    /// The group's checks passed: its pull requests are done here; GitHub lands them.
    pub(crate) fn group_passed(&mut self, cx: &mut Ctx, id: CandId, now: Millis) {
        let cand = self.by_id[&id].clone();
        let commit = cand.commit().unwrap_or_default().to_string();
        for c in &cand.changes {
            let ch = cx.queue.changes.get_mut(c).expect("known");
            ch.landed_commit = Some(commit.clone());
            let why = format!(
                "passed in merge group {}; GitHub's merge queue lands it",
                short(&commit)
            );
            cx.set_state(*c, ChangeState::Merged, Some(why), now);
        }
        cx.fx.event(
            now,
            &cand.repo,
            format!("candidate {id}: merge group {} passed", short(&commit)),
        );
        self.finish(cx, id, format!("passed {commit}"), now);
    }

    /// A group candidate ended: its changes still open end too (GitHub retests, not
    /// mergequeue), and the group's head gets the status that says how it went.
    pub(crate) fn group_finished(&mut self, cx: &mut Ctx, id: CandId, now: Millis) {
        let cand = self.by_id[&id].clone();
        let Some(g) = &cand.group else { return };
        // The chain holds every change of the group (the candidate's own list is the same
        // changes once prepared).
        let change = |c: &ChangeId| &cx.queue.changes[c];
        let passed = g
            .chain
            .iter()
            .all(|(c, _)| change(c).state == ChangeState::Merged);
        let culprit = g
            .chain
            .iter()
            .map(|(c, _)| change(c))
            .find(|c| c.state == ChangeState::Rejected);
        let (state, text) = match culprit {
            _ if passed => (
                StatusState::Success,
                format!("built: {} pull requests", g.chain.len()),
            ),
            Some(c) => {
                let reason = c.reason.as_deref().unwrap_or("");
                let first = reason.lines().next().unwrap_or("rejected");
                let n = c.pr.unwrap_or(0);
                (StatusState::Failure, format!("broken by #{n}: {first}"))
            }
            None => {
                let summary = cand.summary.clone().unwrap_or_default();
                (StatusState::Failure, format!("not passed: {summary}"))
            }
        };
        let open: Vec<ChangeId> = g
            .chain
            .iter()
            .map(|(c, _)| *c)
            .filter(|c| !cx.queue.changes[c].state.is_final())
            .collect();
        for c in open {
            let why = format!("the merge group ended without it passing: {text}");
            cx.set_state(c, ChangeState::Cancelled, Some(why), now);
        }
        cx.fx.push(Command::Record(Record::Forge {
            repo: cand.repo.clone(),
            command: ForgeCommand::Status {
                sha: g.head_sha.clone(),
                state,
                description: status_description(&text),
            },
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(msgs: &[&str]) -> Vec<(String, String)> {
        msgs.iter()
            .enumerate()
            .map(|(i, m)| (format!("c{i}"), m.to_string()))
            .collect()
    }

    #[test]
    fn each_commit_of_a_group_names_its_pull_request() {
        let head = "refs/heads/gh-readonly-queue/main/pr-9-abcdef";
        type Case<'a> = (&'a [&'a str], Option<Vec<(u64, &'a str)>>);
        let cases: &[Case] = &[
            (
                &["Merge pull request #4 from a/b\n\nx"],
                Some(vec![(4, "c0")]),
            ),
            (
                &["zlib: 1.3 (#4)", "curl: fix (#7)"],
                Some(vec![(4, "c0"), (7, "c1")]),
            ),
            (
                &[
                    "Merge pull request #4 from a/b",
                    "Merge pull request #9 from c/d",
                ],
                Some(vec![(4, "c0"), (9, "c1")]),
            ),
            // A rebased pull request: its commits name nothing; the group's own is #9.
            (
                &["zlib: 1.3 (#4)", "curl: step 1", "curl: step 2"],
                Some(vec![(4, "c0"), (9, "c2")]),
            ),
            (
                &["curl: step 1", "curl: step 2 (#7)"],
                Some(vec![(7, "c1")]),
            ),
            (&["a (#4)", "b (#4)"], Some(vec![(4, "c1")])),
            (&["(#x) not a number", "fix (#12)"], Some(vec![(12, "c1")])),
            (&[], None),
        ];
        for (msgs, want) in cases {
            let got = group_pulls(&chain(msgs), head);
            match want {
                Some(w) => {
                    let w: Vec<(u64, String)> =
                        w.iter().map(|(n, c)| (*n, c.to_string())).collect();
                    assert_eq!(got.as_ref().ok(), Some(&w), "{msgs:?}: {got:?}");
                }
                None => assert!(got.is_err(), "{msgs:?}: {got:?}"),
            }
        }
        assert!(group_pulls(&chain(&["no number"]), "refs/heads/other").is_err());
    }
}
