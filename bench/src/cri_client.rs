//! The CRI client: one HTTP/2 connection to the runtime's unix socket carrying both
//! services, as kubelet uses it, and a helper that times each call.

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use cri::image_service_client::ImageServiceClient;
use cri::runtime_service_client::RuntimeServiceClient;
use crust_proto::cri;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// kubelet's limit for CRI responses; a ListContainers with thousands of containers
/// exceeds tonic's 4 MiB default.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The two CRI services over one connection, with the per-RPC deadline.
#[derive(Clone)]
pub struct Cri {
    /// RuntimeService.
    pub runtime: RuntimeServiceClient<Channel>,
    /// ImageService.
    pub image: ImageServiceClient<Channel>,
    /// How long one RPC may take.
    pub timeout: Duration,
}

impl Cri {
    /// Connects to `endpoint`, a socket path or a `unix://` URL.
    pub async fn connect(endpoint: &str, timeout: Duration) -> anyhow::Result<Cri> {
        let path = PathBuf::from(endpoint.strip_prefix("unix://").unwrap_or(endpoint));
        let dial = path.clone();
        // The URI only fills in the HTTP/2 authority; the connector dials the socket.
        let channel = Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let dial = dial.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(dial).await?,
                    ))
                }
            }))
            .await
            .with_context(|| format!("connect to {}", path.display()))?;
        Ok(Cri {
            runtime: RuntimeServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            image: ImageServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES),
            timeout,
        })
    }

    /// Runs one RPC under the deadline and returns its answer and how long it took.
    /// `what` names the call and its object in the error.
    pub async fn timed<T, F>(&self, what: &str, call: F) -> anyhow::Result<(T, Duration)>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let start = Instant::now();
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(response)) => Ok((response.into_inner(), start.elapsed())),
            Ok(Err(status)) => Err(anyhow!("{what}: {:?}: {}", status.code(), status.message())),
            Err(_) => Err(anyhow!("{what}: no answer within {:?}", self.timeout)),
        }
    }

    /// Runs one RPC under the deadline, discarding the timing.
    pub async fn call<T, F>(&self, what: &str, call: F) -> anyhow::Result<T>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        Ok(self.timed(what, call).await?.0)
    }

    /// The runtime's name and version, from the Version RPC.
    pub async fn version(&self) -> anyhow::Result<(String, String)> {
        let mut runtime = self.runtime.clone();
        let v = self
            .call(
                "Version",
                runtime.version(cri::VersionRequest {
                    version: "0.1.0".into(),
                }),
            )
            .await?;
        Ok((v.runtime_name, v.runtime_version))
    }
}
