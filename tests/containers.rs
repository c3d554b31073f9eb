//! End-to-end: containers of a real crustd under crust-monitor, with real runc, CNI
//! plugins and busybox images pulled from a registry on loopback.

mod support;

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use crust_proto::cri;
use serde_json::json;
use support::metrics;
use support::oci::{self, ImageSpec};
use support::pod::TestPod;
use tonic::Code;

/// A daemon with a network, a pulled busybox image and one running pod.
type Pod = TestPod;

async fn pod_with_image(image: ImageSpec) -> Pod {
    TestPod::set_up(image, "").await
}

async fn pod() -> Pod {
    pod_with_image(oci::busybox_image()).await
}

impl Pod {
    async fn status(&mut self, id: &str) -> (cri::ContainerStatus, serde_json::Value) {
        let r = self
            .c
            .runtime
            .container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: true,
            })
            .await
            .unwrap()
            .into_inner();
        (
            r.status.unwrap(),
            serde_json::from_str(&r.info["info"]).unwrap(),
        )
    }

    /// The container's log as (stream, tag, text) records.
    fn log(&self, name: &str) -> Vec<(String, String, String)> {
        let text = fs::read_to_string(self.logs.join(name).join("0.log")).unwrap_or_default();
        text.lines()
            .map(|l| {
                let mut parts = l.splitn(4, ' ');
                let time = parts.next().unwrap();
                assert!(
                    time.ends_with('Z') && time.contains('T'),
                    "bad time in {l:?}"
                );
                let stream = parts.next().unwrap().to_string();
                let tag = parts.next().unwrap().to_string();
                (stream, tag, parts.next().unwrap_or("").to_string())
            })
            .collect()
    }

    fn stdout(&self, name: &str) -> String {
        self.log(name)
            .iter()
            .filter(|(s, _, _)| s == "stdout")
            .map(|(_, _, t)| format!("{t}\n"))
            .collect()
    }

    async fn exec(
        &mut self,
        id: &str,
        cmd: &[&str],
        timeout: i64,
    ) -> Result<cri::ExecSyncResponse, tonic::Status> {
        self.c
            .runtime
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout,
            })
            .await
            .map(|r| r.into_inner())
    }

    async fn stop(&mut self, id: &str, timeout: i64) {
        self.c
            .runtime
            .stop_container(cri::StopContainerRequest {
                container_id: id.into(),
                timeout,
            })
            .await
            .unwrap();
    }

    async fn remove(&mut self, id: &str) {
        self.c
            .runtime
            .remove_container(cri::RemoveContainerRequest {
                container_id: id.into(),
            })
            .await
            .unwrap();
    }
}

fn sh(script: &str) -> Vec<&str> {
    vec!["/bin/sh", "-c", script]
}

#[tokio::test(flavor = "multi_thread")]
async fn command_args_env_workdir_and_user_merge_with_the_image() {
    let mut image = oci::busybox_image();
    image.config = json!({
        "Entrypoint": ["/bin/sh", "-c"],
        "Cmd": ["echo image-cmd $A $B; pwd; id -u; id -g"],
        "Env": ["PATH=/bin", "A=image-a", "B=image-b"],
        "WorkingDir": "/tmp",
        "User": "1000:1000",
    });
    let mut p = pod_with_image(image).await;
    // The image's entrypoint and cmd, env, working dir and user.
    let id = p.run(p.config("plain", &[])).await;
    assert_eq!(p.wait_exit(&id).await.exit_code, 0);
    assert_eq!(
        p.stdout("plain"),
        "image-cmd image-a image-b\n/tmp\n1000\n1000\n"
    );
    // args override cmd; envs add and override; working_dir; run_as_user.
    let mut c = p.config("override", &[]);
    c.args = vec!["echo args $A $B $C; pwd; id -u; id -G".into()];
    c.envs = vec![
        cri::KeyValue {
            key: "B".into(),
            value: "cri-b".into(),
        },
        cri::KeyValue {
            key: "C".into(),
            value: "cri-c".into(),
        },
    ];
    c.working_dir = "/home".into();
    c.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: 0 }),
            supplemental_groups: vec![2000],
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = p.run(c).await;
    assert_eq!(p.wait_exit(&id).await.exit_code, 0);
    assert_eq!(
        p.stdout("override"),
        "args image-a cri-b cri-c\n/home\n0\n0 2000\n"
    );
    // command overrides the entrypoint (and drops the image's cmd); a user by name
    // resolves through the image's /etc/passwd and /etc/group.
    let mut c = p.config("named", &["/bin/sh", "-c", "id -u; id -G; echo $HOME"]);
    c.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            run_as_username: "app".into(),
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = p.run(c).await;
    let st = p.wait_exit(&id).await;
    assert_eq!(st.exit_code, 0);
    assert_eq!(p.stdout("named"), "1000\n1000 2000\n/home/app\n");
    let user = st.user.unwrap().linux.unwrap();
    assert_eq!((user.uid, user.gid), (1000, 1000));
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_exit_codes_reasons_and_reopen() {
    let mut p = pod().await;
    let long = "x".repeat(40 * 1024);
    let script =
        format!("echo out; echo err >&2; printf partial; sleep 0.2; echo; echo {long}; exit 3");
    let id = p.run(p.config("logs", &sh(&script))).await;
    let st = p.wait_exit(&id).await;
    assert_eq!(st.exit_code, 3);
    assert_eq!(st.reason, "Error");
    assert!(st.finished_at >= st.started_at && st.started_at >= st.created_at);
    assert_eq!(st.log_path, p.logs.join("logs/0.log").display().to_string());
    let log = p.log("logs");
    assert!(
        log.contains(&("stdout".into(), "F".into(), "out".into())),
        "{log:?}"
    );
    assert!(
        log.contains(&("stderr".into(), "F".into(), "err".into())),
        "{log:?}"
    );
    // "partial" arrived before its newline: a P record, then the rest as F.
    let joined: String = log
        .iter()
        .filter(|(s, _, _)| s == "stdout")
        .map(|(_, t, x)| {
            if t == "P" {
                x.clone()
            } else {
                format!("{x}\n")
            }
        })
        .collect();
    assert!(joined.contains("partial\n"), "{joined}");
    assert!(joined.contains(&format!("{long}\n")));
    assert!(
        log.iter()
            .any(|(_, t, x)| t == "P" && x.starts_with("xxxx")),
        "long line not split"
    );

    let ok = p.run(p.config("ok", &["/bin/true"])).await;
    let st = p.wait_exit(&ok).await;
    assert_eq!((st.exit_code, st.reason.as_str()), (0, "Completed"));

    // Rotation: kubelet renames the file and asks the runtime to reopen.
    let id = p
        .run(p.config(
            "rotate",
            &sh("i=0; while true; do echo line$i; i=$((i+1)); sleep 0.05; done"),
        ))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let path = p.logs.join("rotate/0.log");
    fs::rename(&path, p.logs.join("rotate/0.log.1")).unwrap();
    p.c.runtime
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fresh = fs::read_to_string(&path).unwrap();
    assert!(fresh.lines().count() >= 2, "{fresh}");
    p.stop(&id, 0).await;
    let err =
        p.c.runtime
            .reopen_container_log(cri::ReopenContainerLogRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_kills_what_ignores_sigterm_and_stops_are_idempotent() {
    let mut p = pod().await;
    let id = p
        .run(p.config(
            "stubborn",
            &sh("trap '' TERM; echo trapped; while true; do sleep 0.1; done"),
        ))
        .await;
    // A stop before the shell has run `trap` would kill it with the TERM itself.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !p
        .log("stubborn")
        .iter()
        .any(|(_, _, text)| text == "trapped")
    {
        assert!(Instant::now() < deadline, "the trap was never set");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, info) = p.status(&id).await;
    let pid = info["pid"].as_i64().unwrap();
    let start = Instant::now();
    p.stop(&id, 1).await;
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "{took:?}"
    );
    let st = p.wait_exit(&id).await;
    assert_eq!(st.exit_code, 137);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists()
            || fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap()
                .contains(") Z")
    );
    p.stop(&id, 10).await;
    // A polite one stops at once on SIGTERM.
    let id2 = p.run(p.config("polite", &["/bin/sleep", "1000"])).await;
    let start = Instant::now();
    p.stop(&id2, 30).await;
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(p.wait_exit(&id2).await.exit_code, 143);
    p.remove(&id).await;
    p.remove(&id).await;
    let err =
        p.c.runtime
            .container_status(cri::ContainerStatusRequest {
                container_id: id.clone(),
                verbose: false,
            })
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // The log stays after removal.
    assert!(p.logs.join("stubborn/0.log").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn security_context_mounts_and_resources() {
    let mut p = pod().await;
    let host_dir = p.d.dir().join("shared");
    fs::create_dir_all(&host_dir).unwrap();
    fs::write(host_dir.join("hello"), "from host").unwrap();
    let mut c = p.config("secure", &sh("cat /data/hello; echo; touch /x 2>/dev/null && echo rw-root || echo ro-root; touch /data/y 2>/dev/null && echo rw-mount || echo ro-mount; grep CapEff /proc/self/status; sleep 1000"));
    c.mounts = vec![cri::Mount {
        container_path: "/data".into(),
        host_path: host_dir.display().to_string(),
        readonly: true,
        propagation: cri::MountPropagation::PropagationHostToContainer as i32,
        ..Default::default()
    }];
    c.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            cpu_shares: 512,
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        }),
        security_context: Some(cri::LinuxContainerSecurityContext {
            readonly_rootfs: true,
            capabilities: Some(cri::Capability {
                drop_capabilities: vec!["ALL".into()],
                add_capabilities: vec!["NET_ADMIN".into()],
                ..Default::default()
            }),
            seccomp: Some(cri::SecurityProfile {
                profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
    });
    let id = p.run(c).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !p.stdout("secure").contains("CapEff") {
        assert!(Instant::now() < deadline, "{:?}", p.log("secure"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = p.stdout("secure");
    assert!(out.starts_with("from host\nro-root\nro-mount\n"), "{out}");
    // CAP_NET_ADMIN is bit 12 and nothing else.
    assert!(out.contains("CapEff:\t0000000000001000"), "{out}");
    let (_, info) = p.status(&id).await;
    let cgroup = info["runtimeSpec"]["linux"]["cgroupsPath"]
        .as_str()
        .unwrap()
        .to_string();
    let read = |ctrl: &str, file: &str| {
        fs::read_to_string(format!("/sys/fs/cgroup/{ctrl}{cgroup}/{file}"))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(read("cpu", "cpu.shares"), "512");
    assert_eq!(
        read("memory", "memory.limit_in_bytes"),
        (64u64 << 20).to_string()
    );
    // UpdateContainerResources goes through runc update and shows in the cgroup.
    p.c.runtime
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(cri::LinuxContainerResources {
                cpu_shares: 256,
                memory_limit_in_bytes: 96 << 20,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(read("cpu", "cpu.shares"), "256");
    assert_eq!(
        read("memory", "memory.limit_in_bytes"),
        (96u64 << 20).to_string()
    );
    let (st, _) = p.status(&id).await;
    assert_eq!(st.resources.unwrap().linux.unwrap().cpu_shares, 256);
    p.stop(&id, 0).await;
    p.remove(&id).await;
    assert!(
        !Path::new(&format!("/sys/fs/cgroup/memory{cgroup}")).exists(),
        "cgroup left"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn containers_of_a_pod_share_network_and_ipc_and_exec_sync_works() {
    let mut p = pod().await;
    let a = p.run(p.config("a", &["/bin/sleep", "1000"])).await;
    let b = p.run(p.config("b", &["/bin/sleep", "1000"])).await;
    let ns = |r: cri::ExecSyncResponse| String::from_utf8(r.stdout).unwrap();
    for kind in ["net", "ipc", "uts"] {
        let path = format!("/proc/self/ns/{kind}");
        let in_a = ns(p
            .exec(&a, &["stat", "-L", "-c", "%i", &path], 5)
            .await
            .unwrap());
        let in_b = ns(p
            .exec(&b, &["stat", "-L", "-c", "%i", &path], 5)
            .await
            .unwrap());
        assert!(!in_a.trim().is_empty(), "{kind}");
        assert_eq!(in_a, in_b, "{kind}");
    }
    // Talk over localhost: a listens, b connects.
    let server = p
        .run(p.config("server", &sh("echo hello-from-a | nc -l -p 9000")))
        .await;
    let mut got = String::new();
    for _ in 0..50 {
        let r = p
            .exec(&b, &["sh", "-c", "nc 127.0.0.1 9000 </dev/null"], 5)
            .await
            .unwrap();
        got = ns(r);
        if got.contains("hello") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(got.trim(), "hello-from-a");
    let _ = server;
    // Output, stderr and a non-zero exit code.
    let r = p
        .exec(&a, &["sh", "-c", "echo out; echo err >&2; exit 7"], 5)
        .await
        .unwrap();
    assert_eq!(
        (
            ns(r.clone()),
            String::from_utf8(r.stderr).unwrap(),
            r.exit_code
        ),
        ("out\n".into(), "err\n".into(), 7)
    );
    // The container's user and working dir apply.
    let r = p.exec(&a, &["pwd"], 0).await.unwrap();
    assert_eq!(ns(r), "/\n");
    // A timeout kills the exec'd process.
    let start = Instant::now();
    let err = p
        .exec(&a, &["sh", "-c", "sleep 30; echo late"], 1)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(5));
    let ps = ns(p.exec(&a, &["ps"], 5).await.unwrap());
    assert!(!ps.contains("sleep 30"), "{ps}");
    // ExecSync in an exited container is refused.
    let done = p.run(p.config("done", &["/bin/true"])).await;
    p.wait_exit(&done).await;
    assert_eq!(
        p.exec(&done, &["true"], 1).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
}

/// A container that outgrows its 16 MiB memory limit.
fn oom_config(p: &Pod) -> cri::ContainerConfig {
    let mut c = p.config(
        "oom",
        &sh("x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived"),
    );
    c.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 16 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oom_kill_is_reported() {
    let mut p = pod().await;
    let id = p.run(oom_config(&p)).await;
    let st = p.wait_exit(&id).await;
    assert_eq!(st.reason, "OOMKilled", "{st:?}");
    assert_eq!(st.exit_code, 137);
}

/// The pod-start path pays at most one durable commit (an fsync of the store) per CRI
/// call: RunPodSandbox and CreateContainer commit their record before the first side
/// effect, and what they learn later (pids, the pod IP, the start time) is volatile.
#[tokio::test(flavor = "multi_thread")]
async fn pod_start_pays_one_durable_commit_per_call() {
    let port = metrics::free_port();
    let mut p = TestPod::set_up_configured(
        oci::busybox_image(),
        &metrics::config(port),
        "",
        &[r#"{"type":"loopback"}"#],
    )
    .await;
    let durable = || metrics::samples(&metrics::scrape(port, "*/*").1)[r#"crust_store_commits{durability="durable"}"#];
    let before = durable();
    let (other, _) = p.run_other_pod("commits").await;
    let after_run = durable();
    let id = p
        .create(p.config("sleeper", &sh("sleep 300")))
        .await
        .unwrap();
    let after_create = durable();
    p.start(&id).await;
    let after_start = durable();
    assert_eq!(after_run - before, 1.0, "RunPodSandbox");
    assert_eq!(after_create - after_run, 1.0, "CreateContainer");
    assert_eq!(after_start - after_create, 0.0, "StartContainer");
    p.stop_and_remove_pod(&other).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_starts_oom_kills_and_monitors() {
    let port = metrics::free_port();
    let mut p = TestPod::set_up_configured(
        oci::busybox_image(),
        &metrics::config(port),
        "",
        &[r#"{"type":"loopback"}"#],
    )
    .await;
    p.run(p.config("sleeper", &sh("sleep 300"))).await;
    let oom = p.run(oom_config(&p)).await;
    assert_eq!(p.wait_exit(&oom).await.reason, "OOMKilled");

    // The exit hook counts the kill just after the exit is published: allow it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (content_type, body) = loop {
        let (content_type, body) = metrics::scrape(port, "*/*");
        let counted = metrics::samples(&body).get("crust_containers_oom_total") == Some(&1.0);
        if counted || Instant::now() > deadline {
            break (content_type, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    let s = metrics::samples(&body);
    assert_eq!(s["crust_containers_oom_total"], 1.0, "{body}");
    // One pod and two containers started; the durations are those of real starts.
    assert_eq!(s["crust_sandbox_start_duration_seconds_count"], 1.0);
    assert!(s["crust_sandbox_start_duration_seconds_sum"] > 0.0);
    assert_eq!(
        s[r#"crust_sandbox_start_duration_seconds_bucket{le="+Inf"}"#],
        1.0
    );
    assert_eq!(s["crust_container_start_duration_seconds_count"], 2.0);
    assert!(s["crust_container_start_duration_seconds_sum"] > 0.0);
    // The sleeper's monitor lives on; the OOM-killed container's has gone.
    assert_eq!(s["crust_monitors"], 1.0);
    assert_eq!(s[r#"crust_containers{state="running"}"#], 1.0);
    assert_eq!(s[r#"crust_containers{state="exited"}"#], 1.0);
    assert_eq!(s[r#"crust_sandboxes{state="ready"}"#], 1.0);
    // The old series, under their old names and labels.
    assert_eq!(
        s[r#"crust_rpc_requests_total{method="RunPodSandbox",code="Ok"}"#],
        1.0
    );
    assert_eq!(
        s[r#"crust_rpc_requests_total{method="StartContainer",code="Ok"}"#],
        2.0
    );
    assert_eq!(
        s[r#"crust_rpc_duration_seconds_count{method="StartContainer",code="Ok"}"#],
        2.0
    );
    assert!(s.contains_key(
        r#"crust_rpc_duration_seconds_bucket{method="PullImage",code="Ok",le="60"}"#
    ));
    assert_eq!(
        s[r#"crust_image_pull_duration_seconds_count{result="success"}"#],
        1.0
    );
    assert!(s[r#"crust_image_pull_bytes_total{result="success"}"#] > 100_000.0);
    let mut families = metrics::families(&body);
    families.sort();
    for name in [
        "crust_rpc_duration_seconds",
        "crust_rpc_requests_total",
        "crust_image_pull_bytes_total",
        "crust_image_pull_duration_seconds",
        "crust_sandboxes",
        "crust_containers",
        "crust_monitors",
        "crust_sandbox_start_duration_seconds",
        "crust_container_start_duration_seconds",
        "crust_containers_oom_total",
    ] {
        assert!(
            families.binary_search(&name.to_string()).is_ok(),
            "{name}: {families:?}"
        );
    }

    // What Prometheus asks for by default: OpenMetrics, with the same sample names.
    let (content_type, body) = metrics::scrape(
        port,
        "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
    );
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert!(body.contains("# TYPE crust_containers_oom counter\n"));
    let om = metrics::samples(&body);
    assert_eq!(om["crust_containers_oom_total"], 1.0);
    assert_eq!(om["crust_monitors"], 1.0);
    assert_eq!(
        om[r#"crust_rpc_requests_total{method="RunPodSandbox",code="Ok"}"#],
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_refused() {
    let mut p = pod().await;
    let mut no_image = p.config("x", &["/bin/true"]);
    no_image.image = Some(cri::ImageSpec {
        image: "not/pulled:1".into(),
        ..Default::default()
    });
    assert_eq!(p.create(no_image).await.unwrap_err().code(), Code::NotFound);
    let mut no_meta = p.config("y", &["/bin/true"]);
    no_meta.metadata = None;
    assert_eq!(
        p.create(no_meta).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let mut escape = p.config("z", &["/bin/true"]);
    escape.log_path = "../../evil.log".into();
    assert_eq!(
        p.create(escape).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let id = p.create(p.config("dup", &["/bin/true"])).await.unwrap();
    assert_eq!(
        p.create(p.config("dup", &["/bin/true"]))
            .await
            .unwrap_err()
            .code(),
        Code::AlreadyExists
    );
    let err =
        p.c.runtime
            .start_container(cri::StartContainerRequest {
                container_id: "nope00".into(),
            })
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    p.remove(&id).await;
    // Nothing of the failed creates remains.
    let left: Vec<_> = fs::read_dir(p.d.dir().join("state/containers"))
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    let left: Vec<_> = fs::read_dir(p.d.root().join("containers"))
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn containers_survive_a_crustd_crash() {
    let mut p = pod().await;
    let running = p
        .run(p.config(
            "running",
            &sh("i=0; while true; do echo tick$i; i=$((i+1)); sleep 0.1; done"),
        ))
        .await;
    let exiting = p.run(p.config("exiting", &sh("sleep 1; exit 42"))).await;
    let (_, before) = p.status(&running).await;
    p.d.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    p.d.start_again().await;
    p.c = p.d.client().await;
    let (st, after) = p.status(&running).await;
    assert_eq!(st.state, cri::ContainerState::ContainerRunning as i32);
    assert_eq!(before["pid"], after["pid"]);
    let st = p.wait_exit(&exiting).await;
    assert_eq!(st.exit_code, 42);
    // Logs continue.
    let n = p.log("running").len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(p.log("running").len() > n);
    p.stop(&running, 0).await;
    assert_eq!(
        p.wait_exit(&running).await.state,
        cri::ContainerState::ContainerExited as i32
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_cycles_leave_nothing() {
    let mut p = pod().await;
    for i in 0..50 {
        let id = p
            .run(p.config(&format!("c{i}"), &["/bin/sleep", "1000"]))
            .await;
        p.stop(&id, 0).await;
        p.remove(&id).await;
    }
    let list =
        p.c.runtime
            .list_containers(cri::ListContainersRequest::default())
            .await
            .unwrap()
            .into_inner()
            .containers;
    assert!(list.is_empty());
    let sandbox = p.sandbox.clone();
    p.stop_and_remove_pod(&sandbox).await;
    assert_nothing_left(&p);
}

/// No mount, state or runtime directory, monitor or container cgroup of the daemon is
/// left once its pods are gone.
fn assert_nothing_left(p: &Pod) {
    let dir = p.d.dir().to_path_buf();
    let mounts = support::cni::mounts_under(&dir);
    assert!(mounts.iter().all(|m| m.ends_with("/netns")), "{mounts:?}");
    for sub in [
        "state/containers",
        "state/bundles",
        "root/containers",
        "state/runtime/runc",
        "state/runtime/embedded",
    ] {
        let left: Vec<_> = fs::read_dir(dir.join(sub))
            .map(|r| r.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{sub}: {left:?}");
    }
    let monitors = fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            fs::read_to_string(e.path().join("cmdline")).is_ok_and(|c| {
                c.starts_with("crust-monitor")
                    || c.contains(&dir.display().to_string()) && c.contains("monitor")
            })
        })
        .count();
    assert_eq!(monitors, 0);
    let cgroup = format!("/sys/fs/cgroup/memory{}", p.cgroups.0);
    let children: Vec<_> = fs::read_dir(&cgroup)
        .map(|r| {
            r.flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name())
                .collect()
        })
        .unwrap_or_default();
    assert!(children.is_empty(), "cgroups left: {children:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn layers_in_use_outlive_their_image() {
    let mut p = pod().await;
    let id = p.run(p.config("user", &["/bin/sleep", "1000"])).await;
    let image_id = p.status(&id).await.0.image_id;
    p.c.image
        .remove_image(cri::RemoveImageRequest {
            image: Some(cri::ImageSpec {
                image: image_id,
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    assert!(
        p.c.image
            .list_images(cri::ListImagesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .images
            .is_empty()
    );
    // The container still has its files.
    let r = p.exec(&id, &["cat", "/etc/passwd"], 5).await.unwrap();
    assert!(String::from_utf8_lossy(&r.stdout).contains("app:x:1000"));
    let layers = p.d.root().join("layers");
    assert_eq!(fs::read_dir(&layers).unwrap().count(), 1);
    p.stop(&id, 0).await;
    p.remove(&id).await;
    assert_eq!(
        fs::read_dir(&layers).unwrap().count(),
        0,
        "layers outlived their last user"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_create_cut_short_by_a_crash_is_undone() {
    let mut p = pod().await;
    // A monitor that never answers: the create hangs until crustd is killed.
    let hang = p.d.dir().join("hanging-monitor");
    let marker = format!("crust-hang-{}", std::process::id());
    fs::write(&hang, format!("#!/bin/sh\nexec -a {marker} sleep 1000\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&hang, fs::Permissions::from_mode(0o755)).unwrap();
    p.d.set_top_config(&format!(
        "monitor_path = {:?}\n",
        hang.display().to_string()
    ));
    p.d.restart().await;
    p.c = p.d.client().await;
    let mut c = p.c.clone();
    let config = p.config("interrupted", &["/bin/true"]);
    let (sandbox, sandbox_config) = (p.sandbox.clone(), p.sandbox_config.clone());
    let creating = tokio::spawn(async move {
        c.runtime
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: sandbox,
                config: Some(config),
                sandbox_config: Some(sandbox_config),
            })
            .await
    });
    let containers = p.d.root().join("containers");
    let deadline = Instant::now() + Duration::from_secs(10);
    while fs::read_dir(&containers).map(|r| r.count()).unwrap_or(0) == 0 {
        assert!(
            Instant::now() < deadline,
            "the create never mounted a rootfs"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.d.kill();
    assert!(creating.await.unwrap().is_err());
    // The stand-in monitor is ours to end.
    for e in fs::read_dir("/proc").unwrap().flatten() {
        if fs::read_to_string(e.path().join("cmdline")).is_ok_and(|c| c.starts_with(&marker))
            && let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>()
        {
            // SAFETY: kill(2) on the sleep this test started as a fake monitor.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    p.d.set_top_config("");
    p.d.start_again().await;
    p.c = p.d.client().await;
    let list =
        p.c.runtime
            .list_containers(cri::ListContainersRequest::default())
            .await
            .unwrap()
            .into_inner()
            .containers;
    assert!(list.is_empty(), "{list:?}");
    let left: Vec<_> = fs::read_dir(&containers)
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "writable layers left: {left:?}");
    let mounts = support::cni::mounts_under(p.d.dir());
    assert!(
        mounts.iter().all(|m| !m.contains("/containers/")),
        "{mounts:?}"
    );
    // And the name is free for the retry kubelet will make.
    let id = p.run(p.config("interrupted", &["/bin/true"])).await;
    assert_eq!(p.wait_exit(&id).await.exit_code, 0);
}

async fn list_stats(p: &mut Pod) -> HashMap<String, cri::ContainerStats> {
    p.c.runtime
        .list_container_stats(cri::ListContainerStatsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .stats
        .into_iter()
        .map(|s| {
            (
                s.attributes
                    .as_ref()
                    .unwrap()
                    .metadata
                    .as_ref()
                    .unwrap()
                    .name
                    .clone(),
                s,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn stats_move_with_cpu_memory_disk_and_network() {
    let mut p = pod().await;
    p.run(p.config("burn", &sh("while :; do :; done"))).await;
    p.run(p.config("hog", &sh("x=$(head -c 40000000 /dev/zero | tr '\\0' a); dd if=/dev/zero of=/blob bs=1M count=2 2>/dev/null; echo ready; sleep 1000; echo keep $x"))).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !p.stdout("hog").contains("ready") {
        assert!(Instant::now() < deadline, "hog never got ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = list_stats(&mut p).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = list_stats(&mut p).await;
    let cpu = |s: &cri::ContainerStats| {
        s.cpu
            .as_ref()
            .unwrap()
            .usage_core_nano_seconds
            .as_ref()
            .unwrap()
            .value
    };
    assert!(
        cpu(&second["burn"]) > cpu(&first["burn"]) + 100_000_000,
        "cpu did not move"
    );
    let nano_cores = second["burn"]
        .cpu
        .as_ref()
        .unwrap()
        .usage_nano_cores
        .as_ref()
        .unwrap()
        .value;
    assert!(
        nano_cores > 300_000_000,
        "burning a core shows {nano_cores} nano cores"
    );
    let mem = second["hog"].memory.as_ref().unwrap();
    assert!(
        mem.working_set_bytes.as_ref().unwrap().value > 30_000_000,
        "{mem:?}"
    );
    assert!(
        mem.usage_bytes.as_ref().unwrap().value >= mem.working_set_bytes.as_ref().unwrap().value
    );
    let layer = second["hog"].writable_layer.as_ref().unwrap();
    assert!(
        layer.used_bytes.as_ref().unwrap().value >= 2 << 20,
        "{layer:?}"
    );
    assert!(layer.inodes_used.as_ref().unwrap().value >= 1);
    // ContainerStats of one and a filter by label.
    let one =
        p.c.runtime
            .list_container_stats(cri::ListContainerStatsRequest {
                filter: Some(cri::ContainerStatsFilter {
                    label_selector: HashMap::from([("name".to_string(), "burn".to_string())]),
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .stats;
    assert_eq!(one.len(), 1);

    // Pod stats: its containers, CPU, and network bytes that move with traffic.
    let pod_stats = |p: &mut Pod| {
        let mut c = p.c.clone();
        let id = p.sandbox.clone();
        async move {
            c.runtime
                .pod_sandbox_stats(cri::PodSandboxStatsRequest { pod_sandbox_id: id })
                .await
                .unwrap()
                .into_inner()
                .stats
                .unwrap()
                .linux
                .unwrap()
        }
    };
    let before = pod_stats(&mut p).await;
    assert_eq!(before.containers.len(), 2);
    let rx = |l: &cri::LinuxPodSandboxStats| {
        l.network
            .as_ref()
            .unwrap()
            .default_interface
            .as_ref()
            .unwrap()
            .rx_bytes
            .as_ref()
            .unwrap()
            .value
    };
    let status =
        p.c.runtime
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: p.sandbox.clone(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
    let ip = status.network.unwrap().ip;
    let ping = std::process::Command::new("busybox")
        .args(["ping", "-c", "5", "-i", "0.2", "-s", "1000", &ip])
        .output()
        .unwrap();
    assert!(ping.status.success(), "{ping:?}");
    let after = pod_stats(&mut p).await;
    assert!(
        rx(&after) >= rx(&before) + 5000,
        "rx {} -> {}",
        rx(&before),
        rx(&after)
    );
    assert_eq!(
        after.network.unwrap().default_interface.unwrap().name,
        "eth0"
    );
    assert!(after.cpu.unwrap().usage_core_nano_seconds.unwrap().value > 0);

    // The same numbers as cAdvisor metrics.
    let descriptors =
        p.c.runtime
            .list_metric_descriptors(cri::ListMetricDescriptorsRequest {})
            .await
            .unwrap()
            .into_inner()
            .descriptors;
    let names: Vec<_> = descriptors.iter().map(|d| d.name.as_str()).collect();
    for wanted in [
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
        "container_network_receive_bytes_total",
    ] {
        assert!(names.contains(&wanted), "{names:?}");
    }
    let pods =
        p.c.runtime
            .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
            .await
            .unwrap()
            .into_inner()
            .pod_metrics;
    assert_eq!(pods.len(), 1);
    let rx_metric = pods[0]
        .metrics
        .iter()
        .find(|m| m.name == "container_network_receive_bytes_total" && m.label_values[3] == "eth0")
        .unwrap();
    assert!(rx_metric.value.as_ref().unwrap().value >= 5000);
    let hog = pods[0]
        .container_metrics
        .iter()
        .find(|c| c.container_id == second["hog"].attributes.as_ref().unwrap().id)
        .unwrap();
    let ws = hog
        .metrics
        .iter()
        .find(|m| m.name == "container_memory_working_set_bytes")
        .unwrap();
    assert!(ws.value.as_ref().unwrap().value > 30_000_000);
    let d = descriptors
        .iter()
        .find(|d| d.name == "container_memory_working_set_bytes")
        .unwrap();
    assert_eq!(d.label_keys.len(), ws.label_values.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn events_follow_a_container_life_in_order() {
    let mut p = pod().await;
    // One subscriber reads; the other never does and must not hold anything up.
    let mut reader =
        p.c.runtime
            .get_container_events(cri::GetEventsRequest {})
            .await
            .unwrap()
            .into_inner();
    let _idle =
        p.c.runtime
            .get_container_events(cri::GetEventsRequest {})
            .await
            .unwrap()
            .into_inner();
    let id = p.run(p.config("life", &["/bin/sleep", "1000"])).await;
    p.stop(&id, 0).await;
    p.remove(&id).await;
    // Enough churn to overflow anything the idle subscriber would buffer.
    for i in 0..20 {
        let other = p.run(p.config(&format!("churn{i}"), &["/bin/true"])).await;
        p.wait_exit(&other).await;
        p.remove(&other).await;
    }
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let event = tokio::time::timeout(Duration::from_secs(10), reader.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if event.container_id == id {
            assert_eq!(event.pod_sandbox_status.as_ref().unwrap().id, p.sandbox);
            seen.push(event.container_event_type);
        }
    }
    use cri::ContainerEventType as E;
    assert_eq!(
        seen,
        vec![
            E::ContainerCreatedEvent as i32,
            E::ContainerStartedEvent as i32,
            E::ContainerStoppedEvent as i32,
            E::ContainerDeletedEvent as i32
        ]
    );
}

/// Runs a pod and a container under `driver` with a recording wrapper as the runtime;
/// returns every runtime command line and the cgroups paths of pause and container.
///
/// PID 1 here is not systemd, so runc cannot create systemd units: the wrapper records
/// the command line and drops `--systemd-cgroup` before calling the real runc, which then
/// makes a cgroupfs directory of the `slice:prefix:name` path. What is checked is what
/// crust hands the runtime for each driver; systemd's side is runc's.
async fn under_cgroup_driver(driver: &str, cgroup_parent: &str) -> (Vec<String>, [String; 3]) {
    let tools = tempfile::tempdir().unwrap();
    let argv_log = tools.path().join("argv.log");
    let wrapper = tools.path().join("runc");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$*\" >> {argv_log:?}\n\
             for a do shift; [ \"$a\" = --systemd-cgroup ] || set -- \"$@\" \"$a\"; done\n\
             exec /usr/sbin/runc \"$@\"\n"
        ),
    )
    .unwrap();
    fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut p = TestPod::set_up_configured(
        oci::busybox_image(),
        &format!("cgroup_driver = {driver:?}\ndefault_runtime = \"runc\"\n"),
        &format!("[runtimes.runc]\npath = {wrapper:?}\n"),
        &[r#"{"type":"loopback"}"#],
    )
    .await;
    // A pod of its own, under the parent kubelet would give for this driver.
    p.sandbox_config.linux.as_mut().unwrap().cgroup_parent = cgroup_parent.into();
    (p.sandbox, p.sandbox_config) = p.run_other_pod("driver").await;
    let id = p.run(p.config("c", &["/bin/sleep", "1000"])).await;
    let r = p.exec(&id, &["true"], 5).await.unwrap();
    assert_eq!(r.exit_code, 0);
    p.c.runtime
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(cri::LinuxContainerResources {
                cpu_shares: 512,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let bundles = p.d.dir().join("state/bundles");
    let cgroups_path = |id: &str| {
        let spec: serde_json::Value =
            serde_json::from_slice(&fs::read(bundles.join(id).join("config.json")).unwrap())
                .unwrap();
        spec["linux"]["cgroupsPath"].as_str().unwrap().to_owned()
    };
    let paths = [cgroups_path(&p.sandbox), cgroups_path(&id), id.clone()];
    // The cgroups runc made for them, removed at the end (the wrapper's cgroupfs
    // directories for systemd paths are nobody's to clean up but this test's).
    let pause_pid: i32 = fs::read_to_string(bundles.join(&p.sandbox).join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let (_, info) = p.status(&id).await;
    let pid = info["pid"].as_i64().map(|pid| pid as i32);
    let made: Vec<String> = [Some(pause_pid), pid]
        .into_iter()
        .flatten()
        .flat_map(|pid| {
            fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.splitn(3, ':').nth(2).map(str::to_owned))
                .collect::<Vec<_>>()
        })
        .collect();
    p.stop(&id, 5).await;
    p.remove(&id).await;
    let sandbox = p.sandbox.clone();
    p.stop_and_remove_pod(&sandbox).await;
    for path in made.iter().filter(|p| p.contains(":crust:")) {
        for ctrl in fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
            let _ = fs::remove_dir(ctrl.path().join(path.trim_start_matches('/')));
        }
    }
    let calls = fs::read_to_string(&argv_log)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    (calls, paths)
}

/// The runtime subcommands crust runs, from a recorded command line.
fn subcommand(line: &str) -> &str {
    let words: Vec<&str> = line.split(' ').collect();
    let format = words.iter().position(|w| *w == "json").map_or(0, |i| i + 1);
    words[format..]
        .iter()
        .find(|w| **w != "--systemd-cgroup")
        .copied()
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_systemd_cgroup_driver_reaches_every_runtime_call() {
    let parent = "kubepods-besteffort-poddriver.slice";
    let (calls, [pause, container, id]) = under_cgroup_driver("systemd", parent).await;
    let pause_id = pause.rsplit(':').next().unwrap();
    assert_eq!(pause, format!("{parent}:crust:{pause_id}"));
    assert_eq!(container, format!("{parent}:crust:{id}"));
    let mut seen = std::collections::BTreeSet::new();
    for line in calls.iter().filter(|l| l.contains("--root")) {
        assert!(
            line.contains(" --systemd-cgroup "),
            "without the driver: {line}"
        );
        seen.insert(subcommand(line).to_owned());
    }
    for sub in ["run", "create", "start", "exec", "update", "kill", "delete"] {
        assert!(seen.contains(sub), "no {sub} call in {calls:#?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cgroupfs_driver_passes_plain_paths() {
    let parent = format!("/crust-test-driver-{}", std::process::id());
    let (calls, [pause, container, id]) = under_cgroup_driver("cgroupfs", &parent).await;
    assert!(pause.starts_with(&format!("{parent}/")), "{pause}");
    assert_eq!(container, format!("{parent}/{id}"));
    let mut seen = std::collections::BTreeSet::new();
    for line in calls.iter().filter(|l| l.contains("--root")) {
        assert!(!line.contains("--systemd-cgroup"), "{line}");
        seen.insert(subcommand(line).to_owned());
    }
    assert!(
        seen.contains("create") && seen.contains("exec"),
        "{calls:#?}"
    );
    drop(support::pod::CgroupParent(parent));
}

#[tokio::test(flavor = "multi_thread")]
async fn creates_racing_a_pod_removal_leave_no_orphan() {
    let mut p = pod().await;
    for round in 0..16u64 {
        let (sandbox, config) = p.run_other_pod(&format!("race{round}")).await;
        let mut creator = p.c.clone();
        let request = cri::CreateContainerRequest {
            pod_sandbox_id: sandbox.clone(),
            config: Some(p.config("c", &["/bin/sleep", "1000"])),
            sandbox_config: Some(config),
        };
        let create = tokio::spawn(async move {
            let id = creator
                .runtime
                .create_container(request)
                .await?
                .into_inner()
                .container_id;
            creator
                .runtime
                .start_container(cri::StartContainerRequest { container_id: id })
                .await
                .map(|_| ())
        });
        // Spread the removal over the create's whole span (a create takes ~100 ms).
        tokio::time::sleep(Duration::from_millis(round * 15)).await;
        let mut remover = p.c.clone();
        if round % 2 == 0 {
            remover
                .runtime
                .stop_pod_sandbox(cri::StopPodSandboxRequest {
                    pod_sandbox_id: sandbox.clone(),
                })
                .await
                .unwrap();
        }
        remover
            .runtime
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: sandbox.clone(),
            })
            .await
            .unwrap();
        // The create either came first (and went with the pod) or was refused.
        if let Err(e) = create.await.unwrap() {
            assert!(
                matches!(e.code(), Code::NotFound | Code::FailedPrecondition),
                "round {round}: {e:?}"
            );
        }
        let left =
            p.c.runtime
                .list_containers(cri::ListContainersRequest {
                    filter: Some(cri::ContainerFilter {
                        pod_sandbox_id: sandbox.clone(),
                        ..Default::default()
                    }),
                })
                .await
                .unwrap()
                .into_inner()
                .containers;
        assert!(left.is_empty(), "round {round}: orphans {left:?}");
    }
    let sandbox = p.sandbox.clone();
    p.c.runtime
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: sandbox,
        })
        .await
        .unwrap();
    assert_nothing_left(&p);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_remove_does_not_hold_up_other_calls() {
    let mut p = pod().await;
    let big = p.run(p.config("big", &["/bin/sleep", "1000"])).await;
    // A writable layer that takes a while to delete: many files, as a container
    // that unpacked a source tree would leave.
    let upper = p.d.root().join("containers").join(&big).join("fs");
    assert!(upper.is_dir(), "{upper:?}");
    let many = upper.join("many");
    fs::create_dir(&many).unwrap();
    for i in 0..100_000 {
        fs::File::create(many.join(i.to_string())).unwrap();
    }
    let (other_pod, other) = p.run_other_pod("other").await;
    p.stop(&big, 0).await;
    let mut remover = p.c.clone();
    let removing = tokio::spawn(async move {
        let started = Instant::now();
        remover
            .runtime
            .remove_container(cri::RemoveContainerRequest { container_id: big })
            .await
            .unwrap();
        started.elapsed()
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    p.c.runtime
        .version(cri::VersionRequest::default())
        .await
        .unwrap();
    p.c.runtime
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap();
    let created =
        p.c.runtime
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: other_pod,
                config: Some(p.config("meanwhile", &["/bin/sleep", "1000"])),
                sandbox_config: Some(other),
            })
            .await;
    let took = started.elapsed();
    let still_removing = !removing.is_finished();
    let remove_took = removing.await.unwrap();
    created.unwrap();
    assert!(
        still_removing,
        "the create ({took:?}) waited for the remove ({remove_took:?})"
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
}
