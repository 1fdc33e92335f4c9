//! Every HTTP route, driven in-process: the router is called with a request value, no
//! socket. The driver behind it is the real one (real SQLite file, real git upstream).

mod common;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use mergequeue::shell::api::Api;
use mergequeue::shell::config::Config;
use mergequeue::shell::driver::{load_token, Driver};
use mergequeue::tools::harness::BranchOpts;
use serde_json::{json, Value};

struct Router {
    api: Api,
    token: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

struct Answer {
    status: StatusCode,
    content_type: String,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

impl Router {
    async fn call(&self, method: Method, uri: &str, token: Option<&str>, body: &str) -> Answer {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
        let resp = self.api.route(req).await;
        let status = resp.status();
        let content_type = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            content_type,
            body,
        }
    }

    async fn get(&self, uri: &str) -> Answer {
        self.call(Method::GET, uri, None, "").await
    }

    async fn post(&self, uri: &str, body: Value) -> Answer {
        let token = self.token.clone();
        self.call(Method::POST, uri, Some(&token), &body.to_string())
            .await
    }
}

/// A live driver over a fresh package set. The batch delay is long so that a submitted
/// change stays queued while the routes are exercised.
async fn router(dir: &std::path::Path) -> (Router, mergequeue::tools::harness::Harness) {
    let mut h = common::harness(
        dir,
        12,
        7,
        BranchOpts {
            batch_delay_secs: 3600,
            ..BranchOpts::default()
        },
    );
    h.change("feature", "a change", |s| s.bump("zlib").map(|_| ()))
        .unwrap();
    let config = Config::load(&h.config_path).unwrap();
    let token = load_token(&config)
        .unwrap()
        .expect("the harness writes a token");
    let driver = Driver::open(config.clone()).unwrap();
    let api = Api {
        config,
        token: Some(token.clone()),
        driver: driver.handle(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(driver.run(async move {
        let _ = stopped.await;
    }));
    (
        Router {
            api,
            token,
            _stop: stop,
        },
        h,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_answers_and_bad_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (r, _h) = router(dir.path()).await;

    // Metrics: Prometheus text.
    let m = r.get("/metrics").await;
    assert_eq!(m.status, StatusCode::OK);
    assert!(
        m.content_type.starts_with("text/plain"),
        "{}",
        m.content_type
    );
    assert!(String::from_utf8_lossy(&m.body).contains("mergequeue_"));

    // Builders and implementations.
    let b = r.get("/api/v1/builders").await;
    assert_eq!(b.status, StatusCode::OK);
    assert!(b.body.windows(5).any(|w| w == b"local"), "{:?}", b.json());
    assert_eq!(
        r.get("/api/v1/implementations").await.status,
        StatusCode::OK
    );

    // Drain and undrain: the token is required; unknown builders and bad bodies refused.
    let unauth = r
        .call(
            Method::POST,
            "/api/v1/builders/drain",
            None,
            r#"{"uri":"local"}"#,
        )
        .await;
    assert_eq!(unauth.status, StatusCode::UNAUTHORIZED);
    let wrong = r
        .call(
            Method::POST,
            "/api/v1/builders/drain",
            Some("not-the-token"),
            r#"{"uri":"local"}"#,
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let d = r
        .post("/api/v1/builders/drain", json!({ "uri": "local" }))
        .await;
    assert_eq!(d.status, StatusCode::OK, "{:?}", d.json());
    assert_eq!(d.json()["drained"], true);
    let u = r
        .post("/api/v1/builders/undrain", json!({ "uri": "local" }))
        .await;
    assert_eq!(u.json()["drained"], false);
    let unknown = r
        .post(
            "/api/v1/builders/drain",
            json!({ "uri": "ssh-ng://nowhere" }),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let extra = r
        .post("/api/v1/builders/drain", json!({ "uri": "local", "x": 1 }))
        .await;
    assert_eq!(extra.status, StatusCode::BAD_REQUEST);

    // Attempts: none yet for a derivation nothing built.
    let a = r
        .get("/api/v1/attempts?drv=%2Fnix%2Fstore%2Fabc-gtk%2B3.drv")
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json(), json!([]));
    assert_eq!(
        r.get("/api/v1/attempts/abc/log").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        r.get("/api/v1/attempts/999999/log").await.status,
        StatusCode::NOT_FOUND
    );

    // Events.
    assert_eq!(r.get("/api/v1/events?after=0").await.status, StatusCode::OK);
    assert_eq!(
        r.get("/api/v1/events?after=x").await.status,
        StatusCode::BAD_REQUEST
    );

    // Channels: none configured.
    let c = r.get("/api/v1/channels").await;
    assert_eq!(c.status, StatusCode::OK);
    assert_eq!(
        r.get("/api/v1/channels/nope").await.status,
        StatusCode::NOT_FOUND
    );

    // Repositories.
    assert_eq!(
        r.get("/api/v1/repos/nope/queue").await.status,
        StatusCode::NOT_FOUND
    );
    let submit = |body: Value| r.post("/api/v1/repos/pkgs/changes", body);
    let good =
        json!({"ref": "feature", "target": "master", "title": "zlib: bump", "author": "alice"});
    let unauth = r
        .call(
            Method::POST,
            "/api/v1/repos/pkgs/changes",
            None,
            &good.to_string(),
        )
        .await;
    assert_eq!(unauth.status, StatusCode::UNAUTHORIZED);
    let bad_json = r
        .call(
            Method::POST,
            "/api/v1/repos/pkgs/changes",
            Some(&r.token),
            "{",
        )
        .await;
    assert_eq!(bad_json.status, StatusCode::BAD_REQUEST);
    let mut t = good.clone();
    t["target"] = json!("nonexistent");
    assert_eq!(submit(t).await.status, StatusCode::UNPROCESSABLE_ENTITY);
    let mut p = good.clone();
    p["priority"] = json!("asap");
    assert_eq!(submit(p).await.status, StatusCode::UNPROCESSABLE_ENTITY);
    let mut missing = good.clone();
    missing["ref"] = json!("no-such-branch");
    assert_eq!(
        submit(missing).await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    // Nothing above changed anything.
    let q = r.get("/api/v1/repos/pkgs/queue").await;
    assert_eq!(q.status, StatusCode::OK);
    assert!(!q.body.windows(10).any(|w| w == b"zlib: bump"));

    let created = submit(good).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.json());
    let id = created.json()["id"].as_u64().expect("an id");
    let change = r.get(&format!("/api/v1/repos/pkgs/changes/{id}")).await;
    assert_eq!(change.status, StatusCode::OK);
    assert_eq!(change.json()["title"], "zlib: bump");
    assert_eq!(change.json()["state"], "queued");
    assert_eq!(
        r.get("/api/v1/repos/pkgs/changes/x").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        r.get("/api/v1/repos/pkgs/changes/99999").await.status,
        StatusCode::NOT_FOUND
    );
    let q = r.get("/api/v1/repos/pkgs/queue").await;
    assert!(
        q.body.windows(10).any(|w| w == b"zlib: bump"),
        "{:?}",
        q.json()
    );
    assert_eq!(
        r.get("/api/v1/repos/pkgs/candidates").await.status,
        StatusCode::OK
    );

    // Cancelling needs the token.
    let path = format!("/api/v1/repos/pkgs/changes/{id}");
    assert_eq!(
        r.call(Method::DELETE, &path, None, "").await.status,
        StatusCode::UNAUTHORIZED
    );
    let token = r.token.clone();
    let cancelled = r.call(Method::DELETE, &path, Some(&token), "").await;
    assert_eq!(cancelled.status, StatusCode::OK, "{:?}", cancelled.json());
    assert_eq!(cancelled.json()["state"], "cancelled");
    // The change list, newest first, by state.
    let list = r.get("/api/v1/repos/pkgs/changes?state=cancelled").await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.json()[0]["id"].as_u64(), Some(id), "{:?}", list.json());
    let queued = r
        .get("/api/v1/repos/pkgs/changes?state=queued")
        .await
        .json();
    assert!(queued
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["state"] == "queued"));
    assert_eq!(
        r.get("/api/v1/repos/pkgs/changes?state=done").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        r.get("/api/v1/repos/pkgs/changes?limit=x").await.status,
        StatusCode::BAD_REQUEST
    );

    // One page of the queue, and a candidate that does not exist.
    let page = r.get("/api/v1/repos/pkgs/queue?limit=1&offset=0").await;
    assert_eq!(page.status, StatusCode::OK, "{:?}", page.json());
    // Every answer is one page: 100 by default, at most 1000.
    let limit = |path: &'static str| {
        let r = &r;
        async move { r.get(path).await.json()["branches"][0]["limit"].clone() }
    };
    assert_eq!(limit("/api/v1/repos/pkgs/queue").await, json!(100));
    assert_eq!(limit("/api/v1/repos/pkgs/queue?limit=7").await, json!(7));
    assert_eq!(
        limit("/api/v1/repos/pkgs/queue?limit=50000").await,
        json!(1000)
    );
    assert_eq!(
        r.get("/api/v1/repos/pkgs/queue?limit=-1").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        r.get("/api/v1/repos/pkgs/candidates/99999").await.status,
        StatusCode::NOT_FOUND
    );

    // The web UI on the same router: HTML pages, HTML 404s.
    let home = r.get("/").await;
    assert_eq!(home.status, StatusCode::OK);
    assert!(
        home.content_type.starts_with("text/html"),
        "{}",
        home.content_type
    );
    let queue = r.get("/repos/pkgs").await;
    assert_eq!(queue.status, StatusCode::OK);
    let missing = r.get("/no-such-page").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.content_type.starts_with("text/html"));

    // Anything else under /api: 404 naming the route.
    let none = r.get("/api/v1/nothing-here").await;
    assert_eq!(none.status, StatusCode::NOT_FOUND);
    assert!(none.json()["error"]
        .as_str()
        .unwrap()
        .contains("/api/v1/nothing-here"));
}
