//! The archive file at the request's location: claimed safely, written whole or
//! removed.
//!
//! The location comes from the client and crust writes it as root, so it is claimed
//! with `O_CREAT | O_EXCL | O_NOFOLLOW` and mode 0600: an existing file (or a symlink
//! planted there) is never followed, truncated or overwritten, and nobody but root can
//! read the memory the archive holds. The parent directory must exist: crust does not
//! create host directories for a client. On any failure the file crust created is
//! unlinked, so a failed checkpoint leaves nothing at the location.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path};
use std::time::Instant;

/// Why `location` cannot name an archive, if it cannot: it must be an absolute path
/// without `.` or `..` components, naming a file (not ending in `/`).
pub fn location_problem(location: &str) -> Option<&'static str> {
    let path = Path::new(location);
    if location.is_empty() {
        Some("empty")
    } else if !path.is_absolute() {
        Some("not an absolute path")
    } else if location.ends_with('/') {
        Some("names a directory")
    } else if path
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        || location.split('/').any(|c| c == "." || c == "..")
    {
        Some("has . or .. components")
    } else if location.len() > 4096 {
        Some("longer than 4096 bytes")
    } else {
        None
    }
}

/// Creates the archive file at `location`, which must not exist yet.
pub fn create_location(location: &Path) -> io::Result<File> {
    File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(location)
}

/// Removes the archive crust created at `location`, if that file is still the one
/// `created` describes (device and inode), so that a file someone else put there
/// since is never removed.
pub fn remove_location(location: &Path, created: &std::fs::Metadata) {
    if let Ok(now) = std::fs::symlink_metadata(location)
        && now.dev() == created.dev()
        && now.ino() == created.ino()
        && let Err(e) = std::fs::remove_file(location)
    {
        tracing::warn!(location = %location.display(), error = %e, "cannot remove a failed checkpoint archive");
    }
}

/// Writes the archive of `work` (a directory laid out as [`super::ARCHIVE_MEMBERS`])
/// to `file` and syncs it. Members missing from `work` are left out. Fails with
/// [`io::ErrorKind::TimedOut`] once `deadline` has passed.
pub fn write_archive(file: &File, work: &Path, deadline: Instant) -> io::Result<()> {
    let mut builder = tar::Builder::new(io::BufWriter::with_capacity(1 << 20, file));
    builder.follow_symlinks(false);
    for member in super::ARCHIVE_MEMBERS {
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the checkpoint's timeout passed while writing the archive",
            ));
        }
        let path = work.join(member);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            builder.append_dir_all(member, &path)?;
        } else if meta.is_file() {
            builder.append_path_with_name(&path, member)?;
        }
    }
    builder.into_inner()?.flush()?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    #[test]
    fn locations_must_be_plain_absolute_file_paths() {
        assert_eq!(location_problem("/var/lib/kubelet/checkpoints/c.tar"), None);
        assert_eq!(location_problem(""), Some("empty"));
        assert_eq!(location_problem("c.tar"), Some("not an absolute path"));
        assert_eq!(location_problem("./c.tar"), Some("not an absolute path"));
        assert_eq!(location_problem("/tmp/"), Some("names a directory"));
        assert_eq!(
            location_problem("/tmp/../etc/x"),
            Some("has . or .. components")
        );
        assert_eq!(location_problem("/tmp/./x"), Some("has . or .. components"));
        assert_eq!(
            location_problem(&format!("/{}", "a".repeat(5000))),
            Some("longer than 4096 bytes")
        );
    }

    #[test]
    fn the_location_is_created_once_0600_and_never_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let location = dir.path().join("c.tar");
        let file = create_location(&location).unwrap();
        let meta = file.metadata().unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let again = create_location(&location).unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::AlreadyExists);
        let target = dir.path().join("target");
        std::os::unix::fs::symlink(&target, dir.path().join("link")).unwrap();
        create_location(&dir.path().join("link")).unwrap_err();
        assert!(!target.exists());
        // Only the file crust made is removed.
        remove_location(&location, &meta);
        assert!(!location.exists());
        std::fs::write(&location, b"someone else's").unwrap();
        remove_location(&location, &meta);
        assert!(location.exists());
    }

    #[test]
    fn archive_holds_the_members_present_in_order() {
        let work = tempfile::tempdir().unwrap();
        let w = work.path();
        std::fs::create_dir(w.join("checkpoint")).unwrap();
        std::fs::write(w.join("checkpoint/inventory.img"), b"inv").unwrap();
        std::fs::write(w.join("spec.dump"), b"{}").unwrap();
        std::fs::write(w.join("config.dump"), b"{}").unwrap();
        std::fs::write(w.join("rootfs-diff.tar"), b"").unwrap();
        std::fs::write(w.join("unrelated"), b"not archived").unwrap();
        let out = tempfile::tempdir().unwrap();
        let location = out.path().join("c.tar");
        let file = create_location(&location).unwrap();
        write_archive(&file, w, Instant::now() + Duration::from_secs(60)).unwrap();
        let bytes = std::fs::read(&location).unwrap();
        let mut archive = tar::Archive::new(&bytes[..]);
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "checkpoint/",
                "checkpoint/inventory.img",
                "config.dump",
                "spec.dump",
                "rootfs-diff.tar"
            ]
        );
        let late = create_location(&out.path().join("late.tar")).unwrap();
        let err = write_archive(&late, w, Instant::now() - Duration::from_millis(1)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
