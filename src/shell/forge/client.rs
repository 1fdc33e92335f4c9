//! The forge's REST API, the calls mergequeue makes (`docs/forge.md`): read a pull
//! request, a user's permission, the token's own login; post a commit status, a comment,
//! and (Gitea, Forgejo) mark a pull request merged. HTTPS with rustls and the system's
//! certificate authorities (`SSL_CERT_FILE` is honoured).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use crate::core::forge::{ForgeCommand, Permission, PullRequest, StatusState};
use crate::shell::config::{ForgeConfig, ForgeKind};

/// Items per page of a list.
const PAGE: usize = 50;

/// Longest wait for one forge request.

#[derive(Debug, thiserror::Error)]
pub enum ForgeError {
    #[error("{method} {url}: {status}: {body}")]
    Status {
        method: Method,
        url: String,
        status: StatusCode,
        body: String,
        /// `Retry-After`, or the wait until `X-RateLimit-Reset` when the limit is spent.
        retry_after: Option<Duration>,
    },
    #[error("{method} {url}: {msg}")]
    Transport {
        method: Method,
        url: String,
        msg: String,
    },
    #[error("{0}")]
    Shape(String),
}

impl ForgeError {
    /// Whether the forge may accept the same request later: its own failures, timeouts,
    /// and a spent rate limit (GitHub answers 403 or 429).
    pub fn is_transient(&self) -> bool {
        match self {
            ForgeError::Status { status, .. } => {
                status.is_server_error() || matches!(status.as_u16(), 403 | 408 | 429)
            }
            ForgeError::Transport { .. } => true,
            ForgeError::Shape(_) => false,
        }
    }

    /// How long the forge asked to be left alone, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ForgeError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Runs `call` until it succeeds, fails for good, or has failed transiently for about a
/// quarter of an hour: waits double from one second to a minute, or are what the forge
/// asked for (`Retry-After`, the rate limit's reset; at most ten minutes).
pub async fn retrying<T, F, Fut>(what: &str, call: F) -> Result<T, ForgeError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, ForgeError>>,
{
    let mut waited = Duration::ZERO;
    for attempt in 0u32.. {
        match call().await {
            Err(e) if e.is_transient() && waited < Duration::from_secs(900) => {
                let backoff = Duration::from_secs(1 << attempt.min(6)).min(Duration::from_secs(60));
                let wait = e
                    .retry_after()
                    .unwrap_or(backoff)
                    .min(Duration::from_secs(600));
                log::warn!("{what}: {e}; again in {wait:?}");
                tokio::time::sleep(wait).await;
                waited += wait;
            }
            other => return other,
        }
    }
    unreachable!("the loop returns")
}

pub struct ForgeClient {
    kind: ForgeKind,
    api_url: String,
    repository: String,
    auth: super::app::Auth,
    http: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// For the answer's head and again for its body (`timeouts.forge_secs`).
    timeout: Duration,
}

impl ForgeClient {
    pub fn new(
        cfg: &ForgeConfig,
        auth: super::app::Auth,
        timeout: Duration,
    ) -> std::io::Result<ForgeClient> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(ForgeClient {
            kind: cfg.kind,
            api_url: cfg.api_url.get_ref().trim_end_matches('/').to_string(),
            repository: cfg.repository.get_ref().clone(),
            auth,
            http: Client::builder(TokioExecutor::new()).build(https),
            timeout,
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ForgeError> {
        Ok(self.call_full(method, path, body).await?.0)
    }

    /// One page of a list, and whether another follows: the `Link` header's `rel="next"`
    /// when the forge sends one (GitHub; Gitea too), else a full page.
    async fn page(&self, path: &str) -> Result<(Vec<Value>, bool), ForgeError> {
        let (v, headers) = self.call_full(Method::GET, path, None).await?;
        let Value::Array(items) = v else {
            return Err(ForgeError::Shape(format!("{path}: not a list")));
        };
        let more = match headers.get("link").and_then(|l| l.to_str().ok()) {
            Some(link) => link.split(',').any(|l| l.contains("rel=\"next\"")),
            None => items.len() >= PAGE,
        };
        Ok((items, more))
    }

    async fn call_full(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(Value, hyper::HeaderMap), ForgeError> {
        use super::app::Auth;
        let auth = match &self.auth {
            Auth::None => None,
            // GitHub takes `Bearer`; Gitea and Forgejo document `token`.
            Auth::Token(t) => Some(match self.kind {
                ForgeKind::Github => format!("Bearer {t}"),
                ForgeKind::Gitea | ForgeKind::Forgejo => format!("token {t}"),
            }),
            Auth::App(app) => {
                let t = app
                    .token(&self.repository, |m, p, jwt| async move {
                        let auth = Some(format!("Bearer {jwt}"));
                        Ok(self.send(m, &p, None, auth).await?.0)
                    })
                    .await?;
                Some(format!("Bearer {t}"))
            }
        };
        self.send(method, path, body, auth).await
    }

    /// One request with the given `Authorization` header.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        auth: Option<String>,
    ) -> Result<(Value, hyper::HeaderMap), ForgeError> {
        let url = format!("{}{path}", self.api_url);
        let transport = |msg: String| ForgeError::Transport {
            method: method.clone(),
            url: url.clone(),
            msg,
        };
        let mut req = Request::builder()
            .method(method.clone())
            .uri(&url)
            .header("user-agent", "mergequeue")
            .header("accept", "application/json");
        if let Some(auth) = auth {
            req = req.header("authorization", auth);
        }
        let bytes = match &body {
            Some(b) => {
                req = req.header("content-type", "application/json");
                serde_json::to_vec(b).expect("json")
            }
            None => vec![],
        };
        let req = req
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| transport(e.to_string()))?;
        let resp = tokio::time::timeout(self.timeout, self.http.request(req))
            .await
            .map_err(|_| {
                transport(format!(
                    "no answer within {:?} (timeouts.forge_secs)",
                    self.timeout
                ))
            })?
            .map_err(|e| transport(e.to_string()))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let retry_after = retry_after(&headers, status);
        let body = tokio::time::timeout(self.timeout, resp.into_body().collect())
            .await
            .map_err(|_| transport("body too slow".into()))?
            .map_err(|e| transport(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            return Err(ForgeError::Status {
                method,
                url,
                status,
                body: crate::shell::nix::output::truncate(&String::from_utf8_lossy(&body), 500),
                retry_after,
            });
        }
        if body.is_empty() {
            return Ok((Value::Null, headers));
        }
        let v =
            serde_json::from_slice(&body).map_err(|e| ForgeError::Shape(format!("{url}: {e}")))?;
        Ok((v, headers))
    }

    fn repo_path(&self, rest: &str) -> String {
        format!("/repos/{}{rest}", self.repository)
    }

    /// The pull request as it is now.
    pub async fn pull(&self, number: u64) -> Result<PullRequest, ForgeError> {
        let v = self
            .call(
                Method::GET,
                &self.repo_path(&format!("/pulls/{number}")),
                None,
            )
            .await?;
        crate::shell::forge::webhook::pull_request(&v).map_err(|e| ForgeError::Shape(e.to_string()))
    }

    /// Every open pull request (pages of 50: GitHub reads `per_page`, Gitea `limit`).
    pub async fn open_pulls(&self) -> Result<Vec<PullRequest>, ForgeError> {
        let mut out = vec![];
        for page in 1..=400 {
            let path = format!("/pulls?state=open&per_page={PAGE}&limit={PAGE}&page={page}");
            let (items, more) = self.page(&self.repo_path(&path)).await?;
            for p in &items {
                out.push(
                    crate::shell::forge::webhook::pull_request(p)
                        .map_err(|e| ForgeError::Shape(e.to_string()))?,
                );
            }
            if !more {
                return Ok(out);
            }
        }
        Err(ForgeError::Shape(
            "more than 20,000 open pull requests".into(),
        ))
    }

    /// Comments on the repository's issues and pull requests made since `since`:
    /// (number, comment id, author, body).
    pub async fn comments_since(
        &self,
        since: std::time::SystemTime,
    ) -> Result<Vec<(u64, u64, String, String)>, ForgeError> {
        let since = humantime::format_rfc3339_seconds(since);
        let mut out = vec![];
        for page in 1..=400 {
            let path =
                format!("/issues/comments?since={since}&per_page={PAGE}&limit={PAGE}&page={page}");
            let (items, more) = self.page(&self.repo_path(&path)).await?;
            for c in &items {
                // `…/issues/N` (GitHub, Gitea) or `…/pulls/N` (Gitea, on pull requests).
                let number = ["pull_request_url", "issue_url"]
                    .iter()
                    .filter_map(|k| c[*k].as_str())
                    .filter_map(|u| u.rsplit('/').next()?.parse().ok())
                    .next();
                let (Some(number), Some(id), Some(author)) =
                    (number, c["id"].as_u64(), c["user"]["login"].as_str())
                else {
                    continue;
                };
                let body = c["body"].as_str().unwrap_or("").to_string();
                out.push((number, id, author.to_string(), body));
            }
            if !more {
                return Ok(out);
            }
        }
        Err(ForgeError::Shape(
            "more than 20,000 comments since the last resync".into(),
        ))
    }

    /// What `user` may do in the repository.
    pub async fn permission(&self, user: &str) -> Result<Permission, ForgeError> {
        let v = self
            .call(
                Method::GET,
                &self.repo_path(&format!("/collaborators/{user}/permission")),
                None,
            )
            .await?;
        // `role_name` says `maintain` where `permission` says `write` (GitHub).
        let p = v["role_name"]
            .as_str()
            .filter(|r| *r == "maintain")
            .or_else(|| v["permission"].as_str())
            .unwrap_or("none");
        Ok(Permission::parse(p))
    }

    /// The token's own login: comments by it are the bot's own. A GitHub App comments as
    /// `SLUG[bot]`, its slug read from `GET /app`.
    pub async fn whoami(&self) -> Result<String, ForgeError> {
        if let super::app::Auth::App(app) = &self.auth {
            let jwt = format!("Bearer {}", app.jwt()?);
            let (v, _) = self.send(Method::GET, "/app", None, Some(jwt)).await?;
            return v["slug"]
                .as_str()
                .map(|s| format!("{s}[bot]"))
                .ok_or_else(|| ForgeError::Shape("/app has no slug".into()));
        }
        let v = self.call(Method::GET, "/user", None).await?;
        v["login"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| ForgeError::Shape("/user has no login".into()))
    }

    /// Performs one outbox command.
    pub async fn deliver(&self, cmd: &ForgeCommand, context: &str) -> Result<(), ForgeError> {
        match cmd {
            ForgeCommand::Status {
                sha,
                state,
                description,
            } => {
                let state = match state {
                    StatusState::Pending => "pending",
                    StatusState::Success => "success",
                    StatusState::Failure => "failure",
                    StatusState::Error => "error",
                };
                let body =
                    json!({ "state": state, "description": description, "context": context });
                self.call(
                    Method::POST,
                    &self.repo_path(&format!("/statuses/{sha}")),
                    Some(body),
                )
                .await?;
            }
            ForgeCommand::Comment { pr, body } => {
                let body = json!({ "body": body });
                self.call(
                    Method::POST,
                    &self.repo_path(&format!("/issues/{pr}/comments")),
                    Some(body),
                )
                .await?;
            }
            ForgeCommand::MarkMerged { pr, sha } => {
                // GitHub marks a pull request merged when its head reaches the base.
                if self.kind != ForgeKind::Github {
                    let body = json!({ "Do": "manually-merged", "MergeCommitID": sha });
                    self.call(
                        Method::POST,
                        &self.repo_path(&format!("/pulls/{pr}/merge")),
                        Some(body),
                    )
                    .await?;
                }
            }
        }
        Ok(())
    }
}

/// The wait a 429 or a rate-limited 403 asks for.
fn retry_after(h: &hyper::HeaderMap, status: StatusCode) -> Option<Duration> {
    let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok());
    if let Some(secs) = get("retry-after").and_then(|v| v.trim().parse::<u64>().ok()) {
        return Some(Duration::from_secs(secs));
    }
    let limited = status == StatusCode::TOO_MANY_REQUESTS
        || (status == StatusCode::FORBIDDEN && get("x-ratelimit-remaining") == Some("0"));
    if !limited {
        return None;
    }
    let reset = get("x-ratelimit-reset").and_then(|v| v.parse::<u64>().ok())?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Some(Duration::from_secs(reset.saturating_sub(now).max(1)))
}
