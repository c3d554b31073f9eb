//! CheckpointContainer: kubelet's container checkpoint API (`crictl checkpoint
//! --export`), a CRIU dump of a running container into an archive at the requested
//! location, the container left running.

use std::sync::Arc;
use std::time::Duration;

use crust_proto::cri;
use crust_runtime::container::{CheckpointRequest, DEFAULT_CHECKPOINT_TIMEOUT};
use tonic::{Request, Response, Status};

use super::{Cri, error};

impl Cri {
    pub(super) async fn checkpoint_container(
        &self,
        request: Request<cri::CheckpointContainerRequest>,
    ) -> Result<Response<cri::CheckpointContainerResponse>, Status> {
        let req = request.into_inner();
        self.instrumented("CheckpointContainer", async {
            let services = self.services()?;
            if req.container_id.is_empty() {
                return Err(Status::invalid_argument("container_id: empty"));
            }
            if req.location.is_empty() {
                return Err(Status::invalid_argument(
                    "location: empty (crust writes checkpoints as archives only)",
                ));
            }
            // Seconds, as kubelet sends it; 0 means the runtime's default.
            let timeout = if req.timeout > 0 {
                Duration::from_secs(req.timeout as u64)
            } else {
                DEFAULT_CHECKPOINT_TIMEOUT
            };
            let writable_layer = services
                .containers
                .get(&req.container_id)
                .and_then(|r| services.images.writable_layer(&r.id));
            let containers = Arc::clone(&services.containers);
            // Detached: a client that gives up must not leave the container frozen.
            tokio::spawn(async move {
                containers
                    .checkpoint(CheckpointRequest {
                        id: req.container_id,
                        location: req.location,
                        timeout,
                        writable_layer,
                    })
                    .await
            })
            .await
            .map_err(|e| Status::internal(format!("checkpoint task failed: {e}")))?
            .map_err(|e| error::container_status(&e))?;
            Ok(cri::CheckpointContainerResponse {})
        })
        .await
    }
}
