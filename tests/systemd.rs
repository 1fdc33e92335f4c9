//! systemd integration against real sockets and files: `sd_notify` datagrams on a
//! unix socket standing in for `$NOTIFY_SOCKET`, the watchdog variables and
//! `$CREDENTIALS_DIRECTORY`.
//!
//! Environment variables are process-global and the test harness runs tests on
//! several threads, so every test that sets one takes `ENV` first.

use std::os::unix::net::UnixDatagram;
use std::sync::Mutex;
use std::time::Duration;

use mergequeue::shell::systemd;

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

/// `mergequeue serve` as systemd runs it with `Type=notify`, `WatchdogSec=` and
/// `LoadCredential=api-token:...`: READY=1 once it serves, WATCHDOG=1 while it runs,
/// the token from `$CREDENTIALS_DIRECTORY`, STOPPING=1 on SIGTERM.
#[test]
fn serve_speaks_sd_notify_and_reads_the_token_credential() {
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};
    use std::time::Instant;

    let dir = tempfile::tempdir().unwrap();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", dir.path())
            .output()
            .expect("git");
        assert!(out.status.success(), "git {args:?}: {out:?}");
    };
    let work = dir.path().join("work");
    let bare = dir.path().join("pkgs.git");
    git(&["init", "-q", "-b", "master", work.to_str().unwrap()]);
    std::fs::write(work.join("release.nix"), "{ }\n").unwrap();
    git(&["-C", work.to_str().unwrap(), "add", "-A"]);
    git(&[
        "-C",
        work.to_str().unwrap(),
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@example.org",
        "commit",
        "-q",
        "-m",
        "init",
    ]);
    git(&[
        "clone",
        "-q",
        "--bare",
        work.to_str().unwrap(),
        bare.to_str().unwrap(),
    ]);

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("mergequeue.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {state:?}\nlisten = \"127.0.0.1:{port}\"\n\n\
             [[repos]]\nname = \"pkgs\"\nurl = \"file://{bare}\"\n\n\
             [[repos.branches]]\nname = \"master\"\n",
            state = dir.path().join("state").display().to_string(),
            bare = bare.display(),
        ),
    )
    .unwrap();
    let creds = dir.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("api-token"), "from-credential\n").unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_mergequeue"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .env("CREDENTIALS_DIRECTORY", &creds)
        .env_remove("JOURNAL_STREAM")
        .env("NIX_CONFIG", "substituters =")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("mergequeue serve");
    let mut messages = Vec::new();
    let mut next = |notify: &UnixDatagram| {
        let m = recv(notify);
        messages.push(m.clone());
        m
    };

    assert_eq!(next(&notify), "READY=1", "first message");
    let http = |request: String| {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).unwrap();
        response
    };
    let post = |token: &str| {
        let body = r#"{"ref":"refs/heads/absent","target":"master"}"#;
        http(format!(
            "POST /api/v1/repos/pkgs/changes HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             Authorization: Bearer {token}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        ))
    };
    // Ready means serving: the API answers at once.
    let metrics = http("GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into());
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    let wrong = post("wrong");
    assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
    let right = post("from-credential");
    assert!(
        !right.starts_with("HTTP/1.1 401"),
        "the api-token credential was not used: {right}"
    );

    let start = Instant::now();
    assert_eq!(next(&notify), "WATCHDOG=1");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "watchdog pings every WATCHDOG_USEC/2"
    );

    // SAFETY: signalling our own child by its pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while next(&notify) != "STOPPING=1" {
        assert!(Instant::now() < deadline, "no STOPPING=1: {messages:?}");
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "serve exited with {status}");
}
