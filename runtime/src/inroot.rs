//! Creating paths that an image or a request names, inside a container's rootfs.
//!
//! The rootfs belongs to the image: any component of a path in it may be a symlink
//! planted by a layer (`data -> /`, `up -> ../../..`). Joining the path onto the
//! rootfs and calling `create_dir_all` would follow those links on the host, so root
//! would create directories anywhere (issue 14). Here every step is resolved by the
//! kernel with `openat2(RESOLVE_IN_ROOT)`: symlinks are followed as if the rootfs were
//! `/`, the way the container itself will see them, and `..` stops at the rootfs. New
//! directories are made with `mkdirat` in a directory opened that way, so nothing
//! outside the rootfs is ever created; removals ([`remove_in_root`]) unlink in a
//! directory opened that way, so nothing outside it is ever removed.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

/// Symlinks resolve as in the container; magic links (`/proc/self/fd/N`, which
/// point wherever a process has files open) are never followed.
const RESOLVE: ResolveFlag = ResolveFlag::RESOLVE_IN_ROOT.union(ResolveFlag::RESOLVE_NO_MAGICLINKS);

fn open_dir_in_root(root: &OwnedFd, relative: &Path) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC)
        .resolve(RESOLVE);
    let path = if relative.as_os_str().is_empty() {
        Path::new(".")
    } else {
        relative
    };
    crust_util::resolve::retry_raced(|| nix::fcntl::openat2(root, path, how))
}

/// Creates directory `path` (absolute in the container) and its missing parents inside
/// `rootfs`, each new one with exactly `mode` and owned by root, or by `owner` (host
/// uid and gid: a user-namespaced pod's root). Symlinks on the way
/// resolve inside the rootfs and magic links (`/proc/self/fd/N`) are refused, so the
/// result lies inside the rootfs whatever the image holds. `..` components are refused.
pub fn create_dir_all_in_root(
    rootfs: &Path,
    path: &str,
    mode: u32,
    owner: Option<(u32, u32)>,
) -> std::io::Result<()> {
    // Checked before anything is made, so a refused path leaves nothing behind.
    if Path::new(path)
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::Prefix(_)))
    {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{path:?} has a '..' component"),
        ));
    }
    let root = nix::fcntl::open(
        rootfs,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut done = std::path::PathBuf::new();
    for component in Path::new(path).components() {
        let name = match component {
            Component::RootDir | Component::CurDir => continue,
            Component::Normal(name) => name,
            // Refused above.
            Component::ParentDir | Component::Prefix(_) => continue,
        };
        let parent = open_dir_in_root(&root, &done)?;
        done.push(name);
        match open_dir_in_root(&root, &done) {
            Ok(_) => continue,
            Err(Errno::ENOENT) => {}
            Err(errno) => return Err(errno.into()),
        }
        // `name` has no slash and is made in a directory resolved inside the root: a
        // dangling symlink in its place makes mkdirat fail (EEXIST), never followed.
        match nix::sys::stat::mkdirat(parent.as_fd(), name, Mode::from_bits_truncate(mode)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(errno) => return Err(errno.into()),
        }
        let made = open_dir_in_root(&root, &done)?;
        if let Some((uid, gid)) = owner {
            nix::unistd::fchown(
                made.as_fd(),
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
            )?;
        }
        // mkdirat's mode went through crustd's umask (0077).
        nix::sys::stat::fchmod(made.as_fd(), Mode::from_bits_truncate(mode))?;
    }
    Ok(())
}

/// Removes `path` (absolute in the container) from `rootfs`, a directory with all it
/// holds; its parent resolves inside the rootfs as the container sees it, and its last
/// component is never followed (a symlink there is removed, not its target). Returns
/// whether there was anything to remove. `..` components are refused, as is the
/// rootfs itself.
pub fn remove_in_root(rootfs: &Path, path: &str) -> std::io::Result<bool> {
    let invalid = |why: &str| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{path:?}: {why}"))
    };
    let mut parts = Vec::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(name) => parts.push(name),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(invalid("has a '..' component"));
            }
        }
    }
    let Some((name, parent)) = parts.split_last() else {
        return Err(invalid("names the root"));
    };
    let root = nix::fcntl::open(
        rootfs,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let parent: std::path::PathBuf = parent.iter().collect();
    let dir = match open_dir_in_root(&root, &parent) {
        Ok(dir) => dir,
        Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => return Ok(false),
        Err(errno) => return Err(errno.into()),
    };
    remove_entry(&dir, name)
}

/// Removes `name` in `dir` without following it, recursively for a directory.
fn remove_entry(dir: &OwnedFd, name: &std::ffi::OsStr) -> std::io::Result<bool> {
    use rustix::fs::{AtFlags, FileType};
    let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(rustix::io::Errno::NOENT) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        rustix::fs::unlinkat(dir, name, AtFlags::empty())?;
        return Ok(true);
    }
    let sub = rustix::fs::openat(
        dir,
        name,
        rustix::fs::OFlags::RDONLY
            | rustix::fs::OFlags::DIRECTORY
            | rustix::fs::OFlags::NOFOLLOW
            | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    let mut children = Vec::new();
    for entry in rustix::fs::Dir::read_from(&sub)? {
        let entry = entry?;
        let child = entry.file_name().to_bytes();
        if child != b"." && child != b".." {
            use std::os::unix::ffi::OsStrExt;
            children.push(std::ffi::OsStr::from_bytes(child).to_owned());
        }
    }
    for child in children {
        remove_entry(&sub, &child)?;
    }
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn removals_stay_inside_the_rootfs() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), b"host file").unwrap();
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::os::unix::fs::symlink(outside.path(), r.join("host")).unwrap();
        std::os::unix::fs::symlink("../../../..", r.join("up")).unwrap();
        std::fs::create_dir_all(r.join("etc/sub")).unwrap();
        std::fs::write(r.join("etc/group"), b"g").unwrap();
        std::fs::write(r.join("etc/sub/x"), b"x").unwrap();
        // Through a symlink to the host: resolved inside the rootfs, where it is absent.
        assert!(!remove_in_root(r, "/host/keep").unwrap());
        let escape = format!("/up{}/keep", outside.path().display());
        assert!(!remove_in_root(r, &escape).unwrap());
        assert!(outside.path().join("keep").exists(), "removed a host file");
        // The link itself goes, never its target.
        assert!(remove_in_root(r, "/host").unwrap());
        assert!(outside.path().join("keep").exists());
        assert!(remove_in_root(r, "/etc/group").unwrap());
        assert!(remove_in_root(r, "/etc/sub").unwrap());
        assert!(!r.join("etc/sub").exists() && r.join("etc").is_dir());
        assert!(!remove_in_root(r, "/etc/gone/deeper").unwrap());
        assert!(remove_in_root(r, "/etc/../x").is_err());
        assert!(remove_in_root(r, "/").is_err());
    }

    #[test]
    fn symlinks_resolve_inside_the_rootfs() {
        let outside = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/", root.path().join("data")).unwrap();
        std::os::unix::fs::symlink("../../../..", root.path().join("up")).unwrap();
        let escape = outside.path().strip_prefix("/").unwrap().join("x");
        for via in ["data", "up"] {
            let path = format!("/{via}/{}", escape.display());
            create_dir_all_in_root(root.path(), &path, 0o755, None).unwrap();
        }
        assert!(
            !outside.path().join("x").exists(),
            "created outside the rootfs"
        );
        let inside = root.path().join(&escape);
        assert!(inside.is_dir());
        let mode = std::fs::metadata(&inside).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o755);
    }

    #[test]
    fn new_directories_get_the_owner_asked_for() {
        use std::os::unix::fs::MetadataExt;
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("old")).unwrap();
        create_dir_all_in_root(root.path(), "/old/new/newer", 0o755, Some((1000, 1001))).unwrap();
        let owner = |p: &str| {
            let m = std::fs::metadata(root.path().join(p)).unwrap();
            (m.uid(), m.gid())
        };
        assert_eq!(
            owner("old"),
            (0, 0),
            "an existing directory keeps its owner"
        );
        assert_eq!(owner("old/new"), (1000, 1001));
        assert_eq!(owner("old/new/newer"), (1000, 1001));
    }

    #[test]
    fn dangling_links_and_dotdot_are_refused() {
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/proc/self/cwd", root.path().join("cwd")).unwrap();
        // In the root, /proc/self/cwd is a missing path, never the host's /proc: the
        // link dangles, and is refused rather than replaced or followed.
        assert!(create_dir_all_in_root(root.path(), "/cwd/x", 0o755, None).is_err());
        assert!(!root.path().join("proc").exists());
        assert!(create_dir_all_in_root(root.path(), "/a/../b", 0o755, None).is_err());
        assert!(!root.path().join("a").exists());
    }

    #[test]
    fn a_file_in_the_way_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("f"), "").unwrap();
        assert!(create_dir_all_in_root(root.path(), "/f/x", 0o755, None).is_err());
    }
}
