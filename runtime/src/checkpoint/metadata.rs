//! The JSON files of a checkpoint archive besides the spec, and the end of CRIU's log
//! for error messages.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// `config.dump`: the fields of checkpointctl's `ContainerConfig` (Podman's and
/// CRI-O's names). Read back for a restore, where missing fields are empty and
/// unknown ones (CRI-O and Podman write more) ignored.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct ConfigDump {
    /// The container id.
    pub id: String,
    /// The container's name (its CRI metadata name).
    pub name: String,
    /// The image as the CreateContainer request named it.
    pub rootfs_image: String,
    /// The image id.
    pub rootfs_image_ref: String,
    /// The image's digest reference, or its name when none is known.
    pub rootfs_image_name: String,
    /// The runtime handler.
    #[serde(rename = "runtime")]
    pub oci_runtime: String,
    /// When the container was created, RFC 3339.
    pub created_time: String,
    /// When it was checkpointed, RFC 3339.
    #[serde(rename = "checkpointedTime")]
    pub checkpointed_at: String,
    /// Whether the container was itself restored from a checkpoint.
    pub restored: bool,
}

impl ConfigDump {
    /// The image to restore on: the digest reference, else the image id, else the
    /// name as first asked for (the order CRI-O tries them in).
    pub fn image(&self) -> &str {
        [
            &self.rootfs_image_name,
            &self.rootfs_image_ref,
            &self.rootfs_image,
        ]
        .into_iter()
        .find(|s| !s.is_empty())
        .map_or("", |s| s.as_str())
    }
}

/// One entry of `bind.mounts`, as CRI-O records them so that a restore can make a
/// missing source of the right type (CRIU cannot bind a directory over a file).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BindMount {
    /// The source on the host.
    pub source: String,
    /// The destination in the container.
    pub destination: String,
    /// "directory" or "file".
    pub file_type: String,
    /// The source's permission bits.
    pub permissions: u32,
}

/// Destinations every container has, which a restore makes anew (CRI-O's list).
const RUNTIME_MOUNTS: [&str; 7] = [
    "/dev",
    "/dev/shm",
    "/proc",
    "/run",
    "/run/.containerenv",
    "/run/secrets",
    "/sys",
];

/// RFC 3339 with nanoseconds, UTC, of nanoseconds since the epoch.
pub fn rfc3339(nanos: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(nanos)
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// The bind mounts of `spec` (a config.json) whose sources exist, with their types.
pub fn bind_mounts(spec: &serde_json::Value) -> Vec<BindMount> {
    use std::os::unix::fs::PermissionsExt;
    let Some(mounts) = spec.get("mounts").and_then(|m| m.as_array()) else {
        return Vec::new();
    };
    mounts
        .iter()
        .filter_map(|m| {
            let destination = m.get("destination")?.as_str()?;
            let source = m.get("source")?.as_str()?;
            let is_bind = m.get("type").and_then(|t| t.as_str()) == Some("bind")
                || m.get("options")
                    .and_then(|o| o.as_array())
                    .is_some_and(|o| o.iter().any(|o| o == "bind" || o == "rbind"));
            if !is_bind || RUNTIME_MOUNTS.contains(&destination) {
                return None;
            }
            let meta = std::fs::metadata(source).ok()?;
            Some(BindMount {
                source: source.to_owned(),
                destination: destination.to_owned(),
                file_type: if meta.is_dir() { "directory" } else { "file" }.to_owned(),
                permissions: meta.permissions().mode() & 0o7777,
            })
        })
        .collect()
}

/// Mount destinations of `spec`: what the rootfs diff leaves out.
pub fn mount_destinations(
    spec: &serde_json::Value,
) -> std::collections::HashSet<std::path::PathBuf> {
    spec.get("mounts")
        .and_then(|m| m.as_array())
        .into_iter()
        .flatten()
        .filter_map(|m| m.get("destination")?.as_str())
        .map(|d| Path::new("/").join(d.trim_start_matches('/')))
        .collect()
}

/// At most this much of the end of CRIU's log is read.
const LOG_TAIL_READ: u64 = 64 * 1024;
/// At most this many of its lines are kept.
const LOG_TAIL_LINES: usize = 6;
/// Each kept line is cut to this many characters.
const LOG_LINE_MAX: usize = 300;

/// What CRIU's log at `path` says went wrong: its last `Error` lines, or its last lines
/// when it has none, joined with "; ". `None` when the log is missing or empty.
pub fn criu_log_tail(path: &Path) -> Option<String> {
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_READ)))
        .ok()?;
    let mut bytes = Vec::new();
    file.take(LOG_TAIL_READ).read_to_end(&mut bytes).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let errors: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains("Error (") || l.contains("Error:"))
        .collect();
    let chosen = if errors.is_empty() { &lines } else { &errors };
    let kept: Vec<String> = chosen[chosen.len().saturating_sub(LOG_TAIL_LINES)..]
        .iter()
        .map(|l| l.chars().take(LOG_LINE_MAX).collect())
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_dump_has_checkpointctls_field_names() {
        let dump = ConfigDump {
            id: "c1".into(),
            name: "counter".into(),
            rootfs_image: "busybox".into(),
            rootfs_image_ref: "sha256:ab".into(),
            rootfs_image_name: "docker.io/library/busybox@sha256:cd".into(),
            oci_runtime: "runc".into(),
            created_time: rfc3339(1_700_000_000_123_456_789),
            checkpointed_at: rfc3339(0),
            restored: false,
        };
        assert_eq!(
            serde_json::to_value(&dump).unwrap(),
            serde_json::json!({
                "id": "c1",
                "name": "counter",
                "rootfsImage": "busybox",
                "rootfsImageRef": "sha256:ab",
                "rootfsImageName": "docker.io/library/busybox@sha256:cd",
                "runtime": "runc",
                "createdTime": "2023-11-14T22:13:20.123456789Z",
                "checkpointedTime": "1970-01-01T00:00:00.000000000Z",
                "restored": false,
            })
        );
    }

    #[test]
    fn bind_mounts_keep_existing_binds_with_their_types() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hosts");
        std::fs::write(&file, b"").unwrap();
        let spec = serde_json::json!({"mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev/shm", "type": "bind", "source": dir.path(), "options": ["rbind"]},
            {"destination": "/etc/hosts", "type": "bind", "source": file, "options": ["rbind", "ro"]},
            {"destination": "/data", "source": dir.path(), "options": ["rbind"]},
            {"destination": "/gone", "type": "bind", "source": dir.path().join("nope")},
        ]});
        let binds = bind_mounts(&spec);
        let got: Vec<(&str, &str)> = binds
            .iter()
            .map(|b| (b.destination.as_str(), b.file_type.as_str()))
            .collect();
        assert_eq!(got, [("/etc/hosts", "file"), ("/data", "directory")]);
        let destinations = mount_destinations(&spec);
        assert!(destinations.contains(Path::new("/etc/hosts")));
        assert!(destinations.contains(Path::new("/proc")));
        assert_eq!(destinations.len(), 5);
    }

    #[test]
    fn criu_log_tail_prefers_error_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("dump.log");
        assert_eq!(criu_log_tail(&log), None);
        std::fs::write(
            &log,
            "(00.001) Version: 3.17.1\n\
             (00.031763) Error (criu/vdso.c:381): vdso: Unexpected rt vDSO area bounds\n\
             (00.031766) Error (criu/kerndat.c:1615): kerndat_vdso_fill_symtable failed\n\
             (00.031794) Adjust mmap_min_addr 0x1000 -> 0x10000\n",
        )
        .unwrap();
        assert_eq!(
            criu_log_tail(&log).unwrap(),
            "(00.031763) Error (criu/vdso.c:381): vdso: Unexpected rt vDSO area bounds; \
             (00.031766) Error (criu/kerndat.c:1615): kerndat_vdso_fill_symtable failed"
        );
        std::fs::write(&log, "a\nb\n\n").unwrap();
        assert_eq!(criu_log_tail(&log).unwrap(), "a; b");
        let long: String = (0..20)
            .map(|i| format!("Error: {}\n", "x".repeat(i * 50)))
            .collect();
        std::fs::write(&log, long).unwrap();
        let tail = criu_log_tail(&log).unwrap();
        assert_eq!(tail.split("; ").count(), LOG_TAIL_LINES);
        assert!(tail.split("; ").all(|l| l.chars().count() <= LOG_LINE_MAX));
    }
}
