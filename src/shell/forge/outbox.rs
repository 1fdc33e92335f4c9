//! Delivers the outbox: what the core decided to tell a forge (`Record::Forge`), stored
//! with the step that decided it, is posted in order per repository and deleted once the
//! forge took it. A forge that is down or rate-limits is retried with backoff (its
//! `Retry-After` or rate-limit reset honoured) for as long as it takes: an outage loses
//! nothing and never holds up the queue. A request the forge refuses outright (another
//! 4xx) is given up after a few tries, with a warning.
//!
//! Runs on its own database connection, off the driver task, like the pruner.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::params;

use super::client::ForgeClient;
use crate::core::forge::ForgeCommand;
use crate::shell::store::{Store, StoreError};

/// Tries of a request the forge refuses (4xx other than 403, 408 and 429).
const REFUSED_TRIES: i64 = 5;
/// Longest wait between two tries.
const MAX_BACKOFF: Duration = Duration::from_secs(600);

pub struct Outbound {
    pub client: Arc<ForgeClient>,
    pub context: String,
}

impl Store {
    /// Outbox rows due at `now`, oldest first: (id, repo, command, attempts).
    pub fn outbox_due(
        &self,
        now: i64,
        limit: usize,
    ) -> Result<Vec<(i64, String, ForgeCommand, i64)>, StoreError> {
        let mut st = self.conn().prepare(
            "SELECT id, repo, command, attempts FROM forge_outbox WHERE next_at <= ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = st.query_map(params![now, limit as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get::<_, String>(2)?, r.get(3)?))
        })?;
        let mut out = vec![];
        for row in rows {
            let (id, repo, text, attempts) = row?;
            let cmd = serde_json::from_str(&text)
                .map_err(|e| StoreError::Corrupt(format!("outbox row {id}: {e}")))?;
            out.push((id, repo, cmd, attempts));
        }
        Ok(out)
    }

    pub fn outbox_done(&self, id: i64) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM forge_outbox WHERE id = ?1", [id])?;
        Ok(())
    }

    pub fn outbox_retry(&self, id: i64, next_at: i64, error: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE forge_outbox SET attempts = attempts + 1, next_at = ?2, last_error = ?3 WHERE id = ?1",
            params![id, next_at, error],
        )?;
        Ok(())
    }

    /// Rows still to deliver (the API and tests).
    pub fn outbox_len(&self) -> Result<u64, StoreError> {
        Ok(self
            .conn()
            .query_row("SELECT COUNT(*) FROM forge_outbox", [], |r| r.get(0))?)
    }
}

/// One round: everything due, in order per repository; a repository's later rows wait
/// while an earlier one fails, so a forge never sees `success` before `pending`.
pub async fn deliver_due(
    store: &mut Store,
    forges: &BTreeMap<String, Outbound>,
    now_ms: i64,
) -> Result<usize, StoreError> {
    let mut blocked = BTreeSet::new();
    let mut delivered = 0;
    for (id, repo, cmd, attempts) in store.outbox_due(now_ms, 200)? {
        if blocked.contains(&repo) {
            continue;
        }
        let Some(f) = forges.get(&repo) else {
            // The repository lost its forge section: nothing can deliver this.
            log::warn!("[{repo}] dropping a forge answer: the repo has no [repos.forge]");
            store.outbox_done(id)?;
            continue;
        };
        match f.client.deliver(&cmd, &f.context).await {
            Ok(()) => {
                store.outbox_done(id)?;
                delivered += 1;
            }
            Err(e) if !e.is_transient() && attempts + 1 >= REFUSED_TRIES => {
                log::warn!(
                    "[{repo}] giving up on a forge answer after {} tries: {e}",
                    attempts + 1
                );
                store.outbox_done(id)?;
            }
            Err(e) => {
                let backoff = Duration::from_secs(1 << attempts.clamp(0, 10)).min(MAX_BACKOFF);
                let wait = e
                    .retry_after()
                    .unwrap_or(backoff)
                    .min(Duration::from_secs(3600));
                log::warn!(
                    "[{repo}] forge answer not delivered (try {}), again in {wait:?}: {e}",
                    attempts + 1
                );
                store.outbox_retry(id, now_ms + wait.as_millis() as i64, &e.to_string())?;
                blocked.insert(repo);
            }
        }
    }
    Ok(delivered)
}

/// Delivers forever, looking for due rows every `every`.
pub async fn run(db: std::path::PathBuf, forges: BTreeMap<String, Outbound>, every: Duration) {
    let mut store = loop {
        match Store::open(&db) {
            Ok(s) => break s,
            Err(e) => {
                log::warn!("forge outbox: {e}");
                tokio::time::sleep(every).await;
            }
        }
    };
    loop {
        if let Err(e) = deliver_due(&mut store, &forges, now_ms()).await {
            log::warn!("forge outbox: {e}");
        }
        tokio::time::sleep(every).await;
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
