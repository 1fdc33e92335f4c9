//! What the marking-broken policy did in a run (`--policy mergequeue-grace`): changes
//! held, landed after their grace period with jobs marked broken, and the broken
//! registry's size over time. Counted from the core's own records, as the database would
//! hold them (a record repeated after a simulated crash counts once).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::core::breakage::{BreakagePolicy, NoticeEvent};
use crate::core::change::ChangeId;
use crate::core::Record;

/// `[breakage]` of a scenario: the `grace` policy the `mergequeue-grace` run uses on
/// every lane (its `required` jobs are always protected).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraceScenario {
    #[serde(default = "day")]
    pub grace_hours: f64,
    #[serde(default = "twenty")]
    pub max_newly_broken: usize,
    /// Attribute patterns that can never be marked broken (`docs/breakage.md`).
    #[serde(default)]
    pub protected: Vec<String>,
}

fn day() -> f64 {
    24.0
}
fn twenty() -> usize {
    20
}

impl Default for GraceScenario {
    fn default() -> Self {
        GraceScenario {
            grace_hours: day(),
            max_newly_broken: twenty(),
            protected: vec![],
        }
    }
}

impl GraceScenario {
    pub fn policy(&self) -> BreakagePolicy {
        BreakagePolicy {
            mode: crate::core::breakage::Breakage::Grace,
            protected: self.protected.clone(),
            grace_ms: (self.grace_hours * 3_600_000.0) as i64,
            max_newly_broken: self.max_newly_broken,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BreakageStats {
    /// Changes held at least once (a `planned-landing` notice).
    pub held: usize,
    /// Held changes that landed with jobs marked broken.
    pub landed_marked_broken: usize,
    /// Changes the simulated world saw land although they break jobs (it allows this
    /// for jobs outside the required aggregate only). At least the above: it also counts
    /// a change whose package already failed and now fails to evaluate, which the core
    /// rightly does not mark.
    pub world_marked_broken: usize,
    /// Jobs that left the registry because they built again.
    pub fixed_jobs: usize,
    /// Registry size: the largest, at the end, and the mean over the run.
    pub registry_max: usize,
    pub registry_end: usize,
    pub registry_mean: f64,
}

/// Follows the records of one run.
#[derive(Debug, Default)]
pub struct Tracker {
    held: BTreeSet<ChangeId>,
    marked: BTreeSet<ChangeId>,
    registry: BTreeSet<(String, String)>,
    fixed: usize,
    max: usize,
    /// Integral of the registry size over time (size × ms) and when it last changed.
    area: f64,
    since: i64,
}

impl Tracker {
    pub fn record(&mut self, now: i64, r: &Record) {
        let before = self.registry.len();
        match r {
            Record::Notice(n) => match n.event {
                NoticeEvent::PlannedLanding => {
                    self.held.insert(n.change);
                }
                NoticeEvent::NewlyBroken => {
                    self.marked.insert(n.change);
                }
                NoticeEvent::Fixed => {}
            },
            Record::Broken(j) => {
                self.registry.insert((j.attr.clone(), j.system.clone()));
            }
            Record::Unbroken { key, .. } => {
                if self
                    .registry
                    .remove(&(key.attr.clone(), key.system.clone()))
                {
                    self.fixed += 1;
                }
            }
            _ => return,
        }
        if self.registry.len() != before {
            self.area += before as f64 * (now - self.since) as f64;
            self.since = now;
            self.max = self.max.max(self.registry.len());
        }
    }

    pub fn stats(&self, end: i64) -> BreakageStats {
        let area = self.area + self.registry.len() as f64 * (end - self.since) as f64;
        BreakageStats {
            held: self.held.len(),
            landed_marked_broken: self.marked.len(),
            world_marked_broken: 0,
            fixed_jobs: self.fixed,
            registry_max: self.max,
            registry_end: self.registry.len(),
            registry_mean: if end > 0 { area / end as f64 } else { 0.0 },
        }
    }
}
