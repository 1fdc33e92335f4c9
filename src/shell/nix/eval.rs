//! Evaluation of a jobset at a checked-out directory.
//!
//! The jobset file (e.g. `release.nix`) may be an attribute set, or a function: when the
//! function takes a `system` argument (`builtins.functionArgs`) it is called with
//! `{ system = S; }` once per configured system, otherwise with `{}`. Nested sets are entered
//! only where `recurseForDerivations = true` (the top level always).
//!
//! Two evaluators:
//! - `nix-eval-jobs` (when on `PATH` and the configured evaluator allows it), whose JSON lines
//!   are parsed by `output::parse_nix_eval_jobs_line`;
//! - `nix-instantiate --eval --strict --json --read-write-mode` on a wrapper expression
//!   ([`WRAPPER_NIX`]) that walks the jobset with `builtins.tryEval` per attribute.
//!   `--read-write-mode` matters: without it `drvPath` is computed but the `.drv` file is not
//!   written to the store. `tryEval` catches only `throw` and `assert`; when a whole call fails
//!   (`abort`, type errors, missing attributes, infinite recursion), it is repeated in trace
//!   mode: the wrapper reports on stderr (`builtins.trace`) each attribute it begins and the rows
//!   it completes, so the attribute being evaluated when Nix died is the culprit; completed rows
//!   are kept and the call resumes with the rest (one extra call per failing attribute, chunks of
//!   the attribute list in parallel). When a failure cannot be attributed that way, the list is
//!   split in halves recursively. Only the failing attributes become [`JobResult::Error`]. For an
//!   attribute that `tryEval` caught, Nix's real message is fetched by evaluating that one
//!   attribute without `tryEval`.
//!
//! Jobs are keyed by the attribute path joined with `.` and the derivation's `system` attribute.
//! An attribute that fails to evaluate is keyed by the system the jobset was called with (for a
//! jobset that does not take `system`: the first configured system). An attribute that does
//! not exist, or holds no job, yields no entry at all (absent is not failing).
//!
//! Two kinds of failure are kept apart (see `output::classify_failure`): errors of the evaluated code
//! (a syntax error, `throw`, `abort`, a type error, a missing jobset file) belong to the commit
//! and are reported in the [`Evaluation`]; failures of the machinery (the evaluator cannot be
//! started or is killed, the disk or memory is full, the Nix daemon is unreachable, the output
//! is cut short) say nothing about the commit and are returned as `Err`, to be retried later
//! and never stored.
//!
//! The `.drv` files are written to the store but not registered as GC roots.

use super::strip_ansi;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::process::Command;
use tokio::sync::Semaphore;

use crate::core::evaluation::{EvalOutcome, Evaluation, Job, JobKey, JobResult};
use crate::shell::config::Evaluator;
use crate::shell::nix::output::{
    failure, is_infrastructure_message, parse_nix_eval_jobs_line, Infra,
};

/// The wrapper expression; called as `nix-instantiate --eval ... WRAPPER --argstr input FILE`
/// where FILE holds the JSON [`Input`].
pub const WRAPPER_NIX: &str = include_str!("wrapper.nix");

/// What the wrapper is asked to do (written as JSON to a file).
#[derive(Debug, Clone, Serialize)]
struct Input<'a> {
    file: &'a str,
    systems: &'a [String],
    #[serde(rename = "rootSystem")]
    root_system: Option<&'a str>,
    select: Option<&'a [Vec<String>]>,
    catch: bool,
    mode: &'a str,
    trace: bool,
    skip: &'a [Vec<String>],
    #[serde(rename = "forceRecurse")]
    force_recurse: bool,
    args: &'a serde_json::Map<String, serde_json::Value>,
}

/// A failed wrapper call: Nix's cleaned message and the raw stderr (with trace lines).
struct Failure {
    msg: String,
    stderr: String,
}

const TRACE_BEGIN: &str = "trace: mergequeue-eval-begin ";
const TRACE_ROWS: &str = "trace: mergequeue-eval-rows ";

/// From the stderr of a traced call: the rows completed, and the last attribute begun.
fn parse_trace(stderr: &str) -> (Vec<Row>, Option<Vec<String>>) {
    let mut rows = Vec::new();
    let mut begun = None;
    for line in stderr.lines() {
        if let Some(j) = line.strip_prefix(TRACE_ROWS) {
            if let Ok(r) = serde_json::from_str::<Vec<Row>>(j) {
                rows.extend(r);
            }
        } else if let Some(j) = line.strip_prefix(TRACE_BEGIN) {
            if let Ok(p) = serde_json::from_str::<Vec<String>>(j) {
                begun = Some(p);
            }
        }
    }
    (rows, begun)
}

/// One row of the wrapper's output.
#[derive(Debug, Clone, Deserialize)]
struct Row {
    path: Vec<String>,
    system: String,
    #[serde(rename = "drvPath")]
    drv_path: Option<String>,
    #[serde(default)]
    outputs: BTreeMap<String, String>,
    #[serde(default)]
    maintainers: Vec<crate::core::evaluation::Maintainer>,
    #[serde(default)]
    error: bool,
    #[serde(default)]
    missing: bool,
    kind: Option<String>,
    #[serde(default)]
    names: Vec<String>,
}

/// A resolved row.
#[derive(Debug, Clone)]
enum Item {
    Job(Vec<String>, String, Job),
    /// Message `None`: caught by `tryEval`, message still to be fetched.
    Error(Vec<String>, String, Option<String>),
    /// A requested attribute that does not exist: absent, no entry.
    Missing,
}

#[derive(Debug, Clone)]
pub struct NixEval {
    /// Extra arguments for every Nix command, e.g. `["--option", "substituters", ""]`.
    pub nix_args: Vec<String>,
    pub evaluator: Evaluator,
    pub sandbox: EvalSandbox,
    pub jobset: JobsetOptions,
    pub limits: EvalJobsLimits,
}

/// `nix-eval-jobs` resources (`[nix] eval_workers`, `eval_max_memory_mib`).
#[derive(Debug, Clone, Copy, Default)]
pub struct EvalJobsLimits {
    /// Worker processes; 0: one per core, at most 8.
    pub workers: usize,
    /// Memory one worker may use before it is restarted, MiB; 0: nix-eval-jobs' own default.
    pub max_memory_mib: u64,
}

/// How the jobset is read: Hydra's conventions, for `release.nix` files written for it.
#[derive(Debug, Clone, Default)]
pub struct JobsetOptions {
    /// Walk into every attribute set that is not a derivation, as Hydra's evaluator and
    /// `nix-eval-jobs --force-recurse` do (`hello.x86_64-linux`), not only those with
    /// `recurseForDerivations = true`.
    pub force_recurse: bool,
    /// Arguments for a jobset that is a function, as JSON values (`config = { allowUnfree
    /// = true; }`); given only when the function names them, beside `system`.
    pub args: serde_json::Map<String, serde_json::Value>,
}

impl JobsetOptions {
    /// `nix-eval-jobs` arguments for the same.
    fn eval_jobs_args(&self) -> Vec<String> {
        let mut a = vec![];
        if self.force_recurse {
            a.push("--force-recurse".to_string());
        }
        for (k, v) in &self.args {
            let json = serde_json::to_string(v).expect("a JSON value");
            a.extend([
                "--arg".into(),
                k.clone(),
                format!("builtins.fromJSON {}", nix_string(&json)),
            ]);
        }
        a
    }
}

/// `s` as a Nix string literal (for `--arg`): quoted, with `\`, `"` and `$` escaped.
fn nix_string(s: &str) -> String {
    format!(
        "\"{}\"",
        s.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('$', "\\$")
    )
}

/// What evaluated code may reach. The code is a change's, i.e. anyone's who can open a pull
/// request, and it is evaluated on the coordinator, beside the service's secrets.
///
/// With `restrict` (the default), Nix's restricted evaluation is on: files can be read only
/// under the checkout, the evaluator's own temporary directory and `nix_path`'s entries
/// (plus the store closures of those), URLs only under `allowed_uris`; `builtins.getEnv`
/// answers `""`. `NIX_PATH` of the service is not passed on (`nix-path` is emptied), so
/// nothing the host's search path names becomes readable; import from derivation is off
/// unless allowed (it would run builds during evaluation).
#[derive(Debug, Clone)]
pub struct EvalSandbox {
    pub restrict: bool,
    /// `-I` entries (`name=path` or `path`) the jobset may use: `<name>` lookups and reads.
    pub nix_path: Vec<String>,
    /// URL prefixes `fetchurl`, `fetchTarball` and `fetchGit` may reach.
    pub allowed_uris: Vec<String>,
    pub import_from_derivation: bool,
}

impl Default for EvalSandbox {
    fn default() -> Self {
        EvalSandbox {
            restrict: true,
            nix_path: vec![],
            allowed_uris: vec![],
            import_from_derivation: false,
        }
    }
}

impl EvalSandbox {
    /// Arguments for an evaluation that may read `readable` (the checkout, our temp dir).
    fn args(&self, readable: &[&Path]) -> Vec<String> {
        let opt = |k: &str, v: String| ["--option".to_string(), k.to_string(), v];
        let mut a = vec![];
        a.extend(opt(
            "allow-import-from-derivation",
            self.import_from_derivation.to_string(),
        ));
        if !self.restrict {
            return a;
        }
        a.extend(opt("restrict-eval", "true".into()));
        a.extend(opt("nix-path", String::new()));
        a.extend(opt("allowed-uris", self.allowed_uris.join(" ")));
        for p in readable {
            a.push("-I".into());
            a.push(p.to_string_lossy().into_owned());
        }
        for e in &self.nix_path {
            a.push("-I".into());
            a.push(e.clone());
        }
        a
    }
}

impl NixEval {
    /// Offline settings: substituters disabled, evaluator chosen automatically, restricted.
    pub fn offline() -> Self {
        NixEval {
            nix_args: vec!["--option".into(), "substituters".into(), "".into()],
            evaluator: Evaluator::Auto,
            sandbox: EvalSandbox::default(),
            jobset: JobsetOptions::default(),
            limits: EvalJobsLimits::default(),
        }
    }

    /// Evaluates all jobs of `jobset` (a file relative to `dir`).
    ///
    /// `Err` when the evaluation could not run (see [`classify_failure`]): the evaluator is
    /// missing or was killed, the disk or memory is full, the Nix daemon is unreachable, its
    /// output was cut short. Such an outcome says nothing about the commit: it is retried and
    /// must never be stored as the commit's evaluation. A jobset that fails for its own reasons
    /// (syntax error, not an attribute set, the file is missing) is an `Ok` evaluation with
    /// [`EvalOutcome::Failed`]; attributes that fail are [`JobResult::Error`]s in it.
    pub async fn evaluate(
        &self,
        dir: &Path,
        jobset: &str,
        systems: &[String],
        commit: &str,
    ) -> Result<Evaluation, String> {
        let failed = |msg: String| Evaluation::new(commit.into(), EvalOutcome::Failed(msg), vec![]);
        let use_nej = match self.evaluator {
            Evaluator::NixInstantiate => false,
            Evaluator::Auto => find_on_path("nix-eval-jobs").is_some(),
            Evaluator::NixEvalJobs => {
                if find_on_path("nix-eval-jobs").is_none() {
                    // The machine, not the commit, lacks something.
                    return Err(
                        "evaluator is nix-eval-jobs but nix-eval-jobs is not on PATH".into(),
                    );
                }
                true
            }
        };
        if use_nej {
            return self
                .evaluate_nix_eval_jobs(dir, jobset, systems, commit)
                .await;
        }
        let ctx = Ctx::new(self, dir, jobset, systems).await?;
        if let Err(e) = ctx.check_jobset() {
            return Ok(failed(e));
        }
        let items = match ctx.call("eval", None, None, true).await? {
            Ok(rows) => rows_to_items(rows),
            Err(_) => {
                // Something tryEval does not catch: find the culprits by splitting.
                let roots = match ctx.call("list", None, Some(&[vec![]]), true).await? {
                    Ok(r) => r,
                    Err(msg) => return Ok(failed(msg)),
                };
                let mut items = Vec::new();
                for root in roots {
                    if root.error || root.kind.as_deref() == Some("other") {
                        let msg = match ctx.call("eval", Some(&root.system), None, false).await? {
                            Err(m) => m,
                            Ok(_) => "the jobset does not evaluate to an attribute set".into(),
                        };
                        return Ok(failed(msg));
                    }
                    let paths: Vec<Vec<String>> =
                        root.names.iter().map(|n| vec![n.clone()]).collect();
                    items.extend(ctx.resume_chunked(&root.system, paths).await?);
                }
                items
            }
        };
        let jobs = ctx
            .fill_messages(items)
            .await?
            .into_iter()
            .filter_map(entry)
            .collect();
        Ok(Evaluation::new(commit.into(), EvalOutcome::Ok, jobs))
    }

    /// Evaluates only the given attribute paths (`a.b` for nested ones); a path naming a
    /// nested set yields its jobs. An attribute that does not exist at this commit, or holds
    /// no job (not a derivation, a set without `recurseForDerivations`, an empty set), yields
    /// no entry at all: absent is not failing. An attribute that fails to evaluate (`throw`,
    /// `abort`, `assert`, a type error) is a [`JobResult::Error`], and so is every requested
    /// attribute when the jobset itself fails (syntax error, missing file).
    ///
    /// `Err`: the evaluation could not run, as for [`NixEval::evaluate`].
    pub async fn evaluate_attrs(
        &self,
        dir: &Path,
        jobset: &str,
        systems: &[String],
        attrs: &[String],
    ) -> Result<Vec<(JobKey, JobResult)>, String> {
        let paths: Vec<Vec<String>> = attrs
            .iter()
            .map(|a| a.split('.').map(String::from).collect())
            .collect();
        let ctx = Ctx::new(self, dir, jobset, systems).await?;
        if let Err(e) = ctx.check_jobset() {
            return Ok(all_errors(attrs, &ctx.systems, &e));
        }
        let items = match ctx.call("eval", None, Some(&paths), true).await? {
            Ok(rows) => rows_to_items(rows),
            Err(_) => {
                let roots = match ctx.call("list", None, Some(&[vec![]]), true).await? {
                    Ok(r) => r,
                    Err(msg) => return Ok(all_errors(attrs, &ctx.systems, &msg)),
                };
                let mut items = Vec::new();
                for root in roots {
                    items.extend(ctx.resume_chunked(&root.system, paths.clone()).await?);
                }
                items
            }
        };
        let mut out: Vec<(JobKey, JobResult)> = ctx
            .fill_messages(items)
            .await?
            .into_iter()
            .filter_map(entry)
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.dedup_by(|a, b| a.0 == b.0);
        Ok(out)
    }

    /// A full evaluation with `nix-eval-jobs`: it reports jobs and failing attributes only
    /// (attributes that hold no job are skipped), so nothing absent shows up as an error.
    async fn evaluate_nix_eval_jobs(
        &self,
        dir: &Path,
        jobset: &str,
        systems: &[String],
        commit: &str,
    ) -> Result<Evaluation, String> {
        let failed = |msg: String| Evaluation::new(commit.into(), EvalOutcome::Failed(msg), vec![]);
        if !dir.join(jobset).exists() {
            return Ok(failed(format!("jobset file '{jobset}' does not exist")));
        }
        let tmp = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
        let workers = match self.limits.workers {
            0 => std::thread::available_parallelism()
                .map(|n| n.get().min(8))
                .unwrap_or(2),
            n => n,
        };
        let runs: Vec<Option<&String>> = if systems.is_empty() {
            vec![None]
        } else {
            systems.iter().map(Some).collect()
        };
        let mut jobs = Vec::new();
        for sys in runs {
            let mut cmd = Command::new("nix-eval-jobs");
            cmd.current_dir(dir)
                .env_remove("NIX_PATH")
                .args(&self.nix_args)
                .args(self.sandbox.args(&[dir]))
                .arg("--meta")
                .args(self.jobset.eval_jobs_args())
                .arg("--workers")
                .arg(workers.to_string())
                .args(
                    (self.limits.max_memory_mib > 0)
                        .then(|| {
                            [
                                "--max-memory-size".to_string(),
                                self.limits.max_memory_mib.to_string(),
                            ]
                        })
                        .into_iter()
                        .flatten(),
                )
                .arg("--gc-roots-dir")
                .arg(tmp.path());
            if let Some(s) = sys {
                cmd.arg("--arg").arg("system").arg(nix_string(s));
            }
            cmd.arg(dir.join(jobset)).kill_on_drop(true);
            let out = cmd
                .output()
                .await
                .map_err(|e| format!("cannot run nix-eval-jobs: {e}"))?;
            if !out.status.success() {
                let stderr = strip_ansi(&String::from_utf8_lossy(&out.stderr));
                return failure("nix-eval-jobs", out.status, &stderr).map(failed);
            }
            let default_system = sys.cloned().unwrap_or_else(|| "unknown".into());
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some((k, r)) = parse_nix_eval_jobs_line(line, &default_system) {
                    // A worker that ran out of memory or disk reports it as the attribute's
                    // error: that is no error of the attribute.
                    if let JobResult::Error(m) = &r {
                        if is_infrastructure_message(m) {
                            return Err(format!("nix-eval-jobs, evaluating {}: {m}", k.attr));
                        }
                    }
                    jobs.push((k, r));
                }
            }
        }
        Ok(Evaluation::new(commit.into(), EvalOutcome::Ok, jobs))
    }
}

fn key(path: &[String], system: String) -> JobKey {
    JobKey {
        attr: path.join("."),
        system,
    }
}

/// The entry an item contributes to an evaluation: none for an absent attribute.
fn entry(item: Item) -> Option<(JobKey, JobResult)> {
    match item {
        Item::Job(p, s, j) => Some((key(&p, s), JobResult::Ok(j))),
        Item::Error(p, s, m) => Some((key(&p, s), JobResult::Error(m.unwrap_or_default()))),
        Item::Missing => None,
    }
}

fn all_errors(attrs: &[String], systems: &[String], msg: &str) -> Vec<(JobKey, JobResult)> {
    let mut out: Vec<(JobKey, JobResult)> = attrs
        .iter()
        .flat_map(|a| {
            systems.iter().map(move |s| {
                (
                    JobKey {
                        attr: a.clone(),
                        system: s.clone(),
                    },
                    JobResult::Error(msg.to_string()),
                )
            })
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.dedup_by(|a, b| a.0 == b.0);
    out
}

fn rows_to_items(rows: Vec<Row>) -> Vec<Item> {
    rows.into_iter()
        .map(|r| {
            if r.missing {
                Item::Missing
            } else if r.error || r.drv_path.is_none() {
                Item::Error(r.path, r.system, None)
            } else {
                Item::Job(
                    r.path,
                    r.system,
                    Job {
                        drv_path: r.drv_path.unwrap_or_default(),
                        outputs: r.outputs.into_iter().collect(),
                        maintainers: r.maintainers,
                    },
                )
            }
        })
        .collect()
}

/// State of one evaluation with the wrapper.
struct Ctx {
    tmp: tempfile::TempDir,
    wrapper: PathBuf,
    jobset: String,
    file: String,
    dir: PathBuf,
    systems: Vec<String>,
    nix_args: Vec<String>,
    sandbox: EvalSandbox,
    jobset_options: JobsetOptions,
    sem: Arc<Semaphore>,
    counter: AtomicUsize,
}

type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl Ctx {
    /// `Err`: infrastructure (temporary files, `builtins.currentSystem`). Whether the jobset
    /// file exists is [`Ctx::check_jobset`]'s question.
    async fn new(ev: &NixEval, dir: &Path, jobset: &str, systems: &[String]) -> Infra<Ctx> {
        let tmp = tempfile::Builder::new()
            .prefix("mq-eval-")
            .tempdir()
            .map_err(|e| format!("temporary directory: {e}"))?;
        let wrapper = tmp.path().join("wrapper.nix");
        std::fs::write(&wrapper, WRAPPER_NIX).map_err(|e| format!("writing wrapper: {e}"))?;
        let dir = std::path::absolute(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let file = dir.join(jobset);
        let systems = if systems.is_empty() {
            vec![current_system(&ev.nix_args).await?]
        } else {
            systems.to_vec()
        };
        let permits = std::thread::available_parallelism()
            .map(|n| n.get().min(8))
            .unwrap_or(2);
        Ok(Ctx {
            tmp,
            wrapper,
            jobset: jobset.to_string(),
            file: file.to_string_lossy().into_owned(),
            dir,
            systems,
            nix_args: ev.nix_args.clone(),
            sandbox: ev.sandbox.clone(),
            jobset_options: ev.jobset.clone(),
            sem: Arc::new(Semaphore::new(permits)),
            counter: AtomicUsize::new(0),
        })
    }

    /// A missing jobset file is the commit's failure, not the machine's.
    fn check_jobset(&self) -> Result<(), String> {
        if Path::new(&self.file).exists() {
            Ok(())
        } else {
            Err(format!("jobset file '{}' does not exist", self.jobset))
        }
    }

    /// One `nix-instantiate --eval` of the wrapper. `Ok(Err)`: Nix's message.
    async fn call(
        &self,
        mode: &str,
        root_system: Option<&str>,
        select: Option<&[Vec<String>]>,
        catch: bool,
    ) -> Infra<Result<Vec<Row>, String>> {
        let res = self
            .call_full(mode, root_system, select, catch, false, &[])
            .await?;
        Ok(res.map_err(|f| f.msg))
    }

    async fn call_full(
        &self,
        mode: &str,
        root_system: Option<&str>,
        select: Option<&[Vec<String>]>,
        catch: bool,
        trace: bool,
        skip: &[Vec<String>],
    ) -> Infra<Result<Vec<Row>, Failure>> {
        let input = Input {
            file: &self.file,
            systems: &self.systems,
            root_system,
            select,
            catch,
            mode,
            trace,
            skip,
            force_recurse: self.jobset_options.force_recurse,
            args: &self.jobset_options.args,
        };
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let input_path = self.tmp.path().join(format!("input-{n}.json"));
        std::fs::write(&input_path, serde_json::to_vec(&input).unwrap())
            .map_err(|e| format!("writing {}: {e}", input_path.display()))?;
        let _permit = self.sem.acquire().await.map_err(|e| e.to_string())?;
        let out = Command::new("nix-instantiate")
            .current_dir(&self.dir)
            .env_remove("NIX_PATH")
            .args(&self.nix_args)
            .args(self.sandbox.args(&[&self.dir, self.tmp.path()]))
            .args(["--eval", "--strict", "--json", "--read-write-mode"])
            .arg(&self.wrapper)
            .arg("--argstr")
            .arg("input")
            .arg(&input_path)
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| format!("cannot run nix-instantiate: {e}"))?;
        let _ = std::fs::remove_file(&input_path);
        if !out.status.success() {
            let stderr = strip_ansi(&String::from_utf8_lossy(&out.stderr));
            let msg = failure("nix-instantiate", out.status, &stderr)?;
            return Ok(Err(Failure { msg, stderr }));
        }
        // Exit status 0 and no JSON: the output was cut short (or is not the wrapper's).
        let rows = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("unexpected output of the evaluation wrapper: {e}"))?;
        Ok(Ok(rows))
    }

    /// Evaluates `paths` in chunks, concurrently, each with [`Ctx::resume`].
    async fn resume_chunked(&self, system: &str, paths: Vec<Vec<String>>) -> Infra<Vec<Item>> {
        let chunks = self.sem.available_permits().max(1);
        let size = paths.len().div_ceil(chunks).max(1);
        let futs = paths
            .chunks(size)
            .map(|c| self.resume(system.to_string(), c.to_vec()));
        let mut items = Vec::new();
        for chunk in join_all(futs).await {
            items.extend(chunk?);
        }
        Ok(items)
    }

    /// Evaluates `paths` with progress traces; when a call dies on an error that tryEval
    /// cannot catch, the attribute being evaluated is recorded as failing with Nix's message,
    /// the completed ones are kept, and the call is repeated for the rest. One call per
    /// failing attribute. Falls back to halving when a failure cannot be attributed.
    async fn resume(&self, system: String, paths: Vec<Vec<String>>) -> Infra<Vec<Item>> {
        let mut skip: Vec<Vec<String>> = Vec::new();
        let mut items = Vec::new();
        loop {
            let res = self
                .call_full("eval", Some(&system), Some(&paths), true, true, &skip)
                .await?;
            let f = match res {
                Ok(rows) => {
                    items.extend(rows_to_items(rows));
                    return Ok(items);
                }
                Err(f) => f,
            };
            let (rows, begun) = parse_trace(&f.stderr);
            let progressed = !rows.is_empty();
            for r in &rows {
                skip.push(r.path.clone());
            }
            items.extend(rows_to_items(rows));
            match begun {
                Some(b) if !skip.contains(&b) => {
                    skip.push(b.clone());
                    items.push(Item::Error(b, system.clone(), Some(f.msg)));
                }
                _ if progressed => {}
                _ => {
                    items.extend(self.split(system.clone(), paths, Arc::new(skip)).await?);
                    return Ok(items);
                }
            }
        }
    }

    /// Evaluates `paths` under the root for `system`, halving on whole-call failures.
    fn split(
        &self,
        system: String,
        paths: Vec<Vec<String>>,
        skip: Arc<Vec<Vec<String>>>,
    ) -> Boxed<'_, Infra<Vec<Item>>> {
        Box::pin(async move {
            if paths.is_empty() {
                return Ok(vec![]);
            }
            let res = self
                .call_full("eval", Some(&system), Some(&paths), true, false, &skip)
                .await?
                .map_err(|f| f.msg);
            match res {
                Ok(rows) => Ok(rows_to_items(rows)),
                Err(msg) if paths.len() == 1 => {
                    let path = paths.into_iter().next().unwrap();
                    let listed = self
                        .call(
                            "list",
                            Some(&system),
                            Some(std::slice::from_ref(&path)),
                            true,
                        )
                        .await?;
                    match listed {
                        Ok(rows)
                            if rows.len() == 1
                                && rows[0].kind.as_deref() == Some("rec")
                                && !rows[0].names.is_empty() =>
                        {
                            let children = rows[0]
                                .names
                                .iter()
                                .map(|n| {
                                    let mut p = path.clone();
                                    p.push(n.clone());
                                    p
                                })
                                .collect();
                            self.split(system, children, skip).await
                        }
                        _ => Ok(vec![Item::Error(path, system, Some(msg))]),
                    }
                }
                Err(_) => {
                    let mut a = paths;
                    let b = a.split_off(a.len() / 2);
                    let (x, y) = tokio::join!(
                        self.split(system.clone(), a, skip.clone()),
                        self.split(system.clone(), b, skip.clone())
                    );
                    Ok(x?.into_iter().chain(y?).collect())
                }
            }
        })
    }

    /// Fetches Nix's message for errors that `tryEval` caught, by evaluating each such
    /// attribute alone without `tryEval`.
    async fn fill_messages(&self, items: Vec<Item>) -> Infra<Vec<Item>> {
        let futs = items.into_iter().map(|i| async move {
            Ok(match i {
                Item::Error(p, s, None) => {
                    let msg = match self
                        .call("eval", Some(&s), Some(std::slice::from_ref(&p)), false)
                        .await?
                    {
                        Err(m) => m,
                        Ok(_) => "evaluation failed (caught by builtins.tryEval, \
                                  but succeeded when evaluated alone)"
                            .to_string(),
                    };
                    Item::Error(p, s, Some(msg))
                }
                other => other,
            })
        });
        join_all(futs).await.into_iter().collect()
    }
}

/// Runs futures concurrently (the semaphore in `call` bounds the processes).
async fn join_all<F: Future>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let futs: Vec<Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut outs: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    let mut futs: Vec<Option<Pin<Box<F>>>> = futs.into_iter().map(Some).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, slot) in futs.iter_mut().enumerate() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(o) => {
                        outs[i] = Some(o);
                        *slot = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outs.into_iter().map(|o| o.unwrap()).collect()
}

/// The system Nix evaluates for. Any failure here is infrastructure: the expression is ours.
async fn current_system(nix_args: &[String]) -> Infra<String> {
    let out = Command::new("nix-instantiate")
        .args(nix_args)
        .args(["--eval", "--json", "-E", "builtins.currentSystem"])
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run nix-instantiate: {e}"))?;
    if !out.status.success() {
        let stderr = strip_ansi(&String::from_utf8_lossy(&out.stderr));
        let msg = failure("nix-instantiate", out.status, &stderr).unwrap_or_else(|e| e);
        return Err(format!("builtins.currentSystem: {msg}"));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("builtins.currentSystem: {e}"))
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}
