//! The command line: one subcommand per scenario, built from small shared option groups
//! so that `suite` takes exactly the options of the scenarios it runs.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// The default container command: a shell that waits on `sleep` and exits on SIGTERM,
/// so StopContainer measures the runtime, not a grace period running out (a bare
/// `sleep` as PID 1 ignores SIGTERM).
pub const DEFAULT_COMMAND: &str = "trap 'exit 0' TERM; sleep 3600 & wait";

/// crust-bench: measures any CRI v1 runtime (crust, containerd, CRI-O) over its socket.
#[derive(Parser, Debug)]
#[command(name = "crust-bench", version, about, long_about = None)]
pub struct Cli {
    /// What to measure.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Every scenario in turn, as compare.sh runs it: idle memory, cold pull, sequential
    /// and concurrent pod lifecycles, list latency with many pods, memory after.
    Suite(SuiteArgs),
    /// Pod lifecycles: RunPodSandbox → CreateContainer → StartContainer → ExecSync →
    /// StopContainer → RemoveContainer → StopPodSandbox → RemovePodSandbox.
    Lifecycle(LifecycleCommand),
    /// Cold pulls of one image: removed before every run.
    Pull(PullCommand),
    /// ListContainers / ListPodSandbox latency with many pods and containers running.
    List(ListCommand),
    /// List latency as the container count grows (500, 5,000, 20,000 by default):
    /// exited containers in pods of many, as a node keeps them until collected.
    ListScale(ListScaleCommand),
    /// A snapshot of the daemon's and the helper processes' memory (no CRI calls).
    Memory(MemoryCommand),
    /// Draws an SVG bar chart comparing two result files.
    Chart(ChartArgs),
    /// Writes a benchmark image as an OCI image layout directory (push it with skopeo).
    Image(ImageArgs),
}

/// Where the runtime is and how long to wait for it.
#[derive(Args, Debug, Clone)]
pub struct Connection {
    /// The CRI socket: a path or a `unix://` URL.
    #[arg(long)]
    pub endpoint: String,
    /// Seconds any single RPC may take before the run fails.
    #[arg(long, default_value_t = 300)]
    pub rpc_timeout: u64,
}

impl Connection {
    /// The per-RPC deadline.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.rpc_timeout)
    }
}

/// Where results go.
#[derive(Args, Debug, Clone)]
pub struct Output {
    /// The name of the runtime under test, as results and charts show it.
    #[arg(long, default_value = "runtime")]
    pub name: String,
    /// Also write every result as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Which processes to measure.
#[derive(Args, Debug, Clone, Default)]
pub struct Processes {
    /// The runtime daemon's pid (crustd, containerd).
    #[arg(long, conflicts_with = "daemon_pidfile")]
    pub daemon_pid: Option<u32>,
    /// A file holding the daemon's pid.
    #[arg(long)]
    pub daemon_pidfile: Option<PathBuf>,
    /// Name prefix of the per-pod or per-container helper processes: `crust-monitor`,
    /// `containerd-shim`, `conmon`. Matched against argv[0]'s file name and comm.
    #[arg(long)]
    pub helper: Option<String>,
    /// Only count helpers whose command line contains this text (such as the runtime's
    /// private state directory), so other instances on the machine are left out.
    #[arg(long)]
    pub helper_match: Option<String>,
}

/// What the benchmark pods run, shaped as kubelet sends it.
#[derive(Args, Debug, Clone)]
pub struct Workload {
    /// The container image; pulled first with PullImage (and removed at the end if it
    /// was not there before).
    #[arg(long)]
    pub image: String,
    /// The container's shell command, run as `/bin/sh -c COMMAND`.
    #[arg(long, default_value = DEFAULT_COMMAND)]
    pub command: String,
    /// The ExecSync command line, split on spaces.
    #[arg(long, default_value = "/bin/true")]
    pub exec: String,
    /// The RuntimeClass handler; empty means the runtime's default.
    #[arg(long, default_value = "")]
    pub runtime_handler: String,
    /// The pods' cgroup parent in cgroupfs form; each pod gets `PARENT/pod<uid>`, as
    /// kubelet's `/kubepods/besteffort/pod<uid>`.
    #[arg(long, default_value = "/crust-bench")]
    pub cgroup_parent: String,
    /// Where pod logs (and the termination-message files kubelet would mount) go: a
    /// fresh `crust-bench-<run>` directory is made here and removed at the end.
    #[arg(long, default_value = "/tmp")]
    pub log_dir: PathBuf,
    /// Seconds StopContainer gives the container before SIGKILL.
    #[arg(long, default_value_t = 10)]
    pub stop_timeout: i64,
}

/// How many lifecycles, how many at a time.
#[derive(Args, Debug, Clone)]
pub struct LifecycleArgs {
    /// Pod lifecycles to measure.
    #[arg(long, default_value_t = 20)]
    pub lifecycles: usize,
    /// Lifecycles in flight at once.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Unmeasured lifecycles run first, so first-use costs are not counted.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
}

/// How often to pull.
#[derive(Args, Debug, Clone)]
pub struct PullArgs {
    /// Cold pulls to measure.
    #[arg(long, default_value_t = 3)]
    pub pull_runs: usize,
}

/// How many pods to list, how often.
#[derive(Args, Debug, Clone)]
pub struct ListArgs {
    /// Pods to create.
    #[arg(long, default_value_t = 100)]
    pub pods: usize,
    /// Containers in each pod.
    #[arg(long, default_value_t = 5)]
    pub containers_per_pod: usize,
    /// Timed calls of each List variant.
    #[arg(long, default_value_t = 200)]
    pub list_iterations: usize,
    /// Pods created (and removed) at once while setting up.
    #[arg(long, default_value_t = 4)]
    pub setup_concurrency: usize,
}

/// `suite`.
#[derive(Args, Debug, Clone)]
pub struct SuiteArgs {
    #[command(flatten)]
    pub connection: Connection,
    #[command(flatten)]
    pub output: Output,
    #[command(flatten)]
    pub processes: Processes,
    #[command(flatten)]
    pub workload: Workload,
    /// A (multi-layer) image for the cold pull; no pull scenario when absent.
    #[arg(long)]
    pub pull_image: Option<String>,
    #[command(flatten)]
    pub pull: PullArgs,
    /// Sequential pod lifecycles (0 skips them).
    #[arg(long, default_value_t = 20)]
    pub sequential: usize,
    /// Concurrent pod lifecycles (0 skips them).
    #[arg(long, default_value_t = 20)]
    pub concurrent: usize,
    /// Lifecycles in flight at once in the concurrent run.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Unmeasured lifecycles before the measured ones.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    #[command(flatten)]
    pub list: ListArgs,
    /// Skip the list scenario.
    #[arg(long)]
    pub no_list: bool,
}

/// `lifecycle`.
#[derive(Args, Debug, Clone)]
pub struct LifecycleCommand {
    #[command(flatten)]
    pub connection: Connection,
    #[command(flatten)]
    pub output: Output,
    #[command(flatten)]
    pub processes: Processes,
    #[command(flatten)]
    pub workload: Workload,
    #[command(flatten)]
    pub lifecycle: LifecycleArgs,
}

/// `pull`.
#[derive(Args, Debug, Clone)]
pub struct PullCommand {
    #[command(flatten)]
    pub connection: Connection,
    #[command(flatten)]
    pub output: Output,
    #[command(flatten)]
    pub processes: Processes,
    /// The image to pull cold.
    #[arg(long)]
    pub image: String,
    #[command(flatten)]
    pub pull: PullArgs,
}

/// `list`.
#[derive(Args, Debug, Clone)]
pub struct ListCommand {
    #[command(flatten)]
    pub connection: Connection,
    #[command(flatten)]
    pub output: Output,
    #[command(flatten)]
    pub processes: Processes,
    #[command(flatten)]
    pub workload: Workload,
    #[command(flatten)]
    pub list: ListArgs,
}

/// How big to grow, how often to list.
#[derive(Args, Debug, Clone)]
pub struct ListScaleArgs {
    /// Container counts to measure at, comma-separated (each rounded up to whole pods).
    #[arg(long, value_delimiter = ',', default_value = "500,5000,20000")]
    pub sizes: Vec<usize>,
    /// Containers in each pod.
    #[arg(long, default_value_t = 100)]
    pub containers_per_pod: usize,
    /// Timed calls of each List variant at each size.
    #[arg(long, default_value_t = 50)]
    pub list_iterations: usize,
    /// Pods created (and removed) at once.
    #[arg(long, default_value_t = 4)]
    pub setup_concurrency: usize,
    /// What each container runs (`/bin/sh -c COMMAND`): by default it exits at once,
    /// leaving an exited container and no process.
    #[arg(long = "scale-command", default_value = "exit 0")]
    pub scale_command: String,
}

/// `list-scale`.
#[derive(Args, Debug, Clone)]
pub struct ListScaleCommand {
    #[command(flatten)]
    pub connection: Connection,
    #[command(flatten)]
    pub output: Output,
    #[command(flatten)]
    pub processes: Processes,
    #[command(flatten)]
    pub workload: Workload,
    #[command(flatten)]
    pub scale: ListScaleArgs,
}

/// `memory`.
#[derive(Args, Debug, Clone)]
pub struct MemoryCommand {
    #[command(flatten)]
    pub output: Output,
    #[command(flatten)]
    pub processes: Processes,
}

/// `chart`.
#[derive(Args, Debug, Clone)]
pub struct ChartArgs {
    /// Results of the runtime under test (crust).
    pub ours: PathBuf,
    /// Results of the runtime to compare with (containerd).
    pub theirs: PathBuf,
    /// Results of `memory --helper conmon`, for a monitor-versus-conmon row.
    #[arg(long)]
    pub conmon: Option<PathBuf>,
    /// The SVG file to write.
    #[arg(long, short)]
    pub out: PathBuf,
}

/// `image`.
#[derive(Args, Debug, Clone)]
pub struct ImageArgs {
    /// The OCI image layout directory to write (created; must not hold another image).
    #[arg(long)]
    pub out: PathBuf,
    /// The tag recorded in the layout's index (`oci:DIR:TAG` for skopeo).
    #[arg(long, default_value = "latest")]
    pub tag: String,
    /// Which image.
    #[command(subcommand)]
    pub kind: ImageKind,
}

/// The images the benchmark uses.
#[derive(Subcommand, Debug, Clone)]
pub enum ImageKind {
    /// One layer: a static busybox with its applets; the workload image.
    Busybox {
        /// The static busybox binary (Debian's busybox-static).
        #[arg(long, default_value = "/bin/busybox")]
        busybox: PathBuf,
    },
    /// A busybox base plus LAYERS layers of generated files, for cold pulls.
    Layered {
        /// The static busybox binary.
        #[arg(long, default_value = "/bin/busybox")]
        busybox: PathBuf,
        /// Layers on top of the base.
        #[arg(long, default_value_t = 5)]
        layers: usize,
        /// Uncompressed MiB of files in each of those layers.
        #[arg(long, default_value_t = 16)]
        layer_mib: usize,
    },
    /// A pause image: one static binary that is the entrypoint (for containerd's
    /// `sandbox_image`).
    Pause {
        /// The static pause binary.
        #[arg(long)]
        binary: PathBuf,
    },
}
