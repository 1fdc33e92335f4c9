//! `[timeouts]`: how long each kind of external call may take. A call past its timeout is
//! killed and ends as an infrastructure failure, retried with backoff like any other; no
//! hung git, nix or ssh process can stall a branch (docs/configuration.md).

use std::time::Duration;

use serde::Deserialize;

type Invalid = (Option<std::ops::Range<usize>>, String);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// Every git command: fetch, push, ls-remote, merges in the mirror.
    #[serde(default = "default_git")]
    pub git_secs: u64,
    /// One evaluation of a commit (all systems), checkout excluded.
    #[serde(default = "default_eval")]
    pub eval_secs: u64,
    /// One `nix copy` to or from a builder.
    #[serde(default = "default_transfer")]
    pub transfer_secs: u64,
    /// One `nix show-derivation` (inspecting derivations, why-rebuild).
    #[serde(default = "default_inspect")]
    pub inspect_secs: u64,
    /// Probing a builder (`nix store ping`, its version over ssh).
    #[serde(default = "default_probe")]
    pub probe_secs: u64,
    /// One request to a forge's API (its answer's head, and again its body).
    #[serde(default = "default_forge")]
    pub forge_secs: u64,
    /// One build step, from dispatch to its result: past it, the core stops the step and
    /// retries it elsewhere as an infrastructure failure (a lost result never stalls a
    /// branch). Longer than any legitimate build.
    #[serde(default = "default_build")]
    pub build_secs: u64,
}

fn default_build() -> u64 {
    48 * 3600
}

fn default_git() -> u64 {
    600
}
fn default_eval() -> u64 {
    4 * 3600
}
fn default_transfer() -> u64 {
    3600
}
fn default_inspect() -> u64 {
    120
}
fn default_probe() -> u64 {
    60
}
fn default_forge() -> u64 {
    30
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            git_secs: default_git(),
            eval_secs: default_eval(),
            transfer_secs: default_transfer(),
            inspect_secs: default_inspect(),
            probe_secs: default_probe(),
            build_secs: default_build(),
            forge_secs: default_forge(),
        }
    }
}

impl Timeouts {
    pub fn validate(&self) -> Result<(), Invalid> {
        for (key, v) in [
            ("git_secs", self.git_secs),
            ("eval_secs", self.eval_secs),
            ("transfer_secs", self.transfer_secs),
            ("inspect_secs", self.inspect_secs),
            ("probe_secs", self.probe_secs),
            ("build_secs", self.build_secs),
            ("forge_secs", self.forge_secs),
        ] {
            if v == 0 {
                return Err((None, format!("timeouts.{key} must be at least 1")));
            }
        }
        Ok(())
    }

    pub fn git(&self) -> Duration {
        Duration::from_secs(self.git_secs)
    }
    pub fn eval(&self) -> Duration {
        Duration::from_secs(self.eval_secs)
    }
    pub fn transfer(&self) -> Duration {
        Duration::from_secs(self.transfer_secs)
    }
    pub fn inspect(&self) -> Duration {
        Duration::from_secs(self.inspect_secs)
    }
    pub fn probe(&self) -> Duration {
        Duration::from_secs(self.probe_secs)
    }
    pub fn forge(&self) -> Duration {
        Duration::from_secs(self.forge_secs)
    }
}
