//! Builders, channels, the event log, the broken registry and the error pages.

use maud::{html, Markup};
use serde_json::Value;

use crate::shell::api::ui::layout::{badge, frame, list, s, seg, short, span, u, utc, when, Page};
use crate::shell::api::ui::pages::queue::channel_state;

const CLASSES: [&str; 6] = [
    "success",
    "failed",
    "dependency-failed",
    "timed-out",
    "infrastructure",
    "cancelled",
];

fn items(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], |a| a.as_slice())
}

/// `/builders`. `done` is the last action's confirmation, shown once after the redirect.
pub fn builders(v: &Value, done: Option<&str>) -> Markup {
    let body = html! {
        @if let Some(d) = done { p.notice { "Done: " (d) "." } }
        table.builders {
            thead { tr {
                th { "builder" } th { "state" } th { "implementation" } th { "systems" }
                th { "running" } th { "attempts by outcome" }
                th { "infrastructure failures in a row" } th { "last error" } th { "action" }
            } }
            tbody {
                @for b in items(v) {
                    @let uri = s(b, "uri");
                    @let state = s(b, "state");
                    tr {
                        td.uri { code { (uri) } }
                        td { (badge(state)) }
                        td { (s(b, "implementation")) " " (s(b, "version")) }
                        td { @for sys in list(b, "systems") { (sys.as_str().unwrap_or("")) " " } }
                        td.num { (u(b, "running").unwrap_or(0)) " / " (u(b, "max_jobs").unwrap_or(0)) }
                        td {
                            @for c in CLASSES {
                                @let n = b["attempts"][c].as_u64().unwrap_or(0);
                                @if n > 0 { span.count { (c) " " (n) } " " }
                            }
                        }
                        td.num { (u(b, "consecutive_infrastructure_failures").unwrap_or(0)) }
                        td { @if let Some(e) = b["last_error"].as_str() { pre.small { (e) } } }
                        td {
                            @let (action, label) = if state == "draining" { ("undrain", "return") } else { ("drain", "drain") };
                            form.action method="post" action={ "/builders/" (action) } {
                                input type="hidden" name="uri" value=(uri);
                                input type="password" name="token" placeholder="API token" autocomplete="off" required;
                                button type="submit" { (label) }
                            }
                        }
                    }
                }
            }
        }
        p.muted {
            "Drain: running builds finish, nothing new starts (kept across restarts). Return: "
            "the builder is probed, then takes builds again. Both need the API token; "
            "a quarantined builder comes back by itself after its probe succeeds."
        }
        p.muted {
            "Crash signatures and verification mismatches: mergequeue records neither yet."
        }
    };
    frame(
        Page {
            title: "Builders",
            twin: Some("/api/v1/builders"),
        },
        body,
    )
}

/// `/channels`.
pub fn channels(now_ms: i64, v: &Value) -> Markup {
    let body = html! {
        @if items(v).is_empty() { p { "No channels are configured." } }
        @else {
            table {
                thead { tr { th { "channel" } th { "follows" } th { "target" } th { "revision" } th { "age" } th { "state" } } }
                tbody {
                    @for c in items(v) {
                        tr {
                            td { a href={ "/channels/" (seg(s(c, "name"))) } { (s(c, "name")) } }
                            td { (s(c, "repo")) " " (s(c, "source")) }
                            td { (s(c, "target")) }
                            td { code { (short(s(c, "rev"))) } }
                            td { @if let Some(a) = c["age_secs"].as_i64() { (span(a)) } }
                            td { (channel_state(c)) }
                        }
                    }
                }
            }
        }
        p.muted { "Rendered " (utc(now_ms / 1000)) "." }
    };
    frame(
        Page {
            title: "Channels",
            twin: Some("/api/v1/channels"),
        },
        body,
    )
}

/// `/channels/{name}`.
pub fn channel(now_ms: i64, c: &Value) -> Markup {
    let now_s = now_ms / 1000;
    let name = s(c, "name");
    let twin = format!("/api/v1/channels/{}", seg(name));
    let body = html! {
        table.facts {
            tr { th { "state" } td { (channel_state(c)) } }
            tr { th { "follows" } td { a href={ "/repos/" (seg(s(c, "repo"))) } { (s(c, "repo")) } " " (s(c, "source")) } }
            tr { th { "target" } td { (s(c, "target")) @if let Some(r) = c["remote"].as_str() { " on " code { (r) } } } }
            tr { th { "gate" } td { @for g in list(c, "gate") { code { (g.as_str().unwrap_or("")) } " " } } }
            tr { th { "revision" } td { code { (s(c, "rev")) } } }
            tr { th { "age" } td { @if let Some(a) = c["age_secs"].as_i64() { (span(a)) } } }
            tr { th { "source head" } td { code { (s(c, "source_head")) } } }
            @if let Some(d) = c["diverged"].as_str() { tr { th { "diverged" } td { code { (d) } " does not descend from the revision (ignored)" } } }
            tr { th { "advances / blocks" } td { (u(c, "advances").unwrap_or(0)) " / " (u(c, "blocks").unwrap_or(0)) } }
            tr { th { "artifacts" } td {
                @match c["published"].as_str() {
                    Some(p) => { "published for " code { (short(p)) } }
                    None => span.muted { "none published" },
                }
            } }
        }
        @if let Some(t) = c["testing"].as_object() {
            h2 { "Gate check in progress" }
            p { "Testing " code { (t.get("rev").and_then(Value::as_str).unwrap_or("")) } " "
                (badge(t.get("phase").and_then(Value::as_str).unwrap_or("")))
                ": " (t.get("pending").and_then(Value::as_u64).unwrap_or(0)) " of "
                (t.get("jobs").and_then(Value::as_u64).unwrap_or(0)) " jobs pending" }
        }
        @if let Some(a) = c["advancing"].as_str() { p { "Advancing to " code { (a) } "." } }
        @if let Some(w) = c["waiting"].as_object() {
            p { "Passed " code { (w.get("rev").and_then(Value::as_str).unwrap_or("")) }
                ", held by the minimum interval until "
                (utc(w.get("until").and_then(Value::as_i64).unwrap_or(0) / 1000)) "." }
        }
        h2 { "What blocks it" }
        @match c["blocked"].as_object() {
            None => p { "Nothing: the newest source head's gate did not fail." },
            Some(b) => {
                p { "The gate failed at " code { (b.get("rev").and_then(Value::as_str).unwrap_or("")) } "." }
                @if let Some(e) = b.get("error").and_then(Value::as_str) { pre.log { (e) } }
                @for j in b.get("jobs").and_then(Value::as_array).into_iter().flatten() {
                    div.blocker {
                        p { code { (s(j, "attr")) } " (" (s(j, "system")) ") " (badge(s(j, "status")))
                            " " code.small { (s(j, "drv")) } }
                        @if !s(j, "log_tail").is_empty() { pre.log { (s(j, "log_tail")) } }
                    }
                }
            }
        }
        h2 { "History" }
        @if list(c, "history").is_empty() { p { "It never advanced." } }
        @else {
            table {
                thead { tr { th { "when" } th { "from" } th { "to" } } }
                tbody {
                    @for a in list(c, "history") {
                        tr {
                            td { (when(now_s, a["time"].as_i64().unwrap_or(0))) }
                            td { code { (short(s(a, "from"))) } }
                            td { code { (short(s(a, "rev"))) } }
                        }
                    }
                }
            }
        }
    };
    frame(
        Page {
            title: &format!("Channel {name}"),
            twin: Some(&twin),
        },
        body,
    )
}

/// `/events`: the progress log, at most 500 lines a page. `after` is the page asked for;
/// `None` shows the newest page, which refreshes itself when JavaScript runs.
pub fn events(events: &[Value], after: Option<i64>) -> Markup {
    let last = events
        .last()
        .and_then(|e| e["id"].as_i64())
        .unwrap_or(after.unwrap_or(0));
    let twin = format!("/api/v1/events?after={}", after.unwrap_or(0));
    let body = html! {
        p.muted {
            @if after.is_none() { "The newest events, oldest first; new ones appear as they happen when JavaScript runs. " }
            @if events.len() >= 500 { a href={ "/events?after=" (last) } { "next page" } " " }
            a href="/events?after=0" { "from the beginning" }
        }
        table.events data-live=[after.is_none().then_some("1")] data-after=(last) {
            thead { tr { th { "#" } th { "when" } th { "repository" } th { "event" } } }
            tbody {
                @for e in events {
                    tr {
                        td.num { (e["id"].as_i64().unwrap_or(0)) }
                        td { (utc(e["at"].as_i64().unwrap_or(0) / 1000)) }
                        td { (s(e, "repo")) }
                        td { (s(e, "text")) }
                    }
                }
            }
        }
        @if after.is_none() { script src="/assets/live.js" {} }
    };
    frame(
        Page {
            title: "Events",
            twin: Some(&twin),
        },
        body,
    )
}

/// `/repos/{repo}/broken`: the product keeps no broken registry yet; the page says so.
/// The broken registry (`docs/breakage.md`): jobs a change was allowed to break under
/// the `grace` policy, until they build again.
pub fn broken(now_ms: i64, repo: &str, rows: &Value) -> Markup {
    let now_s = now_ms / 1000;
    let twin = format!("/api/v1/repos/{}/broken", seg(repo));
    let rows = rows.as_array().map(Vec::as_slice).unwrap_or(&[]);
    let body = html! {
        p { "The broken registry of " (repo) ": jobs marked broken when a change that broke them "
            "landed after its grace period. They no longer block other changes; each leaves the "
            "registry when it builds again. Channels publish it as " code { "broken.json" } "." }
        @if rows.is_empty() { p { "Nothing is marked broken." } }
        @else {
            table.jobs {
                thead { tr { th { "job" } th { "system" } th { "since" } th { "broken by" } th { "maintainers" } th { "derivation" } th { "log tail" } } }
                tbody {
                    @for r in rows {
                        tr {
                            td { (s(r, "attr")) }
                            td { (s(r, "system")) }
                            td { @if let Some(t) = r["since"].as_i64() { (utc(t / 1000)) " (" (when(now_s, t / 1000)) ")" } }
                            td { @if let Some(c) = u(r, "broken_by") { a href={ "/repos/" (seg(repo)) "/changes/" (c) } { "#" (c) } } }
                            td { (maintainers(&r["maintainers"])) }
                            td { @let d = s(r, "drv");
                                 @if d.is_empty() { span.muted { "does not evaluate" } }
                                 @else { a href={ "/api/v1/attempts?drv=" (seg(d)) } { code { (d.trim_start_matches("/nix/store/")) } } } }
                            td { pre.log { (s(r, "log_tail")) } }
                        }
                    }
                }
            }
        }
        p { a href={ "/repos/" (seg(repo)) } { "Back to the queue of " (repo) } }
    };
    frame(
        Page {
            title: &format!("Broken packages of {repo}"),
            twin: Some(&twin),
        },
        body,
    )
}

/// Maintainers as `meta.maintainers` gives them: the forge handle, else the name. Never
/// an address: the pages are public.
pub fn maintainers(m: &Value) -> String {
    m.as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .filter_map(|p| p["github"].as_str().or(p["name"].as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn not_found(path: &str) -> Markup {
    message("Not found", &format!("There is no page at {path}."))
}

pub fn message(title: &str, text: &str) -> Markup {
    frame(
        Page { title, twin: None },
        html! { p { (text) } p { a href="/" { "Overview" } } },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_text_is_escaped_everywhere_it_shows() {
        let evil = "<script>alert(1)</script>";
        let ev = serde_json::json!([{"id": 1, "at": 0, "repo": evil, "text": evil}]);
        let html = events(ev.as_array().unwrap(), None).into_string();
        assert!(!html.contains(evil), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        let b = serde_json::json!([{"uri": evil, "state": "up", "last_error": evil}]);
        assert!(!builders(&b, Some(evil)).into_string().contains(evil));
    }
}
