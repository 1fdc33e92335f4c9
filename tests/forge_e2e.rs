//! Pull requests drive the queue, end to end: the real binary, real git and nix, and a
//! stateful fake Gitea on loopback (`tools::fakeforge`; the forge cannot run here). A maintainer's `r+` in a
//! signed webhook comment queues the pull request's head; it is built and lands; the forge
//! is told (pending, then success statuses, a landing comment, `manually-merged`), although
//! it answered 502 for a while. A commenter without write access is refused on the pull
//! request and nothing is queued. A push after approval removes the approval.

mod common;

use std::time::{Duration, Instant};

use common::harness;
use mergequeue::tools::fakeforge::{FakeForge, Shape};
use mergequeue::tools::harness::{git, BranchOpts, Harness};
use serde_json::{json, Value};

const SECRET: &str = "e2e webhook secret";

/// The fake forge's requests under the repository, as (method, path under it, body).
fn seen(f: &FakeForge) -> Vec<(String, String, Value)> {
    f.requests()
        .into_iter()
        .filter_map(|r| {
            let rest = r.path.strip_prefix("/repos/nix/pkgs")?.to_string();
            Some((r.method, rest, r.body))
        })
        .collect()
}

async fn deliver(f: &FakeForge, h: &Harness, event: &str, id: &str, body: &Value) -> u16 {
    let event = (event.to_string(), body.clone());
    f.deliver(&h.listen, "pkgs", SECRET.as_bytes(), id, &event)
        .await
        .unwrap()
}

/// A new comment (ids are unique on a forge: a comment seen again is not acted on again).
fn comment(id: u64, pr: u64, user: &str, text: &str) -> Value {
    json!({"action": "created", "is_pull": true,
           "issue": {"number": pr, "pull_request": {"merged": false}},
           "comment": {"id": id, "body": text, "user": {"login": user}},
           "sender": {"login": user}})
}

/// Waits until `done` holds of the forge's requests.
async fn wait_for(f: &FakeForge, what: &str, done: impl Fn(&[(String, String, Value)]) -> bool) {
    let t = Instant::now();
    while !done(&seen(f)) {
        assert!(
            t.elapsed() < common::LONG,
            "timed out waiting for {what}; the forge saw {:#?}",
            seen(f)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_land_and_the_forge_is_told_refuse_the_unauthorized_unapprove_on_push() {
    let dir = tempfile::tempdir().unwrap();
    let forge = FakeForge::start(Shape::Gitea, "nix/pkgs", "forge-token")
        .await
        .unwrap();
    let api_url = forge.api_url.clone();
    let (secret_file, token_file) = (
        dir.path().join("webhook-secret"),
        dir.path().join("forge-token"),
    );
    std::fs::write(&secret_file, SECRET).unwrap();
    std::fs::write(&token_file, "forge-token\n").unwrap();
    let opts = BranchOpts {
        extra_toml: format!(
            "[repos.forge]\nkind = \"gitea\"\napi_url = {api_url:?}\nrepository = \"nix/pkgs\"\n\
             token_file = {:?}\nwebhook_secret_file = {:?}\n",
            token_file.display().to_string(),
            secret_file.display().to_string()
        ),
        ..BranchOpts::default()
    };
    let mut h = harness(dir.path(), 12, 3, opts);
    // Pull requests 7 and 8, published as the forge publishes them: refs/pull/N/head.
    let head7 = h
        .change("pr-7", "zlib: bump", |s| s.bump("zlib").map(|_| ()))
        .unwrap();
    let slow_leaf = h.set.healthy_leaves()[0].clone();
    let head8 = h
        // A slow build never built before: #8 is still testing when the push arrives.
        .change("pr-8", "another", |s| {
            s.set_version(&slow_leaf, &common::never_built_version())?;
            s.set_sleep(&slow_leaf, 30.0)
        })
        .unwrap();
    for (n, head) in [(7, &head7), (8, &head8)] {
        git(
            &h.upstream,
            &["update-ref", &format!("refs/pull/{n}/head"), head],
        )
        .unwrap();
    }
    forge.open_pull(7, &head7, "master", "pull request 7", "alice");
    forge.open_pull(8, &head8, "master", "pull request 8", "alice");
    forge.set_permission("bob", "write");
    forge.set_permission("carol", "read");
    forge.state.lock().unwrap().fail_writes = 3;
    h.start_server().await.unwrap();

    // Someone without write access: one reply, nothing queued.
    assert_eq!(
        deliver(
            &forge,
            &h,
            "issue_comment",
            "c-1",
            &comment(101, 8, "carol", "@mergequeue r+")
        )
        .await,
        202
    );
    wait_for(&forge, "the refusal", |r| {
        r.iter().any(|(_, p, b)| {
            p == "/issues/8/comments" && b["body"].as_str().unwrap_or("").contains("write access")
        })
    })
    .await;

    // A maintainer approves #7: it lands, and the forge hears all of it despite the 502s.
    assert_eq!(
        deliver(
            &forge,
            &h,
            "issue_comment",
            "c-2",
            &comment(102, 7, "bob", "Thanks!\n@mergequeue r+")
        )
        .await,
        202
    );
    let t = Instant::now();
    let landed = loop {
        let (_, c) = h
            .client
            .call(hyper::Method::GET, "/api/v1/repos/pkgs/changes/1", None)
            .await
            .unwrap();
        if c["state"] == "merged" {
            break c;
        }
        assert!(c["state"] != "rejected", "{c}");
        assert!(t.elapsed() < common::LONG, "not landed: {c}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        (landed["pr"].as_u64(), landed["ref"].as_str()),
        (Some(7), Some("refs/pull/7/head"))
    );
    assert_eq!(landed["approver"], "bob");
    let master = h.upstream_head("master").unwrap();
    assert_eq!(landed["landed_commit"].as_str(), Some(master.as_str()));
    wait_for(&forge, "the landing answers", |r| {
        r.iter().any(|(_, p, _)| p == "/pulls/7/merge")
    })
    .await;
    let reqs = seen(&forge);
    let on7: Vec<&(String, String, Value)> = reqs
        .iter()
        .filter(|(_, p, _)| p.contains(&head7) || p.contains("/7/"))
        .collect();
    let states: Vec<&str> = on7
        .iter()
        .filter(|(_, p, _)| p.starts_with("/statuses/"))
        .map(|(_, _, b)| b["state"].as_str().unwrap())
        .collect();
    assert_eq!(states.first(), Some(&"pending"), "{on7:#?}");
    assert_eq!(states.last(), Some(&"success"), "{on7:#?}");
    assert!(on7
        .iter()
        .all(|(_, p, b)| !p.starts_with("/statuses/") || b["context"] == "mergequeue"));
    assert!(on7.iter().any(
        |(_, p, b)| p == "/issues/7/comments" && b["body"].as_str().unwrap().contains(&master)
    ));
    let merge = on7.iter().find(|(_, p, _)| p == "/pulls/7/merge").unwrap();
    assert_eq!(
        merge.2,
        json!({"Do": "manually-merged", "MergeCommitID": master})
    );
    // The web UI's change page says who approved it and links the pull request.
    let get = b"GET /repos/pkgs/changes/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let (status, page) = common::raw(&h.listen, get).await;
    assert_eq!(status, 200);
    let web = api_url.trim_end_matches("/api/v1");
    for part in [
        format!("href=\"{web}/nix/pkgs/pulls/7\""),
        "approved by bob".to_string(),
        "commit status success".to_string(),
    ] {
        assert!(page.contains(&part), "the change page lacks {part:?}");
    }

    // Nothing else was queued: carol's command did nothing.
    let (status, _) = h
        .client
        .call(hyper::Method::GET, "/api/v1/repos/pkgs/changes/2", None)
        .await
        .unwrap();
    assert_eq!(status, 404);

    // #8 approved, then pushed to: the approval is removed, on the pull request too.
    assert_eq!(
        deliver(
            &forge,
            &h,
            "issue_comment",
            "c-3",
            &comment(103, 8, "bob", "@mergequeue r+")
        )
        .await,
        202
    );
    let t = Instant::now();
    while h
        .client
        .call(hyper::Method::GET, "/api/v1/repos/pkgs/changes/2", None)
        .await
        .unwrap()
        .0
        != 200
    {
        assert!(t.elapsed() < common::LONG);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let new8 = "8".repeat(40);
    forge.push(8, &new8);
    let (event, push) = forge.pull_event(8, "synchronize", "alice");
    assert_eq!(push["action"], "synchronized");
    assert_eq!(deliver(&forge, &h, &event, "p-1", &push).await, 202);
    let c = h.wait_final(&[2], common::LONG).await.unwrap();
    assert_eq!(c[0]["state"], "cancelled", "{}", c[0]);
    wait_for(&forge, "the unapproval", |r| {
        r.iter()
            .any(|(_, p, b)| p == &format!("/statuses/{new8}") && b["state"] == "error")
            && r.iter().any(|(_, p, b)| {
                p == "/issues/8/comments"
                    && b["body"]
                        .as_str()
                        .unwrap_or("")
                        .contains("approval is removed")
            })
    })
    .await;

    // While mergequeue is down, #8 gets a new head and bob approves it. The resync after
    // the restart finds the comment and acts on it, once.
    h.stop_server(false).unwrap();
    let head8b = h
        .change("pr-8b", "another, again", |s| s.bump("zlib").map(|_| ()))
        .unwrap();
    git(&h.upstream, &["update-ref", "refs/pull/8/head", &head8b]).unwrap();
    forge.push(8, &head8b);
    forge.add_comment(8, "bob", "@mergequeue r+");
    h.start_server().await.unwrap();
    let t = Instant::now();
    let c = loop {
        let (status, c) = h
            .client
            .call(hyper::Method::GET, "/api/v1/repos/pkgs/changes/3", None)
            .await
            .unwrap();
        if status == 200 {
            break c;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the missed comment was not acted on"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        (c["pr"].as_u64(), c["head"].as_str()),
        (Some(8), Some(head8b.as_str()))
    );
    let c = h.wait_final(&[3], common::LONG).await.unwrap();
    assert_eq!(c[0]["state"], "merged", "{}", c[0]);
    // Another restart reads the same comment again (the resync overlaps): nothing new.
    h.stop_server(false).unwrap();
    h.start_server().await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, _) = h
        .client
        .call(hyper::Method::GET, "/api/v1/repos/pkgs/changes/4", None)
        .await
        .unwrap();
    assert_eq!(status, 404, "the missed comment was acted on twice");
    h.stop_server(false).unwrap();
}
