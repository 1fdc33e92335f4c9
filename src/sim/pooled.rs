//! `simulate --seeds A..B`: one policy over many seeds, percentiles pooled over every
//! change of every seed, and the worst seed (the one with the highest small-change p95
//! to the channel), so one lucky or unlucky workload does not decide a figure.

use serde::Serialize;

use super::engine::percentile;
use super::report::{h, ChangeRecord, Report};

/// Pooled latencies of one group of changes, hours.
#[derive(Debug, Clone, Serialize)]
pub struct Pool {
    pub n: usize,
    /// Changes of the group that never reached the point (counted as infinitely late).
    pub unreached: usize,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Pooled {
    pub scenario: String,
    pub policy: String,
    pub seeds: Vec<u64>,
    /// Whether the policy gates a channel at all (the baselines do not: their channel
    /// figures are empty).
    pub gates_channel: bool,
    /// Accept → first channel, small changes (seed 004's definition).
    pub small_channel: Pool,
    /// Accept → landed, small changes.
    pub small_landed: Pool,
    /// Accept → first channel, mass rebuilds (at least `mass_size` jobs per system).
    pub mass_channel: Pool,
    pub mass_size: usize,
    /// The seed whose small changes fared worst (highest p95 to the channel).
    pub worst_seed: Option<u64>,
    pub worst_small_channel: Option<Pool>,
    pub regressions_landed: usize,
    pub false_rejections: usize,
    pub build_hours_per_landed: f64,
    /// Highest queue depth (queued + testing) seen in any seed.
    pub max_queue_depth: usize,
    /// Changes not final when a run ended, over all seeds.
    pub not_final_at_end: usize,
}

/// Parses `A..B` (both included) or a single seed.
pub fn parse_seeds(s: &str) -> anyhow::Result<Vec<u64>> {
    let bad = || anyhow::anyhow!("--seeds {s:?}: expected A..B (both included), e.g. 1..20");
    let (a, b) = match s.split_once("..") {
        Some((a, b)) => (
            a.trim().parse().map_err(|_| bad())?,
            b.trim().parse().map_err(|_| bad())?,
        ),
        None => {
            let a: u64 = s.trim().parse().map_err(|_| bad())?;
            (a, a)
        }
    };
    anyhow::ensure!(a <= b, "--seeds {s:?}: the first seed is after the last");
    anyhow::ensure!(b - a < 10_000, "--seeds {s:?}: at most 10,000 seeds");
    Ok((a..=b).collect())
}

fn pool(v: &mut [f64]) -> Pool {
    v.sort_by(|a, b| a.total_cmp(b));
    let p = |q| {
        percentile(v, q)
            .filter(|x| x.is_finite())
            .map(|x| (x * 1000.0).round() / 1000.0)
    };
    Pool {
        n: v.len(),
        unreached: v.iter().filter(|x| !x.is_finite()).count(),
        p50: p(50.0),
        p95: p(95.0),
        p99: p(99.0),
    }
}

/// Latencies (hours) of the not-rejected changes `pick` selects: to the channel or
/// to landing; a change that never got there counts as infinitely late.
fn latencies(r: &Report, pick: impl Fn(&ChangeRecord) -> bool, channel: bool) -> Vec<f64> {
    r.changes
        .iter()
        .filter(|c| !c.state.starts_with("rejected") && pick(c))
        .map(|c| {
            let at = if channel { c.channel_h } else { c.landed_h };
            at.map_or(f64::INFINITY, |t| t - c.accepted_h)
        })
        .collect()
}

pub fn pooled(reports: &[Report], mass_size: usize) -> Pooled {
    let mut small_channel = vec![];
    let mut small_landed = vec![];
    let mut mass_channel = vec![];
    let mut worst: Option<(f64, u64, Pool)> = None;
    for r in reports {
        let mut mine = latencies(r, |c| c.small, true);
        small_channel.extend(&mine);
        small_landed.extend(latencies(r, |c| c.small, false));
        mass_channel.extend(latencies(r, |c| c.size >= mass_size, true));
        let p = pool(&mut mine);
        let key = p.p95.unwrap_or(f64::INFINITY);
        if worst.as_ref().is_none_or(|(k, _, _)| key > *k) {
            worst = Some((key, r.seed, p));
        }
    }
    let landed: usize = reports.iter().map(|r| r.landed).sum();
    let hours: f64 = reports.iter().map(|r| r.build_hours).sum();
    let first = reports.first();
    Pooled {
        scenario: first.map_or(String::new(), |r| r.scenario.clone()),
        policy: first.map_or(String::new(), |r| r.policy.clone()),
        seeds: reports.iter().map(|r| r.seed).collect(),
        gates_channel: reports.iter().any(|r| r.latency_channel_hours.is_some()),
        small_channel: pool(&mut small_channel),
        small_landed: pool(&mut small_landed),
        mass_channel: pool(&mut mass_channel),
        mass_size,
        worst_seed: worst.as_ref().map(|w| w.1),
        worst_small_channel: worst.map(|w| w.2),
        regressions_landed: reports.iter().map(|r| r.regressions_landed).sum(),
        false_rejections: reports.iter().map(|r| r.false_rejections).sum(),
        build_hours_per_landed: (hours / landed.max(1) as f64 * 1000.0).round() / 1000.0,
        max_queue_depth: reports.iter().map(|r| r.max_queue_depth).max().unwrap_or(0),
        not_final_at_end: reports.iter().map(|r| r.not_final_at_end).sum(),
    }
}

fn row(name: &str, p: &Pool) -> String {
    format!(
        "  {:<34}{:>6} {:>8} {:>8} {:>8}\n",
        name,
        p.n,
        h(p.p50),
        h(p.p95),
        h(p.p99)
    )
}

/// The terminal table of pooled runs, one block per policy.
pub fn table(all: &[Pooled]) -> String {
    let mut out = String::new();
    for p in all {
        let seeds = match (p.seeds.first(), p.seeds.last()) {
            (Some(a), Some(b)) => format!("{a}..{b}"),
            _ => "none".into(),
        };
        out.push_str(&format!(
            "{} / {}: {} seeds ({seeds}), pooled (hours)\n  {:<34}{:>6} {:>8} {:>8} {:>8}\n",
            p.scenario,
            p.policy,
            p.seeds.len(),
            "",
            "n",
            "p50",
            "p95",
            "p99"
        ));
        if !p.gates_channel {
            out.push_str("  (this policy gates no channel: landing only)\n");
        }
        out.push_str(&row("small, accept -> channel", &p.small_channel));
        out.push_str(&row("small, accept -> landed", &p.small_landed));
        out.push_str(&row(
            &format!("mass (>= {} jobs), -> channel", p.mass_size),
            &p.mass_channel,
        ));
        if let (Some(s), Some(w)) = (p.worst_seed, &p.worst_small_channel) {
            out.push_str(&row(&format!("worst seed {s}: small -> channel"), w));
        }
        out.push_str(&format!(
            "  regressions landed {}, false rejections {}, build hours per landed change {:.2}, max queue depth {}, not final at the end {}\n\n",
            p.regressions_landed,
            p.false_rejections,
            p.build_hours_per_landed,
            p.max_queue_depth,
            p.not_final_at_end
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::parse_seeds;

    #[test]
    fn seeds_are_a_range_with_both_ends_or_one_seed() {
        assert_eq!(parse_seeds("1..3").unwrap(), vec![1, 2, 3]);
        assert_eq!(parse_seeds("7").unwrap(), vec![7]);
        for bad in ["3..1", "a..b", "1..", "", "0..20000"] {
            assert!(parse_seeds(bad).is_err(), "{bad}");
        }
    }
}
