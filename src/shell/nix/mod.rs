//! Adapters that run the Nix CLI: evaluation of jobsets and realisation of derivations.

pub mod build;
pub mod classify;
pub mod crash;
pub mod eval;
pub mod output;
pub mod verify;

/// Removes terminal colour sequences from Nix's messages.
pub(crate) fn strip_ansi(s: &str) -> String {
    if !s.contains('\u{1b}') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
