//! Untrusted code stays in its box, end to end: a change whose jobset reads the service's
//! API token file and a credential beside it during evaluation is rejected for failing to
//! evaluate, and the secrets appear in no API answer, no web page and no log.

mod common;

use common::{harness, state, LONG};
use hyper::Method;
use mergequeue::tools::harness::BranchOpts;

#[tokio::test(flavor = "multi_thread")]
async fn a_change_that_reads_secrets_during_evaluation_fails_and_leaks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path(), 12, 17, BranchOpts::default());
    let secret = format!("db-password-{}", fastrand::u64(..));
    let cred_dir = h.root.join("credentials");
    std::fs::create_dir_all(&cred_dir).unwrap();
    let cred = cred_dir.join("database");
    std::fs::write(&cred, &secret).unwrap();
    let token_file = h.root.join("api-token");
    // A package in the closure of the required job `tested`: its version is the secrets.
    let victim = h.set.transitive_deps("tested")[0].clone();
    let file = h.set.file(&victim);
    let leak = format!(
        "builtins.readFile {:?} + builtins.readFile {:?}",
        token_file.display().to_string(),
        cred.display().to_string()
    );
    h.change("leak", "read the secrets", |s| {
        let text = std::fs::read_to_string(&file)?;
        let text: String = text
            .lines()
            .map(|l| {
                if l.starts_with("  version = ") {
                    format!("  version = {leak};")
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&file, text + "\n")?;
        let _ = s;
        Ok(())
    })
    .unwrap();
    h.start_server().await.unwrap();
    let id = h
        .submit("leak", "read the secrets", "normal")
        .await
        .unwrap()["id"]
        .as_u64()
        .unwrap();
    let done = h.wait_final(&[id], LONG).await.unwrap();
    let c = &done[0];
    assert_eq!(state(c), "rejected", "{c}");
    let reason = c["reason"].to_string();
    eprintln!("rejected: {reason}");
    assert!(
        reason.contains("restricted mode") && reason.contains(&victim),
        "the reason names the forbidden read and the attribute: {reason}"
    );

    // Every answer a reader can get, and the log.
    let mut seen = String::new();
    for path in [
        format!("/api/v1/repos/pkgs/changes/{id}"),
        "/api/v1/repos/pkgs/queue".into(),
        "/api/v1/repos/pkgs/candidates".into(),
        "/api/v1/events".into(),
        "/metrics".into(),
        format!("/repos/pkgs/changes/{id}"),
        "/".into(),
    ] {
        let (_, v) = h.client.call(Method::GET, &path, None).await.unwrap();
        seen.push_str(&v.to_string());
    }
    let (_, list) = h
        .client
        .call(Method::GET, "/api/v1/repos/pkgs/candidates", None)
        .await
        .unwrap();
    let ids: Vec<u64> = list["candidates"]
        .as_array()
        .or(list.as_array())
        .into_iter()
        .flatten()
        .filter_map(|k| k["id"].as_u64())
        .collect();
    assert!(
        !ids.is_empty(),
        "the change was tested in a candidate: {list}"
    );
    for cand in ids {
        let path = format!("/api/v1/repos/pkgs/candidates/{cand}");
        let (_, v) = h.client.call(Method::GET, &path, None).await.unwrap();
        seen.push_str(&v.to_string());
    }
    h.stop_server(false).unwrap();
    seen.push_str(&std::fs::read_to_string(h.root.join("server.log")).unwrap());
    for (what, s) in [("credential", &secret), ("API token", &h.token)] {
        assert!(!seen.contains(s.as_str()), "the {what} leaked");
    }
}
