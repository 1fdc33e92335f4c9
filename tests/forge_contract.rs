//! GitHub, end to end, against GitHub's own API description: the real binary authenticates
//! as a GitHub App (RS256 JWT → installation token) and talks to the stateful fake forge
//! through Prism (`@stoplight/prism-cli`), which checks every request mergequeue sends and
//! every answer the fake gives against `tests/contract/github-rest.json` (GitHub's REST
//! description cut to the operations used, `scripts/forge-contract.sh slice`) and turns
//! any violation into an error. The fake's answers are built on that description's
//! examples; the webhooks on `@octokit/webhooks-examples`
//! (`tests/contract/github-webhooks.json`).
//!
//! Needs Node.js and npm (Prism is installed into target/ on first use); fails, naming
//! them, when they are missing.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::harness;
use mergequeue::tools::fakeforge::{FakeApp, FakeForge, Shape};
use mergequeue::tools::harness::{git, BranchOpts, Harness};
use serde_json::Value;

const SECRET: &[u8] = b"contract webhook secret";

fn contract(name: &str) -> Value {
    let p = format!("{}/tests/contract/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

/// Prism as a validating proxy in front of `upstream`; its output is kept.
struct Prism {
    child: Child,
    url: String,
    output: Arc<Mutex<Vec<String>>>,
}

impl Drop for Prism {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_prism(upstream: &str) -> Prism {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("bash")
        .arg(format!("{root}/scripts/forge-contract.sh"))
        .arg("prism")
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "cannot install Prism (needs Node.js and npm: apt-get install nodejs npm): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let prism = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(&prism)
        .args([
            "proxy",
            &format!("{root}/tests/contract/github-rest.json"),
            upstream,
        ])
        .args(["--errors", "-h", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("prism");
    let output = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let (output, tx) = (output.clone(), tx.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if line.contains("Prism is listening") {
                    let _ = tx.send(());
                }
                output.lock().unwrap().push(line);
            }
        });
    }
    rx.recv_timeout(Duration::from_secs(120))
        .unwrap_or_else(|_| panic!("Prism did not start: {:#?}", output.lock().unwrap()));
    Prism {
        child,
        url: format!("http://127.0.0.1:{port}"),
        output,
    }
}

/// An RSA key pair as GitHub hands an App's key out (PKCS#1 PEM): (private, public).
fn app_key(dir: &std::path::Path) -> (std::path::PathBuf, Vec<u8>) {
    let key = dir.join("github-app.pem");
    let ok = Command::new("openssl")
        .args(["genrsa", "-traditional", "-out"])
        .arg(&key)
        .arg("2048")
        .stderr(Stdio::null())
        .status()
        .expect("openssl (apt-get install openssl)");
    assert!(ok.success());
    let public = Command::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(&key)
        .stderr(Stdio::null())
        .output()
        .unwrap()
        .stdout;
    (key, public)
}

async fn change(h: &Harness, id: u64) -> Option<Value> {
    let path = format!("/api/v1/repos/pkgs/changes/{id}");
    let (status, c) = h
        .client
        .call(hyper::Method::GET, &path, None)
        .await
        .unwrap();
    (status == 200).then_some(c)
}

async fn wait_state(h: &Harness, id: u64, want: &str) -> Value {
    let t = Instant::now();
    loop {
        if let Some(c) = change(h, id).await {
            if c["state"] == want {
                return c;
            }
            let last = ["merged", "rejected", "cancelled"].contains(&c["state"].as_str().unwrap());
            assert!(!last, "#{id} ended, not {want}: {c}");
        }
        if t.elapsed() > common::LONG {
            let log = std::fs::read_to_string(h.root.join("server.log")).unwrap_or_default();
            let tail: Vec<&str> = log
                .lines()
                .filter(|l| !l.contains("shell::api: GET"))
                .rev()
                .take(40)
                .collect();
            panic!(
                "#{id} never {want}; the server's log ends:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

async fn wait_for(
    forge: &FakeForge,
    what: &str,
    done: impl Fn(&[(String, String, Value)]) -> bool,
) {
    let t = Instant::now();
    loop {
        let seen: Vec<(String, String, Value)> = forge
            .requests()
            .into_iter()
            .filter_map(|r| {
                Some((
                    r.method,
                    r.path.strip_prefix("/repos/nix/pkgs")?.to_string(),
                    r.body,
                ))
            })
            .collect();
        if done(&seen) {
            return;
        }
        assert!(
            t.elapsed() < common::LONG,
            "timed out waiting for {what}: {seen:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn comment_says(seen: &[(String, String, Value)], pr: u64, text: &str) -> bool {
    seen.iter().any(|(m, p, b)| {
        m == "POST"
            && p == &format!("/issues/{pr}/comments")
            && b["body"].as_str().unwrap_or("").contains(text)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_github_app_drives_the_queue_and_every_call_keeps_githubs_contract() {
    let dir = tempfile::tempdir().unwrap();
    let forge = FakeForge::start(Shape::Github, "nix/pkgs", "no-personal-token")
        .await
        .unwrap();
    forge.use_examples(
        &contract("github-rest.json"),
        &contract("github-webhooks.json"),
    );
    let (key, public_pem) = app_key(dir.path());
    forge.state.lock().unwrap().app = Some(FakeApp {
        id: 4242,
        slug: "mq-test".into(),
        installation_id: 77,
        public_pem,
        issued: vec![],
    });
    let prism = start_prism(&forge.api_url);
    let secret_file = dir.path().join("webhook-secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    let opts = BranchOpts {
        extra_toml: format!(
            "[repos.forge]\nkind = \"github\"\napi_url = {:?}\nrepository = \"nix/pkgs\"\n\
             app_id = 4242\napp_private_key_file = {:?}\nwebhook_secret_file = {:?}\n\
             queue_label = \"merge-queue\"\n",
            prism.url,
            key.display().to_string(),
            secret_file.display().to_string()
        ),
        ..BranchOpts::default()
    };
    let mut h = harness(dir.path(), 12, 5, opts);
    let head7 = h
        .change("pr-7", "zlib: bump", |s| s.bump("zlib").map(|_| ()))
        .unwrap();
    let slow_leaf = h.set.healthy_leaves()[0].clone();
    let head9 = h
        .change("pr-9", "slow", |s| {
            s.set_version(&slow_leaf, &common::never_built_version())?;
            s.set_sleep(&slow_leaf, 30.0)
        })
        .unwrap();
    let broken = h.set.healthy_leaves()[1].clone();
    let head11 = h
        .change("pr-11", "breaks a leaf", |s| s.break_build(&broken))
        .unwrap();
    for (n, head) in [(7, &head7), (9, &head9), (10, &head7), (11, &head11)] {
        git(
            &h.upstream,
            &["update-ref", &format!("refs/pull/{n}/head"), head],
        )
        .unwrap();
        forge.open_pull(n, head, "master", &format!("pull request {n}"), "alice");
    }
    forge.set_permission("bob", "maintain");
    forge.set_permission("carol", "read");
    // The API's rate limit is spent for the first calls: they wait for its reset.
    forge.state.lock().unwrap().rate_limited = 2;
    h.start_server().await.unwrap();
    let send = |event: (String, Value), id: &'static str| {
        let (listen, forge) = (h.listen.clone(), &forge);
        async move {
            forge
                .deliver(&listen, "pkgs", SECRET, id, &event)
                .await
                .unwrap()
        }
    };

    // A forged delivery: refused, nothing done.
    let c = forge.add_comment(7, "bob", "@mergequeue r+");
    let event = forge.comment_event(7, c, "bob");
    let forged = forge
        .deliver(&h.listen, "pkgs", b"wrong", "d-0", &event)
        .await;
    assert_eq!(forged.unwrap(), 401);
    assert!(change(&h, 1).await.is_none());

    // bob (maintain) approves #7 in a comment shaped like GitHub's own example: it lands.
    assert_eq!(send(event, "d-1").await, 202);
    let landed = wait_state(&h, 1, "merged").await;
    assert_eq!(
        (landed["pr"].as_u64(), landed["approver"].as_str()),
        (Some(7), Some("bob"))
    );
    let master = h.upstream_head("master").unwrap();
    wait_for(&forge, "the landing statuses and comment", |r| {
        r.iter()
            .any(|(_, p, b)| p == &format!("/statuses/{head7}") && b["state"] == "success")
            && comment_says(r, 7, &master)
    })
    .await;
    // GitHub sees the merge by itself: no merge call.
    assert!(!forge.requests().iter().any(|r| r.path.ends_with("/merge")));

    // bob adds the queue label to #9: queued as if approved; closing it cancels it.
    forge.set_labels(9, &["merge-queue"]);
    let mut labeled = forge.pull_event(9, "labeled", "bob");
    labeled.1["label"]["name"] = "merge-queue".into();
    assert_eq!(send(labeled, "d-2").await, 202);
    let queued = wait_state(&h, 2, "testing").await;
    assert_eq!(
        (queued["pr"].as_u64(), queued["approver"].as_str()),
        (Some(9), Some("bob"))
    );
    forge.state.lock().unwrap().pulls.get_mut(&9).unwrap()["state"] = "closed".into();
    assert_eq!(
        send(forge.pull_event(9, "closed", "alice"), "d-3").await,
        202
    );
    let cancelled = wait_state(&h, 2, "cancelled").await;
    assert!(
        cancelled["reason"].as_str().unwrap().contains("closed"),
        "{cancelled}"
    );

    // #11 breaks a package: rejected, with the reason in full on the pull request.
    let c = forge.add_comment(11, "bob", "@mergequeue r+ p=high");
    assert_eq!(send(forge.comment_event(11, c, "bob"), "d-6").await, 202);
    let rejected = wait_state(&h, 3, "rejected").await;
    assert_eq!(rejected["priority"], "high");
    wait_for(&forge, "the rejection", |r| {
        r.iter()
            .any(|(_, p, b)| p == &format!("/statuses/{head11}") && b["state"] == "failure")
            && comment_says(r, 11, "was rejected")
    })
    .await;
    let comment = forge
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.path.ends_with("/issues/11/comments"))
        .unwrap();
    let text = comment.body["body"].as_str().unwrap().to_string();
    for part in [broken.as_str(), "/nix/store/", "log tail"] {
        assert!(
            text.contains(part),
            "the rejection comment lacks {part:?}: {text}"
        );
    }

    // carol (read) labels #10: refused on the pull request; the App's own comment, even
    // one that reads like a command, is never acted on.
    let mut labeled = forge.pull_event(10, "labeled", "carol");
    labeled.1["label"]["name"] = "merge-queue".into();
    assert_eq!(send(labeled, "d-4").await, 202);
    wait_for(&forge, "carol's refusal", |r| {
        comment_says(r, 10, "write access")
    })
    .await;
    let own = forge.add_comment(10, "mq-test[bot]", "@mergequeue r+");
    assert_eq!(
        send(forge.comment_event(10, own, "mq-test[bot]"), "d-5").await,
        202
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let four = change(&h, 4).await;
    assert!(
        four.is_none(),
        "a refused or own command queued something: {four:?}"
    );

    // Every call went through an installation token, and Prism found nothing to object to.
    assert!(!forge
        .state
        .lock()
        .unwrap()
        .app
        .as_ref()
        .unwrap()
        .issued
        .is_empty());
    h.stop_server(false).unwrap();
    let out = prism.output.lock().unwrap().clone();
    // The two rate-limited answers the fake played are not in the description (it lists
    // no 403 for those operations); Prism says so, and nothing else may be said.
    let (undocumented, bad): (Vec<&String>, Vec<&String>) = out
        .iter()
        .filter(|l| l.contains("✖") || l.contains("Violation") || l.contains("violation"))
        .partition(|l| l.contains("Unable to match the returned status code"));
    assert!(bad.is_empty(), "Prism objected: {bad:#?}");
    assert_eq!(undocumented.len(), 2, "{undocumented:#?}");
    let forwarded = out.iter().filter(|l| l.contains("Forwarding")).count();
    assert!(
        forwarded >= 8,
        "only {forwarded} calls went through Prism: {out:#?}"
    );
}

/// Every GitHub webhook example of the events mergequeue reads becomes the event it means.
#[test]
fn githubs_webhook_examples_read_as_the_events_they_are() {
    use mergequeue::core::forge::{ForgeEvent, PullAction};
    use mergequeue::shell::forge::webhook::parse;
    let mut examples = contract("github-webhooks.json");
    // GitHub's comment examples are all on plain issues: ignored as they are, a command on
    // a pull request once the issue is one.
    let on_issue = &examples["issue_comment.created"];
    assert!(on_issue["issue"]["pull_request"].is_null());
    let got = parse("issue_comment", &serde_json::to_vec(on_issue).unwrap()).unwrap();
    assert!(matches!(got, ForgeEvent::Ignored { .. }), "{got:?}");
    examples["issue_comment.created"]["issue"]["pull_request"] =
        serde_json::json!({"url": "https://api.github.com/repos/o/r/pulls/1"});
    for (key, body) in examples.as_object().unwrap() {
        let (event, action) = key.split_once('.').unwrap();
        let got = parse(event, &serde_json::to_vec(body).unwrap())
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        let number = body["pull_request"]["number"]
            .as_u64()
            .or(body["issue"]["number"].as_u64());
        let ok = match (&got, action) {
            (ForgeEvent::Comment { pr, body: text, .. }, "created" | "submitted") => {
                Some(*pr) == number
                    && (text == body["comment"]["body"].as_str().unwrap_or("")
                        || text == body["review"]["body"].as_str().unwrap_or(""))
            }
            (
                ForgeEvent::PullRequest {
                    action: a,
                    pr,
                    sender,
                },
                _,
            ) => {
                let want = match action {
                    "opened" => PullAction::Opened,
                    "synchronize" => PullAction::Pushed,
                    "closed" => PullAction::Closed,
                    "reopened" => PullAction::Reopened,
                    "labeled" => {
                        PullAction::Labeled(body["label"]["name"].as_str().unwrap().into())
                    }
                    _ => PullAction::Unlabeled(body["label"]["name"].as_str().unwrap().into()),
                };
                *a == want
                    && Some(pr.number) == number
                    && pr.head_sha == body["pull_request"]["head"]["sha"].as_str().unwrap()
                    && sender == body["sender"]["login"].as_str().unwrap()
            }
            (ForgeEvent::MergeGroupRequested(g), "checks_requested") => {
                g.head_sha == body["merge_group"]["head_sha"].as_str().unwrap()
            }
            _ => false,
        };
        assert!(ok, "{key} read as {got:?}");
    }
}

/// Builds GitHub's merge-group branch for `prs` (branch, number) on master in the
/// harness's work tree: one merge commit per pull request, as GitHub's merge method
/// writes them; pushed as `gh-readonly-queue/master/pr-N-BASE`. Returns (ref, head, base).
fn merge_group_branch(h: &Harness, prs: &[(&str, u64)]) -> (String, String, String) {
    let base = h.upstream_head("master").unwrap();
    git(&h.work, &["fetch", "--quiet", "origin"]).unwrap();
    git(
        &h.work,
        &["checkout", "--quiet", "-B", "group", "origin/master"],
    )
    .unwrap();
    for (branch, n) in prs {
        let msg = format!("Merge pull request #{n} from alice/{branch}");
        git(
            &h.work,
            &[
                "merge",
                "--quiet",
                "--no-ff",
                "-m",
                &msg,
                &format!("origin/{branch}"),
            ],
        )
        .unwrap();
    }
    let head = git(&h.work, &["rev-parse", "HEAD"]).unwrap();
    let last = prs.last().unwrap().1;
    let name = format!("gh-readonly-queue/master/pr-{last}-{base}");
    git(
        &h.work,
        &[
            "push",
            "--quiet",
            "--force",
            "origin",
            &format!("group:refs/heads/{name}"),
        ],
    )
    .unwrap();
    git(&h.work, &["checkout", "--quiet", "master"]).unwrap();
    (format!("refs/heads/{name}"), head, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_group_mode_checks_githubs_groups_and_names_the_breaking_pull_request() {
    let dir = tempfile::tempdir().unwrap();
    let forge = FakeForge::start(Shape::Github, "nix/pkgs", "gh-token")
        .await
        .unwrap();
    forge.use_examples(
        &contract("github-rest.json"),
        &contract("github-webhooks.json"),
    );
    let prism = start_prism(&forge.api_url);
    let (secret_file, token_file) = (dir.path().join("secret"), dir.path().join("token"));
    std::fs::write(&secret_file, SECRET).unwrap();
    std::fs::write(&token_file, "gh-token").unwrap();
    let opts = BranchOpts {
        extra_toml: format!(
            "[repos.forge]\nkind = \"github\"\napi_url = {:?}\nrepository = \"nix/pkgs\"\n\
             token_file = {:?}\nwebhook_secret_file = {:?}\nmode = \"merge-group\"\n",
            prism.url,
            token_file.display().to_string(),
            secret_file.display().to_string()
        ),
        ..BranchOpts::default()
    };
    let mut h = harness(dir.path(), 12, 7, opts);
    let good = h
        .change("pr-41", "zlib: bump", |s| s.bump("zlib").map(|_| ()))
        .unwrap();
    // #42 adds a package that does not build: the group breaks, and only #42 is named.
    let bad = h
        .change("pr-42", "newpkg: init", |s| {
            s.add_package("newpkg", &[])?;
            s.break_build("newpkg")
        })
        .unwrap();
    forge.open_pull(41, &good, "master", "zlib: bump", "alice");
    forge.open_pull(42, &bad, "master", "newpkg: init", "bob");
    h.start_server().await.unwrap();
    let master = h.upstream_head("master").unwrap();
    let group_event = |head_ref: &str, head: &str, base: &str, action: &str| {
        let mut v = contract("github-webhooks.json")["merge_group.checks_requested"].clone();
        v["action"] = action.into();
        v["merge_group"]["head_ref"] = head_ref.into();
        v["merge_group"]["head_sha"] = head.into();
        v["merge_group"]["base_sha"] = base.into();
        v["merge_group"]["base_ref"] = "refs/heads/master".into();
        ("merge_group".to_string(), v)
    };
    let send = |event: (String, Value), id: String| {
        let (listen, forge) = (h.listen.clone(), &forge);
        async move {
            forge
                .deliver(&listen, "pkgs", SECRET, &id, &event)
                .await
                .unwrap()
        }
    };
    let final_status = |sha: String| {
        let forge = &forge;
        async move {
            let t = Instant::now();
            loop {
                let last = forge
                    .requests()
                    .into_iter()
                    .rev()
                    .find(|r| r.path == format!("/repos/nix/pkgs/statuses/{sha}"))
                    .map(|r| r.body);
                if let Some(b) = last.filter(|b| b["state"] != "pending") {
                    return b;
                }
                assert!(
                    t.elapsed() < common::LONG,
                    "no final status on {sha}: {:#?}",
                    forge.requests()
                );
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        }
    };

    // The group of #41 alone passes.
    let (ref1, head1, base1) = merge_group_branch(&h, &[("pr-41", 41)]);
    assert_eq!(
        send(
            group_event(&ref1, &head1, &base1, "checks_requested"),
            "g-1".into()
        )
        .await,
        202
    );
    let st = final_status(head1.clone()).await;
    assert_eq!(st["state"], "success", "{st}");
    assert_eq!(st["context"], "mergequeue");

    // The group of #41 and #42 fails, naming #42; #41 is not blamed.
    let (ref2, head2, base2) = merge_group_branch(&h, &[("pr-41", 41), ("pr-42", 42)]);
    assert_eq!(
        send(
            group_event(&ref2, &head2, &base2, "checks_requested"),
            "g-2".into()
        )
        .await,
        202
    );
    let st = final_status(head2.clone()).await;
    assert_eq!(st["state"], "failure", "{st}");
    let text = st["description"].as_str().unwrap();
    assert!(text.starts_with("broken by #42"), "{text}");
    assert!(text.chars().count() <= 140);
    let (_, changes) = h
        .client
        .call(
            hyper::Method::GET,
            "/api/v1/repos/pkgs/changes?limit=10",
            None,
        )
        .await
        .unwrap();
    let of = |pr: u64, head: &str| -> Vec<String> {
        changes
            .as_array()
            .or(changes["changes"].as_array())
            .unwrap_or_else(|| panic!("{changes}"))
            .iter()
            .filter(|c| c["pr"] == pr && c["ref"] == head)
            .map(|c| c["state"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(of(42, &ref2), vec!["rejected"], "{changes:#}");
    assert_eq!(of(41, &ref2), vec!["cancelled"], "{changes:#}");
    assert_eq!(of(41, &ref1), vec!["merged"], "{changes:#}");

    // Nothing was pushed: GitHub lands merge groups; and nothing was said on the pull
    // requests themselves.
    assert_eq!(h.upstream_head("master").unwrap(), master);
    assert!(!forge.requests().iter().any(|r| r.path.contains("/issues/")));
    h.stop_server(false).unwrap();
    let out = prism.output.lock().unwrap().clone();
    let bad: Vec<&String> = out
        .iter()
        .filter(|l| l.contains("✖") || l.contains("iolation"))
        .collect();
    assert!(bad.is_empty(), "Prism objected: {bad:#?}");
}
