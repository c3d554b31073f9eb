//! Network config loading from a config directory, the way kubelet's runtimes do it,
//! and a cheap change check for reloading.
//!
//! The network is the lexically first file ending `.conf`, `.conflist` or `.json` that
//! parses and validates; files that do not are skipped with a warning. A single-plugin
//! config (`.conf`, `.json`) is promoted to a one-plugin list. Each plugin keeps its raw
//! JSON, because plugins get their own config verbatim plus the keys the runtime injects.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::error::{CniError, Result};
use crate::version::SpecVersion;

/// The file name endings a config directory is searched for.
pub const CONFIG_EXTENSIONS: [&str; 3] = ["conf", "conflist", "json"];

/// One plugin of a network config list.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConf {
    /// The plugin type: the name of its binary.
    pub plugin_type: String,
    raw: Map<String, Value>,
}

impl PluginConf {
    /// Reads a plugin config object; it must have a non-empty string `type`.
    pub fn from_value(value: Value) -> std::result::Result<PluginConf, String> {
        let Value::Object(raw) = value else {
            return Err("plugin config is not a JSON object".into());
        };
        let plugin_type = match raw.get("type") {
            Some(Value::String(t)) if !t.is_empty() => t.clone(),
            Some(Value::String(_)) | None => return Err("plugin config has no type".into()),
            Some(_) => return Err("plugin type is not a string".into()),
        };
        if plugin_type.contains('/') || plugin_type == "." || plugin_type == ".." {
            return Err(format!("plugin type {plugin_type:?} is not a file name"));
        }
        Ok(PluginConf { plugin_type, raw })
    }

    /// The plugin's config as written in the file.
    pub fn raw(&self) -> &Map<String, Value> {
        &self.raw
    }

    /// The capabilities the plugin declares as enabled (`"capabilities": {"portMappings": true}`).
    pub fn capabilities(&self) -> BTreeSet<&str> {
        match self.raw.get("capabilities") {
            Some(Value::Object(caps)) => caps
                .iter()
                .filter(|(_, enabled)| enabled.as_bool() == Some(true))
                .map(|(name, _)| name.as_str())
                .collect(),
            _ => BTreeSet::new(),
        }
    }
}

/// A network config list: the network's name, its spec version and its plugins in order.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfList {
    /// The network name.
    pub name: String,
    /// The spec version the list and its plugins are executed with.
    pub cni_version: String,
    /// The parsed form of `cni_version`.
    pub spec_version: SpecVersion,
    /// `disableCheck`: CHECK is a no-op.
    pub disable_check: bool,
    /// `disableGC`: GC is a no-op.
    pub disable_gc: bool,
    /// The plugins, in ADD order.
    pub plugins: Vec<PluginConf>,
    /// The file the list came from.
    pub source: PathBuf,
    bytes: Vec<u8>,
}

impl ConfList {
    /// Parses a `.conflist` document.
    pub fn from_conflist_bytes(bytes: &[u8], source: &Path) -> Result<ConfList> {
        let doc = parse_object(bytes, source)?;
        Self::from_list_object(doc, bytes.to_vec(), source)
    }

    /// Parses a single-plugin `.conf` document and promotes it to a one-plugin list.
    ///
    /// A `.conf` that is really a list (has `plugins` and no `type`) is read as a list.
    pub fn from_conf_bytes(bytes: &[u8], source: &Path) -> Result<ConfList> {
        let doc = parse_object(bytes, source)?;
        if !doc.contains_key("type") && doc.contains_key("plugins") {
            return Self::from_list_object(doc, bytes.to_vec(), source);
        }
        let name = doc.get("name").cloned().unwrap_or(Value::Null);
        let mut list = Map::new();
        if let Some(version) = doc.get("cniVersion") {
            list.insert("cniVersion".into(), version.clone());
        }
        list.insert("name".into(), name);
        list.insert("plugins".into(), Value::Array(vec![Value::Object(doc)]));
        let list = Value::Object(list);
        // Serializing a Value built from parsed JSON cannot fail.
        let bytes = serde_json::to_vec(&list).unwrap_or_default();
        let Value::Object(list) = list else {
            unreachable!("built as an object above")
        };
        Self::from_list_object(list, bytes, source)
    }

    /// Reads and parses a config file, by its extension.
    pub fn from_file(path: &Path) -> Result<ConfList> {
        let bytes = fs::read(path).map_err(|err| invalid(path, format!("read: {err}")))?;
        if path.extension().is_some_and(|ext| ext == "conflist") {
            Self::from_conflist_bytes(&bytes, path)
        } else {
            Self::from_conf_bytes(&bytes, path)
        }
    }

    /// The list's JSON as cached by libcni (for a promoted `.conf`, the synthesized list).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    fn from_list_object(
        doc: Map<String, Value>,
        bytes: Vec<u8>,
        source: &Path,
    ) -> Result<ConfList> {
        let name = match doc.get("name") {
            Some(Value::String(name)) if !name.is_empty() => name.clone(),
            _ => return Err(invalid(source, "no network name".into())),
        };
        crate::exec::validate_id("network name", &name)
            .map_err(|err| invalid(source, err.to_string()))?;
        let (cni_version, spec_version) =
            pick_version(&doc).map_err(|reason| invalid(source, reason))?;
        let plugins = match doc.get("plugins") {
            Some(Value::Array(plugins)) if !plugins.is_empty() => plugins,
            Some(Value::Array(_)) => return Err(invalid(source, "plugin list is empty".into())),
            _ => return Err(invalid(source, "no plugin list".into())),
        };
        let plugins = plugins
            .iter()
            .enumerate()
            .map(|(i, plugin)| {
                PluginConf::from_value(plugin.clone())
                    .map_err(|reason| invalid(source, format!("plugin {i}: {reason}")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ConfList {
            name,
            cni_version,
            spec_version,
            disable_check: doc
                .get("disableCheck")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            disable_gc: doc
                .get("disableGC")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            plugins,
            source: source.to_path_buf(),
            bytes,
        })
    }
}

/// The version to execute with: the highest known one of `cniVersions` (spec 1.1.0)
/// if given, else `cniVersion`, else 0.1.0 (what plugins assume when it is missing).
fn pick_version(doc: &Map<String, Value>) -> std::result::Result<(String, SpecVersion), String> {
    if let Some(Value::Array(versions)) = doc.get("cniVersions") {
        let best = versions
            .iter()
            .filter_map(Value::as_str)
            .filter_map(|v| v.parse::<SpecVersion>().ok().map(|parsed| (v, parsed)))
            .filter(|(_, parsed)| *parsed <= SpecVersion::V1_1_0)
            .max_by_key(|(_, parsed)| *parsed);
        if let Some((text, parsed)) = best {
            return Ok((text.to_string(), parsed));
        }
    }
    match doc.get("cniVersion") {
        None => Ok((SpecVersion::DEFAULT.to_string(), SpecVersion::DEFAULT)),
        Some(Value::String(v)) => Ok((v.clone(), v.parse()?)),
        Some(_) => Err("cniVersion is not a string".into()),
    }
}

fn parse_object(bytes: &[u8], source: &Path) -> Result<Map<String, Value>> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(doc)) => Ok(doc),
        Ok(_) => Err(invalid(source, "not a JSON object".into())),
        Err(err) => Err(invalid(source, format!("bad JSON: {err}"))),
    }
}

fn invalid(path: &Path, reason: String) -> CniError {
    CniError::InvalidConfig {
        path: path.to_path_buf(),
        reason,
    }
}

/// The candidate config files of `dir`, sorted by name.
fn candidates(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let matches = path
            .extension()
            .and_then(|ext| ext.to_str())
            .is_some_and(|ext| CONFIG_EXTENSIONS.contains(&ext));
        // Directories named like configs are not configs; symlinks to files are.
        if matches && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Loads the network config of `dir`: the lexically first candidate file that parses.
///
/// Fails with [`CniError::NoConfig`] when the directory is missing or holds no usable
/// file; the skipped files and why are in the message.
pub fn load_dir(dir: &Path) -> Result<ConfList> {
    let files = match candidates(dir) {
        Ok(files) => files,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Err(no_config(dir, ": directory does not exist".into()));
        }
        Err(err) => return Err(no_config(dir, format!(": {err}"))),
    };
    let mut skipped = Vec::new();
    for file in files {
        match ConfList::from_file(&file) {
            Ok(list) => {
                for reason in &skipped {
                    tracing::warn!(dir = %dir.display(), "skipped network config: {reason}");
                }
                return Ok(list);
            }
            Err(err) => skipped.push(err.to_string()),
        }
    }
    let detail = if skipped.is_empty() {
        String::new()
    } else {
        format!(" (skipped: {})", skipped.join("; "))
    };
    Err(no_config(dir, detail))
}

fn no_config(dir: &Path, detail: String) -> CniError {
    CniError::NoConfig {
        dir: dir.to_path_buf(),
        detail,
    }
}

/// What a directory looked like: enough to notice any change that could change which
/// config is loaded or what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fingerprint {
    /// The directory could not be listed (missing, unreadable).
    Unlisted(io::ErrorKind),
    /// Each candidate file's name, size, mtime and inode, sorted by name.
    Files(Vec<(OsString, u64, i64, i64, u64)>),
}

fn fingerprint(dir: &Path) -> Fingerprint {
    match candidates(dir) {
        Err(err) => Fingerprint::Unlisted(err.kind()),
        Ok(files) => Fingerprint::Files(
            files
                .into_iter()
                .filter_map(|path| {
                    let meta = fs::metadata(&path).ok()?;
                    let name = path.file_name()?.to_os_string();
                    Some((
                        name,
                        meta.size(),
                        meta.mtime(),
                        meta.mtime_nsec(),
                        meta.ino(),
                    ))
                })
                .collect(),
        ),
    }
}

/// The loaded network config of a directory, re-read when the directory changes.
///
/// Polling: the caller calls [`ConfigWatcher::load_if_changed`] every second or two
/// (and before each use); it lists the directory and stats the candidate files, and
/// parses only when something changed.
#[derive(Debug)]
pub struct ConfigWatcher {
    dir: PathBuf,
    seen: Option<Fingerprint>,
    /// The loaded list, or the detail of the NoConfig error.
    current: std::result::Result<Arc<ConfList>, String>,
}

impl ConfigWatcher {
    /// A watcher of `dir`; nothing is read until the first [`Self::load_if_changed`].
    pub fn new(dir: impl Into<PathBuf>) -> ConfigWatcher {
        ConfigWatcher {
            dir: dir.into(),
            seen: None,
            current: Err(String::new()),
        }
    }

    /// The watched directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Re-reads the config if the directory's listing or a candidate file changed since
    /// the last read. Returns whether it re-read.
    pub fn load_if_changed(&mut self) -> bool {
        let now = fingerprint(&self.dir);
        if self.seen.as_ref() == Some(&now) {
            return false;
        }
        self.seen = Some(now);
        let before = self.current.as_ref().ok().map(|list| list.source.clone());
        self.current = match load_dir(&self.dir) {
            Ok(list) => {
                if before.as_ref() != Some(&list.source) {
                    tracing::info!(network = %list.name, file = %list.source.display(), "loaded network config");
                }
                Ok(Arc::new(list))
            }
            Err(CniError::NoConfig { detail, .. }) => {
                if before.is_some() {
                    tracing::warn!(dir = %self.dir.display(), "network config gone{detail}");
                }
                Err(detail)
            }
            // load_dir returns no other error; keep its text should that change.
            Err(other) => Err(format!(": {other}")),
        };
        true
    }

    /// The loaded config, or why there is none.
    pub fn current(&self) -> Result<Arc<ConfList>> {
        match &self.current {
            Ok(list) => Ok(list.clone()),
            Err(detail) => Err(no_config(&self.dir, detail.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BRIDGE_LIST: &str = r#"{
        "cniVersion": "1.0.0", "name": "net-b",
        "plugins": [
            {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local"}},
            {"type": "portmap", "capabilities": {"portMappings": true, "bandwidth": false}}
        ]
    }"#;

    fn write(dir: &Path, name: &str, text: &str) {
        fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn the_lexically_first_config_wins() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "20-b.conflist", BRIDGE_LIST);
        write(
            dir.path(),
            "10-a.conf",
            r#"{"cniVersion":"0.4.0","name":"net-a","type":"bridge"}"#,
        );
        write(dir.path(), "00-ignored.txt", "{}");
        let list = load_dir(dir.path()).unwrap();
        assert_eq!(list.name, "net-a");
        assert_eq!(list.source, dir.path().join("10-a.conf"));
    }

    #[test]
    fn a_single_plugin_conf_is_promoted_to_a_list() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "10-a.json",
            r#"{"cniVersion":"0.3.1","name":"net-a","type":"bridge","bridge":"br9"}"#,
        );
        let list = load_dir(dir.path()).unwrap();
        assert_eq!(list.cni_version, "0.3.1");
        assert_eq!(list.spec_version, SpecVersion::new(0, 3, 1));
        assert_eq!(list.plugins.len(), 1);
        assert_eq!(list.plugins[0].plugin_type, "bridge");
        assert_eq!(list.plugins[0].raw()["bridge"], "br9");
        let cached: Value = serde_json::from_slice(list.bytes()).unwrap();
        assert_eq!(cached["name"], "net-a");
        assert_eq!(cached["plugins"][0]["type"], "bridge");
    }

    #[test]
    fn bad_files_are_skipped_for_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "00-broken.conflist", "{not json");
        write(
            dir.path(),
            "01-noname.conflist",
            r#"{"cniVersion":"1.0.0","plugins":[{"type":"x"}]}"#,
        );
        write(
            dir.path(),
            "02-empty.conflist",
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#,
        );
        write(
            dir.path(),
            "03-notype.conflist",
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"bridge":"x"}]}"#,
        );
        write(
            dir.path(),
            "04-badversion.conf",
            r#"{"cniVersion":"one","name":"n","type":"x"}"#,
        );
        write(dir.path(), "20-b.conflist", BRIDGE_LIST);
        let list = load_dir(dir.path()).unwrap();
        assert_eq!(list.name, "net-b");
        assert_eq!(list.plugins.len(), 2);
        assert_eq!(
            list.plugins[1]
                .capabilities()
                .into_iter()
                .collect::<Vec<_>>(),
            vec!["portMappings"]
        );
    }

    #[test]
    fn no_usable_config_is_reported_distinctly() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let err = load_dir(&missing).unwrap_err();
        assert!(matches!(err, CniError::NoConfig { .. }));
        assert_eq!(err.kind(), crate::ErrorKind::FailedPrecondition);
        assert!(
            err.to_string()
                .starts_with(&format!("no network config found in {}", missing.display())),
            "{err}"
        );

        let err = load_dir(dir.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("no network config found in {}", dir.path().display())
        );

        write(dir.path(), "10-bad.conf", "[]");
        let err = load_dir(dir.path()).unwrap_err();
        assert!(matches!(err, CniError::NoConfig { .. }));
        assert!(
            err.to_string().contains("10-bad.conf: not a JSON object"),
            "{err}"
        );
    }

    #[test]
    fn cni_versions_picks_the_highest_known() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "10.conflist",
            r#"{"cniVersion":"0.4.0","cniVersions":["1.0.0","1.1.0","9.0.0"],"name":"n","plugins":[{"type":"x"}]}"#,
        );
        assert_eq!(load_dir(dir.path()).unwrap().cni_version, "1.1.0");
    }

    #[test]
    fn the_watcher_reloads_only_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let mut watcher = ConfigWatcher::new(dir.path().join("net.d"));
        assert!(watcher.load_if_changed());
        assert!(matches!(watcher.current(), Err(CniError::NoConfig { .. })));
        assert!(!watcher.load_if_changed());

        fs::create_dir(watcher.dir()).unwrap();
        assert!(watcher.load_if_changed());
        write(watcher.dir(), "20-b.conflist", BRIDGE_LIST);
        assert!(watcher.load_if_changed());
        assert_eq!(watcher.current().unwrap().name, "net-b");
        assert!(!watcher.load_if_changed());

        // A new file earlier in order replaces the network.
        write(
            watcher.dir(),
            "10-a.conf",
            r#"{"cniVersion":"1.0.0","name":"net-a","type":"x"}"#,
        );
        assert!(watcher.load_if_changed());
        assert_eq!(watcher.current().unwrap().name, "net-a");

        // Rewriting it with a different size is noticed.
        write(
            watcher.dir(),
            "10-a.conf",
            r#"{"cniVersion":"1.0.0","name":"net-aa","type":"x"}"#,
        );
        assert!(watcher.load_if_changed());
        assert_eq!(watcher.current().unwrap().name, "net-aa");

        fs::remove_file(watcher.dir().join("10-a.conf")).unwrap();
        fs::remove_file(watcher.dir().join("20-b.conflist")).unwrap();
        assert!(watcher.load_if_changed());
        assert!(watcher.current().is_err());
    }
}
