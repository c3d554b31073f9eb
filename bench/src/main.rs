//! crust-bench: drives any CRI v1 runtime over its unix socket, as kubelet would, and
//! measures it: pod lifecycle latency per RPC, cold image pulls, List latency with many
//! pods, and the memory and CPU the daemon and its per-pod helpers use. Results print
//! as tables and, with `--json`, as JSON for `crust-bench chart` and compare.sh.
//!
//! Every object a run creates carries the run's label and is removed at the end, also
//! after an error or Ctrl-C.

mod chart;
mod cleanup;
mod cli;
mod cri_client;
mod images;
mod kubelet_config;
mod oci_layout;
mod pod;
mod procfs;
mod resources;
mod results;
mod run;
mod scenario;
mod stats;

use std::future::Future;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;

use cli::{Cli, Command, Connection, Output, Workload};
use resources::Watched;
use results::{Host, Results};
use run::Run;
use scenario::{lifecycle, list, list_scale, pull, suite};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match &cli.command {
        Command::Chart(args) => chart::run(args),
        Command::Image(args) => images::write(args),
        Command::Memory(args) => memory(&args.output, &args.processes),
        _ => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("start the tokio runtime")?
            .block_on(cri_command(cli.command)),
    }
}

/// The subcommands that talk CRI: connect, run, tear down, write the results.
async fn cri_command(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Suite(args) => {
            let watched = Watched::from_args(&args.processes)?;
            let workload = Some(&args.workload);
            let (run, mut results) = begin(&args.connection, &args.output, workload).await?;
            let outcome = interruptible(suite::run(&run, &watched, &args, &mut results)).await;
            end(&run, &results, &args.output, workload, outcome).await
        }
        Command::Lifecycle(args) => {
            let watched = Watched::from_args(&args.processes)?;
            let workload = Some(&args.workload);
            let (run, mut results) = begin(&args.connection, &args.output, workload).await?;
            let outcome = interruptible(async {
                let image = run.ensure_image(&args.workload.image).await?;
                let plan = lifecycle::Plan {
                    workload: &args.workload,
                    image: &image,
                    lifecycles: args.lifecycle.lifecycles,
                    concurrency: args.lifecycle.concurrency,
                    warmup: args.lifecycle.warmup,
                    scenario: "lc",
                };
                let result = lifecycle::run(&run, &watched, &plan).await?;
                results::print_lifecycle(&result);
                results.lifecycle.push(result);
                Ok(())
            })
            .await;
            end(&run, &results, &args.output, workload, outcome).await
        }
        Command::Pull(args) => {
            let watched = Watched::from_args(&args.processes)?;
            let (run, mut results) = begin(&args.connection, &args.output, None).await?;
            let outcome = interruptible(async {
                let result = pull::run(&run, &watched, &args.image, args.pull.pull_runs).await?;
                results::print_pull(&result);
                results.pull = Some(result);
                Ok(())
            })
            .await;
            end(&run, &results, &args.output, None, outcome).await
        }
        Command::List(args) => {
            let watched = Watched::from_args(&args.processes)?;
            let workload = Some(&args.workload);
            let (run, mut results) = begin(&args.connection, &args.output, workload).await?;
            let outcome = interruptible(async {
                let image = run.ensure_image(&args.workload.image).await?;
                let result = list::run(&run, &watched, &args.workload, &image, &args.list).await?;
                results::print_list(&result);
                results.list = Some(result);
                Ok(())
            })
            .await;
            end(&run, &results, &args.output, workload, outcome).await
        }
        Command::ListScale(args) => {
            let watched = Watched::from_args(&args.processes)?;
            let workload = Some(&args.workload);
            let (run, mut results) = begin(&args.connection, &args.output, workload).await?;
            let outcome = interruptible(async {
                let image = run.ensure_image(&args.workload.image).await?;
                let result =
                    list_scale::run(&run, &watched, &args.workload, &image, &args.scale).await?;
                results.list_scale = Some(result);
                Ok(())
            })
            .await;
            end(&run, &results, &args.output, workload, outcome).await
        }
        Command::Chart(_) | Command::Image(_) | Command::Memory(_) => {
            unreachable!("handled without a runtime in main")
        }
    }
}

/// Connects and starts the results with the runtime's identity.
async fn begin(
    connection: &Connection,
    output: &Output,
    workload: Option<&Workload>,
) -> anyhow::Result<(Run, Results)> {
    let run = Run::start(connection, workload.map(|w| &w.log_dir)).await?;
    let results = Results {
        name: output.name.clone(),
        runtime_name: run.version.0.clone(),
        runtime_version: run.version.1.clone(),
        unix_time: now(),
        host: Host::current(),
        ..Default::default()
    };
    println!(
        "{} ({} {}), run {}",
        output.name, run.version.0, run.version.1, run.id
    );
    Ok((run, results))
}

/// Runs `scenario` until it ends or Ctrl-C arrives; on Ctrl-C the scenario is dropped
/// mid-call and the teardown finds what it left.
async fn interruptible(scenario: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::select! {
        outcome = scenario => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    }
}

/// Tears down what the run created (whatever the outcome) and writes the results, the
/// partial ones of a failed run too.
async fn end(
    run: &Run,
    results: &Results,
    output: &Output,
    workload: Option<&Workload>,
    outcome: anyhow::Result<()>,
) -> anyhow::Result<()> {
    let leftovers = run.finish(workload).await;
    if let Some(path) = &output.json {
        results.write(path)?;
    }
    outcome?;
    anyhow::ensure!(
        leftovers == 0,
        "{leftovers} objects could not be removed (see above)"
    );
    Ok(())
}

/// Seconds since the epoch.
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// `memory`: the daemon and helpers now.
fn memory(output: &Output, processes: &cli::Processes) -> anyhow::Result<()> {
    let watched = Watched::from_args(processes)?;
    let results = Results {
        name: output.name.clone(),
        unix_time: now(),
        host: Host::current(),
        daemon_idle: watched.daemon_memory(),
        helpers: watched.helpers(),
        ..Default::default()
    };
    if let Some(m) = &results.daemon_idle {
        results::print_memory("daemon", m);
    }
    if let Some(h) = &results.helpers {
        results::print_helpers(h);
    }
    if let Some(path) = &output.json {
        results.write(path)?;
    }
    Ok(())
}
