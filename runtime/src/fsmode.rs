//! File modes that do not depend on the umask.
//!
//! crustd runs with umask 0077 (it sets it at start, and the systemd unit says so too),
//! so whatever it creates without thinking about it is private to root: the store, the
//! bundles with their specs (which carry the containers' environment, i.e. secrets),
//! exec specs, the writable layers. What containers must reach is given its mode
//! explicitly through this module, since a mode passed to mkdir or open is narrowed by
//! the umask:
//!
//! - directories created for bind-mount sources and image volumes: 0755, as containerd
//!   creates them, so a container running as another user can use them;
//! - the pod's hosts, hostname and resolv.conf: 0644, every user reads them.
//!
//! The OCI runtime and the monitor run with the conventional umask 0022
//! ([`RUNTIME_UMASK`]): runc creates mountpoints inside the container's rootfs (missing
//! parents of mount targets, `/etc` for the pod files) with mode 0755 and the umask,
//! and under 0077 those would be closed to a non-root container user. Everything the
//! runtime writes outside the rootfs lies in directories that are private already
//! (its `--root`, the bundle).

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// The umask crustd runs with: nothing it creates is readable by other users.
pub const DAEMON_UMASK: u32 = 0o077;

/// The umask the OCI runtime and the monitor run with (see the module doc).
pub const RUNTIME_UMASK: u32 = 0o022;

/// Sets crustd's umask to [`DAEMON_UMASK`]; call once at start, before any thread.
pub fn set_daemon_umask() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(DAEMON_UMASK));
}

/// Makes `command`'s child run with [`RUNTIME_UMASK`].
pub fn with_runtime_umask(command: &mut std::process::Command) -> &mut std::process::Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: umask is async-signal-safe and touches no memory; it runs in the forked
    // child before exec.
    unsafe {
        command.pre_exec(|| {
            libc::umask(RUNTIME_UMASK as libc::mode_t);
            Ok(())
        })
    }
}

/// [`with_runtime_umask`] for a tokio command.
pub fn with_runtime_umask_tokio(
    command: &mut tokio::process::Command,
) -> &mut tokio::process::Command {
    // SAFETY: as in with_runtime_umask.
    unsafe {
        command.pre_exec(|| {
            libc::umask(RUNTIME_UMASK as libc::mode_t);
            Ok(())
        })
    }
}

/// Creates `path` and its missing parents, each created one with exactly `mode`
/// (whatever the umask); directories that exist keep theirs.
pub fn create_dir_all_mode(path: &Path, mode: u32) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => return Ok(()),
        Ok(_) => {
            // A symlink to a directory is fine (the caller asked for a path to exist);
            // anything else makes mkdir fail with a clear error below.
            if std::fs::metadata(path).is_ok_and(|m| m.is_dir()) {
                return Ok(());
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_all_mode(parent, mode)?;
    }
    match std::fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates `path` (and its parents, with the umask's mode) and sets its mode to `mode`,
/// also when it existed: for crust's own directories, which an older version may have
/// left more open.
pub fn private_dir(path: &Path, mode: u32) -> io::Result<()> {
    std::fs::create_dir_all(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// The directories below the state directory that the OCI runtime passes through as a
/// pod's root when the pod has its own user namespace (to the rootfs mountpoints, the
/// bundles' staged mounts, the pod's /dev/shm, and the pinned namespaces, which
/// libcontainer joins by path once in the user namespace): 0711, passable without
/// listing; what lies below each is [`userns_dir`], 0700, or a namespace pin (nsfs,
/// 0444, and of no use without privileges over the namespace).
pub const TRAVERSED_STATE_DIRS: [&str; 7] = [
    "containers",
    "bundles",
    "sandboxes",
    "pause-rootfs",
    "netns",
    "ipcns",
    "utsns",
];

/// Makes `path` (created if missing) root:`gid` 0710: the processes of a pod whose
/// user namespace maps its root to host gid `gid` may pass through it (runc does, as
/// that root, to reach the rootfs and the bind mounts), no other user may.
pub fn userns_dir(path: &Path, gid: u32) -> io::Result<()> {
    std::fs::create_dir_all(path)?;
    std::os::unix::fs::chown(path, Some(0), Some(gid))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o710))
}

/// Writes `data` to a new or truncated file `path` readable by root only (exec specs
/// carry the container's environment).
pub fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    file.write_all(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_dir_all_mode_ignores_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
        let made = create_dir_all_mode(&dir.path().join("a/b"), 0o755);
        nix::sys::stat::umask(old);
        made.unwrap();
        for p in ["a", "a/b"] {
            let mode = std::fs::metadata(dir.path().join(p))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o7777, 0o755, "{p}");
        }
    }

    #[test]
    fn private_dir_tightens_an_existing_directory() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("root");
        std::fs::create_dir(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&p, 0o700).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o700);
    }
}
