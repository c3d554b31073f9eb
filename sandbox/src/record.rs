//! Sandbox records: the persistent table and what each record holds.
//!
//! A record is written before the first side effect of RunPodSandbox (with
//! `ready_at == None`) and again when the sandbox is up, so that a crash in between
//! leaves a record that recovery recognizes as half-made and undoes.
//!
//! ```text
//!   run ──> [creating] ──(pause started)──> [ready] ──(stop / pause died)──> [notready]
//!               │                                                              │
//!               └────(crash or failure: undone, record deleted)      remove ──> gone
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use crust_proto::cri;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
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

/// Writes a record. The durable commit (an fsync) runs on a blocking thread, not on
/// the async worker that asked for it.
pub async fn put(db: &Arc<Database>, record: &SandboxRecord) -> Result<()> {
    let bytes = serde_json::to_vec(record)
        .map_err(|e| SandboxError::Store(format!("encode {}: {e}", record.id)))?;
    let (db, id) = (Arc::clone(db), record.id.clone());
    blocking(move || {
        let txn = db.begin_write()?;
        txn.open_table(SANDBOXES)?
            .insert(id.as_str(), bytes.as_slice())?;
        txn.commit()?;
        Ok(())
    })
    .await
}

/// Deletes a record, committing on a blocking thread.
pub async fn delete(db: &Arc<Database>, id: &str) -> Result<()> {
    let (db, id) = (Arc::clone(db), id.to_owned());
    blocking(move || {
        let txn = db.begin_write()?;
        txn.open_table(SANDBOXES)?.remove(id.as_str())?;
        txn.commit()?;
        Ok(())
    })
    .await
}

async fn blocking(work: impl FnOnce() -> Result<()> + Send + 'static) -> Result<()> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| SandboxError::Store(format!("store task: {e}")))?
}
