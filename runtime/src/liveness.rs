//! Is the pause process alive? Pids are reused, so a pid is only "ours" when its start
//! time matches the one recorded; exits are noticed through a pidfd, which works for
//! processes that are not our children (runc's init is reparented away from crustd).

use std::io;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// The process's start time in clock ticks after boot (field 22 of /proc/PID/stat).
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // After "pid (comm)", field 3 (state) is index 0 here, so field 22 is index 19.
    let state = fields.first()?;
    if *state == "Z" || *state == "X" {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Whether `pid` is running and is the process that started at `start`.
pub fn alive(pid: i32, start: u64) -> bool {
    pid > 0 && start_time(pid).is_some_and(|s| start == 0 || s == start)
}

/// Resolves when the process exits (or at once if it is gone).
pub async fn wait_exit(pid: i32) -> io::Result<()> {
    let fd = match crust_util::process::pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(()),
        Err(e) => return Err(e),
    };
    // SAFETY: the AsyncFd owns the pidfd for as long as it is registered; nothing else
    // holds or closes it.
    let async_fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE)? };
    // A pidfd becomes readable when the process exits.
    let _ = async_fd.readable().await?;
    reap(pid);
    Ok(())
}

/// Reaps `pid` if it is our child. crustd is a child subreaper, so monitors and pause
/// processes that their spawners left behind become its children; without this they
/// would stay zombies. Waiting on a process that is not our child fails harmlessly.
pub fn reap(pid: i32) {
    let _ = nix::sys::wait::waitpid(
        nix::unistd::Pid::from_raw(pid),
        Some(nix::sys::wait::WaitPidFlag::WNOHANG),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_child_is_alive_until_it_exits() {
        let mut child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let start = start_time(pid).unwrap();
        assert!(alive(pid, start));
        assert!(!alive(pid, start + 1));
        wait_exit(pid).await.unwrap();
        // wait_exit reaped it: our own child is gone, not left a zombie.
        assert!(child.try_wait().is_err());
        assert!(!alive(pid, start));
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }
}
