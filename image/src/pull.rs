//! Pulling an image: resolve the manifest (choosing this host's platform from an index),
//! fetch and verify the config, then stream every missing layer straight into the layer
//! store: download, digest check, decompression, diff_id check and unpack in one pass,
//! several layers at once.

use std::io::{self, BufRead, BufReader, Read};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt, stream};
use oci_client::Reference;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::{ErrorKind, ImageError, Result};
use crate::layers::{LayerStore, remove_tree};
use crate::manifest;
use crate::reference::{ImageRef, is_sha256_digest};
use crate::registry::{Route, error_chain, registry_error};
use crate::store::LayerRef;
use crate::unpack::{Limits, unpack_layer_limited};

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const ACCEPTED_MANIFESTS: &[&str] = &[OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];

/// Layers fetched at once by one pull.
pub(crate) const PARALLEL_LAYERS: usize = 3;

/// The largest manifest, index or config accepted, as in containerd: real ones are a
/// few KiB, and each is held in memory whole.
pub(crate) const MAX_METADATA_BYTES: u64 = 4 << 20;
const METADATA_RULE: &str = "the 4 MiB cap on manifests, indexes and configs";

/// A content descriptor as manifests and indexes carry it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default)]
    pub(crate) media_type: String,
    pub(crate) digest: String,
    #[serde(default)]
    pub(crate) size: i64,
    #[serde(default)]
    pub(crate) platform: Option<Platform>,
}

/// The platform an index entry is built for.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Platform {
    #[serde(default)]
    pub(crate) architecture: String,
    #[serde(default)]
    pub(crate) os: String,
    #[serde(default)]
    pub(crate) variant: Option<String>,
}

/// An image manifest or an index, told apart by their fields.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestDoc {
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

/// The parts of an image config a pull needs.
#[derive(Debug, Deserialize)]
struct ConfigDoc {
    rootfs: RootFs,
}

#[derive(Debug, Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// What the registry told us about an image, before its layers are fetched.
pub(crate) struct Resolved {
    /// The digest of what the reference names (an index's digest when it names one).
    pub(crate) top_digest: String,
    /// The config digest: the image id.
    pub(crate) config_digest: String,
    /// The config blob.
    pub(crate) config: String,
    /// Layers with their diff_ids, lowest first.
    pub(crate) layers: Vec<LayerRef>,
    /// The route that answered.
    pub(crate) route: Route,
}

/// The host's platform in the GOARCH/GOOS words that indexes use.
pub(crate) fn host_platform() -> (&'static str, Option<&'static str>) {
    match std::env::consts::ARCH {
        "x86_64" => ("amd64", None),
        "aarch64" => ("arm64", Some("v8")),
        "arm" => ("arm", Some("v7")),
        "x86" => ("386", None),
        "powerpc64" => ("ppc64le", None),
        "s390x" => ("s390x", None),
        "riscv64" => ("riscv64", None),
        other => (other, None),
    }
}

/// Picks this host's entry from an index: linux, our architecture, and the variant when
/// both sides name one (arm64 entries often omit `v8`).
pub(crate) fn choose_platform<'a>(
    entries: &'a [Descriptor],
    arch: &str,
    variant: Option<&str>,
) -> Option<&'a Descriptor> {
    let candidates = entries.iter().filter(|d| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == "linux" && p.architecture == arch)
    });
    let mut fallback = None;
    for d in candidates {
        let theirs = d.platform.as_ref().and_then(|p| p.variant.as_deref());
        match (theirs, variant) {
            (Some(a), Some(b)) if a == b => return Some(d),
            (None, _) | (_, None) => {
                fallback.get_or_insert(d);
            }
            _ => {}
        }
    }
    fallback
}

fn sha256_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn bad(reference: &ImageRef, message: impl Into<String>) -> ImageError {
    ImageError::BadContent {
        reference: reference.to_string(),
        message: message.into(),
    }
}

fn too_large(image: &ImageRef, what: String, limit: u64, rule: &'static str) -> ImageError {
    ImageError::TooLarge {
        reference: image.to_string(),
        what,
        limit,
        rule,
    }
}

/// Fetches a manifest, reading no more than the cap of it, and checks its digest
/// against the reference when that names one, and against the registry's
/// `Docker-Content-Digest` when it sent a sha256 one.
async fn fetch_manifest(
    image: &ImageRef,
    route: &Route,
    reference: &Reference,
) -> Result<(Bytes, String)> {
    let name = image.to_string();
    let fetched = match manifest::fetch(
        &name,
        route,
        reference,
        ACCEPTED_MANIFESTS,
        MAX_METADATA_BYTES,
    )
    .await
    {
        Ok(f) => f,
        Err(manifest::Failure::TooLarge) => {
            return Err(too_large(
                image,
                format!("manifest {reference}"),
                MAX_METADATA_BYTES,
                METADATA_RULE,
            ));
        }
        Err(manifest::Failure::Other(e)) => return Err(e),
    };
    let actual = sha256_of(&fetched.body);
    let header = fetched
        .digest_header
        .as_deref()
        .filter(|d| d.starts_with("sha256:"));
    for expected in [reference.digest(), header].into_iter().flatten() {
        if expected != actual {
            return Err(ImageError::DigestMismatch {
                reference: name,
                what: "manifest",
                expected: expected.to_string(),
                actual,
            });
        }
    }
    Ok((fetched.body, actual))
}

/// Resolves `image` through `route` down to a config and a layer list.
pub(crate) async fn resolve(image: &ImageRef, route: Route) -> Result<Resolved> {
    let (bytes, top_digest) = fetch_manifest(image, &route, &route.reference).await?;
    let mut doc: ManifestDoc = serde_json::from_slice(&bytes)
        .map_err(|e| bad(image, format!("manifest {top_digest}: {e}")))?;
    if doc.schema_version == Some(1) {
        return Err(bad(image, "docker schema 1 manifests are not supported"));
    }
    if let Some(entries) = doc.manifests.take() {
        let (arch, variant) = host_platform();
        let entry =
            choose_platform(&entries, arch, variant).ok_or_else(|| ImageError::Registry {
                reference: image.to_string(),
                message: format!("index {top_digest} has no manifest for linux/{arch}"),
                kind: ErrorKind::NotFound,
            })?;
        if !is_sha256_digest(&entry.digest) {
            return Err(bad(
                image,
                format!("index {top_digest}: bad digest {:?}", entry.digest),
            ));
        }
        if entry.size.max(0) as u64 > MAX_METADATA_BYTES {
            return Err(too_large(
                image,
                format!("manifest {}", entry.digest),
                MAX_METADATA_BYTES,
                METADATA_RULE,
            ));
        }
        let child = route.reference.clone_with_digest(entry.digest.clone());
        let (bytes, _) = fetch_manifest(image, &route, &child).await?;
        doc = serde_json::from_slice(&bytes)
            .map_err(|e| bad(image, format!("manifest {}: {e}", entry.digest)))?;
        if doc.manifests.is_some() {
            return Err(bad(
                image,
                format!("manifest {}: an index inside an index", entry.digest),
            ));
        }
    }
    if let Some(mt) = doc.media_type.as_deref()
        && mt != OCI_MANIFEST
        && mt != DOCKER_MANIFEST
    {
        return Err(bad(image, format!("unsupported manifest media type {mt}")));
    }
    let (Some(config), Some(layers)) = (doc.config, doc.layers) else {
        return Err(bad(image, "manifest has no config or no layers"));
    };
    if !is_sha256_digest(&config.digest) {
        return Err(bad(
            image,
            format!("config has a bad digest {:?}", config.digest),
        ));
    }
    if config.size.max(0) as u64 > MAX_METADATA_BYTES {
        return Err(too_large(
            image,
            format!("config {}", config.digest),
            MAX_METADATA_BYTES,
            METADATA_RULE,
        ));
    }
    let config_bytes = fetch_config(image, &route, &config).await?;
    let actual = sha256_of(&config_bytes);
    if actual != config.digest {
        return Err(ImageError::DigestMismatch {
            reference: image.to_string(),
            what: "config",
            expected: config.digest,
            actual,
        });
    }
    let config_text =
        String::from_utf8(config_bytes).map_err(|_| bad(image, "config is not utf-8"))?;
    let parsed: ConfigDoc = serde_json::from_str(&config_text)
        .map_err(|e| bad(image, format!("config {}: {e}", config.digest)))?;
    if parsed.rootfs.diff_ids.len() != layers.len() {
        return Err(bad(
            image,
            format!(
                "config lists {} diff_ids for {} layers",
                parsed.rootfs.diff_ids.len(),
                layers.len()
            ),
        ));
    }
    let mut layer_refs = Vec::with_capacity(layers.len());
    for (layer, diff_id) in layers.iter().zip(parsed.rootfs.diff_ids) {
        if !is_sha256_digest(&layer.digest) || !is_sha256_digest(&diff_id) {
            return Err(bad(
                image,
                format!("layer {} / diff_id {diff_id}: bad digest", layer.digest),
            ));
        }
        if !is_layer_media_type(&layer.media_type) {
            return Err(bad(
                image,
                format!(
                    "layer {}: unsupported media type {}",
                    layer.digest, layer.media_type
                ),
            ));
        }
        layer_refs.push(LayerRef {
            diff_id,
            digest: layer.digest.clone(),
            size: layer.size.max(0) as u64,
        });
    }
    Ok(Resolved {
        top_digest,
        config_digest: config.digest,
        config: config_text,
        layers: layer_refs,
        route,
    })
}

/// Fetches the config blob, reading no more than its descriptor's size.
async fn fetch_config(image: &ImageRef, route: &Route, config: &Descriptor) -> Result<Vec<u8>> {
    let size = config.size.max(0) as u64;
    let name = image.to_string();
    let mut blob = route
        .client
        .pull_blob_stream(&route.reference, config.digest.as_str())
        .await
        .map_err(|e| registry_error(&name, &route.endpoint, e))?;
    let mut out = Vec::with_capacity(size as usize);
    loop {
        match blob.stream.try_next().await {
            Ok(Some(bytes)) => {
                if (out.len() + bytes.len()) as u64 > size {
                    return Err(too_large(
                        image,
                        format!("config {}", config.digest),
                        size,
                        "the size its descriptor gives",
                    ));
                }
                out.extend_from_slice(&bytes);
            }
            Ok(None) => break,
            // The stream's own digest check fails with an I/O error; ours below names
            // both digests, so only other errors are reported from here.
            Err(e) if e.to_string().to_lowercase().contains("digest") => break,
            Err(e) => {
                return Err(ImageError::Registry {
                    reference: name,
                    message: format!(
                        "{}: config {}: {}",
                        route.endpoint,
                        config.digest,
                        error_chain(&e)
                    ),
                    kind: ErrorKind::Unavailable,
                });
            }
        }
    }
    Ok(out)
}

fn is_layer_media_type(mt: &str) -> bool {
    // Compression is sniffed from the bytes, so any tar layer type is accepted.
    mt.starts_with("application/vnd.oci.image.layer.")
        || mt.starts_with("application/vnd.docker.image.rootfs.")
        || mt.is_empty()
}

/// A message from the download side to the unpacking thread.
enum Chunk {
    Data(Bytes),
    /// The blob was received whole and its digest verified.
    End,
}

/// The blocking side of the download: bytes arrive over a channel.
struct ChannelReader {
    rx: mpsc::Receiver<Chunk>,
    current: Bytes,
    ended: bool,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Chunk::Data(b)) => self.current = b,
                Some(Chunk::End) => self.ended = true,
                // The sender went away without vouching for the blob: a digest
                // mismatch, a network error or a cancelled pull. Never treat it as EOF.
                None => {
                    return Err(io::Error::other(
                        "download ended before the blob was verified",
                    ));
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

/// Hashes what passes through.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Decompresses (gzip, zstd or none, by magic number), hashes and unpacks one layer,
/// then commits it to the store. Runs on a blocking thread.
fn unpack_blocking(
    store: &LayerStore,
    image: &str,
    layer: &LayerRef,
    reader: ChannelReader,
    limits: &Limits,
) -> Result<()> {
    let temp = store.temp_dir(&layer.diff_id)?;
    let result = (|| {
        let mut raw = BufReader::with_capacity(256 * 1024, reader);
        let magic: Vec<u8> = raw
            .fill_buf()
            .map_err(|e| unpack_io(image, layer, e))?
            .iter()
            .take(4)
            .copied()
            .collect();
        let (stats, diff_id) = {
            let decompressed: Box<dyn Read + '_> = if magic.starts_with(&[0x1f, 0x8b]) {
                Box::new(flate2::bufread::MultiGzDecoder::new(&mut raw))
            } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
                Box::new(
                    zstd::stream::read::Decoder::with_buffer(&mut raw)
                        .map_err(|e| unpack_io(image, layer, e))?,
                )
            } else {
                Box::new(&mut raw)
            };
            let mut hashing = HashingReader {
                inner: decompressed,
                hasher: Sha256::new(),
            };
            let stats = unpack_layer_limited(&mut hashing, &temp, limits).map_err(|source| {
                ImageError::Unpack {
                    reference: image.to_string(),
                    digest: layer.digest.clone(),
                    source,
                }
            })?;
            io::copy(&mut hashing, &mut io::sink()).map_err(|e| unpack_io(image, layer, e))?;
            (
                stats,
                format!("sha256:{}", hex::encode(hashing.hasher.finalize())),
            )
        };
        // Whatever follows the compressed stream must still arrive and be vouched for.
        io::copy(&mut raw, &mut io::sink()).map_err(|e| unpack_io(image, layer, e))?;
        if diff_id != layer.diff_id {
            return Err(ImageError::DigestMismatch {
                reference: image.to_string(),
                what: "diff_id of layer",
                expected: layer.diff_id.clone(),
                actual: diff_id,
            });
        }
        Ok(stats)
    })();
    match result {
        Ok(stats) => store.commit(&layer.diff_id, &temp, stats.bytes, stats.entries),
        Err(e) => {
            remove_tree(&temp);
            Err(e)
        }
    }
}

fn unpack_io(image: &str, layer: &LayerRef, e: io::Error) -> ImageError {
    ImageError::io(format!("pull {image}: layer {}", layer.digest), e)
}

/// Fetches one layer unless the store has it; concurrent callers for the same diff_id
/// wait for the first and find it present.
pub(crate) async fn fetch_layer(
    store: &Arc<LayerStore>,
    image: &str,
    route: &Route,
    layer: &LayerRef,
    limits: &Limits,
    cancel: &CancellationToken,
) -> Result<u64> {
    let (client, reference, endpoint) = (&route.client, &route.reference, &route.endpoint);
    let too_large = |what: String, limit: u64, rule: &'static str| ImageError::TooLarge {
        reference: image.to_string(),
        what,
        limit,
        rule,
    };
    let lock = store.fetch_lock(&layer.diff_id);
    let _guard = tokio::select! {
        g = lock.lock() => g,
        _ = cancel.cancelled() => return Err(ImageError::Cancelled(image.to_string())),
    };
    if let Some(bytes) = store.bytes_of(&layer.diff_id) {
        // A layer already here still makes the image as large as it is.
        if let Some(budget) = &limits.image
            && !budget.charge(bytes)
        {
            return Err(too_large(
                "the image's unpacked content".into(),
                budget.limit(),
                "max_image_unpacked_bytes",
            ));
        }
        return Ok(0);
    }
    // Compression never shrinks a tar much below the size of its gzip or zstd (at worst
    // it adds a fraction of a percent), so a blob past the cap, with that slack, cannot
    // unpack within it: refuse before downloading it.
    if layer.size > limits.layer_bytes.saturating_add(limits.layer_bytes / 64) {
        return Err(too_large(
            format!("layer {}", layer.digest),
            limits.layer_bytes,
            "max_layer_unpacked_bytes",
        ));
    }
    let mut blob = client
        .pull_blob_stream(reference, layer.digest.as_str())
        .await
        .map_err(|e| registry_error(image, endpoint, e))?;
    let beyond_descriptor = || {
        too_large(
            format!("layer blob {}", layer.digest),
            layer.size,
            "the size its descriptor gives",
        )
    };
    if blob.content_length.is_some_and(|n| n > layer.size) {
        return Err(beyond_descriptor());
    }
    let (tx, rx) = mpsc::channel(16);
    let unpacker = {
        let store = Arc::clone(store);
        let image = image.to_string();
        let layer = layer.clone();
        let limits = limits.clone();
        tokio::task::spawn_blocking(move || {
            let reader = ChannelReader {
                rx,
                current: Bytes::new(),
                ended: false,
            };
            unpack_blocking(&store, &image, &layer, reader, &limits)
        })
    };
    let mut hasher = Sha256::new();
    let mut received = 0u64;
    let download: Result<()> = async {
        loop {
            let next = tokio::select! {
                n = blob.stream.try_next() => n,
                _ = cancel.cancelled() => return Err(ImageError::Cancelled(image.to_string())),
            };
            match next {
                Ok(Some(bytes)) => {
                    received += bytes.len() as u64;
                    // Not one byte past the descriptor's size reaches the unpacker.
                    if received > layer.size {
                        return Err(beyond_descriptor());
                    }
                    hasher.update(&bytes);
                    if tx.send(Chunk::Data(bytes)).await.is_err() {
                        // The unpacker stopped; its error says why.
                        return Ok(());
                    }
                }
                Ok(None) if received < layer.size => {
                    return Err(ImageError::Registry {
                        reference: image.to_string(),
                        message: format!(
                            "{endpoint}: layer {}: blob ended after {received} of {} bytes",
                            layer.digest, layer.size
                        ),
                        kind: ErrorKind::Unavailable,
                    });
                }
                Ok(None) => break,
                Err(e) => {
                    let actual = format!("sha256:{}", hex::encode(hasher.clone().finalize()));
                    if e.to_string().to_lowercase().contains("digest") && actual != layer.digest {
                        return Err(mismatch(image, layer, actual));
                    }
                    return Err(ImageError::Registry {
                        reference: image.to_string(),
                        message: format!("{endpoint}: layer {}: {}", layer.digest, error_chain(&e)),
                        kind: ErrorKind::Unavailable,
                    });
                }
            }
        }
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != layer.digest {
            return Err(mismatch(image, layer, actual));
        }
        let _ = tx.send(Chunk::End).await;
        Ok(())
    }
    .await;
    drop(tx);
    let unpacked = unpacker
        .await
        .map_err(|e| ImageError::Store(format!("unpack task of layer {}: {e}", layer.digest)))?;
    // The download's own error is the more precise one (a digest mismatch or a
    // cancellation makes the unpacker fail only as a consequence).
    download?;
    unpacked?;
    tracing::info!(image, digest = %layer.digest, bytes = received, "layer fetched");
    Ok(received)
}

fn mismatch(image: &str, layer: &LayerRef, actual: String) -> ImageError {
    ImageError::DigestMismatch {
        reference: image.to_string(),
        what: "layer",
        expected: layer.digest.clone(),
        actual,
    }
}

/// Fetches every layer not yet in the store, [`PARALLEL_LAYERS`] at a time. Returns the
/// bytes downloaded.
///
/// When one layer fails the others are cancelled and waited for, not dropped: a
/// dropped fetch leaves its unpacking thread running, which would commit its layer
/// after the failed pull's cleanup had already looked.
pub(crate) async fn fetch_layers(
    store: &Arc<LayerStore>,
    image: &str,
    resolved: &Resolved,
    limits: &Limits,
    cancel: &CancellationToken,
) -> Result<u64> {
    let route = &resolved.route;
    let abort = cancel.child_token();
    // Each future owns what it uses: futures borrowing from the iterator trip the
    // compiler's higher-ranked lifetime checks once the pull is spawned as a task.
    let fetches: Vec<_> = resolved
        .layers
        .iter()
        .map(|layer| {
            let (store, image, layer) = (Arc::clone(store), image.to_string(), layer.clone());
            let (route, limits, cancel) = (route.clone(), limits.clone(), abort.clone());
            async move { fetch_layer(&store, &image, &route, &layer, &limits, &cancel).await }
        })
        .collect();
    let mut results = stream::iter(fetches).buffer_unordered(PARALLEL_LAYERS);
    let (mut total, mut failure) = (0, None);
    while let Some(result) = results.next().await {
        match result {
            Ok(bytes) => total += bytes,
            Err(e) => {
                abort.cancel();
                // The first failure is the cause; later ones are mostly its
                // cancellations.
                failure.get_or_insert(e);
            }
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(total),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(arch: &str, variant: Option<&str>, digest: &str) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: digest.into(),
            size: 1,
            platform: Some(Platform {
                architecture: arch.into(),
                os: "linux".into(),
                variant: variant.map(str::to_string),
            }),
        }
    }

    #[test]
    fn platform_choice_prefers_exact_variant() {
        let entries = vec![
            entry("amd64", None, "a"),
            entry("arm", Some("v6"), "b"),
            entry("arm", Some("v7"), "c"),
            entry("arm64", None, "d"),
        ];
        assert_eq!(
            choose_platform(&entries, "amd64", None).unwrap().digest,
            "a"
        );
        assert_eq!(
            choose_platform(&entries, "arm", Some("v7")).unwrap().digest,
            "c"
        );
        assert_eq!(
            choose_platform(&entries, "arm64", Some("v8"))
                .unwrap()
                .digest,
            "d"
        );
        assert!(choose_platform(&entries, "s390x", None).is_none());
        let windows = vec![Descriptor {
            platform: Some(Platform {
                architecture: "amd64".into(),
                os: "windows".into(),
                variant: None,
            }),
            ..entry("amd64", None, "w")
        }];
        assert!(choose_platform(&windows, "amd64", None).is_none());
    }

    #[test]
    fn channel_reader_refuses_an_unvouched_end() {
        let (tx, rx) = mpsc::channel(4);
        tx.try_send(Chunk::Data(Bytes::from_static(b"abc")))
            .unwrap();
        drop(tx);
        let mut r = ChannelReader {
            rx,
            current: Bytes::new(),
            ended: false,
        };
        let mut out = Vec::new();
        assert!(r.read_to_end(&mut out).is_err());
        assert_eq!(out, b"abc");

        let (tx, rx) = mpsc::channel(4);
        tx.try_send(Chunk::Data(Bytes::from_static(b"abc")))
            .unwrap();
        tx.try_send(Chunk::End).unwrap();
        let mut r = ChannelReader {
            rx,
            current: Bytes::new(),
            ended: false,
        };
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"abc");
    }
}
