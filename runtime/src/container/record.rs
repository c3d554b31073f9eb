//! Container records and the state derived from their timestamps.
//!
//! ```text
//!   create ──> CREATED ──start──> RUNNING ──(exit, stop, kill)──> EXITED ──remove──> gone
//!                 │                                                  ▲
//!                 └──────────────(monitor saw it die, removed)───────┘
//! ```
//! A record is written before the container is created in the runtime (`pid == 0`),
//! so recovery can tell a half-made container and undo it. A container made from a
//! checkpoint archive is CREATED with `pid == 0` and [`ContainerRecord::restore`] set:
//! nothing runs until StartContainer restores its processes (see
//! [`crate::container::restore`]).

use std::path::PathBuf;
use std::sync::Arc;

use crust_proto::cri;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{ContainerError, Result};

/// Container records by id; values are JSON [`ContainerRecord`]s.
const CONTAINERS: TableDefinition<&str, &[u8]> = TableDefinition::new("containers");

/// Layout version of records written now.
pub const RECORD_VERSION: u32 = 1;

/// The user a container runs as, as resolved at creation.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecordedUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups.
    pub additional_gids: Vec<u32>,
    /// The user name when the container names one.
    pub username: Option<String>,
}

/// Everything crust keeps about one container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// Layout version.
    pub version: u32,
    /// The container id (64 hex digits).
    pub id: String,
    /// The sandbox it belongs to.
    pub sandbox_id: String,
    /// The config kubelet gave, kept whole (labels, annotations, mounts, ...).
    pub config: cri::ContainerConfig,
    /// The image id it runs.
    pub image_id: String,
    /// The image as the request named it.
    pub image_name: String,
    /// The image's digest reference (`repo@sha256:…`) when known.
    pub image_ref: String,
    /// The runtime handler.
    pub runtime_handler: String,
    /// The CRI log file.
    pub log_path: PathBuf,
    /// The bundle directory.
    pub bundle: PathBuf,
    /// Creation time, ns since the epoch.
    pub created_at: i64,
    /// Start time.
    pub started_at: Option<i64>,
    /// Exit time.
    pub finished_at: Option<i64>,
    /// Exit code once exited.
    pub exit_code: Option<i32>,
    /// `Completed`, `Error` or `OOMKilled` once exited.
    pub reason: String,
    /// A human-readable explanation of the exit, when there is one.
    pub message: String,
    /// The container's init pid on the host (0 while being created).
    pub pid: i32,
    /// Its start time in clock ticks, to tell it from a reused pid.
    pub pid_start: u64,
    /// The monitor's pid.
    pub monitor_pid: i32,
    /// The monitor's start time.
    pub monitor_start: u64,
    /// The signal that stops it (the image's StopSignal or SIGTERM).
    pub stop_signal: i32,
    /// The resolved user.
    pub user: RecordedUser,
    /// The resources in force (after UpdateContainerResources).
    pub resources: Option<cri::LinuxContainerResources>,
    /// Set for a container made from a checkpoint archive (kept once it runs, so a
    /// checkpoint of it says it was restored).
    #[serde(default)]
    pub restore: Option<RestoreSource>,
}

/// Where a container made from a checkpoint archive restores from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RestoreSource {
    /// The archive's extracted members (`checkpoint/` holds CRIU's images; CRIU's
    /// `restore.log` is written here too), private to crust.
    pub dir: PathBuf,
    /// The archive it came from, as CreateContainer named it.
    pub archive: String,
    /// When the archive's container was checkpointed (RFC 3339, from config.dump).
    pub checkpointed_at: String,
    /// The pod's log directory, below which the monitor opens the container's log.
    pub log_dir: PathBuf,
}

/// The CRI state of a record.
pub fn state(r: &ContainerRecord) -> cri::ContainerState {
    if r.finished_at.is_some() {
        cri::ContainerState::ContainerExited
    } else if r.started_at.is_some() {
        cri::ContainerState::ContainerRunning
    } else if r.pid > 0 || r.restore_pending() {
        cri::ContainerState::ContainerCreated
    } else {
        cri::ContainerState::ContainerUnknown
    }
}

impl ContainerRecord {
    /// The metadata (validated at creation).
    pub fn metadata(&self) -> cri::ContainerMetadata {
        self.config.metadata.clone().unwrap_or_default()
    }

    /// Whether this is a container made from a checkpoint whose processes have not
    /// been restored yet (StartContainer restores them).
    pub fn restore_pending(&self) -> bool {
        self.restore.is_some() && self.pid == 0 && self.finished_at.is_none()
    }

    /// Attach socket path.
    pub fn attach_socket(&self) -> PathBuf {
        self.bundle.join("attach")
    }

    /// Exit file path.
    pub fn exit_file(&self) -> PathBuf {
        self.bundle.join("exit")
    }
}

/// The key that makes names unique within a sandbox.
pub fn name_key(sandbox_id: &str, m: &cri::ContainerMetadata) -> String {
    format!("{sandbox_id}/{}/{}", m.name, m.attempt)
}

/// Reads every record.
pub fn load_all(db: &Database) -> Result<Vec<ContainerRecord>> {
    let txn = db.begin_write().map_err(store)?;
    txn.open_table(CONTAINERS).map_err(store)?;
    txn.commit().map_err(store)?;
    let txn = db.begin_read().map_err(store)?;
    let table = txn.open_table(CONTAINERS).map_err(store)?;
    let mut out = Vec::new();
    for row in table.iter().map_err(store)? {
        let (k, v) = row.map_err(store)?;
        match serde_json::from_slice::<ContainerRecord>(v.value()) {
            Ok(r) => out.push(r),
            Err(e) => tracing::warn!(id = k.value(), error = %e, "unreadable container record"),
        }
    }
    Ok(out)
}

/// Writes a record. The durable commit (an fsync) runs on a blocking thread, not on
/// the async worker that asked for it.
pub async fn put(db: &Arc<Database>, r: &ContainerRecord) -> Result<()> {
    let bytes = serde_json::to_vec(r).map_err(store)?;
    let (db, id) = (Arc::clone(db), r.id.clone());
    blocking(move || {
        let txn = db.begin_write().map_err(store)?;
        txn.open_table(CONTAINERS)
            .map_err(store)?
            .insert(id.as_str(), bytes.as_slice())
            .map_err(store)?;
        txn.commit().map_err(store)?;
        Ok(())
    })
    .await
}

/// Deletes a record, committing on a blocking thread.
pub async fn delete(db: &Arc<Database>, id: &str) -> Result<()> {
    let (db, id) = (Arc::clone(db), id.to_owned());
    blocking(move || {
        let txn = db.begin_write().map_err(store)?;
        txn.open_table(CONTAINERS)
            .map_err(store)?
            .remove(id.as_str())
            .map_err(store)?;
        txn.commit().map_err(store)?;
        Ok(())
    })
    .await
}

async fn blocking(work: impl FnOnce() -> Result<()> + Send + 'static) -> Result<()> {
    tokio::task::spawn_blocking(work).await.map_err(store)?
}

fn store(e: impl std::fmt::Display) -> ContainerError {
    ContainerError::Store(e.to_string())
}
