//! End-to-end tests of the merge queue: the real binary over HTTP, real git, real nix.

mod common;

use common::{harness, leaf_with_private_dep, never_built_version, state, LONG};
use hyper::{Method, StatusCode};
use mergequeue::tools::harness::{git, BranchOpts};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path(), 40, 1, BranchOpts::default());
    h.change("good", "a change", |s| s.bump("zlib").map(|_| ()))
        .unwrap();
    h.start_server().await.unwrap();
    let c = &h.client;
    let (url, token) = (
        format!("http://{}/api/v1/repos/pkgs/changes", h.listen),
        h.token.clone(),
    );
    let post = |body: &str| {
        let (body, url, token) = (body.to_string(), url.clone(), token.clone());
        async move {
            let req = hyper::Request::post(url)
                .header("authorization", format!("Bearer {token}"))
                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                .unwrap();
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http();
            client.request(req).await.unwrap().status()
        }
    };
    assert_eq!(post("{not json").await, StatusCode::BAD_REQUEST);
    assert_eq!(
        post(r#"{"ref": "refs/heads/good"}"#).await,
        StatusCode::BAD_REQUEST,
        "missing target"
    );
    let cases = [
        (
            "/api/v1/repos/nope/changes",
            json!({"ref": "refs/heads/good", "target": "master"}),
            StatusCode::NOT_FOUND,
        ),
        (
            "/api/v1/repos/pkgs/changes",
            json!({"ref": "refs/heads/missing", "target": "master"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/api/v1/repos/pkgs/changes",
            json!({"ref": "refs/heads/good", "target": "staging"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/api/v1/repos/pkgs/changes",
            json!({"ref": "refs/heads/good", "target": "master", "priority": "asap"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ];
    for (path, body, want) in cases {
        let (status, v) = c
            .call(Method::POST, path, Some(body.clone()))
            .await
            .unwrap();
        assert_eq!(status, want, "{path} {body}: {v}");
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "JSON error for {body}: {v}"
        );
    }
    let anon = mergequeue::shell::client::ApiClient::new(&h.listen, None);
    let (status, v) = anon
        .call(
            Method::POST,
            "/api/v1/repos/pkgs/changes",
            Some(json!({"ref": "refs/heads/good", "target": "master"})),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
    let wrong = mergequeue::shell::client::ApiClient::new(&h.listen, Some("wrong".into()));
    let (status, _) = wrong
        .call(Method::DELETE, "/api/v1/repos/pkgs/changes/1", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = c
        .call(Method::DELETE, "/api/v1/repos/pkgs/changes/99", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = c
        .call(Method::GET, "/api/v1/repos/pkgs/changes/1", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND, "no change was created");
    let metrics = c.call(Method::GET, "/metrics", None).await.unwrap().1;
    let metrics = metrics.as_str().unwrap();
    for s in ["queued", "testing", "merged", "rejected", "cancelled"] {
        assert!(
            metrics.contains(&format!("mergequeue_changes_total{{state=\"{s}\"}} 0")),
            "{metrics}"
        );
    }
    let master = h.upstream_head("master").unwrap();
    // A valid submission after all that still works and gets id 1.
    let v = h.submit("good", "good", "normal").await.unwrap();
    assert_eq!(v["id"], 1);
    let done = h.wait_final(&[1], LONG).await.unwrap();
    assert_eq!(state(&done[0]), "merged", "{}", done[0]);
    assert_ne!(h.upstream_head("master").unwrap(), master);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_culprit_in_a_batch_of_eight_costs_at_most_one_extra_build() {
    let dir = tempfile::tempdir().unwrap();
    let opts = BranchOpts {
        batch_delay_secs: 60,
        ..BranchOpts::default()
    };
    let mut h = harness(dir.path(), 120, 7, opts);
    let leaves = h.set.healthy_leaves();
    let mut ids = vec![];
    for (i, leaf) in leaves.iter().take(8).enumerate() {
        let leaf = leaf.clone();
        let branch = format!("c{i}");
        if i == 5 {
            h.change(&branch, "breaks", |s| {
                s.bump(&leaf)?;
                s.break_build(&leaf)
            })
            .unwrap();
        } else {
            h.change(&branch, "bump", |s| s.bump(&leaf).map(|_| ()))
                .unwrap();
        }
    }
    h.start_server().await.unwrap();
    for i in 0..8 {
        ids.push(
            h.submit(&format!("c{i}"), &format!("change {i}"), "normal")
                .await
                .unwrap()["id"]
                .as_u64()
                .unwrap(),
        );
    }
    let done = h.wait_final(&ids, LONG).await.unwrap();
    for (i, c) in done.iter().enumerate() {
        let want = if i == 5 { "rejected" } else { "merged" };
        assert_eq!(state(c), want, "change {i}: {c}");
    }
    let reason = done[5]["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("job {} (x86_64-linux)", leaves[5])),
        "{reason}"
    );
    assert!(
        reason.contains(".drv") && reason.contains("FIXTURE-BUILD-FAILURE"),
        "names drv and log tail: {reason}"
    );
    let cands = h
        .client
        .ok(Method::GET, "/api/v1/repos/pkgs/candidates", None)
        .await
        .unwrap();
    let first = &cands[0];
    assert_eq!(
        first["changes"].as_array().unwrap().len(),
        8,
        "one batch of eight: {cands}"
    );
    let extra = first["extra_builds"].as_u64().unwrap();
    assert!(
        extra <= 1,
        "attribution cost {extra} builds beyond the batch's own: {cands}"
    );
    // The seven innocents landed together, on a commit that was tested.
    let master = h.upstream_head("master").unwrap();
    assert_eq!(done[0]["landed_commit"].as_str().unwrap(), master);
}

#[tokio::test(flavor = "multi_thread")]
async fn bisection_when_two_changes_alter_the_failing_job() {
    let dir = tempfile::tempdir().unwrap();
    let opts = BranchOpts {
        batch_delay_secs: 60,
        batch_max: 4,
        ..BranchOpts::default()
    };
    let mut h = harness(dir.path(), 120, 11, opts);
    let (p, l) = leaf_with_private_dep(&h);
    let others: Vec<String> = h
        .set
        .healthy_leaves()
        .into_iter()
        .filter(|x| *x != p)
        .take(2)
        .collect();
    h.change("dep", "bump the dependency", |s| s.bump(&l).map(|_| ()))
        .unwrap();
    h.change("o1", "good", |s| s.bump(&others[0]).map(|_| ()))
        .unwrap();
    h.change("break", "break the leaf", |s| s.break_build(&p))
        .unwrap();
    h.change("o2", "good", |s| s.bump(&others[1]).map(|_| ()))
        .unwrap();
    h.start_server().await.unwrap();
    let mut ids = vec![];
    for b in ["dep", "o1", "break", "o2"] {
        ids.push(
            h.submit(b, b, "normal").await.unwrap()["id"]
                .as_u64()
                .unwrap(),
        );
    }
    let done = h.wait_final(&ids, LONG).await.unwrap();
    let states: Vec<&str> = done.iter().map(state).collect();
    assert_eq!(
        states,
        ["merged", "merged", "rejected", "merged"],
        "{done:?}"
    );
    let reason = done[2]["reason"].as_str().unwrap();
    assert!(reason.contains("prefixes"), "found by bisection: {reason}");
    let cands = h
        .client
        .ok(Method::GET, "/api/v1/repos/pkgs/candidates", None)
        .await
        .unwrap();
    let extra = cands[0]["extra_builds"].as_u64().unwrap();
    assert!(extra <= 2, "bisection spent {extra} builds: {cands}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_breaking_the_whole_jobset_is_found_by_evaluating_each_alone() {
    let dir = tempfile::tempdir().unwrap();
    let opts = BranchOpts {
        batch_delay_secs: 60,
        batch_max: 3,
        ..BranchOpts::default()
    };
    let mut h = harness(dir.path(), 40, 3, opts);
    let leaves = h.set.healthy_leaves();
    let (a, b) = (leaves[0].clone(), leaves[1].clone());
    h.change("a", "good", |s| s.bump(&a).map(|_| ())).unwrap();
    h.change("syntax", "breaks release.nix", |s| {
        let p = s.release_nix();
        let text = std::fs::read_to_string(&p)?;
        std::fs::write(&p, text.replacen("in\npkgs", "in\npkgs +", 1))
    })
    .unwrap();
    h.change("b", "good", |s| s.bump(&b).map(|_| ())).unwrap();
    h.start_server().await.unwrap();
    let mut ids = vec![];
    for br in ["a", "syntax", "b"] {
        ids.push(
            h.submit(br, br, "normal").await.unwrap()["id"]
                .as_u64()
                .unwrap(),
        );
    }
    let done = h.wait_final(&ids, LONG).await.unwrap();
    let states: Vec<&str> = done.iter().map(state).collect();
    assert_eq!(states, ["merged", "rejected", "merged"], "{done:?}");
    assert!(
        done[1]["reason"]
            .as_str()
            .unwrap()
            .contains("jobset fails to evaluate"),
        "{}",
        done[1]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn force_push_is_tested_at_the_new_head_and_target_moves_are_rebased() {
    let dir = tempfile::tempdir().unwrap();
    let opts = BranchOpts {
        batch_delay_secs: 3,
        ..BranchOpts::default()
    };
    let mut h = harness(dir.path(), 40, 5, opts);
    let leaves = h.set.healthy_leaves();
    let (a, b, c) = (leaves[0].clone(), leaves[1].clone(), leaves[2].clone());
    let old = h
        .change("fp", "first version", |s| s.bump(&a).map(|_| ()))
        .unwrap();
    // Make the candidate's build slow so the target can move while it is tested. A version
    // never built on this machine: an output already valid in the store from an earlier run
    // would make the build instant and the "building" phase too short to observe.
    h.change("slow", "slow build", |s| {
        s.set_version(&b, &never_built_version())?;
        s.set_sleep(&b, 4.0)
    })
    .unwrap();
    h.start_server().await.unwrap();
    let id = h.submit("fp", "force-pushed", "normal").await.unwrap()["id"]
        .as_u64()
        .unwrap();
    let new = h
        .change("fp", "second version", |s| {
            s.bump(&a)?;
            s.bump(&a).map(|_| ())
        })
        .unwrap();
    assert_ne!(old, new);
    let slow = h.submit("slow", "slow", "normal").await.unwrap()["id"]
        .as_u64()
        .unwrap();
    // Wait until the candidate is building, then push to master behind the queue's back.
    let t = std::time::Instant::now();
    loop {
        let q = h
            .client
            .ok(Method::GET, "/api/v1/repos/pkgs/queue", None)
            .await
            .unwrap();
        if q["branches"][0]["testing"][0]["phase"] == "building" {
            break;
        }
        assert!(t.elapsed() < LONG, "never started building: {q}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let direct = h
        .push_direct("direct push", |s| s.bump(&c).map(|_| ()))
        .unwrap();
    let done = h.wait_final(&[id, slow], LONG).await.unwrap();
    assert_eq!(state(&done[0]), "merged", "{}", done[0]);
    assert_eq!(state(&done[1]), "merged", "{}", done[1]);
    assert_eq!(
        done[0]["head"].as_str().unwrap(),
        new,
        "tested at the new head"
    );
    assert_eq!(done[0]["submitted_head"].as_str().unwrap(), old);
    let master = h.upstream_head("master").unwrap();
    let parents = git(&h.upstream, &["log", "--format=%P", &master]).unwrap();
    assert!(
        parents.contains(&new),
        "the new head is in master's history"
    );
    assert!(!parents.contains(&old), "the old head is not");
    let ancestry = git(
        &h.upstream,
        &["merge-base", "--is-ancestor", &direct, &master],
    );
    assert!(
        ancestry.is_ok(),
        "the direct push was kept: the candidate was rebased, not forced"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_change_never_lands() {
    let dir = tempfile::tempdir().unwrap();
    let opts = BranchOpts {
        batch_delay_secs: 2,
        ..BranchOpts::default()
    };
    let mut h = harness(dir.path(), 40, 9, opts);
    let leaves = h.set.healthy_leaves();
    let (a, b) = (leaves[0].clone(), leaves[1].clone());
    h.change("a", "slow", |s| {
        s.set_version(&a, &never_built_version())?;
        s.set_sleep(&a, 3.0)
    })
    .unwrap();
    h.change("b", "good", |s| s.bump(&b).map(|_| ())).unwrap();
    h.start_server().await.unwrap();
    let ia = h.submit("a", "a", "normal").await.unwrap()["id"]
        .as_u64()
        .unwrap();
    let ib = h.submit("b", "b", "normal").await.unwrap()["id"]
        .as_u64()
        .unwrap();
    let t = std::time::Instant::now();
    while state(&h.change_status(ia).await.unwrap()) != "testing" {
        assert!(t.elapsed() < LONG);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let v = h
        .client
        .ok(
            Method::DELETE,
            &format!("/api/v1/repos/pkgs/changes/{ia}"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(state(&v), "cancelled");
    let done = h.wait_final(&[ia, ib], LONG).await.unwrap();
    assert_eq!(state(&done[0]), "cancelled");
    assert_eq!(state(&done[1]), "merged");
    let a_head = git(&h.work, &["rev-parse", "a"]).unwrap();
    let master = h.upstream_head("master").unwrap();
    assert!(
        git(
            &h.upstream,
            &["merge-base", "--is-ancestor", &a_head, &master]
        )
        .is_err(),
        "cancelled change is not on master"
    );
}

/// The case that used to reject innocents: a batch of eight with two culprits, one of
/// them a new package whose build fails, and a README-only change.
#[tokio::test(flavor = "multi_thread")]
async fn two_culprits_one_a_new_failing_package_reject_only_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let opts = BranchOpts {
        batch_delay_secs: 60,
        ..BranchOpts::default()
    };
    let mut h = harness(dir.path(), 120, 9, opts);
    let leaves = h.set.healthy_leaves();
    let (newdep, broken_leaf) = (leaves[6].clone(), leaves[5].clone());
    // 0..4: leaf bumps; 5: breaks its leaf's build; 6: README only; 7: new failing package.
    for (i, leaf) in leaves.iter().take(5).enumerate() {
        let leaf = leaf.clone();
        h.change(&format!("c{i}"), "bump", |s| s.bump(&leaf).map(|_| ()))
            .unwrap();
    }
    h.change("c5", "breaks", |s| {
        s.bump(&broken_leaf)?;
        s.break_build(&broken_leaf)
    })
    .unwrap();
    h.change("c6", "readme", |s| {
        std::fs::write(s.dir.join("README.md"), "Only words.\n")
    })
    .unwrap();
    h.change("c7", "newtool: init", |s| {
        s.add_package("newtool", &[&newdep])?;
        s.break_build("newtool")
    })
    .unwrap();
    h.start_server().await.unwrap();
    let mut ids = vec![];
    for i in 0..8 {
        let v = h
            .submit(&format!("c{i}"), &format!("change {i}"), "normal")
            .await
            .unwrap();
        ids.push(v["id"].as_u64().unwrap());
    }
    let done = h.wait_final(&ids, LONG).await.unwrap();
    for (i, c) in done.iter().enumerate() {
        let want = if i == 5 || i == 7 {
            "rejected"
        } else {
            "merged"
        };
        assert_eq!(state(c), want, "change {i}: {c}");
    }
    let r5 = done[5]["reason"].as_str().unwrap();
    assert!(
        r5.contains(&format!("job {broken_leaf} (x86_64-linux)")) && !r5.contains("newtool"),
        "the build break is blamed for its own job only: {r5}"
    );
    let r7 = done[7]["reason"].as_str().unwrap();
    assert!(
        r7.contains("job newtool (x86_64-linux)") && !r7.contains(&broken_leaf),
        "the new package is blamed for its own job only: {r7}"
    );
    let cands = h
        .client
        .ok(Method::GET, "/api/v1/repos/pkgs/candidates", None)
        .await
        .unwrap();
    let cands = cands.as_array().unwrap();
    assert_eq!(
        cands[0]["changes"].as_array().unwrap().len(),
        8,
        "{cands:?}"
    );
    // Both culprits found on the first candidate's evidence; the six innocents land in
    // its follow-up.
    let landed = done[0]["landed_commit"].as_str().unwrap();
    for i in [1, 2, 3, 4, 6] {
        assert_eq!(
            done[i]["landed_commit"].as_str().unwrap(),
            landed,
            "change {i}"
        );
    }
    let extra: u64 = cands
        .iter()
        .map(|c| c["extra_builds"].as_u64().unwrap())
        .sum();
    assert!(extra <= 2, "attribution cost {extra} builds: {cands:?}");
}
