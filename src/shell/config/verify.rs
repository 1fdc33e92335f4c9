//! `[verify]`: verified builds, a sample of successful builds built again on a second
//! builder and compared by NAR hash (`docs/builders.md`, "Verified builds").

use serde::Deserialize;

use crate::core::verify::VerifyPolicy;

type Invalid = (Option<std::ops::Range<usize>>, String);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyConfig {
    /// Share of successful builds rebuilt on a second builder, from 0 to 1.
    pub sample: f64,
    /// Derivation-name patterns (`*` matches any run, e.g. `"*-docs-*"`) known to be
    /// non-deterministic: their mismatches are reported as such and lower no one's trust.
    #[serde(default)]
    pub nondeterministic: Vec<String>,
}

impl VerifyConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        if !(0.0..=1.0).contains(&self.sample) {
            return Err((
                None,
                format!(
                    "verify.sample is {}: it is a share of builds, from 0 to 1 (0.05 = 5 %)",
                    self.sample
                ),
            ));
        }
        Ok(())
    }

    pub fn policy(&self) -> VerifyPolicy {
        VerifyPolicy {
            per_million: (self.sample * 1e6).round() as u32,
            nondeterministic: self.nondeterministic.clone(),
        }
    }
}
