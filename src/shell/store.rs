//! SQLite, the source of truth. One connection, owned by the driver task (one writer).
//! WAL mode; schema versions applied by `rusqlite_migration` from `PRAGMA user_version`.

use std::io::{Read, Write};
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use rusqlite_migration::{Migrations, M};

use crate::core::change::{Change, ChangeState, Priority, Stage};
use crate::core::evaluation::Evaluation;
use crate::core::outcome::{BuildReport, OutcomeClass};
use crate::core::{Candidate, Memo, Millis, Phase, Record};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("database migration: {0}")]
    Migration(#[from] rusqlite_migration::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// Schema history. Never edit a released migration; append a new one.
pub fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(
            "CREATE TABLE changes (
                id INTEGER PRIMARY KEY,
                repo TEXT NOT NULL,
                target TEXT NOT NULL,
                git_ref TEXT NOT NULL,
                submitted_head TEXT NOT NULL,
                head TEXT NOT NULL,
                title TEXT NOT NULL DEFAULT '',
                author TEXT NOT NULL DEFAULT '',
                priority TEXT NOT NULL DEFAULT 'normal',
                state TEXT NOT NULL,
                reason TEXT,
                landed_commit TEXT,
                submitted_at INTEGER NOT NULL,
                updated_at INTEGER NOT NULL
            );
            CREATE TABLE candidates (
                id INTEGER PRIMARY KEY,
                repo TEXT NOT NULL,
                branch TEXT NOT NULL,
                changes TEXT NOT NULL,
                base TEXT,
                merged TEXT NOT NULL DEFAULT '[]',
                phase TEXT NOT NULL,
                follow_up_of INTEGER,
                builds INTEGER NOT NULL DEFAULT 0,
                extra_builds INTEGER NOT NULL DEFAULT 0,
                created_at INTEGER NOT NULL,
                last_build_at INTEGER,
                finished_at INTEGER,
                summary TEXT
            );
            CREATE TABLE memo (
                drv TEXT PRIMARY KEY,
                class TEXT NOT NULL,
                log_tail TEXT NOT NULL DEFAULT '',
                root_drv TEXT,
                expires_at INTEGER
            );
            CREATE TABLE evaluations (
                commit_sha TEXT PRIMARY KEY,
                repo TEXT NOT NULL,
                data BLOB NOT NULL,
                created_at INTEGER NOT NULL
            );
            CREATE TABLE events (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                at INTEGER NOT NULL,
                repo TEXT NOT NULL,
                text TEXT NOT NULL
            );",
        ),
        // v2: every build attempt (including infrastructure failures, which are never
        // remembered in `memo`), for metrics, logs and flakiness.
        M::up(
            "CREATE TABLE attempts (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                drv TEXT NOT NULL,
                builder TEXT NOT NULL DEFAULT 'local',
                class TEXT NOT NULL,
                root_drv TEXT,
                log_tail TEXT NOT NULL DEFAULT '',
                duration_ms INTEGER NOT NULL DEFAULT 0,
                finished_at INTEGER NOT NULL DEFAULT 0
            );
            CREATE INDEX attempts_drv ON attempts(drv);
            CREATE INDEX changes_state ON changes(state);",
        ),
        // v3: builders drained by an operator (kept across restarts); where each attempt's
        // compressed log is.
        M::up(
            "CREATE TABLE builders (
                uri TEXT PRIMARY KEY,
                drained INTEGER NOT NULL DEFAULT 0
            );
            ALTER TABLE attempts ADD COLUMN log_path TEXT;",
        ),
        // v4: channels (one row each) and every advance of a channel.
        M::up(
            "CREATE TABLE channels (
                name TEXT PRIMARY KEY,
                rev TEXT,
                advanced_at INTEGER,
                rev_time INTEGER,
                blocked TEXT,
                advancing TEXT,
                published TEXT,
                advances INTEGER NOT NULL DEFAULT 0,
                blocks INTEGER NOT NULL DEFAULT 0
            );
            CREATE TABLE channel_advances (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                channel TEXT NOT NULL,
                at INTEGER NOT NULL,
                from_rev TEXT,
                rev TEXT NOT NULL,
                gate TEXT NOT NULL DEFAULT '[]'
            );
            CREATE INDEX channel_advances_channel ON channel_advances(channel, id);",
        ),
        // v5: a change's times in milliseconds, like every other time.
        M::up(
            "UPDATE changes SET submitted_at = submitted_at * 1000, updated_at = updated_at * 1000;",
        ),
        // v6: what retention deletes by age is found by index.
        M::up(
            "CREATE INDEX events_at ON events(at);
            CREATE INDEX attempts_finished ON attempts(finished_at);
            CREATE INDEX evaluations_created ON evaluations(created_at);",
        ),
        // v7: webhook deliveries seen, so a redelivery is not processed twice.
        M::up(
            "CREATE TABLE deliveries (
                repo TEXT NOT NULL,
                id TEXT NOT NULL,
                event TEXT NOT NULL,
                at INTEGER NOT NULL,
                PRIMARY KEY (repo, id)
            );
            CREATE INDEX deliveries_at ON deliveries(at);",
        ),
        // v8: changes from pull requests; what mergequeue still has to tell the forge.
        M::up(
            "ALTER TABLE changes ADD COLUMN pr INTEGER;
            ALTER TABLE changes ADD COLUMN approver TEXT;
            CREATE INDEX changes_pr ON changes(repo, pr);
            CREATE TABLE forge_outbox (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                repo TEXT NOT NULL,
                command TEXT NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                next_at INTEGER NOT NULL DEFAULT 0,
                last_error TEXT
            );",
        ),
        // v9: comments acted on (a webhook and a resync may both bring one), and how far
        // each forge's comments were read at the last resync.
        M::up(
            "CREATE TABLE forge_comments (
                repo TEXT NOT NULL,
                id INTEGER NOT NULL,
                at INTEGER NOT NULL,
                PRIMARY KEY (repo, id)
            );
            CREATE INDEX forge_comments_at ON forge_comments(at);
            CREATE TABLE forge_sync (repo TEXT PRIMARY KEY, since INTEGER NOT NULL);",
        ),
        // v10: a candidate that is a merge group of GitHub's merge queue.
        M::up("ALTER TABLE candidates ADD COLUMN merge_group TEXT;"),
        // v11: the marking-broken policy: held changes, the jobs a landing marks broken,
        // the broken registry, and the notices still to deliver and already sent.
        M::up(
            "ALTER TABLE changes ADD COLUMN held TEXT;
            ALTER TABLE candidates ADD COLUMN marks TEXT;
            CREATE TABLE broken (
                repo TEXT NOT NULL,
                attr TEXT NOT NULL,
                system TEXT NOT NULL,
                job TEXT NOT NULL,
                PRIMARY KEY (repo, attr, system)
            );
            CREATE TABLE notices (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                notice TEXT NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                next_at INTEGER NOT NULL DEFAULT 0,
                last_error TEXT
            );
            CREATE TABLE notified (
                maintainer TEXT NOT NULL,
                event TEXT NOT NULL,
                job TEXT NOT NULL,
                root TEXT NOT NULL,
                at INTEGER NOT NULL,
                PRIMARY KEY (maintainer, event, job, root)
            );
            CREATE INDEX notified_at ON notified(maintainer, at);",
        ),
        // v12: verified builds' comparisons.
        M::up(
            "CREATE TABLE verifications (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                at INTEGER NOT NULL,
                drv TEXT NOT NULL,
                matched INTEGER NOT NULL,
                verification TEXT NOT NULL
            );
            CREATE INDEX verifications_drv ON verifications(drv);",
        ),
        // v13: speculation: the candidate each one is built on top of.
        M::up("ALTER TABLE candidates ADD COLUMN ahead INTEGER;"),
        // v14: the mass-rebuild stage: where a change is tested and how big it is; which
        // stage a candidate belongs to (absent: the queue).
        M::up(
            "ALTER TABLE changes ADD COLUMN route TEXT;
             ALTER TABLE candidates ADD COLUMN stage TEXT;",
        ),
    ])
}

pub struct AttemptRow {
    pub id: i64,
    pub drv: String,
    pub builder: String,
    pub class: String,
    pub log_path: Option<String>,
    pub duration_ms: u64,
}

fn attempt_row(r: &rusqlite::Row) -> rusqlite::Result<AttemptRow> {
    Ok(AttemptRow {
        id: r.get(0)?,
        drv: r.get(1)?,
        builder: r.get(2)?,
        class: r.get(3)?,
        log_path: r.get(4)?,
        duration_ms: r.get(5)?,
    })
}

pub struct Store {
    conn: Connection,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: a landed change must survive power loss, not only a process crash.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        migrations().to_latest(&mut conn)?;
        Ok(Store { conn })
    }

    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Applies one step's records atomically.
    pub fn apply(&mut self, records: &[&Record]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        for r in records {
            match r {
                Record::Change(c) => {
                    tx.execute(
                        "INSERT OR REPLACE INTO changes (id, repo, target, git_ref, submitted_head, head, title, author,
                         priority, state, reason, landed_commit, submitted_at, updated_at, pr, approver, held, route)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
                        params![
                            c.id,
                            c.repo,
                            c.target,
                            c.git_ref,
                            c.submitted_head,
                            c.head,
                            c.title,
                            c.author,
                            c.priority.as_str(),
                            c.state.as_str(),
                            c.reason,
                            c.landed_commit,
                            c.submitted_at,
                            c.updated_at,
                            c.pr,
                            c.approver,
                            c.held
                                .as_ref()
                                .map(|h| serde_json::to_string(h).expect("serialisable")),
                            (c.route != Default::default())
                                .then(|| serde_json::to_string(&c.route).expect("serialisable"))
                        ],
                    )?;
                }
                Record::Candidate(c) => {
                    tx.execute(
                        "INSERT OR REPLACE INTO candidates (id, repo, branch, changes, base, merged, phase, follow_up_of,
                         builds, extra_builds, created_at, last_build_at, finished_at, summary, merge_group, marks, ahead, stage)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
                        params![
                            c.id,
                            c.repo,
                            c.branch,
                            serde_json::to_string(&c.changes).expect("serialisable"),
                            c.base,
                            serde_json::to_string(&c.merged).expect("serialisable"),
                            c.phase.as_str(),
                            c.follow_up_of,
                            c.builds,
                            c.extra_builds,
                            c.created_at,
                            c.last_build_at,
                            c.finished_at,
                            c.summary,
                            c.group
                                .as_ref()
                                .map(|g| serde_json::to_string(g).expect("serialisable")),
                            (!c.marks.is_empty())
                                .then(|| serde_json::to_string(&c.marks).expect("serialisable")),
                            c.ahead,
                            (c.stage != Stage::Queue).then(|| c.stage.as_str())
                        ],
                    )?;
                }
                Record::Memo { drv, memo } => {
                    tx.execute(
                        "INSERT OR REPLACE INTO memo (drv, class, log_tail, root_drv, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![drv, memo.class.as_str(), memo.log_tail, memo.root_drv, memo.expires_at],
                    )?;
                }
                Record::BuilderDrained { builder, drained } => {
                    tx.execute(
                        "INSERT OR REPLACE INTO builders (uri, drained) VALUES (?1, ?2)",
                        params![builder, drained],
                    )?;
                }
                Record::Event { at, repo, text } => {
                    tx.execute(
                        "INSERT INTO events (at, repo, text) VALUES (?1, ?2, ?3)",
                        params![at, repo, text],
                    )?;
                }
                Record::Channel(state) => channel_rows::put_state(&tx, state)?,
                Record::ChannelAdvance { channel, advance } => {
                    channel_rows::put_advance(&tx, channel, advance)?
                }
                Record::Broken(job) => breakage::put(&tx, job)?,
                Record::Unbroken { repo, key } => breakage::remove(&tx, repo, key)?,
                Record::Notice(n) => breakage::enqueue(&tx, n)?,
                Record::Verification(v) => verify_rows::put(&tx, v)?,
                Record::Forge { repo, command } => {
                    tx.execute(
                        "INSERT INTO forge_outbox (repo, command) VALUES (?1, ?2)",
                        params![repo, serde_json::to_string(command).expect("serialisable")],
                    )?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Every stored change.
    pub fn changes(&self) -> Result<Vec<Change>, StoreError> {
        self.changes_where("1", [])
    }

    /// Stored changes per state (within retention), from the state index.
    pub fn change_counts(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT state, COUNT(*) FROM changes GROUP BY state")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Attribution's extra builds over the stored candidates (within retention).
    pub fn extra_builds_total(&self) -> Result<u64, StoreError> {
        Ok(self.conn.query_row(
            "SELECT COALESCE(SUM(extra_builds), 0) FROM candidates",
            [],
            |r| r.get(0),
        )?)
    }

    /// One change, whether or not the engine still holds it in memory.
    pub fn change(&self, id: u64) -> Result<Option<Change>, StoreError> {
        Ok(self.changes_where("id = ?1", [id as i64])?.pop())
    }

    /// One page of a repo's stored changes, newest first, of one `state` or all.
    pub fn changes_page(
        &self,
        repo: &str,
        state: Option<&str>,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<Change>, StoreError> {
        let mut page = self.changes_where(
            "id IN (SELECT id FROM changes WHERE repo = ?1 AND (?2 IS NULL OR state = ?2)
                    ORDER BY id DESC LIMIT ?3 OFFSET ?4)",
            params![repo, state, limit as i64, offset as i64],
        )?;
        page.reverse();
        Ok(page)
    }

    fn changes_where<P: rusqlite::Params>(
        &self,
        cond: &str,
        params: P,
    ) -> Result<Vec<Change>, StoreError> {
        let mut st = self.conn.prepare(&format!(
            "SELECT id, repo, target, git_ref, submitted_head, head, title, author, priority, state, reason,
             landed_commit, submitted_at, updated_at, pr, approver, held, route FROM changes WHERE {cond} ORDER BY id"
        ))?;
        let rows = st.query_map(params, |r| {
            Ok((
                Change {
                    id: r.get(0)?,
                    repo: r.get(1)?,
                    target: r.get(2)?,
                    git_ref: r.get(3)?,
                    submitted_head: r.get(4)?,
                    head: r.get(5)?,
                    title: r.get(6)?,
                    author: r.get(7)?,
                    priority: Priority::Normal,
                    state: ChangeState::Queued,
                    reason: r.get(10)?,
                    landed_commit: r.get(11)?,
                    submitted_at: r.get(12)?,
                    updated_at: r.get(13)?,
                    pr: r.get(14)?,
                    approver: r.get(15)?,
                    held: None,
                    route: Default::default(),
                },
                (
                    r.get::<_, Option<String>>(16)?,
                    r.get::<_, Option<String>>(17)?,
                ),
                r.get::<_, String>(8)?,
                r.get::<_, String>(9)?,
            ))
        })?;
        let mut out = vec![];
        for row in rows {
            let (mut c, (held, route), prio, state) = row?;
            c.route = route
                .map(|r| serde_json::from_str(&r))
                .transpose()
                .map_err(|e| StoreError::Corrupt(format!("change {}: route: {e}", c.id)))?
                .unwrap_or_default();
            c.held = held
                .map(|h| serde_json::from_str(&h))
                .transpose()
                .map_err(|e| StoreError::Corrupt(format!("change {}: held: {e}", c.id)))?;
            c.priority = Priority::parse(&prio)
                .ok_or_else(|| StoreError::Corrupt(format!("priority {prio:?}")))?;
            c.state = ChangeState::parse(&state)
                .ok_or_else(|| StoreError::Corrupt(format!("state {state:?}")))?;
            out.push(c);
        }
        Ok(out)
    }

    /// Every stored candidate.
    pub fn candidates(&self) -> Result<Vec<Candidate>, StoreError> {
        self.candidates_where("1", [])
    }

    /// One candidate, whether or not the engine still holds it in memory.
    pub fn candidate(&self, id: u64) -> Result<Option<Candidate>, StoreError> {
        Ok(self.candidates_where("id = ?1", [id as i64])?.pop())
    }

    fn candidates_where<P: rusqlite::Params>(
        &self,
        cond: &str,
        params: P,
    ) -> Result<Vec<Candidate>, StoreError> {
        let mut st = self.conn.prepare(&format!(
            "SELECT id, repo, branch, changes, base, merged, phase, follow_up_of, builds, extra_builds,
             created_at, last_build_at, finished_at, summary, merge_group, marks, ahead, stage FROM candidates WHERE {cond} ORDER BY id"
        ))?;
        let rows = st.query_map(params, |r| {
            Ok((
                r.get::<_, u64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, Option<u64>>(7)?,
                (r.get::<_, u32>(8)?, r.get::<_, u32>(9)?),
                (
                    r.get::<_, i64>(10)?,
                    r.get::<_, Option<i64>>(11)?,
                    r.get::<_, Option<i64>>(12)?,
                ),
                (
                    r.get::<_, Option<String>>(13)?,
                    r.get::<_, Option<String>>(14)?,
                    r.get::<_, Option<String>>(15)?,
                    r.get::<_, Option<u64>>(16)?,
                    r.get::<_, Option<String>>(17)?,
                ),
            ))
        })?;
        let mut out = vec![];
        for row in rows {
            let (
                id,
                repo,
                branch,
                changes,
                base,
                merged,
                phase,
                follow_up_of,
                (builds, extra),
                (created, last, fin),
                (summary, group, marks, ahead, stage),
            ) = row?;
            let corrupt = |what: &str| StoreError::Corrupt(format!("candidate {id}: {what}"));
            out.push(Candidate {
                id,
                repo,
                branch,
                changes: serde_json::from_str(&changes).map_err(|_| corrupt("changes"))?,
                base,
                merged: serde_json::from_str(&merged).map_err(|_| corrupt("merged"))?,
                phase: Phase::parse(&phase).ok_or_else(|| corrupt("phase"))?,
                follow_up_of,
                builds,
                extra_builds: extra,
                created_at: created,
                last_build_at: last,
                finished_at: fin,
                summary,
                group: match group {
                    Some(g) => Some(serde_json::from_str(&g).map_err(|_| corrupt("merge_group"))?),
                    None => None,
                },
                marks: match marks {
                    Some(m) => serde_json::from_str(&m).map_err(|_| corrupt("marks"))?,
                    None => vec![],
                },
                ahead,
                stage: match stage {
                    Some(s) => Stage::parse(&s).ok_or_else(|| corrupt("stage"))?,
                    None => Stage::Queue,
                },
                spec: Default::default(),
                targets: vec![],
                pending: Default::default(),
                eval_blockers: vec![],
                attribution: None,
                preexisting: vec![],
            });
        }
        Ok(out)
    }

    /// Every channel with its most recent advances (oldest first).
    pub fn channels(
        &self,
    ) -> Result<Vec<(crate::core::ChannelState, Vec<crate::core::Advance>)>, StoreError> {
        channel_rows::load(&self.conn)
    }

    pub fn memo(&self) -> Result<Vec<(String, Memo)>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT drv, class, log_tail, root_drv, expires_at FROM memo")?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<i64>>(4)?,
            ))
        })?;
        let mut out = vec![];
        for row in rows {
            let (drv, class, log_tail, root_drv, expires_at) = row?;
            let class = OutcomeClass::parse(&class)
                .ok_or_else(|| StoreError::Corrupt(format!("memo class {class:?}")))?;
            out.push((
                drv,
                Memo {
                    class,
                    log_tail,
                    root_drv,
                    expires_at,
                },
            ));
        }
        Ok(out)
    }

    pub fn put_eval(
        &mut self,
        repo: &str,
        eval: &Evaluation,
        now: Millis,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_vec(eval).expect("serialisable");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&json).expect("in-memory write");
        let data = enc.finish().expect("in-memory write");
        self.conn.execute(
            "INSERT OR REPLACE INTO evaluations (commit_sha, repo, data, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![eval.commit, repo, data, now],
        )?;
        Ok(())
    }

    pub fn get_eval(&self, commit: &str) -> Result<Option<Evaluation>, StoreError> {
        let data: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT data FROM evaluations WHERE commit_sha = ?1",
                [commit],
                |r| r.get(0),
            )
            .optional()?;
        let Some(data) = data else { return Ok(None) };
        let mut json = vec![];
        flate2::read::GzDecoder::new(&data[..])
            .read_to_end(&mut json)
            .map_err(|e| StoreError::Corrupt(format!("evaluation {commit}: {e}")))?;
        serde_json::from_slice(&json)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("evaluation {commit}: {e}")))
    }

    /// Records an attempt; returns its id.
    pub fn put_attempt(&mut self, r: &BuildReport, now: Millis) -> Result<i64, StoreError> {
        self.conn.execute(
            "INSERT INTO attempts (drv, builder, class, root_drv, log_tail, duration_ms, finished_at, log_path)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![r.drv_path, r.builder, r.class.as_str(), r.root_drv, r.log_tail, r.duration_ms, now, r.log_path],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Everything the core is restored from, as the engine's last committed step left it:
    /// the live changes and candidates, and the `keep_final` most recent final ones of each
    /// (the core holds no more; see `CoreConfig::keep_final`), so that a restart after a
    /// year of service reads what it needs, not the year.
    pub fn snapshot(&self, keep_final: usize) -> Result<crate::core::Snapshot, StoreError> {
        let keep = keep_final.min(i64::MAX as usize) as i64;
        let changes = self.changes_where(
            "state IN ('queued', 'testing') OR id IN (SELECT id FROM changes
             WHERE state NOT IN ('queued', 'testing') ORDER BY id DESC LIMIT ?1)",
            [keep],
        )?;
        // A finished candidate that a live one follows up stays, as the core keeps it.
        let candidates = self.candidates_where(
            "phase != 'done'
             OR id IN (SELECT follow_up_of FROM candidates WHERE phase != 'done')
             OR id IN (SELECT id FROM candidates WHERE phase = 'done' ORDER BY id DESC LIMIT ?1)",
            [keep],
        )?;
        Ok(crate::core::Snapshot {
            changes: changes.into_iter().map(|c| (c.id, c)).collect(),
            candidates: candidates.into_iter().map(|k| (k.id, k)).collect(),
            memo: self.memo()?.into_iter().collect(),
            channels: self
                .channels()?
                .into_iter()
                .map(|(c, a)| (c.name.clone(), (c, a)))
                .collect(),
            drained: self.drained_builders()?.into_iter().collect(),
            broken: self
                .broken()?
                .into_iter()
                .map(|j| ((j.repo.clone(), j.key()), j))
                .collect(),
        })
    }

    pub fn drained_builders(&self) -> Result<Vec<String>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT uri FROM builders WHERE drained = 1 ORDER BY uri")?;
        let rows = st.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Derivations that failed and later succeeded unchanged.
    pub fn flaky_count(&self) -> Result<u64, StoreError> {
        Ok(self.conn.query_row(
            "SELECT COUNT(DISTINCT s.drv) FROM attempts s JOIN attempts f ON f.drv = s.drv
             WHERE s.class = 'success' AND f.class = 'failed' AND f.id < s.id",
            [],
            |r| r.get(0),
        )?)
    }

    /// One attempt: derivation, builder, outcome class, compressed log.
    pub fn attempt(&self, id: i64) -> Result<Option<AttemptRow>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, drv, builder, class, log_path, duration_ms FROM attempts WHERE id = ?1",
                [id],
                attempt_row,
            )
            .optional()?)
    }

    /// Every attempt of a derivation, oldest first.
    pub fn attempts_of(&self, drv: &str) -> Result<Vec<AttemptRow>, StoreError> {
        let mut st = self.conn.prepare(
            "SELECT id, drv, builder, class, log_path, duration_ms FROM attempts WHERE drv = ?1 ORDER BY id",
        )?;
        let rows = st.query_map([drv], attempt_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Attempts by outcome class, for `/metrics`.
    pub fn attempt_counts(&self) -> Result<Vec<(String, String, u64)>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT builder, class, COUNT(*) FROM attempts GROUP BY builder, class ORDER BY builder, class")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The most recent infrastructure attempts (`limit`), newest first: (builder, log tail,
    /// finished at), the evidence `/api/v1/implementations` groups by crash signature.
    pub fn infrastructure_tails(
        &self,
        limit: usize,
    ) -> Result<Vec<(String, String, Millis)>, StoreError> {
        let mut st = self.conn.prepare(
            "SELECT builder, log_tail, finished_at FROM attempts WHERE class = 'infrastructure' \
             ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = st.query_map([limit as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Remembers a comment acted on; `false` when it was seen before.
    pub fn comment_seen(&mut self, repo: &str, id: u64, now: Millis) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "INSERT OR IGNORE INTO forge_comments (repo, id, at) VALUES (?1, ?2, ?3)",
            params![repo, id as i64, now],
        )?;
        Ok(n == 1)
    }

    /// Where the last resync of `repo`'s comments ended (milliseconds).
    pub fn sync_since(&self, repo: &str) -> Result<Option<Millis>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT since FROM forge_sync WHERE repo = ?1",
                [repo],
                |r| r.get(0),
            )
            .optional()?)
    }

    pub fn set_sync_since(&self, repo: &str, since: Millis) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT OR REPLACE INTO forge_sync (repo, since) VALUES (?1, ?2)",
            params![repo, since],
        )?;
        Ok(())
    }

    /// Remembers a webhook delivery; `false` when it was seen before (a duplicate).
    pub fn record_delivery(
        &mut self,
        repo: &str,
        id: &str,
        event: &str,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "INSERT OR IGNORE INTO deliveries (repo, id, event, at) VALUES (?1, ?2, ?3, ?4)",
            params![repo, id, event, now],
        )?;
        Ok(n == 1)
    }

    pub fn events_after(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, i64, String, String)>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT id, at, repo, text FROM events WHERE id > ?1 ORDER BY id LIMIT ?2")?;
        let rows = st.query_map(params![after, limit], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// SQLite rows of channels (schema v4).
/// Deleting what retention no longer keeps.
pub mod breakage;
pub mod retention;
mod verify_rows;

/// Read-only connections used off the driver task.
pub mod reader;
pub use reader::Reader;

mod channel_rows {
    use rusqlite::{params, Connection};

    use super::StoreError;
    use crate::core::{Advance, ChannelState};

    fn js<T: serde::Serialize>(v: &Option<T>) -> Option<String> {
        v.as_ref()
            .map(|v| serde_json::to_string(v).expect("serialisable"))
    }

    pub fn put_state(conn: &Connection, s: &ChannelState) -> Result<(), rusqlite::Error> {
        conn.execute(
            "INSERT OR REPLACE INTO channels (name, rev, advanced_at, rev_time, blocked, advancing, published, advances, blocks)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                s.name,
                s.rev,
                s.advanced_at,
                s.rev_time,
                js(&s.blocked),
                js(&s.advancing),
                s.published,
                s.advances,
                s.blocks
            ],
        )?;
        Ok(())
    }

    pub fn put_advance(
        conn: &Connection,
        channel: &str,
        a: &Advance,
    ) -> Result<(), rusqlite::Error> {
        conn.execute(
            "INSERT INTO channel_advances (channel, at, from_rev, rev, gate) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                channel,
                a.at,
                a.from,
                a.rev,
                serde_json::to_string(&a.gate).expect("serialisable")
            ],
        )?;
        Ok(())
    }

    /// Every channel row with its most recent advances (oldest first).
    pub fn load(conn: &Connection) -> Result<Vec<(ChannelState, Vec<Advance>)>, StoreError> {
        let mut st = conn.prepare(
            "SELECT name, rev, advanced_at, rev_time, blocked, advancing, published, advances, blocks
             FROM channels ORDER BY name",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                ChannelState {
                    name: r.get(0)?,
                    rev: r.get(1)?,
                    advanced_at: r.get(2)?,
                    rev_time: r.get(3)?,
                    blocked: None,
                    advancing: None,
                    published: r.get(6)?,
                    advances: r.get(7)?,
                    blocks: r.get(8)?,
                },
                r.get::<_, Option<String>>(4)?,
                r.get::<_, Option<String>>(5)?,
            ))
        })?;
        let mut out = vec![];
        for row in rows {
            let (mut s, blocked, advancing) = row?;
            let corrupt = |what: &str| StoreError::Corrupt(format!("channel {}: {what}", s.name));
            s.blocked = blocked
                .map(|b| serde_json::from_str(&b))
                .transpose()
                .map_err(|_| corrupt("blocked"))?;
            s.advancing = advancing
                .map(|a| serde_json::from_str(&a))
                .transpose()
                .map_err(|_| corrupt("advancing"))?;
            let mut hist = conn.prepare(
                "SELECT at, from_rev, rev, gate FROM channel_advances WHERE channel = ?1 ORDER BY id DESC LIMIT ?2",
            )?;
            let rows = hist.query_map(params![s.name, crate::core::HISTORY_KEEP as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })?;
            let mut history = vec![];
            for row in rows {
                let (at, from, rev, gate) = row?;
                history.push(Advance {
                    at,
                    from,
                    rev,
                    gate: serde_json::from_str(&gate).map_err(|_| corrupt("advance gate"))?,
                });
            }
            history.reverse();
            out.push((s, history));
        }
        Ok(out)
    }
}
