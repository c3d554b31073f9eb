//! Streaming layers into the layer store, from any [`BlobSource`]: download, digest
//! check, decompression, diff_id check and unpack in one pass, several layers at once.
//! The pull and the import both end here.

use std::io::{self, BufRead, BufReader, Read};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt, stream};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::{ErrorKind, ImageError, Result};
use crate::layers::{LayerStore, remove_tree};
use crate::source::{BlobSource, Job};
use crate::store::LayerRef;
use crate::unpack::{Limits, unpack_layer_limited};

/// Layers fetched at once by one pull.
pub(crate) const PARALLEL_LAYERS: usize = 3;

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
    job: &Job,
    layer: &LayerRef,
    reader: ChannelReader,
    limits: &Limits,
) -> Result<()> {
    let temp = store.temp_dir(&layer.diff_id)?;
    let result = (|| {
        let mut raw = BufReader::with_capacity(256 * 1024, reader);
        let magic: Vec<u8> = raw
            .fill_buf()
            .map_err(|e| unpack_io(job, layer, e))?
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
                        .map_err(|e| unpack_io(job, layer, e))?,
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
                    op: job.op,
                    reference: job.name.clone(),
                    digest: layer.digest.clone(),
                    source,
                }
            })?;
            io::copy(&mut hashing, &mut io::sink()).map_err(|e| unpack_io(job, layer, e))?;
            (
                stats,
                format!("sha256:{}", hex::encode(hashing.hasher.finalize())),
            )
        };
        // Whatever follows the compressed stream must still arrive and be vouched for.
        io::copy(&mut raw, &mut io::sink()).map_err(|e| unpack_io(job, layer, e))?;
        if diff_id != layer.diff_id {
            return Err(job.mismatch("diff_id of layer", &layer.diff_id, diff_id));
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

fn unpack_io(job: &Job, layer: &LayerRef, e: io::Error) -> ImageError {
    ImageError::io(
        format!("{} {}: layer {}", job.op, job.name, layer.digest),
        e,
    )
}

/// Fetches one layer from `source` unless the store has it; concurrent callers for
/// the same diff_id wait for the first and find it present. Returns the bytes read.
pub(crate) async fn fetch_layer<S: BlobSource>(
    store: &Arc<LayerStore>,
    job: &Job,
    source: &S,
    layer: &LayerRef,
    limits: &Limits,
    cancel: &CancellationToken,
) -> Result<u64> {
    let lock = store.fetch_lock(&layer.diff_id);
    let _guard = tokio::select! {
        g = lock.lock() => g,
        _ = cancel.cancelled() => return Err(job.cancelled()),
    };
    if let Some(bytes) = store.bytes_of(&layer.diff_id) {
        // A layer already here still makes the image as large as it is.
        if let Some(budget) = &limits.image
            && !budget.charge(bytes)
        {
            return Err(job.too_large(
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
        return Err(job.too_large(
            format!("layer {}", layer.digest),
            limits.layer_bytes,
            "max_layer_unpacked_bytes",
        ));
    }
    let mut blob = source.blob(job, &layer.digest, layer.size).await?;
    let beyond_descriptor = || {
        job.too_large(
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
        let job = job.clone();
        let layer = layer.clone();
        let limits = limits.clone();
        tokio::task::spawn_blocking(move || {
            let reader = ChannelReader {
                rx,
                current: Bytes::new(),
                ended: false,
            };
            unpack_blocking(&store, &job, &layer, reader, &limits)
        })
    };
    let origin = source.origin();
    let mut hasher = Sha256::new();
    let mut received = 0u64;
    let download: Result<()> = async {
        loop {
            let next = tokio::select! {
                n = blob.stream.try_next() => n,
                _ = cancel.cancelled() => return Err(job.cancelled()),
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
                    return Err(job.source_error(
                        format!(
                            "{origin}: layer {}: blob ended after {received} of {} bytes",
                            layer.digest, layer.size
                        ),
                        ErrorKind::Unavailable,
                    ));
                }
                Ok(None) => break,
                Err(e) => {
                    let actual = format!("sha256:{}", hex::encode(hasher.clone().finalize()));
                    if e.digest_check && actual != layer.digest {
                        return Err(job.mismatch("layer", &layer.digest, actual));
                    }
                    return Err(job.source_error(
                        format!("{origin}: layer {}: {}", layer.digest, e.message),
                        ErrorKind::Unavailable,
                    ));
                }
            }
        }
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != layer.digest {
            return Err(job.mismatch("layer", &layer.digest, actual));
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
    tracing::info!(image = %job.name, op = %job.op, digest = %layer.digest, bytes = received, "layer fetched");
    Ok(received)
}

/// Fetches every layer of `layers` not yet in the store from `source`,
/// [`PARALLEL_LAYERS`] at a time. Returns the bytes read.
///
/// When one layer fails the others are cancelled and waited for, not dropped: a
/// dropped fetch leaves its unpacking thread running, which would commit its layer
/// after the failed pull's cleanup had already looked.
pub(crate) async fn fetch_layers<S: BlobSource>(
    store: &Arc<LayerStore>,
    job: &Job,
    source: &Arc<S>,
    layers: &[LayerRef],
    limits: &Limits,
    cancel: &CancellationToken,
) -> Result<u64> {
    let abort = cancel.child_token();
    // Each future owns what it uses: futures borrowing from the iterator trip the
    // compiler's higher-ranked lifetime checks once the pull is spawned as a task.
    let fetches: Vec<_> = layers
        .iter()
        .map(|layer| {
            let (store, job, layer) = (Arc::clone(store), job.clone(), layer.clone());
            let (source, limits, cancel) = (Arc::clone(source), limits.clone(), abort.clone());
            async move { fetch_layer(&store, &job, &*source, &layer, &limits, &cancel).await }
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
