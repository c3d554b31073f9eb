//! The result cache, in libcni's layout, so DEL gets what ADD returned.
//!
//! One file per attachment at `<cache_dir>/results/<network>-<containerID>-<ifName>`,
//! holding a `cniCacheV1` JSON object: the container id, the network config list
//! (base64, as Go marshals bytes), the interface and network names, the netns, the
//! CNI_ARGS pairs, the capability args and the result. Other tools that read libcni's
//! cache (cnitool, CRI-O, containerd's GC) understand it. Files are written to a temp
//! file and renamed, so a crash never leaves half a record.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::error::{CniError, Result};
use crate::exec::{validate_id, validate_ifname};

/// The `kind` of libcni's cache format.
pub const CACHE_KIND: &str = "cniCacheV1";

/// The default cache directory (libcni's).
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/cni";

/// One cached attachment: what was passed to ADD and what it returned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheEntry {
    /// Always [`CACHE_KIND`].
    pub kind: String,
    /// The container (sandbox) id.
    #[serde(rename = "containerId")]
    pub container_id: String,
    /// The network config list's JSON that ADD ran with.
    #[serde(
        serialize_with = "to_base64",
        deserialize_with = "from_base64",
        default
    )]
    pub config: Vec<u8>,
    /// The interface name inside the sandbox.
    #[serde(rename = "ifName")]
    pub ifname: String,
    /// The network name.
    #[serde(rename = "networkName")]
    pub network_name: String,
    /// The netns path ADD ran with.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub netns: String,
    /// The CNI_ARGS pairs.
    #[serde(rename = "cniArgs", default, skip_serializing_if = "Vec::is_empty")]
    pub cni_args: Vec<(String, String)>,
    /// The capability args (all of them, before filtering per plugin).
    #[serde(
        rename = "capabilityArgs",
        default,
        skip_serializing_if = "Map::is_empty"
    )]
    pub capability_args: Map<String, Value>,
    /// The final result of ADD.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub result: Value,
}

fn to_base64<S: Serializer>(bytes: &[u8], serializer: S) -> std::result::Result<S::Ok, S::Error> {
    serializer.serialize_str(&BASE64.encode(bytes))
}

fn from_base64<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Vec<u8>, D::Error> {
    // Go writes a nil byte slice as null.
    match Option::<String>::deserialize(deserializer)? {
        None => Ok(Vec::new()),
        Some(text) => BASE64.decode(text).map_err(serde::de::Error::custom),
    }
}

/// The result cache under a cache directory.
#[derive(Debug, Clone)]
pub struct ResultCache {
    dir: PathBuf,
}

impl ResultCache {
    /// A cache under `cache_dir` (files go to `<cache_dir>/results/`).
    pub fn new(cache_dir: impl Into<PathBuf>) -> ResultCache {
        ResultCache {
            dir: cache_dir.into(),
        }
    }

    /// The directory holding the result files.
    pub fn results_dir(&self) -> PathBuf {
        self.dir.join("results")
    }

    /// The file of one attachment; the names are validated so none can leave the directory.
    pub fn path(&self, network: &str, container_id: &str, ifname: &str) -> Result<PathBuf> {
        validate_id("network name", network)?;
        validate_id("container id", container_id)?;
        validate_ifname(ifname)?;
        Ok(self
            .results_dir()
            .join(format!("{network}-{container_id}-{ifname}")))
    }

    /// Writes an entry atomically (temp file, fsync, rename), replacing any previous one.
    pub fn write(&self, entry: &CacheEntry) -> Result<()> {
        let path = self.path(&entry.network_name, &entry.container_id, &entry.ifname)?;
        let cache_err = |source| CniError::Cache {
            path: path.clone(),
            source,
        };
        let dir = self.results_dir();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(cache_err)?;
        let bytes = serde_json::to_vec(entry).map_err(|err| cache_err(io::Error::other(err)))?;
        let tmp = dir.join(format!(
            ".tmp-{}-{}",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("entry"),
            std::process::id()
        ));
        let written = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            fs::rename(&tmp, &path)
        })();
        if let Err(err) = written {
            let _ = fs::remove_file(&tmp);
            return Err(cache_err(err));
        }
        Ok(())
    }

    /// Removes the temporary files of writes that a crash cut short: those of a
    /// process that no longer runs, or of this one (called before any write). The
    /// number removed.
    pub fn remove_stale_temporaries(&self) -> usize {
        let Ok(entries) = fs::read_dir(self.results_dir()) else {
            return 0;
        };
        let me = std::process::id().to_string();
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str().filter(|n| n.starts_with(".tmp-")) else {
                continue;
            };
            let writer = name.rsplit('-').next().unwrap_or_default();
            let stale = writer == me
                || writer.parse::<u32>().is_err()
                || !Path::new("/proc").join(writer).exists();
            if stale && fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }

    /// Reads the entry of one attachment; `None` when there is none.
    ///
    /// A pre-`cniCacheV1` file (the bare result, as old libcni wrote it) is returned as
    /// an entry holding only the result.
    pub fn read(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<CacheEntry>> {
        let path = self.path(network, container_id, ifname)?;
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CniError::Cache { path, source }),
        };
        let corrupt = |reason: String| CniError::CacheCorrupt {
            path: path.clone(),
            reason,
        };
        let doc: Value =
            serde_json::from_slice(&bytes).map_err(|err| corrupt(format!("bad JSON: {err}")))?;
        match doc.get("kind").and_then(Value::as_str) {
            Some(CACHE_KIND) => serde_json::from_value(doc)
                .map(Some)
                .map_err(|err| corrupt(err.to_string())),
            Some(other) => Err(corrupt(format!("unknown kind {other:?}"))),
            None if doc.get("cniVersion").is_some() => Ok(Some(CacheEntry {
                kind: CACHE_KIND.into(),
                container_id: container_id.into(),
                config: Vec::new(),
                ifname: ifname.into(),
                network_name: network.into(),
                netns: String::new(),
                cni_args: Vec::new(),
                capability_args: Map::new(),
                result: doc,
            })),
            None => Err(corrupt("no kind and no cniVersion".into())),
        }
    }

    /// Deletes the entry of one attachment; an absent one is not an error.
    pub fn remove(&self, network: &str, container_id: &str, ifname: &str) -> Result<()> {
        let path = self.path(network, container_id, ifname)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(CniError::Cache { path, source }),
        }
    }

    /// All readable `cniCacheV1` entries, sorted by file name, optionally only those of
    /// one container. Unreadable or foreign files are skipped.
    pub fn list(&self, container_id: Option<&str>) -> Result<Vec<CacheEntry>> {
        let dir = self.results_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(CniError::Cache { path: dir, source }),
        };
        let mut names: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| !n.starts_with('.'))
            })
            .collect();
        names.sort();
        Ok(names
            .iter()
            .filter_map(|path| read_entry(path))
            .filter(|e| !e.ifname.is_empty() && !e.network_name.is_empty())
            .filter(|e| container_id.is_none_or(|id| e.container_id == id))
            .collect())
    }
}

fn read_entry(path: &Path) -> Option<CacheEntry> {
    let bytes = fs::read(path).ok()?;
    let entry: CacheEntry = serde_json::from_slice(&bytes).ok()?;
    (entry.kind == CACHE_KIND).then_some(entry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(id: &str) -> CacheEntry {
        CacheEntry {
            kind: CACHE_KIND.into(),
            container_id: id.into(),
            config: br#"{"name":"net","plugins":[]}"#.to_vec(),
            ifname: "eth0".into(),
            network_name: "net".into(),
            netns: "/run/netns/x".into(),
            cni_args: vec![("IgnoreUnknown".into(), "1".into())],
            capability_args: json!({"portMappings": []}).as_object().unwrap().clone(),
            result: json!({"cniVersion": "1.0.0", "ips": []}),
        }
    }

    #[test]
    fn entries_round_trip_in_libcni_layout() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResultCache::new(dir.path());
        let e = entry("abc");
        cache.write(&e).unwrap();
        let path = dir.path().join("results/net-abc-eth0");
        let doc: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(doc["kind"], "cniCacheV1");
        assert_eq!(doc["containerId"], "abc");
        assert_eq!(doc["ifName"], "eth0");
        assert_eq!(doc["networkName"], "net");
        assert_eq!(doc["config"], BASE64.encode(&e.config));
        assert_eq!(doc["cniArgs"], json!([["IgnoreUnknown", "1"]]));
        assert_eq!(doc["capabilityArgs"], json!({"portMappings": []}));
        assert_eq!(doc["result"]["cniVersion"], "1.0.0");
        assert_eq!(cache.read("net", "abc", "eth0").unwrap(), Some(e.clone()));
        assert_eq!(cache.list(None).unwrap(), vec![e.clone()]);
        assert_eq!(cache.list(Some("abc")).unwrap(), vec![e]);
        assert!(cache.list(Some("ab")).unwrap().is_empty());

        cache.remove("net", "abc", "eth0").unwrap();
        assert!(!path.exists());
        assert_eq!(cache.read("net", "abc", "eth0").unwrap(), None);
        cache.remove("net", "abc", "eth0").unwrap();
        // No temp files are left behind.
        assert_eq!(fs::read_dir(cache.results_dir()).unwrap().count(), 0);
    }

    #[test]
    fn go_written_entries_and_legacy_results_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResultCache::new(dir.path());
        fs::create_dir_all(cache.results_dir()).unwrap();
        fs::write(
            cache.results_dir().join("net-go-eth0"),
            r#"{"kind":"cniCacheV1","containerId":"go","config":null,"ifName":"eth0","networkName":"net","result":{"cniVersion":"0.4.0"}}"#,
        )
        .unwrap();
        let e = cache.read("net", "go", "eth0").unwrap().unwrap();
        assert!(e.config.is_empty());
        assert_eq!(e.result["cniVersion"], "0.4.0");

        fs::write(
            cache.results_dir().join("net-old-eth0"),
            r#"{"cniVersion":"0.3.1","ips":[]}"#,
        )
        .unwrap();
        let e = cache.read("net", "old", "eth0").unwrap().unwrap();
        assert_eq!(e.result["cniVersion"], "0.3.1");
        // Legacy files are not attachments libcni would list.
        assert_eq!(cache.list(None).unwrap().len(), 1);

        fs::write(cache.results_dir().join("net-bad-eth0"), "{").unwrap();
        assert!(matches!(
            cache.read("net", "bad", "eth0"),
            Err(CniError::CacheCorrupt { .. })
        ));
    }

    #[test]
    fn temporaries_of_dead_writers_are_removed_and_entries_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResultCache::new(dir.path());
        cache.write(&entry("kept")).unwrap();
        let results = cache.results_dir();
        // pid 1 lives; an absurd pid does not; ours is never mid-write here.
        let live = results.join(".tmp-net-a-eth0-1");
        let dead = results.join(".tmp-net-b-eth0-4000000000");
        let mine = results.join(format!(".tmp-net-c-eth0-{}", std::process::id()));
        for f in [&live, &dead, &mine] {
            fs::write(f, "{").unwrap();
        }
        assert_eq!(cache.remove_stale_temporaries(), 2);
        assert!(live.exists() && !dead.exists() && !mine.exists());
        assert_eq!(cache.list(None).unwrap().len(), 1);
    }

    #[test]
    fn names_that_would_escape_the_directory_are_refused() {
        let cache = ResultCache::new("/nonexistent");
        assert!(cache.path("net", "../x", "eth0").is_err());
        assert!(cache.path("net", "x", "a/b").is_err());
        assert!(cache.path("../net", "x", "eth0").is_err());
    }
}
