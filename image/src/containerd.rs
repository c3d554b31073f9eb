//! Importing images from a running containerd over its gRPC API (Images, Content,
//! Leases): its image records name the top-level manifests, its content store serves
//! every manifest, config and layer blob by digest. The bytes go through the same
//! checks and the same streaming unpack as a pull; no registry is contacted.
//!
//! A lease held for the whole import, with every blob added to it before it is read,
//! keeps containerd's garbage collector from removing content mid-import (an image
//! deleted meanwhile, say); it expires by itself if crust dies before deleting it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::namespaces_client::NamespacesClient;
use containerd_client::services::v1::{
    AddResourceRequest, CreateRequest, DeleteRequest, InfoRequest, ListImagesRequest,
    ListNamespacesRequest, ReadContentRequest, Resource,
};
use futures_util::{StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::error::{ErrorKind, ImageError, Op, Result};
use crate::manifest::{self, MAX_METADATA_BYTES};
use crate::reference::{ImageRef, is_image_id};
use crate::source::{BlobError, BlobSource, BlobStream, Job};
use crate::{ImageRecord, ImageService};

/// How long connecting to containerd's socket may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long containerd keeps the import's lease if crust never deletes it.
const LEASE_EXPIRY: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// The gRPC metadata key that selects a containerd namespace.
const NAMESPACE_HEADER: &str = "containerd-namespace";

/// What importing one image did.
#[derive(Debug, Clone)]
pub struct ImportOutcome {
    /// The image's name in containerd.
    pub name: String,
    /// The image as recorded.
    pub image: Arc<ImageRecord>,
    /// Blob bytes read for layers (0 when every layer was present).
    pub bytes_read: u64,
    /// Whether the image was already here under this name, so nothing changed.
    pub already_present: bool,
}

/// One containerd image to import: its name and the descriptor it points to.
struct Candidate {
    name: String,
    target: containerd_client::types::Descriptor,
}

/// A connection to containerd, in one namespace, holding a lease until
/// [`Containerd::release`].
pub struct Containerd {
    /// The endpoint as given.
    endpoint: String,
    /// `containerd ENDPOINT`, as messages name it.
    origin: String,
    namespace: String,
    channel: Channel,
    lease: String,
}

fn status_kind(status: &tonic::Status) -> ErrorKind {
    match status.code() {
        tonic::Code::NotFound => ErrorKind::NotFound,
        tonic::Code::Unavailable => ErrorKind::Unavailable,
        tonic::Code::DeadlineExceeded => ErrorKind::DeadlineExceeded,
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => ErrorKind::PermissionDenied,
        tonic::Code::InvalidArgument => ErrorKind::InvalidArgument,
        _ => ErrorKind::Internal,
    }
}

/// The socket path of an endpoint given as `unix:///path` or a bare absolute path.
fn socket_path(endpoint: &str) -> Result<&str> {
    let path = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
    if !path.starts_with('/') {
        return Err(ImageError::Containerd {
            endpoint: endpoint.to_string(),
            message: "the endpoint must be unix:///PATH or an absolute socket path".into(),
            kind: ErrorKind::InvalidArgument,
        });
    }
    Ok(path)
}

impl Containerd {
    /// Connects to containerd at `endpoint`, checks that `namespace` exists and takes a
    /// lease in it.
    pub async fn connect(endpoint: &str, namespace: &str) -> Result<Self> {
        let error = |message: String, kind| ImageError::Containerd {
            endpoint: endpoint.to_string(),
            message,
            kind,
        };
        let path = socket_path(endpoint)?;
        let channel =
            match tokio::time::timeout(CONNECT_TIMEOUT, containerd_client::connect(path)).await {
                Ok(Ok(channel)) => channel,
                Ok(Err(e)) => {
                    return Err(error(
                        format!(
                            "connect: {} (is containerd running?)",
                            crate::registry::error_chain(&e)
                        ),
                        ErrorKind::Unavailable,
                    ));
                }
                Err(_) => {
                    return Err(error(
                        format!("connect: no answer within {CONNECT_TIMEOUT:?}"),
                        ErrorKind::Unavailable,
                    ));
                }
            };
        let mut client = Containerd {
            endpoint: endpoint.to_string(),
            origin: format!("containerd {endpoint}"),
            namespace: namespace.to_string(),
            channel,
            lease: String::new(),
        };
        // Get answers for any name (with no labels), so existence is a listing.
        let namespaces = NamespacesClient::new(client.channel.clone())
            .list(ListNamespacesRequest::default())
            .await
            .map_err(|s| error(format!("list namespaces: {}", s.message()), status_kind(&s)))?
            .into_inner()
            .namespaces;
        if !namespaces.iter().any(|n| n.name == namespace) {
            return Err(error(
                format!("namespace {namespace:?} does not exist"),
                ErrorKind::NotFound,
            ));
        }
        let expires =
            (chrono::Utc::now() + LEASE_EXPIRY).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let id = format!("crust-import-{:016x}", rand::random::<u64>());
        let request = client.request(CreateRequest {
            id: id.clone(),
            labels: [("containerd.io/gc.expire".to_string(), expires)].into(),
        });
        LeasesClient::new(client.channel.clone())
            .create(request)
            .await
            .map_err(|s| error(format!("create lease: {}", s.message()), status_kind(&s)))?;
        client.lease = id;
        Ok(client)
    }

    /// `message` as a request in our namespace.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        // containerd only creates namespaces with identifier-like names, and connect()
        // found this one among them, so it parses as a header value; were it not to,
        // containerd would refuse the request for naming no namespace.
        if let Ok(value) = self.namespace.parse() {
            request.metadata_mut().insert(NAMESPACE_HEADER, value);
        }
        request
    }

    /// Every image of the namespace, or those `wanted` names (as given, or normalized
    /// as references) pick out; a wanted name containerd lacks is an error of its own.
    async fn candidates(&self, wanted: &[String]) -> Result<Vec<Result<Candidate>>> {
        let images = ImagesClient::new(self.channel.clone())
            .list(self.request(ListImagesRequest::default()))
            .await
            .map_err(|s| ImageError::Containerd {
                endpoint: self.endpoint.clone(),
                message: format!(
                    "list images in namespace {:?}: {}",
                    self.namespace,
                    s.message()
                ),
                kind: status_kind(&s),
            })?
            .into_inner()
            .images;
        let mut out = Vec::new();
        let with_target = |image: &containerd_client::services::v1::Image| {
            image.target.clone().map(|target| Candidate {
                name: image.name.clone(),
                target,
            })
        };
        if wanted.is_empty() {
            // containerd's CRI plugin also names each image by its id, an alias of
            // the same image under its other names.
            out.extend(
                images
                    .iter()
                    .filter(|i| !is_image_id(&i.name))
                    .filter_map(with_target)
                    .map(Ok),
            );
            return Ok(out);
        }
        for name in wanted {
            let normalized = ImageRef::parse(name).ok().map(|r| r.to_string());
            let found = images.iter().find(|i| {
                i.name == *name
                    || normalized.is_some()
                        && ImageRef::parse(&i.name).ok().map(|r| r.to_string()) == normalized
            });
            out.push(match found.and_then(with_target) {
                Some(candidate) => Ok(candidate),
                None => Err(ImageError::NotFound(format!(
                    "{name} in containerd namespace {}",
                    self.namespace
                ))),
            });
        }
        Ok(out)
    }

    /// Adds `digest` to the lease, so containerd keeps it until the import ends.
    async fn hold(&self, job: &Job, digest: &str) -> Result<()> {
        let request = self.request(AddResourceRequest {
            id: self.lease.clone(),
            resource: Some(Resource {
                id: digest.to_string(),
                r#type: "content".to_string(),
            }),
        });
        LeasesClient::new(self.channel.clone())
            .add_resource(request)
            .await
            .map_err(|s| self.error(job, "lease", digest, &s))?;
        Ok(())
    }

    fn error(&self, job: &Job, what: &str, digest: &str, s: &tonic::Status) -> ImageError {
        job.source_error(
            format!("{}: {what} {digest}: {}", self.origin, s.message()),
            status_kind(s),
        )
    }

    /// Deletes the lease. Best effort: it expires anyway.
    pub async fn release(&self) {
        let request = self.request(DeleteRequest {
            id: self.lease.clone(),
            sync: false,
        });
        if let Err(s) = LeasesClient::new(self.channel.clone())
            .delete(request)
            .await
        {
            tracing::warn!(lease = %self.lease, error = %s.message(), "delete containerd lease");
        }
    }
}

impl BlobSource for Containerd {
    fn origin(&self) -> &str {
        &self.origin
    }

    async fn manifest(&self, job: &Job, digest: &str, size: u64) -> Result<Bytes> {
        let mut blob = self.blob(job, digest, size).await?;
        let mut out = Vec::with_capacity(size.min(MAX_METADATA_BYTES) as usize);
        while let Some(chunk) = blob.stream.next().await {
            let chunk = chunk.map_err(|e| {
                job.source_error(
                    format!("{}: manifest {digest}: {}", self.origin, e.message),
                    ErrorKind::Unavailable,
                )
            })?;
            // The caller checks the cap too; this keeps us from holding more first.
            if (out.len() + chunk.len()) as u64 > size.min(MAX_METADATA_BYTES) {
                return Err(job.too_large(
                    format!("manifest {digest}"),
                    size.min(MAX_METADATA_BYTES),
                    "the size its descriptor gives, at most 4 MiB",
                ));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out.into())
    }

    async fn blob(&self, job: &Job, digest: &str, size: u64) -> Result<BlobStream> {
        self.hold(job, digest).await?;
        let info = ContentClient::new(self.channel.clone())
            .info(self.request(InfoRequest {
                digest: digest.to_string(),
            }))
            .await
            .map_err(|s| self.error(job, "content", digest, &s))?
            .into_inner()
            .info;
        let stored = info.map(|i| i.size.max(0) as u64);
        // The content store holds what was written under this digest: a blob of another
        // size is not what the descriptor names, whatever its digest says.
        if stored.is_some_and(|n| n < size) {
            return Err(job.source_error(
                format!(
                    "{}: content {digest} holds {} of the {size} bytes its descriptor gives",
                    self.origin,
                    stored.unwrap_or(0)
                ),
                ErrorKind::Internal,
            ));
        }
        let stream = ContentClient::new(self.channel.clone())
            .read(self.request(ReadContentRequest {
                digest: digest.to_string(),
                offset: 0,
                // Zero reads to the end; the callers stop at the descriptor's size.
                size: 0,
            }))
            .await
            .map_err(|s| self.error(job, "read", digest, &s))?
            .into_inner();
        Ok(BlobStream {
            content_length: stored,
            stream: stream
                .map_ok(|chunk| Bytes::from(chunk.data))
                .map_err(|s| BlobError {
                    message: s.message().to_string(),
                    digest_check: false,
                })
                .boxed(),
        })
    }
}

impl ImageService {
    /// Imports images from `containerd`: those named in `wanted`, or every image of
    /// its namespace when it is empty. Listing failing fails the whole import; each
    /// image then succeeds or fails on its own, in order. The caller releases the
    /// lease.
    pub async fn import_from_containerd(
        &self,
        containerd: &Arc<Containerd>,
        wanted: &[String],
        cancel: CancellationToken,
    ) -> Result<Vec<Result<ImportOutcome>>> {
        let mut outcomes = Vec::new();
        for candidate in containerd.candidates(wanted).await? {
            let outcome = match candidate {
                Ok(c) => self.import_one(containerd, c, &cancel).await,
                Err(e) => Err(e),
            };
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    async fn import_one(
        &self,
        containerd: &Arc<Containerd>,
        candidate: Candidate,
        cancel: &CancellationToken,
    ) -> Result<ImportOutcome> {
        let image = ImageRef::parse(&candidate.name)?;
        let job = Job::new(Op::Import, image.to_string());
        let target = &candidate.target;
        let size = target.size.max(0) as u64;
        let resolved = tokio::select! {
            r = async {
                let top = manifest::fetch_manifest(&job, &**containerd, &target.digest, size).await?;
                manifest::resolve(&job, &**containerd, top, target.digest.clone()).await
            } => r?,
            _ = cancel.cancelled() => return Err(job.cancelled()),
        };
        let digest_name = image.with_digest(&resolved.top_digest);
        let already_present = self.resolve(&job.name).is_some_and(|r| {
            r.id == resolved.config_digest && r.repo_digests.contains(&digest_name)
        });
        let outcome = self
            .install(
                &job,
                &image,
                Arc::clone(containerd),
                resolved,
                cancel.clone(),
            )
            .await?;
        Ok(ImportOutcome {
            name: candidate.name,
            already_present: already_present && outcome.bytes_downloaded == 0,
            bytes_read: outcome.bytes_downloaded,
            image: outcome.image,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_unix_sockets() {
        assert_eq!(
            socket_path("unix:///run/containerd/containerd.sock").unwrap(),
            "/run/containerd/containerd.sock"
        );
        assert_eq!(socket_path("/tmp/c.sock").unwrap(), "/tmp/c.sock");
        for bad in ["tcp://127.0.0.1:1", "unix://relative.sock", "c.sock", ""] {
            let e = socket_path(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad}");
        }
    }
}
