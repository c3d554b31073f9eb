//! End-to-end: CheckpointContainer of a real container with real runc and CRIU.
//!
//! Whether CRIU can dump at all depends on the machine (CRIU 3.17, Debian 12's, cannot
//! parse the vDSO layout of Linux 6.13 and later). `criu check` decides which outcome
//! is right: where it passes, the archive must be complete; where it fails, the call
//! must fail with FailedPrecondition carrying CRIU's own error and leave nothing
//! behind. Either way the container must run on, not frozen.
//!
//! So that everything around CRIU is proven on any machine, one test runs the pod's
//! containers with real runc behind a wrapper that does CRIU's part of `checkpoint`
//! only (writes image files, after checking the container is frozen): pause and resume,
//! the rootfs diff of the real overlay writable layer, and the archive are crust's own.

mod support;

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crust_proto::cri;
use support::oci;
use support::pod::TestPod;
use tonic::Code;

/// A counter that writes its count to /tmp/count five times a second, after deleting
/// an image file and adding one of its own (for the rootfs diff).
const COUNTER: &str = "rm /etc/group; echo mine > /added; i=0; \
                       while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.2; done";

/// Whether CRIU works on this machine, and what `criu check` said.
fn criu_check() -> (bool, String) {
    match std::process::Command::new("criu").arg("check").output() {
        Ok(out) => (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ),
        Err(e) => (false, format!("criu: {e}")),
    }
}

async fn checkpoint(
    pod: &mut TestPod,
    id: &str,
    location: &Path,
) -> Result<cri::CheckpointContainerResponse, tonic::Status> {
    pod.c
        .runtime
        .checkpoint_container(cri::CheckpointContainerRequest {
            container_id: id.into(),
            location: location.display().to_string(),
            timeout: 60,
        })
        .await
        .map(|r| r.into_inner())
}

/// The counter's value, read with ExecSync.
async fn count(pod: &mut TestPod, id: &str) -> u64 {
    let out = pod
        .c
        .runtime
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["cat".into(), "/tmp/count".into()],
            timeout: 10,
        })
        .await
        .unwrap()
        .into_inner();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// The counter goes on: its count grows, and the container is RUNNING.
async fn assert_counting(pod: &mut TestPod, id: &str) {
    let before = count(pod, id).await;
    let mut after = before;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = count(pod, id).await;
        if after > before {
            break;
        }
    }
    assert!(
        after > before,
        "the counter stopped at {before}: left frozen?"
    );
    let status = pod
        .c
        .runtime
        .container_status(cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(status.state, cri::ContainerState::ContainerRunning as i32);
}

async fn running_counter(pod: &mut TestPod) -> String {
    let id = pod.run(pod.config("counter", &["sh", "-c", COUNTER])).await;
    // Running and counting before anything is asked of it.
    for _ in 0..100 {
        if count(pod, &id).await > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    id
}

/// Entries of a tar file: name to contents (symlinks and directories empty).
fn tar_entries(bytes: &[u8]) -> HashMap<String, Vec<u8>> {
    let mut archive = tar::Archive::new(bytes);
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (name, data)
        })
        .collect()
}

fn work_dirs(pod: &TestPod) -> Vec<PathBuf> {
    std::fs::read_dir(pod.d.root().join("checkpoints"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn checkpoint_of_a_running_counter_writes_the_archive_or_names_what_criu_lacks() {
    let mut pod = TestPod::on_handler(oci::busybox_image(), "runc").await;
    let id = running_counter(&mut pod).await;
    let out = pod.d.dir().join("checkpoints");
    std::fs::create_dir(&out).unwrap();
    let location = out.join("counter.tar");
    let (criu_works, check) = criu_check();
    let result = checkpoint(&mut pod, &id, &location).await;
    if criu_works {
        result.unwrap_or_else(|e| panic!("criu check passes, the checkpoint failed: {e:?}"));
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(&location).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let entries = tar_entries(&std::fs::read(&location).unwrap());
        assert!(
            entries.contains_key("checkpoint/inventory.img"),
            "{:?}",
            entries.keys()
        );
        assert!(entries.keys().any(|k| k.starts_with("checkpoint/pages-")));
        assert!(entries.contains_key("dump.log"));
        let config: serde_json::Value = serde_json::from_slice(&entries["config.dump"]).unwrap();
        assert_eq!(config["id"], id.as_str());
        assert_eq!(config["name"], "counter");
        assert_eq!(config["runtime"], "runc");
        assert_eq!(config["rootfsImage"], pod.image.as_str());
        let spec: serde_json::Value = serde_json::from_slice(&entries["spec.dump"]).unwrap();
        assert_eq!(
            spec["annotations"]["io.kubernetes.cri.container-name"],
            "counter"
        );
        assert_eq!(spec["annotations"]["io.kubernetes.cri.sandbox-name"], "pod");
        let diff = tar_entries(&entries["rootfs-diff.tar"]);
        assert_eq!(diff["added"], b"mine\n");
        assert!(diff.contains_key("tmp/count"), "{:?}", diff.keys());
        // The runtime's mount points are not the container's changes.
        assert!(!diff.contains_key("etc/hostname"), "{:?}", diff.keys());
        let deleted: Vec<String> = serde_json::from_slice(&entries["deleted.files"]).unwrap();
        assert_eq!(deleted, ["/etc/group"]);
        // A second checkpoint to the same location is refused; the first stays whole.
        let again = checkpoint(&mut pod, &id, &location).await.unwrap_err();
        assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");
        assert_eq!(std::fs::metadata(&location).unwrap().len(), meta.len());
    } else {
        let err = result.expect_err("criu check fails here, so the checkpoint cannot succeed");
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        let message = err.message();
        assert!(message.contains("criu"), "{message}");
        // CRIU's own words: the same error `criu check` reports.
        let first_error = check
            .lines()
            .find(|l| l.contains("Error ("))
            .and_then(|l| l.split("): ").nth(1))
            .unwrap_or_else(|| panic!("criu check printed no error: {check}"));
        assert!(
            message.contains("criu log:") && message.contains(first_error),
            "{message} should quote {first_error:?}"
        );
        assert!(!location.exists(), "a failed checkpoint left {location:?}");
        // The log runc's error points at is still there to read.
        let log = message
            .split("log file: ")
            .nth(1)
            .and_then(|rest| rest.split(';').next())
            .unwrap_or_else(|| panic!("no log file named in {message}"));
        assert!(Path::new(log.trim()).is_file(), "{log} is gone");
        eprintln!("checkpoint refused as it should be here: {message}");
    }
    assert_eq!(
        work_dirs(&pod),
        Vec::<PathBuf>::new(),
        "work directory left"
    );
    assert_counting(&mut pod, &id).await;
}

#[tokio::test]
async fn checkpoint_refuses_bad_requests_and_changes_nothing() {
    let mut pod = TestPod::on_handler(oci::busybox_image(), "runc").await;
    let id = running_counter(&mut pod).await;
    let dir = pod.d.dir().join("checkpoints");
    std::fs::create_dir(&dir).unwrap();

    let err = checkpoint(&mut pod, "no-such-container", &dir.join("a.tar"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = checkpoint(&mut pod, "", &dir.join("a.tar"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    for (location, why) in [
        ("relative.tar", "not an absolute path"),
        ("", "empty"),
        ("/tmp/../etc/crust-checkpoint.tar", ". or .."),
    ] {
        let err = checkpoint(&mut pod, &id, Path::new(location))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{location:?}: {err:?}");
        assert!(err.message().contains(why), "{location:?}: {err:?}");
    }
    assert!(!Path::new("/etc/crust-checkpoint.tar").exists());

    // An existing file is neither overwritten nor truncated, nor a symlink followed.
    let existing = dir.join("existing.tar");
    std::fs::write(&existing, b"keep me").unwrap();
    let err = checkpoint(&mut pod, &id, &existing).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep me");
    let target = dir.join("target");
    std::os::unix::fs::symlink(&target, dir.join("link.tar")).unwrap();
    let err = checkpoint(&mut pod, &id, &dir.join("link.tar"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert!(!target.exists(), "the symlink was followed");
    // crust does not make the client's directories.
    let err = checkpoint(&mut pod, &id, &dir.join("missing/a.tar"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(!dir.join("missing").exists());

    // A created container is not running: nothing to dump.
    let created = pod
        .create(pod.config("idle", &["sleep", "60"]))
        .await
        .unwrap();
    let err = checkpoint(&mut pod, &created, &dir.join("idle.tar"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("not running"), "{err:?}");

    let mut left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["existing.tar", "link.tar"]);
    assert_eq!(
        work_dirs(&pod),
        Vec::<PathBuf>::new(),
        "work directory left"
    );
    assert_counting(&mut pod, &id).await;
}

/// runc, except that `checkpoint` does what CRIU would (image files and a dump log)
/// without dumping anything, and records whether runc says the container is paused
/// at that moment. While a file `hang` is beside it, `checkpoint` writes its pid to
/// `hanging` and sleeps instead.
fn runc_with_criu_stood_in(dir: &Path) -> PathBuf {
    let wrapper = dir.join("runc-fake-criu");
    std::fs::write(
        &wrapper,
        r#"#!/bin/sh
case " $* " in *" checkpoint "*) ;; *) exec /usr/sbin/runc "$@";; esac
root=''; img=''; work=''; id=''
while [ $# -gt 0 ]; do
  case "$1" in
    --root) root="$2"; shift 2;;
    --image-path) img="$2"; shift 2;;
    --work-path) work="$2"; shift 2;;
    --log|--log-format) shift 2;;
    --*|checkpoint) shift;;
    *) id="$1"; shift;;
  esac
done
status=$(/usr/sbin/runc --root "$root" state "$id" | grep '"status"')
# A dump that never ends, for a crustd killed in the middle of it.
if [ -e "$(dirname "$0")/hang" ]; then echo $$ > "$(dirname "$0")/hanging"; exec sleep 60; fi
mkdir -p "$img"
echo inventory > "$img/inventory.img"
echo pages > "$img/pages-1.img"
echo "(00.000001) stood-in dump of $id: $status" > "$work/dump.log"
"#,
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    wrapper
}

#[tokio::test]
async fn archive_of_a_real_container_holds_its_frozen_dump_spec_and_rootfs_diff() {
    let tools = tempfile::tempdir().unwrap();
    let wrapper = runc_with_criu_stood_in(tools.path());
    let mut pod = TestPod::set_up_configured(
        oci::busybox_image(),
        "default_runtime = \"runc\"\n",
        &format!("[runtimes.runc]\npath = {wrapper:?}\n"),
        &[r#"{"type":"loopback"}"#],
    )
    .await;
    let id = running_counter(&mut pod).await;
    let location = tools.path().join("counter.tar");
    checkpoint(&mut pod, &id, &location).await.unwrap();

    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(&location).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let bytes = std::fs::read(&location).unwrap();
    let mut names: Vec<String> = tar::Archive::new(&bytes[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "bind.mounts",
            "checkpoint/",
            "checkpoint/inventory.img",
            "checkpoint/pages-1.img",
            "config.dump",
            "deleted.files",
            "dump.log",
            "rootfs-diff.tar",
            "spec.dump",
        ]
    );
    let entries = tar_entries(&bytes);
    // CRIU's part ran while the container was frozen.
    let dump_log = String::from_utf8_lossy(&entries["dump.log"]);
    assert!(dump_log.contains(r#""status": "paused""#), "{dump_log}");
    let config: serde_json::Value = serde_json::from_slice(&entries["config.dump"]).unwrap();
    assert_eq!(config["id"], id.as_str());
    assert_eq!(config["name"], "counter");
    assert_eq!(config["runtime"], "runc");
    assert_eq!(config["rootfsImage"], pod.image.as_str());
    assert!(
        config["rootfsImageRef"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert_eq!(config["restored"], false);
    let spec: serde_json::Value = serde_json::from_slice(&entries["spec.dump"]).unwrap();
    assert_eq!(
        spec["annotations"]["io.kubernetes.cri.container-name"],
        "counter"
    );
    assert_eq!(spec["annotations"]["io.kubernetes.cri.sandbox-name"], "pod");
    assert_eq!(
        spec["annotations"]["io.kubernetes.cri.sandbox-namespace"],
        "default"
    );
    let binds: Vec<serde_json::Value> = serde_json::from_slice(&entries["bind.mounts"]).unwrap();
    let hosts = binds
        .iter()
        .find(|b| b["destination"] == "/etc/hosts")
        .unwrap_or_else(|| panic!("no /etc/hosts in {binds:?}"));
    assert_eq!(hosts["file_type"], "file");

    let diff = tar_entries(&entries["rootfs-diff.tar"]);
    assert_eq!(diff["added"], b"mine\n");
    let counted: u64 = String::from_utf8_lossy(&diff["tmp/count"])
        .trim()
        .parse()
        .unwrap();
    assert!(counted > 0);
    for mount_point in ["etc/hostname", "etc/hosts", "etc/resolv.conf", "dev/shm"] {
        assert!(
            !diff.contains_key(mount_point),
            "{mount_point} in {:?}",
            diff.keys()
        );
    }
    assert!(!diff.contains_key("bin/busybox"), "an image file unchanged");
    let deleted: Vec<String> = serde_json::from_slice(&entries["deleted.files"]).unwrap();
    assert_eq!(deleted, ["/etc/group"]);

    // Frozen while archived: the count in the diff is the one of the dump, and the
    // container counts on from there once thawed.
    assert_counting(&mut pod, &id).await;
    assert!(count(&mut pod, &id).await > counted);
    assert_eq!(
        work_dirs(&pod),
        Vec::<PathBuf>::new(),
        "work directory left"
    );
    // Restoring from the archive is tests/restore.rs's.
    // Another checkpoint of the same container to a new location works too.
    checkpoint(&mut pod, &id, &tools.path().join("second.tar"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_crash_mid_checkpoint_leaves_neither_a_frozen_container_nor_an_archive() {
    let tools = tempfile::tempdir().unwrap();
    let wrapper = runc_with_criu_stood_in(tools.path());
    let mut pod = TestPod::set_up_configured(
        oci::busybox_image(),
        "default_runtime = \"runc\"\n",
        &format!("[runtimes.runc]\npath = {wrapper:?}\n"),
        &[r#"{"type":"loopback"}"#],
    )
    .await;
    let id = running_counter(&mut pod).await;
    std::fs::write(tools.path().join("hang"), b"").unwrap();
    let location = tools.path().join("crash.tar");
    let mut client = pod.c.clone();
    let request = cri::CheckpointContainerRequest {
        container_id: id.clone(),
        location: location.display().to_string(),
        timeout: 120,
    };
    let call = tokio::spawn(async move { client.runtime.checkpoint_container(request).await });
    let hanging = tools.path().join("hanging");
    for _ in 0..200 {
        if hanging.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dump_pid: i32 = std::fs::read_to_string(&hanging)
        .expect("the checkpoint never reached the dump")
        .trim()
        .parse()
        .unwrap();
    // Mid-dump: the location is claimed and the container frozen.
    assert!(location.exists());
    assert!(!work_dirs(&pod).is_empty());
    pod.d.kill();
    assert!(call.await.unwrap().is_err(), "crustd died mid-call");
    // SAFETY: kill(2) of the stand-in dump process this test's wrapper started.
    unsafe { libc::kill(dump_pid, libc::SIGKILL) };

    pod.d.start_again().await;
    pod.c = pod.d.client().await;
    assert!(!location.exists(), "the half-written archive is left");
    assert_eq!(
        work_dirs(&pod),
        Vec::<PathBuf>::new(),
        "work directory left"
    );
    assert_counting(&mut pod, &id).await;
}
