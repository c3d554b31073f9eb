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
use crate::registry::{Route, error_chain};
use crate::source::{BlobError, BlobSource, BlobStream, Job};
use crate::{registry_http, registry_manifest};

const ACCEPTED_MANIFESTS: &[&str] = &[OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];

/// A registry route as a source of blobs.
pub(crate) struct RegistrySource {
    /// The route that answered the top-level manifest.
    pub(crate) route: Route,
}

impl RegistrySource {
    /// Fetches a manifest by `reference`, reading no more than the cap of it, and checks
    /// its digest against the reference when that names one, and against the
    /// registry's `Docker-Content-Digest` when it sent a sha256 one.
    async fn fetch(&self, job: &Job, reference: &Reference) -> Result<(Bytes, String)> {
        let fetched = match registry_manifest::fetch(
            &job.name,
            &self.route,
            reference,
            ACCEPTED_MANIFESTS,
            MAX_METADATA_BYTES,
        )
        .await
        {
            Ok(f) => f,
            Err(registry_manifest::Failure::TooLarge) => {
                return Err(job.too_large(
                    format!("manifest {reference}"),
                    MAX_METADATA_BYTES,
                    METADATA_RULE,
                ));
            }
            Err(registry_manifest::Failure::Other(e)) => return Err(e),
        };
        let actual = sha256_of(&fetched.body);
        let header = fetched
            .digest_header
            .as_deref()
            .filter(|d| d.starts_with("sha256:"));
        for expected in [reference.digest(), header].into_iter().flatten() {
            if expected != actual {
                return Err(job.mismatch("manifest", expected, actual));
            }
        }
        Ok((fetched.body, actual))
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
        // Through the same client and authentication as the manifests, so that an
        // error answer is read only as far as its message needs, and a 200 streams to
        // the callers, which stop it at the descriptor's size and check its digest.
        let route = &self.route;
        let url = registry_http::url(route, &route.reference, "blobs", digest);
        let what = format!("blob {digest}");
        let response =
            registry_http::get(&job.name, route, &route.reference, &url, &[], &what).await?;
        Ok(BlobStream {
            content_length: response.content_length(),
            stream: response
                .bytes_stream()
                .map_err(|e| BlobError {
                    message: error_chain(&e),
                    digest_check: false,
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
