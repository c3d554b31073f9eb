//! GetContainerEvents: container and sandbox lifecycle events for any number of
//! subscribers. Events go through a bounded broadcast channel: a slow subscriber loses
//! the oldest events (and is told so in the log), it never blocks the runtime.

use std::pin::Pin;
use std::sync::Arc;

use crust_proto::cri;
use tokio::sync::broadcast;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tonic::{Request, Response, Status};

use super::{Cri, Services, convert};

/// Events kept for subscribers that fall behind.
const BACKLOG: usize = 1024;

/// The event bus.
pub struct Events {
    tx: broadcast::Sender<cri::ContainerEventResponse>,
}

impl Events {
    /// A bus with no subscribers.
    pub fn new() -> Self {
        Events {
            tx: broadcast::channel(BACKLOG).0,
        }
    }

    /// Publishes an event about container (or sandbox) `id`.
    pub fn emit(&self, services: &Services, id: &str, kind: cri::ContainerEventType) {
        let container = services.containers.get(id);
        self.emit_with(services, id, kind, container.as_deref());
    }

    /// Publishes an event about container `id` whose record the caller holds (a removed
    /// container is no longer in the service), or about sandbox `id` when `None`.
    pub fn emit_with(
        &self,
        services: &Services,
        id: &str,
        kind: cri::ContainerEventType,
        container: Option<&crust_runtime::container::ContainerRecord>,
    ) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        let (sandbox_id, containers_statuses) = match container {
            Some(c) => (c.sandbox_id.clone(), vec![convert::container_status(c)]),
            None => (
                id.to_string(),
                services
                    .containers
                    .of_sandbox(id)
                    .iter()
                    .map(|c| convert::container_status(c))
                    .collect(),
            ),
        };
        let _ = self.tx.send(cri::ContainerEventResponse {
            container_id: id.to_string(),
            container_event_type: kind as i32,
            created_at: super::now_nanos(),
            pod_sandbox_status: services
                .sandboxes
                .get(&sandbox_id)
                .map(|s| convert::sandbox_status(&s)),
            containers_statuses,
        });
    }
}

impl Default for Events {
    fn default() -> Self {
        Self::new()
    }
}

/// The stream type of GetContainerEvents.
pub type EventStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>>;

impl Cri {
    pub(super) async fn get_container_events(
        &self,
        _request: Request<cri::GetEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let services: Arc<Services> = self.services()?;
        let rx = services.events.tx.subscribe();
        let stream = BroadcastStream::new(rx).filter_map(|item| match item {
            Ok(event) => Some(Ok(event)),
            Err(BroadcastStreamRecvError::Lagged(n)) => {
                tracing::warn!(
                    missed = n,
                    "an event subscriber fell behind; events dropped"
                );
                None
            }
        });
        self.instrumented("GetContainerEvents", async {
            Ok(Box::pin(stream) as EventStream)
        })
        .await
    }
}
