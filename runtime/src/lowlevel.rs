//! The low-level runtime seam: what crust asks of the runtime under a handler.
//!
//! Two implementations stand behind [`LowLevelRuntime`]:
//!
//! - [`OciRuntime`]: a runc-compatible CLI (runc, crun, youki), one process per call.
//! - [`crate::embedded::Embedded`]: youki's `libcontainer` crate, with no runtime
//!   binary at all. crust-monitor builds the container in its own process (it stays
//!   the parent), crustd starts, signals, inspects and deletes it in-process, and exec
//!   and the pause's one-shot run go through crust-monitor's small runc-compatible CLI
//!   (`crust-monitor oci ...`), because forking a container from crustd's threads is
//!   not safe.
//!
//! Everything that must run a process in the container (exec, `update`, checkpoint)
//! builds its command line from [`LowLevelRuntime::cli`], the same for both.

use std::path::Path;
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::error::Result;
use crate::oci::{CreateOptions, OciRuntime, State};

/// How crust-monitor creates a container for a handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateEngine {
    /// `<binary> create` (or `restore`) as a child process.
    Cli(std::path::PathBuf),
    /// libcontainer's `ContainerBuilder` inside the monitor.
    Embedded,
}

/// The operations crust needs from a low-level OCI runtime.
pub trait LowLevelRuntime: std::fmt::Debug + Send + Sync {
    /// A short name for messages and `RuntimeHandler` listings ("runc", "embedded").
    fn name(&self) -> String;

    /// The runtime's state directory (`--root`).
    fn root(&self) -> &Path;

    /// Whether cgroups paths are systemd's `slice:prefix:name`.
    fn systemd_cgroup(&self) -> bool;

    /// How long one call may take.
    fn timeout(&self) -> Duration;

    /// How the monitor creates containers.
    fn engine(&self) -> CreateEngine;

    /// The CLI that runs processes in containers (exec, update, checkpoint).
    fn cli(&self) -> &OciRuntime;

    /// Whether CRIU checkpoint and restore are available.
    fn checkpoints(&self) -> bool {
        true
    }

    /// Starts the user process of created container `id`.
    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>>;

    /// The state of `id`, `None` when the runtime does not know it.
    fn state<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<State>>>;

    /// Sends `signal` to the container's process (`all`: every process in it); a
    /// stopped or unknown container is not an error.
    fn kill<'a>(&'a self, id: &'a str, signal: i32, all: bool) -> BoxFuture<'a, Result<()>>;

    /// Deletes `id` (`force`: kills it first); an unknown container is not an error.
    fn delete<'a>(&'a self, id: &'a str, force: bool) -> BoxFuture<'a, Result<()>>;

    /// Freezes every process of `id`.
    fn pause<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>>;

    /// Thaws `id` after [`LowLevelRuntime::pause`].
    fn resume<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>>;

    /// Creates and starts `id` at once, for containers whose stdio nobody reads.
    fn run_detached<'a>(
        &'a self,
        id: &'a str,
        bundle: &'a Path,
        opts: &'a CreateOptions,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.cli().run_detached(id, bundle, opts))
    }
}

impl LowLevelRuntime for OciRuntime {
    fn name(&self) -> String {
        OciRuntime::name(self)
    }

    fn root(&self) -> &Path {
        OciRuntime::root(self)
    }

    fn systemd_cgroup(&self) -> bool {
        OciRuntime::systemd_cgroup(self)
    }

    fn timeout(&self) -> Duration {
        OciRuntime::timeout(self)
    }

    fn engine(&self) -> CreateEngine {
        CreateEngine::Cli(self.binary().to_path_buf())
    }

    fn cli(&self) -> &OciRuntime {
        self
    }

    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(OciRuntime::start(self, id))
    }

    fn state<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<State>>> {
        Box::pin(OciRuntime::state(self, id))
    }

    fn kill<'a>(&'a self, id: &'a str, signal: i32, all: bool) -> BoxFuture<'a, Result<()>> {
        Box::pin(OciRuntime::kill(self, id, signal, all))
    }

    fn delete<'a>(&'a self, id: &'a str, force: bool) -> BoxFuture<'a, Result<()>> {
        Box::pin(OciRuntime::delete(self, id, force))
    }

    fn pause<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(OciRuntime::pause(self, id))
    }

    fn resume<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(OciRuntime::resume(self, id))
    }
}
