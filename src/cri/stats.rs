//! ContainerStats, ListContainerStats, PodSandboxStats, ListPodSandboxStats.
//!
//! Numbers come from each container's own cgroup (found from its init process's
//! `/proc/<pid>/cgroup` once and cached), the pod's cgroup (the parent of its pause
//! process's), `/proc/<pause>/net/dev` for the pod's interfaces, and a cached walk of
//! the writable layer (at most one walk per layer every 10 s).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use crust_proto::cri;
use crust_runtime::container::ContainerRecord;
use crust_runtime::stats::{self, CgroupPaths, CpuSampler, DiskUsageCache};
use crust_sandbox::SandboxRecord;
use tonic::{Request, Response, Status};

use super::{Cri, Services};

/// What stats keep between calls.
pub struct StatsState {
    cpu: CpuSampler,
    disk: DiskUsageCache,
    paths: Mutex<HashMap<String, CgroupPaths>>,
}

impl StatsState {
    /// Empty caches.
    pub fn new() -> Self {
        StatsState {
            cpu: CpuSampler::new(),
            disk: DiskUsageCache::new(Duration::from_secs(10)),
            paths: Mutex::new(HashMap::new()),
        }
    }

    /// The cgroup directories of `id` whose process is `pid`, cached once found.
    fn paths(&self, id: &str, pid: i32, parent: bool) -> Option<CgroupPaths> {
        let mut cache = self.paths.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = cache.get(id) {
            return Some(p.clone());
        }
        if pid <= 0 {
            return None;
        }
        let mut found = stats::cgroup_paths_of(pid).ok()?;
        if parent {
            // The pod's cgroup is the parent of its pause process's.
            let up = |p: Option<PathBuf>| p.and_then(|p| p.parent().map(PathBuf::from));
            found = CgroupPaths {
                cpuacct: up(found.cpuacct),
                memory: up(found.memory),
                pids: up(found.pids),
                unified: up(found.unified),
            };
        }
        cache.insert(id.to_string(), found.clone());
        Some(found)
    }

    /// Drops what is kept for objects that no longer exist: cgroup paths and CPU
    /// samples by id, disk usage by writable layer, so the caches hold only the living.
    fn retain(&self, alive: &dyn Fn(&str) -> bool, layers: &HashSet<PathBuf>) {
        self.paths
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| alive(id));
        self.cpu.retain(alive);
        self.disk.retain(&|path| layers.contains(path));
    }
}

impl Default for StatsState {
    fn default() -> Self {
        Self::new()
    }
}

fn container_stats(services: &Services, r: &ContainerRecord) -> cri::ContainerStats {
    let attributes = cri::ContainerAttributes {
        id: r.id.clone(),
        metadata: Some(r.metadata()),
        labels: r.config.labels.clone(),
        annotations: r.config.annotations.clone(),
    };
    let running = r.started_at.is_some() && r.finished_at.is_none();
    let cgroup = if running {
        services.stats.paths(&r.id, r.pid, false)
    } else {
        None
    };
    let numbers = cgroup
        .and_then(|p| stats::read_cgroup_stats(&p).ok())
        .unwrap_or_else(|| stats::CgroupStats {
            timestamp_ns: super::now_nanos(),
            ..Default::default()
        });
    let nano_cores = services
        .stats
        .cpu
        .sample(&r.id, numbers.timestamp_ns, numbers.cpu_usage_ns);
    let layer = services.images.writable_layer(&r.id);
    let disk = layer
        .as_ref()
        .and_then(|l| services.stats.disk.usage(l).ok());
    let mountpoint = services
        .config
        .root
        .join("containers")
        .display()
        .to_string();
    stats::container_stats(attributes, &numbers, nano_cores, disk.as_ref(), &mountpoint)
}

pub(super) fn pod_stats(services: &Services, s: &SandboxRecord) -> cri::PodSandboxStats {
    let attributes = cri::PodSandboxAttributes {
        id: s.id.clone(),
        metadata: Some(s.metadata()),
        labels: s.config.labels.clone(),
        annotations: s.config.annotations.clone(),
    };
    let records = services.containers.of_sandbox(&s.id);
    let containers: Vec<_> = records
        .iter()
        .map(|c| container_stats(services, c))
        .collect();
    // A pod without a pause is seen through any of its running containers: their
    // cgroups' parent is the pod's, their network namespace the pod's.
    let member = if s.pid > 0 {
        s.pid
    } else {
        records
            .iter()
            .find(|c| c.pid > 0 && crust_runtime::liveness::alive(c.pid, c.pid_start))
            .map_or(0, |c| c.pid)
    };
    let cgroup = if s.is_ready() {
        services.stats.paths(&s.id, member, true)
    } else {
        None
    };
    let numbers = cgroup
        .and_then(|p| stats::read_cgroup_stats(&p).ok())
        .unwrap_or_else(|| stats::CgroupStats {
            timestamp_ns: super::now_nanos(),
            ..Default::default()
        });
    let nano_cores = services
        .stats
        .cpu
        .sample(&s.id, numbers.timestamp_ns, numbers.cpu_usage_ns);
    let interfaces = (s.is_ready() && s.netns.is_some() && member > 0)
        .then(|| stats::network::read_interfaces(member).ok())
        .flatten();
    cri::PodSandboxStats {
        attributes: Some(attributes),
        linux: Some(stats::linux_pod_sandbox_stats(
            &numbers,
            nano_cores,
            interfaces.as_deref(),
            containers,
        )),
        windows: None,
    }
}

impl Cri {
    pub(super) async fn container_stats(
        &self,
        request: Request<cri::ContainerStatsRequest>,
    ) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        let id = request.into_inner().container_id;
        self.instrumented("ContainerStats", async {
            let services = self.services()?;
            let r = services
                .containers
                .get(&id)
                .ok_or_else(|| Status::not_found(format!("container {id:?} not found")))?;
            Ok(cri::ContainerStatsResponse {
                stats: Some(container_stats(&services, &r)),
            })
        })
        .await
    }

    pub(super) async fn list_container_stats(
        &self,
        request: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        let filter = request.into_inner().filter;
        self.instrumented("ListContainerStats", async {
            let services = self.services()?;
            let all = services.containers.list();
            let layers: HashSet<PathBuf> = all
                .iter()
                .filter_map(|r| services.images.writable_layer(&r.id))
                .collect();
            services.stats.retain(
                &|id| services.containers.get(id).is_some() || services.sandboxes.get(id).is_some(),
                &layers,
            );
            let stats = all
                .iter()
                .filter(|r| {
                    filter.as_ref().is_none_or(|f| {
                        super::container::selected(r, &f.id, &f.pod_sandbox_id, &f.label_selector)
                    })
                })
                .map(|r| container_stats(&services, r))
                .collect();
            Ok(cri::ListContainerStatsResponse { stats })
        })
        .await
    }

    pub(super) async fn pod_sandbox_stats(
        &self,
        request: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        self.instrumented("PodSandboxStats", async {
            let services = self.services()?;
            let s = services
                .sandboxes
                .get(&id)
                .ok_or_else(|| Status::not_found(format!("pod sandbox {id:?} not found")))?;
            Ok(cri::PodSandboxStatsResponse {
                stats: Some(pod_stats(&services, &s)),
            })
        })
        .await
    }

    pub(super) async fn list_pod_sandbox_stats(
        &self,
        request: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        let filter = request.into_inner().filter;
        self.instrumented("ListPodSandboxStats", async {
            let services = self.services()?;
            let stats = services
                .sandboxes
                .list()
                .iter()
                .filter(|s| {
                    filter.as_ref().is_none_or(|f| {
                        (f.id.is_empty() || s.id.starts_with(&f.id))
                            && super::labels_match(&s.config.labels, &f.label_selector)
                    })
                })
                .map(|s| pod_stats(&services, s))
                .collect();
            Ok(cri::ListPodSandboxStatsResponse { stats })
        })
        .await
    }
}
