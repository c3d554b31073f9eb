//! Detached mount trees (`open_tree`, `mount_setattr`, `move_mount`): clones of a path
//! whose mounts are made read-only or idmapped before they are attached anywhere.
//!
//! Needs Linux 5.12 (`mount_setattr`); [`supported`] says whether this kernel has it.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::OnceLock;

use rustix::mount::{MoveMountFlags, OpenTreeFlags};

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// `struct mount_attr` (linux/mount.h, version 0).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn mount_setattr(fd: libc::c_int, flags: u32, attr: &MountAttr) -> io::Result<()> {
    // SAFETY: mount_setattr(2) with a NUL-terminated empty path and a mount_attr of
    // the size passed; the kernel only reads the struct.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd,
            c"".as_ptr(),
            flags,
            attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether the kernel has `mount_setattr` (Linux ≥ 5.12): probed once with a bad fd,
/// which answers EBADF where the call exists and ENOSYS where it does not.
pub fn supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        let attr = MountAttr {
            attr_set: 0,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        mount_setattr(-1, libc::AT_EMPTY_PATH as u32, &attr)
            .err()
            .is_none_or(|e| e.raw_os_error() != Some(libc::ENOSYS))
    })
}

/// How a tree's clone differs from its source.
#[derive(Debug, Clone, Copy, Default)]
pub struct TreeAttrs<'a> {
    /// Every mount in the clone read-only.
    pub readonly: bool,
    /// Ids shifted through this user namespace's mappings (an open `ns/user` file):
    /// what the host's uid 0 owns, the namespace's root owns.
    pub idmap: Option<BorrowedFd<'a>>,
    /// Clone the mounts below `source` too (`AT_RECURSIVE`), as an `rbind` does.
    pub recursive: bool,
}

/// Attaches a private clone of the tree at `source`, changed by `attrs`, at `target`
/// (an existing directory, or a file when `source` is one). Blocking.
pub fn attach(source: &Path, target: &Path, attrs: TreeAttrs<'_>) -> io::Result<()> {
    let mut flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
    if attrs.recursive {
        flags |= OpenTreeFlags::AT_RECURSIVE;
    }
    let tree: OwnedFd = rustix::mount::open_tree(rustix::fs::CWD, source, flags)?;
    let mut attr_set = 0;
    if attrs.readonly {
        attr_set |= MOUNT_ATTR_RDONLY;
    }
    if attrs.idmap.is_some() {
        attr_set |= MOUNT_ATTR_IDMAP;
    }
    let mut setattr_flags = libc::AT_EMPTY_PATH as u32;
    if attrs.recursive {
        setattr_flags |= libc::AT_RECURSIVE as u32;
    }
    mount_setattr(
        tree.as_fd().as_raw_fd(),
        setattr_flags,
        &MountAttr {
            attr_set,
            attr_clr: 0,
            propagation: libc::MS_PRIVATE,
            userns_fd: attrs.idmap.map_or(0, |fd| fd.as_raw_fd() as u64),
        },
    )?;
    rustix::mount::move_mount(
        &tree,
        c"",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_here_has_mount_setattr() {
        // Linux 5.12+ everywhere crust is tested; a false here would silently skip
        // the tests of the callers.
        assert!(supported());
    }

    #[test]
    fn a_missing_source_is_an_error() {
        let err = attach(
            Path::new("/nonexistent/source"),
            Path::new("/nonexistent/target"),
            TreeAttrs::default(),
        )
        .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");
    }

    #[test]
    fn an_idmapped_clone_shows_root_files_as_the_namespaces_root() {
        use std::os::unix::fs::MetadataExt;
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let dir = std::env::temp_dir().join(format!("crust-idmap-{}", std::process::id()));
        let (source, target) = (dir.join("src"), dir.join("dst"));
        std::fs::create_dir_all(&source).unwrap();
        std::fs::create_dir_all(&target).unwrap();
        std::fs::write(source.join("file"), b"x").unwrap();
        let range = crate::userns::IdRange {
            container_id: 0,
            host_id: 1000,
            length: 100_000,
        };
        let ns = crate::userns::IdMappings {
            uids: range,
            gids: range,
        }
        .open_userns()
        .unwrap();
        attach(
            &source,
            &target,
            TreeAttrs {
                idmap: Some(ns.as_fd()),
                ..TreeAttrs::default()
            },
        )
        .unwrap();
        let meta = std::fs::metadata(target.join("file")).unwrap();
        rustix::mount::unmount(&target, rustix::mount::UnmountFlags::DETACH).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (1000, 1000));
    }
}
