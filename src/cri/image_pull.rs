//! PullImage.

use crust_image::Credentials;
use crust_proto::cri;
use tonic::{Request, Status};

use super::{Cri, error, instrument};

impl Cri {
    pub(super) async fn pull_image(
        &self,
        request: Request<cri::PullImageRequest>,
    ) -> Result<tonic::Response<cri::PullImageResponse>, Status> {
        let deadline = instrument::deadline_of(&request);
        let req = request.into_inner();
        self.instrumented("PullImage", async {
            let services = self.services()?;
            let reference = req
                .image
                .as_ref()
                .map(|i| i.image.clone())
                .filter(|i| !i.is_empty())
                .ok_or_else(|| Status::invalid_argument("image: no reference given"))?;
            let auth = req.auth.map(|a| Credentials {
                username: a.username,
                password: a.password,
                auth: a.auth,
                identity_token: a.identity_token,
                registry_token: a.registry_token,
                server_address: a.server_address,
            });
            let images = services.images.clone();
            let started = std::time::Instant::now();
            let outcome = instrument::detached_cancellable(deadline, move |cancel| async move {
                images
                    .pull(&reference, auth.as_ref(), cancel)
                    .await
                    .map_err(|e| error::image_status(&e))
            })
            .await;
            let elapsed = started.elapsed().as_secs_f64();
            // Unpacking ran on blocking threads whose malloc arenas keep tens of MiB
            // after the pull freed them; hand that back to the node.
            tokio::task::spawn_blocking(|| {
                // SAFETY: malloc_trim only releases free heap memory; no pointers change.
                unsafe { libc::malloc_trim(0) };
            });
            match &outcome {
                Ok(o) => self.metrics.observe_pull(o.bytes_downloaded, elapsed, true),
                Err(_) => self.metrics.observe_pull(0, elapsed, false),
            }
            let outcome = outcome?;
            tracing::info!(
                image = %outcome.image.id,
                names = ?outcome.image.repo_tags,
                bytes = outcome.bytes_downloaded,
                "pulled"
            );
            Ok(cri::PullImageResponse {
                image_ref: outcome.image.id.clone(),
            })
        })
        .await
    }
}
