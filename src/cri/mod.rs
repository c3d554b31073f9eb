//! The CRI gRPC services: thin handlers that validate, call the domain crates and map
//! errors. One file per RPC or small group of RPCs.

mod checkpoint;
mod container;
mod container_restore;
mod convert;
mod error;
pub mod events;
mod image_pull;
mod image_query;
pub mod instrument;
pub mod list;
mod pod_metrics;
mod runtime_info;
mod sandbox;
pub use sandbox::pause_rootfs_owner;
pub mod stats;
mod streaming;

use std::sync::{Arc, OnceLock};

use crust_image::ImageService;
use crust_proto::cri;
use tonic::{Request, Response, Status};

use crate::config::Config;

/// Nanoseconds since the epoch, now.
pub use crust_util::time::now_nanos;

/// Everything the handlers use, available once start-up recovery has finished.
pub struct Services {
    /// The daemon's configuration.
    pub config: Arc<Config>,
    /// Images on this node.
    pub images: Arc<ImageService>,
    /// Pod sandboxes.
    pub sandboxes: Arc<crust_sandbox::SandboxService>,
    /// Containers.
    pub containers: Arc<crust_runtime::container::ContainerService>,
    /// Stats caches (cgroup paths, CPU samples, writable layer usage).
    pub stats: stats::StatsState,
    /// Lifecycle events for GetContainerEvents.
    pub events: events::Events,
    /// The streaming server that Exec, Attach and PortForward URLs lead to.
    pub streaming: Arc<crate::streaming::StreamingServer>,
}

/// The CRI server: RuntimeService and ImageService over one set of [`Services`].
#[derive(Clone)]
pub struct Cri {
    services: Arc<OnceLock<Arc<Services>>>,
    metrics: Arc<crate::metrics::Metrics>,
    /// The prebuilt List items (see [`list`]).
    lists: Arc<list::ListCache>,
}

impl Cri {
    /// A server that answers Unavailable until [`Cri::set_ready`] is called.
    pub fn new(metrics: Arc<crate::metrics::Metrics>) -> Self {
        Cri {
            services: Arc::new(OnceLock::new()),
            metrics,
            lists: Arc::default(),
        }
    }

    /// Runs an RPC body through [`instrument::instrument`] and counts it in the metrics.
    async fn instrumented<T>(
        &self,
        method: &'static str,
        body: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<Response<T>, Status> {
        let start = std::time::Instant::now();
        let result = instrument::instrument(method, body).await;
        let code = match &result {
            Ok(_) => tonic::Code::Ok,
            Err(s) => s.code(),
        };
        self.metrics
            .observe_rpc(method, &format!("{code:?}"), start.elapsed().as_secs_f64());
        result
    }

    /// Starts serving: recovery has finished.
    pub fn set_ready(&self, services: Arc<Services>) {
        let _ = self.services.set(services);
    }

    fn services(&self) -> Result<Arc<Services>, Status> {
        self.services
            .get()
            .cloned()
            .ok_or_else(|| Status::unavailable("crust is starting: recovery has not finished"))
    }
}

/// Whether `labels` has every key of `selector` with the same value.
fn labels_match(
    labels: &std::collections::HashMap<String, String>,
    selector: &std::collections::HashMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[tonic::async_trait]
impl cri::runtime_service_server::RuntimeService for Cri {
    async fn version(
        &self,
        r: Request<cri::VersionRequest>,
    ) -> Result<Response<cri::VersionResponse>, Status> {
        Cri::version(self, r).await
    }
    async fn status(
        &self,
        r: Request<cri::StatusRequest>,
    ) -> Result<Response<cri::StatusResponse>, Status> {
        Cri::status(self, r).await
    }
    async fn runtime_config(
        &self,
        r: Request<cri::RuntimeConfigRequest>,
    ) -> Result<Response<cri::RuntimeConfigResponse>, Status> {
        Cri::runtime_config(self, r).await
    }
    async fn update_runtime_config(
        &self,
        _r: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<cri::UpdateRuntimeConfigResponse>, Status> {
        // kubelet sends the pod CIDR here; CNI plugins get theirs from their own config.
        self.instrumented("UpdateRuntimeConfig", async {
            self.services()?;
            Ok(cri::UpdateRuntimeConfigResponse {})
        })
        .await
    }
    async fn run_pod_sandbox(
        &self,
        r: Request<cri::RunPodSandboxRequest>,
    ) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
        Cri::run_pod_sandbox(self, r).await
    }
    async fn stop_pod_sandbox(
        &self,
        r: Request<cri::StopPodSandboxRequest>,
    ) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        Cri::stop_pod_sandbox(self, r).await
    }
    async fn remove_pod_sandbox(
        &self,
        r: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        Cri::remove_pod_sandbox(self, r).await
    }
    async fn pod_sandbox_status(
        &self,
        r: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        Cri::pod_sandbox_status(self, r).await
    }
    async fn list_pod_sandbox(
        &self,
        r: Request<cri::ListPodSandboxRequest>,
    ) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        Cri::list_pod_sandbox(self, r).await
    }
    async fn create_container(
        &self,
        r: Request<cri::CreateContainerRequest>,
    ) -> Result<Response<cri::CreateContainerResponse>, Status> {
        Cri::create_container(self, r).await
    }
    async fn start_container(
        &self,
        r: Request<cri::StartContainerRequest>,
    ) -> Result<Response<cri::StartContainerResponse>, Status> {
        Cri::start_container(self, r).await
    }
    async fn stop_container(
        &self,
        r: Request<cri::StopContainerRequest>,
    ) -> Result<Response<cri::StopContainerResponse>, Status> {
        Cri::stop_container(self, r).await
    }
    async fn remove_container(
        &self,
        r: Request<cri::RemoveContainerRequest>,
    ) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        Cri::remove_container(self, r).await
    }
    async fn list_containers(
        &self,
        r: Request<cri::ListContainersRequest>,
    ) -> Result<Response<cri::ListContainersResponse>, Status> {
        Cri::list_containers(self, r).await
    }
    async fn container_status(
        &self,
        r: Request<cri::ContainerStatusRequest>,
    ) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        Cri::container_status(self, r).await
    }
    async fn update_container_resources(
        &self,
        r: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        Cri::update_container_resources(self, r).await
    }
    async fn reopen_container_log(
        &self,
        r: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        Cri::reopen_container_log(self, r).await
    }
    async fn exec_sync(
        &self,
        r: Request<cri::ExecSyncRequest>,
    ) -> Result<Response<cri::ExecSyncResponse>, Status> {
        Cri::exec_sync(self, r).await
    }
    async fn exec(
        &self,
        r: Request<cri::ExecRequest>,
    ) -> Result<Response<cri::ExecResponse>, Status> {
        Cri::exec(self, r).await
    }
    async fn attach(
        &self,
        r: Request<cri::AttachRequest>,
    ) -> Result<Response<cri::AttachResponse>, Status> {
        Cri::attach(self, r).await
    }
    async fn port_forward(
        &self,
        r: Request<cri::PortForwardRequest>,
    ) -> Result<Response<cri::PortForwardResponse>, Status> {
        Cri::port_forward(self, r).await
    }
    async fn container_stats(
        &self,
        r: Request<cri::ContainerStatsRequest>,
    ) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        Cri::container_stats(self, r).await
    }
    async fn list_container_stats(
        &self,
        r: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        Cri::list_container_stats(self, r).await
    }
    async fn pod_sandbox_stats(
        &self,
        r: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        Cri::pod_sandbox_stats(self, r).await
    }
    async fn list_pod_sandbox_stats(
        &self,
        r: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        Cri::list_pod_sandbox_stats(self, r).await
    }
    async fn checkpoint_container(
        &self,
        r: Request<cri::CheckpointContainerRequest>,
    ) -> Result<Response<cri::CheckpointContainerResponse>, Status> {
        Cri::checkpoint_container(self, r).await
    }
    type GetContainerEventsStream = events::EventStream;
    async fn get_container_events(
        &self,
        r: Request<cri::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        Cri::get_container_events(self, r).await
    }
    async fn list_metric_descriptors(
        &self,
        r: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Result<Response<cri::ListMetricDescriptorsResponse>, Status> {
        Cri::list_metric_descriptors(self, r).await
    }
    async fn list_pod_sandbox_metrics(
        &self,
        r: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<cri::ListPodSandboxMetricsResponse>, Status> {
        Cri::list_pod_sandbox_metrics(self, r).await
    }
}

#[tonic::async_trait]
impl cri::image_service_server::ImageService for Cri {
    async fn list_images(
        &self,
        r: Request<cri::ListImagesRequest>,
    ) -> Result<Response<cri::ListImagesResponse>, Status> {
        Cri::list_images(self, r).await
    }
    async fn image_status(
        &self,
        r: Request<cri::ImageStatusRequest>,
    ) -> Result<Response<cri::ImageStatusResponse>, Status> {
        Cri::image_status(self, r).await
    }
    async fn pull_image(
        &self,
        r: Request<cri::PullImageRequest>,
    ) -> Result<Response<cri::PullImageResponse>, Status> {
        Cri::pull_image(self, r).await
    }
    async fn remove_image(
        &self,
        r: Request<cri::RemoveImageRequest>,
    ) -> Result<Response<cri::RemoveImageResponse>, Status> {
        Cri::remove_image(self, r).await
    }
    async fn image_fs_info(
        &self,
        r: Request<cri::ImageFsInfoRequest>,
    ) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        Cri::image_fs_info(self, r).await
    }
}

/// The two gRPC services, ready to add to a server.
pub fn services(
    cri: Cri,
) -> (
    list::RuntimeRouter,
    cri::image_service_server::ImageServiceServer<Cri>,
) {
    // CRI messages (ListContainers with hundreds of containers, verbose statuses) can
    // exceed tonic's 4 MiB default; containerd allows 16 MiB.
    (
        list::RuntimeRouter::new(cri.clone()),
        cri::image_service_server::ImageServiceServer::new(cri)
            .max_decoding_message_size(list::MAX_MESSAGE)
            .max_encoding_message_size(list::MAX_MESSAGE),
    )
}
