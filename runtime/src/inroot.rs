//! Creating paths that an image or a request names, inside a container's rootfs.
//!
//! The rootfs belongs to the image: any component of a path in it may be a symlink
//! planted by a layer (`data -> /`, `up -> ../../..`). Joining the path onto the
//! rootfs and calling `create_dir_all` would follow those links on the host, so root
//! would create directories anywhere (issue 14). Here every step is resolved by the
//! kernel with `openat2(RESOLVE_IN_ROOT)`: symlinks are followed as if the rootfs were
//! `/`, the way the container itself will see them, and `..` stops at the rootfs. New
//! directories are made with `mkdirat` in a directory opened that way, so nothing
//! outside the rootfs is ever created.

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

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
