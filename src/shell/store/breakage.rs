//! The broken registry, the notices outbox and what was notified, in SQLite
//! (`docs/breakage.md`).

use rusqlite::{params, Transaction};

use super::{Store, StoreError};
use crate::core::breakage::{BrokenJob, Notice};
use crate::core::evaluation::JobKey;
use crate::core::forge::ForgeCommand;

pub(super) fn put(tx: &Transaction, job: &BrokenJob) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT OR REPLACE INTO broken (repo, attr, system, job) VALUES (?1, ?2, ?3, ?4)",
        params![
            job.repo,
            job.attr,
            job.system,
            serde_json::to_string(job).expect("serialisable")
        ],
    )?;
    Ok(())
}

pub(super) fn remove(tx: &Transaction, repo: &str, key: &JobKey) -> rusqlite::Result<()> {
    tx.execute(
        "DELETE FROM broken WHERE repo = ?1 AND attr = ?2 AND system = ?3",
        params![repo, key.attr, key.system],
    )?;
    Ok(())
}

pub(super) fn enqueue(tx: &Transaction, n: &Notice) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO notices (notice) VALUES (?1)",
        params![serde_json::to_string(n).expect("serialisable")],
    )?;
    Ok(())
}

/// A notice waiting in the outbox.
pub struct Pending {
    pub id: i64,
    pub notice: Notice,
    pub attempts: u32,
}

pub use crate::core::notify::Sent;

impl Store {
    /// The broken registry, every repository's, by repository, attribute and system.
    pub fn broken(&self) -> Result<Vec<BrokenJob>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT job FROM broken ORDER BY repo, attr, system")?;
        let rows = st.query_map([], |r| r.get::<_, String>(0))?;
        let mut out = vec![];
        for r in rows {
            let text = r?;
            out.push(
                serde_json::from_str(&text)
                    .map_err(|e| StoreError::Corrupt(format!("broken job {text:?}: {e}")))?,
            );
        }
        Ok(out)
    }

    /// Notices due for delivery at `now`, oldest first.
    pub fn notices_due(&self, now: i64, limit: usize) -> Result<Vec<Pending>, StoreError> {
        let mut st = self.conn.prepare(
            "SELECT id, notice, attempts FROM notices WHERE next_at <= ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = st.query_map(params![now, limit as i64], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get(2)?))
        })?;
        let mut out = vec![];
        for r in rows {
            let (id, text, attempts) = r?;
            let notice = serde_json::from_str(&text)
                .map_err(|e| StoreError::Corrupt(format!("notice {id}: {e}")))?;
            out.push(Pending {
                id,
                notice,
                attempts,
            });
        }
        Ok(out)
    }

    /// When the next waiting notice is due, if any waits.
    pub fn next_notice_at(&self) -> Result<Option<i64>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT MIN(next_at) FROM notices", [], |r| r.get(0))?)
    }

    /// Part of a notice delivered: its pull-request comment handed to the forge outbox
    /// and what was sent remembered, in one transaction, so a restart neither loses
    /// the comment nor posts it twice. `done`: the notice leaves the outbox too.
    pub fn notice_sent(
        &mut self,
        id: i64,
        comment: Option<(&str, &ForgeCommand)>,
        sent: &[Sent],
        done: bool,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        if let Some((repo, cmd)) = comment {
            tx.execute(
                "INSERT INTO forge_outbox (repo, command) VALUES (?1, ?2)",
                params![repo, serde_json::to_string(cmd).expect("serialisable")],
            )?;
        }
        for s in sent {
            tx.execute(
                "INSERT OR REPLACE INTO notified (maintainer, event, job, root, at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![s.maintainer, s.event, s.job, s.root, s.at],
            )?;
        }
        if done {
            tx.execute("DELETE FROM notices WHERE id = ?1", params![id])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// A delivery failed: try again at `next_at`.
    pub fn notice_failed(&self, id: i64, next_at: i64, error: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE notices SET attempts = attempts + 1, next_at = ?2, last_error = ?3 WHERE id = ?1",
            params![id, next_at, error],
        )?;
        Ok(())
    }

    /// What was sent to these maintainers since `since`: their history for the planner.
    pub fn notified_since(
        &self,
        maintainers: &[String],
        since: i64,
    ) -> Result<Vec<Sent>, StoreError> {
        let mut st = self.conn.prepare(
            "SELECT maintainer, event, job, root, at FROM notified WHERE maintainer = ?1 AND at >= ?2",
        )?;
        let mut out = vec![];
        for m in maintainers {
            let rows = st.query_map(params![m, since], |r| {
                Ok(Sent {
                    maintainer: r.get(0)?,
                    event: r.get(1)?,
                    job: r.get(2)?,
                    root: r.get(3)?,
                    at: r.get(4)?,
                })
            })?;
            for r in rows {
                out.push(r?);
            }
        }
        Ok(out)
    }
}
