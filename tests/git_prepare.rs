//! `Mirror::prepare` with real git: a change ref deleted on the remote is `vanished` (not a
//! merge conflict); a remote that cannot be reached, or a ref that exists but cannot be
//! fetched, is an error of the whole preparation (infrastructure, retried by the core).

use std::path::{Path, PathBuf};

use mergequeue::shell::git::Mirror;
use mergequeue::tools::harness::git;

struct Remote {
    _dir: tempfile::TempDir,
    upstream: PathBuf,
    work: PathBuf,
    state: PathBuf,
}

impl Remote {
    /// A bare upstream with `master` holding `file` = "base".
    fn new() -> Remote {
        mergequeue::tools::prereq::require(&["git"]).unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::tempdir().unwrap();
        let upstream = dir.path().join("upstream.git");
        let work = dir.path().join("work");
        let state = dir.path().join("state");
        std::fs::create_dir_all(&work).unwrap();
        git(
            dir.path(),
            &["init", "--quiet", "--bare", upstream.to_str().unwrap()],
        )
        .unwrap();
        git(&work, &["init", "--quiet", "-b", "master"]).unwrap();
        std::fs::write(work.join("file"), "base\n").unwrap();
        git(&work, &["add", "-A"]).unwrap();
        git(&work, &["commit", "--quiet", "-m", "base"]).unwrap();
        git(
            &work,
            &["remote", "add", "origin", upstream.to_str().unwrap()],
        )
        .unwrap();
        git(&work, &["push", "--quiet", "origin", "master"]).unwrap();
        Remote {
            _dir: dir,
            upstream,
            work,
            state,
        }
    }

    fn url(&self) -> String {
        format!("file://{}", self.upstream.display())
    }

    /// Pushes branch `name` from master with `path` set to `text`.
    fn branch(&self, name: &str, path: &str, text: &str) {
        let w = &self.work;
        git(w, &["checkout", "--quiet", "-b", name, "master"]).unwrap();
        std::fs::write(w.join(path), text).unwrap();
        git(w, &["add", "-A"]).unwrap();
        git(w, &["commit", "--quiet", "-m", name]).unwrap();
        git(w, &["push", "--quiet", "origin", name]).unwrap();
        git(w, &["checkout", "--quiet", "master"]).unwrap();
    }

    fn mirror(&self) -> Mirror {
        Mirror::open(&self.state, "repo", &self.url()).unwrap()
    }
}

fn changes(list: &[(u64, &str)]) -> Vec<(u64, String)> {
    list.iter()
        .map(|(id, b)| (*id, format!("refs/heads/{b}")))
        .collect()
}

#[test]
fn a_change_ref_deleted_on_the_remote_is_vanished_not_a_conflict() {
    let r = Remote::new();
    r.branch("a", "a", "a\n");
    r.branch("gone", "gone", "gone\n");
    // Conflicts with a: a genuine conflict is still reported as one.
    r.branch("c", "a", "c\n");
    let m = r.mirror();
    let list = changes(&[(1, "a"), (2, "gone"), (3, "c")]);
    // While the ref exists, it is merged like the others.
    let p = m.prepare("master", &list, None, 1).unwrap();
    assert!(p.vanished.is_empty(), "{:?}", p.vanished);
    assert_eq!(
        p.merged.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        [1, 2]
    );

    git(&r.work, &["push", "--quiet", "origin", "--delete", "gone"]).unwrap();
    let p = m.prepare("master", &list, None, 1).unwrap();
    assert_eq!(p.vanished.len(), 1, "{:?}", p.vanished);
    assert_eq!(p.vanished[0].0, 2);
    assert!(
        p.vanished[0].1.contains("refs/heads/gone"),
        "{}",
        p.vanished[0].1
    );
    assert_eq!(
        p.conflicts.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        [3],
        "{:?}",
        p.conflicts
    );
    assert!(p.conflicts[0].1.contains("conflicting files: a"));
    assert_eq!(p.merged.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [1]);
    assert_eq!(
        p.heads.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        [1, 3]
    );
    let master = git(&r.upstream, &["rev-parse", "master"]).unwrap();
    assert_eq!(p.base, master);

    // Only the vanished one: nothing merged, nothing conflicting.
    let p = m
        .prepare("master", &changes(&[(2, "gone")]), None, 1)
        .unwrap();
    assert_eq!(
        p.vanished.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        [2]
    );
    assert!(p.conflicts.is_empty() && p.merged.is_empty() && p.heads.is_empty());
}

#[test]
fn an_unreachable_remote_is_an_error() {
    let r = Remote::new();
    r.branch("a", "a", "a\n");
    let list = changes(&[(1, "a")]);
    let nowhere = r.state.join("no-such-remote.git");
    let m = Mirror::open(
        &r.state,
        "elsewhere",
        &format!("file://{}", nowhere.display()),
    )
    .unwrap();
    assert!(m.prepare("master", &list, None, 1).is_err());

    // A remote that was there and is gone.
    let m = r.mirror();
    m.prepare("master", &list, None, 1).unwrap();
    std::fs::rename(&r.upstream, r.upstream.with_extension("moved")).unwrap();
    let e = m.prepare("master", &list, None, 1).expect_err("an error");
    assert!(e.to_string().contains("fetch"), "{e}");
}

#[test]
fn a_ref_that_exists_but_cannot_be_fetched_is_an_error_not_vanished() {
    let r = Remote::new();
    r.branch("a", "a", "a\n");
    let m = r.mirror();
    m.prepare("master", &[], None, 1).unwrap();
    // `refs/mq/change/7/x` keeps the mirror from creating `refs/mq/change/7`.
    git(
        &m.path,
        &["update-ref", "refs/mq/change/7/x", "refs/mq/target/master"],
    )
    .unwrap();
    let e = m
        .prepare("master", &changes(&[(7, "a")]), None, 1)
        .expect_err("an error");
    let e = e.to_string();
    assert!(e.contains("refs/heads/a exists on the remote"), "{e}");
    assert_remote_untouched(&r.upstream);
}

fn assert_remote_untouched(upstream: &Path) {
    let refs = git(upstream, &["for-each-ref", "--format=%(refname)"]).unwrap();
    assert_eq!(refs, "refs/heads/a\nrefs/heads/master");
}

#[test]
fn a_candidate_behind_another_is_merged_onto_its_commit_and_old_refs_are_dropped() {
    let r = Remote::new();
    r.branch("a", "a", "a\n");
    r.branch("b", "b", "b\n");
    let m = r.mirror();
    let first = m.prepare("master", &changes(&[(1, "a")]), None, 1).unwrap();
    let ahead = first.merged.last().unwrap().1.clone();
    let second = m
        .prepare("master", &changes(&[(2, "b")]), Some(&ahead), 2)
        .unwrap();
    assert_eq!(second.base, ahead, "merged onto the candidate ahead");
    let tip = &second.merged.last().unwrap().1;
    let parents = git(&m.path, &["rev-list", "--parents", "-n", "1", tip]).unwrap();
    assert!(parents.contains(&ahead), "{parents}");
    // Both chains stay reachable; the tip of the target was not asked for again.
    let refs = git(
        &m.path,
        &["for-each-ref", "--format=%(refname)", "refs/mq/candidates"],
    )
    .unwrap();
    assert_eq!(refs, "refs/mq/candidates/1\nrefs/mq/candidates/2");
    // A commit the mirror does not have is an error, not a merge onto something else.
    let e = m
        .prepare("master", &changes(&[(3, "b")]), Some(&"0".repeat(40)), 3)
        .expect_err("an error");
    assert!(!e.to_string().is_empty());
    // Refs of candidates long finished are dropped.
    m.prepare("master", &changes(&[(4, "b")]), None, 100)
        .unwrap();
    let refs = git(
        &m.path,
        &["for-each-ref", "--format=%(refname)", "refs/mq/candidates"],
    )
    .unwrap();
    assert_eq!(refs, "refs/mq/candidates/100");
}
