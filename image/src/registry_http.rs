//! Requests to a registry, shared by manifest and blob fetches: an authenticated GET
//! that reuses the `Authorization` header a repository earned before and, when the
//! registry answers 401, runs the token dance ([`crate::registry_token`]) once and
//! retries; bounded reads; and refusals turned into errors with their bodies read no
//! further than [`MAX_ERROR_BODY_BYTES`].
//!
//! Redirects (registries send blobs to storage hosts) are followed by reqwest, which
//! drops the `Authorization` header on a redirect to another host, port or scheme; a
//! 401 from a host the registry redirected to gets no credentials either.

use bytes::{Bytes, BytesMut};
use oci_client::Reference;
use oci_client::errors::{OciEnvelope, OciErrorCode};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderValue};

use crate::error::{ErrorKind, ImageError, Op, Result};
use crate::registry::{Auth, Route, error_chain};
use crate::registry_token::{self, basic_header};

/// How much of an error response is read for its message.
const MAX_ERROR_BODY_BYTES: usize = 64 << 10;
/// How much of an error body the message quotes: a gRPC status carries it to kubelet.
const MAX_QUOTED_CHARS: usize = 256;

/// The URL of a repository's `kind` (`manifests` or `blobs`) entry `name`, on the
/// route's endpoint.
pub(crate) fn url(route: &Route, reference: &Reference, kind: &str, name: &str) -> String {
    format!(
        "{}://{}/v2/{}/{kind}/{name}{}",
        route.scheme,
        reference.resolve_registry(),
        reference.repository(),
        reference
            .namespace()
            .map(|ns| format!("?ns={ns}"))
            .unwrap_or_default(),
    )
}

/// GETs `url` (an entry of `reference`'s repository, called `what` in messages)
/// through `route`, authenticating as the registry asks. Returns the response when
/// it is a 200, its body unread; any other answer is an error.
pub(crate) async fn get(
    image: &str,
    route: &Route,
    reference: &Reference,
    url: &str,
    accept: &[&str],
    what: &str,
) -> Result<reqwest::Response> {
    let repository = reference.repository().to_string();
    let cached = route
        .authorizations
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&repository);
    let mut response = send(image, route, url, accept, cached.as_deref(), what).await?;
    if response.status() == StatusCode::UNAUTHORIZED
        && same_origin(response.url(), url)
        && let Some(header) = authorize(image, route, &repository, &response).await?
    {
        response = send(image, route, url, accept, Some(&header), what).await?;
        if response.status().is_success() {
            route
                .authorizations
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(repository, header);
        }
    }
    if response.status() != StatusCode::OK {
        return Err(refused(image, route, what, response).await);
    }
    Ok(response)
}

/// Whether the response came from where the request went, not from a host a
/// redirect led to: only the registry's own challenges are answered.
fn same_origin(answered: &reqwest::Url, asked: &str) -> bool {
    reqwest::Url::parse(asked).is_ok_and(|asked| {
        asked.scheme() == answered.scheme()
            && asked.host_str() == answered.host_str()
            && asked.port_or_known_default() == answered.port_or_known_default()
    })
}

async fn send(
    image: &str,
    route: &Route,
    url: &str,
    accept: &[&str],
    authorization: Option<&str>,
    what: &str,
) -> Result<reqwest::Response> {
    let mut request = route.http.get(url);
    if !accept.is_empty() {
        request = request.header(ACCEPT, accept.join(", "));
    }
    if let Some(mut value) = authorization.and_then(|a| HeaderValue::from_str(a).ok()) {
        value.set_sensitive(true);
        request = request.header(AUTHORIZATION, value);
    }
    request
        .send()
        .await
        .map_err(|e| transport(image, route, what, &e))
}

/// The `Authorization` header to retry a refused request with; `None` when there is
/// nothing to offer (an anonymous pull the registry wants credentials for).
async fn authorize(
    image: &str,
    route: &Route,
    repository: &str,
    refusal: &reqwest::Response,
) -> Result<Option<String>> {
    // A registry token is the bearer token itself (CRI's `registry_token`).
    if let Auth::Bearer(token) = &route.auth {
        return Ok(Some(format!("Bearer {token}")));
    }
    if let Some(challenge) = registry_token::bearer_challenge(refusal.headers()) {
        let token = registry_token::fetch_token(image, route, &challenge, repository).await?;
        return Ok(Some(format!("Bearer {token}")));
    }
    // No bearer challenge: the registry wants basic credentials, or none we have.
    Ok(match &route.auth {
        Auth::Basic(user, pass) => basic_header(user, pass).to_str().ok().map(str::to_string),
        _ => None,
    })
}

/// A body read up to a cap.
pub(crate) enum Capped {
    /// The whole body, within the cap.
    Whole(Bytes),
    /// The body is larger than the cap (by its Content-Length or as it streamed).
    TooLarge,
}

/// Reads `response`'s body up to `cap` bytes: a larger `Content-Length` is refused
/// before anything is read, and the read stops at the chunk that would pass the cap.
pub(crate) async fn read_capped(
    mut response: reqwest::Response,
    cap: u64,
) -> std::result::Result<Capped, reqwest::Error> {
    if response.content_length().is_some_and(|n| n > cap) {
        return Ok(Capped::TooLarge);
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await? {
        if (body.len() + chunk.len()) as u64 > cap {
            return Ok(Capped::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Capped::Whole(body.freeze()))
}

/// What an error response says, read no further than [`MAX_ERROR_BODY_BYTES`].
struct ErrorBody {
    /// The kind the registry's error code names, if it sent the registry error format.
    kind: Option<ErrorKind>,
    /// `": CODE: message"` or `": <start of the body>"`, or nothing for an empty body.
    excerpt: String,
}

async fn error_body(mut response: reqwest::Response) -> ErrorBody {
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
    // The rest is never read: dropping the response closes the connection.
    drop(response);
    let envelope = serde_json::from_slice::<OciEnvelope>(&body)
        .ok()
        .filter(|e| !e.errors.is_empty());
    match envelope {
        Some(envelope) => {
            let kind = envelope.errors.first().map(|e| match e.code {
                OciErrorCode::ManifestUnknown
                | OciErrorCode::NameUnknown
                | OciErrorCode::BlobUnknown
                | OciErrorCode::NotFound => ErrorKind::NotFound,
                OciErrorCode::Unauthorized | OciErrorCode::Denied => ErrorKind::PermissionDenied,
                OciErrorCode::Toomanyrequests => ErrorKind::Unavailable,
                _ => ErrorKind::Internal,
            });
            let text: Vec<String> = envelope
                .errors
                .iter()
                .take(3)
                .map(|e| {
                    // The wire name (MANIFEST_UNKNOWN), as registries document it.
                    let code = serde_json::to_string(&e.code).unwrap_or_default();
                    format!("{}: {}", code.trim_matches('"'), e.message)
                })
                .collect();
            ErrorBody {
                kind,
                excerpt: format!(": {}", quote(&text.join("; "))),
            }
        }
        None => {
            let text = quote(&String::from_utf8_lossy(&body));
            ErrorBody {
                kind: None,
                excerpt: if text.is_empty() {
                    String::new()
                } else {
                    format!(": {text}")
                },
            }
        }
    }
}

/// What an error response says, for a message (see [`ErrorBody::excerpt`]).
pub(crate) async fn error_excerpt(response: reqwest::Response) -> String {
    error_body(response).await.excerpt
}

/// Untrusted text made fit for a one-line message: control characters become
/// spaces, and it stops after [`MAX_QUOTED_CHARS`] characters.
fn quote(text: &str) -> String {
    let text = text.trim();
    let mut out: String = text
        .chars()
        .take(MAX_QUOTED_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().nth(MAX_QUOTED_CHARS).is_some() {
        out.push_str("...");
    }
    out
}

/// The error for a response other than 200.
async fn refused(
    image: &str,
    route: &Route,
    what: &str,
    response: reqwest::Response,
) -> ImageError {
    let status = response.status();
    let body = error_body(response).await;
    let kind = match (status.as_u16(), body.kind) {
        (401 | 403, _) => ErrorKind::PermissionDenied,
        (429, _) => ErrorKind::Unavailable,
        // The registry's own code says more than the status (a 400 NAME_UNKNOWN).
        (400..=499, Some(kind)) => kind,
        (404, None) => ErrorKind::NotFound,
        (502..=504, _) => ErrorKind::Unavailable,
        _ => ErrorKind::Internal,
    };
    ImageError::Source {
        op: Op::Pull,
        reference: image.to_string(),
        message: format!("{}: {what}: HTTP {status}{}", route.endpoint, body.excerpt),
        kind,
    }
}

/// A connection, TLS or timeout error: the registry may do better next time.
pub(crate) fn transport(image: &str, route: &Route, what: &str, e: &reqwest::Error) -> ImageError {
    ImageError::Source {
        op: Op::Pull,
        reference: image.to_string(),
        message: format!("{}: {what}: {}", route.endpoint, error_chain(e)),
        kind: ErrorKind::Unavailable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_bodies_are_one_bounded_line() {
        assert_eq!(quote("  plain text \n"), "plain text");
        assert_eq!(quote("a\r\nb\tc\u{1b}[31m"), "a  b c [31m");
        let long = "x".repeat(10_000);
        let q = quote(&long);
        assert_eq!(q.len(), MAX_QUOTED_CHARS + 3);
        assert!(q.ends_with("..."));
        assert_eq!(
            quote(&"é".repeat(MAX_QUOTED_CHARS)).chars().count(),
            MAX_QUOTED_CHARS
        );
    }

    #[test]
    fn only_the_origin_asked_may_challenge() {
        let u = |s: &str| reqwest::Url::parse(s).unwrap();
        let asked = "http://127.0.0.1:5000/v2/app/blobs/sha256:ab";
        assert!(same_origin(
            &u("http://127.0.0.1:5000/v2/app/blobs/x"),
            asked
        ));
        assert!(!same_origin(&u("http://127.0.0.1:5001/storage/x"), asked));
        assert!(!same_origin(&u("https://127.0.0.1:5000/v2/app"), asked));
        assert!(!same_origin(&u("http://storage.example:5000/x"), asked));
        assert!(same_origin(
            &u("https://reg.example/v2/"),
            "https://reg.example:443/v2/app/manifests/1"
        ));
    }
}
