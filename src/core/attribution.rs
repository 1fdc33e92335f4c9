//! Attribution: which change of a failed batch broke which job, found through the
//! derivation graph instead of by rebuilding the batch.
//!
//! 1. Each change is applied alone to the base and only the blocking attributes are
//!    evaluated (cheap). A change that leaves a failing job's derivation as it is on the
//!    base is innocent for that job.
//! 2. One suspect: the culprit, with no build at all.
//! 3. Several suspects (or none, when changes only break in combination): binary search
//!    over the batch's merge chain, evaluating the job at each prefix; a prefix whose
//!    derivation equals the base's or the candidate's needs no build, others are built
//!    (remembered results reused).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::candidate::{short, Phase};
use super::{CandId, Command, Core, Millis, ProbeId, ProbeResult};
use crate::change::ChangeId;
use crate::evaluation::{Evaluation, JobKey, JobResult};
use crate::outcome::OutcomeClass;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Blocker {
    Build {
        key: JobKey,
        drv: String,
        base_drv: Option<String>,
        class: OutcomeClass,
        log_tail: String,
        root_drv: Option<String>,
    },
    EvalError {
        key: JobKey,
        message: String,
    },
    Missing {
        attr: String,
    },
    WholeEval {
        message: String,
    },
}

impl Blocker {
    pub(crate) fn key(&self) -> Option<&JobKey> {
        match self {
            Blocker::Build { key, .. } | Blocker::EvalError { key, .. } => Some(key),
            _ => None,
        }
    }

    fn attr(&self) -> Option<&str> {
        match self {
            Blocker::Build { key, .. } | Blocker::EvalError { key, .. } => Some(&key.attr),
            Blocker::Missing { attr } => Some(attr),
            Blocker::WholeEval { .. } => None,
        }
    }

    /// The rejection reason: job, derivation, log tail.
    pub(crate) fn reason(&self, how: &str) -> String {
        match self {
            Blocker::Build {
                key,
                drv,
                class,
                log_tail,
                root_drv,
                ..
            } => {
                let root = root_drv
                    .as_ref()
                    .map_or(String::new(), |r| format!(" (dependency {r} failed)"));
                format!(
                    "job {key} {} on the candidate: {drv}{root}; it builds on the base and this change alters its derivation ({how})\nlog tail:\n{log_tail}",
                    class_verb(*class)
                )
            }
            Blocker::EvalError { key, message } => {
                format!("job {key} fails to evaluate ({how}): {message}")
            }
            Blocker::Missing { attr } => format!("required job {attr} is missing ({how})"),
            Blocker::WholeEval { message } => {
                format!("the jobset fails to evaluate ({how}): {message}")
            }
        }
    }

    pub(crate) fn summary(&self) -> String {
        match self {
            Blocker::Build { key, class, .. } => format!("{key} {}", class_verb(*class)),
            Blocker::EvalError { key, .. } => format!("{key} fails to evaluate"),
            Blocker::Missing { attr } => format!("required {attr} missing"),
            Blocker::WholeEval { .. } => "jobset fails to evaluate".into(),
        }
    }
}

fn class_verb(c: OutcomeClass) -> &'static str {
    match c {
        OutcomeClass::DependencyFailed => "fails (a dependency failed)",
        OutcomeClass::TimedOut => "times out",
        _ => "fails to build",
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Alone {
    Attrs(Vec<(JobKey, JobResult)>),
    Full(Arc<Evaluation>),
    Conflict,
}

#[derive(Debug, Clone, PartialEq)]
struct Bisect {
    blocker: usize,
    /// Chain positions to search; the last is the whole batch, known bad.
    positions: Vec<usize>,
    lo: usize,
    hi: usize,
    /// The prefix commit being tested, when waiting for its full evaluation.
    waiting_commit: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Attribution {
    blockers: Vec<Blocker>,
    alone: Vec<Option<Alone>>,
    alone_probes: BTreeMap<ProbeId, usize>,
    /// Blockers still to be bisected, with their suspects' chain positions.
    todo: Vec<(usize, Vec<usize>)>,
    bisect: Option<Bisect>,
    culprits: BTreeMap<ChangeId, String>,
    pub(crate) waiting_drv: Option<String>,
}

impl Core {
    pub(crate) fn begin_attribution(&mut self, id: CandId, blockers: Vec<Blocker>, now: Millis) {
        let cand = self.candidates.get_mut(&id).expect("known");
        cand.phase = Phase::Attributing;
        cand.pending.clear();
        let n = cand.merged.len();
        let (repo, base) = (cand.repo.clone(), cand.base.clone().expect("prepared"));
        let heads: Vec<String> = cand
            .changes
            .iter()
            .map(|c| self.changes[c].head.clone())
            .collect();
        let list = blockers
            .iter()
            .map(|b| b.summary())
            .collect::<Vec<_>>()
            .join("; ");
        self.event(now, &repo, format!("candidate {id} failed: {list}"));
        let mut att = Attribution {
            blockers,
            alone: vec![None; n],
            alone_probes: BTreeMap::new(),
            todo: vec![],
            bisect: None,
            culprits: BTreeMap::new(),
            waiting_drv: None,
        };
        if n == 1 {
            let only = self.candidates[&id].changes[0];
            let reason = att
                .blockers
                .iter()
                .map(|b| b.reason("the only change in the batch"))
                .collect::<Vec<_>>()
                .join("\n\n");
            att.culprits.insert(only, reason);
            self.candidates.get_mut(&id).expect("known").attribution = Some(att);
            self.conclude(id, now);
            return;
        }
        let whole = att
            .blockers
            .iter()
            .any(|b| matches!(b, Blocker::WholeEval { .. }));
        let mut attrs: Vec<String> = att
            .blockers
            .iter()
            .filter_map(|b| b.attr().map(str::to_string))
            .collect();
        attrs.sort();
        attrs.dedup();
        for (i, head) in heads.into_iter().enumerate() {
            let probe = self.new_probe(id);
            att.alone_probes.insert(probe, i);
            self.out.push(Command::Probe {
                probe,
                repo: repo.clone(),
                base: base.clone(),
                heads: vec![head],
                attrs: (!whole).then(|| attrs.clone()),
            });
        }
        self.candidates.get_mut(&id).expect("known").attribution = Some(att);
    }

    fn new_probe(&mut self, cand: CandId) -> ProbeId {
        let p = self.next_probe;
        self.next_probe += 1;
        self.probes.insert(p, cand);
        p
    }

    pub(crate) fn on_probed(
        &mut self,
        probe: ProbeId,
        result: Result<ProbeResult, String>,
        now: Millis,
    ) {
        let Some(id) = self.probes.remove(&probe) else {
            return;
        };
        let Some(att) = self
            .candidates
            .get_mut(&id)
            .and_then(|c| c.attribution.as_mut())
        else {
            return;
        };
        let result = match result {
            Ok(r) => r,
            Err(msg) => {
                // Infrastructure trouble while probing: ask again later.
                let repo = self.candidates[&id].repo.clone();
                self.event(
                    now,
                    &repo,
                    format!("candidate {id}: probe failed, retrying: {msg}"),
                );
                self.reissue_probe(id, probe, now);
                return;
            }
        };
        if let Some(i) = att.alone_probes.remove(&probe) {
            att.alone[i] = Some(match result {
                ProbeResult::Attrs { jobs, .. } => Alone::Attrs(jobs),
                ProbeResult::Full { eval } => Alone::Full(eval),
                ProbeResult::Conflict(_) => Alone::Conflict,
            });
            if att.alone_probes.is_empty() {
                self.decide_suspects(id, now);
            }
            return;
        }
        // A bisection probe of a prefix.
        match result {
            ProbeResult::Attrs { jobs, .. } => self.bisect_observe_attrs(id, &jobs, now),
            ProbeResult::Full { eval } => {
                let commit = eval.commit.clone();
                self.evals.insert(commit.clone(), eval);
                self.attribution_eval_ready(id, &commit, now);
            }
            ProbeResult::Conflict(_) => self.bisect_step(id, true, now),
        }
    }

    fn reissue_probe(&mut self, id: CandId, old: ProbeId, now: Millis) {
        // Re-derive the probe from the attribution state: simplest is to restart it.
        let att = self.candidates[&id]
            .attribution
            .clone()
            .expect("attributing");
        if att.alone_probes.contains_key(&old) || att.alone.iter().any(Option::is_none) {
            let blockers = att.blockers.clone();
            let delay = self.cfg().retry_delay_ms;
            self.probes.retain(|_, c| *c != id);
            let before = self.out.len();
            self.begin_attribution(id, blockers, now);
            let cmds: Vec<Command> = self.out.drain(before..).collect();
            for c in cmds {
                match c {
                    Command::Probe { .. } => self.later(now + delay, c),
                    other => self.out.push(other),
                }
            }
        } else {
            self.bisect_test(id, now);
        }
    }

    fn decide_suspects(&mut self, id: CandId, now: Millis) {
        let cand = &self.candidates[&id];
        let att = cand.attribution.clone().expect("attributing");
        let mut culprits = att.culprits.clone();
        let mut todo = vec![];
        for (bi, b) in att.blockers.iter().enumerate() {
            let suspects: Vec<usize> = (0..att.alone.len())
                .filter(|&i| suspect(b, att.alone[i].as_ref().expect("all in")))
                .collect();
            if suspects.len() == 1 {
                let c = cand.changes[suspects[0]];
                let reason = b.reason("the only change in the batch that alters this job");
                culprits
                    .entry(c)
                    .and_modify(|r| r.push_str(&format!("\n\n{reason}")))
                    .or_insert(reason);
            } else {
                todo.push((bi, suspects));
            }
        }
        let att = self
            .candidates
            .get_mut(&id)
            .and_then(|c| c.attribution.as_mut())
            .expect("attributing");
        att.culprits = culprits;
        att.todo = todo.into_iter().rev().collect();
        self.next_bisect(id, now);
    }

    fn next_bisect(&mut self, id: CandId, now: Millis) {
        let n = self.candidates[&id].merged.len();
        let changes = self.candidates[&id].changes.clone();
        loop {
            let att = self
                .candidates
                .get_mut(&id)
                .and_then(|c| c.attribution.as_mut())
                .expect("attributing");
            let Some((b, s)) = att.todo.pop() else {
                self.conclude(id, now);
                return;
            };
            // A blocker already explained by a known culprit is retested without it.
            if s.iter().any(|&i| att.culprits.contains_key(&changes[i])) {
                continue;
            }
            let mut positions = if s.is_empty() { (0..n).collect() } else { s };
            if positions.last() != Some(&(n - 1)) {
                positions.push(n - 1);
            }
            let hi = positions.len() - 1;
            att.bisect = Some(Bisect {
                blocker: b,
                positions,
                lo: 0,
                hi,
                waiting_commit: None,
            });
            self.bisect_test(id, now);
            return;
        }
    }

    /// Tests the middle prefix of the current search, or concludes the search.
    fn bisect_test(&mut self, id: CandId, now: Millis) {
        let cand = &self.candidates[&id];
        let att = cand.attribution.as_ref().expect("attributing");
        let bs = att.bisect.clone().expect("bisecting");
        if bs.lo >= bs.hi {
            let pos = bs.positions[bs.hi];
            let culprit = cand.changes[pos];
            let reason = att.blockers[bs.blocker].reason("found by testing prefixes of the batch");
            let att = self
                .candidates
                .get_mut(&id)
                .and_then(|c| c.attribution.as_mut())
                .expect("attributing");
            att.culprits
                .entry(culprit)
                .and_modify(|r| r.push_str(&format!("\n\n{reason}")))
                .or_insert(reason);
            att.bisect = None;
            self.next_bisect(id, now);
            return;
        }
        let mid = (bs.lo + bs.hi) / 2;
        let prefix = cand.merged[bs.positions[mid]].1.clone();
        let blocker = att.blockers[bs.blocker].clone();
        let repo = cand.repo.clone();
        if let Blocker::WholeEval { .. } = blocker {
            if let Some(e) = self.evals.get(&prefix).cloned() {
                return self.bisect_step(id, e.failed(), now);
            }
            let att = self
                .candidates
                .get_mut(&id)
                .and_then(|c| c.attribution.as_mut())
                .expect("attributing");
            att.bisect.as_mut().expect("bisecting").waiting_commit = Some(prefix.clone());
            let probe = self.new_probe(id);
            self.out.push(Command::Probe {
                probe,
                repo,
                base: prefix,
                heads: vec![],
                attrs: None,
            });
            return;
        }
        let probe = self.new_probe(id);
        self.out.push(Command::Probe {
            probe,
            repo,
            base: prefix,
            heads: vec![],
            attrs: Some(vec![blocker.attr().expect("job blocker").to_string()]),
        });
    }

    fn bisect_observe_attrs(&mut self, id: CandId, jobs: &[(JobKey, JobResult)], now: Millis) {
        let att = self.candidates[&id]
            .attribution
            .as_ref()
            .expect("attributing");
        let Some(bs) = att.bisect.as_ref() else {
            return;
        };
        let bad = match &att.blockers[bs.blocker] {
            Blocker::Build {
                key, drv, base_drv, ..
            } => {
                match jobs.iter().find(|(k, _)| k == key).map(|(_, r)| r) {
                    None => false,
                    Some(JobResult::Error(_)) => true,
                    Some(JobResult::Ok(j)) if Some(&j.drv_path) == base_drv.as_ref() => false,
                    Some(JobResult::Ok(j)) if &j.drv_path == drv => true,
                    Some(JobResult::Ok(j)) => match self.known(&j.drv_path, now) {
                        Some(m) => !m.ok(),
                        None => {
                            // The one place attribution spends a build.
                            let d = j.drv_path.clone();
                            if self.request_build(&d, self.cand_prio(id), now) {
                                self.candidates.get_mut(&id).expect("known").extra_builds += 1;
                                self.save_id(id);
                            }
                            let att = self
                                .candidates
                                .get_mut(&id)
                                .and_then(|c| c.attribution.as_mut())
                                .expect("attributing");
                            att.waiting_drv = Some(d);
                            return;
                        }
                    },
                }
            }
            Blocker::EvalError { key, .. } => matches!(
                jobs.iter().find(|(k, _)| k == key),
                Some((_, JobResult::Error(_)))
            ),
            Blocker::Missing { attr } => !jobs
                .iter()
                .any(|(k, r)| k.attr.starts_with(attr.as_str()) && r.job().is_some()),
            Blocker::WholeEval { .. } => false,
        };
        self.bisect_step(id, bad, now);
    }

    pub(crate) fn attribution_build_done(&mut self, id: CandId, drv: &str, now: Millis) {
        let att = self
            .candidates
            .get_mut(&id)
            .and_then(|c| c.attribution.as_mut())
            .expect("attributing");
        if att.waiting_drv.as_deref() != Some(drv) {
            return;
        }
        att.waiting_drv = None;
        let bad = self.known(drv, now).is_none_or(|m| !m.ok());
        self.bisect_step(id, bad, now);
    }

    pub(crate) fn attribution_eval_ready(&mut self, id: CandId, commit: &str, now: Millis) {
        let Some(att) = self
            .candidates
            .get_mut(&id)
            .and_then(|c| c.attribution.as_mut())
        else {
            return;
        };
        let Some(bs) = att.bisect.as_mut() else {
            return;
        };
        if bs.waiting_commit.as_deref() != Some(commit) {
            return;
        }
        bs.waiting_commit = None;
        let failed = self.evals.get(commit).is_some_and(|e| e.failed());
        self.bisect_step(id, failed, now);
    }

    fn bisect_step(&mut self, id: CandId, bad: bool, now: Millis) {
        let att = self
            .candidates
            .get_mut(&id)
            .and_then(|c| c.attribution.as_mut())
            .expect("attributing");
        let bs = att.bisect.as_mut().expect("bisecting");
        let mid = (bs.lo + bs.hi) / 2;
        if bad {
            bs.hi = mid;
        } else {
            bs.lo = mid + 1;
        }
        self.bisect_test(id, now);
    }

    /// Rejects the culprits and retests the innocents at once, in a follow-up candidate.
    fn conclude(&mut self, id: CandId, now: Millis) {
        let cand = self.candidates[&id].clone();
        let att = cand.attribution.clone().expect("attributing");
        let mut culprits = att.culprits;
        if culprits.is_empty() {
            // Cannot happen (the full batch is known bad), but never land a red batch.
            let last = *cand.changes.last().expect("non-empty");
            culprits.insert(
                last,
                att.blockers
                    .iter()
                    .map(|b| b.reason("last change of a failing batch"))
                    .collect::<Vec<_>>()
                    .join("\n\n"),
            );
        }
        for (c, reason) in &culprits {
            self.reject(*c, reason.clone(), now);
        }
        let innocents: Vec<ChangeId> = cand
            .changes
            .iter()
            .copied()
            .filter(|c| !culprits.contains_key(c))
            .collect();
        let names = culprits
            .keys()
            .map(|c| format!("#{c}"))
            .collect::<Vec<_>>()
            .join(" ");
        self.event(
            now,
            &cand.repo,
            format!(
                "candidate {id}: culprit {names} on base {}; {} extra builds so far; {} innocent changes retested",
                short(cand.base.as_deref().unwrap_or("")),
                cand.extra_builds,
                innocents.len()
            ),
        );
        self.finish(id, format!("rejected {names}"), now);
        if !innocents.is_empty() {
            let root = cand.follow_up_of.unwrap_or(id);
            self.start_candidate(&cand.repo, &cand.branch, innocents, Some(root), now);
        }
    }
}

/// Whether a change applied alone alters what the blocker is about.
fn suspect(b: &Blocker, alone: &Alone) -> bool {
    match (b, alone) {
        (_, Alone::Conflict) => true,
        (Blocker::WholeEval { .. }, Alone::Full(e)) => e.failed(),
        (Blocker::WholeEval { .. }, Alone::Attrs(_)) => true,
        (Blocker::Build { key, base_drv, .. }, Alone::Attrs(jobs)) => {
            match jobs.iter().find(|(k, _)| k == key) {
                Some((_, JobResult::Ok(j))) => Some(&j.drv_path) != base_drv.as_ref(),
                Some((_, JobResult::Error(_))) => true,
                None => false,
            }
        }
        (Blocker::EvalError { key, .. }, Alone::Attrs(jobs)) => {
            matches!(
                jobs.iter().find(|(k, _)| k == key),
                Some((_, JobResult::Error(_)))
            )
        }
        (Blocker::Missing { attr }, Alone::Attrs(jobs)) => !jobs.iter().any(|(k, r)| {
            (k.attr == *attr || k.attr.starts_with(&format!("{attr}."))) && r.job().is_some()
        }),
        (_, Alone::Full(_)) => true,
    }
}
