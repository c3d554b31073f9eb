//! A scripted HTTP/1.1 server on a loopback port that plays a registry (or a mirror)
//! badly on purpose: it records every request's headers and answers each with what the
//! test's handler returns, including bodies that never end or are longer than promised.
//!
//! The server runs on its own thread with plain std networking; dropping the value
//! stops it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A request as the fake saw it.
#[derive(Clone, Debug)]
pub struct SeenRequest {
    /// `GET`, `HEAD`, ...
    pub method: String,
    /// The request target, such as `/v2/app/manifests/1`.
    pub path: String,
    /// The header lines as sent, without the request line.
    pub headers: String,
    /// The body, as long as its `Content-Length` said (token requests are POSTs).
    pub body: Vec<u8>,
}

impl SeenRequest {
    /// Whether an `Authorization` header came with the request.
    pub fn has_authorization(&self) -> bool {
        self.headers
            .lines()
            .any(|l| l.to_ascii_lowercase().starts_with("authorization:"))
    }
}

/// What to send back.
pub enum Reply {
    /// A complete response.
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// A response with `status` that promises `content_length` bytes (or none, when
    /// `None`: then the body is chunked and never ends) and sends `chunk` over and over,
    /// forever or until the peer goes, pausing `pause` between chunks.
    Endless {
        status: u16,
        content_length: Option<u64>,
        chunk: Vec<u8>,
        pause: Duration,
    },
}

impl Reply {
    /// A 200 with `body` and a content type.
    pub fn ok(content_type: &str, body: Vec<u8>) -> Reply {
        Reply::Full {
            status: 200,
            headers: vec![("Content-Type".into(), content_type.into())],
            body,
        }
    }

    /// A 401 that invites HTTP basic credentials, as a registry with htpasswd does.
    pub fn basic_challenge() -> Reply {
        Reply::Full {
            status: 401,
            headers: vec![
                ("WWW-Authenticate".into(), "Basic realm=\"fake\"".into()),
                ("Content-Type".into(), "application/json".into()),
            ],
            body: br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#
                .to_vec(),
        }
    }

    /// A 404 in the registry's error format.
    pub fn not_found() -> Reply {
        Reply::Full {
            status: 404,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}"#.to_vec(),
        }
    }
}

type Handler = dyn Fn(&SeenRequest) -> Reply + Send + Sync;

/// A running fake; dropping it stops the server.
pub struct FakeRegistry {
    port: u16,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
    stop: Arc<AtomicBool>,
}

impl FakeRegistry {
    /// Starts a fake on a free loopback port that answers every request with `handler`.
    pub fn start(handler: impl Fn(&SeenRequest) -> Reply + Send + Sync + 'static) -> FakeRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        {
            let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let (seen, stop, handler) =
                                (Arc::clone(&seen), Arc::clone(&stop), Arc::clone(&handler));
                            std::thread::spawn(move || serve(stream, &seen, &stop, &*handler));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            });
        }
        FakeRegistry { port, seen, stop }
    }

    /// The fake's address as an image reference host, `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Every request so far, in arrival order.
    pub fn seen(&self) -> Vec<SeenRequest> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Serves one connection: requests one after another (keep-alive), until the peer
/// closes it or the fake stops.
fn serve(
    mut stream: TcpStream,
    seen: &Mutex<Vec<SeenRequest>>,
    stop: &AtomicBool,
    handler: &Handler,
) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 4);
        let (line, headers) = head.split_once("\r\n").unwrap_or((head.as_str(), ""));
        // GETs carry no body; a POST's is as long as its Content-Length says.
        let length = headers
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        while buf.len() < length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buf.drain(..length).collect();
        let mut parts = line.split(' ');
        let request = SeenRequest {
            method: parts.next().unwrap_or_default().to_string(),
            path: parts.next().unwrap_or_default().to_string(),
            headers: headers.to_string(),
            body,
        };
        seen.lock().unwrap().push(request.clone());
        let head_only = request.method == "HEAD";
        match handler(&request) {
            Reply::Full {
                status,
                headers,
                body,
            } => {
                let mut out = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
                for (k, v) in headers {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str("\r\n");
                if stream.write_all(out.as_bytes()).is_err() {
                    return;
                }
                if !head_only && stream.write_all(&body).is_err() {
                    return;
                }
            }
            Reply::Endless {
                status,
                content_length,
                chunk,
                pause,
            } => {
                let framing = match content_length {
                    Some(n) => format!("Content-Length: {n}"),
                    None => "Transfer-Encoding: chunked".to_string(),
                };
                let head = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/octet-stream\r\n{framing}\r\n\r\n"
                );
                if stream.write_all(head.as_bytes()).is_err() {
                    return;
                }
                while !stop.load(Ordering::Relaxed) {
                    let ok = match content_length {
                        Some(_) => stream.write_all(&chunk),
                        None => stream
                            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                            .and_then(|_| stream.write_all(&chunk))
                            .and_then(|_| stream.write_all(b"\r\n")),
                    };
                    if ok.is_err() {
                        return;
                    }
                    if !pause.is_zero() {
                        std::thread::sleep(pause);
                    }
                }
                return;
            }
        }
    }
}
