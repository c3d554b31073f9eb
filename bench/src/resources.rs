//! What the runtime costs in memory and CPU: the daemon idle and under load (a sampler
//! running beside a scenario keeps the peak), its CPU time per pod, and the helper
//! processes (one crust-monitor per container, one containerd shim per pod).

use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::cli::Processes;
use crate::procfs::{self, CpuTime, Memory};

/// How often the sampler reads the daemon's `/proc/PID/status`.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// The processes to watch, resolved.
#[derive(Debug, Clone, Default)]
pub struct Watched {
    /// The daemon, when known.
    pub daemon: Option<u32>,
    /// Helper name prefix and command-line filter.
    pub helper: Option<(String, Option<String>)>,
}

impl Watched {
    /// Resolves the command-line options (reads the pid file).
    pub fn from_args(args: &Processes) -> anyhow::Result<Watched> {
        let daemon = match (&args.daemon_pid, &args.daemon_pidfile) {
            (Some(pid), _) => Some(*pid),
            (None, Some(file)) => Some(
                std::fs::read_to_string(file)
                    .with_context(|| format!("read {}", file.display()))?
                    .trim()
                    .parse()
                    .with_context(|| format!("{} holds no pid", file.display()))?,
            ),
            (None, None) => None,
        };
        if let Some(pid) = daemon {
            procfs::memory_fast(pid).with_context(|| format!("daemon pid {pid}"))?;
        }
        Ok(Watched {
            daemon,
            helper: args
                .helper
                .clone()
                .map(|name| (name, args.helper_match.clone())),
        })
    }

    /// The daemon's memory now, with Pss.
    pub fn daemon_memory(&self) -> Option<Memory> {
        self.daemon.and_then(|pid| procfs::memory(pid).ok())
    }

    /// The daemon's CPU time now.
    pub fn daemon_cpu(&self) -> Option<CpuTime> {
        self.daemon.and_then(|pid| procfs::cpu_time(pid).ok())
    }

    /// The helper processes now, or None when no helper name was given.
    pub fn helpers(&self) -> Option<Helpers> {
        let (name, filter) = self.helper.as_ref()?;
        Some(Helpers::measure(name, filter.as_deref()))
    }

    /// The daemon's memory after it has settled: the median of five readings over
    /// about a second, so a transient allocation does not count as idle.
    pub async fn daemon_idle(&self) -> Option<Memory> {
        self.daemon?;
        let mut readings = Vec::new();
        for _ in 0..5 {
            readings.extend(self.daemon_memory());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        readings.sort_by_key(|m| m.vm_rss_kb);
        readings.get(readings.len() / 2).copied()
    }

    /// Starts sampling the daemon's memory until the returned sampler is stopped.
    pub fn sample(&self) -> Sampler {
        let (stop, mut stopped) = oneshot::channel();
        let pid = self.daemon;
        let cpu_before = self.daemon_cpu();
        let task = tokio::spawn(async move {
            let mut peak = Memory::default();
            let Some(pid) = pid else {
                return peak;
            };
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            loop {
                tokio::select! {
                    _ = &mut stopped => return peak,
                    _ = tick.tick() => {
                        if let Ok(m) = procfs::memory_fast(pid) {
                            peak.vm_rss_kb = peak.vm_rss_kb.max(m.vm_rss_kb);
                            peak.rss_anon_kb = peak.rss_anon_kb.max(m.rss_anon_kb);
                            peak.rss_file_kb = peak.rss_file_kb.max(m.rss_file_kb);
                        }
                    }
                }
            }
        });
        Sampler {
            stop: Some(stop),
            task,
            cpu_before,
            watched: self.clone(),
        }
    }
}

/// A running sampler of the daemon's peak memory and CPU time.
pub struct Sampler {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Memory>,
    cpu_before: Option<CpuTime>,
    watched: Watched,
}

/// What the daemon used while a scenario ran.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DaemonLoad {
    /// Peak memory (`pss_kb` is not sampled and stays 0).
    pub peak: Memory,
    /// CPU seconds of the daemon's own threads.
    pub cpu_s: f64,
    /// CPU seconds of its waited-for children (CNI plugins, OCI runtime calls).
    pub children_cpu_s: f64,
}

impl Sampler {
    /// Stops sampling; None when no daemon is watched.
    pub async fn stop(mut self) -> Option<DaemonLoad> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let peak = (&mut self.task).await.unwrap_or_default();
        let before = self.cpu_before?;
        let after = self.watched.daemon_cpu()?;
        Some(DaemonLoad {
            peak,
            cpu_s: after.own_s - before.own_s,
            children_cpu_s: after.children_s - before.children_s,
        })
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The helper processes at one moment.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Helpers {
    /// The name prefix matched.
    pub name: String,
    /// How many were found.
    pub count: usize,
    /// Average VmRSS per process, kB.
    pub avg_vm_rss_kb: f64,
    /// Average RssAnon per process, kB: the private cost of one more helper.
    pub avg_rss_anon_kb: f64,
    /// Average Pss per process, kB.
    pub avg_pss_kb: f64,
    /// Sum of RssAnon over all of them, kB.
    pub total_rss_anon_kb: u64,
    /// Sum of Pss over all of them, kB.
    pub total_pss_kb: u64,
}

impl Helpers {
    /// Finds and measures the helpers named `name`.
    pub fn measure(name: &str, filter: Option<&str>) -> Helpers {
        let memories: Vec<Memory> = procfs::find(name, filter)
            .into_iter()
            .filter_map(|pid| procfs::memory(pid).ok())
            .filter(|m| m.vm_rss_kb > 0)
            .collect();
        let count = memories.len();
        let avg = |f: fn(&Memory) -> u64| {
            if count == 0 {
                0.0
            } else {
                memories.iter().map(f).sum::<u64>() as f64 / count as f64
            }
        };
        Helpers {
            name: name.to_string(),
            count,
            avg_vm_rss_kb: avg(|m| m.vm_rss_kb),
            avg_rss_anon_kb: avg(|m| m.rss_anon_kb),
            avg_pss_kb: avg(|m| m.pss_kb),
            total_rss_anon_kb: memories.iter().map(|m| m.rss_anon_kb).sum(),
            total_pss_kb: memories.iter().map(|m| m.pss_kb).sum(),
        }
    }
}
