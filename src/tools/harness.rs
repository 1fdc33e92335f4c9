//! A real-world harness shared by the demo and the integration tests: a generated
//! package set in a git repository (a bare "upstream" plus a work clone), a config file,
//! and the real `mergequeue serve` binary as a child process talking HTTP.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hyper::Method;
use serde_json::{json, Value};

use crate::shell::client::ApiClient;
use crate::tools::fixture::{generate, PackageSet, Spec};

pub struct BranchOpts {
    pub batch_max: usize,
    pub batch_delay_secs: u64,
    pub required: Vec<String>,
    pub max_jobs: usize,
    /// Replaces the `[[builders]]` section (default: the local store).
    pub builders_toml: Option<String>,
    /// Appended to the `[[repos.branches]]` table (e.g. the breakage policy).
    pub branch_toml: String,
    /// Appended to the config file.
    pub extra_toml: String,
    /// Extra environment for the server (e.g. `NIX_SSHOPTS`).
    pub env: Vec<(String, String)>,
}

impl Default for BranchOpts {
    fn default() -> Self {
        BranchOpts {
            batch_max: 8,
            batch_delay_secs: 0,
            required: vec!["tested".into()],
            max_jobs: 4,
            builders_toml: None,
            branch_toml: String::new(),
            extra_toml: String::new(),
            env: vec![],
        }
    }
}

/// A `[[channels]]` table for the generated config (see `Harness::add_channel`).
pub struct ChannelSpec {
    pub name: String,
    pub repo: String,
    pub source: String,
    pub target: String,
    pub gate: Vec<String>,
    pub remote: Option<String>,
    pub poll_interval_secs: u64,
    pub min_interval_secs: u64,
    pub look_back: bool,
    pub artifacts_dir: Option<PathBuf>,
}

impl Default for ChannelSpec {
    fn default() -> Self {
        ChannelSpec {
            name: "unstable".into(),
            repo: "pkgs".into(),
            source: "master".into(),
            target: "unstable".into(),
            gate: vec!["tested".into()],
            remote: None,
            poll_interval_secs: 1,
            min_interval_secs: 0,
            look_back: false,
            artifacts_dir: None,
        }
    }
}

pub struct Harness {
    pub root: PathBuf,
    pub upstream: PathBuf,
    pub work: PathBuf,
    pub set: PackageSet,
    pub config_path: PathBuf,
    pub state_dir: PathBuf,
    pub token: String,
    pub listen: String,
    pub bin: PathBuf,
    pub env: Vec<(String, String)>,
    pub server: Option<Child>,
    pub client: ApiClient,
    /// Runs the server as this (uid, gid) instead of the caller, as the NixOS module runs
    /// it: an unprivileged user. The caller makes the root's files that user's.
    pub run_as: Option<(u32, u32)>,
}

/// Runs git with a fixed identity; fails with git's own message.
pub fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=mergequeue demo",
            "-c",
            "user.email=demo@localhost",
            "-c",
            "init.defaultBranch=master",
            // The tests' repositories may belong to the unprivileged user the server runs as.
            "-c",
            "safe.directory=*",
        ])
        .args(args)
        .output()
        .context("cannot run git (install it: apt-get install git)")?;
    if !out.status.success() {
        bail!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Harness {
    /// Generates the package set, commits it on `master` and pushes it to a bare upstream.
    pub fn create(
        root: &Path,
        spec: &Spec,
        opts: &BranchOpts,
        bin: &Path,
    ) -> anyhow::Result<Harness> {
        let upstream = root.join("upstream.git");
        let work = root.join("work");
        let state_dir = root.join("state");
        std::fs::create_dir_all(&work)?;
        git(
            root,
            &[
                "init",
                "--quiet",
                "--bare",
                upstream.to_str().expect("utf-8 path"),
            ],
        )?;
        let set = generate(&work, spec).context("generating the package set")?;
        git(&work, &["init", "--quiet", "-b", "master"])?;
        git(&work, &["add", "-A"])?;
        git(&work, &["commit", "--quiet", "-m", "Initial package set"])?;
        git(
            &work,
            &[
                "remote",
                "add",
                "origin",
                upstream.to_str().expect("utf-8 path"),
            ],
        )?;
        git(&work, &["push", "--quiet", "origin", "master"])?;
        let token = format!("demo-{:016x}", fastrand::u64(..));
        let token_file = root.join("api-token");
        std::fs::write(&token_file, &token)?;
        let listen = format!("127.0.0.1:{}", free_port()?);
        let config_path = root.join("mergequeue.toml");
        let required = opts
            .required
            .iter()
            .map(|r| format!("{r:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let config = format!(
            r#"state_dir = {state:?}
listen = {listen:?}
api_token_file = {token_file:?}

[nix]
options = {{ substituters = "" }}

[[repos]]
name = "pkgs"
url = "file://{upstream}"
jobset = "release.nix"
systems = ["x86_64-linux"]

[[repos.branches]]
name = "master"
batch_max = {batch_max}
batch_delay_secs = {delay}
required = [{required}]
{branch}

{builders}
{extra}
"#,
            state = state_dir.display().to_string(),
            token_file = token_file.display().to_string(),
            upstream = upstream.display(),
            batch_max = opts.batch_max,
            delay = opts.batch_delay_secs,
            builders = opts.builders_toml.clone().unwrap_or_else(|| format!(
                "[[builders]]\nuri = \"local\"\nsystems = [\"x86_64-linux\"]\nmax_jobs = {}\n",
                opts.max_jobs
            )),
            branch = opts.branch_toml,
            extra = opts.extra_toml,
        );
        std::fs::write(&config_path, config)?;
        let client = ApiClient::new(&listen, Some(token.clone()));
        Ok(Harness {
            root: root.to_path_buf(),
            upstream,
            work,
            set,
            config_path,
            state_dir,
            token,
            listen,
            bin: bin.to_path_buf(),
            env: opts.env.clone(),
            server: None,
            client,
            run_as: None,
        })
    }

    /// Creates branch `name` from upstream master with one commit made by `edit`, and
    /// pushes it (forcing, so the same name can be force-pushed later). Returns the head.
    pub fn change(
        &mut self,
        name: &str,
        message: &str,
        edit: impl FnOnce(&mut PackageSet) -> std::io::Result<()>,
    ) -> anyhow::Result<String> {
        git(&self.work, &["fetch", "--quiet", "origin"])?;
        git(
            &self.work,
            &["checkout", "--quiet", "-B", name, "origin/master"],
        )?;
        let mut set = self.set.clone();
        edit(&mut set).with_context(|| format!("editing the package set for {name}"))?;
        git(&self.work, &["add", "-A"])?;
        git(
            &self.work,
            &["commit", "--quiet", "--allow-empty", "-m", message],
        )?;
        git(&self.work, &["push", "--quiet", "--force", "origin", name])?;
        let head = git(&self.work, &["rev-parse", "HEAD"])?;
        git(&self.work, &["checkout", "--quiet", "master"])?;
        Ok(head)
    }

    /// Pushes a commit straight to upstream `master` (someone bypassing the queue),
    /// retrying when master moved between fetch and push.
    pub fn push_direct(
        &mut self,
        message: &str,
        edit: impl Fn(&mut PackageSet) -> std::io::Result<()>,
    ) -> anyhow::Result<String> {
        let mut last = None;
        for _ in 0..5 {
            let head = self.change("direct-push", message, &edit)?;
            match git(
                &self.work,
                &["push", "--quiet", "origin", "direct-push:master"],
            ) {
                Ok(_) => return Ok(head),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("tried"))
    }

    pub fn upstream_head(&self, branch: &str) -> anyhow::Result<String> {
        git(
            &self.upstream,
            &["rev-parse", &format!("refs/heads/{branch}")],
        )
    }

    /// Appends TOML (more `[[repos]]`, ...) to the generated config; before starting.
    pub fn append_config(&self, text: &str) -> anyhow::Result<()> {
        let mut config = std::fs::read_to_string(&self.config_path)?;
        config.push('\n');
        config.push_str(text);
        std::fs::write(&self.config_path, config)?;
        Ok(())
    }

    /// Adds a `[[channels]]` table to the generated config; before starting.
    pub fn add_channel(&self, c: &ChannelSpec) -> anyhow::Result<()> {
        let list = |v: &[String]| {
            v.iter()
                .map(|x| format!("{x:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut t = format!(
            "[[channels]]\nname = {:?}\nrepo = {:?}\nsource = {:?}\ntarget = {:?}\ngate = [{}]\npoll_interval_secs = {}\nmin_interval_secs = {}\nlook_back = {}\n",
            c.name,
            c.repo,
            c.source,
            c.target,
            list(&c.gate),
            c.poll_interval_secs,
            c.min_interval_secs,
            c.look_back
        );
        if let Some(r) = &c.remote {
            t.push_str(&format!("remote = {r:?}\n"));
        }
        if let Some(d) = &c.artifacts_dir {
            t.push_str(&format!("artifacts_dir = {:?}\n", d.display().to_string()));
        }
        self.append_config(&t)
    }

    /// `GET /api/v1/channels/{name}`.
    pub async fn channel(&self, name: &str) -> anyhow::Result<Value> {
        Ok(self
            .client
            .ok(Method::GET, &format!("/api/v1/channels/{name}"), None)
            .await?)
    }

    /// Waits until the channel's status satisfies `done`; returns that status.
    pub async fn wait_channel(
        &self,
        name: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let t = Instant::now();
        loop {
            let v = self.channel(name).await?;
            if done(&v) {
                return Ok(v);
            }
            if t.elapsed() > timeout {
                bail!("channel {name} not as expected after {timeout:?}: {v}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Starts `mergequeue serve` and waits until the API answers. Its output goes to
    /// `server.log` in the root.
    pub async fn start_server(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join("server.log"))?;
        // Its own process group, so that stopping it also ends the builds it started, as
        // systemd ends the service's whole cgroup.
        let mut cmd = Command::new(&self.bin);
        cmd.process_group(0)
            .args(["serve", "--config"])
            .arg(&self.config_path)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        if let Some((uid, gid)) = self.run_as {
            // As root, std also clears the supplementary groups.
            cmd.uid(uid).gid(gid);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.server = Some(child);
        let t = Instant::now();
        loop {
            if self
                .client
                .call(Method::GET, "/metrics", None)
                .await
                .is_ok()
            {
                return Ok(());
            }
            if let Some(status) = self
                .server
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "mergequeue serve exited with {status}; see {}",
                    self.root.join("server.log").display()
                );
            }
            if t.elapsed() > Duration::from_secs(30) {
                bail!("mergequeue serve did not answer within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the server: `SIGKILL` when `kill`, else `SIGTERM` and wait.
    /// The PID of the running server, if any.
    pub fn server_pid(&self) -> Option<u32> {
        self.server.as_ref().map(|c| c.id())
    }

    pub fn stop_server(&mut self, kill: bool) -> anyhow::Result<()> {
        if let Some(mut child) = self.server.take() {
            let sig = if kill { libc::SIGKILL } else { libc::SIGTERM };
            // SAFETY: signalling the child we spawned, by its PID.
            unsafe { libc::kill(child.id() as libc::pid_t, sig) };
            child.wait()?;
            // SAFETY: the process group of the server we spawned (its PID is the group's
            // ID): builds it left running.
            unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
        }
        Ok(())
    }

    pub async fn submit(&self, branch: &str, title: &str, priority: &str) -> anyhow::Result<Value> {
        let body = json!({ "ref": format!("refs/heads/{branch}"), "target": "master", "title": title, "author": "demo", "priority": priority });
        Ok(self
            .client
            .ok(Method::POST, "/api/v1/repos/pkgs/changes", Some(body))
            .await?)
    }

    pub async fn change_status(&self, id: u64) -> anyhow::Result<Value> {
        Ok(self
            .client
            .ok(
                Method::GET,
                &format!("/api/v1/repos/pkgs/changes/{id}"),
                None,
            )
            .await?)
    }

    /// Waits until every change is merged, rejected or cancelled.
    pub async fn wait_final(&self, ids: &[u64], timeout: Duration) -> anyhow::Result<Vec<Value>> {
        let t = Instant::now();
        loop {
            let mut all = vec![];
            for id in ids {
                all.push(self.change_status(*id).await?);
            }
            if all.iter().all(|c| {
                matches!(
                    c["state"].as_str(),
                    Some("merged" | "rejected" | "cancelled")
                )
            }) {
                return Ok(all);
            }
            if t.elapsed() > timeout {
                bail!(
                    "changes not final after {timeout:?}: {}",
                    serde_json::to_string(&all)?
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.stop_server(true);
    }
}
