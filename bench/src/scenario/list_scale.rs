//! List latency as a node's container count grows: 500, 5,000, 20,000 containers.
//!
//! A node never runs 20,000 containers at once, but it keeps that many records: kubelet
//! leaves exited containers (restarts, init containers, jobs) until garbage collection
//! removes them, and every relist answers with all of them. So this scenario makes
//! exited containers, the cheap and faithful way to have many: pods of
//! `containers_per_pod` containers that each run `exit 0` once (created and started as
//! kubelet does, with kubelet's labels and annotations; no process is left), growing
//! to each size in turn and timing the List calls kubelet makes at each: the relist
//! (unfiltered), its running-only variant, one pod's containers by label, and
//! ListPodSandbox. An answer too big for the client's 16 MiB limit (kubelet's) is
//! recorded as what the client got, not as a failure.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crust_proto::cri;
use futures_util::future::try_join_all;
use prost::Message;

use crate::cli::{ListScaleArgs, Workload};
use crate::kubelet_config::{Pod, pod_selector};
use crate::pod::{self, RunningPod, Timings};
use crate::resources::Watched;
use crate::results::{ListScalePoint, ListScaleResult};
use crate::run::{ReadyImage, Run};
use crate::stats::Summary;

/// Untimed calls before each timed series.
const WARMUP_CALLS: usize = 3;

/// Runs the scenario: grows to each size, measures, then removes everything.
pub async fn run(
    run: &Run,
    watched: &Watched,
    workload: &Workload,
    image: &ReadyImage,
    args: &ListScaleArgs,
) -> anyhow::Result<ListScaleResult> {
    anyhow::ensure!(
        args.containers_per_pod > 0,
        "containers per pod must be positive"
    );
    let mut sizes = args.sizes.clone();
    sizes.sort_unstable();
    let workload = Workload {
        command: args.scale_command.clone(),
        ..workload.clone()
    };
    let pods = Mutex::new(Vec::new());
    let mut result = ListScaleResult {
        containers_per_pod: args.containers_per_pod,
        ..Default::default()
    };
    let grown: anyhow::Result<()> = async {
        for &size in &sizes {
            let want = size.div_ceil(args.containers_per_pod);
            let started = Instant::now();
            grow(run, &workload, image, args, &pods, want).await?;
            let setup_s = started.elapsed().as_secs_f64();
            tokio::time::sleep(Duration::from_secs(2)).await;
            let uids: Vec<String> = pods
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|p: &RunningPod| p.pod.uid.clone())
                .collect();
            let mut point = measure(run, args, &uids).await?;
            point.containers = want * args.containers_per_pod;
            point.pods = want;
            point.setup_s = setup_s;
            point.daemon = watched.daemon_memory();
            crate::results::print_list_scale_point(&point);
            result.points.push(point);
        }
        Ok(())
    }
    .await;
    let pods = pods.into_inner().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let teardown = tear_down(run, &workload, pods, args.setup_concurrency).await;
    result.teardown_s = started.elapsed().as_secs_f64();
    grown?;
    teardown?;
    Ok(result)
}

/// Starts pods until there are `want`, `setup_concurrency` at a time.
async fn grow(
    run: &Run,
    workload: &Workload,
    image: &ReadyImage,
    args: &ListScaleArgs,
    pods: &Mutex<Vec<RunningPod>>,
    want: usize,
) -> anyhow::Result<()> {
    let next = AtomicUsize::new(pods.lock().unwrap_or_else(|e| e.into_inner()).len());
    let workers = (0..args.setup_concurrency.max(1)).map(|_| async {
        loop {
            let n = next.fetch_add(1, Ordering::Relaxed);
            if n >= want {
                return anyhow::Ok(());
            }
            let mut timings = Timings::default();
            let pod = Pod::new(&run.id, "scale", n);
            let running = pod::start(
                run,
                workload,
                image,
                pod,
                args.containers_per_pod,
                &mut timings,
            )
            .await?;
            pods.lock().unwrap_or_else(|e| e.into_inner()).push(running);
        }
    });
    try_join_all(workers).await?;
    Ok(())
}

/// Times each List variant at the current size.
async fn measure(
    run: &Run,
    args: &ListScaleArgs,
    uids: &[String],
) -> anyhow::Result<ListScalePoint> {
    let mut point = ListScalePoint::default();
    let running = cri::ContainerFilter {
        state: Some(cri::ContainerStateValue {
            state: cri::ContainerState::ContainerRunning as i32,
        }),
        ..Default::default()
    };
    let variants: Vec<(&str, Option<cri::ContainerFilter>)> = vec![
        ("ListContainers", None),
        ("ListContainers running", Some(running)),
        ("ListContainers by pod uid", None),
    ];
    for (name, filter) in variants {
        let mut samples = Vec::new();
        let mut bytes = 0;
        for i in 0..WARMUP_CALLS + args.list_iterations.max(1) {
            let filter = if name == "ListContainers by pod uid" {
                Some(cri::ContainerFilter {
                    label_selector: pod_selector(&uids[i % uids.len().max(1)]),
                    ..Default::default()
                })
            } else {
                filter.clone()
            };
            let mut svc = run.cri.runtime.clone();
            let request = cri::ListContainersRequest { filter };
            match run.cri.timed(name, svc.list_containers(request)).await {
                Ok((answer, took)) => {
                    if i >= WARMUP_CALLS {
                        samples.push(took);
                    }
                    bytes = answer.encoded_len();
                }
                Err(e) => {
                    // Above the client's message limit: what kubelet would get.
                    point.errors.insert(name.to_string(), format!("{e:#}"));
                    break;
                }
            }
        }
        point.calls.insert(name.to_string(), Summary::of(&samples));
        point.response_bytes.insert(name.to_string(), bytes);
    }
    let name = "ListPodSandbox";
    let mut samples = Vec::new();
    let mut bytes = 0;
    for i in 0..WARMUP_CALLS + args.list_iterations.max(1) {
        let mut svc = run.cri.runtime.clone();
        let request = cri::ListPodSandboxRequest { filter: None };
        let (answer, took) = run.cri.timed(name, svc.list_pod_sandbox(request)).await?;
        if i >= WARMUP_CALLS {
            samples.push(took);
        }
        bytes = answer.encoded_len();
    }
    point.calls.insert(name.to_string(), Summary::of(&samples));
    point.response_bytes.insert(name.to_string(), bytes);
    Ok(point)
}

/// Removes all pods, `concurrency` at a time.
async fn tear_down(
    run: &Run,
    workload: &Workload,
    pods: Vec<RunningPod>,
    concurrency: usize,
) -> anyhow::Result<()> {
    let queue = Mutex::new(pods);
    let workers = (0..concurrency.max(1)).map(|_| async {
        let mut timings = Timings::default();
        loop {
            let Some(pod) = queue.lock().unwrap_or_else(|e| e.into_inner()).pop() else {
                return anyhow::Ok(());
            };
            pod::remove(run, workload, pod, &mut timings).await?;
        }
    });
    try_join_all(workers).await?;
    Ok(())
}
