//! `[notify]`: who hears about broken and fixed jobs, and how often (`docs/breakage.md`).

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

type Invalid = (Option<std::ops::Range<usize>>, String);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// Notifications one maintainer gets per day at most, over every channel; the rest
    /// are listed without a ping in the pull-request comment and dropped elsewhere.
    #[serde(default = "default_cap")]
    pub cap_per_maintainer_per_day: u32,
    /// Handles or emails that never get notifications.
    #[serde(default)]
    pub opt_out: Vec<String>,
    /// Handles mentioned in one pull-request comment at most; the rest are listed
    /// without the `@`.
    #[serde(default = "default_mentions")]
    pub max_mentions: usize,
    #[serde(default)]
    pub email: Option<EmailConfig>,
    #[serde(default)]
    pub webhook: Option<WebhookConfig>,
    /// Where notices link to (`https://mq.example.org`); the listen address when unset.
    #[serde(default)]
    pub public_url: Option<String>,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            cap_per_maintainer_per_day: default_cap(),
            opt_out: vec![],
            max_mentions: default_mentions(),
            email: None,
            webhook: None,
            public_url: None,
        }
    }
}

fn default_cap() -> u32 {
    5
}

fn default_mentions() -> usize {
    10
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// `host:port` of the SMTP relay.
    pub smtp: Spanned<String>,
    /// STARTTLS is required unless this is `false` (plain SMTP, for a relay on loopback).
    #[serde(default = "yes")]
    pub starttls: bool,
    pub from: Spanned<String>,
    #[serde(default)]
    pub username: Option<String>,
    /// The SMTP password, read when a mail is sent (a `LoadCredential` path).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default = "default_smtp_timeout")]
    pub timeout_secs: u64,
}

fn yes() -> bool {
    true
}

fn default_smtp_timeout() -> u64 {
    30
}

impl EmailConfig {
    /// Host and port of `smtp`.
    pub fn host_port(&self) -> Result<(String, u16), String> {
        let s = self.smtp.get_ref();
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("notify.email.smtp {s:?} must be host:port"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("notify.email.smtp {s:?}: port {port:?} is not a number"))?;
        if host.is_empty() {
            return Err(format!("notify.email.smtp {s:?} has no host"));
        }
        Ok((host.to_string(), port))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Receives `POST`s of JSON `{"event": "newly-broken" | "fixed" | "planned-landing", ...}`.
    pub url: Spanned<String>,
    /// Signs each body: `X-Mergequeue-Signature: sha256=HEX` (HMAC-SHA256).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    #[serde(default = "default_webhook_timeout")]
    pub timeout_secs: u64,
}

fn default_webhook_timeout() -> u64 {
    10
}

impl NotifyConfig {
    /// The checks serde cannot make.
    pub fn validate(&self) -> Result<(), Invalid> {
        if let Some(e) = &self.email {
            e.host_port().map_err(|m| (Some(e.smtp.span()), m))?;
            let from = e.from.get_ref();
            if !from.contains('@') {
                return Err((
                    Some(e.from.span()),
                    format!("notify.email.from {from:?} is not an email address"),
                ));
            }
            if e.timeout_secs == 0 {
                return Err((None, "notify.email.timeout_secs must be at least 1".into()));
            }
        }
        if let Some(w) = &self.webhook {
            let url = w.url.get_ref();
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err((
                    Some(w.url.span()),
                    format!("notify.webhook.url {url:?} must be an http:// or https:// URL"),
                ));
            }
            if w.timeout_secs == 0 {
                return Err((
                    None,
                    "notify.webhook.timeout_secs must be at least 1".into(),
                ));
            }
        }
        Ok(())
    }
}

/// Why a protected pattern is malformed, if it is.
pub fn check_pattern(p: &str) -> Result<(), String> {
    if p.is_empty() || p.split('.').any(str::is_empty) {
        return Err(format!(
            "protected pattern {p:?} has an empty attribute path segment"
        ));
    }
    if p.split('.').any(|s| s.contains("**") && s != "**") {
        return Err(format!(
            "protected pattern {p:?}: `**` must be a whole segment (`a.**.b`)"
        ));
    }
    Ok(())
}
