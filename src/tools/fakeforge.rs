//! A stateful fake forge on loopback, in GitHub's or Gitea's shapes, for the end-to-end
//! tests and `mergequeue demo --forge`: the forges cannot run here. It keeps pull
//! requests, permissions, comments and statuses; answers the REST calls mergequeue makes
//! (`docs/forge.md`) with their documented status codes, paging (GitHub's `Link` header
//! and `per_page`, Gitea's `limit`) and authorization (`Bearer` or `token`; a GitHub App's
//! JWT checked against its public key); records every request; and can play an outage
//! (502s) or a spent rate limit (403 with `X-RateLimit-Remaining: 0`).
//!
//! Answers are built from templates (`State::templates`, by operation id) with the fields
//! that matter patched in; the contract tests replace them with the examples of the
//! forge's own API description, so the fake answers what the real one documents.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use serde_json::{json, Value};
use tokio::net::TcpListener;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Github,
    Gitea,
}

/// One request the forge was sent.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// The path under the API root, e.g. `/repos/nix/pkgs/statuses/SHA`.
    pub path: String,
    pub body: Value,
}

/// A GitHub App the fake knows.
pub struct FakeApp {
    pub id: u64,
    pub slug: String,
    pub installation_id: u64,
    pub public_pem: Vec<u8>,
    /// Installation tokens handed out.
    pub issued: Vec<String>,
}

#[derive(Default)]
pub struct State {
    pub pulls: BTreeMap<u64, Value>,
    pub permissions: BTreeMap<String, String>,
    pub comments: Vec<Value>,
    pub requests: Vec<Seen>,
    /// Answer this many writes with 502 first (an outage).
    pub fail_writes: usize,
    /// Answer this many requests with GitHub's spent rate limit (403) first.
    pub rate_limited: usize,
    pub token: String,
    /// The token's own login (`GET /user`).
    pub login: String,
    pub app: Option<FakeApp>,
    /// Answer bodies by operation id (`pulls/get`, …), patched per request.
    pub templates: BTreeMap<String, Value>,
    next_id: u64,
}

pub struct FakeForge {
    pub state: Arc<Mutex<State>>,
    pub shape: Shape,
    /// What `[repos.forge] api_url` names: `http://ADDR` (GitHub) or `http://ADDR/api/v1`.
    pub api_url: String,
    /// `OWNER/NAME`.
    pub repository: String,
}

impl FakeForge {
    /// Serves on a free loopback port until the runtime ends.
    pub async fn start(shape: Shape, repository: &str, token: &str) -> std::io::Result<FakeForge> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let api_url = match shape {
            Shape::Github => format!("http://{addr}"),
            Shape::Gitea => format!("http://{addr}/api/v1"),
        };
        let state = Arc::new(Mutex::new(State {
            token: token.to_string(),
            login: "mergequeue".into(),
            next_id: 1000,
            ..State::default()
        }));
        let forge = FakeForge {
            state: state.clone(),
            shape,
            api_url: api_url.clone(),
            repository: repository.to_string(),
        };
        let (repo, root) = (repository.to_string(), api_url.clone());
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let (state, repo, root) = (state.clone(), repo.clone(), root.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let (state, repo, root) = (state.clone(), repo.clone(), root.clone());
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                serve(&state, shape, &repo, &root, req).await,
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        Ok(forge)
    }

    /// A new open pull request (or a replaced one).
    pub fn open_pull(&self, number: u64, head: &str, base: &str, title: &str, author: &str) {
        let mut s = self.state.lock().unwrap();
        let mut p = template(&s, "pulls/get");
        p["number"] = json!(number);
        p["state"] = json!("open");
        p["title"] = json!(title);
        p["user"]["login"] = json!(author);
        p["merged"] = json!(false);
        p["head"]["sha"] = json!(head);
        p["head"]["ref"] = json!(format!("pr-{number}"));
        p["base"]["ref"] = json!(base);
        p["labels"] = json!([]);
        // GitHub's own example of a pull request breaks its schema here (a team without
        // `type`); nobody was asked to review.
        p["requested_teams"] = json!([]);
        p["requested_reviewers"] = json!([]);
        s.pulls.insert(number, p);
    }

    /// The labels pull request `number` carries, as label objects of the forge's shape.
    pub fn set_labels(&self, number: u64, names: &[&str]) {
        let mut s = self.state.lock().unwrap();
        let one = template(&s, "webhook/pull_request.labeled")["label"].clone();
        let labels: Vec<Value> = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let mut l = if one.is_object() {
                    one.clone()
                } else {
                    json!({})
                };
                l["name"] = json!(n);
                l["id"] = json!(i + 1);
                l
            })
            .collect();
        if let Some(p) = s.pulls.get_mut(&number) {
            p["labels"] = json!(labels);
        }
    }

    /// New commits on pull request `number`.
    pub fn push(&self, number: u64, head: &str) {
        let mut s = self.state.lock().unwrap();
        if let Some(p) = s.pulls.get_mut(&number) {
            p["head"]["sha"] = json!(head);
        }
    }

    pub fn set_permission(&self, user: &str, permission: &str) {
        let mut s = self.state.lock().unwrap();
        s.permissions.insert(user.into(), permission.into());
    }

    /// A comment made on pull request `number`, as its list shows it; returns its id.
    pub fn add_comment(&self, number: u64, user: &str, body: &str) -> u64 {
        let mut s = self.state.lock().unwrap();
        s.next_id += 1;
        let id = s.next_id;
        let c = comment_object(&s, &self.api_url, &self.repository, id, number, user, body);
        s.comments.push(c);
        id
    }

    /// The webhook a forge sends for a new comment on a pull request: (event, body).
    pub fn comment_event(&self, number: u64, comment_id: u64, user: &str) -> (String, Value) {
        let s = self.state.lock().unwrap();
        let c = s
            .comments
            .iter()
            .find(|c| c["id"] == comment_id)
            .cloned()
            .unwrap_or(Value::Null);
        let pull = s.pulls.get(&number).cloned().unwrap_or(Value::Null);
        let mut v = template(&s, "webhook/issue_comment.created");
        v["action"] = json!("created");
        v["comment"] = c;
        v["issue"]["number"] = json!(number);
        v["issue"]["title"] = pull["title"].clone();
        v["issue"]["pull_request"] =
            json!({ "url": format!("{}/repos/{}/pulls/{number}", self.api_url, self.repository) });
        v["sender"]["login"] = json!(user);
        if self.shape == Shape::Gitea {
            v["is_pull"] = json!(true);
        }
        ("issue_comment".into(), v)
    }

    /// The webhook for a pull request's `action` (GitHub's names; `synchronize` is sent
    /// as Gitea's `synchronized` in Gitea's shape).
    pub fn pull_event(&self, number: u64, action: &str, sender: &str) -> (String, Value) {
        let s = self.state.lock().unwrap();
        let mut v = template(&s, &format!("webhook/pull_request.{action}"));
        v["action"] = json!(match (self.shape, action) {
            (Shape::Gitea, "synchronize") => "synchronized",
            _ => action,
        });
        v["number"] = json!(number);
        v["pull_request"] = s.pulls.get(&number).cloned().unwrap_or(Value::Null);
        v["sender"]["login"] = json!(sender);
        ("pull_request".into(), v)
    }

    /// Answers from now on built on the examples of an OpenAPI description (the response
    /// of each operation with an example, by operation id) and on webhook examples (by
    /// `event.action`, under `webhook/`).
    pub fn use_examples(&self, openapi: &Value, webhooks: &Value) {
        let mut s = self.state.lock().unwrap();
        for item in openapi["paths"]
            .as_object()
            .into_iter()
            .flat_map(|p| p.values())
        {
            for op in item.as_object().into_iter().flat_map(|o| o.values()) {
                let Some(id) = op["operationId"].as_str() else {
                    continue;
                };
                let ok = ["200", "201"]
                    .iter()
                    .map(|c| &op["responses"][c]["content"]["application/json"]["examples"])
                    .find_map(|e| e.as_object().and_then(|e| e.values().next()));
                let Some(example) = ok else { continue };
                let value = match example["$ref"].as_str() {
                    Some(r) => {
                        let name = r.rsplit('/').next().unwrap_or("");
                        openapi["components"]["examples"][name]["value"].clone()
                    }
                    None => example["value"].clone(),
                };
                // A list's template is the shape of its items.
                let value = match value {
                    Value::Array(mut items) if !items.is_empty() => items.swap_remove(0),
                    v => v,
                };
                s.templates.insert(id.to_string(), value);
            }
        }
        for (key, ex) in webhooks.as_object().into_iter().flatten() {
            s.templates.insert(format!("webhook/{key}"), ex.clone());
        }
    }

    /// Delivers a webhook to mergequeue at `listen` for `repo`, signed with `secret` the
    /// way this forge signs (GitHub's `X-Hub-Signature-256: sha256=HEX`, Gitea's bare
    /// hex); the answer's status.
    pub async fn deliver(
        &self,
        listen: &str,
        repo: &str,
        secret: &[u8],
        id: &str,
        (event, body): &(String, Value),
    ) -> std::io::Result<u16> {
        let bytes = serde_json::to_vec(body)?;
        let hex = crate::shell::forge::webhook::sign(secret, &bytes);
        let (prefix, sig_header, sig) = match self.shape {
            Shape::Github => ("GitHub", "x-hub-signature-256", format!("sha256={hex}")),
            Shape::Gitea => ("Gitea", "x-gitea-signature", hex),
        };
        let stream = tokio::net::TcpStream::connect(listen).await?;
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        let req = Request::post(format!("/api/v1/forge/{repo}/webhook"))
            .header("host", listen)
            .header("content-type", "application/json")
            .header(format!("x-{}-event", prefix.to_lowercase()), event.as_str())
            .header(format!("x-{}-delivery", prefix.to_lowercase()), id)
            .header(sig_header, sig)
            .body(Full::new(Bytes::from(bytes)))
            .map_err(std::io::Error::other)?;
        let resp = send
            .send_request(req)
            .await
            .map_err(std::io::Error::other)?;
        Ok(resp.status().as_u16())
    }

    /// Every request sent so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.state.lock().unwrap().requests.clone()
    }

    /// The path of the repository's `rest` (`/statuses/SHA`) as `Seen::path` has it.
    pub fn repo_path(&self, rest: &str) -> String {
        format!("/repos/{}{rest}", self.repository)
    }
}

/// A template's copy, or an empty object.
fn template(s: &State, op: &str) -> Value {
    s.templates
        .get(op)
        .cloned()
        .unwrap_or_else(|| default_template(op))
}

/// The shapes the fake answers with when no API description's examples were given: the
/// fields mergequeue reads, in both forges' names.
fn default_template(op: &str) -> Value {
    match op {
        "pulls/get" => json!({"number": 0, "state": "open", "title": "", "user": {"login": ""},
            "merged": false, "head": {"sha": "", "ref": ""}, "base": {"ref": ""}, "labels": []}),
        "webhook/issue_comment.created" => {
            json!({"action": "created", "issue": {}, "comment": {}, "sender": {}})
        }
        op if op.starts_with("webhook/") => json!({"sender": {}}),
        _ => json!({}),
    }
}

#[allow(clippy::too_many_arguments)]
fn comment_object(
    s: &State,
    api_url: &str,
    repo: &str,
    id: u64,
    number: u64,
    user: &str,
    body: &str,
) -> Value {
    let mut c = template(s, "issues/create-comment");
    let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    c["id"] = json!(id);
    c["body"] = json!(body);
    c["user"]["login"] = json!(user);
    c["created_at"] = json!(now);
    c["updated_at"] = json!(now);
    c["issue_url"] = json!(format!("{api_url}/repos/{repo}/issues/{number}"));
    c
}

async fn serve(
    state: &Arc<Mutex<State>>,
    shape: Shape,
    repo: &str,
    root: &str,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let method = req.method().to_string();
    let prefix = match shape {
        Shape::Github => "",
        Shape::Gitea => "/api/v1",
    };
    let path = req.uri().path().to_string();
    let path = path.strip_prefix(prefix).unwrap_or(&path).to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut s = state.lock().unwrap();
    let a = answer(
        &mut s, shape, repo, root, &method, &path, &query, &auth, body,
    );
    let mut r = Response::builder()
        .status(a.status)
        .header("content-type", "application/json");
    for (k, v) in a.headers {
        r = r.header(k, v);
    }
    let bytes = if a.body.is_null() {
        Bytes::new()
    } else {
        Bytes::from(a.body.to_string())
    };
    r.body(Full::new(bytes)).expect("response")
}

struct Answer {
    status: u16,
    body: Value,
    headers: Vec<(&'static str, String)>,
}

fn reply(status: u16, body: Value) -> Answer {
    Answer {
        status,
        body,
        headers: vec![],
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Checks a GitHub App's JWT: RS256, signed by the App's key, `iss` its id, not expired,
/// at most 10 minutes long.
fn app_jwt_ok(s: &State, auth: &str) -> bool {
    let (Some(app), Some(jwt)) = (&s.app, auth.strip_prefix("Bearer ")) else {
        return false;
    };
    let Ok(key) = jsonwebtoken::DecodingKey::from_rsa_pem(&app.public_pem) else {
        return false;
    };
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.set_required_spec_claims(&["exp", "iat", "iss"]);
    v.set_issuer(&[app.id.to_string()]);
    match jsonwebtoken::decode::<Value>(jwt, &key, &v) {
        Ok(t) => {
            let (iat, exp) = (t.claims["iat"].as_u64(), t.claims["exp"].as_u64());
            matches!((iat, exp), (Some(i), Some(e)) if e > i && e - i <= 600)
        }
        Err(_) => false,
    }
}

#[allow(clippy::too_many_arguments)]
fn answer(
    s: &mut State,
    shape: Shape,
    repo: &str,
    root: &str,
    method: &str,
    path: &str,
    query: &str,
    auth: &str,
    body: Value,
) -> Answer {
    if s.rate_limited > 0 {
        s.rate_limited -= 1;
        let mut a = reply(
            403,
            json!({"message": "API rate limit exceeded", "documentation_url": "https://docs.github.com/rest"}),
        );
        a.headers = vec![
            ("x-ratelimit-remaining", "0".into()),
            ("x-ratelimit-reset", (unix_now() + 1).to_string()),
        ];
        return a;
    }
    // The App's own endpoints take its JWT.
    if shape == Shape::Github && path.starts_with("/app") {
        if !app_jwt_ok(s, auth) {
            return reply(
                401,
                json!({"message": "A JSON web token could not be decoded"}),
            );
        }
        let (mut got, mut token) = (
            template(s, "apps/get-authenticated"),
            template(s, "apps/create-installation-access-token"),
        );
        let app = s.app.as_mut().expect("checked");
        if method == "GET" && path == "/app" {
            got["id"] = json!(app.id);
            got["slug"] = json!(app.slug);
            return reply(200, got);
        }
        let want = format!("/app/installations/{}/access_tokens", app.installation_id);
        if method == "POST" && path == want {
            let t = format!("ghs_fake{}", app.issued.len() + 1);
            app.issued.push(t.clone());
            let expires =
                humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(3600));
            token["token"] = json!(t);
            token["expires_at"] = json!(expires.to_string());
            return reply(201, token);
        }
        return reply(404, json!({"message": "Not Found"}));
    }
    let rest = path.strip_prefix(&format!("/repos/{repo}"));
    if shape == Shape::Github && method == "GET" && rest == Some("/installation") {
        if !app_jwt_ok(s, auth) {
            return reply(
                401,
                json!({"message": "A JSON web token could not be decoded"}),
            );
        }
        let mut v = template(s, "apps/get-repo-installation");
        v["id"] = json!(s.app.as_ref().map_or(0, |a| a.installation_id));
        v["app_id"] = json!(s.app.as_ref().map_or(0, |a| a.id));
        return reply(200, v);
    }
    let authorized = match shape {
        Shape::Github => auth.strip_prefix("Bearer ").is_some_and(|t| {
            t == s.token
                || s.app
                    .as_ref()
                    .is_some_and(|a| a.issued.iter().any(|i| i == t))
        }),
        Shape::Gitea => auth.strip_prefix("token ") == Some(s.token.as_str()),
    };
    if !authorized {
        return reply(401, json!({"message": "Bad credentials"}));
    }
    s.requests.push(Seen {
        method: method.into(),
        path: path.into(),
        body: body.clone(),
    });
    if method == "GET" && path == "/user" {
        let mut v = template(s, "users/get-authenticated");
        v["login"] = json!(s.login);
        return reply(200, v);
    }
    let Some(rest) = rest else {
        return reply(404, json!({"message": "Not Found"}));
    };
    let parts: Vec<&str> = rest.split('/').skip(1).collect();
    let param = |name: &str| {
        form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    match (method, parts.as_slice()) {
        ("GET", ["pulls", n]) => match n.parse().ok().and_then(|n: u64| s.pulls.get(&n)) {
            Some(p) => reply(200, p.clone()),
            None => reply(404, json!({"message": "Not Found"})),
        },
        ("GET", ["pulls"]) => {
            let open: Vec<Value> = s
                .pulls
                .values()
                .filter(|p| p["state"] == "open")
                .cloned()
                .collect();
            page(shape, root, path, query, open, &param)
        }
        ("GET", ["issues", "comments"]) => {
            let since = param("since").unwrap_or_default();
            let list: Vec<Value> = s
                .comments
                .iter()
                .filter(|c| c["created_at"].as_str().unwrap_or("") >= since.as_str())
                .cloned()
                .collect();
            page(shape, root, path, query, list, &param)
        }
        ("GET", ["collaborators", user, "permission"]) => {
            let p = s.permissions.get(*user).cloned().unwrap_or("none".into());
            // GitHub says `write` for `maintain` in `permission` and tells it in `role_name`.
            let permission = match p.as_str() {
                "maintain" => "write",
                "triage" => "read",
                other => other,
            };
            let mut v = template(s, "repos/get-collaborator-permission-level");
            v["permission"] = json!(permission);
            v["role_name"] = json!(p);
            v["user"]["login"] = json!(user);
            v["user"]["role_name"] = json!(p);
            reply(200, v)
        }
        ("POST", ["statuses", sha]) => write(s, |s| {
            let mut v = template(s, "repos/create-commit-status");
            for k in ["state", "description", "context"] {
                v[k] = body[k].clone();
            }
            v["url"] = json!(format!("{root}{path}"));
            let _ = sha;
            reply(201, v)
        }),
        ("POST", ["issues", n, "comments"]) => write(s, |s| {
            let Ok(n) = n.parse::<u64>() else {
                return reply(404, json!({"message": "Not Found"}));
            };
            s.next_id += 1;
            let id = s.next_id;
            let login = s.login.clone();
            let text = body["body"].as_str().unwrap_or("");
            let c = comment_object(s, root, repo, id, n, &login, text);
            s.comments.push(c.clone());
            reply(201, c)
        }),
        ("POST", ["pulls", n, "merge"]) if shape == Shape::Gitea => write(s, |s| {
            if let Some(p) = n.parse().ok().and_then(|n: u64| s.pulls.get_mut(&n)) {
                p["state"] = json!("closed");
                p["merged"] = json!(true);
            }
            reply(200, Value::Null)
        }),
        _ => reply(404, json!({"message": format!("no route {method} {path}")})),
    }
}

/// A write, unless the outage still lasts. A failed write is not kept.
fn write(s: &mut State, f: impl FnOnce(&mut State) -> Answer) -> Answer {
    if s.fail_writes > 0 {
        s.fail_writes -= 1;
        s.requests.pop();
        return reply(502, json!({"message": "bad gateway"}));
    }
    f(s)
}

/// One page of `items`: GitHub's `per_page` (default 30) with a `Link` header to the next
/// page; Gitea's `limit` (default 30; it sends `Link` too).
fn page(
    shape: Shape,
    root: &str,
    path: &str,
    query: &str,
    items: Vec<Value>,
    param: &dyn Fn(&str) -> Option<String>,
) -> Answer {
    let size_key = match shape {
        Shape::Github => "per_page",
        Shape::Gitea => "limit",
    };
    let size: usize = param(size_key)
        .and_then(|v| v.parse().ok())
        .unwrap_or(30)
        .clamp(1, 100);
    let number: usize = param("page")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let from = (number - 1) * size;
    let list: Vec<Value> = items.iter().skip(from).take(size).cloned().collect();
    let mut a = reply(200, Value::Array(list));
    if from + size < items.len() {
        let q: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(
                form_urlencoded::parse(query.as_bytes())
                    .filter(|(k, _)| k != "page")
                    .chain([("page".into(), (number + 1).to_string().into())]),
            )
            .finish();
        a.headers
            .push(("link", format!("<{root}{path}?{q}>; rel=\"next\"")));
    }
    a
}
