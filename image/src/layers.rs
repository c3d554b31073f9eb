//! The layer store: one directory per unpacked layer, keyed by diff_id, usable as an
//! overlayfs lower directory.
//!
//! A layer is unpacked into `tmp-*` and renamed into place only after its diff_id has
//! been verified, then recorded; a directory without a record (or a `tmp-*` one) is what
//! a crash left behind, and opening the store removes it.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::error::{ImageError, Result};

/// Layer records by diff_id; values are JSON [`LayerInfo`]s.
const LAYERS: TableDefinition<&str, &[u8]> = TableDefinition::new("layers");

/// What the store knows of an unpacked layer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerInfo {
    /// Digest of the uncompressed tar.
    pub diff_id: String,
    /// Bytes of file data in the layer.
    pub bytes: u64,
    /// Entries (inodes) in the layer.
    pub inodes: u64,
    /// When it was unpacked, nanoseconds since the epoch.
    pub created_at: i64,
}

/// Unpacked layers on disk and their records.
pub struct LayerStore {
    dir: PathBuf,
    db: Arc<Database>,
    layers: Mutex<HashMap<String, LayerInfo>>,
    /// Layers an in-flight pull (or a container) depends on, with a count of users:
    /// garbage collection leaves them alone even when no image names them yet.
    leases: Mutex<HashMap<String, usize>>,
    /// One lock per diff_id being fetched, so concurrent pulls fetch a blob once.
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these maps leaves it consistent (every update is a
    // single insert or remove), so a poisoned lock is still safe to use.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Creates `dir` with mode 0700, also tightening one that exists. Layers carry setuid
/// binaries and device nodes; a host user who could reach them could run or open them
/// (CVE-2021-41091). Containers never walk these paths: overlayfs reaches its layers
/// with the mounter's (root's) credentials.
pub(crate) fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(dir)
        .and_then(|()| fs::set_permissions(dir, fs::Permissions::from_mode(0o700)))
        .map_err(|e| ImageError::io(format!("create {}", dir.display()), e))
}

fn hex_of(diff_id: &str) -> &str {
    diff_id.strip_prefix("sha256:").unwrap_or(diff_id)
}

impl LayerStore {
    /// Opens the store in `dir`, removing what an interrupted unpack or delete left.
    pub fn open(dir: PathBuf, db: Arc<Database>) -> Result<Self> {
        private_dir(&dir)?;
        let mut layers = HashMap::new();
        {
            let txn = db.begin_write()?;
            txn.open_table(LAYERS)?;
            txn.commit()?;
            let txn = db.begin_read()?;
            let table = txn.open_table(LAYERS)?;
            for row in table.iter()? {
                let (key, value) = row?;
                match serde_json::from_slice::<LayerInfo>(value.value()) {
                    Ok(info) => {
                        layers.insert(info.diff_id.clone(), info);
                    }
                    Err(e) => {
                        tracing::warn!(diff_id = key.value(), error = %e, "unreadable layer record")
                    }
                }
            }
        }
        let store = LayerStore {
            dir,
            db,
            layers: Mutex::new(layers),
            leases: Mutex::new(HashMap::new()),
            fetching: Mutex::new(HashMap::new()),
        };
        store.recover()?;
        Ok(store)
    }

    /// Removes directories without a record and records without a directory.
    fn recover(&self) -> Result<()> {
        let entries = fs::read_dir(&self.dir)
            .map_err(|e| ImageError::io(format!("read {}", self.dir.display()), e))?;
        let mut on_disk = HashSet::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let known = lock(&self.layers).contains_key(&format!("sha256:{name}"));
            if known {
                on_disk.insert(format!("sha256:{name}"));
            } else {
                tracing::info!(layer = %name, "removing leftover layer directory");
                remove_tree(&entry.path());
            }
        }
        let missing: Vec<String> = lock(&self.layers)
            .keys()
            .filter(|id| !on_disk.contains(*id))
            .cloned()
            .collect();
        if !missing.is_empty() {
            tracing::warn!(
                ?missing,
                "layer records without a directory; forgetting them"
            );
            self.delete_records(&missing)?;
        }
        Ok(())
    }

    /// The directory holding the unpacked layer.
    pub fn path(&self, diff_id: &str) -> PathBuf {
        self.dir.join(hex_of(diff_id))
    }

    /// The directory every layer lives under.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the layer is unpacked and recorded.
    pub fn contains(&self, diff_id: &str) -> bool {
        lock(&self.layers).contains_key(diff_id)
    }

    /// The recorded file data bytes of a layer, if it is here.
    pub(crate) fn bytes_of(&self, diff_id: &str) -> Option<u64> {
        lock(&self.layers).get(diff_id).map(|l| l.bytes)
    }

    /// Total bytes and inodes of all layers.
    pub fn usage(&self) -> (u64, u64) {
        lock(&self.layers)
            .values()
            .fold((0, 0), |(b, i), l| (b + l.bytes, i + l.inodes))
    }

    /// Diff_ids of every recorded layer.
    pub fn all(&self) -> Vec<String> {
        lock(&self.layers).keys().cloned().collect()
    }

    /// Marks layers as in use until the returned guard drops.
    pub fn lease(self: &Arc<Self>, diff_ids: impl IntoIterator<Item = String>) -> Lease {
        let ids: Vec<String> = diff_ids.into_iter().collect();
        let mut leases = lock(&self.leases);
        for id in &ids {
            *leases.entry(id.clone()).or_default() += 1;
        }
        Lease {
            store: Arc::clone(self),
            ids,
        }
    }

    fn leased(&self) -> HashSet<String> {
        lock(&self.leases).keys().cloned().collect()
    }

    /// The lock that serializes fetching one diff_id.
    pub(crate) fn fetch_lock(&self, diff_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut fetching = lock(&self.fetching);
        // Drop locks nobody holds any more, so the map stays as small as the set of
        // layers being fetched right now.
        fetching.retain(|_, l| Arc::strong_count(l) > 1);
        Arc::clone(fetching.entry(diff_id.to_string()).or_default())
    }

    /// A fresh, empty directory to unpack `diff_id` into.
    pub(crate) fn temp_dir(&self, diff_id: &str) -> Result<PathBuf> {
        let path = self.dir.join(format!(
            "tmp-{}-{:016x}",
            &hex_of(diff_id)[..12.min(hex_of(diff_id).len())],
            rand::random::<u64>()
        ));
        fs::create_dir(&path)
            .map_err(|e| ImageError::io(format!("create {}", path.display()), e))?;
        Ok(path)
    }

    /// Moves a verified unpack into place and records it. Blocking.
    pub(crate) fn commit(&self, diff_id: &str, temp: &Path, bytes: u64, inodes: u64) -> Result<()> {
        let dest = self.path(diff_id);
        if self.contains(diff_id) {
            // Somebody else finished the same layer first; theirs is as good as ours.
            remove_tree(temp);
            return Ok(());
        }
        if dest.exists() {
            remove_tree(&dest);
        }
        // The record below is durable (redb fsyncs); the files must be too before it
        // exists, or a power loss leaves a recorded layer of empty files. One syncfs
        // writes back the whole tree, far cheaper than an fsync per file.
        let sync = |path: &Path| -> std::io::Result<()> {
            let dir = fs::File::open(path)?;
            rustix::fs::syncfs(&dir)?;
            Ok(())
        };
        sync(temp).map_err(|e| ImageError::io(format!("sync {}", temp.display()), e))?;
        fs::rename(temp, &dest).map_err(|e| {
            ImageError::io(
                format!("rename {} to {}", temp.display(), dest.display()),
                e,
            )
        })?;
        // And the rename itself, in the store directory.
        fs::File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| ImageError::io(format!("sync {}", self.dir.display()), e))?;
        let info = LayerInfo {
            diff_id: diff_id.to_string(),
            bytes,
            inodes,
            created_at: crate::now_nanos(),
        };
        let encoded = serde_json::to_vec(&info).map_err(|e| ImageError::Store(e.to_string()))?;
        let txn = self.db.begin_write()?;
        txn.open_table(LAYERS)?
            .insert(diff_id, encoded.as_slice())?;
        txn.commit()?;
        crust_util::store::count_commit(true);
        lock(&self.layers).insert(diff_id.to_string(), info);
        Ok(())
    }

    /// Takes every layer neither in `referenced` nor leased out of the store: records
    /// deleted, directories moved aside. The slow part, deleting the moved trees, is
    /// the caller's, through [`Collected::delete`], once it holds no lock.
    pub fn gc(&self, referenced: &HashSet<String>) -> Result<Collected> {
        let leased = self.leased();
        let doomed: Vec<String> = lock(&self.layers)
            .keys()
            .filter(|id| !referenced.contains(*id) && !leased.contains(*id))
            .cloned()
            .collect();
        let mut collected = Collected::default();
        if doomed.is_empty() {
            return Ok(collected);
        }
        // Record first, directory second: a crash in between leaves a directory without
        // a record, which the next open removes.
        self.delete_records(&doomed)?;
        for id in &doomed {
            let path = self.path(id);
            let trash = self
                .dir
                .join(format!("tmp-del-{:016x}", rand::random::<u64>()));
            match fs::rename(&path, &trash) {
                Ok(()) => collected.trash.push(trash),
                Err(e) => {
                    tracing::warn!(layer = %id, error = %e, "cannot move layer away for deletion")
                }
            }
        }
        collected.ids = doomed;
        Ok(collected)
    }

    fn delete_records(&self, ids: &[String]) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(LAYERS)?;
            for id in ids {
                table.remove(id.as_str())?;
            }
        }
        txn.commit()?;
        crust_util::store::count_commit(true);
        let mut layers = lock(&self.layers);
        for id in ids {
            layers.remove(id);
        }
        Ok(())
    }
}

/// Layers a [`LayerStore::gc`] took out: their ids, and their trees, moved aside.
/// A crash before [`Collected::delete`] leaves `tmp-*` trees, which the next open removes.
#[derive(Debug, Default)]
#[must_use = "the moved trees stay on disk until delete() runs"]
pub struct Collected {
    /// The layers removed.
    pub ids: Vec<String>,
    trash: Vec<PathBuf>,
}

impl Collected {
    /// Deletes the moved trees: a disk walk, so a blocking thread's work.
    pub fn delete(self) {
        for tree in &self.trash {
            remove_tree(tree);
        }
    }
}

/// Removes a directory tree, logging rather than failing: callers use it for cleanup.
pub(crate) fn remove_tree(path: &Path) {
    let result = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), error = %e, "cleanup failed");
    }
}

/// Layers held in use; released on drop.
pub struct Lease {
    store: Arc<LayerStore>,
    ids: Vec<String>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut leases = lock(&self.store.leases);
        for id in &self.ids {
            if let Some(n) = leases.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    leases.remove(id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn store(dir: &Path) -> Arc<LayerStore> {
        let db = Arc::new(Database::create(dir.join("db")).unwrap());
        Arc::new(LayerStore::open(dir.join("layers"), db).unwrap())
    }

    #[test]
    fn commit_gc_and_leases() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path());
        for id in [A, B] {
            let t = s.temp_dir(id).unwrap();
            fs::write(t.join("f"), "x").unwrap();
            s.commit(id, &t, 1, 1).unwrap();
        }
        assert!(s.path(A).join("f").exists());
        assert_eq!(s.usage(), (2, 2));
        let lease = s.lease([B.to_string()]);
        let gone = s.gc(&HashSet::new()).unwrap();
        assert_eq!(gone.ids, vec![A.to_string()]);
        assert!(!s.path(A).exists());
        gone.delete();
        drop(lease);
        let gone = s.gc(&HashSet::new()).unwrap();
        assert_eq!(gone.ids, vec![B.to_string()]);
        assert_eq!(fs::read_dir(s.dir()).unwrap().count(), 1, "the moved tree");
        gone.delete();
        assert_eq!(fs::read_dir(s.dir()).unwrap().count(), 0);
    }

    #[test]
    fn reopening_removes_what_a_crash_left() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let s = store(tmp.path());
            let t = s.temp_dir(A).unwrap();
            s.commit(A, &t, 0, 1).unwrap();
            s.temp_dir(B).unwrap();
            fs::create_dir(s.dir().join(hex_of(B))).unwrap();
        }
        let s = store(tmp.path());
        assert!(s.contains(A));
        let names: Vec<_> = fs::read_dir(s.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(hex_of(A))]);
    }
}
