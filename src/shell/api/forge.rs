//! `POST /api/v1/forge/{repo}/webhook`: deliveries from the repository's forge. No bearer
//! token: the body's HMAC-SHA256 with the webhook secret must match the forge's signature
//! header, else 401 and nothing changes. A delivery seen before is answered 200 and not
//! processed again; a new one 202, as soon as its id is stored (the work happens after).

use hyper::body::Body;
use hyper::{Request, StatusCode};
use serde_json::json;
use tokio::sync::oneshot;

use super::{error, json_resp, Api, BoxError, Resp};
use crate::shell::driver::Msg;
use crate::shell::forge::webhook::{self, WebhookError};

impl Api {
    pub(super) async fn webhook<B>(&self, req: Request<B>, repo: &str) -> Resp
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        let Some(forge) = self.config.repo(repo).and_then(|r| r.forge.as_ref()) else {
            return error(
                StatusCode::NOT_FOUND,
                format!("repo {repo:?} has no [repos.forge]"),
            );
        };
        let secret = match &forge.webhook_secret_file {
            // Read per delivery, so a rotated secret needs no restart.
            Some(p) => match crate::shell::driver::read_secret(p) {
                Ok(s) if !s.is_empty() => s,
                Ok(_) | Err(_) => {
                    log::warn!("[{repo}] webhook refused: the webhook secret cannot be read");
                    return error(StatusCode::UNAUTHORIZED, "no webhook secret is configured");
                }
            },
            None => return error(StatusCode::UNAUTHORIZED, "no webhook secret is configured"),
        };
        let (parts, body) = req.into_parts();
        let body = match self
            .read_body(body, self.config.http.max_webhook_bytes)
            .await
        {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        let delivery = match webhook::verify(forge.kind, secret.as_bytes(), &parts.headers, &body) {
            Ok(d) => d,
            Err(e @ (WebhookError::BadSignature | WebhookError::BadSignatureFormat(_))) => {
                log::warn!("[{repo}] webhook refused: {e}");
                return error(StatusCode::UNAUTHORIZED, e.to_string());
            }
            Err(e) if matches!(e, WebhookError::MissingHeader(ref h) if h.ends_with("signature") || h.ends_with("signature-256")) =>
            {
                return error(StatusCode::UNAUTHORIZED, e.to_string());
            }
            Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        };
        let event = match webhook::parse(&delivery.event, &body) {
            Ok(ev) => ev,
            Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        };
        let (reply, rx) = oneshot::channel();
        let msg = Msg::Delivery {
            repo: repo.to_string(),
            delivery: delivery.clone(),
            event,
            reply,
        };
        if self.driver.tx.send(msg).await.is_err() {
            return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
        }
        match rx.await {
            Ok(Ok(new)) => json_resp(
                if new {
                    StatusCode::ACCEPTED
                } else {
                    StatusCode::OK
                },
                json!({ "delivery": delivery.id, "event": delivery.event, "duplicate": !new }),
            ),
            Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e),
            Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
        }
    }
}
