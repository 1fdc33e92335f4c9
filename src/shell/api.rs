//! HTTP API (JSON) and Prometheus metrics. Handlers validate input, then ask the driver;
//! bad input gets a 4xx with `{"error": "..."}` and changes nothing.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Body;
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::core::change::{ChangeState, Priority};
use crate::core::{Refusal, Submission};
use crate::shell::config::Config;
use crate::shell::driver::{Handle, Msg};
use crate::shell::status::{
    self, candidate, change_json, Query, Reply, StoreFacts, QUEUE_PAGE_DEFAULT, QUEUE_PAGE_MAX,
};

/// The web UI: HTML pages on the same router, beside the JSON API.
pub mod ui;

/// Webhook deliveries from forges.
mod forge;

pub struct Api {
    pub config: Config,
    pub token: Option<String>,
    pub driver: Handle,
}

type Resp = Response<Full<Bytes>>;
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn json_resp(status: StatusCode, v: Value) -> Resp {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            serde_json::to_vec_pretty(&v).expect("json"),
        )))
        .expect("valid response")
}

fn error(status: StatusCode, msg: impl Into<String>) -> Resp {
    json_resp(status, json!({ "error": msg.into() }))
}

/// Serves until `shutdown` resolves.
///
/// Slow or many clients cannot starve the others: at most `[http] max_connections` are
/// served at once (more wait in the listen backlog), a request's headers must arrive within
/// `header_timeout_secs` (the same limit closes a kept-alive connection that stays idle),
/// and bodies are read within `body_timeout_secs` and `max_body_bytes` (see `read_json`).
pub async fn serve(
    api: Arc<Api>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    let slots = Arc::new(tokio::sync::Semaphore::new(api.config.http.max_connections));
    let header_timeout = std::time::Duration::from_secs(api.config.http.header_timeout_secs);
    loop {
        let slot = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            s = slots.clone().acquire_owned() => s.expect("the semaphore is never closed"),
        };
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            r = listener.accept() => match r {
                Ok(s) => s,
                // Out of file descriptors and similar: back off instead of spinning.
                Err(e) => { log::warn!("accept: {e}"); tokio::time::sleep(std::time::Duration::from_millis(100)).await; continue; }
            },
        };
        let api = api.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let svc = hyper::service::service_fn(move |req| {
                let api = api.clone();
                async move {
                    let (method, path) = (req.method().clone(), req.uri().path().to_string());
                    let started = std::time::Instant::now();
                    let resp = api.route(req).await;
                    let ms = started.elapsed().as_millis() as u64;
                    let status = resp.status().as_u16();
                    log::info!(
                        method = method.as_str(), path = path.as_str(), status, duration_ms = ms;
                        "{method} {path} {status} {ms} ms"
                    );
                    Ok::<_, Infallible>(resp)
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(io, svc)
                .await;
        });
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitBody {
    #[serde(rename = "ref")]
    git_ref: String,
    target: String,
    #[serde(default)]
    title: String,
    #[serde(default)]
    author: String,
    #[serde(default)]
    priority: Option<String>,
}

impl SubmitBody {
    /// The full ref and the priority, or why they are refused.
    fn checked(&self) -> Result<(String, Priority), String> {
        // Refused before any git command sees it: a NUL byte or `..` is the client's
        // mistake, not an upstream failure, and a ref can never be read as an option.
        let git_ref = crate::shell::refname::check_given(&self.git_ref)
            .map_err(|e| format!("ref {:?} {e}", self.git_ref))?;
        let priority = match self.priority.as_deref() {
            None => Priority::Normal,
            Some(p) => Priority::parse(p)
                .ok_or_else(|| format!("priority {p:?} is not one of urgent, high, normal, low"))?,
        };
        Ok((git_ref, priority))
    }
}

impl Api {
    /// Answers `q`: what lives in memory from the driver task, what lives in the database
    /// from a read-only connection off it, so readers never hold up the single writer.
    pub(crate) async fn ask(&self, q: Query) -> Option<Reply> {
        match q {
            Query::Change { repo, id } => {
                let q = Query::Change {
                    repo: repo.clone(),
                    id,
                };
                match self.ask_driver(q, StoreFacts::default()).await {
                    Some(r) => Some(r),
                    None => self.ask_store(Query::StoredChange { repo, id }).await,
                }
            }
            Query::Candidate { repo, id } => self.candidate(repo, id).await,
            q @ (Query::Events { .. }
            | Query::Attempts { .. }
            | Query::Verifications { .. }
            | Query::Log { .. }
            | Query::StoredChange { .. }
            | Query::Compare { .. }
            | Query::Report { .. }
            | Query::Changes { .. }) => self.ask_store(q).await,
            q if StoreFacts::needed(&q) => {
                let (facts, q) = self
                    .driver
                    .reader
                    .read(move |s| Ok((StoreFacts::read(s, &q)?, q)))
                    .await
                    .map_err(|e| log::warn!("reading the database for a query: {e}"))
                    .ok()?;
                self.ask_driver(q, facts).await
            }
            q => self.ask_driver(q, StoreFacts::default()).await,
        }
    }

    async fn ask_driver(&self, q: Query, facts: StoreFacts) -> Option<Reply> {
        let (reply, rx) = oneshot::channel();
        let msg = Msg::Query { q, facts, reply };
        self.driver.tx.send(msg).await.ok()?;
        rx.await.ok().flatten()
    }

    async fn ask_store(&self, q: Query) -> Option<Reply> {
        self.driver
            .reader
            .read(move |s| Ok(status::from_store(s, q).ok().flatten()))
            .await
            .ok()
            .flatten()
    }

    /// The candidate page's answer in the steps of [`status::candidate`].
    async fn candidate(&self, repo: String, id: crate::core::CandId) -> Option<Reply> {
        let q = Query::Candidate {
            repo: repo.clone(),
            id,
        };
        let Some(Reply::CandidateCore(parts)) = self.ask_driver(q, StoreFacts::default()).await
        else {
            return None;
        };
        let reader = &self.driver.reader;
        let rebuild = reader
            .read(move |s| candidate::rebuild_jobs(s, *parts, &repo, id))
            .await
            .ok()??;
        let drvs = rebuild.drvs();
        let Some(Reply::JobStates(states)) = self
            .ask_driver(Query::JobStates { drvs }, StoreFacts::default())
            .await
        else {
            return None;
        };
        let v = reader
            .read(move |s| candidate::assemble(s, &rebuild, &states))
            .await
            .ok()?;
        Some(Reply::Json(v))
    }

    /// Reads a JSON body within `[http]`'s size and time limits: too large is 413, too
    /// slow 408, anything that is not the expected object 400.
    async fn read_json<T, B>(&self, req: Request<B>) -> Result<T, Resp>
    where
        T: serde::de::DeserializeOwned,
        B: Body,
        B::Error: Into<BoxError>,
    {
        let body = self
            .read_body(req.into_body(), self.config.http.max_body_bytes)
            .await?;
        parse_json(&body).map_err(|e| error(StatusCode::BAD_REQUEST, e))
    }

    /// Reads a body within `limit` bytes and `[http] body_timeout_secs`: too large is 413,
    /// too slow 408, a broken one 400.
    async fn read_body<B>(&self, body: B, limit: usize) -> Result<Bytes, Resp>
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        let wait = std::time::Duration::from_secs(self.config.http.body_timeout_secs);
        let read = http_body_util::Limited::new(body, limit).collect();
        match tokio::time::timeout(wait, read).await {
            Err(_) => Err(error(
                StatusCode::REQUEST_TIMEOUT,
                format!("the body did not arrive within {wait:?}"),
            )),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than {limit} bytes"),
            )),
            Ok(Err(e)) => Err(error(
                StatusCode::BAD_REQUEST,
                format!("cannot read body: {e}"),
            )),
            Ok(Ok(b)) => Ok(b.to_bytes()),
        }
    }

    fn authorized<B>(&self, req: &Request<B>) -> bool {
        let Some(token) = &self.token else {
            return false;
        };
        let given = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "));
        // Constant-time comparison: the token guards write access.
        given.is_some_and(|g| bool::from(g.as_bytes().ct_eq(token.as_bytes())))
    }

    /// Answers one request. Generic over the body so that tests drive the router
    /// in-process with a `Full<Bytes>` body, without a socket.
    pub async fn route<B>(&self, req: Request<B>) -> Resp
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        let path = req.uri().path().trim_end_matches('/').to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        let parts: Vec<&str> = path.split('/').skip(1).collect();
        let method = req.method().clone();
        let reply = match (&method, parts.as_slice()) {
            (&Method::GET, ["metrics"]) => self.ask(Query::Metrics).await,
            (&Method::GET, ["api", "v1", "builders"]) => self.ask(Query::Builders).await,
            (&Method::GET, ["api", "v1", "implementations"]) => {
                self.ask(Query::Implementations).await
            }
            (&Method::POST, ["api", "v1", "builders", action @ ("drain" | "undrain")]) => {
                let drained = *action == "drain";
                return self.drain(req, drained).await;
            }
            (&Method::GET, ["api", "v1", "attempts"]) => {
                let drv = query_param(&query, "drv").unwrap_or_default();
                self.ask(Query::Attempts { drv }).await
            }
            (&Method::GET, ["api", "v1", "verifications"]) => {
                let drv = query_param(&query, "drv");
                self.ask(Query::Verifications { drv }).await
            }
            (&Method::GET, ["api", "v1", "attempts", id, "log"]) => match id.parse() {
                Ok(attempt) => self.ask(Query::Log { attempt }).await,
                Err(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("attempt id {id:?} is not a number"),
                    )
                }
            },
            (&Method::GET, ["api", "v1", "events"]) => {
                let after = match query_param(&query, "after").map(|v| v.parse::<i64>()) {
                    None => 0,
                    Some(Ok(n)) => n,
                    Some(Err(_)) => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            "after must be an event id (a number)".to_string(),
                        )
                    }
                };
                self.ask(Query::Events { after }).await
            }
            (&Method::GET, ["api", "v1", "channels"]) => {
                self.ask(Query::Channels { name: None }).await
            }
            (&Method::GET, ["api", "v1", "channels", name]) => {
                match self
                    .ask(Query::Channels {
                        name: Some(name.to_string()),
                    })
                    .await
                {
                    Some(r) => Some(r),
                    None => {
                        return error(StatusCode::NOT_FOUND, format!("unknown channel {name:?}"))
                    }
                }
            }
            (&Method::POST, ["api", "v1", "forge", repo, "webhook"]) => {
                let repo = repo.to_string();
                return self.webhook(req, &repo).await;
            }
            (_, ["api", "v1", "repos", repo, rest @ ..]) => {
                if self.config.repo(repo).is_none() {
                    return error(StatusCode::NOT_FOUND, format!("unknown repo {repo:?}"));
                }
                let repo = repo.to_string();
                match (&method, rest) {
                    (&Method::GET, ["queue"]) => {
                        let (limit, offset) = match paging(&query) {
                            Ok(p) => p,
                            Err(e) => return error(StatusCode::BAD_REQUEST, e),
                        };
                        let branch = query_param(&query, "branch");
                        let q = Query::QueuePage {
                            repo,
                            branch,
                            offset,
                            limit,
                        };
                        self.ask(q).await
                    }
                    (&Method::GET, ["candidates"]) => self.ask(Query::Candidates { repo }).await,
                    (&Method::GET, ["broken"]) => self.ask(Query::Broken { repo }).await,
                    (&Method::GET, ["compare"]) => {
                        let (Some(from), Some(to)) =
                            (query_param(&query, "from"), query_param(&query, "to"))
                        else {
                            return error(
                                StatusCode::BAD_REQUEST,
                                "compare needs from=COMMIT and to=COMMIT".to_string(),
                            );
                        };
                        let limit = match paging(&query) {
                            Ok((limit, _)) => limit,
                            Err(e) => return error(StatusCode::BAD_REQUEST, e),
                        };
                        self.ask(Query::Compare { from, to, limit }).await
                    }
                    (&Method::GET, ["candidates", id, "why"]) => {
                        let (id, limit) = match candidate_page(id, &query) {
                            Ok(x) => x,
                            Err(e) => return error(StatusCode::BAD_REQUEST, e),
                        };
                        let nix_args = self.config.nix_args();
                        let reader = &self.driver.reader;
                        let timeout = self.config.timeouts.inspect();
                        status::why::answer(reader, (&nix_args, timeout), repo, id, limit)
                            .await
                            .map_err(|e| log::warn!("reading the database for a query: {e}"))
                            .ok()
                            .flatten()
                            .map(Reply::Json)
                    }
                    (&Method::GET, ["candidates", id, "report"]) => {
                        let (id, limit) = match candidate_page(id, &query) {
                            Ok(x) => x,
                            Err(e) => return error(StatusCode::BAD_REQUEST, e),
                        };
                        self.ask(Query::Report { repo, id, limit }).await
                    }
                    (&Method::GET, ["candidates", id]) => match id.parse() {
                        Ok(id) => self.ask(Query::Candidate { repo, id }).await,
                        Err(_) => {
                            return error(
                                StatusCode::BAD_REQUEST,
                                format!("candidate id {id:?} is not a number"),
                            )
                        }
                    },
                    (&Method::POST, ["changes"]) => return self.submit(req, repo).await,
                    (&Method::GET, ["changes"]) => {
                        let state = match query_param(&query, "state") {
                            None => None,
                            Some(s) => match ChangeState::parse(&s) {
                                Some(s) => Some(s),
                                None => {
                                    return error(
                                        StatusCode::BAD_REQUEST,
                                        format!("state {s:?} is not queued, testing, merged, rejected or cancelled"),
                                    )
                                }
                            },
                        };
                        let (limit, offset) = match paging(&query) {
                            Ok(p) => p,
                            Err(e) => return error(StatusCode::BAD_REQUEST, e),
                        };
                        let q = Query::Changes {
                            repo,
                            state,
                            limit,
                            offset,
                        };
                        self.ask_store(q).await
                    }
                    (&Method::GET, ["changes", id]) => match id.parse() {
                        Ok(id) => self.ask(Query::Change { repo, id }).await,
                        Err(_) => {
                            return error(
                                StatusCode::BAD_REQUEST,
                                format!("change id {id:?} is not a number"),
                            )
                        }
                    },
                    (&Method::DELETE, ["changes", id]) => {
                        if !self.authorized(&req) {
                            return error(
                                StatusCode::UNAUTHORIZED,
                                "missing or invalid bearer token",
                            );
                        }
                        let Ok(id) = id.parse() else {
                            return error(
                                StatusCode::BAD_REQUEST,
                                format!("change id {id:?} is not a number"),
                            );
                        };
                        return self.cancel(repo, id).await;
                    }
                    _ => {
                        return error(
                            StatusCode::NOT_FOUND,
                            format!("no route for {method} {path}"),
                        )
                    }
                }
            }
            // The API's own namespaces answer JSON; every other path is the web UI's.
            (_, ["api" | "metrics", ..]) => {
                return error(
                    StatusCode::NOT_FOUND,
                    format!("no route for {method} {path}"),
                )
            }
            _ => return ui::route(self, req).await,
        };
        match reply {
            Some(Reply::Json(v)) => json_resp(StatusCode::OK, v),
            // Steps of the candidate page, consumed by `Api::ask`; never routed.
            Some(Reply::CandidateCore(_) | Reply::JobStates(_)) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal reply reached the router",
            ),
            Some(Reply::Text(t)) => Response::builder()
                .header("content-type", "text/plain; version=0.0.4")
                .body(Full::new(Bytes::from(t)))
                .expect("valid response"),
            None => error(StatusCode::NOT_FOUND, format!("not found: {path}")),
        }
    }

    async fn submit<B>(&self, req: Request<B>, repo: String) -> Resp
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        if !self.authorized(&req) {
            return error(StatusCode::UNAUTHORIZED, "missing or invalid bearer token");
        }
        let b: SubmitBody = match self.read_json(req).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        let r = self.config.repo(&repo).expect("checked by the router");
        if r.branch(&b.target).is_none() {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "target {:?} is not a branch mergequeue manages in repo {repo:?}",
                    b.target
                ),
            );
        }
        let (git_ref, priority) = match b.checked() {
            Ok(v) => v,
            Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, e),
        };
        let url = r.url.clone();
        let lookup = git_ref.clone();
        let head =
            match tokio::task::spawn_blocking(move || crate::shell::git::ls_remote(&url, &lookup))
                .await
            {
                Ok(Ok(Some(h))) => h,
                Ok(Ok(None)) => {
                    return error(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        format!("ref {git_ref:?} does not exist in repo {repo:?}"),
                    )
                }
                Ok(Err(e)) => {
                    return error(
                        StatusCode::BAD_GATEWAY,
                        format!("cannot reach repo {repo:?}: {e}"),
                    )
                }
                Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            };
        let sub = Submission {
            repo,
            target: b.target,
            git_ref,
            head,
            title: b.title,
            author: b.author,
            priority,
            pr: None,
            approver: None,
        };
        let (reply, rx) = oneshot::channel();
        if self
            .driver
            .tx
            .send(Msg::Submit { sub, reply })
            .await
            .is_err()
        {
            return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
        }
        match rx.await {
            Ok(Ok(c)) => json_resp(StatusCode::CREATED, change_json(&c, None)),
            Ok(Err(r)) => refusal(r),
            Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
        }
    }

    /// `POST /api/v1/builders/drain` (or `undrain`) with `{"uri": "..."}`.
    async fn drain<B>(&self, req: Request<B>, drained: bool) -> Resp
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        if !self.authorized(&req) {
            return error(StatusCode::UNAUTHORIZED, "missing or invalid bearer token");
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Body {
            uri: String,
        }
        let b: Body = match self.read_json(req).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        let (reply, rx) = oneshot::channel();
        let msg = Msg::Drain {
            builder: b.uri.clone(),
            drained,
            reply,
        };
        if self.driver.tx.send(msg).await.is_err() {
            return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
        }
        match rx.await {
            Ok(true) => json_resp(StatusCode::OK, json!({ "uri": b.uri, "drained": drained })),
            Ok(false) => error(
                StatusCode::NOT_FOUND,
                format!("unknown builder {:?}", b.uri),
            ),
            Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
        }
    }

    async fn cancel(&self, repo: String, id: u64) -> Resp {
        let (reply, rx) = oneshot::channel();
        if self
            .driver
            .tx
            .send(Msg::Cancel { repo, id, reply })
            .await
            .is_err()
        {
            return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
        }
        match rx.await {
            Ok(Ok(c)) => json_resp(StatusCode::OK, change_json(&c, None)),
            Ok(Err(r)) => refusal(r),
            Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
        }
    }
}

fn refusal(r: Refusal) -> Resp {
    match r {
        Refusal::UnknownRepo => error(StatusCode::NOT_FOUND, "unknown repo"),
        Refusal::UnknownTarget => error(StatusCode::UNPROCESSABLE_ENTITY, "unknown target branch"),
        Refusal::UnknownChange => error(StatusCode::NOT_FOUND, "unknown change"),
        Refusal::TooLate(s) => error(
            StatusCode::CONFLICT,
            format!(
                "the change is {} and can no longer be cancelled",
                if s == ChangeState::Testing {
                    "being landed"
                } else {
                    s.as_str()
                }
            ),
        ),
    }
}

/// A request body as the object `T` expects, or the message a client is told.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("malformed JSON: {e}"))
}

/// `POST …/changes`' checks of its body that need neither git nor the engine: the JSON shape
/// (400), then the ref and the priority (422). The fuzz target `api_body` drives this.
pub fn check_submit_body(body: &[u8]) -> Result<(String, Priority), String> {
    parse_json::<SubmitBody>(body)?.checked()
}

/// The first value of `name` in a query string, percent-decoded.
/// `limit` (default `QUEUE_PAGE_DEFAULT`) and `offset` (default 0) of a list request.
fn paging(query: &str) -> Result<(usize, usize), &'static str> {
    let num = |name, default| query_param(query, name).map_or(Some(default), |v| v.parse().ok());
    match (num("limit", QUEUE_PAGE_DEFAULT), num("offset", 0)) {
        (Some(limit), Some(offset)) => Ok((limit.min(QUEUE_PAGE_MAX), offset)),
        _ => Err("offset and limit must be numbers"),
    }
}

/// A candidate id from the path and the `limit` of a list about it.
fn candidate_page(id: &str, query: &str) -> Result<(u64, usize), String> {
    let id = id
        .parse()
        .map_err(|_| format!("candidate id {id:?} is not a number"))?;
    let (limit, _) = paging(query)?;
    Ok((id, limit))
}

fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::query_param;

    #[test]
    fn query_parameters_are_fully_percent_decoded() {
        assert_eq!(
            query_param("x=1&drv=%2Fnix%2Fstore%2Fabc-gtk%2B3.drv", "drv").as_deref(),
            Some("/nix/store/abc-gtk+3.drv")
        );
        assert_eq!(query_param("after=12", "after").as_deref(), Some("12"));
        assert_eq!(query_param("after=12", "drv"), None);
    }
}
