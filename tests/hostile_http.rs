//! Hostile input over HTTP, against the real binary on loopback: every malformed request is
//! answered 4xx with a JSON error (never 5xx, a hang or a crash) and changes nothing; slow
//! clients are timed out; many clients are served at once; the connection limit holds; the
//! token never reaches the log.

mod common;

use std::time::{Duration, Instant};

use common::{harness, raw};
use hyper::Method;
use mergequeue::tools::harness::BranchOpts;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn post(path: &str, token: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").into_bytes()
}

fn json_error(status: u16, body: &str, what: &str) -> String {
    let v: Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("{what}: {status} is not a JSON error ({e}): {body:?}"));
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no error field: {body}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_slow_and_many_clients_are_answered_and_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let opts = BranchOpts {
        extra_toml: "[http]\nheader_timeout_secs = 2\nbody_timeout_secs = 2\n".into(),
        ..BranchOpts::default()
    };
    let mut h = harness(dir.path(), 8, 5, opts);
    h.change("good", "a real change", |_| Ok(())).unwrap();
    h.start_server().await.unwrap();
    let addr = h.listen.clone();
    let submit = "/api/v1/repos/pkgs/changes";

    // Bad refs: each a 422 that names the rule, before git sees the ref.
    let bad_refs: &[(&str, &str)] = &[
        ("good\u{0}x", "control character"),
        ("a..b", "\"..\""),
        ("-upload-pack=touch", "begins with '-'"),
        ("a b", "' '"),
        ("x.lock", ".lock"),
        ("refs/heads/", "empty component"),
        ("a@{1}", "@{"),
        ("", "is empty"),
    ];
    for (r, why) in bad_refs {
        let body = serde_json::json!({ "ref": r, "target": "master" }).to_string();
        let (status, text) = raw(&addr, &post(submit, &h.token, body.as_bytes())).await;
        assert_eq!(status, 422, "ref {r:?}: {text}");
        let e = json_error(status, &text, r);
        assert!(e.contains(why), "ref {r:?}: {e:?} should say {why:?}");
    }

    // Malformed bodies and requests: 4xx JSON errors.
    let big = vec![b' '; 70 * 1024];
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("not JSON", post(submit, &h.token, b"{\"ref\":"), 400),
        ("not an object", post(submit, &h.token, b"[1,2]"), 400),
        (
            "unknown field",
            post(
                submit,
                &h.token,
                br#"{"ref":"good","target":"master","evil":1}"#,
            ),
            400,
        ),
        (
            "wrong type",
            post(submit, &h.token, br#"{"ref":7,"target":"master"}"#),
            400,
        ),
        (
            "invalid UTF-8",
            post(
                submit,
                &h.token,
                b"{\"ref\":\"\xff\xfe\",\"target\":\"master\"}",
            ),
            400,
        ),
        ("too large", post(submit, &h.token, &big), 413),
        (
            "unknown priority",
            post(
                submit,
                &h.token,
                br#"{"ref":"good","target":"master","priority":"now!"}"#,
            ),
            422,
        ),
        (
            "unknown target",
            post(submit, &h.token, br#"{"ref":"good","target":"nope"}"#),
            422,
        ),
        ("no token", post(submit, "wrong", br#"{}"#), 401),
        ("bad change id", get("/api/v1/repos/pkgs/changes/%00"), 400),
        ("unknown repo", get("/api/v1/repos/%2e%2e/queue"), 404),
        ("bad paging", get("/api/v1/repos/pkgs/queue?limit=-1"), 400),
        ("unknown route", get("/api/v1/nope"), 404),
    ];
    for (what, req, want) in &cases {
        let (status, text) = raw(&addr, req).await;
        assert_eq!(status, *want, "{what}: {text}");
        json_error(status, &text, what);
    }
    // Garbage that is not HTTP at all: hyper refuses it with a 4xx (no body) or closes.
    for junk in [
        &b"\x00\x01\x02\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nbad header\r\n\r\n",
        b"GET\r\n\r\n",
    ] {
        let (status, _) = raw(&addr, junk).await;
        assert!(
            status == 0 || (400..500).contains(&status),
            "{junk:?}: {status}"
        );
    }

    // Nothing was queued by any of it.
    let q = h
        .client
        .ok(Method::GET, "/api/v1/repos/pkgs/queue", None)
        .await
        .unwrap();
    assert_eq!(q["branches"][0]["queued"], serde_json::json!([]), "{q}");

    // A body that never arrives: 408 after body_timeout_secs.
    let t = Instant::now();
    let mut head = post(submit, &h.token, b"");
    let at = head.len() - 4;
    head.splice(at - 1..at, b"9".iter().copied()); // content-length: 9, nothing sent
    let (status, text) = raw(&addr, &head).await;
    assert_eq!(status, 408, "{text}");
    assert!(t.elapsed() < Duration::from_secs(10));

    // Slowloris: 50 clients send their headers one byte every 300 ms. Each is closed once
    // header_timeout_secs passed, and a normal client is answered meanwhile.
    let t = Instant::now();
    let slow: Vec<_> = (0..50)
        .map(|_| {
            let addr = addr.clone();
            tokio::spawn(async move {
                let mut s = TcpStream::connect(&addr).await.unwrap();
                let started = Instant::now();
                for b in b"GET /api/v1/builders HTTP/1.1\r\nhost: x\r\nx-slow: yes\r\n\r\n" {
                    if s.write_all(&[*b]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let mut buf = [0u8; 64];
                    // A closed connection reads 0 bytes (or fails): the server gave up on us.
                    if let Ok(r) =
                        tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await
                    {
                        if r.map_or(true, |n| n == 0) {
                            break;
                        }
                    }
                }
                started.elapsed()
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, _) = raw(&addr, &get("/api/v1/builders")).await;
    assert_eq!(status, 200, "a normal client is served beside 50 slow ones");
    for s in slow {
        let held = s.await.unwrap();
        assert!(
            held < Duration::from_secs(6),
            "a slow client kept its connection {held:?} (header timeout 2 s)"
        );
    }
    eprintln!("50 slow clients closed within {:?}", t.elapsed());

    // 200 concurrent clients are all served.
    let t = Instant::now();
    let many: Vec<_> = (0..200)
        .map(|i| {
            let addr = addr.clone();
            tokio::spawn(async move {
                let path = if i % 2 == 0 {
                    "/api/v1/repos/pkgs/queue"
                } else {
                    "/metrics"
                };
                raw(&addr, &get(path)).await.0
            })
        })
        .collect();
    for m in many {
        assert_eq!(m.await.unwrap(), 200);
    }
    eprintln!("200 concurrent clients served in {:?}", t.elapsed());

    // The server is still alive and the token never reached its log.
    h.client
        .ok(Method::GET, "/api/v1/builders", None)
        .await
        .unwrap();
    h.stop_server(false).unwrap();
    let log = std::fs::read_to_string(h.root.join("server.log")).unwrap();
    assert!(!log.contains(&h.token), "the API token appears in the log");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_connection_limit_makes_further_clients_wait_not_fail() {
    let dir = tempfile::tempdir().unwrap();
    let opts = BranchOpts {
        extra_toml: "[http]\nmax_connections = 4\nheader_timeout_secs = 2\n".into(),
        ..BranchOpts::default()
    };
    let mut h = harness(dir.path(), 4, 6, opts);
    h.start_server().await.unwrap();
    let addr = h.listen.clone();
    // Four silent connections take every slot until the header timeout closes them.
    let mut idle = vec![];
    for _ in 0..4 {
        idle.push(TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    let (status, _) = raw(&addr, &get("/api/v1/builders")).await;
    let waited = t.elapsed();
    assert_eq!(status, 200);
    assert!(
        waited >= Duration::from_millis(1500),
        "served after {waited:?}: the limit of 4 connections did not hold"
    );
    assert!(waited < Duration::from_secs(10), "waited {waited:?}");
    drop(idle);
    h.stop_server(false).unwrap();
}
