//! Container root filesystems: an overlay of the image's layers with a writable layer
//! of the container's own.
//!
//! The layers a container uses are pinned in the `layer_pins` table (container id →
//! diff_ids) so that neither RemoveImage nor garbage collection deletes them while the
//! container exists, across restarts too.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use rustix::mount::{MountFlags, UnmountFlags};
use serde::{Deserialize, Serialize};

use crate::error::{ImageError, Result};

/// Pins by container id; values are JSON [`Pin`]s.
const PINS: TableDefinition<&str, &[u8]> = TableDefinition::new("layer_pins");

/// Page size bounds the overlay mount options; longer option strings are refused by
/// the kernel, so check first and say why.
const MAX_MOUNT_OPTIONS: usize = 4000;

/// What a container holds of the layer store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pin {
    /// The layers, lowest first.
    pub diff_ids: Vec<String>,
    /// Where the rootfs is mounted.
    pub mountpoint: PathBuf,
    /// The writable layer (`upper`) and overlay's work directory live here.
    pub rw_dir: PathBuf,
    /// The user namespace mappings the layers are shown through (a pod with its own
    /// user namespace); `None`: as they are.
    #[serde(default)]
    pub idmap: Option<crust_util::userns::IdMappings>,
}

/// Loads every pin.
pub(crate) fn load(db: &Database) -> Result<HashMap<String, Pin>> {
    let txn = db.begin_write()?;
    txn.open_table(PINS)?;
    txn.commit()?;
    let txn = db.begin_read()?;
    let table = txn.open_table(PINS)?;
    let mut out = HashMap::new();
    for row in table.iter()? {
        let (k, v) = row?;
        if let Ok(pin) = serde_json::from_slice::<Pin>(v.value()) {
            out.insert(k.value().to_string(), pin);
        }
    }
    Ok(out)
}

/// Writes a pin without a durable commit: the record of the container (or pod) that
/// owns the rootfs is committed durably after it, which makes the pin durable too. A
/// crash before that leaves a mount and a writable layer that no pin names, and the
/// start-up sweep removes them (see [`crate::ImageService::remove_unpinned`]).
pub(crate) fn put(db: &Database, id: &str, pin: &Pin) -> Result<()> {
    let bytes = serde_json::to_vec(pin).map_err(|e| ImageError::Store(e.to_string()))?;
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::None)
        .map_err(|e| ImageError::Store(format!("durability: {e}")))?;
    txn.open_table(PINS)?.insert(id, bytes.as_slice())?;
    txn.commit()?;
    crust_util::store::count_commit(false);
    Ok(())
}

pub(crate) fn delete(db: &Database, id: &str) -> Result<()> {
    let txn = db.begin_write()?;
    txn.open_table(PINS)?.remove(id)?;
    txn.commit()?;
    crust_util::store::count_commit(true);
    Ok(())
}

/// Layers pinned by any container.
pub(crate) fn pinned(pins: &HashMap<String, Pin>) -> HashSet<String> {
    pins.values()
        .flat_map(|p| p.diff_ids.iter().cloned())
        .collect()
}

/// The overlay mount options for `lower` (top layer first, as overlayfs wants).
pub(crate) fn overlay_options(
    lower_top_first: &[PathBuf],
    upper: &Path,
    work: &Path,
) -> Result<String> {
    let lower: Vec<String> = lower_top_first
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    for p in &lower {
        if p.contains(',') || p.contains(':') {
            return Err(ImageError::Store(format!(
                "layer path {p} cannot be an overlay lower dir"
            )));
        }
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={},index=off",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    if options.len() > MAX_MOUNT_OPTIONS {
        return Err(ImageError::Store(format!(
            "{} layers make overlay mount options of {} bytes, over the kernel's page",
            lower.len(),
            options.len()
        )));
    }
    Ok(options)
}

/// Mounts the overlay. A single layer without a writable layer cannot be an overlay
/// (overlayfs needs two lowers or an upper), but we always have an upper.
pub(crate) fn mount_overlay(options: &str, target: &Path) -> std::io::Result<()> {
    fs::create_dir_all(target)?;
    let options = std::ffi::CString::new(options).map_err(std::io::Error::other)?;
    rustix::mount::mount(
        "overlay",
        target,
        "overlay",
        // nodev as CRI-O's storage mounts it: device nodes in layers (or made with
        // CAP_MKNOD inside) cannot be opened through the rootfs; /dev is a tmpfs of the
        // runtime's. Not nosuid: setuid binaries inside containers (ping, sudo) must
        // keep working, as on containerd; host users cannot reach them (0700 parents).
        MountFlags::NODEV,
        options.as_c_str(),
    )
    .map_err(std::io::Error::from)
}

/// Detaches and removes the staged idmapped layers below `staging` (after the overlay
/// mount, or a failed one); absent is fine. Blocking.
pub(crate) fn unstage_lower(staging: &Path) {
    let Ok(entries) = fs::read_dir(staging) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if let Err(e) = unmount(&path) {
            tracing::warn!(path = %path.display(), error = %e, "detach a staged layer");
        }
        let _ = fs::remove_dir(&path);
    }
    let _ = fs::remove_dir(staging);
}

/// Unmounts `target` if it is mounted; absent is fine.
pub(crate) fn unmount(target: &Path) -> std::io::Result<()> {
    loop {
        match rustix::mount::unmount(target, UnmountFlags::DETACH) {
            Ok(()) => continue,
            Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_list_lowers_top_first_and_refuse_odd_paths() {
        let o = overlay_options(
            &["/l/b".into(), "/l/a".into()],
            Path::new("/c/fs"),
            Path::new("/c/work"),
        )
        .unwrap();
        assert_eq!(
            o,
            "lowerdir=/l/b:/l/a,upperdir=/c/fs,workdir=/c/work,index=off"
        );
        assert!(overlay_options(&["/l/a:b".into()], Path::new("/u"), Path::new("/w")).is_err());
        let many: Vec<PathBuf> = (0..100)
            .map(|i| PathBuf::from(format!("/var/lib/crust/layers/{i:064}")))
            .collect();
        assert!(overlay_options(&many, Path::new("/u"), Path::new("/w")).is_err());
    }
}
