//! The OCI runtime driver, the sandbox spec and crust-pause, together with the real
//! runc: create, start, state, kill and delete of a pause container whose rootfs holds
//! nothing but the pause binary.
//!
//! Each test uses its own temporary directory, runc root and container id; a guard
//! force-deletes the container even when an assertion fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crust_runtime::spec::{NamespaceMode, PidMode, SandboxSpec};
use crust_runtime::{CreateOptions, ErrorKind, OciRuntime, install_pause_rootfs};

const RUNC: &str = "/usr/sbin/runc";
const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;

/// A pause container's bundle and runtime; dropping it deletes the container.
struct Sandbox {
    runtime: OciRuntime,
    id: String,
    bundle: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Synchronous on purpose: Drop cannot await, and this must run even when the
        // test panicked. An absent container makes runc fail, which is fine.
        let _ = Command::new(RUNC)
            .arg("--root")
            .arg(self.runtime.root())
            .args(["delete", "--force", &self.id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn unique_id(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("crust-test-{tag}-{}-{nanos}", std::process::id())
}

/// Writes the pause rootfs and a bundle for a sandbox adjusted by `edit`.
fn sandbox(tag: &str, edit: impl FnOnce(&mut SandboxSpec)) -> Sandbox {
    let dir = tempfile::tempdir().unwrap();
    let rootfs = install_pause_rootfs(&dir.path().join("pause")).unwrap();
    let id = unique_id(tag);
    let bundles = dir.path().join("bundles");
    let bundle = bundles.join(&id);
    let mut spec = SandboxSpec::new(&id, rootfs);
    spec.hostname = "crust-test".into();
    // One level under the root, so that runc's delete removes all of it.
    spec.cgroups_path = format!("/{id}");
    edit(&mut spec);
    spec.write(&bundle).unwrap();
    let runtime =
        OciRuntime::new(RUNC.into(), dir.path().join("runc-root")).with_bundle_dir(bundles);
    Sandbox {
        runtime,
        id,
        bundle,
        _dir: dir,
    }
}

fn ns(pid: &str, kind: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap()
}

fn status_field(pid: i32, field: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field).map(|v| v.trim().to_owned()))
}

/// Waits until `pid` catches SIGTERM: a signal sent before pause installs its handlers
/// would be ignored (PID 1 of a namespace) or kill it with the default action.
fn wait_for_handlers(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let caught = status_field(pid, "SigCgt:")
            .and_then(|hex| u64::from_str_radix(&hex, 16).ok())
            .unwrap_or(0);
        if caught & (1 << (SIGTERM - 1)) != 0 {
            return;
        }
        assert!(Instant::now() < deadline, "pid {pid} installs no handlers");
        std::thread::sleep(Duration::from_millis(10));
    }
}

async fn wait_for_status(sandbox: &Sandbox, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let state = sandbox.runtime.state(&sandbox.id).await.unwrap().unwrap();
        if state.status == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} is {}, not {want}",
            sandbox.id,
            state.status
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[tokio::test]
async fn pause_sandbox_lifecycle_in_its_own_namespaces() {
    let sandbox = sandbox("own", |_| {});
    let (runtime, id) = (&sandbox.runtime, sandbox.id.as_str());
    let pid_file = sandbox.bundle.join("pid");
    runtime
        .create(
            id,
            &sandbox.bundle,
            &CreateOptions {
                pid_file: pid_file.clone(),
                no_new_keyring: true,
            },
        )
        .await
        .unwrap();

    let state = runtime.state(id).await.unwrap().unwrap();
    assert_eq!(state.id, id);
    assert_eq!(state.status, "created");
    assert_eq!(state.bundle, sandbox.bundle);
    assert!(state.pid > 0);
    assert!(!state.created.is_empty());
    let pid = state.pid;
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        pid.to_string()
    );

    runtime.start(id).await.unwrap();
    assert_eq!(runtime.state(id).await.unwrap().unwrap().status, "running");
    wait_for_handlers(pid);
    let pid_s = pid.to_string();
    for kind in ["pid", "net", "ipc", "uts", "mnt"] {
        assert_ne!(
            ns(&pid_s, kind),
            ns("self", kind),
            "{kind} namespace shared"
        );
    }
    assert_eq!(
        status_field(pid, "Uid:").unwrap().split_whitespace().next(),
        Some("65535")
    );
    assert_eq!(status_field(pid, "NoNewPrivs:").as_deref(), Some("1"));

    // pause is PID 1 of the pod's PID namespace: an orphan made in there becomes its
    // child, and it must reap it when it exits rather than leave a zombie.
    let status = Command::new("nsenter")
        .args([
            "-t",
            &pid_s,
            "-p",
            "--",
            "/bin/sh",
            "-c",
            "sleep 1 & exit 0",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        children(pid).len(),
        1,
        "the orphan was not reparented to pause"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !children(pid).is_empty() {
        assert!(
            Instant::now() < deadline,
            "pause left {:?} unreaped",
            children(pid)
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    runtime.kill(id, SIGTERM, false).await.unwrap();
    wait_for_status(&sandbox, "stopped").await;
    // Signalling a stopped container is fine, deleting it works once, then is a no-op.
    runtime.kill(id, SIGTERM, false).await.unwrap();
    runtime.kill(id, SIGTERM, true).await.unwrap();
    runtime.delete(id, false).await.unwrap();
    assert_eq!(runtime.state(id).await.unwrap(), None);
    runtime.delete(id, false).await.unwrap();
    runtime.kill(id, SIGTERM, false).await.unwrap();
    assert!(sandbox.bundle.join("log.json").exists());
}

#[tokio::test]
async fn pause_sandbox_in_host_namespaces() {
    let sandbox = sandbox("host", |spec| {
        spec.netns = NamespaceMode::Host;
        spec.uts_host = true;
        spec.ipc_host = true;
        spec.pid = PidMode::Node;
    });
    let (runtime, id) = (&sandbox.runtime, sandbox.id.as_str());
    let opts = CreateOptions {
        pid_file: sandbox.bundle.join("pid"),
        no_new_keyring: false,
    };
    runtime.create(id, &sandbox.bundle, &opts).await.unwrap();
    runtime.start(id).await.unwrap();
    let pid = runtime.state(id).await.unwrap().unwrap().pid;
    wait_for_handlers(pid);
    let pid_s = pid.to_string();
    for kind in ["pid", "net", "ipc", "uts"] {
        assert_eq!(
            ns(&pid_s, kind),
            ns("self", kind),
            "{kind} namespace not shared"
        );
    }
    assert_ne!(ns(&pid_s, "mnt"), ns("self", "mnt"));

    runtime.kill(id, SIGINT, false).await.unwrap();
    wait_for_status(&sandbox, "stopped").await;
    runtime.delete(id, true).await.unwrap();
    assert_eq!(runtime.state(id).await.unwrap(), None);
}

#[tokio::test]
async fn force_delete_stops_a_running_sandbox() {
    let sandbox = sandbox("force", |_| {});
    let (runtime, id) = (&sandbox.runtime, sandbox.id.as_str());
    let opts = CreateOptions {
        pid_file: sandbox.bundle.join("pid"),
        no_new_keyring: false,
    };
    runtime.create(id, &sandbox.bundle, &opts).await.unwrap();
    runtime.start(id).await.unwrap();
    let err = runtime.delete(id, false).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    runtime.delete(id, true).await.unwrap();
    assert_eq!(runtime.state(id).await.unwrap(), None);
}

#[tokio::test]
async fn runc_failures_carry_its_error_line() {
    let sandbox = sandbox("fail", |spec| spec.args = vec!["/no-such-binary".into()]);
    let (runtime, id) = (&sandbox.runtime, sandbox.id.as_str());
    let opts = CreateOptions {
        pid_file: sandbox.bundle.join("pid"),
        no_new_keyring: false,
    };
    let err = runtime
        .create(id, &sandbox.bundle, &opts)
        .await
        .unwrap_err();
    let message = err.to_string();
    assert_eq!(err.kind(), ErrorKind::Internal, "{message}");
    assert!(
        message.starts_with(&format!("oci runtime runc create {id}: exit status 1: ")),
        "{message}"
    );
    assert!(message.contains("/no-such-binary"), "{message}");
    assert!(message.contains("no such file or directory"), "{message}");
    // Whatever create left behind goes with a forced delete.
    runtime.delete(id, true).await.unwrap();

    let err = runtime.start("crust-test-never-created").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(
        err.to_string().ends_with("container does not exist"),
        "{err}"
    );
    assert_eq!(
        runtime.state("crust-test-never-created").await.unwrap(),
        None
    );
}

#[test]
fn pause_runs_alone_in_an_empty_root() {
    let dir = tempfile::tempdir().unwrap();
    write_executable(&dir.path().join("pause"), crust_runtime::PAUSE_BINARY);
    let mut attempts = 0;
    let output = loop {
        let output = Command::new("chroot")
            .arg(dir.path())
            .args(["/pause", "-v"])
            .output()
            .unwrap();
        // ETXTBSY: a child forked by another test thread still held the file open.
        if attempts < 50 && String::from_utf8_lossy(&output.stderr).contains("Text file busy") {
            attempts += 1;
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        break output;
    };
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("crust-pause {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn pause_exits_0_on_sigterm_and_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let pause = dir.path().join("pause");
    write_executable(&pause, crust_runtime::PAUSE_BINARY);
    for signal in [SIGTERM, SIGINT] {
        let mut child = spawn_retrying(&pause);
        let pid = i32::try_from(child.id()).unwrap();
        wait_for_handlers(pid);
        // `pid` is our unreaped child, so it cannot name another process.
        let signal_ = nix::sys::signal::Signal::try_from(signal).unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal_).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "signal {signal}: {status:?}");
    }
}

fn write_executable(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Spawns `path`, retrying on ETXTBSY: another test thread may have forked while the
/// file was still open for writing.
fn spawn_retrying(path: &Path) -> std::process::Child {
    crust_util::process::spawn_retrying_etxtbsy(|| {
        Command::new(path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
    })
    .unwrap_or_else(|err| panic!("spawn {}: {err}", path.display()))
}
