//! Webhook deliveries: any body, any headers. Verification never panics and accepts only a
//! body signed with the secret; a parsed event always names a pull request number when it
//! is about one.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mergequeue::core::forge::ForgeEvent;
use mergequeue::shell::forge::webhook::{parse, sign, verify, ForgeKind};

const EVENTS: [&str; 8] = [
    "pull_request",
    "issue_comment",
    "pull_request_review",
    "merge_group",
    "pull_request_comment",
    "pull_request_review_approved",
    "push",
    "",
];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let event = EVENTS[sel as usize % EVENTS.len()];
    let secret = b"fuzz-secret";
    let good = sign(secret, body);
    let bad = String::from_utf8_lossy(body.get(..64).unwrap_or(body)).into_owned();
    for (kind, name) in [
        (ForgeKind::Github, "x-hub-signature-256"),
        (ForgeKind::Gitea, "x-gitea-signature"),
        (ForgeKind::Forgejo, "x-forgejo-signature"),
    ] {
        let prefix = if kind == ForgeKind::Github { "sha256=" } else { "" };
        let signed = format!("{prefix}{good}");
        let h: &[(&str, &str)] = &[
            (name, &signed),
            ("x-github-delivery", "1"),
            ("x-github-event", event),
            ("x-gitea-delivery", "1"),
            ("x-gitea-event", event),
            ("x-forgejo-delivery", "1"),
            ("x-forgejo-event", event),
        ];
        assert!(verify(kind, secret, h, body).is_ok());
        // A signature made of the body's own bytes does not verify.
        let forged: &[(&str, &str)] = &[(name, &bad), ("x-github-event", event)];
        assert!(verify(kind, secret, forged, body).is_err());
    }
    if let Ok(ForgeEvent::PullRequest { pr, .. }) = parse(event, body) {
        assert!(!pr.base_ref.is_empty() || body.windows(6).any(|w| w == b"\"ref\":"));
    }
});
