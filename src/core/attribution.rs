//! Attribution: which change of a failed batch broke which job, found through the
//! derivation graph instead of by rebuilding the batch. A change is blamed only on
//! evidence: an evaluation or a build showing the job broken with it and not without it.
//!
//! 1. Probes (evaluations of the blocking attributes only, cheap): the base alone, and
//!    each change applied alone to the base. Each probe tells, per blocker, what the job
//!    is there: absent, failing to evaluate, or a derivation.
//! 2. A blocker that is just as broken on the base is not the batch's doing: it is
//!    dropped; for a required job, the batch waits instead (see `hold`): a required job
//!    never lands failing, whoever broke it.
//! 3. A change whose probe equals the base's leaves the job alone: innocent for it. An
//!    absent job is never failing. A change whose probe shows the job broken (the
//!    candidate's failing derivation itself, an evaluation error, a derivation known to
//!    fail, or one built now and failing) is a culprit for it, each on its own evidence.
//! 4. Blockers are attributed one by one, root failures first. A blocker that a culprit
//!    already found alters needs no more evidence: the other changes are retested
//!    without the culprit in the follow-up candidate.
//! 5. When no change breaks the job alone, it breaks only in combination: binary search
//!    over the batch's merge chain finds the first prefix where it is broken (a prefix
//!    whose derivation is the base's or the candidate's needs no build).
//! 6. A blocker nothing explains (which the steps above rule out, but never guess): the
//!    changes are tested separately.

use std::collections::{BTreeMap, BTreeSet};

use super::blocker::Blocker;
use super::candidate::{Candidates, Ctx};
use super::evidence::{Attribution, Broken, JobState, Probe, Search, Slot};
use super::{CandId, Command, Millis, ProbeId, ProbeResult};
use crate::core::change::{short, ChangeId};
use crate::core::evaluation::attr_under;
use crate::core::outcome::OutcomeClass;

impl Candidates {
    /// Starts attributing `blockers`; the caller has set the candidate's phase.
    pub(crate) fn begin_attribution(
        &mut self,
        cx: &mut Ctx,
        id: CandId,
        mut blockers: Vec<Blocker>,
        now: Millis,
    ) {
        // A job that failed because a dependency did: when that dependency is itself a
        // job of the candidate, its failure is a blocker of its own, attributed first
        // (failing fast, its own build may not have been reported yet).
        let roots: Vec<Blocker> = blockers
            .iter()
            .filter_map(|b| match b {
                Blocker::Build {
                    root_drv: Some(r),
                    key,
                    ..
                } => Some((r.clone(), key.clone())),
                _ => None,
            })
            .filter_map(|(r, dependent)| {
                let t = self.by_id[&id].targets.iter().find(|t| t.drv == r)?;
                Some(Blocker::Build {
                    key: t.key.clone(),
                    drv: r.clone(),
                    base_drv: t.base_drv.clone(),
                    class: OutcomeClass::Failed,
                    log_tail: format!("(failed as a dependency of {dependent})"),
                    root_drv: None,
                })
            })
            .collect();
        for r in roots {
            let known = blockers
                .iter()
                .any(|b| matches!(b, Blocker::Build { drv, .. } if Some(drv) == r.drv()));
            if !known {
                blockers.push(r);
            }
        }
        let cand = self.by_id.get_mut(&id).expect("known");
        cand.pending.clear();
        let n = cand.merged.len();
        let (repo, base) = (cand.repo.clone(), cand.base.clone().expect("prepared"));
        let heads: Vec<String> = cand
            .changes
            .iter()
            .map(|c| cx.queue.changes[c].head.clone())
            .collect();
        let list = blockers
            .iter()
            .map(|b| b.summary())
            .collect::<Vec<_>>()
            .join("; ");
        cx.fx
            .event(now, &repo, format!("candidate {id} failed: {list}"));
        let mut order: Vec<usize> = (0..blockers.len()).collect();
        order.sort_by_key(|&i| blockers[i].rank());
        // Every probe asks for every blocker's attribute, so that one answer serves each
        // blocker; a jobset that does not evaluate needs full evaluations.
        let whole = blockers
            .iter()
            .any(|b| matches!(b, Blocker::WholeEval { .. }));
        let probe_attrs = (!whole).then(|| blocker_attrs(&blockers));
        let mut att = Attribution {
            probe_attrs: probe_attrs.clone(),
            blockers,
            base: None,
            alone: vec![None; n],
            prefix: BTreeMap::new(),
            probes: BTreeMap::new(),
            todo: order.into_iter().rev().collect(),
            search: None,
            culprits: BTreeMap::new(),
            blamed: BTreeMap::new(),
            unexplained: vec![],
            pinned: BTreeSet::new(),
            deferred: vec![],
            held: vec![],
            preexisting: vec![],
            waiting: BTreeSet::new(),
        };
        // The base's full evaluation is at hand when the jobset as a whole is in question.
        if whole {
            att.base = cx.builds.evals.get(&base).cloned().map(Probe::Full);
        }
        let mut probes = vec![];
        if att.base.is_none() {
            probes.push((Slot::Base, vec![]));
        }
        if n > 1 {
            for (i, head) in heads.into_iter().enumerate() {
                probes.push((Slot::Alone(i), vec![head]));
            }
        }
        for (slot, heads) in probes {
            let probe = self.new_probe(id);
            att.probes.insert(probe, slot);
            cx.fx.push(Command::Probe {
                probe,
                repo: repo.clone(),
                base: base.clone(),
                heads,
                attrs: probe_attrs.clone(),
            });
        }
        self.by_id.get_mut(&id).expect("known").attribution = Some(att);
        self.attribute_next(cx, id, now);
    }

    fn new_probe(&mut self, cand: CandId) -> ProbeId {
        let p = self.next_probe;
        self.next_probe += 1;
        self.probes.insert(p, cand);
        p
    }

    fn att(&mut self, id: CandId) -> &mut Attribution {
        self.by_id
            .get_mut(&id)
            .and_then(|c| c.attribution.as_mut())
            .expect("attributing")
    }

    pub(crate) fn on_probed(
        &mut self,
        cx: &mut Ctx,
        probe: ProbeId,
        result: Result<ProbeResult, String>,
        now: Millis,
    ) {
        let Some(id) = self.probes.remove(&probe) else {
            return;
        };
        let Some(slot) = self
            .by_id
            .get_mut(&id)
            .and_then(|c| c.attribution.as_mut())
            .and_then(|a| a.probes.remove(&probe))
        else {
            return;
        };
        let result = match result {
            Ok(r) => r,
            Err(msg) => {
                // Infrastructure trouble while probing: the same probe again, later.
                let repo = self.by_id[&id].repo.clone();
                cx.fx.event(
                    now,
                    &repo,
                    format!("candidate {id}: probe failed, retrying: {msg}"),
                );
                self.reissue_probe(cx, id, slot, now);
                return;
            }
        };
        let p = match result {
            ProbeResult::Attrs { jobs, .. } => Probe::Attrs(jobs),
            ProbeResult::Full { eval } => {
                cx.builds.evals.insert(eval.commit.clone(), eval.clone());
                Probe::Full(eval)
            }
            ProbeResult::Conflict(_) => Probe::Conflict,
        };
        let att = self.att(id);
        match slot {
            Slot::Base => att.base = Some(p),
            Slot::Alone(i) => att.alone[i] = Some(p),
            Slot::Prefix(j) => {
                att.prefix.insert(j, p);
            }
        }
        self.attribute_next(cx, id, now);
    }

    fn reissue_probe(&mut self, cx: &mut Ctx, id: CandId, slot: Slot, now: Millis) {
        let cand = &self.by_id[&id];
        let att = cand.attribution.as_ref().expect("attributing");
        let base = cand.base.clone().expect("prepared");
        let (base, heads) = match slot {
            Slot::Base => (base, vec![]),
            Slot::Alone(i) => (base, vec![cx.queue.changes[&cand.changes[i]].head.clone()]),
            Slot::Prefix(j) => (cand.merged[j].1.clone(), vec![]),
        };
        let attrs = att.probe_attrs.clone();
        let repo = cand.repo.clone();
        let probe = self.new_probe(id);
        self.att(id).probes.insert(probe, slot);
        let delay = cx.cfg.retry_delay_ms;
        cx.fx.later(
            now + delay,
            Command::Probe {
                probe,
                repo,
                base,
                heads,
                attrs,
            },
        );
    }

    /// Whether a job state shows the blocker's failure, from what is known now.
    fn broken(&self, cx: &Ctx, b: &Blocker, s: &JobState, now: Millis) -> Broken {
        match (b, s) {
            (_, JobState::Unknown) => Broken::Unknown,
            (_, JobState::WholeFailed) => Broken::Yes,
            (Blocker::Build { drv, .. }, JobState::Drv(d)) => {
                if d == drv {
                    return Broken::Yes;
                }
                match cx.builds.known(d, now) {
                    Some(m) if m.ok() => Broken::No,
                    Some(_) => Broken::Yes,
                    None => Broken::Build(d.clone()),
                }
            }
            (Blocker::Build { .. } | Blocker::EvalError { .. }, JobState::EvalError) => Broken::Yes,
            (Blocker::Missing { .. }, JobState::Absent) => Broken::Yes,
            _ => Broken::No,
        }
    }

    /// `broken` for the base's state of a blocker. A job that fails to evaluate on the
    /// candidate but was a derivation on the base is broken there too when that
    /// derivation fails to build (Hydra's "still failing", not newly broken).
    fn broken_on_base(&self, cx: &Ctx, b: &Blocker, s: &JobState, now: Millis) -> Broken {
        match (b, s) {
            (Blocker::EvalError { .. }, JobState::Drv(d)) => match cx.builds.known(d, now) {
                Some(m) if m.ok() => Broken::No,
                Some(_) => Broken::Yes,
                None => Broken::Build(d.clone()),
            },
            _ => self.broken(cx, b, s, now),
        }
    }

    /// Drives the attribution as far as the known results allow.
    fn attribute_next(&mut self, cx: &mut Ctx, id: CandId, now: Millis) {
        loop {
            let cand = &self.by_id[&id];
            let att = cand.attribution.as_ref().expect("attributing");
            if !att.probes.is_empty()
                && (att.base.is_none() || att.alone.iter().any(Option::is_none))
            {
                return; // the first probes are still out
            }
            if !att.waiting.is_empty() {
                return;
            }
            if att.search.is_some() {
                if !self.search_step(cx, id, now) {
                    return;
                }
                continue;
            }
            let Some(&bi) = att.todo.last() else {
                // In the order pinned, root failures first.
                let att = self.att(id);
                if att.deferred.is_empty() {
                    return self.conclude(cx, id, now);
                }
                let (bi, alters, positions) = att.deferred.remove(0);
                if !self.explained(id, bi, &alters) {
                    let hi = positions.len() - 1;
                    self.att(id).search = Some(Search {
                        blocker: bi,
                        positions,
                        lo: 0,
                        hi,
                        refined: false,
                    });
                }
                continue;
            };
            match self.attribute_blocker(cx, id, bi, now) {
                Step::Done => {
                    self.att(id).todo.pop();
                }
                Step::Wait => return,
            }
        }
    }

    /// One blocker, from the probes of the base and of each change alone.
    fn attribute_blocker(&mut self, cx: &mut Ctx, id: CandId, bi: usize, now: Millis) -> Step {
        let cand = &self.by_id[&id];
        let att = cand.attribution.as_ref().expect("attributing");
        let b = att.blockers[bi].clone();
        let n = cand.merged.len();
        let base_state = b.state(att.base.as_ref().expect("base probed"));
        match self.broken_on_base(cx, &b, &base_state, now) {
            Broken::Yes => {
                // Just as broken without the batch: not the batch's doing.
                let required = self.is_required(cx, id, &b);
                let repo = cand.repo.clone();
                cx.fx.event(
                    now,
                    &repo,
                    format!(
                        "candidate {id}: {} fails on the base too; nobody is blamed for it",
                        b.summary()
                    ),
                );
                if required {
                    self.att(id).held.push(bi);
                } else if let Some(k) = b.key() {
                    let k = k.clone();
                    self.att(id).preexisting.push(k);
                }
                return Step::Done;
            }
            Broken::Build(_) => {
                // Whether the job fails on the base is part of the verdict, not of
                // attribution: build every blocker's base version at once.
                let mut drvs: Vec<String> = att
                    .todo
                    .iter()
                    .filter_map(|&o| {
                        let ob = &att.blockers[o];
                        match self.broken_on_base(cx, ob, &ob.state(att.base.as_ref()?), now) {
                            Broken::Build(d) => Some(d),
                            _ => None,
                        }
                    })
                    .collect();
                drvs.sort();
                drvs.dedup();
                return self.gather(cx, id, drvs, false, now);
            }
            Broken::No | Broken::Unknown => {}
        }
        if n == 1 {
            let only = cand.changes[0];
            let how = "the only change in the batch: the job is broken with it and not without it";
            self.blame(id, bi, only, b.reason(how));
            return Step::Done;
        }
        let states: Vec<JobState> = att
            .alone
            .iter()
            .map(|p| b.state(p.as_ref().expect("alone probed")))
            .collect();
        let alters: Vec<usize> = (0..n).filter(|&i| states[i] != base_state).collect();
        let culprits: Vec<usize> = alters
            .iter()
            .copied()
            .filter(|&i| self.broken(cx, &b, &states[i], now) == Broken::Yes)
            .collect();
        let changes = cand.changes.clone();
        if culprits.is_empty() && self.explained(id, bi, &alters) {
            return Step::Done;
        }
        if !culprits.is_empty() {
            for i in culprits {
                let how = match &states[i] {
                    JobState::Drv(d) if matches!(&b, Blocker::Build { drv, .. } if drv == d) => {
                        "this change alone on the base gives the same failing derivation"
                            .to_string()
                    }
                    JobState::Drv(d) => {
                        format!("with this change alone on the base it fails too: {d}")
                    }
                    JobState::EvalError => {
                        "with this change alone on the base the job fails to evaluate".to_string()
                    }
                    JobState::Absent => {
                        "with this change alone on the base the job is missing".to_string()
                    }
                    _ => "with this change alone on the base the jobset fails to evaluate"
                        .to_string(),
                };
                self.blame(id, bi, changes[i], b.reason(&how));
            }
            return Step::Done;
        }
        // No change is known to break it alone (their derivations of the job are
        // unbuilt, or it breaks only in combination): search the merge chain for the
        // first prefix where it is broken, among the changes that alter it (all of
        // them when none does alone). The whole chain is known broken.
        let mut positions = if alters.is_empty() {
            (0..n).collect()
        } else {
            alters.clone()
        };
        if positions.last() != Some(&(n - 1)) {
            positions.push(n - 1);
        }
        // Searched once every blocker that can be pinned without one is: a culprit
        // found meanwhile may explain this one.
        self.att(id).deferred.push((bi, alters, positions));
        Step::Done
    }

    /// The culprits already found that explain a blocker (none: unexplained): they alter
    /// the job (the others are retested without them), or broke the dependency the job
    /// failed on.
    fn explainers(&self, id: CandId, bi: usize, alters: &[usize]) -> Vec<ChangeId> {
        let cand = &self.by_id[&id];
        let att = cand.attribution.as_ref().expect("attributing");
        let altering: Vec<ChangeId> = alters
            .iter()
            .map(|&i| cand.changes[i])
            .filter(|c| att.culprits.contains_key(c))
            .collect();
        if !altering.is_empty() {
            return altering;
        }
        let Blocker::Build {
            root_drv: Some(root),
            ..
        } = &att.blockers[bi]
        else {
            return vec![];
        };
        att.blamed
            .iter()
            .filter(|(_, bs)| {
                bs.iter()
                    .any(|&o| matches!(&att.blockers[o], Blocker::Build { drv, .. } if drv == root))
            })
            .map(|(c, _)| *c)
            .collect()
    }

    /// Whether a culprit already found explains a blocker; each explaining culprit is
    /// answerable for the job too (a held change's grace covers it).
    fn explained(&mut self, id: CandId, bi: usize, alters: &[usize]) -> bool {
        let by = self.explainers(id, bi, alters);
        let att = self.att(id);
        for c in &by {
            att.blamed.entry(*c).or_default().insert(bi);
        }
        !by.is_empty()
    }

    /// Asks for builds whose results decide a blocker; the blocker is looked at again
    /// once they are in.
    /// `extra`: attribution's own cost; otherwise the build belongs to the verdict.
    fn gather(
        &mut self,
        cx: &mut Ctx,
        id: CandId,
        drvs: Vec<String>,
        extra: bool,
        now: Millis,
    ) -> Step {
        let prio = self.cand_prio(cx, id);
        for d in drvs {
            if cx.request_build(&d, prio, now) {
                let c = self.by_id.get_mut(&id).expect("known");
                if extra {
                    c.extra_builds += 1;
                } else {
                    c.builds += 1;
                }
            }
            self.att(id).waiting.insert(d);
        }
        self.save_id(cx, id);
        Step::Wait
    }

    /// One step of the prefix search. False while waiting for a probe or a build.
    fn search_step(&mut self, cx: &mut Ctx, id: CandId, now: Millis) -> bool {
        let cand = &self.by_id[&id];
        let att = cand.attribution.as_ref().expect("attributing");
        let s = att.search.clone().expect("searching");
        let b = att.blockers[s.blocker].clone();
        if s.lo >= s.hi && !s.refined {
            // The first broken prefix is after the last good position searched and at
            // or before this one. Changes in between that alter the job only in
            // combination are tested too (their prefixes usually need no build: the
            // job's derivation is the last good one's).
            let start = if s.hi == 0 {
                0
            } else {
                s.positions[s.hi - 1] + 1
            };
            let end = s.positions[s.hi];
            let search = self.att(id).search.as_mut().expect("searching");
            search.refined = true;
            if end > start {
                search.positions = (start..=end).collect();
                search.lo = 0;
                search.hi = search.positions.len() - 1;
            }
            return true;
        }
        if s.lo >= s.hi {
            let pos = s.positions[s.hi];
            let culprit = cand.changes[pos];
            let alone_ok = att
                .alone
                .get(pos)
                .and_then(Option::as_ref)
                .is_some_and(|p| matches!(self.broken(cx, &b, &b.state(p), now), Broken::No));
            // Broken only in combination with earlier changes while a culprit was found
            // for something else: the follow-up retests it without the culprit first.
            if !alone_ok || att.culprits.is_empty() {
                let how = "broken with this change on top of the batch's earlier changes and not without it (found by testing prefixes of the batch)";
                self.blame(id, s.blocker, culprit, b.reason(how));
            }
            self.att(id).search = None;
            return true;
        }
        // The prefix before the chain's first change is the base, known good.
        let mid = s.positions[(s.lo + s.hi) / 2];
        let Some(p) = att.prefix.get(&mid) else {
            if att.probes.values().any(|slot| *slot == Slot::Prefix(mid)) {
                return false;
            }
            let (repo, commit) = (cand.repo.clone(), cand.merged[mid].1.clone());
            let attrs = att.probe_attrs.clone();
            if attrs.is_none() {
                if let Some(e) = cx.builds.evals.get(&commit).cloned() {
                    self.att(id).prefix.insert(mid, Probe::Full(e));
                    return true;
                }
            }
            let probe = self.new_probe(id);
            self.att(id).probes.insert(probe, Slot::Prefix(mid));
            cx.fx.push(Command::Probe {
                probe,
                repo,
                base: commit,
                heads: vec![],
                attrs,
            });
            return false;
        };
        let state = b.state(p);
        let bad = match self.broken(cx, &b, &state, now) {
            Broken::Yes => true,
            Broken::No => false,
            Broken::Build(d) => {
                self.gather(cx, id, vec![d], true, now);
                return false;
            }
            Broken::Unknown => {
                // Cannot happen on the chain itself; never guess.
                let att = self.att(id);
                att.unexplained.push(s.blocker);
                att.search = None;
                return true;
            }
        };
        let s = self.att(id).search.as_mut().expect("searching");
        let m = (s.lo + s.hi) / 2;
        if bad {
            s.hi = m;
        } else {
            s.lo = m + 1;
        }
        true
    }

    pub(crate) fn attribution_build_done(
        &mut self,
        cx: &mut Ctx,
        id: CandId,
        drv: &str,
        now: Millis,
    ) {
        if !self.att(id).waiting.remove(drv) {
            return;
        }
        self.attribute_next(cx, id, now);
    }

    fn blame(&mut self, id: CandId, bi: usize, change: ChangeId, reason: String) {
        let att = self.att(id);
        att.pinned.insert(bi);
        att.blamed.entry(change).or_default().insert(bi);
        att.culprits
            .entry(change)
            .and_modify(|r| r.push_str(&format!("\n\n{reason}")))
            .or_insert(reason);
    }

    fn is_required(&self, cx: &Ctx, id: CandId, b: &Blocker) -> bool {
        match b.attr() {
            Some(attr) => self.requires(cx, id, attr),
            None => true, // the jobset as a whole
        }
    }

    /// Whether `attr` is (under) one of the candidate's branch's required jobs.
    pub(crate) fn requires(&self, cx: &Ctx, id: CandId, attr: &str) -> bool {
        let cand = &self.by_id[&id];
        cx.cfg.repos[&cand.repo].lanes[&cand.branch]
            .required
            .iter()
            .any(|r| attr_under(attr, r))
    }

    /// Rejects the culprits and retests the innocents at once, in a follow-up candidate.
    fn conclude(&mut self, cx: &mut Ctx, id: CandId, now: Millis) {
        let cand = self.by_id[&id].clone();
        let att = cand.attribution.clone().expect("attributing");
        let mut culprits = att.culprits.clone();
        // A held change past its grace period that broke only what it may break is no
        // culprit: the verdict goes on and marks those jobs broken.
        culprits.retain(|c, _| {
            !att.blamed.get(c).is_some_and(|bs| {
                bs.iter().all(|&bi| {
                    att.blockers[bi]
                        .key()
                        .is_some_and(|k| self.permitted(cx, id, k, now))
                })
            })
        });
        let (mut held, mut back) = (vec![], vec![]);
        for (c, reason) in &culprits {
            match self.grace_breaks(cx, id, &att, *c) {
                Some(breaks) => {
                    self.hold_for_grace(cx, id, &att, *c, breaks, now);
                    held.push(*c);
                }
                None if self.return_to_stage(cx, *c, reason, now) => back.push(*c),
                None => {
                    self.reject(cx, *c, reason.clone(), now);
                    self.decided(&(cand.repo.clone(), cand.branch.clone()), true);
                }
            }
        }
        let innocents: Vec<ChangeId> = cand
            .changes
            .iter()
            .copied()
            .filter(|c| !culprits.contains_key(c))
            .collect();
        let names_of = |held_ones: bool| {
            crate::core::change::list(
                culprits
                    .keys()
                    .filter(|c| !back.contains(c) && held.contains(c) == held_ones),
            )
        };
        // "rejected #3", or "rejected #3; held #5" when the grace policy held some.
        let mut names = match (names_of(false), names_of(true)) {
            (r, h) if h.is_empty() => r,
            (r, h) if r.is_empty() => format!("none; held {h}"),
            (r, h) => format!("{r}; held {h}"),
        };
        if !back.is_empty() {
            let sep = if names.is_empty() { "none" } else { "" };
            names = format!(
                "{names}{sep}; back to the mass-rebuild stage {}",
                crate::core::change::list(&back)
            );
        }
        let base = short(cand.base.as_deref().unwrap_or("")).to_string();
        if culprits.is_empty() && !att.held.is_empty() {
            // Required jobs fail on the base itself: nobody in the batch is to blame and
            // nothing can land until the target is fixed. Wait, and test again later.
            let why = att
                .held
                .iter()
                .map(|&b| att.blockers[b].summary())
                .collect::<Vec<_>>()
                .join("; ");
            // The failure may be spurious (it was believed after `failure_retries`): the
            // hold ends after a growing delay, and these jobs are built again then.
            for &b in &att.held {
                if let Blocker::Build { drv, base_drv, .. } = &att.blockers[b] {
                    for d in std::iter::once(drv).chain(base_drv) {
                        cx.builds.forget_failure(d, now, cx.fx);
                    }
                }
            }
            self.hold(
                cx,
                id,
                &format!("required jobs fail on {base} itself: {why}"),
                now,
            );
            return;
        }
        if !att.unexplained.is_empty() {
            let why = att
                .unexplained
                .iter()
                .map(|&b| att.blockers[b].summary())
                .collect::<Vec<_>>()
                .join("; ");
            let reason = format!(
                "tested separately: attribution could not pin the failure of {why} on one change of candidate {id}"
            );
            cx.fx
                .event(now, &cand.repo, format!("candidate {id}: {reason}"));
            self.finish(
                cx,
                id,
                format!("rejected {names}; the rest tested separately"),
                now,
            );
            // A merge group's innocents are GitHub's to retest.
            for c in innocents.into_iter().filter(|_| cand.group.is_none()) {
                cx.queue.test_alone(c);
                cx.set_state(
                    c,
                    crate::core::change::ChangeState::Queued,
                    Some(reason.clone()),
                    now,
                );
            }
            return;
        }
        if culprits.is_empty() {
            // Every blocker turned out to fail on the base too: the batch broke nothing
            // so far; the verdict goes on without those jobs.
            cx.fx.event(
                now,
                &cand.repo,
                format!("candidate {id}: every failure so far is on the base too; building on"),
            );
            let c = self.by_id.get_mut(&id).expect("known");
            c.preexisting.extend(att.preexisting);
            self.resume_building(cx, id, now);
            return;
        } else {
            cx.fx.event(
                now,
                &cand.repo,
                format!(
                    "candidate {id}: culprit {names} on base {base}; {} extra builds; {} innocent changes retested",
                    cand.extra_builds,
                    innocents.len()
                ),
            );
        }
        self.finish(cx, id, format!("rejected {names}"), now);
        if !innocents.is_empty() && cand.group.is_none() {
            let root = cand.follow_up_of.unwrap_or(id);
            let (repo, branch) = (&cand.repo, &cand.branch);
            self.start_candidate(cx, repo, branch, innocents, Some(root), None, now);
        }
    }
}

/// The attributes the probes evaluate: every job blocker's, once.
fn blocker_attrs(blockers: &[Blocker]) -> Vec<String> {
    let mut attrs: Vec<String> = blockers
        .iter()
        .filter_map(|b| b.attr().map(str::to_string))
        .collect();
    attrs.sort();
    attrs.dedup();
    attrs
}

/// Whether a blocker's attribution is finished or waits for results.
enum Step {
    Done,
    Wait,
}
