//! Starting a container's crust-monitor, and talking to it afterwards.
//!
//! Every container runs under its own monitor (the `crust-monitor` binary of this
//! crate, `monitor/main.rs`): it runs `<runtime> create`, owns the container's stdio,
//! writes the CRI log, serves attach clients, and writes the exit file. It is detached
//! from crustd, so crustd can restart while containers run.
//!
//! [`spawn_monitor`] starts one and waits for its handshake, as CRI-O does with conmon:
//!
//! ```text
//! crustd                                    crust-monitor
//!   socketpair ─ one end inherited (--sync-fd N) ─▶ fork; parent exits (reaped here)
//!   ◀──────────────────────── {"monitor_pid":M}      setsid, subreaper, close fds
//!                                                    <runtime> create
//!   ◀───────────────────── {"pid":P} | {"error":…}   (then closes its end)
//!   <runtime> start (the caller)
//! ```
//!
//! Past the timeout, on a failure, or when the caller's future is dropped, the
//! monitor's process group is killed: the monitor and the runtime it runs (the
//! runtime's `init`, in a terminal's own session, is not in that group; the caller's
//! `delete --force` of the container removes it). Then the error carries the runtime's
//! evidence, as the runtime driver's errors do.
//!
//! Afterwards: [`read_exit_file`] once the container has exited, [`reopen_log`] when
//! kubelet rotated the log, [`attach`] to stream the container's stdio with the frames
//! of [`crust_proto::monitor`] ([`read_frame`], [`write_frame`]).

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crust_proto::monitor::{
    CreateFailure, ExitStatus, Frame, FrameKind, HEADER_LEN, MAX_PAYLOAD, SyncMessage, encode_frame,
};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{ErrorKind, Failure, Result, RuntimeError};
use crate::lowlevel::CreateEngine;
use crate::oci::{CreateOptions, OciRuntime};

/// The file in the bundle where the monitor has the runtime write the container's pid.
pub const PID_FILE: &str = "container.pid";

/// How long [`reopen_log`] waits for the monitor's answer.
pub const REOPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// How much longer than crustd's handshake timeout the monitor lets `create` run.
const CREATE_TIMEOUT_MARGIN: Duration = Duration::from_secs(5);

/// How long a monitor that reported a failure gets to exit before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// What a monitor is started for.
#[derive(Debug, Clone)]
pub struct MonitorSpawn {
    /// The crust-monitor binary.
    pub binary: PathBuf,
    /// The container id.
    pub id: String,
    /// The container's bundle (config.json; the runtime's log.json goes there).
    pub bundle: PathBuf,
    /// How the monitor creates the container: an OCI runtime binary's `create`, or
    /// libcontainer in the monitor.
    pub engine: CreateEngine,
    /// The runtime's state directory (`--root`).
    pub runtime_root: PathBuf,
    /// The CRI log file (its directory is created).
    pub log_path: PathBuf,
    /// The pod's log directory holding `log_path`: the monitor reaches the file below
    /// it without following symlinks.
    pub log_dir: Option<PathBuf>,
    /// Where the monitor writes the [`ExitStatus`].
    pub exit_file: PathBuf,
    /// The attach socket the monitor serves.
    pub attach_socket: PathBuf,
    /// Give the container a terminal.
    pub tty: bool,
    /// Keep the container's stdin open for attach clients.
    pub stdin: bool,
    /// Close the container's stdin when the first client that wrote to it leaves.
    pub stdin_once: bool,
    /// Run the runtime with `--systemd-cgroup` (the systemd cgroup driver): without
    /// it, `create` would read a `slice:prefix:name` path as a cgroupfs path while
    /// crustd's start, kill and delete use systemd.
    pub systemd_cgroup: bool,
    /// Restore from a checkpoint (`<runtime> restore`, the process running once the
    /// handshake's `{"pid":P}` arrives) instead of `create`: CRIU's image directory
    /// and work directory.
    pub restore: Option<(PathBuf, PathBuf)>,
}

/// A monitor whose container is created (waiting for `<runtime> start`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonitorStarted {
    /// The monitor's pid (also its process group and session id). It is not crustd's
    /// child: liveness is checked with signal 0 or a pidfd, not `wait`.
    pub monitor_pid: i32,
    /// The container process's pid on the host.
    pub container_pid: i32,
}

impl MonitorSpawn {
    /// The monitor's arguments, with `sync_fd` as the handshake's descriptor and
    /// `create_timeout` as crustd's limit for the handshake. Checks the id and
    /// paths as the runtime driver does, so that nothing the runtime would refuse
    /// reaches the monitor.
    pub fn args(&self, sync_fd: RawFd, create_timeout: Duration) -> Result<Vec<OsString>> {
        // The monitor builds exactly this command line (create_command), so checking
        // it here catches what it would refuse (the embedded engine checks the same).
        let binary = match &self.engine {
            CreateEngine::Cli(binary) => binary.clone(),
            CreateEngine::Embedded => PathBuf::from(crate::embedded::NAME),
        };
        OciRuntime::new(binary, self.runtime_root.clone()).create_command(
            &self.id,
            &self.bundle,
            &CreateOptions {
                pid_file: self.bundle.join(PID_FILE),
                no_new_keyring: false,
            },
        )?;
        let absolute = |what: &'static str, path: &Path| -> Result<OsString> {
            if path.as_os_str().is_empty() {
                return Err(RuntimeError::invalid(what, "", "empty path"));
            }
            std::path::absolute(path)
                .map(PathBuf::into_os_string)
                .map_err(|err| RuntimeError::io("resolve", path, err))
        };
        let mut args: Vec<OsString> = vec![
            "--id".into(),
            self.id.clone().into(),
            "--bundle".into(),
            absolute("bundle", &self.bundle)?,
        ];
        match &self.engine {
            CreateEngine::Cli(binary) => args.extend(["--runtime".into(), binary.clone().into()]),
            CreateEngine::Embedded => {
                if self.restore.is_some() {
                    return Err(RuntimeError::Unsupported {
                        what: "restore",
                        reason: "the embedded handler cannot restore checkpoints; use runc".into(),
                    });
                }
                args.push("--embedded".into());
            }
        }
        args.extend([
            "--runtime-root".into(),
            absolute("runtime root", &self.runtime_root)?,
        ]);
        args.extend(["--log-path".into(), absolute("log path", &self.log_path)?]);
        if let Some(dir) = &self.log_dir {
            args.extend(["--log-dir".into(), absolute("log directory", dir)?]);
        }
        if let Some((images, work)) = &self.restore {
            args.extend([
                "--restore-images".into(),
                absolute("checkpoint images", images)?,
                "--restore-work".into(),
                absolute("restore work directory", work)?,
            ]);
        }
        args.extend([
            "--exit-file".into(),
            absolute("exit file", &self.exit_file)?,
            "--attach-socket".into(),
            absolute("attach socket", &self.attach_socket)?,
        ]);
        for (set, flag) in [
            (self.tty, "--tty"),
            (self.stdin, "--stdin"),
            (self.stdin_once, "--stdin-once"),
            (self.systemd_cgroup, "--systemd-cgroup"),
        ] {
            if set {
                args.push(flag.into());
            }
        }
        // Later than crustd gives up (which kills monitor and runtime together):
        // the monitor's own limit only matters when crustd is gone.
        let create_timeout = (create_timeout + CREATE_TIMEOUT_MARGIN)
            .as_secs_f64()
            .ceil() as u64;
        args.extend([
            "--create-timeout".into(),
            create_timeout.to_string().into(),
            "--sync-fd".into(),
            sync_fd.to_string().into(),
        ]);
        Ok(args)
    }

    /// What the monitor runs the runtime for: `create`, or `restore`.
    fn verb(&self) -> &'static str {
        if self.restore.is_some() {
            "restore"
        } else {
            "create"
        }
    }

    /// The runtime's name for messages: its binary's file name.
    fn runtime_name(&self) -> String {
        let binary = match &self.engine {
            CreateEngine::Cli(binary) => binary,
            CreateEngine::Embedded => return crate::embedded::NAME.into(),
        };
        binary
            .file_name()
            .unwrap_or(binary.as_os_str())
            .to_string_lossy()
            .into_owned()
    }

    fn monitor_error(&self, reason: impl Into<String>) -> RuntimeError {
        RuntimeError::Monitor {
            id: self.id.clone(),
            reason: reason.into(),
        }
    }

    /// The error for a monitor's `{"error": ...}`: the runtime's [`Failure`] when the
    /// runtime ran and failed, otherwise the monitor's own.
    fn create_error(&self, failure: CreateFailure) -> RuntimeError {
        let Some(status) = failure.status else {
            return self.monitor_error(failure.error);
        };
        let stderr = failure.stderr.unwrap_or_default();
        let kind = create_failure_kind(&format!(
            "{}\n{stderr}",
            failure.log_error.as_deref().unwrap_or_default()
        ));
        RuntimeError::Failed(Box::new(Failure {
            runtime: self.runtime_name(),
            command: self.verb(),
            id: self.id.clone(),
            args: failure.args,
            status,
            stderr,
            log_error: failure.log_error,
            kind,
        }))
    }
}

/// What a failed `create` means, from the runtime's words: the id taken in the
/// runtime's state (runc "container with id exists", crun and youki "already
/// exists") is a failed precondition, anything else internal. The same reading as
/// the runtime driver's for its own `create`.
fn create_failure_kind(message: &str) -> ErrorKind {
    let lower = message.to_ascii_lowercase();
    if lower.contains("container with id exists") || lower.contains("already exists") {
        ErrorKind::FailedPrecondition
    } else {
        ErrorKind::Internal
    }
}

/// Starts a monitor for `spawn` and waits (at most `timeout`) until its container is
/// created. On any failure no monitor or runtime process is left running, and the
/// error carries the runtime's message when the runtime failed.
pub async fn spawn_monitor(spawn: &MonitorSpawn, timeout: Duration) -> Result<MonitorStarted> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()
        .map_err(|err| spawn.monitor_error(format!("socketpair: {err}")))?;
    let child_fd = theirs.as_raw_fd();
    let mut command = std::process::Command::new(&spawn.binary);
    command
        .args(spawn.args(child_fd, timeout)?)
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // The monitor runs the OCI runtime, which creates mountpoints in the rootfs.
    crate::fsmode::with_runtime_umask(&mut command);
    // SAFETY: the closure runs in the forked child before exec and only calls fcntl,
    // which is async-signal-safe; it touches no memory shared with the parent.
    unsafe {
        command.pre_exec(move || {
            // The socketpair is close-on-exec (so no other child crustd spawns meanwhile
            // inherits it); this child alone keeps it across exec.
            if libc::fcntl(child_fd, libc::F_SETFD, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = tokio::process::Command::from(command)
        .spawn()
        .map_err(|err| spawn.monitor_error(format!("start {}: {err}", spawn.binary.display())))?;
    drop(theirs);
    let mut guard = Guard {
        child: Some(child),
        monitor_pid: None,
        pidfd: None,
    };

    let outcome = handshake(spawn, ours, timeout, &mut guard).await;
    if outcome.is_ok() {
        // Handed over: the monitor lives on by itself.
        guard.monitor_pid = None;
    }
    if let Some(mut child) = guard.child.take() {
        // The forking parent exits right away (reaped here); should it hang, it is
        // killed, as the guard kills the monitor when dropped next.
        if outcome.is_err() {
            let _ = child.start_kill();
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    }
    outcome
}

/// Reads the handshake until the container is created or the monitor failed.
async fn handshake(
    spawn: &MonitorSpawn,
    ours: std::os::unix::net::UnixStream,
    timeout: Duration,
    guard: &mut Guard,
) -> Result<MonitorStarted> {
    let deadline = tokio::time::Instant::now() + timeout;
    ours.set_nonblocking(true)
        .map_err(|err| spawn.monitor_error(format!("socketpair: {err}")))?;
    let ours = tokio::net::UnixStream::from_std(ours)
        .map_err(|err| spawn.monitor_error(format!("socketpair: {err}")))?;
    let mut reader = tokio::io::BufReader::new(ours);
    let mut monitor_pid = None;
    loop {
        let mut line = Vec::new();
        let read = tokio::time::timeout_at(deadline, reader.read_until(b'\n', &mut line)).await;
        let Ok(read) = read else {
            return Err(RuntimeError::Timeout {
                runtime: spawn.runtime_name(),
                command: spawn.verb(),
                id: spawn.id.clone(),
                timeout,
            });
        };
        match read {
            Ok(0) => {
                return Err(spawn.monitor_error("exited before it reported the container"));
            }
            Ok(_) => {}
            Err(err) => return Err(spawn.monitor_error(format!("read handshake: {err}"))),
        }
        let message = SyncMessage::from_line(&line).map_err(|err| {
            spawn.monitor_error(format!(
                "bad handshake line {:?}: {err}",
                String::from_utf8_lossy(&line)
            ))
        })?;
        match message {
            SyncMessage::Hello { monitor_pid: pid } => {
                monitor_pid = Some(pid);
                guard.monitor_pid = Some(pid);
                guard.pidfd = pidfd_open(pid);
            }
            SyncMessage::Created { pid } => {
                let Some(monitor_pid) = monitor_pid else {
                    return Err(spawn.monitor_error("reported a container before itself"));
                };
                return Ok(MonitorStarted {
                    monitor_pid,
                    container_pid: pid,
                });
            }
            SyncMessage::Failed(failure) => {
                // It exits by itself once it said so, having killed and reaped what
                // the runtime left; the guard kills it only if it does not.
                if guard.wait_for_exit(EXIT_GRACE).await {
                    guard.monitor_pid = None;
                }
                return Err(spawn.create_error(failure));
            }
        }
    }
}

/// Kills what a failed or abandoned handshake leaves, when dropped armed (a pid set).
struct Guard {
    /// The process crustd spawned, which forks and exits.
    child: Option<tokio::process::Child>,
    monitor_pid: Option<i32>,
    pidfd: Option<OwnedFd>,
}

impl Guard {
    /// Waits until the monitor has exited; true if it did within `limit`.
    async fn wait_for_exit(&self, limit: Duration) -> bool {
        let Some(pidfd) = self.pidfd.as_ref().and_then(|fd| fd.try_clone().ok()) else {
            return false;
        };
        // SAFETY: the AsyncFd owns the descriptor, which stays open and the same
        // until the AsyncFd is dropped.
        let registered = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE)
        };
        let Ok(pidfd) = registered else {
            return false;
        };
        // A pidfd turns readable when its process exits.
        tokio::time::timeout(limit, pidfd.readable()).await.is_ok()
    }

    /// Whether the monitor still runs: then its pid, which is also its process group's
    /// id, names it and no other process.
    fn monitor_alive(&self) -> bool {
        match &self.pidfd {
            Some(pidfd) => {
                let mut poll = libc::pollfd {
                    fd: pidfd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd, a zero timeout: poll only reads and writes it.
                let ready = unsafe { libc::poll(&mut poll, 1, 0) };
                ready == 0
            }
            // Without pidfds (Linux < 5.3) the pid is trusted: it was alive a moment ago.
            None => true,
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(pid) = self.monitor_pid
            && self.monitor_alive()
        {
            // The monitor and the runtime it runs share the monitor's process group.
            // SAFETY: kill only sends a signal; a negative pid names a process group.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        if let Some(child) = &mut self.child {
            // The forking parent, if it somehow still runs; tokio reaps dropped
            // children in the background.
            let _ = child.start_kill();
        }
    }
}

fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    crust_util::process::pidfd_open(pid).ok()
}

/// The exit status a monitor wrote, or `None` while there is none (the container
/// runs, or its monitor died before it could write one).
pub fn read_exit_file(path: &Path) -> Option<ExitStatus> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Connects to a monitor's attach socket. The stream carries frames
/// ([`read_frame`], [`write_frame`]): the container's output from now on, then its
/// exit; stdin, resizes and log reopening the other way.
pub async fn attach(attach_socket: &Path) -> Result<tokio::net::UnixStream> {
    let short = SocketPath::new(attach_socket)
        .map_err(|err| RuntimeError::io("connect to monitor", attach_socket, err))?;
    tokio::net::UnixStream::connect(short.path())
        .await
        .map_err(|err| RuntimeError::io("connect to monitor", attach_socket, err))
}

/// A unix socket's path made short enough for `sun_path` (108 bytes): a long one is
/// reached through `/proc/self/fd/N/NAME`, N being its directory held open here, so
/// that a deep state directory does not make sockets impossible.
pub struct SocketPath {
    _dir: Option<OwnedFd>,
    path: PathBuf,
}

impl SocketPath {
    /// Longest path used as it is (sun_path, with room for the NUL).
    const MAX: usize = 100;

    /// `path` itself when short, else the same socket through its open directory.
    pub fn new(path: &Path) -> std::io::Result<SocketPath> {
        use std::os::unix::ffi::OsStrExt;
        if path.as_os_str().as_bytes().len() <= Self::MAX {
            return Ok(SocketPath {
                _dir: None,
                path: path.to_path_buf(),
            });
        }
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "socket path has no directory",
            ));
        };
        let fd = rustix::fs::open(
            dir,
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        let short = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())).join(name);
        Ok(SocketPath {
            _dir: Some(fd),
            path: short,
        })
    }

    /// The path to bind or connect to while this lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Has the monitor close and reopen the container's log file (kubelet renamed it to
/// rotate it); returns once the monitor confirmed, within [`REOPEN_TIMEOUT`].
pub async fn reopen_log(attach_socket: &Path) -> Result<()> {
    let mut stream = attach(attach_socket).await?;
    let exchange = async {
        write_frame(&mut stream, FrameKind::ReopenLog, &[]).await?;
        loop {
            let Some(frame) = read_frame(&mut stream).await? else {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "monitor closed the connection before it reopened the log",
                ));
            };
            match frame.kind {
                FrameKind::Ack if frame.payload.is_empty() => return Ok(()),
                FrameKind::Ack => {
                    return Err(std::io::Error::other(
                        String::from_utf8_lossy(&frame.payload).into_owned(),
                    ));
                }
                FrameKind::Exit => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::BrokenPipe,
                        "the container exited",
                    ));
                }
                // Output that arrived since we connected.
                _ => {}
            }
        }
    };
    match tokio::time::timeout(REOPEN_TIMEOUT, exchange).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(RuntimeError::io("reopen log via", attach_socket, err)),
        Err(_) => Err(RuntimeError::io(
            "reopen log via",
            attach_socket,
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {REOPEN_TIMEOUT:?}"),
            ),
        )),
    }
}

/// Reads one frame; `None` at a clean end of stream (between frames).
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> std::io::Result<Option<Frame>> {
    let mut header = [0u8; HEADER_LEN];
    let mut filled = 0;
    while filled < HEADER_LEN {
        match reader.read(&mut header[filled..]).await? {
            0 if filled == 0 => return Ok(None),
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => filled += n,
        }
    }
    let kind = FrameKind::try_from(header[0])
        .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidData, err))?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            crust_proto::monitor::FrameError::TooLong(len as u32),
        ));
    }
    let mut payload = vec![0; len];
    reader.read_exact(&mut payload).await?;
    Ok(Some(Frame { kind, payload }))
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    kind: FrameKind,
    payload: &[u8],
) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len());
    encode_frame(kind, payload, &mut bytes);
    writer.write_all(&bytes).await?;
    writer.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spawn() -> MonitorSpawn {
        MonitorSpawn {
            binary: "/usr/bin/crust-monitor".into(),
            id: "c1".into(),
            bundle: "/run/crust/bundles/c1".into(),
            engine: CreateEngine::Cli("/usr/sbin/runc".into()),
            runtime_root: "/run/crust/runc".into(),
            log_path: "/var/log/pods/ns_p_uid/c/0.log".into(),
            log_dir: None,
            exit_file: "/run/crust/containers/c1/exit".into(),
            attach_socket: "/run/crust/containers/c1/attach".into(),
            tty: false,
            stdin: false,
            stdin_once: false,
            systemd_cgroup: false,
            restore: None,
        }
    }

    fn line(args: &[OsString]) -> String {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn monitor_command_line() {
        let mut spawn = spawn();
        assert_eq!(
            line(&spawn.args(7, Duration::from_millis(2500)).unwrap()),
            "--id c1 --bundle /run/crust/bundles/c1 --runtime /usr/sbin/runc \
             --runtime-root /run/crust/runc --log-path /var/log/pods/ns_p_uid/c/0.log \
             --exit-file /run/crust/containers/c1/exit \
             --attach-socket /run/crust/containers/c1/attach --create-timeout 8 --sync-fd 7"
        );
        spawn.tty = true;
        spawn.stdin = true;
        spawn.stdin_once = true;
        spawn.systemd_cgroup = true;
        let args = line(&spawn.args(9, Duration::from_secs(30)).unwrap());
        assert!(
            args.ends_with(
                "--tty --stdin --stdin-once --systemd-cgroup --create-timeout 35 --sync-fd 9"
            ),
            "{args}"
        );
        spawn.restore = Some((
            "/var/lib/crust/restores/c1/checkpoint".into(),
            "/var/lib/crust/restores/c1".into(),
        ));
        let args = line(&spawn.args(9, Duration::from_secs(30)).unwrap());
        assert!(
            args.contains(
                "--restore-images /var/lib/crust/restores/c1/checkpoint \
                 --restore-work /var/lib/crust/restores/c1 --exit-file"
            ),
            "{args}"
        );
    }

    #[test]
    fn bad_ids_and_paths_never_reach_the_monitor() {
        let mut spawn = spawn();
        spawn.id = "--all".into();
        let timeout = Duration::from_secs(1);
        assert_eq!(
            spawn.args(3, timeout).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        spawn.id = "c1".into();
        spawn.log_path = PathBuf::new();
        assert_eq!(
            spawn.args(3, timeout).unwrap_err().to_string(),
            "invalid log path \"\": empty path"
        );
    }

    #[test]
    fn failures_become_runtime_or_monitor_errors() {
        let spawn = spawn();
        let err = spawn.create_error(CreateFailure {
            error: "ignored: rebuilt from the parts".into(),
            status: Some("exit status 1".into()),
            log_error: Some("container with id exists: c1".into()),
            stderr: Some("container with id exists: c1".into()),
            args: vec!["runc".into()],
        });
        assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
        assert_eq!(
            err.to_string(),
            "oci runtime runc create c1: exit status 1: container with id exists: c1"
        );
        let err = spawn.create_error(CreateFailure {
            error: "open log file /x: Permission denied (os error 13)".into(),
            status: None,
            log_error: None,
            stderr: None,
            args: vec![],
        });
        assert_eq!(err.kind(), ErrorKind::Internal);
        assert_eq!(
            err.to_string(),
            "monitor of c1: open log file /x: Permission denied (os error 13)"
        );
    }

    #[tokio::test]
    async fn frames_over_a_stream() {
        let (mut a, mut b) = tokio::io::duplex(64);
        write_frame(&mut a, FrameKind::Stdin, b"hello")
            .await
            .unwrap();
        write_frame(&mut a, FrameKind::CloseStdin, b"")
            .await
            .unwrap();
        drop(a);
        assert_eq!(
            read_frame(&mut b).await.unwrap(),
            Some(Frame::new(FrameKind::Stdin, b"hello".to_vec()))
        );
        assert_eq!(
            read_frame(&mut b).await.unwrap().unwrap().kind,
            FrameKind::CloseStdin
        );
        assert_eq!(read_frame(&mut b).await.unwrap(), None);

        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[1, 0, 0]).await.unwrap();
        drop(a);
        let err = read_frame(&mut b).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[77, 0, 0, 0, 0]).await.unwrap();
        assert_eq!(
            read_frame(&mut b).await.unwrap_err().kind(),
            std::io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn exit_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exit");
        assert_eq!(read_exit_file(&path), None);
        std::fs::write(
            &path,
            r#"{"exit_code":3,"exited_at":12,"oom_killed":false}"#,
        )
        .unwrap();
        assert_eq!(
            read_exit_file(&path),
            Some(ExitStatus {
                exit_code: 3,
                exited_at: 12,
                oom_killed: false
            })
        );
        std::fs::write(&path, "{").unwrap();
        assert_eq!(read_exit_file(&path), None);
    }
}
