//! `mergequeue bench load`: the coordinator under an operator's load, against the real
//! binary (real git upstream, real SQLite file, real nix for the candidates it tests).
//!
//! 1. `queued` changes are submitted over the API by `clients` concurrent clients, as fast
//!    as it answers: submissions per second, the server's RSS.
//! 2. With them queued: p50/p99 of API reads (a queue page, a change, `/metrics`) while
//!    submissions go on.
//! 3. `through` more changes pass through (submitted, then cancelled, so they are final):
//!    the server's RSS and the database's size after each tenth, with a retention that
//!    deletes final changes, events and attempts at once (`changes_days = 0` and so on,
//!    pruning every 2 s).

use std::time::{Duration, Instant};

use hyper::Method;

use crate::tools::harness::{BranchOpts, Harness};

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn db_mb(h: &Harness) -> f64 {
    ["mergequeue.sqlite", "mergequeue.sqlite-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(h.state_dir.join(f)).ok())
        .map(|m| m.len() as f64 / 1_048_576.0)
        .sum()
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Submits `n` changes from `clients` concurrent clients; returns their ids and the rate.
async fn submit_many(h: &Harness, n: usize, clients: usize) -> anyhow::Result<(Vec<u64>, f64)> {
    let t = Instant::now();
    let per = n.div_ceil(clients);
    let mut tasks = vec![];
    for c in 0..clients {
        let client = crate::shell::client::ApiClient::new(&h.listen, Some(h.token.clone()));
        let count = per.min(n.saturating_sub(c * per));
        tasks.push(tokio::spawn(async move {
            let mut ids = vec![];
            for i in 0..count {
                let body = serde_json::json!({"ref": "load", "target": "master", "title": format!("load {c}/{i}")});
                let v = client
                    .ok(Method::POST, "/api/v1/repos/pkgs/changes", Some(body))
                    .await?;
                ids.push(v["id"].as_u64().unwrap_or(0));
            }
            anyhow::Ok(ids)
        }));
    }
    let mut ids = vec![];
    for t in tasks {
        ids.extend(t.await??);
    }
    Ok((ids, n as f64 / t.elapsed().as_secs_f64()))
}

pub async fn run(queued: usize, through: usize, clients: usize) -> anyhow::Result<String> {
    crate::tools::prereq::ensure(&["nix-instantiate", "nix-store", "git"])?;
    let dir = tempfile::tempdir()?;
    let spec = crate::tools::fixture::Spec {
        packages: 4,
        build_secs: (0.0, 0.0),
        ..crate::tools::fixture::Spec::default()
    };
    let opts = BranchOpts {
        extra_toml: "[retention]\nchanges_days = 0\nevents_days = 0\nattempts_days = 0\nprune_interval_secs = 2\n"
            .into(),
        ..BranchOpts::default()
    };
    let mut h = Harness::create(dir.path(), &spec, &opts, &std::env::current_exe()?)?;
    h.change("load", "the change every load submission names", |_| Ok(()))?;
    h.start_server().await?;
    let pid = h
        .server_pid()
        .ok_or_else(|| anyhow::anyhow!("server not running"))?;
    let mut out = String::new();

    // 1. Fill the queue.
    let (ids, rate) = submit_many(&h, queued, clients).await?;
    out.push_str(&format!(
        "{queued} submissions from {clients} clients: {rate:.0} per second; server RSS {:.1} MB\n",
        rss_mb(pid)
    ));

    // 2. Reads with the queue full, while another client keeps submitting.
    let reads = [
        "/api/v1/repos/pkgs/queue?limit=50".to_string(),
        // The default page (100) and the largest (1000).
        "/api/v1/repos/pkgs/queue".to_string(),
        "/api/v1/repos/pkgs/queue?limit=1000".to_string(),
        format!("/api/v1/repos/pkgs/changes/{}", ids[ids.len() / 2]),
        "/api/v1/events".to_string(),
        "/metrics".to_string(),
        "/".to_string(),
    ];
    let bg = {
        let listen = h.listen.clone();
        let token = h.token.clone();
        tokio::spawn(async move {
            let c = crate::shell::client::ApiClient::new(&listen, Some(token));
            let t = Instant::now();
            for i in 0..400 {
                let body = serde_json::json!({"ref": "load", "target": "master", "title": format!("bg {i}")});
                let _ = c
                    .ok(Method::POST, "/api/v1/repos/pkgs/changes", Some(body))
                    .await;
            }
            400.0 / t.elapsed().as_secs_f64()
        })
    };
    let reader = crate::shell::client::ApiClient::new(&h.listen, None);
    for path in &reads {
        let mut ms = vec![];
        for _ in 0..300 {
            let t = Instant::now();
            reader.ok(Method::GET, path, None).await?;
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        out.push_str(&format!(
            "GET {path} with {queued} queued: p50 {:.1} ms, p99 {:.1} ms\n",
            pct(&mut ms, 0.5),
            pct(&mut ms, 0.99)
        ));
    }
    let bg_rate = bg.await?;
    out.push_str(&format!(
        "one client submitting while those reads ran: {bg_rate:.0} submissions per second\n"
    ));
    out.push_str(&format!(
        "server RSS with {queued} queued: {:.1} MB\n",
        rss_mb(pid)
    ));

    // 3. Changes passing through: submitted, then cancelled (final at once).
    let admin = crate::shell::client::ApiClient::new(&h.listen, Some(h.token.clone()));
    let step = (through / 10).max(1);
    let mut done = 0;
    while done < through {
        let (batch, _) = submit_many(&h, step, clients).await?;
        for id in batch {
            let _ = admin
                .call(
                    Method::DELETE,
                    &format!("/api/v1/repos/pkgs/changes/{id}"),
                    None,
                )
                .await?;
        }
        done += step;
        tokio::time::sleep(Duration::from_secs(3)).await; // one prune at least
        out.push_str(&format!(
            "{done} changes passed through: server RSS {:.1} MB, database {:.1} MB\n",
            rss_mb(pid),
            db_mb(&h)
        ));
    }
    h.stop_server(false)?;
    Ok(out)
}
