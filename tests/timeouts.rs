//! Hung external calls end within their timeout (`[timeouts]`) as infrastructure failures
//! and are retried, while the service keeps answering. A loopback listener that accepts
//! connections and never says a word is the hung remote.

mod common;

use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::harness;
use hyper::Method;
use mergequeue::tools::harness::{BranchOpts, ChannelSpec};

/// Accepts connections and keeps them open, silent, for as long as the test runs; counts
/// them (each is one attempt of a git command).
fn silent_remote() -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        let mut held = vec![];
        for s in l.incoming().flatten() {
            c.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    (port, count)
}

#[test]
fn a_git_call_to_a_silent_remote_is_killed_at_its_timeout() {
    let (port, _) = silent_remote();
    mergequeue::shell::git::set_timeout(Duration::from_secs(2));
    let t = Instant::now();
    let err = mergequeue::shell::git::ls_remote(
        &format!("git://127.0.0.1:{port}/pkgs"),
        "refs/heads/master",
    )
    .expect_err("a silent remote answers nothing");
    let took = t.elapsed();
    assert!(
        err.to_string()
            .contains("did not finish within 2 s (timeouts.git_secs)"),
        "{err}"
    );
    assert!(
        took < Duration::from_secs(10),
        "killed at the timeout: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_source_poll_is_retried_and_the_service_keeps_answering() {
    let (port, attempts) = silent_remote();
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(
        dir.path(),
        8,
        3,
        BranchOpts {
            extra_toml: "[timeouts]\ngit_secs = 2\n".into(),
            ..BranchOpts::default()
        },
    );
    h.add_channel(&ChannelSpec {
        remote: None,
        ..ChannelSpec::default()
    })
    .unwrap();
    // The repository's URL becomes the silent remote (after the package set was pushed).
    let config = std::fs::read_to_string(&h.config_path).unwrap();
    let silent = format!("git://127.0.0.1:{port}/pkgs");
    let config = config.replace(&format!("file://{}", h.upstream.display()), &silent);
    assert!(config.contains(&silent));
    std::fs::write(&h.config_path, config).unwrap();
    h.start_server().await.unwrap();
    let t = Instant::now();
    loop {
        let events = h
            .client
            .ok(Method::GET, "/api/v1/events?after=0", None)
            .await
            .unwrap();
        let said = events.as_array().unwrap().iter().any(|e| {
            e["text"]
                .as_str()
                .is_some_and(|t| t.contains("did not finish within 2 s (timeouts.git_secs)"))
        });
        // Each poll is one connection: a hung poll was killed and polled again.
        if said && attempts.load(Ordering::SeqCst) >= 3 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "no timeout and retries: {} attempts, events {events}\n{}",
            attempts.load(Ordering::SeqCst),
            std::fs::read_to_string(h.root.join("server.log")).unwrap_or_default()
        );
        // The engine answers while git hangs.
        let asked = Instant::now();
        h.client
            .ok(Method::GET, "/api/v1/channels/unstable", None)
            .await
            .unwrap();
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "{:?}",
            asked.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
