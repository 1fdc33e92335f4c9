//! Git adapter: a bare mirror per repository under `state_dir/git`. Fetch and push go
//! through the git CLI (any URL it supports); merges, checkouts and ancestry use git2.
//! Everything here blocks: the driver calls it from `spawn_blocking`.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use wait_timeout::ChildExt;

use git2::{Oid, Repository, Signature, Time};

use crate::core::change::ChangeId;
use crate::core::{LandResult, Prepared};

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("git {args}: {stderr}")]
    Cli { args: String, stderr: String },
    #[error("cannot run git: {0}")]
    Spawn(std::io::Error),
    #[error("libgit2: {0}")]
    Lib(#[from] git2::Error),
    #[error("git {args} did not finish within {secs} s (timeouts.git_secs); killed")]
    TimedOut { args: String, secs: u64 },
    #[error("{0}")]
    Other(String),
}

pub struct Mirror {
    pub path: PathBuf,
    pub url: String,
}

/// Result of merging a list of heads onto a base one by one.
pub struct Chain {
    /// (index into heads, commit after merging it)
    pub merged: Vec<(usize, String)>,
    /// (index into heads, conflicting paths)
    pub conflicts: Vec<(usize, String)>,
}

/// `timeouts.git_secs`, set once at start; the default before that (tools, tests).
static TIMEOUT: OnceLock<Duration> = OnceLock::new();

/// Sets how long any git command may take (`timeouts.git_secs`); the first call wins.
pub fn set_timeout(limit: Duration) {
    let _ = TIMEOUT.set(limit);
}

fn timeout() -> Duration {
    TIMEOUT.get().copied().unwrap_or(Duration::from_secs(600))
}

pub(crate) fn git(dir: Option<&Path>, args: &[&str]) -> Result<String, GitError> {
    let mut cmd = Command::new("git");
    if let Some(d) = dir {
        cmd.arg("-C").arg(d);
    }
    // Never prompt for credentials: a daemon has nobody to answer. Its own process group,
    // so that a hung fetch is killed with the ssh or http helper it started.
    cmd.args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().map_err(GitError::Spawn)?;
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = vec![];
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped")));
    let err = drain(Box::new(child.stderr.take().expect("piped")));
    let limit = timeout();
    let status = match child.wait_timeout(limit).map_err(GitError::Spawn)? {
        Some(status) => status,
        None => {
            // SAFETY: the process group of the git we spawned (its PID is the group's ID).
            unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
            let _ = child.wait();
            // The readers end when the last holder of the pipes is gone; not waited for.
            return Err(GitError::TimedOut {
                args: args.join(" "),
                secs: limit.as_secs(),
            });
        }
    };
    let (stdout, stderr) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    if !status.success() {
        return Err(GitError::Cli {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

/// Normalises what users submit: `feature` means `refs/heads/feature`.
/// Candidates kept reachable by their refs: the window, its rebases and a margin.
const CANDIDATE_REFS_KEPT: u64 = 64;

/// Drops `refs/mq/candidates/N` of candidates long finished (ids are increasing).
fn drop_old_candidate_refs(repo: &Repository, newest: u64) -> Result<(), GitError> {
    let mut old = vec![];
    for r in repo.references_glob("refs/mq/candidates/*")? {
        let r = r?;
        let Some(name) = r.name() else { continue };
        let id = name.rsplit('/').next().and_then(|n| n.parse::<u64>().ok());
        if id.is_some_and(|id| id + CANDIDATE_REFS_KEPT < newest) {
            old.push(name.to_string());
        }
    }
    for name in old {
        repo.find_reference(&name)?.delete()?;
    }
    Ok(())
}

/// The ref the queue rewrites to show a lane's current mass-rebuild batch.
pub fn stage_ref(branch: &str) -> String {
    format!("refs/mergequeue/mass-rebuild/{branch}")
}

pub fn full_ref(r: &str) -> String {
    if r.starts_with("refs/") {
        r.to_string()
    } else {
        format!("refs/heads/{r}")
    }
}

/// Resolves a ref on a remote without fetching; `None` if it does not exist.
pub fn ls_remote(url: &str, git_ref: &str) -> Result<Option<String>, GitError> {
    let out = git(None, &["ls-remote", "--", url, git_ref])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .find(|(_, name)| *name == git_ref)
        .map(|(sha, _)| sha.to_string()))
}

/// A git process killed mid-update (kill -9, power loss) leaves its `*.lock` files
/// (`refs/…/NAME.lock`, `packed-refs.lock`, `shallow.lock`, …), and every later fetch into the
/// same refs fails on them forever. Only this process uses the mirror and it runs no git
/// command yet when it opens it, so any lock found then is stale.
fn remove_stale_locks(dir: &Path) -> Result<(), GitError> {
    let err = |e: std::io::Error| GitError::Other(format!("{}: {e}", dir.display()));
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let entry = entry.map_err(err)?;
        let path = entry.path();
        let kind = entry.file_type().map_err(err)?;
        // Objects are written to temporary files and renamed: no locks there.
        if kind.is_dir() && entry.file_name() != "objects" {
            remove_stale_locks(&path)?;
        } else if kind.is_file() && path.extension().is_some_and(|e| e == "lock") {
            log::warn!(
                "removing a stale git lock left by an interrupted update: {}",
                path.display()
            );
            std::fs::remove_file(&path).map_err(err)?;
        }
    }
    Ok(())
}

impl Mirror {
    pub fn open(state_dir: &Path, name: &str, url: &str) -> Result<Mirror, GitError> {
        let path = state_dir.join("git").join(format!("{name}.git"));
        if !path.join("HEAD").exists() {
            std::fs::create_dir_all(&path)
                .map_err(|e| GitError::Other(format!("{}: {e}", path.display())))?;
            Repository::init_bare(&path)?;
        }
        remove_stale_locks(&path)?;
        Ok(Mirror {
            path,
            url: url.to_string(),
        })
    }

    pub(crate) fn repo(&self) -> Result<Repository, GitError> {
        Ok(Repository::open_bare(&self.path)?)
    }

    fn fetch(&self, refspecs: &[String]) -> Result<(), GitError> {
        self.fetch_from(&self.url, refspecs)
    }

    /// Fetches `refspecs` from any URL into the mirror.
    pub(crate) fn fetch_from(&self, url: &str, refspecs: &[String]) -> Result<(), GitError> {
        let mut args = vec!["fetch", "--quiet", "--no-tags", "--force", "--", url];
        args.extend(refspecs.iter().map(String::as_str));
        git(Some(&self.path), &args).map(|_| ())
    }

    pub(crate) fn resolve(&self, local_ref: &str) -> Result<String, GitError> {
        Ok(self.repo()?.refname_to_id(local_ref)?.to_string())
    }

    /// Fetches the target tip and each change's ref, then merges the changes in order.
    ///
    /// A change whose ref no longer exists on the remote (deleted branch, closed pull request)
    /// is listed in `vanished`, not merged. `Err` is an infrastructure failure of the whole
    /// preparation, retried by the core: the target branch cannot be fetched, the remote
    /// cannot be asked whether a ref exists, or a ref that exists cannot be fetched.
    /// With `onto` (the commit of the candidate ahead, made here) the changes are merged
    /// onto it instead of the tip.
    pub fn prepare(
        &self,
        branch: &str,
        changes: &[(ChangeId, String)],
        onto: Option<&str>,
        cand: u64,
    ) -> Result<Prepared, GitError> {
        let base = match onto {
            Some(c) => self
                .repo()?
                .find_commit(Oid::from_str(c)?)?
                .id()
                .to_string(),
            None => {
                let target = format!("refs/mq/target/{branch}");
                self.fetch(&[format!("+refs/heads/{branch}:{target}")])?;
                self.resolve(&target)?
            }
        };
        let mut heads = vec![];
        let mut vanished = vec![];
        let specs: Vec<String> = changes
            .iter()
            .map(|(id, r)| format!("+{r}:refs/mq/change/{id}"))
            .collect();
        if self.fetch(&specs).is_err() {
            // One vanished ref fails the whole fetch: find which, one by one.
            for ((id, r), spec) in changes.iter().zip(&specs) {
                if let Err(e) = self.fetch(std::slice::from_ref(spec)) {
                    vanished.push((*id, self.vanished(r, e)?));
                }
            }
        }
        let mut order = vec![];
        for (id, _) in changes {
            if vanished.iter().any(|(m, _)| m == id) {
                continue;
            }
            let head = self.resolve(&format!("refs/mq/change/{id}"))?;
            heads.push((*id, head.clone()));
            order.push((*id, head));
        }
        let shas: Vec<String> = order.iter().map(|(_, h)| h.clone()).collect();
        let chain = self.merge_chain(&base, &shas, |i| {
            format!("Merge change #{} into {branch}", order[i].0)
        })?;
        let tip = chain.merged.last().map(|(_, c)| c.clone());
        if let Some(tip) = &tip {
            // Keep the chain reachable until it is landed or replaced: one ref per
            // candidate (those behind build on it), the oldest ones dropped.
            let repo = self.repo()?;
            repo.reference(
                &format!("refs/mq/candidates/{cand}"),
                Oid::from_str(tip)?,
                true,
                "candidate",
            )?;
            drop_old_candidate_refs(&repo, cand)?;
        }
        Ok(Prepared {
            base,
            heads,
            merged: chain
                .merged
                .into_iter()
                .map(|(i, c)| (order[i].0, c))
                .collect(),
            conflicts: chain
                .conflicts
                .into_iter()
                .map(|(i, why)| (order[i].0, why))
                .collect(),
            vanished,
        })
    }

    /// Fetches a merge group's head ref and reads its first-parent history above
    /// `base_sha`, oldest first, as (commit, message). The head must be `head_sha`.
    pub fn group_chain(
        &self,
        head_ref: &str,
        head_sha: &str,
        base_sha: &str,
    ) -> Result<Vec<(String, String)>, GitError> {
        let local = format!("refs/mq/group/{head_sha}");
        self.fetch(&[format!("+{}:{local}", full_ref(head_ref))])?;
        let head = self.resolve(&local)?;
        if head != head_sha {
            return Err(GitError::Other(format!(
                "{head_ref} is at {head}, not at the merge group's {head_sha}"
            )));
        }
        let repo = self.repo()?;
        let (base, mut at) = (
            Oid::from_str(base_sha)?,
            repo.find_commit(Oid::from_str(head_sha)?)?,
        );
        let mut chain = vec![];
        while at.id() != base {
            chain.push((at.id().to_string(), at.message().unwrap_or("").to_string()));
            if chain.len() > 10_000 {
                return Err(GitError::Other(format!(
                    "{head_sha} is more than 10,000 first-parent commits above {base_sha}"
                )));
            }
            at = at.parent(0).map_err(|_| {
                GitError::Other(format!(
                    "{base_sha} is not a first-parent ancestor of {head_sha}"
                ))
            })?;
        }
        chain.reverse();
        Ok(chain)
    }

    /// A merge group as a prepared candidate: its commits are the merge chain. A head
    /// ref that is gone (GitHub destroyed the group) vanishes every change.
    pub fn prepare_group(
        &self,
        group: &crate::core::forge::GroupRef,
    ) -> Result<Prepared, GitError> {
        let vanished = match self.group_chain(&group.head_ref, &group.head_sha, &group.base_sha) {
            Ok(_) => vec![],
            Err(e) => match ls_remote(&self.url, &full_ref(&group.head_ref))? {
                None => group
                    .chain
                    .iter()
                    .map(|(c, _)| (*c, format!("{} no longer exists", group.head_ref)))
                    .collect(),
                Some(_) => return Err(e),
            },
        };
        Ok(Prepared {
            base: group.base_sha.clone(),
            heads: vec![],
            merged: if vanished.is_empty() {
                group.chain.clone()
            } else {
                vec![]
            },
            conflicts: vec![],
            vanished,
        })
    }

    /// The tip of `branch` on the remote, without fetching.
    pub fn remote_tip(&self, branch: &str) -> Result<String, GitError> {
        ls_remote(&self.url, &full_ref(branch))?
            .ok_or_else(|| GitError::Other(format!("{branch} does not exist on the remote")))
    }

    /// After fetching `git_ref` failed with `fetch_error`: asks the remote whether the ref
    /// still exists. `Ok(message)`: it does not (the change vanished). `Err`: the remote
    /// cannot be asked, or the ref is there and the fetch failed anyway; both are
    /// infrastructure, nothing to say about the change.
    fn vanished(&self, git_ref: &str, fetch_error: GitError) -> Result<String, GitError> {
        match ls_remote(&self.url, &full_ref(git_ref))? {
            None => Ok(format!("{git_ref} no longer exists on the remote")),
            Some(sha) => Err(GitError::Other(format!(
                "{git_ref} exists on the remote (at {sha}) but cannot be fetched: {fetch_error}"
            ))),
        }
    }

    /// Merges `heads` one by one onto `base` (merge commits, base first parent), skipping
    /// heads that conflict. Commit times are the newest parent's, so merging the same
    /// inputs again gives the same commits (and reuses their stored evaluations).
    pub fn merge_chain(
        &self,
        base: &str,
        heads: &[String],
        message: impl Fn(usize) -> String,
    ) -> Result<Chain, GitError> {
        let repo = self.repo()?;
        let mut cur = repo.find_commit(Oid::from_str(base)?)?;
        let mut chain = Chain {
            merged: vec![],
            conflicts: vec![],
        };
        for (i, h) in heads.iter().enumerate() {
            let theirs = repo.find_commit(Oid::from_str(h)?)?;
            let mut index = repo.merge_commits(&cur, &theirs, None)?;
            if index.has_conflicts() {
                let mut paths: Vec<String> = index
                    .conflicts()?
                    .filter_map(|c| c.ok())
                    .filter_map(|c| c.our.or(c.their).or(c.ancestor))
                    .map(|e| String::from_utf8_lossy(&e.path).into_owned())
                    .collect();
                paths.dedup();
                chain
                    .conflicts
                    .push((i, format!("conflicting files: {}", paths.join(", "))));
                continue;
            }
            let tree = repo.find_tree(index.write_tree_to(&repo)?)?;
            let secs = cur.time().seconds().max(theirs.time().seconds());
            let sig = Signature::new("mergequeue", "mergequeue@localhost", &Time::new(secs, 0))?;
            let oid = repo.commit(None, &sig, &sig, &message(i), &tree, &[&cur, &theirs])?;
            cur = repo.find_commit(oid)?;
            chain.merged.push((i, oid.to_string()));
        }
        Ok(chain)
    }

    /// Merges heads onto base and returns the resulting commit, or the conflict.
    pub fn probe_commit(
        &self,
        base: &str,
        heads: &[String],
    ) -> Result<Result<String, String>, GitError> {
        if heads.is_empty() {
            return Ok(Ok(base.to_string()));
        }
        let chain = self.merge_chain(base, heads, |_| "mergequeue probe".into())?;
        if let Some((_, why)) = chain.conflicts.first() {
            return Ok(Err(why.clone()));
        }
        Ok(Ok(chain.merged.last().expect("merged").1.clone()))
    }

    /// Writes the tree of `commit` into `dir` (which must not exist yet).
    pub fn checkout(&self, commit: &str, dir: &Path) -> Result<(), GitError> {
        let repo = self.repo()?;
        let tree = repo.find_commit(Oid::from_str(commit)?)?.tree()?;
        std::fs::create_dir_all(dir)
            .map_err(|e| GitError::Other(format!("{}: {e}", dir.display())))?;
        let mut co = git2::build::CheckoutBuilder::new();
        co.target_dir(dir).force();
        repo.checkout_tree(tree.as_object(), Some(&mut co))?;
        Ok(())
    }

    /// Points the lane's mass-rebuild ref at the stage's current batch, in the mirror and
    /// on the remote (`refs/mergequeue/mass-rebuild/BRANCH`, rewritten each time: for
    /// inspection, never a branch anyone merges into).
    pub fn publish_stage(&self, branch: &str, commit: &str) -> Result<(), GitError> {
        let name = stage_ref(branch);
        self.repo()?
            .reference(&name, Oid::from_str(commit)?, true, "mass-rebuild stage")?;
        let spec = format!("+{commit}:{name}");
        git(
            Some(&self.path),
            &["push", "--quiet", "--", &self.url, &spec],
        )?;
        Ok(())
    }

    /// Moves `branch` on the remote from `old` to `new`: fast-forward only (checked here)
    /// and compare-and-swap on `old` (`--force-with-lease`). Idempotent: if the remote
    /// already contains `new`, the result is `Landed`.
    pub fn land(&self, branch: &str, old: &str, new: &str) -> Result<LandResult, GitError> {
        let repo = self.repo()?;
        let (o, n) = (Oid::from_str(old)?, Oid::from_str(new)?);
        if o != n && !repo.graph_descendant_of(n, o)? {
            return Err(GitError::Other(format!(
                "{new} does not descend from {old}: refusing a non-fast-forward"
            )));
        }
        let lease = format!("--force-with-lease=refs/heads/{branch}:{old}");
        let spec = format!("{new}:refs/heads/{branch}");
        let pushed = git(
            Some(&self.path),
            &["push", "--quiet", &lease, "--", &self.url, &spec],
        );
        if pushed.is_ok() {
            return Ok(LandResult::Landed);
        }
        let target = format!("refs/mq/target/{branch}");
        if let Err(e) = self.fetch(&[format!("+refs/heads/{branch}:{target}")]) {
            return Ok(LandResult::Failed(e.to_string()));
        }
        let tip = self.resolve(&target)?;
        let t = Oid::from_str(&tip)?;
        if t == n || repo.graph_descendant_of(t, n)? {
            return Ok(LandResult::Landed);
        }
        if t != o {
            return Ok(LandResult::Moved { tip });
        }
        Ok(LandResult::Failed(
            pushed.err().map(|e| e.to_string()).unwrap_or_default(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unfetchable_ref_on_an_unreachable_remote_is_an_error_not_vanished() {
        let state = tempfile::tempdir().unwrap();
        let nowhere = state.path().join("no-such-remote.git");
        let url = format!("file://{}", nowhere.display());
        let m = Mirror::open(state.path(), "r", &url).unwrap();
        let fetch_error = m
            .fetch(&["+refs/heads/a:refs/mq/change/1".into()])
            .unwrap_err();
        let e = m.vanished("refs/heads/a", fetch_error).unwrap_err();
        assert!(e.to_string().contains("ls-remote"), "{e}");
    }

    #[test]
    fn a_lock_left_by_a_killed_fetch_is_removed_when_the_mirror_opens() {
        let state = tempfile::tempdir().unwrap();
        let m = Mirror::open(state.path(), "r", "file:///nowhere").unwrap();
        let locks = [
            m.path.join("refs/mq/target/master.lock"),
            m.path.join("packed-refs.lock"),
            m.path.join("shallow.lock"),
        ];
        for l in &locks {
            std::fs::create_dir_all(l.parent().unwrap()).unwrap();
            std::fs::write(l, "").unwrap();
        }
        let kept = m.path.join("refs/mq/target/keep");
        std::fs::write(&kept, "x").unwrap();
        Mirror::open(state.path(), "r", "file:///nowhere").unwrap();
        for l in &locks {
            assert!(!l.exists(), "{} is still there", l.display());
        }
        assert!(kept.exists());
    }
}
