//! Fetching a registry manifest or index by tag or digest with a bounded, streaming read.
//!
//! A hostile registry could answer with an endless body: a too-large `Content-Length`
//! is refused before the body is read, and the body is read chunk by chunk up to the
//! cap and not one chunk further. Authentication and error bodies are the shared
//! request's ([`crate::registry_http`]).

use bytes::Bytes;
use oci_client::Reference;

use crate::error::ImageError;
use crate::registry::Route;
use crate::registry_http::{self, Capped};

/// What a manifest fetch returns.
pub(crate) struct Fetched {
    /// The body, at most the cap.
    pub(crate) body: Bytes,
    /// The `Docker-Content-Digest` the registry sent, if any.
    pub(crate) digest_header: Option<String>,
}

/// Why a manifest fetch failed: past the cap (the caller names the cap), or otherwise.
pub(crate) enum Failure {
    /// The body is larger than the cap (by its Content-Length or as it streamed).
    TooLarge,
    /// Anything else.
    Other(ImageError),
}

impl From<ImageError> for Failure {
    fn from(e: ImageError) -> Self {
        Failure::Other(e)
    }
}

/// Fetches the manifest `reference` names through `route`, reading at most `cap`
/// bytes of it.
pub(crate) async fn fetch(
    image: &str,
    route: &Route,
    reference: &Reference,
    accept: &[&str],
    cap: u64,
) -> std::result::Result<Fetched, Failure> {
    let name = reference
        .digest()
        .unwrap_or_else(|| reference.tag().unwrap_or("latest"));
    let url = registry_http::url(route, reference, "manifests", name);
    let what = format!("manifest {name}");
    let response = registry_http::get(image, route, reference, &url, accept, &what).await?;
    let digest_header = response
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_string);
    match registry_http::read_capped(response, cap).await {
        Ok(Capped::Whole(body)) => Ok(Fetched {
            body,
            digest_header,
        }),
        Ok(Capped::TooLarge) => Err(Failure::TooLarge),
        Err(e) => Err(registry_http::transport(image, route, &what, &e).into()),
    }
}
