//! The webhook receiver, against the real binary on loopback, for each forge's headers:
//! a signed delivery is accepted and logged once, its redelivery (also after a restart) is
//! answered without being processed again, and bad signatures, missing signatures, bodies
//! that are not JSON and oversized bodies are refused without changing anything.

mod common;

use std::time::{Duration, Instant};

use common::harness;
use hyper::Method;
use mergequeue::shell::forge::webhook::sign;
use mergequeue::tools::harness::BranchOpts;
use serde_json::Value;

/// A request's extra headers.
type Headers = Vec<(String, String)>;

const SECRET: &str = "webhook secret for the test";

/// POSTs `body` with `headers`; (status, JSON body).
async fn post(addr: &str, path: &str, headers: &[(String, String)], body: &[u8]) -> (u16, Value) {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    let (status, body) = common::raw(addr, &bytes).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// The headers `kind` sends for a delivery of `event` with id `id`, signed over `body`.
fn headers(kind: &str, event: &str, id: &str, sig: &str) -> Headers {
    let p = match kind {
        "github" => "GitHub",
        "gitea" => "Gitea",
        _ => "Forgejo",
    };
    let sig_header = match kind {
        "github" => ("X-Hub-Signature-256".to_string(), format!("sha256={sig}")),
        _ => (format!("X-{p}-Signature"), sig.to_string()),
    };
    vec![
        sig_header,
        (format!("X-{p}-Event"), event.to_string()),
        (format!("X-{p}-Delivery"), id.to_string()),
    ]
}

fn pull_request_opened(number: u64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "action": "opened",
        "number": number,
        "pull_request": {
            "number": number,
            "state": "open",
            "title": "zlib: 1.3 -> 1.3.1",
            "user": { "login": "alice" },
            "head": { "sha": "0123456789abcdef0123456789abcdef01234567", "ref": "zlib" },
            "base": { "ref": "master" },
            "merged": false
        },
        "sender": { "login": "alice" }
    }))
    .unwrap()
}

async fn forge_events(h: &mergequeue::tools::harness::Harness) -> Vec<String> {
    let events = h
        .client
        .ok(Method::GET, "/api/v1/events", None)
        .await
        .expect("events");
    events
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["text"].as_str())
        .filter(|t| t.starts_with("forge: "))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_deliveries_are_processed_once_and_forgeries_refused() {
    for kind in ["github", "gitea", "forgejo"] {
        let dir = tempfile::tempdir().unwrap();
        let secret_file = dir.path().join("webhook-secret");
        std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
        let opts = BranchOpts {
            extra_toml: format!(
                "[http]\nmax_webhook_bytes = 4096\n\n[repos.forge]\nkind = \"{kind}\"\n\
                 api_url = \"http://127.0.0.1:9/api/v1\"\nrepository = \"nix/pkgs\"\n\
                 webhook_secret_file = {:?}\n",
                secret_file.display().to_string()
            ),
            ..BranchOpts::default()
        };
        let mut h = harness(dir.path(), 3, 1, opts);
        h.start_server().await.unwrap();
        let path = "/api/v1/forge/pkgs/webhook";
        let body = pull_request_opened(7);
        let good = sign(SECRET.as_bytes(), &body);

        // A signed delivery: accepted fast, logged once.
        let t = Instant::now();
        let (status, v) = post(
            &h.listen,
            path,
            &headers(kind, "pull_request", "d-1", &good),
            &body,
        )
        .await;
        assert_eq!(status, 202, "{kind}: {v}");
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "{kind}: answered in {:?}",
            t.elapsed()
        );
        assert_eq!(v["duplicate"], false);
        // Its redelivery: answered, not processed again.
        let (status, v) = post(
            &h.listen,
            path,
            &headers(kind, "pull_request", "d-1", &good),
            &body,
        )
        .await;
        assert_eq!(
            (status, v["duplicate"].clone()),
            (200, Value::Bool(true)),
            "{kind}"
        );
        let logged = forge_events(&h).await;
        assert_eq!(
            logged,
            vec!["forge: pull request #7 opened by alice".to_string()],
            "{kind}"
        );

        // Forgeries and garbage change nothing.
        let other = sign(b"another secret", &body);
        let mut tampered = body.clone();
        tampered[10] ^= 1;
        let cases: Vec<(Headers, Vec<u8>, u16)> = vec![
            (
                headers(kind, "pull_request", "d-2", &other),
                body.clone(),
                401,
            ),
            (headers(kind, "pull_request", "d-3", &good), tampered, 401),
            (
                headers(kind, "pull_request", "d-4", "not hex"),
                body.clone(),
                401,
            ),
            (
                headers(kind, "pull_request", "d-5", &good)[1..].to_vec(),
                body.clone(),
                401,
            ),
            (
                headers(
                    kind,
                    "pull_request",
                    "d-6",
                    &sign(SECRET.as_bytes(), b"{not json"),
                ),
                b"{not json".to_vec(),
                400,
            ),
            (
                headers(
                    kind,
                    "pull_request",
                    "d-7",
                    &sign(SECRET.as_bytes(), &[b' '; 5000]),
                ),
                vec![b' '; 5000],
                413,
            ),
        ];
        for (i, (hs, b, want)) in cases.into_iter().enumerate() {
            let (status, v) = post(&h.listen, path, &hs, &b).await;
            assert_eq!(status, want, "{kind} case {i}: {v}");
            assert!(v["error"].is_string(), "{kind} case {i}: {v}");
        }
        // An event the queue does not use: accepted, nothing logged.
        let star = br#"{"action":"created","sender":{"login":"bob"}}"#;
        let (status, _) = post(
            &h.listen,
            path,
            &headers(kind, "star", "d-8", &sign(SECRET.as_bytes(), star)),
            star,
        )
        .await;
        assert_eq!(status, 202, "{kind}");
        assert_eq!(forge_events(&h).await.len(), 1, "{kind}");
        // A repo with no forge section.
        let (status, _) = post(
            &h.listen,
            "/api/v1/forge/nope/webhook",
            &headers(kind, "pull_request", "d-9", &good),
            &body,
        )
        .await;
        assert_eq!(status, 404, "{kind}");

        // Delivery ids outlive a restart: the redelivery is still a duplicate.
        h.stop_server(false).unwrap();
        h.start_server().await.unwrap();
        let (status, v) = post(
            &h.listen,
            path,
            &headers(kind, "pull_request", "d-1", &good),
            &body,
        )
        .await;
        assert_eq!(
            (status, v["duplicate"].clone()),
            (200, Value::Bool(true)),
            "{kind} after restart"
        );
        assert_eq!(forge_events(&h).await.len(), 1, "{kind}");
        h.stop_server(false).unwrap();
    }
}
