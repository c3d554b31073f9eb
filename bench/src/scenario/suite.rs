//! The whole benchmark against one runtime, in the order compare.sh relies on: the
//! daemon idle, cold pulls, sequential then concurrent lifecycles, the list scenario
//! with its helper census, and the daemon once everything is gone again.

use std::time::Duration;

use crate::cli::SuiteArgs;
use crate::resources::Watched;
use crate::results::{self, Results};
use crate::run::Run;
use crate::scenario::{lifecycle, list, pull};

/// How long the daemon rests before the final memory reading, so it can return what
/// the scenarios freed.
const REST_AFTER: Duration = Duration::from_secs(3);

/// Runs every scenario the arguments ask for, filling `results` as it goes (so a
/// failure still leaves the finished parts in them).
pub async fn run(
    run: &Run,
    watched: &Watched,
    args: &SuiteArgs,
    results: &mut Results,
) -> anyhow::Result<()> {
    results.daemon_idle = watched.daemon_idle().await;
    if let Some(m) = &results.daemon_idle {
        results::print_memory("daemon idle", m);
    }

    if let Some(image) = &args.pull_image {
        let r = pull::run(run, watched, image, args.pull.pull_runs).await?;
        results::print_pull(&r);
        results.pull = Some(r);
    }

    let image = run.ensure_image(&args.workload.image).await?;
    for (scenario, lifecycles, concurrency) in [
        ("seq", args.sequential, 1),
        ("par", args.concurrent, args.concurrency),
    ] {
        if lifecycles == 0 {
            continue;
        }
        let plan = lifecycle::Plan {
            workload: &args.workload,
            image: &image,
            lifecycles,
            concurrency,
            warmup: args.warmup,
            scenario,
        };
        let r = lifecycle::run(run, watched, &plan).await?;
        results::print_lifecycle(&r);
        results.lifecycle.push(r);
    }

    if !args.no_list {
        let r = list::run(run, watched, &args.workload, &image, &args.list).await?;
        results::print_list(&r);
        results.list = Some(r);
    }

    tokio::time::sleep(REST_AFTER).await;
    results.daemon_after = watched.daemon_idle().await;
    if let Some(m) = &results.daemon_after {
        results::print_memory("daemon after", m);
    }
    Ok(())
}
