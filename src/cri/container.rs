//! The container RPCs: Create, Start, Stop, Remove, Status, List, UpdateContainerResources,
//! ReopenContainerLog and ExecSync.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crust_proto::cri;
use crust_runtime::container::{ContainerRecord, CreateRequest, state};
use tonic::{Request, Response, Status};

use super::{Cri, Services, convert, error};

fn not_found(id: &str) -> Status {
    Status::not_found(format!("container {id:?} not found"))
}

impl Cri {
    pub(super) async fn create_container(
        &self,
        request: Request<cri::CreateContainerRequest>,
    ) -> Result<Response<cri::CreateContainerResponse>, Status> {
        let req = request.into_inner();
        self.instrumented("CreateContainer", async {
            let services = self.services()?;
            // Detached so that kubelet giving up cannot leave a container half-made.
            let id = tokio::spawn(create(Arc::clone(&services), req))
                .await
                .map_err(|e| Status::internal(format!("create task failed: {e}")))??;
            services.events.emit(
                &services,
                &id,
                cri::ContainerEventType::ContainerCreatedEvent,
            );
            Ok(cri::CreateContainerResponse { container_id: id })
        })
        .await
    }

    pub(super) async fn start_container(
        &self,
        request: Request<cri::StartContainerRequest>,
    ) -> Result<Response<cri::StartContainerResponse>, Status> {
        let id = request.into_inner().container_id;
        self.instrumented("StartContainer", async {
            let services = self.services()?;
            let containers = services.containers.clone();
            let sandboxes = services.sandboxes.clone();
            let started = id.clone();
            let metrics = Arc::clone(&self.metrics);
            tokio::spawn(async move {
                // Under the pod's lock, so that a stop or remove of the pod cannot
                // interleave with the start.
                let pod = match containers.get(&started) {
                    Some(c) => sandboxes.lock(&c.sandbox_id).await,
                    None => None,
                };
                let result = metrics
                    .timed(crate::metrics::Start::Container, containers.start(&started))
                    .await;
                drop(pod);
                result
            })
            .await
            .map_err(|e| Status::internal(format!("start task failed: {e}")))?
            .map_err(|e| error::container_status(&e))?;
            services.events.emit(
                &services,
                &id,
                cri::ContainerEventType::ContainerStartedEvent,
            );
            Ok(cri::StartContainerResponse {})
        })
        .await
    }

    pub(super) async fn stop_container(
        &self,
        request: Request<cri::StopContainerRequest>,
    ) -> Result<Response<cri::StopContainerResponse>, Status> {
        let req = request.into_inner();
        self.instrumented("StopContainer", async {
            let services = self.services()?;
            if req.container_id.is_empty() {
                return Err(Status::invalid_argument("container_id: empty"));
            }
            let timeout = Duration::from_secs(req.timeout.max(0) as u64);
            tokio::spawn(stop(services, req.container_id, timeout))
                .await
                .map_err(|e| Status::internal(format!("stop task failed: {e}")))??;
            Ok(cri::StopContainerResponse {})
        })
        .await
    }

    pub(super) async fn remove_container(
        &self,
        request: Request<cri::RemoveContainerRequest>,
    ) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        let id = request.into_inner().container_id;
        self.instrumented("RemoveContainer", async {
            let services = self.services()?;
            if id.is_empty() {
                return Err(Status::invalid_argument("container_id: empty"));
            }
            tokio::spawn(remove(services, id))
                .await
                .map_err(|e| Status::internal(format!("remove task failed: {e}")))??;
            Ok(cri::RemoveContainerResponse {})
        })
        .await
    }

    pub(super) async fn container_status(
        &self,
        request: Request<cri::ContainerStatusRequest>,
    ) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        let req = request.into_inner();
        self.instrumented("ContainerStatus", async {
            let services = self.services()?;
            let r = services
                .containers
                .get(&req.container_id)
                .ok_or_else(|| not_found(&req.container_id))?;
            let mut info = HashMap::new();
            if req.verbose {
                let verbose = serde_json::json!({
                    "sandboxID": r.sandbox_id,
                    "pid": r.pid,
                    "monitorPid": r.monitor_pid,
                    "runtimeHandler": r.runtime_handler,
                    "config": r.config,
                    "runtimeSpec": services.containers.spec_json(&r),
                });
                info.insert("info".to_string(), verbose.to_string());
            }
            Ok(cri::ContainerStatusResponse {
                status: Some(convert::container_status(&r)),
                info,
            })
        })
        .await
    }

    pub(super) async fn list_containers(
        &self,
        request: Request<cri::ListContainersRequest>,
    ) -> Result<Response<cri::ListContainersResponse>, Status> {
        let filter = request.into_inner().filter;
        self.instrumented("ListContainers", async {
            let services = self.services()?;
            let containers = services
                .containers
                .list()
                .iter()
                .filter(|r| filter.as_ref().is_none_or(|f| container_matches(r, f)))
                .map(|r| convert::container(r))
                .collect();
            Ok(cri::ListContainersResponse { containers })
        })
        .await
    }

    pub(super) async fn update_container_resources(
        &self,
        request: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        let req = request.into_inner();
        self.instrumented("UpdateContainerResources", async {
            let services = self.services()?;
            let resources = req
                .linux
                .ok_or_else(|| Status::invalid_argument("linux: no resources given"))?;
            let containers = services.containers.clone();
            tokio::spawn(async move {
                containers
                    .update_resources(&req.container_id, resources)
                    .await
            })
            .await
            .map_err(|e| Status::internal(format!("update task failed: {e}")))?
            .map_err(|e| error::container_status(&e))?;
            Ok(cri::UpdateContainerResourcesResponse {})
        })
        .await
    }

    pub(super) async fn reopen_container_log(
        &self,
        request: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        let id = request.into_inner().container_id;
        self.instrumented("ReopenContainerLog", async {
            let services = self.services()?;
            services
                .containers
                .reopen_log(&id)
                .await
                .map_err(|e| error::container_status(&e))?;
            Ok(cri::ReopenContainerLogResponse {})
        })
        .await
    }

    pub(super) async fn exec_sync(
        &self,
        request: Request<cri::ExecSyncRequest>,
    ) -> Result<Response<cri::ExecSyncResponse>, Status> {
        let req = request.into_inner();
        self.instrumented("ExecSync", async {
            let services = self.services()?;
            // Seconds; 0 means no timeout, as kubelet sends it.
            let timeout = (req.timeout > 0).then(|| Duration::from_secs(req.timeout as u64));
            let out = services
                .containers
                .exec_sync(&req.container_id, req.cmd, timeout)
                .await
                .map_err(|e| error::container_status(&e))?;
            Ok(cri::ExecSyncResponse {
                stdout: out.stdout,
                stderr: out.stderr,
                exit_code: out.exit_code,
            })
        })
        .await
    }
}

pub(super) fn container_matches(
    r: &crust_runtime::container::ContainerRecord,
    f: &cri::ContainerFilter,
) -> bool {
    selected(r, &f.id, &f.pod_sandbox_id, &f.label_selector)
        && f.state.as_ref().is_none_or(|s| s.state == state(r) as i32)
}

/// The id, sandbox and label part of container filters (ListContainers and
/// ListContainerStats share it): ids match by prefix, as crictl abbreviates them.
pub(super) fn selected(
    r: &crust_runtime::container::ContainerRecord,
    id: &str,
    sandbox_id: &str,
    labels: &HashMap<String, String>,
) -> bool {
    (id.is_empty() || r.id.starts_with(id))
        && (sandbox_id.is_empty() || r.sandbox_id.starts_with(sandbox_id))
        && super::labels_match(&r.config.labels, labels)
}

/// CreateContainer's work: resolve the image, mount the rootfs, create under a monitor;
/// undo the mount and the name reservation on failure.
async fn create(
    services: Arc<Services>,
    req: cri::CreateContainerRequest,
) -> Result<String, Status> {
    let config = req
        .config
        .ok_or_else(|| Status::invalid_argument("config: missing"))?;
    let not_found = || Status::not_found(format!("pod sandbox {:?} not found", req.pod_sandbox_id));
    // Held until the container is recorded: a stop or remove of the pod waits for it,
    // and then tears it down with the rest.
    let pod = services
        .sandboxes
        .lock(&req.pod_sandbox_id)
        .await
        .ok_or_else(not_found)?;
    let sandbox = services.sandboxes.get(pod.id()).ok_or_else(not_found)?;
    if !sandbox.is_ready() {
        return Err(Status::failed_precondition(format!(
            "pod sandbox {} is not ready",
            sandbox.id
        )));
    }
    let image_name = config
        .image
        .as_ref()
        .map(|i| i.image.clone())
        .filter(|i| !i.is_empty())
        .ok_or_else(|| Status::invalid_argument("image: no image given"))?;
    // As CRI-O: an image that is the path of a file names a checkpoint archive to
    // restore from.
    if image_name.starts_with('/') && Path::new(&image_name).is_file() {
        let restored = super::container_restore::create(&services, &sandbox, config, image_name);
        let id = restored.await;
        drop(pod);
        return id;
    }
    let image = services.images.resolve(&image_name).ok_or_else(|| {
        Status::not_found(format!(
            "image {image_name:?} is not present; pull it first"
        ))
    })?;
    let id = services
        .containers
        .reserve(&sandbox.id, &config)
        .map_err(|e| error::container_status(&e))?;
    let mountpoint = services
        .config
        .state
        .join("containers")
        .join(&id)
        .join("rootfs");
    if let (Some(maps), Some(dir)) = (&sandbox.userns, mountpoint.parent()) {
        // The runtime reaches the rootfs as the pod's root.
        let (gid, dir) = (maps.gids.host_id, dir.to_path_buf());
        let made =
            tokio::task::spawn_blocking(move || crust_runtime::fsmode::userns_dir(&dir, gid))
                .await
                .map_err(|e| Status::internal(e.to_string()))
                .and_then(|r| r.map_err(|e| Status::internal(format!("container state dir: {e}"))));
        if let Err(e) = made {
            services.containers.unreserve(&sandbox.id, &config, &id);
            return Err(e);
        }
    }
    let rootfs = match services
        .images
        .create_rootfs(&image, &id, &mountpoint, sandbox.userns)
        .await
    {
        Ok(p) => p,
        Err(e) => {
            services.containers.unreserve(&sandbox.id, &config, &id);
            remove_state_dir(&services, &id).await;
            return Err(error::image_status(&e));
        }
    };
    let create = create_request(
        &services, &sandbox, &id, &config, &image, image_name, rootfs,
    );
    match services.containers.create(create).await {
        Ok(r) => Ok(r.id.clone()),
        Err(e) => {
            services.containers.unreserve(&sandbox.id, &config, &id);
            if let Err(cleanup) = services.images.remove_rootfs(&id).await {
                tracing::warn!(container = %id, error = %cleanup, "rootfs cleanup after a failed create");
            }
            remove_state_dir(&services, &id).await;
            Err(error::container_status(&e))
        }
    }
}

/// What the runtime needs to create container `id` of `sandbox` on `image`'s mounted
/// `rootfs`.
pub(super) fn create_request(
    services: &Services,
    sandbox: &crust_sandbox::SandboxRecord,
    id: &str,
    config: &cri::ContainerConfig,
    image: &crust_image::ImageRecord,
    image_name: String,
    rootfs: std::path::PathBuf,
) -> CreateRequest {
    // The pod's config is the one it was created with: the request's copy (kubelet
    // sends one) could name another log directory or hostname than the pod has.
    let sandbox_config = sandbox.config.clone();
    CreateRequest {
        id: id.to_owned(),
        sandbox_id: sandbox.id.clone(),
        sandbox_config,
        config: config.clone(),
        runtime_handler: sandbox.runtime_handler.clone(),
        image_id: image.id.clone(),
        image_name,
        image_ref: image
            .repo_digests
            .first()
            .cloned()
            .unwrap_or_else(|| image.id.clone()),
        image_config: image.config_json(),
        rootfs,
        namespaces: namespaces(sandbox, config, services),
        pod_files: pod_files(services, sandbox),
        cgroup_parent: sandbox
            .config
            .linux
            .as_ref()
            .map(|l| l.cgroup_parent.clone())
            .unwrap_or_default(),
        systemd_cgroup: services.config.cgroup_driver == crate::config::CgroupDriver::Systemd,
    }
}

/// StopContainer's work (also StopPodSandbox's, for each container of the pod).
///
/// Stopping what is not there succeeds, as in containerd and CRI-O: kubelet (and
/// critest's idempotence specs) stop containers that may be long gone, and one removed
/// by a concurrent RemoveContainer is as good as stopped.
pub(super) async fn stop(
    services: Arc<Services>,
    id: String,
    timeout: Duration,
) -> Result<(), Status> {
    if services.containers.get(&id).is_none() {
        tracing::debug!(container = %id, "stop of an unknown container");
        return Ok(());
    }
    match services.containers.stop(&id, timeout).await {
        Ok(()) => Ok(()),
        Err(e)
            if e.kind() == crust_runtime::container::ContainerErrorKind::NotFound
                && services.containers.get(&id).is_none() =>
        {
            Ok(())
        }
        Err(e) => Err(error::container_status(&e)),
    }
}

/// RemoveContainer's work: the container, then its rootfs and writable layer. An
/// unknown id succeeds.
pub(super) async fn remove(services: Arc<Services>, id: String) -> Result<(), Status> {
    let removed = services
        .containers
        .remove(&id)
        .await
        .map_err(|e| error::container_status(&e))?;
    let Some(r) = removed else {
        return Ok(());
    };
    services.events.emit_with(
        &services,
        &r.id,
        cri::ContainerEventType::ContainerDeletedEvent,
        Some(&r),
    );
    services
        .images
        .remove_rootfs(&r.id)
        .await
        .map_err(|e| error::image_status(&e))?;
    remove_state_dir(&services, &r.id).await;
    Ok(())
}

/// Removes `<state>/containers/<id>` (exit file, attach socket) off the async workers.
pub(super) async fn remove_state_dir(services: &Services, id: &str) {
    let dir = services.config.state.join("containers").join(id);
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
}

/// How the container joins its pod: the pause process's namespaces, or the host's.
fn namespaces(
    sandbox: &crust_sandbox::SandboxRecord,
    config: &cri::ContainerConfig,
    services: &Services,
) -> crust_runtime::spec::container::SandboxNamespaces {
    let pod = sandbox.namespace_options();
    let node = cri::NamespaceMode::Node as i32;
    let target_pid = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
        .filter(|n| n.pid == cri::NamespaceMode::Target as i32)
        .and_then(|n| services.containers.get(&n.target_id))
        .filter(|t| target_is_joinable(t, &sandbox.id))
        .map(|t| t.pid as u32);
    crust_runtime::spec::container::SandboxNamespaces {
        pause_pid: sandbox.pid as u32,
        netns: sandbox.netns.clone(),
        host_network: pod.network == node,
        host_ipc: pod.ipc == node,
        host_pid: pod.pid == node,
        target_pid,
        userns: sandbox.userns,
        ipc: sandbox.ipc_ns.clone(),
        uts: sandbox.uts_ns.clone(),
    }
}

/// Whether a container may lend its PID namespace (`NamespaceMode::TARGET`) to a new
/// one of `sandbox_id`: it is of the same pod, running, and its pid is still the
/// process that started it (a pid alone may have been reused by another pod's
/// process, or a host one).
fn target_is_joinable(target: &ContainerRecord, sandbox_id: &str) -> bool {
    target.sandbox_id == sandbox_id
        && state(target) == cri::ContainerState::ContainerRunning
        && target.pid_start != 0
        && crust_runtime::liveness::start_time(target.pid) == Some(target.pid_start)
}

/// The pod's files for the container to mount.
fn pod_files(
    services: &Services,
    sandbox: &crust_sandbox::SandboxRecord,
) -> crust_runtime::spec::container::PodFilePaths {
    let files = services.sandboxes.pod_files(&sandbox.id);
    let host_ipc = sandbox.namespace_options().ipc == cri::NamespaceMode::Node as i32;
    crust_runtime::spec::container::PodFilePaths {
        hostname: Some(files.hostname()),
        hosts: Some(files.hosts()),
        resolv_conf: Some(files.resolv_conf()),
        shm: (!host_ipc).then(|| files.shm.clone()),
    }
}
