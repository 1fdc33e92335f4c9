//! The live shell around the core: one task owns the `Core` and the SQLite `Store`
//! (the single writer). Everything else (HTTP handlers, git, nix) talks to it through
//! messages. Each step: feed an input to the core, persist its records in one
//! transaction, then perform its effects, whose results come back as messages.

use crate::core::{AdvanceResult, BuildInput, CandidateInput, ChannelInput, QueueInput};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};

use crate::core::change::{Change, ChangeId};
use crate::core::evaluation::Evaluation;
use crate::core::outcome::BuildReport;
use crate::core::{Command, Core, Input, Millis, ProbeResult, Record, Refusal, Submission};
use crate::shell::cache::Cache;
use crate::shell::config::Config;
use crate::shell::git::Mirror;
use crate::shell::nix::build::NixBuilder;
use crate::shell::nix::eval::NixEval;
use crate::shell::status::{Query, Reply, StoreFacts};
use crate::shell::store::{Reader, Store};

/// The driver's forge side.
mod builds;
mod forge;

pub fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

pub enum Msg {
    Submit {
        sub: Submission,
        reply: oneshot::Sender<Result<Change, Refusal>>,
    },
    Cancel {
        repo: String,
        id: ChangeId,
        reply: oneshot::Sender<Result<Change, Refusal>>,
    },
    Query {
        q: Query,
        /// What the query needs of the database, read before it was sent.
        facts: StoreFacts,
        reply: oneshot::Sender<Option<Reply>>,
    },
    Input(Input),
    /// An evaluation that ran (stored as the commit's evaluation). One that could not run
    /// comes as `Input::EvalFailed`, or as a failed `Input::Probed` for a probe.
    Evaluated {
        repo: String,
        eval: Evaluation,
        probe: Option<u64>,
    },
    Built(BuildReport),
    /// Liveness check for the systemd watchdog.
    /// A verified webhook delivery: `Ok(true)` when new, `Ok(false)` for a duplicate.
    Delivery {
        repo: String,
        delivery: crate::shell::forge::webhook::Delivery,
        event: crate::core::forge::ForgeEvent,
        reply: oneshot::Sender<Result<bool, String>>,
    },
    /// What the forge said, read and typed by the shell, for the core.
    Forge(crate::core::forge::ForgeInput),
    /// The forge's name for the token mergequeue uses.
    ForgeLogin {
        repo: String,
        login: String,
    },
    /// A comment a resync found (posted while mergequeue was not listening).
    MissedComment {
        repo: String,
        pr: u64,
        comment_id: u64,
        author: String,
        body: String,
    },
    Ping {
        reply: oneshot::Sender<()>,
    },
    Drain {
        builder: String,
        drained: bool,
        reply: oneshot::Sender<bool>,
    },
}

struct RepoShell {
    mirror: Arc<Mutex<Mirror>>,
    jobset: String,
    systems: Vec<String>,
    /// The evaluator with this repo's sandbox (its `nix_path` and `allowed_uris`).
    eval: Arc<NixEval>,
}

/// Handle used by the HTTP layer and the CLI server to reach the driver.
#[derive(Clone)]
pub struct Handle {
    pub tx: mpsc::Sender<Msg>,
    /// Read-only database connections, for answers that need no engine state.
    pub reader: Reader,
}

pub struct Driver {
    config: Config,
    core: Core,
    store: Store,
    repos: BTreeMap<String, RepoShell>,
    builders: BTreeMap<String, Arc<NixBuilder>>,
    tx: mpsc::Sender<Msg>,
    rx: mpsc::Receiver<Msg>,
    /// Derivations to inspect, gathered over one step.
    inspect: Vec<String>,
    tmp: PathBuf,
    channels: BTreeMap<String, Arc<crate::shell::channel::ChannelShell>>,
    reader: Reader,
    /// Per repository with `[repos.forge]`: its API client and bot.
    forges: BTreeMap<String, forge::ForgeShell>,
    /// Pull requests seen carrying their repository's `queue_label` (Gitea, Forgejo).
    labelled: std::collections::BTreeSet<(String, u64)>,
    /// `[cache]`, its key read at start.
    cache: Option<Arc<Cache>>,
    /// Running attempts by (drv, builder): sending stops one (`Command::CancelBuild`).
    stops: BTreeMap<(String, String), tokio::sync::oneshot::Sender<()>>,
}

impl Driver {
    pub fn open(config: Config) -> anyhow::Result<Driver> {
        std::fs::create_dir_all(&config.state_dir)?;
        crate::shell::git::set_timeout(config.timeouts.git());
        let store = Store::open(&config.db_path())?;
        let now = now_ms();
        let core = store
            .snapshot(config.retention.keep_in_memory)?
            .restore(config.core_config(), now);
        let mut repos = BTreeMap::new();
        for r in &config.repos {
            let mirror = Mirror::open(&config.state_dir, r.name.get_ref(), &r.url)?;
            repos.insert(
                r.name.get_ref().clone(),
                RepoShell {
                    mirror: Arc::new(Mutex::new(mirror)),
                    jobset: r.jobset.clone(),
                    systems: r.systems.clone(),
                    eval: Arc::new(NixEval {
                        nix_args: config.nix_args(),
                        evaluator: config.nix.evaluator,
                        sandbox: eval_sandbox(r, &config.nix),
                        jobset: crate::shell::nix::eval::JobsetOptions {
                            force_recurse: r.force_recurse,
                            args: r.args.clone(),
                        },
                        limits: crate::shell::nix::eval::EvalJobsLimits {
                            workers: config.nix.eval_workers,
                            max_memory_mib: config.nix.eval_max_memory_mib,
                        },
                    }),
                },
            );
        }
        let cache = match &config.cache {
            Some(c) => Some(Arc::new(Cache::open(c, config.nix_args())?)),
            None => None,
        };
        let named_cache = cache
            .as_ref()
            .map(|c| (c.uri.clone(), c.public_key.clone()));
        let channels = config
            .channels
            .iter()
            .map(|c| {
                let repo = config.repo(c.repo.get_ref()).expect("validated");
                let shell = crate::shell::channel::ChannelShell {
                    name: c.name.get_ref().clone(),
                    mirror: repos[c.repo.get_ref()].mirror.clone(),
                    source: c.source.clone(),
                    target: c.target.clone(),
                    target_url: c.remote.clone().unwrap_or_else(|| repo.url.clone()),
                    artifacts_dir: c.artifacts_dir.clone(),
                    cache: named_cache.clone(),
                };
                (c.name.get_ref().clone(), Arc::new(shell))
            })
            .collect();
        let builders = crate::shell::builder::pool(&config)?;
        let tmp = config.state_dir.join("tmp");
        // Trees of a previous run are garbage.
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        let (tx, rx) = mpsc::channel(1024);
        let reader = Reader::new(&config.db_path());
        let forges = forge::open(&config)?;
        Ok(Driver {
            config,
            core,
            store,
            repos,
            builders,
            tx,
            rx,
            inspect: vec![],
            tmp,
            channels,
            reader,
            forges,
            labelled: Default::default(),
            cache,
            stops: BTreeMap::new(),
        })
    }

    pub fn handle(&self) -> Handle {
        Handle {
            tx: self.tx.clone(),
            reader: self.reader.clone(),
        }
    }

    /// Runs until `shutdown` resolves. Effects already started are abandoned; their
    /// results are recomputed after the next start (every command is idempotent).
    pub async fn run(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        self.flush()?;
        let pruner = tokio::spawn(prune_periodically(self.config.clone()));
        let _stop_pruner = AbortOnDrop(pruner);
        let _stop_outbox = self.spawn_outbox().map(AbortOnDrop);
        let _stop_notifier = match crate::shell::notifier::Notifier::new(&self.config)? {
            Some(n) => Some(AbortOnDrop(tokio::spawn(crate::shell::notifier::run(
                self.config.db_path(),
                n,
                Duration::from_secs(1),
            )))),
            None => None,
        };
        let _stop_resyncs: Vec<_> = self.spawn_resyncs().into_iter().map(AbortOnDrop).collect();
        loop {
            let wake = self.core.next_wakeup();
            let sleep = async {
                match wake {
                    Some(at) => {
                        tokio::time::sleep(Duration::from_millis((at - now_ms()).max(0) as u64))
                            .await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                _ = sleep => {
                    self.core.handle(Input::Tick, now_ms());
                    self.flush()?;
                }
                msg = self.rx.recv() => {
                    let Some(msg) = msg else { return Ok(()) };
                    self.on_msg(msg)?;
                }
            }
        }
    }

    fn on_msg(&mut self, msg: Msg) -> anyhow::Result<()> {
        let now = now_ms();
        match msg {
            Msg::Submit { sub, reply } => {
                let r = self.core.submit(sub, now);
                // Persisted before the client hears "201": accepted means durable.
                self.flush()?;
                let _ = reply.send(r);
            }
            Msg::Cancel { repo, id, reply } => {
                let r = match self.core.change(id) {
                    Some(c) if c.repo == repo => self.core.cancel(id, now),
                    Some(_) => Err(Refusal::UnknownChange),
                    // Final long ago (no longer in memory): too late, not unknown.
                    None => match self.store.change(id)? {
                        Some(c) if c.repo == repo => Err(Refusal::TooLate(c.state)),
                        _ => Err(Refusal::UnknownChange),
                    },
                };
                self.flush()?;
                let _ = reply.send(r);
            }
            Msg::Query { q, facts, reply } => {
                let _ = reply.send(self.answer(q, &facts));
            }
            Msg::Input(input) => {
                self.core.handle(input, now);
                self.flush()?;
            }
            Msg::Evaluated { repo, eval, probe } => {
                self.store.put_eval(&repo, &eval, now)?;
                let eval = Arc::new(eval);
                let input = match probe {
                    Some(probe) => Input::Candidate(CandidateInput::Probed {
                        probe,
                        result: Ok(ProbeResult::Full { eval }),
                    }),
                    None => Input::Build(BuildInput::Evaluated { eval }),
                };
                self.core.handle(input, now);
                self.flush()?;
            }
            Msg::Delivery {
                repo,
                delivery,
                event,
                reply,
            } => {
                let new = self
                    .store
                    .record_delivery(&repo, &delivery.id, &delivery.event, now)
                    .map_err(|e| e.to_string());
                if let Ok(true) = new {
                    self.on_forge_event(&repo, event, now)?;
                }
                let _ = reply.send(new);
            }
            Msg::MissedComment {
                repo,
                pr,
                comment_id,
                author,
                body,
            } => self.on_comment(&repo, pr, comment_id, author, body, now)?,
            Msg::ForgeLogin { repo, login } => self.on_login(&repo, login),
            Msg::Forge(input) => {
                self.core.forge(input, now);
                self.flush()?;
            }
            Msg::Ping { reply } => {
                let _ = reply.send(());
            }
            Msg::Drain {
                builder,
                drained,
                reply,
            } => {
                let ok = self.core.drain(&builder, drained, now);
                self.flush()?;
                let _ = reply.send(ok);
            }
            Msg::Built(report) => {
                self.stops
                    .remove(&(report.drv_path.clone(), report.builder.clone()));
                self.store.put_attempt(&report, now)?;
                log::info!(
                    drv = report.drv_path.as_str(),
                    builder = report.builder.as_str(),
                    outcome = report.class.as_str();
                    "build {} {} in {} ms",
                    report.drv_path,
                    report.class.as_str(),
                    report.duration_ms
                );
                self.core
                    .handle(Input::Build(BuildInput::Built(report)), now);
                self.flush()?;
            }
        }
        Ok(())
    }

    /// Persists the step's records, then starts its effects.
    fn flush(&mut self) -> anyhow::Result<()> {
        let cmds = self.core.take_commands();
        let records: Vec<&Record> = cmds.iter().filter_map(Command::record).collect();
        self.store.apply(&records)?;
        for r in &records {
            match r {
                Record::Event { repo, text, .. } => {
                    log::info!(repo = repo.as_str(); "[{repo}] {text}");
                }
                // Structured fields, so the journal can be filtered by change or candidate
                // (`journalctl CHANGE=12`).
                Record::Change(c) => log::debug!(
                    repo = c.repo.as_str(), change = c.id, state = c.state.as_str();
                    "#{} {}", c.id, c.state.as_str()
                ),
                Record::Candidate(k) => log::debug!(
                    repo = k.repo.as_str(), candidate = k.id, phase = k.phase.as_str();
                    "candidate {} {}", k.id, k.phase.as_str()
                ),
                Record::Memo { .. }
                | Record::BuilderDrained { .. }
                | Record::Channel(_)
                | Record::ChannelAdvance { .. } => {}
                Record::Broken(j) => log::info!(
                    repo = j.repo.as_str(); "[{}] marked broken: {} ({}) by #{}", j.repo, j.attr, j.system, j.broken_by
                ),
                Record::Unbroken { repo, key } => log::info!(
                    repo = repo.as_str(); "[{repo}] no longer broken: {key}"
                ),
                Record::Verification(v) => log::info!(
                    drv = v.drv.as_str(); "verified {} on {} and {}: matched {}", v.drv, v.builders[0], v.builders[1], v.matched
                ),
                Record::Notice(n) => log::debug!(
                    repo = n.repo.as_str(); "[{}] notice {} for #{}", n.repo, n.event.as_str(), n.change
                ),
                Record::Forge { repo, command } => log::debug!(
                    repo = repo.as_str(); "[{repo}] to the forge: {command:?}"
                ),
            }
        }
        for cmd in cmds {
            self.perform(cmd)?;
        }
        self.inspect_gathered();
        Ok(())
    }

    fn perform(&mut self, cmd: Command) -> anyhow::Result<()> {
        match cmd {
            Command::Record(_) => {}
            Command::Prepare {
                cand,
                repo,
                branch,
                changes,
                onto,
            } => {
                self.with_mirror(&repo, move |m| {
                    let result = m
                        .prepare(&branch, &changes, onto.as_deref(), cand)
                        .map_err(|e| e.to_string());
                    Input::Candidate(CandidateInput::Prepared { cand, result })
                });
            }
            Command::PrepareGroup { cand, repo, group } => {
                self.with_mirror(&repo, move |m| {
                    let result = m.prepare_group(&group).map_err(|e| e.to_string());
                    Input::Candidate(CandidateInput::Prepared { cand, result })
                });
            }
            Command::Evaluate { repo, commit } => self.spawn_eval(repo, commit),
            Command::Probe {
                probe,
                repo,
                base,
                heads,
                attrs,
            } => {
                let mirror = self.repos[&repo].mirror.clone();
                let tx = self.tx.clone();
                let this = self.evaluator(&repo);
                tokio::spawn(async move {
                    let merged = tokio::task::spawn_blocking(move || {
                        mirror
                            .lock()
                            .expect("mirror lock")
                            .probe_commit(&base, &heads)
                    })
                    .await;
                    let commit = match merged {
                        Ok(Ok(Ok(c))) => c,
                        Ok(Ok(Err(conflict))) => {
                            let _ = tx
                                .send(Msg::Input(Input::Candidate(CandidateInput::Probed {
                                    probe,
                                    result: Ok(ProbeResult::Conflict(conflict)),
                                })))
                                .await;
                            return;
                        }
                        other => {
                            let msg = match other {
                                Ok(Ok(Err(_))) | Ok(Ok(Ok(_))) => unreachable!(),
                                Ok(Err(e)) => e.to_string(),
                                Err(e) => e.to_string(),
                            };
                            let _ = tx
                                .send(Msg::Input(Input::Candidate(CandidateInput::Probed {
                                    probe,
                                    result: Err(msg),
                                })))
                                .await;
                            return;
                        }
                    };
                    let msg = match this.run(&commit, attrs.as_deref()).await {
                        Ok(Evaled::Full(eval)) => Msg::Evaluated {
                            repo: this.repo.clone(),
                            eval,
                            probe: Some(probe),
                        },
                        Ok(Evaled::Attrs(jobs)) => {
                            Msg::Input(Input::Candidate(CandidateInput::Probed {
                                probe,
                                result: Ok(ProbeResult::Attrs { commit, jobs }),
                            }))
                        }
                        Err(e) => Msg::Input(Input::Candidate(CandidateInput::Probed {
                            probe,
                            result: Err(e),
                        })),
                    };
                    let _ = tx.send(msg).await;
                });
            }
            Command::Build {
                drv,
                system: _,
                builder,
            } => self.start_build(drv, builder)?,
            Command::CancelBuild { drv, builder } => self.stop_build(drv, builder),
            Command::Verify {
                drv,
                first,
                builder,
            } => self.verify_build(drv, first, builder),
            Command::QueryReferrers { root } => self.query_referrers(root),
            Command::Inspect { drvs } => self.inspect.extend(drvs),
            Command::ProbeBuilder { builder } => {
                let Some(b) = self.builders.get(&builder).cloned() else {
                    return Ok(());
                };
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let result = crate::shell::builder::probe(&b).await;
                    let _ = tx
                        .send(Msg::Input(Input::Build(BuildInput::BuilderProbed {
                            builder,
                            result,
                        })))
                        .await;
                });
            }
            Command::Land {
                cand,
                repo,
                branch,
                old,
                new,
            } => {
                self.with_mirror(&repo, move |m| {
                    let result = m
                        .land(&branch, &old, &new)
                        .unwrap_or_else(|e| crate::core::LandResult::Failed(e.to_string()));
                    Input::Candidate(CandidateInput::Landed { cand, result })
                });
            }
            Command::PollTarget { repo, branch } => {
                self.with_mirror(&repo.clone(), move |m| {
                    let result = m.remote_tip(&branch).map_err(|e| e.to_string());
                    Input::Queue(QueueInput::TargetPolled {
                        repo,
                        branch,
                        result,
                    })
                });
            }
            cmd @ (Command::PollSource { .. }
            | Command::AdvanceChannel { .. }
            | Command::PublishArtifacts { .. }) => {
                let shell = cmd.channel().and_then(|n| self.channels.get(n)).cloned();
                let Some(shell) = shell else {
                    return Ok(());
                };
                // The broken registry of the branch the channel follows, as it stands
                // when the artifacts are written, goes with them (`broken.json`).
                let broken = match &cmd {
                    Command::PublishArtifacts { channel, .. } => self
                        .core
                        .channel(channel)
                        .map(|c| {
                            let jobs = self.core.broken().of(&c.config.repo);
                            jobs.filter(|j| j.on(&c.config.source)).cloned().collect()
                        })
                        .unwrap_or_default(),
                    _ => vec![],
                };
                let upload = match &cmd {
                    Command::AdvanceChannel { upload, .. } => upload.clone(),
                    _ => vec![],
                };
                let (tx, cache) = (self.tx.clone(), self.cache.clone());
                tokio::spawn(async move {
                    // The gate's closures go to the cache before the channel moves.
                    if let (Some(cache), false) = (&cache, upload.is_empty()) {
                        if let Err(e) = cache.upload(&upload).await {
                            if let Command::AdvanceChannel { channel, new, .. } = cmd {
                                let result = AdvanceResult::Failed(format!(
                                    "the gate's closure is not in the cache {} yet: {e}",
                                    cache.uri
                                ));
                                let input = ChannelInput::Advanced {
                                    channel,
                                    new,
                                    result,
                                };
                                let _ = tx.send(Msg::Input(Input::Channel(input))).await;
                            }
                            return;
                        }
                    }
                    let _ = tokio::task::spawn_blocking(move || {
                        if let Some(input) = shell.perform(cmd, &broken) {
                            let _ = tx.blocking_send(Msg::Input(input));
                        }
                    })
                    .await;
                });
            }
            Command::PublishStage {
                repo,
                branch,
                commit,
            } => {
                let mirror = self.repos[&repo].mirror.clone();
                tokio::task::spawn_blocking(move || {
                    let m = mirror.lock().expect("mirror lock");
                    if let Err(e) = m.publish_stage(&branch, &commit) {
                        log::warn!(
                            repo = repo.as_str();
                            "[{repo}] could not publish the mass-rebuild ref of {branch}: {e}"
                        );
                    }
                });
            }
            Command::Upload { drvs, why } => {
                if let Some(cache) = self.cache.clone() {
                    tokio::spawn(async move { cache.upload_retrying(&drvs, &why).await });
                }
            }
        }
        Ok(())
    }

    /// Runs blocking git work on a repository's mirror (one at a time per mirror) and
    /// feeds its result back as an input.
    fn with_mirror(&self, repo: &str, work: impl FnOnce(&Mirror) -> Input + Send + 'static) {
        let mirror = self.repos[repo].mirror.clone();
        let tx = self.tx.clone();
        tokio::task::spawn_blocking(move || {
            let input = work(&mirror.lock().expect("mirror lock"));
            let _ = tx.blocking_send(Msg::Input(input));
        });
    }

    fn evaluator(&self, repo: &str) -> EvalJob {
        let r = &self.repos[repo];
        EvalJob {
            repo: repo.to_string(),
            mirror: r.mirror.clone(),
            jobset: r.jobset.clone(),
            systems: r.systems.clone(),
            eval: r.eval.clone(),
            tmp: self.tmp.clone(),
            timeout: self.config.timeouts.eval(),
        }
    }

    /// Evaluates the jobset at `commit`, unless the store already holds its evaluation
    /// (read off this task: a Nixpkgs evaluation is tens of megabytes). An evaluation that
    /// could not run (checkout failed, evaluator missing or killed, disk full: see
    /// `NixEval::evaluate`) is reported as `Input::EvalFailed`, for the core to retry; only
    /// real evaluations reach the store.
    fn spawn_eval(&self, repo: String, commit: String) {
        let job = self.evaluator(&repo);
        let tx = self.tx.clone();
        let reader = self.reader.clone();
        tokio::spawn(async move {
            let wanted = commit.clone();
            match reader.read(move |s| s.get_eval(&wanted)).await {
                Ok(Some(eval)) => {
                    let eval = Arc::new(eval);
                    let input = Input::Build(BuildInput::Evaluated { eval });
                    let _ = tx.send(Msg::Input(input)).await;
                    return;
                }
                Ok(None) => {}
                // Evaluating again is always correct, only slower.
                Err(e) => log::warn!("[{repo}] reading the evaluation of {commit}: {e}"),
            }
            let msg = match job.run(&commit, None).await {
                Ok(Evaled::Full(eval)) => Msg::Evaluated {
                    repo,
                    eval,
                    probe: None,
                },
                Ok(Evaled::Attrs(_)) => unreachable!("full evaluation asked"),
                Err(error) => {
                    log::warn!("[{repo}] evaluation of {commit} could not run: {error}");
                    Msg::Input(Input::Build(BuildInput::EvalFailed {
                        repo,
                        commit,
                        error,
                    }))
                }
            };
            let _ = tx.send(msg).await;
        });
    }

    fn answer(&self, q: Query, facts: &StoreFacts) -> Option<Reply> {
        crate::shell::status::answer(&self.config, &self.core, q, facts, now_ms())
    }
}

enum Evaled {
    Full(Evaluation),
    Attrs(
        Vec<(
            crate::core::evaluation::JobKey,
            crate::core::evaluation::JobResult,
        )>,
    ),
}

struct EvalJob {
    repo: String,
    mirror: Arc<Mutex<Mirror>>,
    jobset: String,
    systems: Vec<String>,
    eval: Arc<NixEval>,
    tmp: PathBuf,
    /// `timeouts.eval_secs`: a hung evaluator is killed (its processes die with the future).
    timeout: Duration,
}

impl EvalJob {
    /// Checks out `commit` into a scratch tree and evaluates it (all jobs, or `attrs`).
    /// `Err`: the evaluation could not run (scratch tree, checkout, or an infrastructure
    /// failure of the evaluator); the commit's own evaluation errors are in `Ok`.
    async fn run(&self, commit: &str, attrs: Option<&[String]>) -> Result<Evaled, String> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("tree-{}-", &commit[..commit.len().min(12)]))
            .tempdir_in(&self.tmp)
            .map_err(|e| format!("scratch tree for {commit}: {e}"))?;
        let tree = dir.path().join("src");
        let (mirror, c, t) = (self.mirror.clone(), commit.to_string(), tree.clone());
        tokio::task::spawn_blocking(move || mirror.lock().expect("mirror lock").checkout(&c, &t))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("checkout of {commit}: {e}"))?;
        let evaluated = async {
            Ok(match attrs {
                None => Evaled::Full(
                    self.eval
                        .evaluate(&tree, &self.jobset, &self.systems, commit)
                        .await?,
                ),
                Some(a) => Evaled::Attrs(
                    self.eval
                        .evaluate_attrs(&tree, &self.jobset, &self.systems, a)
                        .await?,
                ),
            })
        };
        tokio::time::timeout(self.timeout, evaluated)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "evaluation of {commit} did not finish within {} s (timeouts.eval_secs); killed",
                    self.timeout.as_secs()
                ))
            })
    }
}

/// What a repo's evaluated code may reach (docs/security.md).
fn eval_sandbox(
    r: &crate::shell::config::Repo,
    nix: &crate::shell::config::NixConfig,
) -> crate::shell::nix::eval::EvalSandbox {
    crate::shell::nix::eval::EvalSandbox {
        restrict: nix.restrict_eval,
        nix_path: r.nix_path.clone(),
        allowed_uris: r.allowed_uris.clone(),
        import_from_derivation: nix.allow_import_from_derivation,
    }
}

/// Aborts a task when dropped (the pruner ends with the driver).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Deletes what `[retention]` no longer keeps, every `prune_interval_secs`, on a connection
/// of its own in a blocking thread: the engine's task never waits for it beyond one batch.
async fn prune_periodically(config: Config) {
    let every = Duration::from_secs(config.retention.prune_interval_secs);
    loop {
        let c = config.clone();
        let started = std::time::Instant::now();
        let res = tokio::task::spawn_blocking(move || {
            let mut store = Store::open(&c.db_path())?;
            store.prune(now_ms(), &c.retention, &c.state_dir.join("logs"))
        })
        .await;
        match res {
            Ok(Ok(p)) if p.total() > 0 => log::info!(
                "retention: deleted {} changes, {} candidates, {} attempts ({} log files), {} evaluations, {} events, {} memo rows, {} channel advances in {:?}",
                p.changes, p.candidates, p.attempts, p.log_files, p.evaluations, p.events, p.memo, p.channel_advances, started.elapsed()
            ),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => log::warn!("retention: {e}"),
            Err(e) => log::warn!("retention: {e}"),
        }
        tokio::time::sleep(every).await;
    }
}

/// Loads the API token: the configured file, else the systemd credential `api-token`.
pub fn load_token(config: &Config) -> anyhow::Result<Option<String>> {
    let path: Option<PathBuf> = match &config.api_token_file {
        Some(p) => Some(p.clone()),
        None => crate::shell::systemd::credential("api-token"),
    };
    match path {
        None => Ok(None),
        Some(p) => {
            let t = read_secret(&p)?;
            anyhow::ensure!(
                !t.is_empty(),
                "{}: the API token file is empty",
                p.display()
            );
            Ok(Some(t))
        }
    }
}

pub(crate) use crate::shell::systemd::read_secret;
