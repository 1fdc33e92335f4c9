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
    pub fn verification_counts(&self) -> Result<(u64, u64, u64), StoreError> {
        let mut counts = (0, 0, 0);
        for v in self.verifications(None, usize::MAX >> 1)? {
            match (v.matched, v.nondeterministic) {
                (true, _) => counts.0 += 1,
                (false, false) => counts.1 += 1,
                (false, true) => counts.2 += 1,
            }
        }
        Ok(counts)
    }
}
