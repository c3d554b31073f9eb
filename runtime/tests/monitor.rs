//! crust-monitor with the real runc: busybox containers whose output, input, terminal,
//! log rotation, exit status and OOM kill go through the monitor, and failures that
//! must leave no process behind.
//!
//! The test process makes itself a child subreaper, so that the monitors it spawns
//! (which fork away from their spawner) are reparented to it and reaped by the
//! guards, rather than to an init that might not reap them. Each test has its own
//! temporary directory, runc root and container id; the guard force-deletes the
//! container and kills the monitor even when an assertion fails.

use std::io::BufRead;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crust_proto::monitor::{ExitStatus, FrameKind, Resize, parse_exit_payload};
use crust_runtime::monitor::{
    MonitorSpawn, MonitorStarted, attach, read_exit_file, read_frame, reopen_log, spawn_monitor,
    write_frame,
};
use crust_runtime::{ErrorKind, OciRuntime};
use serde_json::{Value, json};

const RUNC: &str = "/usr/sbin/runc";
const MONITOR: &str = env!("CARGO_BIN_EXE_crust-monitor");
const BUSYBOX: &str = "/bin/busybox";
const APPLETS: [&str; 10] = [
    "sh", "echo", "sleep", "cat", "head", "tr", "yes", "stty", "printf", "true",
];
const SPAWN_TIMEOUT: Duration = Duration::from_secs(20);
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);
/// The environment variable that turns [`zz_helper_spawns_a_monitor_and_dies`] into the
/// spawning half of [`the_monitor_survives_its_spawner`].
const HELPER_ENV: &str = "CRUST_MONITOR_TEST_HELPER";

/// Monitors are reparented to this process when their spawner is gone.
fn become_subreaper() {
    nix::sys::prctl::set_child_subreaper(true).unwrap();
}

fn unique_id(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("crust-mon-{tag}-{}-{nanos}", std::process::id())
}

/// A busybox container's bundle and paths; dropping it deletes the container and
/// kills and reaps its monitor.
struct Container {
    dir: tempfile::TempDir,
    id: String,
    bundle: PathBuf,
    runtime: OciRuntime,
    log: PathBuf,
    exit_file: PathBuf,
    attach_socket: PathBuf,
    monitor_pid: Option<i32>,
}

impl Drop for Container {
    fn drop(&mut self) {
        // Synchronous on purpose: Drop cannot await, and this runs after a panic too.
        let _ = Command::new(RUNC)
            .arg("--root")
            .arg(self.runtime.root())
            .args(["delete", "--force", &self.id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(pid) = self.monitor_pid {
            kill_and_reap(pid);
        }
        crust_runtime::stats::cgroup::remove_empty_cgroup(&format!("/crust/{}", self.id));
    }
}

/// Kills `pid`, a monitor reparented to this process, and reaps it. A pid that is
/// not our child (already reaped) is left alone: it may name another process by now.
fn kill_and_reap(pid: i32) {
    let pid = nix::unistd::Pid::from_raw(pid);
    if is_our_child(pid.as_raw()) {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(pid, None);
    }
}

fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = stat.rsplit_once(") ")?;
    let comm = head.split_once(" (")?.1.to_owned();
    Some(
        std::iter::once(comm)
            .chain(rest.split_whitespace().map(str::to_owned))
            .collect(),
    )
}

/// (comm, state, ppid, session) of a process.
fn proc_info(pid: i32) -> Option<(String, char, i32, i32)> {
    let fields = stat_fields(pid)?;
    Some((
        fields[0].clone(),
        fields[1].chars().next()?,
        fields[2].parse().ok()?,
        fields[4].parse().ok()?,
    ))
}

fn is_our_child(pid: i32) -> bool {
    proc_info(pid).is_some_and(|(_, _, ppid, _)| ppid == std::process::id() as i32)
}

/// Waits until our (reparented) child `pid` has exited and reaps it; its status.
fn reap_within(pid: i32, limit: Duration) -> nix::sys::wait::WaitStatus {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    let deadline = Instant::now() + limit;
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(status) => return status,
            Err(err) => panic!("waitpid {pid}: {err}"),
        }
        assert!(Instant::now() < deadline, "process {pid} did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes a bundle whose rootfs holds busybox and its applets; `process` and `linux`
/// are merged into the spec's objects of those names.
fn container(tag: &str, process: Value, linux: Value) -> Container {
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    for empty in ["proc", "dev", "tmp"] {
        std::fs::create_dir_all(rootfs.join(empty)).unwrap();
    }
    std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).unwrap();
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    let id = unique_id(tag);
    let bundles = dir.path().join("bundles");
    let bundle = bundles.join(&id);
    std::fs::create_dir_all(&bundle).unwrap();
    let mut spec = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": ["/bin/true"],
            "env": ["PATH=/bin", "TERM=xterm"],
            "cwd": "/",
            "noNewPrivileges": true
        },
        "root": {"path": rootfs, "readonly": false},
        "hostname": "crust-test",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "cgroupsPath": format!("/crust/{id}")
        }
    });
    merge(&mut spec["process"], process);
    merge(&mut spec["linux"], linux);
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&spec).unwrap(),
    )
    .unwrap();
    let runtime =
        OciRuntime::new(RUNC.into(), dir.path().join("runc-root")).with_bundle_dir(bundles);
    Container {
        log: dir.path().join("logs/ns_pod_uid/c/0.log"),
        exit_file: dir.path().join("state/exit"),
        attach_socket: dir.path().join("state/attach.sock"),
        dir,
        id,
        bundle,
        runtime,
        monitor_pid: None,
    }
}

fn merge(into: &mut Value, from: Value) {
    if let (Some(into), Value::Object(from)) = (into.as_object_mut(), from) {
        into.extend(from);
    }
}

fn sh(script: &str) -> Value {
    json!({"args": ["/bin/sh", "-c", script]})
}

impl Container {
    fn spawn(&self) -> MonitorSpawn {
        MonitorSpawn {
            binary: MONITOR.into(),
            id: self.id.clone(),
            bundle: self.bundle.clone(),
            engine: crust_runtime::CreateEngine::Cli(self.runtime.binary().to_path_buf()),
            runtime_root: self.runtime.root().to_path_buf(),
            log_path: self.log.clone(),
            log_dir: None,
            exit_file: self.exit_file.clone(),
            attach_socket: self.attach_socket.clone(),
            tty: false,
            stdin: false,
            stdin_once: false,
            systemd_cgroup: false,
            restore: None,
        }
    }

    /// Spawns the monitor with `edit`ed options; the container is created.
    async fn create(&mut self, edit: impl FnOnce(&mut MonitorSpawn)) -> MonitorStarted {
        let mut spawn = self.spawn();
        edit(&mut spawn);
        let started = spawn_monitor(&spawn, SPAWN_TIMEOUT).await.unwrap();
        self.monitor_pid = Some(started.monitor_pid);
        started
    }

    async fn start(&self) {
        self.runtime.start(&self.id).await.unwrap();
    }

    /// Waits for the exit file, then for the monitor to exit 0.
    async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + EXIT_TIMEOUT;
        let status = loop {
            if let Some(status) = read_exit_file(&self.exit_file) {
                break status;
            }
            assert!(Instant::now() < deadline, "{} never exited", self.id);
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let pid = self.monitor_pid.take().unwrap();
        let exited = reap_within(pid, Duration::from_secs(10));
        assert_eq!(
            exited,
            nix::sys::wait::WaitStatus::Exited(nix::unistd::Pid::from_raw(pid), 0)
        );
        assert!(
            !self.attach_socket.exists(),
            "the attach socket outlived the monitor"
        );
        status
    }
}

/// A log record: (stream, partial, text).
type Record = (String, bool, String);

/// Parses a CRI log file, checking each line's shape.
fn records(path: &Path) -> Vec<Record> {
    let text = String::from_utf8(std::fs::read(path).unwrap()).unwrap();
    assert!(text.is_empty() || text.ends_with('\n'), "{text:?}");
    text.split_terminator('\n')
        .map(|line| {
            let mut parts = line.splitn(4, ' ');
            let time = parts.next().unwrap();
            let bytes = time.as_bytes();
            assert_eq!(bytes.len(), 30, "{line:?}");
            assert_eq!(
                (bytes[10], bytes[19], bytes[29]),
                (b'T', b'.', b'Z'),
                "{line:?}"
            );
            let stream = parts.next().unwrap().to_owned();
            assert!(stream == "stdout" || stream == "stderr", "{line:?}");
            let tag = parts.next().unwrap();
            assert!(tag == "P" || tag == "F", "{line:?}");
            (
                stream,
                tag == "P",
                parts.next().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn stream_records(records: &[Record], stream: &str) -> Vec<(bool, String)> {
    records
        .iter()
        .filter(|(s, _, _)| s == stream)
        .map(|(_, partial, text)| (*partial, text.clone()))
        .collect()
}

async fn wait_for_log(path: &Path, text: &str) {
    let deadline = Instant::now() + EXIT_TIMEOUT;
    loop {
        if std::fs::read_to_string(path).is_ok_and(|log| log.contains(text)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{text:?} never reached {}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An attach client's stdout up to the exit frame, and the exit code it carries.
async fn stdout_until_exit(client: &mut tokio::net::UnixStream) -> (Vec<u8>, Option<i32>) {
    let mut output = Vec::new();
    loop {
        let frame = read_frame(client).await.unwrap().unwrap();
        match frame.kind {
            FrameKind::Stdout => output.extend_from_slice(&frame.payload),
            FrameKind::Exit => return (output, parse_exit_payload(&frame.payload)),
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

#[tokio::test]
async fn output_goes_to_the_cri_log_and_the_exit_file() {
    become_subreaper();
    let mut c = container(
        "out",
        sh("echo hello stdout; echo hello stderr >&2; \
            head -c 40960 /dev/zero | tr '\\0' x; echo; printf partial-end; exit 3"),
        json!({}),
    );
    // A descriptor crustd leaks (no close-on-exec) must not live on in the monitor.
    let leaked = c.dir.path().join("leaked");
    std::fs::write(&leaked, "").unwrap();
    let path = std::ffi::CString::new(leaked.to_str().unwrap()).unwrap();
    // SAFETY: open with a valid C string; the descriptor is closed below.
    let leaked_fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY) };
    assert!(leaked_fd > 2);
    let before = now_ns();
    let started = c.create(|_| {}).await;
    // SAFETY: closes the descriptor opened above, which nothing else uses.
    unsafe { libc::close(leaked_fd) };

    // Detached: its own session, not a child of the spawning task (reparented to this
    // subreaper process), its stdio /dev/null, nothing of ours inherited.
    let (comm, _, _, session) = proc_info(started.monitor_pid).unwrap();
    assert_eq!(comm, "crust-monitor");
    assert_eq!(session, started.monitor_pid);
    for entry in std::fs::read_dir(format!("/proc/{}/fd", started.monitor_pid)).unwrap() {
        let entry = entry.unwrap();
        let fd: i32 = entry.file_name().to_str().unwrap().parse().unwrap();
        // An fd the monitor closed since the listing (its set-up ends meanwhile) is
        // not one it kept.
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if fd <= 2 {
            assert_eq!(target, Path::new("/dev/null"), "fd {fd}");
        }
        assert_ne!(target, leaked, "fd {fd} inherited");
    }
    let mode = std::fs::metadata(&c.attach_socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        std::fs::read_to_string(c.bundle.join("container.pid"))
            .unwrap()
            .trim(),
        started.container_pid.to_string()
    );
    assert!(read_exit_file(&c.exit_file).is_none());

    c.start().await;
    let status = c.wait_exit().await;
    assert_eq!(status.exit_code, 3);
    assert!(!status.oom_killed);
    assert!(before < status.exited_at && status.exited_at <= now_ns());

    let records = records(&c.log);
    let x = |n: usize| "x".repeat(n);
    assert_eq!(
        stream_records(&records, "stdout"),
        [
            (false, "hello stdout".to_owned()),
            (true, x(16384)),
            (true, x(16384)),
            (false, x(8192)),
            (true, "partial-end".to_owned()),
        ]
    );
    assert_eq!(
        stream_records(&records, "stderr"),
        [(false, "hello stderr".to_owned())]
    );
}

#[tokio::test]
async fn a_killed_container_exits_137() {
    become_subreaper();
    let mut c = container("kill", json!({"args": ["/bin/sleep", "1000"]}), json!({}));
    let started = c.create(|_| {}).await;
    c.start().await;
    // Idle with a running container: what one monitor costs.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", started.monitor_pid)).unwrap();
    let rss: Vec<&str> = status
        .lines()
        .filter(|l| l.starts_with("VmRSS") || l.starts_with("RssAnon"))
        .collect();
    eprintln!("idle crust-monitor: {}", rss.join(", "));

    c.runtime.kill(&c.id, libc::SIGKILL, false).await.unwrap();
    let status = c.wait_exit().await;
    assert_eq!(status.exit_code, 137);
    assert!(!status.oom_killed);
}

#[tokio::test]
async fn a_terminal_container_logs_through_its_pty() {
    become_subreaper();
    let mut c = container(
        "tty",
        json!({"terminal": true, "args": ["/bin/sh", "-c", "stty size; echo tty-hello; exit 0"]}),
        json!({}),
    );
    c.create(|spawn| spawn.tty = true).await;
    // Resize before start, and wait until it is done: frames are handled in order,
    // and REOPEN_LOG is acknowledged.
    let mut client = attach(&c.attach_socket).await.unwrap();
    let size = Resize {
        rows: 40,
        cols: 100,
    }
    .encode();
    write_frame(&mut client, FrameKind::Resize, &size)
        .await
        .unwrap();
    write_frame(&mut client, FrameKind::ReopenLog, &[])
        .await
        .unwrap();
    let ack = read_frame(&mut client).await.unwrap().unwrap();
    assert_eq!((ack.kind, ack.payload.len()), (FrameKind::Ack, 0));

    c.start().await;
    let (output, exit) = stdout_until_exit(&mut client).await;
    assert_eq!(exit, Some(0));
    assert_eq!(String::from_utf8_lossy(&output), "40 100\r\ntty-hello\r\n");
    assert_eq!(read_frame(&mut client).await.unwrap(), None);
    let status = c.wait_exit().await;
    assert_eq!(status.exit_code, 0);
    // A terminal's output is stdout, its carriage returns kept.
    assert_eq!(
        records(&c.log),
        [
            ("stdout".to_owned(), false, "40 100\r".to_owned()),
            ("stdout".to_owned(), false, "tty-hello\r".to_owned()),
        ]
    );
}

#[tokio::test]
async fn stdin_reaches_the_container_through_attach() {
    become_subreaper();
    let mut c = container("stdin", json!({"args": ["/bin/cat"]}), json!({}));
    c.create(|spawn| spawn.stdin = true).await;
    let mut client = attach(&c.attach_socket).await.unwrap();
    c.start().await;
    write_frame(&mut client, FrameKind::Stdin, b"hello\n")
        .await
        .unwrap();
    write_frame(&mut client, FrameKind::CloseStdin, &[])
        .await
        .unwrap();
    let (output, exit) = stdout_until_exit(&mut client).await;
    assert_eq!(output, b"hello\n");
    assert_eq!(exit, Some(0));
    let status = c.wait_exit().await;
    assert_eq!(status.exit_code, 0);
    assert_eq!(
        records(&c.log),
        [("stdout".to_owned(), false, "hello".to_owned())]
    );
}

#[tokio::test]
async fn an_attach_socket_deeper_than_sun_path_still_works() {
    become_subreaper();
    let mut c = container("deep", json!({"args": ["/bin/cat"]}), json!({}));
    // A state directory deep enough that the socket's path passes sun_path's 108 bytes.
    let deep = c.dir.path().join("a".repeat(60)).join("b".repeat(60));
    c.attach_socket = deep.join("attach");
    assert!(c.attach_socket.as_os_str().len() > 108);
    c.create(|spawn| spawn.stdin = true).await;
    assert!(c.attach_socket.exists());
    let mut client = attach(&c.attach_socket).await.unwrap();
    c.start().await;
    write_frame(&mut client, FrameKind::Stdin, b"deep\n")
        .await
        .unwrap();
    write_frame(&mut client, FrameKind::CloseStdin, &[])
        .await
        .unwrap();
    let (output, exit) = stdout_until_exit(&mut client).await;
    assert_eq!(output, b"deep\n");
    assert_eq!(exit, Some(0));
    assert_eq!(c.wait_exit().await.exit_code, 0);
}

#[tokio::test]
async fn stdin_once_closes_stdin_when_its_writer_leaves() {
    become_subreaper();
    let mut c = container("once", json!({"args": ["/bin/cat"]}), json!({}));
    c.create(|spawn| {
        spawn.stdin = true;
        spawn.stdin_once = true;
    })
    .await;
    c.start().await;
    // A reader that never writes does not own stdin; the first writer does.
    let _reader = attach(&c.attach_socket).await.unwrap();
    let mut writer = attach(&c.attach_socket).await.unwrap();
    write_frame(&mut writer, FrameKind::Stdin, b"first\n")
        .await
        .unwrap();
    wait_for_log(&c.log, "first").await;
    drop(writer);
    let status = c.wait_exit().await;
    assert_eq!(status.exit_code, 0);
    assert_eq!(
        records(&c.log),
        [("stdout".to_owned(), false, "first".to_owned())]
    );
}

#[tokio::test]
async fn reopen_log_follows_rotation() {
    become_subreaper();
    let mut c = container(
        "rotate",
        sh("echo before; read x; echo after-frame; read x; echo after-signal"),
        json!({}),
    );
    let started = c.create(|spawn| spawn.stdin = true).await;
    let mut client = attach(&c.attach_socket).await.unwrap();
    c.start().await;
    wait_for_log(&c.log, "before").await;

    // Rotation as kubelet does it: rename, then ReopenContainerLog.
    let first = c.log.with_extension("log.1");
    std::fs::rename(&c.log, &first).unwrap();
    reopen_log(&c.attach_socket).await.unwrap();
    write_frame(&mut client, FrameKind::Stdin, b"go\n")
        .await
        .unwrap();
    wait_for_log(&c.log, "after-frame").await;

    // And by signal.
    let second = c.log.with_extension("log.2");
    std::fs::rename(&c.log, &second).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(started.monitor_pid),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c.log.exists() {
        assert!(Instant::now() < deadline, "SIGUSR1 did not reopen the log");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    write_frame(&mut client, FrameKind::Stdin, b"go\n")
        .await
        .unwrap();
    let status = c.wait_exit().await;
    assert_eq!(status.exit_code, 0);

    let text = |path: &Path| -> Vec<String> {
        records(path).into_iter().map(|(_, _, text)| text).collect()
    };
    assert_eq!(text(&first), ["before"]);
    assert_eq!(text(&second), ["after-frame"]);
    assert_eq!(text(&c.log), ["after-signal"]);
}

#[tokio::test]
async fn oom_kill_is_recorded() {
    become_subreaper();
    let mut c = container(
        "oom",
        sh("x=$(yes | head -c 100000000); echo survived"),
        json!({"resources": {"memory": {"limit": 8 * 1024 * 1024, "swap": 8 * 1024 * 1024}}}),
    );
    c.create(|_| {}).await;
    c.start().await;
    let status = c.wait_exit().await;
    assert!(status.oom_killed, "{status:?}");
    assert_ne!(status.exit_code, 0, "{status:?}");
    let logged = std::fs::read_to_string(&c.log).unwrap();
    assert!(!logged.contains("survived"), "{logged}");
}

/// The crust-monitor binary under a name unique to one test, so that its process can
/// be told from every other test's monitors by its command name even as a zombie.
fn uniquely_named_monitor(dir: &Path, name: &str) -> PathBuf {
    assert!(name.len() <= 15, "{name} would be truncated in comm");
    let path = dir.join(name);
    std::os::unix::fs::symlink(MONITOR, &path).unwrap();
    path
}

/// Our children called `comm`, zombies or not.
fn children_named(comm: &str) -> Vec<(i32, char)> {
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let (name, state, ppid, _) = proc_info(pid)?;
            (ppid == me && name == comm).then_some((pid, state))
        })
        .collect()
}

/// Live processes whose command line mentions `text`.
fn processes_mentioning(text: &str) -> Vec<(i32, String)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(text).then_some((pid, cmdline))
        })
        .collect()
}

/// Asserts that nothing of a failed spawn runs on: no process mentions the id, the
/// uniquely named monitor exited (reaped here) with `status`, and the container's
/// cgroup holds no process.
fn assert_nothing_left(c: &Container, monitor_name: &str, status: Option<i32>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let running = processes_mentioning(&c.id);
        let monitors = children_named(monitor_name);
        let alive = monitors.iter().any(|&(_, state)| state != 'Z');
        if running.is_empty() && !alive {
            assert_eq!(monitors.len(), 1, "{monitors:?}");
            let exited = reap_within(monitors[0].0, Duration::from_secs(1));
            if let Some(code) = status {
                assert_eq!(
                    exited,
                    nix::sys::wait::WaitStatus::Exited(
                        nix::unistd::Pid::from_raw(monitors[0].0),
                        code
                    )
                );
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left running: {running:?}, monitors {monitors:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for hierarchy in ["memory", "pids", "unified"] {
        let procs = Path::new("/sys/fs/cgroup")
            .join(hierarchy)
            .join("crust")
            .join(&c.id)
            .join("cgroup.procs");
        if let Ok(procs) = std::fs::read_to_string(&procs) {
            assert_eq!(procs.trim(), "", "{}", procs);
        }
    }
}

#[tokio::test]
async fn a_failing_create_reports_runc_error_and_leaves_nothing() {
    become_subreaper();
    // runc starts its init for this one and fails at the exec.
    let c = container("fail", json!({"args": ["/no-such-binary"]}), json!({}));
    let mut spawn = c.spawn();
    spawn.binary = uniquely_named_monitor(c.dir.path(), "cm-fail");
    let err = spawn_monitor(&spawn, SPAWN_TIMEOUT).await.unwrap_err();
    let message = err.to_string();
    assert_eq!(err.kind(), ErrorKind::Internal, "{message}");
    assert!(
        message.starts_with(&format!(
            "oci runtime runc create {}: exit status 1: ",
            c.id
        )),
        "{message}"
    );
    assert!(message.contains("/no-such-binary"), "{message}");
    assert!(message.contains("no such file or directory"), "{message}");
    assert_nothing_left(&c, "cm-fail", Some(1));
    assert!(!c.attach_socket.exists());
    assert!(read_exit_file(&c.exit_file).is_none());

    // A missing rootfs fails before runc starts anything.
    let c = container("norootfs", json!({}), json!({}));
    std::fs::remove_dir_all(c.dir.path().join("rootfs")).unwrap();
    let mut spawn = c.spawn();
    spawn.binary = uniquely_named_monitor(c.dir.path(), "cm-norootfs");
    let err = spawn_monitor(&spawn, SPAWN_TIMEOUT).await.unwrap_err();
    let message = err.to_string();
    assert!(
        message.starts_with(&format!(
            "oci runtime runc create {}: exit status 1: ",
            c.id
        )),
        "{message}"
    );
    assert!(message.contains("rootfs"), "{message}");
    assert_nothing_left(&c, "cm-norootfs", Some(1));

    // A taken id is the runtime's "exists": a failed precondition, and the running
    // container's monitor keeps its attach socket.
    let mut c = container("taken", json!({"args": ["/bin/sleep", "1000"]}), json!({}));
    c.create(|_| {}).await;
    let mut again = c.spawn();
    again.binary = uniquely_named_monitor(c.dir.path(), "cm-taken");
    let err = spawn_monitor(&again, SPAWN_TIMEOUT).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    assert!(c.attach_socket.exists());
    let monitors = children_named("cm-taken");
    assert_eq!(monitors.len(), 1, "{monitors:?}");
    reap_within(monitors[0].0, Duration::from_secs(10));
}

#[tokio::test]
async fn a_hanging_runtime_is_killed_with_its_monitor() {
    become_subreaper();
    let c = container("hang", json!({}), json!({}));
    let script = c.dir.path().join("hanging-runtime");
    std::fs::write(&script, "#!/bin/sh\nwhile :; do sleep 1; done\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut spawn = c.spawn();
    spawn.engine = crust_runtime::CreateEngine::Cli(script);
    spawn.binary = uniquely_named_monitor(c.dir.path(), "cm-hang");
    let begun = Instant::now();
    let err = spawn_monitor(&spawn, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(begun.elapsed() < Duration::from_secs(5));
    assert_eq!(err.kind(), ErrorKind::DeadlineExceeded, "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "oci runtime hanging-runtime create {}: timed out after 1s",
            c.id
        )
    );
    // SIGKILL, by crustd's side.
    assert_nothing_left(&c, "cm-hang", None);
}

#[tokio::test]
async fn the_monitor_survives_its_spawner() {
    become_subreaper();
    let mut c = container("orphan", sh("read x; echo still here; exit 7"), json!({}));
    // The helper (this test binary again) spawns the monitor, prints its pids, and is
    // killed.
    let mut spawn = c.spawn();
    spawn.stdin = true;
    let request = json!({
        "id": spawn.id,
        "bundle": spawn.bundle,
        "runtime_root": spawn.runtime_root,
        "log_path": spawn.log_path,
        "exit_file": spawn.exit_file,
        "attach_socket": spawn.attach_socket,
    });
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "zz_helper_spawns_a_monitor_and_dies",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_ENV, request.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = helper.stdout.take().unwrap();
    let mut pids = None;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        // libtest may have begun the line with "test <name> ... ".
        if let Some((_, rest)) = line.split_once("MONITOR ") {
            let (monitor, container) = rest.split_once(' ').unwrap();
            pids = Some((
                monitor.parse::<i32>().unwrap(),
                container.parse::<i32>().unwrap(),
            ));
            break;
        }
    }
    let (monitor_pid, container_pid) = pids.expect("the helper reported no monitor");
    c.monitor_pid = Some(monitor_pid);
    helper.kill().unwrap();
    helper.wait().unwrap();

    // The spawner is dead; the monitor and its container are not.
    assert!(proc_info(container_pid).is_some());
    let (_, state, ppid, _) = proc_info(monitor_pid).unwrap();
    assert_ne!(state, 'Z');
    assert_eq!(
        ppid,
        std::process::id() as i32,
        "reparented to the subreaper"
    );
    c.start().await;
    let mut client = attach(&c.attach_socket).await.unwrap();
    write_frame(&mut client, FrameKind::Stdin, b"go\n")
        .await
        .unwrap();
    let status = c.wait_exit().await;
    assert_eq!(status.exit_code, 7);
    assert_eq!(
        records(&c.log),
        [("stdout".to_owned(), false, "still here".to_owned())]
    );
}

/// The spawning half of [`the_monitor_survives_its_spawner`], run in a child process
/// of it; does nothing in an ordinary test run.
#[tokio::test]
async fn zz_helper_spawns_a_monitor_and_dies() {
    let Some(request) = std::env::var_os(HELPER_ENV) else {
        return;
    };
    let request: Value = serde_json::from_str(request.to_str().unwrap()).unwrap();
    let path = |key: &str| PathBuf::from(request[key].as_str().unwrap());
    let spawn = MonitorSpawn {
        binary: MONITOR.into(),
        id: request["id"].as_str().unwrap().to_owned(),
        bundle: path("bundle"),
        engine: crust_runtime::CreateEngine::Cli(RUNC.into()),
        runtime_root: path("runtime_root"),
        log_path: path("log_path"),
        log_dir: None,
        exit_file: path("exit_file"),
        attach_socket: path("attach_socket"),
        tty: false,
        stdin: true,
        stdin_once: false,
        systemd_cgroup: false,
        restore: None,
    };
    let started = spawn_monitor(&spawn, SPAWN_TIMEOUT).await.unwrap();
    println!("MONITOR {} {}", started.monitor_pid, started.container_pid);
    // Wait to be killed; exit on our own if the parent forgot.
    tokio::time::sleep(Duration::from_secs(60)).await;
}

#[tokio::test]
async fn a_container_created_after_its_spawner_died_is_killed_and_deleted() {
    become_subreaper();
    let c = container("gone", json!({"args": ["/bin/sleep", "1000"]}), json!({}));
    // A runtime slow to begin, so that the spawner is gone before `create` returns:
    // crustd killed mid-create.
    let slow = c.dir.path().join("slow-runc");
    std::fs::write(&slow, format!("#!/bin/sh\nsleep 1\nexec {RUNC} \"$@\"\n")).unwrap();
    std::fs::set_permissions(&slow, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut spawn = c.spawn();
    spawn.engine = crust_runtime::CreateEngine::Cli(slow);
    spawn.binary = uniquely_named_monitor(c.dir.path(), "cm-gone");
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::empty(),
    )
    .unwrap();
    let mut forker = Command::new(&spawn.binary)
        .args(spawn.args(theirs.as_raw_fd(), SPAWN_TIMEOUT).unwrap())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    drop(theirs);
    let mut hello = String::new();
    std::io::BufReader::new(std::os::unix::net::UnixStream::from(ours))
        .read_line(&mut hello)
        .unwrap();
    // Our end closes with the reader: the Created answer finds no one.
    assert!(hello.contains("monitor_pid"), "{hello}");
    forker.wait().unwrap();
    assert_nothing_left(&c, "cm-gone", Some(1));
    let state = c.runtime.state(&c.id).await.unwrap();
    assert!(state.is_none(), "the runtime still has it: {state:?}");
    assert!(!c.attach_socket.exists());
}
