//! Bringing a network namespace's loopback interface up.
//!
//! A new network namespace has `lo` with 127.0.0.1 and ::1 assigned but DOWN, so
//! nothing in it can reach its own localhost until someone sets IFF_UP. CNI's
//! `loopback` plugin does that, but a conflist need not list it, and kubelet's exec
//! probes (`wget http://127.0.0.1/`), sidecars and port-forward all depend on it.
//! containerd and CRI-O bring `lo` up for every pod themselves; so does crust, when the
//! namespace is created.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Sets IFF_UP on `lo` in the calling thread's network namespace.
///
/// The interface is named through a socket opened here, and a socket belongs to the
/// network namespace of the thread that opened it: call this on a thread that has
/// unshared or joined the namespace.
pub(crate) fn bring_up_in_current_netns() -> io::Result<()> {
    // SAFETY: socket takes plain integers and returns a new descriptor or -1.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nothing else owns; closed when `sock` drops.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };

    // SAFETY: ifreq is plain old data (a name and a union of integers and addresses);
    // all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // Read the flags first so that setting IFF_UP keeps whatever else is set.
    // SAFETY: a valid socket and a valid, writable ifreq naming an interface.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    if flags & libc::IFF_UP as libc::c_short != 0 {
        return Ok(());
    }
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: as above; the kernel only reads the name and the flags.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
