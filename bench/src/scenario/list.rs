//! List latency with many pods: P pods of C running containers each, then ListPodSandbox
//! and ListContainers timed as kubelet calls them (unfiltered for the relist, and by the
//! `io.kubernetes.pod.uid` label per pod), then everything removed again.
//!
//! With the pods running, the helper processes (one per container or per pod) and the
//! daemon are measured too: this is the steady state of a busy node.

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crust_proto::cri;
use futures_util::future::try_join_all;
use prost::Message;

use crate::cli::{ListArgs, Workload};
use crate::kubelet_config::{Pod, pod_selector};
use crate::pod::{self, RunningPod, Timings};
use crate::resources::{DaemonLoad, Helpers, Watched};
use crate::results::ListResult;
use crate::run::{ReadyImage, Run};
use crate::stats::Summary;

/// Untimed calls before each timed series, so connection and cache warm-up is not
/// counted.
const WARMUP_CALLS: usize = 10;

/// How often each answer is decoded to time decoding alone.
const DECODE_RUNS: usize = 50;

/// How long the node rests between set-up and measuring, so short-lived set-up work
/// (CNI plugins, runc, allocator caches) is over.
const SETTLE: Duration = Duration::from_secs(2);

/// Runs the list scenario.
pub async fn run(
    run: &Run,
    watched: &Watched,
    workload: &Workload,
    image: &ReadyImage,
    args: &ListArgs,
) -> anyhow::Result<ListResult> {
    anyhow::ensure!(args.pods > 0, "the list scenario needs at least one pod");
    let pods = Mutex::new(Vec::new());
    let setup = set_up(run, watched, workload, image, args, &pods).await;
    // Whatever happens next, the pods that did start are removed below.
    let pods = pods.into_inner().unwrap_or_else(|e| e.into_inner());
    let measured = match setup {
        Ok(setup) => measure(run, watched, args, &pods).await.map(|r| (setup, r)),
        Err(err) => Err(err),
    };
    let teardown = tear_down(run, workload, pods, args.setup_concurrency).await;
    let (setup, mut result) = measured?;
    result.setup_s = setup.seconds;
    result.setup_daemon = setup.daemon;
    result.helpers_one_pod = setup.helpers_one_pod;
    result.teardown_s = teardown?;
    Ok(result)
}

/// What setting up measured.
struct Setup {
    /// Seconds to start all pods (without the pause after the first).
    seconds: f64,
    /// The daemon meanwhile.
    daemon: Option<DaemonLoad>,
    /// The helpers while only the first pod ran.
    helpers_one_pod: Option<Helpers>,
}

/// Starts all pods: the first alone, to measure its helpers on a quiet node (a helper's
/// memory may depend on how many pods the node has), then the rest,
/// `setup_concurrency` at a time.
async fn set_up(
    run: &Run,
    watched: &Watched,
    workload: &Workload,
    image: &ReadyImage,
    args: &ListArgs,
    pods: &Mutex<Vec<RunningPod>>,
) -> anyhow::Result<Setup> {
    let sampler = watched.sample();
    let started = Instant::now();
    let start = |n: usize| async move {
        let pod = Pod::new(&run.id, "list", n);
        let mut timings = Timings::default();
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
        anyhow::Ok(())
    };
    start(0).await?;
    let first = started.elapsed();
    tokio::time::sleep(SETTLE).await;
    let helpers_one_pod = watched.helpers();

    let started = Instant::now();
    let next = AtomicUsize::new(1);
    let workers = (0..args.setup_concurrency.max(1)).map(|_| async {
        loop {
            let n = next.fetch_add(1, Ordering::Relaxed);
            if n >= args.pods {
                return anyhow::Ok(());
            }
            start(n).await?;
        }
    });
    try_join_all(workers).await?;
    Ok(Setup {
        seconds: (first + started.elapsed()).as_secs_f64(),
        daemon: sampler.stop().await,
        helpers_one_pod,
    })
}

/// Measures memory at rest and times the List calls.
async fn measure(
    run: &Run,
    watched: &Watched,
    args: &ListArgs,
    pods: &[RunningPod],
) -> anyhow::Result<ListResult> {
    tokio::time::sleep(SETTLE).await;
    let daemon_with_pods = watched.daemon_memory();
    let helpers = watched.helpers();
    let per_pod = |total: u64| total as f64 / pods.len().max(1) as f64;

    let containers = args.pods * args.containers_per_pod;
    let n = args.list_iterations;
    let svc = run.cri.runtime.clone();
    let cri = &run.cri;
    let uid = |i: usize| pods[i % pods.len()].pod.uid.clone();
    let mut result = ListResult::default();

    let name = "ListPodSandbox";
    let answer = series(&mut result, name, n, |_| {
        let mut svc = svc.clone();
        async move {
            let request = cri::ListPodSandboxRequest { filter: None };
            let (answer, took) = cri.timed(name, svc.list_pod_sandbox(request)).await?;
            check(name, answer.items.len() >= args.pods, answer.items.len())?;
            Ok((answer, took))
        }
    })
    .await?;
    decoding(&mut result, name, &answer);

    let name = "ListPodSandbox by pod uid";
    let answer = series(&mut result, name, n, |i| {
        let mut svc = svc.clone();
        let filter = cri::PodSandboxFilter {
            label_selector: pod_selector(&uid(i)),
            ..Default::default()
        };
        async move {
            let request = cri::ListPodSandboxRequest {
                filter: Some(filter),
            };
            let (answer, took) = cri.timed(name, svc.list_pod_sandbox(request)).await?;
            check(name, answer.items.len() == 1, answer.items.len())?;
            Ok((answer, took))
        }
    })
    .await?;
    decoding(&mut result, name, &answer);

    let name = "ListContainers";
    let answer = series(&mut result, name, n, |_| {
        let mut svc = svc.clone();
        async move {
            let request = cri::ListContainersRequest { filter: None };
            let (answer, took) = cri.timed(name, svc.list_containers(request)).await?;
            let got = answer.containers.len();
            check(name, got >= containers, got)?;
            Ok((answer, took))
        }
    })
    .await?;
    decoding(&mut result, name, &answer);

    let name = "ListContainers by pod uid";
    let answer = series(&mut result, name, n, |i| {
        let mut svc = svc.clone();
        let filter = cri::ContainerFilter {
            label_selector: pod_selector(&uid(i)),
            ..Default::default()
        };
        async move {
            let request = cri::ListContainersRequest {
                filter: Some(filter),
            };
            let (answer, took) = cri.timed(name, svc.list_containers(request)).await?;
            let got = answer.containers.len();
            check(name, got == args.containers_per_pod, got)?;
            Ok((answer, took))
        }
    })
    .await?;
    decoding(&mut result, name, &answer);

    result.pods = pods.len();
    result.containers = containers;
    result.daemon_with_pods = daemon_with_pods;
    result.helpers_rss_anon_kb_per_pod = helpers.as_ref().map(|h| per_pod(h.total_rss_anon_kb));
    result.helpers_pss_kb_per_pod = helpers.as_ref().map(|h| per_pod(h.total_pss_kb));
    result.helpers = helpers;
    Ok(result)
}

/// Calls `call(i)` [`WARMUP_CALLS`] times untimed, then `iterations` times timed, and
/// records the timings under `name`; returns the last answer.
async fn series<T, F, Fut>(
    result: &mut ListResult,
    name: &str,
    iterations: usize,
    mut call: F,
) -> anyhow::Result<T>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<(T, Duration)>>,
{
    let mut samples = Vec::with_capacity(iterations);
    let mut last = None;
    for i in 0..WARMUP_CALLS + iterations.max(1) {
        let (answer, took) = call(i).await?;
        if i >= WARMUP_CALLS {
            samples.push(took);
        }
        last = Some(answer);
    }
    result.calls.insert(name.to_string(), Summary::of(&samples));
    // The loop runs at least once, so there is an answer.
    last.ok_or_else(|| anyhow::anyhow!("{name}: no answer"))
}

/// Records the size of `answer` encoded and how long this client takes to decode it,
/// which separates the client's share of the latency from the runtime's.
fn decoding<T: Message + Default>(result: &mut ListResult, name: &str, answer: &T) {
    let bytes = answer.encode_to_vec();
    let samples: Vec<Duration> = (0..DECODE_RUNS)
        .map(|_| {
            let start = Instant::now();
            let decoded = T::decode(bytes.as_slice());
            let took = start.elapsed();
            // Keep the decode from being optimized away.
            std::hint::black_box(decoded.is_ok());
            took
        })
        .collect();
    result.response_bytes.insert(name.to_string(), bytes.len());
    result
        .client_decode
        .insert(name.to_string(), Summary::of(&samples));
}

/// A List answer must hold what the run created: an unfiltered one at least that
/// (pods from outside the benchmark may add to it), a filtered one exactly its pod's.
/// Anything else means the runtime answered wrongly and its latency is not comparable.
fn check(what: &str, ok: bool, got: usize) -> anyhow::Result<()> {
    anyhow::ensure!(ok, "{what}: unexpected answer with {got} items");
    Ok(())
}

/// Removes all pods, `concurrency` at a time; returns the seconds it took.
async fn tear_down(
    run: &Run,
    workload: &Workload,
    pods: Vec<RunningPod>,
    concurrency: usize,
) -> anyhow::Result<f64> {
    let started = Instant::now();
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
    Ok(started.elapsed().as_secs_f64())
}
