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

use crust_proto::monitor::CreateFailure;
use crust_runtime::monitor::PID_FILE;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;

use crate::args::Args;
use crate::create::{Created, Output, failure, pipe, read_pid_file, receive_fd};
use crate::sys;

/// Creates the container of `args` with libcontainer. On failure every process it
/// left is killed and reaped, and its state directory removed.
pub fn create(args: &Args) -> Result<Created, CreateFailure> {
    let pid_file = args.bundle.join(PID_FILE);
    let _ = std::fs::remove_file(&pid_file);
    let fail = |message: String| {
        sys::kill_and_reap_children();
        failure(format!("embedded create {}: {message}", args.id))
    };

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

/// Deletes what libcontainer keeps of the container, killing what runs in it.
pub fn remove_state(args: &Args) {
    let dir = args.runtime_root.join(&args.id);
    if let Ok(mut container) = libcontainer::container::Container::load(dir.clone()) {
        let _ = container.delete(true);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn dev_null() -> Result<OwnedFd, CreateFailure> {
    std::fs::File::open("/dev/null")
        .map(OwnedFd::from)
        .map_err(|err| failure(format!("open /dev/null: {err}")))
}
