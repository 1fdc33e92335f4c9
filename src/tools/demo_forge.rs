//! `mergequeue demo --forge`: the scripted changes as pull requests on a local fake forge
//! (Gitea's shapes, `tools::fakeforge`), approved by a maintainer's `@mergequeue r+`
//! comments delivered as signed webhooks; then what the forge shows of each pull
//! request: its commit statuses and the comments mergequeue wrote.

use std::time::{Duration, Instant};

use anyhow::Context;
use hyper::Method;
use serde_json::Value;

use crate::tools::fakeforge::{FakeForge, Shape};
use crate::tools::harness::{git, Harness};

const SECRET: &[u8] = b"demo webhook secret";

pub struct DemoForge {
    pub forge: FakeForge,
    /// The `[repos.forge]` table for the demo's config.
    pub toml: String,
}

/// Starts the fake forge and writes its token and webhook secret under `root`.
pub async fn start(root: &std::path::Path) -> anyhow::Result<DemoForge> {
    let forge = FakeForge::start(Shape::Gitea, "demo/pkgs", "demo-forge-token").await?;
    forge.set_permission("maintainer", "write");
    forge.set_permission("visitor", "read");
    let (token, secret) = (root.join("forge-token"), root.join("webhook-secret"));
    std::fs::write(&token, "demo-forge-token")?;
    std::fs::write(&secret, SECRET)?;
    let toml = format!(
        "[repos.forge]\nkind = \"gitea\"\napi_url = {:?}\nrepository = \"demo/pkgs\"\n\
         token_file = {:?}\nwebhook_secret_file = {:?}\n",
        forge.api_url,
        token.display().to_string(),
        secret.display().to_string()
    );
    Ok(DemoForge { forge, toml })
}

impl DemoForge {
    async fn say(&self, h: &Harness, pr: u64, user: &str, text: &str) -> anyhow::Result<()> {
        let id = self.forge.add_comment(pr, user, text);
        let event = self.forge.comment_event(pr, id, user);
        let status = self
            .forge
            .deliver(&h.listen, "pkgs", SECRET, &format!("demo-{id}"), &event)
            .await?;
        anyhow::ensure!(status == 202, "the webhook was answered {status}");
        println!("  #{pr}: {user} commented {text:?}");
        Ok(())
    }

    /// Opens a pull request per scripted branch (published as `refs/pull/N/head`) and
    /// approves each in a comment; `cancelled` ones are withdrawn with `r-`. Returns
    /// the queue's change id of each, in script order.
    pub async fn submit(
        &self,
        h: &mut Harness,
        script: &[(&'static str, String, &'static str)],
    ) -> anyhow::Result<Vec<u64>> {
        for (i, (branch, title, _)) in script.iter().enumerate() {
            let n = i as u64 + 1;
            let head = h.upstream_head(branch)?;
            git(
                &h.upstream,
                &["update-ref", &format!("refs/pull/{n}/head"), &head],
            )?;
            self.forge.open_pull(n, &head, "master", title, "alice");
        }
        // Someone without write access first: refused on the pull request.
        self.say(h, 1, "visitor", "@mergequeue r+").await?;
        // The one to withdraw: approved, queued, then `r-` (before its batch starts).
        let withdrawn: Vec<u64> = script
            .iter()
            .enumerate()
            .filter(|(_, s)| s.2 == "cancelled")
            .map(|(i, _)| i as u64 + 1)
            .collect();
        for (k, n) in withdrawn.iter().enumerate() {
            self.say(h, *n, "maintainer", "@mergequeue r+").await?;
            self.wait_changes(h, k + 1).await?;
            self.say(h, *n, "maintainer", "@mergequeue r-").await?;
        }
        for n in (1..=script.len() as u64).filter(|n| !withdrawn.contains(n)) {
            self.say(h, n, "maintainer", "Looks good.\n@mergequeue r+")
                .await?;
        }
        let ids = self.wait_changes(h, script.len()).await?;
        println!();
        Ok(ids.into_iter().map(|(_, id)| id).collect())
    }

    /// (pull request, change id) of the first `n` changes, by pull request, once there
    /// are that many (commands are acted on after the forge said who may give them).
    async fn wait_changes(&self, h: &Harness, n: usize) -> anyhow::Result<Vec<(u64, u64)>> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let list = h
                .client
                .ok(Method::GET, "/api/v1/repos/pkgs/changes?limit=1000", None)
                .await?;
            let mut by_pr: Vec<(u64, u64)> = list
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| Some((c["pr"].as_u64()?, c["id"].as_u64()?)))
                .collect();
            if by_pr.len() >= n {
                by_pr.sort();
                return Ok(by_pr);
            }
            anyhow::ensure!(Instant::now() < deadline, "the approvals were not acted on");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// What the forge shows of each pull request, once the answers were delivered.
    pub async fn show(&self, n: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let finals = |reqs: &[crate::tools::fakeforge::Seen]| {
            reqs.iter()
                .filter(|r| r.path.contains("/statuses/") && r.body["state"] != "pending")
                .count()
        };
        while finals(&self.forge.requests()) < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let reqs = self.forge.requests();
        println!("\nWhat the forge shows");
        for number in 1..=n as u64 {
            let pull = self.forge.state.lock().unwrap().pulls[&number].clone();
            let head = pull["head"]["sha"].as_str().context("head")?.to_string();
            let title = pull["title"].as_str().unwrap_or("");
            let merged = if pull["merged"] == true {
                "  [merged]"
            } else {
                ""
            };
            println!("  #{number} {title}{merged}");
            for r in &reqs {
                let b: &Value = &r.body;
                if r.path.ends_with(&format!("/statuses/{head}")) {
                    println!(
                        "      status  {:<8} {}",
                        b["state"].as_str().unwrap_or(""),
                        b["description"].as_str().unwrap_or("")
                    );
                } else if r.path.ends_with(&format!("/issues/{number}/comments")) {
                    let text = b["body"].as_str().unwrap_or("");
                    let first = text.lines().next().unwrap_or("");
                    let more = text.lines().count().saturating_sub(1);
                    let more = if more > 0 {
                        format!(" (+{more} lines)")
                    } else {
                        String::new()
                    };
                    println!("      comment {first}{more}");
                }
            }
        }
        Ok(())
    }
}
