//! Bind mounts crust prepares for the OCI runtime: recursive read-only ones (CRI
//! `recursive_read_only`) and idmapped ones (pods with a user namespace), for every
//! runtime.
//!
//! runc before 1.2 has neither: it passes an `rro` option to mount(2) as data, which a
//! bind mount ignores (the submounts stayed writable), and it has no idmapped mounts.
//! So crust makes the tree itself before the runtime runs: a detached clone of the
//! source (`open_tree(OPEN_TREE_CLONE)`) changed with `mount_setattr` (read-only with
//! `AT_RECURSIVE`; idmapped with the pod's mappings), private, attached at a staging
//! path in the bundle that the spec names as the mount's source. The runtime's bind of
//! it copies each mount's flags and idmapping into the container; once `create` has
//! returned the container holds its own copy, and the staging mount is detached.
//!
//! Needs Linux 5.12 (`mount_setattr`); [`supported`] says whether this kernel has it.

use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crust_util::mount_tree::{self, TreeAttrs};
use oci_spec::runtime::Spec;

pub use crust_util::mount_tree::supported;

/// The mount option that asks for a recursive read-only mount, as runc 1.2 and crun
/// spell it.
pub const OPTION: &str = "rro";
/// Where in a bundle the staged trees are attached.
pub const STAGING_DIR: &str = "staged";

fn is_bind(m: &oci_spec::runtime::Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind")
}

fn has_option(m: &oci_spec::runtime::Mount, option: &str) -> bool {
    m.options().iter().flatten().any(|o| o == option)
}

/// Stages the bind mounts of `spec` that need it below `<bundle>/staged`: every `rro`
/// one (the option is dropped: the tree already is what it asked for, and runc 1.1
/// would pass it on as mount data), and with `idmap` (the pod's user namespace) every
/// bind mount, idmapped. The mount's source becomes the staged tree. A source whose
/// file system cannot be idmapped is bound as it is, as runtimes without idmapped
/// mounts do. Blocking. On error whatever was staged is detached again.
pub fn stage(spec: &mut Spec, bundle: &Path, idmap: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let Some(mut mounts) = spec.mounts().clone() else {
        return Ok(());
    };
    let wanted = |m: &oci_spec::runtime::Mount| {
        has_option(m, OPTION) || (idmap.is_some() && is_bind(m) && m.source().is_some())
    };
    if !mounts.iter().any(wanted) {
        return Ok(());
    }
    if !supported() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "recursive read-only and idmapped mounts need Linux 5.12 (mount_setattr)",
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
            let readonly = has_option(mount, OPTION);
            let attrs = TreeAttrs {
                readonly,
                idmap,
                recursive: readonly || has_option(mount, "rbind"),
            };
            let staged = dir.join(i.to_string());
            if !dir.exists() {
                // Passable: the runtime binds from here as a user-namespaced pod's root;
                // the bundle around it decides who gets this far.
                std::fs::create_dir(&dir)?;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))?;
            }
            let is_dir = std::fs::metadata(&source)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", source.display())))?
                .is_dir();
            if is_dir {
                std::fs::create_dir(&staged)?;
            } else {
                std::fs::File::create(&staged)?;
            }
            let attached = match mount_tree::attach(&source, &staged, attrs) {
                // EINVAL: a file system (or a submount's) without idmapped mounts.
                Err(e) if idmap.is_some() && e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::debug!(source = %source.display(), "not idmappable; bound as it is");
                    if readonly {
                        let plain = TreeAttrs {
                            idmap: None,
                            ..attrs
                        };
                        mount_tree::attach(&source, &staged, plain).map(|()| true)
                    } else {
                        Ok(false)
                    }
                }
                other => other.map(|()| true),
            }
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", source.display())))?;
            if !attached {
                continue;
            }
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

/// Attaches an idmapped clone of `rootfs` (a tree crust shares between pods, the
/// built-in pause's) at `<bundle>/staged/rootfs`, for a pod with its own user
/// namespace: the runtime opens a rootfs as the pod's root, which the clone shows as
/// its owner. Its path; detached by [`unstage`]. Blocking.
pub fn stage_rootfs(
    rootfs: &Path,
    bundle: &Path,
    idmap: BorrowedFd<'_>,
) -> io::Result<std::path::PathBuf> {
    let dir = bundle.join(STAGING_DIR);
    if !dir.exists() {
        std::fs::create_dir(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))?;
    }
    let target = dir.join("rootfs");
    std::fs::create_dir_all(&target)?;
    let attrs = TreeAttrs {
        idmap: Some(idmap),
        ..TreeAttrs::default()
    };
    if let Err(e) = mount_tree::attach(rootfs, &target, attrs) {
        let _ = std::fs::remove_dir(&target);
        return Err(io::Error::new(
            e.kind(),
            format!("{}: {e}", rootfs.display()),
        ));
    }
    Ok(target)
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
            tracing::warn!(path = %point.display(), error = %e, "detach a staged tree");
        }
    }
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        tracing::warn!(path = %dir.display(), error = %e, "remove the mount staging dir");
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
        stage(&mut spec, Path::new("/nonexistent-bundle"), None).unwrap();
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
        stage(&mut spec, &bundle, None).unwrap();
        let mount = &spec.mounts().as_ref().unwrap()[0];
        let staged = mount.source().clone().unwrap();
        assert_eq!(staged, bundle.join("staged/0"));
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
    fn with_a_user_namespace_bind_mounts_are_idmapped_where_the_fs_allows() {
        use std::os::fd::AsFd;
        use std::os::unix::fs::MetadataExt;
        if !is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("src");
        std::fs::create_dir_all(&source).unwrap();
        std::fs::write(source.join("file"), b"x").unwrap();
        let bundle = dir.path().join("bundle");
        std::fs::create_dir_all(&bundle).unwrap();
        let bind = |source: &Path, destination: &str| {
            MountBuilder::default()
                .destination(destination)
                .typ("bind")
                .source(source)
                .options(vec!["rbind".to_string(), "rw".to_string()])
                .build()
                .unwrap()
        };
        let mut spec = SpecBuilder::default()
            .mounts(vec![
                bind(&source, "/data"),
                // sysfs has no idmapped mounts: bound as it is.
                bind(Path::new("/sys/kernel"), "/kernel"),
            ])
            .build()
            .unwrap();
        let range = crust_util::userns::IdRange {
            container_id: 0,
            host_id: 1000,
            length: 65536,
        };
        let ns = crust_util::userns::IdMappings {
            uids: range,
            gids: range,
        }
        .open_userns()
        .unwrap();
        stage(&mut spec, &bundle, Some(ns.as_fd())).unwrap();
        let mounts = spec.mounts().as_ref().unwrap();
        let staged = mounts[0].source().clone().unwrap();
        assert_eq!(staged, bundle.join("staged/0"));
        let meta = std::fs::metadata(staged.join("file")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (1000, 1000));
        assert_eq!(
            mounts[1].source().as_deref(),
            Some(Path::new("/sys/kernel"))
        );
        unstage(&bundle);
        assert!(crate::mountinfo::mount_points_below(&bundle).is_empty());
    }

    #[test]
    fn a_missing_source_fails_and_leaves_nothing() {
        if !is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut spec = spec_with(&dir.path().join("missing"), &["rbind", "ro", OPTION]);
        let err = stage(&mut spec, dir.path(), None).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        assert!(!dir.path().join(STAGING_DIR).exists());
    }
}
