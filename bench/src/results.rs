//! The results of a run: what `--json` writes and `chart` reads, and their plain-text
//! tables on stdout.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::procfs::Memory;
use crate::resources::{DaemonLoad, Helpers};
use crate::stats::Summary;

/// Everything one invocation measured. Scenarios not run are absent.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Results {
    /// The name given with `--name` (crust, containerd).
    pub name: String,
    /// `runtime_name` from the Version RPC.
    #[serde(default)]
    pub runtime_name: String,
    /// `runtime_version` from the Version RPC.
    #[serde(default)]
    pub runtime_version: String,
    /// Seconds since the epoch when the run started.
    pub unix_time: u64,
    /// The machine.
    pub host: Host,
    /// The daemon before any scenario ran.
    #[serde(default)]
    pub daemon_idle: Option<Memory>,
    /// The daemon after every scenario's objects were removed again.
    #[serde(default)]
    pub daemon_after: Option<Memory>,
    /// Cold pulls.
    #[serde(default)]
    pub pull: Option<PullResult>,
    /// Pod lifecycle runs (sequential first, then concurrent).
    #[serde(default)]
    pub lifecycle: Vec<LifecycleResult>,
    /// List latency with many pods.
    #[serde(default)]
    pub list: Option<ListResult>,
    /// List latency as the container count grows.
    #[serde(default)]
    pub list_scale: Option<ListScaleResult>,
    /// Helper processes measured on their own (`memory`).
    #[serde(default)]
    pub helpers: Option<Helpers>,
}

/// The machine the numbers come from.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Host {
    /// Online CPUs.
    pub cpus: usize,
    /// `uname -r`.
    pub kernel: String,
}

impl Host {
    /// This machine.
    pub fn current() -> Host {
        Host {
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
        }
    }
}

/// Cold pulls of one image.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PullResult {
    /// The image reference.
    pub image: String,
    /// Each pull, in ms, in order.
    pub runs_ms: Vec<f64>,
    /// Their distribution.
    pub summary: Summary,
    /// The daemon's peak memory and CPU time while pulling.
    #[serde(default)]
    pub daemon: Option<DaemonLoad>,
    /// The daemon's memory once the pulls are over (and the image removed).
    #[serde(default)]
    pub daemon_after: Option<Memory>,
}

/// One lifecycle run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LifecycleResult {
    /// Measured lifecycles.
    pub lifecycles: usize,
    /// Lifecycles in flight at once.
    pub concurrency: usize,
    /// Wall-clock seconds for all of them.
    pub wall_s: f64,
    /// Lifecycles completed per second.
    pub pods_per_s: f64,
    /// Per RPC.
    pub rpcs: BTreeMap<String, Summary>,
    /// RunPodSandbox request → StartContainer answer.
    pub pod_running: Summary,
    /// The whole lifecycle, RunPodSandbox request → RemovePodSandbox answer.
    pub total: Summary,
    /// The daemon's peak memory and CPU time during the run.
    pub daemon: Option<DaemonLoad>,
    /// Daemon CPU seconds (own threads) per lifecycle.
    pub daemon_cpu_s_per_pod: Option<f64>,
    /// CPU seconds of the daemon's waited-for children per lifecycle.
    pub children_cpu_s_per_pod: Option<f64>,
}

/// List latency with many pods.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ListResult {
    /// Pods present.
    pub pods: usize,
    /// Containers present.
    pub containers: usize,
    /// Per call variant (`ListContainers`, `ListContainers by pod uid`, ...), as the
    /// client sees it: request, runtime, transfer and decoding.
    pub calls: BTreeMap<String, Summary>,
    /// Encoded size of each variant's answer, bytes.
    #[serde(default)]
    pub response_bytes: BTreeMap<String, usize>,
    /// How long decoding each variant's answer takes this client, alone: the part of
    /// `calls` no runtime can remove.
    #[serde(default)]
    pub client_decode: BTreeMap<String, Summary>,
    /// Seconds to start all pods.
    pub setup_s: f64,
    /// Seconds to remove them all.
    pub teardown_s: f64,
    /// The daemon while setting up (peak) and its CPU time.
    pub setup_daemon: Option<DaemonLoad>,
    /// The daemon with all pods running, settled.
    pub daemon_with_pods: Option<Memory>,
    /// The helper processes with all pods running.
    pub helpers: Option<Helpers>,
    /// The helper processes while only the first pod ran.
    #[serde(default)]
    pub helpers_one_pod: Option<Helpers>,
    /// Helpers' summed RssAnon per pod, kB.
    pub helpers_rss_anon_kb_per_pod: Option<f64>,
    /// Helpers' summed Pss per pod, kB.
    pub helpers_pss_kb_per_pod: Option<f64>,
}

/// List latency at growing container counts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ListScaleResult {
    /// Containers in each pod.
    pub containers_per_pod: usize,
    /// One point per size, smallest first.
    pub points: Vec<ListScalePoint>,
    /// Seconds to remove everything at the end.
    pub teardown_s: f64,
}

/// List latency at one container count.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ListScalePoint {
    /// Containers present (all exited).
    pub containers: usize,
    /// Pods present.
    pub pods: usize,
    /// Seconds it took to grow to this size from the previous one.
    pub setup_s: f64,
    /// Per call variant, as the client sees it.
    pub calls: BTreeMap<String, Summary>,
    /// Encoded size of each variant's answer, bytes.
    pub response_bytes: BTreeMap<String, usize>,
    /// Variants the client could not receive (over its 16 MiB limit), with the error.
    #[serde(default)]
    pub errors: BTreeMap<String, String>,
    /// The daemon at this size.
    pub daemon: Option<Memory>,
}

/// Prints one size's List latencies.
pub fn print_list_scale_point(p: &ListScalePoint) {
    let title = format!(
        "list latency with {} exited containers in {} pods (grown in {:.1} s)",
        p.containers, p.pods, p.setup_s
    );
    print_table(&title, p.calls.iter().map(|(k, v)| (k.as_str(), v)));
    for (call, bytes) in &p.response_bytes {
        println!("  {call}: {bytes} bytes");
    }
    for (call, error) in &p.errors {
        println!("  {call}: {error}");
    }
    if let Some(m) = &p.daemon {
        print_memory("  daemon", m);
    }
}

impl Results {
    /// Writes the results as pretty JSON.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_string_pretty(self)?;
        std::fs::write(path, json + "\n").with_context(|| format!("write {}", path.display()))
    }

    /// Reads results written by [`Results::write`].
    pub fn read(path: &Path) -> anyhow::Result<Results> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
    }
}

/// Prints a memory reading as one line.
pub fn print_memory(what: &str, m: &Memory) {
    println!(
        "{what}: VmRSS {:.1} MiB, RssAnon {:.1} MiB, RssFile {:.1} MiB, Pss {:.1} MiB",
        mib(m.vm_rss_kb as f64),
        mib(m.rss_anon_kb as f64),
        mib(m.rss_file_kb as f64),
        mib(m.pss_kb as f64)
    );
}

/// Prints the helpers' memory as one line.
pub fn print_helpers(h: &Helpers) {
    println!(
        "{} x{}: avg VmRSS {:.0} kB, avg RssAnon {:.0} kB, avg Pss {:.0} kB; total RssAnon {:.1} MiB",
        h.name,
        h.count,
        h.avg_vm_rss_kb,
        h.avg_rss_anon_kb,
        h.avg_pss_kb,
        mib(h.total_rss_anon_kb as f64)
    );
}

/// Prints a table of summaries, one row each.
pub fn print_table<'a>(title: &str, rows: impl IntoIterator<Item = (&'a str, &'a Summary)>) {
    println!("{title}");
    println!(
        "  {:<34} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "", "n", "min ms", "p50 ms", "p90 ms", "p99 ms", "max ms"
    );
    for (name, s) in rows {
        println!(
            "  {:<34} {:>5} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            name, s.n, s.min_ms, s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms
        );
    }
}

/// Prints one lifecycle result.
pub fn print_lifecycle(r: &LifecycleResult) {
    let title = format!(
        "pod lifecycles: {} at concurrency {} in {:.1} s ({:.2} pods/s)",
        r.lifecycles, r.concurrency, r.wall_s, r.pods_per_s
    );
    let rows = r.rpcs.iter().map(|(k, v)| (k.as_str(), v)).chain([
        ("pod running", &r.pod_running),
        ("whole lifecycle", &r.total),
    ]);
    print_table(&title, rows);
    if let Some(d) = &r.daemon {
        println!(
            "  daemon: peak VmRSS {:.1} MiB (RssAnon {:.1} MiB); CPU {:.1} ms/pod own, {:.1} ms/pod children",
            mib(d.peak.vm_rss_kb as f64),
            mib(d.peak.rss_anon_kb as f64),
            r.daemon_cpu_s_per_pod.unwrap_or(0.0) * 1e3,
            r.children_cpu_s_per_pod.unwrap_or(0.0) * 1e3
        );
    }
}

/// Prints the pull result.
pub fn print_pull(r: &PullResult) {
    let runs: Vec<String> = r.runs_ms.iter().map(|ms| format!("{ms:.0}")).collect();
    println!(
        "cold pull of {}: runs [{}] ms, p50 {:.0} ms",
        r.image,
        runs.join(", "),
        r.summary.p50_ms
    );
    if let Some(d) = &r.daemon {
        println!(
            "  daemon: peak VmRSS {:.1} MiB (RssAnon {:.1} MiB), CPU {:.2} s own, {:.2} s children",
            mib(d.peak.vm_rss_kb as f64),
            mib(d.peak.rss_anon_kb as f64),
            d.cpu_s,
            d.children_cpu_s
        );
    }
    if let Some(m) = &r.daemon_after {
        print_memory("  daemon after the pulls", m);
    }
}

/// Prints the list result.
pub fn print_list(r: &ListResult) {
    let title = format!(
        "list latency with {} pods and {} containers (set up in {:.1} s, removed in {:.1} s)",
        r.pods, r.containers, r.setup_s, r.teardown_s
    );
    print_table(&title, r.calls.iter().map(|(k, v)| (k.as_str(), v)));
    for (call, decode) in &r.client_decode {
        println!(
            "  {call}: {} bytes, decoding alone p50 {:.2} ms",
            r.response_bytes.get(call).copied().unwrap_or(0),
            decode.p50_ms
        );
    }
    if let Some(m) = &r.daemon_with_pods {
        print_memory("  daemon with all pods", m);
    }
    if let Some(h) = &r.helpers_one_pod {
        print!("  with one pod: ");
        print_helpers(h);
    }
    if let Some(h) = &r.helpers {
        print!("  with all pods: ");
        print_helpers(h);
        if let (Some(anon), Some(pss)) = (r.helpers_rss_anon_kb_per_pod, r.helpers_pss_kb_per_pod) {
            println!("  helpers per pod: RssAnon {anon:.0} kB, Pss {pss:.0} kB");
        }
    }
}

/// KiB (what /proc calls kB) to MiB.
pub fn mib(kb: f64) -> f64 {
    kb / 1024.0
}
