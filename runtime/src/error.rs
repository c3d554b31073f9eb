//! The crate's error type and its kinds.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// What kind of failure a [`RuntimeError`] is, for mapping to wire codes in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The container does not exist (in the OCI runtime's state).
    NotFound,
    /// The request itself is malformed (a bad id, sysctl, mount or spec field).
    InvalidArgument,
    /// The container is not in a state to do this (not running, not stopped, its id
    /// already taken in the runtime's state), or the node is not set up for it (no
    /// runtime binary).
    FailedPrecondition,
    /// The OCI runtime could not serve now; the call may be retried.
    Unavailable,
    /// The OCI runtime did not finish within its timeout and was killed.
    DeadlineExceeded,
    /// Anything else: a runtime failure, an I/O error, a bug.
    Internal,
}

/// Errors of the OCI runtime driver, spec building and the pause rootfs.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A value given by the caller that cannot be used.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidArgument {
        /// What the value is ("container id", "mount destination", ...).
        what: &'static str,
        /// The value as given.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// A valid request the node cannot honour as asked (a missing security feature).
    #[error("{what}: {reason}")]
    Unsupported {
        /// What was asked for.
        what: &'static str,
        /// Why it cannot be done here.
        reason: String,
    },
    /// A sysctl that the pod may not set.
    #[error("sysctl {name}: {reason}")]
    Sysctl {
        /// The sysctl's name as given.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The OCI runtime binary could not be started.
    #[error("oci runtime {runtime} {command} {id}: start {binary}: {source}")]
    Spawn {
        /// The runtime's name (its binary's file name).
        runtime: String,
        /// The subcommand ("create", "start", ...).
        command: &'static str,
        /// The container id.
        id: String,
        /// The binary that was executed.
        binary: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The OCI runtime ran and failed (boxed: the evidence is large).
    #[error("{0}")]
    Failed(Box<Failure>),
    /// The OCI runtime did not finish in time and was killed with its process group.
    #[error("oci runtime {runtime} {command} {id}: timed out after {timeout:?}")]
    Timeout {
        /// The runtime's name (its binary's file name).
        runtime: String,
        /// The subcommand ("create", "start", ...).
        command: &'static str,
        /// The container id.
        id: String,
        /// The timeout that passed.
        timeout: Duration,
    },
    /// The OCI runtime succeeded but printed something we cannot use.
    #[error("oci runtime {runtime} {command} {id}: bad output: {reason}")]
    BadOutput {
        /// The runtime's name (its binary's file name).
        runtime: String,
        /// The subcommand ("state", ...).
        command: &'static str,
        /// The container id.
        id: String,
        /// What is wrong with the output.
        reason: String,
    },
    /// A file operation failed (writing config.json, reading log.json, ...).
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("write spec", "create log file", ...).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A container's monitor failed before it reported the container created (not
    /// the OCI runtime: that is [`RuntimeError::Failed`]), or broke its protocol.
    #[error("monitor of {id}: {reason}")]
    Monitor {
        /// The container id.
        id: String,
        /// What went wrong.
        reason: String,
    },
    /// A spec that the oci-spec crate refused to build or serialize.
    #[error("oci spec for {id}: {reason}")]
    Spec {
        /// The container id.
        id: String,
        /// What went wrong.
        reason: String,
    },
}

/// What a failed OCI runtime call left as evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The runtime's name (its binary's file name).
    pub runtime: String,
    /// The subcommand ("create", "start", ...).
    pub command: &'static str,
    /// The container id.
    pub id: String,
    /// The whole command line, for logs.
    pub args: Vec<String>,
    /// How the process ended ("exit status 1", "killed by signal 9").
    pub status: String,
    /// The end of its stderr (empty for `create`, whose stdio is /dev/null).
    pub stderr: String,
    /// The last `"level":"error"` message the call wrote to its log.json.
    pub log_error: Option<String>,
    /// What the failure means, read from the runtime's message.
    pub kind: ErrorKind,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "oci runtime {} {} {}: {}{}",
            self.runtime,
            self.command,
            self.id,
            self.status,
            failure_detail(self.log_error.as_deref(), &self.stderr)
        )
    }
}

/// Result with [`RuntimeError`].
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

impl RuntimeError {
    /// The kind of failure, for mapping to a wire code.
    pub fn kind(&self) -> ErrorKind {
        match self {
            RuntimeError::InvalidArgument { .. } | RuntimeError::Sysctl { .. } => {
                ErrorKind::InvalidArgument
            }
            RuntimeError::Spawn { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                ErrorKind::FailedPrecondition
            }
            RuntimeError::Failed(failure) => failure.kind,
            RuntimeError::Unsupported { .. } => ErrorKind::FailedPrecondition,
            RuntimeError::Timeout { .. } => ErrorKind::DeadlineExceeded,
            RuntimeError::Spawn { .. }
            | RuntimeError::BadOutput { .. }
            | RuntimeError::Io { .. }
            | RuntimeError::Monitor { .. }
            | RuntimeError::Spec { .. } => ErrorKind::Internal,
        }
    }

    pub(crate) fn invalid(what: &'static str, value: &str, reason: impl Into<String>) -> Self {
        RuntimeError::InvalidArgument {
            what,
            value: value.to_owned(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        RuntimeError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// `: <log error>` and the stderr when it says something the log line does not.
fn failure_detail(log_error: Option<&str>, stderr: &str) -> String {
    let stderr = stderr.trim();
    match log_error {
        Some(log) if stderr.is_empty() || stderr.contains(log) => format!(": {log}"),
        Some(log) => format!(": {log} (stderr: {stderr})"),
        None if stderr.is_empty() => String::new(),
        None => format!(": {stderr}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(log_error: Option<&str>, stderr: &str) -> RuntimeError {
        RuntimeError::Failed(Box::new(Failure {
            runtime: "runc".into(),
            command: "start",
            id: "c1".into(),
            args: vec![],
            status: "exit status 1".into(),
            stderr: stderr.into(),
            log_error: log_error.map(str::to_owned),
            kind: ErrorKind::Internal,
        }))
    }

    #[test]
    fn failure_message_prefers_the_log_line_and_keeps_distinct_stderr() {
        assert_eq!(
            failed(Some("container not running"), "container not running\n").to_string(),
            "oci runtime runc start c1: exit status 1: container not running"
        );
        assert_eq!(
            failed(Some("boom"), "panic: something else").to_string(),
            "oci runtime runc start c1: exit status 1: boom (stderr: panic: something else)"
        );
        assert_eq!(
            failed(None, "only stderr\n").to_string(),
            "oci runtime runc start c1: exit status 1: only stderr"
        );
        assert_eq!(
            failed(None, "").to_string(),
            "oci runtime runc start c1: exit status 1"
        );
    }

    #[test]
    fn kinds() {
        assert_eq!(
            RuntimeError::invalid("container id", "-x", "bad").kind(),
            ErrorKind::InvalidArgument
        );
        let spawn = RuntimeError::Spawn {
            runtime: "runc".into(),
            command: "state",
            id: "c1".into(),
            binary: "/nope/runc".into(),
            source: io::Error::from(io::ErrorKind::NotFound),
        };
        assert_eq!(spawn.kind(), ErrorKind::FailedPrecondition);
        let timeout = RuntimeError::Timeout {
            runtime: "runc".into(),
            command: "create",
            id: "c1".into(),
            timeout: Duration::from_secs(1),
        };
        assert_eq!(timeout.kind(), ErrorKind::DeadlineExceeded);
    }
}
