//! Non-blocking reads and writes on a pipe end or a pty master, driven by tokio.

use std::io;
use std::os::fd::OwnedFd;

use tokio::io::unix::AsyncFd;

/// An owned, non-blocking descriptor registered with tokio.
pub struct FdIo(AsyncFd<OwnedFd>);

impl FdIo {
    /// Registers `fd`, which must already be non-blocking.
    pub fn new(fd: OwnedFd) -> io::Result<FdIo> {
        // SAFETY: the AsyncFd owns `fd` until it is dropped; nothing else closes it.
        Ok(FdIo(unsafe { AsyncFd::register(fd)? }))
    }

    /// Reads what is there; 0 at the end. A pty master reports the end (every slave
    /// closed) as EIO, which is the end here too.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.0.readable().await?;
            match guard
                .try_io(|fd| rustix::io::read(fd.get_ref(), &mut *buf).map_err(io::Error::from))
            {
                Ok(Ok(n)) => return Ok(n),
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `data`.
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.0.writable().await?;
            match guard.try_io(|fd| rustix::io::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }
}
