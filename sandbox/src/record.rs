//! Sandbox records: the persistent table and what each record holds.
//!
//! A record is written durably before the first side effect of RunPodSandbox (with
//! `ready_at == None`), the call's one durable commit, and again when the sandbox is
//! up, without durability and with the facts learnt meanwhile (ready time, IPs, CNI
//! result, pause pid) in the bundle's volatile file ([`crust_util::store`]). A crash
//! before the next durable commit leaves the file, from which recovery takes the ready
//! state; a record with neither is half-made, and recovery undoes it.
//!
//! ```text
//!   run ──> [creating] ──(pause started)──> [ready] ──(stop / pause died)──> [notready]
//!               │                                                              │
//!               └────(crash or failure: undone, record deleted)      remove ──> gone
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use crust_proto::cri;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::error::{Result, SandboxError};

/// Sandbox records by id; values are JSON [`SandboxRecord`]s.
const SANDBOXES: TableDefinition<&str, &[u8]> = TableDefinition::new("sandboxes");

/// Layout version of records written now.
pub const RECORD_VERSION: u32 = 1;

/// Everything crust keeps about one pod sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxRecord {
    /// Layout version.
    pub version: u32,
    /// The sandbox id (64 hex digits).
    pub id: String,
    /// The config kubelet gave, kept whole: labels, annotations, DNS, ports, options.
    pub config: cri::PodSandboxConfig,
    /// The runtime handler (RuntimeClass) it runs under.
    pub runtime_handler: String,
    /// Creation time, nanoseconds since the epoch.
    pub created_at: i64,
    /// When the pause process was up; `None` while being created.
    pub ready_at: Option<i64>,
    /// When StopPodSandbox finished releasing what the sandbox held.
    pub stopped_at: Option<i64>,
    /// When the pause process was seen to have exited on its own.
    #[serde(default)]
    pub exited_at: Option<i64>,
    /// The pinned network namespace; `None` for host-network pods.
    pub netns: Option<PathBuf>,
    /// The pod IP.
    pub ip: String,
    /// Further pod IPs (dual stack).
    pub additional_ips: Vec<String>,
    /// The CNI result of ADD.
    pub cni_result: Option<serde_json::Value>,
    /// The pause process's pid (in the host pid namespace).
    pub pid: i32,
    /// The pause process's start time (clock ticks after boot), to tell it from a reused pid.
    pub pid_start: u64,
    /// The cgroups path the pause process runs in.
    pub cgroups_path: String,
    /// The pod's user namespace mappings; `None`: the host's user namespace.
    #[serde(default)]
    pub userns: Option<crust_util::userns::IdMappings>,
    /// Where the pod's user namespace is pinned (a bind mount of its `ns/user`).
    #[serde(default)]
    pub userns_pin: Option<PathBuf>,
    /// The pod runs no pause process: its namespaces are pinned (see podns.rs) and its
    /// state is this record's.
    #[serde(default)]
    pub without_pause: bool,
    /// Where a pod without a pause pins its IPC namespace; `None`: the host's, or the
    /// pause's.
    #[serde(default)]
    pub ipc_ns: Option<PathBuf>,
    /// Where a pod without a pause pins its UTS namespace; `None`: the host's, or the
    /// pause's.
    #[serde(default)]
    pub uts_ns: Option<PathBuf>,
}

impl SandboxRecord {
    /// The sandbox's metadata (always present: validated at creation).
    pub fn metadata(&self) -> cri::PodSandboxMetadata {
        self.config.metadata.clone().unwrap_or_default()
    }

    /// Whether kubelet sees it READY.
    pub fn is_ready(&self) -> bool {
        self.ready_at.is_some() && self.stopped_at.is_none() && self.exited_at.is_none()
    }

    /// The namespace options of the config, defaults filled in.
    pub fn namespace_options(&self) -> cri::NamespaceOption {
        self.config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone())
            .unwrap_or_default()
    }

    /// Whether the pod uses the host's network.
    pub fn host_network(&self) -> bool {
        self.namespace_options().network == cri::NamespaceMode::Node as i32
    }
}

/// The key that makes sandbox names unique: name, namespace, uid and attempt.
pub fn name_key(m: &cri::PodSandboxMetadata) -> String {
    format!("{}_{}_{}_{}", m.name, m.namespace, m.uid, m.attempt)
}

/// Reads every record.
pub fn load_all(db: &Database) -> Result<Vec<SandboxRecord>> {
    let txn = db.begin_write()?;
    txn.open_table(SANDBOXES)?;
    txn.commit()?;
    let txn = db.begin_read()?;
    let table = txn.open_table(SANDBOXES)?;
    let mut out = Vec::new();
    for row in table.iter()? {
        let (key, value) = row?;
        match serde_json::from_slice::<SandboxRecord>(value.value()) {
            Ok(r) => out.push(r),
            Err(e) => tracing::warn!(id = key.value(), error = %e, "unreadable sandbox record"),
        }
    }
    Ok(out)
}

/// What RunPodSandbox learns after its durable commit, kept in the sandbox's bundle
/// directory too (see [`crust_util::store`]): the pod is up, its IPs, its pause.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Volatile {
    /// When the pod was up.
    pub ready_at: Option<i64>,
    /// The pod IP.
    pub ip: String,
    /// Further pod IPs.
    pub additional_ips: Vec<String>,
    /// The CNI result of ADD.
    pub cni_result: Option<serde_json::Value>,
    /// The pause process's pid.
    pub pid: i32,
    /// Its start time.
    pub pid_start: u64,
}

/// Fills in from `dir`'s volatile file what the store lacks (a crash came before the
/// next durable commit); true when it changed the record.
pub fn merge_volatile(record: &mut SandboxRecord, dir: &std::path::Path) -> bool {
    if record.ready_at.is_some() {
        return false;
    }
    let Some(v) = crust_util::store::read_volatile(dir)
        .and_then(|b| serde_json::from_slice::<Volatile>(&b).ok())
        .filter(|v| v.ready_at.is_some())
    else {
        return false;
    };
    record.ready_at = v.ready_at;
    record.ip = v.ip;
    record.additional_ips = v.additional_ips;
    record.cni_result = v.cni_result;
    record.pid = v.pid;
    record.pid_start = v.pid_start;
    true
}

/// Writes a record with a durable commit (an fsync), on a blocking thread, not on the
/// async worker that asked for it.
pub async fn put(db: &Arc<Database>, record: &SandboxRecord) -> Result<()> {
    let rows = vec![encode(record)?];
    let db = Arc::clone(db);
    blocking(move || commit(&db, rows, Durability::Immediate)).await
}

/// Writes a record without a durable commit, and its volatile facts to `dir` first:
/// a crash before the next durable commit loses the commit but not the file.
pub async fn put_deferred(
    db: &Arc<Database>,
    record: &SandboxRecord,
    dir: &std::path::Path,
) -> Result<()> {
    let volatile = Volatile {
        ready_at: record.ready_at,
        ip: record.ip.clone(),
        additional_ips: record.additional_ips.clone(),
        cni_result: record.cni_result.clone(),
        pid: record.pid,
        pid_start: record.pid_start,
    };
    let volatile = serde_json::to_vec(&volatile)
        .map_err(|e| SandboxError::Store(format!("encode {}: {e}", record.id)))?;
    let (rows, db, dir) = (vec![encode(record)?], Arc::clone(db), dir.to_path_buf());
    blocking(move || {
        std::fs::create_dir_all(&dir)
            .and_then(|()| crust_util::store::write_volatile(&dir, &volatile))
            .map_err(|e| {
                SandboxError::Store(format!("volatile state in {}: {e}", dir.display()))
            })?;
        commit(&db, rows, Durability::None)
    })
    .await
}

/// Writes records in one durable commit.
pub async fn put_all(db: &Arc<Database>, records: &[SandboxRecord]) -> Result<()> {
    let rows = records.iter().map(encode).collect::<Result<Vec<_>>>()?;
    let db = Arc::clone(db);
    blocking(move || commit(&db, rows, Durability::Immediate)).await
}

fn encode(record: &SandboxRecord) -> Result<(String, Vec<u8>)> {
    let bytes = serde_json::to_vec(record)
        .map_err(|e| SandboxError::Store(format!("encode {}: {e}", record.id)))?;
    Ok((record.id.clone(), bytes))
}

fn commit(db: &Database, rows: Vec<(String, Vec<u8>)>, durability: Durability) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut txn = db.begin_write()?;
    txn.set_durability(durability)
        .map_err(|e| SandboxError::Store(format!("durability: {e}")))?;
    {
        let mut table = txn.open_table(SANDBOXES)?;
        for (id, bytes) in &rows {
            table.insert(id.as_str(), bytes.as_slice())?;
        }
    }
    txn.commit()?;
    crust_util::store::count_commit(matches!(durability, Durability::Immediate));
    Ok(())
}

/// Deletes a record, committing durably on a blocking thread.
pub async fn delete(db: &Arc<Database>, id: &str) -> Result<()> {
    let (db, id) = (Arc::clone(db), id.to_owned());
    blocking(move || {
        let txn = db.begin_write()?;
        txn.open_table(SANDBOXES)?.remove(id.as_str())?;
        txn.commit()?;
        crust_util::store::count_commit(true);
        Ok(())
    })
    .await
}

async fn blocking(work: impl FnOnce() -> Result<()> + Send + 'static) -> Result<()> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| SandboxError::Store(format!("store task: {e}")))?
}
