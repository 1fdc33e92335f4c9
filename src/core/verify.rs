//! Verified builds (seed 001): a sample of successful builds is built again on a second
//! builder and the NAR hashes of the outputs compared. A mismatch is recorded and lowers
//! both builders' trust (two builds cannot say which one is wrong); it never blocks or
//! blames a change, since the first build's verdict already stood. A derivation that is known
//! to be non-deterministic (named in `[verify] nondeterministic`, or one that mismatched
//! before) is reported as such and lowers no one's trust.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::scheduler::{drv_name, BuilderState};

/// `[verify]`, as the core sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VerifyPolicy {
    /// Share of successful builds verified, in millionths (0.05 = 50 000).
    pub per_million: u32,
    /// Derivation-name patterns (`*` matches any run) known to be non-deterministic.
    pub nondeterministic: Vec<String>,
}

/// One comparison, as stored and served by `/api/v1/verifications`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    pub drv: String,
    /// The builder whose output was kept, then the one that built it again.
    pub builders: [String; 2],
    pub nar_hashes: [String; 2],
    pub matched: bool,
    pub nondeterministic: bool,
    pub at: i64,
}

/// Whether `drv` is in the sample. Decided by a hash of its path, so a restart, a replay
/// or another coordinator picks the same derivations.
pub fn sampled(drv: &str, per_million: u32) -> bool {
    // FNV-1a: stable across releases, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in drv.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h % 1_000_000 < u64::from(per_million)
}

/// `*` matches any run of characters; everything else matches itself.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || !name.ends_with(last) || name.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for p in &parts[1..parts.len() - 1] {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    true
}

/// The second builder for `drv` built on `first`: one that can take it and accepts work,
/// preferring another implementation, then another version, then fewer mismatches.
pub fn second_builder<'a>(
    able: impl Iterator<Item = &'a BuilderState>,
    first: Option<&BuilderState>,
) -> Option<String> {
    let same = |b: &BuilderState, f: Option<&BuilderState>| {
        let Some(f) = f else { return (false, false) };
        (
            b.implementation == f.implementation,
            b.implementation == f.implementation && b.version == f.version,
        )
    };
    able.filter(|b| first.is_none_or(|f| f.spec.id != b.spec.id))
        .filter(|b| b.accepts())
        .min_by_key(|b| (same(b, first), b.mismatches, b.spec.id.clone()))
        .map(|b| b.spec.id.clone())
}

/// Verifications in flight and the derivations that mismatched before.
#[derive(Debug, Default)]
pub(crate) struct Verifier {
    pub(crate) in_flight: BTreeMap<String, String>,
    mismatched: BTreeSet<String>,
}

impl Verifier {
    /// Judges a comparison: whether it counts against the builders.
    pub(crate) fn judge(
        &mut self,
        policy: &VerifyPolicy,
        drv: &str,
        builders: [String; 2],
        nar_hashes: [String; 2],
        at: i64,
    ) -> Verification {
        let matched = nar_hashes[0] == nar_hashes[1];
        let named = policy
            .nondeterministic
            .iter()
            .any(|p| pattern_matches(p, drv_name(drv)));
        let nondeterministic = !matched && (named || self.mismatched.contains(drv));
        if !matched {
            self.mismatched.insert(drv.to_string());
        }
        Verification {
            drv: drv.to_string(),
            builders,
            nar_hashes,
            matched,
            nondeterministic,
            at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn patterns() {
        assert!(pattern_matches("hello-*", "hello-2.12"));
        assert!(pattern_matches("*-docs-*", "python3-docs-3.12"));
        assert!(pattern_matches("exact", "exact"));
        assert!(!pattern_matches("hello-*", "bye-1"));
        assert!(!pattern_matches("a*b", "ab-c"));
        assert!(pattern_matches("a*b", "ab"));
    }

    proptest! {
        #[test]
        fn the_sample_is_about_the_share_asked_for(per_million in 0u32..=1_000_000) {
            let n = 20_000;
            let hits = (0..n)
                .filter(|i| sampled(&format!("/nix/store/{i:032}-p{i}.drv"), per_million))
                .count() as f64;
            let want = n as f64 * f64::from(per_million) / 1e6;
            // Binomial: within 5 standard deviations (and exact at 0 and at 1).
            let sd = (want * (1.0 - f64::from(per_million) / 1e6)).sqrt();
            prop_assert!((hits - want).abs() <= 5.0 * sd + 1.0, "{hits} for {want}");
        }

        #[test]
        fn a_star_pattern_matches_what_it_was_cut_from(
            a in "[a-z]{0,4}", b in "[a-z]{0,4}", c in "[a-z]{0,4}"
        ) {
            let name = format!("{a}{b}{c}");
            let outer = format!("{a}*{c}");
            let inner = format!("*{b}*");
            prop_assert!(pattern_matches(&outer, &name));
            prop_assert!(pattern_matches(&inner, &name));
            prop_assert!(pattern_matches(&name, &name));
        }
    }
}
