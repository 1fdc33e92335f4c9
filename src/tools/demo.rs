//! `mergequeue demo`: a scripted run with real nix and git in a temporary directory.
//! A generated package set (a few hundred packages, busybox bootstrap, some already
//! broken), the real server as a child process, eight changes submitted over HTTP, live
//! progress from the event stream, and a summary checked against what should happen.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use hyper::Method;

use crate::tools::fixture::Spec;
use crate::tools::harness::{BranchOpts, Harness};

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Leave the server running after the summary so the API can be explored.
    #[arg(long)]
    pub keep: bool,
    /// Number of packages in the generated set.
    #[arg(long, default_value_t = 300)]
    pub packages: usize,
    /// Work in this directory instead of a temporary one (kept afterwards).
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
    /// The changes as pull requests on a local fake forge (Gitea's API), approved by
    /// `@mergequeue r+` comments; prints what the forge shows afterwards.
    #[arg(long)]
    pub forge: bool,
}

struct Scripted {
    branch: &'static str,
    title: String,
    expect: &'static str,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    crate::tools::prereq::ensure(&["nix-instantiate", "nix-store", "git"])?;
    let started = Instant::now();
    let tmp;
    let root = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::Builder::new()
                .prefix("mergequeue-demo-")
                .tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let spec = Spec {
        packages: args.packages,
        seed: 2026,
        build_secs: (0.0, 0.3),
        ..Spec::default()
    };
    let forge = match args.forge {
        true => Some(crate::tools::demo_forge::start(&root).await?),
        false => None,
    };
    let opts = BranchOpts {
        batch_delay_secs: 2,
        extra_toml: forge.as_ref().map(|f| f.toml.clone()).unwrap_or_default(),
        ..BranchOpts::default()
    };
    let bin = std::env::current_exe()?;
    println!("mergequeue demo in {}", root.display());
    let mut h = Harness::create(&root, &spec, &opts, &bin)?;
    println!(
        "  generated {} packages ({} already broken: {}), pushed to {}",
        h.set.names.len(),
        h.set.broken.len(),
        h.set.broken.join(", "),
        h.upstream.display()
    );

    // Pick the packages the scripted changes touch.
    let leaves = h.set.healthy_leaves();
    anyhow::ensure!(
        leaves.len() >= 6,
        "the generated set has too few healthy leaves; use more --packages"
    );
    let broken = h
        .set
        .broken
        .first()
        .cloned()
        .context("the generated set has no broken package")?;
    let (a, b, c, d, e, f) = (
        &leaves[0], &leaves[1], &leaves[2], &leaves[3], &leaves[4], &leaves[5],
    );
    let mut script = vec![];
    let mut push =
        |h: &mut Harness,
         branch: &'static str,
         title: String,
         expect: &'static str,
         edit: &dyn Fn(&mut crate::tools::fixture::PackageSet) -> std::io::Result<()>|
         -> anyhow::Result<()> {
            h.change(branch, &title, edit)?;
            script.push(Scripted {
                branch,
                title,
                expect,
            });
            Ok(())
        };
    push(&mut h, "bump-a", format!("{a}: update"), "merged", &|s| {
        s.bump(a).map(|_| ())
    })?;
    push(&mut h, "bump-b", format!("{b}: update"), "merged", &|s| {
        s.bump(b).map(|_| ())
    })?;
    push(
        &mut h,
        "break-c",
        format!("{c}: update (breaks its build)"),
        "rejected",
        &|s| {
            s.bump(c)?;
            s.break_build(c)
        },
    )?;
    push(
        &mut h,
        "eval-d",
        format!("{d}: refactor (fails to evaluate)"),
        "rejected",
        &|s| s.break_eval(d),
    )?;
    push(
        &mut h,
        "conflict-a",
        format!("{a}: a different update (conflicts)"),
        "rejected",
        &|s| {
            s.bump(a)?;
            s.bump(a).map(|_| ())
        },
    )?;
    push(
        &mut h,
        "touch-broken",
        format!("{broken}: update (still broken, as before)"),
        "merged",
        &|s| s.bump(&broken).map(|_| ()),
    )?;
    push(&mut h, "bump-e", format!("{e}: update"), "merged", &|s| {
        s.bump(e).map(|_| ())
    })?;
    push(
        &mut h,
        "add-pkg",
        format!("new package depending on {f}"),
        "merged",
        &|s| s.add_package("hello-mq", &[f]),
    )?;
    push(
        &mut h,
        "add-failing",
        format!("newtool: init (a new package whose build fails), depends on {f}"),
        "rejected",
        &|s| {
            s.add_package("newtool", &[f])?;
            s.break_build("newtool")
        },
    )?;
    push(
        &mut h,
        "readme",
        "README: document the channels (no package changes)".into(),
        "merged",
        &|s| std::fs::write(s.dir.join("README.md"), "Channels: see docs.\n"),
    )?;
    push(
        &mut h,
        "cancel-me",
        "an update withdrawn by its author".into(),
        "cancelled",
        &|s| s.bump(f).map(|_| ()),
    )?;

    h.start_server().await?;
    println!(
        "  coordinator listening on http://{0} (web UI: http://{0}/; log: {1})\n",
        h.listen,
        root.join("server.log").display()
    );
    let ids = match &forge {
        Some(f) => {
            let list: Vec<_> = script
                .iter()
                .map(|s| (s.branch, s.title.clone(), s.expect))
                .collect();
            f.submit(&mut h, &list).await?
        }
        None => submit(&h, &script).await?,
    };

    // Live progress from the event stream until every change is final.
    let mut after = 0;
    let deadline = Instant::now() + Duration::from_secs(900);
    let finals = loop {
        let events = h
            .client
            .ok(Method::GET, &format!("/api/v1/events?after={after}"), None)
            .await?;
        for ev in events.as_array().into_iter().flatten() {
            after = ev["id"].as_i64().unwrap_or(after);
            let t = started.elapsed().as_secs_f64();
            println!("  [{t:6.1}s] {}", ev["text"].as_str().unwrap_or_default());
        }
        let mut states = vec![];
        for id in &ids {
            states.push(h.change_status(*id).await?);
        }
        if states.iter().all(|c| {
            matches!(
                c["state"].as_str(),
                Some("merged" | "rejected" | "cancelled")
            )
        }) {
            break states;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the demo did not finish within 15 minutes"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };

    // Summary.
    let candidates = h
        .client
        .ok(Method::GET, "/api/v1/repos/pkgs/candidates", None)
        .await?;
    let builds: u64 = candidates
        .as_array()
        .into_iter()
        .flatten()
        .map(|k| k["builds"].as_u64().unwrap_or(0))
        .sum();
    let extra: u64 = candidates
        .as_array()
        .into_iter()
        .flatten()
        .map(|k| k["extra_builds"].as_u64().unwrap_or(0))
        .sum();
    println!("\nSummary");
    let mut as_expected = true;
    for ((s, c), id) in script.iter().zip(&finals).zip(&ids) {
        let state = c["state"].as_str().unwrap_or("?");
        let ok = state == s.expect;
        as_expected &= ok;
        let why = match state {
            "merged" => format!(
                "landed in {}",
                &c["landed_commit"].as_str().unwrap_or("")
                    [..12.min(c["landed_commit"].as_str().unwrap_or("").len())]
            ),
            _ => c["reason"]
                .as_str()
                .unwrap_or("")
                .lines()
                .next()
                .unwrap_or("")
                .to_string(),
        };
        println!(
            "  #{id:<2} {:<9} {}{}\n        {why}",
            state,
            s.title,
            if ok { "" } else { "   <-- UNEXPECTED" }
        );
    }
    let head = h.upstream_head("master")?;
    let landed: Vec<&str> = finals
        .iter()
        .filter_map(|c| c["landed_commit"].as_str())
        .collect();
    let head_tested = landed.contains(&head.as_str());
    as_expected &= head_tested;
    println!(
        "\n  master is at {} ({}); {} builds for verdicts, {} extra builds spent on attribution; wall time {:.1} s",
        &head[..12],
        if head_tested { "a tested candidate" } else { "NOT a tested candidate" },
        builds,
        extra,
        started.elapsed().as_secs_f64()
    );
    if let Some(rejected) = finals
        .iter()
        .find(|c| c["reason"].as_str().is_some_and(|r| r.contains("log tail")))
    {
        println!(
            "\n  A rejection reason in full (change #{}):",
            rejected["id"]
        );
        for l in rejected["reason"].as_str().unwrap_or("").lines() {
            println!("    {l}");
        }
    }
    if let Some(f) = &forge {
        f.show(script.len()).await?;
    }
    if args.keep {
        println!(
            "\nThe server keeps running at http://{0}; open the web UI at http://{0}/ or try:\n  curl http://{0}/api/v1/repos/pkgs/queue\n  curl http://{0}/metrics\n  export MERGEQUEUE_TOKEN={1}\n  {2} status --server {0} --repo pkgs 1\nPress Ctrl-C to stop.",
            h.listen,
            h.token,
            bin.display()
        );
        let _ = tokio::signal::ctrl_c().await;
    }
    h.stop_server(false)?;
    println!(
        "\n{}",
        if as_expected {
            "Demo went as expected."
        } else {
            "Demo did NOT go as expected."
        }
    );
    Ok(if as_expected {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Submits the scripted changes over the API and cancels the one to withdraw.
async fn submit(h: &Harness, script: &[Scripted]) -> anyhow::Result<Vec<u64>> {
    let mut ids = vec![];
    for s in script {
        let v = h.submit(s.branch, &s.title, "normal").await?;
        let id = v["id"].as_u64().context("submit returned no id")?;
        println!("  submitted #{id} {}", s.title);
        ids.push(id);
    }
    let cancel_id = ids[script
        .iter()
        .position(|s| s.expect == "cancelled")
        .expect("scripted")];
    h.client
        .ok(
            Method::DELETE,
            &format!("/api/v1/repos/pkgs/changes/{cancel_id}"),
            None,
        )
        .await?;
    println!("  cancelled #{cancel_id}\n");
    Ok(ids)
}
