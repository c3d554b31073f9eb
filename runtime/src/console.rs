//! The receiving end of an OCI runtime's `--console-socket`: the runtime connects and
//! sends the pty master it made for the container's (or exec'd process's) terminal.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};

/// Reads the pty master from a console socket connection. The runtime sends right
/// after connecting; `timeout` only guards against a connection that never sends.
pub fn receive_pty_master(stream: &UnixStream, timeout: Duration) -> io::Result<OwnedFd> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(timeout))?;
    // The payload is the pty's name, which is not needed.
    let mut name = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let message = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut master = None;
    for cmsg in message.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            for fd in fds {
                // SAFETY: SCM_RIGHTS installed this descriptor in our table for us;
                // nothing else refers to it.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                master.get_or_insert(fd);
            }
        }
    }
    master.ok_or_else(|| io::Error::other("the runtime sent no pty master"))
}
