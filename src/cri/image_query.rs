//! ListImages, ImageStatus and ImageFsInfo: answered from memory.

use std::collections::HashMap;

use crust_proto::cri;
use tonic::{Request, Response, Status};

use super::{Cri, convert, error, now_nanos};

impl Cri {
    pub(super) async fn list_images(
        &self,
        request: Request<cri::ListImagesRequest>,
    ) -> Result<Response<cri::ListImagesResponse>, Status> {
        self.instrumented("ListImages", async {
            let services = self.services()?;
            let wanted = request
                .into_inner()
                .filter
                .and_then(|f| f.image)
                .map(|i| i.image)
                .filter(|i| !i.is_empty());
            let images = match wanted {
                Some(name) => services.images.resolve(&name).into_iter().collect(),
                None => services.images.list(),
            };
            Ok(cri::ListImagesResponse {
                images: images.iter().map(|r| convert::image(r)).collect(),
            })
        })
        .await
    }

    pub(super) async fn image_status(
        &self,
        request: Request<cri::ImageStatusRequest>,
    ) -> Result<Response<cri::ImageStatusResponse>, Status> {
        self.instrumented("ImageStatus", async {
            let services = self.services()?;
            let req = request.into_inner();
            let name = req
                .image
                .map(|i| i.image)
                .filter(|i| !i.is_empty())
                .ok_or_else(|| Status::invalid_argument("image: no reference given"))?;
            // An absent image is an empty answer, not an error: kubelet asks before pulling.
            let Some(record) = services.images.resolve(&name) else {
                return Ok(cri::ImageStatusResponse::default());
            };
            let mut info = HashMap::new();
            if req.verbose {
                let layers: Vec<_> = record.layers.iter().map(|l| &l.diff_id).collect();
                let verbose = serde_json::json!({
                    "imageSpec": record.config_json(),
                    "layers": layers,
                    "pulledAt": record.created_at,
                });
                info.insert("info".to_string(), verbose.to_string());
            }
            Ok(cri::ImageStatusResponse {
                image: Some(convert::image(&record)),
                info,
            })
        })
        .await
    }

    pub(super) async fn image_fs_info(
        &self,
        _request: Request<cri::ImageFsInfoRequest>,
    ) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        self.instrumented("ImageFsInfo", async {
            let services = self.services()?;
            let (dir, bytes, inodes) = services.images.usage();
            Ok(cri::ImageFsInfoResponse {
                image_filesystems: vec![cri::FilesystemUsage {
                    timestamp: now_nanos(),
                    fs_id: Some(cri::FilesystemIdentifier {
                        mountpoint: dir.display().to_string(),
                    }),
                    used_bytes: Some(cri::UInt64Value { value: bytes }),
                    inodes_used: Some(cri::UInt64Value { value: inodes }),
                }],
                container_filesystems: Vec::new(),
            })
        })
        .await
    }

    pub(super) async fn remove_image(
        &self,
        request: Request<cri::RemoveImageRequest>,
    ) -> Result<Response<cri::RemoveImageResponse>, Status> {
        self.instrumented("RemoveImage", async {
            let services = self.services()?;
            let name = request
                .into_inner()
                .image
                .map(|i| i.image)
                .filter(|i| !i.is_empty())
                .ok_or_else(|| Status::invalid_argument("image: no reference given"))?;
            let images = services.images.clone();
            // Detached so that a client giving up cannot interrupt the record update and
            // the layer deletion that follows it.
            tokio::spawn(async move { images.remove(&name).await })
                .await
                .map_err(|e| Status::internal(format!("remove task failed: {e}")))?
                .map_err(|e| error::image_status(&e))?;
            Ok(cri::RemoveImageResponse {})
        })
        .await
    }
}
