//! Everything a run creates, recorded as it is created, and the teardown that removes
//! it at the end: on success, on error and on Ctrl-C alike.
//!
//! Sandboxes and containers are also found by the run's label, because a call that
//! timed out on our side may still have created its object in the runtime.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crust_proto::cri;

use crate::cri_client::Cri;
use crate::kubelet_config::run_selector;

/// Seconds StopContainer waits in teardown: containers are killed, not measured.
const TEARDOWN_STOP_TIMEOUT: i64 = 2;

/// The objects and files of one run, shared by every task of the run.
#[derive(Clone, Default)]
pub struct Created {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    sandboxes: BTreeSet<String>,
    containers: BTreeSet<String>,
    /// Images this run pulled that were absent before it.
    images: BTreeSet<String>,
    /// Directories this run made.
    dirs: Vec<PathBuf>,
    /// Pod cgroups (cgroupfs paths) under which runtimes made cgroups for us.
    cgroups: BTreeSet<String>,
}

impl Created {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        // A panic while holding the lock cannot leave the sets half-updated: every
        // operation is one insert or remove.
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut inner)
    }

    /// Records a sandbox.
    pub fn sandbox(&self, id: &str) {
        self.with(|i| i.sandboxes.insert(id.to_string()));
    }

    /// Forgets a sandbox the run removed itself.
    pub fn sandbox_gone(&self, id: &str) {
        self.with(|i| i.sandboxes.remove(id));
    }

    /// Records a container.
    pub fn container(&self, id: &str) {
        self.with(|i| i.containers.insert(id.to_string()));
    }

    /// Forgets a container the run removed itself.
    pub fn container_gone(&self, id: &str) {
        self.with(|i| i.containers.remove(id));
    }

    /// Records an image the run pulled that was not there before.
    pub fn image(&self, id: &str) {
        self.with(|i| i.images.insert(id.to_string()));
    }

    /// Forgets an image.
    pub fn image_gone(&self, id: &str) {
        self.with(|i| i.images.remove(id));
    }

    /// Records a directory the run made.
    pub fn dir(&self, path: &Path) {
        self.with(|i| i.dirs.push(path.to_path_buf()));
    }

    /// Records a pod cgroup path to remove at the end (runtimes leave the pod level,
    /// which kubelet owns).
    pub fn cgroup(&self, path: &str) {
        self.with(|i| i.cgroups.insert(path.to_string()));
    }

    /// Removes a pod cgroup now, as kubelet does once the pod is gone.
    pub fn cgroup_gone(&self, path: &str) {
        remove_cgroup(path);
        self.with(|i| i.cgroups.remove(path));
    }

    /// Removes everything recorded and everything carrying the run's label, best
    /// effort: failures are reported on stderr and the rest still goes. Returns how
    /// many objects could not be removed.
    pub async fn teardown(&self, cri: Option<&Cri>, run: &str, cgroup_parent: &str) -> usize {
        let mut failures = 0;
        if let Some(cri) = cri {
            failures += self.remove_containers(cri, run).await;
            failures += self.remove_sandboxes(cri, run).await;
            for image in self.with(|i| std::mem::take(&mut i.images)) {
                let mut svc = cri.image.clone();
                let request = cri::RemoveImageRequest {
                    image: Some(cri::ImageSpec {
                        image: image.clone(),
                        ..Default::default()
                    }),
                };
                if let Err(err) = cri.call("RemoveImage", svc.remove_image(request)).await {
                    eprintln!("teardown: image {image}: {err:#}");
                    failures += 1;
                }
            }
        }
        for cgroup in self.with(|i| std::mem::take(&mut i.cgroups)) {
            remove_cgroup(&cgroup);
        }
        remove_cgroup(cgroup_parent);
        for dir in self.with(|i| std::mem::take(&mut i.dirs)).into_iter().rev() {
            if let Err(err) = std::fs::remove_dir_all(&dir)
                && err.kind() != std::io::ErrorKind::NotFound
            {
                eprintln!("teardown: {}: {err}", dir.display());
                failures += 1;
            }
        }
        failures
    }

    async fn remove_containers(&self, cri: &Cri, run: &str) -> usize {
        let mut ids = self.with(|i| std::mem::take(&mut i.containers));
        let mut svc = cri.runtime.clone();
        let filter = cri::ContainerFilter {
            label_selector: run_selector(run),
            ..Default::default()
        };
        let request = cri::ListContainersRequest {
            filter: Some(filter),
        };
        match cri
            .call("ListContainers", svc.list_containers(request))
            .await
        {
            Ok(list) => ids.extend(list.containers.into_iter().map(|c| c.id)),
            Err(err) => eprintln!("teardown: {err:#}"),
        }
        let mut failures = 0;
        for id in ids {
            let stop = cri::StopContainerRequest {
                container_id: id.clone(),
                timeout: TEARDOWN_STOP_TIMEOUT,
            };
            let _ = cri.call("StopContainer", svc.stop_container(stop)).await;
            let remove = cri::RemoveContainerRequest {
                container_id: id.clone(),
            };
            if let Err(err) = cri
                .call("RemoveContainer", svc.remove_container(remove))
                .await
            {
                eprintln!("teardown: container {id}: {err:#}");
                failures += 1;
            }
        }
        failures
    }

    async fn remove_sandboxes(&self, cri: &Cri, run: &str) -> usize {
        let mut ids = self.with(|i| std::mem::take(&mut i.sandboxes));
        let mut svc = cri.runtime.clone();
        let filter = cri::PodSandboxFilter {
            label_selector: run_selector(run),
            ..Default::default()
        };
        let request = cri::ListPodSandboxRequest {
            filter: Some(filter),
        };
        match cri
            .call("ListPodSandbox", svc.list_pod_sandbox(request))
            .await
        {
            Ok(list) => ids.extend(list.items.into_iter().map(|s| s.id)),
            Err(err) => eprintln!("teardown: {err:#}"),
        }
        let mut failures = 0;
        for id in ids {
            let stop = cri::StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            };
            let _ = cri.call("StopPodSandbox", svc.stop_pod_sandbox(stop)).await;
            let remove = cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.clone(),
            };
            if let Err(err) = cri
                .call("RemovePodSandbox", svc.remove_pod_sandbox(remove))
                .await
            {
                eprintln!("teardown: sandbox {id}: {err:#}");
                failures += 1;
            }
        }
        failures
    }
}

/// Removes the cgroup `path` (cgroupfs form) and every empty cgroup below it, in every
/// mounted hierarchy (v1 controllers and v2). Busy or absent cgroups are left alone.
pub fn remove_cgroup(path: &str) {
    let relative = path.trim_start_matches('/');
    if relative.is_empty() {
        return;
    }
    for mountpoint in cgroup_mountpoints() {
        remove_tree(&mountpoint.join(relative));
    }
}

/// Depth first, so children go before their parent; rmdir is the only way to remove a
/// cgroup and fails on one that still has processes or children.
fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_tree(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Where cgroup and cgroup2 filesystems are mounted, from `/proc/self/mountinfo`.
fn cgroup_mountpoints() -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|line| {
            // "... mountpoint options - fstype source superoptions"
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split(' ').next()?;
            let mountpoint = left.split(' ').nth(4)?;
            matches!(fstype, "cgroup" | "cgroup2").then(|| PathBuf::from(mountpoint))
        })
        .collect()
}
