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

/// Errors of image references, pulls, the layer store and image records.
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
    /// A registry answered with an error or could not be reached.
    #[error("pull {reference}: {message}")]
    Registry {
        /// The reference being pulled.
        reference: String,
        /// What went wrong, from the registry client.
        message: String,
        /// The kind of failure.
        kind: ErrorKind,
    },
    /// Content whose digest or diff_id is not what the manifest or config promised.
    #[error("pull {reference}: {what} {expected}: digest mismatch (got {actual})")]
    DigestMismatch {
        /// The reference being pulled.
        reference: String,
        /// Which object: "layer", "config", "manifest", "diff_id of layer".
        what: &'static str,
        /// The digest we were promised.
        expected: String,
        /// The digest we computed.
        actual: String,
    },
    /// A manifest, index or config that is not what the specs allow.
    #[error("pull {reference}: {message}")]
    BadContent {
        /// The reference being pulled.
        reference: String,
        /// What is wrong with it.
        message: String,
    },
    /// A layer failed to unpack.
    #[error("pull {reference}: layer {digest}: {source}")]
    Unpack {
        /// The reference being pulled.
        reference: String,
        /// The layer's compressed digest.
        digest: String,
        /// The unpacker's error.
        #[source]
        source: crate::unpack::UnpackError,
    },
    /// A manifest, config or blob larger than it may be.
    #[error("pull {reference}: {what} is larger than {limit} bytes ({rule})")]
    TooLarge {
        /// The reference being pulled.
        reference: String,
        /// Which object, naming its digest when known.
        what: String,
        /// The cap, in bytes.
        limit: u64,
        /// Where the cap comes from: a setting's name, or why it is fixed.
        rule: &'static str,
    },
    /// The pull ran past its deadline.
    #[error("pull {0}: deadline exceeded")]
    DeadlineExceeded(String),
    /// The pull was cancelled.
    #[error("pull {0}: cancelled")]
    Cancelled(String),
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
            ImageError::Registry { kind, .. } => *kind,
            ImageError::DeadlineExceeded(_) => ErrorKind::DeadlineExceeded,
            ImageError::Cancelled(_) => ErrorKind::Cancelled,
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
            ImageError::Registry {
                reference,
                message,
                kind,
            } => ImageError::Registry {
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
