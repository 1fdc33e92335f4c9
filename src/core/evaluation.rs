//! Evaluations of a jobset at one commit, and the diff of two evaluations
//! (the rebuild set). Pure data and functions: the Nix adapter fills them.

use serde::{Deserialize, Serialize};

/// (attribute path, system): the identity of a job across commits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct JobKey {
    pub attr: String,
    pub system: String,
}

impl std::fmt::Display for JobKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.attr, self.system)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub drv_path: String,
    /// (output name, store path), sorted by name.
    pub outputs: Vec<(String, String)>,
    pub maintainers: Vec<Maintainer>,
}

/// A maintainer from `meta.maintainers`: Nixpkgs' attribute sets (`github`, `email`,
/// `name`, `matrix`) or a plain string, read as a forge handle.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Maintainer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub github: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matrix: Option<String>,
}

impl Maintainer {
    /// A plain-string maintainer: a forge handle.
    pub fn handle(h: &str) -> Maintainer {
        Maintainer {
            github: Some(h.to_string()),
            ..Maintainer::default()
        }
    }

    /// Who this is, for deduplication, caps and opt-out: the handle, else the email,
    /// else the name.
    pub fn id(&self) -> &str {
        self.github
            .as_deref()
            .or(self.email.as_deref())
            .or(self.name.as_deref())
            .unwrap_or("unknown")
    }

    /// Whether an opt-out entry (a handle or an email) names this maintainer.
    pub fn is(&self, who: &str) -> bool {
        self.github.as_deref() == Some(who) || self.email.as_deref() == Some(who)
    }

    /// A maintainer from one JSON value of `meta.maintainers`; `None` for anything else.
    pub fn from_json(v: &serde_json::Value) -> Option<Maintainer> {
        let text = |o: &serde_json::Map<String, serde_json::Value>, k: &str| {
            o.get(k).and_then(|v| v.as_str()).map(str::to_string)
        };
        match v {
            serde_json::Value::String(s) => Some(Maintainer::handle(s)),
            serde_json::Value::Object(o) => {
                let m = Maintainer {
                    github: text(o, "github").or_else(|| text(o, "handle")),
                    email: text(o, "email"),
                    name: text(o, "name"),
                    matrix: text(o, "matrix"),
                };
                (m != Maintainer::default()).then_some(m)
            }
            _ => None,
        }
    }
}

/// Stored evaluations hold maintainers as plain handles (before) or as objects.
impl<'de> Deserialize<'de> for Maintainer {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        Maintainer::from_json(&v)
            .ok_or_else(|| serde::de::Error::custom("a maintainer is a string or an object"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobResult {
    Ok(Job),
    /// The attribute failed to evaluate; the message is Nix's.
    Error(String),
}

impl JobResult {
    pub fn job(&self) -> Option<&Job> {
        match self {
            JobResult::Ok(j) => Some(j),
            JobResult::Error(_) => None,
        }
    }
}

/// All jobs of one commit. `jobs` is sorted by key and has no duplicates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evaluation {
    pub commit: String,
    pub outcome: EvalOutcome,
    pub jobs: Vec<(JobKey, JobResult)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EvalOutcome {
    Ok,
    /// The jobset as a whole did not evaluate (syntax error, not an attrset, ...).
    Failed(String),
}

impl Evaluation {
    pub fn new(commit: String, outcome: EvalOutcome, mut jobs: Vec<(JobKey, JobResult)>) -> Self {
        jobs.sort_by(|a, b| a.0.cmp(&b.0));
        jobs.dedup_by(|a, b| a.0 == b.0);
        Evaluation {
            commit,
            outcome,
            jobs,
        }
    }

    pub fn get(&self, key: &JobKey) -> Option<&JobResult> {
        self.jobs
            .binary_search_by(|(k, _)| k.cmp(key))
            .ok()
            .map(|i| &self.jobs[i].1)
    }

    /// Jobs whose attribute path is `attr` or below it (`attr.` prefix).
    pub fn by_attr<'a>(
        &'a self,
        attr: &'a str,
    ) -> impl Iterator<Item = (&'a JobKey, &'a JobResult)> {
        self.jobs
            .iter()
            .filter(move |(k, _)| attr_under(&k.attr, attr))
            .map(|(k, r)| (k, r))
    }

    pub fn failed(&self) -> bool {
        matches!(self.outcome, EvalOutcome::Failed(_))
    }
}

/// Whether attribute path `path` is `prefix` or below it (`prefix.` and more).
pub fn attr_under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// Jobs that differ between two evaluations, by output paths per (attr, system).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvalDiff {
    pub added: Vec<JobKey>,
    pub changed: Vec<JobKey>,
    pub removed: Vec<JobKey>,
    /// Evaluates to an error on the new side but not on the old.
    pub failing: Vec<JobKey>,
}

impl EvalDiff {
    /// Added and changed jobs: what must be built to judge the new side.
    pub fn rebuild_set(&self) -> impl Iterator<Item = &JobKey> {
        self.added.iter().chain(self.changed.iter())
    }
}

/// One key of a merge-join of two evaluations' job lists.
pub enum Joined<'a> {
    Old(&'a JobKey, &'a JobResult),
    New(&'a JobKey, &'a JobResult),
    Both(&'a JobKey, &'a JobResult, &'a JobResult),
}

/// Walks both sorted job lists once, key by key: O(n), no allocation.
pub fn join<'a>(old: &'a Evaluation, new: &'a Evaluation) -> impl Iterator<Item = Joined<'a>> {
    let (a, b) = (&old.jobs, &new.jobs);
    let (mut i, mut j) = (0, 0);
    std::iter::from_fn(move || {
        let next = match (a.get(i), b.get(j)) {
            (None, None) => return None,
            (Some(x), Some(y)) if x.0 == y.0 => Joined::Both(&y.0, &x.1, &y.1),
            (Some(x), Some(y)) if x.0 > y.0 => Joined::New(&y.0, &y.1),
            (Some(x), _) => Joined::Old(&x.0, &x.1),
            (None, Some(y)) => Joined::New(&y.0, &y.1),
        };
        match next {
            Joined::Old(..) => i += 1,
            Joined::New(..) => j += 1,
            Joined::Both(..) => (i, j) = (i + 1, j + 1),
        }
        Some(next)
    })
}

/// Jobs added, changed, removed and newly failing to evaluate, in one pass.
pub fn diff(old: &Evaluation, new: &Evaluation) -> EvalDiff {
    let mut d = EvalDiff::default();
    for step in join(old, new) {
        match step {
            Joined::Old(k, _) => d.removed.push(k.clone()),
            Joined::New(k, JobResult::Ok(_)) => d.added.push(k.clone()),
            Joined::New(k, JobResult::Error(_)) => d.failing.push(k.clone()),
            Joined::Both(k, x, y) => match (x, y) {
                (JobResult::Ok(x), JobResult::Ok(y)) if x.outputs != y.outputs => {
                    d.changed.push(k.clone())
                }
                (JobResult::Ok(_), JobResult::Ok(_)) => {}
                // Newly evaluating: must be built to know it works.
                (JobResult::Error(_), JobResult::Ok(_)) => d.added.push(k.clone()),
                (JobResult::Ok(_), JobResult::Error(_)) => d.failing.push(k.clone()),
                (JobResult::Error(_), JobResult::Error(_)) => {}
            },
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(attr: &str, out: &str) -> (JobKey, JobResult) {
        (
            JobKey {
                attr: attr.into(),
                system: "x86_64-linux".into(),
            },
            JobResult::Ok(Job {
                drv_path: format!("/nix/store/{out}.drv"),
                outputs: vec![("out".into(), format!("/nix/store/{out}"))],
                maintainers: vec![],
            }),
        )
    }

    fn err(attr: &str) -> (JobKey, JobResult) {
        (
            JobKey {
                attr: attr.into(),
                system: "x86_64-linux".into(),
            },
            JobResult::Error("boom".into()),
        )
    }

    #[test]
    fn diff_classifies_every_kind() {
        let old = Evaluation::new(
            "a".into(),
            EvalOutcome::Ok,
            vec![
                job("same", "1"),
                job("chg", "2"),
                job("gone", "3"),
                job("breaks", "4"),
                err("fixed"),
                err("still"),
            ],
        );
        let new = Evaluation::new(
            "b".into(),
            EvalOutcome::Ok,
            vec![
                job("same", "1"),
                job("chg", "2x"),
                job("new", "5"),
                err("breaks"),
                job("fixed", "6"),
                err("still"),
                err("newerr"),
            ],
        );
        let d = diff(&old, &new);
        let names = |v: &Vec<JobKey>| v.iter().map(|k| k.attr.clone()).collect::<Vec<_>>();
        assert_eq!(names(&d.added), vec!["fixed", "new"]);
        assert_eq!(names(&d.changed), vec!["chg"]);
        assert_eq!(names(&d.removed), vec!["gone"]);
        assert_eq!(names(&d.failing), vec!["breaks", "newerr"]);
    }

    #[test]
    fn by_attr_matches_prefix_at_dot_only() {
        let e = Evaluation::new(
            "c".into(),
            EvalOutcome::Ok,
            vec![job("py", "1"), job("py.a", "2"), job("pyx", "3")],
        );
        let got: Vec<_> = e.by_attr("py").map(|(k, _)| k.attr.as_str()).collect();
        assert_eq!(got, vec!["py", "py.a"]);
    }
}
