//! The `/metrics` HTTP endpoint: hyper's HTTP/1 server with bounded connections, head
//! size and time, one request per connection.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::{Format, Metrics};

/// What the endpoint allows one client.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Largest accepted request head, in bytes (hyper answers 431 beyond it; at least 8 KiB).
    max_head: usize,
    /// Time a client gets to send its whole request head.
    read_timeout: Duration,
    /// Time, after the read timeout, the response may take to be rendered and accepted:
    /// a connection lives at most `read_timeout + write_timeout`.
    write_timeout: Duration,
    /// Connections served at once; further clients wait in the listen backlog.
    max_connections: usize,
}

/// The limits crustd serves with.
const LIMITS: Limits = Limits {
    max_head: 8 * 1024,
    read_timeout: Duration::from_secs(5),
    write_timeout: Duration::from_secs(5),
    max_connections: 64,
};

/// A response body.
type Body = Full<Bytes>;

/// Bind the metrics listener, returning it with its actual address (useful with port 0).
pub async fn bind(addr: SocketAddr) -> io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Serve `GET /metrics` on an already bound listener until `shutdown` completes.
pub async fn serve_listener(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    serve_with(listener, metrics, shutdown, LIMITS).await
}

/// [`serve_listener`] with explicit limits.
async fn serve_with(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
    limits: Limits,
) -> io::Result<()> {
    tracing::info!(addr = ?listener.local_addr().ok(), "metrics endpoint serving");
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = slots.clone().acquire_owned() => permit.map_err(io::Error::other)?,
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Typically EMFILE/ENFILE or an aborted handshake: back off, keep serving.
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, metrics, limits).await {
                tracing::debug!(%peer, error = %e, "metrics endpoint: connection failed");
            }
            drop(permit);
        });
    }
    tracing::info!("metrics endpoint stopped");
    Ok(())
}

/// Serve one connection: one request, then close, within the limits.
async fn connection(stream: TcpStream, metrics: Arc<Metrics>, limits: Limits) -> io::Result<()> {
    let service = hyper::service::service_fn(move |req| {
        let metrics = Arc::clone(&metrics);
        async move { Ok::<_, Infallible>(respond(metrics, req).await) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.read_timeout)
        .max_buf_size(limits.max_head)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(limits.read_timeout + limits.write_timeout, served).await {
        Ok(result) => result.map_err(io::Error::other),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "request not served in time",
        )),
    }
}

/// A response with a plain-text body.
fn plain(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Answer one request: the metrics for `GET`/`HEAD /metrics` (query ignored), else an error.
async fn respond<B>(metrics: Arc<Metrics>, req: Request<B>) -> Response<Body> {
    const TEXT: &str = "text/plain; charset=utf-8";
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    if !get {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, TEXT, "method not allowed\n");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    if req.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, TEXT, "not found; try /metrics\n");
    }
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let format = Format::negotiate(accept);
    // The gauge source lists sandboxes and containers under their locks: not on a worker.
    match tokio::task::spawn_blocking(move || metrics.render(format)).await {
        Ok(Ok(text)) => plain(StatusCode::OK, format.content_type(), text),
        Ok(Err(_)) | Err(_) => {
            tracing::warn!("metrics endpoint: rendering failed");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                TEXT,
                "cannot render the metrics\n",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Gauge;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Send raw bytes and read the whole response until the server closes.
    async fn exchange(addr: SocketAddr, request: &[u8]) -> io::Result<Vec<u8>> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(request).await?;
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out))
            .await
            .expect("server closes the connection")?;
        Ok(out)
    }

    /// Split a raw response into status line, lower-cased headers and body.
    fn split_response(raw: &[u8]) -> (String, Vec<(String, String)>, String) {
        let text = String::from_utf8(raw.to_vec()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").expect("complete head");
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().to_owned();
        let headers = lines
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap();
                (k.trim().to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect();
        (status, headers, body.to_owned())
    }

    /// The value of a (lower-cased) header.
    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The Content-Length header as a number.
    fn length(headers: &[(String, String)]) -> usize {
        header(headers, "content-length").unwrap().parse().unwrap()
    }

    /// A registry with one RPC and a one-gauge source.
    fn metrics() -> Arc<Metrics> {
        let metrics = Arc::new(Metrics::new());
        metrics.observe_rpc("Status", "Ok", 0.01);
        metrics.set_gauge_source(Box::new(|| {
            vec![Gauge {
                name: "crust_monitors",
                help: "Running container monitors.",
                labels: vec![],
                value: 1.0,
            }]
        }));
        metrics
    }

    #[tokio::test]
    async fn http_endpoint() {
        let (listener, addr) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        assert_ne!(addr.port(), 0);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_listener(listener, metrics(), async move {
            let _ = stop_rx.await;
        }));

        let raw = exchange(
            addr,
            b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n",
        )
        .await
        .unwrap();
        let (status, headers, body) = split_response(&raw);
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(
            header(&headers, "content-type"),
            Some(Format::Prometheus.content_type())
        );
        assert_eq!(header(&headers, "connection"), Some("close"));
        assert_eq!(length(&headers), body.len());
        assert!(body.contains("crust_rpc_requests_total{method=\"Status\",code=\"Ok\"} 1\n"));
        assert!(body.contains("\ncrust_monitors 1.0\n"));
        assert!(!body.contains("# EOF"));

        // A scraper that asks for OpenMetrics gets it.
        let raw = exchange(
            addr,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.1\r\n\r\n",
        )
        .await
        .unwrap();
        let (status, headers, body) = split_response(&raw);
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(
            header(&headers, "content-type"),
            Some(Format::OpenMetrics.content_type())
        );
        assert!(body.contains("crust_rpc_requests_total{method=\"Status\",code=\"Ok\"} 1\n"));
        assert!(body.ends_with("# EOF\n"));

        // Query strings are ignored; HEAD gets headers only.
        let raw = exchange(addr, b"HEAD /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let (status, headers, body) = split_response(&raw);
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(length(&headers) > 0);
        assert!(body.is_empty());

        // HTTP/1.0 clients are served too.
        let raw = exchange(addr, b"GET /metrics HTTP/1.0\r\n\r\n")
            .await
            .unwrap();
        let (status, _, body) = split_response(&raw);
        assert!(status.ends_with(" 200 OK"), "{status}");
        assert!(body.contains("crust_monitors"));

        let raw = exchange(addr, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let (status, headers, body) = split_response(&raw);
        assert_eq!(status, "HTTP/1.1 404 Not Found");
        assert_eq!(length(&headers), body.len());

        let raw = exchange(
            addr,
            b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        )
        .await
        .unwrap();
        let (status, headers, _) = split_response(&raw);
        assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
        assert_eq!(header(&headers, "allow"), Some("GET, HEAD"));

        let raw = exchange(addr, b"garbage\r\n\r\n").await.unwrap();
        assert!(
            raw.starts_with(b"HTTP/1.1 400 "),
            "{:?}",
            String::from_utf8_lossy(&raw)
        );

        // Oversized head: answered 431 (or reset) and closed promptly, long before the read timeout.
        let mut big = b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec();
        big.resize(3 * LIMITS.max_head, b'a');
        let started = std::time::Instant::now();
        match exchange(addr, &big).await {
            Ok(raw) => assert!(
                raw.is_empty() || raw.starts_with(b"HTTP/1.1 431 "),
                "{:?}",
                String::from_utf8_lossy(&raw)
            ),
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                ),
                "{e}"
            ),
        }
        assert!(started.elapsed() < Duration::from_secs(2));

        // Still serving; then shut down.
        let raw = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert!(raw.starts_with(b"HTTP/1.1 200 OK\r\n"));
        stop_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(2), server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(TcpStream::connect(addr).await.is_err());
    }

    /// Limits small enough for a test to wait them out.
    const SHORT: Limits = Limits {
        max_head: 8 * 1024,
        read_timeout: Duration::from_millis(300),
        write_timeout: Duration::from_millis(300),
        max_connections: 2,
    };

    #[tokio::test]
    async fn slow_client_is_dropped_at_the_read_timeout() {
        let (listener, addr) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let server = tokio::spawn(serve_with(
            listener,
            metrics(),
            std::future::pending(),
            SHORT,
        ));
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET /metrics HTTP/1.1\r\n")
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(3), client.read_to_end(&mut rest))
            .await
            .expect("closed by the server")
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(250));
        // hyper may say 408 before closing; it never serves the metrics.
        assert!(
            rest.is_empty() || rest.starts_with(b"HTTP/1.1 408 "),
            "{:?}",
            String::from_utf8_lossy(&rest)
        );
        server.abort();
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_wait() {
        let (listener, addr) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let server = tokio::spawn(serve_with(
            listener,
            metrics(),
            std::future::pending(),
            SHORT,
        ));
        // Two idle clients take both slots; a third is not answered until they time out.
        let idle: Vec<TcpStream> = vec![
            TcpStream::connect(addr).await.unwrap(),
            TcpStream::connect(addr).await.unwrap(),
        ];
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = std::time::Instant::now();
        let raw = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert!(raw.starts_with(b"HTTP/1.1 200 OK\r\n"));
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "served before a slot was free: {:?}",
            started.elapsed()
        );
        drop(idle);
        server.abort();
    }

    #[tokio::test]
    async fn serving_stops_on_shutdown() {
        let (listener, _) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        serve_listener(listener, metrics(), async {}).await.unwrap();
    }
}
