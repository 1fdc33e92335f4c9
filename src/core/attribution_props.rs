//! Property tests of attribution over generated batches.
//!
//! A generated package set (a dependency graph, some packages already broken on the base)
//! and a generated batch of changes, each of one kind whose fate is known up front: good
//! bumps, build breaks, new packages that fail or build, `throw`s, whole-jobset evaluation
//! errors, touches of already broken packages, flaky failures and conflicts. The expected
//! verdict is derived from the case alone (a change is a culprit when it would fail if it
//! were tested alone), never from the core. The core is driven through its public inputs
//! until the queue is empty; then: no innocent change is rejected, every innocent lands,
//! every culprit is rejected with its own job in the reason, and the builds attribution
//! spent beyond the batches' own are counted.

use super::{BuildInput, CandidateInput, QueueInput};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use proptest::prelude::*;
use proptest::strategy::ValueTree;

use super::*;
use crate::core::change::{ChangeId, ChangeState, Priority};
use crate::core::evaluation::{EvalOutcome, Evaluation, Job, JobKey, JobResult};
use crate::core::outcome::{BuildReport, OutcomeClass};

const SYS: &str = "x86_64-linux";
const REPO: &str = "pkgs";
const BRANCH: &str = "master";

/// What one change does.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    /// A version bump of a package: it and its dependents rebuild, and build.
    Good(usize),
    /// A bump whose build exits 1 (a package without broken dependencies).
    BuildBreak(usize),
    /// Adds a package (depending on a healthy one) whose build fails.
    NewFails(usize),
    /// Adds a package (depending on a healthy one) that builds.
    NewBuilds(usize),
    /// Makes a healthy package `throw` at evaluation (its dependents fail to evaluate).
    Throw(usize),
    /// A syntax error: the whole jobset fails to evaluate.
    WholeEval,
    /// A bump of a package that is already broken on the base.
    TouchBroken(usize),
    /// A bump whose first build fails spuriously, then builds.
    Flaky(usize),
    /// A README change: no job changes.
    Readme,
    /// Does not merge onto the target.
    Conflict,
    /// Does not merge on top of change `j` (an earlier one): rejected if `j` lands, lands
    /// if `j` is rejected.
    ConflictsWith(usize),
}

impl Kind {
    fn culprit(&self) -> bool {
        matches!(
            self,
            Kind::BuildBreak(_)
                | Kind::NewFails(_)
                | Kind::Throw(_)
                | Kind::WholeEval
                | Kind::Conflict
        )
    }
}

#[derive(Debug, Clone)]
struct Case {
    /// deps[p]: the packages p depends on (all lower-numbered).
    deps: Vec<Vec<usize>>,
    /// Broken on the base, whatever their version.
    broken: BTreeSet<usize>,
    changes: Vec<Kind>,
    batch_max: usize,
    /// Candidates in flight at once (speculation).
    window: usize,
    /// Changes submitted with `urgent` priority (tested alone, ahead of the others).
    urgent: BTreeSet<usize>,
    /// `mass_rebuild_threshold` of the lane.
    mass: Option<usize>,
}

impl Case {
    fn n(&self) -> usize {
        self.deps.len()
    }

    /// Broken itself or through a dependency, on the base.
    fn sick(&self, p: usize) -> bool {
        self.broken.contains(&p) || self.deps[p].iter().any(|&d| self.sick(d))
    }

    /// Whether change `i` must be rejected (a change that conflicts with another is
    /// judged by `conflicts_consistent`: which lands first is a matter of timing).
    fn culprit(&self, i: usize) -> bool {
        self.changes[i].culprit()
    }

    /// The job a culprit must be blamed for (named in its reason).
    fn own_job(&self, i: usize) -> Option<String> {
        match &self.changes[i] {
            Kind::BuildBreak(p) | Kind::Throw(p) => Some(format!("pkg{p}")),
            Kind::NewFails(_) => Some(format!("new{i}")),
            _ => None,
        }
    }
}

fn case() -> impl Strategy<Value = Case> {
    (4usize..12, 1usize..=10, 1usize..=8, any::<u64>()).prop_map(|(n, k, batch_max, seed)| {
        let mut rng = fastrand::Rng::with_seed(seed);
        let deps: Vec<Vec<usize>> = (0..n)
            .map(|p| {
                let mut d: Vec<usize> = (0..p).filter(|_| rng.u8(0..100) < 35).collect();
                d.truncate(3);
                d
            })
            .collect();
        let broken: BTreeSet<usize> = (1..n).filter(|_| rng.u8(0..100) < 15).collect();
        let window = 1 + rng.usize(0..5);
        let urgent = (0..k).filter(|_| rng.u8(0..100) < 10).collect();
        let mass = (rng.u8(0..100) < 40).then(|| 1 + rng.usize(0..4));
        let mut c = Case {
            deps,
            broken,
            changes: vec![],
            batch_max,
            window,
            urgent,
            mass,
        };
        let healthy: Vec<usize> = (0..n).filter(|&p| !c.sick(p)).collect();
        let sick: Vec<usize> = (0..n).filter(|&p| c.sick(p)).collect();
        for i in 0..k {
            let pick = |rng: &mut fastrand::Rng, v: &[usize]| v[rng.usize(0..v.len())];
            let kind = match rng.u8(0..100) {
                0..=29 => Kind::Good(rng.usize(0..n)),
                30..=41 if !healthy.is_empty() => Kind::BuildBreak(pick(&mut rng, &healthy)),
                42..=51 if !healthy.is_empty() => Kind::NewFails(pick(&mut rng, &healthy)),
                52..=61 if !healthy.is_empty() => Kind::NewBuilds(pick(&mut rng, &healthy)),
                62..=68 if !healthy.is_empty() => Kind::Throw(pick(&mut rng, &healthy)),
                69..=72 => Kind::WholeEval,
                73..=80 if !sick.is_empty() => Kind::TouchBroken(pick(&mut rng, &sick)),
                81..=87 => Kind::Flaky(rng.usize(0..n)),
                88..=93 => Kind::Readme,
                94..=96 => Kind::Conflict,
                97..=99 if i > 0 => Kind::ConflictsWith(rng.usize(0..i)),
                _ => Kind::Good(rng.usize(0..n)),
            };
            c.changes.push(kind);
        }
        // Which of two conflicting changes lands first would depend on timing if the
        // second could overtake the first.
        for (i, k) in c.changes.iter().enumerate() {
            if matches!(k, Kind::ConflictsWith(_)) {
                c.urgent.remove(&i);
            }
        }
        c
    })
}

/// The package set at one commit: the changes applied on top of the base.
struct World {
    case: Case,
    /// Commit id -> the changes it contains, in order.
    commits: BTreeMap<String, Vec<usize>>,
    merges: BTreeMap<(String, usize), String>,
    tip: String,
    /// drv -> (fails on its own, dependencies' drvs, flaky builds left).
    drvs: BTreeMap<String, (bool, Vec<String>)>,
    flaky_left: BTreeMap<String, u32>,
    builds: u64,
}

fn head_of(i: usize) -> String {
    format!("head{i}")
}

impl World {
    fn new(case: Case) -> World {
        let mut commits = BTreeMap::new();
        commits.insert("base".to_string(), vec![]);
        World {
            case,
            commits,
            merges: BTreeMap::new(),
            tip: "base".into(),
            drvs: BTreeMap::new(),
            flaky_left: BTreeMap::new(),
            builds: 0,
        }
    }

    fn merge(&mut self, parent: &str, change: usize) -> Result<String, String> {
        if self.case.changes[change] == Kind::Conflict {
            return Err("CONFLICT (content): merge conflict in README".into());
        }
        if let Kind::ConflictsWith(j) = self.case.changes[change] {
            if self.commits[parent].contains(&j) {
                return Err(format!(
                    "CONFLICT (content): merge conflict in NEWS with change {j}"
                ));
            }
        }
        let k = (parent.to_string(), change);
        if let Some(c) = self.merges.get(&k) {
            return Ok(c.clone());
        }
        let id = format!("c{}", self.merges.len() + 1);
        let mut content = self.commits[parent].clone();
        content.push(change);
        self.commits.insert(id.clone(), content);
        self.merges.insert(k, id.clone());
        Ok(id)
    }

    fn change_of(head: &str) -> usize {
        head.strip_prefix("head")
            .and_then(|s| s.parse().ok())
            .expect("model head")
    }

    fn drv(&mut self, name: &str, tags: &[String], own_fail: bool, deps: Vec<String>) -> String {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (name, tags, &deps).hash(&mut h);
        let d = format!("/nix/store/{:016x}-{name}.drv", h.finish());
        self.drvs.entry(d.clone()).or_insert((own_fail, deps));
        d
    }

    fn eval(&mut self, commit: &str) -> Evaluation {
        let content = self.commits[commit].clone();
        let c = self.case.clone();
        let mut tags: Vec<Vec<String>> = vec![vec![]; c.n()];
        let mut bad = vec![false; c.n()];
        let mut throws = vec![false; c.n()];
        let mut news: Vec<(usize, usize, bool)> = vec![];
        for &i in &content {
            match &c.changes[i] {
                Kind::WholeEval => {
                    return Evaluation::new(
                        commit.into(),
                        EvalOutcome::Failed(format!(
                            "error: syntax error, unexpected '}}' (change {i})"
                        )),
                        vec![],
                    )
                }
                Kind::Good(p) | Kind::TouchBroken(p) => tags[*p].push(format!("v{i}")),
                Kind::Flaky(p) => tags[*p].push(format!("flaky{i}")),
                Kind::BuildBreak(p) => {
                    tags[*p].push(format!("bad{i}"));
                    bad[*p] = true;
                }
                Kind::Throw(p) => throws[*p] = true,
                Kind::NewFails(d) => news.push((i, *d, true)),
                Kind::NewBuilds(d) => news.push((i, *d, false)),
                Kind::Readme | Kind::Conflict | Kind::ConflictsWith(_) => {}
            }
        }
        let mut res: Vec<Result<String, ()>> = vec![];
        for p in 0..c.n() {
            let deps: Result<Vec<String>, ()> = c.deps[p].iter().map(|&d| res[d].clone()).collect();
            let r = match deps {
                Err(()) => Err(()),
                Ok(_) if throws[p] => Err(()),
                Ok(deps) => {
                    let fails = bad[p] || c.broken.contains(&p);
                    let d = self.drv(&format!("pkg{p}"), &tags[p], fails, deps);
                    if tags[p].iter().any(|t| t.starts_with("flaky")) {
                        self.flaky_left.entry(d.clone()).or_insert(1);
                    }
                    Ok(d)
                }
            };
            res.push(r);
        }
        let mut jobs = vec![];
        for (p, r) in res.iter().enumerate() {
            jobs.push((key(&format!("pkg{p}")), job_result(r, p)));
        }
        for (i, dep, fails) in news {
            let name = format!("new{i}");
            let r = res[dep]
                .clone()
                .map(|d| self.drv(&name, &[], fails, vec![d]));
            jobs.push((key(&name), job_result(&r, dep)));
        }
        Evaluation::new(commit.into(), EvalOutcome::Ok, jobs)
    }

    /// Builds a derivation: its dependencies first (as Nix would), the first failure
    /// is the root.
    fn build(&mut self, drv: &str) -> (OutcomeClass, Option<String>) {
        self.builds += 1;
        let (own, deps) = self.drvs[drv].clone();
        for d in deps {
            if let Some(root) = self.root_failure(&d) {
                return (OutcomeClass::DependencyFailed, Some(root));
            }
        }
        if let Some(n) = self.flaky_left.get_mut(drv).filter(|n| **n > 0) {
            *n -= 1;
            return (OutcomeClass::Failed, None);
        }
        if own {
            (OutcomeClass::Failed, None)
        } else {
            (OutcomeClass::Success, None)
        }
    }

    fn root_failure(&self, drv: &str) -> Option<String> {
        let (own, deps) = &self.drvs[drv];
        for d in deps {
            if let Some(r) = self.root_failure(d) {
                return Some(r);
            }
        }
        own.then(|| drv.to_string())
    }
}

fn key(attr: &str) -> JobKey {
    JobKey {
        attr: attr.into(),
        system: SYS.into(),
    }
}

fn job_result(r: &Result<String, ()>, p: usize) -> JobResult {
    match r {
        Ok(d) => JobResult::Ok(Job {
            drv_path: d.clone(),
            outputs: vec![("out".into(), d.trim_end_matches(".drv").into())],
            maintainers: vec![],
        }),
        Err(()) => JobResult::Error(format!("error: pkg{p} (or a dependency) threw")),
    }
}

fn config(batch_max: usize, window: usize, mass: Option<usize>) -> CoreConfig {
    CoreConfig {
        repos: BTreeMap::from([(
            REPO.to_string(),
            RepoConfig {
                lanes: BTreeMap::from([(
                    BRANCH.to_string(),
                    LaneConfig {
                        batch_max,
                        required: vec![],
                        batch_delay_ms: 0,
                        build_priority: None,
                        breakage: Default::default(),
                        mass_rebuild_threshold: mass,
                        window,
                        window_floor: 1,
                    },
                )]),
            },
        )]),
        builders: vec![scheduler::BuilderSpec {
            id: "local".into(),
            systems: [SYS.to_string()].into(),
            supported: Default::default(),
            mandatory: Default::default(),
            max_jobs: 4,
            speed: 1.0,
        }],
        ..CoreConfig::default()
    }
}

struct Run {
    core: Core,
    world: World,
    now: Millis,
    queue: VecDeque<Command>,
    ids: Vec<ChangeId>,
    /// Infrastructure failures still to report: preparations, evaluations, probes.
    infra: (u32, u32, u32),
    /// Times each was answered with an infrastructure failure, and when.
    infra_at: Vec<Millis>,
}

impl Run {
    fn perform(&mut self, cmd: Command) -> Option<Input> {
        let w = &mut self.world;
        Some(match cmd {
            Command::Record(_)
            | Command::Upload { .. }
            | Command::PublishStage { .. }
            | Command::CancelBuild { .. }
            | Command::Verify { .. } => return None,
            Command::Prepare { cand, .. } if self.infra.0 > 0 => {
                self.infra.0 -= 1;
                self.infra_at.push(self.now);
                Input::Candidate(CandidateInput::Prepared {
                    cand,
                    result: Err("git fetch: Could not resolve host: example.org".into()),
                })
            }
            Command::Evaluate { repo, commit } if self.infra.1 > 0 => {
                self.infra.1 -= 1;
                self.infra_at.push(self.now);
                Input::Build(BuildInput::EvalFailed {
                    repo,
                    commit,
                    error: "nix-instantiate was killed by signal 9".into(),
                })
            }
            Command::Probe { probe, .. } if self.infra.2 > 0 => {
                self.infra.2 -= 1;
                self.infra_at.push(self.now);
                Input::Candidate(CandidateInput::Probed {
                    probe,
                    result: Err("error: writing to file: No space left on device".into()),
                })
            }
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
                    let i = World::change_of(&git_ref);
                    heads.push((id, git_ref.clone()));
                    match w.merge(&cur, i) {
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
            Command::Evaluate { commit, .. } => Input::Build(BuildInput::Evaluated {
                eval: Arc::new(w.eval(&commit)),
            }),
            Command::Build { drv, builder, .. } => {
                let (class, root_drv) = w.build(&drv);
                Input::Build(BuildInput::Built(BuildReport {
                    drv_path: drv.clone(),
                    class,
                    log_tail: format!("error: builder for '{drv}' failed"),
                    root_drv,
                    builder,
                    duration_ms: 1000,
                    log_path: None,
                }))
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
                    version: "2.24.0".into(),
                }),
            }),
            Command::Probe {
                probe,
                base,
                heads,
                attrs,
                ..
            } => {
                let mut cur = Ok(base);
                for h in &heads {
                    cur = cur.and_then(|c| w.merge(&c, World::change_of(h)));
                }
                let result = match cur {
                    Err(why) => ProbeResult::Conflict(why),
                    Ok(commit) => {
                        let eval = w.eval(&commit);
                        match attrs {
                            None => ProbeResult::Full {
                                eval: Arc::new(eval),
                            },
                            // Absent attributes yield nothing, as the Nix adapter does.
                            Some(attrs) if eval.failed() => ProbeResult::Attrs {
                                commit,
                                jobs: attrs
                                    .iter()
                                    .map(|a| (key(a), JobResult::Error("syntax error".into())))
                                    .collect(),
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
                let result = if w.tip == old {
                    w.tip = new;
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
            | Command::PublishArtifacts { .. }
            | Command::PrepareGroup { .. }) => {
                panic!("no channels or merge groups here: {other:?}")
            }
        })
    }

    fn pump(&mut self) {
        for c in self.core.take_commands() {
            if let Command::Record(Record::Event { text, .. }) = &c {
                if std::env::var_os("MQ_PROP_LOG").is_some() {
                    eprintln!("{text}");
                }
            }
            self.queue.push_back(c);
        }
    }

    fn run(&mut self) {
        let mut steps = 0;
        loop {
            steps += 1;
            assert!(steps < 50_000, "the loop does not converge");
            self.now += 10;
            let Some(cmd) = self.queue.pop_front() else {
                let Some(t) = self.core.next_wakeup() else {
                    return;
                };
                self.now = self.now.max(t);
                self.core.handle(Input::Tick, self.now);
                self.pump();
                continue;
            };
            if let Some(input) = self.perform(cmd) {
                self.core.handle(input, self.now);
                self.pump();
            }
        }
    }
}

/// A change `i` that does not merge on top of `j`: rejected exactly when `j` landed
/// before it, merged exactly when it landed with `j` absent or after it (`tip`: the
/// changes on the branch, in order). Never rejected for a `j` that did not land.
fn conflicts_consistent(
    case: &Case,
    tip: &[usize],
    state: impl Fn(usize) -> ChangeState,
) -> Result<(), String> {
    for (i, kind) in case.changes.iter().enumerate() {
        let Kind::ConflictsWith(j) = *kind else {
            continue;
        };
        let pos = |c: usize| tip.iter().position(|&x| x == c);
        let ok = match state(i) {
            ChangeState::Rejected => pos(j).is_some(),
            ChangeState::Merged => match (pos(i), pos(j)) {
                (Some(pi), Some(pj)) => pi < pj,
                (Some(_), None) => true,
                _ => false,
            },
            _ => false,
        };
        if !ok {
            return Err(format!(
                "{i} {kind:?} is {:?}, #{j} is {:?}, the branch holds {tip:?}",
                state(i),
                state(j)
            ));
        }
    }
    Ok(())
}

/// Runs a case to the end; returns (innocents rejected, messages of failed checks,
/// culprits, extra builds).
fn run_case(case: &Case) -> Result<(usize, u64), String> {
    run_case_with(case, (0, 0, 0)).map(|(c, e, _)| (c, e))
}

/// As `run_case`, with infrastructure failures of preparation, evaluation and probes
/// injected first; also returns when they were answered.
fn run_case_with(case: &Case, infra: (u32, u32, u32)) -> Result<(usize, u64, Vec<Millis>), String> {
    let mut run = Run {
        core: Core::new(config(case.batch_max, case.window, case.mass)),
        world: World::new(case.clone()),
        now: 1_700_000_000_000,
        queue: VecDeque::new(),
        ids: vec![],
        infra,
        infra_at: vec![],
    };
    run.pump();
    for i in 0..case.changes.len() {
        let c = run
            .core
            .submit(
                Submission {
                    repo: REPO.into(),
                    target: BRANCH.into(),
                    git_ref: head_of(i),
                    head: head_of(i),
                    title: format!("{:?}", case.changes[i]),
                    author: "alice".into(),
                    priority: if case.urgent.contains(&i) {
                        Priority::Urgent
                    } else {
                        Priority::Normal
                    },
                    pr: None,
                    approver: None,
                },
                run.now,
            )
            .expect("accepted");
        run.ids.push(c.id);
    }
    run.pump();
    run.run();
    let mut culprits = 0;
    let tip = run.world.commits[&run.world.tip].clone();
    conflicts_consistent(case, &tip, |i| {
        run.core.change(run.ids[i]).expect("known").state
    })?;
    for (i, kind) in case.changes.iter().enumerate() {
        let ch = run.core.change(run.ids[i]).expect("known");
        let reason = ch.reason.clone().unwrap_or_default();
        if matches!(kind, Kind::ConflictsWith(_)) {
            continue;
        }
        if case.culprit(i) {
            culprits += 1;
            if ch.state != ChangeState::Rejected {
                return Err(format!("culprit {i} {kind:?} is {:?}", ch.state));
            }
            if let Some(job) = case.own_job(i) {
                // Its own job, or a job that failed on it as a dependency.
                let own = reason.contains(&format!("job {job} "))
                    || reason.contains(&format!("-{job}.drv failed)"));
                if !own {
                    return Err(format!(
                        "culprit {i} {kind:?} not blamed for {job}: {reason}"
                    ));
                }
            }
        } else if ch.state != ChangeState::Merged {
            return Err(format!("innocent {i} {kind:?} is {:?}: {reason}", ch.state));
        }
    }
    // The branch holds exactly the innocent changes: nothing else landed, speculation
    // or not.
    let landed: BTreeSet<usize> = run.world.commits[&run.world.tip].iter().copied().collect();
    let innocent: BTreeSet<usize> = (0..case.changes.len())
        .filter(|&i| !case.culprit(i))
        .filter(|&i| {
            !matches!(case.changes[i], Kind::ConflictsWith(_))
                || run.core.change(run.ids[i]).expect("known").state == ChangeState::Merged
        })
        .collect();
    if landed != innocent {
        return Err(format!(
            "the branch holds {landed:?}, the innocents are {innocent:?}"
        ));
    }
    stage_props::routed_by_size(case, |i| run.core.change(run.ids[i]).expect("known"))?;
    let extra: u64 = run.core.candidates().map(|c| c.extra_builds as u64).sum();
    Ok((culprits, extra, run.infra_at))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Infrastructure trouble while preparing, evaluating or probing changes no verdict.
    #[test]
    fn infrastructure_failures_change_no_verdict(
        case in case(),
        infra in (0u32..4, 0u32..4, 0u32..4),
    ) {
        if let Err(msg) = run_case_with(&case, infra) {
            prop_assert!(false, "{msg}\n{case:?} {infra:?}");
        }
    }
}

#[test]
fn failed_evaluations_and_preparations_are_retried_with_a_growing_delay() {
    let case = Case {
        deps: vec![vec![], vec![0]],
        broken: BTreeSet::new(),
        changes: vec![Kind::Good(1)],
        batch_max: 8,
        window: 1,
        urgent: BTreeSet::new(),
        mass: None,
    };
    let (_, _, at) = run_case_with(&case, (3, 3, 0)).unwrap_or_else(|m| panic!("{m}"));
    assert_eq!(at.len(), 6);
    let gaps: Vec<Millis> = at.windows(2).map(|w| w[1] - w[0]).collect();
    // 5 s, 10 s for the preparations; then the evaluations from 5 s again.
    assert!(gaps[0] >= 5_000 && gaps[1] >= 10_000, "{gaps:?}");
    assert!(gaps[1] > gaps[0], "the delay grows: {gaps:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn innocents_land_and_culprits_are_rejected_for_their_own_jobs(case in case()) {
        if let Err(msg) = run_case(&case) {
            prop_assert!(false, "{msg}\n{case:?}");
        }
    }
}

/// Isolation cost over many generated batches, printed for the record (`cargo test
/// --release --lib attribution_props -- --nocapture`); bounded so a regression shows.
#[test]
fn extra_builds_per_culprit_stay_low() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut culprits, mut extra) = (0usize, 0u64);
    for _ in 0..1000 {
        let case = case().new_tree(&mut runner).expect("case").current();
        let (c, e) = run_case(&case).unwrap_or_else(|m| panic!("{m}\n{case:?}"));
        culprits += c;
        extra += e;
    }
    let per = extra as f64 / culprits.max(1) as f64;
    println!(
        "1000 generated batches: {culprits} culprits, {extra} extra builds, {per:.2} per culprit"
    );
    assert!(per <= 1.0, "{per:.2} extra builds per culprit");
}

#[test]
fn the_smallest_case_a_bump_and_a_new_failing_package() {
    for order in [
        vec![
            Kind::BuildBreak(0),
            Kind::BuildBreak(3),
            Kind::NewFails(3),
            Kind::Good(1),
            Kind::Good(1),
        ],
        vec![Kind::Good(1), Kind::NewFails(0)],
        vec![Kind::NewFails(0), Kind::Good(1)],
        vec![
            Kind::Readme,
            Kind::NewFails(2),
            Kind::Good(2),
            Kind::BuildBreak(1),
        ],
    ] {
        let case = Case {
            deps: vec![vec![], vec![], vec![1], vec![2]],
            broken: BTreeSet::new(),
            changes: order,
            batch_max: 8,
            window: 4,
            urgent: BTreeSet::new(),
            mass: None,
        };
        run_case(&case).unwrap_or_else(|m| panic!("{m}"));
    }
}

#[cfg(test)]
mod grace_props;
#[cfg(test)]
mod stage_props;
