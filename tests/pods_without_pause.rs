//! Pods without a pause process (CRI-O's `drop_infra_ctr`; issue 16) against a real
//! crustd with real runc and CNI plugins: a pod whose containers do not share a PID
//! namespace (Kubernetes' default) runs no pause; its containers still share one
//! network, IPC and UTS namespace with the pod's hostname and sysctls, the pod reports
//! READY with its IP and stats, survives a crustd restart, and leaves nothing behind.

mod support;

use std::path::Path;

use crust_proto::cri;
use support::oci;
use support::pod::TestPod;

/// `p`'s pod config renamed `name`, its containers in PID namespaces of their own,
/// with sysctls of the IPC and network namespaces.
fn pod_config(p: &TestPod, name: &str) -> cri::PodSandboxConfig {
    let mut config = p.sandbox_config.clone();
    let meta = config.metadata.as_mut().unwrap();
    meta.name = name.into();
    meta.uid = format!("uid-{name}");
    config.hostname = format!("{name}-host");
    let linux = config.linux.get_or_insert_with(Default::default);
    linux.sysctls = [
        ("kernel.shm_rmid_forced", "1"),
        ("net.ipv4.ping_group_range", "0 2147483647"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    linux
        .security_context
        .get_or_insert_with(Default::default)
        .namespace_options = Some(cri::NamespaceOption {
        pid: cri::NamespaceMode::Container as i32,
        ..Default::default()
    });
    config
}

fn container(p: &TestPod, name: &str, pid: cri::NamespaceMode) -> cri::ContainerConfig {
    let mut config = p.config(name, &["sleep", "300"]);
    config.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                pid: pid as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    config
}

async fn run_pod(p: &mut TestPod, config: &cri::PodSandboxConfig) -> String {
    let id =
        p.c.runtime
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .pod_sandbox_id;
    p.sandbox = id.clone();
    p.sandbox_config = config.clone();
    id
}

async fn pod_status(p: &mut TestPod, id: &str) -> cri::PodSandboxStatus {
    p.c.runtime
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
}

async fn container_pid(p: &mut TestPod, id: &str) -> i64 {
    let status =
        p.c.runtime
            .container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: true,
            })
            .await
            .unwrap()
            .into_inner();
    let info: serde_json::Value = serde_json::from_str(&status.info["info"]).unwrap();
    info["pid"].as_i64().unwrap()
}

async fn exec(p: &mut TestPod, id: &str, script: &str) -> String {
    let out =
        p.c.runtime
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.into(),
                cmd: vec!["/bin/sh".into(), "-c".into(), script.into()],
                timeout: 10,
            })
            .await
            .unwrap()
            .into_inner();
    assert_eq!(
        out.exit_code,
        0,
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn ns(pid: i64, kind: &str) -> std::path::PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap()
}

/// Whether a runtime handler (runc's or the embedded one's state) knows a container
/// `id` (a pause would be one).
fn runtime_has(p: &TestPod, id: &str) -> bool {
    ["runc", "embedded"].iter().any(|handler| {
        p.d.dir()
            .join("state/runtime")
            .join(handler)
            .join(id)
            .exists()
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_without_a_shared_pid_namespace_runs_no_pause_and_still_shares_the_rest() {
    let mut p = TestPod::set_up(oci::busybox_image(), "").await;
    assert!(
        runtime_has(&p, &p.sandbox.clone()),
        "the default pod (PID POD) has a pause"
    );
    let config = pod_config(&p, "lean");
    let pod = run_pod(&mut p, &config).await;
    assert!(!runtime_has(&p, &pod), "a pause was started");
    let status = pod_status(&mut p, &pod).await;
    assert_eq!(status.state, cri::PodSandboxState::SandboxReady as i32);
    let ip = status.network.unwrap().ip;
    assert!(!ip.is_empty());

    let a = p
        .run(container(&p, "a", cri::NamespaceMode::Container))
        .await;
    let b = p
        .run(container(&p, "b", cri::NamespaceMode::Container))
        .await;
    let (pa, pb) = (
        container_pid(&mut p, &a).await,
        container_pid(&mut p, &b).await,
    );
    for kind in ["net", "ipc", "uts"] {
        assert_eq!(ns(pa, kind), ns(pb, kind), "{kind} is not shared");
        assert_ne!(
            ns(pa, kind),
            ns(std::process::id() as i64, kind),
            "{kind} is the host's"
        );
    }
    assert_ne!(ns(pa, "pid"), ns(pb, "pid"), "PID namespaces are separate");
    assert_eq!(exec(&mut p, &a, "hostname").await, "lean-host");
    assert_eq!(
        exec(&mut p, &b, "cat /proc/sys/kernel/shm_rmid_forced").await,
        "1"
    );
    assert_eq!(
        exec(&mut p, &b, "cat /proc/sys/net/ipv4/ping_group_range").await,
        "0\t2147483647"
    );
    let addrs = exec(&mut p, &a, "ip -o -4 addr show").await;
    assert!(
        addrs.contains(&ip) && addrs.contains("127.0.0.1"),
        "{addrs}"
    );
    // The host's own values are untouched.
    assert_ne!(
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap()
            .trim(),
        "lean-host"
    );

    // Stats come from the pod's containers.
    let stats =
        p.c.runtime
            .pod_sandbox_stats(cri::PodSandboxStatsRequest {
                pod_sandbox_id: pod.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .stats
            .unwrap();
    let linux = stats.linux.unwrap();
    assert!(
        linux.memory.is_some_and(|m| m.working_set_bytes.is_some()),
        "no pod memory"
    );
    assert!(
        linux.network.is_some_and(|n| n
            .interfaces
            .iter()
            .chain(&n.default_interface)
            .any(|i| i.name == "eth0")),
        "no pod network stats"
    );

    // A container asking for the pod's PID namespace, which this pod does not share,
    // gets one of its own (it would be alone in the pause's elsewhere).
    let own = p
        .run(container(&p, "pod-pid", cri::NamespaceMode::Pod))
        .await;
    assert_eq!(
        exec(&mut p, &own, "tr '\\0' ' ' < /proc/1/cmdline").await,
        "sleep 300"
    );
    let po = container_pid(&mut p, &own).await;
    assert_ne!(ns(po, "pid"), ns(pa, "pid"));
    assert_eq!(ns(po, "ipc"), ns(pa, "ipc"));

    // A restart keeps the pod READY and usable.
    p.d.restart().await;
    p.c = p.d.client().await;
    let status = pod_status(&mut p, &pod).await;
    assert_eq!(status.state, cri::PodSandboxState::SandboxReady as i32);
    let c = p
        .run(container(&p, "c", cri::NamespaceMode::Container))
        .await;
    let pc = container_pid(&mut p, &c).await;
    assert_eq!(ns(pc, "ipc"), ns(pa, "ipc"));
    assert_eq!(exec(&mut p, &c, "hostname").await, "lean-host");

    p.stop_and_remove_pod(&pod).await;
    let state = p.d.dir().join("state");
    for dir in ["ipcns", "utsns", "netns"] {
        assert!(!state.join(dir).join(&pod).exists(), "{dir} pin left");
    }
    let left: Vec<String> = support::cni::mounts_under(&state)
        .into_iter()
        .filter(|m| m.contains(&pod))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// `drop_infra_container = false` gives every pod a pause, as before.
#[tokio::test(flavor = "multi_thread")]
async fn drop_infra_container_false_keeps_a_pause_for_every_pod() {
    let mut p = TestPod::set_up_configured(
        oci::busybox_image(),
        "drop_infra_container = false\n",
        "",
        &[r#"{"type":"loopback"}"#],
    )
    .await;
    let config = pod_config(&p, "classic");
    let pod = run_pod(&mut p, &config).await;
    assert!(runtime_has(&p, &pod), "no pause");
    assert!(!Path::new(&p.d.dir().join("state/ipcns").join(&pod)).exists());
    let a = p
        .run(container(&p, "a", cri::NamespaceMode::Container))
        .await;
    assert_eq!(exec(&mut p, &a, "hostname").await, "classic-host");
    p.stop_and_remove_pod(&pod).await;
}
