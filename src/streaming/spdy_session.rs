//! A server-side SPDY/3.1 connection: the streams a client opens, their data, and a
//! writer that serializes every frame we send through one header compressor.
//!
//! ```text
//!   socket ──▶ reader task ──SYN_STREAM──▶ Incoming { headers, data: Receiver, slot }
//!                         ──DATA────────▶ that stream's data channel (bounded)
//!   socket ◀── writer task ◀── Out (SYN_REPLY, DATA, WINDOW_UPDATE, PING, GOAWAY)
//! ```
//! A full data channel stops the reader: a slow consumer slows the client down
//! through TCP instead of making us buffer. Clients (moby/spdystream) neither send
//! nor wait for WINDOW_UPDATEs; we send them anyway for clients that count windows.
//!
//! What a client can make us hold is bounded ([`Limits`]): every stream it opens
//! takes a slot, and the decompressed size of its headers, for as long as its
//! [`Incoming`] lives (queued, waiting for a partner or in use), FIN or not. A
//! stream beyond the slots is refused with RST_STREAM; a client that keeps opening
//! streams after as many refusals in a row, sends a header block over the limit or makes its
//! open streams' headers exceed the session's budget gets GOAWAY and the connection
//! closes. So does a connection with no traffic either way for the idle timeout.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crust_proto::spdy::{Frame, HeaderCodec, Headers};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Limits;
use super::idle::Activity;

/// Largest DATA payload we send; big enough for throughput, small enough to
/// interleave streams.
const MAX_DATA_FRAME: usize = 32 * 1024;
/// GOAWAY status OK.
const GOAWAY_OK: u32 = 0;
/// RST_STREAM and GOAWAY status PROTOCOL_ERROR.
pub const PROTOCOL_ERROR: u32 = 1;
/// RST_STREAM status REFUSED_STREAM.
pub const REFUSED_STREAM: u32 = 3;
/// RST_STREAM status CANCEL.
pub const CANCEL: u32 = 5;
/// Room in a control frame beyond its header block: ids, flags, and what deflate
/// adds to a block that does not compress.
const CONTROL_FRAME_SLACK: usize = 1024;

/// A stream the client opened.
pub struct Incoming {
    /// The stream id.
    pub id: u32,
    /// Its SYN_STREAM headers.
    pub headers: Headers,
    /// What the client writes on it; closed at the client's FIN or reset.
    pub data: mpsc::Receiver<Vec<u8>>,
    /// Its share of the session's limits, given back when the stream is dropped.
    _slot: Slot,
}

impl Incoming {
    /// The value of header `name` (SPDY names are lower-case; compared ignoring case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A stream that is not on any connection, for tests of its consumers.
    #[cfg(test)]
    pub fn detached(id: u32) -> Incoming {
        let held = Arc::new(Held::default());
        held.streams.fetch_add(1, Ordering::Relaxed);
        Incoming {
            id,
            headers: Vec::new(),
            data: mpsc::channel(1).1,
            _slot: Slot {
                held,
                header_bytes: 0,
            },
        }
    }

    /// Takes what the client writes, leaving the stream (and its slot) in place.
    pub fn take_data(&mut self) -> mpsc::Receiver<Vec<u8>> {
        let (_, closed) = mpsc::channel(1);
        std::mem::replace(&mut self.data, closed)
    }
}

/// What a session's live streams hold, counted by the reader and released by
/// [`Slot`]s.
#[derive(Default)]
struct Held {
    streams: AtomicUsize,
    header_bytes: AtomicUsize,
}

/// One stream's share of [`Held`].
struct Slot {
    held: Arc<Held>,
    header_bytes: usize,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.held.streams.fetch_sub(1, Ordering::Relaxed);
        self.held
            .header_bytes
            .fetch_sub(self.header_bytes, Ordering::Relaxed);
    }
}

/// The size a header list takes in an uncompressed SPDY block.
fn block_size(headers: &Headers) -> usize {
    4 + headers
        .iter()
        .map(|(n, v)| 8 + n.len() + v.len())
        .sum::<usize>()
}

enum Out {
    Frame(Frame),
    /// GOAWAY with this status, then close our side.
    Close(u32),
}

/// Sends on the connection's streams; cheap to clone.
#[derive(Clone)]
pub struct StreamWriter {
    out: mpsc::Sender<Out>,
}

impl StreamWriter {
    /// Sends `data` on stream `id`; false once the connection is gone.
    pub async fn data(&self, id: u32, data: &[u8]) -> bool {
        for chunk in data.chunks(MAX_DATA_FRAME) {
            let frame = Frame::Data {
                stream_id: id,
                fin: false,
                data: chunk.to_vec(),
            };
            if self.out.send(Out::Frame(frame)).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Ends our side of stream `id`.
    pub async fn finish(&self, id: u32) {
        let frame = Frame::Data {
            stream_id: id,
            fin: true,
            data: Vec::new(),
        };
        let _ = self.out.send(Out::Frame(frame)).await;
    }

    /// Aborts stream `id` with RST_STREAM `status`.
    pub async fn reset(&self, id: u32, status: u32) {
        let frame = Frame::RstStream {
            stream_id: id,
            status,
        };
        let _ = self.out.send(Out::Frame(frame)).await;
    }

    /// Copies everything from `rx` onto stream `id`, then ends it.
    pub async fn pump(self, id: u32, mut rx: mpsc::Receiver<Vec<u8>>) {
        while let Some(bytes) = rx.recv().await {
            if !self.data(id, &bytes).await {
                return;
            }
        }
        self.finish(id).await;
    }
}

/// One upgraded connection.
pub struct Session {
    /// Streams as the client opens them. Unbounded only in type: every queued
    /// stream holds one of the session's stream slots.
    pub incoming: mpsc::UnboundedReceiver<Incoming>,
    /// Cancelled when the client hung up, said GOAWAY, broke the protocol or a limit,
    /// or the connection went idle.
    pub gone: CancellationToken,
    writer: StreamWriter,
    reader_task: JoinHandle<()>,
    writer_task: JoinHandle<()>,
}

impl Session {
    /// Starts serving SPDY on `io` within `limits`; `buffered` holds bytes already
    /// read past the HTTP upgrade.
    pub fn start<IO>(io: IO, buffered: Vec<u8>, limits: &Limits) -> Session
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read, write) = tokio::io::split(io);
        let (out_tx, out_rx) = mpsc::channel(64);
        let (incoming_tx, incoming) = mpsc::unbounded_channel();
        let gone = CancellationToken::new();
        let writer = StreamWriter { out: out_tx };
        let activity = Arc::new(Activity::new());
        let writer_task = tokio::spawn(write_frames(write, out_rx, Arc::clone(&activity)));
        let reader = Reader {
            limits: limits.clone(),
            writer: writer.clone(),
            incoming: incoming_tx,
            activity,
            held: Arc::default(),
            streams: HashMap::new(),
            last_id: 0,
            refused: 0,
        };
        let reader_task = tokio::spawn(reader.run(read, buffered, gone.clone()));
        Session {
            incoming,
            gone,
            writer,
            reader_task,
            writer_task,
        }
    }

    /// A handle to send on the connection's streams.
    pub fn writer(&self) -> StreamWriter {
        self.writer.clone()
    }

    /// Says GOAWAY once everything queued is written, and closes the connection after
    /// the client hung up or `linger` passed.
    pub async fn close(mut self, linger: Duration) {
        let _ = self.writer.out.send(Out::Close(GOAWAY_OK)).await;
        let _ = (&mut self.writer_task).await;
        let gone = self.gone.clone();
        tokio::select! {
            _ = gone.cancelled() => {}
            _ = &mut self.reader_task => {}
            _ = tokio::time::sleep(linger) => {}
        }
        // Dropping the session aborts the reader and with it the socket.
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reader_task.abort();
        self.writer_task.abort();
    }
}

async fn write_frames<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::Receiver<Out>,
    activity: Arc<Activity>,
) {
    let mut codec = HeaderCodec::new();
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut last_good = 0;
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut closing = false;
        // Batch what is already queued into one write.
        while let Some(out) = next.take() {
            match out {
                Out::Frame(frame) => {
                    if let Frame::SynReply { stream_id, .. } = &frame {
                        last_good = *stream_id;
                    }
                    if codec.encode(&frame, &mut buf).is_err() {
                        return;
                    }
                }
                Out::Close(status) => {
                    let goaway = Frame::GoAway {
                        last_good_stream_id: last_good,
                        status,
                    };
                    let _ = codec.encode(&goaway, &mut buf);
                    closing = true;
                    break;
                }
            }
            if buf.len() < 64 * 1024 {
                next = rx.try_recv().ok();
            }
        }
        if w.write_all(&buf).await.is_err() || w.flush().await.is_err() {
            return;
        }
        activity.touch();
        buf.clear();
        if closing {
            let _ = w.shutdown().await;
            return;
        }
    }
}

/// Why the reader ends the connection.
enum End {
    /// The client hung up or said GOAWAY.
    Client,
    /// We say GOAWAY with this status.
    GoAway(u32),
}

/// The reading side of a session and the bookkeeping of what the client opened.
struct Reader {
    limits: Limits,
    writer: StreamWriter,
    incoming: mpsc::UnboundedSender<Incoming>,
    activity: Arc<Activity>,
    held: Arc<Held>,
    /// Where each stream's data goes, while the client may still send on it.
    streams: HashMap<u32, mpsc::Sender<Vec<u8>>>,
    last_id: u32,
    /// Streams refused for want of a slot since the last one accepted.
    refused: usize,
}

impl Reader {
    async fn run<R: AsyncRead + Unpin>(
        mut self,
        mut r: R,
        mut buf: Vec<u8>,
        gone: CancellationToken,
    ) {
        let block = self.limits.max_header_block;
        let mut codec = HeaderCodec::with_limits(block + CONTROL_FRAME_SLACK, block);
        let mut chunk = vec![0u8; 64 * 1024];
        let end = 'conn: loop {
            loop {
                let frame = match codec.decode(&mut buf) {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "spdy: bad frame from client");
                        break 'conn End::GoAway(PROTOCOL_ERROR);
                    }
                };
                if let Some(end) = self.handle(frame).await {
                    break 'conn end;
                }
            }
            let idle = self.limits.idle_timeout;
            let wait = idle.saturating_sub(self.activity.idle_for());
            match tokio::time::timeout(wait, r.read(&mut chunk)).await {
                Err(_) if self.activity.idle_for() >= idle => {
                    tracing::debug!("spdy: closing an idle connection");
                    break End::GoAway(GOAWAY_OK);
                }
                // We wrote meanwhile: not idle yet.
                Err(_) => {}
                Ok(Ok(0) | Err(_)) => break End::Client,
                Ok(Ok(n)) => {
                    self.activity.touch();
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
        };
        if let End::GoAway(status) = end {
            let _ = self.writer.out.send(Out::Close(status)).await;
        }
        gone.cancel();
    }

    async fn send(&self, frame: Frame) -> bool {
        self.writer.out.send(Out::Frame(frame)).await.is_ok()
    }

    /// Acts on one frame; `Some` ends the connection.
    async fn handle(&mut self, frame: Frame) -> Option<End> {
        let reset = |stream_id, status| Frame::RstStream { stream_id, status };
        match frame {
            Frame::SynStream {
                stream_id,
                fin,
                headers,
                ..
            } => return self.open(stream_id, fin, headers).await,
            Frame::Data {
                stream_id,
                fin,
                data,
            } => {
                let len = data.len() as u32;
                if let Some(tx) = self.streams.get(&stream_id) {
                    if !data.is_empty() {
                        // A consumer that went away just drops what comes; one that
                        // does not read for the whole idle timeout ends the connection
                        // rather than stalling it for ever.
                        match tokio::time::timeout(self.limits.idle_timeout, tx.send(data)).await {
                            Ok(_) => {}
                            Err(_) => return Some(End::GoAway(GOAWAY_OK)),
                        }
                        let update = Frame::WindowUpdate {
                            stream_id,
                            delta: len,
                        };
                        self.send(update).await;
                    }
                    if fin {
                        self.streams.remove(&stream_id);
                    }
                }
            }
            Frame::RstStream { stream_id, .. } => {
                self.streams.remove(&stream_id);
            }
            Frame::Ping { id } if id % 2 == 1 => {
                self.send(Frame::Ping { id }).await;
            }
            Frame::GoAway { .. } => return Some(End::Client),
            Frame::Headers {
                stream_id,
                fin: true,
                ..
            } => {
                self.streams.remove(&stream_id);
            }
            Frame::SynReply { stream_id, .. } => {
                // We open no streams, so there is nothing to reply to.
                self.send(reset(stream_id, PROTOCOL_ERROR)).await;
            }
            _ => {}
        }
        None
    }

    /// A SYN_STREAM: accepted, refused, or the end of a client over its limits.
    async fn open(&mut self, stream_id: u32, fin: bool, headers: Headers) -> Option<End> {
        // Client streams are odd and ascending.
        if stream_id % 2 == 0 || stream_id <= self.last_id {
            let frame = Frame::RstStream {
                stream_id,
                status: PROTOCOL_ERROR,
            };
            self.send(frame).await;
            return None;
        }
        self.last_id = stream_id;
        // Streams whose consumer let go no longer count.
        self.streams.retain(|_, tx| !tx.is_closed());
        let max = self.limits.max_streams;
        if self.held.streams.load(Ordering::Relaxed) >= max || self.streams.len() >= max {
            self.refused += 1;
            tracing::debug!(stream_id, max, "spdy: stream refused, too many open");
            let frame = Frame::RstStream {
                stream_id,
                status: REFUSED_STREAM,
            };
            self.send(frame).await;
            // A client that ignores as many refusals as it may have streams is
            // flooding, not racing its own closes.
            if self.refused > max {
                tracing::info!("spdy: closing a connection that keeps opening streams");
                return Some(End::GoAway(PROTOCOL_ERROR));
            }
            return None;
        }
        let header_bytes = block_size(&headers);
        let held = self.held.header_bytes.load(Ordering::Relaxed);
        if held + header_bytes > self.limits.max_header_bytes {
            tracing::info!(
                max = self.limits.max_header_bytes,
                "spdy: closing a connection whose streams' headers exceed the limit"
            );
            return Some(End::GoAway(PROTOCOL_ERROR));
        }
        // Refusals count only while no stream gets in, so that a long-lived
        // port-forward that now and then runs into the limit is not taken for a flood.
        self.refused = 0;
        self.held.streams.fetch_add(1, Ordering::Relaxed);
        self.held
            .header_bytes
            .fetch_add(header_bytes, Ordering::Relaxed);
        let slot = Slot {
            held: Arc::clone(&self.held),
            header_bytes,
        };
        let reply = Frame::SynReply {
            stream_id,
            fin: false,
            headers: Vec::new(),
        };
        if !self.send(reply).await {
            return Some(End::Client);
        }
        let (tx, data) = mpsc::channel(16);
        if !fin {
            self.streams.insert(stream_id, tx);
        }
        let _ = self.incoming.send(Incoming {
            id: stream_id,
            headers,
            data,
            _slot: slot,
        });
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::DuplexStream;

    fn limits() -> Limits {
        Limits {
            max_streams: 4,
            max_header_block: 1024,
            max_header_bytes: 2048,
            idle_timeout: Duration::from_secs(60),
            ..Limits::default()
        }
    }

    /// The client's end of a session: its codecs and socket.
    struct Client {
        io: DuplexStream,
        tx: HeaderCodec,
        rx: HeaderCodec,
        buf: Vec<u8>,
        next_id: u32,
    }

    impl Client {
        fn new(limits: &Limits) -> (Client, Session) {
            let (ours, theirs) = tokio::io::duplex(1 << 20);
            let session = Session::start(theirs, Vec::new(), limits);
            let client = Client {
                io: ours,
                tx: HeaderCodec::new(),
                rx: HeaderCodec::new(),
                buf: Vec::new(),
                next_id: 1,
            };
            (client, session)
        }

        async fn send(&mut self, frame: Frame) {
            let mut out = Vec::new();
            self.tx.encode(&frame, &mut out).unwrap();
            self.io.write_all(&out).await.unwrap();
        }

        async fn syn(&mut self, fin: bool, headers: &[(&str, &str)]) -> u32 {
            let id = self.next_id;
            self.next_id += 2;
            let headers = headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect();
            self.send(Frame::SynStream {
                stream_id: id,
                associated_id: 0,
                priority: 0,
                fin,
                unidirectional: false,
                headers,
            })
            .await;
            id
        }

        /// The next frame the server sends; `None` once it closed.
        async fn next(&mut self) -> Option<Frame> {
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                if let Some(f) = self.rx.decode(&mut self.buf).unwrap() {
                    return Some(f);
                }
                let n = tokio::time::timeout(Duration::from_secs(10), self.io.read(&mut chunk))
                    .await
                    .expect("the server neither sent nor closed")
                    .unwrap();
                if n == 0 {
                    return None;
                }
                self.buf.extend_from_slice(&chunk[..n]);
            }
        }

        /// Every frame until the server closes.
        async fn rest(&mut self) -> Vec<Frame> {
            let mut frames = Vec::new();
            while let Some(f) = self.next().await {
                frames.push(f);
            }
            frames
        }
    }

    fn is_reply(f: &Option<Frame>, id: u32) -> bool {
        matches!(f, Some(Frame::SynReply { stream_id, .. }) if *stream_id == id)
    }

    #[tokio::test]
    async fn streams_beyond_the_limit_are_refused_then_the_connection_goes_away() {
        let limits = limits();
        let (mut c, mut session) = Client::new(&limits);
        let mut held = Vec::new();
        // FIN'd streams take slots as much as open ones.
        for i in 0..4 {
            let id = c.syn(i % 2 == 0, &[("streamtype", "data")]).await;
            assert!(is_reply(&c.next().await, id));
            held.push(session.incoming.recv().await.unwrap());
        }
        for _ in 0..4 {
            let id = c.syn(false, &[]).await;
            let f = c.next().await;
            assert_eq!(
                f,
                Some(Frame::RstStream {
                    stream_id: id,
                    status: REFUSED_STREAM
                })
            );
        }
        // Letting go of a stream frees its slot.
        held.pop();
        let id = c.syn(false, &[]).await;
        assert!(is_reply(&c.next().await, id));
        // One refusal more than there are slots since then, and the client is flooding.
        for _ in 0..5 {
            c.syn(false, &[]).await;
        }
        let frames = c.rest().await;
        let refused = frames
            .iter()
            .filter(|f| {
                matches!(
                    f,
                    Frame::RstStream {
                        status: REFUSED_STREAM,
                        ..
                    }
                )
            })
            .count();
        assert_eq!(refused, 5, "{frames:?}");
        assert!(
            matches!(
                frames.last(),
                Some(Frame::GoAway {
                    status: PROTOCOL_ERROR,
                    ..
                })
            ),
            "{frames:?}"
        );
        tokio::time::timeout(Duration::from_secs(5), session.gone.cancelled())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_header_block_bomb_ends_the_connection() {
        let limits = limits();
        let (mut c, session) = Client::new(&limits);
        // Compresses to a few bytes; inflates past the block limit.
        let big = "a".repeat(4096);
        c.syn(false, &[("x", &big)]).await;
        let frames = c.rest().await;
        assert!(
            matches!(
                frames.last(),
                Some(Frame::GoAway {
                    status: PROTOCOL_ERROR,
                    ..
                })
            ),
            "{frames:?}"
        );
        assert!(session.gone.is_cancelled());
    }

    #[tokio::test]
    async fn open_streams_share_one_header_budget() {
        let limits = limits();
        let (mut c, mut session) = Client::new(&limits);
        let value = "v".repeat(900);
        let mut held = Vec::new();
        for _ in 0..2 {
            let id = c.syn(true, &[("x", &value)]).await;
            assert!(is_reply(&c.next().await, id));
            held.push(session.incoming.recv().await.unwrap());
        }
        // A third would hold over 2 KiB of headers.
        c.syn(true, &[("x", &value)]).await;
        let frames = c.rest().await;
        assert!(
            matches!(frames.last(), Some(Frame::GoAway { .. })),
            "{frames:?}"
        );
    }

    #[tokio::test]
    async fn a_control_frame_over_the_limit_ends_the_connection() {
        let limits = limits();
        let (mut c, _session) = Client::new(&limits);
        // A SETTINGS frame declaring 1 MiB of payload: refused from its header.
        c.io.write_all(&[0x80, 3, 0, 4, 0, 0x10, 0, 0])
            .await
            .unwrap();
        let frames = c.rest().await;
        assert!(
            matches!(frames.last(), Some(Frame::GoAway { .. })),
            "{frames:?}"
        );
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed() {
        let limits = Limits {
            idle_timeout: Duration::from_secs(2),
            ..limits()
        };
        let (mut c, session) = Client::new(&limits);
        // A ping keeps it alive for another timeout.
        tokio::time::sleep(Duration::from_millis(1300)).await;
        c.send(Frame::Ping { id: 1 }).await;
        assert_eq!(c.next().await, Some(Frame::Ping { id: 1 }));
        tokio::time::sleep(Duration::from_millis(1300)).await;
        assert!(!session.gone.is_cancelled());
        let frames = c.rest().await;
        assert!(
            matches!(frames.last(), Some(Frame::GoAway { status: 0, .. })),
            "{frames:?}"
        );
        assert!(session.gone.is_cancelled());
    }
}
