//! Fast deterministic tests of the core against a small model "world": a package set
//! whose changes alter given jobs' derivations, some of which fail to build, conflict,
//! or break evaluation. A driver loop answers the core's commands from the model and
//! applies its `Record`s to an in-memory database, so `Core::restore` can be tested too.

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
        failure_retries: 0,
        quarantine_after: 3,
        probe_delay_ms: 30_000,
        channels: BTreeMap::new(),
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
                other @ (Command::Prepare { .. }
                | Command::Evaluate { .. }
                | Command::Inspect { .. }
                | Command::Build { .. }
                | Command::QueryReferrers { .. }
                | Command::ProbeBuilder { .. }
                | Command::Probe { .. }
                | Command::Land { .. }
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
            Command::Prepare { cand, changes, .. } => {
                let base = w.tip.clone();
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
                Input::Prepared {
                    cand,
                    result: Ok(Prepared {
                        base,
                        heads,
                        merged,
                        conflicts,
                        vanished: vec![],
                    }),
                }
            }
            Command::Evaluate { commit, .. } => Input::Evaluated {
                eval: Arc::new(w.eval(&commit)),
            },
            Command::Build { drv, builder, .. } => Input::Built(w.build(&drv, &builder)),
            Command::Inspect { drvs } => Input::Inspected {
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
            },
            Command::QueryReferrers { root } => Input::Referrers { root, drvs: vec![] },
            Command::ProbeBuilder { builder } => Input::BuilderProbed {
                builder,
                result: Ok(crate::core::BuilderIdentity {
                    implementation: "Nix".into(),
                    version: "2.8.0".into(),
                }),
            },
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
                Input::Probed {
                    probe,
                    result: Ok(result),
                }
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
                Input::Landed { cand, result }
            }
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

#[test]
fn batch_of_eight_good_changes_lands_in_one_candidate() {
    let mut sim = Sim::new(config(8, 60_000), world());
    let ids = submit_batch(&mut sim, 8, &[]);
    sim.run();
    assert_eq!(sim.prepares(), vec![ids.clone()]);
    let cand = sim.cand(1);
    assert_eq!(cand.phase, Phase::Done);
    assert_eq!(cand.changes, ids);
    assert_eq!(sim.world.tip, cand.commit().unwrap());
    assert_eq!(sim.core.candidates().count(), 1);
    sim.assert_merged(&ids);
    for id in &ids {
        assert_eq!(sim.change(*id).landed_commit.as_deref(), cand.commit());
    }
    assert_eq!(sim.builds(), 8);
    assert_eq!(cand.builds, 8);
    assert_eq!(cand.extra_builds, 0);
    assert_eq!(sim.lands(), 1);
    assert_eq!(sim.world.tip_heads().len(), 8);
}

#[test]
fn culprit_altering_its_own_job_is_found_without_extra_builds() {
    let mut w = world();
    w.bad_tags.insert("c4".into());
    let mut sim = Sim::new(config(8, 60_000), w);
    let ids = submit_batch(&mut sim, 8, &[]);
    sim.run();
    assert_eq!(sim.state(4), ChangeState::Rejected);
    let reason = sim.reason(4);
    assert!(reason.contains("pkg4 (x86_64-linux)"), "{reason}");
    assert!(reason.contains("/nix/store/c4-pkg4.drv"), "{reason}");
    assert!(reason.contains("Makefile:12: all] Error 2"), "{reason}");
    assert!(
        reason.contains("this change alone on the base gives the same failing derivation"),
        "{reason}"
    );
    let innocents = without(&ids, &[4]);
    sim.assert_merged(&innocents);
    let follow = sim.cand(2);
    assert_eq!(follow.follow_up_of, Some(1));
    assert_eq!(follow.changes, innocents);
    assert_eq!(sim.change(1).landed_commit.as_deref(), follow.commit());
    let root = sim.cand(1);
    // The batch's own: 8 derivations plus the base version of the failing job.
    assert_eq!(root.builds, 9);
    assert!(root.extra_builds <= 1, "extra {}", root.extra_builds);
    assert!(sim.builds() <= root.builds as usize + 1);
    let counted: u32 = sim
        .core
        .candidates()
        .map(|c| c.builds + c.extra_builds)
        .sum();
    assert_eq!(sim.builds(), counted as usize);
    assert_eq!(sim.builds_of("/nix/store/base-pkg4.drv"), 1);
    assert_eq!(sim.lands(), 1);
}

/// Two changes alter the failing job: one bumps a dependency, the other breaks it.
fn bisection(bump_at: usize, break_at: usize) -> Sim {
    let mut w = world();
    w.bad_tags.insert("bad".into());
    let mut sim = Sim::new(config(8, 60_000), w);
    let ids = submit_batch(
        &mut sim,
        8,
        &[
            (bump_at, Patch::alter("pkg11", "dep")),
            (break_at, Patch::alter("pkg11", "bad")),
        ],
    );
    sim.run();
    let culprit = ids[break_at - 1];
    assert_eq!(sim.state(culprit), ChangeState::Rejected);
    let reason = sim.reason(culprit);
    assert!(reason.contains("found by testing prefixes"), "{reason}");
    assert!(reason.contains("pkg11"), "{reason}");
    sim.assert_merged(&without(&ids, &[culprit]));
    let root = sim.cand(1);
    assert_eq!(root.builds, 8); // 7 altered jobs + the base version of pkg11
    let counted: u32 = sim
        .core
        .candidates()
        .map(|c| c.builds + c.extra_builds)
        .sum();
    assert_eq!(sim.builds(), counted as usize);
    sim
}

#[test]
fn bisection_over_prefixes_finds_the_breaking_change_after_the_bump() {
    let sim = bisection(2, 6);
    // One build, of the prefix whose pkg11 is neither the base's nor the batch's; the
    // follow-up reuses it (its pkg11 is that same prefix's).
    assert_eq!(sim.builds_of("/nix/store/dep-pkg11.drv"), 1);
    assert_eq!(sim.builds_of("/nix/store/dep_bad-pkg11.drv"), 1);
    assert_eq!(sim.cand(1).extra_builds, 1);
    assert_eq!(sim.builds(), 9);
}

#[test]
fn bisection_over_prefixes_finds_the_breaking_change_before_the_bump() {
    let sim = bisection(6, 2);
    // One bisection build (the prefix with only the breaking change), then the
    // follow-up builds pkg11 with the bump alone: the innocent's own build, not
    // attribution's.
    assert_eq!(sim.builds_of("/nix/store/bad-pkg11.drv"), 1);
    assert_eq!(sim.builds_of("/nix/store/bad_dep-pkg11.drv"), 1);
    assert_eq!(sim.builds_of("/nix/store/dep-pkg11.drv"), 1);
    assert_eq!(sim.cand(1).extra_builds, 1);
    assert_eq!(sim.builds(), 10);
}

#[test]
fn whole_jobset_evaluation_failure_rejects_its_cause() {
    let mut sim = Sim::new(config(8, 60_000), world());
    let ids = submit_batch(
        &mut sim,
        8,
        &[(3, Patch::alter("pkg3", "c3").breaks_eval())],
    );
    sim.run();
    assert_eq!(sim.state(3), ChangeState::Rejected);
    let reason = sim.reason(3);
    assert!(reason.contains("jobset fails to evaluate"), "{reason}");
    assert!(reason.contains("syntax error"), "{reason}");
    sim.assert_merged(&without(&ids, &[3]));
    assert_eq!(sim.cand(1).builds, 0);
    assert_eq!(sim.builds(), 7);
}

#[test]
fn attribute_evaluation_error_rejects_its_cause() {
    let mut sim = Sim::new(config(8, 60_000), world());
    let ids = submit_batch(&mut sim, 8, &[(5, Patch::default().eval_error("pkg9"))]);
    sim.run();
    assert_eq!(sim.state(5), ChangeState::Rejected);
    let reason = sim.reason(5);
    assert!(
        reason.contains("pkg9 (x86_64-linux) fails to evaluate"),
        "{reason}"
    );
    assert!(reason.contains("attribute 'src' missing"), "{reason}");
    sim.assert_merged(&without(&ids, &[5]));
}

#[test]
fn failures_already_on_the_base_do_not_block_but_new_failing_jobs_do() {
    let mut w = world();
    w.broken_attrs.insert("pkg5".into());
    w.broken_attrs.insert("newpkg".into());
    let mut sim = Sim::new(config(8, 60_000), w);
    let a = sim.submit("h1", Patch::alter("pkg5", "c1"), Priority::Normal);
    let b = sim.submit("h2", Patch::alter("pkg2", "c2"), Priority::Normal);
    sim.run();
    sim.assert_merged(&[a, b]);
    assert_eq!(sim.core.candidates().count(), 1);
    assert_eq!(sim.builds_of("/nix/store/base-pkg5.drv"), 1);
    assert!(sim
        .events
        .iter()
        .any(|e| e.contains("1 failures already on the base ignored")));

    let c = sim.submit("h3", Patch::alter("newpkg", "c3"), Priority::Normal);
    let d = sim.submit("h4", Patch::alter("pkg6", "c4"), Priority::Normal);
    sim.run();
    assert_eq!(sim.state(c), ChangeState::Rejected);
    let reason = sim.reason(c);
    assert!(reason.contains("newpkg (x86_64-linux)"), "{reason}");
    assert!(reason.contains("/nix/store/c3-newpkg.drv"), "{reason}");
    sim.assert_merged(&[d]);
}

#[test]
fn conflicting_change_is_rejected_and_the_batch_goes_on() {
    let mut sim = Sim::new(config(8, 60_000), world());
    let ids = submit_batch(&mut sim, 8, &[(5, Patch::alter("pkg5", "c5").conflict())]);
    sim.run();
    assert_eq!(sim.state(5), ChangeState::Rejected);
    let reason = sim.reason(5);
    assert!(
        reason.starts_with("merge conflict with master at c0"),
        "{reason}"
    );
    assert!(reason.contains("CONFLICT (content)"), "{reason}");
    let rest = without(&ids, &[5]);
    sim.assert_merged(&rest);
    // Same candidate, no follow-up.
    assert_eq!(sim.core.candidates().count(), 1);
    assert_eq!(sim.cand(1).changes, rest);
    assert_eq!(sim.builds(), 7);
}

#[test]
fn target_moved_at_landing_prepares_the_candidate_again() {
    let mut w = world();
    w.patch("ext", Patch::alter("pkg10", "ext"));
    w.move_on_land = Some("ext".into());
    let mut sim = Sim::new(config(8, 60_000), w);
    let ids = submit_batch(&mut sim, 3, &[]);
    sim.run();
    sim.assert_merged(&ids);
    assert_eq!(sim.prepares(), vec![ids.clone(), ids.clone()]);
    assert_eq!(sim.lands(), 2);
    assert_eq!(sim.core.candidates().count(), 1);
    let cand = sim.cand(1);
    assert_ne!(cand.base.as_deref(), Some("c0"));
    assert_eq!(sim.world.tip, cand.commit().unwrap());
    assert_eq!(sim.world.tip_heads(), ["ext", "h1", "h2", "h3"]);
    // The drvs did not change with the rebase: nothing built twice.
    assert_eq!(sim.builds(), 3);
}

#[test]
fn cancelled_changes_never_land() {
    let mut sim = Sim::new(config(4, 60_000), world());
    let ids = submit_batch(&mut sim, 6, &[]);
    assert_eq!(sim.prepares(), vec![vec![1, 2, 3, 4]]);
    // A queued change.
    assert_eq!(sim.state(5), ChangeState::Queued);
    assert_eq!(sim.cancel(5).unwrap().state, ChangeState::Cancelled);
    // A testing change, while its candidate is preparing.
    assert_eq!(sim.cancel(2).unwrap().state, ChangeState::Cancelled);
    assert_eq!(sim.cand(1).phase, Phase::Done);
    assert_eq!(sim.prepares()[1], vec![1, 3, 4, 6]);
    // A testing change, while building.
    sim.run_until(|s| {
        s.core
            .candidate(2)
            .is_some_and(|c| c.phase == Phase::Building)
    });
    assert_eq!(sim.cancel(6).unwrap().state, ChangeState::Cancelled);
    assert_eq!(sim.cand(2).phase, Phase::Done);
    // Back in the queue, a short batch waits for the batch delay again.
    assert_eq!(sim.prepares().len(), 2);
    sim.run_until(|s| s.core.candidate(3).is_some());
    assert!(sim.now >= T0 + 60_000);
    assert_eq!(sim.prepares()[2], vec![1, 3, 4]);
    sim.run_until(|s| {
        s.core
            .candidate(3)
            .is_some_and(|c| c.phase == Phase::Landing)
    });
    assert_eq!(
        sim.cancel(3).unwrap_err(),
        Refusal::TooLate(ChangeState::Testing)
    );
    sim.run();
    sim.assert_merged(&[1, 3, 4]);
    for id in [2, 5, 6] {
        assert_eq!(sim.state(id), ChangeState::Cancelled);
        assert!(!sim.world.tip_heads().contains(&format!("h{id}")));
    }
    assert_eq!(
        sim.cancel(1).unwrap_err(),
        Refusal::TooLate(ChangeState::Merged)
    );
    assert_eq!(sim.cancel(99).unwrap_err(), Refusal::UnknownChange);
    assert_eq!(ids.len(), 6);
}

#[test]
fn queue_order_is_priority_then_submission_and_batches_are_capped() {
    let mut sim = Sim::new(config(2, 0), world());
    // Occupies the lane while the others queue up.
    let first = sim.submit("h0", Patch::alter("pkg0", "c0"), Priority::Low);
    let l1 = sim.submit("h1", Patch::alter("pkg1", "c1"), Priority::Low);
    let n1 = sim.submit("h2", Patch::alter("pkg2", "c2"), Priority::Normal);
    sim.now += 1000;
    let u1 = sim.submit("h3", Patch::alter("pkg3", "c3"), Priority::Urgent);
    let n2 = sim.submit("h4", Patch::alter("pkg4", "c4"), Priority::Normal);
    sim.now += 1000;
    let l2 = sim.submit("h5", Patch::alter("pkg5", "c5"), Priority::Low);
    let h1 = sim.submit("h6", Patch::alter("pkg6", "c6"), Priority::High);
    let order: Vec<ChangeId> = sim.core.queue(REPO, BRANCH).iter().map(|c| c.id).collect();
    assert_eq!(order, vec![u1, h1, n1, n2, l1, l2]);
    sim.run();
    assert_eq!(
        sim.prepares(),
        vec![vec![first], vec![u1, h1], vec![n1, n2], vec![l1, l2]]
    );
    sim.assert_merged(&[first, l1, n1, u1, n2, l2, h1]);
}

#[test]
fn batch_delay_waits_for_a_fuller_batch() {
    let mut sim = Sim::new(config(4, 60_000), world());
    sim.submit("h1", Patch::alter("pkg1", "c1"), Priority::Normal);
    assert!(sim.prepares().is_empty());
    assert_eq!(sim.core.next_wakeup(), Some(T0 + 60_000));
    sim.now += 30_000;
    sim.submit("h2", Patch::alter("pkg2", "c2"), Priority::Normal);
    assert!(sim.prepares().is_empty());
    sim.run();
    assert_eq!(sim.prepares(), vec![vec![1, 2]]);
    let (at, _) = sim
        .issued
        .iter()
        .find(|(_, c)| matches!(c, Command::Prepare { .. }))
        .unwrap();
    assert!(*at >= T0 + 60_000);
    sim.assert_merged(&[1, 2]);
}

#[test]
fn infrastructure_outcomes_are_retried_later_and_never_blamed() {
    let mut w = world();
    w.infra.insert("/nix/store/c2-pkg2.drv".into(), 2);
    let mut sim = Sim::new(config(8, 60_000), w);
    let ids = submit_batch(&mut sim, 3, &[]);
    sim.run();
    sim.assert_merged(&ids);
    assert_eq!(sim.builds_of("/nix/store/c2-pkg2.drv"), 3);
    let times: Vec<Millis> = sim
        .issued
        .iter()
        .filter(|(_, c)| matches!(c, Command::Build { drv, .. } if drv == "/nix/store/c2-pkg2.drv"))
        .map(|(t, _)| *t)
        .collect();
    // Doubling delays after each infrastructure outcome.
    assert!(times[1] - times[0] >= 5_000, "{times:?}");
    assert!(times[2] - times[1] >= 10_000, "{times:?}");
    assert_eq!(sim.core.candidates().count(), 1);
    assert_eq!(
        sim.core.memo("/nix/store/c2-pkg2.drv").map(|m| m.class),
        Some(OutcomeClass::Success)
    );
    assert!(sim.db.memo.values().all(|m| m.class.is_verdict()));
}

#[test]
fn a_flaky_failure_is_built_again_and_never_blamed() {
    let mut w = world();
    w.flaky.insert("/nix/store/c2-pkg2.drv".into(), 1);
    let mut cfg = config(8, 60_000);
    cfg.failure_retries = 1;
    let mut sim = Sim::new(cfg, w);
    let ids = submit_batch(&mut sim, 3, &[]);
    sim.run();
    sim.assert_merged(&ids);
    assert_eq!(sim.builds_of("/nix/store/c2-pkg2.drv"), 2);
    assert_eq!(
        sim.core.memo("/nix/store/c2-pkg2.drv").map(|m| m.class),
        Some(OutcomeClass::Success)
    );
    assert_eq!(sim.core.candidates().count(), 1);
}

#[test]
fn a_real_failure_is_believed_after_the_retries() {
    let mut w = world();
    w.bad_tags.insert("c2".into());
    let mut cfg = config(8, 0);
    cfg.failure_retries = 1;
    let mut sim = Sim::new(cfg, w);
    let ids = submit_batch(&mut sim, 3, &[]);
    sim.run();
    assert_eq!(sim.change(ids[1]).state, ChangeState::Rejected);
    assert!(sim.reason(ids[1]).contains("pkg2"));
    sim.assert_merged(&[ids[0], ids[2]]);
    // Once more than it failed, then remembered: attribution reuses the result.
    assert_eq!(sim.builds_of("/nix/store/c2-pkg2.drv"), 2);
    // Without retries the first failure is believed.
    let mut w = world();
    w.flaky.insert("/nix/store/c2-pkg2.drv".into(), 1);
    let mut sim = Sim::new(config(8, 0), w);
    let ids = submit_batch(&mut sim, 3, &[]);
    sim.run();
    assert_eq!(sim.change(ids[1]).state, ChangeState::Rejected);
}

#[test]
fn force_pushed_change_is_tested_at_its_new_head() {
    let mut sim = Sim::new(config(8, 0), world());
    sim.world.patch("h1b", Patch::alter("pkg1", "c1b"));
    let id = sim.submit("h1", Patch::alter("pkg1", "c1"), Priority::Normal);
    // The author force-pushes before the candidate is prepared.
    let git_ref = sim.change(id).git_ref.clone();
    sim.world.refs.insert(git_ref, "h1b".into());
    sim.run();
    sim.assert_merged(&[id]);
    let c = sim.change(id);
    assert_eq!(c.head, "h1b");
    assert_eq!(c.submitted_head, "h1");
    assert_eq!(sim.db.changes[&id].head, "h1b");
    assert_eq!(sim.world.tip_heads(), ["h1b"]);
    assert_eq!(sim.builds_of("/nix/store/c1b-pkg1.drv"), 1);
    assert_eq!(sim.builds_of("/nix/store/c1-pkg1.drv"), 0);
}

#[test]
fn duplicate_results_are_harmless() {
    let mut w = world();
    w.bad_tags.insert("bad".into());
    w.bad_tags.insert("c7".into());
    w.patch("ext", Patch::alter("pkg10", "ext"));
    w.move_on_land = Some("ext".into());
    let mut sim = Sim::new(config(8, 60_000), w);
    sim.duplicate = true;
    let ids = submit_batch(
        &mut sim,
        8,
        &[
            (2, Patch::alter("pkg11", "dep")),
            (5, Patch::alter("pkg11", "bad")),
        ],
    );
    sim.run();
    assert_eq!(sim.state(5), ChangeState::Rejected);
    assert_eq!(sim.state(7), ChangeState::Rejected);
    sim.assert_merged(&without(&ids, &[5, 7]));
}

/// A busy scenario: a conflict, a single-suspect culprit, a bisection, an
/// infrastructure failure and a moved target.
fn busy(sim: &mut Sim) -> Vec<ChangeId> {
    sim.world.bad_tags.insert("bad".into());
    sim.world.bad_tags.insert("c7".into());
    sim.world.infra.insert("/nix/store/c1-pkg1.drv".into(), 1);
    sim.world.patch("ext", Patch::alter("pkg10", "ext"));
    sim.world.move_on_land = Some("ext".into());
    let mut ids = submit_batch(
        sim,
        8,
        &[
            (2, Patch::alter("pkg11", "dep")),
            (4, Patch::alter("pkg4", "c4").conflict()),
            (5, Patch::alter("pkg11", "bad")),
        ],
    );
    ids.push(sim.submit("h9", Patch::alter("pkg9", "c9"), Priority::Normal));
    ids
}

fn expected_busy(id: ChangeId) -> ChangeState {
    match id {
        4 | 5 | 7 => ChangeState::Rejected,
        _ => ChangeState::Merged,
    }
}

fn check_busy(sim: &Sim, ids: &[ChangeId], what: &str) {
    for &id in ids {
        assert_eq!(sim.state(id), expected_busy(id), "#{id} {what}");
    }
    let merged: Vec<ChangeId> = ids
        .iter()
        .copied()
        .filter(|&i| expected_busy(i) == ChangeState::Merged)
        .collect();
    sim.assert_merged(&merged);
    for &id in ids {
        let on_target = sim
            .world
            .tip_heads()
            .iter()
            .filter(|h| **h == format!("h{id}"))
            .count();
        let want = usize::from(expected_busy(id) == ChangeState::Merged);
        assert_eq!(on_target, want, "#{id} on the target {what}");
    }
    assert_eq!(sim.world.tip_heads()[0], "ext");
}

#[test]
fn busy_scenario_without_crash() {
    let mut sim = Sim::new(config(8, 60_000), world());
    let ids = busy(&mut sim);
    sim.run();
    check_busy(&sim, &ids, "");
}

#[test]
fn restore_after_a_crash_at_any_step_finishes_the_same_way() {
    let mut reference = Sim::new(config(8, 60_000), world());
    let ids = busy(&mut reference);
    reference.run();
    let total = reference.steps;
    let mut phases = BTreeSet::new();
    for crash_at in 0..=total {
        let mut sim = Sim::new(config(8, 60_000), world());
        busy(&mut sim);
        for _ in 0..crash_at {
            if !sim.step() {
                break;
            }
        }
        phases.extend(
            sim.db
                .candidates
                .values()
                .filter(|c| c.phase != Phase::Done)
                .map(|c| c.phase.as_str()),
        );
        sim.crash_and_restore();
        sim.run();
        check_busy(&sim, &ids, &format!("after a crash at step {crash_at}"));
    }
    for p in [
        Phase::Preparing,
        Phase::Evaluating,
        Phase::Building,
        Phase::Attributing,
        Phase::Landing,
    ] {
        assert!(phases.contains(p.as_str()), "never crashed in {p:?}");
    }
}

#[test]
fn restore_after_repeated_crashes_finishes_the_same_way() {
    for every in [3, 5, 8, 13] {
        let mut sim = Sim::new(config(8, 60_000), world());
        let ids = busy(&mut sim);
        // Crashes faster than a candidate can progress would livelock any design:
        // crash a bounded number of times.
        let (mut n, mut crashes) = (0, 0);
        while sim.step() {
            n += 1;
            if n % every == 0 && crashes < 8 {
                crashes += 1;
                sim.crash_and_restore();
            }
        }
        sim.check_db();
        check_busy(&sim, &ids, &format!("crashing every {every} steps"));
    }
}

#[test]
fn restore_requeues_orphaned_testing_changes_and_relands_a_landing_candidate() {
    let mut sim = Sim::new(config(8, 60_000), world());
    let ids = submit_batch(&mut sim, 3, &[]);
    sim.run_until(|s| {
        s.core
            .candidate(1)
            .is_some_and(|c| c.phase == Phase::Landing)
    });
    // Landed on the remote, but the process died before hearing so.
    let new = sim
        .queue
        .iter()
        .find_map(|c| {
            let Command::Land { new, .. } = c else {
                return None;
            };
            Some(new.clone())
        })
        .expect("a Land in flight");
    sim.world.tip = new.clone();
    sim.crash_and_restore();
    sim.run();
    sim.assert_merged(&ids);
    assert_eq!(sim.world.tip, new);
    assert_eq!(sim.core.candidates().count(), 1);

    // A change recorded as testing whose candidate row is missing goes back to the queue.
    let mut sim = Sim::new(config(8, 60_000), world());
    let ids = submit_batch(&mut sim, 2, &[]);
    sim.run_until(|s| !s.db.candidates.is_empty());
    assert_eq!(sim.db.changes[&1].state, ChangeState::Testing);
    sim.db.candidates.clear();
    sim.crash_and_restore();
    sim.run();
    sim.assert_merged(&ids);
}

#[test]
fn bisection_with_three_suspects_spends_few_builds() {
    let mut w = world();
    w.bad_tags.insert("bad".into());
    let mut sim = Sim::new(config(8, 60_000), w);
    let ids = submit_batch(
        &mut sim,
        8,
        &[
            (2, Patch::alter("pkg11", "dep")),
            (4, Patch::alter("pkg11", "dep2")),
            (6, Patch::alter("pkg11", "bad")),
        ],
    );
    sim.run();
    assert_eq!(sim.state(6), ChangeState::Rejected);
    sim.assert_merged(&without(&ids, &[6]));
    let root = sim.cand(1);
    // Positions [2, 4, 6, 8]: the prefix through #4 is built (good), then the one
    // through #6 equals the batch's derivation (bad, no build).
    assert_eq!(root.extra_builds, 1);
    assert_eq!(sim.builds_of("/nix/store/dep_dep2-pkg11.drv"), 1);
    assert_eq!(sim.builds_of("/nix/store/dep-pkg11.drv"), 0);
}

#[test]
fn two_culprits_in_one_batch_are_both_rejected() {
    let mut w = world();
    w.bad_tags.insert("c3".into());
    w.bad_tags.insert("c6".into());
    let mut sim = Sim::new(config(8, 60_000), w);
    let ids = submit_batch(&mut sim, 8, &[]);
    sim.run();
    assert_eq!(sim.state(3), ChangeState::Rejected);
    assert_eq!(sim.state(6), ChangeState::Rejected);
    assert!(sim.reason(3).contains("pkg3"));
    assert!(sim.reason(6).contains("pkg6"));
    sim.assert_merged(&without(&ids, &[3, 6]));
    // Failing fast, the first failure starts attribution; the second culprit is found
    // either with it or by the follow-up candidate, whose builds are already remembered.
    assert!(sim.core.candidates().count() <= 3);
    assert_eq!(sim.cand(1).extra_builds, 0);
}

#[test]
fn a_batch_that_merges_nothing_ends_without_evaluating() {
    let mut sim = Sim::new(config(8, 60_000), world());
    let a = sim.submit(
        "h1",
        Patch::alter("pkg1", "c1").conflict(),
        Priority::Normal,
    );
    let b = sim.submit(
        "h2",
        Patch::alter("pkg2", "c2").conflict(),
        Priority::Normal,
    );
    sim.run();
    assert_eq!(sim.state(a), ChangeState::Rejected);
    assert_eq!(sim.state(b), ChangeState::Rejected);
    assert!(!sim
        .issued
        .iter()
        .any(|(_, c)| matches!(c, Command::Evaluate { .. } | Command::Land { .. })));
    assert_eq!(sim.cand(1).summary.as_deref(), Some("nothing merged"));
    // The lane is free again.
    let c = sim.submit("h3", Patch::alter("pkg3", "c3"), Priority::Normal);
    sim.run();
    sim.assert_merged(&[c]);
}

#[test]
fn required_jobs_are_built_and_must_exist() {
    let mut w = world();
    // A required job already failing on the base does not block.
    w.broken_attrs.insert("pkg0".into());
    let mut sim = Sim::new(config_required(8, 60_000, &["pkg0", "pkg1"]), w);
    let a = sim.submit("h2", Patch::alter("pkg2", "c2"), Priority::Normal);
    let b = sim.submit("h3", Patch::alter("pkg3", "c3"), Priority::Normal);
    sim.run();
    sim.assert_merged(&[a, b]);
    // Unchanged required jobs are built too (once, then remembered).
    assert_eq!(sim.builds_of("/nix/store/base-pkg0.drv"), 1);
    assert_eq!(sim.builds_of("/nix/store/base-pkg1.drv"), 1);

    // Removing a required job blocks; the change that removed it is rejected.
    let c = sim.submit("h4", Patch::default().remove("pkg1"), Priority::Normal);
    let d = sim.submit("h5", Patch::alter("pkg5", "c5"), Priority::Normal);
    sim.run();
    assert_eq!(sim.state(c), ChangeState::Rejected);
    assert!(
        sim.reason(c).contains("required job pkg1 is missing"),
        "{}",
        sim.reason(c)
    );
    sim.assert_merged(&[d]);
    assert_eq!(sim.builds_of("/nix/store/base-pkg1.drv"), 1);
}
