//! `[cache]`: the binary cache landed and gated outputs are uploaded to, signed
//! (`docs/builders.md`, "Binary cache").

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use crate::core::CacheUpload;

type Invalid = (Option<std::ops::Range<usize>>, String);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Any store URI `nix copy --to` accepts: `file://`, `s3://`, `ssh-ng://`, ...
    pub uri: Spanned<String>,
    /// A key from `nix-store --generate-binary-cache-key`; every uploaded path carries
    /// its signature.
    pub secret_key_file: PathBuf,
    /// `gated`: closures of landed commits' required jobs and of channel gates;
    /// `all`: every successful build as well.
    #[serde(default)]
    pub upload: Upload,
    /// Seconds one upload may take before it counts as hung (and is retried).
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Upload {
    #[default]
    Gated,
    All,
}

impl From<Upload> for CacheUpload {
    fn from(u: Upload) -> Self {
        match u {
            Upload::Gated => CacheUpload::Gated,
            Upload::All => CacheUpload::All,
        }
    }
}

fn default_timeout() -> u64 {
    3600
}

/// Schemes of stores that keep signatures the way a binary cache does; `?secret-key=`
/// signs as it uploads to these.
pub const BINARY_CACHE_SCHEMES: [&str; 4] = ["file://", "s3://", "http://", "https://"];
/// Schemes of stores behind a Nix daemon: uploaded paths are signed there afterwards.
pub const DAEMON_SCHEMES: [&str; 2] = ["ssh-ng://", "ssh://"];

impl CacheConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        let uri = self.uri.get_ref();
        let known = BINARY_CACHE_SCHEMES
            .iter()
            .chain(DAEMON_SCHEMES.iter())
            .any(|s| uri.starts_with(s));
        if !known {
            return Err((
                Some(self.uri.span()),
                format!(
                    "cache.uri {uri:?} must be a file://, s3://, http(s)://, ssh-ng:// or ssh:// store URI"
                ),
            ));
        }
        if uri.contains("secret-key=") {
            return Err((
                Some(self.uri.span()),
                "cache.uri must not carry the key (secret-key=): use cache.secret_key_file".into(),
            ));
        }
        if !self.secret_key_file.is_absolute() {
            return Err((
                None,
                format!(
                    "cache.secret_key_file {:?} must be an absolute path",
                    self.secret_key_file
                ),
            ));
        }
        if self.timeout_secs == 0 {
            return Err((None, "cache.timeout_secs must be at least 1".into()));
        }
        Ok(())
    }
}
