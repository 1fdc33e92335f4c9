//! The operator's web UI: server-rendered HTML on the API's listener, for every path
//! outside `/api` and `/metrics`. Each page renders the JSON its API twin returns (the
//! same `Query` through the driver), so a page needs no driver code of its own; templates
//! are compiled in (maud, which escapes every interpolation) and the assets are embedded.
//!
//! Read-only pages need no token. The drain and return buttons post a form holding the
//! API token, which the page never contains (the operator types it); a request whose
//! `Origin` is another site, or whose `Sec-Fetch-Site` says cross-site, is refused before
//! the token is even looked at.

pub mod bench;
pub mod layout;
pub mod pages;

use std::collections::BTreeMap;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Body;
use hyper::{Method, Request, Response, StatusCode};
use maud::Markup;
use serde_json::Value;
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;

use crate::shell::api::Api;
use crate::shell::driver::{now_ms, Msg};
use crate::shell::status::{Query, Reply};

const STYLE: &str = include_str!("assets/style.css");
const LIVE: &str = include_str!("assets/live.js");

/// Queued changes per page: the queue page stays small whatever the queue's length.
pub const PER_PAGE: usize = 50;

type Resp = Response<Full<Bytes>>;

fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Resp {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        // Scripts and styles only from this server (no inline script can run), no framing
        // (the drain button cannot be clicked through another site's page).
        .header(
            "content-security-policy",
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        )
        .header("x-content-type-options", "nosniff")
        .header("x-frame-options", "DENY")
        .header("referrer-policy", "same-origin")
        .header("cache-control", "no-store")
        .body(Full::new(body.into()))
        .expect("valid response")
}

fn html(status: StatusCode, m: Markup) -> Resp {
    respond(status, "text/html; charset=utf-8", m.into_string())
}

fn not_found(what: &str) -> Resp {
    html(StatusCode::NOT_FOUND, pages::ops::not_found(what))
}

async fn ask(api: &Api, q: Query) -> Option<Value> {
    match api.ask(q).await {
        Some(Reply::Json(v)) => Some(v),
        _ => None,
    }
}

/// Percent-decodes a path segment.
fn decode(seg: &str) -> String {
    percent_encoding::percent_decode_str(seg)
        .decode_utf8_lossy()
        .into_owned()
}

fn param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Serves a UI path (anything the API does not own).
pub async fn route<B>(api: &Api, req: Request<B>) -> Resp
where
    B: Body,
    B::Error: Into<crate::shell::api::BoxError>,
{
    let path = req.uri().path().trim_end_matches('/').to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let parts: Vec<String> = path.split('/').skip(1).map(decode).collect();
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    let method = req.method().clone();
    if method == Method::POST {
        return match parts.as_slice() {
            ["builders", action @ ("drain" | "undrain")] => {
                let drained = *action == "drain";
                drain(api, req, drained).await
            }
            _ => not_found(&path),
        };
    }
    if method != Method::GET && method != Method::HEAD {
        return html(
            StatusCode::METHOD_NOT_ALLOWED,
            pages::ops::message("Method not allowed", "These pages are read with GET."),
        );
    }
    if api.config.ui.require_token && !reader(api, &req) && parts.first() != Some(&"assets") {
        let mut r = html(
            StatusCode::UNAUTHORIZED,
            pages::ops::message("Token required", "These pages need the API token."),
        );
        r.headers_mut().insert(
            "www-authenticate",
            "Basic realm=\"mergequeue\", charset=\"UTF-8\""
                .parse()
                .expect("header"),
        );
        return r;
    }
    let now = now_ms();
    match parts.as_slice() {
        [] => overview(api, now).await,
        ["assets", "style.css"] => respond(StatusCode::OK, "text/css; charset=utf-8", STYLE),
        ["assets", "live.js"] => respond(StatusCode::OK, "text/javascript; charset=utf-8", LIVE),
        ["repos", repo] => queue_page(api, repo, &query, now).await,
        ["repos", repo, "changes", id] => match id.parse() {
            Ok(id) => change_page(api, repo, id, now).await,
            Err(_) => not_found(&path),
        },
        ["repos", repo, "candidates", id] => match id.parse() {
            Ok(id) => candidate_page(api, repo, id, now).await,
            Err(_) => not_found(&path),
        },
        ["repos", repo, "compare"] if api.config.repo(repo).is_some() => {
            let (Some(from), Some(to)) = (param(&query, "from"), param(&query, "to")) else {
                return html(
                    StatusCode::BAD_REQUEST,
                    pages::ops::message("Two commits needed", "Give from=COMMIT and to=COMMIT."),
                );
            };
            let limit = pages::compare::PER_TAB;
            let q = Query::Compare {
                from: from.clone(),
                to: to.clone(),
                limit,
            };
            match ask(api, q).await {
                Some(v) => html(StatusCode::OK, pages::compare::compare(repo, &v)),
                // A candidate still being evaluated links here too.
                None => html(
                    StatusCode::OK,
                    pages::ops::message(
                        "Not evaluated",
                        &format!("No stored evaluation of {from} and {to} (one is not evaluated yet, or was pruned)."),
                    ),
                ),
            }
        }
        ["repos", repo, "broken"] if api.config.repo(repo).is_some() => {
            let q = Query::Broken {
                repo: repo.to_string(),
            };
            match ask(api, q).await {
                Some(rows) => html(StatusCode::OK, pages::ops::broken(now, repo, &rows)),
                None => not_found(&path),
            }
        }
        ["builders"] => match ask(api, Query::Builders).await {
            Some(b) => html(
                StatusCode::OK,
                pages::ops::builders(&b, param(&query, "done").as_deref()),
            ),
            None => not_found(&path),
        },
        ["channels"] => match ask(api, Query::Channels { name: None }).await {
            Some(c) => html(StatusCode::OK, pages::ops::channels(now, &c)),
            None => not_found(&path),
        },
        ["channels", name] => {
            let q = Query::Channels {
                name: Some(name.to_string()),
            };
            match ask(api, q).await {
                Some(c) => html(StatusCode::OK, pages::ops::channel(now, &c)),
                None => not_found(&path),
            }
        }
        ["events"] => events_page(api, &query).await,
        _ => not_found(&path),
    }
}

async fn overview(api: &Api, now: i64) -> Resp {
    let mut queues = vec![];
    for r in &api.config.repos {
        let repo = r.name.get_ref().clone();
        // Counts only (`queued_total`): no queued change is turned into JSON here.
        let q = Query::QueuePage {
            repo,
            branch: None,
            offset: 0,
            limit: 0,
        };
        if let Some(q) = ask(api, q).await {
            queues.push(q);
        }
    }
    let channels = ask(api, Query::Channels { name: None })
        .await
        .unwrap_or(Value::Null);
    let builders = ask(api, Query::Builders).await.unwrap_or(Value::Null);
    html(
        StatusCode::OK,
        pages::queue::overview(now, &queues, &channels, &builders),
    )
}

async fn queue_page(api: &Api, repo: &str, query: &str, now: i64) -> Resp {
    if api.config.repo(repo).is_none() {
        return not_found(&format!("/repos/{repo}"));
    }
    let repo = repo.to_string();
    let page: usize = param(query, "page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(1)
        .max(1);
    let branch = param(query, "branch");
    // Only the page shown is turned into JSON, however long the queue.
    let q = Query::QueuePage {
        repo: repo.clone(),
        branch: branch.clone(),
        offset: (page - 1).saturating_mul(PER_PAGE),
        limit: PER_PAGE,
    };
    let (Some(queue), Some(candidates)) = (
        ask(api, q).await,
        ask(api, Query::Candidates { repo: repo.clone() }).await,
    ) else {
        return not_found(&format!("/repos/{repo}"));
    };
    // The candidates in flight: their changes' titles and their builds done and to do.
    let mut changes = BTreeMap::new();
    let mut details = BTreeMap::new();
    for b in layout::list(&queue, "branches") {
        for k in layout::list(b, "testing") {
            let Some(kid) = layout::u(k, "id") else {
                continue;
            };
            for id in layout::list(k, "changes").iter().filter_map(Value::as_u64) {
                let q = Query::Change {
                    repo: repo.clone(),
                    id,
                };
                if let Some(c) = ask(api, q).await {
                    changes.insert(id, c);
                }
            }
            let q = Query::Candidate {
                repo: repo.clone(),
                id: kid,
            };
            if let Some(d) = ask(api, q).await {
                details.insert(kid, d);
            }
        }
    }
    let page = pages::queue::Paging { branch, page };
    let view = pages::queue::QueueView {
        queue: &queue,
        candidates: &candidates,
        changes: &changes,
        details: &details,
        pulls: pull_pages(api, &repo),
    };
    html(StatusCode::OK, pages::queue::queue(now, &view, &page))
}

async fn change_page(api: &Api, repo: &str, id: u64, now: i64) -> Resp {
    let repo = repo.to_string();
    let Some(change) = ask(
        api,
        Query::Change {
            repo: repo.clone(),
            id,
        },
    )
    .await
    else {
        return not_found(&format!("/repos/{repo}/changes/{id}"));
    };
    let candidates = ask(api, Query::Candidates { repo: repo.clone() })
        .await
        .unwrap_or(Value::Null);
    // The full logs of the derivations the reason names.
    let mut logs = BTreeMap::new();
    for drv in layout::drvs_in(layout::s(&change, "reason")) {
        if let Some(a) = ask(api, Query::Attempts { drv: drv.clone() }).await {
            logs.insert(drv, a);
        }
    }
    let pulls = pull_pages(api, &repo);
    html(
        StatusCode::OK,
        pages::change::change(now, &change, &candidates, &logs, pulls.as_deref()),
    )
}

/// The forge's pull-request page prefix of a repository with `[repos.forge]`.
fn pull_pages(api: &Api, repo: &str) -> Option<String> {
    let forge = api.config.repo(repo)?.forge.as_ref()?;
    Some(forge.pull_page_prefix())
}

async fn candidate_page(api: &Api, repo: &str, id: u64, now: i64) -> Resp {
    let repo = repo.to_string();
    let q = Query::Candidate {
        repo: repo.clone(),
        id,
    };
    let Some(cand) = ask(api, q).await else {
        return not_found(&format!("/repos/{repo}/candidates/{id}"));
    };
    let mut changes = BTreeMap::new();
    for cid in layout::list(&cand, "changes")
        .iter()
        .filter_map(Value::as_u64)
    {
        let q = Query::Change {
            repo: repo.clone(),
            id: cid,
        };
        if let Some(c) = ask(api, q).await {
            changes.insert(cid, c);
        }
    }
    let q = Query::Report {
        repo: repo.clone(),
        id,
        limit: pages::change::REPORT_ROWS,
    };
    let report = ask(api, q).await;
    html(
        StatusCode::OK,
        pages::change::candidate(now, &repo, &cand, &changes, report.as_ref()),
    )
}

/// The newest events, or those after `?after=N`. The API answers oldest first, 500 at a
/// time, so the newest page is found by walking forward.
async fn events_page(api: &Api, query: &str) -> Resp {
    let after: Option<i64> = param(query, "after").and_then(|a| a.parse().ok());
    let mut from = after.unwrap_or(0);
    let mut events = vec![];
    loop {
        let Some(Value::Array(batch)) = ask(api, Query::Events { after: from }).await else {
            break;
        };
        let full = batch.len() >= 500;
        if let Some(last) = batch.last().and_then(|e| e["id"].as_i64()) {
            from = last;
        }
        if !batch.is_empty() {
            events = batch;
        }
        if !full || after.is_some() {
            break;
        }
    }
    html(StatusCode::OK, pages::ops::events(&events, after))
}

/// Whether a request carries the API token, as `Bearer TOKEN` or as the password of
/// HTTP Basic (which a browser asks for by itself): `[ui] require_token`.
fn reader<B>(api: &Api, req: &Request<B>) -> bool {
    let Some(token) = &api.token else {
        return false;
    };
    let Some(h) = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
    else {
        return false;
    };
    let given = if let Some(t) = h.strip_prefix("Bearer ") {
        t.as_bytes().to_vec()
    } else if let Some(b) = h.strip_prefix("Basic ") {
        let pair = base64::engine::general_purpose::STANDARD
            .decode(b.trim())
            .unwrap_or_default();
        match pair.iter().position(|&c| c == b':') {
            Some(i) => pair[i + 1..].to_vec(),
            None => return false,
        }
    } else {
        return false;
    };
    // Constant-time comparison, as for the API.
    bool::from(given.ct_eq(token.as_bytes()))
}

/// Whether a state-changing request comes from this site's own pages. Browsers send
/// `Sec-Fetch-Site` and, on a POST, `Origin`; a client that sends neither (curl) is not a
/// browser another site could steer, and still needs the token.
fn same_site<B>(req: &Request<B>) -> bool {
    let h = req.headers();
    let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok());
    if let Some(site) = get("sec-fetch-site") {
        if site != "same-origin" && site != "none" {
            return false;
        }
    }
    match (get("origin"), get("host")) {
        (Some(origin), Some(host)) => {
            origin == format!("http://{host}") || origin == format!("https://{host}")
        }
        (Some(_), None) => false,
        (None, _) => true,
    }
}

/// `POST /builders/drain` (or `undrain`), a form with `uri` and `token`.
async fn drain<B>(api: &Api, req: Request<B>, drained: bool) -> Resp
where
    B: Body,
    B::Error: Into<crate::shell::api::BoxError>,
{
    let refused = |status, why: &str| {
        html(
            status,
            pages::ops::message("Refused", &format!("{why} Nothing was changed.")),
        )
    };
    if !same_site(&req) {
        return refused(StatusCode::FORBIDDEN, "The request came from another site.");
    }
    let body = match http_body_util::Limited::new(req.into_body(), 16 * 1024)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => return refused(StatusCode::BAD_REQUEST, "The form could not be read."),
    };
    let field = |name: &str| {
        form_urlencoded::parse(&body)
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    let given = field("token").unwrap_or_default();
    // Constant-time comparison: the token guards write access.
    let ok = api
        .token
        .as_ref()
        .is_some_and(|t| !given.is_empty() && bool::from(given.as_bytes().ct_eq(t.as_bytes())));
    if !ok {
        return refused(StatusCode::UNAUTHORIZED, "Missing or wrong API token.");
    }
    let Some(uri) = field("uri") else {
        return refused(StatusCode::BAD_REQUEST, "No builder was named.");
    };
    let (reply, rx) = oneshot::channel();
    let msg = Msg::Drain {
        builder: uri.clone(),
        drained,
        reply,
    };
    if api.driver.tx.send(msg).await.is_err() {
        return refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "The server is shutting down.",
        );
    }
    match rx.await {
        Ok(true) => {
            let done = if drained { "drained" } else { "returned" };
            let to = format!(
                "/builders?done={}",
                form_urlencoded::byte_serialize(format!("{done} {uri}").as_bytes())
                    .collect::<String>()
            );
            // Post/redirect/get: reloading the page does not repeat the action.
            let mut r = respond(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", "");
            r.headers_mut()
                .insert("location", to.parse().expect("encoded location"));
            r
        }
        Ok(false) => refused(StatusCode::NOT_FOUND, "No such builder."),
        Err(_) => refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "The server is shutting down.",
        ),
    }
}
