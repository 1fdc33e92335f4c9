//! `mergequeue bench ...`: measurements recorded in docs/benchmarks.md.

use std::process::ExitCode;
use std::time::Instant;

use crate::core::evaluation::{diff, EvalOutcome, Evaluation, Job, JobKey, JobResult};

#[derive(clap::Subcommand)]
pub enum Bench {
    /// Diff two synthetic evaluations of N jobs each (time and peak memory).
    Diff {
        #[arg(long, default_value_t = 150_000)]
        jobs: usize,
        /// Fraction of jobs whose outputs differ between the two evaluations.
        #[arg(long, default_value_t = 0.05)]
        changed: f64,
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Scheduler decisions with a deep queue: N queued steps over B simulated builders.
    Schedule {
        #[arg(long, default_value_t = 1_000_000)]
        steps: usize,
        #[arg(long, default_value_t = 100)]
        builders: usize,
        /// Decisions measured after the initial fill.
        #[arg(long, default_value_t = 200_000)]
        decisions: usize,
    },
    /// Coordinator overhead in a real run: from the last build result of a candidate to
    /// the target pushed (real nix, git and the real server).
    Landing {
        /// Changes landed one after another (one candidate each).
        #[arg(long, default_value_t = 15)]
        changes: usize,
        #[arg(long, default_value_t = 100)]
        packages: usize,
    },
    /// The coordinator under load (real server): submissions per second, API read
    /// latency and RSS with N queued changes, then RSS and database size as M more pass
    /// through under retention.
    Load {
        #[arg(long, default_value_t = 10_000)]
        queued: usize,
        #[arg(long, default_value_t = 100_000)]
        through: usize,
        #[arg(long, default_value_t = 16)]
        clients: usize,
    },
    /// The web UI's queue page rendered from a queue of N changes (docs/ui.md).
    Ui {
        #[arg(long, default_value_t = 10_000)]
        changes: usize,
        #[arg(long, default_value_t = 21)]
        runs: usize,
    },
}

/// A plausible Nixpkgs-like evaluation: nested attribute names, two systems' worth of
/// store paths, some jobs with two outputs, a few evaluation errors.
pub fn synthetic_eval(n: usize, commit: &str, changed: f64, seed: u64) -> Evaluation {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut jobs = Vec::with_capacity(n);
    for i in 0..n {
        let attr = match i % 10 {
            0 => format!("python3Packages.pkg-{i}"),
            1 => format!("haskellPackages.pkg-{i}"),
            _ => format!("pkg-{i}"),
        };
        let key = JobKey {
            attr,
            system: "x86_64-linux".into(),
        };
        let changed_here = rng.f64() < changed;
        let hash = |salt: u64| {
            format!(
                "{:032x}",
                (i as u64).wrapping_mul(0x9e3779b97f4a7c15) ^ salt
            )
        };
        let salt = if changed_here { 0xabcdef } else { 0 };
        if i % 997 == 0 {
            jobs.push((
                key,
                JobResult::Error(format!("error: package pkg-{i} is marked as broken")),
            ));
            continue;
        }
        let mut outputs = vec![(
            "out".to_string(),
            format!("/nix/store/{}-pkg-{i}-1.0", hash(salt)),
        )];
        if i % 4 == 0 {
            outputs.push((
                "dev".to_string(),
                format!("/nix/store/{}-pkg-{i}-1.0-dev", hash(salt + 1)),
            ));
        }
        jobs.push((
            key,
            JobResult::Ok(Job {
                drv_path: format!("/nix/store/{}-pkg-{i}-1.0.drv", hash(salt + 2)),
                outputs,
                maintainers: vec![crate::core::evaluation::Maintainer::handle("alice")],
            }),
        ));
    }
    Evaluation::new(commit.into(), EvalOutcome::Ok, jobs)
}

fn max_rss_mb() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_maxrss as f64 / 1024.0
}

pub async fn run(which: Bench) -> anyhow::Result<ExitCode> {
    match which {
        Bench::Diff {
            jobs,
            changed,
            runs,
        } => {
            let old = synthetic_eval(jobs, "old", 0.0, 1);
            let new = synthetic_eval(jobs, "new", changed, 2);
            let mut times = vec![];
            let mut last = None;
            for _ in 0..runs.max(1) {
                let t = Instant::now();
                let d = diff(&old, &new);
                times.push(t.elapsed().as_secs_f64() * 1000.0);
                last = Some(d);
            }
            times.sort_by(|a, b| a.total_cmp(b));
            let d = last.expect("one run");
            println!(
                "diff of two {jobs}-job evaluations: median {:.1} ms (min {:.1}, max {:.1}, {} runs); \
                 {} changed, {} added, {} removed, {} failing; peak RSS {:.0} MB (both evaluations in memory)",
                times[times.len() / 2],
                times[0],
                times[times.len() - 1],
                times.len(),
                d.changed.len(),
                d.added.len(),
                d.removed.len(),
                d.failing.len(),
                max_rss_mb()
            );
            Ok(ExitCode::SUCCESS)
        }
        Bench::Landing { changes, packages } => landing(changes, packages).await,
        Bench::Load {
            queued,
            through,
            clients,
        } => {
            print!(
                "{}",
                crate::tools::bench_load::run(queued, through, clients).await?
            );
            Ok(ExitCode::SUCCESS)
        }
        Bench::Ui { changes, runs } => {
            println!("{}", crate::shell::api::ui::bench::run(changes, runs)?);
            Ok(ExitCode::SUCCESS)
        }
        Bench::Schedule {
            steps,
            builders,
            decisions,
        } => {
            schedule(steps, builders, decisions);
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn landing(changes: usize, packages: usize) -> anyhow::Result<ExitCode> {
    use crate::tools::harness::{BranchOpts, Harness};
    use hyper::Method;
    crate::tools::prereq::ensure(&["nix-instantiate", "nix-store", "git"])?;
    let dir = tempfile::Builder::new()
        .prefix("mergequeue-bench-")
        .tempdir()?;
    let spec = crate::tools::fixture::Spec {
        packages,
        seed: 5,
        ..Default::default()
    };
    let opts = BranchOpts {
        batch_max: 1,
        ..BranchOpts::default()
    };
    let mut h = Harness::create(dir.path(), &spec, &opts, &std::env::current_exe()?)?;
    let leaves = h.set.healthy_leaves();
    anyhow::ensure!(
        leaves.len() >= changes,
        "only {} healthy leaves; use more --packages",
        leaves.len()
    );
    for (i, leaf) in leaves.iter().take(changes).enumerate() {
        let leaf = leaf.clone();
        h.change(&format!("c{i}"), "bump", move |s| s.bump(&leaf).map(|_| ()))?;
    }
    h.start_server().await?;
    let mut ids = vec![];
    for i in 0..changes {
        ids.push(
            h.submit(&format!("c{i}"), "bump", "normal").await?["id"]
                .as_u64()
                .unwrap_or(0),
        );
    }
    h.wait_final(&ids, std::time::Duration::from_secs(600))
        .await?;
    let cands = h
        .client
        .ok(Method::GET, "/api/v1/repos/pkgs/candidates", None)
        .await?;
    let mut overhead: Vec<i64> = cands
        .as_array()
        .into_iter()
        .flatten()
        .filter(|k| {
            k["summary"]
                .as_str()
                .is_some_and(|s| s.starts_with("landed"))
        })
        .filter_map(|k| Some(k["finished_at"].as_i64()? - k["last_build_at"].as_i64()?))
        .collect();
    overhead.sort();
    anyhow::ensure!(!overhead.is_empty(), "no candidate landed after a build");
    h.stop_server(false)?;
    println!(
        "last build result -> target pushed, over {} landed candidates: median {} ms, min {} ms, max {} ms",
        overhead.len(),
        overhead[overhead.len() / 2],
        overhead[0],
        overhead[overhead.len() - 1]
    );
    Ok(ExitCode::SUCCESS)
}

/// A Hydra-like fleet (x86_64 and aarch64, some big-parallel/kvm builders) and a queue
/// of steps with a realistic mix of systems and features. Each measured decision is one
/// build finishing and the scheduler choosing what runs next.
fn schedule(steps: usize, builders: usize, decisions: usize) {
    use crate::core::scheduler::{BuilderSpec, Scheduler, StepInfo};
    let mut rng = fastrand::Rng::with_seed(7);
    let specs: Vec<BuilderSpec> = (0..builders)
        .map(|i| {
            let (system, supported): (&str, &[&str]) = match i % 10 {
                0..=5 => ("x86_64-linux", &[]),
                6 => ("x86_64-linux", &["big-parallel", "kvm"]),
                7 | 8 => ("aarch64-linux", &[]),
                _ => ("aarch64-linux", &["big-parallel"]),
            };
            BuilderSpec {
                id: format!("ssh-ng://builder{i}"),
                systems: [system.to_string()].into(),
                supported: supported.iter().map(|s| s.to_string()).collect(),
                mandatory: Default::default(),
                max_jobs: 8,
                speed: 1.0 + (i % 3) as f64,
            }
        })
        .collect();
    let mut s = Scheduler::new(specs);
    let rss0 = max_rss_mb();
    let t = Instant::now();
    for i in 0..steps {
        let drv = format!(
            "/nix/store/{:032x}-pkg-{i}.drv",
            (i as u64).wrapping_mul(0x9e3779b97f4a7c15)
        );
        let system = if rng.u8(..10) < 7 {
            "x86_64-linux"
        } else {
            "aarch64-linux"
        };
        let features = match rng.u8(..100) {
            0..=1 => vec!["big-parallel".to_string()],
            2 => vec!["kvm".to_string()],
            _ => vec![],
        };
        let features = if system == "aarch64-linux" && features == ["kvm"] {
            vec![]
        } else {
            features
        };
        s.enqueue(&drv, rng.u8(..4));
        let info = StepInfo {
            system: system.into(),
            features: features.into_iter().collect(),
            inputs: vec![],
            missing: vec![],
            weight_ms: Some(rng.u64(..3_600_000)),
        };
        s.set_info(&drv, info);
    }
    let fill = t.elapsed();
    let rss_filled = max_rss_mb();
    let mut running: Vec<(String, String)> = s.dispatch(0);
    let mut times = Vec::with_capacity(decisions / 1000 + 1);
    let mut made = 0;
    while made < decisions && !running.is_empty() {
        let t = Instant::now();
        for _ in 0..1000 {
            if running.is_empty() {
                break;
            }
            let (drv, b) = running.swap_remove(rng.usize(..running.len()));
            s.finish(&drv, &b, None, 1000);
            let next = s.dispatch(0);
            made += next.len().max(1);
            running.extend(next);
        }
        times.push(t.elapsed().as_secs_f64() * 1e6 / 1000.0);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    println!(
        "scheduler: {steps} queued steps, {builders} builders ({} slots): enqueue {:.2} s; \
         per decision (finish + dispatch) median {:.2} µs, p90 {:.2} µs over {} decisions; \
         peak RSS {:.0} MB after filling the queue, {:.0} MB after the decisions ({:.0} MB before)",
        builders * 8,
        fill.as_secs_f64(),
        times[times.len() / 2],
        times[times.len() * 9 / 10],
        made,
        rss_filled,
        max_rss_mb(),
        rss0
    );
}
