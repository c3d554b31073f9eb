//! HTTP/1.1 in front of the streams: token lookup, protocol negotiation and the
//! upgrade to SPDY/3.1 or WebSocket.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::spdy_session::Session;
use super::{Listener, Parked, RemoteProtocol, StreamingServer};

/// The header SPDY clients offer protocols in, and we answer the chosen one.
const PROTOCOL_HEADER: &str = "x-stream-protocol-version";
/// What we answer when no offered protocol is known.
const ACCEPTED_HEADER: &str = "x-accepted-stream-protocol-versions";
/// Remote-command protocols over SPDY, preferred first.
const SPDY_REMOTE: [(&str, RemoteProtocol); 5] = [
    ("v5.channel.k8s.io", RemoteProtocol::V5),
    ("v4.channel.k8s.io", RemoteProtocol::V4),
    ("v3.channel.k8s.io", RemoteProtocol::V3),
    ("v2.channel.k8s.io", RemoteProtocol::V2),
    ("channel.k8s.io", RemoteProtocol::V1),
];
/// The port-forward protocol over SPDY.
const SPDY_PORTFORWARD: &str = "portforward.k8s.io";
/// How long a client may take for its TLS handshake and request head.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

type Body = Full<Bytes>;

/// A TLS acceptor from PEM files.
pub fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("streaming.tls_cert: read {}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!(
            "streaming.tls_cert: {} holds no certificate",
            cert.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("streaming.tls_key: read {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("streaming: TLS versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("streaming: TLS certificate and key do not go together")?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Accepts connections for ever, one task each.
pub async fn serve(listener: Listener, server: Arc<StreamingServer>) {
    tracing::info!(url = %listener.base_url, "serving streams");
    loop {
        let (tcp, peer) = match listener.tcp.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: wait a little rather than spin.
                tracing::warn!(error = %e, "streaming: accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let server = Arc::clone(&server);
        let tls = listener.tls.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let server = Arc::clone(&server);
                async move { Ok::<_, std::convert::Infallible>(route(server, req)) }
            });
            let builder = hyper::server::conn::http1::Builder::new()
                .header_read_timeout(HANDSHAKE_TIMEOUT)
                .timer(hyper_util::rt::TokioTimer::new())
                .to_owned();
            let result = match tls {
                Some(tls) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        builder
                            .serve_connection(TokioIo::new(stream), service)
                            .with_upgrades()
                            .await
                    }
                    _ => {
                        tracing::debug!(%peer, "streaming: TLS handshake failed");
                        return;
                    }
                },
                None => {
                    builder
                        .serve_connection(TokioIo::new(tcp), service)
                        .with_upgrades()
                        .await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "streaming connection");
            }
        });
    }
}

fn plain(status: StatusCode, text: impl Into<String>) -> Response<Body> {
    let mut text = text.into();
    text.push('\n');
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Every value of a header that may repeat and hold comma-separated lists.
pub fn offered(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case(token))
}

/// The first protocol the client offers that we speak (the client's preference wins,
/// as in kubelet).
fn negotiate<T: Copy>(offers: &[String], ours: &[(&str, T)]) -> Option<(String, T)> {
    offers.iter().find_map(|offer| {
        ours.iter()
            .find(|(name, _)| name == offer)
            .map(|(name, v)| (name.to_string(), *v))
    })
}

fn route(server: Arc<StreamingServer>, mut req: Request<hyper::body::Incoming>) -> Response<Body> {
    let mut segments = req.uri().path().trim_start_matches('/').split('/');
    let (Some(kind), Some(token), None) = (segments.next(), segments.next(), segments.next())
    else {
        return plain(StatusCode::NOT_FOUND, "not found");
    };
    // Checked before the token is spent, so that a client may try again with it.
    let Ok(permit) = Arc::clone(&server.connections).try_acquire_owned() else {
        tracing::info!(
            max = server.limits.max_connections,
            "streaming: connection refused, too many"
        );
        let mut response = plain(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "too many streaming connections (at most {})",
                server.limits.max_connections
            ),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    let Some(parked) = server.redeem(kind, token) else {
        return plain(
            StatusCode::NOT_FOUND,
            "unknown, used or expired streaming token",
        );
    };
    let headers = req.headers();
    if !header_has(headers, header::CONNECTION, "upgrade") {
        return plain(
            StatusCode::BAD_REQUEST,
            "a streaming request must upgrade the connection",
        );
    }
    if header_has(headers, header::UPGRADE, "websocket") {
        return super::ws::upgrade(server, parked, permit, &mut req);
    }
    if !header_has(headers, header::UPGRADE, "SPDY/3.1") {
        return plain(StatusCode::BAD_REQUEST, "upgrade to SPDY/3.1 or websocket");
    }
    let offers = offered(headers, PROTOCOL_HEADER);
    if offers.is_empty() {
        return plain(
            StatusCode::BAD_REQUEST,
            format!("unable to upgrade: {PROTOCOL_HEADER} is required"),
        );
    }
    let portforward = [(SPDY_PORTFORWARD, RemoteProtocol::V1)];
    let ours: &[(&str, RemoteProtocol)] = match parked {
        Parked::Remote(_) => &SPDY_REMOTE,
        Parked::PortForward { .. } => &portforward,
    };
    let Some((name, protocol)) = negotiate(&offers, ours) else {
        let mut response = plain(
            StatusCode::FORBIDDEN,
            format!(
                "unable to upgrade: unable to negotiate protocol: client supports {offers:?}, server accepts {:?}",
                ours.iter().map(|(n, _)| *n).collect::<Vec<_>>()
            ),
        );
        for (n, _) in ours {
            response
                .headers_mut()
                .append(ACCEPTED_HEADER, HeaderValue::from_static(n));
        }
        return response;
    };
    let upgrade = hyper::upgrade::on(&mut req);
    let ctx = server.ctx.clone();
    let limits = server.limits.clone();
    tokio::spawn(async move {
        // Held for as long as the connection is served.
        let _permit = permit;
        let upgraded = match upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "streaming: SPDY upgrade failed");
                return;
            }
        };
        let session = Session::start(TokioIo::new(upgraded), Vec::new(), &limits);
        match parked {
            Parked::Remote(command) => {
                super::spdy_remote::serve(session, protocol, command, ctx, &limits).await
            }
            Parked::PortForward { sandbox_id } => {
                super::portforward::serve_spdy(session, sandbox_id, ctx, &limits).await
            }
        }
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    if let Ok(v) = HeaderValue::from_str(&name) {
        h.insert(PROTOCOL_HEADER, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offers(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_clients_first_known_protocol_wins() {
        let (name, p) = negotiate(
            &offers(&[
                "v9.channel.k8s.io",
                "v4.channel.k8s.io",
                "v5.channel.k8s.io",
            ]),
            &SPDY_REMOTE,
        )
        .unwrap();
        assert_eq!(
            (name.as_str(), p),
            ("v4.channel.k8s.io", RemoteProtocol::V4)
        );
        assert!(negotiate(&offers(&["v9.channel.k8s.io"]), &SPDY_REMOTE).is_none());
    }

    #[test]
    fn offers_may_be_listed_in_one_header() {
        let mut h = HeaderMap::new();
        h.append(
            PROTOCOL_HEADER,
            HeaderValue::from_static("v4.channel.k8s.io, v3.channel.k8s.io"),
        );
        h.append(PROTOCOL_HEADER, HeaderValue::from_static("channel.k8s.io"));
        assert_eq!(
            offered(&h, PROTOCOL_HEADER),
            offers(&["v4.channel.k8s.io", "v3.channel.k8s.io", "channel.k8s.io"])
        );
    }

    #[test]
    fn connection_tokens_are_matched_in_lists() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(header_has(&h, header::CONNECTION, "upgrade"));
        assert!(!header_has(&h, header::CONNECTION, "close"));
    }
}
