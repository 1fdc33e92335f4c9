//! `mergequeue bench ui`: renders the queue page from a queue of N changes, shaped like
//! the API's `/queue` and `/candidates` answers, and reports the median time.

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::{json, Value};

use crate::shell::api::ui::pages::queue::{queue, Paging, QueueView};

/// The `/queue` JSON with `n` queued changes on master, one candidate in flight, and the
/// `/candidates` JSON with `done` finished candidates before it.
pub fn synthetic(n: usize, done: usize, now_ms: i64) -> (Value, Value) {
    let change = |id: usize, state: &str| {
        let priority = ["urgent", "high", "normal", "low"][id % 4];
        json!({
            "id": id, "repo": "pkgs", "target": "master", "ref": format!("refs/heads/pr-{id}"),
            "head": format!("{id:040x}"), "submitted_head": format!("{id:040x}"),
            "title": format!("python3Packages.pkg{id}: 1.{id} -> 1.{} <update>", id + 1),
            "author": format!("contributor-{}", id % 97), "priority": priority,
            "state": state, "reason": null, "landed_commit": null,
            "submitted_at": now_ms - (n - id.min(n)) as i64 * 1000, "updated_at": now_ms, "candidate": null,
        })
    };
    let queued: Vec<Value> = (1..=n).map(|i| change(i, "queued")).collect();
    let cand = |id: usize, phase: &str, finished: Option<i64>| {
        json!({
            "id": id, "branch": "master", "changes": [n + 2 * id, n + 2 * id + 1],
            "base": format!("{:040x}", id), "commit": format!("{:040x}", id + 1), "phase": phase,
            "follow_up_of": null, "builds": 12, "extra_builds": 1,
            "created_at": now_ms - 600_000, "last_build_at": now_ms - 60_000, "finished_at": finished,
            "summary": finished.map(|_| format!("landed {:040x}", id + 1)),
        })
    };
    let testing = cand(done + 1, "building", None);
    let mut all: Vec<Value> = (1..=done)
        .map(|i| cand(i, "done", Some(now_ms - 1000)))
        .collect();
    all.push(testing.clone());
    let q = json!({"repo": "pkgs", "branches": [{"branch": "master", "testing": [testing], "queued": queued}]});
    (q, Value::Array(all))
}

fn median(mut times: Vec<f64>) -> (f64, f64, f64) {
    times.sort_by(|a, b| a.total_cmp(b));
    (times[times.len() / 2], times[0], times[times.len() - 1])
}

/// From the state to the page, as a request for `/repos/pkgs` does it: a real core
/// holding `n` submitted changes (one batch in flight), the driver's answers to the
/// `QueuePage` and `Candidates` queries, then the rendering. Nothing is built or fetched.
fn from_state(n: usize, runs: usize) -> anyhow::Result<String> {
    use crate::core::change::Priority;
    use crate::core::{Core, Submission};
    use crate::shell::status::{Query, Reply};
    let dir = tempfile::tempdir()?;
    let toml = format!(
        "state_dir = {:?}\n[[repos]]\nname = \"pkgs\"\nurl = \"file:///nonexistent\"\njobset = \"release.nix\"\n\
         [[repos.branches]]\nname = \"master\"\n",
        dir.path().display().to_string()
    );
    let config = crate::shell::config::Config::parse(&toml, "bench.toml")?;
    let mut core = Core::new(config.core_config());
    let now = 1_800_000_000_000;
    for i in 0..n {
        let sub = Submission {
            repo: "pkgs".into(),
            target: "master".into(),
            git_ref: format!("refs/heads/pr-{i}"),
            head: format!("{i:040x}"),
            title: format!("python3Packages.pkg{i}: 1.{i} -> 1.{}", i + 1),
            author: format!("contributor-{}", i % 97),
            priority: [
                Priority::High,
                Priority::Normal,
                Priority::Normal,
                Priority::Low,
            ][i % 4],
            pr: None,
            approver: None,
        };
        core.submit(sub, now + i as i64)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        // The commands would go to git and SQLite; here they are dropped.
        let _ = core.take_commands();
    }
    let ask = |q| match crate::shell::status::answer(&config, &core, q, &Default::default(), now) {
        Some(Reply::Json(v)) => v,
        _ => Value::Null,
    };
    let mut times = vec![];
    let mut queued = 0;
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        let q = ask(Query::QueuePage {
            repo: "pkgs".into(),
            branch: None,
            offset: 0,
            limit: crate::shell::api::ui::PER_PAGE,
        });
        let candidates = ask(Query::Candidates {
            repo: "pkgs".into(),
        });
        let none = BTreeMap::new();
        let view = QueueView {
            queue: &q,
            candidates: &candidates,
            changes: &none,
            details: &none,
            pulls: None,
        };
        let paging = Paging {
            branch: None,
            page: 1,
        };
        let html = queue(now, &view, &paging).into_string();
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        queued = q["branches"][0]["queued_total"].as_u64().unwrap_or(0);
        assert!(html.contains("Queued ("));
    }
    let (med, min, max) = median(times);
    Ok(format!(
        "from the state ({n} changes submitted, {queued} queued, one batch in flight): query answers and \
         rendering, median {med:.1} ms (min {min:.1}, max {max:.1}, {runs} runs)"
    ))
}

/// Renders the first page `runs` times, then the same from a core's state; returns the
/// report.
pub fn run(n: usize, runs: usize) -> anyhow::Result<String> {
    Ok(format!(
        "{}\n{}",
        render_only(n, runs),
        from_state(n, runs)?
    ))
}

fn render_only(n: usize, runs: usize) -> String {
    let now_ms = 1_800_000_000_000;
    let (q, candidates) = synthetic(n, 200, now_ms);
    let changes = BTreeMap::new();
    let details = BTreeMap::new();
    let view = QueueView {
        queue: &q,
        candidates: &candidates,
        changes: &changes,
        details: &details,
        pulls: None,
    };
    let paging = Paging {
        branch: None,
        page: 1,
    };
    let mut times = vec![];
    let mut bytes = 0;
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        let html = queue(now_ms, &view, &paging).into_string();
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        bytes = html.len();
    }
    let runs = times.len();
    let (med, min, max) = median(times);
    format!(
        "rendering only: queue page with {n} queued changes (page 1 of {}, {} rows) and 200 \
         finished candidates: median {med:.3} ms (min {min:.3}, max {max:.3}, {runs} runs), \
         {bytes} bytes of HTML",
        n.div_ceil(crate::shell::api::ui::PER_PAGE),
        crate::shell::api::ui::PER_PAGE.min(n),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_queue_page_of_ten_thousand_changes_is_paginated() {
        let (q, c) = super::synthetic(10_000, 5, 1_800_000_000_000);
        let none = Default::default();
        let view = super::QueueView {
            queue: &q,
            candidates: &c,
            changes: &none,
            details: &none,
            pulls: None,
        };
        let page = super::Paging {
            branch: Some("master".into()),
            page: 200,
        };
        let html = super::queue(1_800_000_000_000, &view, &page).into_string();
        assert!(html.contains("Page 200 of 200"), "{html}");
        assert!(html.contains("#10000"));
        assert!(!html.contains("#9950<"), "only the last page's rows");
        assert!(html.contains("&lt;update&gt;"), "titles are escaped");
    }
}
