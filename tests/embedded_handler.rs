//! End-to-end: the embedded runtime handler (youki's libcontainer in crust-monitor and
//! crustd), with no runtime binary: a pod's containers run, log, exec, take resource
//! updates, stop and go, and what the handler cannot do is refused clearly.

mod support;

use std::fs;
use std::time::{Duration, Instant};

use crust_proto::cri;
use support::oci;
use support::pod::TestPod;
use tonic::Code;

async fn exec(p: &mut TestPod, id: &str, cmd: &[&str]) -> cri::ExecSyncResponse {
    p.c.runtime
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 10,
        })
        .await
        .unwrap()
        .into_inner()
}

/// Processes whose command line names `needle`.
fn processes_naming(needle: &str) -> Vec<String> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(needle))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn containers_run_exec_update_and_stop_without_a_runtime_binary() {
    let mut p = TestPod::set_up_configured(
        oci::busybox_image(),
        "default_runtime = \"embedded\"\n",
        "",
        &[r#"{"type":"loopback"}"#],
    )
    .await;
    let state = p.d.dir().join("state/runtime");

    let a = p
        .run(p.config(
            "a",
            &["/bin/sh", "-c", "echo hello-from-embedded; exec sleep 1000"],
        ))
        .await;
    let b = p.run(p.config("b", &["/bin/sleep", "1000"])).await;
    // libcontainer's state, not runc's.
    assert!(state.join("embedded").join(&a).join("state.json").is_file());
    let runc: Vec<_> = fs::read_dir(state.join("runc"))
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(runc.is_empty(), "runc state: {runc:?}");

    let status =
        p.c.runtime
            .container_status(cri::ContainerStatusRequest {
                container_id: a.clone(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
    assert_eq!(status.state, cri::ContainerState::ContainerRunning as i32);

    // The log, through the monitor that created the container itself.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = fs::read_to_string(p.logs.join("a").join("0.log")).unwrap_or_default();
        if log.contains("stdout F hello-from-embedded") {
            break;
        }
        assert!(Instant::now() < deadline, "log: {log:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // ExecSync: output, stderr, exit code, and the container's namespaces.
    let r = exec(&mut p, &a, &["sh", "-c", "echo out; echo err >&2; exit 7"]).await;
    assert_eq!(
        (r.stdout.as_slice(), r.stderr.as_slice(), r.exit_code),
        (&b"out\n"[..], &b"err\n"[..], 7)
    );
    let ns = |r: cri::ExecSyncResponse| {
        assert_eq!(
            r.exit_code,
            0,
            "stderr: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        String::from_utf8(r.stdout).unwrap()
    };
    for kind in ["net", "ipc", "uts"] {
        let path = format!("/proc/self/ns/{kind}");
        let in_a = ns(exec(&mut p, &a, &["stat", "-L", "-c", "%i", &path]).await);
        let in_b = ns(exec(&mut p, &b, &["stat", "-L", "-c", "%i", &path]).await);
        assert!(!in_a.is_empty());
        assert_eq!(in_a, in_b, "{kind}");
    }
    // The pod's PID namespace (no namespace options: POD), whose pid 1 is the pause.
    let pid1 = ns(exec(&mut p, &b, &["cat", "/proc/1/cmdline"]).await);
    assert!(pid1.starts_with("/pause"), "{pid1:?}");

    // UpdateContainerResources through libcgroups.
    p.c.runtime
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: a.clone(),
            linux: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 96 << 20,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let pid = status_pid(&mut p, &a).await;
    let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let memory = cgroup
        .lines()
        .find_map(|l| l.split_once(":memory:").map(|(_, path)| path.to_owned()))
        .expect("memory cgroup");
    let limit = fs::read_to_string(format!(
        "/sys/fs/cgroup/memory{memory}/memory.limit_in_bytes"
    ))
    .unwrap();
    assert_eq!(limit.trim(), (96u64 << 20).to_string());
    // Inside, /sys/fs/cgroup is the container's own cgroup (in the pod's PID namespace
    // libcontainer's own v1 cgroup mount would look its pid up on the host's /proc),
    // read-only, with every hierarchy.
    let inside = ns(exec(
        &mut p,
        &a,
        &["cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes"],
    )
    .await);
    assert_eq!(inside.trim(), (96u64 << 20).to_string());
    let r = exec(&mut p, &a, &["mkdir", "/sys/fs/cgroup/memory/escape"]).await;
    assert_ne!(r.exit_code, 0, "the cgroup mount is writable");
    for hierarchy in ["cpu", "pids", "devices"] {
        let listed = ns(exec(&mut p, &b, &["ls", &format!("/sys/fs/cgroup/{hierarchy}")]).await);
        assert!(listed.contains("cgroup.procs"), "{hierarchy}: {listed:?}");
    }

    // CRIU needs an OCI runtime binary: refused, nothing changed.
    let err =
        p.c.runtime
            .checkpoint_container(cri::CheckpointContainerRequest {
                container_id: a.clone(),
                location: p.d.dir().join("a.tar").display().to_string(),
                timeout: 30,
            })
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("embedded"), "{err:?}");
    assert_eq!(
        ns(exec(&mut p, &a, &["echo", "still-here"]).await),
        "still-here\n"
    );

    // A process exec'd into `a` that outlives the exec: the pod shares one PID
    // namespace, so it dies only by a kill of everything in a's cgroups, which crust
    // finds without libcgroups (runtime/src/cgroupfs.rs).
    let r = exec(&mut p, &a, &["sh", "-c", "sleep 4242 >/dev/null 2>&1 &"]).await;
    assert_eq!(r.exit_code, 0);
    assert_eq!(processes_naming("sleep 4242").len(), 1);
    let pid = status_pid(&mut p, &a).await;
    let cgroup_dirs: Vec<String> = fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            if path == "/" {
                // A hierarchy the container was not placed in.
                return None;
            }
            let hierarchy = match controllers {
                "" => "unified".to_string(),
                c => c.strip_prefix("name=").unwrap_or(c).to_string(),
            };
            Some(format!("/sys/fs/cgroup/{hierarchy}{path}"))
        })
        .filter(|d| std::path::Path::new(d).is_dir())
        .collect();
    assert!(!cgroup_dirs.is_empty());

    // Stop (the sleep ignores nothing: SIGTERM ends it), remove, nothing left.
    for id in [&a, &b] {
        p.c.runtime
            .stop_container(cri::StopContainerRequest {
                container_id: id.to_string(),
                timeout: 5,
            })
            .await
            .unwrap();
        p.c.runtime
            .remove_container(cri::RemoveContainerRequest {
                container_id: id.to_string(),
            })
            .await
            .unwrap();
    }
    let sandbox = p.sandbox.clone();
    p.stop_and_remove_pod(&sandbox).await;
    let left: Vec<_> = fs::read_dir(state.join("embedded"))
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "embedded state left: {left:?}");
    let kept: Vec<_> = cgroup_dirs
        .iter()
        .filter(|d| std::path::Path::new(d).exists())
        .collect();
    assert!(kept.is_empty(), "cgroups left: {kept:?}");
    assert!(
        processes_naming("sleep 4242").is_empty(),
        "the exec'd sleep survived"
    );
    let dir = p.d.dir().display().to_string();
    let monitors: Vec<_> = processes_naming(&dir)
        .into_iter()
        .filter(|c| c.contains("crust-monitor"))
        .collect();
    assert!(monitors.is_empty(), "{monitors:?}");
}

async fn status_pid(p: &mut TestPod, id: &str) -> i64 {
    let r =
        p.c.runtime
            .container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: true,
            })
            .await
            .unwrap()
            .into_inner();
    let info: serde_json::Value = serde_json::from_str(&r.info["info"]).unwrap();
    info["pid"].as_i64().expect("pid in the verbose info")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_spec_fails_create_with_libcontainers_reason_and_leaves_nothing() {
    let mut p = TestPod::set_up_configured(
        oci::busybox_image(),
        "default_runtime = \"embedded\"\n",
        "",
        &[r#"{"type":"loopback"}"#],
    )
    .await;
    let err = p
        .create(p.config("bad", &["/no/such/binary"]))
        .await
        .map(|_| ())
        .unwrap_err();
    // libcontainer checks the executable at create, as runc does.
    assert_ne!(err.code(), Code::Ok);
    assert!(err.message().contains("embedded"), "{err:?}");
    // Only the pod's pause is left in the handler's state.
    let left: Vec<_> = fs::read_dir(p.d.dir().join("state/runtime/embedded"))
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name())
                .filter(|name| *name != *p.sandbox)
                .collect()
        })
        .unwrap_or_default();
    let inside: Vec<_> = left
        .iter()
        .flat_map(|id| fs::read_dir(p.d.dir().join("state/runtime/embedded").join(id)))
        .flat_map(|r| r.flatten().map(|e| e.file_name()))
        .collect();
    assert!(
        left.is_empty(),
        "embedded state left: {left:?} holding {inside:?}"
    );
}
