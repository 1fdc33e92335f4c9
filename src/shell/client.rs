//! A small HTTP client for the CLI commands (`submit`, `status`, `cancel`) and the demo.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach mergequeue at {url}: {msg}")]
    Connect { url: String, msg: String },
    #[error("{status}: {body}")]
    Status { status: StatusCode, body: String },
}

pub struct ApiClient {
    pub base: String,
    pub token: Option<String>,
    http: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl ApiClient {
    pub fn new(base: &str, token: Option<String>) -> ApiClient {
        let base = if base.starts_with("http") {
            base.to_string()
        } else {
            format!("http://{base}")
        };
        ApiClient {
            base: base.trim_end_matches('/').to_string(),
            token,
            http: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Sends a request; returns the status and the body (JSON when it parses).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value), ClientError> {
        let url = format!("{}{}", self.base, path);
        let mut req = Request::builder().method(method).uri(&url);
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let bytes = body
            .map(|b| serde_json::to_vec(&b).expect("json"))
            .unwrap_or_default();
        let req = req
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| ClientError::Connect {
                url: url.clone(),
                msg: e.to_string(),
            })?;
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| ClientError::Connect {
                url: url.clone(),
                msg: e.to_string(),
            })?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Connect {
                url: url.clone(),
                msg: e.to_string(),
            })?
            .to_bytes();
        let v = serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
        Ok((status, v))
    }

    /// Like `call`, but a non-2xx status is an error.
    pub async fn ok(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        let (status, v) = self.call(method, path, body).await?;
        if !status.is_success() {
            let body = v
                .get("error")
                .and_then(|e| e.as_str())
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            return Err(ClientError::Status { status, body });
        }
        Ok(v)
    }
}
