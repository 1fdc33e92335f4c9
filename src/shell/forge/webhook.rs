//! Webhook deliveries from GitHub, Gitea and Forgejo: the signature checked over the raw
//! body (HMAC-SHA256, constant time), then the payload turned into a typed
//! [`ForgeEvent`]. Payloads are read leniently (forges add fields every release); only the
//! fields the queue uses must be present.

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::core::forge::{ForgeEvent, MergeGroup, PullAction, PullRequest};
pub use crate::shell::config::ForgeKind;

fn header_prefix(kind: ForgeKind) -> &'static str {
    match kind {
        ForgeKind::Github => "x-github-",
        ForgeKind::Gitea => "x-gitea-",
        ForgeKind::Forgejo => "x-forgejo-",
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WebhookError {
    #[error("missing header {0}")]
    MissingHeader(String),
    #[error("signature header {0} is not hex HMAC-SHA256")]
    BadSignatureFormat(String),
    #[error("signature does not match the body")]
    BadSignature,
    #[error("payload is not JSON: {0}")]
    NotJson(String),
    #[error("payload lacks {0}")]
    MissingField(&'static str),
}

/// The headers of a delivery that say what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Unique per delivery; a redelivery keeps it (duplicates are dropped by it).
    pub id: String,
    pub event: String,
}

/// Looks a header up by its lower-case name.
pub trait Headers {
    fn get(&self, name: &str) -> Option<&str>;
}

impl Headers for hyper::HeaderMap {
    fn get(&self, name: &str) -> Option<&str> {
        hyper::HeaderMap::get(self, name).and_then(|v| v.to_str().ok())
    }
}

impl Headers for [(&str, &str)] {
    fn get(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }
}

/// Checks the delivery's signature with `secret` and reads its id and event type.
pub fn verify(
    kind: ForgeKind,
    secret: &[u8],
    headers: &(impl Headers + ?Sized),
    body: &[u8],
) -> Result<Delivery, WebhookError> {
    let (name, value) = match kind {
        ForgeKind::Github => ("x-hub-signature-256", "sha256="),
        ForgeKind::Gitea => ("x-gitea-signature", ""),
        ForgeKind::Forgejo => ("x-forgejo-signature", ""),
    };
    let given = headers
        .get(name)
        .ok_or_else(|| WebhookError::MissingHeader(name.into()))?;
    let hex_sig = given
        .strip_prefix(value)
        .ok_or_else(|| WebhookError::BadSignatureFormat(name.into()))?;
    let sig =
        hex::decode(hex_sig.trim()).map_err(|_| WebhookError::BadSignatureFormat(name.into()))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&sig)
        .map_err(|_| WebhookError::BadSignature)?;
    let header = |suffix: &str| {
        let name = format!("{}{suffix}", header_prefix(kind));
        headers
            .get(&name)
            .map(str::to_string)
            .ok_or(WebhookError::MissingHeader(name))
    };
    Ok(Delivery {
        id: header("delivery")?,
        event: header("event")?,
    })
}

/// The signature a forge would send for `body` (tests and the demo's fake forge).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

fn u64_at(v: &Value, path: &[&str]) -> Option<u64> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_u64()
}

fn need<T>(v: Option<T>, what: &'static str) -> Result<T, WebhookError> {
    v.ok_or(WebhookError::MissingField(what))
}

/// A pull request object (the same shape on all three forges).
pub fn pull_request(pr: &Value) -> Result<PullRequest, WebhookError> {
    Ok(PullRequest {
        number: need(u64_at(pr, &["number"]), "pull_request.number")?,
        head_sha: need(str_at(pr, &["head", "sha"]), "pull_request.head.sha")?.to_string(),
        base_ref: need(str_at(pr, &["base", "ref"]), "pull_request.base.ref")?.to_string(),
        author: str_at(pr, &["user", "login"]).unwrap_or("").to_string(),
        title: str_at(pr, &["title"]).unwrap_or("").to_string(),
        open: str_at(pr, &["state"]).is_none_or(|s| s == "open"),
        merged: pr.get("merged").and_then(Value::as_bool).unwrap_or(false),
    })
}

/// Reads a delivery's payload. `event` is the event header's value; Gitea names some
/// events differently (`pull_request_comment`, `pull_request_review_approved`, …) and
/// they are read as GitHub's.
pub fn parse(event: &str, body: &[u8]) -> Result<ForgeEvent, WebhookError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| WebhookError::NotJson(e.to_string()))?;
    let action = str_at(&v, &["action"]).unwrap_or("").to_string();
    let sender = str_at(&v, &["sender", "login"]).unwrap_or("").to_string();
    let ignored = || ForgeEvent::Ignored {
        event: event.to_string(),
        action: action.clone(),
    };
    Ok(match event {
        "pull_request" | "pull_request_label" | "pull_request_sync" => {
            let pr = pull_request(need(v.get("pull_request"), "pull_request")?)?;
            let label = || str_at(&v, &["label", "name"]).unwrap_or("").to_string();
            let action = match action.as_str() {
                "opened" => PullAction::Opened,
                "synchronize" | "synchronized" => PullAction::Pushed,
                "closed" => PullAction::Closed,
                "reopened" => PullAction::Reopened,
                "labeled" => PullAction::Labeled(label()),
                "unlabeled" => PullAction::Unlabeled(label()),
                // Gitea and Forgejo name no label: the pull request carries its new set.
                "label_updated" | "label_cleared" => PullAction::LabelsSet(
                    v["pull_request"]["labels"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|l| l["name"].as_str().map(str::to_string))
                        .collect(),
                ),
                other => PullAction::Other(other.to_string()),
            };
            ForgeEvent::PullRequest { action, pr, sender }
        }
        "issue_comment" | "pull_request_comment" => {
            // GitHub marks a pull request's issue with `issue.pull_request`; Gitea also
            // says `is_pull`.
            let on_pr = v.get("is_pull").and_then(Value::as_bool).unwrap_or(false)
                || v.get("issue")
                    .and_then(|i| i.get("pull_request"))
                    .is_some_and(|p| !p.is_null());
            if action != "created" || !on_pr {
                return Ok(ignored());
            }
            ForgeEvent::Comment {
                pr: need(u64_at(&v, &["issue", "number"]), "issue.number")?,
                comment_id: u64_at(&v, &["comment", "id"]).unwrap_or(0),
                author: need(
                    str_at(&v, &["comment", "user", "login"]),
                    "comment.user.login",
                )?
                .to_string(),
                body: str_at(&v, &["comment", "body"]).unwrap_or("").to_string(),
            }
        }
        "pull_request_review"
        | "pull_request_review_approved"
        | "pull_request_review_rejected"
        | "pull_request_review_comment" => {
            // GitHub: `submitted` with `review.body`; Gitea: `reviewed` with `review.content`.
            if !matches!(action.as_str(), "submitted" | "reviewed") {
                return Ok(ignored());
            }
            let pr = pull_request(need(v.get("pull_request"), "pull_request")?)?;
            let body = str_at(&v, &["review", "body"])
                .or_else(|| str_at(&v, &["review", "content"]))
                .unwrap_or("");
            let author = str_at(&v, &["review", "user", "login"]).unwrap_or(&sender);
            ForgeEvent::Comment {
                pr: pr.number,
                comment_id: u64_at(&v, &["review", "id"]).unwrap_or(0),
                author: author.to_string(),
                body: body.to_string(),
            }
        }
        "merge_group" => {
            let g = need(v.get("merge_group"), "merge_group")?;
            let group = MergeGroup {
                head_sha: need(str_at(g, &["head_sha"]), "merge_group.head_sha")?.to_string(),
                head_ref: str_at(g, &["head_ref"]).unwrap_or("").to_string(),
                base_sha: need(str_at(g, &["base_sha"]), "merge_group.base_sha")?.to_string(),
                // GitHub names the branch in full (`refs/heads/main`); the queue by name.
                base_ref: {
                    let r = need(str_at(g, &["base_ref"]), "merge_group.base_ref")?;
                    r.strip_prefix("refs/heads/").unwrap_or(r).to_string()
                },
            };
            match action.as_str() {
                "checks_requested" => ForgeEvent::MergeGroupRequested(group),
                "destroyed" => ForgeEvent::MergeGroupDestroyed(group),
                _ => ignored(),
            }
        }
        _ => ignored(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"It's a Secret to Everybody";

    #[test]
    fn githubs_documented_example_signature_verifies() {
        // The example of GitHub's "Validating webhook deliveries" page.
        let body = b"Hello, World!";
        let sig = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(sign(SECRET, body), sig);
        let h: &[(&str, &str)] = &[
            ("X-Hub-Signature-256", &format!("sha256={sig}")),
            ("X-GitHub-Delivery", "d-1"),
            ("X-GitHub-Event", "ping"),
        ];
        let d = verify(ForgeKind::Github, SECRET, h, body).expect("valid");
        assert_eq!(d.event, "ping");
        assert_eq!(d.id, "d-1");
        assert_eq!(
            verify(ForgeKind::Github, b"other", h, body),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(
            verify(ForgeKind::Github, SECRET, h, b"Hello, World?"),
            Err(WebhookError::BadSignature)
        );
    }

    #[test]
    fn gitea_and_forgejo_send_bare_hex() {
        let body = br#"{"action":"opened"}"#;
        let sig = sign(SECRET, body);
        for (kind, p) in [(ForgeKind::Gitea, "Gitea"), (ForgeKind::Forgejo, "Forgejo")] {
            let (s, d, e) = (
                format!("X-{p}-Signature"),
                format!("X-{p}-Delivery"),
                format!("X-{p}-Event"),
            );
            let h: &[(&str, &str)] = &[(&s, &sig), (&d, "u-1"), (&e, "pull_request")];
            assert_eq!(verify(kind, SECRET, h, body).expect("valid").id, "u-1");
            let bad: &[(&str, &str)] = &[(&s, "zz"), (&d, "u-1"), (&e, "pull_request")];
            assert!(matches!(
                verify(kind, SECRET, bad, body),
                Err(WebhookError::BadSignatureFormat(_))
            ));
            let none: &[(&str, &str)] = &[(&d, "u-1"), (&e, "pull_request")];
            assert!(matches!(
                verify(kind, SECRET, none, body),
                Err(WebhookError::MissingHeader(_))
            ));
        }
    }

    #[test]
    fn payloads_become_events() {
        let pr = r#"{"number":7,"state":"open","title":"zlib: 1.3","user":{"login":"alice"},
                     "head":{"sha":"abc","ref":"zlib"},"base":{"ref":"master"},"merged":false}"#;
        let ev = parse(
            "pull_request",
            format!(r#"{{"action":"synchronize","number":7,"pull_request":{pr},"sender":{{"login":"alice"}}}}"#).as_bytes(),
        )
        .expect("parsed");
        let ForgeEvent::PullRequest { action, pr: p, .. } = ev else {
            panic!("{ev:?}")
        };
        assert_eq!(action, PullAction::Pushed);
        assert_eq!(
            (p.number, p.head_sha.as_str(), p.base_ref.as_str()),
            (7, "abc", "master")
        );
        // Gitea's spelling.
        let gitea = format!(r#"{{"action":"synchronized","number":7,"pull_request":{pr}}}"#);
        assert!(matches!(
            parse("pull_request", gitea.as_bytes()),
            Ok(ForgeEvent::PullRequest {
                action: PullAction::Pushed,
                ..
            })
        ));
        let comment = r#"{"action":"created","issue":{"number":7,"pull_request":{"url":"x"}},
                          "comment":{"id":99,"body":"@mergequeue r+","user":{"login":"bob"}}}"#;
        assert_eq!(
            parse("issue_comment", comment.as_bytes()),
            Ok(ForgeEvent::Comment {
                pr: 7,
                comment_id: 99,
                author: "bob".into(),
                body: "@mergequeue r+".into()
            })
        );
        // A comment on an issue (not a pull request) is not for the queue.
        let issue = r#"{"action":"created","issue":{"number":8},"comment":{"id":1,"body":"x","user":{"login":"b"}}}"#;
        assert!(matches!(
            parse("issue_comment", issue.as_bytes()),
            Ok(ForgeEvent::Ignored { .. })
        ));
        assert!(matches!(
            parse("star", b"{}"),
            Ok(ForgeEvent::Ignored { .. })
        ));
        assert!(matches!(
            parse("pull_request", b"[1"),
            Err(WebhookError::NotJson(_))
        ));
        assert_eq!(
            parse("pull_request", br#"{"action":"opened"}"#),
            Err(WebhookError::MissingField("pull_request"))
        );
    }
}
