//! Ref validation agrees with git itself: on generated names, `refname::check_given`
//! accepts exactly what `git check-ref-format` accepts for the full ref, minus the two
//! rules mergequeue adds (no leading '-', at most `MAX_LEN` bytes).

use mergequeue::shell::refname::{check_given, MAX_LEN};
use proptest::prelude::*;

/// Whether the real git accepts `full` as a ref name.
fn git_accepts(full: &str) -> bool {
    // An argument cannot hold a NUL byte; git would see the name cut short. Refused.
    if full.contains('\0') {
        return false;
    }
    std::process::Command::new("git")
        // `full` begins with "refs/": it cannot be taken for an option (and this command
        // has no `--`).
        .args(["check-ref-format", full])
        .status()
        .expect("git is installed (scripts/install-prereqs.sh)")
        .success()
}

fn names() -> impl Strategy<Value = String> {
    // The characters git's rules are about, and a few that are harmless.
    let alphabet = prop::sample::select(vec![
        'a', 'b', 'l', 'o', 'c', 'k', '/', '.', '@', '{', '}', '-', ' ', '~', '^', ':', '?', '*',
        '[', '\\', '\0', '\n', '\t', '\u{7f}', 'é', '_',
    ]);
    let body = prop::collection::vec(alphabet, 0..12).prop_map(|v| v.into_iter().collect());
    // Some names as forges send them, so accepted names are generated too.
    prop_oneof![
        body.clone(),
        body.clone()
            .prop_map(|b: String| format!("refs/pull/1/{b}")),
        body.prop_map(|b: String| format!("feature{b}")),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn accepts_exactly_what_git_accepts(given in names()) {
        let full = mergequeue::shell::git::full_ref(&given);
        let expected = !given.is_empty()
            && !given.starts_with('-')
            && full.len() <= MAX_LEN
            && git_accepts(&full);
        let got = check_given(&given);
        prop_assert_eq!(got.is_ok(), expected, "{:?} -> {:?}: {:?}", given, full, got);
        if let Ok(r) = got {
            prop_assert_eq!(r, full);
        }
    }
}
