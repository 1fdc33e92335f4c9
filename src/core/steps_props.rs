//! Property tests of step-level dispatch over generated derivation graphs.
//!
//! A generated DAG of derivations, some of which fail when built, and a generated set of
//! requested jobs. The shell is played honestly: inspecting a derivation reports as
//! `missing` the inputs not built yet, building one succeeds unless it is a failing one.
//! Expected, from the case alone: a job is `dependency-failed` naming a failing derivation
//! among its inputs (transitively) when there is one; else it fails when it is a failing
//! one and succeeds otherwise. Along the way no step is dispatched before all of its inputs built, nothing
//! is built twice, and nothing is left queued.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::builds::{BuildNews, Builds};
use super::effects::Effects;
use super::outcome::{BuildReport, OutcomeClass};
use super::scheduler::{BuilderSpec, StepInfo};
use super::{Command, CoreConfig};

const SYS: &str = "x86_64-linux";

#[derive(Debug, Clone)]
struct Case {
    /// Inputs of derivation `i`, all `< i`.
    inputs: Vec<Vec<usize>>,
    failing: BTreeSet<usize>,
    jobs: Vec<usize>,
}

fn drv(i: usize) -> String {
    format!("/nix/store/{i:032}-d{i}.drv")
}

fn index(d: &str) -> usize {
    d.rsplit("-d")
        .next()
        .and_then(|s| s.strip_suffix(".drv"))
        .and_then(|s| s.parse().ok())
        .expect("a generated drv")
}

fn case() -> impl Strategy<Value = Case> {
    (2usize..30)
        .prop_flat_map(|n| {
            let inputs = (0..n)
                .map(|i| {
                    if i == 0 {
                        Just(vec![]).boxed()
                    } else {
                        proptest::collection::btree_set(0..i, 0..=i.min(3))
                            .prop_map(|s| s.into_iter().collect::<Vec<_>>())
                            .boxed()
                    }
                })
                .collect::<Vec<_>>();
            (
                inputs,
                proptest::collection::btree_set(0..n, 0..=n / 4),
                proptest::collection::btree_set(0..n, 1..=n.min(6)),
            )
        })
        .prop_map(|(inputs, failing, jobs)| Case {
            inputs,
            failing,
            jobs: jobs.into_iter().collect(),
        })
}

fn closure(c: &Case, i: usize) -> BTreeSet<usize> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![i];
    while let Some(x) = todo.pop() {
        if seen.insert(x) {
            todo.extend(&c.inputs[x]);
        }
    }
    seen
}

fn cfg(slots: usize) -> CoreConfig {
    CoreConfig {
        builders: vec![
            BuilderSpec {
                id: "b1".into(),
                systems: [SYS.to_string()].into(),
                supported: Default::default(),
                mandatory: Default::default(),
                max_jobs: slots,
                speed: 1.0,
            },
            BuilderSpec {
                id: "b2".into(),
                systems: [SYS.to_string()].into(),
                supported: Default::default(),
                mandatory: Default::default(),
                max_jobs: 1,
                speed: 2.0,
            },
        ],
        failure_retries: 0,
        ..CoreConfig::default()
    }
}

/// Each job's class and root.
type Verdicts = BTreeMap<usize, (OutcomeClass, Option<String>)>;

/// Plays the shell until nothing is left to do; returns the verdicts and how often each
/// derivation was built.
fn run(c: &Case, slots: usize) -> (Verdicts, Vec<u32>) {
    let cfg = cfg(slots);
    let mut b = Builds::new(&cfg);
    let mut fx = Effects::default();
    let mut built = vec![0u32; c.inputs.len()];
    let mut ok = BTreeSet::new();
    for &j in &c.jobs {
        b.request_build(&drv(j), 2, 0, &mut fx);
    }
    let mut now = 0;
    for _round in 0..10_000 {
        b.dispatch(&cfg, now, &mut fx);
        let cmds = fx.take();
        if cmds.is_empty() {
            break;
        }
        let mut inspected = vec![];
        for cmd in cmds {
            match cmd {
                Command::Inspect { drvs } => {
                    for d in drvs {
                        let i = index(&d);
                        let missing = c.inputs[i]
                            .iter()
                            .filter(|x| !ok.contains(*x))
                            .map(|&x| drv(x))
                            .collect();
                        let info = StepInfo {
                            system: SYS.into(),
                            inputs: c.inputs[i].iter().map(|&x| drv(x)).collect(),
                            missing,
                            ..StepInfo::default()
                        };
                        inspected.push((d, Ok(info)));
                    }
                }
                Command::Build {
                    drv: d, builder, ..
                } => {
                    let i = index(&d);
                    for x in &c.inputs[i] {
                        assert!(ok.contains(x), "{d} dispatched before its input d{x} built");
                    }
                    built[i] += 1;
                    let class = if c.failing.contains(&i) {
                        OutcomeClass::Failed
                    } else {
                        ok.insert(i);
                        OutcomeClass::Success
                    };
                    let r = BuildReport {
                        drv_path: d,
                        class,
                        log_tail: String::new(),
                        root_drv: None,
                        builder,
                        duration_ms: 1,
                        log_path: None,
                    };
                    now += 1;
                    let news = b.on_built(&cfg, r, now, &mut fx);
                    assert!(matches!(news, BuildNews::Verdict(_)), "{news:?}");
                    while b.take_followups().is_some() {}
                }
                // The referrers query is the shell's second way to the same end; answered
                // empty, the parked steps alone must carry failures down.
                _ => {}
            }
        }
        if !inspected.is_empty() {
            b.on_inspected(&cfg, inspected, |_| None, now, &mut fx);
            while b.take_followups().is_some() {}
        }
    }
    assert_eq!(b.scheduler.queued(), 0, "nothing left queued");
    assert_eq!(b.steps.parked(), 0, "nothing left parked");
    let verdicts = c
        .jobs
        .iter()
        .map(|&j| {
            let m = b.known(&drv(j), now).expect("every job has a verdict");
            (j, (m.class, m.root_drv.clone()))
        })
        .collect();
    (verdicts, built)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn every_job_gets_the_verdict_its_closure_implies(c in case(), slots in 1usize..4) {
        let (verdicts, built) = run(&c, slots);
        for (&j, (class, root)) in &verdicts {
            // Failing derivations among the job's inputs, transitively (not the job itself).
            let mut cl = closure(&c, j);
            cl.remove(&j);
            let bad: BTreeSet<usize> = cl.intersection(&c.failing).copied().collect();
            if bad.is_empty() && !c.failing.contains(&j) {
                prop_assert_eq!(*class, OutcomeClass::Success, "d{}", j);
            } else if bad.is_empty() {
                prop_assert_eq!(*class, OutcomeClass::Failed, "d{}", j);
            } else {
                prop_assert_eq!(*class, OutcomeClass::DependencyFailed, "d{}", j);
                let r = index(root.as_deref().expect("a root is named"));
                prop_assert!(bad.contains(&r), "d{} blamed on d{} outside {:?}", j, r, bad);
                prop_assert_eq!(built[j], 0, "d{} was built though an input failed", j);
            }
        }
        for (i, n) in built.iter().enumerate() {
            prop_assert!(*n <= 1, "d{} built {} times", i, n);
        }
    }
}
