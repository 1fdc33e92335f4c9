//! A channel's artifacts, as Nixpkgs publishes them: `git-revision`, `nixexprs.tar.xz`
//! (the tree under one prefix, deterministic), `store-paths` and a JSON manifest of the
//! gate, per revision, with `latest` pointing at the current one; `broken.json`, the
//! broken registry of the branch the channel follows when the revision was published.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use git2::{ObjectType, Oid, TreeWalkMode, TreeWalkResult};
use serde_json::{json, Value};

use crate::core::breakage::BrokenJob;
use crate::core::{GateJob, Millis};
use crate::shell::git::Mirror;

/// Published revisions kept in `artifacts_dir` besides the current one.
pub const ARTIFACTS_KEEP: usize = 4;

/// What one channel release publishes.
pub struct Release<'a> {
    pub rev: &'a str,
    /// When the channel advanced to `rev`.
    pub at: Millis,
    pub gate: &'a [GateJob],
    /// The followed branch's broken registry when the release is written (`broken.json`).
    pub broken: &'a [BrokenJob],
    /// The binary cache holding the gate's closures: (URI, public key).
    pub cache: Option<(&'a str, &'a str)>,
}

/// Publishes channel `name`'s artifacts for a release into `dir/REV/` (written in a
/// temporary directory, then renamed) and points `dir/latest` at it (a symlink replaced
/// by rename). Idempotent: a revision already published is not written again.
pub fn publish(
    name: &str,
    mirror: &Mutex<Mirror>,
    dir: &Path,
    release: &Release,
) -> anyhow::Result<()> {
    let &Release {
        rev,
        at,
        gate,
        broken,
        cache,
    } = release;
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
        let prefix = format!("{}-{}", name, &rev[..rev.len().min(12)]);
        {
            let m = mirror.lock().expect("mirror lock");
            write_tree_tar(&m, rev, &prefix, &t.join("nixexprs.tar"))?;
        }
        compress_xz(&t.join("nixexprs.tar"), &t.join("nixexprs.tar.xz"))?;
        std::fs::remove_file(t.join("nixexprs.tar"))?;
        let manifest = json!({
            "channel": name,
            "revision": rev,
            "time": at / 1000,
            "gate": gate.iter().map(gate_job_json).collect::<Vec<_>>(),
            "store_paths": paths,
            "broken_jobs": broken.len(),
            "cache": cache.map(|(uri, key)| json!({ "uri": uri, "public_key": key })),
        });
        if let Some((uri, _)) = cache {
            // What `nix-channel` reads to add the channel's cache as a substituter.
            std::fs::write(t.join("binary-cache-url"), uri)?;
        }
        std::fs::write(t.join("broken.json"), serde_json::to_vec_pretty(broken)?)?;
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
