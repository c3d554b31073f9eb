//! ExecSync and UpdateContainerResources through the OCI runtime's `exec` and `update`.

use std::process::Stdio;
use std::time::Duration;

use crust_proto::cri;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use super::{ContainerError, ContainerRecord, Result};
use crate::lowlevel::LowLevelRuntime;

/// Output kept per stream, as kubelet caps ExecSync output (16 MiB).
pub const MAX_OUTPUT: usize = 16 * 1024 * 1024;

/// What an ExecSync produced.
#[derive(Debug, Clone, Default)]
pub struct ExecOutput {
    /// Standard output (at most [`MAX_OUTPUT`]).
    pub stdout: Vec<u8>,
    /// Standard error (at most [`MAX_OUTPUT`]).
    pub stderr: Vec<u8>,
    /// The command's exit code.
    pub exit_code: i32,
}

fn io_err(id: &str, step: &'static str) -> impl FnOnce(std::io::Error) -> ContainerError {
    let id = id.to_string();
    move |source| ContainerError::Io { id, step, source }
}

/// Reads a stream to its end, keeping at most `MAX_OUTPUT` bytes.
async fn read_capped(mut r: impl AsyncRead + Unpin) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = MAX_OUTPUT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

pub(super) fn base_command(runtime: &dyn LowLevelRuntime, r: &ContainerRecord) -> Command {
    let mut cmd = Command::from(runtime.cli().command(&r.bundle.join("log.json")));
    cmd.kill_on_drop(true);
    cmd
}

/// Runs `cmd` in the container with its env, user and working directory.
pub async fn exec_sync(
    runtime: &dyn LowLevelRuntime,
    r: &ContainerRecord,
    cmd: Vec<String>,
    timeout: Option<Duration>,
) -> Result<ExecOutput> {
    let id = r.id.as_str();
    let spec = oci_spec::runtime::Spec::load(r.bundle.join("config.json"))
        .map_err(|e| ContainerError::Invalid(format!("container {id}: read its spec: {e}")))?;
    let process = crate::spec::container::exec_process(&spec, cmd, false);
    let tag = hex::encode(rand::random::<[u8; 8]>());
    let process_file = r.bundle.join(format!("exec-{tag}.json"));
    let pid_file = r.bundle.join(format!("exec-{tag}.pid"));
    let json = serde_json::to_vec(&process).map_err(|e| ContainerError::Invalid(e.to_string()))?;
    crate::fsmode::write_private(&process_file, &json).map_err(io_err(id, "write exec process"))?;
    let cleanup = || {
        let _ = std::fs::remove_file(&process_file);
        let _ = std::fs::remove_file(&pid_file);
    };
    let mut command = base_command(runtime, r);
    command
        .arg("exec")
        .arg("--process")
        .arg(&process_file)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(id)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            cleanup();
            return Err(io_err(id, "exec")(e));
        }
    };
    let stdout = child.stdout.take().map(|s| tokio::spawn(read_capped(s)));
    let stderr = child.stderr.take().map(|s| tokio::spawn(read_capped(s)));
    let waited = match timeout {
        Some(t) => tokio::time::timeout(t, child.wait()).await.ok(),
        None => Some(child.wait().await),
    };
    let Some(status) = waited else {
        kill_timed_out(&mut child, &pid_file).await;
        cleanup();
        return Err(ContainerError::Timeout {
            id: id.to_string(),
            message: format!(
                "exec timed out after {}s",
                timeout.unwrap_or_default().as_secs()
            ),
        });
    };
    let status = status.map_err(io_err(id, "exec"))?;
    let out = ExecOutput {
        stdout: match stdout {
            Some(h) => h.await.unwrap_or_default(),
            None => Vec::new(),
        },
        stderr: match stderr {
            Some(h) => h.await.unwrap_or_default(),
            None => Vec::new(),
        },
        exit_code: status.code().unwrap_or_else(|| {
            128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
        }),
    };
    cleanup();
    Ok(out)
}

/// How long a timed-out exec's runtime process gets to reap the killed command before
/// it is killed too.
const REAP_GRACE: Duration = Duration::from_secs(5);

/// Ends an exec past its timeout: SIGKILL to the command (the pid runc wrote) and its
/// process group, then a wait for `runc exec` itself to return.
///
/// The wait is what leaves nothing behind: `runc exec` is the command's parent and
/// reaps it. Killing runc at once (as crust once did) orphaned the killed command
/// before runc could reap it, and its new parent never did, so a zombie `sleep`
/// stayed in the container for `pgrep` (critest) to find.
/// runc is killed only if it has not returned within [`REAP_GRACE`], or when the
/// command's pid is not known yet (then killing runc's group is all there is to do).
async fn kill_timed_out(child: &mut tokio::process::Child, pid_file: &std::path::Path) {
    let pid = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    let command = pid.and_then(|pid| ExecCommand::open(pid, child.id()?));
    if let Some(command) = command {
        command.kill();
        if tokio::time::timeout(REAP_GRACE, child.wait()).await.is_ok() {
            return;
        }
    }
    if let Some(group) = child.id() {
        // SAFETY: kill(2) on the process group we created for this runc call; runc is
        // not reaped yet, so the group id cannot have been reused.
        unsafe { libc::kill(-(group as i32), libc::SIGKILL) };
    }
    let _ = child.kill().await;
}

/// The command `runc exec` started, held by a pidfd.
struct ExecCommand {
    pid: i32,
    pidfd: std::os::fd::OwnedFd,
}

impl ExecCommand {
    /// Opens a pidfd on `pid` and keeps it only if that process is still the child of
    /// `runc` (our unreaped child, whose pid cannot have been reused): then the pidfd
    /// names the exec'd command, not whatever took its pid after it ended.
    fn open(pid: i32, runc: u32) -> Option<ExecCommand> {
        let pidfd = crust_util::process::pidfd_open(pid).ok()?;
        (parent_of(pid)? == runc as i32).then_some(ExecCommand { pid, pidfd })
    }

    /// SIGKILL to the command's process group (runc makes the command its leader, so
    /// the group holds what it started; the id stays the group's while the leader the
    /// pidfd pins is unreaped) and, through the pidfd, to the command itself.
    fn kill(&self) {
        // SAFETY: kill(2) on the group the live (or unreaped) command leads; no memory
        // effects.
        unsafe { libc::kill(-self.pid, libc::SIGKILL) };
        let _ = rustix::process::pidfd_send_signal(&self.pidfd, rustix::process::Signal::KILL);
    }
}

/// The parent pid of `pid` (field 4 of /proc/PID/stat).
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    stat[stat.rfind(')')? + 2..].split(' ').nth(1)?.parse().ok()
}

/// Applies resources with the runtime's `update --resources`.
pub async fn update(
    runtime: &dyn LowLevelRuntime,
    r: &ContainerRecord,
    resources: &cri::LinuxContainerResources,
) -> Result<()> {
    let id = r.id.as_str();
    let linux = crate::spec::container::linux_resources(resources);
    let file = r.bundle.join(format!(
        "update-{}.json",
        hex::encode(rand::random::<[u8; 8]>())
    ));
    let json = serde_json::to_vec(&linux).map_err(|e| ContainerError::Invalid(e.to_string()))?;
    crate::fsmode::write_private(&file, &json).map_err(io_err(id, "write resources"))?;
    let mut command = base_command(runtime, r);
    command
        .arg("update")
        .arg("--resources")
        .arg(&file)
        .arg(id)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let output = tokio::time::timeout(runtime.timeout(), command.output()).await;
    let _ = std::fs::remove_file(&file);
    let output = output
        .map_err(|_| ContainerError::Timeout {
            id: id.to_string(),
            message: "runtime update timed out".into(),
        })?
        .map_err(io_err(id, "update"))?;
    if !output.status.success() {
        let log = std::fs::read(r.bundle.join("log.json")).unwrap_or_default();
        let detail = crate::oci::last_log_error(&log)
            .unwrap_or_else(|| String::from_utf8_lossy(&output.stderr).trim().to_string());
        return Err(ContainerError::Invalid(format!(
            "container {id}: update resources: {detail}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_timed_out_command_is_killed_through_its_pidfd_only_while_it_is_runcs() {
        // A stand-in for `runc exec`: a shell whose child is the "command".
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let mut runc = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("sleep 60 & echo $! > {}; wait", pid_file.display()))
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::fs::read_to_string(&pid_file).map_or(true, |s| !s.ends_with('\n')) {
            assert!(std::time::Instant::now() < deadline, "no pid file");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let sleep: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(parent_of(sleep), Some(runc.id().unwrap() as i32));
        // A pid that is not the child of the given "runc" is left alone.
        assert!(ExecCommand::open(sleep, std::process::id()).is_none());
        assert!(ExecCommand::open(i32::MAX, runc.id().unwrap()).is_none());
        let started = std::time::Instant::now();
        kill_timed_out(&mut runc, &pid_file).await;
        // The shell reaped its killed child and returned by itself, long before the
        // grace period would have had it killed.
        assert!(started.elapsed() < REAP_GRACE, "{:?}", started.elapsed());
        assert!(crate::liveness::start_time(sleep).is_none());
    }
}
