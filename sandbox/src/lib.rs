//! Pod sandboxes: the network namespace, CNI, the pause process and the pod files.
//!
//! [`SandboxService`] runs, stops, removes and lists sandboxes. Every query is served
//! from memory; records live in the daemon's redb database (table `sandboxes`).
//! Creation persists a record before its first side effect, so a crash halfway leaves
//! something recovery can find and undo; every undo step is idempotent, and the same
//! release path serves a failed run, a stop, a removal and recovery.
#![deny(missing_docs)]

pub mod error;

pub mod podfiles;
mod podns;
pub mod record;
mod validate;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crust_cni::{Cni, PodNetwork, PortMapping, Protocol};
use crust_proto::cri;
use crust_runtime::liveness;
use crust_runtime::oci::{CreateOptions, OciRuntime};
use crust_runtime::pause_spec::{self, NamespaceMode as NsMode, PidMode, SandboxSpec};
use crust_runtime::{Embedded, LowLevelRuntime};
use redb::Database;

pub use error::{ErrorKind, Result, SandboxError};
use podfiles::PodFiles;
pub use record::SandboxRecord;
use record::name_key;

/// Nanoseconds since the epoch, now.
pub(crate) use crust_util::time::now_nanos;

/// The user namespace mappings a pod config asks for (checked as RunPodSandbox checks
/// them); `None`: the node's user namespace.
pub fn user_namespace_of(
    config: &cri::PodSandboxConfig,
) -> Result<Option<crust_util::userns::IdMappings>> {
    validate::pod_mappings(config)
}

/// A pause process from a pause image instead of crust's built-in one.
#[derive(Debug, Clone)]
pub struct PauseProcess {
    /// The image's mounted rootfs.
    pub rootfs: PathBuf,
    /// Its command (the image's entrypoint and cmd).
    pub args: Vec<String>,
    /// Its environment.
    pub env: Vec<String>,
}

/// Cgroup drivers: how `cgroup_parent` and the pause's cgroups path are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupDriver {
    /// File-system paths.
    Cgroupfs,
    /// systemd slices.
    Systemd,
}

/// What runs a runtime handler's containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handler {
    /// A runc-compatible OCI runtime binary (runc, crun, youki).
    Oci(PathBuf),
    /// libcontainer, in crust-monitor and crustd.
    Embedded,
}

/// How the sandbox service is set up.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// Persistent root (pod files live under `root/sandboxes`).
    pub root: PathBuf,
    /// Runtime state (bundles, shm mounts, netns, the pause rootfs).
    pub state: PathBuf,
    /// The low-level runtime of each runtime handler, by name.
    pub runtimes: BTreeMap<String, Handler>,
    /// crust-monitor, which the embedded handler runs for what forks.
    pub monitor_binary: PathBuf,
    /// The handler used when a request names none.
    pub default_runtime: String,
    /// The handler that runs pods with a user namespace when theirs is embedded
    /// (libcontainer 0.7's exec does not join the container's user namespace); `None`:
    /// such pods are refused on embedded handlers.
    pub user_namespace_runtime: Option<String>,
    /// The cgroup driver.
    pub cgroup_driver: CgroupDriver,
    /// Run no pause process for pods that need none (no shared PID namespace, no user
    /// namespace), as CRI-O's `drop_infra_ctr`.
    pub drop_infra: bool,
}

#[derive(Default)]
struct Index {
    by_id: HashMap<String, Arc<SandboxRecord>>,
    names: HashMap<String, String>,
}

/// Pod sandboxes on this node.
pub struct SandboxService {
    db: Arc<Database>,
    options: SandboxOptions,
    cni: Arc<Cni>,
    runtimes: HashMap<String, Arc<dyn LowLevelRuntime>>,
    pause_rootfs: PathBuf,
    index: RwLock<Index>,
    /// Serializes stop and remove per sandbox.
    locks: crust_runtime::keyed_lock::KeyedLocks,
}

fn step(
    id: &str,
    step: &'static str,
    kind: ErrorKind,
    message: impl std::fmt::Display,
) -> SandboxError {
    SandboxError::Step {
        id: id.to_string(),
        step,
        message: message.to_string(),
        kind,
    }
}

fn runtime_kind(e: &crust_runtime::RuntimeError) -> ErrorKind {
    use crust_runtime::ErrorKind as K;
    match e.kind() {
        K::NotFound => ErrorKind::NotFound,
        K::InvalidArgument => ErrorKind::InvalidArgument,
        K::FailedPrecondition => ErrorKind::FailedPrecondition,
        K::Unavailable => ErrorKind::Unavailable,
        K::DeadlineExceeded => ErrorKind::DeadlineExceeded,
        K::Internal => ErrorKind::Internal,
    }
}

fn cni_kind(e: &crust_cni::error::CniError) -> ErrorKind {
    use crust_cni::error::ErrorKind as K;
    match e.kind() {
        K::NotFound => ErrorKind::NotFound,
        K::AlreadyExists => ErrorKind::AlreadyExists,
        K::InvalidArgument => ErrorKind::InvalidArgument,
        K::FailedPrecondition => ErrorKind::FailedPrecondition,
        K::Unavailable => ErrorKind::Unavailable,
        K::DeadlineExceeded => ErrorKind::DeadlineExceeded,
        K::Internal => ErrorKind::Internal,
    }
}

impl SandboxService {
    /// Opens the service: installs the pause rootfs, loads records and reconciles them
    /// with what runs (half-made sandboxes are undone, dead pause processes noticed).
    pub async fn open(
        db: Arc<Database>,
        options: SandboxOptions,
        cni: Arc<Cni>,
    ) -> Result<Arc<Self>> {
        let io = |what: &str, e: std::io::Error| SandboxError::Store(format!("{what}: {e}"));
        let pause_rootfs = crust_runtime::install_pause_rootfs(&options.state.join("pause"))
            .map_err(|e| io("install the pause rootfs", e))?;
        let mut runtimes = HashMap::new();
        let systemd = options.cgroup_driver == CgroupDriver::Systemd;
        for (name, handler) in &options.runtimes {
            let root = options.state.join("runtime").join(name);
            std::fs::create_dir_all(&root).map_err(|e| io("create runtime root", e))?;
            let runtime: Arc<dyn LowLevelRuntime> = match handler {
                Handler::Oci(binary) => {
                    // A runc without the Leaky Vessels fix is refused before it runs
                    // anything.
                    let checked = binary.clone();
                    let version = tokio::task::spawn_blocking(move || {
                        crust_runtime::oci_version::check(&checked)
                    })
                    .await
                    .map_err(|e| SandboxError::Invalid(format!("runtime check: {e}")))?
                    .map_err(|e| SandboxError::Invalid(format!("runtime handler {name:?}: {e}")))?;
                    tracing::info!(handler = %name, runtime = %version.name, version = %version.version, commit = %version.commit, "runtime handler");
                    Arc::new(
                        OciRuntime::new(binary.clone(), root)
                            .with_bundle_dir(options.state.join("bundles"))
                            .with_systemd_cgroup(systemd),
                    )
                }
                Handler::Embedded => {
                    tracing::info!(handler = %name, runtime = "embedded (libcontainer)", monitor = %options.monitor_binary.display(), "runtime handler");
                    Arc::new(
                        Embedded::new(options.monitor_binary.clone(), root)
                            .with_bundle_dir(options.state.join("bundles"))
                            .with_systemd_cgroup(systemd),
                    )
                }
            };
            runtimes.insert(name.clone(), runtime);
        }
        if !runtimes.contains_key(&options.default_runtime) {
            return Err(SandboxError::Invalid(format!(
                "default runtime {:?} is not configured",
                options.default_runtime
            )));
        }
        let service = Arc::new(SandboxService {
            db,
            options,
            cni,
            runtimes,
            pause_rootfs,
            index: RwLock::new(Index::default()),
            locks: Default::default(),
        });
        service.recover().await?;
        Ok(service)
    }

    fn index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        // Index updates are single inserts and removes; a panic cannot leave it torn.
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    fn index_mut(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the lock of sandbox `id` (full id or unique prefix); `None` if there is
    /// no such sandbox. Whoever changes a pod, its containers included, holds it: a
    /// container create then either finishes before a stop or remove of its pod (which
    /// then tears it down) or sees the pod stopped.
    pub async fn lock(&self, id: &str) -> Option<SandboxLock> {
        let id = self.get(id)?.id.clone();
        let guard = self.locks.lock(&id).await;
        Some(SandboxLock { id, _guard: guard })
    }

    async fn recover(self: &Arc<Self>) -> Result<()> {
        let cni = Arc::clone(&self.cni);
        if let Ok(n) = tokio::task::spawn_blocking(move || cni.remove_stale_temporaries()).await
            && n > 0
        {
            tracing::info!(count = n, "removed interrupted CNI cache writes");
        }
        // Records whose ready state was only in their bundle: stored durably at the
        // end, in one commit.
        let mut merged = Vec::new();
        for mut record in record::load_all(&self.db)? {
            let meta = record.metadata();
            // The ready state is committed durably only by the next durable commit
            // after RunPodSandbox; a crash before it leaves it in the bundle.
            let bundle = self.bundle(&record.id);
            if record::merge_volatile(&mut record, &bundle) {
                merged.push(record.id.clone());
            }
            if record.ready_at.is_none() {
                tracing::info!(sandbox = %record.id, "undoing a sandbox whose creation was interrupted");
                let errors = self.release(&record, true).await;
                if errors.is_empty() {
                    record::delete(&self.db, &record.id).await?;
                    continue;
                }
                // Could not undo everything: keep it NotReady for kubelet to remove.
                tracing::warn!(sandbox = %record.id, ?errors, "interrupted sandbox not fully undone");
                record.stopped_at.get_or_insert_with(now_nanos);
            } else if record.stopped_at.is_none()
                && record.exited_at.is_none()
                && !record.without_pause
            {
                if liveness::alive(record.pid, record.pid_start) {
                    let id = record.id.clone();
                    self.watch(&id, record.pid);
                } else {
                    tracing::info!(sandbox = %record.id, pid = record.pid, "pause process died while crustd was away");
                    record.exited_at = Some(now_nanos());
                    record::put(&self.db, &record).await?;
                }
            }
            if record.without_pause
                && record.stopped_at.is_none()
                && record.exited_at.is_none()
                && record.ready_at.is_some()
                && !namespaces_pinned(&record)
            {
                // A reboot emptied the state directory: the pod's namespaces are gone.
                tracing::info!(sandbox = %record.id, "the namespaces of a pod without a pause are gone");
                record.exited_at = Some(now_nanos());
                record::put(&self.db, &record).await?;
            }
            let mut index = self.index_mut();
            index.names.insert(name_key(&meta), record.id.clone());
            index.by_id.insert(record.id.clone(), Arc::new(record));
        }
        let merged: Vec<SandboxRecord> = merged
            .iter()
            .filter_map(|id| self.get(id))
            .map(|r| (*r).clone())
            .collect();
        if !merged.is_empty() {
            tracing::info!(
                count = merged.len(),
                "stored the ready state a crash kept from the store"
            );
            record::put_all(&self.db, &merged).await?;
        }
        Ok(())
    }

    /// Watches the pause process and marks the sandbox NotReady when it exits.
    fn watch(self: &Arc<Self>, id: &str, pid: i32) {
        let weak = Arc::downgrade(self);
        let id = id.to_string();
        tokio::spawn(async move {
            if let Err(e) = liveness::wait_exit(pid).await {
                tracing::warn!(sandbox = %id, pid, error = %e, "cannot watch the pause process");
                return;
            }
            let Some(service) = weak.upgrade() else {
                return;
            };
            service.mark_exited(&id).await;
        });
    }

    /// Records the pause's exit under the sandbox's lock, so that it cannot overwrite
    /// a concurrent stop, or bring back a record that a remove has just deleted.
    async fn mark_exited(&self, id: &str) {
        let _guard = self.locks.lock(id).await;
        let Some(current) = self.get(id) else { return };
        if current.exited_at.is_some() || current.stopped_at.is_some() {
            return;
        }
        let mut updated = (*current).clone();
        updated.exited_at = Some(now_nanos());
        if let Err(e) = record::put(&self.db, &updated).await {
            tracing::warn!(sandbox = %id, error = %e, "cannot record the pause exit");
        }
        tracing::info!(sandbox = %id, "pause process exited; sandbox is not ready");
        self.index_mut()
            .by_id
            .insert(id.to_string(), Arc::new(updated));
    }

    /// A sandbox by id (full id or unique prefix).
    pub fn get(&self, id: &str) -> Option<Arc<SandboxRecord>> {
        let index = self.index();
        if let Some(r) = index.by_id.get(id) {
            return Some(Arc::clone(r));
        }
        if id.len() < 6 {
            return None;
        }
        let mut matches = index.by_id.iter().filter(|(k, _)| k.starts_with(id));
        match (matches.next(), matches.next()) {
            (Some((_, r)), None) => Some(Arc::clone(r)),
            _ => None,
        }
    }

    /// The OCI runtimes by handler, shared with the container service.
    pub fn runtimes(&self) -> HashMap<String, Arc<dyn LowLevelRuntime>> {
        self.runtimes.clone()
    }

    /// The pod's files (hostname, hosts, resolv.conf, shm).
    pub fn pod_files(&self, id: &str) -> PodFiles {
        self.files(id)
    }

    /// Every sandbox.
    pub fn list(&self) -> Vec<Arc<SandboxRecord>> {
        self.index().by_id.values().cloned().collect()
    }

    /// Whether pod networking is configured (Status's NetworkReady).
    pub fn network_ready(&self) -> std::result::Result<(), String> {
        self.cni.network_ready().map_err(|e| e.to_string())
    }

    fn runtime(&self, handler: &str) -> Result<(String, Arc<dyn LowLevelRuntime>)> {
        let name = if handler.is_empty() {
            self.options.default_runtime.as_str()
        } else {
            handler
        };
        self.runtimes
            .get(name)
            .map(|r| (name.to_string(), Arc::clone(r)))
            .ok_or_else(|| {
                SandboxError::Invalid(format!("runtime handler {name:?} is not configured"))
            })
    }

    /// The runtime of `handler` for a pod, with or without a user namespace: a pod with
    /// one runs on [`SandboxOptions::user_namespace_runtime`] when `handler` is
    /// embedded, or is refused.
    fn runtime_for(
        &self,
        handler: &str,
        userns: bool,
    ) -> Result<(String, Arc<dyn LowLevelRuntime>)> {
        let (name, runtime) = self.runtime(handler)?;
        if !userns
            || !matches!(
                runtime.engine(),
                crust_runtime::lowlevel::CreateEngine::Embedded
            )
        {
            return Ok((name, runtime));
        }
        match &self.options.user_namespace_runtime {
            Some(other) => {
                tracing::debug!(handler = %name, runtime = %other, "a pod with a user namespace runs on the user namespace runtime");
                self.runtime(other)
            }
            None => Err(SandboxError::Invalid(format!(
                "runtime handler {name:?} (embedded) cannot run pods with a user namespace \
                 and no user_namespace_runtime is configured"
            ))),
        }
    }

    /// A fresh sandbox id, for callers that prepare something (a pause image's rootfs)
    /// under the id before [`SandboxService::run`].
    pub fn new_id() -> String {
        hex::encode(rand::random::<[u8; 32]>())
    }

    /// Whether a pod of `config` gets a pause process: it needs one to be the init of a
    /// shared PID namespace, and crust's user-namespaced pods run one; otherwise only
    /// when `drop_infra` is off.
    pub fn needs_pause(&self, config: &cri::PodSandboxConfig) -> bool {
        let ns = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone())
            .unwrap_or_default();
        let userns = ns
            .userns_options
            .as_ref()
            .is_some_and(|u| u.mode == cri::NamespaceMode::Pod as i32);
        !self.options.drop_infra || ns.pid == cri::NamespaceMode::Pod as i32 || userns
    }

    /// Runs pod sandbox `id`; on any failure every step already taken is undone. The
    /// pause process is crust's own unless `pause` names another (from a pause image).
    pub async fn run(
        self: &Arc<Self>,
        id: String,
        config: cri::PodSandboxConfig,
        handler: &str,
        pause: Option<PauseProcess>,
    ) -> Result<String> {
        let meta = validate::sandbox_config(&config)?;
        let userns = validate::pod_mappings(&config)?;
        let (handler, runtime) = self.runtime_for(handler, userns.is_some())?;
        if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(SandboxError::Invalid(format!(
                "sandbox id {id:?} is not 64 hex digits"
            )));
        }
        let key = name_key(&meta);
        {
            let mut index = self.index_mut();
            if let Some(owner) = index.names.get(&key) {
                return Err(SandboxError::AlreadyExists {
                    name: key,
                    id: owner.clone(),
                });
            }
            index.names.insert(key.clone(), id.clone());
        }
        let host_network = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.as_ref())
            .is_some_and(|n| n.network == cri::NamespaceMode::Node as i32);
        let mut record = SandboxRecord {
            version: record::RECORD_VERSION,
            id: id.clone(),
            config,
            runtime_handler: handler,
            created_at: now_nanos(),
            ready_at: None,
            stopped_at: None,
            exited_at: None,
            netns: (!host_network).then(|| self.netns_dir().join(&id)),
            ip: String::new(),
            additional_ips: Vec::new(),
            cni_result: None,
            pid: 0,
            pid_start: 0,
            cgroups_path: String::new(),
            userns_pin: userns.is_some().then(|| self.userns_dir().join(&id)),
            userns,
            without_pause: false,
            ipc_ns: None,
            uts_ns: None,
        };
        if !self.needs_pause(&record.config) {
            let ns = record.namespace_options();
            let node = cri::NamespaceMode::Node as i32;
            record.without_pause = true;
            record.ipc_ns = (ns.ipc != node).then(|| self.options.state.join("ipcns").join(&id));
            record.uts_ns = (!host_network).then(|| self.options.state.join("utsns").join(&id));
        }
        record.cgroups_path = self.cgroups_path(&record);
        let outcome = match record::put(&self.db, &record).await {
            Ok(()) => self.bring_up(&mut record, &*runtime, pause).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => {
                self.index_mut()
                    .by_id
                    .insert(id.clone(), Arc::new(record.clone()));
                if !record.without_pause {
                    self.watch(&id, record.pid);
                }
                tracing::info!(sandbox = %id, name = %key, ip = %record.ip, "sandbox ready");
                Ok(id)
            }
            Err(e) => {
                tracing::warn!(sandbox = %id, error = %e, "sandbox failed; undoing");
                let errors = self.release(&record, true).await;
                if errors.is_empty() {
                    let _ = record::delete(&self.db, &id).await;
                    self.index_mut().names.remove(&key);
                } else {
                    // Leave it NotReady for kubelet to remove rather than half-forgotten.
                    tracing::warn!(sandbox = %id, ?errors, "undo incomplete; keeping the sandbox as not ready");
                    record.stopped_at = Some(now_nanos());
                    let _ = record::put(&self.db, &record).await;
                    self.index_mut().by_id.insert(id.clone(), Arc::new(record));
                }
                Err(e)
            }
        }
    }

    fn netns_dir(&self) -> PathBuf {
        self.options.state.join("netns")
    }

    fn userns_dir(&self) -> PathBuf {
        self.options.state.join("userns")
    }

    fn bundle(&self, id: &str) -> PathBuf {
        self.options.state.join("bundles").join(id)
    }

    fn files(&self, id: &str) -> PodFiles {
        PodFiles::new(&self.options.root, &self.options.state, id)
    }

    fn cgroups_path(&self, record: &SandboxRecord) -> String {
        let parent = record
            .config
            .linux
            .as_ref()
            .map(|l| l.cgroup_parent.as_str())
            .unwrap_or("");
        match self.options.cgroup_driver {
            CgroupDriver::Cgroupfs if parent.is_empty() => format!("/crust/{}", record.id),
            CgroupDriver::Cgroupfs => format!("{}/{}", parent.trim_end_matches('/'), record.id),
            CgroupDriver::Systemd => {
                let slice = if parent.is_empty() {
                    "system.slice"
                } else {
                    parent
                };
                format!("{slice}:crust:{}", record.id)
            }
        }
    }

    /// Brings a sandbox up: its network namespace first, then the network (CNI ADD)
    /// and the pause container at the same time. Neither needs the other: the pause
    /// process only joins the namespace, which CNI fills in meanwhile; overlapping the
    /// two is most of what a pod start costs.
    async fn bring_up(
        &self,
        record: &mut SandboxRecord,
        runtime: &dyn LowLevelRuntime,
        pause: Option<PauseProcess>,
    ) -> Result<()> {
        let id = record.id.clone();
        if let (Some(maps), Some(pin)) = (record.userns, record.userns_pin.clone()) {
            // The user namespace and, inside it, the network namespace, so that the
            // pod's root owns its network (see crust_util::userns).
            let (dir, name) = (self.netns_dir(), id.clone());
            let (gid, files, bundle) = (
                maps.gids.host_id,
                self.files(&id).shm.parent().map(Path::to_path_buf),
                self.bundle(&id),
            );
            tokio::task::spawn_blocking(move || {
                // The pause reaches its bundle and /dev/shm as the namespace's root.
                for dir in files.iter().chain([&bundle]) {
                    crust_runtime::fsmode::userns_dir(dir, gid)
                        .map_err(|e| ("pod state directory", e.to_string()))?;
                }
                let holder = crust_util::userns::Holder::spawn(&maps, true)
                    .map_err(|e| ("user namespace", e.to_string()))?;
                crust_cni::netns::pin(&holder.ns_path("user"), &pin)
                    .map_err(|e| ("user namespace", e.to_string()))?;
                crust_cni::netns::NetNs::adopt(&dir, &name, &holder.ns_path("net"))
                    .map_err(|e| ("network namespace", e.to_string()))?;
                Ok(())
            })
            .await
            .map_err(|e| step(&id, "user namespace", ErrorKind::Internal, e))?
            .map_err(|(what, e)| step(&id, what, ErrorKind::Internal, e))?;
        } else if record.netns.is_some() {
            let dir = self.netns_dir();
            let name = id.clone();
            tokio::task::spawn_blocking(move || crust_cni::netns::NetNs::create(&dir, &name))
                .await
                .map_err(|e| step(&id, "network namespace", ErrorKind::Internal, e))?
                .map_err(|e| step(&id, "network namespace", cni_kind(&e), e))?;
        }
        let start = std::time::Instant::now();
        let ((network, network_took), (pid, pause_took)) = tokio::join!(
            async { (self.network_up(record).await, start.elapsed()) },
            async {
                let up = if record.without_pause {
                    self.namespaces_up(record).await.map(|()| 0)
                } else {
                    self.pause_up(record, runtime, pause).await
                };
                (up, start.elapsed())
            }
        );
        tracing::debug!(sandbox = %id, ?network_took, ?pause_took, "sandbox network and pause up");
        if let Some(result) = network? {
            record.ip = result
                .primary_ip()
                .map(|ip| ip.to_string())
                .unwrap_or_default();
            record.additional_ips = result
                .additional_ips()
                .iter()
                .map(|ip| ip.to_string())
                .collect();
            record.cni_result = Some(result.raw().clone());
        }
        let pid = pid?;
        record.pid = pid;
        record.pid_start = if pid > 0 {
            liveness::start_time(pid).unwrap_or(0)
        } else {
            0
        };
        record.ready_at = Some(now_nanos());
        // The record was committed durably before the first side effect; what the
        // pod learnt since is volatile (see crust_util::store).
        record::put_deferred(&self.db, record, &self.bundle(&id)).await?;
        Ok(())
    }

    /// CNI ADD for the sandbox's network namespace; `None` for host-network pods.
    async fn network_up(&self, record: &SandboxRecord) -> Result<Option<crust_cni::CniResult>> {
        let Some(netns) = &record.netns else {
            return Ok(None);
        };
        let id = record.id.clone();
        let meta = record.metadata();
        let mut pod = PodNetwork::new(id.clone(), netns.clone());
        pod.namespace = meta.namespace.clone();
        pod.name = meta.name.clone();
        pod.uid = meta.uid.clone();
        pod.port_mappings = port_mappings(&record.config.port_mappings);
        let cni = Arc::clone(&self.cni);
        let result = tokio::task::spawn_blocking(move || cni.setup(&pod))
            .await
            .map_err(|e| step(&id, "network setup", ErrorKind::Internal, e))?
            .map_err(|e| step(&id, "network setup", cni_kind(&e), e))?;
        Ok(Some(result))
    }

    /// Writes the pod's files and pins its IPC and UTS namespaces, with its hostname
    /// and sysctls: everything a pause container would hold, without one.
    async fn namespaces_up(&self, record: &SandboxRecord) -> Result<()> {
        let id = record.id.clone();
        let files = self.files(&id);
        let host_network = record.host_network();
        let (hostname, dns) = (
            record.config.hostname.clone(),
            record.config.dns_config.clone(),
        );
        let (ipc, uts, netns) = (
            record.ipc_ns.clone(),
            record.uts_ns.clone(),
            record.netns.clone(),
        );
        let sysctls: BTreeMap<String, String> = record
            .config
            .linux
            .as_ref()
            .map(|l| l.sysctls.clone().into_iter().collect())
            .unwrap_or_default();
        tokio::task::spawn_blocking(move || {
            files
                .write(&hostname, dns.as_ref(), host_network)
                .map_err(|e| ("pod files", e))?;
            if ipc.is_some() {
                files.mount_shm().map_err(|e| ("pod /dev/shm", e))?;
            }
            // Sysctls are written in the pod's network namespace, which CNI is filling
            // in meanwhile: the ones a pod may set are not about its interfaces.
            podns::create(&podns::PodNamespaces {
                ipc: ipc.as_deref(),
                uts: uts.as_deref().map(|p| (p, hostname.as_str())),
                netns: netns.as_deref(),
                sysctls: &sysctls,
            })
            .map_err(|e| ("pod namespaces", e))
        })
        .await
        .map_err(|e| step(&id, "pod namespaces", ErrorKind::Internal, e))?
        .map_err(|(what, e)| {
            let kind = if e.kind() == std::io::ErrorKind::NotFound {
                ErrorKind::InvalidArgument
            } else {
                ErrorKind::Internal
            };
            step(&id, what, kind, e)
        })
    }

    /// Writes the pod's files and starts its pause container; the pause's pid.
    async fn pause_up(
        &self,
        record: &SandboxRecord,
        runtime: &dyn LowLevelRuntime,
        pause: Option<PauseProcess>,
    ) -> Result<i32> {
        let id = record.id.clone();
        let config = &record.config;
        let ns = record.namespace_options();
        let host_network = record.host_network();

        let files = self.files(&id);
        let ipc_host = ns.ipc == cri::NamespaceMode::Node as i32;
        // Synced writes and a mount: off the async workers.
        let (staged, hostname, dns) = (
            files.clone(),
            config.hostname.clone(),
            config.dns_config.clone(),
        );
        tokio::task::spawn_blocking(move || {
            staged
                .write(&hostname, dns.as_ref(), host_network)
                .map_err(|e| ("pod files", e))?;
            if !ipc_host {
                staged.mount_shm().map_err(|e| ("pod /dev/shm", e))?;
            }
            Ok(())
        })
        .await
        .map_err(|e| step(&id, "pod files", ErrorKind::Internal, e))?
        .map_err(|(what, e)| step(&id, what, ErrorKind::Internal, e))?;

        let security = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.clone())
            .unwrap_or_default();
        let sysctls: BTreeMap<String, String> = config
            .linux
            .as_ref()
            .map(|l| l.sysctls.clone().into_iter().collect())
            .unwrap_or_default();
        let mut mounts = Vec::new();
        if !ipc_host {
            mounts.push(pause_spec::MountSpec {
                destination: "/dev/shm".into(),
                source: files.shm.clone(),
                kind: "bind".into(),
                options: vec!["rbind".into(), "rw".into()],
            });
        }
        let bundle = self.bundle(&id);
        let rootfs = match (&pause, record.userns) {
            (Some(p), _) => p.rootfs.clone(),
            (None, None) => self.pause_rootfs.clone(),
            // The built-in rootfs is shared and root's: the pod's root sees it
            // through an idmapped clone of its own.
            (None, Some(maps)) => {
                let (shared, staged_in) = (self.pause_rootfs.clone(), bundle.clone());
                tokio::task::spawn_blocking(move || {
                    let ns = maps.open_userns()?;
                    crust_runtime::staging::stage_rootfs(
                        &shared,
                        &staged_in,
                        std::os::fd::AsFd::as_fd(&ns),
                    )
                })
                .await
                .map_err(|e| step(&id, "pause rootfs", ErrorKind::Internal, e))?
                .map_err(|e| step(&id, "pause rootfs", ErrorKind::Internal, e))?
            }
        };
        let spec = SandboxSpec {
            id: id.clone(),
            hostname: if host_network {
                String::new()
            } else {
                config.hostname.clone()
            },
            rootfs,
            readonly_rootfs: true,
            args: pause
                .as_ref()
                .map_or_else(|| vec!["/pause".into()], |p| p.args.clone()),
            env: pause
                .as_ref()
                .map_or_else(|| vec!["PATH=/".into()], |p| p.env.clone()),
            netns: match &record.netns {
                Some(p) => NsMode::Path(p.clone()),
                None => NsMode::Host,
            },
            ipc_host,
            pid: if ns.pid == cri::NamespaceMode::Node as i32 {
                PidMode::Node
            } else {
                PidMode::Pod
            },
            uts_host: host_network,
            cgroups_path: record.cgroups_path.clone(),
            sysctls,
            oom_score_adj: pause_spec::clamp_oom_score_adj(-998),
            cpu_shares: Some(2),
            run_as_user: pause_user(&security, record.userns.as_ref()),
            supplemental_groups: security
                .supplemental_groups
                .iter()
                .map(|g| *g as u32)
                .collect(),
            mounts,
            annotations: BTreeMap::new(),
            privileged: security.privileged,
            userns: record
                .userns
                .zip(record.userns_pin.clone())
                .map(|(m, p)| (p, m)),
        };
        std::fs::create_dir_all(&bundle)
            .map_err(|e| step(&id, "pause bundle", ErrorKind::Internal, e))?;
        pause_spec::write_bundle(&spec, &bundle)
            .map_err(|e| step(&id, "pause spec", runtime_kind(&e), e))?;
        let pid_file = bundle.join("pid");
        let ran = runtime
            .run_detached(
                &id,
                &bundle,
                &CreateOptions {
                    pid_file: pid_file.clone(),
                    no_new_keyring: false,
                },
            )
            .await;
        if record.userns.is_some() {
            // The pause's mount namespace holds its own copy of a staged rootfs now.
            let staged = bundle.clone();
            let _ =
                tokio::task::spawn_blocking(move || crust_runtime::staging::unstage(&staged)).await;
        }
        ran.map_err(|e| step(&id, "pause start", runtime_kind(&e), e))?;
        std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| step(&id, "pause start", ErrorKind::Internal, "no pid file"))
    }

    /// Kills and deletes the pause container and removes its cgroup; for a pod
    /// without one, unpins its namespaces.
    async fn pause_down(&self, record: &SandboxRecord) -> Vec<String> {
        let mut errors = Vec::new();
        let id = &record.id;
        if record.without_pause {
            let pins: Vec<PathBuf> = record
                .ipc_ns
                .iter()
                .chain(&record.uts_ns)
                .cloned()
                .collect();
            return tokio::task::spawn_blocking(move || {
                podns::remove(pins.iter().map(PathBuf::as_path))
            })
            .await
            .unwrap_or_else(|e| vec![format!("pod namespaces task: {e}")]);
        }
        let Some(runtime) = self.runtimes.get(&record.runtime_handler) else {
            return errors;
        };
        if let Err(e) = runtime.kill(id, libc::SIGKILL, true).await {
            errors.push(format!("kill pause: {e}"));
        }
        // delete needs the runtime to see the pause gone. Its pidfd says so at once;
        // asking the runtime is the fallback when the pid is not known to be ours.
        let waited = record.pid > 0
            && liveness::alive(record.pid, record.pid_start)
            && tokio::time::timeout(Duration::from_secs(2), liveness::wait_exit(record.pid))
                .await
                .is_ok();
        if !waited {
            for _ in 0..100 {
                match runtime.state(id).await {
                    Ok(Some(s))
                        if s.status == "running"
                            || s.status == "created"
                            || s.status == "paused" =>
                    {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    _ => break,
                }
            }
        }
        if let Err(e) = runtime.delete(id, true).await {
            errors.push(format!("delete pause: {e}"));
        }
        if !record.cgroups_path.is_empty() {
            crust_runtime::stats::cgroup::remove_empty_cgroup(&record.cgroups_path);
        }
        errors
    }

    /// CNI DEL and the network namespace's removal.
    async fn network_down(&self, record: &SandboxRecord) -> Vec<String> {
        let Some(netns) = &record.netns else {
            return Vec::new();
        };
        let meta = record.metadata();
        let mut pod = PodNetwork::new(record.id.clone(), netns.clone());
        pod.namespace = meta.namespace;
        pod.name = meta.name;
        pod.uid = meta.uid;
        pod.port_mappings = port_mappings(&record.config.port_mappings);
        let cni = Arc::clone(&self.cni);
        let netns = netns.clone();
        let userns_pin = record.userns_pin.clone();
        let result = tokio::task::spawn_blocking(move || {
            let teardown = cni
                .teardown(&pod)
                .map_err(|e| format!("network teardown: {e}"));
            let remove =
                crust_cni::netns::remove(&netns).map_err(|e| format!("network namespace: {e}"));
            // After the netns, which belongs to it.
            let userns = userns_pin
                .map(|pin| crust_cni::netns::remove(&pin))
                .transpose()
                .map_err(|e| format!("user namespace: {e}"));
            [teardown.err(), remove.err(), userns.err()]
        })
        .await;
        match result {
            Ok(errs) => errs.into_iter().flatten().collect(),
            Err(e) => vec![format!("network teardown task: {e}")],
        }
    }

    /// Releases what a sandbox holds: the pause container, the network, the netns,
    /// shm and (when `files` is set) its files and bundle. Each step is idempotent and
    /// all are tried; the failures are returned.
    async fn release(&self, record: &SandboxRecord, files: bool) -> Vec<String> {
        // A clean stop already took the pause and the network down (stop records
        // `stopped_at` only then); removal has only the files left to do.
        let stopped_cleanly = record.stopped_at.is_some() && record.ready_at.is_some();
        let mut errors = Vec::new();
        if !stopped_cleanly {
            // The pause container and the network come down at the same time: neither
            // needs the other gone first.
            let (pause, network) = tokio::join!(self.pause_down(record), self.network_down(record));
            errors.extend(pause);
            errors.extend(network);
        }
        let id = &record.id;
        let (pod_files, bundle) = (self.files(id), self.bundle(id));
        // An unmount and two tree removals: off the async workers.
        let removed = tokio::task::spawn_blocking(move || {
            let mut errors = Vec::new();
            if let Err(e) = pod_files.unmount_shm() {
                errors.push(format!("unmount shm: {e}"));
            }
            if files {
                // A staged rootfs left by a crash is detached before the bundle goes,
                // or the removal would reach into the tree it shows.
                crust_runtime::staging::unstage(&bundle);
                if let Err(e) = pod_files.remove() {
                    errors.push(format!("pod files: {e}"));
                }
                if let Err(e) = std::fs::remove_dir_all(bundle)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    errors.push(format!("bundle: {e}"));
                }
            }
            errors
        })
        .await;
        match removed {
            Ok(errs) => errors.extend(errs),
            Err(e) => errors.push(format!("pod files task: {e}")),
        }
        errors
    }

    /// Stops the locked sandbox: its pause process, network and shm. Stopping a
    /// stopped or removed sandbox succeeds.
    pub async fn stop(&self, lock: &SandboxLock) -> Result<()> {
        let Some(record) = self.get(&lock.id) else {
            return Ok(());
        };
        if record.stopped_at.is_some() {
            return Ok(());
        }
        let errors = self.release(&record, false).await;
        if !errors.is_empty() {
            return Err(step(
                &record.id,
                "stop",
                ErrorKind::Internal,
                errors.join("; "),
            ));
        }
        let mut updated = (*record).clone();
        updated.stopped_at = Some(now_nanos());
        record::put(&self.db, &updated).await?;
        self.index_mut()
            .by_id
            .insert(updated.id.clone(), Arc::new(updated));
        Ok(())
    }

    /// Removes the locked sandbox, stopping it first if needed. A removed one succeeds.
    pub async fn remove(&self, lock: &SandboxLock) -> Result<()> {
        let Some(record) = self.get(&lock.id) else {
            return Ok(());
        };
        let errors = self.release(&record, true).await;
        if !errors.is_empty() {
            return Err(step(
                &record.id,
                "remove",
                ErrorKind::Internal,
                errors.join("; "),
            ));
        }
        record::delete(&self.db, &record.id).await?;
        let mut index = self.index_mut();
        index.by_id.remove(&record.id);
        let key = name_key(&record.metadata());
        if index.names.get(&key) == Some(&record.id) {
            index.names.remove(&key);
        }
        Ok(())
    }
}

/// Whether every namespace a pod without a pause pinned is still pinned.
fn namespaces_pinned(record: &SandboxRecord) -> bool {
    record
        .netns
        .iter()
        .chain(&record.ipc_ns)
        .chain(&record.uts_ns)
        .all(|p| crust_util::mountinfo::is_mount_point(p))
}

/// The pause's uid and gid: the pod's `run_as_user`/`run_as_group`, or 65535 as
/// containerd's pause image runs, or the namespace's root when a pod user namespace
/// maps fewer ids than that.
fn pause_user(
    security: &cri::LinuxSandboxSecurityContext,
    userns: Option<&crust_util::userns::IdMappings>,
) -> (u32, u32) {
    let default = |range: Option<&crust_util::userns::IdRange>| match range {
        Some(r) if r.to_host(65535).is_none() => 0,
        _ => 65535,
    };
    (
        security
            .run_as_user
            .map(|u| u.value as u32)
            .unwrap_or_else(|| default(userns.map(|m| &m.uids))),
        security
            .run_as_group
            .map(|g| g.value as u32)
            .unwrap_or_else(|| default(userns.map(|m| &m.gids))),
    )
}

/// A held sandbox lock (see [`SandboxService::lock`]).
pub struct SandboxLock {
    id: String,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl SandboxLock {
    /// The full id of the locked sandbox.
    pub fn id(&self) -> &str {
        &self.id
    }
}

fn port_mappings(ports: &[cri::PortMapping]) -> Vec<PortMapping> {
    ports
        .iter()
        .filter(|p| {
            p.host_port > 0
                && p.host_port <= 65535
                && p.container_port > 0
                && p.container_port <= 65535
        })
        .map(|p| PortMapping {
            host_port: p.host_port as u16,
            container_port: p.container_port as u16,
            protocol: match cri::Protocol::try_from(p.protocol) {
                Ok(cri::Protocol::Udp) => Protocol::Udp,
                Ok(cri::Protocol::Sctp) => Protocol::Sctp,
                _ => Protocol::Tcp,
            },
            host_ip: p.host_ip.clone(),
        })
        .collect()
}

/// Whether `path` exists; used by tests and recovery.
pub fn exists(path: &Path) -> bool {
    path.symlink_metadata().is_ok()
}
