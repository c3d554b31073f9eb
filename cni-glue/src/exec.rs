//! Plugin execution per the CNI spec: finding binaries, the environment and stdin
//! contracts, timeouts, error objects, and running a config list's plugins for ADD,
//! DEL, CHECK, STATUS and GC.
//!
//! Each invocation runs the plugin binary with a cleared environment (only `PATH` is
//! kept) plus the `CNI_*` variables, writes the plugin's config on stdin (its own JSON
//! with `name`, `cniVersion`, `prevResult` and `runtimeConfig` injected), and reads the
//! result or a CNI error object from stdout. A plugin that runs past the timeout is
//! killed with its process group. The calls block: the daemon runs them on a blocking
//! thread.

use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::{ConfList, PluginConf};
use crate::error::{CniError, Result};
use crate::result::CniResult;
use crate::version::SpecVersion;

/// Where plugins are searched when no directories are configured, in order.
pub const DEFAULT_BIN_DIRS: [&str; 2] = ["/opt/cni/bin", "/usr/lib/cni"];

/// How long one plugin invocation may take by default.
pub const DEFAULT_PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// The `PATH` given to plugins when the daemon has none.
const FALLBACK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How much of a failed plugin's stderr goes into the error message.
const STDERR_TAIL: usize = 2048;

/// A CNI command (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach the container to the network.
    Add,
    /// Detach it.
    Del,
    /// Check that the attachment is as ADD left it (0.4.0+).
    Check,
    /// Ask whether the plugin is ready for ADDs (1.1.0+).
    Status,
    /// Release resources of attachments that no longer exist (1.1.0+).
    Gc,
    /// Ask for the spec versions the plugin supports.
    Version,
}

impl Command {
    /// The command as the plugin sees it.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }

    fn has_attachment(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }
}

/// The per-attachment arguments of an invocation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuntimeConf {
    /// `CNI_CONTAINERID`: the sandbox id.
    pub container_id: String,
    /// `CNI_NETNS`: the netns path (may be empty on DEL when it is gone).
    pub netns: String,
    /// `CNI_IFNAME`: the interface name inside the sandbox.
    pub ifname: String,
    /// `CNI_ARGS` as key/value pairs.
    pub args: Vec<(String, String)>,
    /// Capability args; each plugin gets those it declares under `runtimeConfig`.
    pub capability_args: Map<String, Value>,
}

impl RuntimeConf {
    /// Validates the ids and names that end up in paths and the environment.
    pub fn validate(&self) -> Result<()> {
        validate_id("container id", &self.container_id)?;
        validate_ifname(&self.ifname)?;
        for (key, value) in &self.args {
            if key.is_empty() || key.contains([';', '=']) {
                return Err(invalid("CNI_ARGS key", key, "empty or contains ';' or '='"));
            }
            if value.contains(';') {
                return Err(invalid("CNI_ARGS value", value, "contains ';'"));
            }
        }
        Ok(())
    }

    /// `CNI_ARGS`: the pairs as `K=V` joined by `;`.
    pub fn cni_args(&self) -> String {
        self.args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";")
    }
}

/// An attachment that is still in use, for GC (`cni.dev/valid-attachments`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GcAttachment {
    /// The container id.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// The interface name.
    #[serde(rename = "ifname")]
    pub ifname: String,
}

/// What a plugin's VERSION command answered.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VersionInfo {
    /// The version the answer is in.
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    /// The spec versions the plugin supports.
    #[serde(rename = "supportedVersions", default)]
    pub supported_versions: Vec<String>,
}

impl VersionInfo {
    /// Whether the plugin supports spec version `version`.
    pub fn supports(&self, version: &str) -> bool {
        self.supported_versions.iter().any(|v| v == version)
    }
}

/// The error object a failing plugin prints on stdout.
#[derive(Deserialize)]
struct PluginErrorJson {
    code: u32,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    details: String,
}

/// Runs CNI plugins found in a list of directories, with a timeout per invocation.
#[derive(Debug, Clone)]
pub struct PluginExec {
    bin_dirs: Vec<PathBuf>,
    timeout: Duration,
}

impl Default for PluginExec {
    fn default() -> Self {
        PluginExec::new(
            DEFAULT_BIN_DIRS.iter().map(PathBuf::from).collect(),
            DEFAULT_PLUGIN_TIMEOUT,
        )
    }
}

impl PluginExec {
    /// Plugins are searched in `bin_dirs` in order; each invocation may take `timeout`.
    pub fn new(bin_dirs: Vec<PathBuf>, timeout: Duration) -> PluginExec {
        PluginExec { bin_dirs, timeout }
    }

    /// `CNI_PATH`: the plugin directories joined by ':'.
    pub fn cni_path(&self) -> String {
        self.bin_dirs
            .iter()
            .map(|d| d.to_string_lossy())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// The binary of plugin type `plugin_type`: the first executable file of that name.
    pub fn find(&self, plugin_type: &str) -> Result<PathBuf> {
        if plugin_type.is_empty() || plugin_type.contains('/') {
            return Err(invalid("plugin type", plugin_type, "not a file name"));
        }
        self.bin_dirs
            .iter()
            .map(|dir| dir.join(plugin_type))
            .find(|path| is_executable(path))
            .ok_or_else(|| CniError::PluginNotFound {
                plugin: plugin_type.to_string(),
                dirs: self.cni_path(),
            })
    }

    /// The environment of an invocation: `PATH` and the `CNI_*` variables.
    pub fn env(&self, command: Command, rt: Option<&RuntimeConf>) -> Vec<(String, String)> {
        let path = std::env::var("PATH").unwrap_or_else(|_| FALLBACK_PATH.to_string());
        let mut env = vec![
            ("PATH".to_string(), path),
            ("CNI_COMMAND".to_string(), command.as_str().to_string()),
            ("CNI_PATH".to_string(), self.cni_path()),
        ];
        if let (true, Some(rt)) = (command.has_attachment(), rt) {
            env.push(("CNI_CONTAINERID".into(), rt.container_id.clone()));
            env.push(("CNI_NETNS".into(), rt.netns.clone()));
            env.push(("CNI_IFNAME".into(), rt.ifname.clone()));
            env.push(("CNI_ARGS".into(), rt.cni_args()));
        }
        env
    }

    /// Runs one plugin and returns its stdout; a non-zero exit becomes an error carrying
    /// the plugin's CNI error object (code, msg, details) or its exit status and stderr.
    pub fn invoke(
        &self,
        plugin_type: &str,
        command: Command,
        rt: Option<&RuntimeConf>,
        stdin: &[u8],
    ) -> Result<Vec<u8>> {
        let path = self.find(plugin_type)?;
        let env = self.env(command, rt);
        let started = Instant::now();
        let finished =
            run_with_timeout(&path, &env, stdin, self.timeout).map_err(|err| match err {
                RunError::Spawn(source) => CniError::PluginSpawn {
                    plugin: plugin_type.to_string(),
                    command: command.as_str(),
                    path: path.clone(),
                    source,
                },
                RunError::Timeout => CniError::PluginTimeout {
                    plugin: plugin_type.to_string(),
                    command: command.as_str(),
                    timeout: self.timeout,
                },
            })?;
        let container = rt.map(|rt| rt.container_id.as_str()).unwrap_or("");
        tracing::debug!(
            plugin = plugin_type,
            command = command.as_str(),
            container,
            elapsed_ms = started.elapsed().as_millis() as u64,
            status = %finished.status,
            stderr = %String::from_utf8_lossy(tail(&finished.stderr, STDERR_TAIL)),
            "cni plugin ran"
        );
        if finished.status.success() {
            return Ok(finished.stdout);
        }
        Err(plugin_failure(plugin_type, command, &finished))
    }

    /// Asks a plugin which spec versions it supports.
    pub fn version_info(&self, plugin_type: &str) -> Result<VersionInfo> {
        let stdin = serde_json::json!({ "cniVersion": SpecVersion::V1_0_0.to_string() });
        let stdout = self.invoke(
            plugin_type,
            Command::Version,
            None,
            stdin.to_string().as_bytes(),
        )?;
        serde_json::from_slice(&stdout).map_err(|err| CniError::PluginOutput {
            plugin: plugin_type.to_string(),
            command: Command::Version.as_str(),
            reason: err.to_string(),
        })
    }

    /// Runs ADD through the list, each plugin getting the previous one's result as
    /// `prevResult`, and returns the last result.
    ///
    /// When a plugin fails, DEL is run for the whole list (in reverse, with the last
    /// good result as `prevResult`) to undo what the earlier plugins did, and the ADD
    /// error is returned.
    pub fn add_list(&self, list: &ConfList, rt: &RuntimeConf) -> Result<CniResult> {
        rt.validate()?;
        let mut prev: Option<Value> = None;
        for plugin in &list.plugins {
            match self.add_one(list, plugin, rt, prev.as_ref()) {
                Ok(result) => prev = Some(result),
                Err(err) => {
                    tracing::warn!(network = %list.name, container = %rt.container_id, "cni add failed, undoing: {err}");
                    if let Err(undo) = self.del_list(list, rt, prev.as_ref()) {
                        tracing::warn!(network = %list.name, container = %rt.container_id, "cni undo of failed add: {undo}");
                    }
                    return Err(err);
                }
            }
        }
        let last = prev.ok_or_else(|| CniError::Internal("config list without plugins".into()))?;
        CniResult::from_value(last, &list.cni_version)
    }

    fn add_one(
        &self,
        list: &ConfList,
        plugin: &PluginConf,
        rt: &RuntimeConf,
        prev: Option<&Value>,
    ) -> Result<Value> {
        let stdin = plugin_stdin(list, plugin, prev, Some(&rt.capability_args));
        let stdout = self.invoke(
            &plugin.plugin_type,
            Command::Add,
            Some(rt),
            &to_bytes(&stdin),
        )?;
        let bad_output = |reason: String| CniError::PluginOutput {
            plugin: plugin.plugin_type.clone(),
            command: Command::Add.as_str(),
            reason,
        };
        if stdout.iter().all(u8::is_ascii_whitespace) {
            // A chained plugin that prints nothing passes the previous result on.
            return prev.cloned().ok_or_else(|| bad_output("no result".into()));
        }
        let result = CniResult::parse(&stdout, &list.cni_version)
            .map_err(|err| bad_output(err.to_string()))?;
        Ok(result.raw().clone())
    }

    /// Runs DEL through the list in reverse. `prev_result` (the cached ADD result) is
    /// passed for spec 0.4.0 and later, as libcni does.
    ///
    /// Every plugin gets its DEL even when an earlier one failed (DEL must be
    /// idempotent, and a failure in one plugin should not leak another's resources);
    /// the failures are returned together.
    pub fn del_list(
        &self,
        list: &ConfList,
        rt: &RuntimeConf,
        prev_result: Option<&Value>,
    ) -> Result<()> {
        rt.validate()?;
        let prev = if list.spec_version >= SpecVersion::V0_4_0 {
            prev_result
        } else {
            None
        };
        let mut errors = Vec::new();
        for plugin in list.plugins.iter().rev() {
            let stdin = plugin_stdin(list, plugin, prev, Some(&rt.capability_args));
            if let Err(err) = self.invoke(
                &plugin.plugin_type,
                Command::Del,
                Some(rt),
                &to_bytes(&stdin),
            ) {
                errors.push(err);
            }
        }
        collect(errors)
    }

    /// Runs CHECK through the list with the cached result; a no-op before spec 0.4.0
    /// or with `disableCheck`.
    pub fn check_list(&self, list: &ConfList, rt: &RuntimeConf, prev_result: &Value) -> Result<()> {
        if list.spec_version < SpecVersion::V0_4_0 || list.disable_check {
            return Ok(());
        }
        rt.validate()?;
        for plugin in &list.plugins {
            let stdin = plugin_stdin(list, plugin, Some(prev_result), Some(&rt.capability_args));
            self.invoke(
                &plugin.plugin_type,
                Command::Check,
                Some(rt),
                &to_bytes(&stdin),
            )?;
        }
        Ok(())
    }

    /// Runs STATUS through the list, stopping at the first plugin that is not ready;
    /// a no-op before spec 1.1.0.
    pub fn status_list(&self, list: &ConfList) -> Result<()> {
        if list.spec_version < SpecVersion::V1_1_0 {
            return Ok(());
        }
        for plugin in &list.plugins {
            let stdin = plugin_stdin(list, plugin, None, None);
            self.invoke(
                &plugin.plugin_type,
                Command::Status,
                None,
                &to_bytes(&stdin),
            )?;
        }
        Ok(())
    }

    /// Runs GC through the list with the attachments still in use; a no-op before spec
    /// 1.1.0 or with `disableGC`. Every plugin is called; failures are returned together.
    pub fn gc_list(&self, list: &ConfList, valid: &[GcAttachment]) -> Result<()> {
        if list.spec_version < SpecVersion::V1_1_0 || list.disable_gc {
            return Ok(());
        }
        let valid =
            serde_json::to_value(valid).map_err(|err| CniError::Internal(err.to_string()))?;
        let mut errors = Vec::new();
        for plugin in &list.plugins {
            let mut stdin = plugin_stdin(list, plugin, None, None);
            stdin.insert("cni.dev/valid-attachments".into(), valid.clone());
            if let Err(err) = self.invoke(&plugin.plugin_type, Command::Gc, None, &to_bytes(&stdin))
            {
                errors.push(err);
            }
        }
        collect(errors)
    }
}

/// The config a plugin gets on stdin: its own JSON with the list's `name` and
/// `cniVersion`, the `prevResult` if any, and `runtimeConfig` holding only the
/// capability args the plugin declares (set only when there is at least one).
pub fn plugin_stdin(
    list: &ConfList,
    plugin: &PluginConf,
    prev_result: Option<&Value>,
    capability_args: Option<&Map<String, Value>>,
) -> Map<String, Value> {
    let mut conf = plugin.raw().clone();
    conf.insert("name".into(), Value::String(list.name.clone()));
    conf.insert("cniVersion".into(), Value::String(list.cni_version.clone()));
    if let Some(prev) = prev_result {
        // Chained and cached results are passed in the list's version.
        let prev = match CniResult::from_value(prev.clone(), &list.cni_version) {
            Ok(parsed) => parsed
                .to_version(&list.cni_version)
                .unwrap_or_else(|_| prev.clone()),
            Err(_) => prev.clone(),
        };
        conf.insert("prevResult".into(), prev);
    }
    if let Some(args) = capability_args {
        let runtime_config: Map<String, Value> = plugin
            .capabilities()
            .into_iter()
            .filter_map(|cap| args.get(cap).map(|v| (cap.to_string(), v.clone())))
            .collect();
        if !runtime_config.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(runtime_config));
        }
    }
    conf
}

fn to_bytes(conf: &Map<String, Value>) -> Vec<u8> {
    // Serializing a map of JSON values cannot fail.
    serde_json::to_vec(conf).unwrap_or_default()
}

fn collect(mut errors: Vec<CniError>) -> Result<()> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => Err(CniError::Multiple(errors)),
    }
}

/// Checks an id as libcni does (container ids, network names): an alphanumeric first
/// character, then alphanumerics, `_`, `.` and `-`.
pub fn validate_id(what: &'static str, id: &str) -> Result<()> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Err(invalid(
            what,
            id,
            "must be an alphanumeric character followed by alphanumerics, '_', '.' or '-'",
        ));
    }
    Ok(())
}

/// Checks an interface name as libcni does: 1 to 15 bytes, no '/', ':' or whitespace,
/// not `.` or `..`.
pub fn validate_ifname(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() > 15 {
        Some("longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("not a name")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        Some("contains '/', ':' or whitespace")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(invalid("interface name", name, reason)),
        None => Ok(()),
    }
}

fn invalid(what: &'static str, value: &str, reason: &'static str) -> CniError {
    CniError::InvalidArgument {
        what,
        value: value.to_string(),
        reason,
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn plugin_failure(plugin: &str, command: Command, finished: &Finished) -> CniError {
    if let Ok(err) = serde_json::from_slice::<PluginErrorJson>(&finished.stdout) {
        return CniError::Plugin {
            plugin: plugin.to_string(),
            command: command.as_str(),
            code: err.code,
            msg: err.msg,
            details: err.details,
        };
    }
    // No error object: old plugins print their error on stderr, some on stdout.
    let evidence = if finished.stderr.iter().all(u8::is_ascii_whitespace) {
        &finished.stdout
    } else {
        &finished.stderr
    };
    CniError::PluginFailed {
        plugin: plugin.to_string(),
        command: command.as_str(),
        status: describe_status(finished.status),
        stderr: String::from_utf8_lossy(tail(evidence, STDERR_TAIL))
            .trim()
            .to_string(),
    }
}

fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    }
}

fn tail(bytes: &[u8], max: usize) -> &[u8] {
    &bytes[bytes.len().saturating_sub(max)..]
}

/// A finished plugin process.
struct Finished {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

enum RunError {
    Spawn(std::io::Error),
    Timeout,
}

/// Which pipe a reader thread read.
enum Pipe {
    Stdout,
    Stderr,
}

/// Runs `path` with exactly `env`, feeds `stdin`, collects stdout and stderr, and
/// kills the process group if it has not finished (exited and closed its pipes)
/// within `timeout`.
fn run_with_timeout(
    path: &Path,
    env: &[(String, String)],
    stdin: &[u8],
    timeout: Duration,
) -> std::result::Result<Finished, RunError> {
    let deadline = Instant::now() + timeout;
    let mut command = std::process::Command::new(path);
    command
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills whatever it started too.
        .process_group(0);
    // A plugin must not outlive crustd: after a crash, recovery's DEL would race an
    // ADD still running and lose to it (iptables rules, addresses nobody owns). The
    // death signal follows the thread that forks, which waits for the plugin below.
    // SAFETY: the closure runs in the child between fork and exec and calls only
    // prctl and getppid, which are async-signal-safe.
    let crustd = std::process::id() as i32;
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before the death signal was armed.
            if libc::getppid() != crustd {
                return Err(std::io::Error::other("crustd exited"));
            }
            Ok(())
        });
    }
    let mut child = spawn(&mut command).map_err(RunError::Spawn)?;

    // Written from a thread: a plugin may print before it reads, and one that never
    // reads stdin (or exits first) makes the write fail with EPIPE, which is fine.
    if let Some(mut pipe) = child.stdin.take() {
        let data = stdin.to_vec();
        std::thread::spawn(move || {
            if let Err(err) = pipe.write_all(&data)
                && err.kind() != std::io::ErrorKind::BrokenPipe
            {
                tracing::debug!("cni plugin stdin: {err}");
            }
        });
    }
    let (tx, rx) = mpsc::channel();
    if let Some(pipe) = child.stdout.take() {
        spawn_reader(pipe, Pipe::Stdout, tx.clone());
    }
    if let Some(pipe) = child.stderr.take() {
        spawn_reader(pipe, Pipe::Stderr, tx);
    }

    let mut stdout = None;
    let mut stderr = None;
    let mut status = None;
    let mut pause = Duration::from_millis(1);
    loop {
        if status.is_none() {
            match child.try_wait() {
                Ok(Some(exit)) => status = Some(exit),
                Ok(None) => {}
                Err(err) => {
                    kill(&mut child);
                    return Err(RunError::Spawn(err));
                }
            }
        }
        if let (Some(status), Some(_), Some(_)) = (status, &stdout, &stderr) {
            return Ok(Finished {
                status,
                stdout: stdout.unwrap_or_default(),
                stderr: stderr.unwrap_or_default(),
            });
        }
        let now = Instant::now();
        if now >= deadline {
            kill(&mut child);
            return Err(RunError::Timeout);
        }
        let wait = pause.min(deadline - now);
        if stdout.is_none() || stderr.is_none() {
            // Readers finish when the plugin exits: wake on their news, or poll.
            match rx.recv_timeout(wait) {
                Ok((Pipe::Stdout, bytes)) => stdout = Some(bytes),
                Ok((Pipe::Stderr, bytes)) => stderr = Some(bytes),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    stdout.get_or_insert_with(Vec::new);
                    stderr.get_or_insert_with(Vec::new);
                }
            }
        } else if !wait_for_exit(&child, deadline - now) {
            // No pidfd (an old kernel): poll, but briefly, since the output is done
            // and the exit is near.
            std::thread::sleep(Duration::from_millis(1));
        }
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Blocks until `child` exits or `limit` passes, through a pidfd: a plugin's exit is
/// what every pod start waits on, so it must be seen at once, not at the next poll.
/// False when no pidfd could be had.
fn wait_for_exit(child: &std::process::Child, limit: Duration) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(fd) = crust_util::process::pidfd_open(child.id() as libc::pid_t) else {
        return false;
    };
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = limit.as_millis().clamp(1, i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd for the duration of the call. A pidfd turns readable
    // when the process exits; EINTR or a timeout just returns to the caller's loop.
    unsafe { libc::poll(&mut pfd, 1, ms) };
    true
}

fn spawn_reader<R: Read + Send + 'static>(
    mut pipe: R,
    which: Pipe,
    tx: mpsc::Sender<(Pipe, Vec<u8>)>,
) {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        // A read error ends the output; what was read is kept.
        let _ = pipe.read_to_end(&mut bytes);
        let _ = tx.send((which, bytes));
    });
}

/// Spawns, retrying briefly on ETXTBSY: a plugin binary or script just written by
/// another thread can still be open for writing in a child forked meanwhile.
fn spawn(command: &mut std::process::Command) -> std::io::Result<Child> {
    crust_util::process::spawn_retrying_etxtbsy(|| command.spawn())
}

fn kill(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // The child leads its own process group (process_group(0) above).
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::os::unix::fs::PermissionsExt;

    fn list(text: &str) -> ConfList {
        ConfList::from_conflist_bytes(text.as_bytes(), Path::new("test.conflist")).unwrap()
    }

    fn rt() -> RuntimeConf {
        RuntimeConf {
            container_id: "c1".into(),
            netns: "/run/netns/c1".into(),
            ifname: "eth0".into(),
            args: vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("K8S_POD_NAMESPACE".into(), "ns".into()),
            ],
            capability_args: json!({
                "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
                "bandwidth": {"ingressRate": 1000}
            })
            .as_object()
            .unwrap()
            .clone(),
        }
    }

    /// Writes an executable shell script plugin into `dir`.
    fn script(dir: &Path, name: &str, body: &str) {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn stdin_injects_name_version_prev_result_and_declared_capabilities_only() {
        let l = list(
            r#"{"cniVersion":"1.0.0","name":"net","plugins":[
                {"type":"bridge","name":"ignored","cniVersion":"0.1.0"},
                {"type":"portmap","capabilities":{"portMappings":true,"dns":true,"bandwidth":false}}]}"#,
        );
        let r = rt();
        let first = plugin_stdin(&l, &l.plugins[0], None, Some(&r.capability_args));
        assert_eq!(first["name"], "net");
        assert_eq!(first["cniVersion"], "1.0.0");
        assert!(!first.contains_key("runtimeConfig"));
        assert!(!first.contains_key("prevResult"));

        let prev = json!({"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/24"}]});
        let second = plugin_stdin(&l, &l.plugins[1], Some(&prev), Some(&r.capability_args));
        assert_eq!(second["prevResult"], prev);
        assert_eq!(
            second["runtimeConfig"],
            json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]})
        );
        assert_eq!(second["capabilities"]["portMappings"], true);
    }

    #[test]
    fn prev_result_is_converted_to_the_list_version() {
        let l = list(r#"{"cniVersion":"0.4.0","name":"net","plugins":[{"type":"x"}]}"#);
        let prev = json!({"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/24"}]});
        let conf = plugin_stdin(&l, &l.plugins[0], Some(&prev), None);
        assert_eq!(conf["prevResult"]["cniVersion"], "0.4.0");
        assert_eq!(conf["prevResult"]["ips"][0]["version"], "4");
    }

    #[test]
    fn env_is_cleared_to_path_and_cni_variables() {
        let exec = PluginExec::new(vec!["/a".into(), "/b".into()], DEFAULT_PLUGIN_TIMEOUT);
        let env = exec.env(Command::Add, Some(&rt()));
        let get = |k: &str| {
            env.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("CNI_COMMAND"), Some("ADD"));
        assert_eq!(get("CNI_CONTAINERID"), Some("c1"));
        assert_eq!(get("CNI_NETNS"), Some("/run/netns/c1"));
        assert_eq!(get("CNI_IFNAME"), Some("eth0"));
        assert_eq!(
            get("CNI_ARGS"),
            Some("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns")
        );
        assert_eq!(get("CNI_PATH"), Some("/a:/b"));
        assert!(get("PATH").is_some());
        assert_eq!(env.len(), 7);

        let env = exec.env(Command::Status, Some(&rt()));
        assert_eq!(env.len(), 3, "{env:?}");
    }

    #[test]
    fn ids_and_args_are_validated() {
        let mut r = rt();
        r.validate().unwrap();
        r.args.push(("K8S_POD_NAME".into(), "a;b".into()));
        assert!(r.validate().is_err());
        for bad in ["", "-x", "a/b", "a b"] {
            assert!(validate_id("container id", bad).is_err(), "{bad:?}");
        }
        for bad in ["", ".", "a/b", "a:b", "a b", "sixteen-chars-xx"] {
            assert!(validate_ifname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_environment_and_stdin_reach_the_plugin() {
        let bin = tempfile::tempdir().unwrap();
        let out = bin.path().join("seen");
        script(
            bin.path(),
            "echo",
            &format!(
                "env | sort > {out}.env\ncat > {out}.stdin\necho '{{\"cniVersion\":\"1.0.0\",\"ips\":[{{\"address\":\"10.9.0.2/24\"}}]}}'",
                out = out.display()
            ),
        );
        let exec = PluginExec::new(vec![bin.path().into()], Duration::from_secs(10));
        let l = list(
            r#"{"cniVersion":"1.0.0","name":"net","plugins":[{"type":"echo","capabilities":{"bandwidth":true}}]}"#,
        );
        let result = exec.add_list(&l, &rt()).unwrap();
        assert_eq!(result.primary_ip(), Some("10.9.0.2".parse().unwrap()));
        let env = std::fs::read_to_string(format!("{}.env", out.display())).unwrap();
        assert!(env.contains("CNI_COMMAND=ADD\n"), "{env}");
        assert!(
            env.contains("CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=ns\n"),
            "{env}"
        );
        assert!(!env.contains("HOME="), "{env}");
        let stdin: Value =
            serde_json::from_slice(&std::fs::read(format!("{}.stdin", out.display())).unwrap())
                .unwrap();
        assert_eq!(
            stdin["runtimeConfig"],
            json!({"bandwidth": {"ingressRate": 1000}})
        );
    }

    #[test]
    fn a_plugin_error_object_is_reported_with_code_msg_and_details() {
        let bin = tempfile::tempdir().unwrap();
        script(
            bin.path(),
            "fail",
            r#"echo '{"cniVersion":"1.0.0","code":7,"msg":"invalid config","details":"no bridge"}'; exit 1"#,
        );
        let exec = PluginExec::new(vec![bin.path().into()], Duration::from_secs(10));
        let err = exec
            .invoke("fail", Command::Add, Some(&rt()), b"{}")
            .unwrap_err();
        assert_eq!(err.plugin_code(), Some(7));
        assert_eq!(
            err.to_string(),
            "cni plugin fail ADD: error code 7: invalid config (no bridge)"
        );
        assert_eq!(err.kind(), crate::ErrorKind::Internal);

        script(
            bin.path(),
            "busy",
            r#"echo '{"code":11,"msg":"try again later"}'; exit 1"#,
        );
        let err = exec
            .invoke("busy", Command::Add, Some(&rt()), b"{}")
            .unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Unavailable);
    }

    #[test]
    fn a_failure_without_error_object_carries_status_and_stderr() {
        let bin = tempfile::tempdir().unwrap();
        script(bin.path(), "crash", "echo 'panic: boom' >&2; exit 2");
        let exec = PluginExec::new(vec![bin.path().into()], Duration::from_secs(10));
        let err = exec
            .invoke("crash", Command::Del, Some(&rt()), b"{}")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "cni plugin crash DEL: exit status 2: stderr: panic: boom"
        );
    }

    #[test]
    fn a_plugin_that_does_not_read_stdin_is_fine() {
        let bin = tempfile::tempdir().unwrap();
        script(bin.path(), "deaf", "exec 0<&-\necho '{}'");
        let exec = PluginExec::new(vec![bin.path().into()], Duration::from_secs(10));
        let big = vec![b' '; 1 << 20];
        exec.invoke("deaf", Command::Del, Some(&rt()), &big)
            .unwrap();
    }

    #[test]
    fn a_slow_plugin_is_killed_at_the_timeout() {
        let bin = tempfile::tempdir().unwrap();
        script(bin.path(), "slow", "sleep 30");
        let exec = PluginExec::new(vec![bin.path().into()], Duration::from_millis(300));
        let started = Instant::now();
        let err = exec
            .invoke("slow", Command::Add, Some(&rt()), b"{}")
            .unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::DeadlineExceeded);
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_missing_plugin_is_a_failed_precondition() {
        let bin = tempfile::tempdir().unwrap();
        std::fs::write(bin.path().join("noexec"), "").unwrap();
        let exec = PluginExec::new(vec![bin.path().into()], DEFAULT_PLUGIN_TIMEOUT);
        for name in ["absent", "noexec"] {
            let err = exec.find(name).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::FailedPrecondition);
        }
    }

    #[test]
    fn a_failed_add_runs_del_for_the_list_in_reverse() {
        let bin = tempfile::tempdir().unwrap();
        let log = bin.path().join("log");
        let log = log.display();
        script(
            bin.path(),
            "good",
            &format!(
                "echo \"good $CNI_COMMAND\" >> {log}\ncat >/dev/null\necho '{{\"cniVersion\":\"1.0.0\",\"ips\":[{{\"address\":\"10.9.0.2/24\"}}]}}'"
            ),
        );
        script(
            bin.path(),
            "bad",
            &format!(
                "echo \"bad $CNI_COMMAND\" >> {log}\ncat > {log}.bad.$CNI_COMMAND\n[ \"$CNI_COMMAND\" = DEL ] && exit 0\necho '{{\"code\":100,\"msg\":\"nope\"}}'; exit 1"
            ),
        );
        let exec = PluginExec::new(vec![bin.path().into()], Duration::from_secs(10));
        let l = list(
            r#"{"cniVersion":"1.0.0","name":"net","plugins":[{"type":"good"},{"type":"bad"}]}"#,
        );
        let err = exec.add_list(&l, &rt()).unwrap_err();
        assert_eq!(err.plugin_code(), Some(100));
        let calls = std::fs::read_to_string(log.to_string()).unwrap();
        assert_eq!(calls, "good ADD\nbad ADD\nbad DEL\ngood DEL\n");
        // The undo passes the last good result on.
        let del: Value =
            serde_json::from_slice(&std::fs::read(format!("{log}.bad.DEL")).unwrap()).unwrap();
        assert_eq!(del["prevResult"]["ips"][0]["address"], "10.9.0.2/24");
    }

    #[test]
    fn check_status_and_gc_are_skipped_for_older_versions() {
        let bin = tempfile::tempdir().unwrap();
        script(bin.path(), "fail", "exit 1");
        let exec = PluginExec::new(vec![bin.path().into()], Duration::from_secs(10));
        let old = list(r#"{"cniVersion":"0.3.1","name":"net","plugins":[{"type":"fail"}]}"#);
        exec.check_list(&old, &rt(), &json!({})).unwrap();
        exec.status_list(&old).unwrap();
        exec.gc_list(&old, &[]).unwrap();
        let new = list(r#"{"cniVersion":"1.1.0","name":"net","plugins":[{"type":"fail"}]}"#);
        assert!(exec.check_list(&new, &rt(), &json!({})).is_err());
        assert!(exec.status_list(&new).is_err());
        assert!(exec.gc_list(&new, &[]).is_err());
    }

    #[test]
    fn gc_gets_the_valid_attachments() {
        let bin = tempfile::tempdir().unwrap();
        let seen = bin.path().join("stdin");
        script(bin.path(), "gc", &format!("cat > {}", seen.display()));
        let exec = PluginExec::new(vec![bin.path().into()], Duration::from_secs(10));
        let l = list(r#"{"cniVersion":"1.1.0","name":"net","plugins":[{"type":"gc"}]}"#);
        let valid = [GcAttachment {
            container_id: "c1".into(),
            ifname: "eth0".into(),
        }];
        exec.gc_list(&l, &valid).unwrap();
        let stdin: Value = serde_json::from_slice(&std::fs::read(&seen).unwrap()).unwrap();
        assert_eq!(
            stdin["cni.dev/valid-attachments"],
            json!([{"containerID": "c1", "ifname": "eth0"}])
        );
    }

    #[test]
    fn version_info_is_parsed() {
        let exec = PluginExec::new(vec!["/usr/lib/cni".into()], Duration::from_secs(10));
        let info = exec.version_info("loopback").unwrap();
        assert!(info.supports("1.0.0"), "{info:?}");
        assert!(info.supports("0.4.0"), "{info:?}");
    }
}
