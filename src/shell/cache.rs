//! The binary cache adapter: uploads closures with `nix copy --to`, signed with the
//! configured key (`docs/builders.md`, "Binary cache").
//!
//! Binary cache stores (`file://`, `s3://`, `http(s)://`) sign as they write, with the
//! store's `secret-key` parameter. Stores behind a daemon (`ssh-ng://`, `ssh://`) have
//! no such parameter: the paths are copied, then signed there with `nix store sign`
//! (the login on such a cache is a trusted user, as on a builder).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use tokio::process::Command;
use tokio::sync::Semaphore;

use crate::shell::config::cache::{CacheConfig, DAEMON_SCHEMES};
use crate::shell::nix::output::last_error_line;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot read cache.secret_key_file {path:?}: {source}")]
    KeyUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cache.secret_key_file {path:?} is not a Nix signing key (NAME:BASE64, from nix-store --generate-binary-cache-key)"
    )]
    KeyMalformed { path: PathBuf },
    #[error("{what} failed: {message}")]
    Nix { what: String, message: String },
    #[error("{what} did not finish within {secs} s; killed")]
    TimedOut { what: String, secs: u64 },
}

/// The configured cache, its key read and checked at start.
#[derive(Debug, Clone)]
pub struct Cache {
    pub uri: String,
    /// `NAME:BASE64` of the key's public half: what users put in `trusted-public-keys`.
    pub public_key: String,
    key_file: PathBuf,
    timeout: Duration,
    nix_args: Vec<String>,
    /// Uploads at once: with `upload = "all"` every build asks for one.
    slots: Arc<Semaphore>,
}

/// Uploads at once, and attempts of a best-effort upload before it is given up.
const PARALLEL: usize = 2;
const ATTEMPTS: u32 = 5;

impl Cache {
    pub fn open(cfg: &CacheConfig, nix_args: Vec<String>) -> Result<Cache, CacheError> {
        let path = &cfg.secret_key_file;
        let text = std::fs::read_to_string(path).map_err(|source| CacheError::KeyUnreadable {
            path: path.clone(),
            source,
        })?;
        let public_key =
            public_of(text.trim()).ok_or(CacheError::KeyMalformed { path: path.clone() })?;
        Ok(Cache {
            uri: cfg.uri.get_ref().clone(),
            public_key,
            key_file: path.clone(),
            timeout: Duration::from_secs(cfg.timeout_secs),
            nix_args,
            slots: Arc::new(Semaphore::new(PARALLEL)),
        })
    }

    fn behind_daemon(&self) -> bool {
        DAEMON_SCHEMES.iter().any(|s| self.uri.starts_with(s))
    }

    /// The URI `nix copy --to` writes to: with the signing key for a binary cache.
    fn destination(&self) -> String {
        if self.behind_daemon() {
            return self.uri.clone();
        }
        let sep = if self.uri.contains('?') { '&' } else { '?' };
        format!("{}{sep}secret-key={}", self.uri, self.key_file.display())
    }

    /// A best-effort upload (`Command::Upload`): retried with backoff, logged.
    pub async fn upload_retrying(&self, drvs: &[String], why: &str) {
        let mut delay = Duration::from_secs(10);
        for attempt in 1..=ATTEMPTS {
            match self.upload(drvs).await {
                Ok(n) => {
                    log::info!("cache: uploaded {n} outputs to {} ({why})", self.uri);
                    return;
                }
                Err(e) if attempt < ATTEMPTS => {
                    log::warn!("cache: upload ({why}) failed, retrying in {delay:?}: {e}");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => {
                    log::error!("cache: upload ({why}) given up after {ATTEMPTS} attempts: {e}")
                }
            }
        }
    }

    /// Uploads the closures of the outputs of `drvs`, signed. Returns how many outputs.
    pub async fn upload(&self, drvs: &[String]) -> Result<usize, CacheError> {
        if drvs.is_empty() {
            return Ok(0);
        }
        let _slot = self.slots.acquire().await.expect("never closed");
        let mut q = Command::new("nix-store");
        q.args(["-q", "--outputs"]).args(drvs);
        let outputs: Vec<String> =
            String::from_utf8_lossy(&self.run("nix-store -q --outputs", q).await?)
                .lines()
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect();
        let mut copy = self.nix();
        copy.args(["copy", "--to", &self.destination()])
            .args(&outputs);
        self.run(&format!("nix copy --to {}", self.uri), copy)
            .await?;
        if self.behind_daemon() {
            let mut sign = self.nix();
            sign.args(["store", "sign", "--store", &self.uri, "--key-file"])
                .arg(&self.key_file)
                .arg("--recursive")
                .args(&outputs);
            self.run(&format!("nix store sign --store {}", self.uri), sign)
                .await?;
        }
        Ok(outputs.len())
    }

    fn nix(&self) -> Command {
        let mut c = Command::new("nix");
        c.args(["--extra-experimental-features", "nix-command"])
            .args(&self.nix_args);
        c
    }

    /// Runs `cmd` within the timeout; its stdout, or its last error line.
    async fn run(&self, what: &str, mut cmd: Command) -> Result<Vec<u8>, CacheError> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| CacheError::Nix {
                what: what.into(),
                message: format!("cannot run it: {e}"),
            })?;
        let out = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Err(_) => {
                return Err(CacheError::TimedOut {
                    what: what.into(),
                    secs: self.timeout.as_secs(),
                })
            }
            Ok(Err(e)) => {
                return Err(CacheError::Nix {
                    what: what.into(),
                    message: e.to_string(),
                })
            }
            Ok(Ok(o)) => o,
        };
        if out.status.success() {
            return Ok(out.stdout);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let message = last_error_line(&stderr).unwrap_or(stderr.trim());
        Err(CacheError::Nix {
            what: what.into(),
            message: format!("{message} ({})", out.status),
        })
    }
}

/// The public key of a Nix secret signing key `NAME:BASE64(64 bytes)`: an Ed25519 secret
/// key in libsodium's layout keeps its public half in the last 32 bytes.
pub fn public_of(secret: &str) -> Option<String> {
    let (name, b64) = secret.split_once(':')?;
    if name.is_empty() {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    if bytes.len() != 64 {
        return None;
    }
    Some(format!(
        "{name}:{}",
        base64::engine::general_purpose::STANDARD.encode(&bytes[32..])
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_key_is_the_secret_keys_second_half() {
        // Made with `nix-store --generate-binary-cache-key t t.sec t.pub`.
        let secret = "t:lnnGm1uJjeQdOvM+lVBZs5Vwwr5TcQNWQGXqd/saGKZMhtRQ5KP/5XpOXMEbdRlSDDfwdkqFLUxMmwCilq3Sgw==";
        assert_eq!(
            public_of(secret).as_deref(),
            Some("t:TIbUUOSj/+V6TlzBG3UZUgw38HZKhS1MTJsAopat0oM=")
        );
        assert_eq!(public_of("t:AAAA"), None);
        assert_eq!(public_of(":x"), None);
        assert_eq!(public_of("no-colon"), None);
    }
}
