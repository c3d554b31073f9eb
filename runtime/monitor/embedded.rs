//! Creating the container in this process with libcontainer (`--embedded`).
//!
//! The same stdio as `create` gives a runtime binary, handed to libcontainer instead:
//! pipes for stdout and stderr (and stdin with `--stdin`), or a console socket on
//! which the container's init sends its pty master. `ContainerBuilder` forks an
//! intermediate process that forks the init with `CLONE_PARENT`, so the init is this
//! monitor's child, and returns once the init waits on its notify socket for crustd's
//! start. Its state goes to `<runtime root>/<id>`, where crustd's embedded handler
//! reads it.
//!
//! The monitor is single-threaded, which is what makes forking here safe (and what
//! libcontainer's changes of the working directory need).

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::Path;

use crust_proto::monitor::CreateFailure;
use crust_runtime::monitor::PID_FILE;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;

use crate::args::Args;
use crate::cgroup_mount;
use crate::create::{Created, Output, failure, pipe, read_pid_file, receive_fd};
use crate::sys;

/// Creates the container of `args` with libcontainer. On failure every process it
/// left is killed and reaped, and its state directory removed.
pub fn create(args: &Args) -> Result<Created, CreateFailure> {
    let pid_file = args.bundle.join(PID_FILE);
    let _ = std::fs::remove_file(&pid_file);
    let log = args.bundle.join(crust_runtime::oci::LOG_FILE);
    let log_start = log_to(&log);
    let fail = |message: String| {
        sys::kill_and_reap_children();
        let message = with_logged_causes(message, &log, log_start);
        failure(format!("embedded create {}: {message}", args.id))
    };

    adapt_spec(&args.bundle)
        .map_err(|message| failure(format!("embedded create {}: {message}", args.id)))?;
    let console = if args.tty {
        let dir = tempfile::Builder::new()
            .prefix("crust-monitor-")
            .tempdir()
            .map_err(|err| failure(format!("create console socket directory: {err}")))?;
        let path = dir.path().join("console.sock");
        let listener = UnixListener::bind(&path)
            .map_err(|err| failure(format!("bind console socket {}: {err}", path.display())))?;
        Some((dir, path, listener))
    } else {
        None
    };
    let mut builder = ContainerBuilder::new(args.id.clone(), SyscallType::default())
        .with_root_path(&args.runtime_root)
        .map_err(|err| fail(crust_runtime::embedded::error_chain(&err)))?;
    // libcontainer canonicalizes the pid file's path, so it must exist.
    std::fs::write(&pid_file, b"").map_err(|err| failure(format!("pid file: {err}")))?;
    builder = builder
        .with_pid_file(Some(&pid_file))
        .map_err(|err| fail(crust_runtime::embedded::error_chain(&err)))?;
    let mut ours = (None, None, None);
    match &console {
        Some((_, path, _)) => builder = builder.with_console_socket(Some(path)),
        None => {
            let (out_read, out_write) = pipe()?;
            let (err_read, err_write) = pipe()?;
            for fd in [&out_read, &err_read] {
                sys::set_nonblocking(fd).map_err(|err| failure(format!("pipe: {err}")))?;
            }
            builder = builder.with_stdout(out_write).with_stderr(err_write);
            if args.stdin {
                let (read, write) = pipe()?;
                sys::set_nonblocking(&write).map_err(|err| failure(format!("pipe: {err}")))?;
                builder = builder.with_stdin(read);
                ours.2 = Some(write);
            } else {
                builder = builder.with_stdin(dev_null()?);
            }
            ours.0 = Some(out_read);
            ours.1 = Some(err_read);
        }
    }
    let built = builder
        .as_init(&args.bundle)
        .with_systemd(args.systemd_cgroup)
        .with_detach(true)
        .build();
    if let Err(err) = built {
        let failed = fail(crust_runtime::embedded::error_chain(&err));
        // An id already taken is another container's state, not ours to remove.
        if !matches!(err, libcontainer::error::LibcontainerError::Exist) {
            remove_state(args);
        }
        return Err(failed);
    }
    let fail = |message: String| {
        let failed = fail(message);
        remove_state(args);
        failed
    };
    let pid = read_pid_file(&pid_file).map_err(fail)?;
    let output = match (&console, ours.0.take(), ours.1.take()) {
        (Some((_, _, listener)), _, _) => {
            // The init sent its pty master before it reported ready: the connection
            // is queued on the listener.
            let master = listener
                .accept()
                .ok()
                .and_then(|(stream, _)| receive_fd(&stream));
            match master {
                Some(master) => Output::Pty(master),
                None => return Err(fail("no terminal arrived on the console socket".into())),
            }
        }
        (None, Some(stdout), Some(stderr)) => Output::Pipes { stdout, stderr },
        (None, _, _) => unreachable!("both pipes are made without a terminal"),
    };
    Ok(Created {
        pid,
        output,
        stdin: ours.2,
        early_output: Vec::new(),
    })
}

/// Rewrites in the bundle's spec what libcontainer reads differently from runc: runc's
/// recursive rootfs propagation names (`rslave`, `rshared`, ...) become the plain ones
/// (libcontainer applies every rootfs propagation recursively), and a v1 `cgroup`
/// mount in a joined PID namespace becomes plain mounts (see [`cgroup_mount`]).
fn adapt_spec(bundle: &Path) -> Result<(), String> {
    let path = bundle.join("config.json");
    let mut spec =
        oci_spec::runtime::Spec::load(&path).map_err(|err| format!("read spec: {err}"))?;
    let Some(linux) = spec.linux_mut() else {
        return Ok(());
    };
    let mut changed = false;
    if let Some(recursive @ ("rslave" | "rshared" | "rprivate" | "runbindable")) =
        linux.rootfs_propagation().as_deref()
    {
        let plain = recursive[1..].to_owned();
        linux.set_rootfs_propagation(Some(plain));
        changed = true;
    }
    if let (Ok(mountinfo), Ok(own)) = (
        std::fs::File::open("/proc/self/mountinfo"),
        std::fs::read_to_string("/proc/self/cgroup"),
    ) {
        let mountinfo = std::io::BufReader::with_capacity(4096, mountinfo);
        changed |= cgroup_mount::replace_joined_pid_cgroup_mount(&mut spec, mountinfo, &own);
    }
    if !changed {
        return Ok(());
    }
    spec.save(&path).map_err(|err| format!("write spec: {err}"))
}

/// Deletes what libcontainer keeps of the container, killing what runs in it.
pub fn remove_state(args: &Args) {
    let dir = args.runtime_root.join(&args.id);
    if let Ok(mut container) = libcontainer::container::Container::load(dir.clone()) {
        let _ = container.delete(true);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `message` with libcontainer's own words for what failed, logged to `log` after
/// `start`: its init process logs the cause, and only a summary reaches the error.
pub fn with_logged_causes(message: String, log: &Path, start: u64) -> String {
    let logged = logged_errors(log, start);
    if logged.is_empty() || message.contains(&logged) {
        message
    } else {
        format!("{message} ({logged})")
    }
}

/// Sends libcontainer's warnings and errors, in this process and the ones it forks,
/// to `log` as JSON lines (youki's log format); where the log ended before.
pub fn log_to(log: &Path) -> u64 {
    let start = std::fs::metadata(log).map_or(0, |m| m.len());
    let Ok(file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    else {
        return start;
    };
    let _ = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::WARN)
        .with_writer(std::sync::Arc::new(file))
        .try_init();
    start
}

/// The distinct error messages logged after `start`, oldest first, joined.
fn logged_errors(log: &Path, start: u64) -> String {
    let Ok(bytes) = std::fs::read(log) else {
        return String::new();
    };
    let new = bytes.get(start as usize..).unwrap_or_default();
    let mut messages: Vec<String> = Vec::new();
    for line in new.split(|&b| b == b'\n') {
        if let Some(message) = error_line(line)
            && !messages.contains(&message)
        {
            messages.push(message);
        }
    }
    let joined = messages.join("; ");
    // Bounded: this goes into a gRPC status.
    match joined.char_indices().nth(2048) {
        Some((at, _)) => joined[..at].to_owned(),
        None => joined,
    }
}

/// An ERROR line's message with the fields libcontainer logs beside it (the
/// underlying error is often one: `error!(?err, "failed to mount")`).
fn error_line(line: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(line).ok()?;
    if !value.get("level")?.as_str()?.eq_ignore_ascii_case("error") {
        return None;
    }
    let fields = value.get("fields")?.as_object()?;
    let mut text = fields.get("message")?.as_str()?.to_owned();
    for (name, field) in fields.iter().filter(|(name, _)| *name != "message") {
        let field = field
            .as_str()
            .map_or_else(|| field.to_string(), str::to_owned);
        text.push_str(&format!(" {name}={field}"));
    }
    Some(text)
}

fn dev_null() -> Result<OwnedFd, CreateFailure> {
    std::fs::File::open("/dev/null")
        .map(OwnedFd::from)
        .map_err(|err| failure(format!("open /dev/null: {err}")))
}
