//! A candidate's newly-broken report (`GET /api/v1/repos/{repo}/candidates/{id}/report`)
//! with the real binary, git and nix: a first change touches a package that already fails
//! (it lands: still failing), a second fixes that package and breaks another one that
//! others depend on (rejected: newly breaking). The second report names the direct
//! failure, its dependents as dependency failures with the direct one as their root, the
//! fixed package as newly succeeding, everything grouped under the maintainers who can
//! act, and the rebuild counts in Nixpkgs' buckets; `…/why` says the dependents rebuild
//! because the broken package changed.

mod common;

use common::{harness, state, LONG};
use mergequeue::tools::harness::{BranchOpts, Harness};
use serde_json::Value;

async fn get(h: &Harness, path: &str) -> (u16, Value) {
    let (status, v) = h.client.call(hyper::Method::GET, path, None).await.unwrap();
    (status.as_u16(), v)
}

fn attrs(v: &Value) -> Vec<String> {
    let mut a: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["attr"].as_str().unwrap().to_string())
        .collect();
    a.sort();
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_names_direct_failures_their_dependents_and_fixes() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path(), 20, 21, BranchOpts::default());
    let gated = h.set.transitive_deps("tested");
    let free = |p: &String| !gated.contains(p) && p != "tested";
    // Q: already failing on master. P: healthy, with dependents, none of them broken.
    let q = h
        .set
        .broken
        .iter()
        .find(|p| free(p))
        .cloned()
        .expect("a broken package outside the aggregate");
    // P and its dependents: new packages outside the aggregate, P with maintainers.
    let (p, dependents) = (
        "rpt-lib".to_string(),
        vec!["rpt-app".to_string(), "rpt-tool".to_string()],
    );
    let p_maintainers = vec!["lib-owner".to_string(), "co-owner".to_string()];

    h.change("touch-q", "touch q, add P and its dependents", |s| {
        s.bump(&q)?;
        s.add_package("rpt-lib", &[])?;
        s.set_maintainers("rpt-lib", &["lib-owner", "co-owner"])?;
        s.add_package("rpt-app", &["rpt-lib"])?;
        s.add_package("rpt-tool", &["rpt-app"])
    })
    .unwrap();
    h.start_server().await.unwrap();
    h.submit("touch-q", "touch q", "normal").await.unwrap();
    let done = h.wait_final(&[1], LONG).await.unwrap();
    assert_eq!(state(&done[0]), "merged", "{}", done[0]);
    // On top of #1 (the harness branches off master as it is).
    h.change("fix-q-break-p", "fix q, break p", |s| {
        s.fix(&q)?;
        s.break_build(&p)
    })
    .unwrap();
    h.submit("fix-q-break-p", "fix q, break p", "normal")
        .await
        .unwrap();
    let done = h.wait_final(&[2], LONG).await.unwrap();
    assert_eq!(state(&done[0]), "rejected", "{}", done[0]);
    let cand = done[0]["candidate"].as_u64().expect("candidate of #2");

    let (status, r) = get(&h, &format!("/api/v1/repos/pkgs/candidates/{cand}/report")).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["evaluated"], true, "{r}");
    // The direct failure and the dependency failures, each dependent naming P as its
    // root. Which dependents were built before the candidate was rejected (and the rest
    // cancelled) depends on timing, so only P is certain: built, or named as the root of
    // a dependent's failure.
    let want = attrs(&r["newly_failing"]);
    assert!(want.contains(&p), "{p} missing: {r:#}");
    let mut all = dependents.clone();
    all.push(p.clone());
    assert!(want.iter().all(|a| all.contains(a)), "{r:#}");
    for row in r["newly_failing"].as_array().unwrap() {
        if row["attr"] == p.as_str() {
            assert_eq!(row["class"], "failed", "{row}");
            assert!(row["root"].is_null(), "{row}");
        } else {
            assert_eq!(row["class"], "dependency-failed", "{row}");
            assert_eq!(row["root"]["attr"], p.as_str(), "{row}");
            assert!(row["drv"].as_str().unwrap().ends_with(".drv"), "{row}");
        }
    }
    // Q built on the base (it failed in #1's candidate) and builds now.
    assert_eq!(attrs(&r["newly_succeeding"]), vec![q.clone()], "{r:#}");
    assert_eq!(r["newly_succeeding"][0]["class"], "success");
    // Everything newly failing is P's maintainers' to act on.
    for m in &p_maintainers {
        let mut theirs: Vec<String> = r["by_maintainer"][m]
            .as_array()
            .unwrap_or_else(|| panic!("{m} missing: {r:#}"))
            .iter()
            .map(|x| x.as_str().unwrap().split(' ').next().unwrap().to_string())
            .collect();
        theirs.sort();
        assert_eq!(theirs, want, "{m}: {r:#}");
    }
    // Rebuilds: P, Q and P's dependents changed (and the aggregate, if it holds them).
    let rebuilds = &r["rebuilds"]["x86_64-linux"];
    let count = rebuilds["count"].as_u64().unwrap() as usize;
    assert!(count > all.len(), "{r:#}");
    assert_eq!(
        rebuilds["bucket"],
        mergequeue::core::report::bucket(count),
        "{r:#}"
    );
    assert_eq!(r["counts"]["newly_failing"], want.len());

    // Why things rebuild: P's dependents because P changed, P and Q on their own.
    let (status, w) = get(&h, &format!("/api/v1/repos/pkgs/candidates/{cand}/why")).await;
    assert_eq!(status, 200, "{w}");
    assert_eq!(w["complete"], true, "{w:#}");
    let causes = |attr: &str| -> Vec<(String, String)> {
        let job = w["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["attr"] == attr)
            .unwrap_or_else(|| panic!("{attr} not explained: {w:#}"));
        job["causes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let kind = c["kind"].as_str().unwrap().to_string();
                (kind, c["attr"].as_str().unwrap_or("").to_string())
            })
            .collect()
    };
    let own = |a: &str| vec![("derivation".to_string(), a.to_string())];
    assert_eq!(causes(&p), own(&p), "{w:#}");
    assert_eq!(causes(&q), own(&q), "{w:#}");
    for d in &dependents {
        assert_eq!(causes(d), own(&p), "{d}: {w:#}");
    }
    // P rebuilds the most: itself and both dependents (and the aggregate, if it holds them).
    assert_eq!(w["top"][0]["attr"], p.as_str(), "{w:#}");
    assert!(w["top"][0]["jobs"].as_u64().unwrap() >= 3, "{w:#}");
    assert_eq!(w["changed_total"], w["explained"], "{w:#}");

    // The candidate page shows the report, escaped, with its JSON twins.
    let get_page = format!(
        "GET /repos/pkgs/candidates/{cand} HTTP/1.1\r\nHost: mq\r\nConnection: close\r\n\r\n"
    );
    let (status, page) = common::raw(&h.listen, get_page.as_bytes()).await;
    assert_eq!(status, 200, "{page}");
    for want in [
        "Newly-broken report",
        "lib-owner",
        &p,
        &format!("/api/v1/repos/pkgs/candidates/{cand}/report"),
        &format!("/api/v1/repos/pkgs/candidates/{cand}/why"),
    ] {
        assert!(page.contains(want), "{want} not on the page: {page}");
    }

    // #1's report: Q fails on both sides, nothing newly failing.
    let first = done_candidate(&h, 1).await;
    let (_, r1) = get(&h, &format!("/api/v1/repos/pkgs/candidates/{first}/report")).await;
    assert_eq!(attrs(&r1["newly_failing"]), Vec::<String>::new(), "{r1:#}");
    assert!(attrs(&r1["still_failing"]).contains(&q), "{r1:#}");

    // Bad input changes nothing and says what is wrong.
    let (status, e) = get(&h, "/api/v1/repos/pkgs/candidates/x/report").await;
    assert_eq!(status, 400, "{e}");
    let (status, _) = get(&h, "/api/v1/repos/pkgs/candidates/999/report").await;
    assert_eq!(status, 404);
    let (status, e) = get(&h, "/api/v1/repos/pkgs/candidates/x/why").await;
    assert_eq!(status, 400, "{e}");
    let (status, _) = get(&h, "/api/v1/repos/pkgs/candidates/999/why").await;
    assert_eq!(status, 404);
    h.stop_server(false).unwrap();
}

async fn done_candidate(h: &Harness, change: u64) -> u64 {
    let c = h.change_status(change).await.unwrap();
    c["candidate"].as_u64().unwrap_or_else(|| panic!("{c}"))
}
