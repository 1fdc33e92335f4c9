//! The page frame every page shares (navigation, the JSON twin's link) and the small
//! formatting helpers the pages use. Everything here goes through maud, which escapes
//! every interpolated string: titles, authors, logs and attribute names come from users.

use maud::{html, Markup, DOCTYPE};
use serde_json::Value;

/// A string field, or "" when absent or not a string.
pub fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("")
}

pub fn u(v: &Value, key: &str) -> Option<u64> {
    v[key].as_u64()
}

pub fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v[key].as_array().map_or(&[], |a| a.as_slice())
}

/// The first 12 characters of a commit or derivation hash: enough to recognise it.
pub fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

/// "5 s", "3 min", "2 h", "4 d": how long a span is, at the precision a reader needs.
pub fn span(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        0..=119 => format!("{secs} s"),
        120..=7199 => format!("{} min", secs / 60),
        7200..=172_799 => format!("{} h", secs / 3600),
        _ => format!("{} d", secs / 86400),
    }
}

/// Unix seconds as UTC, to the second.
pub fn utc(secs: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64);
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace('T', " ")
        .replace('Z', " UTC")
}

/// A timestamp with its age: "2026-12-01 10:00:00 UTC (3 min ago)".
pub fn when(now_s: i64, secs: i64) -> Markup {
    html! { time title=(utc(secs)) { (span(now_s - secs)) " ago" } }
}

/// A state or phase as a coloured label; the class is chosen from a fixed set.
pub fn badge(state: &str) -> Markup {
    let class = match state {
        "merged" | "success" | "up" | "landed" | "passed" | "up to date" => "ok",
        "rejected" | "failed" | "eval-error" | "missing" | "quarantined" | "timed-out"
        | "dependency-failed" | "blocked" => "bad",
        "testing" | "building" | "evaluating" | "preparing" | "attributing" | "landing"
        | "queued" | "draining" | "waiting" => "busy",
        _ => "idle",
    };
    html! { span class={ "badge " (class) } { (state) } }
}

/// Percent-encodes one path segment (repository and channel names come from the config,
/// but a link must stay a link whatever they hold).
pub fn seg(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

/// What a path segment keeps as it is: the unreserved characters of RFC 3986.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Splits a rejection reason into what happened and the quoted build log's tail.
pub fn split_reason(reason: &str) -> (&str, Option<&str>) {
    match reason.find("log tail:") {
        Some(i) => (
            reason[..i].trim_end(),
            Some(reason[i + "log tail:".len()..].trim_start_matches('\n')),
        ),
        None => (reason, None),
    }
}

/// The derivation paths a text mentions (rejection reasons name the failing ones).
pub fn drvs_in(text: &str) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    let mut rest = text;
    while let Some(i) = rest.find("/nix/store/") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| c.is_whitespace() || ",;:)'\"".contains(c))
            .unwrap_or(tail.len());
        let path = tail[..end].trim_end_matches('.');
        if path.ends_with(".drv") && !out.iter().any(|p| p == path) {
            out.push(path.to_string());
        }
        rest = &tail[end.max(1)..];
    }
    out
}

pub struct Page<'a> {
    pub title: &'a str,
    /// The API path answering with the JSON this page renders.
    pub twin: Option<&'a str>,
}

/// The frame: head, navigation, the page's body, and a link to its JSON twin.
pub fn frame(p: Page, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (p.title) " · mergequeue" }
                link rel="stylesheet" href="/assets/style.css";
            }
            body {
                header {
                    nav {
                        a.brand href="/" { "mergequeue" }
                        a href="/builders" { "builders" }
                        a href="/channels" { "channels" }
                        a href="/events" { "events" }
                        @if let Some(t) = p.twin {
                            a.twin href=(t) title="the JSON this page shows" { "JSON" }
                        }
                    }
                }
                main {
                    h1 { (p.title) }
                    (body)
                }
                footer {
                    "Pages are renderings of the JSON API ("
                    a href="/metrics" { "metrics" }
                    "). They work without JavaScript."
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_split_at_the_log_tail_and_name_their_derivations() {
        let r = "job hello (x86_64-linux) fails: /nix/store/abc-hello.drv; outcome failed\nlog tail:\nboom\n";
        let (head, tail) = split_reason(r);
        assert!(head.ends_with("outcome failed"));
        assert_eq!(tail, Some("boom\n"));
        assert_eq!(drvs_in(r), vec!["/nix/store/abc-hello.drv".to_string()]);
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(seg("a b/<c>"), "a%20b%2F%3Cc%3E");
        assert_eq!(span(30), "30 s");
        assert_eq!(span(3600), "60 min");
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
    }
}
