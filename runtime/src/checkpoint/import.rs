//! Reading a checkpoint archive that CreateContainer names as its image (a restore).
//!
//! The archive comes from any CRI client and crust reads it as root, so it is
//! untrusted input, extracted into a fresh private directory under crust's root
//! (the caller makes it, mode 0700) by these rules:
//! - only the members a restore uses are written: `checkpoint/<file>` (CRIU's images,
//!   one level deep, as CRIU writes them), `config.dump`, `spec.dump`, `bind.mounts`,
//!   `rootfs-diff.tar`, `deleted.files`, `dump.log`, `stats-dump`; other names are
//!   read past;
//! - every entry is a regular file or a directory: symlinks, hardlinks, device nodes
//!   and fifos anywhere in the archive fail the whole read, as do absolute names,
//!   `..` components and an entry named twice;
//! - sizes are bounded: each entry ([`MAX_ENTRY_BYTES`]), the JSON members
//!   ([`MAX_METADATA_BYTES`], they are parsed in memory), all entries together
//!   ([`MAX_ARCHIVE_BYTES`]) and their number ([`MAX_ENTRIES`]).
//!
//! Since nothing but plain files and directories crust made itself ever exists in the
//! destination, and nobody else can write there, no lookup in it can be redirected.
//! A failure leaves a partial directory, which the caller removes.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use super::metadata::ConfigDump;

/// The most bytes one entry may hold: a container's memory pages can be large.
pub const MAX_ENTRY_BYTES: u64 = 16 << 30;
/// The most bytes all entries together may hold (the per-image unpack cap).
pub const MAX_ARCHIVE_BYTES: u64 = 64 << 30;
/// The most bytes of each JSON member, which is read into memory.
pub const MAX_METADATA_BYTES: u64 = 16 << 20;
/// The most entries an archive may have.
pub const MAX_ENTRIES: u64 = 100_000;

/// Top-level files a restore reads.
const FILES: [&str; 7] = [
    super::CONFIG_DUMP,
    super::SPEC_DUMP,
    super::BIND_MOUNTS,
    super::ROOTFS_DIFF,
    super::DELETED_FILES,
    super::DUMP_LOG,
    super::STATS_DUMP,
];

/// The JSON members, parsed in memory.
const JSON_FILES: [&str; 4] = [
    super::CONFIG_DUMP,
    super::SPEC_DUMP,
    super::BIND_MOUNTS,
    super::DELETED_FILES,
];

/// Why an archive cannot be restored from.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The archive is malformed or breaks a rule above.
    #[error("checkpoint archive: {0}")]
    Invalid(String),
    /// Writing the extracted members failed.
    #[error("checkpoint archive: {step}: {source}")]
    Io {
        /// What was being done.
        step: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn invalid(message: impl Into<String>) -> ImportError {
    ImportError::Invalid(message.into())
}

/// What a restore takes from an extracted archive.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// config.dump.
    pub config: ConfigDump,
    /// spec.dump: the OCI spec the container ran with.
    pub spec: serde_json::Value,
    /// deleted.files: paths to remove from the image, absolute in the container.
    pub deleted: Vec<String>,
    /// Whether the archive has a rootfs-diff.tar.
    pub has_rootfs_diff: bool,
}

/// Where member `name` goes below the destination, or `None` to read past it.
/// Fails for names no archive may have.
fn destination(raw: &[u8]) -> Result<Option<PathBuf>, ImportError> {
    let shown = String::from_utf8_lossy(raw);
    if raw.first() == Some(&b'/') {
        return Err(invalid(format!("entry {shown:?}: absolute path")));
    }
    let path = Path::new(std::ffi::OsStr::from_bytes(raw));
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => parts.push(name),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(invalid(format!("entry {shown:?}: has a '..' component")));
            }
        }
    }
    let known = match parts.as_slice() {
        [] => None,
        [top] if *top == super::CHECKPOINT_DIR => Some(PathBuf::from(top)),
        [top, _] if *top == super::CHECKPOINT_DIR => Some(parts.iter().collect()),
        [top, ..] if *top == super::CHECKPOINT_DIR => {
            return Err(invalid(format!(
                "entry {shown:?}: nested below {}/ (CRIU's images are one level deep)",
                super::CHECKPOINT_DIR
            )));
        }
        [top] if FILES.iter().any(|f| top.as_bytes() == f.as_bytes()) => Some(PathBuf::from(top)),
        _ => None,
    };
    Ok(known)
}

/// Extracts the members a restore uses from `archive` into `dest`, an empty directory
/// only crust can write to.
pub fn extract(archive: impl Read, dest: &Path) -> Result<(), ImportError> {
    let mut tar = tar::Archive::new(io::BufReader::with_capacity(1 << 20, archive));
    let entries = tar
        .entries()
        .map_err(|e| invalid(format!("not a tar archive: {e}")))?;
    let (mut count, mut total) = (0u64, 0u64);
    let mut seen = HashSet::new();
    for entry in entries {
        let mut entry = entry.map_err(|e| invalid(format!("read: {e}")))?;
        count += 1;
        if count > MAX_ENTRIES {
            return Err(invalid(format!("more than {MAX_ENTRIES} entries")));
        }
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let kind = entry.header().entry_type();
        if kind == tar::EntryType::XGlobalHeader {
            // PAX defaults for the entries after it; tar applies none we read.
            continue;
        }
        let is_dir = kind.is_dir();
        if !is_dir && !kind.is_file() {
            return Err(invalid(format!(
                "entry {shown:?}: a {kind:?} entry (only files and directories may be in a checkpoint archive)"
            )));
        }
        let size = entry
            .header()
            .size()
            .map_err(|e| invalid(format!("entry {shown:?}: size: {e}")))?;
        if size > MAX_ENTRY_BYTES {
            return Err(invalid(format!(
                "entry {shown:?}: {size} bytes, more than the limit of {MAX_ENTRY_BYTES}"
            )));
        }
        total = total.saturating_add(size);
        if total > MAX_ARCHIVE_BYTES {
            return Err(invalid(format!(
                "more than the limit of {MAX_ARCHIVE_BYTES} bytes"
            )));
        }
        let Some(rel) = destination(&raw)? else {
            continue;
        };
        let top_is_dir = rel.as_os_str() == super::CHECKPOINT_DIR;
        if is_dir != top_is_dir {
            return Err(invalid(format!(
                "entry {shown:?}: a {} where a restore expects a {}",
                if is_dir { "directory" } else { "file" },
                if top_is_dir { "directory" } else { "file" },
            )));
        }
        let target = dest.join(&rel);
        if is_dir {
            make_dir(&target)?;
            continue;
        }
        if JSON_FILES.iter().any(|f| rel.as_os_str() == *f) && size > MAX_METADATA_BYTES {
            return Err(invalid(format!(
                "entry {shown:?}: {size} bytes, more than the limit of {MAX_METADATA_BYTES}"
            )));
        }
        if !seen.insert(rel.clone()) {
            return Err(invalid(format!("entry {shown:?}: appears twice")));
        }
        if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
            make_dir(&dest.join(parent))?;
        }
        let mut out = File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&target)
            .map_err(|source| ImportError::Io {
                step: "create an extracted file",
                source,
            })?;
        let copied = io::copy(&mut (&mut entry).take(size), &mut out)
            .map_err(|e| invalid(format!("entry {shown:?}: read: {e}")))?;
        if copied != size {
            return Err(invalid(format!(
                "entry {shown:?}: truncated ({copied} of {size} bytes)"
            )));
        }
    }
    Ok(())
}

/// Makes an extracted directory (0700) unless it exists.
fn make_dir(path: &Path) -> Result<(), ImportError> {
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(ImportError::Io {
            step: "create an extracted directory",
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Extracts the archive file at `path` into a new private directory under `root`
/// (made 0700 if missing), removed again when the result is dropped.
pub fn extract_file(
    root: &Path,
    path: &str,
) -> Result<(tempfile::TempDir, Checkpoint), ImportError> {
    let io = |step| move |source| ImportError::Io { step, source };
    crate::fsmode::create_dir_all_mode(root, 0o700).map_err(io("create the restore directory"))?;
    // 0700, as tempfile makes directories.
    let dir = tempfile::Builder::new()
        .prefix(".import-")
        .tempdir_in(root)
        .map_err(io("create the extraction directory"))?;
    // O_NONBLOCK: a fifo put there must not hang the call; only a regular file is read.
    let file = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| ImportError::Invalid(format!("open: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| ImportError::Invalid(format!("stat: {e}")))?;
    if !meta.is_file() {
        return Err(ImportError::Invalid("not a regular file".into()));
    }
    extract(&file, dir.path())?;
    let checkpoint = read(dir.path())?;
    Ok((dir, checkpoint))
}

/// Reads and checks what [`extract`] wrote to `dir`.
pub fn read(dir: &Path) -> Result<Checkpoint, ImportError> {
    let config: ConfigDump = read_json(dir, super::CONFIG_DUMP)?
        .ok_or_else(|| invalid(format!("has no {}", super::CONFIG_DUMP)))?;
    if config.image().is_empty() {
        return Err(invalid(format!(
            "{}: names no image (rootfsImageName, rootfsImageRef and rootfsImage are empty)",
            super::CONFIG_DUMP
        )));
    }
    let spec: serde_json::Value = read_json(dir, super::SPEC_DUMP)?
        .ok_or_else(|| invalid(format!("has no {}", super::SPEC_DUMP)))?;
    if !spec.is_object() {
        return Err(invalid(format!("{}: not a JSON object", super::SPEC_DUMP)));
    }
    let deleted: Vec<String> = read_json(dir, super::DELETED_FILES)?.unwrap_or_default();
    if !dir.join(super::CHECKPOINT_DIR).is_dir() {
        return Err(invalid(format!(
            "has no {}/ (CRIU's images)",
            super::CHECKPOINT_DIR
        )));
    }
    Ok(Checkpoint {
        config,
        spec,
        deleted,
        has_rootfs_diff: dir.join(super::ROOTFS_DIFF).is_file(),
    })
}

/// Member `name` of `dir` parsed as JSON; `None` when the archive had none.
fn read_json<T: for<'de> Deserialize<'de>>(
    dir: &Path,
    name: &str,
) -> Result<Option<T>, ImportError> {
    let bytes = match std::fs::read(dir.join(name)) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ImportError::Io {
                step: "read an extracted file",
                source,
            });
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| invalid(format!("{name}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar of `(name, type, data)` entries, names written raw (no checks).
    fn tar_of(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, kind, data) in entries {
            let mut header = tar::Header::new_gnu();
            let bytes = name.as_bytes();
            header.as_gnu_mut().unwrap().name[..bytes.len()].copy_from_slice(bytes);
            header.set_entry_type(*kind);
            header.set_mode(0o644);
            header.set_size(data.len() as u64);
            if *kind == tar::EntryType::Symlink || *kind == tar::EntryType::Link {
                header.set_link_name("/etc/shadow").unwrap();
                header.set_size(0);
            }
            header.set_cksum();
            out.extend_from_slice(header.as_bytes());
            if header.size().unwrap() > 0 {
                out.extend_from_slice(data);
                out.resize(out.len().div_ceil(512) * 512, 0);
            }
        }
        out.resize(out.len() + 1024, 0);
        out
    }

    const CONFIG: &[u8] = br#"{"id":"c1","name":"counter","rootfsImage":"busybox",
        "rootfsImageRef":"sha256:ab","rootfsImageName":"docker.io/library/busybox@sha256:cd",
        "runtime":"runc","createdTime":"x","checkpointedTime":"y","restored":false,
        "extra":"ignored"}"#;

    fn good() -> Vec<(&'static str, tar::EntryType, &'static [u8])> {
        use tar::EntryType::{Directory, Regular};
        vec![
            ("checkpoint/", Directory, b""),
            ("checkpoint/inventory.img", Regular, b"inv"),
            ("config.dump", Regular, CONFIG),
            ("spec.dump", Regular, br#"{"process":{"args":["sh"]}}"#),
            ("deleted.files", Regular, br#"["/etc/group"]"#),
            ("rootfs-diff.tar", Regular, b""),
            ("./dump.log", Regular, b"log"),
            ("unrelated/file", Regular, b"skipped"),
        ]
    }

    fn extract_bytes(bytes: &[u8]) -> (tempfile::TempDir, Result<Checkpoint, ImportError>) {
        let dir = tempfile::tempdir().unwrap();
        let result = extract(bytes, dir.path()).and_then(|()| read(dir.path()));
        (dir, result)
    }

    #[test]
    fn extracts_what_a_restore_uses_and_reads_the_metadata() {
        let (dir, checkpoint) = extract_bytes(&tar_of(&good()));
        let checkpoint = checkpoint.unwrap();
        assert_eq!(checkpoint.config.name, "counter");
        assert_eq!(
            checkpoint.config.image(),
            "docker.io/library/busybox@sha256:cd"
        );
        assert_eq!(checkpoint.spec["process"]["args"][0], "sh");
        assert_eq!(checkpoint.deleted, ["/etc/group"]);
        assert!(checkpoint.has_rootfs_diff);
        let d = dir.path();
        assert_eq!(
            std::fs::read(d.join("checkpoint/inventory.img")).unwrap(),
            b"inv"
        );
        assert_eq!(std::fs::read(d.join("dump.log")).unwrap(), b"log");
        assert!(!d.join("unrelated").exists());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.join("checkpoint"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn refuses_escapes_links_devices_and_duplicates() {
        use tar::EntryType::{Block, Char, Fifo, Link, Regular, Symlink};
        for (entry, why) in [
            (("../crust-import-escape", Regular, &b"x"[..]), "'..'"),
            (
                ("checkpoint/../../crust-import-escape", Regular, b"x"),
                "'..'",
            ),
            (("/etc/cron.d/x", Regular, b"x"), "absolute"),
            (("checkpoint/link", Symlink, b""), "Symlink"),
            (("config.dump", Symlink, b""), "Symlink"),
            (("unrelated", Link, b""), "Link"),
            (("checkpoint/dev", Char, b""), "Char"),
            (("checkpoint/blk", Block, b""), "Block"),
            (("fifo", Fifo, b""), "Fifo"),
            (("config.dump", Regular, CONFIG), "appears twice"),
            (("checkpoint/deep/x", Regular, b"x"), "nested"),
        ] {
            let mut entries = good();
            entries.insert(2, entry);
            let (dir, result) = extract_bytes(&tar_of(&entries));
            let err = result.expect_err(entry.0).to_string();
            assert!(err.contains(why), "{}: {err}", entry.0);
            let parent = dir.path().parent().unwrap();
            assert!(!parent.join("crust-import-escape").exists());
        }
    }

    #[test]
    fn missing_or_malformed_metadata_is_invalid() {
        for (drop, why) in [
            ("config.dump", "has no config.dump"),
            ("spec.dump", "has no spec.dump"),
            ("checkpoint/", "has no checkpoint/"),
        ] {
            let entries: Vec<_> = good()
                .into_iter()
                .filter(|e| !e.0.starts_with(drop))
                .collect();
            let err = extract_bytes(&tar_of(&entries)).1.unwrap_err();
            assert!(matches!(err, ImportError::Invalid(_)), "{err}");
            assert!(err.to_string().contains(why), "{err}");
        }
        let mut entries = good();
        entries[3] = ("spec.dump", tar::EntryType::Regular, b"{not json");
        let err = extract_bytes(&tar_of(&entries)).1.unwrap_err();
        assert!(err.to_string().contains("spec.dump:"), "{err}");
        entries[3] = ("spec.dump", tar::EntryType::Regular, b"[1]");
        let err = extract_bytes(&tar_of(&entries)).1.unwrap_err();
        assert!(err.to_string().contains("not a JSON object"), "{err}");
        let mut entries = good();
        entries[2] = ("config.dump", tar::EntryType::Regular, br#"{"id":"c1"}"#);
        let err = extract_bytes(&tar_of(&entries)).1.unwrap_err();
        assert!(err.to_string().contains("names no image"), "{err}");
        let err = extract_bytes(b"garbage that is not a tar").1.unwrap_err();
        assert!(matches!(err, ImportError::Invalid(_)), "{err}");
    }

    #[test]
    fn sizes_are_bounded_before_anything_is_read() {
        // A header claiming more than the limit, with no data behind it.
        let mut header = tar::Header::new_gnu();
        header.set_path("checkpoint/pages-1.img").unwrap();
        header.set_size(MAX_ENTRY_BYTES + 1);
        header.set_cksum();
        let mut bytes = header.as_bytes().to_vec();
        bytes.resize(4096, 0);
        let err = extract_bytes(&bytes).1.unwrap_err();
        assert!(err.to_string().contains("more than the limit"), "{err}");
        let big = vec![b' '; (MAX_METADATA_BYTES + 1) as usize];
        let mut entries = good();
        entries[3] = ("spec.dump", tar::EntryType::Regular, &big);
        let err = extract_bytes(&tar_of(&entries)).1.unwrap_err();
        assert!(
            err.to_string().contains(&MAX_METADATA_BYTES.to_string()),
            "{err}"
        );
    }
}
