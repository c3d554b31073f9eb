//! RunPodSandbox, StopPodSandbox, RemovePodSandbox, PodSandboxStatus, ListPodSandbox.

use std::collections::HashMap;

use crust_proto::cri;
use tonic::{Request, Response, Status};

use std::sync::Arc;

use super::{Cri, Services, container, convert, error};
use crate::metrics::Start;

impl Cri {
    pub(super) async fn run_pod_sandbox(
        &self,
        request: Request<cri::RunPodSandboxRequest>,
    ) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
        let req = request.into_inner();
        self.instrumented("RunPodSandbox", async {
            let services = self.services()?;
            let config = req
                .config
                .ok_or_else(|| Status::invalid_argument("config: missing"))?;
            // Detached: kubelet giving up must not stop a creation halfway; the work
            // either finishes or undoes itself.
            let run = run_pod(Arc::clone(&services), config, req.runtime_handler);
            let id = tokio::spawn(Arc::clone(&self.metrics).timed(Start::Sandbox, run))
                .await
                .map_err(|e| Status::internal(format!("run task failed: {e}")))??;
            services.events.emit(
                &services,
                &id,
                cri::ContainerEventType::ContainerCreatedEvent,
            );
            services.events.emit(
                &services,
                &id,
                cri::ContainerEventType::ContainerStartedEvent,
            );
            Ok(cri::RunPodSandboxResponse { pod_sandbox_id: id })
        })
        .await
    }

    pub(super) async fn stop_pod_sandbox(
        &self,
        request: Request<cri::StopPodSandboxRequest>,
    ) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        self.instrumented("StopPodSandbox", async {
            let services = self.services()?;
            if id.is_empty() {
                return Err(Status::invalid_argument("pod_sandbox_id: empty"));
            }
            tokio::spawn(stop_pod(services, id))
                .await
                .map_err(|e| Status::internal(format!("stop task failed: {e}")))??;
            Ok(cri::StopPodSandboxResponse {})
        })
        .await
    }

    pub(super) async fn remove_pod_sandbox(
        &self,
        request: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        self.instrumented("RemovePodSandbox", async {
            let services = self.services()?;
            if id.is_empty() {
                return Err(Status::invalid_argument("pod_sandbox_id: empty"));
            }
            tokio::spawn(remove_pod(services, id))
                .await
                .map_err(|e| Status::internal(format!("remove task failed: {e}")))??;
            Ok(cri::RemovePodSandboxResponse {})
        })
        .await
    }

    pub(super) async fn pod_sandbox_status(
        &self,
        request: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        let req = request.into_inner();
        self.instrumented("PodSandboxStatus", async {
            let services = self.services()?;
            let record = services.sandboxes.get(&req.pod_sandbox_id).ok_or_else(|| {
                Status::not_found(format!("pod sandbox {:?} not found", req.pod_sandbox_id))
            })?;
            let mut info = HashMap::new();
            if req.verbose {
                let verbose = serde_json::json!({
                    "pid": record.pid,
                    "netnsPath": record.netns,
                    "runtimeHandler": record.runtime_handler,
                    "cgroupsPath": record.cgroups_path,
                    "cniResult": record.cni_result,
                    "config": record.config,
                });
                info.insert("info".to_string(), verbose.to_string());
            }
            Ok(cri::PodSandboxStatusResponse {
                status: Some(convert::sandbox_status(&record)),
                info,
                containers_statuses: services
                    .containers
                    .of_sandbox(&record.id)
                    .iter()
                    .map(|c| convert::container_status(c))
                    .collect(),
                timestamp: super::now_nanos(),
            })
        })
        .await
    }

    pub(super) async fn list_pod_sandbox(
        &self,
        request: Request<cri::ListPodSandboxRequest>,
    ) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        let filter = request.into_inner().filter;
        self.instrumented("ListPodSandbox", async {
            let services = self.services()?;
            let items = services
                .sandboxes
                .list()
                .iter()
                .filter(|r| filter.as_ref().is_none_or(|f| sandbox_matches(r, f)))
                .map(|r| convert::sandbox(r))
                .collect();
            Ok(cri::ListPodSandboxResponse { items })
        })
        .await
    }
}

/// Whether a sandbox passes a filter, judged on the record so that only the sandboxes
/// listed are converted.
pub(super) fn sandbox_matches(r: &crust_sandbox::SandboxRecord, f: &cri::PodSandboxFilter) -> bool {
    (f.id.is_empty() || r.id.starts_with(&f.id))
        && f.state
            .as_ref()
            .is_none_or(|st| st.state == convert::sandbox_state(r) as i32)
        && super::labels_match(&r.config.labels, &f.label_selector)
}

/// StopPodSandbox's work: the pod's containers first (kubelet has already given them
/// their grace period), then the sandbox.
async fn stop_pod(services: Arc<Services>, id: String) -> Result<(), Status> {
    // Stopping what is not there succeeds, as in containerd and CRI-O: kubelet (and
    // critest's idempotence specs) stop sandboxes that may be long gone.
    let unknown = || {
        tracing::debug!(sandbox = %id, "stop of an unknown pod sandbox");
        Ok(())
    };
    // Held throughout, so that no container can be created in the pod meanwhile.
    let Some(lock) = services.sandboxes.lock(&id).await else {
        return unknown();
    };
    let Some(sandbox) = services.sandboxes.get(lock.id()) else {
        return unknown();
    };
    for c in services.containers.of_sandbox(&sandbox.id) {
        container::stop(
            Arc::clone(&services),
            c.id.clone(),
            std::time::Duration::ZERO,
        )
        .await?;
    }
    let was_stopped = sandbox.stopped_at.is_some();
    services
        .sandboxes
        .stop(&lock)
        .await
        .map_err(|e| error::sandbox_status(&e))?;
    if !was_stopped {
        services.events.emit(
            &services,
            &sandbox.id,
            cri::ContainerEventType::ContainerStoppedEvent,
        );
    }
    Ok(())
}

/// RemovePodSandbox's work: remove the pod's containers, then the sandbox.
async fn remove_pod(services: Arc<Services>, id: String) -> Result<(), Status> {
    let Some(lock) = services.sandboxes.lock(&id).await else {
        return Ok(());
    };
    let Some(sandbox) = services.sandboxes.get(lock.id()) else {
        return Ok(());
    };
    for c in services.containers.of_sandbox(&sandbox.id) {
        container::remove(Arc::clone(&services), c.id.clone()).await?;
    }
    services
        .sandboxes
        .remove(&lock)
        .await
        .map_err(|e| error::sandbox_status(&e))?;
    services
        .images
        .remove_rootfs(&pause_rootfs_key(&sandbox.id))
        .await
        .map_err(|e| error::image_status(&e))?;
    services.events.emit(
        &services,
        &sandbox.id,
        cri::ContainerEventType::ContainerDeletedEvent,
    );
    Ok(())
}

/// The key of a sandbox's pause-image rootfs in the image service.
fn pause_rootfs_key(sandbox_id: &str) -> String {
    format!("pause-{sandbox_id}")
}

/// The sandbox a rootfs key belongs to when it names a pause-image rootfs (recovery
/// keeps those of live pods).
pub fn pause_rootfs_owner(key: &str) -> Option<&str> {
    key.strip_prefix("pause-")
}

/// RunPodSandbox's work: with `pause_image` configured, pull it if absent and mount its
/// rootfs for the pause process; then run the sandbox, undoing the mount on failure.
async fn run_pod(
    services: Arc<Services>,
    config: cri::PodSandboxConfig,
    handler: String,
) -> Result<String, Status> {
    let id = crust_sandbox::SandboxService::new_id();
    let mut pause = None;
    if let Some(name) = services
        .config
        .pause_image
        .clone()
        .filter(|_| services.sandboxes.needs_pause(&config))
    {
        let image = match services.images.resolve(&name) {
            Some(i) => i,
            None => {
                services
                    .images
                    .pull(&name, None, tokio_util::sync::CancellationToken::new())
                    .await
                    .map_err(|e| error::image_status(&e))?
                    .image
            }
        };
        let image_config = image.config_json();
        let strings = |key: &str| -> Vec<String> {
            image_config
                .pointer(&format!("/config/{key}"))
                .and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut args = strings("Entrypoint");
        args.extend(strings("Cmd"));
        if args.is_empty() {
            return Err(Status::failed_precondition(format!(
                "pause image {name}: it names no command"
            )));
        }
        // Outside the sandbox's own state dir, which its removal deletes.
        let mountpoint = services.config.state.join("pause-rootfs").join(&id);
        // A bad user namespace request is refused before anything is mounted for it.
        let idmap =
            crust_sandbox::user_namespace_of(&config).map_err(|e| error::sandbox_status(&e))?;
        let rootfs = services
            .images
            .create_rootfs(&image, &pause_rootfs_key(&id), &mountpoint, idmap)
            .await
            .map_err(|e| error::image_status(&e))?;
        pause = Some(crust_sandbox::PauseProcess {
            rootfs,
            args,
            env: strings("Env"),
        });
    }
    let result = services
        .sandboxes
        .run(id.clone(), config, &handler, pause)
        .await;
    if result.is_err()
        && let Err(e) = services.images.remove_rootfs(&pause_rootfs_key(&id)).await
    {
        tracing::warn!(sandbox = %id, error = %e, "pause rootfs cleanup");
    }
    result.map_err(|e| error::sandbox_status(&e))
}
