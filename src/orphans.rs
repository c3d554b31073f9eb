//! What a crash can leave behind that no record owns, found and released at
//! start-up, after recovery and before the first RPC.
//!
//! Recovery undoes the records of interrupted operations; this covers the other
//! side: a removal that deleted its record and died before its last steps, or a
//! create that had made something before its record existed. Each leftover is named
//! by the id of the pod or container it was made for.

use std::path::{Path, PathBuf};

use crate::cri::Services;

/// Releases every leftover whose owner has no record.
pub async fn sweep(services: &Services) -> anyhow::Result<()> {
    use anyhow::Context;
    let owned = |id: &str| {
        services.containers.get(id).is_some_and(|r| r.id == id)
            || services.sandboxes.get(id).is_some_and(|r| r.id == id)
    };
    // Root filesystems of containers whose create was interrupted.
    for owner in services.images.rootfs_owners() {
        let live_pause = crate::cri::pause_rootfs_owner(&owner).is_some_and(&owned);
        if !owned(&owner) && !live_pause {
            tracing::info!(container = %owner, "removing the rootfs of a container that was never created");
            services
                .images
                .remove_rootfs(&owner)
                .await
                .context("release an orphaned rootfs")?;
        }
    }
    // Runtime state: `<runtime> delete --force` also kills what runs and removes the
    // cgroup; the container's monitor then exits by itself.
    let mut roots = Vec::new();
    for runtime in services.sandboxes.runtimes().into_values() {
        if roots.contains(&runtime.root().to_path_buf()) {
            continue;
        }
        roots.push(runtime.root().to_path_buf());
        for id in entries(runtime.root()).await {
            if !owned(&id) {
                tracing::info!(container = %id, "deleting runtime state that no record owns");
                if let Err(e) = runtime.delete(&id, true).await {
                    tracing::warn!(container = %id, error = %e, "delete orphaned runtime state");
                }
            }
        }
    }
    // Bundles (after the runtime let go of them), per-container state, and archives
    // extracted for restores (`.import-*` ones were never recorded).
    let state = &services.config.state;
    let restores = services.containers.restore_root();
    for dir in [
        state.join("bundles"),
        state.join("containers"),
        state.join("pause-rootfs"),
        restores,
    ] {
        let doomed: Vec<PathBuf> = entries(&dir)
            .await
            .into_iter()
            .filter(|id| !owned(id))
            .map(|id| dir.join(id))
            .collect();
        if doomed.is_empty() {
            continue;
        }
        tracing::info!(count = doomed.len(), dir = %dir.display(), "removing state that no record owns");
        tokio::task::spawn_blocking(move || {
            for path in doomed {
                crust_runtime::staging::unstage(&path);
                // A rootfs mounted by a create whose pin never became durable.
                let mut points = crust_runtime::mountinfo::mount_points_below(&path);
                if crust_runtime::mountinfo::is_mount_point(&path) {
                    points.push(path.clone());
                }
                for point in points {
                    if let Err(e) =
                        rustix::mount::unmount(&point, rustix::mount::UnmountFlags::DETACH)
                    {
                        tracing::warn!(path = %point.display(), error = %e, "detach an orphaned mount");
                    }
                }
                if let Err(e) = std::fs::remove_dir_all(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "remove orphaned state");
                }
            }
        })
        .await?;
    }
    // Writable layers of those rootfs, now that nothing shows them.
    let removed = services.images.remove_unpinned().await;
    if removed > 0 {
        tracing::info!(count = removed, "removed writable layers that no pin names");
    }
    Ok(())
}

/// The names of the directories in `dir` (none if it is absent).
async fn entries(dir: &Path) -> Vec<String> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        std::fs::read_dir(&dir)
            .map(|r| {
                r.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    })
    .await
    .unwrap_or_default()
}
