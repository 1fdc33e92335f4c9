//! A change's page (`/repos/{repo}/changes/{id}`) and a candidate's
//! (`/repos/{repo}/candidates/{id}`).

use std::collections::BTreeMap;

use maud::{html, Markup};
use serde_json::Value;

use crate::shell::api::ui::layout::{
    badge, frame, list, s, seg, short, split_reason, u, utc, when, Page,
};

/// Rows of a rebuild set shown on one page; the JSON twin has them all.
const MAX_JOBS: usize = 1000;

/// `logs`: the attempts of each derivation the reason names (`/api/v1/attempts?drv=`).
pub fn change(
    now_ms: i64,
    c: &Value,
    candidates: &Value,
    logs: &BTreeMap<String, Value>,
    pulls: Option<&str>,
) -> Markup {
    let now_s = now_ms / 1000;
    let repo = s(c, "repo");
    let id = u(c, "id").unwrap_or(0);
    let state = s(c, "state");
    let twin = format!("/api/v1/repos/{}/changes/{id}", seg(repo));
    let mine: Vec<&Value> = candidates
        .as_array()
        .into_iter()
        .flatten()
        .filter(|k| list(k, "changes").iter().any(|x| x.as_u64() == Some(id)))
        .collect();
    let body = html! {
        p.title { (s(c, "title")) }
        table.facts {
            tr { th { "state" } td { (badge(state)) } }
            tr { th { "author" } td { (s(c, "author")) } }
            tr { th { "repository" } td { a href={ "/repos/" (seg(repo)) } { (repo) } } }
            tr { th { "target" } td { (s(c, "target")) } }
            tr { th { "ref" } td { code { (s(c, "ref")) } } }
            tr { th { "head" } td { code { (s(c, "head")) }
                @if s(c, "head") != s(c, "submitted_head") { " (submitted at " code { (short(s(c, "submitted_head"))) } ")" } } }
            tr { th { "priority" } td { (s(c, "priority")) } }
            @if u(c, "pr").is_some() {
                tr { th { "pull request" } td { (super::queue::pull_link(c, pulls)) } }
                tr { th { "approved by" } td { (s(c, "approver")) } }
                tr { th { "forge status" } td { (forge_status(c)) } }
            }
        }
        h2 { "Timeline" }
        ol.timeline {
            li { (when(now_s, c["submitted_at"].as_i64().unwrap_or(0) / 1000))
                 @if u(c, "pr").is_some() { " approved by " (s(c, "approver")) " on the forge" }
                 @else { " submitted over the API by " (s(c, "author")) " (submitting is approving)" } }
            @for k in &mine {
                @let kid = u(k, "id").unwrap_or(0);
                li {
                    @if let Some(t) = k["created_at"].as_i64() { (when(now_s, t / 1000)) " " }
                    "in " a href={ "/repos/" (seg(repo)) "/candidates/" (kid) } { "candidate " (kid) }
                    " with " (list(k, "changes").len()) " change(s) "
                    (badge(s(k, "phase")))
                    @if let Some(f) = u(k, "follow_up_of") { ", retesting the innocent changes of candidate " (f) }
                    "; " (u(k, "builds").unwrap_or(0)) " builds for its verdict, "
                    (u(k, "extra_builds").unwrap_or(0)) " more spent finding a culprit"
                    @if !s(k, "summary").is_empty() { ": " (s(k, "summary")) }
                }
            }
            @match state {
                "merged" => li { (when(now_s, c["updated_at"].as_i64().unwrap_or(0) / 1000)) " landed in "
                                 code { (s(c, "landed_commit")) } },
                "rejected" => li { (when(now_s, c["updated_at"].as_i64().unwrap_or(0) / 1000)) " rejected (below why)" },
                "cancelled" => li { (when(now_s, c["updated_at"].as_i64().unwrap_or(0) / 1000)) " cancelled" },
                _ => li.muted { "not final yet" },
            }
        }
        @if let Some(reason) = c["reason"].as_str() {
            @let (what, tail) = split_reason(reason);
            h2 { "Why" }
            pre.reason { (what) }
            @if let Some(t) = tail {
                h3 { "Log tail" }
                pre.log { (t) }
            }
            @for (drv, attempts) in logs {
                p {
                    "Full logs of " code { (drv) } ": "
                    @for a in attempts.as_array().into_iter().flatten() {
                        a href=(s(a, "log")) { "attempt " (u(a, "id").unwrap_or(0)) " (" (s(a, "class")) " on " (s(a, "builder")) ")" } " "
                    }
                    @if attempts.as_array().is_none_or(|a| a.is_empty()) { span.muted { "none stored (remembered from an earlier run, or failed to evaluate)" } }
                }
            }
            p.muted {
                "How the culprit was found is part of the reason above: the evidence (a probe "
                "of the change alone on the base, or the merge chain's bisection) is named there."
            }
        }
    };
    frame(
        Page {
            title: &format!("Change #{id}"),
            twin: Some(&twin),
        },
        body,
    )
}

/// `changes`: the candidate's changes by id.
/// Rows per tab of the newly-broken report on the candidate page.
pub const REPORT_ROWS: usize = 50;

pub fn candidate(
    now_ms: i64,
    repo: &str,
    k: &Value,
    changes: &BTreeMap<u64, Value>,
    report: Option<&Value>,
) -> Markup {
    let now_s = now_ms / 1000;
    let id = u(k, "id").unwrap_or(0);
    let twin = format!("/api/v1/repos/{}/candidates/{id}", seg(repo));
    let jobs = list(k, "rebuild");
    let body = html! {
        table.facts {
            tr { th { "phase" } td { (badge(s(k, "phase"))) } }
            tr { th { "branch" } td { a href={ "/repos/" (seg(repo)) } { (s(k, "branch")) } } }
            tr { th { "base" } td { code { (s(k, "base")) } } }
            tr { th { "commit" } td { code { (s(k, "commit")) } } }
            @if !s(k, "base").is_empty() && !s(k, "commit").is_empty() {
                tr { th { "evaluation diff" } td { a href={ "/repos/" (seg(repo)) "/compare?from=" (seg(s(k, "base"))) "&to=" (seg(s(k, "commit"))) } { "base → commit" } } }
            }
            @if let Some(f) = u(k, "follow_up_of") {
                tr { th { "follow-up of" } td { a href={ "/repos/" (seg(repo)) "/candidates/" (f) } { "candidate " (f) } } }
            }
            tr { th { "builds" } td { (u(k, "builds").unwrap_or(0)) " for the verdict, "
                (u(k, "extra_builds").unwrap_or(0)) " for attribution; "
                (u(k, "builds_done").unwrap_or(0)) " done, " (u(k, "builds_to_do").unwrap_or(0)) " to do" } }
            tr { th { "started" } td { @if let Some(t) = k["created_at"].as_i64() { (utc(t / 1000)) " (" (when(now_s, t / 1000)) ")" } } }
            @if let Some(t) = k["finished_at"].as_i64() { tr { th { "finished" } td { (utc(t / 1000)) } } }
            @if !s(k, "summary").is_empty() { tr { th { "outcome" } td { (s(k, "summary")) } } }
        }
        h2 { "Changes" }
        ul {
            @for cid in list(k, "changes").iter().filter_map(Value::as_u64) {
                li {
                    a href={ "/repos/" (seg(repo)) "/changes/" (cid) } { "#" (cid) }
                    @if let Some(c) = changes.get(&cid) { " " (s(c, "title")) " " (badge(s(c, "state"))) }
                }
            }
        }
        @if let Some(r) = report { (report_section(repo, id, r)) }
        h2 { "Rebuild set (" (jobs.len()) ")" }
        p.muted {
            @match s(k, "rebuild_source") {
                "live" => "The jobs this candidate's verdict waits for: added and changed jobs and the required ones.",
                "evaluations" => "Added and changed jobs, from the stored evaluations of the base and the candidate.",
                _ => "Not known until the candidate and its base are evaluated.",
            }
        }
        @let newly: Vec<&Value> = jobs.iter().filter(|j| j["newly_broken"] == true).collect();
        h3 { "Newly broken (" (newly.len()) ")" }
        @if newly.is_empty() { p { "Nothing that builds on the base fails here." } }
        @else { p { @for j in &newly { code { (s(j, "attr")) } " (" (s(j, "system")) ") " } } }
        @if !jobs.is_empty() {
            table.jobs {
                thead { tr { th { "job" } th { "system" } th { "state" } th { "on the base" } th { "builder" } th { "derivation" } th { "log" } } }
                tbody {
                    @for j in jobs.iter().take(MAX_JOBS) {
                        tr {
                            td { (s(j, "attr")) }
                            td { (s(j, "system")) }
                            td { (badge(s(j, "state"))) }
                            td { @if let Some(b) = j["base_state"].as_str() { (b) } @else { span.muted { "new" } } }
                            td { code { (s(j, "builder")) } }
                            td { code title=(s(j, "drv")) { (s(j, "drv").trim_start_matches("/nix/store/")) } }
                            td { @if let Some(l) = j["log"].as_str() { a href=(l) { "log" } } }
                        }
                    }
                }
            }
            @if jobs.len() > MAX_JOBS { p.muted { (jobs.len() - MAX_JOBS) " more in the JSON." } }
        }
    };
    frame(
        Page {
            title: &format!("Candidate {id}"),
            twin: Some(&twin),
        },
        body,
    )
}

/// The candidate's newly-broken report (`docs/breakage.md`), with its JSON twins.
fn report_section(repo: &str, id: u64, r: &Value) -> Markup {
    let base = format!("/api/v1/repos/{}/candidates/{id}", seg(repo));
    let tabs = [
        ("newly_failing", "Newly failing"),
        ("newly_succeeding", "Newly succeeding"),
        ("still_failing", "Still failing"),
    ];
    html! {
        h2 { "Newly-broken report" }
        p.muted { "Per attribute and system, against the base, as Hydra counts it. "
            a href={ (base) "/report" } { "JSON" } " · " a href={ (base) "/why" } { "why things rebuild (JSON)" } }
        @if r["evaluated"] != true { p { "Not evaluated yet." } }
        @else {
            @if let Some(m) = r["rebuilds"].as_object() {
                p { "Rebuilds: "
                    @for (sys, x) in m { code { (sys) } " " (u(x, "count").unwrap_or(0)) " (" (s(x, "bucket")) ") " } }
            }
            @for (key, label) in tabs {
                @let rows = list(r, key);
                @let total = u(&r["counts"], key).unwrap_or(0);
                h3 { (label) " (" (total) ")" }
                @if !rows.is_empty() {
                    table.jobs {
                        thead { tr { th { "job" } th { "system" } th { "how" } th { "root" } th { "maintainers" } } }
                        tbody {
                            @for j in rows {
                                tr {
                                    td { (s(j, "attr")) }
                                    td { (s(j, "system")) }
                                    td { (s(j, "class")) }
                                    td { @if j["root"].is_object() {
                                        @let root = &j["root"];
                                        @if s(root, "attr").is_empty() { code { (s(root, "drv").trim_start_matches("/nix/store/")) } }
                                        @else { (s(root, "attr")) } } }
                                    td { (crate::shell::api::ui::pages::ops::maintainers(&j["maintainers"])) }
                                }
                            }
                        }
                    }
                    @if total > rows.len() as u64 { p.muted { (total - rows.len() as u64) " more in the JSON." } }
                }
            }
            @if let Some(m) = r["by_maintainer"].as_object() {
                @if !m.is_empty() {
                    h3 { "By maintainer" }
                    ul { @for (who, jobs) in m {
                        // An address is not shown on a page; the JSON has it for tools.
                        @let who = if who.contains('@') { format!("{}@…", who.split('@').next().unwrap_or("")) } else { who.clone() };
                        li { strong { (who) } ": "
                            (jobs.as_array().map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")).unwrap_or_default()) }
                    } }
                }
            }
        }
    }
}

/// The commit status mergequeue posts for the change's state (`docs/forge.md`).
fn forge_status(c: &Value) -> Markup {
    let group = crate::core::groups::is_group_ref(s(c, "ref"));
    let state = match s(c, "state") {
        _ if group => "on the merge group's head, not the pull request",
        "queued" | "testing" => "pending",
        "merged" => "success",
        "rejected" => "failure (with a comment giving the reason)",
        _ => "error",
    };
    html! { "commit status " (state) }
}
