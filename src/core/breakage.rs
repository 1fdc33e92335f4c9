//! The marking-broken policy, the broken registry and the notices it sends. Under the
//! `grace` policy a change that newly breaks only unprotected jobs, few enough of them,
//! is held instead of rejected: its jobs' maintainers hear at once, and unless a fix
//! lands first it lands after the grace period with those jobs entered in the registry.
//! Broken jobs fail on the target too, so they no longer block later changes; a job
//! leaves the registry when it builds again on a landed commit.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::change::ChangeId;
pub use super::change::Held;
use super::evaluation::{attr_under, JobKey, Maintainer};
use super::Millis;

/// What a lane does with a change that newly breaks jobs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Breakage {
    /// No change may newly break a job: it is rejected.
    #[default]
    Strict,
    /// A change that breaks only unprotected jobs waits out the grace period, then
    /// lands with them marked broken.
    Grace,
}

/// A lane's marking-broken policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakagePolicy {
    pub mode: Breakage,
    /// Attribute patterns that can never be marked broken (the required jobs never can).
    pub protected: Vec<String>,
    pub grace_ms: Millis,
    /// The most jobs one change may break under `grace`; more and it is rejected.
    pub max_newly_broken: usize,
}

impl Default for BreakagePolicy {
    fn default() -> Self {
        BreakagePolicy {
            mode: Breakage::Strict,
            protected: vec![],
            grace_ms: 7 * 24 * 3_600_000,
            max_newly_broken: 20,
        }
    }
}

impl BreakagePolicy {
    /// Whether `attr` may never be marked broken: a required job, or one a protected
    /// pattern matches.
    pub fn protects(&self, required: &[String], attr: &str) -> bool {
        required.iter().any(|r| attr_under(attr, r))
            || self.protected.iter().any(|p| pattern_protects(p, attr))
    }
}

/// Whether a protected pattern covers `attr`: a pattern without wildcards covers that
/// attribute and everything under it (like a required job); with wildcards it must
/// match the whole path, `*` within one segment, `**` across any number of them.
pub fn pattern_protects(pattern: &str, attr: &str) -> bool {
    if !pattern.contains('*') {
        return attr_under(attr, pattern);
    }
    let pat: Vec<&str> = pattern.split('.').collect();
    let path: Vec<&str> = attr.split('.').collect();
    segments_match(&pat, &path)
}

fn segments_match(pat: &[&str], path: &[&str]) -> bool {
    match pat.split_first() {
        None => path.is_empty(),
        Some((&"**", rest)) => (0..=path.len()).any(|i| segments_match(rest, &path[i..])),
        Some((p, rest)) => match path.split_first() {
            Some((s, tail)) => {
                segment_match(p.as_bytes(), s.as_bytes()) && segments_match(rest, tail)
            }
            None => false,
        },
    }
}

/// `*` matches any run of characters within one segment.
fn segment_match(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| segment_match(rest, &s[i..])),
        Some((c, rest)) => s.first() == Some(c) && segment_match(rest, &s[1..]),
    }
}

/// A job in the broken registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokenJob {
    pub repo: String,
    /// The branch it is broken on: only that branch's landings take it out, and only
    /// that branch's candidates are spared its build. Empty in entries stored before
    /// branches were kept (they apply to every branch, as then).
    #[serde(default)]
    pub branch: String,
    pub attr: String,
    pub system: String,
    pub drv: String,
    /// When the change that broke it landed.
    pub since: Millis,
    pub broken_by: ChangeId,
    pub maintainers: Vec<Maintainer>,
    pub log_tail: String,
}

impl BrokenJob {
    /// Whether the entry concerns `branch`.
    pub fn on(&self, branch: &str) -> bool {
        self.branch.is_empty() || self.branch == branch
    }

    pub fn key(&self) -> JobKey {
        JobKey {
            attr: self.attr.clone(),
            system: self.system.clone(),
        }
    }
}

/// The broken registry of every repository.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    pub(crate) jobs: BTreeMap<(String, JobKey), BrokenJob>,
}

impl Registry {
    pub fn new(jobs: Vec<BrokenJob>) -> Registry {
        Registry {
            jobs: jobs
                .into_iter()
                .map(|j| ((j.repo.clone(), j.key()), j))
                .collect(),
        }
    }

    /// A repository's broken jobs, by attribute and system.
    pub fn of<'a>(&'a self, repo: &'a str) -> impl Iterator<Item = &'a BrokenJob> + 'a {
        self.jobs
            .iter()
            .filter(move |((r, _), _)| r == repo)
            .map(|(_, j)| j)
    }

    pub fn get(&self, repo: &str, key: &JobKey) -> Option<&BrokenJob> {
        self.jobs.get(&(repo.to_string(), key.clone()))
    }
}

/// Why a notice is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NoticeEvent {
    /// A change that breaks these jobs is held; it lands on `planned` unless fixed.
    PlannedLanding,
    /// These jobs are broken on the target now (entered in the registry).
    NewlyBroken,
    /// These jobs build again (left the registry).
    Fixed,
}

impl NoticeEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeEvent::PlannedLanding => "planned-landing",
            NoticeEvent::NewlyBroken => "newly-broken",
            NoticeEvent::Fixed => "fixed",
        }
    }
}

/// One job a notice is about. A job that failed because a dependency did names that
/// root; its maintainers are then the root job's when the root is a job too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeJob {
    pub attr: String,
    pub system: String,
    pub drv: String,
    pub root: Option<String>,
    pub maintainers: Vec<Maintainer>,
    pub log_tail: String,
}

/// What maintainers are to hear, as the core decided it; the shell's notifier
/// deduplicates, caps and delivers it (`notify::plan`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    pub event: NoticeEvent,
    pub repo: String,
    pub branch: String,
    /// The change that broke (or fixed) the jobs.
    pub change: ChangeId,
    pub title: String,
    pub pr: Option<u64>,
    pub at: Millis,
    /// When a held change lands unless fixed (`planned-landing`).
    pub planned: Option<Millis>,
    pub jobs: Vec<NoticeJob>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(pattern_protects("tested", "tested"));
        assert!(pattern_protects("tested", "tested.x"));
        assert!(!pattern_protects("tested", "testedx"));
        assert!(pattern_protects("core.*", "core.gcc"));
        assert!(!pattern_protects("core.*", "core.gcc.lib"));
        assert!(!pattern_protects("core.*", "core"));
        assert!(pattern_protects("core.**", "core.gcc.lib"));
        assert!(pattern_protects("core.**", "core"));
        assert!(pattern_protects("**.tests", "nixos.boot.tests"));
        assert!(pattern_protects(
            "python3*.numpy",
            "python312Packages.numpy"
        ));
        assert!(!pattern_protects(
            "python3*.numpy",
            "python312Packages.scipy"
        ));
    }
}
