//! User namespaces with given id mappings, made by a short-lived child process.
//!
//! crustd is multithreaded, and a multithreaded process can neither unshare nor enter
//! a user namespace. So a forked child unshares one (and, when asked, a network
//! namespace inside it, which then belongs to it: only such a netns lets the
//! namespace's root bind low ports, set net sysctls and mount /sys), crust writes its
//! `uid_map` and `gid_map`, and pins or opens `/proc/<child>/ns/*` while the child
//! waits. Dropping the [`Holder`] lets the child exit.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

/// One range of ids: `length` ids from `container_id` are `host_id` onwards on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IdRange {
    /// The first id inside the namespace.
    pub container_id: u32,
    /// The first id on the host.
    pub host_id: u32,
    /// How many ids.
    pub length: u32,
}

impl IdRange {
    /// The host id of namespace id `id`, if the range maps it.
    pub fn to_host(&self, id: u32) -> Option<u32> {
        let offset = id.checked_sub(self.container_id)?;
        (offset < self.length).then(|| self.host_id + offset)
    }

    /// The `/proc/PID/uid_map` line.
    fn line(&self) -> String {
        format!("{} {} {}\n", self.container_id, self.host_id, self.length)
    }
}

/// A user namespace's mappings: one uid range and one gid range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IdMappings {
    /// The uid range.
    pub uids: IdRange,
    /// The gid range.
    pub gids: IdRange,
}

impl IdMappings {
    /// The host uid and gid of the namespace's root, if it maps root.
    pub fn host_root(&self) -> Option<(u32, u32)> {
        Some((self.uids.to_host(0)?, self.gids.to_host(0)?))
    }

    /// Opens a user namespace with these mappings (for idmapped mounts, which need
    /// only the mappings, not a particular namespace). Blocking: a fork and a few
    /// writes.
    pub fn open_userns(&self) -> io::Result<File> {
        let holder = Holder::spawn(self, false)?;
        File::open(holder.ns_path("user"))
    }
}

/// A child process in a new user namespace with the given mappings (and a network
/// namespace owned by it, when asked), waiting until dropped. Pin or open its
/// namespaces through [`Holder::ns_path`] meanwhile.
pub struct Holder {
    pid: libc::pid_t,
    /// Closing it lets the child exit.
    release: Option<OwnedFd>,
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both are fresh descriptors owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

impl Holder {
    /// Forks the holder; with `net`, it also unshares a network namespace once its
    /// user namespace has its mappings. Blocking.
    pub fn spawn(maps: &IdMappings, net: bool) -> io::Result<Holder> {
        let (ready_r, ready_w) = pipe()?;
        let (go_r, go_w) = pipe()?;
        // Formatted before the fork: the child may not allocate.
        let uid_map = maps.uids.line();
        let gid_map = maps.gids.line();
        // SAFETY: the child makes only async-signal-safe syscalls on descriptors made
        // above and exits; it never returns into Rust code, so the state of the other
        // threads it inherits is never touched.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            // SAFETY: see above.
            unsafe { holder_child(ready_w.as_raw_fd(), go_r.as_raw_fd(), net) }
        }
        drop(ready_w);
        drop(go_r);
        let holder = Holder {
            pid,
            release: Some(go_w),
        };
        // First report: the user namespace is there.
        holder.wait_for(&ready_r)?;
        // Written by a privileged process (CAP_SETGID over the parent namespace), a
        // gid_map needs no `setgroups deny` first, so the pod's processes keep
        // setgroups(2).
        std::fs::write(format!("/proc/{pid}/uid_map"), uid_map)?;
        std::fs::write(format!("/proc/{pid}/gid_map"), gid_map)?;
        holder.signal()?;
        // Second report: the network namespace is there (or, without `net`, the
        // child has seen its mappings).
        holder.wait_for(&ready_r)?;
        Ok(holder)
    }

    /// `/proc/<holder>/ns/<kind>` (`user`, `net`).
    pub fn ns_path(&self, kind: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/{kind}", self.pid))
    }

    fn wait_for(&self, ready: &OwnedFd) -> io::Result<()> {
        let mut byte = 0u8;
        // SAFETY: reads one byte into a live local.
        let n = unsafe { libc::read(ready.as_raw_fd(), (&mut byte as *mut u8).cast(), 1) };
        match n {
            1 if byte == b'+' => Ok(()),
            1 => Err(io::Error::other(
                "the user namespace holder could not unshare its namespaces",
            )),
            _ => Err(io::Error::other("the user namespace holder exited early")),
        }
    }

    fn signal(&self) -> io::Result<()> {
        let fd = self.release.as_ref().map_or(-1, |f| f.as_raw_fd());
        // SAFETY: writes one byte from a static.
        if unsafe { libc::write(fd, b"+".as_ptr().cast(), 1) } != 1 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        // EOF on its pipe lets the child exit; then it is reaped.
        self.release = None;
        let mut status = 0;
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(self.pid, &mut status, 0) };
    }
}

/// The holder's life: unshare the user namespace, wait for the mappings, unshare the
/// network namespace if asked, wait for EOF. Reports each step on `ready`.
///
/// # Safety
/// Only to be called in a child just forked: it makes async-signal-safe syscalls only
/// and never returns.
unsafe fn holder_child(ready: libc::c_int, go: libc::c_int, net: bool) -> ! {
    // SAFETY: raw syscalls on plain integers and locals.
    unsafe {
        let report = |ok: bool| {
            let byte: u8 = if ok { b'+' } else { b'-' };
            libc::write(ready, (&byte as *const u8).cast(), 1);
        };
        // Dies with crustd rather than lingering if the pipe somehow stays open.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        // Every other descriptor goes: a pipe end of another holder kept open here
        // would keep that holder waiting for its EOF.
        let (low, high) = (ready.min(go) as libc::c_uint, ready.max(go) as libc::c_uint);
        if low > 0 {
            libc::syscall(libc::SYS_close_range, 0, low - 1, 0);
        }
        if high > low + 1 {
            libc::syscall(libc::SYS_close_range, low + 1, high - 1, 0);
        }
        libc::syscall(libc::SYS_close_range, high + 1, libc::c_uint::MAX, 0);
        if libc::unshare(libc::CLONE_NEWUSER) != 0 {
            report(false);
            libc::_exit(1);
        }
        report(true);
        let mut byte = 0u8;
        if libc::read(go, (&mut byte as *mut u8).cast(), 1) != 1 {
            libc::_exit(1);
        }
        if net && libc::unshare(libc::CLONE_NEWNET) != 0 {
            report(false);
            libc::_exit(1);
        }
        report(true);
        // Until crust has what it needs and closes its end.
        while libc::read(go, (&mut byte as *mut u8).cast(), 1) > 0 {}
        libc::_exit(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(host_id: u32) -> IdRange {
        IdRange {
            container_id: 0,
            host_id,
            length: 100_000,
        }
    }

    #[test]
    fn ranges_map_ids() {
        let r = IdRange {
            container_id: 0,
            host_id: 100_000,
            length: 65536,
        };
        assert_eq!(r.to_host(0), Some(100_000));
        assert_eq!(r.to_host(65535), Some(165_535));
        assert_eq!(r.to_host(65536), None);
        let shifted = IdRange {
            container_id: 1,
            ..r
        };
        assert_eq!(shifted.to_host(0), None);
        let maps = IdMappings {
            uids: shifted,
            gids: r,
        };
        assert_eq!(maps.host_root(), None);
    }

    #[test]
    fn the_holder_has_the_mappings_and_a_netns_of_its_own() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let maps = IdMappings {
            uids: range(1000),
            gids: range(2000),
        };
        let holder = Holder::spawn(&maps, true).unwrap();
        let pid = holder.pid;
        let uid_map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
        assert_eq!(
            uid_map.split_whitespace().collect::<Vec<_>>(),
            ["0", "1000", "100000"]
        );
        let gid_map = std::fs::read_to_string(format!("/proc/{pid}/gid_map")).unwrap();
        assert_eq!(
            gid_map.split_whitespace().collect::<Vec<_>>(),
            ["0", "2000", "100000"]
        );
        let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
        assert_ne!(std::fs::read_link(holder.ns_path("net")).unwrap(), ours);
        drop(holder);
        assert!(!std::path::Path::new(&format!("/proc/{pid}/ns")).exists());
    }

    #[test]
    fn without_net_the_holder_keeps_the_hosts_netns() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let maps = IdMappings {
            uids: range(1000),
            gids: range(1000),
        };
        let holder = Holder::spawn(&maps, false).unwrap();
        let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
        assert_eq!(std::fs::read_link(holder.ns_path("net")).unwrap(), ours);
        assert_ne!(
            std::fs::read_link(holder.ns_path("user")).unwrap(),
            std::fs::read_link("/proc/self/ns/user").unwrap()
        );
        let ns = maps.open_userns().unwrap();
        drop(ns);
    }
}
