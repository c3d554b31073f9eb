//! Processes: pidfds, and spawning a program that was just written.

use std::io;
use std::os::fd::OwnedFd;
use std::time::Duration;

/// A pidfd for `pid` (`pidfd_open(2)`, Linux 5.3+). A pid that is not positive is
/// EINVAL, as the kernel says of it; a process that is gone is ESRCH.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    let pid = (pid > 0)
        .then(|| rustix::process::Pid::from_raw(pid))
        .flatten()
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    Ok(rustix::process::pidfd_open(
        pid,
        rustix::process::PidfdFlags::empty(),
    )?)
}

/// Times `spawn` is retried on ETXTBSY before its error is returned.
const ETXTBSY_RETRIES: u64 = 20;

/// Calls `spawn` until it does not fail with ETXTBSY, at most 21 times with a growing
/// pause (5 ms more each time, about a second in all): a binary or script just written
/// can still be open for writing in a child that another thread forked meanwhile, and
/// stays busy until that child execs.
pub fn spawn_retrying_etxtbsy<T>(mut spawn: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    let mut attempts = 0;
    loop {
        match spawn() {
            Err(err) if err.raw_os_error() == Some(libc::ETXTBSY) && attempts < ETXTBSY_RETRIES => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(5 * attempts));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn pidfd_of_self_and_bad_pids() {
        let fd = pidfd_open(std::process::id() as i32).unwrap();
        assert!(fd.as_raw_fd() >= 0);
        for bad in [0, -1, i32::MIN] {
            assert_eq!(
                pidfd_open(bad).unwrap_err().raw_os_error(),
                Some(libc::EINVAL),
                "{bad}"
            );
        }
        // The largest pid the kernel could hand out is above pid_max: nobody has it.
        assert_eq!(
            pidfd_open(i32::MAX).unwrap_err().raw_os_error(),
            Some(libc::ESRCH)
        );
    }

    #[test]
    fn etxtbsy_is_retried_and_other_errors_are_not() {
        let mut calls = 0;
        let r = spawn_retrying_etxtbsy(|| {
            calls += 1;
            if calls < 3 {
                Err(io::Error::from_raw_os_error(libc::ETXTBSY))
            } else {
                Ok(calls)
            }
        });
        assert_eq!(r.unwrap(), 3);

        let mut calls = 0;
        let r: io::Result<()> = spawn_retrying_etxtbsy(|| {
            calls += 1;
            Err(io::Error::from_raw_os_error(libc::ENOENT))
        });
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::ENOENT));
        assert_eq!(calls, 1);
    }

    #[test]
    fn etxtbsy_gives_up() {
        let mut calls = 0;
        let r: io::Result<()> = spawn_retrying_etxtbsy(|| {
            calls += 1;
            Err(io::Error::from_raw_os_error(libc::ETXTBSY))
        });
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::ETXTBSY));
        assert_eq!(calls, ETXTBSY_RETRIES + 1);
    }

    #[test]
    fn a_real_spawn_goes_through() {
        let status = spawn_retrying_etxtbsy(|| std::process::Command::new("/bin/true").spawn())
            .unwrap()
            .wait()
            .unwrap();
        assert!(status.success());
    }
}
