//! End-to-end: the hardening of docs/security.md, attacked the way a hostile image, pod
//! spec or host user would, against a real crustd with real runc, CNI and registry.

mod support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crust_proto::cri;
use serde_json::json;
use support::oci::{self, Layer, LayerBuilder};
use support::pod::TestPod;

/// Every path under `dir` (itself included), without following symlinks.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    let Ok(meta) = fs::symlink_metadata(dir) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        walk(&entry.path(), out);
    }
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Runs a busybox shell script as `nobody` (no groups) with `args`; its output.
fn as_nobody(script: &str, args: &[&Path]) -> String {
    let out = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .args(["/bin/busybox", "sh", "-c", script, "sh"])
        .args(args)
        .output()
        .expect("run setpriv (util-linux)");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// An image whose second layer holds a setuid-root busybox (named `id`), and a volume.
fn setuid_image() -> oci::ImageSpec {
    let mut image = oci::busybox_image();
    let busybox = fs::read("/bin/busybox").unwrap();
    image.layers.push(Layer::gzip(
        LayerBuilder::new()
            .dir("usr")
            .dir("usr/local")
            .dir("usr/local/bin")
            .file("usr/local/bin/id", busybox, 0o4755)
            .build(),
    ));
    image.config = json!({
        "Cmd": ["/bin/sh"],
        "Env": [oci::DEFAULT_PATH],
        "Volumes": {"/vol": {}},
    });
    image
}

async fn exec(p: &mut TestPod, id: &str, script: &str) -> cri::ExecSyncResponse {
    p.c.runtime
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["/bin/sh".into(), "-c".into(), script.into()],
            timeout: 10,
        })
        .await
        .unwrap()
        .into_inner()
}

/// A host user reaches nothing under root and state (no listing, no reading, no
/// setuid binary from a layer or a rootfs), while a container running as uid 1000
/// still walks its rootfs, reads the pod files and uses its volume.
#[tokio::test(flavor = "multi_thread")]
async fn state_is_private_to_root_and_still_usable_by_non_root_containers() {
    let mut p = TestPod::set_up(setuid_image(), "").await;
    // The test's directory stands for /var/lib and /run: open to everyone, so only
    // crust's own modes protect what lies below.
    fs::set_permissions(p.d.dir(), fs::Permissions::from_mode(0o755)).unwrap();
    let mut config = p.config("app", &["sleep", "1000"]);
    config.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: 1000 }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = p.run(config).await;

    // The container's own view, as uid 1000.
    let r = exec(
        &mut p,
        &id,
        "set -e; id -u; ls / >/dev/null; cat /etc/hosts /etc/resolv.conf /etc/hostname >/dev/null; \
         ls /vol; echo hi > /home/app/f; cat /home/app/f; stat -c %a /usr/local/bin/id; \
         awk '$5 == \"/\" {print $6}' /proc/self/mountinfo",
    )
    .await;
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert_eq!(
        r.exit_code,
        0,
        "uid 1000 in the container: {stdout}{}",
        String::from_utf8_lossy(&r.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[..3], ["1000", "hi", "4755"], "{stdout}");
    // Setuid binaries keep working inside (no nosuid, as containerd); device nodes
    // in layers do not (nodev, as CRI-O).
    let options: Vec<&str> = lines[3].split(',').collect();
    assert!(
        options.contains(&"nodev"),
        "rootfs mount options {options:?}"
    );
    assert!(
        !options.contains(&"nosuid"),
        "rootfs mount options {options:?}"
    );

    let root = p.d.root();
    let state = p.d.dir().join("state");
    assert_eq!(mode(&root), 0o700);
    assert_eq!(mode(&state), 0o711);
    assert_eq!(mode(&root.join("crust.redb")) & 0o077, 0, "the store");
    let bundle = state.join("bundles").join(&id);
    assert_eq!(mode(&bundle.join("config.json")) & 0o077, 0, "the spec");

    let mut paths = Vec::new();
    walk(&root, &mut paths);
    walk(&state, &mut paths);
    let setuid: Vec<&Path> = paths
        .iter()
        .filter(|p| fs::symlink_metadata(p).is_ok_and(|m| m.is_file() && m.mode() & 0o4000 != 0))
        .map(PathBuf::as_path)
        .collect();
    // One in the layer store, one through the mounted rootfs.
    assert!(setuid.len() >= 2, "setuid binaries found: {setuid:?}");
    let reached = as_nobody(
        r#"for p in "$@"; do
             if [ -d "$p" ]; then ls "$p" >/dev/null 2>&1 && echo "LISTED $p";
             elif [ -L "$p" ]; then readlink "$p" >/dev/null 2>&1 && echo "READLINK $p";
             else head -c1 "$p" >/dev/null 2>&1 && echo "READ $p"; fi
           done; true"#,
        &paths.iter().map(PathBuf::as_path).collect::<Vec<_>>(),
    );
    assert_eq!(reached.trim(), "", "nobody reached these");
    let ran = as_nobody(
        r#"for p in "$@"; do "$p" -u 2>/dev/null && echo "RAN $p"; done; true"#,
        &setuid,
    );
    assert_eq!(ran.trim(), "", "nobody ran these setuid binaries");
}

/// A host path no test owns, unique to this run; removed when dropped (if some bug
/// made it).
struct HostPath(PathBuf);

impl HostPath {
    fn new(what: &str) -> HostPath {
        HostPath(std::env::temp_dir().join(format!(
            "crust-{what}-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        )))
    }
}

impl Drop for HostPath {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
        let _ = fs::remove_file(&self.0);
    }
}

/// Regression (issue 14): an image volume below a layer's symlink `data -> /` made
/// root create the directory on the host. It is made inside the rootfs now, where the
/// container sees it.
#[tokio::test(flavor = "multi_thread")]
async fn image_volumes_below_a_symlink_stay_inside_the_rootfs() {
    let escape = HostPath::new("volume-escape");
    let inner = escape.0.strip_prefix("/").unwrap().display().to_string();
    let mut image = oci::busybox_image();
    image.layers.push(Layer::gzip(
        LayerBuilder::new()
            .symlink("data", "/")
            .symlink("up", "../../../../../..")
            .build(),
    ));
    image.config = json!({
        "Cmd": ["/bin/sh"],
        "Env": [oci::DEFAULT_PATH],
        "Volumes": {
            format!("/data/{inner}/a"): {},
            format!("/up/{inner}/b"): {},
        },
    });
    let mut p = TestPod::set_up(image, "").await;
    let id = p.run(p.config("vol", &["sleep", "1000"])).await;
    assert!(
        !escape.0.exists(),
        "{} was created on the host",
        escape.0.display()
    );
    let r = exec(&mut p, &id, &format!("ls -d /{inner}/a /{inner}/b")).await;
    assert_eq!(r.exit_code, 0, "{}", String::from_utf8_lossy(&r.stderr));
}

/// A working directory in /proc (`/proc/self/fd/N`, CVE-2024-21626) is refused with
/// InvalidArgument, from the image and from the request, and nothing is left behind.
#[tokio::test(flavor = "multi_thread")]
async fn working_dirs_in_proc_are_refused() {
    let mut image = oci::busybox_image();
    image.config = json!({
        "Cmd": ["/bin/sh"],
        "Env": [oci::DEFAULT_PATH],
        "WorkingDir": "/proc/self/fd/7",
    });
    let mut p = TestPod::set_up(image, "").await;
    let err = p.create(p.config("img", &["true"])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("/proc/self/fd/7"), "{err:?}");
    let mut config = p.config("req", &["true"]);
    config.working_dir = "/tmp/../proc/1/cwd".into();
    let err = p.create(config).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let listed =
        p.c.runtime
            .list_containers(cri::ListContainersRequest::default())
            .await
            .unwrap()
            .into_inner()
            .containers;
    assert!(listed.is_empty(), "{listed:?}");
    // The names are free again: a fine working dir works.
    let mut config = p.config("req", &["true"]);
    config.working_dir = "/tmp".into();
    let id = p.run(config).await;
    assert_eq!(p.wait_exit(&id).await.exit_code, 0);
}

/// Regression (issue 14): the monitor (root) followed symlinks below the pod's log
/// directory, so whoever could write there made it create or append to any host file.
/// A planted symlink fails the create; one swapped in at rotation fails the reopen; the
/// target is never written.
#[tokio::test(flavor = "multi_thread")]
async fn log_symlinks_below_the_log_directory_are_not_followed() {
    let mut p = TestPod::set_up(oci::busybox_image(), "").await;
    let target = HostPath::new("log-target");
    fs::write(&target.0, "").unwrap();
    fs::create_dir_all(&p.logs).unwrap();
    std::os::unix::fs::symlink(&target.0, p.logs.join("planted")).unwrap();
    let mut config = p.config("x", &["echo", "leaked"]);
    config.log_path = "planted".into();
    let err = p.create(config).await.unwrap_err();
    assert!(err.message().contains("log"), "{err:?}");
    // The container's directory a symlink to the target's directory.
    std::os::unix::fs::symlink(target.0.parent().unwrap(), p.logs.join("dir")).unwrap();
    let mut config = p.config("y", &["echo", "leaked"]);
    config.log_path = format!("dir/{}", target.0.file_name().unwrap().to_string_lossy());
    assert!(p.create(config).await.is_err());

    // Rotation: the log renamed away and a symlink put in its place.
    let id = p
        .run(p.config(
            "rotate",
            &[
                "/bin/sh",
                "-c",
                "while true; do echo line; sleep 0.05; done",
            ],
        ))
        .await;
    let log = p.logs.join("rotate/0.log");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    fs::rename(&log, p.logs.join("rotate/0.log.1")).unwrap();
    std::os::unix::fs::symlink(&target.0, &log).unwrap();
    let reopened =
        p.c.runtime
            .reopen_container_log(cri::ReopenContainerLogRequest {
                container_id: id.clone(),
            })
            .await;
    assert!(reopened.is_err(), "reopen through a symlink: {reopened:?}");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(fs::read(&target.0).unwrap(), b"", "the target was written");
    // Once the symlink is gone, a reopen works again.
    fs::remove_file(&log).unwrap();
    p.c.runtime
        .reopen_container_log(cri::ReopenContainerLogRequest { container_id: id })
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(fs::read_to_string(&log).unwrap().contains("line"));
}
