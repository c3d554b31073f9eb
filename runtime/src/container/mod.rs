//! Containers: creation under crust-monitor, start, stop, removal, exec, resource
//! updates, and the in-memory index every List/Status call reads.
//!
//! Runtime truth comes from the monitor: crustd watches each monitor through a pidfd
//! and reads its exit file when it ends, so an exit is noticed at once without polling
//! the OCI runtime. Recovery re-adopts containers whose monitor still runs and takes
//! the real exit code of those that ended while crustd was away.

mod checkpoint;
mod exec;
mod interactive;
pub mod record;
pub mod restore;

use std::collections::{HashMap, HashSet};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crust_proto::cri;
use redb::Database;
use tokio::sync::watch;

use crate::keyed_lock::KeyedLocks;
use crate::liveness;
use crate::lowlevel::LowLevelRuntime;
use crate::monitor::{self, MonitorSpawn};
use crate::spec::container::{
    ContainerSpecInput, HostFeatures, PodFilePaths, SandboxNamespaces, build_container_spec,
    parse_signal,
};
use crate::{ErrorKind, RuntimeError};
pub use checkpoint::{CheckpointRequest, DEFAULT_CHECKPOINT_TIMEOUT, find_criu};
pub use exec::ExecOutput;
pub use interactive::{ExecStreams, StreamingExec};
pub use record::{ContainerRecord, RecordedUser, RestoreSource, state};

/// What can go wrong with a container operation.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The request is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// No such container.
    #[error("container {0:?} not found")]
    NotFound(String),
    /// The name is taken in the sandbox.
    #[error("container name {name:?} is reserved for {id}")]
    AlreadyExists {
        /// The reserved name key.
        name: String,
        /// Its owner.
        id: String,
    },
    /// The container is not in a state to do this.
    #[error("container {id}: {message}")]
    State {
        /// The container.
        id: String,
        /// Why not.
        message: String,
    },
    /// The OCI runtime, the monitor or the spec failed.
    #[error("container {id}: {step}: {source}")]
    Runtime {
        /// The container.
        id: String,
        /// What was being done.
        step: &'static str,
        /// The cause (boxed: runtime failures carry their evidence and are large).
        #[source]
        source: Box<RuntimeError>,
    },
    /// A deadline passed.
    #[error("container {id}: {message}")]
    Timeout {
        /// The container.
        id: String,
        /// What timed out.
        message: String,
    },
    /// A checkpoint could not be made: CRIU missing or failing (with the end of its
    /// log), the location taken, the archive not written.
    #[error("container {id}: {message}")]
    Checkpoint {
        /// The container.
        id: String,
        /// What went wrong.
        message: String,
        /// What kind of failure it is.
        kind: ContainerErrorKind,
    },
    /// The metadata store failed.
    #[error("container store: {0}")]
    Store(String),
    /// A file system step failed.
    #[error("container {id}: {step}: {source}")]
    Io {
        /// The container.
        id: String,
        /// What was being done.
        step: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Kinds of [`ContainerError`], for wire codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerErrorKind {
    /// Not found.
    NotFound,
    /// Name taken.
    AlreadyExists,
    /// Bad request.
    InvalidArgument,
    /// Wrong state.
    FailedPrecondition,
    /// Deadline passed.
    DeadlineExceeded,
    /// Anything else.
    Internal,
}

impl ContainerError {
    /// The kind of this error.
    pub fn kind(&self) -> ContainerErrorKind {
        match self {
            ContainerError::Invalid(_) => ContainerErrorKind::InvalidArgument,
            ContainerError::NotFound(_) => ContainerErrorKind::NotFound,
            ContainerError::AlreadyExists { .. } => ContainerErrorKind::AlreadyExists,
            ContainerError::State { .. } => ContainerErrorKind::FailedPrecondition,
            ContainerError::Timeout { .. } => ContainerErrorKind::DeadlineExceeded,
            ContainerError::Runtime { source, .. } => match source.kind() {
                ErrorKind::InvalidArgument => ContainerErrorKind::InvalidArgument,
                ErrorKind::NotFound => ContainerErrorKind::NotFound,
                ErrorKind::FailedPrecondition => ContainerErrorKind::FailedPrecondition,
                ErrorKind::DeadlineExceeded => ContainerErrorKind::DeadlineExceeded,
                _ => ContainerErrorKind::Internal,
            },
            ContainerError::Checkpoint { kind, .. } => *kind,
            ContainerError::Store(_) | ContainerError::Io { .. } => ContainerErrorKind::Internal,
        }
    }
}

/// Result alias for container operations.
pub type Result<T, E = ContainerError> = std::result::Result<T, E>;

/// Nanoseconds since the epoch, now.
use crust_util::time::now_nanos;

/// How the container service is set up.
#[derive(Debug, Clone)]
pub struct ContainerOptions {
    /// Runtime state directory; bundles live in `state/bundles/<id>`.
    pub state: PathBuf,
    /// The crust-monitor binary.
    pub monitor_binary: PathBuf,
    /// OCI runtimes by handler, the same instances the sandboxes use.
    pub runtimes: HashMap<String, Arc<dyn LowLevelRuntime>>,
    /// Where checkpoints are assembled (CRIU images, the rootfs diff): on disk, as
    /// they are as big as the container's memory and changes.
    pub checkpoint_dir: PathBuf,
    /// Where the archives of containers made from checkpoints are extracted, one
    /// directory per container (`<restore_dir>/<id>`, 0700).
    pub restore_dir: PathBuf,
}

/// Everything CreateContainer needs, resolved by the caller.
pub struct CreateRequest {
    /// The sandbox id.
    pub sandbox_id: String,
    /// The sandbox's config.
    pub sandbox_config: cri::PodSandboxConfig,
    /// The container's config.
    pub config: cri::ContainerConfig,
    /// The runtime handler of the sandbox.
    pub runtime_handler: String,
    /// Image id, name as asked, digest reference.
    pub image_id: String,
    /// The image as the request named it.
    pub image_name: String,
    /// The image's digest reference.
    pub image_ref: String,
    /// The image config blob.
    pub image_config: serde_json::Value,
    /// The mounted rootfs.
    pub rootfs: PathBuf,
    /// How to join the pod's namespaces.
    pub namespaces: SandboxNamespaces,
    /// The pod's files.
    pub pod_files: PodFilePaths,
    /// The sandbox's cgroup parent (`/kubepods/...` or a slice).
    pub cgroup_parent: String,
    /// Whether the cgroup driver is systemd.
    pub systemd_cgroup: bool,
    /// Reserved id, when the caller already chose one (to name the rootfs).
    pub id: String,
}

#[derive(Default)]
struct Index {
    by_id: HashMap<String, Arc<ContainerRecord>>,
    names: HashMap<String, String>,
    /// Container ids by sandbox id: a pod's containers without a scan of all.
    by_sandbox: HashMap<String, HashSet<String>>,
}

impl Index {
    /// Adds or replaces a record.
    fn insert(&mut self, record: Arc<ContainerRecord>) {
        self.by_sandbox
            .entry(record.sandbox_id.clone())
            .or_default()
            .insert(record.id.clone());
        self.by_id.insert(record.id.clone(), record);
    }

    /// Drops a record.
    fn remove(&mut self, id: &str) {
        let Some(record) = self.by_id.remove(id) else {
            return;
        };
        if let Some(ids) = self.by_sandbox.get_mut(&record.sandbox_id) {
            ids.remove(id);
            if ids.is_empty() {
                self.by_sandbox.remove(&record.sandbox_id);
            }
        }
    }
}

/// Containers on this node.
pub struct ContainerService {
    db: Arc<Database>,
    options: ContainerOptions,
    index: RwLock<Index>,
    /// Per container: the exit notification (true once exited).
    exits: Mutex<HashMap<String, watch::Sender<bool>>>,
    /// What this node supports (capabilities, AppArmor, cgroup features).
    host: HostFeatures,
    /// Called, synchronously and in order, when a container exits.
    exit_hook: std::sync::OnceLock<ExitHook>,
    /// Serializes read-modify-write of records (an exit racing a start must not be
    /// overwritten by the start's older copy).
    /// Per-container locks for read-modify-writes of a record and its removal.
    locks: KeyedLocks,
    /// Per-container locks held for a whole checkpoint.
    checkpoints: KeyedLocks,
}

/// A callback told the id of each container that exits.
pub type ExitHook = Box<dyn Fn(&str) + Send + Sync>;

/// Detaches the staged read-only trees of a bundle ([`crate::staging`]), off the async
/// workers: unmounting may wait on the filesystem.
async fn unstage_mounts(bundle: &Path) {
    if std::fs::symlink_metadata(bundle.join(crate::staging::STAGING_DIR)).is_err() {
        return;
    }
    let bundle = bundle.to_path_buf();
    let _ = tokio::task::spawn_blocking(move || crate::staging::unstage(&bundle)).await;
}

fn rt(id: &str, step: &'static str) -> impl FnOnce(RuntimeError) -> ContainerError {
    let id = id.to_string();
    move |source| ContainerError::Runtime {
        id,
        step,
        source: Box::new(source),
    }
}

impl ContainerService {
    /// Opens the service and reconciles records with monitors and exit files.
    pub async fn open(db: Arc<Database>, options: ContainerOptions) -> Result<Arc<Self>> {
        let service = Arc::new(ContainerService {
            db,
            options,
            index: RwLock::new(Index::default()),
            exits: Mutex::new(HashMap::new()),
            host: HostFeatures::detect(),
            exit_hook: std::sync::OnceLock::new(),
            locks: KeyedLocks::default(),
            checkpoints: KeyedLocks::default(),
        });
        service.recover().await?;
        service.clean_checkpoint_work().await;
        Ok(service)
    }

    /// Sets the exit callback (once; later calls are ignored). It runs before anyone
    /// waiting in [`ContainerService::stop`] is woken, so exit events precede removals.
    pub fn set_exit_hook(&self, hook: ExitHook) {
        let _ = self.exit_hook.set(hook);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        // Updates are single inserts/removes; a panic cannot leave the index torn.
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    fn runtime(&self, handler: &str) -> Result<Arc<dyn LowLevelRuntime>> {
        self.options.runtimes.get(handler).cloned().ok_or_else(|| {
            ContainerError::Invalid(format!("runtime handler {handler:?} is not configured"))
        })
    }

    fn bundle(&self, id: &str) -> PathBuf {
        self.options.state.join("bundles").join(id)
    }

    fn publish(&self, record: ContainerRecord) -> Arc<ContainerRecord> {
        let record = Arc::new(record);
        self.write().insert(Arc::clone(&record));
        record
    }

    async fn recover(self: &Arc<Self>) -> Result<()> {
        // Records whose volatile facts are only in their bundle: stored durably at the
        // end, in one commit.
        let mut merged = Vec::new();
        for mut r in record::load_all(&self.db)? {
            // A crash between staging and `create` returning leaves the staged trees.
            unstage_mounts(&r.bundle).await;
            // Pids and the start time are committed durably only by the next durable
            // commit after them; a crash before it leaves them in the bundle.
            if record::merge_volatile(&mut r) {
                merged.push(r.id.clone());
            }
            if r.pid == 0 && r.restore.is_none() {
                tracing::info!(container = %r.id, "undoing a container whose creation was interrupted");
                self.release(&r).await;
                record::delete(&self.db, &r.id).await?;
                continue;
            }
            // A restore not started yet has no monitor to watch.
            if r.finished_at.is_none() && !r.restore_pending() {
                if liveness::alive(r.monitor_pid, r.monitor_start) {
                    self.watch(&r.id, r.monitor_pid);
                } else {
                    self.record_exit(&mut r);
                    record::put(&self.db, &r).await?;
                }
            }
            let key = record::name_key(&r.sandbox_id, &r.metadata());
            let mut index = self.write();
            index.names.insert(key, r.id.clone());
            index.insert(Arc::new(r));
        }
        let merged: Vec<ContainerRecord> = merged
            .iter()
            .filter_map(|id| self.get(id))
            .map(|r| (*r).clone())
            .collect();
        if !merged.is_empty() {
            tracing::info!(
                count = merged.len(),
                "stored the pids and start times a crash kept from the store"
            );
            record::put_all(&self.db, &merged).await?;
        }
        Ok(())
    }

    /// Fills in the exit from the monitor's exit file (or marks it unknown).
    fn record_exit(&self, r: &mut ContainerRecord) {
        match monitor::read_exit_file(&r.exit_file()) {
            Some(exit) => {
                r.finished_at = Some(exit.exited_at);
                r.exit_code = Some(exit.exit_code);
                r.reason = if exit.oom_killed {
                    "OOMKilled".into()
                } else if exit.exit_code == 0 {
                    "Completed".into()
                } else {
                    "Error".into()
                };
            }
            None => {
                r.finished_at = Some(now_nanos());
                r.exit_code = Some(255);
                r.reason = "Error".into();
                r.message = "the container's monitor ended without recording an exit status".into();
            }
        }
        if r.started_at.is_none() && r.finished_at.is_some() {
            // Exited without ever starting (removed while created, or the monitor died).
            r.started_at = None;
        }
    }

    fn exit_channel(&self, id: &str) -> watch::Receiver<bool> {
        let mut exits = self.exits.lock().unwrap_or_else(|p| p.into_inner());
        exits
            .entry(id.to_string())
            .or_insert_with(|| watch::channel(false).0)
            .subscribe()
    }

    /// Watches the monitor; when it ends, records the exit.
    fn watch(self: &Arc<Self>, id: &str, monitor_pid: i32) {
        let _ = self.exit_channel(id);
        let weak = Arc::downgrade(self);
        let id = id.to_string();
        tokio::spawn(async move {
            if let Err(e) = liveness::wait_exit(monitor_pid).await {
                tracing::warn!(container = %id, error = %e, "cannot watch the monitor");
                return;
            }
            let Some(service) = weak.upgrade() else {
                return;
            };
            service.on_monitor_exit(&id).await;
        });
    }

    /// Applies `change` to the current record, persists it durably, then publishes it,
    /// under the container's lock: a removed record is never written back.
    async fn update(
        &self,
        id: &str,
        change: impl FnOnce(&mut ContainerRecord),
    ) -> Result<Option<Arc<ContainerRecord>>> {
        self.update_with(id, true, change).await
    }

    /// [`Self::update`] for a change of volatile facts only (see
    /// [`record::put_deferred`]): no durable commit.
    async fn update_deferred(
        &self,
        id: &str,
        change: impl FnOnce(&mut ContainerRecord),
    ) -> Result<Option<Arc<ContainerRecord>>> {
        self.update_with(id, false, change).await
    }

    async fn update_with(
        &self,
        id: &str,
        durable: bool,
        change: impl FnOnce(&mut ContainerRecord),
    ) -> Result<Option<Arc<ContainerRecord>>> {
        let _guard = self.locks.lock(id).await;
        let Some(current) = self.get(id) else {
            return Ok(None);
        };
        let mut r = (*current).clone();
        change(&mut r);
        if durable {
            record::put(&self.db, &r).await?;
        } else {
            record::put_deferred(&self.db, &r).await?;
        }
        Ok(Some(self.publish(r)))
    }

    async fn on_monitor_exit(&self, id: &str) {
        let mut exited = false;
        let result = self
            .update(id, |r| {
                if r.finished_at.is_none() {
                    self.record_exit(r);
                    exited = true;
                }
            })
            .await;
        match result {
            Ok(Some(r)) if exited => {
                tracing::info!(container = %id, code = ?r.exit_code, reason = %r.reason, "container exited");
                if let Some(hook) = self.exit_hook.get() {
                    hook(id);
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(container = %id, error = %e, "cannot record the exit"),
        }
        if let Some(tx) = self.exits.lock().unwrap_or_else(|p| p.into_inner()).get(id) {
            let _ = tx.send(true);
        }
    }

    /// A container by id or unique prefix.
    pub fn get(&self, id: &str) -> Option<Arc<ContainerRecord>> {
        let index = self.read();
        if let Some(r) = index.by_id.get(id) {
            return Some(Arc::clone(r));
        }
        if id.len() < 6 {
            return None;
        }
        let mut it = index.by_id.iter().filter(|(k, _)| k.starts_with(id));
        match (it.next(), it.next()) {
            (Some((_, r)), None) => Some(Arc::clone(r)),
            _ => None,
        }
    }

    /// Every container.
    pub fn list(&self) -> Vec<Arc<ContainerRecord>> {
        self.read().by_id.values().cloned().collect()
    }

    /// How many containers there are.
    pub fn count(&self) -> usize {
        self.read().by_id.len()
    }

    /// Containers of one sandbox.
    pub fn of_sandbox(&self, sandbox_id: &str) -> Vec<Arc<ContainerRecord>> {
        let index = self.read();
        index
            .by_sandbox
            .get(sandbox_id)
            .into_iter()
            .flatten()
            .filter_map(|id| index.by_id.get(id).cloned())
            .collect()
    }

    /// Reserves a container name in a sandbox and an id; returns the id.
    pub fn reserve(&self, sandbox_id: &str, config: &cri::ContainerConfig) -> Result<String> {
        let meta = config
            .metadata
            .as_ref()
            .ok_or_else(|| ContainerError::Invalid("metadata: missing".into()))?;
        if meta.name.is_empty() || meta.name.contains('/') {
            return Err(ContainerError::Invalid(format!(
                "metadata.name: {:?} is empty or has '/'",
                meta.name
            )));
        }
        let key = record::name_key(sandbox_id, meta);
        let id = hex::encode(rand::random::<[u8; 32]>());
        let mut index = self.write();
        if let Some(owner) = index.names.get(&key) {
            return Err(ContainerError::AlreadyExists {
                name: key,
                id: owner.clone(),
            });
        }
        index.names.insert(key, id.clone());
        Ok(id)
    }

    /// Releases a reservation made by [`ContainerService::reserve`] that was not used.
    pub fn unreserve(&self, sandbox_id: &str, config: &cri::ContainerConfig, id: &str) {
        if let Some(meta) = &config.metadata {
            let key = record::name_key(sandbox_id, meta);
            let mut index = self.write();
            if index.names.get(&key).is_some_and(|owner| owner == id) {
                index.names.remove(&key);
            }
        }
    }

    /// Creates a container under its monitor. On failure everything it did is undone
    /// (the caller unmounts the rootfs it mounted and releases the reservation).
    pub async fn create(self: &Arc<Self>, req: CreateRequest) -> Result<Arc<ContainerRecord>> {
        self.create_with(req, None).await
    }

    /// [`Self::create`], or with `restore` the bundle of a container that
    /// StartContainer restores from a checkpoint: no monitor runs until then.
    async fn create_with(
        self: &Arc<Self>,
        req: CreateRequest,
        restore: Option<RestoreSource>,
    ) -> Result<Arc<ContainerRecord>> {
        let id = req.id.clone();
        let runtime = self.runtime(&req.runtime_handler)?;
        let log_dir = req.sandbox_config.log_directory.clone();
        let log_path = match (log_dir.is_empty(), req.config.log_path.is_empty()) {
            (_, true) => PathBuf::new(),
            (true, false) => {
                return Err(ContainerError::Invalid(
                    "log_path given but the sandbox has no log_directory".into(),
                ));
            }
            (false, false) => {
                let rel = Path::new(&req.config.log_path);
                if rel.is_absolute()
                    || rel
                        .components()
                        .any(|c| matches!(c, std::path::Component::ParentDir))
                {
                    return Err(ContainerError::Invalid(format!(
                        "log_path: {:?} must be relative, without ..",
                        req.config.log_path
                    )));
                }
                Path::new(&log_dir).join(rel)
            }
        };
        let cgroups_path = if req.systemd_cgroup {
            let slice = if req.cgroup_parent.is_empty() {
                "system.slice"
            } else {
                req.cgroup_parent.as_str()
            };
            format!("{slice}:crust:{id}")
        } else if req.cgroup_parent.is_empty() {
            format!("/crust/{id}")
        } else {
            format!("{}/{}", req.cgroup_parent.trim_end_matches('/'), id)
        };
        let built = build_container_spec(&ContainerSpecInput {
            id: &id,
            sandbox_id: &req.sandbox_id,
            host: &self.host,
            config: &req.config,
            sandbox_config: &req.sandbox_config,
            image_config: &req.image_config,
            rootfs: &req.rootfs,
            sandbox: req.namespaces.clone(),
            pod_files: req.pod_files.clone(),
            cgroups_path: cgroups_path.clone(),
        })
        .map_err(rt(&id, "spec"))?;
        let bundle = self.bundle(&id);
        let mut record = ContainerRecord {
            version: record::RECORD_VERSION,
            id: id.clone(),
            sandbox_id: req.sandbox_id.clone(),
            config: req.config.clone(),
            image_id: req.image_id,
            image_name: req.image_name,
            image_ref: req.image_ref,
            runtime_handler: req.runtime_handler.clone(),
            log_path,
            bundle: bundle.clone(),
            created_at: now_nanos(),
            started_at: None,
            finished_at: None,
            exit_code: None,
            reason: String::new(),
            message: String::new(),
            pid: 0,
            pid_start: 0,
            monitor_pid: 0,
            monitor_start: 0,
            stop_signal: built
                .stop_signal
                .as_deref()
                .and_then(parse_signal)
                .unwrap_or(libc::SIGTERM),
            user: RecordedUser {
                uid: built.user.uid,
                gid: built.user.gid,
                additional_gids: built.user.additional_gids.clone(),
                username: built.user.username.clone(),
            },
            resources: req.config.linux.as_ref().and_then(|l| l.resources.clone()),
            restore: None,
        };
        record::put(&self.db, &record).await?;
        let outcome = match restore {
            None => {
                self.bring_up(
                    &mut record,
                    &*runtime,
                    &built,
                    &req.rootfs,
                    Path::new(&log_dir),
                )
                .await
            }
            Some(source) => {
                self.prepare_restore(&mut record, &built, &req.rootfs, source)
                    .await
            }
        };
        match outcome {
            Ok(()) => {
                let monitor_pid = record.monitor_pid;
                let published = self.publish(record);
                if monitor_pid > 0 {
                    self.watch(&id, monitor_pid);
                }
                Ok(published)
            }
            Err(e) => {
                self.release(&record).await;
                let _ = record::delete(&self.db, &id).await;
                Err(e)
            }
        }
    }

    async fn bring_up(
        &self,
        record: &mut ContainerRecord,
        runtime: &dyn LowLevelRuntime,
        built: &crate::spec::container::BuiltSpec,
        rootfs: &Path,
        log_dir: &Path,
    ) -> Result<()> {
        self.prepare_bundle(record, built, rootfs)?;
        let spawned_at = std::time::Instant::now();
        self.run_monitor(
            record,
            runtime,
            built.spec.clone(),
            built.userns,
            log_dir,
            None,
        )
        .await?;
        let monitor_took = spawned_at.elapsed();
        let stored_at = std::time::Instant::now();
        // The record was committed durably before the monitor ran; the pids it learnt
        // since are volatile facts (see crust_util::store).
        record::put_deferred(&self.db, record).await?;
        tracing::debug!(container = %record.id, ?monitor_took, store_took = ?stored_at.elapsed(), "container created");
        Ok(())
    }

    /// What a container needs before its runtime runs: missing bind mount sources,
    /// the image's volumes in the rootfs, the bundle directory.
    fn prepare_bundle(
        &self,
        record: &ContainerRecord,
        built: &crate::spec::container::BuiltSpec,
        rootfs: &Path,
    ) -> Result<()> {
        let id = record.id.clone();
        let io = |step: &'static str| {
            let id = id.clone();
            move |source| ContainerError::Io { id, step, source }
        };
        for source in &built.bind_sources {
            if std::fs::symlink_metadata(source).is_err() {
                // 0755 as containerd creates them: a container running as another user
                // must be able to use the mount.
                crate::fsmode::create_dir_all_mode(source, 0o755)
                    .map_err(io("create mount source"))?;
            }
        }
        // The image's volumes, made in the rootfs as containerd does (0755, so any
        // container user can use them), resolved inside it: a layer's symlink must
        // not make root create directories on the host.
        for volume in &built.image_volumes {
            let owner = built.userns.and_then(|m| m.host_root());
            crate::inroot::create_dir_all_in_root(rootfs, volume, 0o755, owner).map_err(|e| {
                ContainerError::Invalid(format!(
                    "container {id}: image volume {volume:?}: cannot create it in the rootfs: {e}"
                ))
            })?;
        }
        match &built.userns {
            // The runtime reaches the staged mounts as the pod's root.
            Some(maps) => crate::fsmode::userns_dir(&record.bundle, maps.gids.host_id)
                .map_err(io("create bundle"))?,
            None => std::fs::create_dir_all(&record.bundle).map_err(io("create bundle"))?,
        }
        Ok(())
    }

    /// Stages the spec's mounts, writes it and starts the container's monitor, which
    /// creates the container (or, with `restore`, restores it from CRIU's images and
    /// work directory); fills in the pids.
    async fn run_monitor(
        &self,
        record: &mut ContainerRecord,
        runtime: &dyn LowLevelRuntime,
        mut spec: oci_spec::runtime::Spec,
        userns: Option<crust_util::userns::IdMappings>,
        log_dir: &Path,
        restore: Option<(PathBuf, PathBuf)>,
    ) -> Result<()> {
        let id = record.id.clone();
        let io = |step: &'static str| {
            let id = id.clone();
            move |source| ContainerError::Io { id, step, source }
        };
        // Recursive read-only and idmapped mounts are made here, for runtimes that
        // cannot make them (runc 1.1).
        let bundle = record.bundle.clone();
        let spec = tokio::task::spawn_blocking(move || {
            let ns = userns.map(|m| m.open_userns()).transpose()?;
            crate::staging::stage(&mut spec, &bundle, ns.as_ref().map(|f| f.as_fd())).map(|()| spec)
        })
        .await
        .map_err(|e| io("stage mounts")(std::io::Error::other(e)))?
        .map_err(io("stage mounts"))?;
        crate::spec::write_spec(&record.bundle, &spec).map_err(rt(&id, "write spec"))?;
        // The monitor creates the log's directory itself, below the pod's log
        // directory and without following symlinks there.
        let spawn = MonitorSpawn {
            binary: self.options.monitor_binary.clone(),
            id: id.clone(),
            bundle: record.bundle.clone(),
            engine: runtime.engine(),
            runtime_root: runtime.root().to_path_buf(),
            log_path: if record.log_path.as_os_str().is_empty() {
                PathBuf::from("/dev/null")
            } else {
                record.log_path.clone()
            },
            log_dir: (!record.log_path.as_os_str().is_empty()).then(|| log_dir.to_path_buf()),
            exit_file: record.exit_file(),
            attach_socket: record.attach_socket(),
            tty: record.config.tty,
            stdin: record.config.stdin,
            stdin_once: record.config.stdin_once,
            systemd_cgroup: runtime.systemd_cgroup(),
            restore: restore.clone(),
        };
        // CRIU takes as long as the memory it restores is big.
        let (timeout, step) = match restore {
            None => (runtime.timeout(), "create"),
            Some(_) => (runtime.timeout().max(DEFAULT_CHECKPOINT_TIMEOUT), "restore"),
        };
        let started = monitor::spawn_monitor(&spawn, timeout).await;
        // Created or not, the container holds its own copy of any staged tree now.
        unstage_mounts(&record.bundle).await;
        let started = started.map_err(rt(&id, step))?;
        record.pid = started.container_pid;
        record.pid_start = liveness::start_time(started.container_pid).unwrap_or(0);
        record.monitor_pid = started.monitor_pid;
        record.monitor_start = liveness::start_time(started.monitor_pid).unwrap_or(0);
        Ok(())
    }

    /// Kills what runs, deletes the runtime state and the bundle. Idempotent.
    async fn release(&self, r: &ContainerRecord) {
        if let Ok(runtime) = self.runtime(&r.runtime_handler) {
            let _ = runtime.kill(&r.id, libc::SIGKILL, true).await;
            if r.monitor_pid > 0 && liveness::alive(r.monitor_pid, r.monitor_start) {
                let _ = tokio::time::timeout(
                    Duration::from_secs(10),
                    liveness::wait_exit(r.monitor_pid),
                )
                .await;
            }
            if let Err(e) = runtime.delete(&r.id, true).await {
                tracing::warn!(container = %r.id, error = %e, "runtime delete");
            }
        }
        // The runtime removes the cgroup it made, except when its own state was already
        // gone (a create interrupted between cgroup setup and state write): do it here.
        let cgroup = self.spec_json(r).and_then(|s| {
            s.pointer("/linux/cgroupsPath")
                .and_then(|p| p.as_str())
                .map(str::to_string)
        });
        unstage_mounts(&r.bundle).await;
        let bundle = r.bundle.clone();
        let restore_dir = r.restore.as_ref().map(|s| s.dir.clone());
        let removed = tokio::task::spawn_blocking(move || {
            if let Some(path) = cgroup {
                crate::stats::cgroup::remove_empty_cgroup(&path);
            }
            if let Some(dir) = restore_dir
                && let Err(e) = std::fs::remove_dir_all(&dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(dir = %dir.display(), error = %e, "remove the extracted checkpoint");
            }
            std::fs::remove_dir_all(&bundle)
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        if let Err(e) = removed
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(container = %r.id, error = %e, "remove bundle");
        }
    }

    /// Starts a created container (restores one made from a checkpoint).
    pub async fn start(self: &Arc<Self>, id: &str) -> Result<()> {
        let r = self
            .get(id)
            .ok_or_else(|| ContainerError::NotFound(id.to_string()))?;
        if state(&r) != cri::ContainerState::ContainerCreated {
            return Err(ContainerError::State {
                id: r.id.clone(),
                message: format!("cannot start: it is {:?}", state(&r)),
            });
        }
        if r.restore_pending() {
            return self.start_restore(&r.id).await;
        }
        let runtime = self.runtime(&r.runtime_handler)?;
        if let Err(e) = runtime.start(&r.id).await {
            // Killed between create and start (a StopContainer meanwhile): a state
            // error, not the runtime failing.
            if !liveness::alive(r.pid, r.pid_start) {
                return Err(ContainerError::State {
                    id: r.id.clone(),
                    message: "cannot start: it was stopped before it started".into(),
                });
            }
            return Err(rt(&r.id, "start")(e));
        }
        // The container may already have exited (and been recorded so): keep that.
        // The start time is a volatile fact: no durable commit on this call.
        self.update_deferred(&r.id, |u| {
            u.started_at.get_or_insert_with(now_nanos);
        })
        .await?;
        Ok(())
    }

    /// Stops a container: its stop signal, then SIGKILL after `timeout` (at once for
    /// 0). Returns once it has exited. Stopping an exited container succeeds.
    pub async fn stop(&self, id: &str, timeout: Duration) -> Result<()> {
        let r = self
            .get(id)
            .ok_or_else(|| ContainerError::NotFound(id.to_string()))?;
        if r.finished_at.is_some() {
            return Ok(());
        }
        if r.restore_pending() {
            return self.stop_unrestored(&r.id).await;
        }
        let runtime = self.runtime(&r.runtime_handler)?;
        let mut exited = self.exit_channel(&r.id);
        if *exited.borrow() {
            return Ok(());
        }
        if !timeout.is_zero() && r.started_at.is_some() {
            runtime
                .kill(&r.id, r.stop_signal, false)
                .await
                .map_err(rt(&r.id, "stop"))?;
            if tokio::time::timeout(timeout, exited.wait_for(|e| *e))
                .await
                .is_ok()
            {
                return Ok(());
            }
        }
        runtime
            .kill(&r.id, libc::SIGKILL, true)
            .await
            .map_err(rt(&r.id, "kill"))?;
        match tokio::time::timeout(Duration::from_secs(30), exited.wait_for(|e| *e)).await {
            Ok(_) => Ok(()),
            Err(_) => Err(ContainerError::Timeout {
                id: r.id.clone(),
                message: "did not exit after SIGKILL".into(),
            }),
        }
    }

    /// Removes a container (killing it if it runs). Logs stay. Unknown ids succeed.
    /// The caller removes the rootfs afterwards.
    pub async fn remove(&self, id: &str) -> Result<Option<Arc<ContainerRecord>>> {
        let Some(r) = self.get(id) else {
            return Ok(None);
        };
        if r.finished_at.is_none() && r.pid > 0 {
            self.stop(&r.id, Duration::ZERO).await?;
        }
        let _guard = self.locks.lock(&r.id).await;
        let Some(current) = self.get(&r.id) else {
            return Ok(None);
        };
        self.release(&current).await;
        record::delete(&self.db, &current.id).await?;
        let key = record::name_key(&current.sandbox_id, &current.metadata());
        let mut index = self.write();
        index.remove(&current.id);
        if index.names.get(&key) == Some(&current.id) {
            index.names.remove(&key);
        }
        drop(index);
        self.exits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&current.id);
        Ok(Some(current))
    }

    /// Applies new resources through the runtime's `update`, then records them.
    pub async fn update_resources(
        &self,
        id: &str,
        resources: cri::LinuxContainerResources,
    ) -> Result<()> {
        let r = self
            .get(id)
            .ok_or_else(|| ContainerError::NotFound(id.to_string()))?;
        if r.finished_at.is_some() {
            return Err(ContainerError::State {
                id: r.id.clone(),
                message: "cannot update an exited container".into(),
            });
        }
        let runtime = self.runtime(&r.runtime_handler)?;
        exec::update(&*runtime, &r, &resources).await?;
        self.update(&r.id, |u| u.resources = Some(resources))
            .await?;
        Ok(())
    }

    /// Makes the monitor reopen the log file (after kubelet renamed it).
    pub async fn reopen_log(&self, id: &str) -> Result<()> {
        let r = self.running(id)?;
        monitor::reopen_log(&r.attach_socket())
            .await
            .map_err(rt(&r.id, "reopen log"))
    }

    /// Runs a command in a running container and collects its output.
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Option<Duration>,
    ) -> Result<ExecOutput> {
        let r = self.running(id)?;
        if cmd.is_empty() {
            return Err(ContainerError::Invalid("cmd: empty".into()));
        }
        let runtime = self.runtime(&r.runtime_handler)?;
        exec::exec_sync(&*runtime, &r, cmd, timeout).await
    }

    /// The running container `id`, or why a request for a running one cannot reach it.
    pub fn running(&self, id: &str) -> Result<Arc<ContainerRecord>> {
        let r = self
            .get(id)
            .ok_or_else(|| ContainerError::NotFound(id.to_string()))?;
        if state(&r) != cri::ContainerState::ContainerRunning {
            return Err(ContainerError::State {
                id: r.id.clone(),
                message: "the container is not running".into(),
            });
        }
        Ok(r)
    }

    /// Starts a command in a running container for a streaming client (see
    /// [`StreamingExec`]).
    pub async fn exec_streaming(
        &self,
        id: &str,
        cmd: Vec<String>,
        streams: ExecStreams,
    ) -> Result<StreamingExec> {
        let r = self.running(id)?;
        if cmd.is_empty() {
            return Err(ContainerError::Invalid("cmd: empty".into()));
        }
        let runtime = self.runtime(&r.runtime_handler)?;
        interactive::spawn(&*runtime, &r, cmd, streams).await
    }

    /// The OCI spec the container was created with (for verbose status).
    pub fn spec_json(&self, r: &ContainerRecord) -> Option<serde_json::Value> {
        let text = std::fs::read(r.bundle.join("config.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }
}
