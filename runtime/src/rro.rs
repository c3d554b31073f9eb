//! Recursive read-only bind mounts (CRI `recursive_read_only`) for every OCI runtime.
//!
//! runc before 1.2 has no `rro` option (it passes unknown options to mount(2) as data,
//! which a bind mount ignores: the submounts stayed writable). So crust makes the tree
//! itself before the runtime runs: a detached clone of the source with every mount in
//! it read-only (`open_tree(OPEN_TREE_CLONE | AT_RECURSIVE)`, then `mount_setattr`
//! with `MOUNT_ATTR_RDONLY` and `AT_RECURSIVE`, private), attached at a staging path in
//! the bundle that the spec names as the mount's source. The runtime's `rbind` of it
//! copies each mount's read-only flag into the container; once `create` has returned
//! the container holds its own copy, and the staging mount is detached.
//!
//! Needs Linux 5.12 (`mount_setattr`); [`supported`] says whether this kernel has it.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::OnceLock;

use oci_spec::runtime::Spec;
use rustix::mount::{MoveMountFlags, OpenTreeFlags};

/// The mount option that asks for it, as runc 1.2 and crun spell it.
pub const OPTION: &str = "rro";
/// Where in a bundle the staged trees are attached.
pub const STAGING_DIR: &str = "rro";

const MOUNT_ATTR_RDONLY: u64 = 0x1;
/// `struct mount_attr` (linux/mount.h, version 0).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn mount_setattr(fd: &OwnedFd, flags: u32, attr: &MountAttr) -> io::Result<()> {
    // SAFETY: mount_setattr(2) with a valid fd, a NUL-terminated empty path and a
    // mount_attr of the size passed; the kernel only reads the struct.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
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
        // SAFETY: as in mount_setattr above, with fd -1 (nothing is touched).
        let r = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                -1,
                c"".as_ptr(),
                libc::AT_EMPTY_PATH,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        r == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS)
    })
}

/// Attaches a read-only clone of the tree at `source` (every mount in it read-only)
/// at `target`, an empty directory.
fn attach_readonly_tree(source: &Path, target: &Path) -> io::Result<()> {
    let tree = rustix::mount::open_tree(
        rustix::fs::CWD,
        source,
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_RECURSIVE,
    )?;
    mount_setattr(
        &tree,
        (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as u32,
        &MountAttr {
            attr_set: MOUNT_ATTR_RDONLY,
            attr_clr: 0,
            propagation: libc::MS_PRIVATE,
            userns_fd: 0,
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

/// Stages every `rro` bind mount of `spec` below `<bundle>/rro`: the mount's source
/// becomes the staged read-only tree and the option is dropped (the tree already is
/// what it asked for, and runc 1.1 would pass it on as mount data). Blocking.
/// On error whatever was staged is detached again.
pub fn stage(spec: &mut Spec, bundle: &Path) -> io::Result<()> {
    let Some(mut mounts) = spec.mounts().clone() else {
        return Ok(());
    };
    let wanted = |m: &oci_spec::runtime::Mount| {
        m.options()
            .as_ref()
            .is_some_and(|o| o.iter().any(|o| o == OPTION))
    };
    if !mounts.iter().any(wanted) {
        return Ok(());
    }
    if !supported() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "recursive read-only mounts need Linux 5.12 (mount_setattr)",
        ));
    }
    let dir = bundle.join(STAGING_DIR);
    let result = (|| {
        for (i, mount) in mounts.iter_mut().enumerate() {
            if !wanted(mount) {
                continue;
            }
            let source = mount.source().clone().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "rro mount without a source")
            })?;
            let staged = dir.join(i.to_string());
            std::fs::create_dir_all(&staged)?;
            attach_readonly_tree(&source, &staged)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", source.display())))?;
            let options: Vec<String> = mount
                .options()
                .iter()
                .flatten()
                .filter(|o| *o != OPTION)
                .cloned()
                .collect();
            mount.set_source(Some(staged)).set_options(Some(options));
        }
        Ok(())
    })();
    if let Err(e) = result {
        unstage(bundle);
        return Err(e);
    }
    spec.set_mounts(Some(mounts));
    Ok(())
}

/// Detaches every staged tree of `bundle` and removes the staging directory; nothing
/// to do when there is none. Blocking. Idempotent, also after a crash mid-create.
pub fn unstage(bundle: &Path) {
    let dir = bundle.join(STAGING_DIR);
    if std::fs::symlink_metadata(&dir).is_err() {
        return;
    }
    for point in crate::mountinfo::mount_points_below(&dir) {
        if let Err(e) = rustix::mount::unmount(&point, rustix::mount::UnmountFlags::DETACH) {
            tracing::warn!(path = %point.display(), error = %e, "detach a staged read-only tree");
        }
    }
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        tracing::warn!(path = %dir.display(), error = %e, "remove the read-only staging dir");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{MountBuilder, SpecBuilder};

    fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    fn spec_with(source: &Path, options: &[&str]) -> Spec {
        let mount = MountBuilder::default()
            .destination("/mnt")
            .typ("bind")
            .source(source)
            .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
            .build()
            .unwrap();
        SpecBuilder::default().mounts(vec![mount]).build().unwrap()
    }

    #[test]
    fn the_kernel_here_has_mount_setattr() {
        // Linux 5.12+ everywhere crust is tested; a false here would silently skip
        // the tests below.
        assert!(supported());
    }

    #[test]
    fn specs_without_rro_are_left_alone() {
        let mut spec = spec_with(Path::new("/nonexistent"), &["rbind", "ro"]);
        let before = serde_json::to_value(&spec).unwrap();
        stage(&mut spec, Path::new("/nonexistent-bundle")).unwrap();
        assert_eq!(serde_json::to_value(&spec).unwrap(), before);
    }

    #[test]
    fn staged_trees_are_read_only_all_the_way_down_and_go_away() {
        if !is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("src");
        let sub = source.join("sub");
        std::fs::create_dir_all(&sub).unwrap();
        rustix::mount::mount(
            "none",
            &sub,
            "tmpfs",
            rustix::mount::MountFlags::empty(),
            None,
        )
        .unwrap();
        let bundle = dir.path().join("bundle");
        std::fs::create_dir_all(&bundle).unwrap();
        let mut spec = spec_with(&source, &["rbind", "rprivate", "ro", OPTION]);
        stage(&mut spec, &bundle).unwrap();
        let mount = &spec.mounts().as_ref().unwrap()[0];
        let staged = mount.source().clone().unwrap();
        assert_eq!(staged, bundle.join("rro/0"));
        assert_eq!(
            mount.options().as_ref().unwrap(),
            &["rbind", "rprivate", "ro"]
        );
        // The submount is read-only in the staged tree, writable at its source.
        let err = std::fs::write(staged.join("sub/file"), b"x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
        std::fs::write(sub.join("file"), b"x").unwrap();
        unstage(&bundle);
        assert!(!bundle.join(STAGING_DIR).exists());
        assert!(crate::mountinfo::mount_points_below(&bundle).is_empty());
        rustix::mount::unmount(&sub, rustix::mount::UnmountFlags::DETACH).unwrap();
    }

    #[test]
    fn a_missing_source_fails_and_leaves_nothing() {
        if !is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut spec = spec_with(&dir.path().join("missing"), &["rbind", "ro", OPTION]);
        let err = stage(&mut spec, dir.path()).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        assert!(!dir.path().join(STAGING_DIR).exists());
    }
}
