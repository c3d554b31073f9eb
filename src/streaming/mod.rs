//! The streaming server: where the URLs that Exec, Attach and PortForward return
//! lead, for crictl and kubelet's proxy.
//!
//! ```text
//!  CRI Exec ──validate──▶ Tokens (single use, 1 min) ──▶ "http://ADDR/exec/TOKEN"
//!  client ──GET /exec/TOKEN, Upgrade: SPDY/3.1 | websocket──▶ http ──▶ spdy_remote
//!                                                                  ──▶ ws (channels)
//!                                            remote::exec ◀── runtime exec --detach
//!                                            remote::attach ◀── monitor attach socket
//!                                            portforward ◀── dial inside the pod netns
//! ```

mod fdio;
mod http;
mod idle;
mod portforward;
pub mod remote;
mod spdy_remote;
mod spdy_session;
mod tokens;
mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use crust_runtime::container::{ContainerService, ExecStreams};
use crust_sandbox::SandboxService;
use tonic::Status;

use crate::config::StreamingConfig;
use remote::{ClientStreams, Outcome};
use tokens::Tokens;

/// What the streaming handlers reach.
#[derive(Clone)]
pub struct StreamContext {
    /// Containers, for exec and attach.
    pub containers: Arc<ContainerService>,
    /// Sandboxes, for port-forward.
    pub sandboxes: Arc<SandboxService>,
}

/// A validated exec or attach, waiting for its client.
#[derive(Debug, Clone)]
pub enum RemoteCommand {
    /// Run a command in the container.
    Exec {
        /// The container.
        container_id: String,
        /// The command line.
        cmd: Vec<String>,
        /// The streams asked for.
        streams: ExecStreams,
    },
    /// Join the container's own stdio.
    Attach {
        /// The container.
        container_id: String,
        /// The streams asked for.
        streams: ExecStreams,
    },
}

impl RemoteCommand {
    /// The streams the request asked for.
    pub fn streams(&self) -> ExecStreams {
        match self {
            RemoteCommand::Exec { streams, .. } | RemoteCommand::Attach { streams, .. } => *streams,
        }
    }

    /// The command line (empty for attach), for status messages.
    pub fn cmd(&self) -> &[String] {
        match self {
            RemoteCommand::Exec { cmd, .. } => cmd,
            RemoteCommand::Attach { .. } => &[],
        }
    }

    /// The container.
    pub fn container_id(&self) -> &str {
        match self {
            RemoteCommand::Exec { container_id, .. }
            | RemoteCommand::Attach { container_id, .. } => container_id,
        }
    }

    /// Runs it against the client's streams.
    pub async fn run(&self, ctx: &StreamContext, client: ClientStreams) -> Outcome {
        match self {
            RemoteCommand::Exec {
                container_id,
                cmd,
                streams,
            } => {
                remote::exec(
                    &ctx.containers,
                    container_id,
                    cmd.clone(),
                    streams.tty,
                    client,
                )
                .await
            }
            RemoteCommand::Attach { container_id, .. } => {
                remote::attach(&ctx.containers, container_id, client).await
            }
        }
    }
}

/// Remote-command protocol versions, oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RemoteProtocol {
    /// `channel.k8s.io`.
    V1,
    /// `v2.channel.k8s.io`.
    V2,
    /// `v3.channel.k8s.io`: adds the resize stream.
    V3,
    /// `v4.channel.k8s.io`: the error stream carries a JSON status with the exit code.
    V4,
    /// `v5.channel.k8s.io`: WebSocket clients may close stdin.
    V5,
}

/// A request parked under a token.
#[derive(Debug, Clone)]
pub enum Parked {
    /// Exec or attach.
    Remote(RemoteCommand),
    /// Port-forward into a sandbox.
    PortForward {
        /// The sandbox.
        sandbox_id: String,
    },
}

impl Parked {
    /// The URL path segment of its kind.
    fn kind(&self) -> &'static str {
        match self {
            Parked::Remote(RemoteCommand::Exec { .. }) => "exec",
            Parked::Remote(RemoteCommand::Attach { .. }) => "attach",
            Parked::PortForward { .. } => "portforward",
        }
    }
}

/// What one client can make the streaming server hold, and for how long.
#[derive(Debug, Clone)]
pub struct Limits {
    /// An upgraded connection with no traffic either way for this long is closed.
    pub idle_timeout: Duration,
    /// Time to open a remote command's streams or a port-forward pair's second one.
    pub stream_creation_timeout: Duration,
    /// Upgraded connections at once.
    pub max_connections: usize,
    /// SPDY streams open or queued per connection.
    pub max_streams: usize,
    /// Largest decompressed SPDY header block.
    pub max_header_block: usize,
    /// Decompressed header bytes held by one connection's open streams.
    pub max_header_bytes: usize,
    /// Port-forward streams waiting for their pair, per connection.
    pub max_pending_pairs: usize,
    /// Largest WebSocket message or frame from a client.
    pub ws_max_message: usize,
}

impl Limits {
    /// The limits `config` sets.
    pub fn from_config(config: &StreamingConfig) -> Limits {
        Limits {
            idle_timeout: Duration::from_secs(config.idle_timeout_secs),
            stream_creation_timeout: Duration::from_secs(config.stream_creation_timeout_secs),
            max_connections: config.max_connections,
            max_streams: config.max_streams_per_session,
            max_header_block: config.max_header_block_bytes,
            max_header_bytes: config.max_header_bytes,
            max_pending_pairs: config.max_pending_port_forward_pairs,
            ws_max_message: config.ws_max_message_bytes,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::from_config(&StreamingConfig::default())
    }
}

/// Issues URLs for validated requests and serves them.
pub struct StreamingServer {
    base_url: String,
    tokens: Tokens<Parked>,
    ctx: StreamContext,
    limits: Limits,
    /// One permit per upgraded connection being served.
    connections: Arc<tokio::sync::Semaphore>,
}

impl StreamingServer {
    /// A server whose URLs start with `base_url` (`http://127.0.0.1:PORT`).
    pub fn new(
        base_url: String,
        token_ttl: Duration,
        limits: Limits,
        ctx: StreamContext,
    ) -> StreamingServer {
        StreamingServer {
            base_url,
            tokens: Tokens::new(token_ttl),
            ctx,
            connections: Arc::new(tokio::sync::Semaphore::new(limits.max_connections)),
            limits,
        }
    }

    /// Parks `request` and returns its URL.
    pub fn url_for(&self, request: Parked) -> Result<String, Status> {
        let kind = request.kind();
        let token = self.tokens.issue(request).map_err(|_| {
            Status::resource_exhausted(format!(
                "too many streaming requests wait for their client (at most {})",
                tokens::MAX_IN_FLIGHT
            ))
        })?;
        Ok(format!("{}/{kind}/{token}", self.base_url))
    }

    /// The request parked under `token` for a `kind` URL, spending the token.
    fn redeem(&self, kind: &str, token: &str) -> Option<Parked> {
        self.tokens.redeem(token).filter(|p| p.kind() == kind)
    }
}

/// The bound streaming socket, before the server runs.
pub struct Listener {
    tcp: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    base_url: String,
}

impl Listener {
    /// The URL prefix of this listener (`http://IP:PORT` or `https://IP:PORT`).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }
}

/// Binds the streaming address and loads its TLS key pair, so that a bad setting stops
/// crustd at start.
pub async fn bind(config: &StreamingConfig) -> anyhow::Result<Listener> {
    let addr = SocketAddr::new(config.address, config.port);
    let tcp = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("streaming: bind {addr}"))?;
    let bound = tcp.local_addr()?;
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(http::tls_acceptor(cert, key)?),
        _ => None,
    };
    // A wildcard address is not a place to connect to; the URL names loopback then.
    let host = match bound.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_string(),
        ip if ip.is_unspecified() => "[::1]".to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        std::net::IpAddr::V4(ip) => ip.to_string(),
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    Ok(Listener {
        tcp,
        tls,
        base_url: format!("{scheme}://{host}:{}", bound.port()),
    })
}

/// Serves streaming connections for ever.
pub async fn serve(listener: Listener, server: Arc<StreamingServer>) {
    http::serve(listener, server).await
}
