//! A driver for runc-compatible OCI runtime CLIs: runc, crun, youki.
//!
//! Each method runs the runtime binary once, as containerd's runc wrapper does:
//!
//! ```text
//! <binary> --root <root> --log <log.json> --log-format json [--systemd-cgroup] <command> ...
//! ```
//!
//! - stdin is /dev/null and `NOTIFY_SOCKET` is removed from the environment (the runtime
//!   would otherwise wait for, or notify, systemd on our behalf).
//! - `create` gives the runtime /dev/null as stdout and stderr too: the container's
//!   process inherits the runtime's stdio, and a pipe held by a long-lived container
//!   would never reach EOF. Its evidence on failure is therefore log.json alone. Other
//!   commands have their stdout and stderr captured.
//! - The runtime runs in its own process group, so that a timeout kills whatever it
//!   started with it, and so that a terminal's Ctrl-C aimed at crustd does not reach
//!   the containers it created (they inherit that group).
//! - Every call has a timeout (30 s unless configured); past it the process group is
//!   killed and the call fails with [`ErrorKind::DeadlineExceeded`]. A `create` killed
//!   this way can leave a half-made container behind: callers clean up with
//!   `delete(id, true)`.
//!
//! Where log.json lives: `create` writes `<bundle>/log.json`. The other commands take
//! only an id, so the driver is told the directory whose `<id>` subdirectories are the
//! bundles ([`OciRuntime::with_bundle_dir`]) and logs to `<bundle_dir>/<id>/log.json`.
//! When that directory does not exist (never configured, or the bundle is already
//! removed) the call logs to a temporary file that is read and removed afterwards:
//! runc refuses to run at all when it cannot open its log. Only what a call appended
//! to the log is searched for its error, so an old error never explains a new failure.
//!
//! A failed call becomes [`RuntimeError::Failed`], a [`Failure`] with the exit status, the end of
//! stderr and the last `"level":"error"` message the call logged. The runtimes report
//! every failure with exit status 1, so the kind is read from that message, here and
//! nowhere else: "does not exist" (runc, youki) or crun's missing state file is
//! [`ErrorKind::NotFound`]; an existing id at create, "not running", "not stopped" and
//! the like are [`ErrorKind::FailedPrecondition`].

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::{ErrorKind, Failure, Result, RuntimeError};

/// How long one runtime call may take unless configured otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The name of the runtime's log file in a bundle.
pub const LOG_FILE: &str = "log.json";

/// At most this much of stderr is kept in an error.
const STDERR_KEEP: usize = 4096;
/// At most this much of what a call appended to log.json is searched for its error.
const LOG_READ_MAX: u64 = 64 * 1024;

/// A runc-compatible OCI runtime binary and its global options.
#[derive(Debug, Clone)]
pub struct OciRuntime {
    binary: PathBuf,
    /// Arguments before the global options: `oci` when the binary is crust-monitor
    /// serving the embedded handler's CLI.
    prefix: Vec<std::ffi::OsString>,
    root: PathBuf,
    bundle_dir: Option<PathBuf>,
    timeout: Duration,
    systemd_cgroup: bool,
}

/// Options of [`OciRuntime::create`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateOptions {
    /// Where the runtime writes the container process's pid.
    pub pid_file: PathBuf,
    /// Do not create a new session keyring for the container (`--no-new-keyring`).
    pub no_new_keyring: bool,
}

/// Options of [`OciRuntime::checkpoint`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointOptions {
    /// Where CRIU writes its image files (`--image-path`).
    pub image_path: PathBuf,
    /// Where CRIU writes `dump.log` and `stats-dump` (`--work-path`).
    pub work_path: PathBuf,
    /// The container goes on running after the dump (`--leave-running`).
    pub leave_running: bool,
}

/// Options of [`OciRuntime::restore_command`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreOptions {
    /// Where the runtime writes the restored process's pid.
    pub pid_file: PathBuf,
    /// CRIU's image files (`--image-path`).
    pub image_path: PathBuf,
    /// Where CRIU writes `restore.log` (`--work-path`).
    pub work_path: PathBuf,
}

/// A container's state as the runtime's `state` command reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The container id.
    #[serde(default)]
    pub id: String,
    /// "creating", "created", "running", "stopped" or "paused".
    #[serde(default)]
    pub status: String,
    /// The container process's pid on the host, 0 once it has stopped.
    #[serde(default)]
    pub pid: i32,
    /// The bundle directory.
    #[serde(default)]
    pub bundle: PathBuf,
    /// When the container was created (RFC 3339).
    #[serde(default)]
    pub created: String,
}

/// The log file of one call and where that call's lines begin.
struct CallLog {
    path: PathBuf,
    start: u64,
    /// Removes the temporary log file when the call is done.
    _temp: Option<tempfile::TempPath>,
}

impl CallLog {
    fn at(path: PathBuf) -> CallLog {
        let start = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        CallLog {
            path,
            start,
            _temp: None,
        }
    }

    /// The last error message among the lines this call appended.
    fn last_error(&self) -> Option<String> {
        let mut file = std::fs::File::open(&self.path).ok()?;
        let len = file.metadata().ok()?.len();
        let from = self.start.max(len.saturating_sub(LOG_READ_MAX));
        // A log that shrank (rotated or rewritten) is read from its beginning.
        let from = if from > len { 0 } else { from };
        file.seek(SeekFrom::Start(from)).ok()?;
        let mut bytes = Vec::new();
        file.take(LOG_READ_MAX).read_to_end(&mut bytes).ok()?;
        last_log_error(&bytes)
    }
}

impl OciRuntime {
    /// A runtime run from `binary` keeping its state under `root` (`--root`).
    pub fn new(binary: PathBuf, root: PathBuf) -> OciRuntime {
        // Absolute, because crun names its state files by this path in its errors and
        // we look for them there.
        let root = std::path::absolute(&root).unwrap_or(root);
        OciRuntime {
            binary,
            prefix: Vec::new(),
            root,
            bundle_dir: None,
            timeout: DEFAULT_TIMEOUT,
            systemd_cgroup: false,
        }
    }

    /// Bundles live at `<dir>/<id>`: calls that take only an id log to
    /// `<dir>/<id>/log.json`.
    pub fn with_bundle_dir(mut self, dir: PathBuf) -> OciRuntime {
        self.bundle_dir = Some(std::path::absolute(&dir).unwrap_or(dir));
        self
    }

    /// Every command line starts with `args` after the binary (a subcommand that
    /// makes the binary a runc-compatible CLI).
    pub fn with_prefix_args(mut self, args: &[&str]) -> OciRuntime {
        self.prefix = args.iter().map(Into::into).collect();
        self
    }

    /// Every call is killed after `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> OciRuntime {
        self.timeout = timeout;
        self
    }

    /// Pass `--systemd-cgroup`, for cgroups paths in systemd's `slice:prefix:name` form.
    pub fn with_systemd_cgroup(mut self, systemd_cgroup: bool) -> OciRuntime {
        self.systemd_cgroup = systemd_cgroup;
        self
    }

    /// The runtime binary.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The runtime's state directory (`--root`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether calls pass `--systemd-cgroup`.
    pub fn systemd_cgroup(&self) -> bool {
        self.systemd_cgroup
    }

    /// The timeout of each call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The bundle directory of `id` (`<bundle_dir>/<id>`), when a bundle dir is set.
    pub fn bundle_path(&self, id: &str) -> Option<PathBuf> {
        self.bundle_dir.as_ref().map(|dir| dir.join(id))
    }

    /// The `create` command line, ready to spawn: stdio /dev/null, `NOTIFY_SOCKET`
    /// removed, its own process group. [`OciRuntime::create`] runs exactly this; a
    /// caller that owns the container's stdio (the monitor) sets its own before
    /// spawning.
    pub fn create_command(
        &self,
        id: &str,
        bundle: &Path,
        opts: &CreateOptions,
    ) -> Result<std::process::Command> {
        self.bundle_command(&["create"], id, bundle, opts)
    }

    /// The `restore` command line, ready to spawn as [`Self::create_command`]'s is:
    /// `restore --detach` with CRIU's images and work directory, `--file-locks` as
    /// the dump took them, cgroups in runc's default `soft` mode (the container's
    /// own cgroup from config.json, CRIU restoring no cgroup properties beyond
    /// it). The restored process runs once the command has exited; there is no
    /// `start`.
    pub fn restore_command(
        &self,
        id: &str,
        bundle: &Path,
        opts: &RestoreOptions,
    ) -> Result<std::process::Command> {
        let utf8 = |what: &'static str, path: &Path| -> Result<String> {
            let path = absolute(what, path)?;
            path.to_str()
                .map(str::to_owned)
                .ok_or_else(|| RuntimeError::invalid(what, &path.to_string_lossy(), "not UTF-8"))
        };
        let image_path = utf8("checkpoint image path", &opts.image_path)?;
        let work_path = utf8("restore work path", &opts.work_path)?;
        self.bundle_command(
            &[
                "restore",
                "--detach",
                "--image-path",
                &image_path,
                "--work-path",
                &work_path,
                "--file-locks",
                "--manage-cgroups-mode",
                "soft",
            ],
            id,
            bundle,
            &CreateOptions {
                pid_file: opts.pid_file.clone(),
                no_new_keyring: false,
            },
        )
    }

    /// `<verb...> --bundle B --pid-file P [--no-new-keyring] ID`, stdio to /dev/null.
    fn bundle_command(
        &self,
        verb: &[&str],
        id: &str,
        bundle: &Path,
        opts: &CreateOptions,
    ) -> Result<std::process::Command> {
        validate_id(id)?;
        let bundle = absolute("bundle", bundle)?;
        let pid_file = absolute("pid file", &opts.pid_file)?;
        let mut command = self.command(&bundle.join(LOG_FILE));
        command.args(verb).arg("--bundle").arg(&bundle);
        command.arg("--pid-file").arg(&pid_file);
        if opts.no_new_keyring {
            command.arg("--no-new-keyring");
        }
        command.arg(id);
        command.stdout(Stdio::null()).stderr(Stdio::null());
        Ok(command)
    }

    /// Creates container `id` from `bundle` (`<bundle>/config.json`); its process
    /// waits for [`OciRuntime::start`].
    pub async fn create(&self, id: &str, bundle: &Path, opts: &CreateOptions) -> Result<()> {
        let command = self.create_command(id, bundle, opts)?;
        self.bundle_call("create", id, bundle, command).await
    }

    /// Runs a command made by [`Self::bundle_command`].
    async fn bundle_call(
        &self,
        verb: &'static str,
        id: &str,
        bundle: &Path,
        command: std::process::Command,
    ) -> Result<()> {
        // Checked here because a runtime that cannot open <bundle>/log.json says why
        // only on its stderr, which goes to /dev/null.
        let bundle = absolute("bundle", bundle)?;
        std::fs::read_dir(&bundle).map_err(|err| RuntimeError::io("open bundle", &bundle, err))?;
        let log = CallLog::at(bundle.join(LOG_FILE));
        self.run(verb, id, command, log, false).await.map(drop)
    }

    /// Creates and starts container `id` in one runtime call (`run --detach`): for
    /// containers whose stdio nobody reads, such as the pause, it saves a whole
    /// runtime invocation on the way to a running pod.
    pub async fn run_detached(&self, id: &str, bundle: &Path, opts: &CreateOptions) -> Result<()> {
        let command = self.bundle_command(&["run", "--detach"], id, bundle, opts)?;
        self.bundle_call("run", id, bundle, command).await
    }

    /// Starts the user process of created container `id`.
    pub async fn start(&self, id: &str) -> Result<()> {
        validate_id(id)?;
        let log = self.call_log(id)?;
        let mut command = self.command(&log.path);
        command.arg("start").arg(id);
        self.run("start", id, command, log, true).await.map(drop)
    }

    /// The state of container `id`, or `None` when the runtime does not know it.
    pub async fn state(&self, id: &str) -> Result<Option<State>> {
        validate_id(id)?;
        let log = self.call_log(id)?;
        let mut command = self.command(&log.path);
        command.arg("state").arg(id);
        let stdout = match self.run("state", id, command, log, true).await {
            Ok(stdout) => stdout,
            Err(err) if err.kind() == ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err),
        };
        parse_state(&stdout)
            .map(Some)
            .map_err(|err| RuntimeError::BadOutput {
                runtime: self.name(),
                command: "state",
                id: id.to_owned(),
                reason: err.to_string(),
            })
    }

    /// Sends `signal` to the container's process (`all`: to every process in it). A
    /// container that has stopped or does not exist is not an error.
    pub async fn kill(&self, id: &str, signal: i32, all: bool) -> Result<()> {
        validate_id(id)?;
        let log = self.call_log(id)?;
        let mut command = self.command(&log.path);
        command.arg("kill");
        if all {
            command.arg("--all");
        }
        command.arg(id).arg(signal.to_string());
        match self.run("kill", id, command, log, true).await {
            Ok(_) => Ok(()),
            // "container not running", "container does not exist": nothing to signal.
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
    }

    /// Deletes container `id` (`force`: kills it first if it runs). A container that
    /// does not exist is not an error.
    pub async fn delete(&self, id: &str, force: bool) -> Result<()> {
        let log = self.call_log(id)?;
        let command = self.delete_command(id, force, &log.path)?;
        match self.run("delete", id, command, log, true).await {
            Ok(_) => Ok(()),
            Err(err) if err.kind() == ErrorKind::NotFound => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// The `delete` command line logging to `log`, for a caller without an async
    /// runtime (the monitor abandoning a container nobody recorded).
    pub fn delete_command(
        &self,
        id: &str,
        force: bool,
        log: &Path,
    ) -> Result<std::process::Command> {
        validate_id(id)?;
        let mut command = self.command(log);
        command.arg("delete");
        if force {
            command.arg("--force");
        }
        command.arg(id);
        Ok(command)
    }

    /// Freezes every process of container `id` (`pause`, the cgroup freezer).
    pub async fn pause(&self, id: &str) -> Result<()> {
        self.simple("pause", id).await
    }

    /// Thaws container `id` after [`OciRuntime::pause`] (`resume`).
    pub async fn resume(&self, id: &str) -> Result<()> {
        self.simple("resume", id).await
    }

    /// `<verb> ID`, its output discarded.
    async fn simple(&self, verb: &'static str, id: &str) -> Result<()> {
        validate_id(id)?;
        let log = self.call_log(id)?;
        let mut command = self.command(&log.path);
        command.arg(verb).arg(id);
        self.run(verb, id, command, log, true).await.map(drop)
    }

    /// The `checkpoint` command line (CRIU through the runtime) logging to `log`, as
    /// [`OciRuntime::checkpoint`] runs it.
    pub fn checkpoint_command(
        &self,
        id: &str,
        opts: &CheckpointOptions,
        log: &Path,
    ) -> Result<std::process::Command> {
        validate_id(id)?;
        let image_path = absolute("checkpoint image path", &opts.image_path)?;
        let work_path = absolute("checkpoint work path", &opts.work_path)?;
        let mut command = self.command(log);
        command
            .arg("checkpoint")
            .arg("--image-path")
            .arg(&image_path)
            .arg("--work-path")
            .arg(&work_path);
        // As CRI-O asks: file locks are dumped rather than refused.
        command.arg("--file-locks");
        if opts.leave_running {
            command.arg("--leave-running");
        }
        command.arg(id);
        Ok(command)
    }

    /// Checkpoints container `id` with CRIU into `opts.image_path` (CRIU's images) and
    /// `opts.work_path` (CRIU's `dump.log`, `stats-dump`), killed after `timeout`
    /// rather than the runtime's usual one: dumping memory takes as long as it is big.
    /// A failure that names CRIU is [`ErrorKind::FailedPrecondition`]: the node, not
    /// the request, is what lacks.
    pub async fn checkpoint(
        &self,
        id: &str,
        opts: &CheckpointOptions,
        timeout: Duration,
    ) -> Result<()> {
        let log = self.call_log(id)?;
        let command = self.checkpoint_command(id, opts, &log.path)?;
        self.run_within("checkpoint", id, command, log, true, timeout)
            .await
            .map(drop)
    }

    /// The runtime's name for messages: its binary's file name.
    pub fn name(&self) -> String {
        self.binary
            .file_name()
            .unwrap_or(self.binary.as_os_str())
            .to_string_lossy()
            .into_owned()
    }

    /// The binary with the global options every call gets, logging to `log`: stdin
    /// /dev/null, `NOTIFY_SOCKET` removed, its own process group, the runtime umask.
    /// Callers add the verb and its arguments.
    pub fn command(&self, log: &Path) -> std::process::Command {
        use std::os::unix::process::CommandExt;
        let mut command = std::process::Command::new(&self.binary);
        command
            .args(&self.prefix)
            .arg("--root")
            .arg(&self.root)
            .arg("--log")
            .arg(log)
            .args(["--log-format", "json"]);
        if self.systemd_cgroup {
            command.arg("--systemd-cgroup");
        }
        command
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .process_group(0);
        crate::fsmode::with_runtime_umask(&mut command);
        command
    }

    /// The log of a call that names only the container: in its bundle if it is there.
    fn call_log(&self, id: &str) -> Result<CallLog> {
        if let Some(bundle) = self.bundle_path(id)
            && bundle.is_dir()
        {
            return Ok(CallLog::at(bundle.join(LOG_FILE)));
        }
        let temp = tempfile::Builder::new()
            .prefix("crust-oci-")
            .suffix(".log.json")
            .tempfile()
            .map_err(|err| RuntimeError::io("create log file in", std::env::temp_dir(), err))?
            .into_temp_path();
        Ok(CallLog {
            path: temp.to_path_buf(),
            start: 0,
            _temp: Some(temp),
        })
    }

    /// Runs `command` to completion within the timeout; returns its stdout.
    async fn run(
        &self,
        name: &'static str,
        id: &str,
        command: std::process::Command,
        log: CallLog,
        capture: bool,
    ) -> Result<Vec<u8>> {
        self.run_within(name, id, command, log, capture, self.timeout)
            .await
    }

    /// Runs `command` to completion within `timeout`; returns its stdout.
    async fn run_within(
        &self,
        name: &'static str,
        id: &str,
        command: std::process::Command,
        log: CallLog,
        capture: bool,
        timeout: Duration,
    ) -> Result<Vec<u8>> {
        let args = command_line(&command);
        tracing::debug!(command = %args.join(" "), "oci runtime call");
        let mut command = tokio::process::Command::from(command);
        if capture {
            command.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        // If this future is dropped (the caller's task is cancelled), the runtime dies
        // with it rather than running on unobserved.
        command.kill_on_drop(true);
        let mut child = spawn(&mut command).map_err(|source| RuntimeError::Spawn {
            runtime: self.name(),
            command: name,
            id: id.to_owned(),
            binary: self.binary.clone(),
            source,
        })?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let finished = tokio::time::timeout(timeout, async {
            tokio::join!(read_all(stdout), read_all(stderr), child.wait())
        })
        .await;
        let Ok((stdout, stderr, status)) = finished else {
            kill_group(&mut child).await;
            return Err(RuntimeError::Timeout {
                runtime: self.name(),
                command: name,
                id: id.to_owned(),
                timeout,
            });
        };
        let status = status.map_err(|err| RuntimeError::io("wait for", &self.binary, err))?;
        if status.success() {
            return Ok(stdout);
        }
        let log_error = log.last_error();
        let stderr = String::from_utf8_lossy(tail(&stderr, STDERR_KEEP))
            .trim()
            .to_owned();
        let state_dir = self.root.join(id);
        let kind = classify(
            name,
            &format!("{}\n{stderr}", log_error.as_deref().unwrap_or_default()),
            &state_dir.to_string_lossy(),
        );
        Err(RuntimeError::Failed(Box::new(Failure {
            runtime: self.name(),
            command: name,
            id: id.to_owned(),
            args,
            status: describe_status(status),
            stderr,
            log_error,
            kind,
        })))
    }
}

/// Parses the JSON the `state` command prints.
pub fn parse_state(bytes: &[u8]) -> serde_json::Result<State> {
    serde_json::from_slice(bytes)
}

/// The message of the last error line in a runtime's JSON log: runc and crun write
/// `{"level":"error","msg":...}`, youki (tracing) `{"level":"ERROR","fields":{"message":...}}`
/// or `"message"`. Lines that are not JSON are skipped.
pub fn last_log_error(log: &[u8]) -> Option<String> {
    log.split(|&b| b == b'\n').rev().find_map(|line| {
        let value: serde_json::Value = serde_json::from_slice(line).ok()?;
        let level = value.get("level")?.as_str()?;
        if !["error", "fatal", "panic"]
            .iter()
            .any(|l| level.eq_ignore_ascii_case(l))
        {
            return None;
        }
        let message = value
            .get("msg")
            .or_else(|| value.get("message"))
            .or_else(|| value.get("fields").and_then(|f| f.get("message")))?;
        Some(message.as_str()?.trim().to_owned())
    })
}

/// Refuses ids the runtimes refuse (runc allows `[A-Za-z0-9_+.-]`), and ids that would
/// read as an option or escape a directory when joined to a path.
pub(crate) fn validate_id(id: &str) -> Result<()> {
    let reason = if id.is_empty() {
        "empty"
    } else if id.len() > 1024 {
        "longer than 1024 bytes"
    } else if id.starts_with(['-', '.']) {
        "starts with '-' or '.'"
    } else if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_+.-".contains(&b))
    {
        "only letters, digits and _ + . - are allowed"
    } else {
        return Ok(());
    };
    Err(RuntimeError::invalid("container id", id, reason))
}

/// What a failed call's message means. Exit codes carry nothing (always 1), so this
/// reads the words the runtimes use; `state_dir` is `<root>/<id>`, which crun names when
/// the container's state is missing.
fn classify(command: &str, message: &str, state_dir: &str) -> ErrorKind {
    let lower = message.to_ascii_lowercase();
    if command == "checkpoint" && lower.contains("criu") {
        // "criu failed: type DUMP errno 0", "criu version ... is too old", "exec:
        // \"criu\": executable file not found": CRIU is missing or cannot dump here.
        return ErrorKind::FailedPrecondition;
    }
    if command == "create" {
        // runc: "container with id exists: x"; crun, youki: "... already exists". Ids
        // are unique per sandbox and container, so this is state left behind.
        return if lower.contains("container with id exists") || lower.contains("already exists") {
            ErrorKind::FailedPrecondition
        } else {
            ErrorKind::Internal
        };
    }
    if lower.contains("does not exist")
        || (lower.contains("no such file or directory") && message.contains(state_dir))
    {
        ErrorKind::NotFound
    } else if [
        "not running",
        "not stopped",
        "already running",
        "has stopped",
        "not in created state",
    ]
    .iter()
    .any(|phrase| lower.contains(phrase))
    {
        ErrorKind::FailedPrecondition
    } else {
        ErrorKind::Internal
    }
}

fn absolute(what: &'static str, path: &Path) -> Result<PathBuf> {
    if path.as_os_str().is_empty() {
        return Err(RuntimeError::invalid(what, "", "empty path"));
    }
    std::path::absolute(path).map_err(|err| RuntimeError::io("resolve", path, err))
}

fn command_line(command: &std::process::Command) -> Vec<String> {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect()
}

/// Spawns, retrying briefly on ETXTBSY: a runtime binary (or test script) just written
/// can still be open for writing in a child another thread forked meanwhile.
fn spawn(command: &mut tokio::process::Command) -> std::io::Result<tokio::process::Child> {
    crust_util::process::spawn_retrying_etxtbsy(|| command.spawn())
}

async fn read_all(pipe: Option<impl AsyncRead + Unpin>) -> Vec<u8> {
    let mut bytes = Vec::new();
    if let Some(mut pipe) = pipe {
        // A read error ends the output; what was read is kept.
        let _ = pipe.read_to_end(&mut bytes).await;
    }
    bytes
}

async fn kill_group(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
        // The runtime leads its own process group (process_group(0) in `command`); the
        // child is not reaped yet, so the group id cannot have been reused.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = child.kill().await;
}

fn describe_status(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    }
}

fn tail(bytes: &[u8], max: usize) -> &[u8] {
    &bytes[bytes.len().saturating_sub(max)..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn parses_runc_state() {
        let state = parse_state(
            br#"{
  "ociVersion": "1.0.2-dev",
  "id": "x1",
  "pid": 319,
  "status": "created",
  "bundle": "/tmp/exp/b",
  "rootfs": "/tmp/exp/b/rootfs",
  "created": "2026-11-23T10:59:59.084223617Z",
  "owner": ""
}"#,
        )
        .unwrap();
        assert_eq!(
            state,
            State {
                id: "x1".into(),
                status: "created".into(),
                pid: 319,
                bundle: "/tmp/exp/b".into(),
                created: "2026-11-23T10:59:59.084223617Z".into(),
            }
        );
    }

    #[test]
    fn parses_stopped_state_with_annotations_and_missing_fields() {
        let state = parse_state(
            br#"{"id":"c","status":"stopped","pid":0,"annotations":{"a":"b"},"systemd":true}"#,
        )
        .unwrap();
        assert_eq!(state.status, "stopped");
        assert_eq!(state.pid, 0);
        assert_eq!(state.bundle, PathBuf::new());
        assert!(parse_state(b"null").is_err());
        assert!(parse_state(b"container does not exist").is_err());
    }

    #[test]
    fn finds_the_last_error_line_of_each_runtime() {
        let runc = br#"{"level":"info","msg":"starting","time":"2024-01-01T00:00:00Z"}
{"level":"error","msg":"first failure","time":"2024-01-01T00:00:00Z"}
{"level":"error","msg":"container_linux.go:380: starting container process caused: exec: \"/nope\": stat /nope: no such file or directory","time":"2024-01-01T00:00:00Z"}
{"level":"warning","msg":"later warning","time":"2024-01-01T00:00:00Z"}
"#;
        assert_eq!(
            last_log_error(runc).as_deref(),
            Some(
                "container_linux.go:380: starting container process caused: exec: \"/nope\": stat /nope: no such file or directory"
            )
        );
        let crun = br#"{"msg": "cannot open directory '/run/crun/x': No such file or directory", "level": "error", "time": "2024-01-01T00:00:00.0Z"}"#;
        assert_eq!(
            last_log_error(crun).as_deref(),
            Some("cannot open directory '/run/crun/x': No such file or directory")
        );
        let youki = br#"{"timestamp":"2024","level":"ERROR","fields":{"message":"container x does not exist"},"target":"youki"}"#;
        assert_eq!(
            last_log_error(youki).as_deref(),
            Some("container x does not exist")
        );
        assert_eq!(
            last_log_error(b"not json\n{\"level\":\"info\",\"msg\":\"x\"}\n\n"),
            None
        );
        assert_eq!(last_log_error(b""), None);
    }

    #[test]
    fn classifies_runtime_messages() {
        let dir = "/run/crust/runc/c1";
        assert_eq!(
            classify("state", "container does not exist", dir),
            ErrorKind::NotFound
        );
        assert_eq!(
            classify(
                "state",
                "error opening file `/run/crust/runc/c1/status`: No such file or directory",
                dir
            ),
            ErrorKind::NotFound
        );
        assert_eq!(
            classify("start", "stat /x: no such file or directory", dir),
            ErrorKind::Internal
        );
        assert_eq!(
            classify("kill", "container not running", dir),
            ErrorKind::FailedPrecondition
        );
        assert_eq!(
            classify(
                "delete",
                "cannot delete container c1 that is not stopped: running",
                dir
            ),
            ErrorKind::FailedPrecondition
        );
        assert_eq!(
            classify("create", "container with id exists: c1", dir),
            ErrorKind::FailedPrecondition
        );
        // At create, a missing file is a broken bundle, not a missing container.
        assert_eq!(
            classify("create", "rootfs does not exist", dir),
            ErrorKind::Internal
        );
    }

    #[test]
    fn validates_ids() {
        for good in ["c1", "a.b_c+d-e", &"f".repeat(64)] {
            validate_id(good).unwrap();
        }
        for bad in [
            "",
            "-h",
            "--help",
            ".",
            "..",
            "a/b",
            "a b",
            "é",
            &"f".repeat(1025),
        ] {
            let err = validate_id(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{bad:?}");
        }
    }

    #[test]
    fn create_command_line() {
        let runtime = OciRuntime::new("/usr/bin/crun".into(), "/run/crust/crun".into())
            .with_systemd_cgroup(true);
        let command = runtime
            .create_command(
                "c1",
                Path::new("/run/crust/bundles/c1"),
                &CreateOptions {
                    pid_file: "/run/crust/bundles/c1/pid".into(),
                    no_new_keyring: true,
                },
            )
            .unwrap();
        assert_eq!(
            command_line(&command).join(" "),
            "/usr/bin/crun --root /run/crust/crun --log /run/crust/bundles/c1/log.json \
             --log-format json --systemd-cgroup create --bundle /run/crust/bundles/c1 \
             --pid-file /run/crust/bundles/c1/pid --no-new-keyring c1"
        );
        assert!(
            command
                .get_envs()
                .any(|(k, v)| k == "NOTIFY_SOCKET" && v.is_none())
        );
    }

    #[test]
    fn checkpoint_command_line() {
        let runtime = OciRuntime::new("/usr/sbin/runc".into(), "/run/crust/runc".into());
        let opts = CheckpointOptions {
            image_path: "/var/lib/crust/checkpoints/w/checkpoint".into(),
            work_path: "/var/lib/crust/checkpoints/w".into(),
            leave_running: true,
        };
        let command = runtime
            .checkpoint_command("c1", &opts, Path::new("/b/c1/log.json"))
            .unwrap();
        assert_eq!(
            command_line(&command).join(" "),
            "/usr/sbin/runc --root /run/crust/runc --log /b/c1/log.json --log-format json \
             checkpoint --image-path /var/lib/crust/checkpoints/w/checkpoint \
             --work-path /var/lib/crust/checkpoints/w --file-locks --leave-running c1"
        );
        let stop = CheckpointOptions {
            leave_running: false,
            ..opts.clone()
        };
        let command = runtime
            .checkpoint_command("c1", &stop, Path::new("/b/c1/log.json"))
            .unwrap();
        assert!(!command_line(&command).contains(&"--leave-running".to_string()));
        let err = runtime
            .checkpoint_command("--all", &opts, Path::new("/l"))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    }

    #[test]
    fn criu_failures_of_checkpoint_are_preconditions() {
        let dir = "/run/crust/runc/c1";
        assert_eq!(
            classify(
                "checkpoint",
                "criu failed: type DUMP errno 0\nlog file: /w/dump.log",
                dir
            ),
            ErrorKind::FailedPrecondition
        );
        assert_eq!(
            classify("checkpoint", "container does not exist", dir),
            ErrorKind::NotFound
        );
        assert_eq!(
            classify("checkpoint", "mkdir /w: permission denied", dir),
            ErrorKind::Internal
        );
        // Only checkpoint failures blame CRIU: another command naming it is not one.
        assert_eq!(classify("start", "criu", dir), ErrorKind::Internal);
    }

    #[tokio::test]
    async fn checkpoint_has_its_own_timeout_and_pause_resume_name_the_container() {
        let fake = Fake::new();
        let runtime = fake
            .runtime(
                "slow",
                r#"echo "$cmd $*" >> "$(dirname "$log")/calls"
[ "$cmd" = checkpoint ] && sleep 1
exit 0"#,
            )
            .with_timeout(Duration::from_millis(100));
        let bundle = fake.bundle("c1");
        let opts = CheckpointOptions {
            image_path: bundle.join("img"),
            work_path: bundle.clone(),
            leave_running: true,
        };
        runtime.pause("c1").await.unwrap();
        // Longer than the runtime's timeout, within the checkpoint's own.
        runtime
            .checkpoint("c1", &opts, Duration::from_secs(10))
            .await
            .unwrap();
        let err = runtime
            .checkpoint("c1", &opts, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::DeadlineExceeded, "{err}");
        runtime.resume("c1").await.unwrap();
        let calls = std::fs::read_to_string(bundle.join("calls")).unwrap();
        let lines: Vec<&str> = calls.lines().collect();
        assert_eq!(lines[0], "pause c1");
        assert!(lines[1].starts_with("checkpoint --image-path"), "{calls}");
        assert_eq!(lines.last(), Some(&"resume c1"));
    }

    /// A directory holding fake runtime scripts.
    struct Fake {
        dir: tempfile::TempDir,
    }

    impl Fake {
        fn new() -> Fake {
            Fake {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        /// A runtime whose body is `script`; `$log` is the --log argument, `$cmd` the
        /// subcommand, and `$@` is left as the arguments after the subcommand.
        fn runtime(&self, name: &str, script: &str) -> OciRuntime {
            let path = self.dir.path().join(name);
            let text = format!(
                "#!/bin/sh\nlog=''\nwhile [ $# -gt 0 ]; do\n  case \"$1\" in\n    \
                 --log) log=\"$2\"; shift 2;;\n    --root|--log-format) shift 2;;\n    \
                 --*) shift;;\n    *) break;;\n  esac\ndone\ncmd=\"$1\"; shift\n{script}\n"
            );
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            OciRuntime::new(path, self.dir.path().join("root"))
                .with_bundle_dir(self.dir.path().join("bundles"))
        }

        fn bundle(&self, id: &str) -> PathBuf {
            let bundle = self.dir.path().join("bundles").join(id);
            std::fs::create_dir_all(&bundle).unwrap();
            bundle
        }
    }

    fn create_opts(bundle: &Path) -> CreateOptions {
        CreateOptions {
            pid_file: bundle.join("pid"),
            no_new_keyring: false,
        }
    }

    #[tokio::test]
    async fn failure_carries_status_stderr_and_log_error() {
        let fake = Fake::new();
        let runtime = fake.runtime(
            "failing",
            r#"echo '{"level":"info","msg":"about to fail"}' >> "$log"
echo '{"level":"error","msg":"fake failure: no such thing","time":"2024-01-01T00:00:00Z"}' >> "$log"
echo "stderr says hello" >&2
exit 3"#,
        );
        let bundle = fake.bundle("c1");
        // An error from an earlier call must not be blamed for this one.
        std::fs::write(
            bundle.join(LOG_FILE),
            "{\"level\":\"error\",\"msg\":\"old news\"}\n",
        )
        .unwrap();

        let err = runtime.start("c1").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Internal);
        assert_eq!(
            err.to_string(),
            "oci runtime failing start c1: exit status 3: fake failure: no such thing \
             (stderr: stderr says hello)"
        );
        let RuntimeError::Failed(failure) = &err else {
            panic!("{err:?}");
        };
        let Failure {
            args,
            status,
            stderr,
            log_error,
            ..
        } = failure.as_ref();
        assert_eq!(status, "exit status 3");
        assert_eq!(stderr, "stderr says hello");
        assert_eq!(log_error.as_deref(), Some("fake failure: no such thing"));
        assert_eq!(args.last().map(String::as_str), Some("c1"));
        assert!(args.contains(&bundle.join(LOG_FILE).to_string_lossy().into_owned()));

        // create has no stderr to offer (it is /dev/null): the log line is the message.
        let err = runtime
            .create("c1", &bundle, &create_opts(&bundle))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "oci runtime failing create c1: exit status 3: fake failure: no such thing"
        );
    }

    #[tokio::test]
    async fn create_from_a_missing_bundle_names_it() {
        let fake = Fake::new();
        let runtime = fake.runtime("never-run", "exit 0");
        let bundle = fake.dir.path().join("bundles/none");
        let err = runtime
            .create("none", &bundle, &create_opts(&bundle))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "open bundle {}: No such file or directory (os error 2)",
                bundle.display()
            )
        );
    }

    #[tokio::test]
    async fn absent_containers_are_none_or_ok() {
        let fake = Fake::new();
        let runtime = fake.runtime(
            "absent",
            r#"echo '{"level":"error","msg":"container does not exist"}' >> "$log"
echo "container does not exist" >&2
exit 1"#,
        );
        // No bundle dir for "gone": the calls log to a temporary file.
        assert_eq!(runtime.state("gone").await.unwrap(), None);
        runtime.delete("gone", true).await.unwrap();
        runtime.kill("gone", 15, false).await.unwrap();
        let err = runtime.start("gone").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert!(
            err.to_string().ends_with("container does not exist"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn kill_of_a_stopped_container_is_ok_but_delete_of_a_running_one_is_not() {
        let fake = Fake::new();
        let runtime = fake.runtime(
            "stopped",
            r#"case "$cmd" in
  kill) echo '{"level":"error","msg":"container not running"}' >> "$log";;
  delete) echo '{"level":"error","msg":"cannot delete container c1 that is not stopped: running"}' >> "$log";;
esac
exit 1"#,
        );
        fake.bundle("c1");
        runtime.kill("c1", 9, true).await.unwrap();
        let err = runtime.delete("c1", false).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    }

    #[tokio::test]
    async fn state_parses_stdout_and_reports_garbage() {
        let fake = Fake::new();
        let runtime = fake.runtime(
            "state",
            r#"echo '{"ociVersion":"1.0.2","id":"'"$1"'","pid":42,"status":"running","bundle":"/b","created":"2024-01-01T00:00:00Z"}'"#,
        );
        let state = runtime.state("c1").await.unwrap().unwrap();
        assert_eq!((state.id.as_str(), state.pid), ("c1", 42));
        assert_eq!(state.status, "running");

        let garbage = fake.runtime("garbage", "echo 'not json'");
        let err = garbage.state("c1").await.unwrap_err();
        assert!(matches!(err, RuntimeError::BadOutput { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn calls_pass_global_options_and_a_clean_stdio_and_env() {
        let fake = Fake::new();
        let record = fake.dir.path().join("record");
        // $$ is the script's shell: its fds 0 and 1 are what the runtime was given.
        let runtime = fake.runtime(
            "recorder",
            &format!(
                r#"in=$(readlink /proc/$$/fd/0); out=$(readlink /proc/$$/fd/1)
{{ echo "log=$log cmd=$cmd args=$*"; echo "notify=${{NOTIFY_SOCKET:-unset}}"; echo "$in"; echo "$out"; }} > {}"#,
                record.display()
            ),
        );
        let bundle = fake.bundle("c1");
        runtime
            .create("c1", &bundle, &create_opts(&bundle))
            .await
            .unwrap();
        let text = std::fs::read_to_string(&record).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            format!(
                "log={} cmd=create args=--bundle {} --pid-file {} c1",
                bundle.join("log.json").display(),
                bundle.display(),
                bundle.join("pid").display()
            )
        );
        assert_eq!(lines[1], "notify=unset");
        assert_eq!(lines[2], "/dev/null");
        assert_eq!(lines[3], "/dev/null");

        runtime.kill("c1", 15, true).await.unwrap();
        let text = std::fs::read_to_string(&record).unwrap();
        assert!(
            text.starts_with(&format!(
                "log={} cmd=kill args=--all c1 15\n",
                bundle.join("log.json").display()
            )),
            "{text}"
        );
        // Not create: stdout is captured, stdin still /dev/null.
        assert!(text.contains("/dev/null\npipe:"), "{text}");
    }

    #[tokio::test]
    async fn a_hanging_runtime_is_killed_with_its_children() {
        let fake = Fake::new();
        let pids = fake.dir.path().join("pids");
        let runtime = fake
            .runtime(
                "hanging",
                &format!("sleep 60 &\necho \"$$ $!\" > {}\nwait", pids.display()),
            )
            .with_timeout(Duration::from_millis(500));
        let err = runtime.start("c1").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::DeadlineExceeded);
        assert_eq!(
            err.to_string(),
            "oci runtime hanging start c1: timed out after 500ms"
        );
        let text = std::fs::read_to_string(&pids).unwrap();
        let sleep_pid: i32 = text.split_whitespace().nth(1).unwrap().parse().unwrap();
        // The background sleep was in the runtime's process group: it is gone (or a
        // zombie awaiting its init) rather than sleeping on.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let state = std::fs::read_to_string(format!("/proc/{sleep_pid}/stat"))
                .ok()
                .and_then(|s| s.rsplit(") ").next().map(|r| r.chars().next()))
                .flatten();
            if matches!(state, None | Some('Z')) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "sleep {sleep_pid} survived"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[tokio::test]
    async fn a_missing_binary_is_a_failed_precondition() {
        let runtime = OciRuntime::new("/nonexistent/runc".into(), "/tmp/none".into());
        let err = runtime.state("c1").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
        assert!(
            err.to_string()
                .starts_with("oci runtime runc state c1: start /nonexistent/runc")
        );
    }

    #[tokio::test]
    async fn bad_ids_never_reach_the_runtime() {
        let runtime = OciRuntime::new("/nonexistent/runc".into(), "/tmp/none".into());
        let err = runtime.delete("--all", true).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert_eq!(
            err.to_string(),
            "invalid container id \"--all\": starts with '-' or '.'"
        );
    }
}
