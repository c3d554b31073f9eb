//! The few system calls the monitor makes that need care: detaching from crustd,
//! inherited descriptors, pidfds, killing and reaping what is left.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// Forks; returns in the child only. The parent exits at once with status 0, so that
/// crustd reaps it right away and the child, the real monitor, is reparented away from
/// crustd (to init or the nearest subreaper): a crustd restart can then neither take
/// it down nor leave it a zombie of the old crustd.
pub fn fork_away() -> io::Result<()> {
    // SAFETY: called first thing in main, when the process has one thread and holds no
    // locks, so the child may run any code. The parent only calls _exit.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(()),
        // SAFETY: _exit ends the process without running destructors or atexit
        // handlers, which belong to the child now.
        _ => unsafe { libc::_exit(0) },
    }
}

/// Leaves crustd's session (no terminal signals, its own process group, whose id is
/// the monitor's pid) and becomes the subreaper of everything it starts: the
/// container's init is reparented to it when `<runtime> create` exits.
pub fn detach() -> io::Result<()> {
    nix::unistd::setsid()?;
    nix::sys::prctl::set_child_subreaper(true)?;
    Ok(())
}

/// Closes every descriptor but 0-2 and `keep`: crustd's sockets, files and pipes must
/// not live on in a process that outlives crustd.
pub fn close_inherited_fds(keep: RawFd) -> io::Result<()> {
    // Listing first and closing after: the directory's own descriptor is among those
    // listed and is closed with the others (EBADF by then, ignored).
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds {
        if fd > 2 && fd != keep {
            // SAFETY: nothing in this process uses these descriptors: they were
            // inherited, and no code has run yet that opened any.
            unsafe { libc::close(fd) };
        }
    }
    Ok(())
}

/// Points 0, 1 and 2 at /dev/null: crustd's stdio must not be held open by a
/// process that outlives it, and the monitor writes nothing there.
pub fn stdio_to_dev_null() -> io::Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    nix::unistd::dup2_stdin(&null)?;
    nix::unistd::dup2_stdout(&null)?;
    nix::unistd::dup2_stderr(&null)?;
    Ok(())
}

/// Takes ownership of the inherited descriptor `fd`, marked close-on-exec so that the
/// runtime and the container do not inherit it.
pub fn adopt_fd(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_GETFD only reads the descriptor's flags; EBADF tells it is not open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor is open (checked above) and nothing else in the process
    // owns it: it was inherited for this purpose and is adopted once.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    set_cloexec(&owned)?;
    Ok(owned)
}

fn set_cloexec(fd: &OwnedFd) -> io::Result<()> {
    use nix::fcntl::{F_SETFD, FdFlag, fcntl};
    fcntl(fd, F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(())
}

/// Makes reads and writes on `fd` return EAGAIN instead of blocking.
pub fn set_nonblocking(fd: &impl std::os::fd::AsFd) -> io::Result<()> {
    use nix::fcntl::{F_GETFL, F_SETFL, OFlag, fcntl};
    let flags = OFlag::from_bits_retain(fcntl(fd, F_GETFL)?);
    fcntl(fd, F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// A pidfd for `pid`, or `None` where the kernel has none (before Linux 5.3).
pub fn pidfd_open(pid: Pid) -> Option<OwnedFd> {
    crust_util::process::pidfd_open(pid.as_raw()).ok()
}

/// Nanoseconds since the Unix epoch.
pub use crust_util::time::now_nanos as now_ns;

/// The exit code a shell reports: the code, or 128 + the signal's number.
pub fn exit_code(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, signal, _) => Some(128 + signal as i32),
        _ => None,
    }
}

/// The monitor's children (it is single-threaded: one task).
fn children() -> Vec<Pid> {
    let me = std::process::id();
    std::fs::read_to_string(format!("/proc/{me}/task/{me}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok().map(Pid::from_raw))
        .collect()
}

/// Kills every child with SIGKILL and reaps until none is left. Orphans of the runtime
/// (its `init` stages) are reparented to the monitor, the subreaper, as their parents
/// die, so each round kills the newly adopted ones too. Ends when `waitpid` reports
/// no child at all.
pub fn kill_and_reap_children() {
    loop {
        for child in children() {
            // Our own unreaped child: its pid cannot have been reused.
            let _ = kill(child, Signal::SIGKILL);
        }
        match waitpid(None, None) {
            Err(Errno::ECHILD) => return,
            Err(Errno::EINTR) | Ok(_) => {}
            Err(_) => return,
        }
    }
}

/// Reaps every child that has exited, without blocking, passing each to `reaped`.
pub fn reap_exited(mut reaped: impl FnMut(Pid, WaitStatus)) {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(status) => {
                if let Some(pid) = status.pid() {
                    reaped(pid, status);
                }
            }
        }
    }
}

/// Sets the terminal size of the pty whose master is `fd`.
pub fn set_window_size(fd: &impl AsRawFd, rows: u16, cols: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which is valid for the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &size) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
