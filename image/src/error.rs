//! The image crate's error type.

use std::io;

/// What kind of failure an [`ImageError`] is, for mapping to wire codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The named image or blob does not exist.
    NotFound,
    /// The request itself is malformed.
    InvalidArgument,
    /// The operation is refused in the current state.
    FailedPrecondition,
    /// A registry or the store could not be reached.
    Unavailable,
    /// The deadline passed.
    DeadlineExceeded,
    /// The caller went away.
    Cancelled,
    /// The registry refused our credentials.
    PermissionDenied,
    /// Content larger than a configured or built-in cap.
    ResourceExhausted,
    /// Anything else: a bug, a broken store, a verification failure.
    Internal,
}

/// What was being done to an image when an [`ImageError`] happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Pulling it from a registry.
    Pull,
    /// Importing it from containerd.
    Import,
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Op::Pull => "pull",
            Op::Import => "import",
        })
    }
}

/// Errors of image references, pulls, imports, the layer store and image records.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A reference that cannot be parsed.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// Why it is refused.
        reason: String,
    },
    /// The image is not in the store.
    #[error("image {0:?} not found")]
    NotFound(String),
    /// Where the blobs come from (a registry, containerd) answered with an error or
    /// could not be reached.
    #[error("{op} {reference}: {message}")]
    Source {
        /// What was being done.
        op: Op,
        /// The image's reference.
        reference: String,
        /// What went wrong, naming the endpoint.
        message: String,
        /// The kind of failure.
        kind: ErrorKind,
    },
    /// Content whose digest or diff_id is not what the manifest or config promised.
    #[error("{op} {reference}: {what} {expected}: digest mismatch (got {actual})")]
    DigestMismatch {
        /// What was being done.
        op: Op,
        /// The image's reference.
        reference: String,
        /// Which object: "layer", "config", "manifest", "diff_id of layer".
        what: &'static str,
        /// The digest we were promised.
        expected: String,
        /// The digest we computed.
        actual: String,
    },
    /// A manifest, index or config that is not what the specs allow.
    #[error("{op} {reference}: {message}")]
    BadContent {
        /// What was being done.
        op: Op,
        /// The image's reference.
        reference: String,
        /// What is wrong with it.
        message: String,
    },
    /// A layer failed to unpack.
    #[error("{op} {reference}: layer {digest}: {source}")]
    Unpack {
        /// What was being done.
        op: Op,
        /// The image's reference.
        reference: String,
        /// The layer's compressed digest.
        digest: String,
        /// The unpacker's error.
        #[source]
        source: crate::unpack::UnpackError,
    },
    /// A manifest, config or blob larger than it may be.
    #[error("{op} {reference}: {what} is larger than {limit} bytes ({rule})")]
    TooLarge {
        /// What was being done.
        op: Op,
        /// The image's reference.
        reference: String,
        /// Which object, naming its digest when known.
        what: String,
        /// The cap, in bytes.
        limit: u64,
        /// Where the cap comes from: a setting's name, or why it is fixed.
        rule: &'static str,
    },
    /// containerd, imported from, cannot be reached or refused a request that concerns
    /// no image in particular (the namespace, the image list, the lease).
    #[error("containerd {endpoint}: {message}")]
    Containerd {
        /// The endpoint as given.
        endpoint: String,
        /// What went wrong.
        message: String,
        /// The kind of failure.
        kind: ErrorKind,
    },
    /// The pull ran past its deadline.
    #[error("pull {0}: deadline exceeded")]
    DeadlineExceeded(String),
    /// The pull or import was cancelled.
    #[error("{0} {1}: cancelled")]
    Cancelled(Op, String),
    /// The metadata store failed.
    #[error("image store: {0}")]
    Store(String),
    /// A file system operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing, naming the path.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Registry host configuration (hosts.toml) is invalid.
    #[error(transparent)]
    Hosts(#[from] crate::hosts::HostsError),
}

impl ImageError {
    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ImageError::InvalidReference { .. } => ErrorKind::InvalidArgument,
            ImageError::NotFound(_) => ErrorKind::NotFound,
            ImageError::Source { kind, .. } | ImageError::Containerd { kind, .. } => *kind,
            ImageError::DeadlineExceeded(_) => ErrorKind::DeadlineExceeded,
            ImageError::Cancelled(..) => ErrorKind::Cancelled,
            ImageError::Hosts(_) => ErrorKind::FailedPrecondition,
            ImageError::TooLarge { .. }
            | ImageError::Unpack {
                source: crate::unpack::UnpackError::TooLarge { .. },
                ..
            } => ErrorKind::ResourceExhausted,
            ImageError::DigestMismatch { .. }
            | ImageError::BadContent { .. }
            | ImageError::Unpack { .. }
            | ImageError::Store(_)
            | ImageError::Io { .. } => ErrorKind::Internal,
        }
    }

    /// The same error with `hint` added to a registry's message, for a cause the
    /// registry cannot know (such as credentials we chose not to send).
    pub(crate) fn with_hint(self, hint: &str) -> Self {
        match self {
            ImageError::Source {
                op,
                reference,
                message,
                kind,
            } => ImageError::Source {
                op,
                reference,
                message: format!("{message} ({hint})"),
                kind,
            },
            other => other,
        }
    }

    /// An I/O error with the operation and path it happened on.
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        ImageError::Io {
            context: context.into(),
            source,
        }
    }
}

macro_rules! store_error_from {
    ($($t:ty),*) => {$(
        impl From<$t> for ImageError {
            fn from(e: $t) -> Self {
                ImageError::Store(e.to_string())
            }
        }
    )*};
}
store_error_from!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Result alias for this crate.
pub type Result<T, E = ImageError> = std::result::Result<T, E>;
