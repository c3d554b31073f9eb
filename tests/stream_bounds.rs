//! End-to-end: what a hostile or careless client can make crustd's streaming server
//! hold is bounded. Each test runs a real crustd with small `[streaming]` limits and
//! a pod, plays a client that floods, bombs, dawdles or piles up connections, and
//! checks that the server refuses or closes, and that crustd's memory stays flat.
//!
//! The SPDY client here is raw on purpose: it writes whatever frames a test asks
//! for and records everything the server answers, which no well-behaved client does.

mod support;

use std::time::{Duration, Instant};

use crust_proto::cri;
use crust_proto::spdy::{Frame, HeaderCodec};
use futures_util::{SinkExt, StreamExt};
use support::oci;
use support::pod::TestPod;
use support::stream_client::{self as sc, SpdyConn, V4};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// RST_STREAM status REFUSED_STREAM.
const REFUSED_STREAM: u32 = 3;
/// RST_STREAM status CANCEL.
const CANCEL: u32 = 5;

/// A pod on a crustd with `streaming` as the body of its `[streaming]` table.
async fn pod_with(streaming: &str) -> TestPod {
    TestPod::set_up(oci::busybox_image(), &format!("[streaming]\n{streaming}\n")).await
}

/// A container that sleeps, to exec into.
async fn sleeper(p: &mut TestPod) -> String {
    p.run(p.config("sleeper", &["sleep", "100000"])).await
}

async fn exec_url(p: &mut TestPod, id: &str, cmd: &[&str], stdin: bool) -> String {
    p.c.runtime
        .exec(cri::ExecRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty: false,
            stdin,
            stdout: true,
            stderr: false,
        })
        .await
        .unwrap_or_else(|e| panic!("Exec {cmd:?}: {e:?}"))
        .into_inner()
        .url
}

async fn port_forward_url(p: &mut TestPod) -> String {
    p.c.runtime
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: p.sandbox.clone(),
            port: vec![8080],
        })
        .await
        .unwrap_or_else(|e| panic!("PortForward: {e:?}"))
        .into_inner()
        .url
}

/// crustd's resident memory in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in {status}"))
}

/// A SPDY connection that sends what it is told and keeps what it gets.
struct Raw {
    sock: TcpStream,
    tx: HeaderCodec,
    rx: HeaderCodec,
    buf: Vec<u8>,
    next_id: u32,
    /// Everything the server sent.
    got: Vec<Frame>,
    closed: bool,
}

impl Raw {
    /// Upgrades to SPDY at `url` with `protocol`.
    async fn connect(url: &str, protocol: &str) -> Raw {
        let rest = url.strip_prefix("http://").expect("a plain http url");
        let (authority, path) = rest.split_at(rest.find('/').unwrap());
        let mut sock = TcpStream::connect(authority).await.unwrap();
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: 0\r\n\
             Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: {protocol}\r\n\r\n"
        );
        sock.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = tokio::time::timeout(sc::TIMEOUT, sock.read(&mut byte))
                .await
                .expect("no upgrade answer")
                .unwrap();
            assert_eq!(
                n,
                1,
                "closed during the upgrade: {:?}",
                String::from_utf8_lossy(&head)
            );
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        Raw {
            sock,
            tx: HeaderCodec::new(),
            rx: HeaderCodec::new(),
            buf: Vec::new(),
            next_id: 1,
            got: Vec::new(),
            closed: false,
        }
    }

    /// Sends `frame`; false once the server stopped taking frames.
    async fn send(&mut self, frame: Frame) -> bool {
        let mut out = Vec::new();
        self.tx.encode(&frame, &mut out).unwrap();
        self.sock.write_all(&out).await.is_ok()
    }

    /// Opens the next stream with `headers`; false once the server stopped taking
    /// frames.
    async fn syn(&mut self, fin: bool, headers: &[(&str, &str)]) -> bool {
        let stream_id = self.next_id;
        self.next_id += 2;
        let headers = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        self.send(Frame::SynStream {
            stream_id,
            associated_id: 0,
            priority: 0,
            fin,
            unidirectional: false,
            headers,
        })
        .await
    }

    /// Reads what the server sends for `within`, or until it closes; true if it closed.
    async fn read_for(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        let mut chunk = vec![0u8; 64 * 1024];
        while !self.closed {
            while let Some(frame) = self.rx.decode(&mut self.buf).expect("a frame") {
                self.got.push(frame);
            }
            match tokio::time::timeout_at(deadline, self.sock.read(&mut chunk)).await {
                Err(_) => break,
                Ok(Ok(0) | Err(_)) => self.closed = true,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
        self.closed
    }

    fn goaway(&self) -> Option<u32> {
        self.got.iter().find_map(|f| match f {
            Frame::GoAway { status, .. } => Some(*status),
            _ => None,
        })
    }

    fn resets(&self, status: u32) -> Vec<u32> {
        self.got
            .iter()
            .filter_map(|f| match f {
                Frame::RstStream {
                    stream_id,
                    status: s,
                } if *s == status => Some(*stream_id),
                _ => None,
            })
            .collect()
    }

    fn replies(&self) -> usize {
        self.got
            .iter()
            .filter(|f| matches!(f, Frame::SynReply { .. }))
            .count()
    }

    fn summary(&self) -> String {
        format!(
            "{} SYN_REPLY, refused {:?}, GOAWAY {:?}, closed {}",
            self.replies(),
            self.resets(REFUSED_STREAM),
            self.goaway(),
            self.closed
        )
    }
}

/// An exec of `sleep` whose error and stdout streams are open, so the command runs
/// and nothing reads further streams the client opens.
async fn running_exec(p: &mut TestPod, container: &str) -> Raw {
    let url = exec_url(p, container, &["sleep", "1000"], false).await;
    let mut raw = Raw::connect(&url, V4).await;
    raw.syn(false, &[("streamtype", "error")]).await;
    raw.syn(false, &[("streamtype", "stdout")]).await;
    raw
}

/// Floods `raw` with `n` FIN'd SYN_STREAMs whose headers carry `header_bytes` of a
/// highly compressible value, stopping when the server stops taking them.
async fn flood(raw: &mut Raw, n: usize, header_bytes: usize) {
    let value = "a".repeat(header_bytes);
    for _ in 0..n {
        if !raw
            .syn(true, &[("streamtype", "stdout"), ("x-pad", &value)])
            .await
        {
            break;
        }
    }
}

const FLOOD_LIMITS: &str = "max_streams_per_session = 8\nmax_header_block_bytes = 4096\n\
                            max_header_bytes = 16384";

#[tokio::test(flavor = "multi_thread")]
async fn a_syn_stream_flood_is_refused_then_the_connection_goes_away() {
    let mut p = pod_with(FLOOD_LIMITS).await;
    let c = sleeper(&mut p).await;
    let mut raw = running_exec(&mut p, &c).await;
    flood(&mut raw, 200, 0).await;
    assert!(
        raw.read_for(Duration::from_secs(10)).await,
        "{}",
        raw.summary()
    );
    // Two streams the exec uses and six queued fill the eight slots.
    assert_eq!(raw.replies(), 8, "{}", raw.summary());
    assert!(raw.resets(REFUSED_STREAM).len() >= 8, "{}", raw.summary());
    assert_eq!(raw.goaway(), Some(1), "{}", raw.summary());
}

#[tokio::test(flavor = "multi_thread")]
async fn header_bombs_and_header_floods_end_the_connection() {
    let mut p = pod_with(FLOOD_LIMITS).await;
    let c = sleeper(&mut p).await;
    // One block that inflates from under a KiB to half a MiB.
    let mut raw = running_exec(&mut p, &c).await;
    flood(&mut raw, 1, 512 << 10).await;
    assert!(
        raw.read_for(Duration::from_secs(10)).await,
        "{}",
        raw.summary()
    );
    assert_eq!(raw.goaway(), Some(1), "{}", raw.summary());
    assert_eq!(raw.replies(), 2, "{}", raw.summary());
    // Blocks under the limit, but more than the connection's streams may hold together.
    let mut raw = running_exec(&mut p, &c).await;
    flood(&mut raw, 6, 3000).await;
    assert!(
        raw.read_for(Duration::from_secs(10)).await,
        "{}",
        raw.summary()
    );
    assert_eq!(raw.goaway(), Some(1), "{}", raw.summary());
    assert!(raw.replies() < 8, "{}", raw.summary());
}

#[tokio::test(flavor = "multi_thread")]
async fn port_forward_streams_without_their_pair_are_reset() {
    let mut p =
        pod_with("max_pending_port_forward_pairs = 2\nstream_creation_timeout_secs = 2").await;
    let url = port_forward_url(&mut p).await;
    let mut raw = Raw::connect(&url, sc::PORT_FORWARD).await;
    let start = Instant::now();
    for request in ["1", "2", "3"] {
        let headers = [
            ("streamtype", "data"),
            ("port", "8080"),
            ("requestid", request),
        ];
        raw.syn(false, &headers).await;
    }
    // The third request is one more than may wait.
    raw.read_for(Duration::from_secs(1)).await;
    assert_eq!(raw.resets(REFUSED_STREAM), [5], "{}", raw.summary());
    assert!(
        raw.resets(CANCEL).is_empty(),
        "reset before the timeout: {:?}",
        raw.got
    );
    // The waiting ones are reset once their pair is late, and the connection stays.
    while raw.resets(CANCEL).len() < 2 && start.elapsed() < Duration::from_secs(10) {
        raw.read_for(Duration::from_millis(200)).await;
    }
    let mut cancelled = raw.resets(CANCEL);
    cancelled.sort();
    assert_eq!(cancelled, [1, 3], "{:?}", raw.got);
    assert!(start.elapsed() >= Duration::from_secs(2));
    assert!(!raw.closed);
    // The freed places take new requests.
    raw.syn(
        false,
        &[("streamtype", "data"), ("port", "8080"), ("requestid", "4")],
    )
    .await;
    raw.read_for(Duration::from_millis(500)).await;
    assert_eq!(raw.resets(REFUSED_STREAM), [5], "{:?}", raw.got);
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_beyond_the_limit_are_refused_before_the_upgrade() {
    let mut p = pod_with("max_connections = 3").await;
    let mut conns = Vec::new();
    for _ in 0..3 {
        let url = port_forward_url(&mut p).await;
        conns.push(SpdyConn::connect(&url, &[sc::PORT_FORWARD]).await.unwrap());
    }
    let url = port_forward_url(&mut p).await;
    let e = SpdyConn::connect(&url, &[sc::PORT_FORWARD])
        .await
        .err()
        .expect("a fourth connection is refused");
    assert_eq!(e.status, 503, "{e}");
    let ws = port_forward_url(&mut p).await;
    let e = sc::ws_connect(&format!("{ws}?port=8080"), &["portforward.k8s.io"])
        .await
        .expect_err("a fourth WebSocket is refused");
    assert_eq!(e.status, 503, "{e}");
    // One goes, and the refused request's token still works.
    conns.pop().unwrap().close().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match SpdyConn::connect(&url, &[sc::PORT_FORWARD]).await {
            Ok(_) => break,
            Err(e) if e.status == 503 && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("after one connection left: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_are_closed() {
    let mut p = pod_with("idle_timeout_secs = 2").await;
    let c = sleeper(&mut p).await;
    // SPDY port-forward with no streams.
    let url = port_forward_url(&mut p).await;
    let mut raw = Raw::connect(&url, sc::PORT_FORWARD).await;
    assert!(
        !raw.read_for(Duration::from_secs(1)).await,
        "closed too early"
    );
    assert!(
        raw.read_for(Duration::from_secs(5)).await,
        "{}",
        raw.summary()
    );
    assert_eq!(raw.goaway(), Some(0), "{}", raw.summary());
    // A WebSocket exec whose command says nothing and reads no input.
    let url = exec_url(&mut p, &c, &["sleep", "1000"], true).await;
    let (mut ws, _) = sc::ws_connect(&url, &[V4]).await.unwrap();
    let start = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(m)) = ws.next().await {
            if m.is_close() {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the idle WebSocket stayed open");
    assert!(start.elapsed() >= Duration::from_millis(1500));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_websocket_message_closes_the_connection() {
    let mut p = pod_with("ws_max_message_bytes = 4096").await;
    let c = sleeper(&mut p).await;
    let url = exec_url(&mut p, &c, &["cat"], true).await;
    let (mut ws, _) = sc::ws_connect(&url, &[V4]).await.unwrap();
    // Within the limit: echoed.
    ws.send(Message::binary([&[0u8][..], b"small"].concat()))
        .await
        .unwrap();
    let mut echoed = Vec::new();
    let mut close = None;
    let read = async {
        while let Some(Ok(m)) = ws.next().await {
            match m {
                Message::Binary(b) if b.first() == Some(&1) => {
                    echoed.extend_from_slice(&b[1..]);
                    if echoed == b"small" {
                        let big = [&[0u8][..], &vec![b'x'; 64 << 10]].concat();
                        let _ = ws.send(Message::binary(big)).await;
                    }
                }
                Message::Close(frame) => {
                    close = Some(frame);
                    break;
                }
                _ => {}
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), read).await;
    assert!(echoed == b"small", "echoed {} bytes", echoed.len());
    let frame = close
        .expect("the connection was not closed")
        .expect("a close code");
    assert_eq!(frame.code, CloseCode::Size, "{frame:?}");
}

/// One round of [`memory_stays_flat_under_repeated_floods`]: a SYN_STREAM flood and a
/// header flood, each on its own exec, kept in `kept`.
async fn flood_round(p: &mut TestPod, container: &str, kept: &mut Vec<Raw>) {
    let mut raw = running_exec(p, container).await;
    flood(&mut raw, 200, 0).await;
    raw.read_for(Duration::from_secs(3)).await;
    kept.push(raw);
    let mut raw = running_exec(p, container).await;
    // Each stream's headers would inflate to half a MiB.
    flood(&mut raw, 200, 512 << 10).await;
    raw.read_for(Duration::from_secs(3)).await;
    kept.push(raw);
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_stays_flat_under_repeated_floods() {
    let mut p = pod_with(FLOOD_LIMITS).await;
    let c = sleeper(&mut p).await;
    let pid = p.d.pid();
    let mut kept = Vec::new();
    // The first round pays for whatever a first connection allocates.
    flood_round(&mut p, &c, &mut kept).await;
    let before = rss_kib(pid);
    // Connections stay open on our side, so nothing the server would hold for them
    // is released by our hanging up.
    for _ in 0..5 {
        flood_round(&mut p, &c, &mut kept).await;
    }
    let after = rss_kib(pid);
    assert!(
        after < before + 16 * 1024,
        "crustd grew from {before} KiB to {after} KiB"
    );
    for raw in &kept {
        assert!(
            raw.closed,
            "a flood left its connection open: {}",
            raw.summary()
        );
    }
}
