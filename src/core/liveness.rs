//! Liveness: every dispatched build and evaluation has a deadline in the core itself.
//! The shell bounds each call it makes (`[timeouts]`), but a result can still be lost on
//! the way (a task that died, a message never sent); without a deadline here, the
//! candidate or channel waiting for it would wait until a restart. Past its deadline, a
//! build is stopped and counted as an infrastructure failure of its builder (retried
//! elsewhere, never blamed); an evaluation is asked for again with backoff.

use std::collections::BTreeMap;

use super::Millis;

#[derive(Debug, Default)]
pub(crate) struct Deadlines {
    /// (drv, builder) dispatched, by when its result must arrive.
    builds: BTreeMap<(String, String), Millis>,
    /// Commit asked for, with its repository, by when its evaluation must arrive
    /// (`None`: asked for just now, armed by the next tick, which knows the time).
    evals: BTreeMap<String, (String, Option<Millis>)>,
}

/// What came due without a result.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Overdue {
    pub(crate) builds: Vec<(String, String)>,
    pub(crate) evals: Vec<(String, String)>,
}

impl Deadlines {
    pub(crate) fn build_sent(&mut self, drv: &str, builder: &str, due: Millis) {
        self.builds
            .insert((drv.to_string(), builder.to_string()), due);
    }

    pub(crate) fn build_answered(&mut self, drv: &str, builder: &str) {
        self.builds.remove(&(drv.to_string(), builder.to_string()));
    }

    pub(crate) fn eval_sent(&mut self, repo: &str, commit: &str, due: Option<Millis>) {
        self.evals
            .insert(commit.to_string(), (repo.to_string(), due));
    }

    /// Gives evaluations asked for without a time their deadline: `now + limit`.
    pub(crate) fn arm(&mut self, now: Millis, limit: Millis) {
        for (_, due) in self.evals.values_mut() {
            due.get_or_insert(now.saturating_add(limit));
        }
    }

    pub(crate) fn eval_answered(&mut self, commit: &str) {
        self.evals.remove(commit);
    }

    /// The earliest deadline.
    pub(crate) fn next(&self) -> Option<Millis> {
        self.builds
            .values()
            .copied()
            .chain(self.evals.values().filter_map(|(_, t)| *t))
            .min()
    }

    /// Takes out everything due by `now`.
    pub(crate) fn due(&mut self, now: Millis) -> Overdue {
        let mut out = Overdue::default();
        self.builds.retain(|k, t| {
            let due = *t <= now;
            if due {
                out.builds.push(k.clone());
            }
            !due
        });
        self.evals.retain(|c, (r, t)| {
            let due = t.is_some_and(|t| t <= now);
            if due {
                out.evals.push((r.clone(), c.clone()));
            }
            !due
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_is_overdue_and_unanswered_comes_due() {
        let mut d = Deadlines::default();
        d.build_sent("/a.drv", "b1", 100);
        d.build_sent("/b.drv", "b1", 50);
        d.build_sent("/c.drv", "b2", 200);
        d.eval_sent("r", "c1", None);
        d.eval_sent("r", "c2", Some(300));
        assert_eq!(d.next(), Some(50));
        d.arm(30, 50);
        d.arm(1000, 50);
        d.build_answered("/b.drv", "b1");
        d.eval_answered("c2");
        assert_eq!(d.next(), Some(80));
        let due = d.due(150);
        assert_eq!(due.builds, vec![("/a.drv".to_string(), "b1".to_string())]);
        assert_eq!(due.evals, vec![("r".to_string(), "c1".to_string())]);
        assert_eq!(d.due(150), Overdue::default(), "taken once");
        assert_eq!(d.next(), Some(200));
    }
}
