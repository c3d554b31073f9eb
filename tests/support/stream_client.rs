//! Clients for crustd's streaming server (the URLs that `Exec`, `Attach` and
//! `PortForward` return), speaking what kubelet's clients speak:
//!
//! - SPDY/3.1, as crictl and kubelet's proxy do through client-go: an HTTP/1.1
//!   upgrade with `X-Stream-Protocol-Version` headers, then one SPDY stream per
//!   channel, created by the client. [`SpdyConn`] is the connection,
//!   [`SpdyStream`] one stream, [`PortForward`] the `portforward.k8s.io` dance.
//! - WebSocket, as kubectl 1.30 and later do: one message per chunk, its first byte
//!   (or, for the base64 protocols, first character) naming the channel.
//!   [`WsPortForward`] is WebSocket port-forward.
//!
//! [`Session`] is a remote command (exec or attach) over either transport, with
//! channels numbered as on the WebSocket ([`STDIN`] .. [`RESIZE`]); [`exec_spdy`]
//! and [`exec_ws`] run a whole command and return an [`ExecResult`].
//!
//! `https` URLs (crustd's `[streaming]` with `tls_cert` and `tls_key`) are reached
//! through TLS with the `_via` variants, given a [`Dial`] that says which
//! certificates to trust; the plain variants speak `http` only.
//!
//! Every wait is bounded by [`TIMEOUT`]: a broken server fails the test with what
//! was received so far (for SPDY, a trace of the frames both ways) instead of
//! hanging it. Failures the server can cause while streaming panic with that
//! evidence; a refused upgrade is an [`UpgradeError`] the test can inspect.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use crust_proto::spdy::{Frame, HeaderCodec};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Uri};
use tokio_tungstenite::tungstenite::{self, Message};

/// How long any single wait may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// Remote command protocol 5: v4 plus closing stdin (WebSocket `[255, 0]`).
pub const V5: &str = "v5.channel.k8s.io";
/// Remote command protocol 4: the exit status as a JSON `metav1.Status`.
pub const V4: &str = "v4.channel.k8s.io";
/// Remote command protocol 3: adds the resize stream.
pub const V3: &str = "v3.channel.k8s.io";
/// Remote command protocol 2: the error stream carries plain text.
pub const V2: &str = "v2.channel.k8s.io";
/// The first remote command protocol.
pub const V1: &str = "channel.k8s.io";
/// WebSocket protocol 4 with base64 text messages.
pub const V4_BASE64: &str = "v4.base64.channel.k8s.io";
/// WebSocket protocol 1 with base64 text messages.
pub const V1_BASE64: &str = "base64.channel.k8s.io";
/// SPDY port-forward.
pub const PORT_FORWARD: &str = "portforward.k8s.io";
/// What client-go's SPDY executor offers, in its order of preference.
pub const SPDY_REMOTE_COMMAND: [&str; 5] = [V5, V4, V3, V2, V1];

/// Channel of stdin (WebSocket numbering, used for SPDY streams too).
pub const STDIN: u8 = 0;
/// Channel of stdout.
pub const STDOUT: u8 = 1;
/// Channel of stderr.
pub const STDERR: u8 = 2;
/// Channel of the exit status / error.
pub const ERROR: u8 = 3;
/// Channel of terminal resizes.
pub const RESIZE: u8 = 4;

/// SPDY RST_STREAM status CANCEL.
const RST_CANCEL: u32 = 5;
/// SPDY RST_STREAM status REFUSED_STREAM.
const RST_REFUSED: u32 = 3;
/// How much of one stdin write goes into one DATA frame or WebSocket message.
const CHUNK: usize = 32 * 1024;
/// Frames kept in a connection's trace.
const TRACE_LEN: usize = 300;

/// The remote command protocol version a protocol name stands for.
pub fn version_of(protocol: &str) -> u8 {
    match protocol {
        V5 => 5,
        V4 | V4_BASE64 => 4,
        V3 => 3,
        V2 => 2,
        V1 | V1_BASE64 => 1,
        other => panic!("not a remote command protocol: {other:?}"),
    }
}

/// A refused upgrade, or one whose 101 answer a real client would reject.
#[derive(Debug, Clone)]
pub struct UpgradeError {
    /// The HTTP status; 101 when the server switched protocols but the answer is
    /// invalid; 0 when there was no HTTP answer at all.
    pub status: u16,
    /// Response headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The response body, or what is wrong with the answer.
    pub body: String,
}

impl fmt::Display for UpgradeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "upgrade refused: status {} headers {:?} body {:?}",
            self.status, self.headers, self.body
        )
    }
}

impl std::error::Error for UpgradeError {}

/// Why a stream could not be created or written.
#[derive(Debug)]
pub enum StreamError {
    /// The server answered the SYN_STREAM with RST_STREAM and this status.
    Reset(u32),
    /// The connection ended first.
    Closed,
    /// No SYN_REPLY within [`TIMEOUT`].
    Timeout,
    /// Writing to the socket failed.
    Io(io::Error),
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamError::Reset(s) => write!(f, "stream reset by the server (status {s})"),
            StreamError::Closed => write!(f, "connection closed"),
            StreamError::Timeout => write!(f, "no SYN_REPLY within {TIMEOUT:?}"),
            StreamError::Io(e) => write!(f, "write: {e}"),
        }
    }
}

impl std::error::Error for StreamError {}

/// Host and port, and path with query, of a streaming URL.
struct Target {
    /// `https`: TLS over the TCP connection.
    tls: bool,
    /// The host, without IPv6 brackets (the TLS server name).
    host: String,
    authority: String,
    path: String,
}

fn parse_url(url: &str) -> Target {
    let uri: Uri = url
        .parse()
        .unwrap_or_else(|e| panic!("bad streaming url {url:?}: {e}"));
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        other => panic!("the test clients speak http and https, not {other:?}: {url}"),
    };
    let authority = uri
        .authority()
        .unwrap_or_else(|| panic!("no host in {url:?}"));
    Target {
        tls,
        host: authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        authority: authority.to_string(),
        path: uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_else(|| "/".into()),
    }
}

async fn tcp_connect(authority: &str) -> TcpStream {
    match tokio::time::timeout(TIMEOUT, TcpStream::connect(authority)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => panic!("connect to the streaming server {authority}: {e}"),
        Err(_) => panic!("connect to the streaming server {authority}: timed out"),
    }
}

/// How the clients reach the streaming server: plain TCP for `http` URLs and, for
/// `https` ones, TLS trusting exactly the certificates given (never the system's).
#[derive(Clone, Default)]
pub struct Dial {
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Dial {
    /// `http` only; an `https` URL fails the test. What the functions without a
    /// `Dial` use.
    pub fn plain() -> Dial {
        Dial::default()
    }

    /// TLS for `https` URLs (plain TCP for `http` ones), trusting the certificates
    /// of the PEM file `ca` as roots, with ring as the crypto provider.
    pub fn trusting(ca: &Path) -> Dial {
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(ca)
            .unwrap_or_else(|e| panic!("read {}: {e}", ca.display()));
        for cert in certs {
            let cert = cert.unwrap_or_else(|e| panic!("a certificate of {}: {e}", ca.display()));
            roots
                .add(cert)
                .unwrap_or_else(|e| panic!("trust {}: {e}", ca.display()));
        }
        assert!(!roots.is_empty(), "{} holds no certificate", ca.display());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Dial {
            tls: Some(Arc::new(config)),
        }
    }

    /// Connects to `target`, with the TLS handshake for `https`; a failed handshake
    /// is an [`UpgradeError`] with status 0.
    async fn connect(&self, url: &str, target: &Target) -> Result<Dialed, UpgradeError> {
        let tcp = tcp_connect(&target.authority).await;
        if !target.tls {
            return Ok(Dialed::Plain(tcp));
        }
        let config = self
            .tls
            .clone()
            .unwrap_or_else(|| panic!("{url}: https needs a Dial that trusts a certificate"));
        let name = ServerName::try_from(target.host.clone())
            .unwrap_or_else(|e| panic!("{url}: no TLS server name: {e}"));
        let failed = |body: String| UpgradeError {
            status: 0,
            headers: Vec::new(),
            body,
        };
        let handshake = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
        match tokio::time::timeout(TIMEOUT, handshake).await {
            Ok(Ok(tls)) => Ok(Dialed::Tls(Box::new(tls))),
            Ok(Err(e)) => Err(failed(format!(
                "TLS handshake with {}: {e}",
                target.authority
            ))),
            Err(_) => Err(failed(format!(
                "TLS handshake with {}: no answer within {TIMEOUT:?}",
                target.authority
            ))),
        }
    }
}

/// A byte stream to the server, plain or TLS (Debug, as a `TcpStream` is).
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + fmt::Debug {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + fmt::Debug> Io for T {}

type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// A connection [`Dial`] made.
enum Dialed {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Dialed {
    fn boxed(self) -> Box<dyn Io> {
        match self {
            Dialed::Plain(s) => Box::new(s),
            Dialed::Tls(s) => s,
        }
    }
}

fn preview(data: &[u8]) -> String {
    const MAX: usize = 120;
    let shown = &data[..data.len().min(MAX)];
    let mut s = format!("{:?}", String::from_utf8_lossy(shown));
    if data.len() > MAX {
        s.push_str(&format!("..(+{} bytes)", data.len() - MAX));
    }
    s
}

/// One line describing a frame, for traces.
fn describe(frame: &Frame) -> String {
    match frame {
        Frame::SynStream {
            stream_id,
            fin,
            headers,
            ..
        } => format!("SYN_STREAM {stream_id} fin={fin} {headers:?}"),
        Frame::SynReply {
            stream_id,
            fin,
            headers,
        } => format!("SYN_REPLY {stream_id} fin={fin} {headers:?}"),
        Frame::RstStream { stream_id, status } => format!("RST_STREAM {stream_id} status={status}"),
        Frame::Settings { entries, .. } => format!("SETTINGS {entries:?}"),
        Frame::Ping { id } => format!("PING {id}"),
        Frame::GoAway {
            last_good_stream_id,
            status,
        } => format!("GOAWAY last={last_good_stream_id} status={status}"),
        Frame::Headers {
            stream_id,
            fin,
            headers,
        } => format!("HEADERS {stream_id} fin={fin} {headers:?}"),
        Frame::WindowUpdate { stream_id, delta } => {
            format!("WINDOW_UPDATE {stream_id} delta={delta}")
        }
        Frame::Data {
            stream_id,
            fin,
            data,
        } => format!(
            "DATA {stream_id} fin={fin} {} bytes {}",
            data.len(),
            preview(data)
        ),
    }
}

// ---------------------------------------------------------------------------
// HTTP upgrade for SPDY

/// Reads an HTTP response head; returns (status, headers, bytes after the head).
async fn read_response_head(
    sock: &mut (impl AsyncRead + Unpin),
) -> Result<(u16, Vec<(String, String)>, Vec<u8>), UpgradeError> {
    let no_answer = |body: String| UpgradeError {
        status: 0,
        headers: Vec::new(),
        body,
    };
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        if buf.len() > 64 * 1024 {
            return Err(no_answer(format!(
                "response head too long: {}",
                preview(&buf)
            )));
        }
        match tokio::time::timeout(TIMEOUT, sock.read(&mut chunk)).await {
            Err(_) => return Err(no_answer(format!("no response head: {}", preview(&buf)))),
            Ok(Err(e)) => return Err(no_answer(format!("read response: {e}"))),
            Ok(Ok(0)) => {
                return Err(no_answer(format!(
                    "connection closed before the response head: {}",
                    preview(&buf)
                )));
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let rest = buf[end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| no_answer(format!("bad status line {status_line:?}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok((status, headers, rest))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Reads the body of a refused upgrade: by Content-Length, to the last chunk, or to EOF.
async fn read_body(
    sock: &mut (impl AsyncRead + Unpin),
    headers: &[(String, String)],
    mut body: Vec<u8>,
) -> String {
    let length: Option<usize> = header(headers, "content-length").and_then(|v| v.parse().ok());
    let chunked = header(headers, "transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut chunk = [0u8; 4096];
    loop {
        if length.is_some_and(|l| body.len() >= l)
            || (chunked && body.windows(5).any(|w| w == b"0\r\n\r\n"))
        {
            break;
        }
        match tokio::time::timeout_at(deadline, sock.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => body.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&body).to_string()
}

/// Sends the SPDY upgrade request and checks the answer as client-go does;
/// returns the negotiated protocol and what the server sent after the head.
async fn spdy_upgrade(
    sock: &mut (impl AsyncRead + AsyncWrite + Unpin),
    method: &str,
    url: &str,
    target: &Target,
    protocols: &[&str],
) -> Result<(String, Vec<u8>), UpgradeError> {
    let mut request = format!(
        "{method} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: crust-e2e\r\n\
         Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n",
        target.path, target.authority
    );
    if method == "POST" {
        request.push_str("Content-Length: 0\r\n");
    }
    for p in protocols {
        request.push_str(&format!("X-Stream-Protocol-Version: {p}\r\n"));
    }
    request.push_str("\r\n");
    sock.write_all(request.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("send the upgrade request to {url}: {e}"));
    let (status, headers, rest) = read_response_head(sock).await?;
    if status != 101 {
        let body = read_body(sock, &headers, rest).await;
        return Err(UpgradeError {
            status,
            headers,
            body,
        });
    }
    // What client-go checks before speaking SPDY.
    let invalid = |why: &str| UpgradeError {
        status,
        headers: headers.clone(),
        body: why.to_string(),
    };
    if !header(&headers, "connection").is_some_and(|v| v.to_ascii_lowercase().contains("upgrade")) {
        return Err(invalid("101 without Connection: Upgrade"));
    }
    if !header(&headers, "upgrade").is_some_and(|v| v.to_ascii_lowercase().contains("spdy/3.1")) {
        return Err(invalid("101 without Upgrade: SPDY/3.1"));
    }
    let protocol = header(&headers, "x-stream-protocol-version")
        .unwrap_or_default()
        .to_string();
    if !protocols.is_empty() && !protocols.contains(&protocol.as_str()) {
        return Err(invalid(&format!(
            "negotiated {protocol:?}, which was not offered"
        )));
    }
    Ok((protocol, rest))
}

// ---------------------------------------------------------------------------
// SPDY connection

/// Something that happened on one SPDY stream, for its reader.
enum StreamEvent {
    Data(Vec<u8>),
    Fin,
    Reset(u32),
}

/// What the reader task needs to know about a stream the client opened.
struct Slot {
    data: mpsc::UnboundedSender<StreamEvent>,
    reply: Option<oneshot::Sender<Result<(), u32>>>,
}

/// The sending side: socket, header compressor and next stream id, under one lock
/// so that frames reach the wire in the order their header blocks were compressed
/// and stream ids only increase.
struct Out {
    sock: Option<BoxWrite>,
    codec: HeaderCodec,
    next_id: u32,
}

struct Shared {
    out: tokio::sync::Mutex<Out>,
    /// Open streams; `None` once the connection ended.
    streams: StdMutex<Option<HashMap<u32, Slot>>>,
    trace: StdMutex<Vec<String>>,
    goaway: StdMutex<Option<(u32, u32)>>,
}

impl Shared {
    fn note(&self, line: String) {
        let mut t = self.trace.lock().unwrap();
        if t.len() >= TRACE_LEN {
            t.remove(0);
        }
        t.push(line);
    }

    async fn send(&self, frame: Frame) -> io::Result<()> {
        let mut out = self.out.lock().await;
        self.send_locked(&mut out, frame).await
    }

    async fn send_locked(&self, out: &mut Out, frame: Frame) -> io::Result<()> {
        let mut buf = Vec::new();
        out.codec
            .encode(&frame, &mut buf)
            .unwrap_or_else(|e| panic!("encode {}: {e}", describe(&frame)));
        self.note(format!("> {}", describe(&frame)));
        let sock = out
            .sock
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "connection closed"))?;
        match tokio::time::timeout(TIMEOUT, sock.write_all(&buf)).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the server did not take a frame within the timeout",
            )),
        }
    }

    fn dispatch(self: &Arc<Self>, frame: Frame) {
        self.note(format!("< {}", describe(&frame)));
        let mut streams = self.streams.lock().unwrap();
        let Some(streams) = streams.as_mut() else {
            return;
        };
        match frame {
            Frame::SynReply { stream_id, fin, .. } => {
                if let Some(slot) = streams.get_mut(&stream_id) {
                    if let Some(reply) = slot.reply.take() {
                        let _ = reply.send(Ok(()));
                    }
                    if fin {
                        let _ = slot.data.send(StreamEvent::Fin);
                    }
                }
            }
            Frame::Headers { stream_id, fin, .. } => {
                if fin && let Some(slot) = streams.get(&stream_id) {
                    let _ = slot.data.send(StreamEvent::Fin);
                }
            }
            Frame::Data {
                stream_id,
                fin,
                data,
            } => match streams.get(&stream_id) {
                Some(slot) => {
                    if !data.is_empty() {
                        let _ = slot.data.send(StreamEvent::Data(data));
                    }
                    if fin {
                        let _ = slot.data.send(StreamEvent::Fin);
                    }
                }
                None => self.note(format!("! DATA on unknown stream {stream_id}")),
            },
            Frame::RstStream { stream_id, status } => {
                if let Some(mut slot) = streams.remove(&stream_id) {
                    if let Some(reply) = slot.reply.take() {
                        let _ = reply.send(Err(status));
                    }
                    let _ = slot.data.send(StreamEvent::Reset(status));
                }
            }
            Frame::Ping { id } => {
                // Even ids are the server's own pings, to be echoed; odd ones would be
                // echoes of ours, and we send none.
                if id % 2 == 0 {
                    let this = self.clone();
                    tokio::spawn(async move {
                        let _ = this.send(Frame::Ping { id }).await;
                    });
                }
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                *self.goaway.lock().unwrap() = Some((last_good_stream_id, status));
            }
            Frame::SynStream { stream_id, .. } => {
                // The server has no business opening streams in these protocols.
                let this = self.clone();
                tokio::spawn(async move {
                    let _ = this
                        .send(Frame::RstStream {
                            stream_id,
                            status: RST_REFUSED,
                        })
                        .await;
                });
            }
            // SPDY flow control is not implemented by spdystream, hence by no
            // kubelet client: window updates and settings are noted and ignored.
            Frame::WindowUpdate { .. } | Frame::Settings { .. } => {}
        }
    }

    fn trace_text(&self) -> String {
        self.trace.lock().unwrap().join("\n")
    }
}

async fn read_loop(
    shared: Arc<Shared>,
    mut sock: BoxRead,
    mut buf: Vec<u8>,
    closed: watch::Sender<bool>,
) {
    // One decompressor for everything the server sends, for the connection's life.
    let mut codec = HeaderCodec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let why = 'conn: loop {
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => shared.dispatch(frame),
                Ok(None) => break,
                Err(e) => break 'conn format!("undecodable frame from the server: {e}"),
            }
        }
        match sock.read(&mut chunk).await {
            Ok(0) => break "closed by the server".to_string(),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => break format!("read: {e}"),
        }
    };
    shared.note(format!("= connection ended: {why}"));
    // Dropping every stream's sender tells its reader that the connection ended.
    shared.streams.lock().unwrap().take();
    let _ = closed.send(true);
}

/// A SPDY/3.1 connection to the streaming server, after the HTTP upgrade.
///
/// Dropping it closes the TCP connection at once, as a killed client would.
pub struct SpdyConn {
    shared: Arc<Shared>,
    reader: JoinHandle<()>,
    closed: watch::Receiver<bool>,
    protocol: String,
}

impl SpdyConn {
    /// Upgrades with `POST`, as crictl (client-go's SPDY executor and dialer) does,
    /// offering `protocols` in that order.
    pub async fn connect(url: &str, protocols: &[&str]) -> Result<SpdyConn, UpgradeError> {
        Self::connect_with_method("POST", url, protocols).await
    }

    /// Upgrades with `method` (kubelet's server takes GET and POST).
    pub async fn connect_with_method(
        method: &str,
        url: &str,
        protocols: &[&str],
    ) -> Result<SpdyConn, UpgradeError> {
        Self::connect_via(&Dial::plain(), method, url, protocols).await
    }

    /// Upgrades with `method` over a connection `dial` makes (TLS for `https`).
    pub async fn connect_via(
        dial: &Dial,
        method: &str,
        url: &str,
        protocols: &[&str],
    ) -> Result<SpdyConn, UpgradeError> {
        let target = parse_url(url);
        // Plain TCP keeps its owned halves: dropping the write half sends FIN.
        let (read, write, (protocol, rest)): (BoxRead, BoxWrite, _) =
            match dial.connect(url, &target).await? {
                Dialed::Plain(mut sock) => {
                    let upgraded = spdy_upgrade(&mut sock, method, url, &target, protocols).await?;
                    let (read, write) = sock.into_split();
                    (Box::new(read), Box::new(write), upgraded)
                }
                Dialed::Tls(mut sock) => {
                    let upgraded = spdy_upgrade(&mut sock, method, url, &target, protocols).await?;
                    let (read, write) = tokio::io::split(sock);
                    (Box::new(read), Box::new(write), upgraded)
                }
            };
        let shared = Arc::new(Shared {
            out: tokio::sync::Mutex::new(Out {
                sock: Some(write),
                codec: HeaderCodec::new(),
                next_id: 1,
            }),
            streams: StdMutex::new(Some(HashMap::new())),
            trace: StdMutex::new(Vec::new()),
            goaway: StdMutex::new(None),
        });
        let (closed_tx, closed) = watch::channel(false);
        let reader = tokio::spawn(read_loop(shared.clone(), read, rest, closed_tx));
        Ok(SpdyConn {
            shared,
            reader,
            closed,
            protocol,
        })
    }

    /// The protocol the server chose (its `X-Stream-Protocol-Version` answer).
    pub fn protocol(&self) -> &str {
        &self.protocol
    }

    /// Opens a stream with `headers` and waits for the server's SYN_REPLY, as
    /// client-go's `CreateStream` does.
    pub async fn open_stream(&self, headers: &[(&str, &str)]) -> Result<SpdyStream, StreamError> {
        let (data_tx, data_rx) = mpsc::unbounded_channel();
        let (reply_tx, reply_rx) = oneshot::channel();
        let id = {
            let mut out = self.shared.out.lock().await;
            let id = out.next_id;
            out.next_id += 2;
            match self.shared.streams.lock().unwrap().as_mut() {
                Some(streams) => streams.insert(
                    id,
                    Slot {
                        data: data_tx,
                        reply: Some(reply_tx),
                    },
                ),
                None => return Err(StreamError::Closed),
            };
            let frame = Frame::SynStream {
                stream_id: id,
                associated_id: 0,
                priority: 0,
                fin: false,
                unidirectional: false,
                headers: headers
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect(),
            };
            self.shared
                .send_locked(&mut out, frame)
                .await
                .map_err(StreamError::Io)?;
            id
        };
        match tokio::time::timeout(TIMEOUT, reply_rx).await {
            Err(_) => Err(StreamError::Timeout),
            Ok(Err(_)) => Err(StreamError::Closed),
            Ok(Ok(Err(status))) => Err(StreamError::Reset(status)),
            Ok(Ok(Ok(()))) => Ok(SpdyStream {
                id,
                shared: self.shared.clone(),
                rx: data_rx,
                end: None,
            }),
        }
    }

    /// Waits up to `within` for the server to close the connection.
    pub async fn wait_closed(&self, within: Duration) -> bool {
        let mut closed = self.closed.clone();
        tokio::time::timeout(within, closed.wait_for(|c| *c))
            .await
            .is_ok()
    }

    /// The GOAWAY the server sent, as (last good stream id, status).
    pub fn goaway(&self) -> Option<(u32, u32)> {
        *self.shared.goaway.lock().unwrap()
    }

    /// Every frame sent (`>`) and received (`<`) so far, one per line.
    pub fn trace(&self) -> String {
        self.shared.trace_text()
    }

    /// Sends GOAWAY, as client-go does when it is done, then closes.
    pub async fn close(self) {
        let _ = self
            .shared
            .send(Frame::GoAway {
                last_good_stream_id: 0,
                status: 0,
            })
            .await;
    }
}

impl Drop for SpdyConn {
    fn drop(&mut self) {
        self.reader.abort();
        self.shared.streams.lock().unwrap().take();
        if let Ok(mut out) = self.shared.out.try_lock() {
            out.sock = None;
        }
    }
}

/// How a stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    /// The server sent FIN.
    Fin,
    /// The server reset it.
    Reset(u32),
    /// The connection ended without either.
    ConnectionClosed,
}

/// One SPDY stream opened by the client.
pub struct SpdyStream {
    id: u32,
    shared: Arc<Shared>,
    rx: mpsc::UnboundedReceiver<StreamEvent>,
    end: Option<StreamEnd>,
}

impl SpdyStream {
    /// The stream id (odd).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Sends `data` as DATA frames.
    pub async fn write(&self, data: &[u8]) -> io::Result<()> {
        for chunk in data.chunks(CHUNK) {
            self.shared
                .send(Frame::Data {
                    stream_id: self.id,
                    fin: false,
                    data: chunk.to_vec(),
                })
                .await?;
        }
        Ok(())
    }

    /// Half-closes: an empty DATA frame with FIN, as spdystream's `Close` sends.
    pub async fn close_write(&self) -> io::Result<()> {
        self.shared
            .send(Frame::Data {
                stream_id: self.id,
                fin: true,
                data: Vec::new(),
            })
            .await
    }

    /// Aborts the stream with RST_STREAM CANCEL.
    pub async fn reset(&self) -> io::Result<()> {
        self.shared
            .send(Frame::RstStream {
                stream_id: self.id,
                status: RST_CANCEL,
            })
            .await
    }

    /// The next data, or `None` at the end; waits without limit.
    async fn next(&mut self) -> Option<Vec<u8>> {
        if self.end.is_some() {
            return None;
        }
        match self.rx.recv().await {
            Some(StreamEvent::Data(d)) => Some(d),
            Some(StreamEvent::Fin) => {
                self.end = Some(StreamEnd::Fin);
                None
            }
            Some(StreamEvent::Reset(s)) => {
                self.end = Some(StreamEnd::Reset(s));
                None
            }
            None => {
                self.end = Some(StreamEnd::ConnectionClosed);
                None
            }
        }
    }

    /// The next data, or `None` at the end; panics after [`TIMEOUT`].
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        match tokio::time::timeout(TIMEOUT, self.next()).await {
            Ok(d) => d,
            Err(_) => panic!(
                "stream {}: nothing received within {TIMEOUT:?}; frames:\n{}",
                self.id,
                self.shared.trace_text()
            ),
        }
    }

    /// Everything up to the end of the stream; panics if it does not end within
    /// [`TIMEOUT`].
    pub async fn read_to_end(&mut self) -> Vec<u8> {
        let mut all = Vec::new();
        let work = async {
            while let Some(d) = self.next().await {
                all.extend_from_slice(&d);
            }
        };
        if tokio::time::timeout(TIMEOUT, work).await.is_err() {
            panic!(
                "stream {} did not end within {TIMEOUT:?}, {} bytes so far: {}; frames:\n{}",
                self.id,
                all.len(),
                preview(&all),
                self.shared.trace_text()
            );
        }
        all
    }

    /// How the stream ended, once it has.
    pub fn end(&self) -> Option<&StreamEnd> {
        self.end.as_ref()
    }
}

// ---------------------------------------------------------------------------
// WebSocket connection

type Ws = WebSocketStream<Box<dyn Io>>;

/// Opens a WebSocket to `url` (http is rewritten to ws) offering `protocols`;
/// returns the socket and the chosen protocol.
pub async fn ws_connect(url: &str, protocols: &[&str]) -> Result<(Ws, String), UpgradeError> {
    ws_connect_via(&Dial::plain(), url, protocols).await
}

/// [`ws_connect`] over a connection `dial` makes (`https` is rewritten to wss).
pub async fn ws_connect_via(
    dial: &Dial,
    url: &str,
    protocols: &[&str],
) -> Result<(Ws, String), UpgradeError> {
    let target = parse_url(url);
    let scheme = if target.tls { "wss" } else { "ws" };
    let mut request = format!("{scheme}://{}{}", target.authority, target.path)
        .into_client_request()
        .unwrap_or_else(|e| panic!("websocket request for {url}: {e}"));
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_str(&protocols.join(", ")).expect("protocol header"),
    );
    let sock = dial.connect(url, &target).await?.boxed();
    let result =
        tokio::time::timeout(TIMEOUT, tokio_tungstenite::client_async(request, sock)).await;
    match result {
        Err(_) => Err(UpgradeError {
            status: 0,
            headers: Vec::new(),
            body: format!("websocket handshake with {url}: no answer within {TIMEOUT:?}"),
        }),
        Ok(Err(tungstenite::Error::Http(response))) => Err(UpgradeError {
            status: response.status().as_u16(),
            headers: response
                .headers()
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_string(),
                        v.to_str().unwrap_or("?").to_string(),
                    )
                })
                .collect(),
            body: response
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).to_string())
                .unwrap_or_default(),
        }),
        Ok(Err(e)) => Err(UpgradeError {
            status: 0,
            headers: Vec::new(),
            body: format!("websocket handshake: {e}"),
        }),
        Ok(Ok((ws, response))) => {
            let protocol = response
                .headers()
                .get("Sec-WebSocket-Protocol")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            Ok((ws, protocol))
        }
    }
}

/// Something that happened on a remote command or port-forward connection.
enum Event {
    /// Data on a channel.
    Data(u8, Vec<u8>),
    /// One channel ended (SPDY: its stream ended).
    End(u8),
    /// The whole connection ended (WebSocket close), with why.
    Closed(String),
    /// The server broke the protocol.
    Violation(String),
}

/// Reads a WebSocket, turning messages into [`Event`]s. Empty payloads are passed
/// on (port-forward needs none, remote command ignores them).
async fn ws_read_loop(mut stream: SplitStream<Ws>, base64: bool, tx: mpsc::UnboundedSender<Event>) {
    let mut closed = false;
    loop {
        match stream.next().await {
            Some(Ok(Message::Binary(b))) => {
                if base64 {
                    let _ = tx.send(Event::Violation(format!(
                        "binary message under a base64 protocol: {}",
                        preview(&b)
                    )));
                } else if let Some((&ch, data)) = b.split_first() {
                    let _ = tx.send(Event::Data(ch, data.to_vec()));
                } else {
                    let _ = tx.send(Event::Violation("empty binary message".into()));
                }
            }
            Some(Ok(Message::Text(t))) => {
                let t = t.as_str();
                if !base64 {
                    let _ = tx.send(Event::Violation(format!(
                        "text message under a binary protocol: {t:?}"
                    )));
                    continue;
                }
                let mut chars = t.chars();
                let ch = chars.next().and_then(|c| c.to_digit(10));
                let decoded = BASE64.decode(chars.as_str());
                match (ch, decoded) {
                    (Some(ch), Ok(data)) => {
                        let _ = tx.send(Event::Data(ch as u8, data));
                    }
                    _ => {
                        let _ = tx.send(Event::Violation(format!("bad base64 message {t:?}")));
                    }
                }
            }
            Some(Ok(Message::Close(frame))) => {
                // Keep polling so that tungstenite sends the closing handshake's reply.
                if !closed {
                    closed = true;
                    let _ = tx.send(Event::Closed(format!("close frame {frame:?}")));
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                if !closed {
                    let _ = tx.send(Event::Closed(format!("websocket error: {e}")));
                }
                return;
            }
            None => {
                if !closed {
                    let _ = tx.send(Event::Closed(
                        "connection closed without a close frame".into(),
                    ));
                }
                return;
            }
        }
    }
}

/// Encodes one client message on `channel` for the protocol.
fn ws_message(base64: bool, channel: u8, data: &[u8]) -> Message {
    if base64 {
        assert!(channel < 10, "base64 channel {channel} has no single digit");
        Message::text(format!("{}{}", channel, BASE64.encode(data)))
    } else {
        let mut b = Vec::with_capacity(data.len() + 1);
        b.push(channel);
        b.extend_from_slice(data);
        Message::binary(b)
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

// ---------------------------------------------------------------------------
// Remote command sessions

/// Which streams a remote command has; must match the CRI request the URL came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Streams {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl Streams {
    /// stdout and stderr.
    pub const OUTPUT: Streams = Streams {
        stdin: false,
        stdout: true,
        stderr: true,
        tty: false,
    };
    /// stdin, stdout and stderr.
    pub const ALL: Streams = Streams {
        stdin: true,
        stdout: true,
        stderr: true,
        tty: false,
    };
    /// What `crictl exec -it` asks for: stdin, stdout and a tty (no stderr).
    pub const TTY: Streams = Streams {
        stdin: true,
        stdout: true,
        stderr: false,
        tty: true,
    };
}

enum Transport {
    Spdy {
        conn: SpdyConn,
        stdin: Option<SpdyStream>,
        resize: Option<SpdyStream>,
        _forwarders: Vec<AbortOnDrop>,
    },
    Ws {
        sink: SplitSink<Ws, Message>,
        base64: bool,
        _reader: AbortOnDrop,
    },
}

/// A remote command (exec or attach) in progress over SPDY or WebSocket.
///
/// Output is gathered per channel; `read_until` waits for a pattern, `finish`
/// for the end. Dropping the session closes its connection at once.
pub struct Session {
    protocol: String,
    transport: Transport,
    events: mpsc::UnboundedReceiver<Event>,
    out: [Vec<u8>; 5],
    cursor: [usize; 5],
    /// Output channels that have not ended.
    open: [bool; 5],
    closed: Option<String>,
}

impl Session {
    /// Upgrades to SPDY with POST, offering `protocols`, and creates the streams in
    /// client-go's order: error, stdin, stdout, stderr (not with a tty), resize
    /// (with a tty, from v3 on).
    pub async fn spdy(
        url: &str,
        protocols: &[&str],
        streams: Streams,
    ) -> Result<Session, UpgradeError> {
        Self::spdy_with_method("POST", url, protocols, streams).await
    }

    /// [`Session::spdy`] with another HTTP method.
    pub async fn spdy_with_method(
        method: &str,
        url: &str,
        protocols: &[&str],
        streams: Streams,
    ) -> Result<Session, UpgradeError> {
        Self::spdy_via(&Dial::plain(), method, url, protocols, streams).await
    }

    /// [`Session::spdy_with_method`] over a connection `dial` makes.
    pub async fn spdy_via(
        dial: &Dial,
        method: &str,
        url: &str,
        protocols: &[&str],
        streams: Streams,
    ) -> Result<Session, UpgradeError> {
        let conn = SpdyConn::connect_via(dial, method, url, protocols).await?;
        let protocol = conn.protocol().to_string();
        let version = version_of(&protocol);
        let open = |kind: &'static str| {
            let conn = &conn;
            async move {
                conn.open_stream(&[("streamtype", kind)])
                    .await
                    .unwrap_or_else(|e| {
                        panic!("create the {kind} stream: {e}; frames:\n{}", conn.trace())
                    })
            }
        };
        let error = open("error").await;
        let stdin = if streams.stdin {
            Some(open("stdin").await)
        } else {
            None
        };
        let stdout = if streams.stdout {
            Some(open("stdout").await)
        } else {
            None
        };
        let stderr = if streams.stderr && !streams.tty {
            Some(open("stderr").await)
        } else {
            None
        };
        let resize = if streams.tty && version >= 3 {
            Some(open("resize").await)
        } else {
            None
        };
        let (tx, events) = mpsc::unbounded_channel();
        let mut is_open = [false; 5];
        let mut forwarders = Vec::new();
        for (channel, stream) in [(ERROR, Some(error)), (STDOUT, stdout), (STDERR, stderr)] {
            let Some(mut stream) = stream else { continue };
            is_open[channel as usize] = true;
            let tx = tx.clone();
            forwarders.push(AbortOnDrop(tokio::spawn(async move {
                while let Some(d) = stream.next().await {
                    let _ = tx.send(Event::Data(channel, d));
                }
                let _ = tx.send(Event::End(channel));
            })));
        }
        Ok(Session {
            protocol,
            transport: Transport::Spdy {
                conn,
                stdin,
                resize,
                _forwarders: forwarders,
            },
            events,
            out: Default::default(),
            cursor: [0; 5],
            open: is_open,
            closed: None,
        })
    }

    /// Opens a WebSocket offering `protocols`.
    pub async fn ws(
        url: &str,
        protocols: &[&str],
        streams: Streams,
    ) -> Result<Session, UpgradeError> {
        Self::ws_via(&Dial::plain(), url, protocols, streams).await
    }

    /// [`Session::ws`] over a connection `dial` makes.
    pub async fn ws_via(
        dial: &Dial,
        url: &str,
        protocols: &[&str],
        streams: Streams,
    ) -> Result<Session, UpgradeError> {
        let (ws, protocol) = ws_connect_via(dial, url, protocols).await?;
        if !protocols.contains(&protocol.as_str()) {
            return Err(UpgradeError {
                status: 101,
                headers: Vec::new(),
                body: format!("negotiated {protocol:?}, which was not offered"),
            });
        }
        version_of(&protocol);
        let base64 = protocol.contains("base64");
        let (sink, stream) = ws.split();
        let (tx, events) = mpsc::unbounded_channel();
        let reader = AbortOnDrop(tokio::spawn(ws_read_loop(stream, base64, tx)));
        let mut open = [false; 5];
        open[ERROR as usize] = true;
        open[STDOUT as usize] = streams.stdout;
        open[STDERR as usize] = streams.stderr && !streams.tty;
        Ok(Session {
            protocol,
            transport: Transport::Ws {
                sink,
                base64,
                _reader: reader,
            },
            events,
            out: Default::default(),
            cursor: [0; 5],
            open,
            closed: None,
        })
    }

    /// The negotiated protocol.
    pub fn protocol(&self) -> &str {
        &self.protocol
    }

    /// The SPDY connection, for SPDY sessions.
    pub fn spdy_conn(&self) -> Option<&SpdyConn> {
        match &self.transport {
            Transport::Spdy { conn, .. } => Some(conn),
            Transport::Ws { .. } => None,
        }
    }

    async fn ws_send(&mut self, message: Message) {
        let Transport::Ws { sink, .. } = &mut self.transport else {
            unreachable!()
        };
        match tokio::time::timeout(TIMEOUT, sink.send(message)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("websocket send: {e}; {}", self.summary()),
            Err(_) => panic!("websocket send: timed out; {}", self.summary()),
        }
    }

    /// Writes to the command's stdin.
    pub async fn write_stdin(&mut self, data: &[u8]) {
        match &self.transport {
            Transport::Spdy { stdin, conn, .. } => {
                let stdin = stdin.as_ref().expect("the session has no stdin stream");
                if let Err(e) = stdin.write(data).await {
                    panic!("write stdin: {e}; frames:\n{}", conn.trace());
                }
            }
            Transport::Ws { base64, .. } => {
                let base64 = *base64;
                for chunk in data.chunks(CHUNK) {
                    self.ws_send(ws_message(base64, STDIN, chunk)).await;
                }
            }
        }
    }

    /// Whether this session's protocol can close stdin (SPDY: always; WebSocket: v5).
    pub fn can_close_stdin(&self) -> bool {
        match &self.transport {
            Transport::Spdy { .. } => true,
            Transport::Ws { .. } => self.protocol == V5,
        }
    }

    /// Closes stdin: FIN on the SPDY stdin stream, or the v5 close message `[255, 0]`.
    pub async fn close_stdin(&mut self) {
        match &self.transport {
            Transport::Spdy { stdin, conn, .. } => {
                let stdin = stdin.as_ref().expect("the session has no stdin stream");
                if let Err(e) = stdin.close_write().await {
                    panic!("close stdin: {e}; frames:\n{}", conn.trace());
                }
            }
            Transport::Ws { .. } => {
                assert_eq!(
                    self.protocol, V5,
                    "only v5 can close stdin over a websocket"
                );
                self.ws_send(Message::binary(vec![255, STDIN])).await;
            }
        }
    }

    /// Sends a terminal size, as kubectl does: one JSON object per message.
    pub async fn resize(&mut self, width: u16, height: u16) {
        let json = format!("{{\"Width\":{width},\"Height\":{height}}}\n");
        match &self.transport {
            Transport::Spdy { resize, conn, .. } => {
                let resize = resize.as_ref().expect("the session has no resize stream");
                if let Err(e) = resize.write(json.as_bytes()).await {
                    panic!("resize: {e}; frames:\n{}", conn.trace());
                }
            }
            Transport::Ws { base64, .. } => {
                let message = ws_message(*base64, RESIZE, json.as_bytes());
                self.ws_send(message).await;
            }
        }
    }

    /// What has been received on each channel, and the frames for SPDY.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "protocol {}; stdout {}; stderr {}; error {}; open {:?}; closed {:?}",
            self.protocol,
            preview(&self.out[STDOUT as usize]),
            preview(&self.out[STDERR as usize]),
            preview(&self.out[ERROR as usize]),
            self.open,
            self.closed
        );
        if let Transport::Spdy { conn, .. } = &self.transport {
            s.push_str(&format!("; frames:\n{}", conn.trace()));
        }
        s
    }

    fn apply(&mut self, event: Option<Event>) {
        match event {
            Some(Event::Data(ch, data)) => {
                let ch = usize::from(ch);
                assert!(ch < 5, "data on unknown channel {ch}: {}", preview(&data));
                self.out[ch].extend_from_slice(&data);
            }
            Some(Event::End(ch)) => self.open[usize::from(ch)] = false,
            Some(Event::Closed(why)) => {
                self.open = [false; 5];
                self.closed = Some(why);
            }
            Some(Event::Violation(why)) => panic!("protocol violation: {why}; {}", self.summary()),
            None => {
                self.open = [false; 5];
                self.closed.get_or_insert_with(|| "ended".into());
            }
        }
    }

    async fn next_event(&mut self, deadline: Instant, waiting_for: &str) {
        match tokio::time::timeout_at(deadline, self.events.recv()).await {
            Ok(event) => self.apply(event),
            Err(_) => panic!(
                "timed out after {TIMEOUT:?} waiting for {waiting_for}; {}",
                self.summary()
            ),
        }
    }

    /// Waits until `find` matches the output of `channel` not yet consumed, and
    /// consumes it up to the end `find` returns. Panics after [`TIMEOUT`] or if the
    /// channel ends first.
    pub async fn read_until_fn(
        &mut self,
        channel: u8,
        what: &str,
        find: impl Fn(&str) -> Option<usize>,
    ) -> String {
        let ch = usize::from(channel);
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let pending = String::from_utf8_lossy(&self.out[ch][self.cursor[ch]..]).to_string();
            if let Some(end) = find(&pending) {
                // Lossy decoding may have changed lengths; consume by re-encoding.
                let taken = pending[..end].to_string();
                self.cursor[ch] += taken.len().min(self.out[ch].len() - self.cursor[ch]);
                return taken;
            }
            if !self.open[ch] {
                panic!("channel {channel} ended without {what}; {}", self.summary());
            }
            self.next_event(deadline, what).await;
        }
    }

    /// Waits until `pattern` appears on `channel` after what was consumed before;
    /// returns the output up to and including it.
    pub async fn read_until(&mut self, channel: u8, pattern: &str) -> String {
        self.read_until_fn(channel, &format!("{pattern:?} on channel {channel}"), |s| {
            s.find(pattern).map(|i| i + pattern.len())
        })
        .await
    }

    /// Waits for the end of every output channel (and of the error channel), then
    /// closes the connection.
    pub async fn finish(mut self) -> ExecResult {
        let deadline = Instant::now() + TIMEOUT;
        while self.open.iter().any(|o| *o) {
            self.next_event(deadline, "the end of the output").await;
        }
        let trace = match &self.transport {
            Transport::Spdy { conn, .. } => conn.trace(),
            Transport::Ws { .. } => String::new(),
        };
        let [_, stdout, stderr, error, _] = std::mem::take(&mut self.out);
        ExecResult {
            protocol: self.protocol.clone(),
            stdout,
            stderr,
            error,
            closed: self.closed.clone(),
            trace,
        }
    }

    /// Writes `input`'s resizes and stdin, closing stdin unless asked not to or the
    /// protocol cannot.
    pub async fn feed(&mut self, input: &ExecInput) {
        for &(w, h) in &input.resize {
            self.resize(w, h).await;
        }
        if let Some(data) = &input.stdin {
            self.write_stdin(data).await;
            if !input.keep_stdin_open && self.can_close_stdin() {
                self.close_stdin().await;
            }
        }
    }
}

/// What a finished remote command returned.
#[derive(Clone)]
pub struct ExecResult {
    /// The negotiated protocol.
    pub protocol: String,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Everything received on the error stream or channel.
    pub error: Vec<u8>,
    /// How the connection ended, when it did (WebSocket: close frame or error).
    pub closed: Option<String>,
    /// SPDY frames both ways (empty for WebSocket).
    pub trace: String,
}

impl fmt::Debug for ExecResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ExecResult {{ protocol: {}, stdout: {}, stderr: {}, error: {}, closed: {:?} }}",
            self.protocol,
            preview(&self.stdout),
            preview(&self.stderr),
            preview(&self.error),
            self.closed
        )?;
        if !self.trace.is_empty() {
            write!(f, "\nframes:\n{}", self.trace)?;
        }
        Ok(())
    }
}

impl ExecResult {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).to_string()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).to_string()
    }

    pub fn error_text(&self) -> String {
        String::from_utf8_lossy(&self.error).to_string()
    }

    /// The `metav1.Status` of a v4 or v5 command; panics if the error stream does
    /// not hold one JSON object.
    pub fn status(&self) -> Value {
        assert!(
            version_of(&self.protocol) >= 4,
            "{} has no JSON status",
            self.protocol
        );
        serde_json::from_slice(&self.error)
            .unwrap_or_else(|e| panic!("error stream is not a JSON status ({e}): {self:?}"))
    }

    /// The exit code as a kubelet client reads it: for v4 and v5 from the status
    /// (Success is 0, NonZeroExitCode carries it in the ExitCode cause); for older
    /// protocols only success (an empty error stream) is a code. Anything else is
    /// `Err` with the error text.
    pub fn exit_code(&self) -> Result<i32, String> {
        if version_of(&self.protocol) < 4 {
            return if self.error.is_empty() {
                Ok(0)
            } else {
                Err(self.error_text())
            };
        }
        let Ok(status) = serde_json::from_slice::<Value>(&self.error) else {
            return Err(format!("no JSON status: {:?}", self.error_text()));
        };
        if status["status"] == "Success" {
            return Ok(0);
        }
        if status["reason"] == "NonZeroExitCode" {
            let code = status["details"]["causes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["reason"] == "ExitCode")
                .and_then(|c| c["message"].as_str())
                .and_then(|m| m.parse().ok());
            if let Some(code) = code {
                return Ok(code);
            }
        }
        Err(status.to_string())
    }
}

/// A whole remote command's input.
#[derive(Debug, Clone, Default)]
pub struct ExecInput {
    /// Written to stdin; `Some` also opens the stdin stream.
    pub stdin: Option<Vec<u8>>,
    /// Leave stdin open after writing it (it is closed by default, where the
    /// protocol can).
    pub keep_stdin_open: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
    /// Terminal sizes (width, height) sent before stdin.
    pub resize: Vec<(u16, u16)>,
}

impl ExecInput {
    /// stdout and stderr, no stdin.
    pub fn output() -> ExecInput {
        ExecInput {
            stdout: true,
            stderr: true,
            ..Default::default()
        }
    }

    /// `data` on stdin (then closed), stdout and stderr.
    pub fn with_stdin(data: &[u8]) -> ExecInput {
        ExecInput {
            stdin: Some(data.to_vec()),
            ..Self::output()
        }
    }

    /// The streams, for the CRI request.
    pub fn streams(&self) -> Streams {
        Streams {
            stdin: self.stdin.is_some(),
            stdout: self.stdout,
            stderr: self.stderr,
            tty: self.tty,
        }
    }
}

/// Runs a remote command over SPDY with exactly `protocol` offered.
pub async fn exec_spdy(url: &str, protocol: &str, input: &ExecInput) -> ExecResult {
    exec_spdy_via(&Dial::plain(), url, protocol, input).await
}

/// [`exec_spdy`] over a connection `dial` makes.
pub async fn exec_spdy_via(
    dial: &Dial,
    url: &str,
    protocol: &str,
    input: &ExecInput,
) -> ExecResult {
    let mut s = Session::spdy_via(dial, "POST", url, &[protocol], input.streams())
        .await
        .unwrap_or_else(|e| panic!("spdy {protocol} to {url}: {e}"));
    assert_eq!(s.protocol(), protocol);
    s.feed(input).await;
    s.finish().await
}

/// Runs a remote command over WebSocket with exactly `protocol` offered.
pub async fn exec_ws(url: &str, protocol: &str, input: &ExecInput) -> ExecResult {
    exec_ws_via(&Dial::plain(), url, protocol, input).await
}

/// [`exec_ws`] over a connection `dial` makes.
pub async fn exec_ws_via(dial: &Dial, url: &str, protocol: &str, input: &ExecInput) -> ExecResult {
    let mut s = Session::ws_via(dial, url, &[protocol], input.streams())
        .await
        .unwrap_or_else(|e| panic!("websocket {protocol} to {url}: {e}"));
    assert_eq!(s.protocol(), protocol);
    s.feed(input).await;
    s.finish().await
}

// ---------------------------------------------------------------------------
// Port-forward

/// What one forwarded connection returned.
#[derive(Debug, Clone, Default)]
pub struct Forwarded {
    /// Bytes from the pod's port.
    pub data: Vec<u8>,
    /// Error text from the server.
    pub error: String,
}

impl Forwarded {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).to_string()
    }
}

/// SPDY port-forward (`portforward.k8s.io`): each connection to a pod port is an
/// error stream and a data stream sharing a request id.
pub struct PortForward {
    conn: SpdyConn,
    next_request: u32,
}

impl PortForward {
    /// Upgrades offering `portforward.k8s.io`.
    pub async fn connect(url: &str) -> Result<PortForward, UpgradeError> {
        Self::connect_via(&Dial::plain(), url).await
    }

    /// [`PortForward::connect`] over a connection `dial` makes.
    pub async fn connect_via(dial: &Dial, url: &str) -> Result<PortForward, UpgradeError> {
        let conn = SpdyConn::connect_via(dial, "POST", url, &[PORT_FORWARD]).await?;
        assert_eq!(conn.protocol(), PORT_FORWARD);
        Ok(PortForward {
            conn,
            next_request: 0,
        })
    }

    /// The connection.
    pub fn conn(&self) -> &SpdyConn {
        &self.conn
    }

    /// Opens a connection to `port` as client-go does: the error stream first
    /// (half-closed at once: the client never writes to it), then the data
    /// stream. Returns (data, error).
    pub async fn open(&mut self, port: u16) -> (SpdyStream, SpdyStream) {
        let request = self.next_request.to_string();
        self.next_request += 1;
        let port = port.to_string();
        let headers = |kind| {
            [
                ("streamtype", kind),
                ("port", port.as_str()),
                ("requestid", request.as_str()),
            ]
        };
        let error = self
            .conn
            .open_stream(&headers("error"))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "create the error stream: {e}; frames:\n{}",
                    self.conn.trace()
                )
            });
        error
            .close_write()
            .await
            .unwrap_or_else(|e| panic!("half-close the error stream: {e}"));
        let data = self
            .conn
            .open_stream(&headers("data"))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "create the data stream: {e}; frames:\n{}",
                    self.conn.trace()
                )
            });
        (data, error)
    }

    /// Sends `request` to `port` and reads until the pod side closes (the data
    /// stream ends), then half-closes as client-go does once its local peer is done.
    pub async fn request(&mut self, port: u16, request: &[u8]) -> Forwarded {
        let (mut data, mut error) = self.open(port).await;
        data.write(request)
            .await
            .unwrap_or_else(|e| panic!("write to port {port}: {e}"));
        let (reply, err) = tokio::join!(data.read_to_end(), error.read_to_end());
        let _ = data.close_write().await;
        Forwarded {
            data: reply,
            error: String::from_utf8_lossy(&err).to_string(),
        }
    }
}

/// WebSocket port-forward: channel 2i carries data and 2i+1 errors for the i-th
/// port; the first message on each channel is the port, little-endian.
pub struct WsPortForward {
    ports: Vec<u16>,
    sink: SplitSink<Ws, Message>,
    base64: bool,
    events: mpsc::UnboundedReceiver<Event>,
    _reader: AbortOnDrop,
    /// Per channel: whether its port prefix arrived, and the data after it.
    prefixed: Vec<bool>,
    received: Vec<Vec<u8>>,
    closed: Option<String>,
}

impl WsPortForward {
    /// Connects to `url` with `?port=` for each of `ports`, offering `protocol`.
    pub async fn connect(
        url: &str,
        protocol: &str,
        ports: &[u16],
    ) -> Result<WsPortForward, UpgradeError> {
        let query: Vec<String> = ports.iter().map(|p| format!("port={p}")).collect();
        let sep = if url.contains('?') { '&' } else { '?' };
        let url = format!("{url}{sep}{}", query.join("&"));
        let (ws, negotiated) = ws_connect(&url, &[protocol]).await?;
        assert_eq!(negotiated, protocol, "port-forward protocol");
        let base64 = protocol.contains("base64");
        let (sink, stream) = ws.split();
        let (tx, events) = mpsc::unbounded_channel();
        let reader = AbortOnDrop(tokio::spawn(ws_read_loop(stream, base64, tx)));
        Ok(WsPortForward {
            ports: ports.to_vec(),
            sink,
            base64,
            events,
            _reader: reader,
            prefixed: vec![false; ports.len() * 2],
            received: vec![Vec::new(); ports.len() * 2],
            closed: None,
        })
    }

    /// Sends `data` to the `index`-th port.
    pub async fn send(&mut self, index: usize, data: &[u8]) {
        let channel = u8::try_from(index * 2).expect("port index");
        let message = ws_message(self.base64, channel, data);
        match tokio::time::timeout(TIMEOUT, self.sink.send(message)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("websocket send: {e}"),
            Err(_) => panic!("websocket send: timed out"),
        }
    }

    fn summary(&self) -> String {
        let channels: Vec<String> = self
            .received
            .iter()
            .enumerate()
            .map(|(ch, d)| format!("{ch}: prefix={} {}", self.prefixed[ch], preview(d)))
            .collect();
        format!(
            "channels [{}]; closed {:?}",
            channels.join(", "),
            self.closed
        )
    }

    /// Reads until the server closes the WebSocket; returns per port (data, error).
    pub async fn finish(mut self) -> Vec<Forwarded> {
        let deadline = Instant::now() + TIMEOUT;
        while self.closed.is_none() {
            let event = match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(e) => e,
                Err(_) => panic!(
                    "port-forward websocket not closed within {TIMEOUT:?}; {}",
                    self.summary()
                ),
            };
            match event {
                Some(Event::Data(ch, data)) => {
                    let ch = usize::from(ch);
                    assert!(
                        ch < self.received.len(),
                        "data on channel {ch}, beyond {} ports: {}",
                        self.ports.len(),
                        preview(&data)
                    );
                    if self.prefixed[ch] {
                        self.received[ch].extend_from_slice(&data);
                    } else {
                        let want = self.ports[ch / 2].to_le_bytes();
                        assert_eq!(
                            data,
                            want,
                            "the first message on channel {ch} must be port {} little-endian; {}",
                            self.ports[ch / 2],
                            self.summary()
                        );
                        self.prefixed[ch] = true;
                    }
                }
                Some(Event::End(_)) => {}
                Some(Event::Closed(why)) => self.closed = Some(why),
                Some(Event::Violation(why)) => {
                    panic!("protocol violation: {why}; {}", self.summary())
                }
                None => self.closed = Some("ended".into()),
            }
        }
        for (ch, seen) in self.prefixed.iter().enumerate() {
            assert!(
                seen,
                "channel {ch} never got its port prefix; {}",
                self.summary()
            );
        }
        self.received
            .chunks(2)
            .map(|pair| Forwarded {
                data: pair[0].clone(),
                error: String::from_utf8_lossy(&pair[1]).to_string(),
            })
            .collect()
    }
}
