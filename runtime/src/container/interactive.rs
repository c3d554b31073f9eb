//! Exec for streaming clients: the process runs detached from the OCI runtime, with
//! pipes or a pty that crustd's streaming server holds, and crustd (a child subreaper)
//! collects its exit status.
//!
//! `<runtime> exec --detach` returns once the process runs; the process, a child of
//! the runtime, is then reparented to crustd. That is what containerd's shim and
//! CRI-O's conmon do, and it lets crustd wait for the process itself, with a pidfd,
//! instead of keeping a runtime process per exec.

use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::{ContainerError, ContainerRecord, Result};
use crate::lowlevel::LowLevelRuntime;

/// Which of the process's streams the client wants, and whether it gets a pty.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExecStreams {
    /// Feed the process's stdin.
    pub stdin: bool,
    /// Collect its stdout.
    pub stdout: bool,
    /// Collect its stderr (merged into the terminal with `tty`).
    pub stderr: bool,
    /// Run it on a pseudo-terminal.
    pub tty: bool,
}

/// A process exec'd into a container for a streaming client.
#[derive(Debug)]
pub struct StreamingExec {
    /// Its pid on the host; an unreaped child of this process until [`Self::wait`].
    pub pid: i32,
    /// Writes to its stdin (the pty master with a tty).
    pub stdin: Option<OwnedFd>,
    /// Reads its stdout (the pty master with a tty).
    pub stdout: Option<OwnedFd>,
    /// Reads its stderr (never with a tty).
    pub stderr: Option<OwnedFd>,
    /// The pty master, for resizes.
    pub pty: Option<OwnedFd>,
    pidfd: OwnedFd,
}

impl StreamingExec {
    /// Waits for the process to exit and reaps it; its exit code, 128 + signal for a
    /// signal death.
    pub async fn wait(&self) -> std::io::Result<i32> {
        let fd = self.pidfd.try_clone()?;
        // SAFETY: the AsyncFd owns this duplicate of the pidfd for as long as it is
        // registered; nothing else holds or closes it.
        let async_fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE)? };
        // A pidfd turns readable when the process has exited.
        let _guard = async_fd.readable().await?;
        use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
        let pid = nix::unistd::Pid::from_raw(self.pid);
        loop {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                Ok(WaitStatus::Signaled(_, signal, _)) => return Ok(128 + signal as i32),
                Ok(WaitStatus::StillAlive) => tokio::time::sleep(Duration::from_millis(5)).await,
                Ok(_) => continue,
                Err(errno) => return Err(errno.into()),
            }
        }
    }

    /// Kills the process and the process group it leads, for a client that went away.
    pub fn kill(&self) {
        // SAFETY: pidfd_send_signal on our own pidfd; it cannot reach a reused pid.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            );
        }
        // The runtime made it a group leader; its children go with it. The pid is our
        // unreaped child, so the group id cannot have been reused yet.
        // SAFETY: kill(2) with a negative pid; no memory effects.
        unsafe { libc::kill(-self.pid, libc::SIGKILL) };
    }

    /// Sets the terminal's size (rows, columns); a no-op without a tty.
    pub fn resize(&self, rows: u16, cols: u16) -> std::io::Result<()> {
        let Some(pty) = &self.pty else {
            return Ok(());
        };
        let size = rustix::termios::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        rustix::termios::tcsetwinsize(pty, size).map_err(std::io::Error::from)
    }
}

fn io_err(id: &str, step: &'static str) -> impl FnOnce(std::io::Error) -> ContainerError {
    let id = id.to_string();
    move |source| ContainerError::Io { id, step, source }
}

/// A close-on-exec pipe as (read, write).
fn pipe(id: &str) -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| io_err(id, "pipe")(e.into()))
}

fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    crust_util::process::pidfd_open(pid)
}

/// Starts `cmd` in the container with its env, user and working dir, detached from
/// the runtime, with the streams asked for.
pub async fn spawn(
    runtime: &dyn LowLevelRuntime,
    r: &ContainerRecord,
    cmd: Vec<String>,
    streams: ExecStreams,
) -> Result<StreamingExec> {
    let id = r.id.as_str();
    let spec = oci_spec::runtime::Spec::load(r.bundle.join("config.json"))
        .map_err(|e| ContainerError::Invalid(format!("container {id}: read its spec: {e}")))?;
    let process = crate::spec::container::exec_process(&spec, cmd, streams.tty);
    let tag = hex::encode(rand::random::<[u8; 8]>());
    let process_file = r.bundle.join(format!("exec-{tag}.json"));
    let pid_file = r.bundle.join(format!("exec-{tag}.pid"));
    let json = serde_json::to_vec(&process).map_err(|e| ContainerError::Invalid(e.to_string()))?;
    crate::fsmode::write_private(&process_file, &json).map_err(io_err(id, "write exec process"))?;
    let result = spawn_with(runtime, r, streams, &process_file, &pid_file).await;
    let _ = std::fs::remove_file(&process_file);
    let _ = std::fs::remove_file(&pid_file);
    result
}

async fn spawn_with(
    runtime: &dyn LowLevelRuntime,
    r: &ContainerRecord,
    streams: ExecStreams,
    process_file: &std::path::Path,
    pid_file: &std::path::Path,
) -> Result<StreamingExec> {
    let id = r.id.as_str();
    let mut command = super::exec::base_command(runtime, r);
    command
        .arg("exec")
        .arg("--detach")
        .arg("--process")
        .arg(process_file)
        .arg("--pid-file")
        .arg(pid_file);
    // Our ends of the pipes; the process gets the others through the runtime, which
    // passes its own stdio on in detached mode.
    let (mut stdin, mut stdout, mut stderr) = (None, None, None);
    let mut console = None;
    if streams.tty {
        // A socket path must fit sun_path; bundles can be deep, so use a short temp dir.
        let dir = tempfile::Builder::new()
            .prefix("crust-exec-")
            .tempdir()
            .map_err(io_err(id, "console socket dir"))?;
        let path = dir.path().join("console.sock");
        let listener =
            tokio::net::UnixListener::bind(&path).map_err(io_err(id, "bind console socket"))?;
        command.arg("--console-socket").arg(&path);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        console = Some((dir, listener));
    } else {
        if streams.stdin {
            let (read, write) = pipe(id)?;
            command.stdin(Stdio::from(read));
            stdin = Some(write);
        }
        if streams.stdout {
            let (read, write) = pipe(id)?;
            command.stdout(Stdio::from(write));
            stdout = Some(read);
        } else {
            command.stdout(Stdio::null());
        }
        if streams.stderr {
            let (read, write) = pipe(id)?;
            command.stderr(Stdio::from(write));
            stderr = Some(read);
        } else {
            command.stderr(Stdio::null());
        }
    }
    command.arg(id);
    let mut child = command.spawn().map_err(io_err(id, "exec"))?;
    // The command holds the process's ends of the pipes: close ours of them now, or
    // reading its output would never see the end.
    drop(command);
    let mut pty = None;
    if let Some((_dir, listener)) = &console {
        tokio::select! {
            accepted = listener.accept() => {
                let (conn, _) = accepted.map_err(io_err(id, "accept console socket"))?;
                let conn = conn.into_std().map_err(io_err(id, "console socket"))?;
                let master = tokio::task::spawn_blocking(move || {
                    crate::console::receive_pty_master(&conn, Duration::from_secs(10))
                })
                    .await
                    .map_err(|e| io_err(id, "console socket")(std::io::Error::other(e)))?
                    .map_err(io_err(id, "receive pty master"))?;
                pty = Some(master);
            }
            status = child.wait() => {
                let status = status.map_err(io_err(id, "exec"))?;
                return Err(exec_failure(r, status, child.stderr.take()).await);
            }
        }
    }
    let status = tokio::time::timeout(runtime.timeout(), child.wait())
        .await
        .map_err(|_| ContainerError::Timeout {
            id: id.to_string(),
            message: "runtime exec timed out".into(),
        })?
        .map_err(io_err(id, "exec"))?;
    if !status.success() {
        return Err(exec_failure(r, status, child.stderr.take()).await);
    }
    let pid: i32 = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| ContainerError::Invalid(format!("container {id}: exec left no pid")))?;
    let pidfd = pidfd_open(pid).map_err(io_err(id, "pidfd_open exec process"))?;
    if let Some(master) = pty {
        let dup = |fd: &OwnedFd| fd.try_clone().map_err(io_err(id, "dup pty master"));
        stdin = streams.stdin.then(|| dup(&master)).transpose()?;
        stdout = Some(dup(&master)?);
        pty = Some(master);
    }
    for fd in [&stdin, &stdout, &stderr, &pty].into_iter().flatten() {
        set_nonblocking(fd).map_err(io_err(id, "nonblocking"))?;
    }
    Ok(StreamingExec {
        pid,
        stdin,
        stdout,
        stderr,
        pty,
        pidfd,
    })
}

fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(fd)?;
    rustix::fs::fcntl_setfl(fd, flags | rustix::fs::OFlags::NONBLOCK)?;
    Ok(())
}

/// The runtime's evidence for a failed exec: its log's last error, else its stderr.
async fn exec_failure(
    r: &ContainerRecord,
    status: std::process::ExitStatus,
    stderr: Option<tokio::process::ChildStderr>,
) -> ContainerError {
    let mut text = Vec::new();
    if let Some(mut s) = stderr {
        use tokio::io::AsyncReadExt;
        let _ = tokio::time::timeout(Duration::from_secs(1), s.read_to_end(&mut text)).await;
    }
    let log = std::fs::read(r.bundle.join("log.json")).unwrap_or_default();
    let detail = crate::oci::last_log_error(&log)
        .unwrap_or_else(|| String::from_utf8_lossy(&text).trim().to_string());
    ContainerError::Invalid(format!(
        "container {}: exec failed ({status}): {detail}",
        r.id
    ))
}
