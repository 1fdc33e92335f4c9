//! The marking-broken policy and its notifications, end to end: the real binary, real
//! git and nix, a real SMTP server on loopback (`common::smtp`), a webhook receiver and
//! the fake Gitea (the forge cannot run here). A pull request that breaks one
//! unprotected package is held under `breakage = "grace"`; its package's maintainers
//! hear at once (mail, webhook, one comment on the pull request), an opted-out one
//! does not; after the grace period it lands with the package in the broken registry
//! (`GET /api/v1/repos/pkgs/broken`), and they hear that; a later fix takes the package
//! out of the registry, and they hear that too. The relay and the hook are down for a
//! while: nothing is lost, nothing is sent twice.

mod common;

use std::time::{Duration, Instant};

use common::hook::Hook;
use common::smtp::Smtp;
use common::{harness, LONG};
use mergequeue::tools::fakeforge::{FakeForge, Shape};
use mergequeue::tools::harness::{git, BranchOpts, ChannelSpec, Harness};
use serde_json::{json, Value};

const SECRET: &str = "e2e webhook secret";
const HOOK_SECRET: &str = "notify hook secret";

async fn get(h: &Harness, path: &str) -> Value {
    let (status, v) = h.client.call(hyper::Method::GET, path, None).await.unwrap();
    assert_eq!(status, 200, "{path}: {v}");
    v
}

async fn until<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(t.elapsed() < LONG, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn hook_events(hook: &Hook) -> Vec<Value> {
    hook.hits()
        .iter()
        .map(|h| {
            let want = mergequeue::shell::notifier::signature(HOOK_SECRET, &h.body);
            assert_eq!(
                h.signature.as_deref(),
                Some(want.as_str()),
                "unsigned or badly signed"
            );
            serde_json::from_str(&h.body).unwrap()
        })
        .collect()
}

/// Mails whose subject names `what`, by recipient.
fn mails_about(smtp: &Smtp, what: &str) -> Vec<String> {
    let mut to: Vec<String> = smtp
        .mails()
        .into_iter()
        .filter(|m| m.data.contains(what))
        .flat_map(|m| m.to)
        .collect();
    to.sort();
    to
}

fn comments_on(forge: &FakeForge, pr: u64) -> Vec<String> {
    forge
        .requests()
        .into_iter()
        .filter(|r| r.path == format!("/repos/nix/pkgs/issues/{pr}/comments") && r.method == "POST")
        .map(|r| r.body["body"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_holds_notifies_marks_broken_and_hears_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = Smtp::start();
    let hook = Hook::start().await;
    let forge = FakeForge::start(Shape::Gitea, "nix/pkgs", "forge-token")
        .await
        .unwrap();
    let files = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let secret_file = files("webhook-secret", SECRET);
    let token_file = files("forge-token", "forge-token\n");
    let hook_secret = files("hook-secret", &format!("{HOOK_SECRET}\n"));
    let opts = BranchOpts {
        branch_toml: "breakage = \"grace\"\ngrace_secs = 6\nmax_newly_broken = 5\n".into(),
        extra_toml: format!(
            "[repos.forge]\nkind = \"gitea\"\napi_url = {:?}\nrepository = \"nix/pkgs\"\n\
             token_file = {token_file:?}\nwebhook_secret_file = {secret_file:?}\n",
            forge.api_url
        ),
        ..BranchOpts::default()
    };
    let mut h = harness(dir.path(), 14, 5, opts);
    // A channel over master publishes the registry with its artifacts.
    let artifacts = dir.path().join("artifacts");
    h.add_channel(&ChannelSpec {
        artifacts_dir: Some(artifacts.clone()),
        ..ChannelSpec::default()
    })
    .unwrap();
    let published = async |h: &Harness| -> Value {
        let master = h.upstream_head("master").unwrap();
        h.wait_channel("unstable", LONG, |v| {
            v["published"].as_str() == Some(master.as_str())
        })
        .await
        .unwrap();
        let text = std::fs::read_to_string(artifacts.join(&master).join("broken.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    };
    let gated = h.set.transitive_deps("tested");
    let (pkg, maintainers) = h
        .set
        .healthy_leaves()
        .into_iter()
        .filter(|p| !gated.contains(p) && p != "tested")
        .map(|p| {
            (
                p.clone(),
                h.set.maintainers.get(&p).cloned().unwrap_or_default(),
            )
        })
        .max_by_key(|(_, m)| m.len())
        .expect("a healthy leaf outside the aggregate");
    assert!(!maintainers.is_empty(), "{pkg} has no maintainers");
    // With two maintainers, the second opts out.
    let (told, opted): (Vec<String>, Vec<String>) = match maintainers.as_slice() {
        [a, b, ..] => (vec![a.clone()], vec![b.clone()]),
        all => (all.to_vec(), vec![]),
    };
    h.append_config(&format!(
        "[notify]\nopt_out = {opted:?}\npublic_url = \"http://mq.test\"\n\
         [notify.email]\nsmtp = {:?}\nstarttls = false\nfrom = \"mergequeue@example.org\"\ntimeout_secs = 5\n\
         [notify.webhook]\nurl = {:?}\nsecret_file = {hook_secret:?}\ntimeout_secs = 5\n",
        smtp.addr, hook.url
    ))
    .unwrap();

    let head = h
        .change("pr-7", "break a leaf", |s| s.break_build(&pkg))
        .unwrap();
    git(&h.upstream, &["update-ref", "refs/pull/7/head", &head]).unwrap();
    forge.open_pull(7, &head, "master", "break a leaf", "alice");
    forge.set_permission("bob", "write");
    // The relay refuses the first mail and the hook the first post: both are retried.
    smtp.defer.store(1, std::sync::atomic::Ordering::SeqCst);
    hook.fail.store(1, std::sync::atomic::Ordering::SeqCst);
    h.start_server().await.unwrap();
    let r_plus = json!({"action": "created", "is_pull": true,
        "issue": {"number": 7, "pull_request": {"merged": false}},
        "comment": {"id": 101, "body": "@mergequeue r+", "user": {"login": "bob"}},
        "sender": {"login": "bob"}});
    let event = ("issue_comment".to_string(), r_plus);
    let status = forge
        .deliver(&h.listen, "pkgs", SECRET.as_bytes(), "c-1", &event)
        .await
        .unwrap();
    assert_eq!(status, 202);

    // Held: queued, with what it breaks and until when.
    let held = until("#1 held", async || {
        let (status, c) = h
            .client
            .call(hyper::Method::GET, "/api/v1/repos/pkgs/changes/1", None)
            .await
            .unwrap();
        if status == 404 {
            return None; // the approval is still on its way
        }
        assert_ne!(c["state"], "rejected", "{c}");
        assert_ne!(c["state"], "merged", "landed before its grace period: {c}");
        c["held"].is_object().then_some(c)
    })
    .await;
    assert_eq!(held["state"], "queued");
    let breaks = held["held"]["breaks"].to_string();
    assert!(breaks.contains(&pkg), "{held}");

    // Told at once: mail to the maintainer who did not opt out, the webhook, one comment.
    let planned = until("the planned-landing mail", async || {
        let to = mails_about(&smtp, "will break");
        (!to.is_empty()).then_some(to)
    })
    .await;
    let want: Vec<String> = told.iter().map(|m| format!("{m}@example.org")).collect();
    assert_eq!(planned, want, "mails about the held change");
    until("the planned-landing webhook", async || {
        hook_events(&hook)
            .iter()
            .any(|e| e["event"] == "planned-landing")
            .then_some(())
    })
    .await;
    let comment = until("the planned-landing comment", async || {
        comments_on(&forge, 7)
            .into_iter()
            .find(|b| b.contains("planned to land"))
    })
    .await;
    assert!(comment.contains(&pkg), "{comment}");
    assert!(comment.contains(&format!("@{}", told[0])), "{comment}");
    for o in &opted {
        assert!(
            !comment.contains(&format!("@{o}")),
            "opted out but pinged: {comment}"
        );
    }
    assert!(
        !comment.contains("@example.org"),
        "an address in public: {comment}"
    );

    // After the grace period it lands, with the package in the registry.
    let c = h.wait_final(&[1], LONG).await.unwrap();
    assert_eq!(c[0]["state"], "merged", "{}", c[0]);
    let broken = get(&h, "/api/v1/repos/pkgs/broken").await;
    let rows = broken.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{broken}");
    assert_eq!(rows[0]["attr"], pkg.as_str());
    assert_eq!(rows[0]["broken_by"], 1);
    assert!(
        rows[0]["drv"].as_str().unwrap().ends_with(".drv"),
        "{broken}"
    );
    assert!(
        !rows[0]["log_tail"].as_str().unwrap().is_empty(),
        "{broken}"
    );
    // The registry's page names the job and the change that broke it.
    let (status, page) = common::raw(
        &h.listen,
        b"GET /repos/pkgs/broken HTTP/1.1\r\nHost: mq\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(&format!("<td>{pkg}</td>")), "{page}");
    assert!(page.contains("/repos/pkgs/changes/1\""), "{page}");
    assert!(
        !page.contains("@example.org"),
        "an address on a page: {page}"
    );
    let shipped = published(&h).await;
    assert_eq!(shipped, broken, "broken.json is the registry");
    until("the newly-broken mail", async || {
        (mails_about(&smtp, "broke 1 job") == want).then_some(())
    })
    .await;

    // A fix through the API (no pull request): the package leaves the registry.
    h.change("fix", "fix the leaf", |s| s.fix(&pkg)).unwrap();
    h.submit("fix", "fix the leaf", "normal").await.unwrap();
    let c = h.wait_final(&[2], LONG).await.unwrap();
    assert_eq!(c[0]["state"], "merged", "{}", c[0]);
    let broken = get(&h, "/api/v1/repos/pkgs/broken").await;
    assert_eq!(broken, json!([]));
    assert_eq!(
        published(&h).await,
        json!([]),
        "the fixed release ships no broken job"
    );
    until("the fixed mail and webhook", async || {
        let fixed = mails_about(&smtp, "fixed 1 job") == want;
        let hooked = hook_events(&hook).iter().any(|e| e["event"] == "fixed");
        (fixed && hooked).then_some(())
    })
    .await;

    // Each event once: three mails to each maintainer told, three webhook posts,
    // nothing ever to the opted-out one.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let all: Vec<String> = smtp.mails().into_iter().flat_map(|m| m.to).collect();
    for m in &want {
        assert_eq!(all.iter().filter(|t| *t == m).count(), 3, "{all:?}");
    }
    for o in &opted {
        assert!(!all.contains(&format!("{o}@example.org")), "{all:?}");
    }
    let events: Vec<String> = hook_events(&hook)
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(events, ["planned-landing", "newly-broken", "fixed"]);
    let on7 = comments_on(&forge, 7);
    assert_eq!(
        on7.iter().filter(|b| b.contains("planned to land")).count(),
        1,
        "{on7:#?}"
    );
    h.stop_server(false).unwrap();
}
