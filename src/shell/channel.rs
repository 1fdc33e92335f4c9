//! The shell side of channels: git polling and compare-and-swap pushes of a channel's
//! target, artifacts publishing, their SQLite rows, and their JSON and metrics. The
//! decisions are in `core/channel.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use git2::{ObjectType, Oid, TreeWalkMode, TreeWalkResult};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::core::{AdvanceResult, Command, Core, GateJob, Input, Millis, SourcePoll};
use crate::shell::driver::Msg;
use crate::shell::git::{ls_remote, GitError, Mirror};

/// How many commits below the source head a poll reports (look-back candidates).
pub const BETWEEN_MAX: usize = 64;
/// Published revisions kept in `artifacts_dir` besides the current one.
pub const ARTIFACTS_KEEP: usize = 4;

pub struct ChannelShell {
    pub name: String,
    pub mirror: Arc<Mutex<Mirror>>,
    pub source: String,
    pub target: String,
    /// Where the target branch lives: the channel's `remote`, else the repo's URL.
    pub target_url: String,
    pub artifacts_dir: Option<PathBuf>,
}

impl ChannelShell {
    fn source_ref(&self) -> String {
        format!("refs/mq/channel/{}/source", self.name)
    }

    fn target_ref(&self) -> String {
        format!("refs/mq/channel/{}/target", self.name)
    }

    /// Fetches the source head into the mirror and returns it.
    fn fetch_source(&self, m: &Mirror) -> Result<String, GitError> {
        let r = self.source_ref();
        m.fetch_from(
            &m.url.clone(),
            &[format!("+refs/heads/{}:{r}", self.source)],
        )?;
        m.resolve(&r)
    }

    /// The target's revision on its remote, fetched into the mirror when new.
    fn fetch_target(&self, m: &Mirror) -> Result<Option<String>, GitError> {
        let Some(tip) = ls_remote(&self.target_url, &format!("refs/heads/{}", self.target))? else {
            return Ok(None);
        };
        let repo = m.repo()?;
        if repo.find_commit(Oid::from_str(&tip)?).is_err() {
            m.fetch_from(
                &self.target_url,
                &[format!("+refs/heads/{}:{}", self.target, self.target_ref())],
            )?;
        } else {
            repo.reference(
                &self.target_ref(),
                Oid::from_str(&tip)?,
                true,
                "channel target",
            )?;
        }
        Ok(Some(tip))
    }

    pub fn poll(&self) -> Result<SourcePoll, GitError> {
        let m = self.mirror.lock().expect("mirror lock");
        let head = self.fetch_source(&m)?;
        let target = self.fetch_target(&m)?;
        let repo = m.repo()?;
        let h = Oid::from_str(&head)?;
        let t = target.as_deref().map(Oid::from_str).transpose()?;
        let descends = match t {
            None => true,
            Some(t) => t == h || repo.graph_descendant_of(h, t)?,
        };
        let mut between = vec![];
        if descends {
            let mut c = repo.find_commit(h)?;
            while between.len() < BETWEEN_MAX {
                let Ok(p) = c.parent(0) else { break };
                if Some(p.id()) == t {
                    break;
                }
                if let Some(t) = t {
                    if !repo.graph_descendant_of(p.id(), t)? {
                        break;
                    }
                }
                between.push(p.id().to_string());
                c = p;
            }
        }
        let target_time = match t {
            Some(t) => Some(repo.find_commit(t)?.committer().when().seconds() * 1000),
            None => None,
        };
        Ok(SourcePoll {
            head,
            target,
            target_time,
            descends,
            between,
        })
    }

    /// Moves the target from `old` to `new`: `new` must still be in the source and
    /// descend from `old`; the push is a compare-and-swap (`--force-with-lease`).
    /// Idempotent: a target already at `new` or beyond counts as advanced.
    pub fn advance(&self, old: Option<&str>, new: &str) -> Result<AdvanceResult, GitError> {
        let m = self.mirror.lock().expect("mirror lock");
        let head = self.fetch_source(&m)?;
        let repo = m.repo()?;
        let n = Oid::from_str(new)?;
        let descends = |a: Oid, b: Oid| -> Result<bool, GitError> {
            Ok(a == b || repo.graph_descendant_of(a, b)?)
        };
        if !descends(Oid::from_str(&head)?, n)? {
            return Ok(AdvanceResult::NotOnSource { head });
        }
        if let Some(o) = old {
            if !descends(n, Oid::from_str(o)?)? {
                return Err(GitError::Other(format!(
                    "{new} does not descend from {o}: refusing to move the channel sideways"
                )));
            }
        }
        let lease = format!(
            "--force-with-lease=refs/heads/{}:{}",
            self.target,
            old.unwrap_or("")
        );
        let spec = format!("{new}:refs/heads/{}", self.target);
        let pushed = crate::shell::git::git(
            Some(&m.path),
            &["push", "--quiet", &lease, "--", &self.target_url, &spec],
        );
        if pushed.is_ok() {
            return Ok(AdvanceResult::Advanced);
        }
        let tip = match self.fetch_target(&m) {
            Ok(t) => t,
            Err(e) => return Ok(AdvanceResult::Failed(e.to_string())),
        };
        if let Some(t) = &tip {
            if descends(Oid::from_str(t)?, n)? {
                return Ok(AdvanceResult::Advanced);
            }
        }
        if tip.as_deref() != old {
            return Ok(AdvanceResult::Moved { tip });
        }
        Ok(AdvanceResult::Failed(
            pushed.err().map(|e| e.to_string()).unwrap_or_default(),
        ))
    }

    /// Publishes `rev`'s artifacts into `artifacts_dir/REV/` (written in a temporary
    /// directory, then renamed) and points `artifacts_dir/latest` at it (a symlink
    /// replaced by rename). Idempotent.
    pub fn publish(&self, rev: &str, at: Millis, gate: &[GateJob]) -> anyhow::Result<()> {
        let Some(dir) = &self.artifacts_dir else {
            return Ok(());
        };
        std::fs::create_dir_all(dir)?;
        let final_dir = dir.join(rev);
        if !final_dir.join("manifest.json").exists() {
            let tmp = tempfile::Builder::new().prefix(".tmp-").tempdir_in(dir)?;
            let t = tmp.path();
            std::fs::write(t.join("git-revision"), format!("{rev}\n"))?;
            let paths: BTreeSet<&str> = gate
                .iter()
                .flat_map(|j| j.outputs.iter().map(|(_, p)| p.as_str()))
                .collect();
            let mut sp = String::new();
            for p in &paths {
                sp.push_str(p);
                sp.push('\n');
            }
            std::fs::write(t.join("store-paths"), sp)?;
            let prefix = format!("{}-{}", self.name, &rev[..rev.len().min(12)]);
            {
                let m = self.mirror.lock().expect("mirror lock");
                write_tree_tar(&m, rev, &prefix, &t.join("nixexprs.tar"))?;
            }
            compress_xz(&t.join("nixexprs.tar"), &t.join("nixexprs.tar.xz"))?;
            std::fs::remove_file(t.join("nixexprs.tar"))?;
            let manifest = json!({
                "channel": self.name,
                "revision": rev,
                "time": at / 1000,
                "gate": gate.iter().map(gate_job_json).collect::<Vec<_>>(),
                "store_paths": paths,
            });
            std::fs::write(
                t.join("manifest.json"),
                serde_json::to_vec_pretty(&manifest)?,
            )?;
            let _ = std::fs::remove_dir_all(&final_dir); // a partial copy is impossible, but be safe
            std::fs::rename(tmp.keep(), &final_dir)?;
        }
        let link = dir.join(".latest-tmp");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(rev, &link)?;
        std::fs::rename(&link, dir.join("latest"))?;
        prune(dir, rev);
        Ok(())
    }
}

/// Writes the tree of `rev` as an uncompressed tar with every path under `prefix/`,
/// plus `prefix/.git-revision` (like Nixpkgs' channel tarballs). Deterministic: the
/// commit time is every entry's mtime.
fn write_tree_tar(m: &Mirror, rev: &str, prefix: &str, out: &Path) -> anyhow::Result<()> {
    let repo = m.repo()?;
    let commit = repo.find_commit(Oid::from_str(rev)?)?;
    let mtime = commit.committer().when().seconds().max(0) as u64;
    let tree = commit.tree()?;
    let mut entries: Vec<(String, Oid, i32, Option<ObjectType>)> = vec![];
    tree.walk(TreeWalkMode::PreOrder, |root, e| {
        if let Some(name) = e.name() {
            entries.push((format!("{root}{name}"), e.id(), e.filemode(), e.kind()));
        }
        TreeWalkResult::Ok
    })?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(std::fs::File::create(out)?));
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(mtime);
        h.set_uid(0);
        h.set_gid(0);
        h
    };
    let mut h = header(tar::EntryType::Directory, 0o755, 0);
    tar.append_data(&mut h, format!("{prefix}/"), std::io::empty())?;
    let mut h = header(tar::EntryType::Regular, 0o644, rev.len() as u64);
    tar.append_data(&mut h, format!("{prefix}/.git-revision"), rev.as_bytes())?;
    for (path, id, mode, kind) in entries {
        let name = format!("{prefix}/{path}");
        match kind {
            Some(ObjectType::Tree) => {
                let mut h = header(tar::EntryType::Directory, 0o755, 0);
                tar.append_data(&mut h, format!("{name}/"), std::io::empty())?;
            }
            Some(ObjectType::Blob) if mode == 0o120000 => {
                let blob = repo.find_blob(id)?;
                let target = String::from_utf8_lossy(blob.content()).into_owned();
                let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                tar.append_link(&mut h, name, target)?;
            }
            Some(ObjectType::Blob) => {
                let blob = repo.find_blob(id)?;
                let perm = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
                let mut h = header(tar::EntryType::Regular, perm, blob.size() as u64);
                tar.append_data(&mut h, name, blob.content())?;
            }
            _ => {} // submodules are not part of the tree's content
        }
    }
    tar.into_inner()?.flush()?;
    Ok(())
}

fn compress_xz(from: &Path, to: &Path) -> anyhow::Result<()> {
    let mut input = std::io::BufReader::new(std::fs::File::open(from)?);
    let mut enc = xz2::write::XzEncoder::new(std::fs::File::create(to)?, 6);
    std::io::copy(&mut input, &mut enc)?;
    enc.finish()?.sync_all()?;
    Ok(())
}

/// Keeps the current revision and the `ARTIFACTS_KEEP` most recent others.
fn prune(dir: &Path, current: &str) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut revs: Vec<(std::time::SystemTime, PathBuf)> = rd
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.len() == 40 && n != current && e.path().is_dir() && !e.path().is_symlink()
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    revs.sort();
    let excess = revs.len().saturating_sub(ARTIFACTS_KEEP);
    for (_, p) in revs.into_iter().take(excess) {
        let _ = std::fs::remove_dir_all(p);
    }
}

/// Performs a channel command on a blocking thread; the result comes back as an input.
pub fn perform(shells: &BTreeMap<String, Arc<ChannelShell>>, cmd: Command, tx: &mpsc::Sender<Msg>) {
    let tx = tx.clone();
    let channel = match &cmd {
        Command::PollSource { channel }
        | Command::AdvanceChannel { channel, .. }
        | Command::PublishArtifacts { channel, .. } => channel.clone(),
        _ => return,
    };
    let Some(shell) = shells.get(&channel).cloned() else {
        return;
    };
    tokio::task::spawn_blocking(move || {
        let input = match cmd {
            Command::PollSource { channel } => Input::SourcePolled {
                channel,
                result: shell.poll().map_err(|e| e.to_string()),
            },
            Command::AdvanceChannel { channel, old, new } => {
                let result = shell
                    .advance(old.as_deref(), &new)
                    .unwrap_or_else(|e| AdvanceResult::Failed(e.to_string()));
                Input::ChannelAdvanced {
                    channel,
                    new,
                    result,
                }
            }
            Command::PublishArtifacts {
                channel,
                rev,
                at,
                gate,
            } => {
                let result = shell.publish(&rev, at, &gate).map_err(|e| format!("{e:#}"));
                Input::ArtifactsPublished {
                    channel,
                    rev,
                    result,
                }
            }
            _ => unreachable!("filtered above"),
        };
        let _ = tx.blocking_send(Msg::Input(input));
    });
}

fn gate_job_json(j: &GateJob) -> Value {
    json!({
        "attr": j.attr,
        "system": j.system,
        "drv": j.drv,
        "outputs": j.outputs.iter().map(|(n, p)| (n.clone(), json!(p))).collect::<serde_json::Map<_, _>>(),
        "status": j.status,
        "log_tail": j.log_tail,
    })
}

/// A channel as `GET /api/v1/channels/{name}` shows it.
pub fn channel_json(
    config: &crate::shell::config::Config,
    core: &Core,
    name: &str,
    now: Millis,
) -> Option<Value> {
    let ch = core.channel(name)?;
    let cfg = config.channels.iter().find(|c| c.name.get_ref() == name)?;
    let history: Vec<Value> = ch
        .history
        .iter()
        .rev()
        .map(|a| json!({ "at": a.at, "time": a.at / 1000, "rev": a.rev, "from": a.from }))
        .collect();
    let blocked = ch.state.blocked.as_ref().map(|b| {
        json!({
            "rev": b.rev,
            "at": b.at,
            "error": b.error,
            "jobs": b.jobs.iter().map(|j| json!({
                "attr": j.attr, "system": j.system, "drv": j.drv, "status": j.status, "log_tail": j.log_tail,
            })).collect::<Vec<_>>(),
        })
    });
    let testing = ch.test.as_ref().map(|t| {
        json!({
            "rev": t.commit,
            "head": t.head,
            "phase": t.phase.as_str(),
            "jobs": t.jobs.len(),
            "pending": t.pending.len(),
            "started_at": t.started_at,
        })
    });
    Some(json!({
        "name": name,
        "repo": ch.config.repo,
        "source": ch.config.source,
        "target": ch.config.target,
        "remote": cfg.remote,
        "gate": ch.config.gate,
        "rev": ch.state.rev,
        "age_secs": ch.age_ms(now).map(|a| a / 1000),
        "advanced_at": ch.state.advanced_at,
        "source_head": ch.poll.as_ref().map(|p| p.head.clone()),
        "diverged": ch.diverged,
        "testing": testing,
        "advancing": ch.state.advancing.as_ref().map(|a| a.new.clone()),
        "waiting": ch.hold.as_ref().map(|h| json!({ "rev": h.0, "until": h.2 })),
        "blocked": blocked,
        "advances": ch.state.advances,
        "blocks": ch.state.blocks,
        "published": ch.state.published,
        "history": history,
    }))
}

pub fn channels_json(config: &crate::shell::config::Config, core: &Core, now: Millis) -> Value {
    Value::Array(
        core.channels()
            .filter_map(|(n, _)| channel_json(config, core, n, now))
            .collect(),
    )
}

pub fn metrics(core: &Core, now: Millis, out: &mut String) {
    use std::fmt::Write;
    let mut age = String::new();
    let mut adv = String::new();
    let mut blk = String::new();
    for (name, ch) in core.channels() {
        if let Some(a) = ch.age_ms(now) {
            let _ = writeln!(
                age,
                "mergequeue_channel_age_seconds{{channel=\"{name}\"}} {}",
                a / 1000
            );
        }
        let _ = writeln!(
            adv,
            "mergequeue_channel_advances_total{{channel=\"{name}\"}} {}",
            ch.state.advances
        );
        let _ = writeln!(
            blk,
            "mergequeue_channel_blocks_total{{channel=\"{name}\"}} {}",
            ch.state.blocks
        );
    }
    out.push_str("# HELP mergequeue_channel_age_seconds Seconds since the channel last moved.\n# TYPE mergequeue_channel_age_seconds gauge\n");
    out.push_str(&age);
    out.push_str("# HELP mergequeue_channel_advances_total Advances of the channel.\n# TYPE mergequeue_channel_advances_total counter\n");
    out.push_str(&adv);
    out.push_str("# HELP mergequeue_channel_blocks_total Source heads whose gate failed.\n# TYPE mergequeue_channel_blocks_total counter\n");
    out.push_str(&blk);
}

/// SQLite rows of channels (schema v4).
pub mod db {
    use rusqlite::{params, Connection};

    use crate::core::{Advance, ChannelState};
    use crate::shell::store::StoreError;

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
