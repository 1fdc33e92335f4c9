//! Scenario files: TOML, every table `deny_unknown_fields`, so a typo is an error and not
//! a silently ignored parameter. `scenarios/nixpkgs.toml` documents every field.

use std::path::Path;

use anyhow::Context;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    /// Default seed (overridden by `--seed`).
    #[serde(default)]
    pub seed: u64,
    /// Days during which changes arrive.
    pub days: f64,
    /// After arrivals stop, keep running at most this long for the queue to drain.
    pub drain_days: f64,
    /// 0 = Monday: the weekday the simulation starts on (00:00 UTC).
    #[serde(default)]
    pub start_weekday: u32,
    pub changes_per_day: f64,
    /// Share of a day's arrivals per UTC hour (24 numbers, normalised).
    pub hourly_profile: Vec<f64>,
    /// Arrival factor per weekday, Monday first (7 numbers).
    pub weekday_factor: Vec<f64>,
    /// A change is "small" (seed 004) when its rebuild set takes less than this many
    /// hours of build time in all, on every system, at speed 1 ...
    #[serde(default = "ten")]
    pub small_total_hours: f64,
    /// ... and its longest chain of builds less than this many.
    #[serde(default = "two")]
    pub small_sequential_hours: f64,
    pub goals: Goals,
    pub graph: Graph,
    /// The rebuild-size mix: classes of reverse-closure sizes with weights and lanes.
    pub sizes: Vec<SizeClass>,
    pub failures: Failures,
    pub build_times: BuildTimes,
    pub timing: Timing,
    pub lanes: Vec<Lane>,
    /// Channels gated by the core (policies that run the core only).
    #[serde(default)]
    pub channels: Vec<Channel>,
    pub builders: Vec<Builder>,
    #[serde(default)]
    pub baselines: Baselines,
    #[serde(default)]
    pub faults: Faults,
    /// The `grace` policy of the `mergequeue-grace` run.
    #[serde(default)]
    pub breakage: super::breakage::GraceScenario,
    /// Queue depth and utilisation are sampled this often.
    #[serde(default = "ten")]
    pub sample_minutes: f64,
}

fn ten() -> f64 {
    10.0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Goals {
    pub p50_hours: f64,
    pub p95_hours: f64,
    pub p99_hours: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Graph {
    pub packages: usize,
    /// Mean number of direct dependencies per package.
    pub mean_deps: f64,
    /// The first `core_packages` packages (stdenv, compilers, libc, ...) are depended on
    /// with a Zipf law; they are the roots of mass rebuilds.
    pub core_packages: usize,
    /// Share of dependency edges that point into the core.
    pub core_edge_share: f64,
    /// Of the other edges (into libraries), the share chosen by preferential attachment
    /// (popular libraries get more dependents); the rest pick a library uniformly.
    pub popular_edge_share: f64,
    /// Share of the non-core packages that are libraries (can be depended on); the rest
    /// are leaves.
    pub library_share: f64,
    /// Share of packages that fail on the base already (never blamed on a change).
    pub preexisting_broken: f64,
    pub systems: Vec<System>,
    /// The `tested` aggregate job (NixOS tests) depends on this many packages; absent
    /// when 0.
    #[serde(default)]
    pub tested_deps: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct System {
    pub name: String,
    /// Share of packages that have a job on this system.
    pub availability: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SizeClass {
    pub min: usize,
    pub max: usize,
    pub weight: f64,
    /// The target branch changes of this class go to (a lane in `lanes`). Absent: the
    /// first lane's branch, and the core routes the change by its rebuild count (the
    /// mass-rebuild stage, with `mass_rebuild_threshold`).
    #[serde(default)]
    pub lane: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failures {
    /// P(a change breaks the build of a package in its rebuild set).
    pub build_failure: f64,
    /// P(a change makes its package fail to evaluate).
    pub eval_error: f64,
    /// P(a change breaks evaluation of the whole jobset).
    pub whole_eval_failure: f64,
    /// P(a change does not merge onto the target).
    pub conflict: f64,
    /// P(one build attempt of a healthy package fails spuriously).
    pub flaky_build: f64,
    /// P(one build attempt of the `tested` job fails spuriously).
    #[serde(default)]
    pub tested_flaky: f64,
    /// P(one build attempt ends in an infrastructure failure).
    pub infrastructure: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildTimes {
    /// Empirical (quantile, seconds) pairs, increasing; interpolated.
    pub quantiles: Vec<(f64, f64)>,
    /// Every build attempt also costs this (closure copying, scheduling).
    pub overhead_secs: f64,
    /// Builds longer than this (at speed 1) need a big-parallel slot or run slowly.
    pub big_parallel_above_secs: f64,
    /// Duration of the `tested` aggregate job, minutes, uniform in [min, max].
    #[serde(default)]
    pub tested_minutes: (f64, f64),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timing {
    /// Fetch and merge, per change in the batch.
    pub prepare_secs: f64,
    /// A full evaluation of a commit not evaluated before, uniform in [min, max].
    pub eval_minutes: (f64, f64),
    /// Evaluations running at once.
    pub eval_workers: usize,
    /// A commit evaluated before is served from the evaluation store.
    pub eval_cached_secs: f64,
    /// Merge plus evaluation of a few attributes.
    pub probe_secs: f64,
    pub land_secs: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lane {
    pub branch: String,
    pub batch_max: usize,
    #[serde(default)]
    pub batch_delay_minutes: f64,
    #[serde(default)]
    pub required: Vec<String>,
    /// `build_priority` of the branch (urgent, high, normal, low).
    #[serde(default)]
    pub build_priority: Option<crate::core::change::Priority>,
    /// Candidates in flight at once (speculation), as `window` of a branch.
    #[serde(default = "one")]
    pub window: usize,
    /// `window_floor` of the branch.
    #[serde(default = "one")]
    pub window_floor: usize,
    /// `mass_rebuild_threshold` of the branch: changes rebuilding at least this many jobs
    /// on some system go through the mass-rebuild stage first.
    #[serde(default)]
    pub mass_rebuild_threshold: Option<usize>,
}

/// A channel following a lane's branch, as `[[channels]]` in the product's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Channel {
    pub name: String,
    /// The branch followed (one of `lanes`).
    pub source: String,
    /// Attribute paths that must build before the channel moves.
    pub gate: Vec<String>,
    #[serde(default)]
    pub min_interval_minutes: f64,
    #[serde(default = "five")]
    pub poll_minutes: f64,
    #[serde(default = "yes")]
    pub look_back: bool,
}

fn five() -> f64 {
    5.0
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Builder {
    pub name: String,
    pub systems: Vec<String>,
    /// Parallel build slots per machine.
    pub slots: usize,
    /// Relative speed of one slot (1.0 = the 2021 2-core Hydra slot of the build-time data).
    pub speed: f64,
    /// Takes only builds longer than `big_parallel_above_secs`.
    #[serde(default)]
    pub big_parallel: bool,
    #[serde(default = "one")]
    pub count: usize,
}

fn two() -> f64 {
    2.0
}

fn one() -> usize {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baselines {
    /// GitHub merge queue: candidates built at once.
    pub github_concurrency: usize,
    /// Whether the baselines' CI reuses earlier successful builds (a shared Nix store /
    /// binary cache). Off: every CI run rebuilds its whole rebuild set.
    pub cache: bool,
}

impl Default for Baselines {
    fn default() -> Self {
        Baselines {
            github_concurrency: 5,
            cache: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// P(the coordinator crashes while handling one result).
    pub crash: f64,
    /// P(a build result is lost).
    pub lose_build_result: f64,
    /// P(a build result is delivered twice).
    pub duplicate_build_result: f64,
    /// Builder machines killed per simulated day (each down for `builder_down_minutes`).
    pub builder_kills_per_day: f64,
    pub builder_down_minutes: f64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            crash: 0.02,
            lose_build_result: 0.01,
            duplicate_build_result: 0.02,
            builder_kills_per_day: 4.0,
            builder_down_minutes: 60.0,
        }
    }
}

impl Scenario {
    pub fn load(path: &Path) -> anyhow::Result<Scenario> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Scenario::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Scenario> {
        let s: Scenario = toml::from_str(text)?;
        s.validate()?;
        Ok(s)
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.hourly_profile.len() == 24,
            "hourly_profile needs 24 numbers"
        );
        anyhow::ensure!(
            self.weekday_factor.len() == 7,
            "weekday_factor needs 7 numbers"
        );
        anyhow::ensure!(!self.sizes.is_empty(), "sizes: at least one class");
        anyhow::ensure!(
            !self.graph.systems.is_empty(),
            "graph.systems: at least one"
        );
        anyhow::ensure!(self.graph.packages >= 10, "graph.packages: at least 10");
        anyhow::ensure!(
            self.build_times
                .quantiles
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "build_times.quantiles must increase"
        );
        for c in &self.channels {
            anyhow::ensure!(
                self.lanes.iter().any(|l| l.branch == c.source),
                "channels: source {:?} of channel {:?} is not in lanes",
                c.source,
                c.name
            );
            anyhow::ensure!(
                !c.gate.is_empty(),
                "channels: channel {:?} needs a gate",
                c.name
            );
            anyhow::ensure!(
                c.poll_minutes > 0.0,
                "channels: poll_minutes must be positive"
            );
        }
        for c in &self.sizes {
            anyhow::ensure!(
                c.lane
                    .as_ref()
                    .is_none_or(|lane| self.lanes.iter().any(|l| &l.branch == lane)),
                "sizes: lane {:?} is not in lanes",
                c.lane
            );
            anyhow::ensure!(c.min >= 1 && c.min <= c.max, "sizes: need 1 <= min <= max");
        }
        for b in &self.builders {
            for s in &b.systems {
                anyhow::ensure!(
                    self.graph.systems.iter().any(|x| &x.name == s),
                    "builder {}: unknown system {s}",
                    b.name
                );
            }
        }
        for s in &self.graph.systems {
            anyhow::ensure!(
                self.builders
                    .iter()
                    .any(|b| !b.big_parallel && b.systems.contains(&s.name)),
                "no ordinary builder for system {}",
                s.name
            );
        }
        anyhow::ensure!(self.timing.eval_workers >= 1, "timing.eval_workers >= 1");
        for l in &self.lanes {
            anyhow::ensure!(l.batch_max >= 1, "lane {}: batch_max >= 1", l.branch);
            for r in &l.required {
                anyhow::ensure!(
                    r == "tested" && self.graph.tested_deps > 0,
                    "lane {}: the only required job the simulator models is `tested` (set graph.tested_deps)",
                    l.branch
                );
            }
        }
        Ok(())
    }
}
