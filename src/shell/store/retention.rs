//! Retention: what is finished is deleted once it is older than `[retention]` says.
//!
//! Runs on its own connection, off the engine's task (`Driver` spawns it every
//! `prune_interval_secs`), and deletes in batches of [`BATCH`] rows, one transaction each,
//! so the engine's writes wait at most one short batch (WAL, busy timeout).
//!
//! Never deleted: queued and testing changes, candidates not finished and those a live one
//! follows up, the newest change and the newest candidate (their ids number the next ones),
//! channel rows, drained builders, remembered successes.

use std::path::Path;

use rusqlite::params;

use super::{Store, StoreError};
use crate::core::Millis;
use crate::shell::config::Retention;

/// Rows deleted per transaction.
pub const BATCH: usize = 2_000;

const DAY_MS: Millis = 86_400_000;

/// What one prune deleted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pruned {
    pub changes: usize,
    pub candidates: usize,
    pub attempts: usize,
    pub log_files: usize,
    pub evaluations: usize,
    pub events: usize,
    pub memo: usize,
    pub channel_advances: usize,
    pub deliveries: usize,
}

impl Pruned {
    pub fn total(&self) -> usize {
        self.changes
            + self.candidates
            + self.attempts
            + self.evaluations
            + self.events
            + self.memo
            + self.channel_advances
            + self.deliveries
    }
}

fn cutoff(now: Millis, days: u64) -> Millis {
    now.saturating_sub((days as Millis).saturating_mul(DAY_MS))
}

impl Store {
    /// Deletes what `r` no longer keeps as of `now`; log files only under `logs_dir`.
    pub fn prune(
        &mut self,
        now: Millis,
        r: &Retention,
        logs_dir: &Path,
    ) -> Result<Pruned, StoreError> {
        let mut p = Pruned::default();
        let changes = cutoff(now, r.changes_days);
        p.changes = self.delete_batched(
            "DELETE FROM changes WHERE id IN (SELECT id FROM changes
             WHERE state IN ('merged', 'rejected', 'cancelled') AND updated_at < ?1
               AND id < (SELECT MAX(id) FROM changes) LIMIT ?2)",
            changes,
        )?;
        p.candidates = self.delete_batched(
            "DELETE FROM candidates WHERE id IN (SELECT id FROM candidates
             WHERE phase = 'done' AND COALESCE(finished_at, created_at) < ?1
               AND id < (SELECT MAX(id) FROM candidates)
               AND id NOT IN (SELECT follow_up_of FROM candidates
                              WHERE phase != 'done' AND follow_up_of IS NOT NULL)
             LIMIT ?2)",
            changes,
        )?;
        p.channel_advances = self.delete_batched(
            "DELETE FROM channel_advances WHERE id IN
             (SELECT id FROM channel_advances WHERE at < ?1 LIMIT ?2)",
            changes,
        )?;
        p.evaluations = self.delete_batched(
            "DELETE FROM evaluations WHERE commit_sha IN
             (SELECT commit_sha FROM evaluations WHERE created_at < ?1 LIMIT ?2)",
            cutoff(now, r.evaluations_days),
        )?;
        p.events = self.delete_batched(
            "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE at < ?1 LIMIT ?2)",
            cutoff(now, r.events_days),
        )?;
        // Failures whose memory expired are retried anyway; successes are kept.
        p.memo = self.delete_batched(
            "DELETE FROM memo WHERE drv IN (SELECT drv FROM memo
             WHERE expires_at IS NOT NULL AND expires_at < ?1 LIMIT ?2)",
            now,
        )?;
        p.deliveries = self.delete_batched(
            "DELETE FROM deliveries WHERE rowid IN
             (SELECT rowid FROM deliveries WHERE at < ?1 LIMIT ?2)",
            cutoff(now, r.deliveries_days),
        )?;
        p.deliveries += self.delete_batched(
            "DELETE FROM forge_comments WHERE rowid IN
             (SELECT rowid FROM forge_comments WHERE at < ?1 LIMIT ?2)",
            cutoff(now, r.deliveries_days),
        )?;
        let (attempts, files) = self.prune_attempts(cutoff(now, r.attempts_days), logs_dir)?;
        p.attempts = attempts;
        p.log_files = files;
        Ok(p)
    }

    /// Runs `sql` (parameters: the cutoff, the batch size) until it deletes nothing.
    fn delete_batched(&mut self, sql: &str, cutoff: Millis) -> Result<usize, StoreError> {
        let mut total = 0;
        loop {
            let n = self.conn.execute(sql, params![cutoff, BATCH as i64])?;
            total += n;
            if n < BATCH {
                return Ok(total);
            }
        }
    }

    fn prune_attempts(
        &mut self,
        cutoff: Millis,
        logs_dir: &Path,
    ) -> Result<(usize, usize), StoreError> {
        let (mut rows, mut files) = (0, 0);
        loop {
            let batch: Vec<(i64, Option<String>)> = {
                let mut st = self.conn.prepare(
                    "SELECT id, log_path FROM attempts WHERE finished_at < ?1 ORDER BY id LIMIT ?2",
                )?;
                let it = st.query_map(params![cutoff, BATCH as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
                it.collect::<Result<_, _>>()?
            };
            if batch.is_empty() {
                return Ok((rows, files));
            }
            let tx = self.conn.transaction()?;
            for (id, _) in &batch {
                tx.execute("DELETE FROM attempts WHERE id = ?1", [id])?;
            }
            tx.commit()?;
            rows += batch.len();
            // Files after the rows: a crash in between leaves a file no row names (harmless
            // litter), never a row whose log is gone.
            for path in batch
                .iter()
                .filter_map(|(_, p)| p.as_deref())
                .map(Path::new)
            {
                if path.starts_with(logs_dir) && std::fs::remove_file(path).is_ok() {
                    files += 1;
                }
            }
            if batch.len() < BATCH {
                return Ok((rows, files));
            }
        }
    }
}
