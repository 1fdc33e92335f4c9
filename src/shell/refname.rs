//! Validation of ref names given over the API, before any git command sees them.
//!
//! The rules are git's own (`git check-ref-format`, `refs.c: check_refname_format` with no
//! flags), so a ref mergequeue accepts is one git accepts; `tests/refname.rs` checks that
//! against the real `git check-ref-format` on generated names. Two rules are added: a name
//! given by a client may not begin with `-` (so it can never be read as an option, whatever
//! the command line around it) and is at most [`MAX_LEN`] bytes.

use thiserror::Error;

/// Longest ref name accepted (git has no limit; a forge's is far below this).
pub const MAX_LEN: usize = 1024;

/// Why a ref name was refused. The message names the rule, for the client's error.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RefError {
    #[error("is empty")]
    Empty,
    #[error("is longer than {MAX_LEN} bytes")]
    TooLong,
    #[error("begins with '-'")]
    LeadingDash,
    #[error("contains a control character (byte {0:#04x})")]
    Control(u8),
    #[error("contains {0:?}, which git does not allow in a ref")]
    Forbidden(char),
    #[error("contains \"..\"")]
    DoubleDot,
    #[error("contains \"@{{\"")]
    AtBrace,
    #[error("has an empty component (a leading, trailing or doubled '/')")]
    EmptyComponent,
    #[error("has a component beginning with '.'")]
    DotComponent,
    #[error("has a component ending with \".lock\"")]
    LockComponent,
    #[error("ends with '.'")]
    TrailingDot,
    #[error("is \"@\"")]
    At,
    #[error("has one component only (a full ref looks like refs/heads/NAME)")]
    OneLevel,
}

/// Checks a name as a client gave it (`pr-1` or `refs/pull/1/head`): the client rules, then
/// git's rules on the full ref it stands for.
pub fn check_given(given: &str) -> Result<String, RefError> {
    if given.is_empty() {
        return Err(RefError::Empty);
    }
    if given.starts_with('-') {
        return Err(RefError::LeadingDash);
    }
    let full = crate::shell::git::full_ref(given);
    if full.len() > MAX_LEN {
        return Err(RefError::TooLong);
    }
    check_full(&full)?;
    Ok(full)
}

/// git's `check_refname_format(name, 0)`.
pub fn check_full(name: &str) -> Result<(), RefError> {
    if name.is_empty() {
        return Err(RefError::Empty);
    }
    if name == "@" {
        return Err(RefError::At);
    }
    let mut components = 0;
    for component in name.split('/') {
        components += 1;
        check_component(component)?;
    }
    if name.ends_with('.') {
        return Err(RefError::TrailingDot);
    }
    if components < 2 {
        return Err(RefError::OneLevel);
    }
    Ok(())
}

fn check_component(c: &str) -> Result<(), RefError> {
    let mut prev = '\0';
    for ch in c.chars() {
        match ch {
            '\0'..='\x1f' | '\x7f' => return Err(RefError::Control(ch as u8)),
            ' ' | '~' | '^' | ':' | '?' | '[' | '\\' | '*' => return Err(RefError::Forbidden(ch)),
            '.' if prev == '.' => return Err(RefError::DoubleDot),
            '{' if prev == '@' => return Err(RefError::AtBrace),
            _ => {}
        }
        prev = ch;
    }
    if c.is_empty() {
        return Err(RefError::EmptyComponent);
    }
    if c.starts_with('.') {
        return Err(RefError::DotComponent);
    }
    if c.ends_with(".lock") {
        return Err(RefError::LockComponent);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_names_clients_send_are_accepted() {
        for ok in [
            "pr-1",
            "feature/x",
            "refs/pull/12/head",
            "refs/heads/ünïcode",
            "a.b",
            "a@b",
        ] {
            assert!(check_given(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn each_rule_refuses_with_its_reason() {
        let cases = [
            ("", RefError::Empty),
            ("-x", RefError::LeadingDash),
            ("a\0b", RefError::Control(0)),
            ("a\nb", RefError::Control(b'\n')),
            ("a b", RefError::Forbidden(' ')),
            ("a..b", RefError::DoubleDot),
            ("a@{1}", RefError::AtBrace),
            ("a//b", RefError::EmptyComponent),
            ("a/", RefError::EmptyComponent),
            ("a/.b", RefError::DotComponent),
            ("a.lock", RefError::LockComponent),
            ("a.", RefError::TrailingDot),
        ];
        for (given, want) in cases {
            assert_eq!(check_given(given), Err(want), "{given:?}");
        }
        assert_eq!(check_full("@"), Err(RefError::At));
        assert_eq!(check_full("HEAD"), Err(RefError::OneLevel));
        assert_eq!(
            check_given(&"x".repeat(MAX_LEN)),
            Err(RefError::TooLong),
            "the full ref is what is measured"
        );
    }
}
