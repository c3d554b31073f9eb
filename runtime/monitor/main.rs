//! crust-monitor: one per container, the parent of its process for its whole life.
//!
//! crustd starts it for each container and forgets it; it is modelled on conmon and
//! conmon-rs. Plain synchronous Rust, one thread, no async runtime: it stays small
//! because there are as many of it as there are containers.
//!
//! ```text
//! crustd ──spawn──▶ crust-monitor ──fork──▶ crust-monitor (the real one)
//!   ▲                 exits at once,           setsid, subreaper, closes fds
//!   │                 reaped by crustd         runs `<runtime> create` ──▶ container
//!   └──── sync fd: {"monitor_pid":M} then {"pid":P} or {"error":...} ───┘
//! ```
//!
//! 1. **Detach.** Fork first, before anything else exists; the parent exits so that
//!    crustd reaps it and the monitor is reparented away from crustd. Then `setsid`,
//!    `PR_SET_CHILD_SUBREAPER`, close every inherited descriptor but the sync fd,
//!    stdio to /dev/null.
//! 2. **Create.** Open the CRI log (making its directory), run `<runtime> create`
//!    with the container's stdio (see `create`), read the pid file, bind the attach
//!    socket (0600), answer on the sync fd and close it. crustd runs `<runtime> start`
//!    itself. Any failure: kill and reap whatever the runtime left, answer
//!    `{"error":...}`, exit 1. If crustd is gone by the time the container exists
//!    (the `{"pid":P}` write fails), nobody recorded it: kill it, `<runtime> delete`
//!    it, exit 1.
//! 3. **Serve** (see `serve`): output to the CRI log and to attach clients, client
//!    input to the container, resizes, log reopening (frame or SIGUSR1).
//! 4. **Exit.** When the container process exits: drain its output, send clients the
//!    exit frame, write the exit file atomically with the exit code, time and whether
//!    the OOM killer struck its memory cgroup, remove the attach socket, exit 0.
//!
//! crustd may die or restart at any point after the spawn: nothing here depends on it.
#![warn(clippy::undocumented_unsafe_blocks)]

mod args;
mod cgroup;
mod cgroup_mount;
mod create;
mod crilog;
mod embedded;
mod oci_cli;
mod serve;
mod sys;

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use crust_proto::monitor::{CreateFailure, ExitStatus, SyncMessage};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::args::Args;
use crate::cgroup::OomWatch;
use crate::create::failure;
use crate::crilog::LogFile;

/// How long attach clients get to read their last output and the exit frame.
const CLIENT_GRACE: Duration = Duration::from_secs(1);

fn main() {
    let argv: Vec<OsString> = std::env::args_os().skip(1).collect();
    if argv
        .first()
        .is_some_and(|arg| arg == crust_runtime::embedded::CLI_SUBCOMMAND)
    {
        std::process::exit(oci_cli::main(&argv[1..]));
    }
    let args = match args::parse(&argv) {
        Ok(args) => args,
        Err(message) => {
            let message = format!("crust-monitor: {message}");
            eprintln!("{message}");
            if let Some(fd) = args::find_sync_fd(&argv)
                && let Ok(fd) = sys::adopt_fd(fd)
            {
                send(
                    &mut UnixStream::from(fd),
                    &SyncMessage::Failed(failure(message)),
                );
            }
            std::process::exit(2);
        }
    };
    if let Err(err) = sys::fork_away() {
        if let Ok(fd) = sys::adopt_fd(args.sync_fd) {
            let message = failure(format!("crust-monitor {}: fork: {err}", args.id));
            send(&mut UnixStream::from(fd), &SyncMessage::Failed(message));
        }
        std::process::exit(1);
    }
    std::process::exit(run(&args));
}

/// The monitor proper, in the forked child; returns the exit status.
fn run(args: &Args) -> i32 {
    let Ok(fd) = sys::adopt_fd(args.sync_fd) else {
        // No one to tell: crustd sees its end of the socketpair close.
        return 1;
    };
    let mut sync = UnixStream::from(fd);
    let setup = sys::detach()
        .and_then(|()| sys::close_inherited_fds(args.sync_fd))
        .and_then(|()| sys::stdio_to_dev_null());
    if let Err(err) = setup {
        let message = failure(format!("crust-monitor {}: detach: {err}", args.id));
        send(&mut sync, &SyncMessage::Failed(message));
        return 1;
    }
    send(
        &mut sync,
        &SyncMessage::Hello {
            monitor_pid: std::process::id() as i32,
        },
    );

    let started = match start(args) {
        Ok(started) => started,
        Err(failure) => {
            sys::kill_and_reap_children();
            send(&mut sync, &SyncMessage::Failed(failure));
            return 1;
        }
    };
    let delivered = send(
        &mut sync,
        &SyncMessage::Created {
            pid: started.container.as_raw(),
        },
    );
    drop(sync);
    if !delivered {
        // crustd died before it learned the pid: its record still says "creating",
        // and its restart may already have undone that record while the runtime was
        // still creating. Nobody would own this container, so it goes.
        abandon(args);
        return 1;
    }

    let Started {
        mut serve,
        oom,
        container: _,
    } = started;
    let exit = serve.run();
    let status = ExitStatus {
        exit_code: exit.code,
        exited_at: exit.at,
        oom_killed: oom.is_some_and(|watch| watch.oom_killed()),
    };
    // The exit file first: it is what crustd waits for. Then the clients' last
    // frames, then the socket.
    let written = write_exit_file(&args.exit_file, &status);
    serve.finish_clients(status.exit_code, CLIENT_GRACE);
    let _ = std::fs::remove_file(&args.attach_socket);
    if written.is_err() { 1 } else { 0 }
}

/// A created container, served.
struct Started {
    container: nix::unistd::Pid,
    serve: serve::Serve,
    oom: Option<OomWatch>,
}

/// Opens the log, creates the container, binds the attach socket.
fn start(args: &Args) -> Result<Started, CreateFailure> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.add(Signal::SIGUSR1);
    mask.thread_block()
        .map_err(|err| failure(format!("block signals: {err}")))?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|err| failure(format!("signalfd: {err}")))?;

    let log = LogFile::open(args.log_path.clone(), args.log_dir.clone())
        .map_err(|err| failure(format!("open log file {}: {err}", args.log_path.display())))?;

    let created = match &args.runtime {
        Some(binary) => create::create(args, binary, &signals)?,
        None => embedded::create(args)?,
    };
    // Right after create, while the container surely lives: its memory cgroup.
    let oom = OomWatch::of_process(created.pid.as_raw());
    let listener = bind_attach_socket(&args.attach_socket).map_err(|err| {
        failure(format!(
            "attach socket {}: {err}",
            args.attach_socket.display()
        ))
    })?;
    let mut serve = serve::Serve::new(serve::Setup {
        signals,
        container: created.pid,
        output: created.output,
        stdin_pipe: created.stdin,
        stdin: args.stdin,
        stdin_once: args.stdin_once,
        listener,
        log,
    })
    .map_err(|err| failure(format!("serve: {err}")))?;
    serve.emit_early(created.early_output);
    Ok(Started {
        container: created.pid,
        serve,
        oom,
    })
}

/// Binds the attach socket with mode 0600, replacing a stale one. Bound only after
/// create succeeded: a second monitor for an id that is taken fails at create and
/// must not take the first one's socket.
fn bind_attach_socket(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err),
        _ => {}
    }
    // The mode comes from the umask at bind; single-threaded, so setting it around
    // the bind affects nothing else.
    let short = crust_runtime::monitor::SocketPath::new(path)?;
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(short.path());
    nix::sys::stat::umask(old);
    let listener = bound?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Writes `status` to `path` through a temporary file and a rename, so that a reader
/// sees the whole file or none.
fn write_exit_file(path: &Path, status: &ExitStatus) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".tmp");
    let temp = path.with_file_name(name);
    let json = serde_json::to_vec(status).map_err(std::io::Error::other)?;
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(&json)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temp, path)
}

/// Writes one handshake line; false if crustd is gone (EPIPE, its end closed).
fn send(sync: &mut UnixStream, message: &SyncMessage) -> bool {
    sync.write_all(&message.to_line()).is_ok()
}

/// Kills the created container and deletes the runtime's state of it.
fn abandon(args: &Args) {
    sys::kill_and_reap_children();
    let _ = std::fs::remove_file(&args.attach_socket);
    let Some(binary) = &args.runtime else {
        embedded::remove_state(args);
        return;
    };
    let runtime = crust_runtime::OciRuntime::new(binary.clone(), args.runtime_root.clone())
        .with_systemd_cgroup(args.systemd_cgroup);
    let log = args.bundle.join(crust_runtime::oci::LOG_FILE);
    let Ok(mut command) = runtime.delete_command(&args.id, true, &log) else {
        return;
    };
    let Ok(mut child) = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    else {
        return;
    };
    let deadline = std::time::Instant::now() + args.create_timeout;
    while std::time::Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}
