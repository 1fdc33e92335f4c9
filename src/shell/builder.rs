//! Builder adapters: the shell side of dispatch. Inspecting derivations (system,
//! required features, inputs), finding dependents of a failure, and probing builders
//! for health and identity (implementation and version).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::process::Command;

use crate::core::scheduler::StepInfo;
use crate::core::why::DrvInputs;
use crate::core::BuilderIdentity;
use crate::shell::config::Config;
use crate::shell::nix::build::NixBuilder;
use crate::shell::nix::output::last_error_line;

/// One adapter per configured builder, by id (`local` or the store URI).
pub fn pool(config: &Config) -> anyhow::Result<BTreeMap<String, Arc<NixBuilder>>> {
    let log_dir = config.state_dir.join("logs");
    std::fs::create_dir_all(&log_dir)?;
    let mut out = BTreeMap::new();
    for b in config.all_builders() {
        let uri = b.uri.get_ref().clone();
        let store = (uri != "local").then(|| uri.clone());
        out.insert(
            uri.clone(),
            Arc::new(NixBuilder {
                id: uri,
                store,
                ssh_key: b.ssh_key.clone(),
                nix_args: config.nix_args(),
                max_silent_time_secs: config.nix.max_silent_time_secs,
                timeout_secs: config.nix.build_timeout_secs,
                log_dir: log_dir.clone(),
                transfer_timeout: config.timeouts.transfer(),
                probe_timeout: config.timeouts.probe(),
                transfers: Default::default(),
            }),
        );
    }
    Ok(out)
}

/// `nix show-derivation` of some derivations: its JSON, or why it failed. Bounded in
/// time: a hung daemon must not hold up whoever asked.
async fn show_derivation(
    nix_args: &[String],
    drvs: &[String],
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let run = Command::new("nix")
        .args([
            "--extra-experimental-features",
            "nix-command",
            "show-derivation",
        ])
        .args(nix_args)
        .args(drvs)
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(timeout, run).await {
        Ok(Ok(o)) if o.status.success() => Ok(o.stdout),
        Ok(Ok(o)) => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
        Ok(Err(e)) => Err(format!("cannot run nix: {e}")),
        Err(_) => Err(format!(
            "nix show-derivation gave no answer within {} s (timeouts.inspect_secs)",
            timeout.as_secs()
        )),
    }
}

/// Reads derivations with `nix show-derivation` (in chunks), and which of their inputs
/// still need building (`StepInfo::missing`).
pub async fn inspect(
    nix_args: &[String],
    drvs: &[String],
    timeout: Duration,
) -> Vec<(String, Result<StepInfo, String>)> {
    let mut out = vec![];
    for chunk in drvs.chunks(200) {
        match show_derivation(nix_args, chunk, timeout).await {
            Ok(stdout) => {
                let parsed = parse_show_derivation(&stdout);
                let inputs: BTreeSet<&String> = parsed.values().flat_map(|i| &i.inputs).collect();
                // Unknown validity: no step of its own, the builder realises it with the
                // step that needs it (as before step-level dispatch). Slower, never wrong.
                let unbuilt = unbuilt(nix_args, inputs, timeout).await.unwrap_or_default();
                for d in chunk {
                    let info = parsed
                        .get(d)
                        .cloned()
                        .map(|mut i| {
                            i.missing = i
                                .inputs
                                .iter()
                                .filter(|x| unbuilt.contains(*x))
                                .cloned()
                                .collect();
                            i
                        })
                        .ok_or_else(|| format!("{d} missing from nix show-derivation"));
                    out.push((d.clone(), info));
                }
            }
            Err(msg) => out.extend(chunk.iter().map(|d| (d.clone(), Err(msg.clone())))),
        }
    }
    out
}

/// The derivations among `drvs` with an output that is not valid in the local store.
async fn unbuilt(
    nix_args: &[String],
    drvs: BTreeSet<&String>,
    timeout: Duration,
) -> Result<BTreeSet<String>, String> {
    let drvs: Vec<String> = drvs.into_iter().cloned().collect();
    let mut by_output = BTreeMap::new();
    let mut unknown = BTreeSet::new();
    for chunk in drvs.chunks(200) {
        let json = show_derivation(nix_args, chunk, timeout).await?;
        for (drv, outputs) in parse_output_paths(&json) {
            if outputs.is_empty() {
                unknown.insert(drv); // content-addressed: nothing to check before it is built
                continue;
            }
            for o in outputs {
                by_output.insert(o, drv.clone());
            }
        }
    }
    let paths: Vec<&String> = by_output.keys().collect();
    let mut out = unknown;
    for chunk in paths.chunks(500) {
        let run = Command::new("nix-store")
            .args(["--check-validity", "--print-invalid"])
            .args(chunk.iter().map(|p| p.as_str()))
            .kill_on_drop(true)
            .output();
        let o = tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| "nix-store --check-validity gave no answer".to_string())?
            .map_err(|e| format!("cannot run nix-store: {e}"))?;
        if !o.status.success() {
            return Err(String::from_utf8_lossy(&o.stderr).trim().to_string());
        }
        for p in String::from_utf8_lossy(&o.stdout).lines() {
            if let Some(d) = by_output.get(p) {
                out.insert(d.clone());
            }
        }
    }
    Ok(out)
}

/// `nix show-derivation` JSON to each derivation's output paths (none when floating).
pub fn parse_output_paths(json: &[u8]) -> BTreeMap<String, Vec<String>> {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(json) else {
        return BTreeMap::new();
    };
    map.into_iter()
        .map(|(drv, v)| {
            let paths = v["outputs"]
                .as_object()
                .map(|os| {
                    os.values()
                        .filter_map(|o| o["path"].as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            (drv, paths)
        })
        .collect()
}

/// The input derivations and sources of derivations (for [`crate::core::why`]).
pub async fn read_inputs(
    nix_args: &[String],
    drvs: &[String],
    timeout: Duration,
) -> Result<BTreeMap<String, DrvInputs>, String> {
    let mut out = BTreeMap::new();
    for chunk in drvs.chunks(200) {
        let stdout = show_derivation(nix_args, chunk, timeout).await?;
        out.extend(parse_inputs(&stdout));
    }
    Ok(out)
}

/// `nix show-derivation` JSON to input derivations and sources.
pub fn parse_inputs(json: &[u8]) -> BTreeMap<String, DrvInputs> {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(json) else {
        return BTreeMap::new();
    };
    map.into_iter()
        .map(|(drv, v)| {
            let drvs = v["inputDrvs"]
                .as_object()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            let srcs = v["inputSrcs"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            (drv, DrvInputs { drvs, srcs })
        })
        .collect()
}

/// `nix show-derivation` JSON to step infos.
pub fn parse_show_derivation(json: &[u8]) -> BTreeMap<String, StepInfo> {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(json) else {
        return BTreeMap::new();
    };
    map.into_iter()
        .map(|(drv, v)| {
            let features: BTreeSet<String> = v["env"]["requiredSystemFeatures"]
                .as_str()
                .unwrap_or("")
                .split_whitespace()
                .map(String::from)
                .collect();
            let inputs = v["inputDrvs"]
                .as_object()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            let info = StepInfo {
                system: v["system"].as_str().unwrap_or("").to_string(),
                features,
                inputs,
                missing: vec![],
                weight_ms: None,
            };
            (drv, info)
        })
        .collect()
}

/// Derivations that (transitively) depend on `root`.
pub async fn referrers(root: &str) -> Vec<String> {
    match Command::new("nix-store")
        .args(["-q", "--referrers-closure", root])
        .output()
        .await
    {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.ends_with(".drv"))
            .map(String::from)
            .collect(),
        _ => vec![],
    }
}

/// Checks a builder answers and learns what it runs.
pub async fn probe(b: &NixBuilder) -> Result<BuilderIdentity, String> {
    let Some(store) = &b.store else {
        let o = Command::new("nix")
            .arg("--version")
            .output()
            .await
            .map_err(|e| format!("cannot run nix: {e}"))?;
        let line = String::from_utf8_lossy(&o.stdout);
        return parse_version_line(line.trim())
            .ok_or_else(|| format!("unexpected `nix --version`: {line}"));
    };
    let mut ping = Command::new("nix");
    ping.args([
        "--extra-experimental-features",
        "nix-command",
        "store",
        "ping",
        "--store",
        store,
    ])
    .args(&b.nix_args)
    // A probe that times out must not leave its ssh behind, one per probe interval.
    .kill_on_drop(true);
    b.ssh_env(&mut ping);
    let o = tokio::time::timeout(b.probe_timeout, ping.output())
        .await
        .map_err(|_| {
            format!(
                "no answer within {} s (timeouts.probe_secs)",
                b.probe_timeout.as_secs()
            )
        })?
        .map_err(|e| format!("cannot run nix: {e}"))?;
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    if !o.status.success() {
        let err = last_error_line(&text).unwrap_or(text.trim());
        return Err(err.to_string());
    }
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .unwrap_or("")
        .trim()
        .to_string();
    // The daemon's handshake says only a version; ask its `nix --version` over ssh for the
    // implementation, and fall back to inferring it from the version number.
    if let Some(host) = ssh_host(store) {
        let mut ssh = Command::new("ssh");
        ssh.args(ssh_opts(b))
            .arg(host)
            .args(["nix", "--version"])
            .kill_on_drop(true);
        if let Ok(Ok(o)) = tokio::time::timeout(b.probe_timeout, ssh.output()).await {
            if let Some(id) = parse_version_line(String::from_utf8_lossy(&o.stdout).trim()) {
                return Ok(id);
            }
        }
    }
    Ok(BuilderIdentity {
        implementation: infer_implementation(&version).to_string(),
        version,
    })
}

fn ssh_opts(b: &NixBuilder) -> Vec<String> {
    let mut opts: Vec<String> = std::env::var("NIX_SSHOPTS")
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect();
    if let Some(k) = &b.ssh_key {
        opts.push("-i".into());
        opts.push(k.display().to_string());
    }
    opts.extend(["-o".into(), "BatchMode=yes".into()]);
    opts
}

/// `ssh-ng://user@host:22?x=y` -> `user@host` (with `-p` left to the ssh config).
fn ssh_host(uri: &str) -> Option<String> {
    let rest = uri
        .strip_prefix("ssh-ng://")
        .or_else(|| uri.strip_prefix("ssh://"))?;
    let host = rest.split(['?', '/']).next()?;
    (!host.is_empty()).then(|| host.to_string())
}

/// Parses `nix --version`: `nix (Nix) 2.8.0`, `nix (Lix, like Nix) 2.91.1`,
/// `nix (Determinate Nix 3.17.0) 2.33.3`.
pub fn parse_version_line(line: &str) -> Option<BuilderIdentity> {
    let open = line.find('(')?;
    let close = line[open..].find(')')? + open;
    let inner = &line[open + 1..close];
    let version = line[close + 1..].trim().to_string();
    // "Lix, like Nix" -> "Lix"; "Nix" and "Determinate Nix 3.17.0" stay as printed.
    let implementation = if inner.starts_with("Lix") {
        "Lix".to_string()
    } else {
        inner.to_string()
    };
    (!version.is_empty()).then_some(BuilderIdentity {
        implementation,
        version,
    })
}

/// Lix numbers its releases from 2.90 on; CppNix has not reached that.
fn infer_implementation(version: &str) -> &'static str {
    let minor = version
        .split('.')
        .nth(1)
        .and_then(|m| m.parse::<u32>().ok());
    match (version.starts_with("2."), minor) {
        (true, Some(m)) if m >= 90 => "Lix",
        _ => "Nix",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_name_the_implementation() {
        let id = |s| parse_version_line(s).map(|i| (i.implementation, i.version));
        assert_eq!(id("nix (Nix) 2.8.0"), Some(("Nix".into(), "2.8.0".into())));
        assert_eq!(
            id("nix (Lix, like Nix) 2.91.1"),
            Some(("Lix".into(), "2.91.1".into()))
        );
        assert_eq!(
            id("nix (Determinate Nix 3.17.0) 2.33.3"),
            Some(("Determinate Nix 3.17.0".into(), "2.33.3".into()))
        );
        assert_eq!(id("garbage"), None);
        assert_eq!(infer_implementation("2.93.0"), "Lix");
        assert_eq!(infer_implementation("2.28.3"), "Nix");
    }

    #[test]
    fn hosts_from_store_uris() {
        assert_eq!(
            ssh_host("ssh-ng://b1?remote-store=local?root=/x").as_deref(),
            Some("b1")
        );
        assert_eq!(
            ssh_host("ssh-ng://nix@10.0.0.2").as_deref(),
            Some("nix@10.0.0.2")
        );
        assert_eq!(ssh_host("local"), None);
    }

    #[test]
    fn show_derivation_features_and_inputs() {
        let json = br#"{"/nix/store/a-x.drv":{"system":"x86_64-linux","inputDrvs":{"/nix/store/b-y.drv":["out"]},
            "env":{"requiredSystemFeatures":"kvm big-parallel"}}}"#;
        let m = parse_show_derivation(json);
        let i = &m["/nix/store/a-x.drv"];
        assert_eq!(i.system, "x86_64-linux");
        assert_eq!(
            i.features.iter().map(String::as_str).collect::<Vec<_>>(),
            ["big-parallel", "kvm"]
        );
        assert_eq!(i.inputs, ["/nix/store/b-y.drv"]);
    }
}
