//! The overview (`/`) and a repository's queue page (`/repos/{repo}`).

use std::collections::BTreeMap;

use maud::{html, Markup};
use serde_json::Value;

use crate::shell::api::ui::layout::{badge, frame, list, s, seg, short, span, u, when, Page};
use crate::shell::api::ui::PER_PAGE;

/// `/`: every repository's branches, the channels and the builders at a glance.
pub fn overview(now_ms: i64, queues: &[Value], channels: &Value, builders: &Value) -> Markup {
    let now_s = now_ms / 1000;
    let body = html! {
        section {
            h2 { "Repositories" }
            p.muted {
                "JSON: "
                @for q in queues { a href={ "/api/v1/repos/" (seg(s(q, "repo"))) "/queue" } { (s(q, "repo")) " queue" } " " }
            }
            table {
                thead { tr { th { "repository" } th { "branch" } th { "testing" } th { "queued" } } }
                tbody {
                    @for q in queues {
                        @let repo = s(q, "repo");
                        @for b in list(q, "branches") {
                            tr {
                                td { a href={ "/repos/" (seg(repo)) } { (repo) } }
                                td { (s(b, "branch")) }
                                td {
                                    @for k in list(b, "testing") {
                                        a href={ "/repos/" (seg(repo)) "/candidates/" (u(k, "id").unwrap_or(0)) } {
                                            "candidate " (u(k, "id").unwrap_or(0))
                                        }
                                        " " (badge(s(k, "phase"))) " "
                                    }
                                    @if list(b, "testing").is_empty() { span.muted { "idle" } }
                                }
                                td.num { (u(b, "queued_total").unwrap_or(0)) }
                            }
                        }
                    }
                }
            }
        }
        section {
            h2 { a href="/channels" { "Channels" } }
            p.muted { "JSON: " a href="/api/v1/channels" { "channels" } }
            @if list_of(channels).is_empty() { p.muted { "No channels are configured." } }
            @else {
                table {
                    thead { tr { th { "channel" } th { "revision" } th { "age" } th { "state" } } }
                    tbody {
                        @for c in list_of(channels) {
                            tr {
                                td { a href={ "/channels/" (seg(s(c, "name"))) } { (s(c, "name")) } }
                                td { code { (short(s(c, "rev"))) } }
                                td { @if let Some(a) = c["age_secs"].as_i64() { (span(a)) } }
                                td { (channel_state(c)) }
                            }
                        }
                    }
                }
            }
        }
        section {
            h2 { a href="/builders" { "Builders" } }
            p.muted { "JSON: " a href="/api/v1/builders" { "builders" } }
            table {
                thead { tr { th { "builder" } th { "state" } th { "running" } th { "implementation" } } }
                tbody {
                    @for b in list_of(builders) {
                        tr {
                            td { code { (s(b, "uri")) } }
                            td { (badge(s(b, "state"))) }
                            td.num { (u(b, "running").unwrap_or(0)) " / " (u(b, "max_jobs").unwrap_or(0)) }
                            td { (s(b, "implementation")) " " (s(b, "version")) }
                        }
                    }
                }
            }
        }
        p.muted { "Rendered " (crate::shell::api::ui::layout::utc(now_s)) "." }
    };
    frame(
        Page {
            title: "Overview",
            twin: None,
        },
        body,
    )
}

fn list_of(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], |a| a.as_slice())
}

/// A channel's state in a word: blocked, testing, waiting, or up to date.
pub fn channel_state(c: &Value) -> Markup {
    if !c["blocked"].is_null() {
        badge("blocked")
    } else if !c["testing"].is_null() {
        badge("testing")
    } else if !c["waiting"].is_null() {
        badge("waiting")
    } else if c["source_head"].is_string() && c["source_head"] == c["rev"] {
        badge("up to date")
    } else {
        badge("idle")
    }
}

/// What the queue page shows: the queue, every candidate of the repository, the changes
/// of the candidates in flight (by id) and their rebuild sets (by candidate id).
pub struct QueueView<'a> {
    pub queue: &'a Value,
    pub candidates: &'a Value,
    pub changes: &'a BTreeMap<u64, Value>,
    pub details: &'a BTreeMap<u64, Value>,
    /// The forge's pull-request page, the number to be appended (`[repos.forge]`).
    pub pulls: Option<String>,
}

/// Which page of which branch's queued changes to show (others show their first page).
pub struct Paging {
    pub branch: Option<String>,
    pub page: usize,
}

/// Median duration (ms) of the branch's finished candidates, newest 20: what a
/// candidate in flight is expected to take in total.
fn typical_ms(candidates: &Value, branch: &str) -> Option<i64> {
    let mut d: Vec<i64> = list_of(candidates)
        .iter()
        .rev()
        .filter(|k| s(k, "branch") == branch && s(k, "phase") == "done")
        .filter(|k| s(k, "summary").starts_with("landed"))
        .filter_map(|k| Some(k["finished_at"].as_i64()? - k["created_at"].as_i64()?))
        .take(20)
        .collect();
    if d.is_empty() {
        return None;
    }
    d.sort_unstable();
    Some(d[d.len() / 2])
}

/// `/repos/{repo}`: per branch, the candidates in flight, then the queued changes.
pub fn queue(now_ms: i64, v: &QueueView, paging: &Paging) -> Markup {
    let repo = s(v.queue, "repo");
    let now_s = now_ms / 1000;
    let twin = format!("/api/v1/repos/{}/queue", seg(repo));
    let body = html! {
        p.muted {
            "Repository " (repo) ". Candidates: "
            a href={ "/api/v1/repos/" (seg(repo)) "/candidates" } { "JSON" }
            ". " a href={ "/repos/" (seg(repo)) "/broken" } { "Broken registry" } "."
        }
        @for b in list(v.queue, "branches") {
            (branch(now_ms, now_s, repo, b, v, paging))
        }
    };
    frame(
        Page {
            title: &format!("Queue of {repo}"),
            twin: Some(&twin),
        },
        body,
    )
}

fn branch(
    now_ms: i64,
    now_s: i64,
    repo: &str,
    b: &Value,
    v: &QueueView,
    paging: &Paging,
) -> Markup {
    let name = s(b, "branch");
    let queued = list(b, "queued");
    // A page of the queue (`queued_total` set) is shown as it is; a whole queue is cut here.
    let total = u(b, "queued_total").map_or(queued.len(), |t| t as usize);
    let pages = total.div_ceil(PER_PAGE).max(1);
    let (page, shown) = match u(b, "offset") {
        Some(offset) => (offset as usize / PER_PAGE + 1, queued),
        None => {
            let page = if paging.branch.as_deref().is_none_or(|p| p == name) {
                paging.page.clamp(1, pages)
            } else {
                1
            };
            let from = ((page - 1) * PER_PAGE).min(total);
            (page, &queued[from..(page * PER_PAGE).min(total)])
        }
    };
    let typical = typical_ms(v.candidates, name);
    html! {
        section.branch id={ "branch-" (name) } {
            h2 { "Branch " (name) }
            h3 { "In flight" }
            p.muted {
                "One candidate per branch at a time: mergequeue does not speculate on a "
                "second batch behind the first, so the window holds at most one candidate."
            }
            @if list(b, "testing").is_empty() { p { "Nothing is being tested." } }
            @for k in list(b, "testing") {
                (in_flight(now_ms, repo, k, v, typical))
            }
            h3 { "Queued (" (total) ")" }
            @if total == 0 { p { "No change is waiting." } }
            @else {
                table.queue {
                    thead { tr {
                        th { "#" } th { "change" } th { "title" } th { "priority" } th { "age" }
                        th { "author" } th { "approver" } th { "ref" }
                    } }
                    tbody {
                        @for (i, c) in shown.iter().enumerate() {
                            tr {
                                td.num { ((page - 1) * PER_PAGE + i + 1) }
                                td { a href={ "/repos/" (seg(repo)) "/changes/" (u(c, "id").unwrap_or(0)) } { "#" (u(c, "id").unwrap_or(0)) } }
                                td { (s(c, "title")) }
                                td { (s(c, "priority")) }
                                td { @if let Some(t) = c["submitted_at"].as_i64() { (span(now_s - t / 1000)) } }
                                td { (s(c, "author")) }
                                td { (s(c, "approver")) }
                                td { (pull_link(c, v.pulls.as_deref())) }
                            }
                        }
                    }
                }
                @if pages > 1 {
                    nav.pages {
                        "Page " (page) " of " (pages) ": "
                        @if page > 1 { a href={ "?branch=" (seg(name)) "&page=" (page - 1) } { "previous" } " " }
                        @if page < pages { a href={ "?branch=" (seg(name)) "&page=" (page + 1) } { "next" } }
                    }
                }
                p.muted {
                    "Approver and pull request: mergequeue records neither yet (a change is "
                    "submitted, and so approved, over the API by its git ref)."
                }
            }
            h3 { "Mass-rebuild stage" }
            p.muted { "mergequeue has no separate mass-rebuild stage yet: every change goes through this queue." }
            (recent(now_ms / 1000, repo, name, v.candidates))
        }
    }
}

fn in_flight(now_ms: i64, repo: &str, k: &Value, v: &QueueView, typical: Option<i64>) -> Markup {
    let id = u(k, "id").unwrap_or(0);
    let detail = v.details.get(&id);
    let created = k["created_at"].as_i64().unwrap_or(now_ms);
    html! {
        div.candidate {
            p {
                a href={ "/repos/" (seg(repo)) "/candidates/" (id) } { "Candidate " (id) }
                " " (badge(s(k, "phase")))
                @if let Some(f) = u(k, "follow_up_of") { " (retests the innocent changes of candidate " (f) ")" }
                " started " (span((now_ms - created) / 1000)) " ago"
            }
            ul {
                @for cid in list(k, "changes").iter().filter_map(Value::as_u64) {
                    li {
                        a href={ "/repos/" (seg(repo)) "/changes/" (cid) } { "#" (cid) }
                        @if let Some(c) = v.changes.get(&cid) { " " (s(c, "title")) " (" (s(c, "author")) ")" }
                    }
                }
            }
            p {
                @match detail {
                    Some(d) if s(d, "rebuild_source") != "none" => {
                        "Builds: " (u(d, "builds_done").unwrap_or(0)) " done, "
                        (u(d, "builds_to_do").unwrap_or(0)) " to do. "
                    }
                    _ => { "Builds: not known until the candidate is evaluated. " }
                }
                @match typical {
                    Some(t) => {
                        @let left = (created + t - now_ms) / 1000;
                        "Estimated landing: "
                        @if left > 0 { "in about " (span(left)) } @else { "any time now (taking longer than usual)" }
                        " (the median of this branch's last landed candidates, " (span(t / 1000)) ")."
                    }
                    None => { "No estimate of when it lands yet: no candidate of this branch has landed." }
                }
            }
        }
    }
}

/// The branch's latest finished candidates, newest first.
fn recent(now_s: i64, repo: &str, branch: &str, candidates: &Value) -> Markup {
    let done: Vec<&Value> = list_of(candidates)
        .iter()
        .rev()
        .filter(|k| s(k, "branch") == branch && s(k, "phase") == "done")
        .take(10)
        .collect();
    html! {
        @if !done.is_empty() {
            h3 { "Recently finished" }
            table {
                thead { tr { th { "candidate" } th { "changes" } th { "outcome" } th { "builds" } th { "finished" } } }
                tbody {
                    @for k in done {
                        tr {
                            td { a href={ "/repos/" (seg(repo)) "/candidates/" (u(k, "id").unwrap_or(0)) } { (u(k, "id").unwrap_or(0)) } }
                            td {
                                @for cid in list(k, "changes").iter().filter_map(Value::as_u64) {
                                    a href={ "/repos/" (seg(repo)) "/changes/" (cid) } { "#" (cid) } " "
                                }
                            }
                            td { (s(k, "summary")) }
                            td.num { (u(k, "builds").unwrap_or(0)) " + " (u(k, "extra_builds").unwrap_or(0)) }
                            td { @if let Some(f) = k["finished_at"].as_i64() { (when(now_s, f / 1000)) } }
                        }
                    }
                }
            }
        }
    }
}

/// A change's pull request linked to its page on the forge, or its ref.
pub fn pull_link(c: &Value, pulls: Option<&str>) -> Markup {
    match (u(c, "pr"), pulls) {
        (Some(n), Some(prefix)) => html! { a href={ (prefix) (n) } { "pull request #" (n) } },
        (Some(n), None) => html! { "pull request #" (n) },
        _ => html! { code { (s(c, "ref")) } },
    }
}
