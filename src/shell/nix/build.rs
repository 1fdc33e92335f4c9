//! Realisation of one derivation in the local store with `nix-store --realise`, and the
//! classification of the attempt's outcome from Nix's messages.
//!
//! `--keep-going` is deliberately not passed: the first failing dependency already decides the
//! verdict for this derivation (it cannot succeed), so the attempt reports at once and frees the
//! builder; other dependencies are built when their own jobs are scheduled.
//!
//! Messages of Nix 2.8 (recorded on this machine, see the unit tests):
//! - own failure: `error: builder for '/nix/store/…-x.drv' failed with exit code 1` (exit 100);
//! - dependency: `error: 1 dependencies of derivation '/nix/store/…-y.drv' failed to build`
//!   after the failing dependency's own `builder for … failed` line (exit 100);
//! - timeout: `error: building of '/nix/store/…-x.drv!*' from .drv file timed out after 2 seconds`
//!   (`… seconds of silence` for max-silent-time; exit 101). A dependency's timeout makes this
//!   derivation `dependency-failed` with that dependency as root;
//! - no daemon: `error: cannot connect to socket at '…': No such file or directory` (exit 1);
//! - SIGTERM: `error: interrupted by the user` (exit 1).
//!
//! Ambiguous cases are classified as `infrastructure`: that costs a retry, while a wrong
//! `failed` would blame a change.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

pub use super::classify::classify;
use super::classify::is_disk_full;
use super::output::last_error_line;
use super::strip_ansi;
use crate::core::outcome::{BuildReport, OutcomeClass};

/// Lines and bytes kept in [`BuildReport::log_tail`].
pub const TAIL_LINES: usize = 40;
pub const TAIL_BYTES: usize = 4096;

/// Seconds between SIGTERM and SIGKILL when an attempt is cancelled.
const KILL_GRACE_SECS: u64 = 10;

/// A builder driven through the Nix CLI: the local store, or a remote store reached over
/// `ssh-ng://`.
#[derive(Debug, Clone)]
pub struct NixBuilder {
    /// The builder's name in reports: `local` or its store URI.
    pub id: String,
    /// `None` for the local store; a store URI (`ssh-ng://...`) to build remotely: the
    /// derivation closure is copied there (`nix copy --derivation --to`), realised there
    /// (`nix build --store`) and its outputs copied back.
    pub store: Option<String>,
    /// SSH identity for the remote store (added to `NIX_SSHOPTS`).
    pub ssh_key: Option<PathBuf>,
    /// Extra arguments for every Nix command, e.g. `["--option", "substituters", ""]`.
    pub nix_args: Vec<String>,
    /// `--option max-silent-time N` when non-zero.
    pub max_silent_time_secs: u64,
    /// `--option timeout N` when non-zero.
    pub timeout_secs: u64,
    /// Logs go to `<log_dir>/<drv basename without .drv>.<attempt>.log.gz`.
    pub log_dir: PathBuf,
    /// Longest one `nix copy` to or from the builder may take (`timeouts.transfer_secs`).
    pub transfer_timeout: Duration,
    /// Longest a probe of the builder may take (`timeouts.probe_secs`).
    pub probe_timeout: Duration,
    /// Held for every `nix copy` to or from this builder. Nix 2.8 can fail two concurrent
    /// copies of the same path to one `ssh-ng://` store (`not an absolute path:
    /// 'nix-archive-1'`); with steps of one closure spread over the fleet, two steps on one
    /// builder often share inputs.
    pub transfers: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl NixBuilder {
    /// The gzipped log of attempt `attempt` (1-based) of `drv`.
    pub fn log_path(&self, drv: &str, attempt: u32) -> PathBuf {
        self.log_dir
            .join(format!("{}.{attempt}.log.gz", log_base(drv)))
    }

    /// Realises `drv` (a `.drv` store path). Never panics; every failure is a report.
    /// Dropping the future terminates the build (SIGTERM, then SIGKILL after a grace period).
    pub async fn realise(&self, drv: &str) -> BuildReport {
        let start = Instant::now();
        let claimed = self.claim_log(drv);
        let log_path = claimed.as_ref().ok().map(|p| p.1.display().to_string());
        let report = |class, log_tail: String, root_drv| BuildReport {
            drv_path: drv.to_string(),
            class,
            log_tail,
            root_drv,
            builder: self.id.clone(),
            duration_ms: start.elapsed().as_millis() as u64,
            log_path: log_path.clone(),
        };
        let (raw_path, gz_path) = match claimed {
            Ok(p) => p,
            Err(e) => {
                return report(
                    OutcomeClass::Infrastructure,
                    format!("cannot create log in {}: {e}", self.log_dir.display()),
                    None,
                )
            }
        };
        if let Some(store) = &self.store {
            // Send the derivation closure and the input outputs we already have.
            let sent = {
                let _one_at_a_time = self.transfers.lock().await;
                self.copy_inputs(store, drv, &[], &raw_path).await
            };
            if let Err(e) = sent {
                let tail = finish_log(&raw_path, &gz_path).await.1;
                return report(
                    OutcomeClass::Infrastructure,
                    format!("{tail}\ntransfer to {store} failed: {e}"),
                    None,
                );
            }
        }
        let spawned = (|| -> io::Result<Child> {
            let raw = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&raw_path)?;
            let mut cmd = match &self.store {
                None => {
                    let mut c = Command::new("nix-store");
                    c.args(&self.nix_args).arg("--realise").arg(drv);
                    c
                }
                Some(store) => {
                    let mut c = Command::new("nix");
                    c.args([
                        "--extra-experimental-features",
                        "nix-command",
                        "build",
                        "--no-link",
                        "--store",
                        store,
                    ])
                    .args(&self.nix_args)
                    .arg(drv);
                    self.ssh_env(&mut c);
                    c
                }
            };
            if self.max_silent_time_secs > 0 {
                cmd.args(["--option", "max-silent-time"])
                    .arg(self.max_silent_time_secs.to_string());
            }
            if self.timeout_secs > 0 {
                cmd.args(["--option", "timeout"])
                    .arg(self.timeout_secs.to_string());
            }
            cmd.stdin(Stdio::null())
                .stdout(Stdio::from(raw.try_clone()?))
                .stderr(Stdio::from(raw))
                .kill_on_drop(true)
                .spawn()
        })();
        let child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_file(&raw_path);
                let _ = std::fs::write(&gz_path, b"");
                return report(
                    OutcomeClass::Infrastructure,
                    format!("cannot run nix: {e}"),
                    None,
                );
            }
        };
        let mut guard = ChildGuard(Some(child));
        // Nix enforces the timeouts; this only catches a nix-store that never exits.
        let deadline = if self.timeout_secs > 0 {
            Some(Duration::from_secs(
                self.timeout_secs * 2 + self.max_silent_time_secs + 600,
            ))
        } else {
            None
        };
        let waited = {
            let child = guard.0.as_mut().unwrap();
            match deadline {
                Some(d) => tokio::time::timeout(d, child.wait()).await.ok(),
                None => Some(child.wait().await),
            }
        };
        let status = match waited {
            Some(Ok(s)) => {
                guard.0 = None;
                Ok(s)
            }
            Some(Err(e)) => Err(format!("waiting for nix-store: {e}")),
            None => Err("nix-store did not exit long after the build timeout; killed".to_string()),
        };
        drop(guard); // terminates the process if it is still running
        let mut status = status;
        if let (Some(store), Ok(s)) = (&self.store, &status) {
            if s.success() {
                // Bring the outputs back: gates, channels and dependents built elsewhere need them.
                let _one_at_a_time = self.transfers.lock().await;
                if let Err(e) = self.copy_outputs_back(store, drv, &raw_path).await {
                    status = Err(import_refused(store, &e));
                }
            }
        }
        let (condensed, tail) = finish_log(&raw_path, &gz_path).await;
        match status {
            Ok(s) => {
                let (class, root) = classify(drv, s.code(), &condensed);
                report(class, tail, root)
            }
            Err(msg) => report(OutcomeClass::Infrastructure, format!("{tail}\n{msg}"), None),
        }
    }

    /// Adds the builder's SSH identity to `NIX_SSHOPTS` for `cmd`.
    pub fn ssh_env(&self, cmd: &mut Command) {
        if let Some(key) = &self.ssh_key {
            let mut opts = std::env::var("NIX_SSHOPTS").unwrap_or_default();
            opts.push_str(&format!(" -i {}", key.display()));
            cmd.env("NIX_SSHOPTS", opts.trim());
        }
    }

    /// Runs one transfer command, its output appended to the attempt's log.
    pub(super) async fn run_logged(&self, args: &[String], log: &Path) -> Result<(), String> {
        let raw = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| e.to_string())?;
        let mut cmd = Command::new("nix");
        cmd.args(["--extra-experimental-features", "nix-command"])
            .args(args)
            .args(&self.nix_args);
        self.ssh_env(&mut cmd);
        let err = raw.try_clone().map_err(|e| e.to_string())?;
        let run = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(raw))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .status();
        let status = tokio::time::timeout(self.transfer_timeout, run)
            .await
            .map_err(|_| {
                format!(
                    "nix {} did not finish within {} s (timeouts.transfer_secs); killed",
                    args.first().map_or("", |a| a.as_str()),
                    self.transfer_timeout.as_secs()
                )
            })?
            .map_err(|e| format!("cannot run nix: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            Err(last_error_line(&text)
                .unwrap_or("nix copy failed")
                .to_string())
        }
    }

    /// Sends `drv`'s closure and the outputs of it that are valid here, except `skip`.
    pub(super) async fn copy_inputs(
        &self,
        store: &str,
        drv: &str,
        skip: &[String],
        log: &Path,
    ) -> Result<(), String> {
        let to = vec![
            "copy".to_string(),
            "--derivation".into(),
            "--to".into(),
            store.to_string(),
            drv.to_string(),
        ];
        self.run_logged(&to, log).await?;
        // Outputs of the closure that are valid here, so the builder need not rebuild them.
        let out = Command::new("nix-store")
            .args(["-q", "--requisites", "--include-outputs", drv])
            .output()
            .await
            .map_err(|e| e.to_string())?;
        let paths: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|p| !p.ends_with(".drv") && !p.is_empty() && !skip.iter().any(|s| s == p))
            .map(String::from)
            .collect();
        if paths.is_empty() {
            return Ok(());
        }
        let mut args = vec![
            "copy".to_string(),
            "--no-check-sigs".into(),
            "--to".into(),
            store.to_string(),
        ];
        args.extend(paths);
        self.run_logged(&args, log).await
    }

    async fn copy_outputs_back(&self, store: &str, drv: &str, log: &Path) -> Result<(), String> {
        let out = Command::new("nix-store")
            .args(["-q", "--outputs", drv])
            .output()
            .await
            .map_err(|e| e.to_string())?;
        let mut args = vec![
            "copy".to_string(),
            "--no-check-sigs".into(),
            "--from".into(),
            store.to_string(),
        ];
        args.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(String::from),
        );
        self.run_logged(&args, log).await
    }

    /// Picks the next free attempt number by creating its `.log.gz` exclusively.
    fn claim_log(&self, drv: &str) -> io::Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(&self.log_dir)?;
        for attempt in 1.. {
            let gz = self.log_path(drv, attempt);
            match OpenOptions::new().write(true).create_new(true).open(&gz) {
                Ok(_) => {
                    let raw = gz.with_extension(""); // strips ".gz"
                    return Ok((raw, gz));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        unreachable!()
    }
}

/// Terminates a still-running child on drop: SIGTERM (nix-store then stops its builders),
/// SIGKILL after a grace period.
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let Some(mut child) = self.0.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        if let Some(pid) = child.id() {
            // SAFETY: sending a signal to our own child process.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let grace = Duration::from_secs(KILL_GRACE_SECS);
                if tokio::time::timeout(grace, child.wait()).await.is_err() {
                    let _ = child.kill().await;
                }
            });
        }
        // Without a runtime, dropping `child` SIGKILLs it (kill_on_drop).
    }
}

/// The message for outputs that could not be brought back from `store`. A daemon that
/// requires signatures refuses unsigned paths from a client it does not trust (the module's
/// service user): `--no-check-sigs` only counts for trusted users. Say what to configure.
fn import_refused(store: &str, err: &str) -> String {
    if err.contains("lacks a valid signature") {
        format!(
            "outputs built on {store} cannot be imported: the local nix-daemon requires \
             signatures it trusts and this service is not a trusted user. Have the builder sign \
             what it builds (secret-key-files in its nix.conf; \
             services.mergequeue-builder.signingKeyFile) and trust its key here \
             (trusted-public-keys; services.mergequeue.builders.<name>.publicKey): {err}"
        )
    } else {
        format!("transfer of the outputs from {store} failed: {err}")
    }
}

/// Reads the classification lines and the tail of the raw log, then compresses it.
async fn finish_log(raw_path: &Path, gz_path: &Path) -> (String, String) {
    let raw_for_scan = raw_path.to_path_buf();
    let scanned = tokio::task::spawn_blocking(move || scan_log(&raw_for_scan)).await;
    let (condensed, tail) = match scanned {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => (String::new(), format!("cannot read build log: {e}")),
        Err(e) => (String::new(), format!("cannot read build log: {e}")),
    };
    let (raw2, gz2) = (raw_path.to_path_buf(), gz_path.to_path_buf());
    let _ = tokio::task::spawn_blocking(move || {
        let r = compress(&raw2, &gz2);
        let _ = std::fs::remove_file(&raw2);
        r
    })
    .await;
    (condensed, tail)
}

fn log_base(drv: &str) -> String {
    let base = drv.rsplit('/').next().unwrap_or(drv);
    base.strip_suffix(".drv").unwrap_or(base).to_string()
}

/// Reads the raw log once: the lines classification needs (Nix's `error:` lines and disk-full
/// lines, anywhere in the log) followed by the tail; and the tail alone.
fn scan_log(path: &Path) -> io::Result<(String, String)> {
    let mut f = File::open(path)?;
    let mut condensed = String::new();
    for line in BufReader::new(&mut f).split(b'\n') {
        let line = String::from_utf8_lossy(&line?).into_owned();
        let clean = strip_ansi(&line);
        let t = clean.trim_start();
        // `Reason:` continues a newer Nix's `error: Cannot build 'D'.` on its own line.
        if t.starts_with("error:") || t.starts_with("Reason:") || is_disk_full(t) {
            condensed.push_str(t);
            condensed.push('\n');
        }
    }
    let len = f.seek(SeekFrom::End(0))?;
    let from = len.saturating_sub(4 * TAIL_BYTES as u64);
    f.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    let text = strip_ansi(&String::from_utf8_lossy(&buf));
    let tail = tail_of(&text, TAIL_LINES, TAIL_BYTES);
    Ok((condensed, tail))
}

/// The last `lines` lines of `text`, at most `bytes` bytes (cut at a char boundary).
pub fn tail_of(text: &str, lines: usize, bytes: usize) -> String {
    let text = text.trim_end();
    let mut start = text.len();
    for _ in 0..lines {
        match text[..start].rfind('\n') {
            Some(i) => start = i,
            None => {
                start = 0;
                break;
            }
        }
    }
    let mut s = text[start..].trim_start_matches('\n');
    if s.len() > bytes {
        let mut cut = s.len() - bytes;
        while !s.is_char_boundary(cut) {
            cut += 1;
        }
        s = &s[cut..];
    }
    s.to_string()
}

fn compress(raw: &Path, gz: &Path) -> io::Result<()> {
    let mut input = File::open(raw)?;
    let out = File::create(gz)?;
    let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::default());
    io::copy(&mut input, &mut enc)?;
    enc.finish()?.flush()
}
