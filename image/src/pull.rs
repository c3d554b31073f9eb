//! Pulling from a registry: the top-level manifest is fetched by the reference (a tag
//! or a digest) from one route; everything it points to comes by digest through the
//! same route, as a [`BlobSource`] for the shared resolve (manifest.rs) and layer
//! streaming (fetch.rs).

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use oci_client::Reference;

use crate::error::Result;
use crate::manifest::{
    self, DOCKER_LIST, DOCKER_MANIFEST, MAX_METADATA_BYTES, METADATA_RULE, OCI_INDEX, OCI_MANIFEST,
    Resolved, sha256_of,
};
use crate::registry::{Route, error_chain, registry_error};
use crate::source::{BlobError, BlobSource, BlobStream, Job};

const ACCEPTED_MANIFESTS: &[&str] = &[OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];

/// A registry route as a source of blobs.
pub(crate) struct RegistrySource {
    /// The route that answered the top-level manifest.
    pub(crate) route: Route,
}

impl RegistrySource {
    /// Fetches a manifest by `reference` and checks its size, and its digest when the
    /// reference names one.
    ///
    /// oci-client reads a manifest response whole before handing it over, so a
    /// top-level manifest is only checked against the cap after it arrived; one an index
    /// points to is refused by its descriptor's size before it is fetched.
    async fn fetch(&self, job: &Job, reference: &Reference) -> Result<(Bytes, String)> {
        let route = &self.route;
        let (bytes, _) = route
            .client
            .pull_manifest_raw(reference, &route.auth, ACCEPTED_MANIFESTS)
            .await
            .map_err(|e| registry_error(&job.name, &route.endpoint, e))?;
        if bytes.len() as u64 > MAX_METADATA_BYTES {
            return Err(job.too_large(
                format!("manifest {reference}"),
                MAX_METADATA_BYTES,
                METADATA_RULE,
            ));
        }
        let actual = sha256_of(&bytes);
        if let Some(expected) = reference.digest()
            && expected != actual
        {
            return Err(job.mismatch("manifest", expected, actual));
        }
        Ok((bytes, actual))
    }
}

impl BlobSource for RegistrySource {
    fn origin(&self) -> &str {
        &self.route.endpoint
    }

    async fn manifest(&self, job: &Job, digest: &str, _size: u64) -> Result<Bytes> {
        let child = self.route.reference.clone_with_digest(digest.to_string());
        Ok(self.fetch(job, &child).await?.0)
    }

    async fn blob(&self, job: &Job, digest: &str, _size: u64) -> Result<BlobStream> {
        let route = &self.route;
        let blob = route
            .client
            .pull_blob_stream(&route.reference, digest)
            .await
            .map_err(|e| registry_error(&job.name, &route.endpoint, e))?;
        Ok(BlobStream {
            content_length: blob.content_length,
            stream: blob
                .stream
                .map_err(|e| BlobError {
                    // oci-client checks the digest as the bytes stream and fails the
                    // last read with an I/O error saying so.
                    digest_check: e.to_string().to_lowercase().contains("digest"),
                    message: error_chain(&e),
                })
                .boxed(),
        })
    }
}

/// Resolves `job`'s image through `route` down to a config and a layer list.
pub(crate) async fn resolve(job: &Job, route: Route) -> Result<(Resolved, RegistrySource)> {
    let source = RegistrySource { route };
    let (top, top_digest) = source.fetch(job, &source.route.reference).await?;
    let resolved = manifest::resolve(job, &source, top, top_digest).await?;
    Ok((resolved, source))
}
