use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use hyper::Method;
use serde_json::json;

use mergequeue::shell::client::ApiClient;
use mergequeue::shell::config::Config;

#[derive(Parser)]
#[command(
    name = "mergequeue",
    version,
    about = "Keeps a Nix package set's branches green and its channels fresh"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args)]
struct Remote {
    /// Server address (default: `listen` from --config, else 127.0.0.1:8080).
    #[arg(long)]
    server: Option<String>,
    /// Config file to take the server address and token file from.
    #[arg(long)]
    config: Option<PathBuf>,
    /// File holding the bearer token (default: `api_token_file` from --config, or $MERGEQUEUE_TOKEN).
    #[arg(long)]
    token_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the coordinator in the foreground; SIGTERM stops it cleanly.
    Serve {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, short)]
        verbose: bool,
    },
    /// Validate a config file: exit 0, or print FILE:LINE:COL: message and exit 1.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the self-contained demonstration with real nix and git.
    Demo(mergequeue::tools::demo::DemoArgs),
    /// Submit a git ref as a change.
    Submit {
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        repo: String,
        /// The git ref of the change (refs/heads/NAME, or NAME for a branch).
        #[arg(long = "ref")]
        git_ref: String,
        /// The branch to land on.
        #[arg(long)]
        target: String,
        #[arg(long, default_value = "")]
        title: String,
        #[arg(long, default_value = "")]
        author: String,
        /// urgent, high, normal or low.
        #[arg(long, default_value = "normal")]
        priority: String,
    },
    /// Show a change, or the queue of a repo when no id is given.
    Status {
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        repo: String,
        id: Option<u64>,
    },
    /// Cancel a queued or testing change.
    Cancel {
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        repo: String,
        id: u64,
    },
    /// Channels (see docs/channels.md).
    Channel {
        #[command(subcommand)]
        which: ChannelCmd,
    },
    /// Run the core in a discrete-event simulation (see docs/simulation.md).
    Simulate(mergequeue::sim::SimArgs),
    /// Benchmarks (see docs/benchmarks.md).
    Bench {
        #[command(subcommand)]
        which: mergequeue::tools::bench::Bench,
    },
}

#[derive(Subcommand)]
enum ChannelCmd {
    /// Show every channel, or one: revision, age, history, blocking jobs.
    Status {
        #[command(flatten)]
        remote: Remote,
        /// The channel's name (all channels when omitted).
        #[arg(long)]
        name: Option<String>,
    },
}

fn main() -> ExitCode {
    // glibc gives each thread that allocates its own arena (up to 8 per core); the
    // blocking threads that run git and SQLite work then keep memory that no other thread
    // reuses, and RSS creeps up for as long as the service runs. Two arenas keep it flat
    // (docs/benchmarks.md: 70 MB and growing, against 25 MB flat).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: called first thing, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(run(cli));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mergequeue: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Serve { config, verbose } => {
            mergequeue::shell::systemd::init_logging(verbose);
            let config = Config::load(&config)?;
            mergequeue::shell::serve::serve(config).await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::CheckConfig { config } => match Config::load(&config) {
            Ok(_) => Ok(ExitCode::SUCCESS),
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::FAILURE)
            }
        },
        Cmd::Demo(args) => mergequeue::tools::demo::run(args).await,
        Cmd::Submit {
            remote,
            repo,
            git_ref,
            target,
            title,
            author,
            priority,
        } => {
            let c = client(&remote)?;
            let body = json!({ "ref": git_ref, "target": target, "title": title, "author": author, "priority": priority });
            let v = c
                .ok(
                    Method::POST,
                    &format!("/api/v1/repos/{repo}/changes"),
                    Some(body),
                )
                .await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status { remote, repo, id } => {
            let c = client(&remote)?;
            let path = match id {
                Some(id) => format!("/api/v1/repos/{repo}/changes/{id}"),
                None => format!("/api/v1/repos/{repo}/queue"),
            };
            let v = c.ok(Method::GET, &path, None).await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Cancel { remote, repo, id } => {
            let c = client(&remote)?;
            let v = c
                .ok(
                    Method::DELETE,
                    &format!("/api/v1/repos/{repo}/changes/{id}"),
                    None,
                )
                .await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Channel {
            which: ChannelCmd::Status { remote, name },
        } => {
            let c = client(&remote)?;
            let path = match name {
                Some(n) => format!("/api/v1/channels/{n}"),
                None => "/api/v1/channels".to_string(),
            };
            let v = c.ok(Method::GET, &path, None).await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Simulate(args) => mergequeue::sim::main(args),
        Cmd::Bench { which } => mergequeue::tools::bench::run(which).await,
    }
}

fn client(r: &Remote) -> anyhow::Result<Arc<ApiClient>> {
    let config = r.config.as_ref().map(|p| Config::load(p)).transpose()?;
    let server = r
        .server
        .clone()
        .or_else(|| config.as_ref().map(|c| c.listen.clone()))
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let token_file = r
        .token_file
        .clone()
        .or_else(|| config.as_ref().and_then(|c| c.api_token_file.clone()));
    let token = match token_file {
        Some(p) => Some(
            std::fs::read_to_string(&p)
                .map_err(|e| anyhow::anyhow!("{}: cannot read token: {e}", p.display()))?
                .trim()
                .to_string(),
        ),
        None => std::env::var("MERGEQUEUE_TOKEN").ok(),
    };
    Ok(Arc::new(ApiClient::new(&server, token)))
}
