//! Fast deterministic tests of the core against a small model "world": a package set
//! whose changes alter given jobs' derivations, some of which fail to build, conflict,
//! or break evaluation. A driver loop answers the core's commands from the model and
//! applies its `Record`s to an in-memory database, so `Core::restore` can be tested too.

use super::{BuildInput, CandidateInput, QueueInput};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use super::*;
use crate::core::change::{Change, ChangeId, ChangeState, Priority};
use crate::core::evaluation::{EvalOutcome, Evaluation, Job, JobKey, JobResult};
use crate::core::outcome::{BuildReport, OutcomeClass};

const SYS: &str = "x86_64-linux";
const T0: Millis = 1_700_000_000_000;
const REPO: &str = "nixpkgs";
const BRANCH: &str = "master";

// ---------------------------------------------------------------------------------------
// The model world
// ---------------------------------------------------------------------------------------

/// What one change head does to the package set.
#[derive(Debug, Clone, Default)]
struct Patch {
    /// (attr, tag): the attribute's derivation gets `tag` appended to its name (a new
    /// attribute is added when it is not in the base).
    alters: Vec<(String, String)>,
    /// Attributes that fail to evaluate once this patch is applied.
    eval_errors: Vec<String>,
    /// The whole jobset fails to evaluate.
    breaks_eval: bool,
    /// Does not merge onto the target.
    conflict: bool,
    /// Attributes this patch removes.
    removes: Vec<String>,
}

impl Patch {
    fn alter(attr: &str, tag: &str) -> Patch {
        Patch::default().and(attr, tag)
    }
    fn and(mut self, attr: &str, tag: &str) -> Patch {
        self.alters.push((attr.into(), tag.into()));
        self
    }
    fn remove(mut self, attr: &str) -> Patch {
        self.removes.push(attr.into());
        self
    }
    fn eval_error(mut self, attr: &str) -> Patch {
        self.eval_errors.push(attr.into());
        self
    }
    fn breaks_eval(mut self) -> Patch {
        self.breaks_eval = true;
        self
    }
    fn conflict(mut self) -> Patch {
        self.conflict = true;
        self
    }
}

#[derive(Debug, Default)]
struct World {
    base_attrs: Vec<String>,
    /// Patches by head commit.
    patches: BTreeMap<String, Patch>,
    /// git ref -> head commit (a force-push changes it).
    refs: BTreeMap<String, String>,
    /// Commit -> the heads applied on top of the initial package set, in order.
    commits: BTreeMap<String, Vec<String>>,
    merges: BTreeMap<(String, String), String>,
    tip: String,
    /// A derivation carrying one of these tags fails to build.
    bad_tags: BTreeSet<String>,
    /// Every derivation of these attributes fails (failures already on the base).
    broken_attrs: BTreeSet<String>,
    /// Infrastructure failures still to report per derivation.
    infra: BTreeMap<String, u32>,
    /// Spurious (flaky) build failures still to report per derivation.
    flaky: BTreeMap<String, u32>,
    /// On the next `Land`, push this head onto the target first (someone else pushed).
    move_on_land: Option<String>,
    builds: BTreeMap<String, u32>,
    lands: u32,
}

fn drv_name(attr: &str, tags: &[String]) -> String {
    let h = if tags.is_empty() {
        "base".to_string()
    } else {
        tags.join("_")
    };
    format!("/nix/store/{h}-{attr}.drv")
}

/// (attr, tags) of a model derivation path.
fn parse_drv(drv: &str) -> (String, Vec<String>) {
    let name = drv
        .strip_prefix("/nix/store/")
        .and_then(|s| s.strip_suffix(".drv"))
        .expect("model drv");
    let (h, attr) = name.split_once('-').expect("model drv");
    let tags = if h == "base" {
        vec![]
    } else {
        h.split('_').map(str::to_string).collect()
    };
    (attr.to_string(), tags)
}

fn key(attr: &str) -> JobKey {
    JobKey {
        attr: attr.into(),
        system: SYS.into(),
    }
}

impl World {
    fn new(n: usize) -> World {
        let mut w = World {
            base_attrs: (0..n).map(|i| format!("pkg{i}")).collect(),
            tip: "c0".into(),
            ..Default::default()
        };
        w.commits.insert("c0".into(), vec![]);
        w
    }

    fn patch(&mut self, head: &str, p: Patch) {
        self.patches.insert(head.into(), p);
    }

    fn merge(&mut self, parent: &str, head: &str) -> String {
        let k = (parent.to_string(), head.to_string());
        if let Some(c) = self.merges.get(&k) {
            return c.clone();
        }
        let id = format!("m{}", self.merges.len() + 1);
        let mut content = self.commits[parent].clone();
        content.push(head.to_string());
        self.commits.insert(id.clone(), content);
        self.merges.insert(k, id.clone());
        id
    }

    /// Merges heads in order; the first conflicting one ends the chain.
    fn merge_all(&mut self, base: &str, heads: &[String]) -> Result<String, String> {
        let mut cur = base.to_string();
        for h in heads {
            if self.patches[h].conflict {
                return Err(format!(
                    "CONFLICT (content): merge conflict in pkgs/{h}.nix"
                ));
            }
            cur = self.merge(&cur, h);
        }
        Ok(cur)
    }

    fn eval(&self, commit: &str) -> Evaluation {
        let content = &self.commits[commit];
        let mut tags: BTreeMap<String, Vec<String>> = self
            .base_attrs
            .iter()
            .map(|a| (a.clone(), vec![]))
            .collect();
        let mut errors = BTreeSet::new();
        for h in content {
            let p = &self.patches[h];
            if p.breaks_eval {
                return Evaluation::new(
                    commit.into(),
                    EvalOutcome::Failed(format!("error: syntax error, unexpected '}}' (from {h})")),
                    vec![],
                );
            }
            for a in &p.removes {
                tags.remove(a);
            }
            for (a, t) in &p.alters {
                tags.entry(a.clone()).or_default().push(t.clone());
            }
            errors.extend(p.eval_errors.iter().cloned());
        }
        let jobs = tags
            .into_iter()
            .map(|(attr, tags)| {
                let r = if errors.contains(&attr) {
                    JobResult::Error(format!("error: attribute 'src' missing in {attr}"))
                } else {
                    let drv = drv_name(&attr, &tags);
                    let out = drv.trim_end_matches(".drv").to_string();
                    JobResult::Ok(Job {
                        drv_path: drv,
                        outputs: vec![("out".into(), out)],
                        maintainers: vec![],
                    })
                };
                (key(&attr), r)
            })
            .collect();
        Evaluation::new(commit.into(), EvalOutcome::Ok, jobs)
    }

    fn fails(&self, drv: &str) -> bool {
        let (attr, tags) = parse_drv(drv);
        self.broken_attrs.contains(&attr) || tags.iter().any(|t| self.bad_tags.contains(t))
    }

    fn build(&mut self, drv: &str, builder: &str) -> BuildReport {
        *self.builds.entry(drv.into()).or_default() += 1;
        let report = |class, log_tail: String| BuildReport {
            drv_path: drv.into(),
            class,
            log_tail,
            root_drv: None,
            builder: builder.into(),
            duration_ms: 1000,
            log_path: None,
        };
        if let Some(n) = self.infra.get_mut(drv).filter(|n| **n > 0) {
            *n -= 1;
            return report(
                OutcomeClass::Infrastructure,
                "error: unexpected end-of-file from the daemon".into(),
            );
        }
        if let Some(n) = self.flaky.get_mut(drv).filter(|n| **n > 0) {
            *n -= 1;
            return report(
                OutcomeClass::Failed,
                "error: builder failed with exit code 1\n> test_timeout ... FAILED".into(),
            );
        }
        if self.fails(drv) {
            report(
                OutcomeClass::Failed,
                format!("error: builder for '{drv}' failed with exit code 2\n> make: *** [Makefile:12: all] Error 2"),
            )
        } else {
            report(OutcomeClass::Success, String::new())
        }
    }

    /// Whether `new` is green relative to `old`: it evaluates, nothing that evaluated on
    /// `old` fails to, and no job whose derivation changed fails unless it failed on
    /// `old` too.
    fn green(&self, old: &str, new: &str) -> bool {
        let (o, n) = (self.eval(old), self.eval(new));
        if n.failed() {
            return false;
        }
        n.jobs.iter().all(|(k, r)| {
            let before = if o.failed() { None } else { o.get(k) };
            match (r, before) {
                (JobResult::Error(_), Some(JobResult::Ok(_))) => false,
                (JobResult::Error(_), _) => true,
                (JobResult::Ok(j), Some(JobResult::Ok(b))) => {
                    j.drv_path == b.drv_path || !self.fails(&j.drv_path) || self.fails(&b.drv_path)
                }
                (JobResult::Ok(j), _) => !self.fails(&j.drv_path),
            }
        })
    }

    fn tip_heads(&self) -> &[String] {
        &self.commits[&self.tip]
    }
}

// ---------------------------------------------------------------------------------------
// The in-memory database and the driver loop
// ---------------------------------------------------------------------------------------

struct Sim {
    cfg: CoreConfig,
    core: Core,
    world: World,
    db: Snapshot,
    /// The events recorded, in order.
    events: Vec<String>,
    queue: VecDeque<Command>,
    now: Millis,
    /// Every effect command, with the time it was issued.
    issued: Vec<(Millis, Command)>,
    steps: usize,
    /// Deliver every result twice (at-least-once delivery).
    duplicate: bool,
    /// What the core told the forge, in order.
    forge: Vec<crate::core::forge::ForgeCommand>,
}

fn config(batch_max: usize, delay: Millis) -> CoreConfig {
    config_required(batch_max, delay, &[])
}

fn config_required(batch_max: usize, delay: Millis, required: &[&str]) -> CoreConfig {
    let lane = LaneConfig {
        batch_max,
        required: required.iter().map(|r| r.to_string()).collect(),
        batch_delay_ms: delay,
        build_priority: None,
        breakage: Default::default(),
        mass_rebuild_threshold: None,
        window: 1,
        window_floor: 1,
    };
    CoreConfig {
        repos: BTreeMap::from([(
            REPO.to_string(),
            RepoConfig {
                lanes: BTreeMap::from([(BRANCH.to_string(), lane)]),
            },
        )]),
        failure_ttl_ms: 86_400_000,
        retry_delay_ms: 5_000,
        builders: vec![crate::core::scheduler::BuilderSpec {
            id: "local".into(),
            systems: ["x86_64-linux".to_string()].into(),
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
        channels: BTreeMap::new(),
        keep_final: CoreConfig::default().keep_final,
        cache: None,
        verify: None,
        build_deadline_ms: 48 * 3_600_000,
        eval_deadline_ms: 4 * 3_600_000,
    }
}

impl Sim {
    fn new(cfg: CoreConfig, world: World) -> Sim {
        Sim {
            core: Core::new(cfg.clone()),
            cfg,
            world,
            db: Snapshot::default(),
            events: vec![],
            queue: VecDeque::new(),
            now: T0,
            issued: vec![],
            steps: 0,
            duplicate: false,
            forge: vec![],
        }
    }

    /// Submits a change whose head is `head` (defined in the world with `patch`).
    fn submit(&mut self, head: &str, patch: Patch, priority: Priority) -> ChangeId {
        self.world.patch(head, patch);
        let git_ref = format!("refs/heads/pr-{head}");
        self.world.refs.insert(git_ref.clone(), head.into());
        let c = self
            .core
            .submit(
                Submission {
                    repo: REPO.into(),
                    target: BRANCH.into(),
                    git_ref,
                    head: head.into(),
                    title: format!("change {head}"),
                    author: "alice".into(),
                    priority,
                    pr: None,
                    approver: None,
                },
                self.now,
            )
            .expect("accepted");
        self.pump();
        c.id
    }

    fn cancel(&mut self, id: ChangeId) -> Result<Change, Refusal> {
        let r = self.core.cancel(id, self.now);
        self.pump();
        r
    }

    fn pump(&mut self) {
        for cmd in self.core.take_commands() {
            match cmd {
                Command::Record(r) => self.apply(r),
                // No binary cache in this world: the request is only noted.
                c @ (Command::Upload { .. }
                | Command::PublishStage { .. }
                | Command::CancelBuild { .. }
                | Command::Verify { .. }) => self.issued.push((self.now, c)),
                other @ (Command::Prepare { .. }
                | Command::PrepareGroup { .. }
                | Command::Evaluate { .. }
                | Command::Inspect { .. }
                | Command::Build { .. }
                | Command::QueryReferrers { .. }
                | Command::ProbeBuilder { .. }
                | Command::Probe { .. }
                | Command::Land { .. }
                | Command::PollTarget { .. }
                | Command::PollSource { .. }
                | Command::AdvanceChannel { .. }
                | Command::PublishArtifacts { .. }) => {
                    self.issued.push((self.now, other.clone()));
                    self.queue.push_back(other);
                }
            }
        }
    }

    fn apply(&mut self, r: Record) {
        match &r {
            Record::Memo { drv, memo } => {
                assert!(memo.class.is_verdict(), "remembered {memo:?} for {drv}")
            }
            Record::Event { text, .. } => self.events.push(text.clone()),
            Record::Forge { command, .. } => self.forge.push(command.clone()),
            _ => {}
        }
        self.db.apply(&r);
    }

    /// Performs one command (or fires the next timer). False when nothing is left.
    fn step(&mut self) -> bool {
        self.steps += 1;
        assert!(self.steps < 20_000, "the loop does not converge");
        self.now += 10;
        let Some(cmd) = self.queue.pop_front() else {
            let Some(t) = self.core.next_wakeup() else {
                return false;
            };
            self.now = self.now.max(t);
            self.core.handle(Input::Tick, self.now);
            self.pump();
            return true;
        };
        if let Some(input) = self.perform(cmd) {
            if self.duplicate {
                self.core.handle(input.clone(), self.now);
                self.pump();
            }
            self.core.handle(input, self.now);
            self.pump();
        }
        true
    }

    fn run(&mut self) {
        while self.step() {}
        self.check_db();
    }

    fn run_until(&mut self, mut done: impl FnMut(&Sim) -> bool) {
        while !done(self) {
            assert!(self.step(), "ran out of work before the condition held");
        }
    }

    /// A crash: in-flight commands are lost; the core is rebuilt from the database.
    fn crash_and_restore(&mut self) {
        self.queue.clear();
        self.core = self.db.restore(self.cfg.clone(), self.now);
        self.pump();
    }

    fn perform(&mut self, cmd: Command) -> Option<Input> {
        let w = &mut self.world;
        Some(match cmd {
            Command::Record(_) => unreachable!("records are applied in pump"),
            Command::Upload { .. }
            | Command::PublishStage { .. }
            | Command::CancelBuild { .. }
            | Command::Verify { .. } => return None,
            Command::Prepare {
                cand,
                changes,
                onto,
                ..
            } => {
                let base = onto.unwrap_or_else(|| w.tip.clone());
                let mut cur = base.clone();
                let (mut heads, mut merged, mut conflicts) = (vec![], vec![], vec![]);
                for (id, git_ref) in changes {
                    let head = w.refs[&git_ref].clone();
                    heads.push((id, head.clone()));
                    match w.merge_all(&cur, std::slice::from_ref(&head)) {
                        Ok(c) => {
                            cur = c.clone();
                            merged.push((id, c));
                        }
                        Err(why) => conflicts.push((id, why)),
                    }
                }
                Input::Candidate(CandidateInput::Prepared {
                    cand,
                    result: Ok(Prepared {
                        base,
                        heads,
                        merged,
                        conflicts,
                        vanished: vec![],
                    }),
                })
            }
            Command::PrepareGroup { cand, group, .. } => {
                Input::Candidate(CandidateInput::Prepared {
                    cand,
                    result: Ok(Prepared {
                        base: group.base_sha,
                        heads: vec![],
                        merged: group.chain,
                        conflicts: vec![],
                        vanished: vec![],
                    }),
                })
            }
            Command::Evaluate { commit, .. } => Input::Build(BuildInput::Evaluated {
                eval: Arc::new(w.eval(&commit)),
            }),
            Command::Build { drv, builder, .. } => {
                Input::Build(BuildInput::Built(w.build(&drv, &builder)))
            }
            Command::Inspect { drvs } => Input::Build(BuildInput::Inspected {
                infos: drvs
                    .into_iter()
                    .map(|d| {
                        let info = crate::core::scheduler::StepInfo {
                            system: "x86_64-linux".into(),
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
                result: Ok(crate::core::BuilderIdentity {
                    implementation: "Nix".into(),
                    version: "2.8.0".into(),
                }),
            }),
            Command::Probe {
                probe,
                base,
                heads,
                attrs,
                ..
            } => {
                let result = match w.merge_all(&base, &heads) {
                    Err(why) => ProbeResult::Conflict(why),
                    Ok(commit) => {
                        let eval = w.eval(&commit);
                        match attrs {
                            None => ProbeResult::Full {
                                eval: Arc::new(eval),
                            },
                            Some(attrs) => ProbeResult::Attrs {
                                commit,
                                jobs: attrs
                                    .iter()
                                    .flat_map(|a| eval.by_attr(a))
                                    .map(|(k, r)| (k.clone(), r.clone()))
                                    .collect(),
                            },
                        }
                    }
                };
                Input::Candidate(CandidateInput::Probed {
                    probe,
                    result: Ok(result),
                })
            }
            Command::Land { cand, old, new, .. } => {
                // Land is only issued for a recorded, passed candidate and a green commit.
                let row = &self.db.candidates[&cand];
                assert_eq!(row.phase, Phase::Landing, "land of candidate {cand}");
                assert_eq!(row.commit(), Some(new.as_str()));
                assert_eq!(row.base.as_deref(), Some(old.as_str()));
                assert!(w.green(&old, &new), "landing a red commit {new} over {old}");
                w.lands += 1;
                let contains = |w: &World, c: &str| w.tip_heads().starts_with(&w.commits[c]);
                let result = if contains(w, &new) {
                    LandResult::Landed // already there: idempotent
                } else if let Some(ext) = w.move_on_land.take() {
                    w.tip = w.merge(&w.tip.clone(), &ext);
                    LandResult::Moved { tip: w.tip.clone() }
                } else if w.tip == old {
                    w.tip = new;
                    let heads = w.tip_heads();
                    let distinct: BTreeSet<&String> = heads.iter().collect();
                    assert_eq!(distinct.len(), heads.len(), "a change landed twice");
                    LandResult::Landed
                } else {
                    LandResult::Moved { tip: w.tip.clone() }
                };
                Input::Candidate(CandidateInput::Landed { cand, result })
            }
            Command::PollTarget { repo, branch } => Input::Queue(QueueInput::TargetPolled {
                repo,
                branch,
                result: Ok(w.tip.clone()),
            }),
            other @ (Command::PollSource { .. }
            | Command::AdvanceChannel { .. }
            | Command::PublishArtifacts { .. }) => {
                panic!("no channels in this world: {other:?}")
            }
        })
    }

    /// The recorded rows agree with the core's state.
    fn check_db(&self) {
        for c in self.core.changes() {
            assert_eq!(self.db.changes.get(&c.id), Some(c), "change row #{}", c.id);
        }
        for c in self.core.candidates() {
            assert_eq!(
                self.db.candidates.get(&c.id),
                Some(&c.persisted()),
                "candidate row {}",
                c.id
            );
        }
    }

    fn change(&self, id: ChangeId) -> &Change {
        self.core.change(id).expect("known change")
    }

    fn state(&self, id: ChangeId) -> ChangeState {
        self.change(id).state
    }

    fn cand(&self, id: CandId) -> &Candidate {
        self.core.candidate(id).expect("known candidate")
    }

    fn builds(&self) -> usize {
        self.issued
            .iter()
            .filter(|(_, c)| matches!(c, Command::Build { .. }))
            .count()
    }

    fn builds_of(&self, drv: &str) -> usize {
        self.issued
            .iter()
            .filter(|(_, c)| matches!(c, Command::Build { drv: d, .. } if d == drv))
            .count()
    }

    fn prepares(&self) -> Vec<Vec<ChangeId>> {
        self.issued
            .iter()
            .filter_map(|(_, c)| {
                let Command::Prepare { changes, .. } = c else {
                    return None;
                };
                Some(changes.iter().map(|(id, _)| *id).collect())
            })
            .collect()
    }

    fn lands(&self) -> usize {
        self.issued
            .iter()
            .filter(|(_, c)| matches!(c, Command::Land { .. }))
            .count()
    }

    fn assert_merged(&self, ids: &[ChangeId]) {
        for &id in ids {
            let c = self.change(id);
            assert_eq!(c.state, ChangeState::Merged, "#{id}: {:?}", c.reason);
            let landed = c.landed_commit.as_deref().expect("landed commit");
            assert!(
                self.world.commits[landed].contains(&c.head),
                "#{id} is in its landed commit"
            );
            assert!(
                self.world.tip_heads().contains(&c.head),
                "#{id} is on the target"
            );
        }
    }

    fn reason(&self, id: ChangeId) -> &str {
        self.change(id).reason.as_deref().unwrap_or("")
    }
}

fn world() -> World {
    World::new(12)
}

/// Submits `n` changes, change `i` (1-based, head `h{i}`) altering `pkg{i}` with tag
/// `c{i}`, except those given in `special`.
fn submit_batch(sim: &mut Sim, n: usize, special: &[(usize, Patch)]) -> Vec<ChangeId> {
    (1..=n)
        .map(|i| {
            let p = special
                .iter()
                .find(|(j, _)| *j == i)
                .map(|(_, p)| p.clone())
                .unwrap_or_else(|| Patch::alter(&format!("pkg{i}"), &format!("c{i}")));
            sim.submit(&format!("h{i}"), p, Priority::Normal)
        })
        .collect()
}

fn without(ids: &[ChangeId], gone: &[ChangeId]) -> Vec<ChangeId> {
    ids.iter().copied().filter(|i| !gone.contains(i)).collect()
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

// Gated explicitly: tests/purity.rs accepts a test-only file only where it is declared so.
#[cfg(test)]
mod group_tests;
#[cfg(test)]
mod queue_tests;
#[cfg(test)]
mod recovery_tests;
