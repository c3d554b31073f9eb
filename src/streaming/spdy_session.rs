//! A server-side SPDY/3.1 connection: the streams a client opens, their data, and a
//! writer that serializes every frame we send through one header compressor.
//!
//! ```text
//!   socket ──▶ reader task ──SYN_STREAM──▶ Incoming { headers, data: Receiver }
//!                         ──DATA────────▶ that stream's data channel (bounded)
//!   socket ◀── writer task ◀── Out (SYN_REPLY, DATA, WINDOW_UPDATE, PING, GOAWAY)
//! ```
//! A full data channel stops the reader: a slow consumer slows the client down
//! through TCP instead of making us buffer. Clients (moby/spdystream) neither send
//! nor wait for WINDOW_UPDATEs; we send them anyway for clients that count windows.

use std::collections::HashMap;

use crust_proto::spdy::{Frame, HeaderCodec, Headers};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Largest DATA payload we send; big enough for throughput, small enough to
/// interleave streams.
const MAX_DATA_FRAME: usize = 32 * 1024;
/// Streams a client may have open at once.
const MAX_OPEN_STREAMS: usize = 1024;
/// RST_STREAM status PROTOCOL_ERROR.
const PROTOCOL_ERROR: u32 = 1;
/// RST_STREAM status REFUSED_STREAM.
const REFUSED_STREAM: u32 = 3;

/// A stream the client opened.
pub struct Incoming {
    /// The stream id.
    pub id: u32,
    /// Its SYN_STREAM headers.
    pub headers: Headers,
    /// What the client writes on it; closed at the client's FIN or reset.
    pub data: mpsc::Receiver<Vec<u8>>,
}

impl Incoming {
    /// The value of header `name` (SPDY names are lower-case; compared ignoring case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

enum Out {
    Frame(Frame),
    Close,
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
    /// Streams as the client opens them.
    pub incoming: mpsc::UnboundedReceiver<Incoming>,
    /// Cancelled when the client hung up, said GOAWAY or broke the protocol.
    pub gone: CancellationToken,
    writer: StreamWriter,
    reader_task: JoinHandle<()>,
    writer_task: JoinHandle<()>,
}

impl Session {
    /// Starts serving SPDY on `io`; `buffered` holds bytes already read past the
    /// HTTP upgrade.
    pub fn start<IO>(io: IO, buffered: Vec<u8>) -> Session
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read, write) = tokio::io::split(io);
        let (out_tx, out_rx) = mpsc::channel(64);
        let (incoming_tx, incoming) = mpsc::unbounded_channel();
        let gone = CancellationToken::new();
        let writer = StreamWriter { out: out_tx };
        let writer_task = tokio::spawn(write_frames(write, out_rx));
        let reader_task = tokio::spawn(read_frames(
            read,
            buffered,
            writer.clone(),
            incoming_tx,
            gone.clone(),
        ));
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
    pub async fn close(mut self, linger: std::time::Duration) {
        let _ = self.writer.out.send(Out::Close).await;
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

async fn write_frames<W: AsyncWrite + Unpin>(mut w: W, mut rx: mpsc::Receiver<Out>) {
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
                Out::Close => {
                    let goaway = Frame::GoAway {
                        last_good_stream_id: last_good,
                        status: 0,
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
        buf.clear();
        if closing {
            let _ = w.shutdown().await;
            return;
        }
    }
}

async fn read_frames<R: AsyncRead + Unpin>(
    mut r: R,
    mut buf: Vec<u8>,
    writer: StreamWriter,
    incoming: mpsc::UnboundedSender<Incoming>,
    gone: CancellationToken,
) {
    let mut codec = HeaderCodec::new();
    let mut streams: HashMap<u32, mpsc::Sender<Vec<u8>>> = HashMap::new();
    let mut last_id = 0u32;
    let mut chunk = vec![0u8; 64 * 1024];
    'conn: loop {
        loop {
            let frame = match codec.decode(&mut buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "spdy: bad frame from client");
                    let _ = writer
                        .out
                        .send(Out::Frame(Frame::GoAway {
                            last_good_stream_id: last_id,
                            status: PROTOCOL_ERROR,
                        }))
                        .await;
                    break 'conn;
                }
            };
            let reset = |stream_id, status| Out::Frame(Frame::RstStream { stream_id, status });
            match frame {
                Frame::SynStream {
                    stream_id,
                    fin,
                    headers,
                    ..
                } => {
                    // Client streams are odd and ascending.
                    if stream_id % 2 == 0 || stream_id <= last_id {
                        let _ = writer.out.send(reset(stream_id, PROTOCOL_ERROR)).await;
                        continue;
                    }
                    last_id = stream_id;
                    if streams.len() >= MAX_OPEN_STREAMS {
                        let _ = writer.out.send(reset(stream_id, REFUSED_STREAM)).await;
                        continue;
                    }
                    let reply = Frame::SynReply {
                        stream_id,
                        fin: false,
                        headers: Vec::new(),
                    };
                    if writer.out.send(Out::Frame(reply)).await.is_err() {
                        break 'conn;
                    }
                    let (tx, data) = mpsc::channel(16);
                    if !fin {
                        streams.insert(stream_id, tx);
                    }
                    let _ = incoming.send(Incoming {
                        id: stream_id,
                        headers,
                        data,
                    });
                }
                Frame::Data {
                    stream_id,
                    fin,
                    data,
                } => {
                    let len = data.len() as u32;
                    if let Some(tx) = streams.get(&stream_id) {
                        if !data.is_empty() {
                            // A consumer that went away just drops what comes.
                            let _ = tx.send(data).await;
                            let update = Frame::WindowUpdate {
                                stream_id,
                                delta: len,
                            };
                            let _ = writer.out.send(Out::Frame(update)).await;
                        }
                        if fin {
                            streams.remove(&stream_id);
                        }
                    }
                }
                Frame::RstStream { stream_id, .. } => {
                    streams.remove(&stream_id);
                }
                Frame::Ping { id } if id % 2 == 1 => {
                    let _ = writer.out.send(Out::Frame(Frame::Ping { id })).await;
                }
                Frame::GoAway { .. } => break 'conn,
                Frame::Headers {
                    stream_id,
                    fin: true,
                    ..
                } => {
                    streams.remove(&stream_id);
                }
                _ => {}
            }
        }
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    gone.cancel();
}
