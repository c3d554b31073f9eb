//! `<runtime> create`, run with the container's stdio.
//!
//! Without a terminal the container gets pipes: stdout and stderr (the monitor keeps
//! the read ends) and, with `--stdin`, a stdin pipe (the monitor keeps the write end);
//! otherwise stdin is /dev/null. The runtime itself writes its own complaints to the
//! same stderr, which is why a failed create's stderr is part of its error.
//!
//! With a terminal the runtime is given `--console-socket`: it creates the pty inside
//! the container and sends the master over that socket (SCM_RIGHTS). The runtime's own
//! stdout and stderr are then a pipe kept for its error message alone.
//!
//! To restore a checkpoint (`--restore-images`) the runtime's `restore --detach` runs
//! in place of `create`, with the same stdio: runc hands its own stdio to CRIU for
//! the restored process's pipes, and once it exits the restored process runs, a
//! child of the monitor (the subreaper) as a created one is. Restoring a terminal is
//! not offered (crustd refuses tty restores).
//!
//! The runtime runs in the monitor's process group, so that crustd, when the
//! handshake times out, kills both with one `kill(-monitor_pid, SIGKILL)`.

use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crust_proto::monitor::CreateFailure;
use crust_runtime::oci::{LOG_FILE, last_log_error};
use crust_runtime::{CreateOptions, ErrorKind, Failure, OciRuntime, RestoreOptions, RuntimeError};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::args::Args;
use crate::crilog::Stream;
use crate::sys;

use crust_runtime::monitor::PID_FILE;

/// At most this much of what the runtime wrote to stdout/stderr is kept while it runs.
const CAPTURE_MAX: usize = 64 * 1024;
/// At most this much of the runtime's stderr goes into an error message.
const STDERR_KEEP: usize = 4096;
/// At most this much of log.json is searched for the runtime's error.
const LOG_READ_MAX: u64 = 64 * 1024;

/// Where the container's output comes from.
pub enum Output {
    /// Separate stdout and stderr pipes (read ends, non-blocking).
    Pipes {
        /// The container's stdout.
        stdout: OwnedFd,
        /// The container's stderr.
        stderr: OwnedFd,
    },
    /// The master side of the container's terminal (non-blocking).
    Pty(OwnedFd),
}

/// A created container, waiting for `<runtime> start`.
pub struct Created {
    /// The container process's pid; the monitor's child now that the runtime exited.
    pub pid: Pid,
    /// Its output.
    pub output: Output,
    /// The write end of its stdin pipe (`--stdin` without a terminal), non-blocking.
    pub stdin: Option<OwnedFd>,
    /// What arrived on its stdout and stderr while the runtime ran.
    pub early_output: Vec<(Stream, Vec<u8>)>,
}

/// Runs `<runtime> create` to completion (or `args.create_timeout`). On failure every
/// process it left has been killed and reaped.
pub fn create(args: &Args, binary: &Path, signals: &SignalFd) -> Result<Created, CreateFailure> {
    let mut runtime = OciRuntime::new(binary.to_path_buf(), args.runtime_root.clone())
        .with_systemd_cgroup(args.systemd_cgroup);
    if let Some(dir) = &args.bundle_dir {
        runtime = runtime.with_bundle_dir(dir.clone());
    }
    // Read only after a successful create, which has just (re)written it.
    let pid_file = args.bundle.join(PID_FILE);
    let opts = CreateOptions {
        pid_file: pid_file.clone(),
        no_new_keyring: false,
    };
    let command = match &args.restore {
        None => runtime.create_command(&args.id, &args.bundle, &opts),
        Some(restore) => runtime.restore_command(
            &args.id,
            &args.bundle,
            &RestoreOptions {
                pid_file: pid_file.clone(),
                image_path: restore.images.clone(),
                work_path: restore.work.clone(),
            },
        ),
    };
    let verb = if args.restore.is_some() {
        "restore"
    } else {
        "create"
    };
    let mut command = command.map_err(|err| failure(err.to_string()))?;

    // Our ends of the pipes, and the console socket.
    let (out, err) = (pipe()?, pipe()?);
    let stdin = if args.stdin && !args.tty {
        Some(pipe()?)
    } else {
        None
    };
    let console = if args.tty {
        let dir = tempfile::Builder::new()
            .prefix("crust-monitor-")
            .tempdir()
            .map_err(|err| failure(format!("create console socket directory: {err}")))?;
        let path = dir.path().join("console.sock");
        let listener = UnixListener::bind(&path)
            .map_err(|err| failure(format!("bind console socket {}: {err}", path.display())))?;
        listener
            .set_nonblocking(true)
            .map_err(|err| failure(format!("console socket: {err}")))?;
        command = with_console_socket(&command, &path);
        Some((dir, listener))
    } else {
        None
    };
    let (out_read, out_write) = out;
    let (err_read, err_write) = err;
    // Ours are non-blocking; the container's ends (other open files) stay blocking.
    for fd in [
        Some(&out_read),
        Some(&err_read),
        stdin.as_ref().map(|(_, write)| write),
    ]
    .into_iter()
    .flatten()
    {
        sys::set_nonblocking(fd).map_err(|err| failure(format!("pipe: {err}")))?;
    }
    if args.tty {
        // Both of the runtime's own streams go to one pipe, kept for its error.
        let err_write2 = err_write
            .try_clone()
            .map_err(|err| failure(format!("pipe: {err}")))?;
        drop(out_write);
        command.stdout(Stdio::from(err_write)).stderr(err_write2);
    } else {
        command
            .stdout(Stdio::from(out_write))
            .stderr(Stdio::from(err_write));
    }
    let mut stdin_write = None;
    if let Some((read, write)) = stdin {
        command.stdin(Stdio::from(read));
        stdin_write = Some(write);
    }
    command.process_group(std::process::id() as i32);

    let log_path = args.bundle.join(LOG_FILE);
    let log_start = std::fs::metadata(&log_path).map_or(0, |m| m.len());
    let command_line: Vec<String> = std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    let runtime_name = binary
        .file_name()
        .unwrap_or(binary.as_os_str())
        .to_string_lossy()
        .into_owned();

    let child = spawn(&mut command).map_err(|source| {
        failure(
            RuntimeError::Spawn {
                runtime: runtime_name.clone(),
                command: verb,
                id: args.id.clone(),
                binary: binary.to_path_buf(),
                source,
            }
            .to_string(),
        )
    })?;
    // The child's ends of the pipes live in `command`: closed here, so that only the
    // runtime and the container hold them.
    drop(command);
    let runtime_pid = Pid::from_raw(child.id() as i32);

    let mut wait = Wait {
        stdout: if args.tty { None } else { Some(out_read) },
        stderr: Some(err_read),
        stdout_open: !args.tty,
        stderr_open: true,
        captured_stdout: Vec::new(),
        captured_stderr: Vec::new(),
        console: console.as_ref().map(|(_, listener)| listener),
        master: None,
    };
    let status = wait.run(runtime_pid, signals, args.create_timeout);

    let fail = |status: String, captured_stderr: &[u8]| {
        sys::kill_and_reap_children();
        let log_error = read_log_error(&log_path, log_start);
        let stderr = String::from_utf8_lossy(tail(captured_stderr, STDERR_KEEP))
            .trim()
            .to_owned();
        let error = Failure {
            runtime: runtime_name.clone(),
            command: verb,
            id: args.id.clone(),
            args: command_line.clone(),
            status: status.clone(),
            stderr: stderr.clone(),
            log_error: log_error.clone(),
            // Not used here: crustd classifies the failure again from its parts.
            kind: ErrorKind::Internal,
        }
        .to_string();
        CreateFailure {
            error,
            status: Some(status),
            log_error,
            stderr: Some(stderr),
            args: command_line.clone(),
        }
    };
    match status {
        Ok(WaitStatus::Exited(_, 0)) => {}
        Ok(WaitStatus::Exited(_, code)) => {
            return Err(fail(format!("exit status {code}"), &wait.captured_stderr));
        }
        Ok(WaitStatus::Signaled(_, signal, _)) => {
            let status = format!("killed by signal {}", signal as i32);
            return Err(fail(status, &wait.captured_stderr));
        }
        // Not without WUNTRACED or WCONTINUED; kept as evidence should it happen.
        Ok(other) => return Err(fail(format!("{other:?}"), &wait.captured_stderr)),
        Err(reason) => return Err(fail(reason, &wait.captured_stderr)),
    }

    let pid = match read_pid_file(&pid_file) {
        Ok(pid) => pid,
        Err(reason) => {
            sys::kill_and_reap_children();
            return Err(failure(reason));
        }
    };
    let output = if args.tty {
        match wait.master.take() {
            Some(master) => Output::Pty(master),
            None => {
                sys::kill_and_reap_children();
                return Err(failure(format!(
                    "{runtime_name} create {}: no terminal arrived on the console socket",
                    args.id
                )));
            }
        }
    } else {
        let (Some(stdout), Some(stderr)) = (wait.stdout.take(), wait.stderr.take()) else {
            unreachable!("both pipes are kept without a terminal");
        };
        Output::Pipes { stdout, stderr }
    };
    let mut early_output = Vec::new();
    if !args.tty {
        early_output.push((Stream::Stdout, wait.captured_stdout));
        early_output.push((Stream::Stderr, wait.captured_stderr));
    }
    Ok(Created {
        pid,
        output,
        stdin: stdin_write,
        early_output,
    })
}

/// What is watched while the runtime runs.
struct Wait<'a> {
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    /// Whether the pipe can still deliver (not at end of file): a pipe at its end is
    /// not polled, or poll would return at once, again and again.
    stdout_open: bool,
    stderr_open: bool,
    captured_stdout: Vec<u8>,
    captured_stderr: Vec<u8>,
    console: Option<&'a UnixListener>,
    master: Option<OwnedFd>,
}

impl Wait<'_> {
    /// Collects output and the console until the runtime exits; `Err` with a status
    /// description when it was killed for taking too long.
    fn run(
        &mut self,
        runtime: Pid,
        signals: &SignalFd,
        timeout: Duration,
    ) -> Result<WaitStatus, String> {
        let deadline = Instant::now() + timeout;
        loop {
            // Checked on every wake rather than only on SIGCHLD: cheap, and robust
            // against a signal consumed elsewhere.
            match waitpid(runtime, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::EINTR) => {}
                Ok(status) => {
                    self.collect();
                    return Ok(status);
                }
                Err(err) => return Err(format!("wait: {err}")),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // Our unreaped child: its pid is still its own.
                let _ = kill(runtime, Signal::SIGKILL);
                let _ = waitpid(runtime, None);
                return Err(format!("timed out after {timeout:?}"));
            }
            let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
            for (fd, open) in [
                (&self.stdout, self.stdout_open),
                (&self.stderr, self.stderr_open),
            ] {
                if let Some(fd) = fd.as_ref().filter(|_| open) {
                    fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                }
            }
            if let Some(console) = self.console {
                fds.push(PollFd::new(console.as_fd(), PollFlags::POLLIN));
            }
            let millis = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            match poll(&mut fds, PollTimeout::from(millis)) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(err) => return Err(format!("poll: {err}")),
            }
            drop(fds);
            // SIGCHLD (and a SIGUSR1 meant for a log not yet written to) are consumed
            // here; the runtime's exit is read with waitpid above.
            while let Ok(Some(_)) = signals.read_signal() {}
            self.collect();
        }
    }

    /// Reads what is available on the pipes and accepts a console connection.
    fn collect(&mut self) {
        if let Some(fd) = self.stdout.as_ref().filter(|_| self.stdout_open) {
            self.stdout_open = read_available(fd, &mut self.captured_stdout);
        }
        if let Some(fd) = self.stderr.as_ref().filter(|_| self.stderr_open) {
            self.stderr_open = read_available(fd, &mut self.captured_stderr);
        }
        if self.master.is_none()
            && let Some(console) = self.console
            && let Ok((stream, _)) = console.accept()
        {
            self.master = receive_fd(&stream);
        }
    }
}

/// Reads from non-blocking `fd` until it has nothing more now, keeping at most
/// [`CAPTURE_MAX`] bytes in `into`; false once it is at end of file.
fn read_available(fd: &OwnedFd, into: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) => return false,
            Ok(n) => {
                if into.len() + n <= CAPTURE_MAX {
                    into.extend_from_slice(&buf[..n]);
                }
            }
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => return true,
            Err(_) => return false,
        }
    }
}

/// The pty master the runtime sends over a console socket connection, non-blocking.
pub(crate) fn receive_fd(stream: &UnixStream) -> Option<OwnedFd> {
    let master = crust_runtime::console::receive_pty_master(stream, Duration::from_secs(5)).ok()?;
    sys::set_nonblocking(&master).ok()?;
    Some(master)
}

/// `command` with `--console-socket <socket>` before the container id, which
/// [`OciRuntime::create_command`] puts last: runc's CLI stops reading options at the
/// first positional argument, so appending it would not do.
fn with_console_socket(command: &Command, socket: &Path) -> Command {
    let mut args: Vec<OsString> = command.get_args().map(OsString::from).collect();
    let id = args.pop();
    let mut rebuilt = Command::new(command.get_program());
    rebuilt
        .args(args)
        .arg("--console-socket")
        .arg(socket)
        .args(id);
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => rebuilt.env(key, value),
            None => rebuilt.env_remove(key),
        };
    }
    rebuilt
}

/// A close-on-exec pipe, as (read, write).
pub(crate) fn pipe() -> Result<(OwnedFd, OwnedFd), CreateFailure> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|err| failure(format!("pipe: {err}")))?;
    Ok((read, write))
}

/// Spawns, retrying briefly on ETXTBSY (a runtime binary just written).
fn spawn(command: &mut Command) -> std::io::Result<std::process::Child> {
    crust_util::process::spawn_retrying_etxtbsy(|| command.spawn())
}

pub(crate) fn read_pid_file(path: &Path) -> Result<Pid, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| format!("read pid file {}: {err}", path.display()))?;
    text.trim()
        .parse::<i32>()
        .ok()
        .filter(|&pid| pid > 0)
        .map(Pid::from_raw)
        .ok_or_else(|| format!("pid file {}: bad pid {text:?}", path.display()))
}

/// The last error line the runtime appended to its log.json after `start`.
fn read_log_error(path: &Path, start: u64) -> Option<String> {
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    let from = if start > len {
        0
    } else {
        start.max(len.saturating_sub(LOG_READ_MAX))
    };
    file.seek(SeekFrom::Start(from)).ok()?;
    let mut bytes = Vec::new();
    file.take(LOG_READ_MAX).read_to_end(&mut bytes).ok()?;
    last_log_error(&bytes)
}

fn tail(bytes: &[u8], max: usize) -> &[u8] {
    &bytes[bytes.len().saturating_sub(max)..]
}

/// A failure that is not the runtime's.
pub fn failure(error: String) -> CreateFailure {
    CreateFailure {
        error,
        status: None,
        log_error: None,
        stderr: None,
        args: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_socket_goes_before_the_id() {
        let runtime = OciRuntime::new("/usr/sbin/runc".into(), "/run/r".into());
        let command = runtime
            .create_command(
                "c1",
                Path::new("/b"),
                &CreateOptions {
                    pid_file: "/b/container.pid".into(),
                    no_new_keyring: false,
                },
            )
            .unwrap();
        let rebuilt = with_console_socket(&command, Path::new("/tmp/x/console.sock"));
        let line: Vec<String> = std::iter::once(rebuilt.get_program())
            .chain(rebuilt.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            line.join(" "),
            "/usr/sbin/runc --root /run/r --log /b/log.json --log-format json create \
             --bundle /b --pid-file /b/container.pid --console-socket /tmp/x/console.sock c1"
        );
        assert!(
            rebuilt
                .get_envs()
                .any(|(k, v)| k == "NOTIFY_SOCKET" && v.is_none())
        );
    }

    #[test]
    fn reads_only_the_new_log_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log.json");
        std::fs::write(&log, "{\"level\":\"error\",\"msg\":\"old\"}\n").unwrap();
        let start = std::fs::metadata(&log).unwrap().len();
        assert_eq!(read_log_error(&log, start), None);
        std::fs::write(
            &log,
            "{\"level\":\"error\",\"msg\":\"old\"}\n{\"level\":\"error\",\"msg\":\"new\"}\n",
        )
        .unwrap();
        assert_eq!(read_log_error(&log, start).as_deref(), Some("new"));
        // A log that shrank is read from its start.
        std::fs::write(&log, "{\"level\":\"error\",\"msg\":\"x\"}\n").unwrap();
        assert_eq!(read_log_error(&log, 1000).as_deref(), Some("x"));
    }

    #[test]
    fn pid_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pid");
        assert!(
            read_pid_file(&path)
                .unwrap_err()
                .starts_with("read pid file")
        );
        std::fs::write(&path, "1234").unwrap();
        assert_eq!(read_pid_file(&path).unwrap(), Pid::from_raw(1234));
        std::fs::write(&path, "-1\n").unwrap();
        assert!(read_pid_file(&path).unwrap_err().contains("bad pid"));
    }
}
