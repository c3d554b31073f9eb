//! Where an image's blobs come from: the seam between the code that turns a manifest,
//! a config and a stream per layer into a committed image (manifest.rs, fetch.rs) and
//! the places that serve those bytes, a registry (pull.rs) or containerd's content
//! store (containerd.rs).

use std::future::Future;

use bytes::Bytes;
use futures_util::stream::BoxStream;

use crate::error::{ErrorKind, ImageError, Op, Result};

/// One pull or import of one image, as its errors name it.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    /// What is being done.
    pub(crate) op: Op,
    /// The image's normalized reference.
    pub(crate) name: String,
}

impl Job {
    /// A job doing `op` to the image called `name`.
    pub(crate) fn new(op: Op, name: impl Into<String>) -> Self {
        Job {
            op,
            name: name.into(),
        }
    }

    /// Content that is not what the specs allow.
    pub(crate) fn bad(&self, message: impl Into<String>) -> ImageError {
        ImageError::BadContent {
            op: self.op,
            reference: self.name.clone(),
            message: message.into(),
        }
    }

    /// Content past a cap.
    pub(crate) fn too_large(&self, what: String, limit: u64, rule: &'static str) -> ImageError {
        ImageError::TooLarge {
            op: self.op,
            reference: self.name.clone(),
            what,
            limit,
            rule,
        }
    }

    /// Content whose digest is not the one promised.
    pub(crate) fn mismatch(
        &self,
        what: &'static str,
        expected: &str,
        actual: String,
    ) -> ImageError {
        ImageError::DigestMismatch {
            op: self.op,
            reference: self.name.clone(),
            what,
            expected: expected.to_string(),
            actual,
        }
    }

    /// The source failed; `message` names where.
    pub(crate) fn source_error(&self, message: String, kind: ErrorKind) -> ImageError {
        ImageError::Source {
            op: self.op,
            reference: self.name.clone(),
            message,
            kind,
        }
    }

    /// The job was cancelled.
    pub(crate) fn cancelled(&self) -> ImageError {
        ImageError::Cancelled(self.op, self.name.clone())
    }
}

/// Why a blob's stream broke off.
#[derive(Debug)]
pub(crate) struct BlobError {
    /// What went wrong.
    pub(crate) message: String,
    /// The source's own digest check failed: the caller's check, which names both
    /// digests, reports it better.
    pub(crate) digest_check: bool,
}

/// A blob's bytes as they arrive.
pub(crate) struct BlobStream {
    /// The bytes, in order.
    pub(crate) stream: BoxStream<'static, std::result::Result<Bytes, BlobError>>,
    /// The length the source announced, if it did.
    pub(crate) content_length: Option<u64>,
}

/// A place that serves an image's manifests and blobs by digest. What it hands out is
/// untrusted: the callers check every size and digest.
pub(crate) trait BlobSource: Send + Sync + 'static {
    /// Where the bytes come from, as messages name it (an endpoint URL).
    fn origin(&self) -> &str;

    /// The manifest or index `digest`, whose descriptor gives `size` bytes, whole.
    fn manifest(
        &self,
        job: &Job,
        digest: &str,
        size: u64,
    ) -> impl Future<Output = Result<Bytes>> + Send;

    /// The blob `digest` (a config or a layer) of `size` bytes, as a stream.
    fn blob(
        &self,
        job: &Job,
        digest: &str,
        size: u64,
    ) -> impl Future<Output = Result<BlobStream>> + Send;
}
