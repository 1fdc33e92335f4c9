//! The channel gating machine: a branch (`target`) that follows another (`source`) but
//! only ever moves forward, to a descendant of its current revision whose gate jobs
//! built.
//!
//! It works through the builds machine (`GateCtx`), so a channel shares the build memo
//! (by drvPath), the in-flight builds and the evaluations with the merge queue: a commit
//! the queue landed is judged from the queue's own results. The shell polls the source (and the target) and reports the
//! git facts (`SourcePoll`); the core decides what to evaluate, build and push. The data
//! types are in `channel_types.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::builds::Builds;
pub use super::channel_types::*;
use super::effects::Effects;
use super::{ChannelInput, Command, CoreConfig, Millis, Record};
use crate::core::change::short;
use crate::core::evaluation::{EvalOutcome, Evaluation, JobResult};

/// Priority class of gate builds (that of a normal change).
const GATE_PRIO: u8 = crate::core::change::Priority::Normal as u8;

/// The channels by name, each with its gate test in progress.
#[derive(Debug, Default)]
pub struct Gating {
    channels: BTreeMap<String, Channel>,
}

/// What gating uses of the others: the builds machine and where commands go.
pub(crate) struct GateCtx<'a> {
    pub(crate) cfg: &'a CoreConfig,
    pub(crate) builds: &'a mut Builds,
    pub(crate) fx: &'a mut Effects,
}

impl Gating {
    /// Every derivation some channel's gate check waits for.
    pub(crate) fn wanted(&self) -> impl Iterator<Item = &String> {
        self.channels
            .values()
            .filter_map(|c| c.test.as_ref())
            .flat_map(|t| t.pending.iter())
    }
}

impl GateCtx<'_> {
    fn request_build(&mut self, drv: &str, prio: u8, now: Millis) -> bool {
        self.builds.request_build(drv, prio, now, self.fx)
    }

    fn request_eval(&mut self, repo: &str, commit: &str) {
        self.builds.request_eval(repo, commit, self.fx);
    }
}

impl Gating {
    /// The configured channels, with what was persisted of them.
    pub(crate) fn restore(cx: &mut GateCtx, stored: Vec<(ChannelState, Vec<Advance>)>) -> Gating {
        let mut gating = Gating::default();
        let configs = cx.cfg.channels.clone();
        let mut stored: BTreeMap<String, (ChannelState, Vec<Advance>)> = stored
            .into_iter()
            .map(|(s, h)| (s.name.clone(), (s, h)))
            .collect();
        for (name, cfg) in configs {
            let (state, history) = match stored.remove(&name) {
                Some((s, h)) => (Some(s), h),
                None => (None, vec![]),
            };
            let mut ch = Channel::new(&name, cfg, state);
            ch.history = history;
            // An advance caught in flight is pushed again (idempotent); artifacts that
            // were not published yet are published again.
            if let Some(a) = ch.state.advancing.clone() {
                cx.fx.push(advance_command(cx.cfg, &name, a));
            } else if ch.config.artifacts
                && ch.state.rev.is_some()
                && ch.state.published != ch.state.rev
            {
                if let Some(cmd) = republish_current(&name, &ch) {
                    cx.fx.push(cmd);
                }
            }
            gating.channels.insert(name, ch);
        }
        gating
    }

    pub fn all(&self) -> impl Iterator<Item = (&String, &Channel)> {
        self.channels.iter()
    }

    pub fn get(&self, name: &str) -> Option<&Channel> {
        self.channels.get(name)
    }

    pub(crate) fn handle(&mut self, cx: &mut GateCtx, input: ChannelInput, now: Millis) {
        match input {
            ChannelInput::SourcePolled { channel, result } => {
                self.on_source_polled(cx, &channel, result, now)
            }
            ChannelInput::Advanced {
                channel,
                new,
                result,
            } => self.on_channel_advanced(cx, &channel, &new, result, now),
            ChannelInput::ArtifactsPublished {
                channel,
                rev,
                result,
            } => self.on_artifacts_published(cx, &channel, &rev, result, now),
        }
    }

    /// Polls due channels and performs advances whose `min_interval` elapsed.
    pub(crate) fn tick(&mut self, cx: &mut GateCtx, now: Millis) {
        let names: Vec<String> = self.channels.keys().cloned().collect();
        for name in names {
            let ch = self.channels.get_mut(&name).expect("known");
            if !ch.polling && ch.next_poll <= now {
                ch.polling = true;
                ch.next_poll = now + ch.config.poll_interval_ms.max(1);
                cx.fx.push(Command::PollSource {
                    channel: name.clone(),
                });
            }
            let ch = &self.channels[&name];
            if let Some((commit, gate, due)) = ch.hold.clone() {
                if due <= now && ch.state.advancing.is_none() {
                    self.channels.get_mut(&name).expect("known").hold = None;
                    self.begin_advance(cx, &name, commit, gate, now);
                }
            }
        }
    }

    pub(crate) fn next_wakeup(&self) -> Option<Millis> {
        self.channels
            .values()
            .flat_map(|c| {
                let poll = (!c.polling).then_some(c.next_poll);
                poll.into_iter().chain(c.hold.as_ref().map(|h| h.2))
            })
            .min()
    }

    /// The queue landed on `branch`: poll the channels following it now.
    pub(crate) fn source_moved(&mut self, repo: &str, branch: &str, now: Millis) {
        for ch in self.channels.values_mut() {
            if ch.config.repo == repo && ch.config.source == branch {
                ch.next_poll = ch.next_poll.min(now);
            }
        }
    }

    fn save_channel(&mut self, cx: &mut GateCtx, name: &str) {
        let s = self.channels[name].state.clone();
        cx.fx.push(Command::Record(Record::Channel(s)));
    }

    fn channel_event(&mut self, cx: &mut GateCtx, name: &str, now: Millis, text: String) {
        let repo = self.channels[name].config.repo.clone();
        cx.fx.event(now, &repo, format!("channel {name}: {text}"));
    }

    fn on_source_polled(
        &mut self,
        cx: &mut GateCtx,
        name: &str,
        result: Result<SourcePoll, String>,
        now: Millis,
    ) {
        let Some(ch) = self.channels.get_mut(name) else {
            return;
        };
        ch.polling = false;
        let p = match result {
            Ok(p) => p,
            Err(msg) => {
                if ch.last_error.as_deref() != Some(&msg) {
                    ch.last_error = Some(msg.clone());
                    self.channel_event(cx, name, now, format!("polling failed: {msg}"));
                }
                return;
            }
        };
        ch.last_error = None;
        // The remote is the truth about the target, except while our own push is out.
        if ch.state.advancing.is_none() && ch.state.rev != p.target {
            let old = std::mem::replace(&mut ch.state.rev, p.target.clone());
            ch.state.rev_time = p.target_time;
            let text = match (&old, &p.target) {
                (None, Some(t)) => format!("target is at {}", short(t)),
                (Some(o), Some(t)) => format!(
                    "target moved outside mergequeue from {} to {}",
                    short(o),
                    short(t)
                ),
                (_, None) => "target branch does not exist yet".into(),
            };
            self.save_channel(cx, name);
            self.channel_event(cx, name, now, text);
        }
        let ch = self.channels.get_mut(name).expect("known");
        if !p.descends {
            if ch.diverged.as_deref() != Some(&p.head) {
                ch.diverged = Some(p.head.clone());
                let rev = ch.state.rev.clone().unwrap_or_default();
                self.channel_event(
 cx,
                    name,
                    now,
                    format!(
                        "source head {} does not descend from the channel's {} (history rewritten?); ignored",
                        short(&p.head),
                        short(&rev)
                    ),
                );
            }
        } else {
            ch.diverged = None;
        }
        self.channels.get_mut(name).expect("known").poll = Some(p);
        self.consider(cx, name, now);
    }

    /// Starts the next gate test when the channel is idle and behind its source.
    fn consider(&mut self, cx: &mut GateCtx, name: &str, now: Millis) {
        let ch = &self.channels[name];
        if ch.state.advancing.is_some() || ch.test.is_some() || ch.hold.is_some() {
            return;
        }
        let Some(p) = ch.poll.clone().filter(|p| p.descends) else {
            return;
        };
        if ch.state.rev.as_deref() == Some(&p.head) {
            if ch.state.blocked.is_some() {
                self.channels.get_mut(name).expect("known").state.blocked = None;
                self.save_channel(cx, name);
            }
            return;
        }
        if ch.state.blocked.as_ref().is_some_and(|b| b.rev == p.head) {
            return; // judged already; wait for the next commit
        }
        let older = if ch.config.look_back {
            p.between.clone()
        } else {
            vec![]
        };
        self.start_gate(cx, name, p.head, true, older, now);
    }

    fn start_gate(
        &mut self,
        cx: &mut GateCtx,
        name: &str,
        commit: String,
        head: bool,
        older: Vec<String>,
        now: Millis,
    ) {
        let repo = self.channels[name].config.repo.clone();
        if self.channels[name]
            .test
            .as_ref()
            .is_some_and(|t| !t.pending.is_empty())
        {
            cx.builds.released = true; // the older commit's gate builds may be wanted by no one
        }
        self.channels.get_mut(name).expect("known").test = Some(GateTest {
            commit: commit.clone(),
            head,
            phase: TestPhase::Evaluating,
            jobs: vec![],
            pending: BTreeSet::new(),
            started_at: now,
            older,
        });
        let what = if head { "source head" } else { "older commit" };
        self.channel_event(
            cx,
            name,
            now,
            format!("checking the gate at {what} {}", short(&commit)),
        );
        match cx.builds.evals.get(&commit).cloned() {
            Some(eval) => self.gate_evaluated(cx, name, eval, now),
            None => cx.request_eval(&repo, &commit),
        }
    }

    /// Hook from `on_evaluated`.
    pub(crate) fn evaluated(&mut self, cx: &mut GateCtx, eval: &Arc<Evaluation>, now: Millis) {
        let waiting: Vec<String> = self
            .channels
            .iter()
            .filter(|(_, c)| {
                c.test
                    .as_ref()
                    .is_some_and(|t| t.phase == TestPhase::Evaluating && t.commit == eval.commit)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in waiting {
            self.gate_evaluated(cx, &name, eval.clone(), now);
        }
    }

    fn gate_evaluated(&mut self, cx: &mut GateCtx, name: &str, eval: Arc<Evaluation>, now: Millis) {
        if let EvalOutcome::Failed(msg) = &eval.outcome {
            self.gate_failed(cx, name, Some(msg.clone()), vec![], now);
            return;
        }
        let gate = self.channels[name].config.gate.clone();
        let mut jobs = vec![];
        let mut blockers = vec![];
        for attr in &gate {
            let found: Vec<_> = eval.by_attr(attr).collect();
            if found.is_empty() {
                blockers.push(GateJob {
                    attr: attr.clone(),
                    system: String::new(),
                    drv: None,
                    outputs: vec![],
                    status: "missing".into(),
                    log_tail: format!("no job {attr} in the evaluation"),
                });
            }
            for (k, r) in found {
                let mut j = GateJob {
                    attr: k.attr.clone(),
                    system: k.system.clone(),
                    drv: None,
                    outputs: vec![],
                    status: "pending".into(),
                    log_tail: String::new(),
                };
                match r {
                    JobResult::Ok(job) => {
                        j.drv = Some(job.drv_path.clone());
                        j.outputs = job.outputs.clone();
                        jobs.push(j);
                    }
                    JobResult::Error(m) => {
                        j.status = "eval-error".into();
                        j.log_tail = m.clone();
                        blockers.push(j);
                    }
                }
            }
        }
        if !blockers.is_empty() {
            self.gate_failed(cx, name, None, blockers, now);
            return;
        }
        let mut pending = BTreeSet::new();
        // A new source head gets one more build of every gate job remembered as failing
        // (perhaps flaky, or broken by what the builder had then) instead of being judged
        // by the memory until it expires; `consider` starts a test once per head.
        let head = self.channels[name].test.as_ref().is_some_and(|t| t.head);
        for j in &jobs {
            let drv = j.drv.as_deref().expect("evaluated");
            if head {
                cx.builds.forget_failure(drv, now, cx.fx);
            }
            if cx.builds.known(drv, now).is_none() {
                pending.insert(drv.to_string());
                cx.request_build(drv, GATE_PRIO, now);
            }
        }
        let n = jobs.len();
        let to_build = pending.len();
        let test = self
            .channels
            .get_mut(name)
            .expect("known")
            .test
            .as_mut()
            .expect("testing");
        test.jobs = jobs;
        test.pending = pending;
        test.phase = TestPhase::Building;
        self.channel_event(
            cx,
            name,
            now,
            format!(
                "{n} gate jobs; {to_build} to build, {} remembered",
                n - to_build
            ),
        );
        if to_build == 0 {
            self.judge_gate(cx, name, now);
        }
    }

    /// Hook from `on_built`, after the memo was updated.
    pub(crate) fn built(&mut self, cx: &mut GateCtx, drv: &str, now: Millis) {
        let waiting: Vec<String> = self
            .channels
            .iter()
            .filter(|(_, c)| c.test.as_ref().is_some_and(|t| t.pending.contains(drv)))
            .map(|(n, _)| n.clone())
            .collect();
        for name in waiting {
            let t = self
                .channels
                .get_mut(&name)
                .expect("known")
                .test
                .as_mut()
                .expect("testing");
            t.pending.remove(drv);
            if t.pending.is_empty() {
                self.judge_gate(cx, &name, now);
            }
        }
    }

    /// Hook from the dispatcher: `drv` could not be built on any builder. The gate
    /// check is dropped without a verdict; the next poll starts it again.
    pub(crate) fn build_abandoned(&mut self, cx: &mut GateCtx, drv: &str, err: &str, now: Millis) {
        let waiting: Vec<String> = self
            .channels
            .iter()
            .filter(|(_, c)| c.test.as_ref().is_some_and(|t| t.pending.contains(drv)))
            .map(|(n, _)| n.clone())
            .collect();
        for name in waiting {
            let test = self.channels.get_mut(&name).expect("known").test.take();
            cx.builds.released = true;
            let commit = test.map(|t| t.commit).unwrap_or_default();
            self.channel_event(
                cx,
                &name,
                now,
                format!(
                    "gate check at {} dropped: {drv} could not be built on any builder: {err}",
                    short(&commit)
                ),
            );
        }
    }

    /// Every gate job must build; unlike a candidate's verdict, failures that already
    /// exist elsewhere are no excuse.
    fn judge_gate(&mut self, cx: &mut GateCtx, name: &str, now: Millis) {
        let mut jobs = self.channels[name]
            .test
            .as_ref()
            .expect("testing")
            .jobs
            .clone();
        let mut pending = BTreeSet::new();
        for j in &mut jobs {
            let drv = j.drv.clone().expect("evaluated");
            match cx.builds.known(&drv, now).cloned() {
                Some(m) => {
                    j.status = m.class.as_str().to_string();
                    j.log_tail = m.log_tail.clone();
                }
                None => {
                    // Expired while we waited: build again.
                    pending.insert(drv.clone());
                    cx.request_build(&drv, GATE_PRIO, now);
                }
            }
        }
        let test = self
            .channels
            .get_mut(name)
            .expect("known")
            .test
            .as_mut()
            .expect("testing");
        test.jobs = jobs.clone();
        if !pending.is_empty() {
            test.pending = pending;
            return;
        }
        let failing: Vec<GateJob> = jobs.iter().filter(|j| !j.ok()).cloned().collect();
        if !failing.is_empty() {
            self.gate_failed(cx, name, None, failing, now);
            return;
        }
        let test = self
            .channels
            .get_mut(name)
            .expect("known")
            .test
            .take()
            .expect("testing");
        self.channel_event(
            cx,
            name,
            now,
            format!("gate passed at {}", short(&test.commit)),
        );
        let ch = self.channels.get_mut(name).expect("known");
        if test.head && ch.state.blocked.is_some() {
            ch.state.blocked = None;
            self.save_channel(cx, name);
        }
        let ch = &self.channels[name];
        let due = ch
            .state
            .advanced_at
            .map_or(now, |t| t + ch.config.min_interval_ms);
        if due > now {
            self.channels.get_mut(name).expect("known").hold =
                Some((test.commit.clone(), jobs, due));
            self.channel_event(
                cx,
                name,
                now,
                format!(
                    "waiting {} s (min_interval_secs) before advancing to {}",
                    (due - now + 999) / 1000,
                    short(&test.commit)
                ),
            );
            return;
        }
        self.begin_advance(cx, name, test.commit, jobs, now);
    }

    fn gate_failed(
        &mut self,
        cx: &mut GateCtx,
        name: &str,
        error: Option<String>,
        jobs: Vec<GateJob>,
        now: Millis,
    ) {
        let test = self
            .channels
            .get_mut(name)
            .expect("known")
            .test
            .take()
            .expect("testing");
        let what = match &error {
            Some(e) => format!(
                "the jobset fails to evaluate: {}",
                e.lines().next().unwrap_or("")
            ),
            None => jobs
                .iter()
                .map(|j| format!("{} ({}) {}", j.attr, j.system, j.status))
                .collect::<Vec<_>>()
                .join(", "),
        };
        self.channel_event(
            cx,
            name,
            now,
            format!("gate failed at {}: {what}", short(&test.commit)),
        );
        if test.head {
            let ch = self.channels.get_mut(name).expect("known");
            ch.state.blocked = Some(Blocked {
                rev: test.commit.clone(),
                at: now,
                error,
                jobs,
            });
            ch.state.blocks += 1;
            self.save_channel(cx, name);
        }
        // Look back: the newest passing commit between the channel and the head.
        let mut older = test.older;
        if !older.is_empty() {
            let next = older.remove(0);
            self.start_gate(cx, name, next, false, older, now);
        } else {
            self.consider(cx, name, now);
        }
    }

    fn begin_advance(
        &mut self,
        cx: &mut GateCtx,
        name: &str,
        new: String,
        gate: Vec<GateJob>,
        now: Millis,
    ) {
        let ch = self.channels.get_mut(name).expect("known");
        let adv = Advancing {
            old: ch.state.rev.clone(),
            new,
            gate,
        };
        ch.state.advancing = Some(adv.clone());
        self.save_channel(cx, name);
        self.channel_event(
            cx,
            name,
            now,
            format!(
                "advancing {} from {} to {}",
                self.channels[name].config.target,
                adv.old.as_deref().map_or("nothing", short),
                short(&adv.new)
            ),
        );
        cx.fx.push(advance_command(cx.cfg, name, adv));
    }

    fn on_channel_advanced(
        &mut self,
        cx: &mut GateCtx,
        name: &str,
        new: &str,
        result: AdvanceResult,
        now: Millis,
    ) {
        let Some(ch) = self.channels.get_mut(name) else {
            return;
        };
        let Some(adv) = ch.state.advancing.clone().filter(|a| a.new == new) else {
            return; // stale or duplicate
        };
        match result {
            AdvanceResult::Advanced => {
                let advance = Advance {
                    at: now,
                    from: adv.old.clone(),
                    rev: adv.new.clone(),
                    gate: adv.gate.clone(),
                };
                ch.state.advancing = None;
                ch.state.rev = Some(adv.new.clone());
                ch.state.advanced_at = Some(now);
                ch.state.rev_time = Some(now);
                ch.state.advances += 1;
                ch.history.push(advance.clone());
                if ch.history.len() > HISTORY_KEEP {
                    ch.history.remove(0);
                }
                // Poll again: the facts of the last poll were relative to the old revision.
                ch.poll = None;
                ch.next_poll = now;
                let (artifacts, target) = (ch.config.artifacts, ch.config.target.clone());
                cx.fx.push(Command::Record(Record::ChannelAdvance {
                    channel: name.to_string(),
                    advance: advance.clone(),
                }));
                self.save_channel(cx, name);
                self.channel_event(
                    cx,
                    name,
                    now,
                    format!("advanced {target} to {}", short(new)),
                );
                if artifacts {
                    cx.fx.push(Command::PublishArtifacts {
                        channel: name.to_string(),
                        rev: advance.rev,
                        at: advance.at,
                        gate: advance.gate,
                    });
                }
            }
            AdvanceResult::Moved { tip } => {
                ch.state.advancing = None;
                ch.state.rev = tip.clone();
                ch.state.rev_time = None;
                ch.poll = None;
                ch.next_poll = now;
                self.save_channel(cx, name);
                self.channel_event(
                    cx,
                    name,
                    now,
                    format!(
                        "target moved outside mergequeue to {}; not advancing to {}",
                        tip.as_deref().map_or("nothing", short),
                        short(new)
                    ),
                );
            }
            AdvanceResult::NotOnSource { head } => {
                ch.state.advancing = None;
                ch.poll = None;
                ch.next_poll = now;
                self.save_channel(cx, name);
                self.channel_event(
                    cx,
                    name,
                    now,
                    format!(
                        "{} is no longer in the source (now at {}); not advancing",
                        short(new),
                        short(&head)
                    ),
                );
            }
            AdvanceResult::Failed(msg) => {
                self.channel_event(cx, name, now, format!("advance failed, retrying: {msg}"));
                let retry = cx.cfg.retry_delay_ms;
                cx.fx.later(now + retry, advance_command(cx.cfg, name, adv));
            }
        }
    }

    fn on_artifacts_published(
        &mut self,
        cx: &mut GateCtx,
        name: &str,
        rev: &str,
        result: Result<(), String>,
        now: Millis,
    ) {
        let Some(ch) = self.channels.get(name) else {
            return;
        };
        match result {
            Ok(()) if ch.state.rev.as_deref() == Some(rev) => {
                self.channels.get_mut(name).expect("known").state.published = Some(rev.to_string());
                self.save_channel(cx, name);
            }
            Ok(()) => {
                // An older revision's artifacts finished after the channel moved on: they
                // may have taken `latest` back. Publish the current revision again, after
                // this one (idempotent), so the newest is what users see.
                if let Some(cmd) = republish_current(name, ch) {
                    cx.fx.push(cmd);
                }
            }
            Err(msg) => {
                // Only the current revision's artifacts are worth publishing.
                if ch.state.rev.as_deref() != Some(rev) {
                    return;
                }
                let again = republish_current(name, ch);
                self.channel_event(
                    cx,
                    name,
                    now,
                    format!("publishing artifacts failed, retrying: {msg}"),
                );
                if let Some(cmd) = again {
                    cx.fx.later(now + cx.cfg.retry_delay_ms, cmd);
                }
            }
        }
    }
}

/// Publishing the artifacts of the channel's current revision (again), when its last
/// advance is to that revision.
fn republish_current(name: &str, ch: &Channel) -> Option<Command> {
    let a = ch
        .history
        .last()
        .filter(|a| Some(&a.rev) == ch.state.rev.as_ref())?;
    Some(Command::PublishArtifacts {
        channel: name.to_string(),
        rev: a.rev.clone(),
        at: a.at,
        gate: a.gate.clone(),
    })
}

/// The command that moves a channel to `adv.new`, uploading the gate's closures to the
/// binary cache first when there is one.
fn advance_command(cfg: &CoreConfig, name: &str, adv: Advancing) -> Command {
    let upload = match cfg.cache {
        Some(_) => adv.gate.iter().filter_map(|j| j.drv.clone()).collect(),
        None => vec![],
    };
    Command::AdvanceChannel {
        channel: name.to_string(),
        old: adv.old,
        new: adv.new,
        upload,
    }
}
