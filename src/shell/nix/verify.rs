//! Verified builds, the shell side: build a derivation a second time on this builder and
//! read the NAR hashes of its outputs, as the local store holds them (the first builder's)
//! and as this builder made them.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use super::build::NixBuilder;
use super::output::last_error_line;

/// What Nix says when a rebuild in check mode differs from the output it holds.
const DIFFERS: &str = "may not be deterministic";

impl NixBuilder {
    /// `[first, second]`: the NAR hashes of `drv`'s outputs here and as built again on this
    /// builder. `Err` when the second build could not run (infrastructure, never a verdict).
    pub async fn verify(&self, drv: &str) -> Result<[String; 2], String> {
        let outs = outputs(drv).await?;
        let first = nar_hashes(self, None, &outs).await?;
        let log = self.log_dir.join(format!(
            "{}.verify.log",
            drv.rsplit('/').next().unwrap_or("drv")
        ));
        let result = self.build_again(drv, &outs, &first, &log).await;
        let _ = std::fs::remove_file(&log);
        result
    }

    async fn build_again(
        &self,
        drv: &str,
        outs: &[String],
        first: &str,
        log: &Path,
    ) -> Result<[String; 2], String> {
        let Some(store) = &self.store else {
            // Here the outputs are valid already: Nix's check mode builds again and compares.
            let mut c = Command::new("nix-store");
            c.args(&self.nix_args).args(["--realise", "--check", drv]);
            return self.checked(c, first, "nix-store --check").await;
        };
        {
            let _one_at_a_time = self.transfers.lock().await;
            self.copy_inputs(store, drv, outs, log).await?;
        }
        let mut c = Command::new("nix");
        c.args(["--extra-experimental-features", "nix-command", "build"])
            .args(["--no-link", "--store", store])
            .args(&self.nix_args);
        self.ssh_env(&mut c);
        if nar_hashes(self, Some(store), outs).await.is_ok() {
            // The builder holds the first build's outputs (sent as another step's inputs).
            c.arg("--rebuild").arg(drv);
            return self.checked(c, first, "nix build --rebuild").await;
        }
        c.arg(drv);
        run(c, self.deadline()).await?;
        let second = nar_hashes(self, Some(store), outs).await?;
        Ok([first.to_string(), second])
    }

    /// Runs a check-mode build: identical, different, or could not run.
    async fn checked(&self, c: Command, first: &str, how: &str) -> Result<[String; 2], String> {
        match run(c, self.deadline()).await {
            Ok(()) => Ok([first.to_string(), first.to_string()]),
            Err(e) if e.contains(DIFFERS) => Ok([first.to_string(), format!("differs ({how})")]),
            Err(e) => Err(e),
        }
    }

    fn deadline(&self) -> Duration {
        Duration::from_secs((self.timeout_secs * 2).max(3600)) + self.transfer_timeout
    }
}

async fn run(mut c: Command, deadline: Duration) -> Result<(), String> {
    let out = c.stdin(Stdio::null()).kill_on_drop(true).output();
    let o = tokio::time::timeout(deadline, out)
        .await
        .map_err(|_| format!("no result within {} s; stopped", deadline.as_secs()))?
        .map_err(|e| format!("cannot run nix: {e}"))?;
    if o.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&o.stderr);
    Err(last_error_line(&text).unwrap_or(text.trim()).to_string())
}

async fn outputs(drv: &str) -> Result<Vec<String>, String> {
    let o = Command::new("nix-store")
        .args(["-q", "--outputs", drv])
        .output()
        .await
        .map_err(|e| format!("cannot run nix-store: {e}"))?;
    if !o.status.success() {
        return Err(String::from_utf8_lossy(&o.stderr).trim().to_string());
    }
    Ok(String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(String::from)
        .collect())
}

/// The outputs' NAR hashes in `store` (the local one for `None`), one string: the hash
/// alone for one output, `path=hash` pairs for several.
async fn nar_hashes(
    b: &NixBuilder,
    store: Option<&str>,
    outs: &[String],
) -> Result<String, String> {
    let mut c = Command::new("nix");
    c.args([
        "--extra-experimental-features",
        "nix-command",
        "path-info",
        "--json",
    ])
    .args(&b.nix_args);
    if let Some(s) = store {
        c.args(["--store", s]);
        b.ssh_env(&mut c);
    }
    c.args(outs);
    let o = tokio::time::timeout(b.transfer_timeout, c.kill_on_drop(true).output())
        .await
        .map_err(|_| "nix path-info gave no answer".to_string())?
        .map_err(|e| format!("cannot run nix: {e}"))?;
    if !o.status.success() {
        let text = String::from_utf8_lossy(&o.stderr);
        return Err(last_error_line(&text).unwrap_or(text.trim()).to_string());
    }
    let hashes = parse_nar_hashes(&o.stdout);
    if hashes.len() != outs.len() {
        return Err(format!(
            "nix path-info told {} of {} outputs",
            hashes.len(),
            outs.len()
        ));
    }
    Ok(match hashes.as_slice() {
        [(_, h)] => h.clone(),
        _ => hashes
            .iter()
            .map(|(p, h)| format!("{p}={h}"))
            .collect::<Vec<_>>()
            .join(" "),
    })
}

/// `nix path-info --json`: an array of `{path, narHash}` (Nix 2.8) or an object keyed by
/// path (Nix 2.19 and later); a path that is not valid is `null` or absent. Sorted by path.
pub fn parse_nar_hashes(json: &[u8]) -> Vec<(String, String)> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(json) else {
        return vec![];
    };
    let mut out: Vec<(String, String)> = match v {
        serde_json::Value::Array(items) => items
            .iter()
            .filter_map(|i| Some((i["path"].as_str()?.into(), i["narHash"].as_str()?.into())))
            .collect(),
        serde_json::Value::Object(m) => m
            .iter()
            .filter_map(|(p, i)| Some((p.clone(), i["narHash"].as_str()?.into())))
            .collect(),
        _ => vec![],
    };
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_path_info_shapes() {
        let old = br#"[{"path":"/nix/store/b-x","narHash":"sha256:2"},{"path":"/nix/store/a-x","narHash":"sha256:1"}]"#;
        let new = br#"{"/nix/store/a-x":{"narHash":"sha256:1"},"/nix/store/b-x":{"narHash":"sha256:2"},"/nix/store/c-x":null}"#;
        let want = vec![
            ("/nix/store/a-x".to_string(), "sha256:1".to_string()),
            ("/nix/store/b-x".to_string(), "sha256:2".to_string()),
        ];
        assert_eq!(parse_nar_hashes(old), want);
        assert_eq!(parse_nar_hashes(new), want);
        assert!(parse_nar_hashes(b"not json").is_empty());
    }
}
