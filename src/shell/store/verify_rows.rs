//! Verified builds' comparisons (`Record::Verification`), served by `/api/v1/verifications`.

use rusqlite::{params, Transaction};

use super::{Store, StoreError};
use crate::core::verify::Verification;

pub(super) fn put(tx: &Transaction, v: &Verification) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO verifications (at, drv, matched, verification) VALUES (?1, ?2, ?3, ?4)",
        params![
            v.at,
            v.drv,
            v.matched,
            serde_json::to_string(v).expect("serialisable")
        ],
    )?;
    Ok(())
}

impl Store {
    /// The latest `limit` comparisons, newest first (of `drv` only, when given).
    pub fn verifications(
        &self,
        drv: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Verification>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT verification FROM verifications WHERE ?1 IS NULL OR drv = ?1 \
             ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![drv, limit as i64], |r| r.get::<_, String>(0))?;
        let mut out = vec![];
        for r in rows {
            if let Ok(v) = serde_json::from_str(&r?) {
                out.push(v);
            }
        }
        Ok(out)
    }

    /// Comparisons so far: (matched, differing, differing but known non-deterministic).
    /// Counted by SQLite, not by reading every comparison: `/metrics` is scraped often.
    pub fn verification_counts(&self) -> Result<(u64, u64, u64), StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT matched, json_extract(verification, '$.nondeterministic'), COUNT(*) \
             FROM verifications GROUP BY 1, 2",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, bool>(0)?,
                r.get::<_, Option<bool>>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        let mut counts = (0, 0, 0);
        for r in rows {
            let (matched, nondeterministic, n) = r?;
            let n = n as u64;
            match (matched, nondeterministic.unwrap_or(false)) {
                (true, _) => counts.0 += n,
                (false, false) => counts.1 += n,
                (false, true) => counts.2 += n,
            }
        }
        Ok(counts)
    }
}
