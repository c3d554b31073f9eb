//! Image records: the persistent table and the in-memory index every List/Status call reads.

use std::collections::HashMap;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::error::{ImageError, Result};

/// Image records by id (the config digest); values are JSON [`ImageRecord`]s.
const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images");

/// Version of the [`ImageRecord`] layout written now.
const RECORD_VERSION: u32 = 1;

/// One layer of an image, as the manifest and config describe it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerRef {
    /// Digest of the uncompressed tar: the layer store's key.
    pub diff_id: String,
    /// Digest of the blob as the registry serves it.
    pub digest: String,
    /// Size of the blob as the registry serves it.
    pub size: u64,
}

/// A pulled image: what ListImages and ImageStatus answer from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageRecord {
    /// Layout version of this record.
    pub version: u32,
    /// The image id: the digest of its config blob.
    pub id: String,
    /// Names by tag, `registry/repo:tag`.
    pub repo_tags: Vec<String>,
    /// Names by manifest digest, `registry/repo@sha256:…`.
    pub repo_digests: Vec<String>,
    /// Bytes of the blobs that make the image (config and compressed layers).
    pub size: u64,
    /// The layers, lowest first.
    pub layers: Vec<LayerRef>,
    /// The image config blob as pulled (JSON).
    pub config: String,
    /// Whether kubelet's image GC must leave this image alone.
    pub pinned: bool,
    /// When the image was first pulled, nanoseconds since the epoch.
    pub created_at: i64,
}

impl ImageRecord {
    /// Creates a record at the current layout version.
    pub fn new(id: String, layers: Vec<LayerRef>, config: String, size: u64) -> Self {
        ImageRecord {
            version: RECORD_VERSION,
            id,
            repo_tags: Vec::new(),
            repo_digests: Vec::new(),
            size,
            layers,
            config,
            pinned: false,
            created_at: crate::now_nanos(),
        }
    }

    /// Every name of the image, tags first.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.repo_tags.iter().chain(self.repo_digests.iter())
    }

    /// The parsed image config, for callers that need Env, User and the like.
    pub fn config_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.config).unwrap_or(serde_json::Value::Null)
    }
}

/// The in-memory view of the image table, kept in step with it.
#[derive(Default)]
pub(crate) struct ImageIndex {
    /// Records by id.
    pub(crate) by_id: HashMap<String, Arc<ImageRecord>>,
    /// Image id by every name (tag or digest reference).
    pub(crate) by_name: HashMap<String, String>,
}

impl ImageIndex {
    pub(crate) fn insert(&mut self, record: Arc<ImageRecord>) {
        if let Some(old) = self.by_id.remove(&record.id) {
            for name in old.names() {
                self.by_name.remove(name);
            }
        }
        for name in record.names() {
            self.by_name.insert(name.clone(), record.id.clone());
        }
        self.by_id.insert(record.id.clone(), record);
    }

    pub(crate) fn remove(&mut self, id: &str) -> Option<Arc<ImageRecord>> {
        let old = self.by_id.remove(id)?;
        for name in old.names() {
            if self.by_name.get(name).is_some_and(|owner| owner == id) {
                self.by_name.remove(name);
            }
        }
        Some(old)
    }
}

/// Reads every image record.
pub(crate) fn load_all(db: &Database) -> Result<Vec<ImageRecord>> {
    ensure_table(db)?;
    let txn = db.begin_read()?;
    let table = txn.open_table(IMAGES)?;
    let mut out = Vec::new();
    for row in table.iter()? {
        let (key, value) = row?;
        match serde_json::from_slice::<ImageRecord>(value.value()) {
            Ok(record) => out.push(record),
            // A record we cannot read is reported, not fatal: the image is simply gone
            // and kubelet pulls it again.
            Err(e) => {
                tracing::warn!(id = key.value(), error = %e, "dropping unreadable image record")
            }
        }
    }
    Ok(out)
}

fn ensure_table(db: &Database) -> Result<()> {
    let txn = db.begin_write()?;
    txn.open_table(IMAGES)?;
    txn.commit()?;
    Ok(())
}

/// Writes `put` and deletes `delete` in one transaction.
pub(crate) fn write(db: &Database, put: &[&ImageRecord], delete: &[&str]) -> Result<()> {
    let txn = db.begin_write()?;
    {
        let mut table = txn.open_table(IMAGES)?;
        for record in put {
            let bytes = serde_json::to_vec(record)
                .map_err(|e| ImageError::Store(format!("encode image {}: {e}", record.id)))?;
            table.insert(record.id.as_str(), bytes.as_slice())?;
        }
        for id in delete {
            table.remove(*id)?;
        }
    }
    txn.commit()?;
    crust_util::store::count_commit(true);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, tags: &[&str]) -> ImageRecord {
        let mut r = ImageRecord::new(id.into(), vec![], "{}".into(), 1);
        r.repo_tags = tags.iter().map(|s| s.to_string()).collect();
        r
    }

    #[test]
    fn records_round_trip_through_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("db")).unwrap();
        let a = record("sha256:a", &["x/a:1"]);
        let b = record("sha256:b", &["x/b:1"]);
        write(&db, &[&a, &b], &[]).unwrap();
        write(&db, &[], &["sha256:a"]).unwrap();
        assert_eq!(load_all(&db).unwrap(), vec![b]);
    }

    #[test]
    fn index_forgets_old_names_on_update() {
        let mut index = ImageIndex::default();
        index.insert(Arc::new(record("sha256:a", &["x/a:1", "x/a:2"])));
        index.insert(Arc::new(record("sha256:a", &["x/a:2"])));
        assert!(!index.by_name.contains_key("x/a:1"));
        assert_eq!(index.by_name["x/a:2"], "sha256:a");
        index.remove("sha256:a");
        assert!(index.by_name.is_empty());
    }
}
