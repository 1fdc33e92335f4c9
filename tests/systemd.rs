//! systemd integration against real sockets and files: `sd_notify` datagrams on a
//! unix socket standing in for `$NOTIFY_SOCKET`, the watchdog variables and
//! `$CREDENTIALS_DIRECTORY`.
//!
//! Environment variables are process-global and the test harness runs tests on
//! several threads, so every test that sets one takes `ENV` first.

use std::os::unix::net::UnixDatagram;
use std::sync::Mutex;
use std::time::Duration;

use mergequeue::systemd;

static ENV: Mutex<()> = Mutex::new(());

fn lock_env() -> std::sync::MutexGuard<'static, ()> {
    ENV.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn recv(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).expect("a notify datagram");
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

#[test]
fn notify_without_socket_is_a_no_op() {
    let _env = lock_env();
    std::env::remove_var("NOTIFY_SOCKET");
    assert!(!systemd::notify("READY=1").unwrap());
    std::env::set_var("NOTIFY_SOCKET", "");
    assert!(!systemd::notify("READY=1").unwrap());
    std::env::remove_var("NOTIFY_SOCKET");
}

#[test]
fn notify_sends_ready_watchdog_stopping_to_a_path_socket() {
    let _env = lock_env();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    std::env::set_var("NOTIFY_SOCKET", &path);

    for msg in [
        "READY=1",
        "WATCHDOG=1",
        "STATUS=3 changes queued",
        "STOPPING=1",
    ] {
        assert!(systemd::notify(msg).unwrap(), "{msg} not sent");
        assert_eq!(recv(&socket), msg);
    }
    std::env::remove_var("NOTIFY_SOCKET");
}

#[test]
fn notify_supports_abstract_sockets() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::SocketAddr;

    let _env = lock_env();
    let name = format!("mergequeue-test-notify-{}", std::process::id());
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let socket = UnixDatagram::bind_addr(&addr).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    std::env::set_var("NOTIFY_SOCKET", format!("@{name}"));

    assert!(systemd::notify("READY=1").unwrap());
    assert_eq!(recv(&socket), "READY=1");
    std::env::remove_var("NOTIFY_SOCKET");
}

#[test]
fn notify_to_a_missing_socket_is_an_error() {
    let _env = lock_env();
    let dir = tempfile::tempdir().unwrap();
    std::env::set_var("NOTIFY_SOCKET", dir.path().join("absent.sock"));
    assert!(systemd::notify("READY=1").is_err());
    std::env::remove_var("NOTIFY_SOCKET");
}

#[test]
fn watchdog_interval_is_half_of_watchdog_usec_for_this_pid() {
    let _env = lock_env();
    std::env::remove_var("WATCHDOG_USEC");
    std::env::remove_var("WATCHDOG_PID");
    assert_eq!(systemd::watchdog_interval(), None);

    std::env::set_var("WATCHDOG_USEC", "30000000");
    assert_eq!(
        systemd::watchdog_interval(),
        Some(Duration::from_secs(15)),
        "no WATCHDOG_PID means: meant for us"
    );

    std::env::set_var("WATCHDOG_PID", std::process::id().to_string());
    assert_eq!(systemd::watchdog_interval(), Some(Duration::from_secs(15)));

    std::env::set_var("WATCHDOG_PID", (std::process::id() + 1).to_string());
    assert_eq!(
        systemd::watchdog_interval(),
        None,
        "another process's watchdog"
    );

    std::env::set_var("WATCHDOG_PID", std::process::id().to_string());
    for bad in ["0", "", "abc", "-5"] {
        std::env::set_var("WATCHDOG_USEC", bad);
        assert_eq!(systemd::watchdog_interval(), None, "WATCHDOG_USEC={bad:?}");
    }
    std::env::remove_var("WATCHDOG_USEC");
    std::env::remove_var("WATCHDOG_PID");
}

#[test]
fn credentials_resolve_in_credentials_directory() {
    let _env = lock_env();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("api-token"), "s3cret\n").unwrap();
    std::fs::write(dir.path().join("builder-1-ssh-key"), "KEY").unwrap();
    std::fs::create_dir(dir.path().join("subdir")).unwrap();

    std::env::remove_var("CREDENTIALS_DIRECTORY");
    assert_eq!(systemd::credential("api-token"), None, "no directory set");
    assert_eq!(systemd::read_credential("api-token").unwrap(), None);

    std::env::set_var("CREDENTIALS_DIRECTORY", dir.path());
    assert_eq!(
        systemd::credential("api-token"),
        Some(dir.path().join("api-token"))
    );
    assert_eq!(
        systemd::read_credential("api-token").unwrap().as_deref(),
        Some("s3cret"),
        "trailing newline stripped"
    );
    assert_eq!(
        systemd::read_credential("builder-1-ssh-key")
            .unwrap()
            .as_deref(),
        Some("KEY")
    );
    assert_eq!(systemd::credential("missing"), None);
    assert_eq!(
        systemd::credential("subdir"),
        None,
        "directories are not credentials"
    );
    for bad in ["", ".", "..", "../api-token", "subdir/x", "/etc/passwd"] {
        assert_eq!(systemd::credential(bad), None, "{bad:?}");
    }
    std::env::remove_var("CREDENTIALS_DIRECTORY");
}

#[test]
fn logging_falls_back_to_stderr_outside_systemd() {
    let _env = lock_env();
    std::env::remove_var("JOURNAL_STREAM");
    systemd::init_logging(false);
    assert_eq!(log::max_level(), log::LevelFilter::Info);
    log::info!(change = 7; "stderr logger works");
    // A second call keeps the logger and only changes the level.
    systemd::init_logging(true);
    assert_eq!(log::max_level(), log::LevelFilter::Debug);
    log::debug!("debug enabled");
}
