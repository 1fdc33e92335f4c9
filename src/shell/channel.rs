//! The git side of channels: polling the source and compare-and-swap pushes of the
//! target, and the dispatch of channel commands. The decisions are in `core/channel.rs`;
//! artifacts are written by `shell/artifacts.rs`, rows by `shell/store.rs`, views by
//! `shell/status.rs`.

use crate::core::ChannelInput;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use git2::Oid;

use crate::core::breakage::BrokenJob;
use crate::core::{AdvanceResult, Command, GateJob, Input, Millis, SourcePoll};
use crate::shell::git::{ls_remote, GitError, Mirror};

/// How many commits below the source head a poll reports (look-back candidates).
pub const BETWEEN_MAX: usize = 64;

pub struct ChannelShell {
    pub name: String,
    pub mirror: Arc<Mutex<Mirror>>,
    pub source: String,
    pub target: String,
    /// Where the target branch lives: the channel's `remote`, else the repo's URL.
    pub target_url: String,
    pub artifacts_dir: Option<PathBuf>,
    /// The binary cache the gate's closures are in: (URI, public key), named in the
    /// artifacts so users know where to substitute from.
    pub cache: Option<(String, String)>,
}

impl ChannelShell {
    fn source_ref(&self) -> String {
        format!("refs/mq/channel/{}/source", self.name)
    }

    fn target_ref(&self) -> String {
        format!("refs/mq/channel/{}/target", self.name)
    }

    /// Fetches the source head into the mirror and returns it.
    fn fetch_source(&self, m: &Mirror) -> Result<String, GitError> {
        let r = self.source_ref();
        m.fetch_from(
            &m.url.clone(),
            &[format!("+refs/heads/{}:{r}", self.source)],
        )?;
        m.resolve(&r)
    }

    /// The target's revision on its remote, fetched into the mirror when new.
    fn fetch_target(&self, m: &Mirror) -> Result<Option<String>, GitError> {
        let Some(tip) = ls_remote(&self.target_url, &format!("refs/heads/{}", self.target))? else {
            return Ok(None);
        };
        let repo = m.repo()?;
        if repo.find_commit(Oid::from_str(&tip)?).is_err() {
            m.fetch_from(
                &self.target_url,
                &[format!("+refs/heads/{}:{}", self.target, self.target_ref())],
            )?;
        } else {
            repo.reference(
                &self.target_ref(),
                Oid::from_str(&tip)?,
                true,
                "channel target",
            )?;
        }
        Ok(Some(tip))
    }

    pub fn poll(&self) -> Result<SourcePoll, GitError> {
        let m = self.mirror.lock().expect("mirror lock");
        let head = self.fetch_source(&m)?;
        let target = self.fetch_target(&m)?;
        let repo = m.repo()?;
        let h = Oid::from_str(&head)?;
        let t = target.as_deref().map(Oid::from_str).transpose()?;
        let descends = match t {
            None => true,
            Some(t) => t == h || repo.graph_descendant_of(h, t)?,
        };
        let mut between = vec![];
        if descends {
            let mut c = repo.find_commit(h)?;
            while between.len() < BETWEEN_MAX {
                let Ok(p) = c.parent(0) else { break };
                if Some(p.id()) == t {
                    break;
                }
                if let Some(t) = t {
                    if !repo.graph_descendant_of(p.id(), t)? {
                        break;
                    }
                }
                between.push(p.id().to_string());
                c = p;
            }
        }
        let target_time = match t {
            Some(t) => Some(repo.find_commit(t)?.committer().when().seconds() * 1000),
            None => None,
        };
        Ok(SourcePoll {
            head,
            target,
            target_time,
            descends,
            between,
        })
    }

    /// Moves the target from `old` to `new`: `new` must still be in the source and
    /// descend from `old`; the push is a compare-and-swap (`--force-with-lease`).
    /// Idempotent: a target already at `new` or beyond counts as advanced.
    pub fn advance(&self, old: Option<&str>, new: &str) -> Result<AdvanceResult, GitError> {
        let m = self.mirror.lock().expect("mirror lock");
        let head = self.fetch_source(&m)?;
        let repo = m.repo()?;
        let n = Oid::from_str(new)?;
        let descends = |a: Oid, b: Oid| -> Result<bool, GitError> {
            Ok(a == b || repo.graph_descendant_of(a, b)?)
        };
        if !descends(Oid::from_str(&head)?, n)? {
            return Ok(AdvanceResult::NotOnSource { head });
        }
        if let Some(o) = old {
            if !descends(n, Oid::from_str(o)?)? {
                return Err(GitError::Other(format!(
                    "{new} does not descend from {o}: refusing to move the channel sideways"
                )));
            }
        }
        let lease = format!(
            "--force-with-lease=refs/heads/{}:{}",
            self.target,
            old.unwrap_or("")
        );
        let spec = format!("{new}:refs/heads/{}", self.target);
        let pushed = crate::shell::git::git(
            Some(&m.path),
            &["push", "--quiet", &lease, "--", &self.target_url, &spec],
        );
        if pushed.is_ok() {
            return Ok(AdvanceResult::Advanced);
        }
        let tip = match self.fetch_target(&m) {
            Ok(t) => t,
            Err(e) => return Ok(AdvanceResult::Failed(e.to_string())),
        };
        if let Some(t) = &tip {
            if descends(Oid::from_str(t)?, n)? {
                return Ok(AdvanceResult::Advanced);
            }
        }
        if tip.as_deref() != old {
            return Ok(AdvanceResult::Moved { tip });
        }
        Ok(AdvanceResult::Failed(
            pushed.err().map(|e| e.to_string()).unwrap_or_default(),
        ))
    }

    /// Publishes `rev`'s artifacts (nothing without an `artifacts_dir`).
    pub fn publish(
        &self,
        rev: &str,
        at: Millis,
        gate: &[GateJob],
        broken: &[BrokenJob],
    ) -> anyhow::Result<()> {
        let Some(dir) = &self.artifacts_dir else {
            return Ok(());
        };
        let release = crate::shell::artifacts::Release {
            rev,
            at,
            gate,
            broken,
            cache: self.cache.as_ref().map(|(u, k)| (u.as_str(), k.as_str())),
        };
        crate::shell::artifacts::publish(&self.name, &self.mirror, dir, &release)
    }

    /// Performs a channel command (blocking git work) and returns its result as an input.
    /// `broken`: the followed branch's broken registry, published with artifacts. `None` for a
    /// command that is not a channel's.
    pub fn perform(&self, cmd: Command, broken: &[BrokenJob]) -> Option<Input> {
        Some(match cmd {
            Command::PollSource { channel } => Input::Channel(ChannelInput::SourcePolled {
                channel,
                result: self.poll().map_err(|e| e.to_string()),
            }),
            // The driver uploaded the gate's closures (`upload`) before handing it over.
            Command::AdvanceChannel {
                channel, old, new, ..
            } => {
                let result = self
                    .advance(old.as_deref(), &new)
                    .unwrap_or_else(|e| AdvanceResult::Failed(e.to_string()));
                Input::Channel(ChannelInput::Advanced {
                    channel,
                    new,
                    result,
                })
            }
            Command::PublishArtifacts {
                channel,
                rev,
                at,
                gate,
            } => {
                let result = self
                    .publish(&rev, at, &gate, broken)
                    .map_err(|e| format!("{e:#}"));
                Input::Channel(ChannelInput::ArtifactsPublished {
                    channel,
                    rev,
                    result,
                })
            }
            Command::Record(_)
            | Command::Prepare { .. }
            | Command::PrepareGroup { .. }
            | Command::Evaluate { .. }
            | Command::Inspect { .. }
            | Command::Build { .. }
            | Command::CancelBuild { .. }
            | Command::Verify { .. }
            | Command::QueryReferrers { .. }
            | Command::ProbeBuilder { .. }
            | Command::Probe { .. }
            | Command::Land { .. }
            | Command::Upload { .. }
            | Command::PublishStage { .. }
            | Command::PollTarget { .. } => return None,
        })
    }
}
