//! CheckpointContainer: a running container's processes dumped by CRIU through the
//! OCI runtime's `checkpoint`, with its spec and file system changes, into one archive
//! (layout in [`crate::checkpoint`]). The container keeps running, as kubelet's
//! checkpoint API (forensic checkpointing) wants.
//!
//! As CRI-O does it:
//!
//! ```text
//! claim location ─> work dir ─> spec.dump, config.dump, bind.mounts
//!   ─> pause ─> checkpoint --leave-running ─> rootfs diff ─> archive ─> resume
//! ```
//!
//! The container is frozen from before CRIU dumps it until the archive is written, so
//! the file system changes in the archive are those of the moment of the dump. A
//! failure anywhere resumes the container, removes the work directory and the file at
//! the location. The work directory lives under crust's root (CRIU images are as big
//! as the container's memory: not for tmpfs) and is named after the container; one
//! left by a crash is found at start-up ([`ContainerService::clean_checkpoint_work`]),
//! its container resumed and its half-written archive removed. CRIU's log of a
//! failed dump stays in the bundle (`dump.log`, the file runc's error names) until the
//! container is removed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{ContainerError, ContainerErrorKind, ContainerService, Result};
use crate::checkpoint::{self, archive, metadata, rootfs_diff};
use crate::oci::CheckpointOptions;

/// How long a checkpoint may take when the request gives no timeout.
pub const DEFAULT_CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(240);

/// In a work directory: the location it is writing and that file's device and inode.
const LOCATION_RECORD: &str = "location";

/// What CheckpointContainer asks for, resolved by the caller.
#[derive(Debug, Clone)]
pub struct CheckpointRequest {
    /// The container (id or unique prefix).
    pub id: String,
    /// Where the archive goes: an absolute path that does not exist yet.
    pub location: String,
    /// The whole checkpoint's timeout.
    pub timeout: Duration,
    /// The container's writable layer (its overlay upper directory).
    pub writable_layer: Option<PathBuf>,
}

fn failed(id: &str, kind: ContainerErrorKind, message: String) -> ContainerError {
    ContainerError::Checkpoint {
        id: id.to_owned(),
        message,
        kind,
    }
}

/// The first executable `criu` in `path` (a PATH value), where the OCI runtime will
/// look for it.
pub fn find_criu(path: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    path.split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join("criu"))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

impl ContainerService {
    /// Checkpoints a running container into an archive at `req.location`; the
    /// container goes on running.
    pub async fn checkpoint(&self, req: CheckpointRequest) -> Result<()> {
        let r = self.running(&req.id)?;
        let id = r.id.clone();
        if let Some(problem) = archive::location_problem(&req.location) {
            return Err(ContainerError::Invalid(format!(
                "location {:?}: {problem}",
                req.location
            )));
        }
        let upper = req.writable_layer.clone().ok_or_else(|| {
            failed(
                &id,
                ContainerErrorKind::Internal,
                "checkpoint: the container has no writable layer".into(),
            )
        })?;
        // runc looks CRIU up in its PATH, which is crustd's: say so before freezing
        // anything, rather than leave the runtime's "executable file not found".
        if find_criu(&std::env::var("PATH").unwrap_or_default()).is_none() {
            return Err(failed(
                &id,
                ContainerErrorKind::FailedPrecondition,
                "checkpoint: CRIU is not installed: no executable criu in crustd's PATH \
                 (install the criu package)"
                    .into(),
            ));
        }
        let runtime = self.runtime(&r.runtime_handler)?;
        if !runtime.checkpoints() {
            return Err(failed(
                &id,
                ContainerErrorKind::FailedPrecondition,
                format!(
                    "checkpoint: runtime handler {:?} ({}) cannot checkpoint; CRIU runs \
                     through an OCI runtime binary such as runc",
                    r.runtime_handler,
                    runtime.name()
                ),
            ));
        }
        // One checkpoint of a container at a time: a second one's resume must not thaw
        // the first one's dump.
        let _guard = self.checkpoints.lock(&id).await;
        let deadline = Instant::now() + req.timeout;
        let location = PathBuf::from(&req.location);
        let (work, file, created) = self.prepare(&id, &location).await?;
        let outcome = self
            .dump_and_archive(&r, &*runtime, &work, &file, &upper, deadline)
            .await;
        drop(file);
        let work_path = work.path().to_path_buf();
        let keep = outcome.is_ok();
        let cleanup = tokio::task::spawn_blocking(move || {
            if !keep {
                archive::remove_location(&location, &created);
            }
            // Holds the CRIU images: as big as the container's memory.
            drop(work);
        });
        if let Err(e) = cleanup.await {
            tracing::warn!(container = %id, work = %work_path.display(), error = %e, "checkpoint cleanup");
        }
        outcome
    }

    /// Undoes checkpoints a crash cut short: each work directory left under the
    /// checkpoint directory is named `<container id>.<random>`; its container is
    /// resumed (it may have been frozen), the archive it was writing removed (if it is
    /// still the file crust created), and the directory deleted.
    pub(super) async fn clean_checkpoint_work(&self) {
        let dir = self.options.checkpoint_dir.clone();
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some((id, _)) = name.split_once('.') else {
                continue;
            };
            tracing::info!(container = %id, "undoing a checkpoint a crash interrupted");
            if let Some(r) = self.get(id)
                && let Ok(runtime) = self.runtime(&r.runtime_handler)
                && r.finished_at.is_none()
                && let Err(e) = runtime.resume(&r.id).await
            {
                // "container not paused": it never was, or CRIU had thawed it.
                tracing::debug!(container = %id, error = %e, "resume after an interrupted checkpoint");
            }
            let work = entry.path();
            let _ = tokio::task::spawn_blocking(move || {
                remove_recorded_location(&work.join(LOCATION_RECORD));
                if let Err(e) = std::fs::remove_dir_all(&work) {
                    tracing::warn!(work = %work.display(), error = %e, "remove checkpoint work directory");
                }
            })
            .await;
        }
    }

    /// Claims the location and makes the work directory (recording the location in it
    /// first, so that a crash in between still lets start-up remove the file).
    async fn prepare(
        &self,
        id: &str,
        location: &Path,
    ) -> Result<(tempfile::TempDir, std::fs::File, std::fs::Metadata)> {
        let dir = self.options.checkpoint_dir.clone();
        let (id, location) = (id.to_owned(), location.to_path_buf());
        let task_id = id.clone();
        tokio::task::spawn_blocking(move || {
            let io = |step: &'static str| {
                let id = id.clone();
                move |source| ContainerError::Io { id, step, source }
            };
            crate::fsmode::create_dir_all_mode(&dir, 0o700)
                .map_err(io("create checkpoint work directory"))?;
            let work = tempfile::Builder::new()
                .prefix(&format!("{id}."))
                .tempdir_in(&dir)
                .map_err(io("create checkpoint work directory"))?;
            let file = archive::create_location(&location).map_err(|e| {
                let kind = match e.kind() {
                    std::io::ErrorKind::AlreadyExists => ContainerErrorKind::AlreadyExists,
                    std::io::ErrorKind::NotFound => ContainerErrorKind::InvalidArgument,
                    _ if e.raw_os_error() == Some(libc::ELOOP) => ContainerErrorKind::AlreadyExists,
                    _ => ContainerErrorKind::Internal,
                };
                failed(
                    &id,
                    kind,
                    format!("checkpoint: create {}: {e}", location.display()),
                )
            })?;
            let created = file.metadata().map_err(io("stat checkpoint archive"))?;
            use std::os::unix::fs::MetadataExt;
            let record = format!("{} {} {}", created.dev(), created.ino(), location.display());
            if let Err(e) = std::fs::write(work.path().join(LOCATION_RECORD), record) {
                archive::remove_location(&location, &created);
                return Err(io("record checkpoint location")(e));
            }
            Ok((work, file, created))
        })
        .await
        .map_err(|e| ContainerError::Io {
            id: task_id,
            step: "prepare checkpoint",
            source: std::io::Error::other(e),
        })?
    }

    /// Everything between claiming the location and cleaning up: the metadata files,
    /// pause, CRIU, the rootfs diff, the archive, resume.
    async fn dump_and_archive(
        &self,
        r: &super::ContainerRecord,
        runtime: &dyn crate::lowlevel::LowLevelRuntime,
        work: &tempfile::TempDir,
        file: &std::fs::File,
        upper: &Path,
        deadline: Instant,
    ) -> Result<()> {
        let id = r.id.clone();
        let io = |step: &'static str| {
            let id = id.clone();
            move |source| ContainerError::Io { id, step, source }
        };
        let spec = self.spec_json(r).ok_or_else(|| {
            failed(
                &id,
                ContainerErrorKind::Internal,
                format!("checkpoint: cannot read {}/config.json", r.bundle.display()),
            )
        })?;
        let w = work.path();
        let config = metadata::ConfigDump {
            id: id.clone(),
            name: r.metadata().name,
            rootfs_image: r.image_name.clone(),
            rootfs_image_ref: r.image_id.clone(),
            rootfs_image_name: r.image_ref.clone(),
            oci_runtime: r.runtime_handler.clone(),
            created_time: metadata::rfc3339(r.created_at),
            checkpointed_at: metadata::rfc3339(super::now_nanos()),
            restored: r.restore.is_some(),
        };
        std::fs::write(w.join(checkpoint::SPEC_DUMP), json(&spec))
            .map_err(io("write spec.dump"))?;
        std::fs::write(w.join(checkpoint::CONFIG_DUMP), json(&config))
            .map_err(io("write config.dump"))?;
        let binds = metadata::bind_mounts(&spec);
        if !binds.is_empty() {
            std::fs::write(w.join(checkpoint::BIND_MOUNTS), json(&binds))
                .map_err(io("write bind.mounts"))?;
        }
        runtime.pause(&id).await.map_err(super::rt(&id, "pause"))?;
        let dumped = self
            .dump_frozen(r, runtime, w, file, upper, &spec, deadline)
            .await;
        let resumed = runtime.resume(&id).await;
        match (dumped, resumed) {
            (Err(e), resumed) => {
                if let Err(r) = resumed {
                    tracing::error!(container = %id, error = %r, "cannot resume the container after a failed checkpoint");
                }
                Err(e)
            }
            (Ok(()), Err(e)) => Err(super::rt(&id, "resume after checkpoint")(e)),
            (Ok(()), Ok(())) => Ok(()),
        }
    }

    /// CRIU's dump, the rootfs diff and the archive, while the container is frozen.
    #[allow(clippy::too_many_arguments)]
    async fn dump_frozen(
        &self,
        r: &super::ContainerRecord,
        runtime: &dyn crate::lowlevel::LowLevelRuntime,
        w: &Path,
        file: &std::fs::File,
        upper: &Path,
        spec: &serde_json::Value,
        deadline: Instant,
    ) -> Result<()> {
        let id = r.id.as_str();
        // CRIU's log goes to the bundle, where the path runc names in its error stays
        // valid after a failure (until the container is removed); a successful dump's
        // log moves into the archive.
        let opts = CheckpointOptions {
            image_path: w.join(checkpoint::CHECKPOINT_DIR),
            work_path: r.bundle.clone(),
            leave_running: true,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if let Err(e) = runtime.cli().checkpoint(id, &opts, left).await {
            let criu = metadata::criu_log_tail(&r.bundle.join(checkpoint::DUMP_LOG))
                .map(|tail| format!("; criu log: {tail}"))
                .unwrap_or_default();
            let kind = match e.kind() {
                crate::ErrorKind::FailedPrecondition => ContainerErrorKind::FailedPrecondition,
                crate::ErrorKind::NotFound => ContainerErrorKind::NotFound,
                crate::ErrorKind::DeadlineExceeded => ContainerErrorKind::DeadlineExceeded,
                _ if !criu.is_empty() => ContainerErrorKind::FailedPrecondition,
                _ => ContainerErrorKind::Internal,
            };
            return Err(failed(id, kind, format!("checkpoint: {e}{criu}")));
        }
        let bundle = r.bundle.clone();
        let (w, upper, file) = (w.to_path_buf(), upper.to_path_buf(), file.try_clone());
        let skip = metadata::mount_destinations(spec);
        let file = file.map_err(|source| ContainerError::Io {
            id: id.to_owned(),
            step: "open checkpoint archive",
            source,
        })?;
        let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            for log in [checkpoint::DUMP_LOG, checkpoint::STATS_DUMP] {
                match std::fs::copy(bundle.join(log), w.join(log)) {
                    Ok(_) => std::fs::remove_file(bundle.join(log))?,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            let diff = std::fs::File::create(w.join(checkpoint::ROOTFS_DIFF))?;
            let diff = std::io::BufWriter::with_capacity(1 << 20, diff);
            let summary = rootfs_diff::write_rootfs_diff(&upper, &skip, diff, deadline)?;
            if !summary.deleted.is_empty() {
                std::fs::write(
                    w.join(checkpoint::DELETED_FILES),
                    serde_json::to_vec(&summary.deleted).unwrap_or_default(),
                )?;
            }
            archive::write_archive(&file, &w, deadline)
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|r| r);
        written.map_err(|e| {
            let kind = if e.kind() == std::io::ErrorKind::TimedOut {
                ContainerErrorKind::DeadlineExceeded
            } else {
                ContainerErrorKind::Internal
            };
            failed(id, kind, format!("checkpoint: write the archive: {e}"))
        })
    }
}

/// Pretty JSON, as CRI-O writes these files. Serializing these plain values (maps
/// with string keys, structs) cannot fail, so the fallback is never taken.
fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec_pretty(value).unwrap_or_default()
}

/// Removes the archive a work directory's location record names, if the file there is
/// still the one crust created.
fn remove_recorded_location(record: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(text) = std::fs::read_to_string(record) else {
        return;
    };
    let mut parts = text.splitn(3, ' ');
    let (Some(dev), Some(ino), Some(location)) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    let location = Path::new(location);
    if let Ok(meta) = std::fs::symlink_metadata(location)
        && meta.is_file()
        && dev.parse() == Ok(meta.dev())
        && ino.parse() == Ok(meta.ino())
    {
        let _ = std::fs::remove_file(location);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criu_is_found_only_as_an_executable_file_in_path() {
        use std::os::unix::fs::PermissionsExt;
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let path = format!("{}::{}", dirs[0].path().display(), dirs[1].path().display());
        assert_eq!(find_criu(&path), None);
        std::fs::create_dir(dirs[0].path().join("criu")).unwrap();
        std::fs::write(dirs[1].path().join("criu"), b"").unwrap();
        assert_eq!(
            find_criu(&path),
            None,
            "a directory and a non-executable file"
        );
        std::fs::set_permissions(
            dirs[1].path().join("criu"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        assert_eq!(find_criu(&path), Some(dirs[1].path().join("criu")));
    }

    #[test]
    fn a_recorded_location_is_removed_only_while_it_is_crusts_file() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let location = dir.path().join("c.tar");
        let record = dir.path().join(LOCATION_RECORD);
        let file = archive::create_location(&location).unwrap();
        let meta = file.metadata().unwrap();
        std::fs::write(
            &record,
            format!("{} {} {}", meta.dev(), meta.ino(), location.display()),
        )
        .unwrap();
        // Replaced since (another inode): kept.
        std::fs::remove_file(&location).unwrap();
        std::fs::write(dir.path().join("other"), b"x").unwrap();
        std::fs::write(&location, b"someone else's").unwrap();
        remove_recorded_location(&record);
        assert!(location.exists());
        let meta = std::fs::metadata(&location).unwrap();
        std::fs::write(
            &record,
            format!("{} {} {}", meta.dev(), meta.ino(), location.display()),
        )
        .unwrap();
        remove_recorded_location(&record);
        assert!(!location.exists());
    }
}
