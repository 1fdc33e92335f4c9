//! The candidates machine's side of the marking-broken policy (`breakage.rs`): holding a
//! culprit whose breakage the lane's grace policy allows, letting it break exactly those
//! jobs once its grace period is over, and keeping the broken registry when a candidate
//! lands (jobs entered, jobs that build again taken out), with a notice for each.

use std::collections::BTreeSet;

use super::blocker::Blocker;
use super::breakage::{Breakage, BrokenJob, Held, Notice, NoticeEvent, NoticeJob};
use super::candidate::{Candidate, Candidates, Ctx, Target};
use super::evaluation::{Evaluation, JobKey, Maintainer};
use super::evidence::Attribution;
use super::{CandId, Memo, Millis, Record};
use crate::core::change::{ChangeId, ChangeState};

impl Candidates {
    /// Whether the candidate may fail `key` because one of its changes was held for
    /// breaking it and its grace period is over.
    pub(crate) fn permitted(&self, cx: &Ctx, id: CandId, key: &JobKey, now: Millis) -> bool {
        let cand = &self.by_id[&id];
        let lane = &cx.cfg.repos[&cand.repo].lanes[&cand.branch];
        if lane.breakage.mode != Breakage::Grace
            || lane.breakage.protects(&lane.required, &key.attr)
        {
            return false;
        }
        cand.changes.iter().any(|c| {
            cx.queue
                .changes
                .get(c)
                .and_then(|c| c.held.as_ref())
                .is_some_and(|h| h.until <= now && h.breaks.contains(key))
        })
    }

    /// The registry entry a permitted failure makes once the candidate lands.
    pub(crate) fn mark(&self, cx: &Ctx, id: CandId, t: &Target, m: &Memo) -> BrokenJob {
        let cand = &self.by_id[&id];
        BrokenJob {
            repo: cand.repo.clone(),
            branch: cand.branch.clone(),
            attr: t.key.attr.clone(),
            system: t.key.system.clone(),
            drv: t.drv.clone(),
            since: 0,
            broken_by: self.breaker(cx, cand, &t.key),
            maintainers: maintainers_of(cx, cand, &t.key),
            log_tail: m.log_tail.clone(),
        }
    }

    /// A permitted evaluation error's registry entry (no derivation).
    pub(crate) fn mark_eval(&self, cx: &Ctx, id: CandId, key: &JobKey, msg: &str) -> BrokenJob {
        let cand = &self.by_id[&id];
        BrokenJob {
            repo: cand.repo.clone(),
            branch: cand.branch.clone(),
            attr: key.attr.clone(),
            system: key.system.clone(),
            drv: String::new(),
            since: 0,
            broken_by: self.breaker(cx, cand, key),
            maintainers: maintainers_of(cx, cand, key),
            log_tail: msg.to_string(),
        }
    }

    /// The held change of the candidate that is allowed to break `key`.
    fn breaker(&self, cx: &Ctx, cand: &Candidate, key: &JobKey) -> ChangeId {
        cand.changes
            .iter()
            .copied()
            .find(|c| {
                cx.queue.changes[c]
                    .held
                    .as_ref()
                    .is_some_and(|h| h.breaks.contains(key))
            })
            .unwrap_or(cand.changes[0])
    }

    /// The jobs a culprit would break if the lane's grace policy lets it wait instead of
    /// being rejected: every blocker it is answerable for is an unprotected job, and with
    /// what it was held for before, at most `max_newly_broken` of them.
    pub(crate) fn grace_breaks(
        &self,
        cx: &Ctx,
        id: CandId,
        att: &Attribution,
        change: ChangeId,
    ) -> Option<Vec<JobKey>> {
        let cand = &self.by_id[&id];
        let lane = &cx.cfg.repos[&cand.repo].lanes[&cand.branch];
        let policy = &lane.breakage;
        if policy.mode != Breakage::Grace || cand.group.is_some() {
            return None;
        }
        let mut breaks: BTreeSet<JobKey> = cx.queue.changes[&change]
            .held
            .iter()
            .flat_map(|h| h.breaks.iter().cloned())
            .collect();
        for &bi in att.blamed.get(&change)? {
            match &att.blockers[bi] {
                Blocker::Build { key, .. } | Blocker::EvalError { key, .. }
                    if !policy.protects(&lane.required, &key.attr) =>
                {
                    breaks.insert(key.clone());
                }
                _ => return None,
            }
        }
        (!breaks.is_empty() && breaks.len() <= policy.max_newly_broken)
            .then(|| breaks.into_iter().collect())
    }

    /// Holds a culprit under the grace policy: back in the queue, tested again alone
    /// once its grace period is over, allowed then to break `breaks`; the maintainers of
    /// those jobs hear now.
    pub(crate) fn hold_for_grace(
        &mut self,
        cx: &mut Ctx,
        id: CandId,
        att: &Attribution,
        change: ChangeId,
        breaks: Vec<JobKey>,
        now: Millis,
    ) {
        let cand = self.by_id[&id].clone();
        let grace = cx.cfg.repos[&cand.repo].lanes[&cand.branch]
            .breakage
            .grace_ms;
        let ch = cx.queue.changes.get_mut(&change).expect("known");
        // Held again (it broke more once retested): the grace period is not restarted.
        let until = ch.held.as_ref().map_or(now + grace, |h| h.until);
        ch.held = Some(Held {
            until,
            breaks: breaks.clone(),
        });
        cx.queue.held_until(change, until);
        let list = breaks
            .iter()
            .map(|k| k.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let reason = format!(
            "held: newly breaks {list}; lands on {} with them marked broken unless fixed first",
            utc_date(until)
        );
        cx.fx.event(now, &cand.repo, format!("#{change} {reason}"));
        cx.set_state(change, ChangeState::Queued, Some(reason), now);
        let jobs: Vec<NoticeJob> = att
            .blamed
            .get(&change)
            .into_iter()
            .flatten()
            .filter_map(|&bi| notice_job(cx, &cand, &att.blockers, bi))
            .collect();
        let c = &cx.queue.changes[&change];
        let notice = Notice {
            event: NoticeEvent::PlannedLanding,
            repo: cand.repo.clone(),
            branch: cand.branch.clone(),
            change,
            title: c.title.clone(),
            pr: c.pr,
            at: now,
            planned: Some(until),
            jobs,
        };
        cx.fx.record(Record::Notice(notice));
    }

    /// A candidate landed at `commit`: its marks enter the registry, and registry jobs
    /// that build at `commit` (or are gone from it) leave it.
    pub(crate) fn landed_registry(
        &mut self,
        cx: &mut Ctx,
        cand: &Candidate,
        commit: &str,
        now: Millis,
    ) {
        for c in &cand.changes {
            let ch = cx.queue.changes.get_mut(c).expect("known");
            // Stored too: the change's record may already say merged with the hold on
            // it, and a restart would bring the hold back (found by the simulator).
            if ch.held.take().is_some() {
                cx.fx.record(Record::Change(ch.clone()));
            }
        }
        let eval = cx.builds.evals.get(commit).cloned();
        // Taken out first, so a job broken again by this very landing stays entered.
        // Another branch's landing says nothing of this one (staging builds what master
        // has broken; found by the simulator).
        let entries: Vec<BrokenJob> = cx
            .broken
            .of(&cand.repo)
            .filter(|j| j.on(&cand.branch))
            .cloned()
            .collect();
        let mut fixed: Vec<NoticeJob> = vec![];
        for j in entries {
            let key = j.key();
            let Some(eval) = eval.as_ref() else { break };
            let gone = eval.get(&key).is_none();
            let builds = eval
                .get(&key)
                .and_then(|r| r.job())
                .and_then(|job| cx.builds.known(&job.drv_path, now))
                .is_some_and(|m| m.ok());
            if !(gone || builds) {
                continue;
            }
            cx.broken.jobs.remove(&(cand.repo.clone(), key.clone()));
            cx.fx.record(Record::Unbroken {
                repo: cand.repo.clone(),
                key: key.clone(),
            });
            let how = if gone { "is gone" } else { "builds again" };
            cx.fx.event(
                now,
                &cand.repo,
                format!(
                    "{key} {how} at {}: out of the broken registry",
                    short(commit)
                ),
            );
            if builds {
                fixed.push(NoticeJob {
                    attr: j.attr.clone(),
                    system: j.system.clone(),
                    drv: eval_drv(eval, &key).unwrap_or_default(),
                    root: None,
                    maintainers: j.maintainers.clone(),
                    log_tail: String::new(),
                });
            }
        }
        let first = cand.changes.first().copied().unwrap_or_default();
        let notice = |event, change: ChangeId, jobs| {
            let c = &cx.queue.changes[&change];
            Notice {
                event,
                repo: cand.repo.clone(),
                branch: cand.branch.clone(),
                change,
                title: c.title.clone(),
                pr: c.pr,
                at: now,
                planned: None,
                jobs,
            }
        };
        let mut notices = vec![];
        if !fixed.is_empty() {
            notices.push(notice(NoticeEvent::Fixed, first, fixed));
        }
        let breakers: BTreeSet<ChangeId> = cand.marks.iter().map(|m| m.broken_by).collect();
        for b in breakers {
            let marks: Vec<&BrokenJob> = cand.marks.iter().filter(|m| m.broken_by == b).collect();
            let jobs = marks
                .iter()
                .map(|m| NoticeJob {
                    attr: m.attr.clone(),
                    system: m.system.clone(),
                    drv: m.drv.clone(),
                    root: None,
                    maintainers: m.maintainers.clone(),
                    log_tail: m.log_tail.clone(),
                })
                .collect();
            notices.push(notice(NoticeEvent::NewlyBroken, b, jobs));
        }
        for m in &cand.marks {
            let job = BrokenJob {
                since: now,
                ..m.clone()
            };
            cx.fx.event(
                now,
                &cand.repo,
                format!(
                    "{} ({}) marked broken by #{} after its grace period",
                    job.attr, job.system, job.broken_by
                ),
            );
            cx.broken
                .jobs
                .insert((job.repo.clone(), job.key()), job.clone());
            cx.fx.record(Record::Broken(job));
        }
        for n in notices {
            cx.fx.record(Record::Notice(n));
        }
    }
}

fn short(sha: &str) -> &str {
    crate::core::change::short(sha)
}

fn eval_drv(eval: &Evaluation, key: &JobKey) -> Option<String> {
    Some(eval.get(key)?.job()?.drv_path.clone())
}

/// `key`'s maintainers in the candidate's evaluation.
fn maintainers_of(cx: &Ctx, cand: &Candidate, key: &JobKey) -> Vec<Maintainer> {
    cand.commit()
        .and_then(|c| cx.builds.evals.get(c))
        .and_then(|e| {
            e.get(key)
                .and_then(|r| r.job())
                .map(|j| j.maintainers.clone())
        })
        .unwrap_or_default()
}

/// A blocker as a notice names it. A dependency failure names its root, and its
/// maintainers are the root job's when the root is a job of the candidate: they are
/// the ones who can fix it.
fn notice_job(cx: &Ctx, cand: &Candidate, blockers: &[Blocker], bi: usize) -> Option<NoticeJob> {
    let (key, drv, log_tail, root) = match &blockers[bi] {
        Blocker::Build {
            key,
            drv,
            log_tail,
            root_drv,
            ..
        } => (key, drv.clone(), log_tail.clone(), root_drv.clone()),
        Blocker::EvalError { key, message } => (key, String::new(), message.clone(), None),
        _ => return None,
    };
    let root_key = root.as_ref().and_then(|r| {
        blockers.iter().find_map(|b| match b {
            Blocker::Build { drv, key, .. } if drv == r => Some(key),
            _ => None,
        })
    });
    Some(NoticeJob {
        attr: key.attr.clone(),
        system: key.system.clone(),
        drv,
        root,
        maintainers: maintainers_of(cx, cand, root_key.unwrap_or(key)),
        log_tail,
    })
}

/// `ms` as a UTC date and time, `2026-12-10 08:00 UTC` (the core reads no clock, so
/// it converts itself: days since the epoch to a civil date).
pub fn utc_date(ms: Millis) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60
    )
}

#[cfg(test)]
mod tests {
    use super::utc_date;

    #[test]
    fn dates() {
        assert_eq!(utc_date(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc_date(951_782_400_000), "2000-02-29 00:00 UTC");
        assert_eq!(utc_date(1_796_126_400_000), "2026-12-01 12:00 UTC");
    }
}
