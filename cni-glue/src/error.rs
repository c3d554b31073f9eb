//! The crate's error type and its kinds.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// What kind of failure a [`CniError`] is, for mapping to wire codes in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The named object (a netns, a cached result) does not exist.
    NotFound,
    /// The object to create is already there.
    AlreadyExists,
    /// The request itself is malformed (a bad id, interface name or config).
    InvalidArgument,
    /// The node is not in a state to do this (no network config, no plugin binary).
    FailedPrecondition,
    /// A plugin says it cannot serve now and the call may be retried later.
    Unavailable,
    /// A plugin did not finish within its timeout.
    DeadlineExceeded,
    /// Anything else: a plugin error, an I/O failure, a bug.
    Internal,
}

/// Errors of network namespaces, CNI config loading, plugin execution and the cache.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// A value given by the caller that cannot be used.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidArgument {
        /// What the value is ("container id", "interface name", ...).
        what: &'static str,
        /// The value as given.
        value: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The network namespace file already exists.
    #[error("netns {0}: already exists")]
    NetnsExists(PathBuf),
    /// The network namespace file does not exist.
    #[error("netns {0}: not found")]
    NetnsNotFound(PathBuf),
    /// A syscall on a network namespace failed.
    #[error("netns {path}: {op}: {source}")]
    Netns {
        /// The netns file.
        path: PathBuf,
        /// What was being done ("unshare", "bind mount", "setns", ...).
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// No usable network config in the config directory.
    #[error("no network config found in {dir}{detail}")]
    NoConfig {
        /// The config directory.
        dir: PathBuf,
        /// Why: empty, or ": directory does not exist", or " (skipped: ...)".
        detail: String,
    },
    /// A network config file that cannot be used.
    #[error("network config {path}: {reason}")]
    InvalidConfig {
        /// The config file (or a description of the bytes' origin).
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A plugin binary is in none of the plugin directories.
    #[error("cni plugin {plugin:?}: not found in {dirs}")]
    PluginNotFound {
        /// The plugin type.
        plugin: String,
        /// The directories searched, joined by ':'.
        dirs: String,
    },
    /// The plugin binary could not be started.
    #[error("cni plugin {plugin} {command}: start {path}: {source}")]
    PluginSpawn {
        /// The plugin type.
        plugin: String,
        /// The CNI command.
        command: &'static str,
        /// The binary.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The plugin did not finish in time and was killed.
    #[error("cni plugin {plugin} {command}: timed out after {timeout:?}")]
    PluginTimeout {
        /// The plugin type.
        plugin: String,
        /// The CNI command.
        command: &'static str,
        /// The timeout that passed.
        timeout: Duration,
    },
    /// The plugin failed and reported a CNI error object on stdout.
    #[error(
        "cni plugin {plugin} {command}: error code {code}: {msg}{}",
        details_suffix(details)
    )]
    Plugin {
        /// The plugin type.
        plugin: String,
        /// The CNI command.
        command: &'static str,
        /// The CNI error code (1-99 are the spec's, 100+ the plugin's).
        code: u32,
        /// The error message.
        msg: String,
        /// The error details.
        details: String,
    },
    /// The plugin failed without a CNI error object.
    #[error("cni plugin {plugin} {command}: {status}{}", stderr_suffix(stderr))]
    PluginFailed {
        /// The plugin type.
        plugin: String,
        /// The CNI command.
        command: &'static str,
        /// How the process ended ("exit status 2", "signal 9").
        status: String,
        /// The end of its stderr.
        stderr: String,
    },
    /// The plugin succeeded but its output is not what the spec says.
    #[error("cni plugin {plugin} {command}: bad output: {reason}")]
    PluginOutput {
        /// The plugin type.
        plugin: String,
        /// The CNI command.
        command: &'static str,
        /// What is wrong with the output.
        reason: String,
    },
    /// A result that cannot be parsed.
    #[error("cni result: {0}")]
    InvalidResult(String),
    /// No cached result for an attachment that needs one.
    #[error(
        "cni network {network}: no cached result for container {container_id} interface {ifname}"
    )]
    CacheMissing {
        /// The network name.
        network: String,
        /// The container id.
        container_id: String,
        /// The interface name.
        ifname: String,
    },
    /// A cache file that cannot be read or written.
    #[error("cni cache {path}: {source}")]
    Cache {
        /// The cache file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A cache file whose content is not a libcni cache entry.
    #[error("cni cache {path}: {reason}")]
    CacheCorrupt {
        /// The cache file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Several failures of one operation (GC of many attachments).
    #[error("{}", join_errors(.0))]
    Multiple(Vec<CniError>),
    /// A bug or an impossible state.
    #[error("internal error: {0}")]
    Internal(String),
}

impl CniError {
    /// The kind of failure, for mapping to a wire code.
    pub fn kind(&self) -> ErrorKind {
        match self {
            CniError::InvalidArgument { .. } | CniError::InvalidConfig { .. } => {
                ErrorKind::InvalidArgument
            }
            CniError::NetnsExists(_) => ErrorKind::AlreadyExists,
            CniError::NetnsNotFound(_) | CniError::CacheMissing { .. } => ErrorKind::NotFound,
            CniError::Netns { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                ErrorKind::NotFound
            }
            CniError::NoConfig { .. } | CniError::PluginNotFound { .. } => {
                ErrorKind::FailedPrecondition
            }
            CniError::PluginTimeout { .. } => ErrorKind::DeadlineExceeded,
            // 11: try again later; 50, 51: the plugin is not available (STATUS).
            CniError::Plugin {
                code: 11 | 50 | 51, ..
            } => ErrorKind::Unavailable,
            CniError::Multiple(errors) => errors.first().map_or(ErrorKind::Internal, Self::kind),
            CniError::Netns { .. }
            | CniError::PluginSpawn { .. }
            | CniError::Plugin { .. }
            | CniError::PluginFailed { .. }
            | CniError::PluginOutput { .. }
            | CniError::InvalidResult(_)
            | CniError::Cache { .. }
            | CniError::CacheCorrupt { .. }
            | CniError::Internal(_) => ErrorKind::Internal,
        }
    }

    /// The CNI error code when a plugin reported one.
    pub fn plugin_code(&self) -> Option<u32> {
        match self {
            CniError::Plugin { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = CniError> = std::result::Result<T, E>;

fn details_suffix(details: &str) -> String {
    if details.is_empty() {
        String::new()
    } else {
        format!(" ({details})")
    }
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!(": stderr: {stderr}")
    }
}

fn join_errors(errors: &[CniError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
