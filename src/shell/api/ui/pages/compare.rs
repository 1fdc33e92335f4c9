//! Two evaluations compared (`/repos/{repo}/compare?from=A&to=B`), with Hydra's tabs:
//! newly failing, newly succeeding, still failing, not built yet, added, removed,
//! changed; each list capped, with its full count.

use maud::{html, Markup};
use serde_json::Value;

use crate::shell::api::ui::layout::{frame, list, s, seg, short, u, Page};

/// Rows shown per tab; the JSON twin (`limit`) can give up to 1000.
pub const PER_TAB: usize = 100;

const TABS: [(&str, &str); 8] = [
    ("newly_failing", "Newly failing"),
    ("newly_succeeding", "Newly succeeding"),
    ("still_failing", "Still failing"),
    ("unfinished", "Not built yet"),
    ("added", "Added"),
    ("removed", "Removed"),
    ("changed", "Changed"),
    ("still_succeeding", "Still succeeding"),
];

pub fn compare(repo: &str, v: &Value) -> Markup {
    let (from, to) = (s(v, "from"), s(v, "to"));
    let twin = format!(
        "/api/v1/repos/{}/compare?from={}&to={}&limit={PER_TAB}",
        seg(repo),
        seg(from),
        seg(to)
    );
    let status = |r: &Value, k: &str| s(r, k).to_string();
    let body = html! {
        p { "Jobs of " code { (short(from)) } " against " code { (short(to)) }
            ", per attribute and system, by what their builds are remembered as." }
        nav.tabs {
            @for (key, label) in TABS {
                a href={ "#" (key) } { (label) " (" (u(&v["counts"], key).unwrap_or(0)) ")" } " "
            }
        }
        @for (key, label) in TABS {
            @let rows = list(v, key);
            @let total = u(&v["counts"], key).unwrap_or(0);
            h2 id=(key) { (label) " (" (total) ")" }
            @if rows.is_empty() { p.muted { "None." } }
            @else {
                table.jobs {
                    thead { tr { th { "job" } th { "system" } th { "before" } th { "after" } th { "derivation" } } }
                    tbody {
                        @for r in rows {
                            tr {
                                td { (s(r, "attr")) }
                                td { (s(r, "system")) }
                                td { (status(r, "old")) }
                                td { (status(r, "new")) }
                                td { @let d = if s(r, "new_drv").is_empty() { s(r, "old_drv") } else { s(r, "new_drv") };
                                     @if !d.is_empty() { a href={ "/api/v1/attempts?drv=" (seg(d)) } { code { (d) } } } }
                            }
                        }
                    }
                }
                @if total > rows.len() as u64 {
                    p.muted { (total - rows.len() as u64) " more in the " a href=(twin) { "JSON" } " (limit up to 1000)." }
                }
            }
        }
    };
    frame(
        Page {
            title: &format!("Evaluation diff {} → {}", short(from), short(to)),
            twin: Some(&twin),
        },
        body,
    )
}
