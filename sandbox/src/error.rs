//! The sandbox crate's error type.

/// What kind of failure a [`SandboxError`] is, for mapping to wire codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The sandbox does not exist.
    NotFound,
    /// A sandbox with the same metadata exists.
    AlreadyExists,
    /// The request is malformed.
    InvalidArgument,
    /// The request cannot be served in the current state.
    FailedPrecondition,
    /// A dependency is unavailable.
    Unavailable,
    /// A step ran out of time.
    DeadlineExceeded,
    /// Anything else.
    Internal,
}

/// Errors of pod sandbox operations.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The request is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// A valid request this node cannot honour (a feature it does not have).
    #[error("{0}")]
    Unsupported(String),
    /// No such sandbox.
    #[error("pod sandbox {0:?} not found")]
    NotFound(String),
    /// The name is taken.
    #[error("pod sandbox name {name:?} is reserved for {id}")]
    AlreadyExists {
        /// The reserved name.
        name: String,
        /// The sandbox that holds it.
        id: String,
    },
    /// A step of creating, stopping or removing a sandbox failed.
    #[error("pod sandbox {id}: {step}: {message}")]
    Step {
        /// The sandbox.
        id: String,
        /// Which step: "network namespace", "network setup", "pause start", ...
        step: &'static str,
        /// The cause.
        message: String,
        /// Its kind.
        kind: ErrorKind,
    },
    /// The metadata store failed.
    #[error("sandbox store: {0}")]
    Store(String),
}

impl SandboxError {
    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            SandboxError::Invalid(_) => ErrorKind::InvalidArgument,
            SandboxError::Unsupported(_) => ErrorKind::FailedPrecondition,
            SandboxError::NotFound(_) => ErrorKind::NotFound,
            SandboxError::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            SandboxError::Step { kind, .. } => *kind,
            SandboxError::Store(_) => ErrorKind::Internal,
        }
    }
}

macro_rules! store_error_from {
    ($($t:ty),*) => {$(
        impl From<$t> for SandboxError {
            fn from(e: $t) -> Self {
                SandboxError::Store(e.to_string())
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
pub type Result<T, E = SandboxError> = std::result::Result<T, E>;
