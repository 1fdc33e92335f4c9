//! Why a job rebuilds: its derivation on the base and on the candidate compared input by
//! input, followed down through the inputs that differ to the first ones that changed on
//! their own. "pytorch rebuilds because pillow changed" is a walk from pytorch's two
//! derivations to pillow's, whose inputs are the same on both sides.
//!
//! Pure: the shell reads derivations (`nix show-derivation`) as the walk asks for them.
//! [`explain`] answers with what it could work out from the derivations it was given and
//! the ones it still needs; the shell reads those and asks again, one level of the
//! changed subgraph at a time, until nothing is missing (or its budget is spent).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::core::evaluation::JobKey;

/// What a derivation is built from, as `nix show-derivation` lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrvInputs {
    /// Input derivations (store paths ending in `.drv`).
    pub drvs: BTreeSet<String>,
    /// Input sources (store paths: sources, patches, builder scripts).
    pub srcs: BTreeSet<String>,
}

/// A first changed input: where a rebuild comes from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Cause {
    /// A derivation that differs although every input it has is the same on both sides:
    /// its own attributes changed (version, source URL, flags, build script text).
    Derivation {
        name: String,
        base: String,
        new: String,
    },
    /// An input source (a file or tree in the store) that differs.
    Source {
        name: String,
        base: String,
        new: String,
    },
    /// An input the candidate's derivation has and the base's has not.
    Added { name: String, new: String },
    /// An input the base's derivation had and the candidate's has not.
    Removed { name: String, base: String },
}

impl Cause {
    /// The store path name (`python3.11-pillow-10.0`), for display.
    pub fn name(&self) -> &str {
        match self {
            Cause::Derivation { name, .. }
            | Cause::Source { name, .. }
            | Cause::Added { name, .. }
            | Cause::Removed { name, .. } => name,
        }
    }
}

/// One changed job and the first changed inputs its rebuild comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobWhy {
    pub attr: String,
    pub system: String,
    pub base_drv: String,
    pub drv: String,
    pub causes: Vec<Cause>,
}

/// A first changed input and how many of the explained jobs rebuild because of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Top {
    pub cause: Cause,
    pub jobs: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Why {
    pub jobs: Vec<JobWhy>,
    /// Causes by the number of jobs they rebuild, most first.
    pub top: Vec<Top>,
    /// Derivations the walk needs and was not given; empty when the answer is whole.
    #[serde(skip)]
    pub missing: Vec<String>,
}

/// A changed job: its key, the base's derivation and the candidate's.
pub type ChangedJob = (JobKey, String, String);

/// The store path's name: what follows the hash, without `.drv`.
pub fn store_name(path: &str) -> &str {
    let base = path.rsplit('/').next().unwrap_or(path);
    let name = base.split_once('-').map_or(base, |(_, n)| n);
    name.strip_suffix(".drv").unwrap_or(name)
}

/// The first changed inputs of every job in `jobs`, from the derivations in `known`.
pub fn explain(jobs: &[ChangedJob], known: &BTreeMap<String, DrvInputs>) -> Why {
    let mut walk = Walk {
        known,
        memo: BTreeMap::new(),
        missing: BTreeSet::new(),
    };
    let mut out = Why::default();
    let mut counts: BTreeMap<Cause, usize> = BTreeMap::new();
    for (key, base, new) in jobs {
        let causes: Vec<Cause> = walk.pair(base, new).0.into_iter().collect();
        for c in &causes {
            *counts.entry(c.clone()).or_default() += 1;
        }
        out.jobs.push(JobWhy {
            attr: key.attr.clone(),
            system: key.system.clone(),
            base_drv: base.clone(),
            drv: new.clone(),
            causes,
        });
    }
    out.top = counts
        .into_iter()
        .map(|(cause, jobs)| Top { cause, jobs })
        .collect();
    // Most rebuilds first; ties by cause, so the order does not depend on the map.
    out.top
        .sort_by(|a, b| b.jobs.cmp(&a.jobs).then_with(|| a.cause.cmp(&b.cause)));
    out.missing = walk.missing.into_iter().collect();
    out
}

struct Walk<'a> {
    known: &'a BTreeMap<String, DrvInputs>,
    /// Causes per (base, new) pair already walked: shared inputs are walked once.
    memo: BTreeMap<(String, String), BTreeSet<Cause>>,
    missing: BTreeSet<String>,
}

impl Walk<'_> {
    /// The first changed inputs below two derivations of the same thing, and whether
    /// every derivation below was known (only whole answers are remembered). Recursive
    /// along the changed subgraph only; its depth is the derivation graph's (Nixpkgs'
    /// longest chains, through the stdenv bootstrap, are some dozens deep).
    fn pair(&mut self, base: &str, new: &str) -> (BTreeSet<Cause>, bool) {
        if base == new {
            return (BTreeSet::new(), true);
        }
        let key = (base.to_string(), new.to_string());
        if let Some(c) = self.memo.get(&key) {
            return (c.clone(), true);
        }
        let (Some(b), Some(n)) = (self.known.get(base), self.known.get(new)) else {
            for d in [base, new] {
                if !self.known.contains_key(d) {
                    self.missing.insert(d.to_string());
                }
            }
            return (BTreeSet::new(), false);
        };
        let mut causes = BTreeSet::new();
        let mut whole = true;
        for (x, y) in matched(&b.drvs, &n.drvs) {
            match (x, y) {
                (Some(x), Some(y)) => {
                    let (c, w) = self.pair(&x, &y);
                    causes.extend(c);
                    whole &= w;
                }
                (None, Some(y)) => {
                    causes.insert(added(y));
                }
                (Some(x), None) => {
                    causes.insert(removed(x));
                }
                (None, None) => {}
            }
        }
        for (x, y) in matched(&b.srcs, &n.srcs) {
            let c = match (x, y) {
                (Some(x), Some(y)) => Cause::Source {
                    name: store_name(&y).to_string(),
                    base: x,
                    new: y,
                },
                (None, Some(y)) => added(y),
                (Some(x), None) => removed(x),
                (None, None) => continue,
            };
            causes.insert(c);
        }
        if !whole {
            return (causes, false);
        }
        if causes.is_empty() {
            causes.insert(Cause::Derivation {
                name: store_name(new).to_string(),
                base: base.to_string(),
                new: new.to_string(),
            });
        }
        self.memo.insert(key, causes.clone());
        (causes, true)
    }
}

fn added(new: String) -> Cause {
    Cause::Added {
        name: store_name(&new).to_string(),
        new,
    }
}

fn removed(base: String) -> Cause {
    Cause::Removed {
        name: store_name(&base).to_string(),
        base,
    }
}

/// The inputs that differ between the two sides, paired by store name (the hash is what
/// changes, the name stays): paths on both sides are left out; several differing paths of
/// one name are paired in order, the rest are added or removed.
fn matched(
    base: &BTreeSet<String>,
    new: &BTreeSet<String>,
) -> Vec<(Option<String>, Option<String>)> {
    let mut by_name: BTreeMap<&str, (Vec<&String>, Vec<&String>)> = BTreeMap::new();
    for p in base.difference(new) {
        by_name.entry(store_name(p)).or_default().0.push(p);
    }
    for p in new.difference(base) {
        by_name.entry(store_name(p)).or_default().1.push(p);
    }
    let mut out = vec![];
    for (_, (olds, news)) in by_name {
        let n = olds.len().max(news.len());
        for i in 0..n {
            out.push((
                olds.get(i).map(|s| s.to_string()),
                news.get(i).map(|s| s.to_string()),
            ));
        }
    }
    out
}

#[cfg(test)]
mod why_props;
