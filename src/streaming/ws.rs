//! The WebSocket side: kubelet's channel protocols (`channel.k8s.io`, `v4.` and
//! `v5.channel.k8s.io`, and the `base64` variants) for exec, attach and port-forward.
//!
//! Every message carries one channel's bytes: binary messages start with the channel
//! number, base64 ones (text) with its ASCII digit followed by the bytes in base64.
//! Remote commands use 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize; v5 adds 255,
//! whose payload names a channel the client closes. Port-forward uses 2i (data) and
//! 2i+1 (error) for the i-th port of the URL.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

use super::idle::Activity;
use super::remote::ClientStreams;
use super::{Limits, Parked, RemoteCommand, RemoteProtocol, StreamContext, StreamingServer};

/// Remote-command channels.
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
/// v5: the client closes the channel named in the payload.
const CLOSE: u8 = 255;

/// Remote-command subprotocols: (name, version, base64). No protocol means v1 binary.
const REMOTE: [(&str, RemoteProtocol, bool); 6] = [
    ("v5.channel.k8s.io", RemoteProtocol::V5, false),
    ("v4.channel.k8s.io", RemoteProtocol::V4, false),
    ("v4.base64.channel.k8s.io", RemoteProtocol::V4, true),
    ("channel.k8s.io", RemoteProtocol::V1, false),
    ("base64.channel.k8s.io", RemoteProtocol::V1, true),
    ("", RemoteProtocol::V1, false),
];
/// Port-forward subprotocols: (name, base64).
const PORTFORWARD: [(&str, bool); 4] = [
    ("v4.channel.k8s.io", false),
    ("v4.base64.channel.k8s.io", true),
    ("portforward.k8s.io", false),
    ("", false),
];

type Body = Full<Bytes>;

fn refuse(status: StatusCode, text: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(text + "\n")));
    *r.status_mut() = status;
    r
}

/// Answers a WebSocket upgrade for `parked` and serves it once upgraded.
pub fn upgrade(
    server: Arc<StreamingServer>,
    parked: Parked,
    permit: tokio::sync::OwnedSemaphorePermit,
    req: &mut Request<hyper::body::Incoming>,
) -> Response<Body> {
    let headers = req.headers();
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return refuse(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key".into());
    };
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return refuse(
            StatusCode::BAD_REQUEST,
            "Sec-WebSocket-Version must be 13".into(),
        );
    }
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut offers = super::http::offered(headers, header::SEC_WEBSOCKET_PROTOCOL.as_str());
    if offers.is_empty() {
        offers.push(String::new());
    }
    let chosen: Option<(String, RemoteProtocol, bool)> = match &parked {
        Parked::Remote(_) => offers.iter().find_map(|o| {
            REMOTE
                .iter()
                .find(|(n, _, _)| n == o)
                .map(|(n, v, b)| (n.to_string(), *v, *b))
        }),
        Parked::PortForward { .. } => offers.iter().find_map(|o| {
            PORTFORWARD
                .iter()
                .find(|(n, _)| n == o)
                .map(|(n, b)| (n.to_string(), RemoteProtocol::V4, *b))
        }),
    };
    let Some((name, version, base64)) = chosen else {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("requested protocol(s) are not supported: {offers:?}"),
        );
    };
    let ports = match &parked {
        Parked::PortForward { .. } => match ports_of(req.uri().query().unwrap_or("")) {
            Ok(p) => p,
            Err(e) => return refuse(StatusCode::BAD_REQUEST, e),
        },
        Parked::Remote(_) => Vec::new(),
    };
    let upgrade = hyper::upgrade::on(req);
    let ctx = server.ctx.clone();
    let limits = server.limits.clone();
    tokio::spawn(async move {
        // Held for as long as the connection is served.
        let _permit = permit;
        let upgraded = match upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "streaming: websocket upgrade failed");
                return;
            }
        };
        let config = WebSocketConfig::default()
            .max_message_size(Some(limits.ws_max_message))
            .max_frame_size(Some(limits.ws_max_message));
        let ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        match parked {
            Parked::Remote(command) => {
                serve_remote(ws, version, base64, command, ctx, &limits).await
            }
            Parked::PortForward { sandbox_id } => {
                super::portforward::serve_ws(ws, base64, ports, sandbox_id, ctx, &limits).await
            }
        }
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if !name.is_empty()
        && let Ok(v) = HeaderValue::from_str(&name)
    {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
    }
    response
}

/// The `port` query parameters of a port-forward URL.
pub fn ports_of(query: &str) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != "port" {
            continue;
        }
        match value.parse::<u16>() {
            Ok(p) if p > 0 => ports.push(p),
            _ => return Err(format!("invalid port {value:?}")),
        }
    }
    if ports.is_empty() {
        return Err("query parameter \"port\" is required".into());
    }
    Ok(ports)
}

enum Out {
    Data(u8, Vec<u8>),
    Close(Option<CloseFrame>),
}

/// Sends on the connection's channels; cheap to clone.
#[derive(Clone)]
pub struct ChannelWriter {
    out: mpsc::Sender<Out>,
}

impl ChannelWriter {
    /// Sends `data` on `channel`; false once the connection is gone.
    pub async fn send(&self, channel: u8, data: Vec<u8>) -> bool {
        self.out.send(Out::Data(channel, data)).await.is_ok()
    }

    /// Copies everything from `rx` onto `channel`.
    pub async fn pump(self, channel: u8, mut rx: mpsc::Receiver<Vec<u8>>) {
        while let Some(bytes) = rx.recv().await {
            if !self.send(channel, bytes).await {
                return;
            }
        }
    }
}

/// One WebSocket connection split into channels.
pub struct Channels {
    /// Client data by channel, for the channels asked for at start.
    pub inputs: HashMap<u8, mpsc::Receiver<Vec<u8>>>,
    /// Cancelled when the client closed the connection or broke the protocol.
    pub gone: CancellationToken,
    writer: ChannelWriter,
    writer_task: tokio::task::JoinHandle<()>,
    reader_task: tokio::task::JoinHandle<()>,
}

impl Channels {
    /// Starts reading and writing `ws`; data for channels outside `inputs` is dropped.
    /// A connection without traffic either way for `idle_timeout` is closed.
    pub fn start<S>(
        ws: WebSocketStream<S>,
        base64: bool,
        inputs: &[u8],
        idle_timeout: std::time::Duration,
    ) -> Channels
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sink, stream) = ws.split();
        let (out_tx, out_rx) = mpsc::channel(64);
        let gone = CancellationToken::new();
        let mut senders = HashMap::new();
        let mut receivers = HashMap::new();
        for &ch in inputs {
            let (tx, rx) = mpsc::channel(16);
            senders.insert(ch, tx);
            receivers.insert(ch, rx);
        }
        let activity = Arc::new(Activity::new());
        let writer_task = tokio::spawn(write_messages(sink, out_rx, base64, Arc::clone(&activity)));
        let writer = ChannelWriter { out: out_tx };
        let reader = read_messages(
            stream,
            senders,
            base64,
            Idle {
                activity,
                timeout: idle_timeout,
            },
            writer.clone(),
            gone.clone(),
        );
        let reader_task = tokio::spawn(reader);
        Channels {
            inputs: receivers,
            gone,
            writer,
            writer_task,
            reader_task,
        }
    }

    /// A handle to send on channels.
    pub fn writer(&self) -> ChannelWriter {
        self.writer.clone()
    }

    /// Closes the connection once everything queued is written.
    pub async fn close(mut self) {
        let _ = self.writer.out.send(Out::Close(None)).await;
        let _ = (&mut self.writer_task).await;
        // Give the client a moment to answer the close, then drop the socket.
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(2), &mut self.reader_task).await;
    }
}

impl Drop for Channels {
    fn drop(&mut self) {
        self.writer_task.abort();
        self.reader_task.abort();
    }
}

async fn write_messages<S>(
    mut sink: futures_util::stream::SplitSink<WebSocketStream<S>, Message>,
    mut rx: mpsc::Receiver<Out>,
    base64: bool,
    activity: Arc<Activity>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(out) = rx.recv().await {
        let message = match out {
            Out::Data(ch, data) => encode(ch, &data, base64),
            Out::Close(frame) => {
                let _ = sink.send(Message::Close(frame)).await;
                let _ = sink.flush().await;
                return;
            }
        };
        if sink.feed(message).await.is_err() {
            return;
        }
        if rx.is_empty() {
            if sink.flush().await.is_err() {
                return;
            }
            activity.touch();
        }
    }
}

/// The idle timeout and what it is measured against.
struct Idle {
    activity: Arc<Activity>,
    timeout: std::time::Duration,
}

async fn read_messages<S>(
    mut stream: futures_util::stream::SplitStream<WebSocketStream<S>>,
    mut senders: HashMap<u8, mpsc::Sender<Vec<u8>>>,
    base64: bool,
    idle: Idle,
    writer: ChannelWriter,
    gone: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let wait = idle.timeout.saturating_sub(idle.activity.idle_for());
        let message = match tokio::time::timeout(wait, stream.next()).await {
            Err(_) if idle.activity.idle_for() >= idle.timeout => {
                tracing::debug!("websocket: closing an idle connection");
                let _ = writer.out.try_send(Out::Close(None));
                break;
            }
            // We wrote meanwhile: not idle yet.
            Err(_) => continue,
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(WsError::Capacity(e)))) => {
                tracing::info!(error = %e, "websocket: closing a connection over its message limit");
                let frame = CloseFrame {
                    code: CloseCode::Size,
                    reason: "message too big".into(),
                };
                // try_send: a writer stuck on a client that does not read must not
                // keep us from ending.
                let _ = writer.out.try_send(Out::Close(Some(frame)));
                break;
            }
            Ok(Some(Err(_)) | None) => break,
        };
        idle.activity.touch();
        let Some((ch, data)) = (match message {
            Message::Close(_) => break,
            other => decode(other, base64),
        }) else {
            continue;
        };
        if ch == CLOSE {
            if let Some(&closed) = data.first() {
                senders.remove(&closed);
            }
            continue;
        }
        if let Some(tx) = senders.get(&ch)
            && !data.is_empty()
        {
            let _ = tx.send(data).await;
        }
    }
    gone.cancel();
}

/// A channel message in the connection's encoding.
pub fn encode(channel: u8, data: &[u8], base64: bool) -> Message {
    if base64 {
        let mut text = String::with_capacity(1 + data.len() * 4 / 3 + 4);
        text.push(char::from(b'0' + channel));
        base64::engine::general_purpose::STANDARD.encode_string(data, &mut text);
        Message::text(text)
    } else {
        let mut bytes = Vec::with_capacity(1 + data.len());
        bytes.push(channel);
        bytes.extend_from_slice(data);
        Message::binary(bytes)
    }
}

/// A client message as (channel, bytes); `None` for what carries no channel data.
pub fn decode(message: Message, base64: bool) -> Option<(u8, Vec<u8>)> {
    match message {
        Message::Binary(bytes) if !base64 => {
            let (&ch, rest) = bytes.split_first()?;
            Some((ch, rest.to_vec()))
        }
        Message::Text(text) if base64 => {
            let (&digit, rest) = text.as_bytes().split_first()?;
            let ch = digit.checked_sub(b'0')?;
            let data = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .ok()?;
            Some((ch, data))
        }
        _ => None,
    }
}

/// Serves an exec or attach over the channels.
async fn serve_remote<S>(
    ws: WebSocketStream<S>,
    version: RemoteProtocol,
    base64: bool,
    command: RemoteCommand,
    ctx: StreamContext,
    limits: &Limits,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let want = command.streams();
    let mut inputs = vec![];
    if want.stdin {
        inputs.push(STDIN);
    }
    if want.tty {
        inputs.push(RESIZE);
    }
    let mut channels = Channels::start(ws, base64, &inputs, limits.idle_timeout);
    let writer = channels.writer();
    // Kubelet tells the client the connection is up with an empty message on the
    // lowest channel it will write.
    let first = if want.stdout {
        STDOUT
    } else if want.stderr && !want.tty {
        STDERR
    } else {
        ERROR
    };
    writer.send(first, Vec::new()).await;
    let mut pumps = tokio::task::JoinSet::new();
    let mut output = |wanted: bool, ch: u8| {
        wanted.then(|| {
            let (tx, rx) = mpsc::channel(8);
            pumps.spawn(writer.clone().pump(ch, rx));
            tx
        })
    };
    let stdout = output(want.stdout, STDOUT);
    let stderr = output(want.stderr && !want.tty, STDERR);
    let client = ClientStreams {
        stdin: channels.inputs.remove(&STDIN),
        stdout,
        stderr,
        resize: channels.inputs.remove(&RESIZE),
        gone: channels.gone.clone(),
    };
    let outcome = command.run(&ctx, client).await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while pumps.join_next().await.is_some() {}
    })
    .await;
    let status = match version {
        RemoteProtocol::V4 | RemoteProtocol::V5 => Some(outcome.status_json(command.cmd())),
        _ => outcome.status_text(command.cmd()),
    };
    if let Some(status) = status {
        writer.send(ERROR, status.into_bytes()).await;
    }
    super::spdy_remote::log_outcome(&command, &outcome);
    channels.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_and_base64_messages_round_trip() {
        for base64 in [false, true] {
            let m = encode(1, b"hello\x00\xff", base64);
            assert_eq!(decode(m, base64), Some((1, b"hello\x00\xff".to_vec())));
        }
        assert_eq!(encode(2, b"hi", true), Message::text("2aGk="));
        assert_eq!(
            encode(2, b"hi", false),
            Message::binary(vec![2, b'h', b'i'])
        );
    }

    #[test]
    fn messages_of_the_other_encoding_carry_nothing() {
        assert_eq!(decode(Message::text("0aGk="), false), None);
        assert_eq!(decode(Message::binary(vec![0, 1]), true), None);
        assert_eq!(decode(Message::binary(Vec::new()), false), None);
        assert_eq!(decode(Message::text("0!!"), true), None);
    }

    #[test]
    fn ports_come_from_the_query() {
        assert_eq!(ports_of("port=80&port=8080"), Ok(vec![80, 8080]));
        assert!(ports_of("").is_err());
        assert!(ports_of("port=0").is_err());
        assert!(ports_of("port=70000").is_err());
        assert!(ports_of("port=http").is_err());
    }
}
