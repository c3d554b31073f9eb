//! Named network namespaces pinned by a bind mount, and running code inside one.
//!
//! A network namespace lives as long as something refers to it. A pod's netns must
//! outlive any process in it (the pause process may die and be restarted), so it is
//! pinned the way iproute2's `ip netns add` does it: the namespace file of a thread
//! that unshared its network namespace is bind-mounted onto an empty file
//! `<dir>/<name>`. The directory itself is made a shared mountpoint first, so that a
//! later unmount propagates into mount namespaces created in between (containers,
//! monitors) and the namespace is really freed.
//!
//! A namespace is created with its loopback interface up.
//!
//! `unshare` and `setns` change only the calling thread, so both are done on a
//! dedicated short-lived OS thread, never on the caller's (a tokio worker would keep
//! the namespace for whatever task it runs next).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use crate::error::{CniError, Result};

/// Serializes the one-time preparation of netns directories within this process, so
/// two concurrent creations do not both bind-mount the directory onto itself.
static DIR_SETUP: Mutex<()> = Mutex::new(());

/// A network namespace pinned at a path by a bind mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetNs {
    path: PathBuf,
}

impl NetNs {
    /// Creates a new network namespace pinned at `<dir>/<name>`.
    ///
    /// Its `lo` is up. `dir` is created if missing and made a shared mountpoint. Fails with
    /// `AlreadyExists` when the file is already there.
    pub fn create(dir: &Path, name: &str) -> Result<NetNs> {
        validate_name(name)?;
        let path = dir.join(name);
        create_pin_file(&path)?;
        if let Err(err) = unshare_and_pin(&path) {
            // Nothing is mounted on failure; the file is ours and empty.
            let _ = fs::remove_file(&path);
            return Err(err);
        }
        tracing::debug!(path = %path.display(), "created network namespace");
        Ok(NetNs { path })
    }

    /// Pins the network namespace at `source` (another process's `ns/net`, e.g. one
    /// made inside a pod's user namespace) at `<dir>/<name>` and brings its `lo` up;
    /// otherwise as [`NetNs::create`].
    pub fn adopt(dir: &Path, name: &str, source: &Path) -> Result<NetNs> {
        validate_name(name)?;
        let path = dir.join(name);
        pin(source, &path)?;
        let up = run_in_netns(&path, crate::loopback::bring_up_in_current_netns)
            .and_then(|r| r.map_err(|source| netns_err(&path, "bring up lo", source)));
        if let Err(err) = up {
            let _ = remove(&path);
            return Err(err);
        }
        tracing::debug!(path = %path.display(), "pinned network namespace");
        Ok(NetNs { path })
    }

    /// Refers to an existing pinned namespace (for example one found after a restart).
    pub fn from_path(path: impl Into<PathBuf>) -> NetNs {
        NetNs { path: path.into() }
    }

    /// The path of the pinned namespace, as passed to CNI plugins and the OCI runtime.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unpins and deletes the namespace file; see [`remove`].
    pub fn remove(&self) -> Result<()> {
        remove(&self.path)
    }
}

/// Pins the namespace file `source` (any kind: `/proc/<pid>/ns/<kind>`) by
/// bind-mounting it onto a new file `target`, in a directory made a shared mountpoint
/// as for network namespaces. Undo with [`remove`]. Fails with `AlreadyExists` when
/// `target` is there.
pub fn pin(source: &Path, target: &Path) -> Result<()> {
    create_pin_file(target)?;
    if let Err(errno) = nix::mount::mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    ) {
        let _ = fs::remove_file(target);
        return Err(netns_err(target, "bind mount", errno.into()));
    }
    Ok(())
}

/// Creates the empty file `path` a namespace is pinned on, its directory made first
/// and made a shared mountpoint. `AlreadyExists` when the file is there.
fn create_pin_file(path: &Path) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| CniError::Internal(format!("{}: no parent", path.display())))?;
    fs::create_dir_all(dir).map_err(|source| netns_err(dir, "create directory", source))?;
    ensure_shared_mountpoint(dir)?;
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(path)
        .map(drop)
        .map_err(|source| match source.kind() {
            io::ErrorKind::AlreadyExists => CniError::NetnsExists(path.to_path_buf()),
            _ => netns_err(path, "create mountpoint file", source),
        })
}

/// Unmounts (lazily) and deletes a pinned namespace file. An absent one is not an error.
///
/// The namespace itself is freed by the kernel once no process and no other mount
/// refers to it.
pub fn remove(path: &Path) -> Result<()> {
    // A path could in theory have been pinned twice; unmount until nothing is left.
    for _ in 0..8 {
        match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            // EINVAL: not a mountpoint; ENOENT: no such file.
            Err(Errno::EINVAL | Errno::ENOENT) => break,
            Err(errno) => return Err(netns_err(path, "unmount", errno.into())),
        }
    }
    match fs::remove_file(path) {
        Ok(()) => {
            tracing::debug!(path = %path.display(), "removed network namespace");
            Ok(())
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(netns_err(path, "remove", source)),
    }
}

/// Runs `f` on a fresh OS thread that has joined the network namespace at `path`, and
/// returns its result.
///
/// The thread ends with `f`, so the namespace switch never leaks to other work. A
/// panic in `f` is reported as an internal error.
pub fn run_in_netns<T, F>(path: &Path, f: F) -> Result<T>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    let ns = File::open(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => CniError::NetnsNotFound(path.to_path_buf()),
        _ => netns_err(path, "open", source),
    })?;
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("crust-netns".into())
            .spawn_scoped(scope, move || {
                nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET)
                    .map_err(|errno| netns_err(path, "setns", errno.into()))?;
                drop(ns);
                Ok(f())
            })
            .map_err(|source| netns_err(path, "spawn thread", source))?;
        handle.join().unwrap_or_else(|_| {
            Err(CniError::Internal(format!(
                "netns {}: function run inside panicked",
                path.display()
            )))
        })
    })
}

/// Unshares the network namespace on a new thread and bind-mounts that thread's
/// namespace file onto `path`.
fn unshare_and_pin(path: &Path) -> Result<()> {
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("crust-netns-new".into())
            .spawn_scoped(scope, || {
                nix::sched::unshare(CloneFlags::CLONE_NEWNET)
                    .map_err(|errno| netns_err(path, "unshare", errno.into()))?;
                // Every pod gets a working localhost, whether or not its conflist
                // lists CNI's loopback plugin (see the loopback module).
                crate::loopback::bring_up_in_current_netns()
                    .map_err(|source| netns_err(path, "bring up lo", source))?;
                // The mount namespace is shared by all threads, so the bind mount made
                // here is visible to the whole process; only the network namespace of
                // this thread differs, and the thread ends right after.
                let source = format!("/proc/self/task/{}/ns/net", nix::unistd::gettid());
                nix::mount::mount(
                    Some(source.as_str()),
                    path,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|errno| netns_err(path, "bind mount", errno.into()))
            })
            .map_err(|source| netns_err(path, "spawn thread", source))?;
        handle.join().unwrap_or_else(|_| {
            Err(CniError::Internal(format!(
                "netns {}: creating thread panicked",
                path.display()
            )))
        })
    })
}

/// Makes `dir` a shared mountpoint, bind-mounting it onto itself first when it is not
/// a mountpoint yet (what iproute2 does for /run/netns).
fn ensure_shared_mountpoint(dir: &Path) -> Result<()> {
    // A poisoned lock only means another creation panicked; the state is the kernel's.
    let _guard = DIR_SETUP
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    let mut bound = false;
    loop {
        match nix::mount::mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        ) {
            Ok(()) => return Ok(()),
            // EINVAL: not a mountpoint. Make it one, once.
            Err(Errno::EINVAL) if !bound => {
                nix::mount::mount(
                    Some(dir),
                    dir,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .map_err(|errno| {
                    netns_err(dir, "bind mount directory onto itself", errno.into())
                })?;
                bound = true;
            }
            Err(errno) => return Err(netns_err(dir, "make shared mountpoint", errno.into())),
        }
    }
}

fn validate_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        Some("must be a plain file name")
    } else if name.len() > 255 {
        Some("longer than 255 bytes")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(CniError::InvalidArgument {
            what: "netns name",
            value: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

fn netns_err(path: &Path, op: &'static str, source: io::Error) -> CniError {
    CniError::Netns {
        path: path.to_path_buf(),
        op,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_are_not_plain_file_names_are_refused() {
        for name in ["", ".", "..", "a/b", "/abs"] {
            let err = validate_name(name).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument, "{name:?}");
        }
        validate_name("cni-1234").unwrap();
    }

    #[test]
    fn removing_an_absent_netns_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        remove(&dir.path().join("absent")).unwrap();
    }

    /// Regression: pods had `lo` DOWN when their conflist had no loopback plugin, so
    /// nothing in them could reach 127.0.0.1.
    #[test]
    fn a_created_namespace_reaches_its_own_localhost() {
        let dir = tempfile::tempdir().unwrap();
        let ns = NetNs::create(dir.path(), "lo-test").unwrap();
        let echoed = run_in_netns(ns.path(), || -> io::Result<Vec<u8>> {
            use std::io::{Read, Write};
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            let mut client = std::net::TcpStream::connect(listener.local_addr()?)?;
            let (mut server, _) = listener.accept()?;
            client.write_all(b"ping")?;
            drop(client);
            let mut got = Vec::new();
            server.read_to_end(&mut got)?;
            Ok(got)
        });
        ns.remove().unwrap();
        assert_eq!(echoed.unwrap().unwrap(), b"ping");
    }

    #[test]
    fn run_in_a_missing_netns_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let err = run_in_netns(&dir.path().join("absent"), || ()).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::NotFound);
    }
}
