//! Port-forward: connections to a port inside the pod's network namespace, carried
//! over SPDY (`portforward.k8s.io`: a data and an error stream per request id) or
//! WebSocket (a data and an error channel per port of the URL).
//!
//! The connection is dialled from a short-lived thread that joined the pod's network
//! namespace; a socket stays in the namespace it was made in, so the thread can end
//! right after and no helper program (socat, nsenter) is needed.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_tungstenite::WebSocketStream;

use super::spdy_session::{
    CANCEL, Incoming, PROTOCOL_ERROR, REFUSED_STREAM, Session, StreamWriter,
};
use super::ws::{ChannelWriter, Channels};
use super::{Limits, StreamContext};

/// How long connecting to the pod's port may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to `port` on the pod's loopback, inside its network namespace.
async fn dial(ctx: &StreamContext, sandbox_id: &str, port: u16) -> Result<TcpStream, String> {
    let record = ctx
        .sandboxes
        .get(sandbox_id)
        .ok_or_else(|| format!("pod sandbox {sandbox_id} not found"))?;
    if !record.is_ready() {
        return Err(format!("pod sandbox {sandbox_id} is not ready"));
    }
    let connect = move || -> std::io::Result<std::net::TcpStream> {
        let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
        let stream = std::net::TcpStream::connect_timeout(&v4, DIAL_TIMEOUT)
            .or_else(|e| std::net::TcpStream::connect_timeout(&v6, DIAL_TIMEOUT).map_err(|_| e))?;
        stream.set_nonblocking(true)?;
        Ok(stream)
    };
    let std_stream = match record.netns.clone() {
        // A host-network pod's ports are the node's.
        None => tokio::task::spawn_blocking(connect).await,
        Some(netns) => {
            tokio::task::spawn_blocking(move || {
                crust_cni::netns::run_in_netns(&netns, connect)
                    .map_err(|e| std::io::Error::other(e.to_string()))
                    .and_then(|r| r)
            })
            .await
        }
    }
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("connect to port {port}: {e}"))?;
    TcpStream::from_std(std_stream).map_err(|e| e.to_string())
}

/// The message kubelet puts on the error stream.
fn forward_error(port: u16, sandbox_id: &str, error: &str) -> String {
    format!("error forwarding port {port} to pod {sandbox_id}: {error}")
}

/// Copies pod → client with `send` and client → pod from `from_client`, honouring
/// each side's half-close: `pod_closed` runs when the pod's side ends. Returns when
/// both directions are done, or as soon as the pod's side ended with
/// `until_pod_closes` (for a wire that cannot say half-close).
async fn splice<F, Fut, C>(
    conn: TcpStream,
    mut from_client: mpsc::Receiver<Vec<u8>>,
    until_pod_closes: bool,
    mut send: F,
    pod_closed: C,
) where
    F: FnMut(Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = bool>,
    C: std::future::Future<Output = ()>,
{
    let (mut pod_read, mut pod_write) = conn.into_split();
    let to_pod = async move {
        while let Some(bytes) = from_client.recv().await {
            if pod_write.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = pod_write.shutdown().await;
    };
    let to_client = async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match pod_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if !send(buf[..n].to_vec()).await {
                        break;
                    }
                }
            }
        }
        pod_closed.await;
    };
    if until_pod_closes {
        // Keep feeding the pod meanwhile; its end alone does not end the connection.
        let to_pod = async move {
            to_pod.await;
            std::future::pending::<()>().await
        };
        tokio::select! {
            _ = to_client => {}
            _ = to_pod => {}
        }
    } else {
        tokio::join!(to_pod, to_client);
    }
}

/// One forwarded connection over SPDY.
async fn forward_spdy(
    writer: StreamWriter,
    ctx: StreamContext,
    sandbox_id: String,
    error: Incoming,
    data: Incoming,
) {
    let port = data
        .header("port")
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|p| *p > 0);
    let result = match port {
        None => Err(format!(
            "invalid port header {:?}",
            data.header("port").unwrap_or_default()
        )),
        Some(port) => dial(&ctx, &sandbox_id, port).await,
    };
    match result {
        Ok(conn) => {
            let id = data.id;
            let w = writer.clone();
            let send = move |bytes: Vec<u8>| {
                let w = w.clone();
                async move { w.data(id, &bytes).await }
            };
            // The pod's end ends both streams, as kubelet does; the client may still
            // send what remains of its half.
            let pod_closed = async {
                writer.finish(id).await;
                writer.finish(error.id).await;
            };
            splice(conn, data.data, false, send, pod_closed).await;
        }
        Err(e) => {
            let message = forward_error(port.unwrap_or(0), &sandbox_id, &e);
            tracing::debug!(%message, "port-forward");
            writer.data(error.id, message.as_bytes()).await;
            writer.finish(data.id).await;
            writer.finish(error.id).await;
        }
    }
}

/// A request's streams until both have arrived.
#[derive(Default)]
struct Pair {
    error: Option<Incoming>,
    data: Option<Incoming>,
    /// When the first one arrived.
    since: Option<tokio::time::Instant>,
}

impl Pair {
    fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        [&self.error, &self.data]
            .into_iter()
            .flatten()
            .map(|s| s.id)
    }
}

/// Streams waiting for their partner, by request id, within a limit on how many
/// requests may wait and for how long.
struct Pending {
    pairs: HashMap<String, Pair>,
    max: usize,
    timeout: Duration,
}

/// Where a stream went.
enum Placed {
    /// Its partner is there: both, ready to forward.
    Complete(Incoming, Incoming),
    /// Waiting for its partner.
    Waiting,
    /// Refused with this RST_STREAM status.
    Refused(u32),
}

impl Pending {
    fn place(&mut self, request: String, is_data: bool, stream: Incoming) -> Placed {
        if !self.pairs.contains_key(&request) && self.pairs.len() >= self.max {
            return Placed::Refused(REFUSED_STREAM);
        }
        let pair = self.pairs.entry(request.clone()).or_default();
        let slot = if is_data {
            &mut pair.data
        } else {
            &mut pair.error
        };
        if slot.is_some() {
            return Placed::Refused(PROTOCOL_ERROR);
        }
        *slot = Some(stream);
        pair.since.get_or_insert_with(tokio::time::Instant::now);
        if pair.error.is_none() || pair.data.is_none() {
            return Placed::Waiting;
        }
        match self.pairs.remove(&request) {
            Some(Pair {
                error: Some(error),
                data: Some(data),
                ..
            }) => Placed::Complete(error, data),
            // Both were just seen in place.
            _ => Placed::Waiting,
        }
    }

    /// When the longest-waiting request runs out of time.
    fn next_deadline(&self) -> Option<tokio::time::Instant> {
        self.pairs
            .values()
            .filter_map(|p| p.since)
            .min()
            .map(|t| t + self.timeout)
    }

    /// Takes out the streams of requests that waited too long.
    fn expired(&mut self, now: tokio::time::Instant) -> Vec<u32> {
        let timeout = self.timeout;
        let mut ids = Vec::new();
        self.pairs.retain(|_, pair| {
            let keep = pair.since.is_some_and(|t| t + timeout > now);
            if !keep {
                ids.extend(pair.ids());
            }
            keep
        });
        ids
    }
}

/// Serves port-forward requests on an upgraded SPDY connection until the client
/// leaves.
///
/// Unlike a remote command, a port-forward connection may rightly sit without
/// streams: kubectl opens it first and streams only when a local connection comes.
pub async fn serve_spdy(
    mut session: Session,
    sandbox_id: String,
    ctx: StreamContext,
    limits: &Limits,
) {
    let writer = session.writer();
    let mut pending = Pending {
        pairs: HashMap::new(),
        max: limits.max_pending_pairs,
        timeout: limits.stream_creation_timeout,
    };
    let mut forwards = JoinSet::new();
    loop {
        let deadline = pending.next_deadline();
        let expiry = async move {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let stream = tokio::select! {
            s = session.incoming.recv() => s,
            Some(_) = forwards.join_next() => continue,
            _ = expiry => {
                // As kubelet: a request whose other stream did not come is reset.
                for id in pending.expired(tokio::time::Instant::now()) {
                    tracing::debug!(id, "port-forward: stream reset, its pair did not come in time");
                    writer.reset(id, CANCEL).await;
                }
                continue;
            }
        };
        let Some(stream) = stream else { break };
        let is_data = match stream.header("streamtype") {
            Some("data") => true,
            Some("error") => false,
            other => {
                tracing::debug!(stream_type = ?other, "port-forward: unknown stream reset");
                writer.reset(stream.id, PROTOCOL_ERROR).await;
                continue;
            }
        };
        // Old clients send no request id; kubelet pairs their streams by id then.
        let request = match stream.header("requestid") {
            Some(r) => r.to_string(),
            None if is_data => stream.id.saturating_sub(2).to_string(),
            None => stream.id.to_string(),
        };
        let id = stream.id;
        match pending.place(request, is_data, stream) {
            Placed::Complete(error, data) => {
                forwards.spawn(forward_spdy(
                    writer.clone(),
                    ctx.clone(),
                    sandbox_id.clone(),
                    error,
                    data,
                ));
            }
            Placed::Waiting => {}
            Placed::Refused(status) => {
                tracing::debug!(id, status, "port-forward: stream refused");
                writer.reset(id, status).await;
            }
        }
    }
    forwards.abort_all();
    session.close(Duration::from_secs(1)).await;
}

/// One port of a WebSocket port-forward.
async fn forward_ws(
    writer: ChannelWriter,
    ctx: StreamContext,
    sandbox_id: String,
    index: u8,
    port: u16,
    from_client: mpsc::Receiver<Vec<u8>>,
) {
    let (data_ch, error_ch) = (2 * index, 2 * index + 1);
    match dial(&ctx, &sandbox_id, port).await {
        Ok(conn) => {
            let w = writer.clone();
            let send = move |bytes: Vec<u8>| {
                let w = w.clone();
                async move { w.send(data_ch, bytes).await }
            };
            splice(conn, from_client, true, send, async {}).await
        }
        Err(e) => {
            let message = forward_error(port, &sandbox_id, &e);
            writer.send(error_ch, message.into_bytes()).await;
        }
    }
}

/// Serves a WebSocket port-forward of `ports` until every connection ended or the
/// client left.
pub async fn serve_ws<S>(
    ws: WebSocketStream<S>,
    base64: bool,
    ports: Vec<u16>,
    sandbox_id: String,
    ctx: StreamContext,
    limits: &Limits,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Two channels a port, numbered by one byte.
    let ports: Vec<u16> = ports.into_iter().take(127).collect();
    let data_channels: Vec<u8> = (0..ports.len() as u8).map(|i| 2 * i).collect();
    let mut channels = Channels::start(ws, base64, &data_channels, limits.idle_timeout);
    let writer = channels.writer();
    let mut forwards = JoinSet::new();
    for (i, port) in ports.iter().enumerate() {
        let i = i as u8;
        // Each channel first says which port it is for, little-endian.
        writer.send(2 * i, port.to_le_bytes().to_vec()).await;
        writer.send(2 * i + 1, port.to_le_bytes().to_vec()).await;
        let Some(rx) = channels.inputs.remove(&(2 * i)) else {
            continue;
        };
        forwards.spawn(forward_ws(
            writer.clone(),
            ctx.clone(),
            sandbox_id.clone(),
            i,
            *port,
            rx,
        ));
    }
    let gone = channels.gone.clone();
    tokio::select! {
        _ = async { while forwards.join_next().await.is_some() {} } => {}
        _ = gone.cancelled() => {}
    }
    forwards.abort_all();
    channels.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(max: usize) -> Pending {
        Pending {
            pairs: HashMap::new(),
            max,
            timeout: Duration::from_secs(30),
        }
    }

    #[test]
    fn streams_pair_up_by_request() {
        let mut p = pending(2);
        let s = Incoming::detached;
        assert!(matches!(p.place("1".into(), true, s(1)), Placed::Waiting));
        assert!(matches!(p.place("2".into(), false, s(3)), Placed::Waiting));
        match p.place("1".into(), false, s(5)) {
            Placed::Complete(error, data) => assert_eq!((error.id, data.id), (5, 1)),
            _ => panic!("request 1 is complete"),
        }
        assert_eq!(p.pairs.len(), 1);
    }

    #[test]
    fn waiting_requests_are_limited_and_a_second_stream_of_a_kind_is_refused() {
        let mut p = pending(2);
        let s = Incoming::detached;
        assert!(matches!(p.place("1".into(), true, s(1)), Placed::Waiting));
        assert!(matches!(p.place("2".into(), true, s(3)), Placed::Waiting));
        assert!(matches!(
            p.place("3".into(), true, s(5)),
            Placed::Refused(REFUSED_STREAM)
        ));
        assert!(matches!(
            p.place("1".into(), true, s(7)),
            Placed::Refused(PROTOCOL_ERROR)
        ));
        // The other half of a waiting request still comes in.
        assert!(matches!(
            p.place("2".into(), false, s(9)),
            Placed::Complete(..)
        ));
    }

    #[tokio::test]
    async fn requests_whose_pair_does_not_come_expire() {
        let mut p = pending(4);
        let s = Incoming::detached;
        assert_eq!(p.next_deadline(), None);
        let before = tokio::time::Instant::now();
        p.place("1".into(), true, s(1));
        let deadline = p.next_deadline().unwrap();
        assert!(deadline >= before + Duration::from_secs(30));
        assert!(p.expired(deadline - Duration::from_secs(1)).is_empty());
        assert_eq!(p.expired(deadline), vec![1]);
        assert!(p.pairs.is_empty());
    }
}
