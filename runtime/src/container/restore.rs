//! Containers made from checkpoint archives (CRI-O's restore): CreateContainer names
//! an archive as its image, StartContainer restores its processes with CRIU through
//! the OCI runtime's `restore`.
//!
//! ```text
//! CreateContainer(image = /path/to/archive.tar)       (the service layer)
//!   extract into <restore_dir>/<id> ─> rootfs, deleted.files, rootfs-diff.tar
//!   ─> create_restored: bundle and spec, record CREATED (pid 0, restore set)
//! StartContainer
//!   ─> monitor runs `<runtime> restore --detach` from <restore_dir>/<id>/checkpoint
//!   ─> RUNNING with the restored pid; CRIU's images removed
//!   └─ CRIU fails: EXITED (Error, the end of CRIU's restore.log), nothing runs
//! ```
//!
//! The monitor stays the restored process's parent and subreaper and serves its
//! output, attach and exit exactly as for a created container: only the runtime
//! command it runs differs. The extracted archive lives until the container is
//! removed (CRIU's `restore.log` stays there for reading after a failure).

use std::path::PathBuf;
use std::sync::Arc;

use super::checkpoint::find_criu;
use super::{
    ContainerError, ContainerErrorKind, ContainerRecord, ContainerService, CreateRequest,
    RestoreSource, Result, now_nanos, record, rt,
};
use crate::checkpoint::{self, metadata};

fn failed(id: &str, kind: ContainerErrorKind, message: String) -> ContainerError {
    ContainerError::Checkpoint {
        id: id.to_owned(),
        message,
        kind,
    }
}

impl ContainerService {
    /// Where the archive of container `id` is to be extracted: a directory that
    /// does not exist yet, below one only root can enter.
    pub fn restore_dir(&self, id: &str) -> PathBuf {
        self.options.restore_dir.join(id)
    }

    /// The directory holding every [`Self::restore_dir`].
    pub fn restore_root(&self) -> PathBuf {
        self.options.restore_dir.clone()
    }

    /// Creates a container that StartContainer restores from `source` (an archive
    /// the caller extracted, its rootfs changes applied): its bundle and spec are
    /// written, nothing runs. On failure everything it did is undone, the extracted
    /// directory included; the caller unmounts the rootfs and releases the name.
    pub async fn create_restored(
        self: &Arc<Self>,
        req: CreateRequest,
        source: RestoreSource,
    ) -> Result<Arc<ContainerRecord>> {
        if req.config.tty {
            let _ = std::fs::remove_dir_all(&source.dir);
            return Err(failed(
                &req.id,
                ContainerErrorKind::FailedPrecondition,
                "restore: containers with a terminal cannot be restored \
                 (the OCI runtime's restore has no console socket)"
                    .into(),
            ));
        }
        self.create_with(req, Some(source)).await
    }

    /// The create half of a restore: the bundle as for any container, the spec
    /// written unstaged (staging happens at start, right before the runtime runs).
    pub(super) async fn prepare_restore(
        &self,
        record: &mut ContainerRecord,
        built: &crate::spec::container::BuiltSpec,
        rootfs: &std::path::Path,
        source: RestoreSource,
    ) -> Result<()> {
        // Recorded first, so that a failure below removes the extracted archive too.
        record.restore = Some(source);
        if built.userns.is_some() {
            return Err(failed(
                &record.id,
                ContainerErrorKind::FailedPrecondition,
                "restore: containers of pods with their own user namespace cannot be restored"
                    .into(),
            ));
        }
        self.prepare_bundle(record, built, rootfs)?;
        crate::spec::write_spec(&record.bundle, &built.spec)
            .map_err(rt(&record.id, "write spec"))?;
        record::put(&self.db, record).await
    }

    /// StartContainer of a container made from a checkpoint: the monitor restores
    /// it. A failed restore leaves it EXITED with the reason, nothing running.
    pub(super) async fn start_restore(self: &Arc<Self>, id: &str) -> Result<()> {
        // One restore at a time, and none while a checkpoint of it runs.
        let _whole = self.checkpoints.lock(id).await;
        let r = self
            .get(id)
            .ok_or_else(|| ContainerError::NotFound(id.to_string()))?;
        let Some(source) = r.restore.clone().filter(|_| r.restore_pending()) else {
            return Err(ContainerError::State {
                id: r.id.clone(),
                message: format!("cannot start: it is {:?}", super::state(&r)),
            });
        };
        let runtime = self.runtime(&r.runtime_handler)?;
        let path = std::env::var("PATH").unwrap_or_default();
        if find_criu(&path).is_none() {
            let message = format!(
                "restore: criu is not installed (not found in PATH {path:?}, where the OCI \
                 runtime looks for it): install the criu package"
            );
            self.record_failed_restore(&r.id, &message).await;
            return Err(failed(
                &r.id,
                ContainerErrorKind::FailedPrecondition,
                message,
            ));
        }
        let config = r.bundle.join("config.json");
        let spec = oci_spec::runtime::Spec::load(&config).map_err(|e| {
            failed(
                &r.id,
                ContainerErrorKind::Internal,
                format!("restore: read {}: {e}", config.display()),
            )
        })?;
        let mut started = (*r).clone();
        let images = source.dir.join(checkpoint::CHECKPOINT_DIR);
        let outcome = self
            .run_monitor(
                &mut started,
                &*runtime,
                spec,
                None,
                &source.log_dir,
                Some((images.clone(), source.dir.clone())),
            )
            .await;
        if let Err(e) = outcome {
            // Whatever CRIU left in the runtime's state goes; the bundle stays for
            // RemoveContainer.
            let _ = runtime.delete(&r.id, true).await;
            let criu = metadata::criu_log_tail(&source.dir.join(checkpoint::RESTORE_LOG))
                .map(|tail| format!("; criu log: {tail}"))
                .unwrap_or_default();
            let kind = match e.kind() {
                ContainerErrorKind::DeadlineExceeded => ContainerErrorKind::DeadlineExceeded,
                _ if !criu.is_empty() => ContainerErrorKind::FailedPrecondition,
                ContainerErrorKind::FailedPrecondition => ContainerErrorKind::FailedPrecondition,
                _ => ContainerErrorKind::Internal,
            };
            // The runtime's own words, without this container's name a second time.
            let cause = match &e {
                ContainerError::Runtime { source, .. } => source.to_string(),
                other => other.to_string(),
            };
            let message = format!("restore from {}: {cause}{criu}", source.archive);
            self.record_failed_restore(&r.id, &message).await;
            return Err(failed(&r.id, kind, message));
        }
        let now = now_nanos();
        let updated = self
            .update(&r.id, |u| {
                u.pid = started.pid;
                u.pid_start = started.pid_start;
                u.monitor_pid = started.monitor_pid;
                u.monitor_start = started.monitor_start;
                u.started_at.get_or_insert(now);
            })
            .await?;
        self.watch(&r.id, started.monitor_pid);
        if updated.is_none() {
            // Removed meanwhile: the restored process has nobody to own it.
            let _ = runtime.kill(&r.id, libc::SIGKILL, true).await;
        }
        // CRIU's images are as big as the container's memory and of no use now.
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(images)).await;
        tracing::info!(container = %r.id, pid = started.pid, archive = %source.archive, "container restored");
        Ok(())
    }

    /// Marks a container whose restore failed EXITED, with why.
    async fn record_failed_restore(&self, id: &str, message: &str) {
        let now = now_nanos();
        let recorded = self
            .update(id, |u| {
                u.finished_at = Some(now);
                u.exit_code = Some(255);
                u.reason = "Error".into();
                u.message = message.to_owned();
            })
            .await;
        if let Err(e) = recorded {
            tracing::warn!(container = %id, error = %e, "cannot record the failed restore");
        }
        if let Some(hook) = self.exit_hook.get() {
            hook(id);
        }
    }

    /// StopContainer of a container whose restore has not run: there is no process,
    /// so it is just marked EXITED.
    pub(super) async fn stop_unrestored(&self, id: &str) -> Result<()> {
        let now = now_nanos();
        let mut stopped = false;
        self.update(id, |u| {
            if u.restore_pending() {
                u.finished_at = Some(now);
                u.exit_code = Some(137);
                u.reason = "Error".into();
                u.message = "stopped before it was restored".into();
                stopped = true;
            }
        })
        .await?;
        if stopped && let Some(hook) = self.exit_hook.get() {
            hook(id);
        }
        Ok(())
    }
}
