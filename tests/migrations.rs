//! Schema migrations: a database written by the first release (schema v1) opens with
//! the current `Store`, keeps its data readable, and gains the later tables.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use mergequeue::core::change::{ChangeState, Priority};
use mergequeue::core::evaluation::{EvalOutcome, Evaluation, Job, JobKey, JobResult};
use mergequeue::core::outcome::{BuildReport, OutcomeClass};
use mergequeue::core::{Command, Core, CoreConfig, LaneConfig, Phase, Record, RepoConfig};
use mergequeue::shell::store::{migrations, Store};
use rusqlite::{params, Connection};

const BASE: &str = "5f3c1e0a9d2b7c4e8f6a1b3d5c7e9f0a2b4c6d8e";
const HEAD1: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678";
const HEAD2: &str = "b2c3d4e5f60718293a4b5c6d7e8f901234567890";
const HEAD4: &str = "d4e5f60718293a4b5c6d7e8f9012345678901234";
const M1: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0f1e2d3c4";
const M2: &str = "1e2d3c4b5a69788796a5b4c3d2e1f0f1e2d3c4b5";

fn evaluation() -> Evaluation {
    let job = |attr: &str, h: &str| {
        (
            JobKey {
                attr: attr.into(),
                system: "x86_64-linux".into(),
            },
            JobResult::Ok(Job {
                drv_path: format!("/nix/store/{h}-{attr}.drv"),
                outputs: vec![("out".into(), format!("/nix/store/{h}-{attr}"))],
                maintainers: vec![mergequeue::core::evaluation::Maintainer::handle("alice")],
            }),
        )
    };
    Evaluation::new(
        M2.into(),
        EvalOutcome::Ok,
        vec![
            job("hello", "9xk2"),
            job("python3Packages.requests", "0aq7"),
            (
                JobKey {
                    attr: "broken".into(),
                    system: "aarch64-linux".into(),
                },
                JobResult::Error("error: attribute 'src' missing".into()),
            ),
        ],
    )
}

/// id, git_ref, submitted_head, head, title, author, priority, state, reason, landed.
type ChangeRow<'a> = (
    i64,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    Option<&'a str>,
    Option<&'a str>,
);

/// Creates a schema-v1 database with realistic rows in every v1 table.
fn v1_database(path: &Path) {
    let mut conn = Connection::open(path).unwrap();
    migrations().to_version(&mut conn, 1).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 1);
    let t = 1_700_000_000i64;
    let sql = "INSERT INTO changes (id, repo, target, git_ref, submitted_head, head, title, author,
               priority, state, reason, landed_commit, submitted_at, updated_at)
               VALUES (?1, 'nixpkgs', 'master', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)";
    let rows: [ChangeRow; 4] = [
        (1, "refs/pull/101/head", HEAD1, HEAD1, "hello: 2.12 -> 2.12.1", "alice", "normal", "merged", None, Some(M1)),
        (2, "refs/pull/102/head", HEAD2, HEAD2, "python3Packages.requests: 2.31 -> 2.32", "bob", "urgent", "rejected",
         Some("job python3Packages.requests (x86_64-linux) fails to build on the candidate: /nix/store/0aq7-requests.drv\nlog tail:\nerror: builder failed"), None),
        (3, "refs/pull/103/head", HEAD1, HEAD1, "zlib: 1.3 -> 1.3.1", "carol", "low", "queued", None, None),
        (4, "refs/heads/topic", HEAD2, HEAD4, "openssl: patch CVE", "dave", "high", "testing", None, None),
    ];
    for (id, git_ref, sub, head, title, author, prio, state, reason, landed) in rows {
        conn.execute(
            sql,
            params![
                id,
                git_ref,
                sub,
                head,
                title,
                author,
                prio,
                state,
                reason,
                landed,
                t + id,
                t + 100 + id
            ],
        )
        .unwrap();
    }
    // A row relying on the v1 defaults (title, author, priority).
    conn.execute(
        "INSERT INTO changes (id, repo, target, git_ref, submitted_head, head, state, submitted_at, updated_at)
         VALUES (5, 'nixpkgs', 'master', 'refs/pull/105/head', ?1, ?1, 'cancelled', ?2, ?2)",
        params![HEAD1, t + 5],
    )
    .unwrap();

    let cand =
        "INSERT INTO candidates (id, repo, branch, changes, base, merged, phase, follow_up_of,
                builds, extra_builds, created_at, last_build_at, finished_at, summary)
                VALUES (?1, 'nixpkgs', 'master', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)";
    let ms = t * 1000;
    conn.execute(
        cand,
        params![
            1,
            "[1,2]",
            BASE,
            format!("[[1,\"{M1}\"],[2,\"{M2}\"]]"),
            "done",
            None::<i64>,
            9,
            1,
            ms,
            ms + 50_000,
            ms + 60_000,
            "rejected #2"
        ],
    )
    .unwrap();
    conn.execute(
        cand,
        params![
            2,
            "[1]",
            BASE,
            format!("[[1,\"{M1}\"]]"),
            "done",
            1,
            0,
            0,
            ms + 60_000,
            None::<i64>,
            ms + 70_000,
            format!("landed {M1}")
        ],
    )
    .unwrap();
    conn.execute(
        cand,
        params![
            3,
            "[4]",
            None::<String>,
            "[]",
            "preparing",
            None::<i64>,
            0,
            0,
            ms + 80_000,
            None::<i64>,
            None::<i64>,
            None::<String>
        ],
    )
    .unwrap();

    let memo =
        "INSERT INTO memo (drv, class, log_tail, root_drv, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)";
    conn.execute(
        memo,
        params![
            "/nix/store/9xk2-hello.drv",
            "success",
            "",
            None::<String>,
            None::<i64>
        ],
    )
    .unwrap();
    conn.execute(
        memo,
        params![
            "/nix/store/0aq7-requests.drv",
            "failed",
            "error: builder for '/nix/store/0aq7-requests.drv' failed with exit code 1",
            None::<String>,
            ms + 86_400_000
        ],
    )
    .unwrap();
    conn.execute(
        memo,
        params![
            "/nix/store/77zz-app.drv",
            "dependency-failed",
            "error: 1 dependencies of derivation failed to build",
            "/nix/store/0aq7-requests.drv",
            ms + 86_400_000
        ],
    )
    .unwrap();
    // Relies on the log_tail default.
    conn.execute(
        "INSERT INTO memo (drv, class) VALUES ('/nix/store/11aa-slow.drv', 'timed-out')",
        [],
    )
    .unwrap();

    let json = serde_json::to_vec(&evaluation()).unwrap();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&json).unwrap();
    conn.execute(
        "INSERT INTO evaluations (commit_sha, repo, data, created_at) VALUES (?1, 'nixpkgs', ?2, ?3)",
        params![M2, enc.finish().unwrap(), ms],
    )
    .unwrap();

    for (at, text) in [
        (ms, "candidate 1 on master: testing #1 #2"),
        (ms + 70_000, "landed #1 on master at 0f1e2d3c4b5a"),
    ] {
        conn.execute(
            "INSERT INTO events (at, repo, text) VALUES (?1, 'nixpkgs', ?2)",
            params![at, text],
        )
        .unwrap();
    }
}

fn latest_version() -> usize {
    let mut conn = Connection::open_in_memory().unwrap();
    migrations().to_latest(&mut conn).unwrap();
    conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
        .unwrap() as usize
}

#[test]
fn v1_database_opens_with_the_current_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.sqlite");
    v1_database(&path);

    let mut store = Store::open(&path).unwrap();
    let version: i64 = store
        .conn()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version as usize, latest_version());
    assert!(latest_version() >= 2);

    let changes = store.changes().unwrap();
    assert_eq!(changes.len(), 5);
    let c1 = &changes[0];
    assert_eq!(c1.id, 1);
    assert_eq!(c1.repo, "nixpkgs");
    assert_eq!(c1.target, "master");
    assert_eq!(c1.git_ref, "refs/pull/101/head");
    assert_eq!(c1.title, "hello: 2.12 -> 2.12.1");
    assert_eq!(c1.state, ChangeState::Merged);
    assert_eq!(c1.landed_commit.as_deref(), Some(M1));
    // Seconds before schema v5, milliseconds since.
    assert_eq!(c1.submitted_at, 1_700_000_001_000);
    assert_eq!(changes[1].priority, Priority::Urgent);
    assert_eq!(changes[1].state, ChangeState::Rejected);
    assert!(changes[1]
        .reason
        .as_deref()
        .unwrap()
        .contains("log tail:\n"));
    assert_eq!(changes[2].priority, Priority::Low);
    assert_eq!(changes[3].priority, Priority::High);
    assert_eq!(changes[3].submitted_head, HEAD2);
    assert_eq!(changes[3].head, HEAD4);
    assert_eq!(changes[4].priority, Priority::Normal);
    assert_eq!(changes[4].title, "");
    assert_eq!(changes[4].state, ChangeState::Cancelled);

    let cands = store.candidates().unwrap();
    assert_eq!(cands.len(), 3);
    assert_eq!(cands[0].changes, vec![1, 2]);
    assert_eq!(cands[0].base.as_deref(), Some(BASE));
    assert_eq!(
        cands[0].merged,
        vec![(1, M1.to_string()), (2, M2.to_string())]
    );
    assert_eq!(cands[0].commit(), Some(M2));
    assert_eq!(cands[0].phase, Phase::Done);
    assert_eq!((cands[0].builds, cands[0].extra_builds), (9, 1));
    assert_eq!(cands[0].summary.as_deref(), Some("rejected #2"));
    assert_eq!(cands[1].follow_up_of, Some(1));
    assert_eq!(cands[2].phase, Phase::Preparing);
    assert_eq!(cands[2].base, None);
    assert!(cands[2].merged.is_empty());

    let memo: BTreeMap<_, _> = store.memo().unwrap().into_iter().collect();
    assert_eq!(memo.len(), 4);
    assert!(memo["/nix/store/9xk2-hello.drv"].ok());
    assert_eq!(memo["/nix/store/9xk2-hello.drv"].expires_at, None);
    assert_eq!(
        memo["/nix/store/0aq7-requests.drv"].class,
        OutcomeClass::Failed
    );
    let dep = &memo["/nix/store/77zz-app.drv"];
    assert_eq!(dep.class, OutcomeClass::DependencyFailed);
    assert_eq!(
        dep.root_drv.as_deref(),
        Some("/nix/store/0aq7-requests.drv")
    );
    assert_eq!(memo["/nix/store/11aa-slow.drv"].log_tail, "");
    assert_eq!(
        memo["/nix/store/11aa-slow.drv"].class,
        OutcomeClass::TimedOut
    );

    assert_eq!(store.get_eval(M2).unwrap(), Some(evaluation()));
    assert_eq!(store.get_eval(BASE).unwrap(), None);
    let events = store.events_after(0, 10).unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].3, "landed #1 on master at 0f1e2d3c4b5a");

    // v2: build attempts.
    let report = |drv: &str, class, builder: &str| BuildReport {
        drv_path: drv.into(),
        class,
        log_tail: String::new(),
        root_drv: None,
        builder: builder.into(),
        duration_ms: 1234,
        log_path: None,
    };
    let now = 1_700_000_200_000;
    store
        .put_attempt(
            &report("/nix/store/9xk2-hello.drv", OutcomeClass::Success, "local"),
            now,
        )
        .unwrap();
    store
        .put_attempt(
            &report(
                "/nix/store/0aq7-requests.drv",
                OutcomeClass::Infrastructure,
                "ssh-ng://b1",
            ),
            now,
        )
        .unwrap();
    store
        .put_attempt(
            &report(
                "/nix/store/0aq7-requests.drv",
                OutcomeClass::Failed,
                "ssh-ng://b1",
            ),
            now,
        )
        .unwrap();
    store
        .put_attempt(
            &report("/nix/store/11aa-slow.drv", OutcomeClass::Success, "local"),
            now,
        )
        .unwrap();
    assert_eq!(
        store.attempt_counts().unwrap(),
        vec![
            ("local".to_string(), "success".to_string(), 2),
            ("ssh-ng://b1".to_string(), "failed".to_string(), 1),
            ("ssh-ng://b1".to_string(), "infrastructure".to_string(), 1),
        ]
    );

    // Old rows can be updated and new ones written through the current code.
    let mut c3 = changes[2].clone();
    c3.state = ChangeState::Testing;
    let e = evaluation();
    store
        .put_eval(
            "nixpkgs",
            &Evaluation {
                commit: BASE.into(),
                ..e
            },
            now,
        )
        .unwrap();
    store.apply(&[&Record::Change(c3)]).unwrap();
    assert_eq!(store.changes().unwrap()[2].state, ChangeState::Testing);
    assert!(store.get_eval(BASE).unwrap().is_some());
    drop(store);

    // Opening again is a no-op for the schema and keeps everything.
    let store = Store::open(&path).unwrap();
    assert_eq!(store.changes().unwrap().len(), 5);
    assert_eq!(store.attempt_counts().unwrap().len(), 3);
}

#[test]
fn core_restores_from_a_migrated_v1_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.sqlite");
    v1_database(&path);
    let store = Store::open(&path).unwrap();
    let config = CoreConfig {
        repos: BTreeMap::from([(
            "nixpkgs".to_string(),
            RepoConfig {
                lanes: BTreeMap::from([(
                    "master".to_string(),
                    LaneConfig {
                        batch_max: 8,
                        required: vec![],
                        batch_delay_ms: 0,
                        build_priority: None,
                        breakage: Default::default(),
                        mass_rebuild_threshold: None,
                        window: 1,
                        window_floor: 1,
                    },
                )]),
            },
        )]),
        failure_ttl_ms: 86_400_000,
        retry_delay_ms: 5_000,
        builders: vec![],
        infra_retries: 5,
        infra_budget: 3,
        failure_retries: 1,
        quarantine_after: 3,
        probe_delay_ms: 30_000,
        target_poll_ms: 60_000,
        channels: BTreeMap::new(),
        keep_final: CoreConfig::default().keep_final,
        cache: None,
        verify: None,
        build_deadline_ms: 48 * 3_600_000,
        eval_deadline_ms: 4 * 3_600_000,
    };
    let mut core = Core::restore(
        config,
        store.changes().unwrap(),
        store.candidates().unwrap(),
        store.memo().unwrap(),
        store.channels().unwrap(),
        1_700_000_300_000,
    );
    let cmds = core.take_commands();
    // The interrupted candidate 3 (#4) is prepared again; nothing else is started
    // while it holds the lane, and queued #3 waits.
    let prepares: Vec<_> = cmds
        .iter()
        .filter_map(|c| match c {
            Command::Prepare { cand, changes, .. } => Some((*cand, changes.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        prepares,
        vec![(3, vec![(4, "refs/heads/topic".to_string())])]
    );
    assert_eq!(core.change(4).unwrap().state, ChangeState::Testing);
    assert_eq!(core.change(3).unwrap().state, ChangeState::Queued);
    assert!(core.memo("/nix/store/9xk2-hello.drv").unwrap().ok());
}

#[test]
fn migrations_are_valid() {
    migrations().validate().unwrap();
}

/// Columns added to an existing table after v1 must be nullable or have a DEFAULT, or
/// upgrading a database with rows fails (or would need a rewrite of the table).
#[test]
fn columns_added_after_v1_have_defaults() {
    // Semantic check: step through every version on a database with rows and look at
    // the columns each step adds to tables that already existed.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.sqlite");
    v1_database(&path);
    let mut conn = Connection::open(&path).unwrap();
    let columns =
        |conn: &Connection| -> BTreeMap<String, BTreeMap<String, (bool, Option<String>)>> {
            let mut st = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
            .unwrap();
            let tables: Vec<String> = st
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            tables
                .into_iter()
                .map(|t| {
                    let mut st = conn.prepare(&format!("PRAGMA table_info({t})")).unwrap();
                    let cols = st
                        .query_map([], |r| {
                            Ok((
                                r.get::<_, String>(1)?,
                                (r.get::<_, bool>(3)?, r.get::<_, Option<String>>(4)?),
                            ))
                        })
                        .unwrap()
                        .collect::<Result<_, _>>()
                        .unwrap();
                    (t, cols)
                })
                .collect()
        };
    for v in 2..=latest_version() {
        let before = columns(&conn);
        migrations().to_version(&mut conn, v).unwrap();
        let after = columns(&conn);
        for (table, cols) in &before {
            for (name, (not_null, default)) in &after[table] {
                if cols.contains_key(name) {
                    continue;
                }
                assert!(
                    !not_null || default.is_some(),
                    "migration {v} adds {table}.{name} NOT NULL without a DEFAULT"
                );
            }
        }
    }

    // Text check over the migrations' SQL, for ALTER TABLE ... ADD COLUMN.
    let text = format!("{:?}", migrations()).replace("\\n", "\n");
    let upper = text.to_uppercase();
    assert!(
        upper.contains("CREATE TABLE ATTEMPTS"),
        "the SQL is visible"
    );
    for (i, _) in upper.match_indices("ADD COLUMN") {
        let clause: String = upper[i..]
            .chars()
            .take_while(|&c| c != ';' && c != '"' && c != ',')
            .collect();
        assert!(
            !clause.contains("NOT NULL") || clause.contains("DEFAULT"),
            "NOT NULL column without a DEFAULT: {clause}"
        );
    }
}

/// Channel rows (schema v4) written through `Store::apply` on an upgraded v1 database
/// come back through `channel::db::load` with their history, and restore a `Core`.
#[test]
fn channel_rows_round_trip_on_an_upgraded_database() {
    use mergequeue::core::{Advance, Advancing, Blocked, ChannelConfig, ChannelState, GateJob};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.sqlite");
    v1_database(&path);
    let mut store = Store::open(&path).unwrap();
    let job = |status: &str| GateJob {
        attr: "tested".into(),
        system: "x86_64-linux".into(),
        drv: Some("/nix/store/9xk2-tested.drv".into()),
        outputs: vec![("out".into(), "/nix/store/9xk2-tested".into())],
        status: status.into(),
        log_tail: if status == "failed" {
            "error: builder failed".into()
        } else {
            String::new()
        },
    };
    let state = ChannelState {
        name: "unstable".into(),
        rev: Some(M1.into()),
        advanced_at: Some(1_700_000_100_000),
        rev_time: Some(1_700_000_100_000),
        blocked: Some(Blocked {
            rev: M2.into(),
            at: 1_700_000_200_000,
            error: None,
            jobs: vec![job("failed")],
        }),
        advancing: Some(Advancing {
            old: Some(M1.into()),
            new: HEAD4.into(),
            gate: vec![job("success")],
        }),
        published: Some(BASE.into()),
        advances: 2,
        blocks: 1,
    };
    let advances = [
        Advance {
            at: 1_700_000_000_000,
            from: None,
            rev: BASE.into(),
            gate: vec![job("success")],
        },
        Advance {
            at: 1_700_000_100_000,
            from: Some(BASE.into()),
            rev: M1.into(),
            gate: vec![job("success")],
        },
    ];
    let mut records = vec![Record::Channel(state.clone())];
    records.extend(advances.iter().map(|a| Record::ChannelAdvance {
        channel: "unstable".into(),
        advance: a.clone(),
    }));
    store.apply(&records.iter().collect::<Vec<_>>()).unwrap();
    let loaded = store.channels().unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].0, state);
    assert_eq!(loaded[0].1, advances.to_vec(), "oldest first");
    let config = CoreConfig {
        repos: BTreeMap::from([(
            "nixpkgs".to_string(),
            RepoConfig {
                lanes: BTreeMap::new(),
            },
        )]),
        failure_ttl_ms: 86_400_000,
        retry_delay_ms: 5_000,
        builders: vec![],
        infra_retries: 5,
        infra_budget: 3,
        failure_retries: 1,
        quarantine_after: 3,
        probe_delay_ms: 30_000,
        target_poll_ms: 60_000,
        channels: BTreeMap::from([(
            "unstable".to_string(),
            ChannelConfig {
                repo: "nixpkgs".into(),
                source: "master".into(),
                target: "nixos-unstable".into(),
                gate: vec!["tested".into()],
                min_interval_ms: 0,
                poll_interval_ms: 60_000,
                look_back: false,
                artifacts: true,
            },
        )]),
        keep_final: CoreConfig::default().keep_final,
        cache: None,
        verify: None,
        build_deadline_ms: 48 * 3_600_000,
        eval_deadline_ms: 4 * 3_600_000,
    };
    let mut core = Core::restore(config, vec![], vec![], vec![], loaded, 1_700_000_300_000);
    let cmds = core.take_commands();
    assert!(
        cmds.iter()
            .any(|c| matches!(c, Command::AdvanceChannel { old, new, .. }
            if old.as_deref() == Some(M1) && new == HEAD4)),
        "the advance in flight is pushed again: {cmds:?}"
    );
    assert!(cmds
        .iter()
        .any(|c| matches!(c, Command::PollSource { channel } if channel == "unstable")));
    let ch = core.channel("unstable").unwrap();
    assert_eq!(ch.history.len(), 2);
    assert_eq!(
        ch.state.blocked.as_ref().unwrap().jobs[0].log_tail,
        "error: builder failed"
    );
}

#[test]
fn a_merge_group_candidate_round_trips_on_an_upgraded_database() {
    use mergequeue::core::forge::{ForgeInput, MergeGroup, PullRequest};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.sqlite");
    v1_database(&path);
    let mut store = Store::open(&path).unwrap();
    let lane = LaneConfig {
        batch_max: 4,
        required: vec![],
        batch_delay_ms: 0,
        build_priority: None,
        breakage: Default::default(),
        mass_rebuild_threshold: None,
        window: 1,
        window_floor: 1,
    };
    let mut cfg = CoreConfig::default();
    cfg.repos.insert(
        "pkgs".into(),
        RepoConfig {
            lanes: [("master".to_string(), lane)].into(),
        },
    );
    let mut core = Core::new(cfg);
    let pr = PullRequest {
        number: 42,
        head_sha: HEAD1.into(),
        base_ref: "master".into(),
        author: "alice".into(),
        title: "zlib: 1.3".into(),
        open: true,
        merged: false,
    };
    let group = MergeGroup {
        head_sha: M2.into(),
        head_ref: format!("refs/heads/gh-readonly-queue/master/pr-42-{BASE}"),
        base_sha: BASE.into(),
        base_ref: "master".into(),
    };
    let input = ForgeInput::MergeGroup {
        repo: "pkgs".into(),
        group,
        prs: vec![(pr, M2.into())],
    };
    core.forge(input, 1_700_000_000_000);
    let records: Vec<Record> = core
        .take_commands()
        .into_iter()
        .filter_map(|c| match c {
            Command::Record(r) => Some(r),
            _ => None,
        })
        .collect();
    store.apply(&records.iter().collect::<Vec<_>>()).unwrap();
    let cand = core
        .candidates()
        .find(|c| c.group.is_some())
        .expect("the group's candidate");
    let row = store.candidate(cand.id).unwrap().expect("stored");
    assert_eq!(row.group, cand.group);
    let g = row.group.unwrap();
    assert_eq!((g.head_sha.as_str(), g.base_sha.as_str()), (M2, BASE));
    assert_eq!(g.chain.len(), 1);
}
