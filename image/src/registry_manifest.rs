//! Fetching a registry manifest or index by tag or digest with a bounded, streaming read.
//!
//! oci-client reads a manifest response whole before handing it over, so a hostile
//! registry could make crustd buffer an endless body. Here a too-large
//! `Content-Length` is refused before the body is read, and the body is read chunk by
//! chunk up to the cap and not one chunk further; error bodies are bounded too.
//!
//! Authentication stays oci-client's: on a 401 its `auth` runs the token dance (bearer
//! challenge from `/v2/`, basic fallback) and caches the token for the blob fetches
//! that follow; the header that earned a manifest is kept per repository so the next
//! pull of it needs no new dance until the registry refuses it.

use bytes::{Bytes, BytesMut};
use oci_client::errors::{OciDistributionError, OciEnvelope};
use oci_client::secrets::RegistryAuth;
use oci_client::{Reference, RegistryOperation};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};

use crate::error::{ErrorKind, ImageError, Op, Result};
use crate::registry::{Route, error_chain, registry_error};

/// How much of an error response is read for its message.
const MAX_ERROR_BODY_BYTES: usize = 64 << 10;

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

/// The URL oci-client would use for this manifest, so both reach the same place.
fn manifest_url(route: &Route, reference: &Reference) -> String {
    format!(
        "{}://{}/v2/{}/manifests/{}{}",
        route.scheme,
        reference.resolve_registry(),
        reference.repository(),
        reference
            .digest()
            .unwrap_or_else(|| reference.tag().unwrap_or("latest")),
        reference
            .namespace()
            .map(|ns| format!("?ns={ns}"))
            .unwrap_or_default(),
    )
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
    let url = manifest_url(route, reference);
    let registry = reference.resolve_registry().to_string();
    // Blob fetches through oci-client authenticate with what it has stored.
    route
        .client
        .store_auth_if_needed(&registry, &route.auth)
        .await;
    let repository = reference.repository().to_string();
    let cached = route
        .authorizations
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&repository);
    let mut response = send(image, route, &url, accept, cached.as_deref()).await?;
    if response.status() == StatusCode::UNAUTHORIZED
        && let Some(header) = authorize(image, route, reference).await?
    {
        response = send(image, route, &url, accept, Some(&header)).await?;
        if response.status().is_success() {
            route
                .authorizations
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(repository, header);
        }
    }
    let status = response.status();
    if status != StatusCode::OK {
        return Err(refused(image, route, &url, response).await.into());
    }
    if response.content_length().is_some_and(|n| n > cap) {
        return Err(Failure::TooLarge);
    }
    let digest_header = response
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_string);
    let mut body = BytesMut::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if (body.len() + chunk.len()) as u64 > cap {
                    return Err(Failure::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => return Err(transport(image, route, &e).into()),
        }
    }
    Ok(Fetched {
        body: body.freeze(),
        digest_header,
    })
}

async fn send(
    image: &str,
    route: &Route,
    url: &str,
    accept: &[&str],
    authorization: Option<&str>,
) -> Result<reqwest::Response> {
    let mut request = route.http.get(url).header(ACCEPT, accept.join(", "));
    if let Some(value) = authorization.and_then(|a| HeaderValue::from_str(a).ok()) {
        let mut value = value;
        value.set_sensitive(true);
        request = request.header(AUTHORIZATION, value);
    }
    request
        .send()
        .await
        .map_err(|e| transport(image, route, &e))
}

/// The `Authorization` header to retry a refused request with, from oci-client's token
/// dance; `None` when there is nothing to offer (an anonymous pull the registry wants
/// credentials for).
async fn authorize(image: &str, route: &Route, reference: &Reference) -> Result<Option<String>> {
    match route
        .client
        .auth(reference, &route.auth, RegistryOperation::Pull)
        .await
    {
        Ok(Some(token)) => Ok(Some(format!("Bearer {token}"))),
        // No bearer challenge: the registry wants basic credentials, or none we have.
        Ok(None) => Ok(match &route.auth {
            RegistryAuth::Basic(user, pass) => {
                use base64::Engine;
                let pair =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
                Some(format!("Basic {pair}"))
            }
            _ => None,
        }),
        Err(e) => Err(registry_error(image, &route.endpoint, e)),
    }
}

/// The error for a response other than 200, its body read no further than
/// [`MAX_ERROR_BODY_BYTES`]; mapped as oci-client's own errors are.
async fn refused(
    image: &str,
    route: &Route,
    url: &str,
    mut response: reqwest::Response,
) -> ImageError {
    let status = response.status();
    let json = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    let mut body = Vec::new();
    while body.len() < MAX_ERROR_BODY_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = MAX_ERROR_BODY_BYTES - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    let url = url.to_string();
    let envelope = serde_json::from_slice::<OciEnvelope>(&body).ok();
    let e = match (status, envelope) {
        (StatusCode::UNAUTHORIZED, _) => OciDistributionError::UnauthorizedError { url },
        (s, _) if s.is_success() => {
            OciDistributionError::SpecViolationError(format!("expected HTTP status 200, got {s}"))
        }
        (s, Some(envelope)) if s.is_client_error() && (json || !envelope.errors.is_empty()) => {
            OciDistributionError::RegistryError { envelope, url }
        }
        (s, _) => OciDistributionError::ServerError {
            code: s.as_u16(),
            url,
            message: String::from_utf8_lossy(&body).into_owned(),
        },
    };
    registry_error(image, &route.endpoint, e)
}

/// A connection, TLS or timeout error: the registry may do better next time.
fn transport(image: &str, route: &Route, e: &reqwest::Error) -> ImageError {
    ImageError::Source {
        op: Op::Pull,
        reference: image.to_string(),
        message: format!("{}: manifest: {}", route.endpoint, error_chain(e)),
        kind: ErrorKind::Unavailable,
    }
}
