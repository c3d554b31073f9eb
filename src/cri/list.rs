//! ListContainers and ListPodSandbox served from prebuilt CRI messages.
//!
//! kubelet relists about twice a second, and the answer is most of what a busy node
//! sends it (about 780 bytes per container: its labels and annotations). Converting
//! and encoding every record on every call costs the daemon more than anything else
//! it does at rest, so each record's list item is encoded once, as the bytes of one
//! `repeated` field entry of the response, and kept until the record changes
//! (records are immutable `Arc`s; a change publishes a new one, so pointer identity
//! says whether the bytes are current). A call filters the records, takes the bytes
//! of those it keeps (a reference count each) and writes them one after the other:
//! that is the response's wire form, since both responses hold only field 1.
//!
//! tonic's generated server encodes the generated response types, so the two methods
//! are routed here ahead of it ([`RuntimeRouter`]), through tonic's own gRPC unary
//! handling with a codec for [`Encoded`]. Everything else goes to the generated server.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes};
use crust_proto::cri;
use crust_runtime::container::ContainerRecord;
use crust_sandbox::SandboxRecord;
use prost::Message;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::{NamedService, UnaryService};
use tonic::{Request, Response, Status};

use super::{Cri, convert};

/// The largest message crustd decodes or encodes: containerd's limit, and kubelet's
/// (`maxMsgSize` of its CRI client is 16 MiB too).
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// A response made of prebuilt field entries, encoded as they are.
#[derive(Debug, Default, Clone)]
pub struct Encoded(Vec<Bytes>);

impl Message for Encoded {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for entry in &self.0 {
            buf.put_slice(entry);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        // Only ever encoded (it is a response); a decode keeps nothing.
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.iter().map(Bytes::len).sum()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// One record's list item, as field 1 of the list response.
struct Entry<R> {
    record: Arc<R>,
    bytes: Bytes,
}

/// Encoded list items by record id, for one kind of record.
struct Items<R> {
    entries: Mutex<HashMap<String, Entry<R>>>,
}

impl<R> Default for Items<R> {
    fn default() -> Self {
        Items {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl<R> Items<R> {
    /// The list items of `selected`, in order, encoding those whose record changed
    /// since. `all` is every record there is, to forget removed ones.
    fn of<'a>(
        &self,
        all: usize,
        selected: impl Iterator<Item = &'a Arc<R>>,
        id: impl Fn(&R) -> &str,
        item: impl Fn(&R) -> Bytes,
        live: impl FnOnce() -> HashSet<String>,
    ) -> Encoded
    where
        R: 'a,
    {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for record in selected {
            let key = id(record);
            match entries.get_mut(key) {
                Some(e) if Arc::ptr_eq(&e.record, record) => out.push(e.bytes.clone()),
                Some(e) => {
                    *e = Entry {
                        record: Arc::clone(record),
                        bytes: item(record),
                    };
                    out.push(e.bytes.clone());
                }
                None => {
                    let bytes = item(record);
                    out.push(bytes.clone());
                    entries.insert(
                        key.to_string(),
                        Entry {
                            record: Arc::clone(record),
                            bytes,
                        },
                    );
                }
            }
        }
        if entries.len() > all {
            // Some record went away since: drop its bytes.
            let live = live();
            entries.retain(|k, _| live.contains(k));
        }
        Encoded(out)
    }
}

/// The encoded list items of every container and sandbox.
#[derive(Default)]
pub struct ListCache {
    containers: Items<ContainerRecord>,
    sandboxes: Items<SandboxRecord>,
}

/// `message` as an entry of field 1 (tag, length, bytes).
fn field_entry(message: &impl Message) -> Bytes {
    let mut buf = Vec::with_capacity(message.encoded_len() + 8);
    prost::encoding::message::encode(1, message, &mut buf);
    Bytes::from(buf)
}

impl Cri {
    /// ListContainers: the filtered containers' prebuilt items.
    pub(super) async fn list_containers_encoded(
        &self,
        request: Request<cri::ListContainersRequest>,
    ) -> Result<Response<Encoded>, Status> {
        let filter = request.into_inner().filter;
        self.instrumented("ListContainers", async {
            let services = self.services()?;
            let containers = &services.containers;
            // A full pod sandbox id or container id reads its index, not every record.
            let candidates = match &filter {
                Some(f) if f.id.len() == 64 => containers.get(&f.id).into_iter().collect(),
                Some(f) if f.pod_sandbox_id.len() == 64 => containers.of_sandbox(&f.pod_sandbox_id),
                _ => containers.list(),
            };
            let all = containers.count();
            let selected = candidates.iter().filter(|r| {
                filter
                    .as_ref()
                    .is_none_or(|f| super::container::container_matches(r, f))
            });
            Ok(self.lists.containers.of(
                all,
                selected,
                |r| &r.id,
                |r| field_entry(&convert::container(r)),
                || containers.list().iter().map(|r| r.id.clone()).collect(),
            ))
        })
        .await
    }

    /// ListPodSandbox: the filtered sandboxes' prebuilt items.
    pub(super) async fn list_pod_sandbox_encoded(
        &self,
        request: Request<cri::ListPodSandboxRequest>,
    ) -> Result<Response<Encoded>, Status> {
        let filter = request.into_inner().filter;
        self.instrumented("ListPodSandbox", async {
            let services = self.services()?;
            let sandboxes = services.sandboxes.list();
            let selected = sandboxes.iter().filter(|r| {
                filter
                    .as_ref()
                    .is_none_or(|f| super::sandbox::sandbox_matches(r, f))
            });
            Ok(self.lists.sandboxes.of(
                sandboxes.len(),
                selected,
                |r| &r.id,
                |r| field_entry(&convert::sandbox(r)),
                || sandboxes.iter().map(|r| r.id.clone()).collect(),
            ))
        })
        .await
    }
}

/// The runtime service: the two List methods served from [`ListCache`], every other
/// method by tonic's generated server.
#[derive(Clone)]
pub struct RuntimeRouter {
    generated: cri::runtime_service_server::RuntimeServiceServer<Cri>,
    cri: Cri,
}

impl RuntimeRouter {
    /// Routes `cri`'s runtime service.
    pub fn new(cri: Cri) -> Self {
        let generated = cri::runtime_service_server::RuntimeServiceServer::new(cri.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        RuntimeRouter { generated, cri }
    }
}

impl NamedService for RuntimeRouter {
    const NAME: &'static str =
        <cri::runtime_service_server::RuntimeServiceServer<Cri> as NamedService>::NAME;
}

/// A unary method of [`Cri`] that answers with [`Encoded`].
#[derive(Clone, Copy)]
enum EncodedMethod {
    ListContainers,
    ListPodSandbox,
}

impl EncodedMethod {
    fn of(path: &str) -> Option<Self> {
        match path {
            "/runtime.v1.RuntimeService/ListContainers" => Some(EncodedMethod::ListContainers),
            "/runtime.v1.RuntimeService/ListPodSandbox" => Some(EncodedMethod::ListPodSandbox),
            _ => None,
        }
    }
}

/// [`EncodedMethod`] bound to its request type, as tonic's unary handling wants it.
struct Unary<Req>(Cri, std::marker::PhantomData<Req>);

impl UnaryService<cri::ListContainersRequest> for Unary<cri::ListContainersRequest> {
    type Response = Encoded;
    type Future = BoxFuture<Response<Encoded>, Status>;

    fn call(&mut self, request: Request<cri::ListContainersRequest>) -> Self::Future {
        let cri = self.0.clone();
        Box::pin(async move { cri.list_containers_encoded(request).await })
    }
}

impl UnaryService<cri::ListPodSandboxRequest> for Unary<cri::ListPodSandboxRequest> {
    type Response = Encoded;
    type Future = BoxFuture<Response<Encoded>, Status>;

    fn call(&mut self, request: Request<cri::ListPodSandboxRequest>) -> Self::Future {
        let cri = self.0.clone();
        Box::pin(async move { cri.list_pod_sandbox_encoded(request).await })
    }
}

impl Service<http::Request<tonic::body::Body>> for RuntimeRouter {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let Some(method) = EncodedMethod::of(request.uri().path()) else {
            return Box::pin(self.generated.call(request));
        };
        let cri = self.cri.clone();
        Box::pin(async move {
            let limits = (Some(MAX_MESSAGE), Some(MAX_MESSAGE));
            Ok(match method {
                EncodedMethod::ListContainers => {
                    let codec =
                        tonic_prost::ProstCodec::<Encoded, cri::ListContainersRequest>::default();
                    tonic::server::Grpc::new(codec)
                        .apply_max_message_size_config(limits.0, limits.1)
                        .unary(Unary(cri, std::marker::PhantomData), request)
                        .await
                }
                EncodedMethod::ListPodSandbox => {
                    let codec =
                        tonic_prost::ProstCodec::<Encoded, cri::ListPodSandboxRequest>::default();
                    tonic::server::Grpc::new(codec)
                        .apply_max_message_size_config(limits.0, limits.1)
                        .unary(Unary(cri, std::marker::PhantomData), request)
                        .await
                }
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The concatenated entries decode as the response they stand for.
    #[test]
    fn entries_make_the_response() {
        let items: Vec<cri::PodSandbox> = (0..3)
            .map(|i| cri::PodSandbox {
                id: format!("id{i}"),
                labels: [("k".to_string(), format!("v{i}"))].into(),
                created_at: i,
                ..Default::default()
            })
            .collect();
        let encoded = Encoded(items.iter().map(field_entry).collect());
        let bytes = encoded.encode_to_vec();
        assert_eq!(bytes.len(), encoded.encoded_len());
        let decoded = cri::ListPodSandboxResponse::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded.items, items);
        let empty = Encoded::default().encode_to_vec();
        assert!(
            cri::ListContainersResponse::decode(empty.as_slice())
                .unwrap()
                .containers
                .is_empty()
        );
    }

    /// A record's bytes are reused while it is the same record, rebuilt when it
    /// changed, and forgotten when it is gone.
    #[test]
    fn items_follow_their_records() {
        let items = Items::<(String, i64)>::default();
        let built = std::sync::atomic::AtomicUsize::new(0);
        let item = |r: &(String, i64)| {
            built.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            field_entry(&cri::PodSandbox {
                id: r.0.clone(),
                created_at: r.1,
                ..Default::default()
            })
        };
        let a = Arc::new(("a".to_string(), 1));
        let b = Arc::new(("b".to_string(), 2));
        let live = |v: &[&Arc<(String, i64)>]| v.iter().map(|r| r.0.clone()).collect();
        let list = |records: Vec<&Arc<(String, i64)>>| {
            let n = records.len();
            let ids = live(&records);
            let out = items.of(n, records.into_iter(), |r| &r.0, item, || ids);
            cri::ListPodSandboxResponse::decode(out.encode_to_vec().as_slice())
                .unwrap()
                .items
                .iter()
                .map(|s| (s.id.clone(), s.created_at))
                .collect::<Vec<_>>()
        };
        assert_eq!(list(vec![&a, &b]), [("a".into(), 1), ("b".into(), 2)]);
        assert_eq!(list(vec![&a, &b]).len(), 2);
        assert_eq!(built.load(std::sync::atomic::Ordering::Relaxed), 2);
        let a2 = Arc::new(("a".to_string(), 3));
        assert_eq!(list(vec![&a2]), [("a".into(), 3)]);
        assert_eq!(built.load(std::sync::atomic::Ordering::Relaxed), 3);
        assert_eq!(
            items.entries.lock().unwrap().len(),
            1,
            "b's bytes are dropped"
        );
    }
}
