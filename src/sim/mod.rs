//! Discrete-event simulation of the merge queue at Nixpkgs scale: the product's own core
//! (`crate::core::Core`) under a virtual clock, with simulated git, evaluation, builders
//! and a generated package set; baselines (one at a time, bors, GitHub) for comparison;
//! a fault mode that crashes and restores the core and checks the invariants after every
//! step. See docs/simulation.md.

pub mod breakage;
pub mod builders;
pub mod engine;
pub mod graph;
pub mod mq;
pub mod policy;
pub mod pooled;
pub mod report;
pub mod scenario;
pub mod svg;
pub mod world;

use std::path::PathBuf;
use std::process::ExitCode;

pub use report::Report;
pub use scenario::Scenario;

pub const POLICIES: [&str; 5] = [
    "mergequeue",
    "mergequeue-grace",
    "one-at-a-time",
    "bors",
    "github",
];

#[derive(clap::Args, Debug, Clone)]
pub struct SimArgs {
    /// Scenario file (TOML), e.g. scenarios/nixpkgs.toml.
    #[arg(long)]
    pub scenario: PathBuf,
    /// Seed (default: the scenario's). The same scenario and seed give the same report.
    #[arg(long)]
    pub seed: Option<u64>,
    /// mergequeue (the real core), mergequeue-grace (the real core, every lane under the
    /// scenario's `[breakage]` grace policy), one-at-a-time, bors or github.
    #[arg(long, default_value = "mergequeue")]
    pub policy: String,
    /// Run every policy on the same workload and seed and print the comparison table.
    #[arg(long)]
    pub compare: bool,
    /// Crash and restore the core at random points, lose and duplicate build results,
    /// kill builders; check the invariants after every step.
    #[arg(long)]
    pub faults: bool,
    /// Run these seeds (`A..B`, both included) and report percentiles pooled over every
    /// change of every seed, and the worst seed; with --compare, for every policy.
    #[arg(long, conflicts_with = "seed")]
    pub seeds: Option<String>,
    /// Override the scenario's number of days with arrivals.
    #[arg(long)]
    pub days: Option<f64>,
    /// Write the JSON report (all policies with --compare) here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the SVG picture here.
    #[arg(long)]
    pub svg: Option<PathBuf>,
}

/// Runs one policy; the report says whether an invariant broke.
pub fn simulate(sc: &Scenario, seed: u64, policy: &str, faults: bool) -> anyhow::Result<Report> {
    simulate_with(sc, seed, policy, faults, &SimOptions::default())
}

/// How mergequeue itself is run in a simulation (the defaults are `simulate`'s).
#[derive(Debug, Default, Clone)]
pub struct SimOptions {
    /// Write the records to the real SQLite store at this (new) file, and restore every
    /// restart after a crash from it.
    pub sqlite: Option<std::path::PathBuf>,
    /// Final changes and finished candidates the core keeps in memory (default: few, so
    /// that pruning runs often).
    pub keep_final: Option<usize>,
}

/// [`simulate`] with [`SimOptions`].
pub fn simulate_with(
    sc: &Scenario,
    seed: u64,
    policy: &str,
    faults: bool,
    opts: &SimOptions,
) -> anyhow::Result<Report> {
    let nlanes = sc.lanes.len();
    let mut cfg = mq::core_config(sc, None);
    if let Some(k) = opts.keep_final {
        cfg.keep_final = k;
    }
    let mut queue: Box<dyn engine::Queue> = match (policy, &opts.sqlite) {
        ("mergequeue", Some(path)) => Box::new(mq::CoreQueue::on_sqlite(cfg, path)?),
        (_, Some(_)) => anyhow::bail!("only the mergequeue policy runs on a SQLite store"),
        ("mergequeue", None) => Box::new(mq::CoreQueue::new(cfg)),
        ("mergequeue-grace", None) => {
            let mut cfg = cfg;
            for repo in cfg.repos.values_mut() {
                for lane in repo.lanes.values_mut() {
                    lane.breakage = sc.breakage.policy();
                }
            }
            Box::new(mq::CoreQueue::new(cfg))
        }
        ("one-at-a-time", None) => Box::new(mq::CoreQueue::new(mq::core_config(sc, Some(1)))),
        ("bors", None) => Box::new(policy::Baseline::new(policy::Kind::Bors, nlanes)),
        ("github", None) => Box::new(policy::Baseline::new(policy::Kind::Github, nlanes)),
        (other, None) => anyhow::bail!("unknown policy {other:?} (one of {})", POLICIES.join(", ")),
    };
    let faults = faults && matches!(policy, "mergequeue" | "mergequeue-grace" | "one-at-a-time");
    let (m, w, attempts, slot_ms) = engine::run(sc, seed, faults, queue.as_mut());
    let staged = queue.staged();
    let mut r = report::build(sc, seed, policy, faults, &m, &w, attempts, slot_ms, &staged);
    r.breakage =
        queue
            .breakage((r.simulated_hours * 3.6e6) as i64)
            .map(|b| breakage::BreakageStats {
                world_marked_broken: w.marked_broken.len(),
                ..b
            });
    Ok(r)
}

pub fn to_json(r: &[Report]) -> String {
    let v = if r.len() == 1 {
        serde_json::to_string_pretty(&r[0])
    } else {
        serde_json::to_string_pretty(r)
    };
    v.expect("serialisable") + "\n"
}

/// The size from which a change counts as a mass rebuild in the pooled figures: the
/// first lane's `mass_rebuild_threshold`, else Nixpkgs' 1,000.
fn mass_size(sc: &Scenario) -> usize {
    sc.lanes
        .first()
        .and_then(|l| l.mass_rebuild_threshold)
        .unwrap_or(1000)
}

fn main_seeds(
    args: &SimArgs,
    sc: &Scenario,
    seeds: &[u64],
    policies: &[&str],
) -> anyhow::Result<ExitCode> {
    let mut all = vec![];
    let mut violation = None;
    for p in policies {
        let t = std::time::Instant::now();
        let mut reports = vec![];
        for &seed in seeds {
            let r = simulate(sc, seed, p, args.faults)?;
            if let Some(v) = &r.violation {
                violation.get_or_insert((p.to_string(), seed, v.clone()));
            }
            reports.push(r);
        }
        eprintln!(
            "simulated {p}: {} seeds in {:.1} s wall",
            seeds.len(),
            t.elapsed().as_secs_f64()
        );
        all.push((pooled::pooled(&reports, mass_size(sc)), reports));
    }
    let summary: Vec<pooled::Pooled> = all.iter().map(|(p, _)| p.clone()).collect();
    print!("{}", pooled::table(&summary));
    if let Some(path) = &args.json {
        let v = serde_json::json!({
            "pooled": summary,
            "runs": all.iter().flat_map(|(_, r)| r).collect::<Vec<_>>(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&v)? + "\n")?;
    }
    if let Some((p, seed, v)) = violation {
        eprintln!("invariant violated (policy {p}, replay with --seed {seed}): {v}");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn main(args: SimArgs) -> anyhow::Result<ExitCode> {
    let mut sc = Scenario::load(&args.scenario)?;
    if let Some(d) = args.days {
        sc.days = d;
    }
    let seed = args.seed.unwrap_or(sc.seed);
    let policies: Vec<&str> = if args.compare {
        POLICIES.to_vec()
    } else {
        vec![args.policy.as_str()]
    };
    if let Some(seeds) = &args.seeds {
        return main_seeds(&args, &sc, &pooled::parse_seeds(seeds)?, &policies);
    }
    let mut reports = vec![];
    for p in policies {
        let t = std::time::Instant::now();
        let r = simulate(&sc, seed, p, args.faults)?;
        eprintln!(
            "simulated {p}: {:.1} days in {:.2} s wall",
            r.simulated_hours / 24.0,
            t.elapsed().as_secs_f64()
        );
        if !args.compare {
            print!("{}", report::table(&r));
        }
        reports.push(r);
    }
    if args.compare {
        print!("{}", report::compare(&reports));
    }
    if let Some(p) = &args.json {
        std::fs::write(p, to_json(&reports))?;
    }
    if let Some(p) = &args.svg {
        std::fs::write(p, svg::render(&reports))?;
    }
    if let Some(r) = reports.iter().find(|r| r.violation.is_some()) {
        eprintln!(
            "invariant violated (policy {}, replay with --seed {}): {}",
            r.policy,
            r.seed,
            r.violation.as_deref().unwrap_or("")
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
