//! The web UI in a real browser: a live server holding a realistic run (landed, rejected,
//! queued and testing changes, a channel, two builders), Debian's Chromium driven through
//! ChromeDriver. Every page loads and shows its entries, every link on it resolves, user
//! text is escaped, no secret shows, and the drain button needs the token.
//!
//! `MERGEQUEUE_UI_SCREENSHOTS=docs/ui cargo test --release --test ui` also refreshes the
//! screenshots `docs/ui.md` shows; without it they go to the test's temporary directory.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::sshd::Sshd;
use common::{harness, never_built_version, LONG};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper::Method;
use mergequeue::tools::harness::{BranchOpts, ChannelSpec, Harness};
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const EVIL: &str = "<script>alert(1)</script>";

/// Fails loudly (never skips) without the browser.
fn require_browser() {
    for p in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            Path::new(p).exists(),
            "{p} is missing: run scripts/install-prereqs.sh as root \
             (apt-get install -y chromium chromium-driver)"
        );
    }
}

/// ChromeDriver on a free loopback port; killed (by its PID) when dropped.
struct ChromeDriver {
    child: Child,
    port: u16,
}

impl ChromeDriver {
    fn start(log: &Path) -> ChromeDriver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(log).unwrap();
        use std::os::unix::process::CommandExt;
        // Its own process group, so that the browsers it starts go with it.
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start chromedriver");
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "chromedriver did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        ChromeDriver { child, port }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        // SAFETY: signalling the process group of the child we spawned, by its PID.
        unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

async fn browser(driver: &ChromeDriver, profile: &Path) -> Client {
    let caps = json!({
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                "--window-size=1280,1000",
                format!("--user-data-dir={}", profile.display()),
            ],
        }
    });
    let caps = caps.as_object().unwrap().clone();
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("connect to chromedriver")
}

/// GET through a plain HTTP client: (status, content type, body).
async fn fetch(url: &str) -> (u16, String, String) {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let resp = client.get(url.parse().unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, ct, String::from_utf8_lossy(&body).into_owned())
}

/// GET a JSON answer that must be 200.
async fn get_json(url: &str) -> serde_json::Value {
    let (status, _, body) = fetch(url).await;
    assert_eq!(status, 200, "{url}: {body}");
    serde_json::from_str(&body).unwrap()
}

struct Visit<'a> {
    c: &'a Client,
    base: String,
    token: String,
    shots: PathBuf,
}

impl Visit<'_> {
    /// Opens `path` in the browser, checks it is a page of ours that shows every one of
    /// `expect`, that every link on it resolves and that no secret shows; returns its
    /// source. `shot` names its screenshot.
    async fn page(&self, path: &str, expect: &[&str], shot: Option<&str>) -> String {
        let url = format!("{}{path}", self.base);
        let (status, ct, _) = fetch(&url).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(ct, "text/html; charset=utf-8", "{path}");
        self.c.goto(&url).await.unwrap();
        let src = self.c.source().await.unwrap();
        let text = self
            .c
            .find(Locator::Css("body"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for e in expect {
            assert!(text.contains(e), "{path} does not show {e:?}:\n{text}");
        }
        assert!(!src.contains(&self.token), "{path} shows the API token");
        let mut hrefs = vec![];
        for a in self.c.find_all(Locator::Css("a[href]")).await.unwrap() {
            // The property is the resolved absolute URL.
            if let Some(h) = a.prop("href").await.unwrap() {
                hrefs.push(h);
            }
        }
        for h in hrefs {
            let h = h.split('#').next().unwrap().to_string();
            assert!(h.starts_with(&self.base), "{path} links outside: {h}");
            let (status, _, _) = fetch(&h).await;
            assert_eq!(status, 200, "{path} links to {h}, which answers {status}");
        }
        if let Some(name) = shot {
            let png = self.c.screenshot().await.unwrap();
            std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
        }
        src
    }
}

fn builders_toml(b1: &Sshd) -> String {
    format!(
        "[[builders]]\nuri = \"local\"\nmax_jobs = 4\n\n[[builders]]\nuri = {:?}\nsystems = [\"x86_64-linux\"]\nmax_jobs = 1\nspeed_factor = 0.5\n",
        b1.uri()
    )
}

async fn submit(h: &Harness, branch: &str, title: &str, author: &str) -> u64 {
    let body = json!({"ref": format!("refs/heads/{branch}"), "target": "master", "title": title, "author": author});
    h.client
        .ok(Method::POST, "/api/v1/repos/pkgs/changes", Some(body))
        .await
        .unwrap()["id"]
        .as_u64()
        .unwrap()
}

async fn builder_state(h: &Harness, uri: &str) -> String {
    let v = h
        .client
        .ok(Method::GET, "/api/v1/builders", None)
        .await
        .unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .find(|b| b["uri"] == uri)
        .map(|b| b["state"].as_str().unwrap().to_string())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_page_shows_a_live_run_in_a_real_browser() {
    require_browser();
    common::require_tools();
    let dir = tempfile::tempdir().unwrap();
    let ssh_config = dir.path().join("ssh_config");
    let b1 = Sshd::start(dir.path(), "b1", &ssh_config);
    let opts = BranchOpts {
        builders_toml: Some(builders_toml(&b1)),
        env: vec![("NIX_SSHOPTS".into(), format!("-F {}", ssh_config.display()))],
        ..BranchOpts::default()
    };
    let mut h = harness(&dir.path().join("h"), 40, 11, opts);
    h.add_channel(&ChannelSpec::default()).unwrap();
    let leaves = h.set.healthy_leaves();
    let (good, bad, evil, slow) = (&leaves[0], &leaves[1], &leaves[2], &leaves[3]);
    h.change("good", "good", |s| s.bump(good).map(|_| ()))
        .unwrap();
    h.change("bad", "bad", |s| {
        s.bump(bad)?;
        s.break_build(bad)
    })
    .unwrap();
    h.change("evil", "evil", |s| s.bump(evil).map(|_| ()))
        .unwrap();
    let version = never_built_version();
    h.change("slow", "slow", |s| {
        s.set_version(slow, &version)?;
        s.set_sleep(slow, 90.0)
    })
    .unwrap();
    h.change("later1", "later1", |s| s.bump(&leaves[4]).map(|_| ()))
        .unwrap();
    h.change("later2", "later2", |s| s.bump(&leaves[5]).map(|_| ()))
        .unwrap();
    h.start_server().await.unwrap();
    let started = Instant::now();
    let stage = |what: &str| eprintln!("[{:6.1} s] {what}", started.elapsed().as_secs_f64());

    // Landed and rejected changes, and the channel following master.
    let good_id = submit(&h, "good", &format!("{good}: update"), "alice").await;
    let bad_id = submit(&h, "bad", &format!("{bad}: update (breaks)"), "bob").await;
    let evil_id = submit(&h, "evil", EVIL, "<b>mallory</b>").await;
    let finals = h
        .wait_final(&[good_id, bad_id, evil_id], LONG)
        .await
        .unwrap();
    assert_eq!(common::state(&finals[1]), "rejected", "{}", finals[1]);
    stage("landed and rejected");
    let master = h.upstream_head("master").unwrap();
    h.wait_channel("unstable", LONG, |v| v["rev"].as_str() == Some(&master))
        .await
        .unwrap();
    // A testing change (a slow build) and two queued behind it.
    stage("channel advanced");
    let slow_id = submit(&h, "slow", &format!("{slow}: update (slow build)"), "carol").await;
    let t = Instant::now();
    let testing = loop {
        let q = h
            .client
            .ok(Method::GET, "/api/v1/repos/pkgs/queue", None)
            .await
            .unwrap();
        if let Some(k) = q["branches"][0]["testing"]
            .as_array()
            .and_then(|t| t.first())
        {
            if k["phase"] == "building" {
                break k["id"].as_u64().unwrap();
            }
        }
        assert!(
            t.elapsed() < LONG,
            "the slow change never started building: {q}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let q1 = submit(&h, "later1", "later one", "dave").await;
    let q2 = submit(&h, "later2", "later two", "erin").await;

    stage("testing and queued");
    let chromedriver = ChromeDriver::start(&dir.path().join("chromedriver.log"));
    let c = browser(&chromedriver, &dir.path().join("profile")).await;
    let shots = match std::env::var_os("MERGEQUEUE_UI_SCREENSHOTS") {
        Some(d) => PathBuf::from(d),
        None => dir.path().join("shots"),
    };
    std::fs::create_dir_all(&shots).unwrap();
    let v = Visit {
        c: &c,
        base: format!("http://{}", h.listen),
        token: h.token.clone(),
        shots,
    };

    v.page(
        "/",
        &["pkgs", "master", "unstable", "local", "ssh-ng://b1"],
        Some("overview"),
    )
    .await;
    v.page(
        "/repos/pkgs",
        &[
            &format!("Candidate {testing}"),
            "Queued (2)",
            "later one",
            "later two",
            "dave",
            "carol",
            "Mass-rebuild stage",
        ],
        Some("queue"),
    )
    .await;
    // The change titled like a script: escaped in the source, shown as text, never run.
    let src = v
        .page(
            &format!("/repos/pkgs/changes/{evil_id}"),
            &[EVIL, "<b>mallory</b>", "merged"],
            None,
        )
        .await;
    assert!(!src.contains(EVIL), "the title is not escaped");
    assert!(
        src.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{src}"
    );
    assert!(c.get_alert_text().await.is_err(), "a script ran");
    let queue_src = fetch(&format!("{}/repos/pkgs", v.base)).await.2;
    assert!(
        !queue_src.contains("<b>mallory"),
        "an author is not escaped"
    );
    // The rejected change: its failing job, the log tail, a full log that opens.
    v.page(
        &format!("/repos/pkgs/changes/{bad_id}"),
        &[
            "rejected",
            "bob",
            bad,
            "Log tail",
            "FIXTURE-BUILD-FAILURE",
            "Full logs of",
        ],
        Some("change"),
    )
    .await;
    v.page(
        &format!("/repos/pkgs/changes/{good_id}"),
        &["merged", "landed in", "alice"],
        None,
    )
    .await;
    v.page(
        &format!("/repos/pkgs/changes/{q1}"),
        &["queued", "later one"],
        None,
    )
    .await;
    v.page(
        &format!("/repos/pkgs/changes/{slow_id}"),
        &["testing", &format!("candidate {testing}")],
        None,
    )
    .await;
    v.page(
        &format!("/repos/pkgs/candidates/{testing}"),
        &["Rebuild set", slow, "building"],
        Some("candidate"),
    )
    .await;
    let first = finals[1]["candidate"].as_u64().unwrap();
    v.page(
        &format!("/repos/pkgs/candidates/{first}"),
        &["Rebuild set", bad, "failed", "base → commit"],
        None,
    )
    .await;
    // Its evaluation diff: the broken job newly failing, the JSON twin agreeing.
    let cand = get_json(&format!("{}/api/v1/repos/pkgs/candidates/{first}", v.base)).await;
    let (base, commit) = (
        cand["base"].as_str().unwrap(),
        cand["commit"].as_str().unwrap(),
    );
    let diff = get_json(&format!(
        "{}/api/v1/repos/pkgs/compare?from={base}&to={commit}",
        v.base
    ))
    .await;
    let failing: Vec<&str> = diff["newly_failing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["attr"].as_str().unwrap())
        .collect();
    assert!(failing.contains(&bad.as_str()), "{diff:#}");
    assert_eq!(diff["counts"]["newly_failing"], failing.len());
    v.page(
        &format!("/repos/pkgs/compare?from={base}&to={commit}"),
        &[
            "Newly failing (",
            "Still failing (",
            "Added (",
            "Removed (",
            "Changed (",
            bad,
        ],
        None,
    )
    .await;
    v.page("/channels", &["unstable"], None).await;
    v.page(
        "/channels/unstable",
        &["unstable", &master[..12], "History"],
        Some("channel"),
    )
    .await;
    v.page(
        "/events",
        &["landed", &format!("rejected #{bad_id}")],
        Some("events"),
    )
    .await;
    // With JavaScript the events page appends new events as they happen.
    let live = submit(&h, "later1", "arrives while the page is open", "frank").await;
    let t = Instant::now();
    loop {
        let table = c.find(Locator::Css("table.events")).await.unwrap();
        if table
            .text()
            .await
            .unwrap()
            .contains(&format!("queued #{live}"))
        {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the events page did not refresh"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    v.page("/repos/pkgs/broken", &["broken registry"], None)
        .await;
    let b1_uri = b1.uri();
    v.page(
        "/builders",
        &["local", "ssh-ng://b1", "drain"],
        Some("builders"),
    )
    .await;

    stage("pages checked");
    // Unknown pages are HTML 404s; the API keeps its JSON 404s.
    let (status, ct, _) = fetch(&format!("{}/no/such/page", v.base)).await;
    assert_eq!((status, ct.as_str()), (404, "text/html; charset=utf-8"));
    let (status, ct, _) = fetch(&format!("{}/api/v1/nope", v.base)).await;
    assert_eq!((status, ct.as_str()), (404, "application/json"));
    let (_, _, twin) = fetch(&format!(
        "{}/api/v1/repos/pkgs/candidates/{testing}",
        v.base
    ))
    .await;
    let twin: Value = serde_json::from_str(&twin).unwrap();
    assert!(
        twin["rebuild"].as_array().is_some_and(|r| !r.is_empty()),
        "{twin}"
    );

    // Drain without the token (a wrong one): refused, nothing changes.
    let form =
        format!("//form[@action='/builders/drain' and input[@name='uri' and @value='{b1_uri}']]");
    let press = |token: String, xpath: String| {
        let c = c.clone();
        let base = v.base.clone();
        async move {
            c.goto(&format!("{base}/builders")).await.unwrap();
            let f = c.find(Locator::XPath(&xpath)).await.unwrap();
            f.find(Locator::Css("input[name=token]"))
                .await
                .unwrap()
                .send_keys(&token)
                .await
                .unwrap();
            f.find(Locator::Css("button"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            // The answer replaces the page: wait for it (the old body goes stale).
            let t = Instant::now();
            loop {
                if let Ok(b) = c.find(Locator::Css("body")).await {
                    if let Ok(text) = b.text().await {
                        if text.contains("Refused") || text.contains("Done:") {
                            return text;
                        }
                    }
                }
                assert!(
                    t.elapsed() < Duration::from_secs(20),
                    "no answer to the form"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let text = press("not-the-token".into(), form.clone()).await;
    assert!(text.contains("Refused"), "{text}");
    assert_ne!(builder_state(&h, &b1_uri).await, "draining");
    // A cross-site post is refused even with the token.
    let resp = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http()
        .request(
            hyper::Request::post(format!("{}/builders/drain", v.base))
                .header("origin", "http://evil.example")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(http_body_util::Full::new(bytes::Bytes::from(format!(
                    "uri={}&token={}",
                    form_urlencoded::byte_serialize(b1_uri.as_bytes()).collect::<String>(),
                    h.token
                ))))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    assert_ne!(builder_state(&h, &b1_uri).await, "draining");
    // With the token: drained, and the page says so; then returned.
    let text = press(h.token.clone(), form).await;
    assert!(text.contains("Done: drained"), "{text}");
    assert_eq!(builder_state(&h, &b1_uri).await, "draining");
    let back =
        format!("//form[@action='/builders/undrain' and input[@name='uri' and @value='{b1_uri}']]");
    let text = press(h.token.clone(), back).await;
    assert!(text.contains("Done: returned"), "{text}");
    assert_ne!(builder_state(&h, &b1_uri).await, "draining");
    assert!(
        !c.source().await.unwrap().contains(&h.token),
        "the token shows after posting"
    );
    let _ = q2;
    c.close().await.unwrap();
    stage("drain checked");
}

/// GET with an `Authorization` header: the status.
async fn fetch_as(url: &str, auth: &str) -> u16 {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let req = hyper::Request::get(url)
        .header("authorization", auth)
        .body(http_body_util::Empty::new())
        .unwrap();
    client.request(req).await.unwrap().status().as_u16()
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread")]
async fn with_require_token_the_pages_need_the_token() {
    common::require_tools();
    let dir = tempfile::tempdir().unwrap();
    let opts = BranchOpts {
        extra_toml: "[ui]\nrequire_token = true\n".into(),
        ..BranchOpts::default()
    };
    let mut h = harness(dir.path(), 20, 12, opts);
    h.start_server().await.unwrap();
    let base = format!("http://{}", h.listen);
    let (status, _, body) = fetch(&format!("{base}/repos/pkgs")).await;
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains(&h.token));
    let basic = format!(
        "Basic {}",
        base64(format!("operator:{}", h.token).as_bytes())
    );
    assert_eq!(fetch_as(&format!("{base}/repos/pkgs"), &basic).await, 200);
    let bearer = format!("Bearer {}", h.token);
    assert_eq!(fetch_as(&format!("{base}/builders"), &bearer).await, 200);
    let wrong = format!("Basic {}", base64(b"operator:wrong"));
    assert_eq!(fetch_as(&format!("{base}/"), &wrong).await, 401);
    // The stylesheet stays readable (the 401 page uses it); the JSON API is unchanged.
    assert_eq!(fetch(&format!("{base}/assets/style.css")).await.0, 200);
    assert_eq!(
        fetch(&format!("{base}/api/v1/repos/pkgs/queue")).await.0,
        200
    );
}
