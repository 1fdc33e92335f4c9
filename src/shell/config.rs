//! The TOML configuration file. Unknown keys are errors; every error names
//! `FILE:LINE:COL`. Every key is documented in `docs/configuration.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::core::{ChannelConfig, CoreConfig, LaneConfig, Millis, RepoConfig};

/// `[repos.forge]`.
pub mod forge;
pub use forge::{ForgeConfig, ForgeKind, ForgeMode};
pub mod cache;
pub mod notify;
pub mod timeouts;
pub mod verify;
use crate::core::breakage::{Breakage, BreakagePolicy};
pub use notify::{check_pattern, NotifyConfig};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// A syntax, type or validation error at a position in the file.
    #[error("{path}:{line}:{col}: {message}")]
    At {
        path: String,
        line: usize,
        col: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    Whole { path: String, message: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// SQLite database, git mirrors and logs live here.
    pub state_dir: PathBuf,
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Bearer token for write endpoints. When unset, `$CREDENTIALS_DIRECTORY/api-token`
    /// is used if present; otherwise every write request is refused.
    #[serde(default)]
    pub api_token_file: Option<PathBuf>,
    #[serde(default)]
    pub nix: NixConfig,
    #[serde(default)]
    pub repos: Vec<Repo>,
    #[serde(default)]
    pub builders: Vec<Builder>,
    /// A Nix machines file (`/etc/nix/machines` format) whose entries are added to
    /// `builders`, so `nix.buildMachines` users reuse what they have.
    #[serde(default)]
    pub machines_file: Option<PathBuf>,
    /// The machines file's entries, read by `load` (not a key of the TOML file).
    #[serde(skip)]
    pub machines: Vec<Builder>,
    #[serde(default)]
    pub dispatch: Dispatch,
    #[serde(default)]
    pub channels: Vec<Channel>,
    #[serde(default)]
    pub ui: Ui,
    #[serde(default)]
    pub http: Http,
    #[serde(default)]
    pub retention: Retention,
    /// How often a held lane (required jobs fail on its target itself) reads its target,
    /// to test again once a fix was pushed outside the queue.
    #[serde(default = "default_target_poll")]
    pub target_poll_secs: u64,
    /// Maintainer notifications: caps, opt-out, email and a generic webhook.
    #[serde(default)]
    pub notify: NotifyConfig,
    /// The binary cache landed and gated outputs go to, signed (`docs/builders.md`).
    #[serde(default)]
    pub cache: Option<cache::CacheConfig>,
    /// How long each kind of external call may take.
    #[serde(default)]
    pub timeouts: timeouts::Timeouts,
    /// Verified builds: a sample rebuilt on a second builder (`docs/builders.md`).
    #[serde(default)]
    pub verify: Option<verify::VerifyConfig>,
}

fn default_target_poll() -> u64 {
    (CoreConfig::default().target_poll_ms / 1000) as u64
}

/// Limits of the HTTP listener, so that slow or many clients cannot starve the others.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    /// Connections served at once; more wait in the listen backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Seconds a client has to send a request's headers; also closes a kept-alive
    /// connection idle for that long.
    #[serde(default = "default_header_timeout")]
    pub header_timeout_secs: u64,
    /// Seconds a client has to send a request's body.
    #[serde(default = "default_body_timeout")]
    pub body_timeout_secs: u64,
    /// Largest request body accepted (413 beyond).
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Largest webhook delivery accepted (413 beyond; the next resync catches up). Pull
    /// request payloads carry the description and are larger than API requests.
    #[serde(default = "default_max_webhook")]
    pub max_webhook_bytes: usize,
}

fn default_max_webhook() -> usize {
    1024 * 1024
}

fn default_max_connections() -> usize {
    512
}
fn default_header_timeout() -> u64 {
    10
}
fn default_body_timeout() -> u64 {
    30
}
fn default_max_body() -> usize {
    64 * 1024
}

impl Default for Http {
    fn default() -> Self {
        Http {
            max_connections: default_max_connections(),
            header_timeout_secs: default_header_timeout(),
            body_timeout_secs: default_body_timeout(),
            max_body_bytes: default_max_body(),
            max_webhook_bytes: default_max_webhook(),
        }
    }
}

/// How long finished things are kept (docs/configuration.md `[retention]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Final changes and finished candidates held in memory (the most recent ones).
    #[serde(default = "default_keep_in_memory")]
    pub keep_in_memory: usize,
    /// Final changes, and candidates finished, older than this are deleted.
    #[serde(default = "default_changes_days")]
    pub changes_days: u64,
    /// Build attempts and their log files older than this are deleted.
    #[serde(default = "default_attempts_days")]
    pub attempts_days: u64,
    /// Stored evaluations older than this are deleted (the commits are re-evaluated
    /// if they are ever tested again).
    #[serde(default = "default_evaluations_days")]
    pub evaluations_days: u64,
    /// Events older than this are deleted.
    #[serde(default = "default_events_days")]
    pub events_days: u64,
    /// Webhook delivery ids older than this are forgotten (a redelivery after that is
    /// processed again; GitHub redelivers at most 3 days back).
    #[serde(default = "default_deliveries_days")]
    pub deliveries_days: u64,
    /// Seconds between two prunes of the database.
    #[serde(default = "default_prune_interval")]
    pub prune_interval_secs: u64,
}

fn default_deliveries_days() -> u64 {
    7
}

fn default_keep_in_memory() -> usize {
    CoreConfig::default().keep_final
}
fn default_changes_days() -> u64 {
    90
}
fn default_attempts_days() -> u64 {
    30
}
fn default_evaluations_days() -> u64 {
    14
}
fn default_events_days() -> u64 {
    30
}
fn default_prune_interval() -> u64 {
    3600
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            keep_in_memory: default_keep_in_memory(),
            changes_days: default_changes_days(),
            attempts_days: default_attempts_days(),
            evaluations_days: default_evaluations_days(),
            events_days: default_events_days(),
            deliveries_days: default_deliveries_days(),
            prune_interval_secs: default_prune_interval(),
        }
    }
}

/// The web UI (`docs/ui.md`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ui {
    /// Read-only pages need the API token too (HTTP Basic, the token as the password).
    #[serde(default)]
    pub require_token: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NixConfig {
    /// Passed as `--option NAME VALUE` to every nix command.
    #[serde(default = "default_nix_options")]
    pub options: BTreeMap<String, String>,
    /// `auto` (nix-eval-jobs when on PATH), `nix-eval-jobs` or `nix-instantiate`.
    #[serde(default)]
    pub evaluator: Evaluator,
    /// nix-eval-jobs worker processes; 0: one per core, at most 8.
    #[serde(default)]
    pub eval_workers: usize,
    /// Memory one nix-eval-jobs worker may use before it is restarted (MiB; 0: its default).
    #[serde(default = "default_eval_memory")]
    pub eval_max_memory_mib: u64,
    /// Kill a build that prints nothing for this many seconds (0 = no limit).
    #[serde(default = "default_max_silent")]
    pub max_silent_time_secs: u64,
    /// Kill a build that runs longer than this many seconds (0 = no limit).
    #[serde(default = "default_build_timeout")]
    pub build_timeout_secs: u64,
    /// How long a genuine build failure is remembered before it may be retried.
    #[serde(default = "default_failure_ttl")]
    pub failure_ttl_secs: u64,
    /// Evaluate with Nix's restricted evaluation (docs/security.md): a jobset reads only its
    /// checkout and its repo's `nix_path`, fetches only its `allowed_uris`.
    #[serde(default = "yes")]
    pub restrict_eval: bool,
    /// Let jobsets import from derivations (builds during evaluation).
    #[serde(default)]
    pub allow_import_from_derivation: bool,
}

fn yes() -> bool {
    true
}

fn default_eval_memory() -> u64 {
    4096
}

impl Default for NixConfig {
    fn default() -> Self {
        NixConfig {
            options: default_nix_options(),
            evaluator: Evaluator::default(),
            eval_workers: 0,
            eval_max_memory_mib: default_eval_memory(),
            max_silent_time_secs: default_max_silent(),
            build_timeout_secs: default_build_timeout(),
            failure_ttl_secs: default_failure_ttl(),
            restrict_eval: true,
            allow_import_from_derivation: false,
        }
    }
}

/// How builds are retried and builders kept healthy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dispatch {
    /// First delay before retrying after an infrastructure failure; doubles each time.
    #[serde(default = "default_retry_delay")]
    pub retry_delay_secs: u64,
    /// Infrastructure failures of one build before its requesters stop waiting for it
    /// (their changes go back to the queue, never blamed).
    #[serde(default = "default_infra_retries")]
    pub infra_retries: u32,
    /// Candidates of one change given up in a row for infrastructure reasons before the
    /// change is held with the reason (tested again after 15 min, doubling up to 4 h).
    #[serde(default = "default_infra_budget")]
    pub infra_budget: u32,
    /// Times a failed build (the package's own failure) is built again, preferably on
    /// another builder, before the failure is remembered and may blame a change.
    #[serde(default = "default_failure_retries")]
    pub failure_retries: u32,
    /// Consecutive infrastructure failures that quarantine a builder.
    #[serde(default = "default_quarantine_after")]
    pub quarantine_after: u32,
    /// First delay before probing a quarantined builder; doubles up to 10 minutes.
    #[serde(default = "default_probe_delay")]
    pub probe_delay_secs: u64,
}

impl Default for Dispatch {
    fn default() -> Self {
        Dispatch {
            retry_delay_secs: default_retry_delay(),
            infra_retries: default_infra_retries(),
            infra_budget: default_infra_budget(),
            failure_retries: default_failure_retries(),
            quarantine_after: default_quarantine_after(),
            probe_delay_secs: default_probe_delay(),
        }
    }
}

fn default_retry_delay() -> u64 {
    (CoreConfig::default().retry_delay_ms / 1000) as u64
}
fn default_infra_retries() -> u32 {
    CoreConfig::default().infra_retries
}
fn default_infra_budget() -> u32 {
    CoreConfig::default().infra_budget
}
fn default_failure_retries() -> u32 {
    CoreConfig::default().failure_retries
}
fn default_quarantine_after() -> u32 {
    CoreConfig::default().quarantine_after
}
fn default_probe_delay() -> u64 {
    (CoreConfig::default().probe_delay_ms / 1000) as u64
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Evaluator {
    #[default]
    Auto,
    NixEvalJobs,
    NixInstantiate,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Repo {
    pub name: Spanned<String>,
    /// Any URL the git CLI can fetch from and push to.
    pub url: String,
    /// File in the repository that evaluates to an attribute set of derivations.
    #[serde(default = "default_jobset")]
    pub jobset: String,
    #[serde(default = "default_systems")]
    pub systems: Vec<String>,
    #[serde(default)]
    pub branches: Vec<Branch>,
    /// Search-path entries (`name=path` or `path`) the jobset may read and look up as
    /// `<name>` under restricted evaluation, e.g. a pinned Nixpkgs in the store.
    #[serde(default)]
    pub nix_path: Vec<String>,
    /// URL prefixes the jobset may fetch during evaluation (`fetchTarball` and friends).
    #[serde(default)]
    pub allowed_uris: Vec<String>,
    /// Pull requests on GitHub, Gitea or Forgejo (`docs/forge.md`).
    #[serde(default)]
    pub forge: Option<ForgeConfig>,
    /// Walk every attribute set of the jobset, as Hydra does (`hello.x86_64-linux`), not
    /// only those with `recurseForDerivations = true`.
    #[serde(default)]
    pub force_recurse: bool,
    /// Arguments of a jobset that is a function, beside `system` (for example
    /// `config = { allowUnfree = true, cudaSupport = true }`); each is given only when the
    /// function names it.
    #[serde(default)]
    pub args: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Branch {
    pub name: Spanned<String>,
    #[serde(default = "default_batch_max")]
    pub batch_max: Spanned<usize>,
    /// Candidates in flight at once, each merged and built on top of the one before it
    /// (speculation); 1: one at a time.
    #[serde(default = "default_one")]
    pub window: Spanned<usize>,
    /// The least the effective window shrinks to after failures (it halves on each
    /// failure and grows by one on each landing, up to `window`).
    #[serde(default = "default_one")]
    pub window_floor: Spanned<usize>,
    /// A change that rebuilds at least this many jobs on some system goes through the
    /// mass-rebuild stage first: batched and built on the branch's tip at the lowest
    /// build priority, then queued into the branch with its batch. Absent: no stage.
    #[serde(default)]
    pub mass_rebuild_threshold: Option<Spanned<usize>>,
    /// Attribute paths that must build on every landed commit.
    #[serde(default)]
    pub required: Vec<String>,
    /// Seconds to wait after a change is queued before testing, to gather a fuller batch.
    #[serde(default)]
    pub batch_delay_secs: u64,
    /// Priority class of this branch's builds in the shared build queue (e.g. `low` for
    /// a mass-rebuild branch such as staging, so master's small changes go first).
    /// Default: that of the candidate's most urgent change.
    #[serde(default)]
    pub build_priority: Option<crate::core::change::Priority>,
    /// `strict`: no change may newly break a job. `grace`: a change that newly breaks only
    /// unprotected jobs (at most `max_newly_broken`) is held for `grace_secs`, its jobs'
    /// maintainers are told, and then it lands with those jobs marked broken
    /// (`docs/breakage.md`).
    #[serde(default)]
    pub breakage: Breakage,
    /// Attribute patterns that can never be marked broken (`*` within a segment, `**`
    /// across; a plain path covers everything under it). Required jobs always are.
    #[serde(default)]
    pub protected: Vec<Spanned<String>>,
    #[serde(default = "default_grace_secs")]
    pub grace_secs: u64,
    #[serde(default = "default_max_newly_broken")]
    pub max_newly_broken: Spanned<usize>,
}

fn default_grace_secs() -> u64 {
    (BreakagePolicy::default().grace_ms / 1000) as u64
}

fn default_max_newly_broken() -> Spanned<usize> {
    Spanned::new(0..0, BreakagePolicy::default().max_newly_broken)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Builder {
    /// `local` or a Nix store URI such as `ssh-ng://user@host?remote-store=...`.
    pub uri: Spanned<String>,
    #[serde(default = "default_systems")]
    pub systems: Vec<String>,
    #[serde(default = "default_max_jobs")]
    pub max_jobs: Spanned<usize>,
    #[serde(default = "default_speed")]
    pub speed_factor: f64,
    #[serde(default)]
    pub supported_features: Vec<String>,
    #[serde(default)]
    pub mandatory_features: Vec<String>,
    #[serde(default)]
    pub ssh_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Channel {
    pub name: Spanned<String>,
    pub repo: Spanned<String>,
    /// Branch followed.
    pub source: String,
    /// Branch advanced (in the repo's url, or in `remote` if given).
    pub target: String,
    pub gate: Vec<String>,
    #[serde(default)]
    pub remote: Option<String>,
    #[serde(default)]
    pub min_interval_secs: u64,
    #[serde(default)]
    pub artifacts_dir: Option<PathBuf>,
    /// Seconds between two polls of the source (and target) branch.
    #[serde(default = "default_poll_interval")]
    pub poll_interval_secs: Spanned<u64>,
    /// When the source head fails its gate, look for the newest passing commit between
    /// the channel's revision and the head.
    #[serde(default)]
    pub look_back: bool,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_nix_options() -> BTreeMap<String, String> {
    // Without this every nix command waits seconds on an unreachable cache.
    BTreeMap::from([("substituters".to_string(), String::new())])
}
fn default_max_silent() -> u64 {
    3 * 3600
}
fn default_build_timeout() -> u64 {
    10 * 3600
}
fn default_failure_ttl() -> u64 {
    (CoreConfig::default().failure_ttl_ms / 1000) as u64
}
fn default_jobset() -> String {
    "release.nix".into()
}
fn default_systems() -> Vec<String> {
    vec!["x86_64-linux".into()]
}
fn default_one() -> Spanned<usize> {
    Spanned::new(0..0, 1)
}

fn default_batch_max() -> Spanned<usize> {
    Spanned::new(0..0, 8)
}
fn default_max_jobs() -> Spanned<usize> {
    Spanned::new(0..0, 2)
}
fn default_speed() -> f64 {
    1.0
}
fn default_poll_interval() -> Spanned<u64> {
    Spanned::new(0..0, 60)
}

/// Byte offset to 1-based line and column.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, col)
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut config = Self::parse(&text, &path.display().to_string())?;
        config.read_machines()?;
        Ok(config)
    }

    /// Reads and parses `machines_file` into `machines`; errors name the file and line.
    pub fn read_machines(&mut self) -> Result<(), ConfigError> {
        let Some(path) = &self.machines_file else {
            return Ok(());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        self.machines = parse_machines(&text).map_err(|(line, message)| ConfigError::At {
            path: path.display().to_string(),
            line,
            col: 1,
            message,
        })?;
        Ok(())
    }

    /// Parses and validates; `path` is only used in messages.
    pub fn parse(text: &str, path: &str) -> Result<Config, ConfigError> {
        let at = |span: Option<std::ops::Range<usize>>, message: String| {
            let (line, col) = line_col(text, span.map_or(0, |s| s.start));
            ConfigError::At {
                path: path.to_string(),
                line,
                col,
                message,
            }
        };
        let config: Config =
            toml::from_str(text).map_err(|e| at(e.span(), e.message().to_string()))?;
        config.validate().map_err(|(span, msg)| at(span, msg))?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), (Option<std::ops::Range<usize>>, String)> {
        let mut names = std::collections::BTreeSet::new();
        for repo in &self.repos {
            if !names.insert(repo.name.get_ref()) {
                return Err((
                    Some(repo.name.span()),
                    format!("duplicate repo name {:?}", repo.name.get_ref()),
                ));
            }
            if repo.name.get_ref().is_empty() || repo.name.get_ref().contains('/') {
                return Err((
                    Some(repo.name.span()),
                    "repo name must be non-empty and contain no '/'".into(),
                ));
            }
            if let Some(f) = &repo.forge {
                f.validate()?;
            }
            let mut branches = std::collections::BTreeSet::new();
            for b in &repo.branches {
                if !branches.insert(b.name.get_ref()) {
                    return Err((
                        Some(b.name.span()),
                        format!("duplicate branch {:?}", b.name.get_ref()),
                    ));
                }
                for p in &b.protected {
                    if let Err(why) = check_pattern(p.get_ref()) {
                        return Err((Some(p.span()), why));
                    }
                }
                if *b.max_newly_broken.get_ref() == 0 {
                    return Err((
                        Some(b.max_newly_broken.span()),
                        "max_newly_broken must be at least 1 (use breakage = \"strict\" to allow none)"
                            .into(),
                    ));
                }
                if *b.batch_max.get_ref() == 0 {
                    return Err((
                        Some(b.batch_max.span()),
                        "batch_max must be at least 1".into(),
                    ));
                }
                if *b.window.get_ref() == 0 {
                    return Err((
                        Some(b.window.span()),
                        "window must be at least 1 (1: no speculation)".into(),
                    ));
                }
                if let Some(t) = b
                    .mass_rebuild_threshold
                    .as_ref()
                    .filter(|t| *t.get_ref() == 0)
                {
                    return Err((
                        Some(t.span()),
                        "mass_rebuild_threshold must be at least 1 (leave it out for no mass-rebuild stage)"
                            .into(),
                    ));
                }
                if *b.window_floor.get_ref() == 0 || b.window_floor.get_ref() > b.window.get_ref() {
                    return Err((
                        Some(b.window_floor.span()),
                        format!(
                            "window_floor must be between 1 and window ({})",
                            b.window.get_ref()
                        ),
                    ));
                }
            }
        }
        self.notify.validate()?;
        if let Some(c) = &self.cache {
            c.validate()?;
        }
        self.timeouts.validate()?;
        if let Some(v) = &self.verify {
            v.validate()?;
        }
        for b in &self.builders {
            let uri = b.uri.get_ref();
            if uri != "local" && !uri.starts_with("ssh-ng://") && !uri.starts_with("ssh://") {
                return Err((
                    Some(b.uri.span()),
                    format!(
                        "builder uri {uri:?} must be \"local\" or an ssh-ng:// or ssh:// store URI"
                    ),
                ));
            }
            if *b.max_jobs.get_ref() == 0 {
                return Err((
                    Some(b.max_jobs.span()),
                    "max_jobs must be at least 1".into(),
                ));
            }
        }
        let h = &self.http;
        for (key, v) in [
            ("http.max_connections", h.max_connections as u64),
            ("http.header_timeout_secs", h.header_timeout_secs),
            ("http.body_timeout_secs", h.body_timeout_secs),
            ("http.max_body_bytes", h.max_body_bytes as u64),
            ("http.max_webhook_bytes", h.max_webhook_bytes as u64),
            (
                "retention.prune_interval_secs",
                self.retention.prune_interval_secs,
            ),
        ] {
            if v == 0 {
                return Err((None, format!("{key} must be at least 1")));
            }
        }
        let mut channels = std::collections::BTreeSet::new();
        for c in &self.channels {
            if !channels.insert(c.name.get_ref()) {
                return Err((
                    Some(c.name.span()),
                    format!("duplicate channel {:?}", c.name.get_ref()),
                ));
            }
            if self.repo(c.repo.get_ref()).is_none() {
                return Err((
                    Some(c.repo.span()),
                    format!("channel refers to unknown repo {:?}", c.repo.get_ref()),
                ));
            }
            if *c.poll_interval_secs.get_ref() == 0 {
                return Err((
                    Some(c.poll_interval_secs.span()),
                    "poll_interval_secs must be at least 1".into(),
                ));
            }
            if c.gate.is_empty() {
                return Err((
                    Some(c.name.span()),
                    format!("channel {:?} has an empty gate", c.name.get_ref()),
                ));
            }
            if c.remote.is_none() && c.source == c.target {
                return Err((
                    Some(c.name.span()),
                    format!(
                        "channel {:?}: source and target are the same branch of the same repository",
                        c.name.get_ref()
                    ),
                ));
            }
        }
        Ok(())
    }

    pub fn repo(&self, name: &str) -> Option<&Repo> {
        self.repos.iter().find(|r| r.name.get_ref() == name)
    }

    /// `--option NAME VALUE` pairs for every nix invocation.
    pub fn nix_args(&self) -> Vec<String> {
        self.nix
            .options
            .iter()
            .flat_map(|(k, v)| ["--option".to_string(), k.clone(), v.clone()])
            .collect()
    }

    /// Every builder: `[[builders]]` plus the machines file's entries. Without any, the
    /// local store with 2 jobs for the repos' systems.
    pub fn all_builders(&self) -> Vec<Builder> {
        let mut out = self.builders.clone();
        out.extend(self.machines.iter().cloned());
        if out.is_empty() {
            let mut systems: Vec<String> =
                self.repos.iter().flat_map(|r| r.systems.clone()).collect();
            systems.sort();
            systems.dedup();
            out.push(Builder {
                uri: Spanned::new(0..0, "local".into()),
                systems: if systems.is_empty() {
                    default_systems()
                } else {
                    systems
                },
                max_jobs: default_max_jobs(),
                speed_factor: 1.0,
                supported_features: vec![],
                mandatory_features: vec![],
                ssh_key: None,
            });
        }
        out
    }

    /// The core's view of this configuration: lanes, channels, builders and timings in
    /// milliseconds. The core never sees the TOML `Config`.
    pub fn core_config(&self) -> CoreConfig {
        let repos = self
            .repos
            .iter()
            .map(|r| {
                let lanes = r
                    .branches
                    .iter()
                    .map(|b| {
                        (
                            b.name.get_ref().clone(),
                            LaneConfig {
                                batch_max: *b.batch_max.get_ref(),
                                required: b.required.clone(),
                                batch_delay_ms: b.batch_delay_secs as Millis * 1000,
                                build_priority: b.build_priority,
                                window: *b.window.get_ref(),
                                window_floor: *b.window_floor.get_ref(),
                                mass_rebuild_threshold: b
                                    .mass_rebuild_threshold
                                    .as_ref()
                                    .map(|t| *t.get_ref()),
                                breakage: BreakagePolicy {
                                    mode: b.breakage,
                                    protected: b
                                        .protected
                                        .iter()
                                        .map(|p| p.get_ref().clone())
                                        .collect(),
                                    grace_ms: b.grace_secs as Millis * 1000,
                                    max_newly_broken: *b.max_newly_broken.get_ref(),
                                },
                            },
                        )
                    })
                    .collect();
                (r.name.get_ref().clone(), RepoConfig { lanes })
            })
            .collect();
        let channels = self
            .channels
            .iter()
            .map(|ch| {
                (
                    ch.name.get_ref().clone(),
                    ChannelConfig {
                        repo: ch.repo.get_ref().clone(),
                        source: ch.source.clone(),
                        target: ch.target.clone(),
                        gate: ch.gate.clone(),
                        min_interval_ms: ch.min_interval_secs as Millis * 1000,
                        poll_interval_ms: *ch.poll_interval_secs.get_ref() as Millis * 1000,
                        look_back: ch.look_back,
                        artifacts: ch.artifacts_dir.is_some(),
                    },
                )
            })
            .collect();
        CoreConfig {
            channels,
            repos,
            failure_ttl_ms: self.nix.failure_ttl_secs as i64 * 1000,
            target_poll_ms: self.target_poll_secs as Millis * 1000,
            retry_delay_ms: self.dispatch.retry_delay_secs as Millis * 1000,
            builders: self.builder_specs(),
            infra_retries: self.dispatch.infra_retries,
            infra_budget: self.dispatch.infra_budget,
            failure_retries: self.dispatch.failure_retries,
            quarantine_after: self.dispatch.quarantine_after,
            probe_delay_ms: self.dispatch.probe_delay_secs as Millis * 1000,
            keep_final: self.retention.keep_in_memory,
            cache: self.cache.as_ref().map(|c| c.upload.into()),
            verify: self.verify.as_ref().map(|v| v.policy()),
            build_deadline_ms: self.timeouts.build_secs as Millis * 1000,
            // The shell kills an evaluation at eval_secs; a request may also wait that
            // long for a free evaluator first. The core waits for both, and a margin.
            eval_deadline_ms: (2 * self.timeouts.eval_secs as Millis + 600) * 1000,
        }
    }

    pub fn builder_specs(&self) -> Vec<crate::core::scheduler::BuilderSpec> {
        self.all_builders()
            .iter()
            .map(|b| crate::core::scheduler::BuilderSpec {
                id: b.uri.get_ref().clone(),
                systems: b.systems.iter().cloned().collect(),
                supported: b.supported_features.iter().cloned().collect(),
                mandatory: b.mandatory_features.iter().cloned().collect(),
                max_jobs: *b.max_jobs.get_ref(),
                speed: b.speed_factor,
            })
            .collect()
    }

    pub fn db_path(&self) -> PathBuf {
        self.state_dir.join("mergequeue.sqlite")
    }
}

impl Repo {
    pub fn branch(&self, name: &str) -> Option<&Branch> {
        self.branches.iter().find(|b| b.name.get_ref() == name)
    }
}

/// Parses the Nix machines file format: one machine per line (or `;`-separated), fields
/// `URI SYSTEMS SSH_KEY MAX_JOBS SPEED SUPPORTED MANDATORY HOST_KEY`, `-` for a default.
/// Returns `(line, message)` on error.
pub fn parse_machines(text: &str) -> Result<Vec<Builder>, (usize, String)> {
    let mut out = vec![];
    for (n, line) in text.lines().enumerate() {
        for entry in line.split(';') {
            let entry = entry.split('#').next().unwrap_or("").trim();
            if entry.is_empty() {
                continue;
            }
            let f: Vec<&str> = entry.split_whitespace().collect();
            let field = |i: usize| f.get(i).copied().filter(|v| *v != "-");
            let list = |i: usize| {
                field(i).map_or_else(Vec::new, |v| v.split(',').map(String::from).collect())
            };
            let mut uri = f[0].to_string();
            if !uri.contains("://") {
                uri = format!("ssh://{uri}");
            }
            let max_jobs = match field(3) {
                None => 1,
                Some(v) => v
                    .parse()
                    .map_err(|_| (n + 1, format!("max jobs {v:?} is not a number")))?,
            };
            let speed = match field(4) {
                None => 1.0,
                Some(v) => v
                    .parse()
                    .map_err(|_| (n + 1, format!("speed factor {v:?} is not a number")))?,
            };
            let systems = list(1);
            out.push(Builder {
                uri: Spanned::new(0..0, uri),
                systems: if systems.is_empty() {
                    default_systems()
                } else {
                    systems
                },
                max_jobs: Spanned::new(0..0, max_jobs),
                speed_factor: speed,
                supported_features: list(5),
                mandatory_features: list(6),
                ssh_key: field(2).map(PathBuf::from),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
state_dir = "/var/lib/mergequeue"
listen = "127.0.0.1:8080"
api_token_file = "/run/credentials/mergequeue.service/api-token"

[nix]
options = { substituters = "" }

[[repos]]
name = "pkgs"
url = "file:///srv/git/pkgs.git"
jobset = "release.nix"
systems = ["x86_64-linux"]

[[repos.branches]]
name = "master"
batch_max = 8
required = ["tested"]

[[builders]]
uri = "local"
systems = ["x86_64-linux"]
max_jobs = 2

[[channels]]
name = "unstable"
repo = "pkgs"
source = "master"
target = "nixos-unstable"
gate = ["tested"]
"#;

    #[test]
    fn machines_file_all_eight_fields() {
        let m = parse_machines(
            "ssh-ng://builder@b1 x86_64-linux,i686-linux /etc/key 8 2 kvm,big-parallel big-parallel AAAAC3Nz\n\
             # comment\nb2 - - - - - - -; ssh://b3 aarch64-linux\n",
        )
        .unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].uri.get_ref(), "ssh-ng://builder@b1");
        assert_eq!(m[0].systems, vec!["x86_64-linux", "i686-linux"]);
        assert_eq!(m[0].ssh_key.as_deref(), Some(Path::new("/etc/key")));
        assert_eq!((*m[0].max_jobs.get_ref(), m[0].speed_factor), (8, 2.0));
        assert_eq!(m[0].supported_features, vec!["kvm", "big-parallel"]);
        assert_eq!(m[0].mandatory_features, vec!["big-parallel"]);
        assert_eq!(m[1].uri.get_ref(), "ssh://b2");
        assert_eq!(m[2].systems, vec!["aarch64-linux"]);
        assert_eq!(parse_machines("b x 1 many").unwrap_err().0, 1);
    }

    #[test]
    fn contract_example_parses() {
        let c = Config::parse(GOOD, "mq.toml").unwrap();
        assert_eq!(c.repos[0].branches[0].required, vec!["tested"]);
        assert_eq!(c.nix_args(), vec!["--option", "substituters", ""]);
        let ch = &c.channels[0];
        assert_eq!(
            (*ch.poll_interval_secs.get_ref(), ch.look_back),
            (60, false)
        );
    }

    #[test]
    fn unknown_key_names_line_and_column() {
        let bad = GOOD.replace("batch_max = 8", "batch_max = 8\nbatchmax = 3");
        let err = Config::parse(&bad, "mq.toml").unwrap_err().to_string();
        assert!(
            err.starts_with("mq.toml:18:1: unknown field `batchmax`"),
            "{err}"
        );
    }

    #[test]
    fn semantic_errors_point_at_the_value() {
        let bad = GOOD.replace("repo = \"pkgs\"", "repo = \"nope\"");
        let err = Config::parse(&bad, "mq.toml").unwrap_err().to_string();
        assert!(
            err.starts_with("mq.toml:27:8: channel refers to unknown repo"),
            "{err}"
        );
        let bad = GOOD.replace(
            "gate = [\"tested\"]",
            "gate = [\"tested\"]\npoll_interval_secs = 0",
        );
        let err = Config::parse(&bad, "mq.toml").unwrap_err().to_string();
        assert!(
            err.starts_with("mq.toml:31:22: poll_interval_secs"),
            "{err}"
        );
        let bad = GOOD.replace("target = \"nixos-unstable\"", "target = \"master\"");
        let err = Config::parse(&bad, "mq.toml").unwrap_err().to_string();
        assert!(err.contains("source and target are the same"), "{err}");
        let bad = GOOD.replace("batch_max = 8", "batch_max = 0");
        let err = Config::parse(&bad, "mq.toml").unwrap_err().to_string();
        assert!(err.starts_with("mq.toml:17:13: batch_max"), "{err}");
    }
}
