//! The pull-request machine: cases as contributors meet them, then generated sequences of
//! approvals, pushes, closes and reopens checked against a model of what each one means.

use proptest::prelude::*;

use super::change::{ChangeState, Priority};
use super::commands::{parse, BotCommand};
use super::forge::{ForgeCommand, ForgeInput, Permission, PullAction, PullRequest, StatusState};
use super::{Command, Core, CoreConfig, LaneConfig, Record, RepoConfig};

fn core() -> Core {
    let lane = LaneConfig {
        batch_max: 4,
        required: vec![],
        batch_delay_ms: 0,
        build_priority: None,
        breakage: Default::default(),
        mass_rebuild_threshold: None,
        window: 1,
        window_floor: 1,
    };
    let mut c = CoreConfig::default();
    c.repos.insert(
        "pkgs".into(),
        RepoConfig {
            lanes: [("master".to_string(), lane)].into(),
        },
    );
    Core::new(c)
}

fn pr(head: u32) -> PullRequest {
    PullRequest {
        number: 7,
        head_sha: format!("{head:040x}"),
        base_ref: "master".into(),
        author: "alice".into(),
        title: "zlib: 1.3 -> 1.3.1".into(),
        open: true,
        merged: false,
    }
}

fn say(
    core: &mut Core,
    p: &PullRequest,
    who: &str,
    perm: Permission,
    text: &str,
) -> Vec<ForgeCommand> {
    core.forge(
        ForgeInput::Commands {
            repo: "pkgs".into(),
            pr: p.clone(),
            author: who.into(),
            permission: perm,
            commands: parse(text, "mergequeue"),
        },
        1_000,
    );
    forge_out(core)
}

fn pull(core: &mut Core, p: &PullRequest, action: PullAction) -> Vec<ForgeCommand> {
    core.forge(
        ForgeInput::Pull {
            repo: "pkgs".into(),
            action,
            pr: p.clone(),
        },
        2_000,
    );
    forge_out(core)
}

fn forge_out(core: &mut Core) -> Vec<ForgeCommand> {
    core.take_commands()
        .into_iter()
        .filter_map(|c| match c {
            Command::Record(Record::Forge { command, .. }) => Some(command),
            _ => None,
        })
        .collect()
}

fn comments(out: &[ForgeCommand]) -> Vec<&str> {
    out.iter()
        .filter_map(|c| match c {
            ForgeCommand::Comment { body, .. } => Some(body.as_str()),
            _ => None,
        })
        .collect()
}

fn statuses(out: &[ForgeCommand]) -> Vec<(StatusState, &str)> {
    out.iter()
        .filter_map(|c| match c {
            ForgeCommand::Status {
                state, description, ..
            } => Some((*state, description.as_str())),
            _ => None,
        })
        .collect()
}

/// The pull request's change that is queued or testing.
fn active(core: &Core) -> Option<super::change::Change> {
    core.changes()
        .filter(|c| c.pr == Some(7) && !c.state.is_final())
        .max_by_key(|c| c.id)
        .cloned()
}

#[test]
fn an_approval_queues_the_head_for_its_base_with_a_pending_status() {
    let mut c = core();
    let out = say(
        &mut c,
        &pr(1),
        "bob",
        Permission::Write,
        "@mergequeue r+ p=high",
    );
    let ch = active(&c).expect("queued");
    assert_eq!(ch.git_ref, "refs/pull/7/head");
    assert_eq!(ch.head, pr(1).head_sha);
    assert_eq!(
        (ch.target.as_str(), ch.priority),
        ("master", Priority::High)
    );
    assert_eq!(ch.approver.as_deref(), Some("bob"));
    assert_eq!(ch.author, "alice");
    let st = statuses(&out);
    assert!(st.iter().all(|(s, _)| *s == StatusState::Pending), "{st:?}");
    // No batch delay: taken into a candidate at once, so the one status says so (a
    // "queued at position N" status would be stale before it is sent).
    assert_eq!(st.len(), 1, "{st:?}");
    assert!(st[0].1.starts_with("testing #1 in candidate"), "{st:?}");
    assert!(comments(&out).is_empty());
}

#[test]
fn r_equals_approves_on_behalf_of_others() {
    let mut c = core();
    say(
        &mut c,
        &pr(1),
        "bob",
        Permission::Maintain,
        "@mergequeue r=carol,dave",
    );
    assert_eq!(active(&c).unwrap().approver.as_deref(), Some("carol,dave"));
}

#[test]
fn without_write_access_one_reply_and_nothing_queued() {
    for perm in [Permission::Read, Permission::Triage, Permission::None] {
        let mut c = core();
        let out = say(
            &mut c,
            &pr(1),
            "mallory",
            perm,
            "@mergequeue r+\n@mergequeue p=urgent",
        );
        assert!(active(&c).is_none());
        let cs = comments(&out);
        assert_eq!(cs.len(), 1, "{cs:?}");
        assert!(
            cs[0].starts_with("@mallory") && cs[0].contains("write access"),
            "{cs:?}"
        );
    }
}

#[test]
fn an_unmanaged_base_or_a_closed_pull_request_is_refused() {
    let mut c = core();
    let mut p = pr(1);
    p.base_ref = "release-24.05".into();
    let out = say(&mut c, &p, "bob", Permission::Write, "@mergequeue r+");
    assert!(active(&c).is_none());
    assert!(comments(&out)[0].contains("`release-24.05` is not managed"));
    let mut p = pr(1);
    p.open = false;
    let out = say(&mut c, &p, "bob", Permission::Write, "@mergequeue r+");
    assert!(active(&c).is_none());
    assert!(comments(&out)[0].contains("closed"));
}

#[test]
fn unknown_commands_get_a_reply_and_known_ones_still_run() {
    let mut c = core();
    let out = say(
        &mut c,
        &pr(1),
        "bob",
        Permission::Write,
        "@mergequeue try\n@mergequeue r+",
    );
    assert!(active(&c).is_some());
    let cs = comments(&out);
    assert_eq!(cs.len(), 1);
    assert!(cs[0].contains("unknown command \"try\""), "{cs:?}");
}

#[test]
fn a_push_removes_the_approval_with_an_error_status_and_a_comment() {
    let mut c = core();
    say(&mut c, &pr(1), "bob", Permission::Write, "@mergequeue r+");
    let id = active(&c).unwrap().id;
    let out = pull(&mut c, &pr(2), PullAction::Pushed);
    assert!(active(&c).is_none());
    assert_eq!(c.change(id).unwrap().state, ChangeState::Cancelled);
    let errors: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            ForgeCommand::Status {
                sha,
                state: StatusState::Error,
                ..
            } => Some(sha.clone()),
            _ => None,
        })
        .collect();
    assert!(errors.contains(&pr(2).head_sha), "{out:?}");
    assert!(comments(&out)[0].contains("approval is removed"));
    // The same head again is no push.
    say(&mut c, &pr(2), "bob", Permission::Write, "@mergequeue r+");
    assert!(pull(&mut c, &pr(2), PullAction::Pushed).is_empty());
    assert!(active(&c).is_some());
}

#[test]
fn closing_cancels_and_reopening_does_not_approve_again() {
    let mut c = core();
    say(&mut c, &pr(1), "bob", Permission::Write, "@mergequeue r+");
    let mut closed = pr(1);
    closed.open = false;
    pull(&mut c, &closed, PullAction::Closed);
    assert!(active(&c).is_none());
    pull(&mut c, &pr(1), PullAction::Reopened);
    assert!(active(&c).is_none());
}

#[test]
fn a_resync_cancels_what_was_closed_and_unapproves_what_moved() {
    let mut c = core();
    say(&mut c, &pr(1), "bob", Permission::Write, "@mergequeue r+");
    let mut other = pr(1);
    other.number = 9;
    say(&mut c, &other, "bob", Permission::Write, "@mergequeue r+");
    let ids: Vec<u64> = c.changes().map(|ch| ch.id).collect();
    // #7 was closed while nobody listened; #9 was pushed to.
    let mut moved = pr(5);
    moved.number = 9;
    c.forge(
        ForgeInput::Open {
            repo: "pkgs".into(),
            open: vec![moved.clone()],
        },
        3_000,
    );
    let out = forge_out(&mut c);
    for id in ids {
        assert_eq!(c.change(id).unwrap().state, ChangeState::Cancelled);
    }
    assert!(comments(&out)
        .iter()
        .any(|b| b.contains("approval is removed")));
    // The same list again changes nothing.
    c.forge(
        ForgeInput::Open {
            repo: "pkgs".into(),
            open: vec![moved],
        },
        4_000,
    );
    assert!(forge_out(&mut c).is_empty());
}

#[test]
fn cancel_retry_and_priority() {
    let mut c = core();
    let out = say(&mut c, &pr(1), "bob", Permission::Write, "@mergequeue r-");
    assert!(comments(&out)[0].contains("not in the queue"));
    let out = say(
        &mut c,
        &pr(1),
        "bob",
        Permission::Write,
        "@mergequeue p=low",
    );
    assert!(comments(&out)[0].contains("r+ p=low"));
    say(
        &mut c,
        &pr(1),
        "bob",
        Permission::Write,
        "@mergequeue retry",
    );
    let id = active(&c).expect("retry queues").id;
    let out = say(&mut c, &pr(1), "bob", Permission::Write, "@mergequeue r+");
    assert!(comments(&out)[0].contains(&format!("#{id}")));
    say(
        &mut c,
        &pr(1),
        "bob",
        Permission::Write,
        "@mergequeue p=urgent",
    );
    assert_eq!(c.change(id).unwrap().priority, Priority::Urgent);
    let out = say(
        &mut c,
        &pr(1),
        "bob",
        Permission::Write,
        "@mergequeue cancel",
    );
    assert_eq!(c.change(id).unwrap().state, ChangeState::Cancelled);
    assert!(statuses(&out)
        .iter()
        .any(|(s, d)| *s == StatusState::Error && d.contains("cancelled by bob")));
}

#[test]
fn landing_and_rejection_are_told_on_the_pull_request() {
    let mut c = core();
    say(&mut c, &pr(1), "bob", Permission::Write, "@mergequeue r+");
    let mut ch = active(&c).unwrap();
    ch.state = ChangeState::Merged;
    ch.landed_commit = Some("ab".repeat(20));
    let mut cmds = vec![Command::Record(Record::Change(ch.clone()))];
    c.pull_answers(&mut cmds);
    let out: Vec<ForgeCommand> = cmds
        .into_iter()
        .filter_map(|c| match c {
            Command::Record(Record::Forge { command, .. }) => Some(command),
            _ => None,
        })
        .collect();
    assert_eq!(statuses(&out)[0].0, StatusState::Success);
    assert!(comments(&out)[0].contains(&"ab".repeat(20)));
    assert!(out.contains(&ForgeCommand::MarkMerged {
        pr: 7,
        sha: "ab".repeat(20)
    }));
    ch.state = ChangeState::Rejected;
    ch.reason = Some(format!("{}\nlog tail", "x".repeat(300)));
    ch.id += 100;
    let mut cmds = vec![Command::Record(Record::Change(ch))];
    c.pull_answers(&mut cmds);
    let descs: Vec<String> = cmds
        .iter()
        .filter_map(|c| match c {
            Command::Record(Record::Forge {
                command:
                    ForgeCommand::Status {
                        state: StatusState::Failure,
                        description,
                        ..
                    },
                ..
            }) => Some(description.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(descs.len(), 1);
    assert!(descs[0].chars().count() <= 140);
}

/// One thing that happens to pull request #7.
#[derive(Debug, Clone)]
enum Step {
    Say(Permission, &'static str),
    Push,
    Close,
    Reopen,
}

fn step() -> impl Strategy<Value = Step> {
    let perm = prop_oneof![
        Just(Permission::Admin),
        Just(Permission::Write),
        Just(Permission::Read),
        Just(Permission::None)
    ];
    let text = prop_oneof![
        Just("@mergequeue r+"),
        Just("@mergequeue merge p=high"),
        Just("@mergequeue r-"),
        Just("@mergequeue retry"),
        Just("@mergequeue p=low"),
        Just("> @mergequeue r+"),
        Just("@mergequeue hello"),
    ];
    prop_oneof![
        4 => (perm, text).prop_map(|(p, t)| Step::Say(p, t)),
        1 => Just(Step::Push),
        1 => Just(Step::Close),
        1 => Just(Step::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// After every step the pull request is queued exactly when the model says, at the
    /// head the model says; every status description fits GitHub's 140 characters.
    #[test]
    fn the_queue_follows_the_pull_request(steps in proptest::collection::vec(step(), 1..25)) {
        let mut c = core();
        let (mut head, mut open, mut queued_at): (u32, bool, Option<u32>) = (1, true, None);
        for s in &steps {
            let mut p = pr(head);
            p.open = open;
            let out = match s {
                Step::Say(perm, text) => {
                    let out = say(&mut c, &p, "bob", *perm, text);
                    if perm.may_approve() {
                        for cmd in parse(text, "mergequeue").into_iter().flatten() {
                            match cmd {
                                BotCommand::Approve { .. } | BotCommand::Retry if open => {
                                    queued_at = Some(head);
                                }
                                BotCommand::Cancel => queued_at = None,
                                _ => {}
                            }
                        }
                    }
                    out
                }
                Step::Push => {
                    head += 1;
                    p.head_sha = pr(head).head_sha;
                    if queued_at.is_some_and(|h| h != head) {
                        queued_at = None;
                    }
                    pull(&mut c, &p, PullAction::Pushed)
                }
                Step::Close => {
                    open = false;
                    p.open = false;
                    queued_at = None;
                    pull(&mut c, &p, PullAction::Closed)
                }
                Step::Reopen => {
                    open = true;
                    p.open = true;
                    pull(&mut c, &p, PullAction::Reopened)
                }
            };
            let got = active(&c).map(|ch| ch.head);
            prop_assert_eq!(got, queued_at.map(|h| pr(h).head_sha), "after {:?} in {:?}", s, steps);
            for (_, d) in statuses(&out) {
                prop_assert!(d.chars().count() <= 140);
            }
        }
    }
}
