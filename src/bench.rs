//! `mergequeue bench ...`: measurements recorded in docs/benchmarks.md.

use std::process::ExitCode;
use std::time::Instant;

use crate::evaluation::{diff, EvalOutcome, Evaluation, Job, JobKey, JobResult};

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
                maintainers: vec!["alice".into()],
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
    }
}
