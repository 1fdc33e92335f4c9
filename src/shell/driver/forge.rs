//! The driver's forge side: webhook events become core inputs; a comment's commands first
//! need the pull request and the commenter's permission, read from the forge off the
//! driver task; the outbox is delivered by a task of its own.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::{Driver, Msg};
use crate::core::commands;
use crate::core::forge::{ForgeEvent, ForgeInput};
use crate::core::{Millis, Record};
use crate::shell::config::Config;
use crate::shell::forge::client::ForgeClient;
use crate::shell::forge::outbox::{self, Outbound};

pub(super) struct ForgeShell {
    client: Arc<ForgeClient>,
    bot: String,
    context: String,
}

/// A client per repository with `[repos.forge]`.
pub(super) fn open(config: &Config) -> anyhow::Result<BTreeMap<String, ForgeShell>> {
    let mut out = BTreeMap::new();
    for r in &config.repos {
        let Some(f) = &r.forge else { continue };
        anyhow::ensure!(
            f.app_id.is_none(),
            "repo {:?}: GitHub App authentication (app_id) is not implemented yet; give token_file",
            r.name.get_ref()
        );
        let token = match &f.token_file {
            Some(p) => Some(super::read_secret(p)?),
            None => None,
        };
        let client = ForgeClient::new(f, token)
            .map_err(|e| anyhow::anyhow!("repo {:?}: forge client: {e}", r.name.get_ref()))?;
        out.insert(
            r.name.get_ref().clone(),
            ForgeShell {
                client: Arc::new(client),
                bot: f.bot.get_ref().clone(),
                context: f.status_context.clone(),
            },
        );
    }
    Ok(out)
}

impl Driver {
    /// The outbox's delivery task, when some repository has a forge.
    pub(super) fn spawn_outbox(&self) -> Option<tokio::task::JoinHandle<()>> {
        if self.forges.is_empty() {
            return None;
        }
        let forges = self
            .forges
            .iter()
            .map(|(repo, f)| {
                let o = Outbound {
                    client: f.client.clone(),
                    context: f.context.clone(),
                };
                (repo.clone(), o)
            })
            .collect();
        let every = Duration::from_millis(500);
        Some(tokio::spawn(outbox::run(
            self.config.db_path(),
            forges,
            every,
        )))
    }

    /// A new webhook delivery: logged, then acted on.
    pub(super) fn on_forge_event(
        &mut self,
        repo: &str,
        event: ForgeEvent,
        now: Millis,
    ) -> anyhow::Result<()> {
        if let Some(text) = event.summary() {
            let record = Record::Event {
                at: now,
                repo: repo.to_string(),
                text,
            };
            self.store.apply(&[&record])?;
        }
        let Some(f) = self.forges.get(repo) else {
            return Ok(());
        };
        match event {
            ForgeEvent::PullRequest { action, pr, .. } => {
                let input = ForgeInput::Pull {
                    repo: repo.to_string(),
                    action,
                    pr,
                };
                self.core.forge(input, now);
                self.flush()?;
            }
            ForgeEvent::Comment {
                pr, author, body, ..
            } => {
                // The bot's own comments (a GitHub App comments as `NAME[bot]`).
                let own = author.eq_ignore_ascii_case(&f.bot)
                    || author.eq_ignore_ascii_case(&format!("{}[bot]", f.bot));
                let commands = commands::parse(&body, &f.bot);
                if own || commands.is_empty() {
                    return Ok(());
                }
                let (client, tx, repo) = (f.client.clone(), self.tx.clone(), repo.to_string());
                tokio::spawn(async move {
                    // Asked when the command arrives, never cached: access can be revoked.
                    let facts = tokio::try_join!(client.pull(pr), client.permission(&author));
                    match facts {
                        Ok((pr, permission)) => {
                            let input = ForgeInput::Commands {
                                repo,
                                pr,
                                author,
                                permission,
                                commands,
                            };
                            let _ = tx.send(Msg::Forge(input)).await;
                        }
                        Err(e) => log::warn!(
                            "[{repo}] commands of {author} on #{pr} not acted on: cannot read the forge: {e}"
                        ),
                    }
                });
            }
            // merge-group mode is not built yet.
            ForgeEvent::MergeGroupRequested(_)
            | ForgeEvent::MergeGroupDestroyed(_)
            | ForgeEvent::Ignored { .. } => {}
        }
        Ok(())
    }
}
