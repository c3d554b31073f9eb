//! The container's file system changes as `rootfs-diff.tar` and `deleted.files`, read
//! from its overlay upper directory (its writable layer).
//!
//! The upper directory holds exactly what the container changed: new and modified
//! files whole (overlayfs copies a file up before writing it), whiteouts (0/0
//! character devices) where it deleted something of the image, and directories marked
//! opaque (`trusted.overlay.opaque=y`) where it replaced one. So the diff is the upper
//! directory's entries, except:
//! - whiteouts, which become paths in `deleted.files` (as CRI-O and Podman record
//!   deletions: absolute paths, `/etc/motd`);
//! - opaque directories, which are listed in `deleted.files` and then archived with
//!   what they hold, so that a restore removes the image's copy before unpacking;
//! - mount destinations of the spec (the files and directories the runtime made in the
//!   upper layer to mount over, like `/etc/hostname` or `/dev/shm`) and what is below
//!   them: that content belongs to the mount, not the rootfs;
//! - sockets, which a tar cannot hold (CRIU restores the ones processes have open).
//!
//! The container is frozen while this runs (the caller pauses it), so nothing in the
//! upper directory moves underneath the walk; even so, every file is opened with
//! `O_NOFOLLOW` and checked to be what `lstat` said, so a symlink can never make root
//! archive a host file. Overlay features that leave a file's content in a lower layer
//! (`redirect_dir`, `metacopy`; crust mounts with neither) are refused rather than
//! exported incompletely.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What the walk found besides the archived entries.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DiffSummary {
    /// Paths the container deleted or replaced (opaque directories), absolute.
    pub deleted: Vec<String>,
    /// Entries written to the tar.
    pub entries: u64,
}

/// Writes the diff of `upper` as a tar to `out`, leaving out `skip` (absolute paths in
/// the container) and what is below them. Fails with [`io::ErrorKind::TimedOut`] once
/// `deadline` has passed.
pub fn write_rootfs_diff(
    upper: &Path,
    skip: &HashSet<PathBuf>,
    out: impl Write,
    deadline: Instant,
) -> io::Result<DiffSummary> {
    let mut builder = tar::Builder::new(out);
    let mut summary = DiffSummary::default();
    // Depth first, each directory's names sorted, so that a directory's header comes
    // before what it holds and the archive is the same for the same tree.
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the checkpoint's timeout passed while archiving the rootfs diff",
            ));
        }
        let dir = upper.join(&rel);
        let mut names: Vec<_> = std::fs::read_dir(&dir)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let rel = rel.join(&name);
            let in_container = Path::new("/").join(&rel);
            if skip.contains(&in_container) {
                continue;
            }
            let path = upper.join(&rel);
            let meta = std::fs::symlink_metadata(&path)?;
            let kind = meta.file_type();
            refuse_lower_references(&path, &in_container)?;
            if kind.is_char_device() && meta.rdev() == 0 {
                summary.deleted.push(in_container.display().to_string());
                continue;
            }
            if kind.is_socket() {
                continue;
            }
            if kind.is_dir() && xattr_is(&path, "trusted.overlay.opaque", b"y") {
                summary.deleted.push(in_container.display().to_string());
            }
            append(&mut builder, &path, &rel, &meta)?;
            summary.entries += 1;
            if kind.is_dir() {
                subdirs.push(rel);
            }
        }
        // Reversed so that the stack pops them in name order.
        stack.extend(subdirs.into_iter().rev());
    }
    builder.into_inner()?.flush()?;
    Ok(summary)
}

/// One entry, its header built from `meta` (owner, mode, mtime, device numbers).
fn append(
    builder: &mut tar::Builder<impl Write>,
    path: &Path,
    rel: &Path,
    meta: &std::fs::Metadata,
) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(meta, tar::HeaderMode::Complete);
    header.set_size(0);
    let kind = meta.file_type();
    if kind.is_file() {
        let file = File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        let opened = file.metadata()?;
        if !opened.is_file() || opened.ino() != meta.ino() || opened.dev() != meta.dev() {
            return Err(io::Error::other(format!(
                "{} changed while it was archived",
                path.display()
            )));
        }
        header.set_size(opened.len());
        // take(): a file that grew since fstat cannot make the entry longer than its
        // header says.
        use std::io::Read;
        builder.append_data(&mut header, rel, file.take(opened.len()))
    } else if kind.is_symlink() {
        let target = std::fs::read_link(path)?;
        builder.append_link(&mut header, rel, target)
    } else {
        if kind.is_char_device() || kind.is_block_device() {
            let rdev = meta.rdev();
            header.set_device_major(libc::major(rdev))?;
            header.set_device_minor(libc::minor(rdev))?;
        }
        builder.append_data(&mut header, rel, io::empty())
    }
}

/// Whether `path` has xattr `name` with exactly `value`.
fn xattr_is(path: &Path, name: &str, value: &[u8]) -> bool {
    let mut buf = [0u8; 8];
    matches!(rustix::fs::lgetxattr(path, name, &mut buf[..]), Ok(n) if &buf[..n] == value)
}

/// Fails for entries whose content or name lives in a lower layer.
fn refuse_lower_references(path: &Path, in_container: &Path) -> io::Result<()> {
    for name in ["trusted.overlay.redirect", "trusted.overlay.metacopy"] {
        let mut buf = [0u8; 1];
        match rustix::fs::lgetxattr(path, name, &mut buf[..]) {
            Err(rustix::io::Errno::NODATA) | Err(rustix::io::Errno::NOTSUP) => {}
            // Present (any value, or too long for the buffer).
            Ok(_) | Err(rustix::io::Errno::RANGE) => {
                return Err(io::Error::other(format!(
                    "{}: has {name}: the overlay keeps part of it in an image layer, \
                     which the rootfs diff cannot hold",
                    in_container.display()
                )));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn listing(tar: &[u8]) -> Vec<(String, tar::EntryType, Vec<u8>)> {
        let mut archive = tar::Archive::new(tar);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let name = e.path().unwrap().display().to_string();
                let kind = e.header().entry_type();
                let mut data = Vec::new();
                if kind == tar::EntryType::Symlink {
                    data = e
                        .link_name()
                        .unwrap()
                        .unwrap()
                        .display()
                        .to_string()
                        .into_bytes();
                } else {
                    std::io::Read::read_to_end(&mut e, &mut data).unwrap();
                }
                (name, kind, data)
            })
            .collect()
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[test]
    fn archives_changes_records_whiteouts_and_opaque_dirs_and_skips_mounts() {
        let upper = tempfile::tempdir().unwrap();
        let u = upper.path();
        std::fs::create_dir_all(u.join("etc")).unwrap();
        std::fs::write(u.join("etc/motd"), b"changed").unwrap();
        std::fs::write(u.join("etc/hostname"), b"").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", u.join("etc/link")).unwrap();
        std::fs::create_dir_all(u.join("dev/shm/inside")).unwrap();
        std::fs::create_dir_all(u.join("var/cache")).unwrap();
        std::fs::write(u.join("var/cache/new"), b"n").unwrap();
        nix::sys::stat::mknod(
            &u.join("etc/gone"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
        rustix::fs::setxattr(
            u.join("var/cache"),
            "trusted.overlay.opaque",
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        nix::unistd::mkfifo(
            &u.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let _socket = std::os::unix::net::UnixListener::bind(u.join("sock")).unwrap();
        let skip: HashSet<PathBuf> = ["/etc/hostname", "/dev/shm"]
            .iter()
            .map(PathBuf::from)
            .collect();
        let mut out = Vec::new();
        let summary = write_rootfs_diff(u, &skip, &mut out, later()).unwrap();
        assert_eq!(summary.deleted, vec!["/etc/gone", "/var/cache"]);
        let entries = listing(&out);
        let names: Vec<&str> = entries.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "dev",
                "etc",
                "fifo",
                "var",
                "etc/link",
                "etc/motd",
                "var/cache",
                "var/cache/new"
            ]
        );
        assert_eq!(summary.entries, entries.len() as u64);
        let find = |name: &str| entries.iter().find(|(n, _, _)| n == name).unwrap();
        assert_eq!(find("etc/motd").2, b"changed");
        assert_eq!(find("etc/link").1, tar::EntryType::Symlink);
        assert_eq!(find("etc/link").2, b"/etc/shadow");
        assert_eq!(find("fifo").1, tar::EntryType::Fifo);
        assert_eq!(find("var/cache").1, tar::EntryType::Directory);
    }

    #[test]
    fn refuses_redirected_directories_and_honours_the_deadline() {
        let upper = tempfile::tempdir().unwrap();
        std::fs::create_dir(upper.path().join("moved")).unwrap();
        rustix::fs::setxattr(
            upper.path().join("moved"),
            "trusted.overlay.redirect",
            b"/orig",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        let err =
            write_rootfs_diff(upper.path(), &HashSet::new(), Vec::new(), later()).unwrap_err();
        assert!(
            err.to_string()
                .contains("/moved: has trusted.overlay.redirect"),
            "{err}"
        );
        let err = write_rootfs_diff(
            upper.path(),
            &HashSet::new(),
            Vec::new(),
            Instant::now() - Duration::from_millis(1),
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
