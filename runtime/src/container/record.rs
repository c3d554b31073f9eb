//! Container records and the state derived from their timestamps.
//!
//! ```text
//!   create ──> CREATED ──start──> RUNNING ──(exit, stop, kill)──> EXITED ──remove──> gone
//!                 │                                                  ▲
//!                 └──────────────(monitor saw it die, removed)───────┘
//! ```
//! A record is written durably before the container is created in the runtime
//! (`pid == 0`), so recovery can tell a half-made container and undo it. That is the
//! one durable commit of CreateContainer: the pids the monitor reports, and the start
//! time StartContainer adds, are volatile facts, committed without durability and
//! written to the bundle's volatile file ([`crust_util::store`]); recovery takes them
//! from there when a crash came before the next durable commit. A record with
//! `pid == 0` and no volatile file is still a half-made container. A container made from a
//! checkpoint archive is CREATED with `pid == 0` and [`ContainerRecord::restore`] set:
//! nothing runs until StartContainer restores its processes (see
//! [`crate::container::restore`]).

use std::path::PathBuf;
use std::sync::Arc;

use crust_proto::cri;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
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

/// What a container's record learns after its durable commit, kept beside it in the
/// bundle (see [`crust_util::store`]): the pids once the monitor has created it, the
/// start time once it runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Volatile {
    /// The container's init pid.
    pub pid: i32,
    /// Its start time in clock ticks.
    pub pid_start: u64,
    /// The monitor's pid.
    pub monitor_pid: i32,
    /// The monitor's start time.
    pub monitor_start: u64,
    /// When StartContainer started it.
    pub started_at: Option<i64>,
}

impl Volatile {
    fn of(r: &ContainerRecord) -> Self {
        Volatile {
            pid: r.pid,
            pid_start: r.pid_start,
            monitor_pid: r.monitor_pid,
            monitor_start: r.monitor_start,
            started_at: r.started_at,
        }
    }
}

/// Fills in from the bundle's volatile file what the store lacks (a crash came before
/// the next durable commit); true when it changed the record.
pub fn merge_volatile(r: &mut ContainerRecord) -> bool {
    let Some(v) = crust_util::store::read_volatile(&r.bundle)
        .and_then(|b| serde_json::from_slice::<Volatile>(&b).ok())
    else {
        return false;
    };
    let mut changed = false;
    if r.pid == 0 && v.pid > 0 {
        (r.pid, r.pid_start) = (v.pid, v.pid_start);
        (r.monitor_pid, r.monitor_start) = (v.monitor_pid, v.monitor_start);
        changed = true;
    }
    if r.started_at.is_none() && v.started_at.is_some() && r.pid == v.pid {
        r.started_at = v.started_at;
        changed = true;
    }
    changed
}

/// Writes a record with a durable commit (an fsync), on a blocking thread, not on the
/// async worker that asked for it.
pub async fn put(db: &Arc<Database>, r: &ContainerRecord) -> Result<()> {
    write(db, vec![encode(r)?], Durability::Immediate).await
}

/// Writes a record without a durable commit, and its volatile facts to the bundle
/// first: a crash before the next durable commit loses the commit but not the file.
pub async fn put_deferred(db: &Arc<Database>, r: &ContainerRecord) -> Result<()> {
    let (bundle, volatile) = (
        r.bundle.clone(),
        serde_json::to_vec(&Volatile::of(r)).map_err(store)?,
    );
    let record = encode(r)?;
    let db = Arc::clone(db);
    blocking(move || {
        crust_util::store::write_volatile(&bundle, &volatile).map_err(store)?;
        commit(&db, vec![record], Durability::None)
    })
    .await
}

/// Writes records in one durable commit.
pub async fn put_all(db: &Arc<Database>, records: &[ContainerRecord]) -> Result<()> {
    let rows = records.iter().map(encode).collect::<Result<Vec<_>>>()?;
    write(db, rows, Durability::Immediate).await
}

fn encode(r: &ContainerRecord) -> Result<(String, Vec<u8>)> {
    Ok((r.id.clone(), serde_json::to_vec(r).map_err(store)?))
}

async fn write(
    db: &Arc<Database>,
    rows: Vec<(String, Vec<u8>)>,
    durability: Durability,
) -> Result<()> {
    let db = Arc::clone(db);
    blocking(move || commit(&db, rows, durability)).await
}

fn commit(db: &Database, rows: Vec<(String, Vec<u8>)>, durability: Durability) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut txn = db.begin_write().map_err(store)?;
    txn.set_durability(durability).map_err(store)?;
    {
        let mut table = txn.open_table(CONTAINERS).map_err(store)?;
        for (id, bytes) in &rows {
            table.insert(id.as_str(), bytes.as_slice()).map_err(store)?;
        }
    }
    txn.commit().map_err(store)?;
    crust_util::store::count_commit(matches!(durability, Durability::Immediate));
    Ok(())
}

/// Deletes a record, committing durably on a blocking thread.
pub async fn delete(db: &Arc<Database>, id: &str) -> Result<()> {
    let (db, id) = (Arc::clone(db), id.to_owned());
    blocking(move || {
        let txn = db.begin_write().map_err(store)?;
        txn.open_table(CONTAINERS)
            .map_err(store)?
            .remove(id.as_str())
            .map_err(store)?;
        txn.commit().map_err(store)?;
        crust_util::store::count_commit(true);
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
