//! End-to-end: CreateContainer from a checkpoint archive and StartContainer restoring
//! it (CRI-O's restore), with real runc, CRIU where it works, and the real overlay.
//!
//! CRIU 3.17 cannot run on this VM's kernel (see tests/checkpoint.rs), so where
//! `criu check` fails the archive is made with CRIU's dump stood in, and the restore
//! must fail with FailedPrecondition quoting CRIU and leave nothing once removed.
//! Where CRIU works, the archive is a real dump and the restore must run the
//! counter on. So that the monitor's restore path is proven on any machine, one test
//! stands in for CRIU's part of `restore` too (the wrapper creates and starts the
//! container from the bundle runc was handed): everything around CRIU is crust's own.

mod support;

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crust_proto::cri;
use support::oci;
use support::pod::TestPod;
use tonic::Code;

/// A counter that deletes an image file and adds one of its own (the rootfs diff),
/// then counts into /tmp/count five times a second.
const COUNTER: &str = "rm -f /etc/group; echo mine > /added; i=0; \
                       while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.2; done";

fn criu_works() -> bool {
    std::process::Command::new("criu")
        .arg("check")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// runc, except that `checkpoint` writes stand-in CRIU images and runc's
/// descriptors.json (no dump), and, while
/// a file `fake-restore` is beside it, `restore` creates and starts the container
/// from the bundle and pid file it was given instead of asking CRIU, logging the
/// options it got to `<work-path>/restore.log`.
fn runc_with_criu_stood_in(dir: &Path) -> PathBuf {
    let wrapper = dir.join("runc-fake-criu");
    std::fs::write(
        &wrapper,
        r#"#!/bin/sh
here=$(dirname "$0")
case " $* " in
  *" checkpoint "*) verb=checkpoint;;
  *" restore "*) [ -e "$here/fake-restore" ] || exec /usr/sbin/runc "$@"; verb=restore;;
  *) exec /usr/sbin/runc "$@";;
esac
all="$*"
root=''; img=''; work=''; id=''; bundle=''; pidfile=''; log=''
while [ $# -gt 0 ]; do
  case "$1" in
    --root) root="$2"; shift 2;;
    --log) log="$2"; shift 2;;
    --image-path) img="$2"; shift 2;;
    --work-path) work="$2"; shift 2;;
    --bundle) bundle="$2"; shift 2;;
    --pid-file) pidfile="$2"; shift 2;;
    --log-format|--manage-cgroups-mode) shift 2;;
    --*|checkpoint|restore) shift;;
    *) id="$1"; shift;;
  esac
done
if [ $verb = checkpoint ]; then
  mkdir -p "$img"
  echo inventory > "$img/inventory.img"
  echo pages > "$img/pages-1.img"
  # runc's own record of the container's stdio, which its restore reads first.
  echo '["/dev/null","pipe:[1]","pipe:[2]"]' > "$img/descriptors.json"
  echo "(00.000001) stood-in dump of $id" > "$work/dump.log"
  exit 0
fi
echo "(00.000001) stood-in restore: $all; images: $(echo $(ls "$img"))" > "$work/restore.log"
/usr/sbin/runc --root "$root" --log "$log" --log-format json create --bundle "$bundle" --pid-file "$pidfile" "$id" || exit 1
exec /usr/sbin/runc --root "$root" --log "$log" --log-format json start "$id"
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

/// A pod whose runc handler is the wrapper.
async fn pod_with_wrapper(tools: &Path) -> TestPod {
    let wrapper = runc_with_criu_stood_in(tools);
    TestPod::set_up_configured(
        oci::busybox_image(),
        "default_runtime = \"runc\"\n",
        &format!("[runtimes.runc]\npath = {wrapper:?}\n"),
        &[r#"{"type":"loopback"}"#],
    )
    .await
}

async fn status(pod: &mut TestPod, id: &str) -> (cri::ContainerStatus, serde_json::Value) {
    let r = pod
        .c
        .runtime
        .container_status(cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info = serde_json::from_str(&r.info["info"]).unwrap();
    (r.status.unwrap(), info)
}

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

/// Waits until the counter's count passes `above`; the count then.
async fn counts_past(pod: &mut TestPod, id: &str, above: u64) -> u64 {
    for _ in 0..100 {
        let n = count(pod, id).await;
        if n > above {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the counter {id} did not count past {above}");
}

async fn checkpoint(pod: &mut TestPod, id: &str, location: &Path) {
    pod.c
        .runtime
        .checkpoint_container(cri::CheckpointContainerRequest {
            container_id: id.into(),
            location: location.display().to_string(),
            timeout: 60,
        })
        .await
        .unwrap_or_else(|e| panic!("checkpoint of {id}: {e:?}"));
}

/// A running counter checkpointed into `location`; its id.
async fn checkpointed_counter(pod: &mut TestPod, location: &Path) -> String {
    let id = pod.run(pod.config("counter", &["sh", "-c", COUNTER])).await;
    counts_past(pod, &id, 0).await;
    checkpoint(pod, &id, location).await;
    id
}

/// The request that restores `archive`: name `restored`, with labels and
/// annotations of its own.
fn restore_config(pod: &TestPod, archive: &Path) -> cri::ContainerConfig {
    let mut config = pod.config("restored", &["ignored", "by", "a", "restore"]);
    config.image.as_mut().unwrap().image = archive.display().to_string();
    config.labels.insert("restored".into(), "yes".into());
    config.annotations = HashMap::from([("io.kubernetes.container.hash".into(), "7".into())]);
    config
}

/// The metadata of what crust holds for container `id`, to prove it is all gone.
fn traces_of(pod: &TestPod, id: &str) -> Vec<String> {
    let state = pod.d.dir().join("state");
    let root = pod.d.root();
    let mut found: Vec<String> = [
        state.join("bundles").join(id),
        state.join("containers").join(id),
        state.join("runtime/runc").join(id),
        root.join("containers").join(id),
        root.join("restores").join(id),
    ]
    .into_iter()
    .filter(|p| std::fs::symlink_metadata(p).is_ok())
    .map(|p| p.display().to_string())
    .collect();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    found.extend(
        mountinfo
            .lines()
            .filter(|l| l.contains(id))
            .map(|l| format!("mount {l}")),
    );
    for proc in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(proc.path().join("cmdline"))
            && String::from_utf8_lossy(&cmdline).contains(id)
        {
            found.push(format!(
                "process {}: {}",
                proc.file_name().to_string_lossy(),
                String::from_utf8_lossy(&cmdline).replace('\0', " ")
            ));
        }
    }
    found
}

async fn remove(pod: &mut TestPod, id: &str) {
    pod.c
        .runtime
        .remove_container(cri::RemoveContainerRequest {
            container_id: id.into(),
        })
        .await
        .unwrap();
}

async fn start(pod: &mut TestPod, id: &str) -> Result<(), tonic::Status> {
    pod.c
        .runtime
        .start_container(cri::StartContainerRequest {
            container_id: id.into(),
        })
        .await
        .map(drop)
}

#[tokio::test]
async fn a_container_from_an_archive_has_its_image_and_changes_then_restores_or_names_criu() {
    let tools = tempfile::tempdir().unwrap();
    let real_criu = criu_works();
    let mut pod = if real_criu {
        TestPod::on_handler(oci::busybox_image(), "runc").await
    } else {
        pod_with_wrapper(tools.path()).await
    };
    let archive = tools.path().join("counter.tar");
    let original = checkpointed_counter(&mut pod, &archive).await;
    let (original_status, _) = status(&mut pod, &original).await;
    // The original goes, as when a pod is restored elsewhere.
    remove(&mut pod, &original).await;

    let id = pod.create(restore_config(&pod, &archive)).await.unwrap();
    assert_ne!(id, original);
    let (st, info) = status(&mut pod, &id).await;
    assert_eq!(st.state, cri::ContainerState::ContainerCreated as i32);
    assert_eq!(st.metadata.as_ref().unwrap().name, "restored");
    assert_eq!(st.image.as_ref().unwrap().image, pod.image);
    assert_eq!(st.image_ref, original_status.image_ref);
    assert_eq!(st.labels["restored"], "yes");
    assert_eq!(st.annotations["io.kubernetes.container.hash"], "7");
    // The process is the checkpointed one, not the request's.
    assert_eq!(
        info["runtimeSpec"]["process"]["args"],
        serde_json::json!(["sh", "-c", COUNTER])
    );
    // The writable layer holds the diff, and a whiteout where the image's file was.
    let upper = pod.d.root().join("containers").join(&id).join("fs");
    assert_eq!(std::fs::read(upper.join("added")).unwrap(), b"mine\n");
    assert!(upper.join("tmp/count").is_file());
    let group = std::fs::symlink_metadata(upper.join("etc/group")).unwrap();
    assert!(group.file_type().is_char_device() && group.rdev() == 0);
    let rootfs = pod
        .d
        .dir()
        .join("state/containers")
        .join(&id)
        .join("rootfs");
    assert!(rootfs.join("bin/busybox").exists(), "the image is below");
    assert!(!rootfs.join("etc/group").exists());
    // Private: CRIU's images are the container's memory.
    let dir = pod.d.root().join("restores").join(&id);
    assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
    assert!(dir.join("checkpoint").is_dir());

    let started = start(&mut pod, &id).await;
    if real_criu {
        started.unwrap_or_else(|e| panic!("criu check passes, the restore failed: {e:?}"));
        let (st, info) = status(&mut pod, &id).await;
        assert_eq!(st.state, cri::ContainerState::ContainerRunning as i32);
        assert!(info["pid"].as_i64().unwrap() > 0);
        counts_past(&mut pod, &id, 0).await;
    } else {
        let err = started.expect_err("criu check fails here, so the restore cannot succeed");
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        let message = err.message();
        assert!(
            message.contains("criu log:") && message.contains("Error"),
            "{message}"
        );
        eprintln!("restore refused as it should be here: {message}");
        let (st, _) = status(&mut pod, &id).await;
        assert_eq!(st.state, cri::ContainerState::ContainerExited as i32);
        assert_eq!(st.reason, "Error");
        assert!(st.message.contains("criu log:"), "{st:?}");
        // Exited, never started: a second start is refused.
        let again = start(&mut pod, &id).await.unwrap_err();
        assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
    }
    remove(&mut pod, &id).await;
    assert_eq!(traces_of(&pod, &id), Vec::<String>::new());
    let left = pod
        .c
        .runtime
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn a_restore_runs_under_the_monitor_and_a_checkpoint_of_it_says_restored() {
    let tools = tempfile::tempdir().unwrap();
    let mut pod = pod_with_wrapper(tools.path()).await;
    let archive = tools.path().join("counter.tar");
    let original = checkpointed_counter(&mut pod, &archive).await;
    remove(&mut pod, &original).await;
    std::fs::write(tools.path().join("fake-restore"), b"").unwrap();

    let id = pod.create(restore_config(&pod, &archive)).await.unwrap();
    let dir = pod.d.root().join("restores").join(&id);
    start(&mut pod, &id).await.unwrap();
    let (st, info) = status(&mut pod, &id).await;
    assert_eq!(st.state, cri::ContainerState::ContainerRunning as i32);
    let pid = info["pid"].as_i64().unwrap();
    assert!(pid > 0);
    // The restored process is the monitor's child, as a created one is.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let ppid: i64 = stat
        .rsplit(") ")
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(ppid, info["monitorPid"].as_i64().unwrap());
    // runc restore was asked as CRI-O asks it, from the extracted images.
    let log = std::fs::read_to_string(dir.join("restore.log")).unwrap();
    for option in [
        "restore --detach --image-path",
        "--file-locks",
        "--manage-cgroups-mode soft",
        "images: descriptors.json inventory.img pages-1.img",
    ] {
        assert!(log.contains(option), "{option} not in {log}");
    }
    assert!(
        !dir.join("checkpoint").exists(),
        "CRIU's images are kept after the restore"
    );
    // It runs the checkpoint's command with the rootfs the diff made, and logs.
    counts_past(&mut pod, &id, 0).await;
    let out = pod
        .c
        .runtime
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["cat".into(), "/added".into()],
            timeout: 10,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.stdout, b"mine\n");

    // A checkpoint of the restored container says so.
    let second = tools.path().join("second.tar");
    checkpoint(&mut pod, &id, &second).await;
    let mut tar = tar::Archive::new(std::fs::File::open(&second).unwrap());
    let mut config = None;
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap() == Path::new("config.dump") {
            let mut text = String::new();
            entry.read_to_string(&mut text).unwrap();
            config = Some(serde_json::from_str::<serde_json::Value>(&text).unwrap());
        }
    }
    let config = config.expect("no config.dump");
    assert_eq!(config["restored"], true);
    assert_eq!(config["id"], id.as_str());
    assert_eq!(config["name"], "restored");

    // It exits as any container does: stopped, its exit recorded by the monitor.
    pod.c
        .runtime
        .stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 1,
        })
        .await
        .unwrap();
    let st = pod.wait_exit(&id).await;
    assert_eq!(st.state, cri::ContainerState::ContainerExited as i32);
    remove(&mut pod, &id).await;
    assert_eq!(traces_of(&pod, &id), Vec::<String>::new());
}

/// A tar of `(name, type, data)` entries with names written raw, as a hostile
/// client would.
fn raw_tar(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_entry_type(*kind);
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        if kind.is_symlink() {
            header.set_link_name("/etc").unwrap();
        }
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

#[tokio::test]
async fn hostile_and_malformed_archives_are_refused_and_leave_nothing() {
    use tar::EntryType::{Directory, Regular, Symlink};
    let mut pod = TestPod::set_up(oci::busybox_image(), "").await;
    let tools = tempfile::tempdir().unwrap();
    let outside = tools.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let config_dump = serde_json::json!({"id": "x", "name": "c", "rootfsImage": pod.image})
        .to_string()
        .into_bytes();
    let spec_dump = br#"{"process":{"args":["sleep","60"],"cwd":"/"}}"#;
    // A rootfs diff whose symlink leads out, and a file written through it.
    let mut diff = tar::Builder::new(Vec::new());
    let mut link = tar::Header::new_gnu();
    link.set_entry_type(Symlink);
    link.set_size(0);
    diff.append_link(&mut link, "escape", &outside).unwrap();
    let mut file = tar::Header::new_gnu();
    file.set_size(4);
    file.set_mode(0o644);
    diff.append_data(&mut file, "escape/planted", &b"evil"[..])
        .unwrap();
    let evil_diff = diff.into_inner().unwrap();
    let huge = {
        let mut header = tar::Header::new_gnu();
        header.set_path("checkpoint/pages-1.img").unwrap();
        header.set_size(1 << 40);
        header.set_cksum();
        let mut bytes = header.as_bytes().to_vec();
        bytes.resize(8192, 0);
        bytes
    };
    let base = |extra: Vec<(&'static str, tar::EntryType, &'static [u8])>| {
        let mut entries: Vec<(&str, tar::EntryType, &[u8])> = vec![
            ("checkpoint/", Directory, b""),
            ("checkpoint/inventory.img", Regular, b"i"),
            ("config.dump", Regular, &config_dump),
            ("spec.dump", Regular, spec_dump),
        ];
        entries.extend(extra);
        raw_tar(&entries)
    };
    let leak = |b: Vec<u8>| -> &'static [u8] { Box::leak(b.into_boxed_slice()) };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("dotdot", base(vec![("../planted", Regular, b"x")]), "'..'"),
        (
            "absolute",
            base(vec![("/etc/crust-restore-planted", Regular, b"x")]),
            "absolute",
        ),
        (
            "symlink",
            base(vec![("checkpoint/etc", Symlink, b"")]),
            "Symlink",
        ),
        ("huge", huge, "more than the limit"),
        (
            "no-config",
            raw_tar(&[
                ("checkpoint/", Directory, b""),
                ("spec.dump", Regular, spec_dump),
            ]),
            "has no config.dump",
        ),
        (
            "bad-json",
            raw_tar(&[
                ("checkpoint/", Directory, b""),
                ("config.dump", Regular, b"{"),
                ("spec.dump", Regular, spec_dump),
            ]),
            "config.dump:",
        ),
        (
            "diff-escape",
            base(vec![("rootfs-diff.tar", Regular, leak(evil_diff))]),
            "rootfs-diff.tar",
        ),
        (
            "not-a-tar",
            b"just some bytes".repeat(100),
            "checkpoint archive",
        ),
    ];
    for (name, bytes, why) in cases {
        let archive = tools.path().join(format!("{name}.tar"));
        std::fs::write(&archive, bytes).unwrap();
        let err = pod
            .create(restore_config(&pod, &archive))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{name}: {err:?}");
        assert!(err.message().contains(why), "{name}: {err:?}");
    }
    // A checkpoint of an image this node lacks names it.
    let other = serde_json::json!({"rootfsImage": "registry.invalid/gone:1"})
        .to_string()
        .into_bytes();
    let archive = tools.path().join("other-image.tar");
    std::fs::write(
        &archive,
        raw_tar(&[
            ("checkpoint/", Directory, b""),
            ("config.dump", Regular, &other),
            ("spec.dump", Regular, spec_dump),
        ]),
    )
    .unwrap();
    let err = pod
        .create(restore_config(&pod, &archive))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(
        err.message().contains("registry.invalid/gone:1") && err.message().contains("pull"),
        "{err:?}"
    );

    assert!(!Path::new("/etc/crust-restore-planted").exists());
    assert!(!outside.join("planted").exists(), "the rootfs diff escaped");
    assert!(!pod.d.root().join("planted").exists());
    let restores: Vec<_> = std::fs::read_dir(pod.d.root().join("restores"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(restores.is_empty(), "left {restores:?}");
    let containers = pod
        .c
        .runtime
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(containers.is_empty(), "{containers:?}");
    let layers: Vec<_> = std::fs::read_dir(pod.d.root().join("containers"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(layers.is_empty(), "writable layers left: {layers:?}");
    // The name was released each time: a plain container may take it.
    pod.create(pod.config("restored", &["sleep", "1"]))
        .await
        .unwrap();
}
