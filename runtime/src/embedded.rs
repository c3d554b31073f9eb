//! The embedded handler: youki's `libcontainer` crate instead of a runtime binary.
//!
//! Where each operation runs, and why:
//!
//! - **create** in crust-monitor (`monitor/embedded.rs`): `ContainerBuilder` forks the
//!   container's init with `CLONE_PARENT`, so the monitor that asked is its parent and
//!   reaper, with no runtime process in between.
//! - **start, state, kill, delete, pause, resume** here, in crustd, on a blocking
//!   thread: they read libcontainer's `state.json`, signal, write the cgroup freezer
//!   or remove a cgroup, and fork nothing. Start writes to the container's notify
//!   socket itself (see [`notify_start`]): libcontainer's own start changes the
//!   process's working directory, which no multi-threaded process may do.
//! - **exec, run, update** through `crust-monitor oci ...` ([`CLI_SUBCOMMAND`]), a
//!   runc-compatible CLI on libcontainer: they fork a process into the container,
//!   and forking from crustd's threads is not safe. crust-monitor starts in about a
//!   millisecond; a Go runtime does not.
//!
//! The state directory is libcontainer's own (`<root>/<id>/state.json`), so the
//! monitor, the CLI and crustd all read the same one.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::future::BoxFuture;
use libcontainer::container::{Container, ContainerStatus};
use libcontainer::error::LibcontainerError;

use crate::error::{ErrorKind, Failure, Result, RuntimeError};
use crate::lowlevel::{CreateEngine, LowLevelRuntime};
use crate::oci::{OciRuntime, State, validate_id};

/// The crust-monitor subcommand that is the embedded handler's runc-compatible CLI.
pub const CLI_SUBCOMMAND: &str = "oci";

/// The name the handler goes by in messages.
pub const NAME: &str = "embedded";

/// What the notify socket of a created container is called in its state directory
/// (libcontainer's `NOTIFY_FILE`).
const NOTIFY_FILE: &str = "notify.sock";

/// The embedded handler: libcontainer in crustd and in crust-monitor.
#[derive(Debug, Clone)]
pub struct Embedded {
    cli: OciRuntime,
}

impl Embedded {
    /// A handler keeping its state under `root`, running `monitor` (crust-monitor)
    /// for what must fork.
    pub fn new(monitor: PathBuf, root: PathBuf) -> Embedded {
        Embedded {
            cli: OciRuntime::new(monitor, root).with_prefix_args(&[CLI_SUBCOMMAND]),
        }
    }

    /// Bundles live at `<dir>/<id>` (the CLI logs to their log.json).
    pub fn with_bundle_dir(mut self, dir: PathBuf) -> Embedded {
        self.cli = self.cli.with_bundle_dir(dir);
        self
    }

    /// Cgroups paths are systemd's `slice:prefix:name`.
    pub fn with_systemd_cgroup(mut self, systemd: bool) -> Embedded {
        self.cli = self.cli.with_systemd_cgroup(systemd);
        self
    }

    /// Runs `op` on container `id`'s libcontainer state on a blocking thread.
    async fn on_container<T: Send + 'static>(
        &self,
        command: &'static str,
        id: &str,
        op: impl FnOnce(&mut Container) -> std::result::Result<T, LibcontainerError> + Send + 'static,
    ) -> Result<Option<T>> {
        validate_id(id)?;
        let dir = self.cli.root().join(id);
        let id_owned = id.to_owned();
        let timeout = self.cli.timeout();
        let work = tokio::task::spawn_blocking(move || {
            if !dir.join("state.json").exists() {
                return Ok(None);
            }
            let mut container = Container::load(dir)?;
            op(&mut container).map(Some)
        });
        match tokio::time::timeout(timeout, work).await {
            Err(_) => Err(RuntimeError::Timeout {
                runtime: NAME.into(),
                command,
                id: id_owned,
                timeout,
            }),
            Ok(Err(join)) => Err(failure(command, id, &join.to_string(), ErrorKind::Internal)),
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(err))) => Err(from_libcontainer(command, id, &err)),
        }
    }
}

/// The failure of an in-process operation, shaped as a CLI's so that callers read
/// one kind of evidence.
fn failure(command: &'static str, id: &str, message: &str, kind: ErrorKind) -> RuntimeError {
    RuntimeError::Failed(Box::new(Failure {
        runtime: NAME.into(),
        command,
        id: id.to_owned(),
        args: Vec::new(),
        status: "failed".into(),
        stderr: String::new(),
        log_error: Some(message.to_owned()),
        kind,
    }))
}

/// A libcontainer error with its whole chain of causes, and what kind it is.
pub fn from_libcontainer(command: &'static str, id: &str, err: &LibcontainerError) -> RuntimeError {
    let kind = match err {
        LibcontainerError::IncorrectStatus(_) | LibcontainerError::Exist => {
            ErrorKind::FailedPrecondition
        }
        LibcontainerError::NoDirectory => ErrorKind::NotFound,
        LibcontainerError::InvalidInput(_)
        | LibcontainerError::InvalidID(_)
        | LibcontainerError::MissingSpec(_)
        | LibcontainerError::InvalidSpec(_) => ErrorKind::InvalidArgument,
        _ => ErrorKind::Internal,
    };
    failure(command, id, &error_chain(err), kind)
}

/// `err: cause: cause...`, skipping causes whose text the previous one already holds.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = cause.source();
    }
    text
}

/// Tells the created container whose state directory is `dir` to exec its process,
/// as libcontainer's start does, but without changing the working directory: the
/// socket is reached through a descriptor of its directory, whose `/proc/self/fd`
/// path always fits a socket address.
pub fn notify_start(dir: &Path) -> std::io::Result<()> {
    let dir = std::fs::File::open(dir)?;
    let path = format!("/proc/self/fd/{}/{NOTIFY_FILE}", dir.as_raw_fd());
    let mut stream = std::os::unix::net::UnixStream::connect(path)?;
    stream.write_all(b"start container")?;
    Ok(())
}

/// The container's cgroupfs directories when crust can kill and remove them itself
/// ([`crate::cgroupfs`]); `None` leaves the work to libcontainer (systemd cgroups,
/// poststop hooks, Intel RDT, a config not written yet).
fn own_cgroups(container: &Container) -> Option<Vec<PathBuf>> {
    if container.systemd() || container.intel_rdt_dir().is_some() {
        return None;
    }
    let config = container.spec().ok()?;
    if config
        .hooks
        .as_ref()
        .is_some_and(|h| h.poststop().is_some())
    {
        return None;
    }
    crate::cgroupfs::dirs(&config.cgroup_path)
}

/// libcontainer's kill, with the processes of a kill-all found through
/// [`crate::cgroupfs`]; `raw` is `signal`'s number.
fn kill(
    container: &mut Container,
    signal: libcontainer::signal::Signal,
    raw: i32,
    all: bool,
) -> std::result::Result<(), LibcontainerError> {
    if !all {
        return container.kill(signal, all);
    }
    let Some(dirs) = own_cgroups(container) else {
        return container.kill(signal, all);
    };
    container.refresh_status()?;
    if !container.can_kill() && container.status() != ContainerStatus::Stopped {
        return Err(LibcontainerError::IncorrectStatus(container.status()));
    }
    kill_all(container, &dirs, raw)
}

/// libcontainer's delete, with the cgroups killed and removed through
/// [`crate::cgroupfs`]; the state directory goes last, as there.
fn delete(container: &mut Container, force: bool) -> std::result::Result<(), LibcontainerError> {
    let Some(dirs) = own_cgroups(container) else {
        return container.delete(force);
    };
    container.refresh_status()?;
    match container.status() {
        ContainerStatus::Stopped => {}
        // Like runc and crun, a created container may go without force.
        ContainerStatus::Created => kill_all(container, &dirs, libc::SIGKILL)?,
        _ if force => kill_all(container, &dirs, libc::SIGKILL)?,
        status => return Err(LibcontainerError::IncorrectStatus(status)),
    }
    crate::cgroupfs::remove(&dirs).map_err(LibcontainerError::OtherIO)?;
    match std::fs::remove_dir_all(&container.root) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(LibcontainerError::OtherIO(e)),
        _ => Ok(()),
    }
}

/// Signals everything in the container's cgroups and records it stopped, as
/// libcontainer does after any kill.
fn kill_all(
    container: &mut Container,
    dirs: &[PathBuf],
    signal: i32,
) -> std::result::Result<(), LibcontainerError> {
    crate::cgroupfs::kill_all(dirs, signal).map_err(LibcontainerError::OtherIO)?;
    container.set_status(ContainerStatus::Stopped).save()
}

/// The runc `state` status word of a libcontainer status.
fn status_word(status: ContainerStatus) -> &'static str {
    match status {
        ContainerStatus::Creating => "creating",
        ContainerStatus::Created => "created",
        ContainerStatus::Running => "running",
        ContainerStatus::Stopped => "stopped",
        ContainerStatus::Paused => "paused",
    }
}

impl LowLevelRuntime for Embedded {
    fn name(&self) -> String {
        NAME.into()
    }

    fn root(&self) -> &Path {
        self.cli.root()
    }

    fn systemd_cgroup(&self) -> bool {
        self.cli.systemd_cgroup()
    }

    fn timeout(&self) -> Duration {
        self.cli.timeout()
    }

    fn engine(&self) -> CreateEngine {
        CreateEngine::Embedded
    }

    fn cli(&self) -> &OciRuntime {
        &self.cli
    }

    fn checkpoints(&self) -> bool {
        false
    }

    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let started = self
                .on_container("start", id, |container| {
                    container.refresh_status()?;
                    if !container.can_start() {
                        return Err(LibcontainerError::IncorrectStatus(container.status()));
                    }
                    notify_start(container.root.as_path()).map_err(LibcontainerError::OtherIO)?;
                    container.set_status(ContainerStatus::Running).save()
                })
                .await?;
            started.ok_or_else(|| {
                failure("start", id, "container does not exist", ErrorKind::NotFound)
            })
        })
    }

    fn state<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<State>>> {
        Box::pin(self.on_container("state", id, |container| {
            container.refresh_status()?;
            Ok(State {
                id: container.id().to_owned(),
                status: status_word(container.status()).into(),
                pid: container.pid().map_or(0, |pid| pid.as_raw()),
                bundle: container.bundle().clone(),
                created: container
                    .created()
                    .map(|at| at.to_rfc3339())
                    .unwrap_or_default(),
            })
        }))
    }

    fn kill<'a>(&'a self, id: &'a str, signal: i32, all: bool) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let raw = signal;
            let signal = libcontainer::signal::Signal::try_from(signal).map_err(|err| {
                RuntimeError::invalid("signal", &signal.to_string(), err.to_string())
            })?;
            match self
                .on_container("kill", id, move |c| kill(c, signal, raw, all))
                .await
            {
                Ok(_) => Ok(()),
                Err(err)
                    if matches!(
                        err.kind(),
                        ErrorKind::NotFound | ErrorKind::FailedPrecondition
                    ) =>
                {
                    Ok(())
                }
                Err(err) => Err(err),
            }
        })
    }

    fn delete<'a>(&'a self, id: &'a str, force: bool) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let deleted = match self
                .on_container("delete", id, move |c| delete(c, force))
                .await
            {
                Ok(_) => Ok(()),
                Err(err) if err.kind() == ErrorKind::NotFound => Ok(()),
                Err(err) => Err(err),
            };
            // A create cut short leaves a state directory without (or with a
            // half-written) state.json, which libcontainer cannot load to delete.
            if deleted.is_ok() || force {
                let dir = self.cli.root().join(id);
                let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
            }
            deleted
        })
    }

    fn pause<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.on_container("pause", id, |c| c.pause())
                .await?
                .ok_or_else(|| {
                    failure("pause", id, "container does not exist", ErrorKind::NotFound)
                })
        })
    }

    fn resume<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.on_container("resume", id, |c| c.resume())
                .await?
                .ok_or_else(|| {
                    failure(
                        "resume",
                        id,
                        "container does not exist",
                        ErrorKind::NotFound,
                    )
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_reaches_a_socket_whose_path_is_too_long_for_an_address() {
        let base = tempfile::tempdir().unwrap();
        let deep = base.path().join("d".repeat(100)).join("e".repeat(100));
        std::fs::create_dir_all(&deep).unwrap();
        let listener = {
            // Bound the same way: from inside the directory.
            let dir = std::fs::File::open(&deep).unwrap();
            let path = format!("/proc/self/fd/{}/{NOTIFY_FILE}", dir.as_raw_fd());
            std::os::unix::net::UnixListener::bind(path).unwrap()
        };
        notify_start(&deep).unwrap();
        let (mut conn, _) = listener.accept().unwrap();
        let mut got = String::new();
        std::io::Read::read_to_string(&mut conn, &mut got).unwrap();
        assert_eq!(got, "start container");
    }

    #[test]
    fn errors_keep_their_causes_once() {
        let err = LibcontainerError::OtherIO(std::io::Error::other("disk on fire"));
        let failed = from_libcontainer("start", "c1", &err);
        assert_eq!(failed.kind(), ErrorKind::Internal);
        assert!(failed.to_string().contains("disk on fire"), "{failed}");
        let err = LibcontainerError::IncorrectStatus(ContainerStatus::Stopped);
        assert_eq!(
            from_libcontainer("start", "c1", &err).kind(),
            ErrorKind::FailedPrecondition
        );
    }

    #[tokio::test]
    async fn an_unknown_container_is_not_there() {
        let root = tempfile::tempdir().unwrap();
        let handler = Embedded::new("/nonexistent/crust-monitor".into(), root.path().into());
        assert_eq!(handler.state("nope").await.unwrap(), None);
        handler.kill("nope", libc::SIGKILL, true).await.unwrap();
        handler.delete("nope", true).await.unwrap();
        let err = handler.start("nope").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert_eq!(
            handler.state("../x").await.unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
    }
}
