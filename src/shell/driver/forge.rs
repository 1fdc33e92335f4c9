//! The driver's forge side: webhook events become core inputs; a comment's commands first
//! need the pull request and the commenter's permission, read from the forge off the
//! driver task; the outbox is delivered by a task of its own.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::{Driver, Msg};
use crate::core::commands::{self, BotCommand};
use crate::core::forge::{ForgeEvent, ForgeInput, MergeGroup, PullAction};
use crate::core::groups::group_pulls;
use crate::core::{Millis, Record};
use crate::shell::config::Config;
use crate::shell::forge::app::{AppAuth, Auth};
use crate::shell::forge::client::{retrying, ForgeClient};
use crate::shell::forge::outbox::{self, Outbound};

pub(super) struct ForgeShell {
    client: Arc<ForgeClient>,
    bot: String,
    /// The token's own login as the forge answered (`GET /user`, or `SLUG[bot]` for a
    /// GitHub App), once known: its comments are the bot's own too.
    login: Option<String>,
    context: String,
    resync: Duration,
    queue_label: Option<String>,
    /// `mode = "merge-group"`: GitHub's merge queue lands; mergequeue checks its groups.
    merge_group: bool,
}

/// A client per repository with `[repos.forge]`.
pub(super) fn open(config: &Config) -> anyhow::Result<BTreeMap<String, ForgeShell>> {
    let mut out = BTreeMap::new();
    for r in &config.repos {
        let Some(f) = &r.forge else { continue };
        let auth = match (&f.token_file, &f.app_id, &f.app_private_key_file) {
            (Some(p), _, _) => Auth::Token(super::read_secret(p)?),
            (None, Some(id), Some(key)) => {
                let pem = super::read_secret(key)?;
                let app = AppAuth::new(*id.get_ref(), pem.as_bytes(), f.installation_id)
                    .map_err(|e| anyhow::anyhow!("repo {:?}: {e}", r.name.get_ref()))?;
                Auth::App(Box::new(app))
            }
            _ => Auth::None,
        };
        let client = ForgeClient::new(f, auth, config.timeouts.forge())
            .map_err(|e| anyhow::anyhow!("repo {:?}: forge client: {e}", r.name.get_ref()))?;
        out.insert(
            r.name.get_ref().clone(),
            ForgeShell {
                client: Arc::new(client),
                bot: f.bot.get_ref().clone(),
                login: None,
                context: f.status_context.clone(),
                resync: Duration::from_secs(*f.resync_secs.get_ref()),
                queue_label: f.queue_label.clone(),
                merge_group: *f.mode.get_ref() == crate::shell::config::ForgeMode::MergeGroup,
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
        if !self.forges.contains_key(repo) {
            return Ok(());
        }
        let event = self.label_change(repo, event);
        match event {
            ForgeEvent::PullRequest {
                action: PullAction::Labeled(label) | PullAction::Unlabeled(label),
                ..
            } if Some(&label) != self.forges[repo].queue_label.as_ref() => {}
            ForgeEvent::PullRequest {
                action: action @ (PullAction::Labeled(_) | PullAction::Unlabeled(_)),
                pr,
                sender,
            } => {
                // The queue label is an approval (or its withdrawal) by whoever set it, with
                // the same permission check as a comment's `r+` (or `r-`).
                let command = match action {
                    PullAction::Labeled(_) => BotCommand::Approve {
                        approvers: vec![],
                        priority: None,
                    },
                    _ => BotCommand::Cancel,
                };
                self.on_commands(repo, pr.number, sender, vec![Ok(command)]);
            }
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
                pr,
                comment_id,
                author,
                body,
            } => self.on_comment(repo, pr, comment_id, author, body, now)?,
            ForgeEvent::MergeGroupRequested(group) if self.forges[repo].merge_group => {
                self.on_merge_group(repo, group);
            }
            ForgeEvent::MergeGroupDestroyed(group) if self.forges[repo].merge_group => {
                let input = ForgeInput::MergeGroupDestroyed {
                    head_sha: group.head_sha,
                };
                self.core.forge(input, now);
                self.flush()?;
            }
            ForgeEvent::MergeGroupRequested(_)
            | ForgeEvent::MergeGroupDestroyed(_)
            | ForgeEvent::Ignored { .. } => {}
        }
        Ok(())
    }

    /// Gitea's and Forgejo's `label_updated` carries the new label set: the queue label
    /// appearing is `Labeled`, disappearing (from a set seen with it) is `Unlabeled`.
    /// What was seen is kept in memory; after a restart a set without the label cancels
    /// nothing.
    fn label_change(&mut self, repo: &str, event: ForgeEvent) -> ForgeEvent {
        let ForgeEvent::PullRequest {
            action: PullAction::LabelsSet(labels),
            pr,
            sender,
        } = event
        else {
            return event;
        };
        let Some(label) = self.forges.get(repo).and_then(|f| f.queue_label.clone()) else {
            return ForgeEvent::PullRequest {
                action: PullAction::LabelsSet(labels),
                pr,
                sender,
            };
        };
        let key = (repo.to_string(), pr.number);
        let now = labels.contains(&label);
        let before = self.labelled.contains(&key);
        let action = match (before, now) {
            (false, true) => {
                self.labelled.insert(key);
                PullAction::Labeled(label)
            }
            (true, false) => {
                self.labelled.remove(&key);
                PullAction::Unlabeled(label)
            }
            _ => PullAction::LabelsSet(labels),
        };
        ForgeEvent::PullRequest { action, pr, sender }
    }

    /// A comment, from a webhook or a resync: acted on once (by its id), unless it is the
    /// bot's own or holds no command; its pull request and the commenter's permission are
    /// read from the forge first, off this task.
    pub(super) fn on_comment(
        &mut self,
        repo: &str,
        pr: u64,
        comment_id: u64,
        author: String,
        body: String,
        now: Millis,
    ) -> anyhow::Result<()> {
        let Some(f) = self.forges.get(repo) else {
            return Ok(());
        };
        // The bot's own comments (a GitHub App comments as `NAME[bot]`).
        let own = author.eq_ignore_ascii_case(&f.bot)
            || author.eq_ignore_ascii_case(&format!("{}[bot]", f.bot))
            || f.login
                .as_ref()
                .is_some_and(|l| author.eq_ignore_ascii_case(l));
        let commands = commands::parse(&body, &f.bot);
        if own || commands.is_empty() {
            return Ok(());
        }
        // Id 0: a forge that gave none (some review events); only its delivery id counts.
        if comment_id != 0 && !self.store.comment_seen(repo, comment_id, now)? {
            return Ok(());
        }
        self.on_commands(repo, pr, author, commands);
        Ok(())
    }

    /// Commands on pull request `pr`: the pull request and the author's permission are read
    /// from the forge, off this task, then the core decides.
    fn on_commands(
        &self,
        repo: &str,
        pr: u64,
        author: String,
        commands: Vec<Result<BotCommand, commands::CommandError>>,
    ) {
        let Some(f) = self.forges.get(repo) else {
            return;
        };
        if f.merge_group {
            // GitHub's merge queue lands here: a pull request is queued there, not by us.
            return log::info!("[{repo}] commands on #{pr} ignored: mode = \"merge-group\"");
        }
        let (client, tx, repo) = (f.client.clone(), self.tx.clone(), repo.to_string());
        tokio::spawn(async move {
            // Asked when the command arrives, never cached: access can be revoked.
            // A forge that is down or rate-limited is waited for: the comment was taken
            // (its id is recorded) and must not be lost.
            let what = format!("[{repo}] reading #{pr} and {author}'s permission");
            let facts = retrying(&what, || async {
                tokio::try_join!(client.pull(pr), client.permission(&author))
            })
            .await;
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

    /// A merge group to check: its commits are fetched and read (which pull request each
    /// adds), and the pull requests read from the forge, off this task.
    fn on_merge_group(&self, repo: &str, group: MergeGroup) {
        let (client, tx, repo) = (
            self.forges[repo].client.clone(),
            self.tx.clone(),
            repo.to_string(),
        );
        let mirror = self.repos[&repo].mirror.clone();
        tokio::spawn(async move {
            let g = group.clone();
            let chain = tokio::task::spawn_blocking(move || {
                let m = mirror.lock().expect("mirror lock");
                m.group_chain(&g.head_ref, &g.head_sha, &g.base_sha)
                    .map_err(|e| e.to_string())
                    .and_then(|chain| group_pulls(&chain, &g.head_ref))
            })
            .await;
            let pulls = match chain {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => {
                    return log::warn!("[{repo}] merge group {} not checked: {e}", group.head_sha)
                }
                Err(e) => return log::error!("[{repo}] merge group: {e}"),
            };
            let mut prs = vec![];
            for (n, commit) in pulls {
                let what = format!("[{repo}] reading #{n} of merge group {}", group.head_sha);
                match retrying(&what, || client.pull(n)).await {
                    Ok(pr) => prs.push((pr, commit)),
                    Err(e) => return log::warn!("{what}: {e}; not checked"),
                }
            }
            let input = ForgeInput::MergeGroup { repo, group, prs };
            let _ = tx.send(Msg::Forge(input)).await;
        });
    }

    /// The token's own login, learned by the resync task.
    pub(super) fn on_login(&mut self, repo: &str, login: String) {
        if let Some(f) = self.forges.get_mut(repo) {
            log::info!("[{repo}] the forge knows mergequeue as {login:?}");
            f.login = Some(login);
        }
    }

    /// The resync tasks: at start and every `resync_secs`, per repository with a forge.
    pub(super) fn spawn_resyncs(&self) -> Vec<tokio::task::JoinHandle<()>> {
        self.forges
            .iter()
            .map(|(repo, f)| {
                let (repo, client, every) = (repo.clone(), f.client.clone(), f.resync);
                let (tx, db) = (self.tx.clone(), self.config.db_path());
                tokio::spawn(resync_forever(repo, client, every, tx, db))
            })
            .collect()
    }
}

/// Reconciles the queue with the forge: the open pull requests in full (closed ones and
/// moved heads), then the comments made since the last resync (missed while down). The
/// first resync of a repository reads no old comments: an `r+` from before mergequeue was
/// set up is not executed.
async fn resync_forever(
    repo: String,
    client: Arc<ForgeClient>,
    every: Duration,
    tx: tokio::sync::mpsc::Sender<Msg>,
    db: std::path::PathBuf,
) {
    // Its own connection: the resync's bookmark is nobody else's business.
    let mut store = match crate::shell::store::Store::open(&db) {
        Ok(s) => s,
        Err(e) => return log::error!("[{repo}] resync: {e}"),
    };
    let mut login_known = false;
    loop {
        if !login_known {
            match retrying(&format!("[{repo}] the bot's own login"), || client.whoami()).await {
                Ok(login) => {
                    login_known = true;
                    let _ = tx
                        .send(Msg::ForgeLogin {
                            repo: repo.clone(),
                            login,
                        })
                        .await;
                }
                Err(e) => log::warn!("[{repo}] cannot read the bot's own login: {e}"),
            }
        }
        let started = super::now_ms();
        match resync_once(&repo, &client, &tx, &mut store).await {
            Ok(()) => {
                if let Err(e) = store.set_sync_since(&repo, started) {
                    log::warn!("[{repo}] resync: {e}");
                }
            }
            Err(e) => log::warn!("[{repo}] resync with the forge failed, next in {every:?}: {e}"),
        }
        tokio::time::sleep(every).await;
    }
}

async fn resync_once(
    repo: &str,
    client: &ForgeClient,
    tx: &tokio::sync::mpsc::Sender<Msg>,
    store: &mut crate::shell::store::Store,
) -> anyhow::Result<()> {
    let open = retrying(&format!("[{repo}] resync"), || client.open_pulls()).await?;
    let numbers: std::collections::BTreeSet<u64> = open.iter().map(|p| p.number).collect();
    let input = ForgeInput::Open {
        repo: repo.to_string(),
        open,
    };
    tx.send(Msg::Forge(input)).await?;
    let Some(since) = store.sync_since(repo)? else {
        return Ok(());
    };
    // A minute of overlap: clocks differ; comment ids make seeing one twice harmless.
    let from = std::time::UNIX_EPOCH + Duration::from_millis((since - 60_000).max(0) as u64);
    for (pr, comment_id, author, body) in client.comments_since(from).await? {
        if numbers.contains(&pr) {
            let msg = Msg::MissedComment {
                repo: repo.to_string(),
                pr,
                comment_id,
                author,
                body,
            };
            tx.send(msg).await?;
        }
    }
    Ok(())
}
