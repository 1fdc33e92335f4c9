//! Delivers the notices outbox (`Record::Notice`): for each notice the planner
//! (`core::notify::plan`) decides who hears what, given what was already sent; this
//! task hands the pull-request comment to the forge outbox, sends the mails (SMTP,
//! STARTTLS unless turned off) and posts the webhook (HMAC-signed JSON).
//!
//! Retries are safe because the plan is: what reached someone is stored as sent before
//! the notice is tried again, and the planner leaves out whoever was told already. A
//! relay or hook that is down is retried with backoff for days; nothing is lost and the
//! queue never waits for it. Runs on its own database connection, like the outbox.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper::{Method, Request};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use lettre::message::{header::ContentType, Mailbox};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use sha2::Sha256;

use crate::core::forge::ForgeCommand;
use crate::core::notify::{plan, Delivery, Mail, NotifyPolicy};
use crate::shell::config::notify::{EmailConfig, WebhookConfig};
use crate::shell::config::Config;
use crate::shell::store::{Store, StoreError};

/// Longest wait between two tries of a notice.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// Tries before a notice is given up (with backoff capped at an hour: about two days).
const TRIES: u32 = 60;

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("mail to {to}: {msg}")]
    Mail { to: String, msg: String },
    #[error("webhook {url}: {msg}")]
    Webhook { url: String, msg: String },
    #[error("{0}")]
    Store(#[from] StoreError),
}

pub struct Notifier {
    policy: NotifyPolicy,
    /// Repositories whose pull requests can be commented on.
    forges: BTreeSet<String>,
    email: Option<EmailConfig>,
    webhook: Option<WebhookConfig>,
    http: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Notifier {
    /// `None` when nothing could deliver a notice (no forge, no mail, no webhook):
    /// notices then stay in the outbox, visible in the API, until one is configured.
    pub fn new(config: &Config) -> std::io::Result<Option<Notifier>> {
        let forges: BTreeSet<String> = config
            .repos
            .iter()
            .filter(|r| r.forge.is_some())
            .map(|r| r.name.get_ref().clone())
            .collect();
        let n = &config.notify;
        if forges.is_empty() && n.email.is_none() && n.webhook.is_none() {
            return Ok(None);
        }
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()?
            .https_or_http()
            .enable_http1()
            .build();
        let url = n
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", config.listen));
        Ok(Some(Notifier {
            policy: NotifyPolicy {
                cap_per_day: n.cap_per_maintainer_per_day,
                opt_out: n.opt_out.clone(),
                max_mentions: n.max_mentions,
                url: url.trim_end_matches('/').to_string(),
            },
            forges,
            email: n.email.clone(),
            webhook: n.webhook.clone(),
            http: Client::builder(TokioExecutor::new()).build(https),
        }))
    }

    /// One round: every notice due at `now`, oldest first. Returns how many left the
    /// outbox.
    pub async fn deliver_due(&self, store: &mut Store, now: i64) -> Result<usize, NotifyError> {
        let mut done = 0;
        for (i, p) in store.notices_due(now, 100)?.into_iter().enumerate() {
            // One time stamp per notice: a day's count is of distinct ones.
            let at = now + i as i64;
            let n = &p.notice;
            let mut who: BTreeSet<String> = n
                .jobs
                .iter()
                .flat_map(|j| j.maintainers.iter().map(|m| m.id().to_string()))
                .collect();
            who.insert("webhook".into());
            if let Some(pr) = n.pr {
                who.insert(format!("forge:#{pr}"));
            }
            let who: Vec<String> = who.into_iter().collect();
            let history = store.notified_since(&who, 0)?;
            let forge = self.forges.contains(&n.repo);
            let d = plan(n, &self.policy, &history, forge, self.email.is_some(), at);
            match self.send(store, p.id, &n.repo, d).await {
                Ok(()) => done += 1,
                Err(e) if p.attempts + 1 >= TRIES => {
                    log::warn!(
                        "[{}] giving up on a notice about #{} after {} tries: {e}",
                        n.repo,
                        n.change,
                        p.attempts + 1
                    );
                    store.notice_sent(p.id, None, &[], true)?;
                }
                Err(e) => {
                    let wait = Duration::from_secs(1 << p.attempts.min(12)).min(MAX_BACKOFF);
                    log::warn!(
                        "[{}] notice about #{} not delivered (try {}), again in {wait:?}: {e}",
                        n.repo,
                        n.change,
                        p.attempts + 1
                    );
                    store.notice_failed(p.id, now + wait.as_millis() as i64, &e.to_string())?;
                }
            }
        }
        Ok(done)
    }

    /// Delivers one plan; on a failure, what did reach someone is stored as sent.
    async fn send(
        &self,
        store: &mut Store,
        id: i64,
        repo: &str,
        d: Delivery,
    ) -> Result<(), NotifyError> {
        // The comment first, with the rows of everyone it reaches: from here on it is
        // the forge outbox's to deliver.
        let comment = d.comment.as_ref().map(|(pr, body)| ForgeCommand::Comment {
            pr: *pr,
            body: body.clone(),
        });
        // A maintainer with a mail planned counts as told once the mail went: a relay
        // that is down must not cost them the mail because the comment mentioned them.
        let mailed: BTreeSet<&str> = d.mails.iter().map(|m| m.owner.as_str()).collect();
        let by_comment = |who: &str| {
            who.starts_with("forge:#")
                || (d.mentioned.iter().any(|m| m == who) && !mailed.contains(who))
        };
        let first: Vec<_> = d
            .sent
            .iter()
            .filter(|s| by_comment(&s.maintainer))
            .cloned()
            .collect();
        store.notice_sent(id, comment.as_ref().map(|c| (repo, c)), &first, false)?;

        let mut failed = None;
        let mut reached: BTreeSet<String> = BTreeSet::new();
        for m in &d.mails {
            match self.mail(m).await {
                Ok(()) => {
                    reached.insert(m.owner.clone());
                }
                Err(e) => failed = Some(e),
            }
        }
        if let Some(body) = &d.webhook {
            match self.post(body).await {
                Ok(()) => {
                    reached.insert("webhook".into());
                }
                Err(e) => failed = Some(e),
            }
        }
        let rest: Vec<_> = d
            .sent
            .iter()
            .filter(|s| !by_comment(&s.maintainer) && reached.contains(&s.maintainer))
            .cloned()
            .collect();
        store.notice_sent(id, None, &rest, failed.is_none())?;
        failed.map_or(Ok(()), Err)
    }

    async fn mail(&self, m: &Mail) -> Result<(), NotifyError> {
        let cfg = self.email.as_ref().expect("mails only with [notify.email]");
        let err = |msg: String| NotifyError::Mail {
            to: m.to.clone(),
            msg,
        };
        let from: Mailbox = cfg
            .from
            .get_ref()
            .parse()
            .map_err(|e| err(format!("from {:?}: {e}", cfg.from.get_ref())))?;
        let to = Mailbox::new(
            m.to_name.clone(),
            m.to.parse().map_err(|e| err(format!("address: {e}")))?,
        );
        let msg = Message::builder()
            .from(from)
            .to(to)
            .subject(&m.subject)
            .header(ContentType::TEXT_PLAIN)
            .body(m.body.clone())
            .map_err(|e| err(e.to_string()))?;
        let (host, port) = cfg.host_port().map_err(err)?;
        let mut t = if cfg.starttls {
            AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&host)
                .map_err(|e| err(e.to_string()))?
        } else {
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&host)
        }
        .port(port)
        .timeout(Some(Duration::from_secs(cfg.timeout_secs)));
        if let Some(user) = &cfg.username {
            // Read at each mail: a rotated credential is picked up without a restart.
            let password = match &cfg.password_file {
                Some(p) => crate::shell::systemd::read_secret(p).map_err(|e| err(e.to_string()))?,
                None => String::new(),
            };
            t = t.credentials(Credentials::new(user.clone(), password));
        }
        // The transport's timeout covers each command; this one the whole exchange.
        let whole = Duration::from_secs(cfg.timeout_secs * 4);
        tokio::time::timeout(whole, t.build().send(msg))
            .await
            .map_err(|_| err(format!("no answer in {} s", whole.as_secs())))?
            .map(|_| ())
            .map_err(|e| err(e.to_string()))
    }

    async fn post(&self, body: &str) -> Result<(), NotifyError> {
        let cfg = self
            .webhook
            .as_ref()
            .expect("a webhook body only with [notify.webhook]");
        let url = cfg.url.get_ref();
        let err = |msg: String| NotifyError::Webhook {
            url: url.clone(),
            msg,
        };
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(url)
            .header("content-type", "application/json")
            .header(
                "user-agent",
                concat!("mergequeue/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(p) = &cfg.secret_file {
            let secret = crate::shell::systemd::read_secret(p).map_err(|e| err(e.to_string()))?;
            req = req.header("x-mergequeue-signature", signature(secret.trim(), body));
        }
        let req = req
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| err(e.to_string()))?;
        let resp = tokio::time::timeout(
            Duration::from_secs(cfg.timeout_secs),
            self.http.request(req),
        )
        .await
        .map_err(|_| err(format!("no answer in {} s", cfg.timeout_secs)))?
        .map_err(|e| err(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(err(format!("answered {}", resp.status())));
        }
        Ok(())
    }
}

/// `sha256=HEX` of the HMAC-SHA256 of `body` under `secret`.
pub fn signature(secret: &str, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Delivers forever, looking for due notices every `every`.
pub async fn run(db: std::path::PathBuf, notifier: Notifier, every: Duration) {
    let mut store = loop {
        match Store::open(&db) {
            Ok(s) => break s,
            Err(e) => {
                log::warn!("notifier: {e}");
                tokio::time::sleep(every).await;
            }
        }
    };
    loop {
        if let Err(e) = notifier.deliver_due(&mut store, now_ms()).await {
            log::warn!("notifier: {e}");
        }
        tokio::time::sleep(every).await;
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
