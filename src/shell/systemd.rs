//! systemd integration: journal logging, `sd_notify`, the watchdog and credentials.
//!
//! Everything here is a no-op (or falls back to stderr) when the process does not run
//! under systemd, so the same binary works from a shell, in tests and as a unit.
//!
//! How `serve` is expected to use it:
//! - `init_logging(verbose)` first thing in `main`;
//! - `notify("READY=1")` once the HTTP listener is bound and the state is loaded;
//! - if `watchdog_interval()` is `Some(d)`, send `notify("WATCHDOG=1")` every `d` from
//!   the engine loop (not from a separate thread, so a wedged engine is noticed);
//! - `notify("STOPPING=1")` when shutdown begins;
//! - secrets: `credential("api-token")` and friends, which resolve files handed over
//!   with `LoadCredential=` in `$CREDENTIALS_DIRECTORY`.

use std::io::{self, Write};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use log::{LevelFilter, Log, Metadata, Record};

/// Installs the global logger: the systemd journal (with structured fields) when
/// stderr is connected to it, a plain stderr logger otherwise. Calling it again
/// only changes the level.
pub fn init_logging(verbose: bool) {
    let level = if verbose {
        LevelFilter::Debug
    } else {
        LevelFilter::Info
    };
    // A second call finds a logger installed already; only the level changes then.
    let journal = systemd_journal_logger::connected_to_journal()
        .then(systemd_journal_logger::JournalLog::new)
        .and_then(Result::ok);
    match journal {
        Some(journal) => {
            let _ = journal
                .with_extra_fields([("VERSION", env!("CARGO_PKG_VERSION"))])
                .install();
        }
        // Not under systemd, or the journal socket is missing although stderr is the
        // journal: plain lines on stderr (which then still reach the journal).
        None => {
            let _ = log::set_logger(&STDERR);
        }
    }
    log::set_max_level(level);
}

static STDERR: StderrLogger = StderrLogger;

/// `2024-05-01T12:00:00Z INFO target: message key=value ...` on stderr.
struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut line = format!(
            "{} {:<5} {}: {}",
            rfc3339_utc(SystemTime::now()),
            record.level(),
            record.target(),
            record.args()
        );
        let _ = record.key_values().visit(&mut KvWriter(&mut line));
        line.push('\n');
        // One write per record so concurrent lines do not interleave.
        let _ = io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = io::stderr().flush();
    }
}

struct KvWriter<'a>(&'a mut String);

impl<'kvs> log::kv::VisitSource<'kvs> for KvWriter<'_> {
    fn visit_pair(
        &mut self,
        key: log::kv::Key<'kvs>,
        value: log::kv::Value<'kvs>,
    ) -> Result<(), log::kv::Error> {
        use std::fmt::Write as _;
        let _ = write!(self.0, " {key}={value}");
        Ok(())
    }
}

/// Formats a time as `YYYY-MM-DDTHH:MM:SSZ` (RFC 3339, UTC, whole seconds).
fn rfc3339_utc(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Sends one `sd_notify` message (`READY=1`, `WATCHDOG=1`, `STOPPING=1`,
/// `STATUS=...`) to `$NOTIFY_SOCKET`. Returns `Ok(false)` when the variable is
/// unset or empty (not started by systemd with `Type=notify`), `Ok(true)` when sent.
/// Abstract socket names (`@name`) are supported.
pub fn notify(msg: &str) -> io::Result<bool> {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    if target.is_empty() {
        return Ok(false);
    }
    let socket = UnixDatagram::unbound()?;
    let bytes = target.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        send_abstract(&socket, name, msg.as_bytes())?;
    } else {
        socket.send_to(msg.as_bytes(), PathBuf::from(target))?;
    }
    Ok(true)
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn send_abstract(socket: &UnixDatagram, name: &[u8], msg: &[u8]) -> io::Result<()> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    socket.send_to_addr(msg, &addr)?;
    Ok(())
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn send_abstract(_: &UnixDatagram, _: &[u8], _: &[u8]) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract NOTIFY_SOCKET names need Linux",
    ))
}

/// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC`, as sd_watchdog_enabled(3)
/// recommends. `None` when the unit has no `WatchdogSec=`, when the value is not a
/// positive integer, or when `$WATCHDOG_PID` names another process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2).max(Duration::from_micros(1)))
}

/// The path of the credential `name` in `$CREDENTIALS_DIRECTORY` (systemd
/// `LoadCredential=`/`SetCredential=`), if the variable is set and the file exists.
/// Names containing `/`, `.` or `..` alone, or empty names, never resolve.
pub fn credential(name: &str) -> Option<PathBuf> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return None;
    }
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY")?;
    if dir.is_empty() {
        return None;
    }
    let path = PathBuf::from(dir).join(name);
    path.is_file().then_some(path)
}

/// The contents of credential `name` with trailing newlines removed, or `Ok(None)`
/// when there is no such credential.
pub fn read_credential(name: &str) -> io::Result<Option<String>> {
    match credential(name) {
        None => Ok(None),
        Some(path) => {
            let text = std::fs::read_to_string(path)?;
            Ok(Some(text.trim_end_matches(['\n', '\r']).to_string()))
        }
    }
}

/// A secret file's contents, trimmed.
pub(crate) fn read_secret(p: &std::path::Path) -> anyhow::Result<String> {
    // A file named by the unit's credentials wins over the literal path: with
    // LoadCredential the original path is not readable by the service user.
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let path = if p.exists() {
        p.to_path_buf()
    } else {
        credential(&name).unwrap_or_else(|| p.to_path_buf())
    };
    let t = std::fs::read_to_string(&path)
        .map_err(|e| anyhow::anyhow!("{}: cannot read the secret: {e}", path.display()))?;
    Ok(t.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339_utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096); // leap day 2024
        assert_eq!(rfc3339_utc(t), "2024-02-29T12:34:56Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339_utc(t), "2000-02-29T00:00:00Z");
    }
}
