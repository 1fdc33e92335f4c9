//! Retention on a real SQLite file: what `[retention]` no longer keeps is deleted, live
//! state never is, log files go with their attempts, and a restart reads only the live
//! and the recent rows.

use mergequeue::shell::config::Retention;
use mergequeue::shell::store::Store;

const DAY: i64 = 86_400_000;

fn change(store: &Store, id: i64, state: &str, updated_at: i64) {
    store
        .conn()
        .execute(
            "INSERT INTO changes (id, repo, target, git_ref, submitted_head, head, state, submitted_at, updated_at)
             VALUES (?1, 'pkgs', 'master', 'refs/heads/x', 'h', 'h', ?2, ?3, ?3)",
            rusqlite::params![id, state, updated_at],
        )
        .unwrap();
}

fn candidate(
    store: &Store,
    id: i64,
    phase: &str,
    finished: Option<i64>,
    follow_up_of: Option<i64>,
) {
    store
        .conn()
        .execute(
            "INSERT INTO candidates (id, repo, branch, changes, phase, follow_up_of, created_at, finished_at)
             VALUES (?1, 'pkgs', 'master', '[1]', ?2, ?3, 0, ?4)",
            rusqlite::params![id, phase, follow_up_of, finished],
        )
        .unwrap();
}

fn count(store: &Store, table: &str) -> i64 {
    store
        .conn()
        .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

#[test]
fn old_finished_rows_go_live_ones_stay() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut store = Store::open(&dir.path().join("s.sqlite")).unwrap();
    let now = 400 * DAY;
    // 3000 old final changes (more than one batch), a queued and a testing one just as old,
    // recent final ones, and the newest change (final and old: kept for its id).
    for id in 1..=3000 {
        let state = ["merged", "rejected", "cancelled"][id as usize % 3];
        change(&store, id, state, 10 * DAY);
    }
    change(&store, 3001, "queued", 10 * DAY);
    change(&store, 3002, "testing", 10 * DAY);
    for id in 3003..3013 {
        change(&store, id, "merged", now - DAY);
    }
    change(&store, 3013, "merged", 10 * DAY);
    // Candidates: old done ones, one an old done root that a live follow-up still needs,
    // a live one, a recent done one, and the newest (done, old).
    for id in 1..=50 {
        candidate(&store, id, "done", Some(10 * DAY), None);
    }
    candidate(&store, 51, "building", None, Some(7));
    candidate(&store, 52, "done", Some(now - DAY), None);
    candidate(&store, 53, "done", Some(10 * DAY), None);
    // Events, attempts with their logs, evaluations, memo rows: old and new.
    for (i, at) in [(1, 10 * DAY), (2, now - DAY)] {
        store
            .conn()
            .execute(
                "INSERT INTO events (at, repo, text) VALUES (?1, 'pkgs', 'e')",
                [at],
            )
            .unwrap();
        let log = logs.join(format!("{i}.log.gz"));
        std::fs::write(&log, "log").unwrap();
        store
            .conn()
            .execute(
                "INSERT INTO attempts (drv, class, finished_at, log_path) VALUES ('/nix/store/x.drv', 'success', ?1, ?2)",
                rusqlite::params![at, log.display().to_string()],
            )
            .unwrap();
        store
            .conn()
            .execute(
                "INSERT INTO evaluations (commit_sha, repo, data, created_at) VALUES (?1, 'pkgs', x'00', ?2)",
                rusqlite::params![format!("c{i}"), at],
            )
            .unwrap();
    }
    // A log outside the logs directory is never deleted, whatever a row says.
    let outside = dir.path().join("precious");
    std::fs::write(&outside, "keep").unwrap();
    store
        .conn()
        .execute(
            "INSERT INTO attempts (drv, class, finished_at, log_path) VALUES ('/nix/store/y.drv', 'success', 0, ?1)",
            [outside.display().to_string()],
        )
        .unwrap();
    store.conn().execute_batch(
        "INSERT INTO memo (drv, class, expires_at) VALUES ('/nix/store/ok.drv', 'success', NULL);
         INSERT INTO memo (drv, class, expires_at) VALUES ('/nix/store/old.drv', 'failed', 1);
         INSERT INTO memo (drv, class, expires_at) VALUES ('/nix/store/new.drv', 'failed', 500000000000000);",
    ).unwrap();

    let p = store.prune(now, &Retention::default(), &logs).unwrap();
    assert_eq!(p.changes, 3000, "{p:?}");
    assert_eq!(p.candidates, 49, "{p:?}");
    assert_eq!(
        (p.events, p.attempts, p.log_files, p.evaluations, p.memo),
        (1, 2, 1, 1, 1),
        "{p:?}"
    );
    assert_eq!(count(&store, "changes"), 13);
    let ids: Vec<i64> = {
        let mut st = store
            .conn()
            .prepare("SELECT id FROM candidates ORDER BY id")
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(ids, vec![7, 51, 52, 53]);
    assert!(
        outside.exists(),
        "a file outside the logs directory was deleted"
    );
    assert!(!logs.join("1.log.gz").exists() && logs.join("2.log.gz").exists());
    assert_eq!(count(&store, "memo"), 2);
    // Pruning again deletes nothing more.
    assert_eq!(
        store
            .prune(now, &Retention::default(), &logs)
            .unwrap()
            .total(),
        0
    );

    // A restart reads the live changes and the `keep` most recent final ones.
    let snap = store.snapshot(4).unwrap();
    let got: Vec<u64> = snap.changes.keys().copied().collect();
    assert_eq!(got, vec![3001, 3002, 3010, 3011, 3012, 3013]);
    let cands: Vec<u64> = snap.candidates.keys().copied().collect();
    assert_eq!(
        cands,
        vec![7, 51, 52, 53],
        "live, its root, and the recent done ones"
    );
    assert!(store.change(5).unwrap().is_none());
    assert_eq!(store.change(3013).unwrap().unwrap().id, 3013);
    let ok: String = store
        .conn()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
}
