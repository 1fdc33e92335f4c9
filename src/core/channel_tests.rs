//! Fast deterministic tests of channel gating against a model git history: commits with
//! parents and per-attribute derivations, a source and a target branch, builds that
//! pass or fail by derivation. The loop answers the core's commands like the shell.

use super::{BuildInput, ChannelInput};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::*;
use crate::core::evaluation::{EvalOutcome, Evaluation, Job, JobKey, JobResult};
use crate::core::outcome::{BuildReport, OutcomeClass};

const T0: Millis = 1_700_000_000_000;
const SYS: &str = "x86_64-linux";

#[derive(Default)]
struct Git {
    /// commit -> (first parent, attr -> derivation tag)
    commits: BTreeMap<String, (Option<String>, BTreeMap<String, String>)>,
    source: String,
    target: Option<String>,
    bad: BTreeSet<String>,
    /// Commits whose whole jobset fails to evaluate.
    eval_broken: BTreeSet<String>,
    /// On the next advance, someone else moves the target here first.
    move_target: Option<String>,
    /// On the next advance, the source was force-pushed here first.
    force_source: Option<String>,
}

impl Git {
    fn new() -> Git {
        let mut g = Git::default();
        let attrs = ["tested", "a", "b", "other"]
            .iter()
            .map(|a| (a.to_string(), "0".to_string()))
            .collect();
        g.commits.insert("c0".into(), (None, attrs));
        g.source = "c0".into();
        g.target = Some("c0".into());
        g
    }

    /// A child of `parent` changing `attr` to derivation tag `tag`.
    fn commit(&mut self, id: &str, parent: &str, changes: &[(&str, &str)]) {
        let mut attrs = self.commits[parent].1.clone();
        for (a, t) in changes {
            attrs.insert(a.to_string(), t.to_string());
        }
        self.commits
            .insert(id.into(), (Some(parent.to_string()), attrs));
    }

    fn ancestors(&self, c: &str) -> Vec<String> {
        let mut out = vec![c.to_string()];
        let mut cur = c.to_string();
        while let Some(p) = self.commits[&cur].0.clone() {
            out.push(p.clone());
            cur = p;
        }
        out
    }

    fn descends(&self, a: &str, b: &str) -> bool {
        self.ancestors(a).iter().any(|x| x == b)
    }

    fn poll(&self) -> SourcePoll {
        let head = self.source.clone();
        let descends = self.target.as_ref().is_none_or(|t| self.descends(&head, t));
        let between = if descends {
            self.ancestors(&head)
                .into_iter()
                .skip(1)
                .take_while(|c| Some(c) != self.target.as_ref())
                .collect()
        } else {
            vec![]
        };
        SourcePoll {
            head,
            target: self.target.clone(),
            target_time: Some(T0 - 3_600_000),
            descends,
            between,
        }
    }

    fn drv(attr: &str, tag: &str) -> String {
        format!("/nix/store/{tag}-{attr}.drv")
    }

    fn eval(&self, commit: &str) -> Evaluation {
        if self.eval_broken.contains(commit) {
            return Evaluation::new(
                commit.into(),
                EvalOutcome::Failed("error: syntax error".into()),
                vec![],
            );
        }
        let jobs = self.commits[commit]
            .1
            .iter()
            .map(|(a, t)| {
                let drv = Git::drv(a, t);
                (
                    JobKey {
                        attr: a.clone(),
                        system: SYS.into(),
                    },
                    JobResult::Ok(Job {
                        outputs: vec![("out".into(), drv.trim_end_matches(".drv").into())],
                        drv_path: drv,
                        maintainers: vec![],
                    }),
                )
            })
            .collect();
        Evaluation::new(commit.into(), EvalOutcome::Ok, jobs)
    }
}

struct Run {
    core: Core,
    git: Git,
    now: Millis,
    db: Snapshot,
    builds: Vec<String>,
    evals: Vec<String>,
    pushes: Vec<(Option<String>, String)>,
    /// What each push asked to upload to the binary cache first.
    uploads: Vec<Vec<String>>,
    published: Vec<String>,
    events: Vec<String>,
}

fn channel_config(look_back: bool, min_interval_ms: Millis) -> CoreConfig {
    CoreConfig {
        repos: BTreeMap::from([(
            "pkgs".to_string(),
            RepoConfig {
                lanes: BTreeMap::new(),
            },
        )]),
        failure_ttl_ms: 86_400_000,
        retry_delay_ms: 5_000,
        builders: vec![scheduler::BuilderSpec {
            id: "local".into(),
            systems: [SYS.to_string()].into(),
            supported: Default::default(),
            mandatory: Default::default(),
            max_jobs: 4,
            speed: 1.0,
        }],
        infra_retries: 5,
        infra_budget: 3,
        failure_retries: 0,
        quarantine_after: 3,
        probe_delay_ms: 30_000,
        target_poll_ms: 60_000,
        channels: BTreeMap::from([(
            "unstable".to_string(),
            ChannelConfig {
                repo: "pkgs".into(),
                source: "master".into(),
                target: "nixos-unstable".into(),
                gate: vec!["tested".into(), "a".into()],
                min_interval_ms,
                poll_interval_ms: 60_000,
                look_back,
                artifacts: true,
            },
        )]),
        keep_final: CoreConfig::default().keep_final,
        cache: None,
        verify: None,
        build_deadline_ms: 48 * 3_600_000,
        eval_deadline_ms: 4 * 3_600_000,
    }
}

impl Run {
    fn new(cfg: CoreConfig, git: Git) -> Run {
        let mut r = Run {
            core: Core::new(cfg),
            git,
            now: T0,
            db: Snapshot::default(),
            builds: vec![],
            evals: vec![],
            pushes: vec![],
            uploads: vec![],
            published: vec![],
            events: vec![],
        };
        r.core.handle(Input::Tick, r.now);
        r
    }

    /// Answers commands until the core waits for time to pass.
    fn settle(&mut self) {
        for _ in 0..1000 {
            let cmds = self.core.take_commands();
            if cmds.is_empty() {
                return;
            }
            for cmd in cmds {
                self.now += 10;
                if let Some(input) = self.perform(cmd) {
                    self.core.handle(input, self.now);
                }
            }
        }
        panic!("the loop does not converge");
    }

    /// Lets `ms` pass (firing polls and timers on the way) and settles.
    fn wait(&mut self, ms: Millis) {
        let end = self.now + ms;
        self.settle();
        while let Some(t) = self.core.next_wakeup().filter(|t| *t <= end) {
            self.now = self.now.max(t);
            self.core.handle(Input::Tick, self.now);
            self.settle();
        }
        self.now = end;
    }

    fn perform(&mut self, cmd: Command) -> Option<Input> {
        let channel = "unstable".to_string();
        Some(match cmd {
            Command::Upload { .. }
            | Command::PublishStage { .. }
            | Command::CancelBuild { .. }
            | Command::Verify { .. } => return None,
            Command::Record(r) => {
                if let Record::Event { text, .. } = &r {
                    self.events.push(text.clone());
                }
                self.db.apply(&r);
                return None;
            }
            Command::PollSource { .. } => Input::Channel(ChannelInput::SourcePolled {
                channel,
                result: Ok(self.git.poll()),
            }),
            Command::Evaluate { commit, .. } => {
                self.evals.push(commit.clone());
                Input::Build(BuildInput::Evaluated {
                    eval: Arc::new(self.git.eval(&commit)),
                })
            }
            Command::Build { drv, .. } => {
                self.builds.push(drv.clone());
                let fail = self.git.bad.contains(&drv);
                Input::Build(BuildInput::Built(BuildReport {
                    drv_path: drv.clone(),
                    class: if fail {
                        OutcomeClass::Failed
                    } else {
                        OutcomeClass::Success
                    },
                    log_tail: if fail {
                        format!("error: builder for '{drv}' failed")
                    } else {
                        String::new()
                    },
                    root_drv: None,
                    builder: "local".into(),
                    duration_ms: 5,
                    log_path: None,
                }))
            }
            Command::AdvanceChannel {
                old, new, upload, ..
            } => {
                self.pushes.push((old.clone(), new.clone()));
                self.uploads.push(upload.clone());
                if let Some(s) = self.git.force_source.take() {
                    self.git.source = s;
                }
                if let Some(t) = self.git.move_target.take() {
                    self.git.target = Some(t);
                }
                let result = if !self.git.descends(&self.git.source, &new) {
                    AdvanceResult::NotOnSource {
                        head: self.git.source.clone(),
                    }
                } else if self.git.target.as_ref() == Some(&new) {
                    AdvanceResult::Advanced
                } else if self.git.target != old {
                    AdvanceResult::Moved {
                        tip: self.git.target.clone(),
                    }
                } else {
                    if let Some(o) = &old {
                        assert!(self.git.descends(&new, o), "sideways move {o} -> {new}");
                    }
                    self.git.target = Some(new.clone());
                    AdvanceResult::Advanced
                };
                Input::Channel(ChannelInput::Advanced {
                    channel,
                    new,
                    result,
                })
            }
            Command::PublishArtifacts { rev, .. } => {
                self.published.push(rev.clone());
                Input::Channel(ChannelInput::ArtifactsPublished {
                    channel,
                    rev,
                    result: Ok(()),
                })
            }
            Command::Inspect { drvs } => Input::Build(BuildInput::Inspected {
                infos: drvs
                    .into_iter()
                    .map(|d| {
                        let info = scheduler::StepInfo {
                            system: SYS.into(),
                            ..Default::default()
                        };
                        (d, Ok(info))
                    })
                    .collect(),
            }),
            Command::QueryReferrers { root } => {
                Input::Build(BuildInput::Referrers { root, drvs: vec![] })
            }
            Command::ProbeBuilder { builder } => Input::Build(BuildInput::BuilderProbed {
                builder,
                result: Ok(BuilderIdentity {
                    implementation: "Nix".into(),
                    version: "2.8.0".into(),
                }),
            }),
            other @ (Command::Prepare { .. }
            | Command::PrepareGroup { .. }
            | Command::Probe { .. }
            | Command::Land { .. }
            | Command::PollTarget { .. }) => {
                panic!("unexpected command {other:?}")
            }
        })
    }

    fn ch(&self) -> &Channel {
        self.core.channel("unstable").expect("configured")
    }

    fn restore(&mut self) {
        self.core = self.db.restore(self.core.config().clone(), self.now);
    }

    /// The channel's stored row and advances.
    fn row(&self) -> &(ChannelState, Vec<Advance>) {
        &self.db.channels["unstable"]
    }
}

#[test]
fn a_channel_advances_when_its_gate_passes_and_publishes_artifacts() {
    let mut g = Git::new();
    g.commit("c1", "c0", &[("a", "1"), ("other", "1")]);
    g.source = "c1".into();
    g.bad.insert(Git::drv("other", "1")); // not in the gate: irrelevant
    let mut r = Run::new(channel_config(false, 0), g);
    r.settle();
    assert_eq!(r.git.target.as_deref(), Some("c1"));
    assert_eq!(r.pushes, vec![(Some("c0".into()), "c1".into())]);
    let ch = r.ch();
    assert_eq!(ch.state.rev.as_deref(), Some("c1"));
    assert_eq!((ch.state.advances, ch.state.blocks), (1, 0));
    assert_eq!(ch.history.len(), 1);
    assert_eq!(r.row().1.len(), 1, "the advance was recorded");
    assert_eq!(r.row().1[0].from.as_deref(), Some("c0"));
    let gate: Vec<&str> = r.row().1[0].gate.iter().map(|j| j.attr.as_str()).collect();
    assert_eq!(gate, ["tested", "a"]);
    assert!(r.row().1[0].gate.iter().all(|j| j.ok()));
    assert_eq!(r.published, vec!["c1".to_string()]);
    assert_eq!(r.row().0.published.as_deref(), Some("c1"));
    assert_eq!(r.row().0.rev.as_deref(), Some("c1"));
    assert!(r.row().0.advancing.is_none());
    // Only the gate was built, never the rest of the package set.
    assert!(
        !r.builds.iter().any(|b| b.contains("other")),
        "{:?}",
        r.builds
    );
    // Up to date: another poll changes nothing.
    r.wait(120_000);
    assert_eq!(r.pushes.len(), 1);
    assert_eq!(r.ch().age_ms(r.now).map(|a| a / 1000), Some(120));
}

#[test]
fn a_broken_gate_blocks_and_the_fix_advances_later() {
    let mut g = Git::new();
    g.commit("c1", "c0", &[("a", "bad")]);
    g.source = "c1".into();
    g.bad.insert(Git::drv("a", "bad"));
    let mut r = Run::new(channel_config(false, 0), g);
    r.settle();
    assert_eq!(r.git.target.as_deref(), Some("c0"), "the channel stays");
    let b = r.ch().state.blocked.clone().expect("blocked");
    assert_eq!(b.rev, "c1");
    assert_eq!(b.jobs.len(), 1);
    assert_eq!(b.jobs[0].attr, "a");
    assert_eq!(b.jobs[0].drv.as_deref(), Some("/nix/store/bad-a.drv"));
    assert_eq!(b.jobs[0].status, "failed");
    assert!(b.jobs[0].log_tail.contains("failed"));
    assert_eq!(r.ch().state.blocks, 1);
    assert_eq!(r.row().0.blocked, Some(b), "persisted");
    // Polls without a new commit do not test (or count) the same head again.
    let builds = r.builds.len();
    r.wait(300_000);
    assert_eq!((r.builds.len(), r.ch().state.blocks), (builds, 1));
    // The fix arrives from outside; the next poll finds it.
    r.git.commit("c2", "c1", &[("a", "2")]);
    r.git.source = "c2".into();
    r.wait(60_000);
    assert_eq!(r.git.target.as_deref(), Some("c2"));
    assert!(r.ch().state.blocked.is_none());
    assert_eq!((r.ch().state.advances, r.ch().state.blocks), (1, 1));
}

#[test]
fn a_whole_evaluation_failure_and_a_missing_gate_job_block() {
    let mut g = Git::new();
    g.commit("c1", "c0", &[]);
    g.eval_broken.insert("c1".into());
    g.source = "c1".into();
    let mut r = Run::new(channel_config(false, 0), g);
    r.settle();
    let b = r.ch().state.blocked.clone().unwrap();
    assert!(b.error.unwrap().contains("syntax error"));
    assert!(r.builds.is_empty());
    // A commit that removes a gate job.
    r.git.commits.insert(
        "c2".into(),
        (
            Some("c1".into()),
            BTreeMap::from([("tested".into(), "0".into())]),
        ),
    );
    r.git.source = "c2".into();
    r.wait(60_000);
    let b = r.ch().state.blocked.clone().unwrap();
    assert_eq!(b.rev, "c2");
    assert_eq!(
        (b.jobs[0].attr.as_str(), b.jobs[0].status.as_str()),
        ("a", "missing")
    );
    assert_eq!(r.git.target.as_deref(), Some("c0"));
}

#[test]
fn a_force_pushed_source_is_ignored() {
    let mut g = Git::new();
    g.commit("c1", "c0", &[("a", "1")]);
    g.source = "c1".into();
    let mut r = Run::new(channel_config(false, 0), g);
    r.settle();
    assert_eq!(r.git.target.as_deref(), Some("c1"));
    // The source is rewritten: x1 replaces c1.
    r.git.commit("x1", "c0", &[("a", "x")]);
    r.git.source = "x1".into();
    let evals = r.evals.len();
    r.wait(600_000);
    assert_eq!(r.git.target.as_deref(), Some("c1"), "never sideways");
    assert_eq!(
        r.evals.len(),
        evals,
        "a diverged head is not even evaluated"
    );
    assert_eq!(r.ch().diverged.as_deref(), Some("x1"));
    assert_eq!(
        r.events
            .iter()
            .filter(|e| e.contains("does not descend"))
            .count(),
        1,
        "said once: {:?}",
        r.events
    );
    // New work on top of the channel's revision is followed again.
    r.git.commit("c2", "c1", &[("a", "2")]);
    r.git.source = "c2".into();
    r.wait(60_000);
    assert_eq!(r.git.target.as_deref(), Some("c2"));
    assert!(r.ch().diverged.is_none());
}

#[test]
fn a_source_force_pushed_while_testing_is_not_advanced_to() {
    let mut g = Git::new();
    g.commit("c1", "c0", &[("a", "1")]);
    g.commit("x1", "c0", &[("a", "x")]);
    g.source = "c1".into();
    g.force_source = Some("x1".into());
    let mut r = Run::new(channel_config(false, 0), g);
    r.settle();
    assert!(r
        .events
        .iter()
        .any(|e| e.contains("no longer in the source")));
    // c1 was refused at push time; x1, the new head, still descends from the channel's
    // c0 and is a forward move once its own gate passed.
    assert_eq!(
        r.pushes,
        vec![
            (Some("c0".into()), "c1".into()),
            (Some("c0".into()), "x1".into())
        ]
    );
    assert_eq!(r.git.target.as_deref(), Some("x1"));
    assert_eq!(r.ch().history.len(), 1);
}

#[test]
fn look_back_finds_the_newest_passing_commit() {
    let mut g = Git::new();
    g.commit("c1", "c0", &[("b", "1")]);
    g.commit("c2", "c1", &[("tested", "2")]);
    g.commit("c3", "c2", &[("a", "bad")]);
    g.commit("c4", "c3", &[("b", "4")]);
    g.source = "c4".into();
    g.bad.insert(Git::drv("a", "bad"));
    let mut r = Run::new(channel_config(true, 0), g);
    r.settle();
    assert_eq!(
        r.git.target.as_deref(),
        Some("c2"),
        "c4 and c3 fail; c2 passes"
    );
    assert_eq!(r.ch().state.blocked.as_ref().unwrap().rev, "c4");
    assert_eq!(r.ch().state.blocks, 1, "only the head counts as a block");
    assert_eq!(r.evals, ["c4", "c3", "c2"], "c1 is never looked at");
    // Without look-back the channel would have stayed.
    let mut g = Git::new();
    g.commit("c1", "c0", &[("b", "1")]);
    g.commit("c2", "c1", &[("a", "bad")]);
    g.source = "c2".into();
    g.bad.insert(Git::drv("a", "bad"));
    let mut r = Run::new(channel_config(false, 0), g);
    r.settle();
    assert_eq!(r.git.target.as_deref(), Some("c0"));
    assert_eq!(r.evals, ["c2"]);
}

#[test]
fn results_the_queue_already_has_are_reused() {
    let mut g = Git::new();
    g.commit("c1", "c0", &[("a", "1")]);
    g.source = "c1".into();
    let ok = Memo {
        class: OutcomeClass::Success,
        log_tail: String::new(),
        root_drv: None,
        expires_at: None,
    };
    let cfg = channel_config(false, 0);
    let mut r = Run::new(cfg.clone(), g);
    r.core = Core::restore(
        cfg,
        vec![],
        vec![],
        vec![
            (Git::drv("a", "1"), ok.clone()),
            (Git::drv("tested", "0"), ok),
        ],
        vec![],
        r.now,
    );
    r.settle();
    assert!(r.builds.is_empty(), "built {:?}", r.builds);
    assert_eq!(r.git.target.as_deref(), Some("c1"));
}

#[test]
fn a_missing_target_is_created_by_the_first_passing_commit() {
    let mut g = Git::new();
    g.target = None;
    g.commit("c1", "c0", &[("a", "1")]);
    g.source = "c1".into();
    let mut r = Run::new(channel_config(false, 0), g);
    r.settle();
    assert_eq!(r.pushes, vec![(None, "c1".to_string())]);
    assert_eq!(r.git.target.as_deref(), Some("c1"));
}

#[test]
fn a_target_moved_by_someone_else_is_adopted_not_overwritten() {
    let mut g = Git::new();
    g.commit("c1", "c0", &[("a", "1")]);
    g.commit("c2", "c1", &[("b", "2")]);
    g.source = "c2".into();
    g.move_target = Some("c1".into());
    let mut r = Run::new(channel_config(false, 0), g);
    r.settle();
    // The push of c0 -> c2 found the target at c1; c2 descends from it: the re-poll
    // tests c2 again (remembered) and advances with c1 as the old value.
    assert_eq!(
        r.pushes,
        vec![
            (Some("c0".into()), "c2".into()),
            (Some("c1".into()), "c2".into())
        ]
    );
    assert_eq!(r.git.target.as_deref(), Some("c2"));
    assert_eq!(r.builds.iter().filter(|b| b.contains("-a.drv")).count(), 1);
}

#[test]
fn min_interval_holds_an_advance() {
    let mut g = Git::new();
    g.commit("c1", "c0", &[("a", "1")]);
    g.source = "c1".into();
    let mut r = Run::new(channel_config(false, 3_600_000), g);
    r.settle();
    assert_eq!(
        r.git.target.as_deref(),
        Some("c1"),
        "the first advance is not held"
    );
    r.git.commit("c2", "c1", &[("a", "2")]);
    r.git.source = "c2".into();
    r.wait(60_000);
    assert_eq!(r.git.target.as_deref(), Some("c1"), "held");
    assert_eq!(r.ch().hold.as_ref().map(|h| h.0.as_str()), Some("c2"));
    r.wait(3_600_000);
    assert_eq!(r.git.target.as_deref(), Some("c2"));
    let h = &r.ch().history;
    assert!(h[1].at - h[0].at >= 3_600_000);
}

#[test]
fn with_a_cache_every_push_uploads_the_gate_first_even_after_a_crash() {
    let mut g = Git::new();
    g.commit("c1", "c0", &[("a", "1"), ("other", "1")]);
    g.source = "c1".into();
    let mut r = Run::new(channel_config(false, 0), g);
    r.settle();
    assert_eq!(r.uploads, vec![Vec::<String>::new()], "no cache, no upload");

    let mut g = Git::new();
    g.commit("c1", "c0", &[("a", "1"), ("other", "1")]);
    g.source = "c1".into();
    let cfg = CoreConfig {
        cache: Some(crate::core::CacheUpload::Gated),
        ..channel_config(false, 0)
    };
    let mut r = Run::new(cfg, g);
    // Crash right after the advance was decided; the restored core asks again.
    'outer: for _ in 0..100 {
        for cmd in r.core.take_commands() {
            if let Command::AdvanceChannel { .. } = cmd {
                break 'outer;
            }
            r.now += 10;
            if let Some(i) = r.perform(cmd) {
                r.core.handle(i, r.now);
            }
        }
    }
    r.restore();
    r.settle();
    assert_eq!(r.git.target.as_deref(), Some("c1"));
    let gate: Vec<String> = r.row().1[0]
        .gate
        .iter()
        .filter_map(|j| j.drv.clone())
        .collect();
    assert_eq!(gate.len(), 2, "tested and a");
    assert_eq!(
        r.uploads,
        vec![gate],
        "the gate, and only the gate, goes up"
    );
}

#[test]
fn an_advance_in_flight_is_pushed_again_after_a_crash() {
    let mut g = Git::new();
    g.commit("c1", "c0", &[("a", "1")]);
    g.source = "c1".into();
    let mut r = Run::new(channel_config(false, 0), g);
    // Run until the advance is decided, then crash before its result is fed.
    let mut pending = vec![];
    'outer: for _ in 0..100 {
        for cmd in r.core.take_commands() {
            if let Command::AdvanceChannel { .. } = cmd {
                pending.push(cmd);
                break 'outer;
            }
            r.now += 10;
            if let Some(i) = r.perform(cmd) {
                r.core.handle(i, r.now);
            }
        }
    }
    assert_eq!(pending.len(), 1);
    assert!(r.row().0.advancing.is_some(), "persisted before the push");
    // The push itself went through before the crash.
    r.perform(pending.pop().unwrap());
    r.restore();
    r.settle();
    assert_eq!(r.git.target.as_deref(), Some("c1"));
    assert_eq!(r.ch().state.advances, 1);
    assert_eq!(r.ch().history.len(), 1);
    assert_eq!(r.published, vec!["c1".to_string()]);
    assert!(r.ch().state.advancing.is_none());
    // A second restore changes nothing and publishes nothing again.
    r.restore();
    r.settle();
    assert_eq!(r.pushes.len(), 2);
    assert_eq!(r.published.len(), 1);
    assert_eq!(r.ch().state.advances, 1);
}

#[test]
fn a_landing_on_the_source_polls_at_once() {
    let mut g = Git::new();
    g.commit("c1", "c0", &[("a", "1")]);
    let mut r = Run::new(channel_config(false, 0), g);
    r.settle();
    assert_eq!(r.ch().next_poll, T0 + 60_000);
    r.git.source = "c1".into();
    r.now += 1000;
    r.core.gating.source_moved("pkgs", "master", r.now);
    r.core.handle(Input::Tick, r.now);
    r.settle();
    assert_eq!(
        r.git.target.as_deref(),
        Some("c1"),
        "without waiting for the poll interval"
    );
}
