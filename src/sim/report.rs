//! The report of one run: JSON (deterministic: ordered maps, rounded numbers) and a
//! terminal table; the comparison table of several policies.

use std::collections::BTreeMap;

use serde::Serialize;

use super::engine::{latencies, percentile, Metrics, RejectKind};
use super::scenario::Scenario;
use super::world::World;
use crate::core::Millis;

#[derive(Debug, Clone, Serialize)]
pub struct Pct {
    pub n: usize,
    /// Hours; `null` when not every change of the group landed before the end and the
    /// percentile falls among those.
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SamplePoint {
    pub hour: f64,
    pub queued: usize,
    pub testing: usize,
    pub builds_queued: usize,
    /// Busy share of the slots per system.
    pub utilisation: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    pub policy: String,
    pub faults: bool,
    pub simulated_hours: f64,
    pub packages: usize,
    pub accepted: usize,
    pub landed: usize,
    pub rejected_failure: usize,
    pub rejected_conflict: usize,
    /// Rejected although the change was fine (flaky builds blamed on it).
    pub false_rejections: usize,
    /// Broken changes that landed (possible only when a spurious failure of the base
    /// masked the breakage).
    pub regressions_landed: usize,
    pub not_final_at_end: usize,
    pub goals_hours: BTreeMap<String, f64>,
    /// Accept to landed on the target.
    pub latency_landed_hours: BTreeMap<String, Pct>,
    /// Accept to the first channel that follows the change's branch (changes of branches
    /// no channel follows are not counted); absent for policies that gate no channel.
    pub latency_channel_hours: Option<BTreeMap<String, Pct>>,
    pub channel_advances_per_day: Option<f64>,
    pub build_attempts: u64,
    pub build_hours: f64,
    pub builds_per_landed: f64,
    pub build_hours_per_landed: f64,
    pub culprits: usize,
    pub extra_builds: u64,
    pub extra_builds_per_culprit: f64,
    pub mean_utilisation: BTreeMap<String, f64>,
    pub max_queue_depth: usize,
    pub crashes: u64,
    pub lost_build_results: u64,
    pub duplicated_build_results: u64,
    pub builder_kills: u64,
    pub violation: Option<String>,
    /// What the marking-broken policy did (`mergequeue-grace` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breakage: Option<super::breakage::BreakageStats>,
    pub samples: Vec<SamplePoint>,
    /// One record per accepted change.
    pub changes: Vec<ChangeRecord>,
    /// Sorted latencies (hours) of all landed changes, for the CDF.
    #[serde(skip)]
    pub cdf_all: Vec<f64>,
    #[serde(skip)]
    pub cdf_small: Vec<f64>,
    /// Small changes, accept to channel (empty without channels).
    #[serde(skip)]
    pub cdf_channel_small: Vec<f64>,
}

/// What became of one change.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeRecord {
    pub id: usize,
    /// Jobs it rebuilds per system (its package's reverse closure).
    pub size: usize,
    /// Seed 004's "small": under `small_total_hours` of builds, `small_sequential_hours`
    /// in sequence.
    pub small: bool,
    /// `queue`, or `mass-rebuild` when it went through the stage.
    pub stage: &'static str,
    pub accepted_h: f64,
    pub landed_h: Option<f64>,
    /// When the first channel following its branch contained it.
    pub channel_h: Option<f64>,
    /// merged, rejected-failure, rejected-conflict, or open (not final at the end).
    pub state: &'static str,
}

fn r3(x: f64) -> f64 {
    if x.is_finite() {
        (x * 1000.0).round() / 1000.0
    } else {
        x
    }
}

fn pct(v: &[f64]) -> Pct {
    let p = |q| percentile(v, q).filter(|x| x.is_finite()).map(r3);
    Pct {
        n: v.len(),
        p50: p(50.0),
        p95: p(95.0),
        p99: p(99.0),
    }
}

#[allow(clippy::too_many_arguments)]
pub fn build(
    sc: &Scenario,
    seed: u64,
    policy: &str,
    faults: bool,
    m: &Metrics,
    w: &World,
    build_attempts: u64,
    slot_ms: u64,
    staged: &std::collections::BTreeSet<usize>,
) -> Report {
    let n = w.changes.len();
    let landed = m.landed.iter().filter(|l| l.is_some()).count();
    let count = |k: RejectKind| {
        m.rejected
            .iter()
            .filter(|r| r.is_some_and(|(_, x)| x == k))
            .count()
    };
    let false_rejections = (0..n)
        .filter(|&i| {
            m.rejected[i].is_some_and(|(_, k)| k == RejectKind::Failure) && !w.changes[i].bad()
        })
        .count();
    let all = latencies(m, w, &m.landed, &|_| true);
    let small = latencies(m, w, &m.landed, &|i| w.changes[i].small);
    let mut lat = BTreeMap::new();
    lat.insert("all".to_string(), pct(&all));
    lat.insert("small".to_string(), pct(&small));
    for (li, l) in sc.lanes.iter().enumerate() {
        if sc.lanes.len() > 1 {
            let v = latencies(m, w, &m.landed, &|i| w.changes[i].lane == li);
            lat.insert(format!("lane:{}", l.branch), pct(&v));
        }
    }
    let followed: Vec<bool> = sc
        .lanes
        .iter()
        .map(|l| sc.channels.iter().any(|c| c.source == l.branch))
        .collect();
    let chan_all = latencies(m, w, &m.channelled, &|i| followed[w.changes[i].lane]);
    let chan_small = latencies(m, w, &m.channelled, &|i| {
        followed[w.changes[i].lane] && w.changes[i].small
    });
    let latency_channel = m.channel_advances.map(|_| {
        BTreeMap::from([
            ("all".to_string(), pct(&chan_all)),
            ("small".to_string(), pct(&chan_small)),
        ])
    });
    let mut goals = BTreeMap::new();
    goals.insert("p50".to_string(), sc.goals.p50_hours);
    goals.insert("p95".to_string(), sc.goals.p95_hours);
    goals.insert("p99".to_string(), sc.goals.p99_hours);
    let samples: Vec<SamplePoint> = m
        .samples
        .iter()
        .map(|s| SamplePoint {
            hour: r3(s.t as f64 / 3.6e6),
            queued: s.queued,
            testing: s.testing,
            builds_queued: s.builds_queued,
            utilisation: w
                .systems
                .iter()
                .zip(&s.util)
                .map(|(name, (b, t))| (name.clone(), r3(*b as f64 / (*t).max(1) as f64)))
                .collect(),
        })
        .collect();
    let mut mean_util = BTreeMap::new();
    for (si, name) in w.systems.iter().enumerate() {
        let (b, t) = m.samples.iter().fold((0usize, 0usize), |a, s| {
            (a.0 + s.util[si].0, a.1 + s.util[si].1)
        });
        mean_util.insert(name.clone(), r3(b as f64 / t.max(1) as f64));
    }
    let culprits = count(RejectKind::Failure);
    let build_hours = slot_ms as f64 / 3.6e6;
    let hours = |t: Millis| r3(t as f64 / 3.6e6);
    let records = w
        .changes
        .iter()
        .enumerate()
        .filter(|(_, c)| c.at <= m.end)
        .map(|(i, c)| ChangeRecord {
            id: i,
            size: c.rebuild.len(),
            small: c.small,
            stage: if staged.contains(&i) {
                "mass-rebuild"
            } else {
                "queue"
            },
            accepted_h: hours(c.at),
            landed_h: m.landed[i].map(hours),
            channel_h: m.channelled[i].map(hours),
            state: match (m.landed[i], m.rejected[i]) {
                (Some(_), _) => "merged",
                (None, Some((_, RejectKind::Failure))) => "rejected-failure",
                (None, Some((_, RejectKind::Conflict))) => "rejected-conflict",
                (None, None) => "open",
            },
        })
        .collect();
    Report {
        scenario: sc.name.clone(),
        seed,
        policy: policy.to_string(),
        faults,
        simulated_hours: r3(m.end as f64 / 3.6e6),
        packages: w.graph.n,
        accepted: m.arrived,
        landed,
        rejected_failure: culprits,
        rejected_conflict: count(RejectKind::Conflict),
        false_rejections,
        regressions_landed: w.regressions.len(),
        not_final_at_end: m.arrived - m.finals,
        goals_hours: goals,
        latency_landed_hours: lat,
        latency_channel_hours: latency_channel,
        channel_advances_per_day: m
            .channel_advances
            .map(|a| r3(a as f64 / (m.end as f64 / 8.64e7).max(1e-9))),
        build_attempts,
        build_hours: r3(build_hours),
        builds_per_landed: r3(build_attempts as f64 / landed.max(1) as f64),
        build_hours_per_landed: r3(build_hours / landed.max(1) as f64),
        culprits,
        extra_builds: m.extra_builds,
        extra_builds_per_culprit: r3(m.extra_builds as f64 / culprits.max(1) as f64),
        mean_utilisation: mean_util,
        max_queue_depth: m
            .samples
            .iter()
            .map(|s| s.queued + s.testing)
            .max()
            .unwrap_or(0),
        crashes: m.crashes,
        lost_build_results: m.lost_results,
        duplicated_build_results: m.duplicated_results,
        builder_kills: m.builder_kills,
        violation: m.violation.clone(),
        breakage: None,
        samples,
        changes: records,
        cdf_all: all,
        cdf_small: small,
        cdf_channel_small: if m.channel_advances.is_some() {
            chan_small
        } else {
            vec![]
        },
    }
}

/// Hours in a table: two decimals below 10, one above; `> end` when not reached.
pub(super) fn h(x: Option<f64>) -> String {
    match x {
        Some(v) if v < 10.0 => format!("{v:.2}"),
        Some(v) => format!("{v:.1}"),
        None => "> end".into(),
    }
}

/// One line of a latency table: group, count, p50, p95, p99.
fn pct_row(k: &str, p: &Pct) -> String {
    format!(
        "  {:<32}{:>5} {:>8} {:>8} {:>8}\n",
        k,
        p.n,
        h(p.p50),
        h(p.p95),
        h(p.p99)
    )
}

pub fn table(r: &Report) -> String {
    let mut s = String::new();
    let days = r.simulated_hours / 24.0;
    s += &format!(
        "scenario {} · seed {} · policy {}{} · {:.1} simulated days · {} packages\n",
        r.scenario,
        r.seed,
        r.policy,
        if r.faults { " · faults" } else { "" },
        days,
        r.packages
    );
    s += &format!(
        "changes: {} accepted, {} landed, {} rejected for failures ({} of them falsely), {} for conflicts, {} not final at the end, {} regressions landed\n\n",
        r.accepted, r.landed, r.rejected_failure, r.false_rejections, r.rejected_conflict, r.not_final_at_end, r.regressions_landed
    );
    if let Some(b) = &r.breakage {
        s += &format!(
            "marking broken: {} changes held, {} landed after the grace period with jobs marked broken; broken registry max {}, mean {:.1}, {} at the end; {} jobs fixed\n\n",
            b.held, b.landed_marked_broken, b.registry_max, b.registry_mean, b.registry_end, b.fixed_jobs
        );
    }
    s += "latency accept -> landed (hours)   n      p50      p95      p99\n";
    for (k, p) in &r.latency_landed_hours {
        s += &pct_row(k, p);
    }
    match &r.latency_channel_hours {
        Some(lat) => {
            s += "latency accept -> channel (hours)\n";
            for (k, p) in lat {
                s += &pct_row(k, p);
            }
        }
        None => s += "latency accept -> channel: n/a (this policy gates no channel)\n",
    }
    s += &format!(
        "  {:<32}{:>5} {:>8} {:>8} {:>8}\n\n",
        "goal (accept -> channel)",
        "",
        h(r.goals_hours.get("p50").copied()),
        h(r.goals_hours.get("p95").copied()),
        h(r.goals_hours.get("p99").copied())
    );
    s += &format!(
        "builds: {} attempts, {:.1} build-hours; {:.2} builds and {:.2} build-hours per landed change\n",
        r.build_attempts, r.build_hours, r.builds_per_landed, r.build_hours_per_landed
    );
    s += &format!(
        "isolation: {} culprits, {} extra builds, {:.1} per culprit\n",
        r.culprits, r.extra_builds, r.extra_builds_per_culprit
    );
    let util = r
        .mean_utilisation
        .iter()
        .map(|(k, v)| format!("{k} {:.0}%", v * 100.0))
        .collect::<Vec<_>>()
        .join(", ");
    s += &format!(
        "builders: mean utilisation {util}; max queue depth {} changes\n",
        r.max_queue_depth
    );
    match r.channel_advances_per_day {
        Some(a) => s += &format!("channel advances per day: {a:.1}\n"),
        None => s += "channel advances per day: n/a\n",
    }
    if r.faults {
        s += &format!(
            "faults: {} crashes, {} build results lost, {} duplicated, {} builders killed\n",
            r.crashes, r.lost_build_results, r.duplicated_build_results, r.builder_kills
        );
    }
    if let Some(v) = &r.violation {
        s += &format!("INVARIANT VIOLATED: {v}\n");
    }
    s
}

pub fn compare(rs: &[Report]) -> String {
    let mut s = String::new();
    if let Some(r) = rs.first() {
        s += &format!(
            "scenario {} · seed {} · {} accepted changes · goals (accept -> channel) p50 {} h, p95 {} h, p99 {} h\n\n",
            r.scenario,
            r.seed,
            r.accepted,
            r.goals_hours["p50"],
            r.goals_hours["p95"],
            r.goals_hours["p99"]
        );
    }
    s += "| policy | landed | small p50 | small p95 | small p99 | all p50 | all p95 | all p99 | channel small p50 / p95 / p99 | advances/day | builds/landed | build-h/landed | extra builds/culprit | rejected (false) | util |\n";
    s += "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
    for r in rs {
        let sm = &r.latency_landed_hours["small"];
        let al = &r.latency_landed_hours["all"];
        let util =
            r.mean_utilisation.values().sum::<f64>() / r.mean_utilisation.len().max(1) as f64;
        let chan = match &r.latency_channel_hours {
            Some(l) => {
                let c = &l["small"];
                format!("{} / {} / {}", h(c.p50), h(c.p95), h(c.p99))
            }
            None => "n/a".into(),
        };
        let adv = r
            .channel_advances_per_day
            .map_or("n/a".into(), |a| format!("{a:.1}"));
        s += &format!(
            "| {} | {}/{} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.1} | {} ({}) | {:.0}% |\n",
            r.policy,
            r.landed,
            r.accepted,
            h(sm.p50),
            h(sm.p95),
            h(sm.p99),
            h(al.p50),
            h(al.p95),
            h(al.p99),
            chan,
            adv,
            r.builds_per_landed,
            r.build_hours_per_landed,
            r.extra_builds_per_culprit,
            r.rejected_failure,
            r.false_rejections,
            util * 100.0
        );
    }
    for r in rs {
        if let Some(b) = &r.breakage {
            s += &format!(
                "\n{}: {} changes held, {} landed after the grace period with jobs marked broken; broken registry max {}, mean {:.1}, {} at the end\n",
                r.policy, b.held, b.landed_marked_broken, b.registry_max, b.registry_mean, b.registry_end
            );
        }
    }
    s += "\nlatencies in hours from accept to landed on the target, and to the channel (small changes of branches a channel follows; n/a: the baselines gate no channel); \"> end\" = not there before the run ended\n";
    s
}
