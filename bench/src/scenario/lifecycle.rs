//! Pod lifecycles: RunPodSandbox → CreateContainer → StartContainer → ExecSync →
//! StopContainer → RemoveContainer → StopPodSandbox → RemovePodSandbox, one container
//! per pod, `concurrency` pods in flight at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::try_join_all;

use crate::cli::Workload;
use crate::kubelet_config::Pod;
use crate::pod::{self, Timings};
use crate::resources::Watched;
use crate::results::LifecycleResult;
use crate::run::{ReadyImage, Run};
use crate::stats::Summary;

/// What to run.
pub struct Plan<'a> {
    /// The pods' workload.
    pub workload: &'a Workload,
    /// The image, present.
    pub image: &'a ReadyImage,
    /// Measured lifecycles.
    pub lifecycles: usize,
    /// At once.
    pub concurrency: usize,
    /// Unmeasured lifecycles first.
    pub warmup: usize,
    /// Distinguishes pod names of several lifecycle runs in one suite.
    pub scenario: &'a str,
}

/// What one worker measured.
#[derive(Default)]
struct Measured {
    timings: Timings,
    running: Vec<Duration>,
    total: Vec<Duration>,
}

/// Runs the plan, sampling the daemon's memory and CPU while the measured part runs.
pub async fn run(run: &Run, watched: &Watched, plan: &Plan<'_>) -> anyhow::Result<LifecycleResult> {
    let exec: Vec<String> = plan
        .workload
        .exec
        .split_whitespace()
        .map(String::from)
        .collect();
    for n in 0..plan.warmup {
        let pod = Pod::new(&run.id, &format!("{}-warmup", plan.scenario), n);
        one(run, plan, &exec, pod, &mut Measured::default()).await?;
    }

    let next = AtomicUsize::new(0);
    let sampler = watched.sample();
    let started = Instant::now();
    let workers = (0..plan.concurrency.max(1)).map(|_| async {
        let mut measured = Measured::default();
        loop {
            let n = next.fetch_add(1, Ordering::Relaxed);
            if n >= plan.lifecycles {
                return anyhow::Ok(measured);
            }
            let pod = Pod::new(&run.id, plan.scenario, n);
            one(run, plan, &exec, pod, &mut measured).await?;
        }
    });
    // The first failure cancels the other workers; teardown finds what they left.
    let results = try_join_all(workers).await?;
    let wall = started.elapsed();
    let daemon = sampler.stop().await;

    let mut all = Measured::default();
    for m in results {
        all.timings.merge(m.timings);
        all.running.extend(m.running);
        all.total.extend(m.total);
    }
    let per_pod = |s: f64| s / plan.lifecycles.max(1) as f64;
    Ok(LifecycleResult {
        lifecycles: plan.lifecycles,
        concurrency: plan.concurrency.max(1),
        wall_s: wall.as_secs_f64(),
        pods_per_s: plan.lifecycles as f64 / wall.as_secs_f64().max(1e-9),
        rpcs: all
            .timings
            .0
            .iter()
            .map(|(rpc, samples)| (rpc.to_string(), Summary::of(samples)))
            .collect(),
        pod_running: Summary::of(&all.running),
        total: Summary::of(&all.total),
        daemon_cpu_s_per_pod: daemon.as_ref().map(|d| per_pod(d.cpu_s)),
        children_cpu_s_per_pod: daemon.as_ref().map(|d| per_pod(d.children_cpu_s)),
        daemon,
    })
}

/// One lifecycle of `pod`.
async fn one(
    run: &Run,
    plan: &Plan<'_>,
    exec: &[String],
    pod: Pod,
    measured: &mut Measured,
) -> anyhow::Result<()> {
    let running = pod::start(
        run,
        plan.workload,
        plan.image,
        pod,
        1,
        &mut measured.timings,
    )
    .await?;
    measured.running.push(running.running_after);
    pod::exec(run, &running, exec, &mut measured.timings).await?;
    let life = pod::remove(run, plan.workload, running, &mut measured.timings).await?;
    measured.total.push(life);
    Ok(())
}
