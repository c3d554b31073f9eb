//! Pod user namespaces (critest `Security Context UserNamespaces`, Kubernetes'
//! `hostUsers: false`) against a real crustd with real runc and CNI plugins: the pod's
//! root is a host id of the mapping, its rootfs and bind mounts are idmapped so the
//! image's files are its root's, its network namespace is its own, and requests crust
//! cannot meet are refused with nothing left behind.

mod support;

use std::os::unix::fs::MetadataExt;

use crust_proto::cri;
use support::oci;
use support::pod::TestPod;
use tonic::Code;

const HOST_ID: u32 = 1000;
const LENGTH: u32 = 100_000;

fn mapping(container_id: u32, host_id: u32) -> cri::IdMapping {
    cri::IdMapping {
        container_id,
        host_id,
        length: LENGTH,
    }
}

fn options(mode: cri::NamespaceMode, maps: Vec<cri::IdMapping>) -> cri::NamespaceOption {
    cri::NamespaceOption {
        userns_options: Some(cri::UserNamespace {
            mode: mode as i32,
            gids: maps.clone(),
            uids: maps,
        }),
        ..Default::default()
    }
}

/// `p`'s pod config renamed `name` with namespace options `ns`.
fn pod_config(p: &TestPod, name: &str, ns: cri::NamespaceOption) -> cri::PodSandboxConfig {
    let mut config = p.sandbox_config.clone();
    let meta = config.metadata.as_mut().unwrap();
    meta.name = name.into();
    meta.uid = format!("uid-{name}");
    config
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .namespace_options = Some(ns);
    config
}

async fn run_pod(p: &mut TestPod, config: &cri::PodSandboxConfig) -> Result<String, tonic::Status> {
    p.c.runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .map(|r| r.into_inner().pod_sandbox_id)
}

/// A container config carrying the pod's namespace options, as kubelet and critest
/// send them.
fn container(
    p: &TestPod,
    name: &str,
    cmd: &[&str],
    ns: &cri::NamespaceOption,
) -> cri::ContainerConfig {
    let mut config = p.config(name, cmd);
    config.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            namespace_options: Some(ns.clone()),
            ..Default::default()
        }),
        ..Default::default()
    });
    config
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
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn words(s: &str) -> Vec<&str> {
    s.split_whitespace().collect()
}

async fn remove_container(p: &mut TestPod, id: &str) {
    p.c.runtime
        .stop_container(cri::StopContainerRequest {
            container_id: id.into(),
            timeout: 0,
        })
        .await
        .unwrap();
    p.c.runtime
        .remove_container(cri::RemoveContainerRequest {
            container_id: id.into(),
        })
        .await
        .unwrap();
}

/// The pod and container ids the daemon lists.
async fn listed(p: &mut TestPod) -> (Vec<String>, Vec<String>) {
    let pods =
        p.c.runtime
            .list_pod_sandbox(cri::ListPodSandboxRequest::default())
            .await
            .unwrap()
            .into_inner()
            .items
            .into_iter()
            .map(|s| s.id)
            .collect();
    let containers =
        p.c.runtime
            .list_containers(cri::ListContainersRequest::default())
            .await
            .unwrap()
            .into_inner()
            .containers
            .into_iter()
            .map(|c| c.id)
            .collect();
    (pods, containers)
}

/// Namespace pins, staged trees and rootfs mounts below the daemon's state.
fn state_mounts(p: &TestPod) -> Vec<String> {
    let state = p.d.dir().join("state");
    support::cni::mounts_under(&state)
        .into_iter()
        .filter(|m| !m.ends_with("/state/netns") && !m.ends_with("/state/userns"))
        .collect()
}

/// critest "runtime should support NamespaceMode_POD", and what kubelet's pods need
/// of it: the container's uid_map is the requested one; the image's files, the pod
/// files and a write to the rootfs are its root's inside and the mapped host id's
/// outside; its process is that host id on the host; the pod owns its network (sysfs
/// mounts, lo is up). Stop and removal leave no pin, staged tree or mount.
#[tokio::test(flavor = "multi_thread")]
async fn a_pod_user_namespace_maps_root_and_idmaps_the_rootfs_and_mounts() {
    let mut p = TestPod::set_up(oci::busybox_image(), "").await;
    let before = state_mounts(&p);
    let ns = options(cri::NamespaceMode::Pod, vec![mapping(0, HOST_ID)]);
    let config = pod_config(&p, "userns", ns.clone());
    let pod = run_pod(&mut p, &config).await.unwrap();
    p.sandbox = pod.clone();
    p.sandbox_config = config;

    // The spec itself: the container prints its uid_map and exits.
    let id = p
        .run(container(&p, "uidmap", &["cat", "/proc/self/uid_map"], &ns))
        .await;
    let status = p.wait_exit(&id).await;
    assert_eq!(status.exit_code, 0, "{status:?}");
    let log = std::fs::read_to_string(p.logs.join("uidmap/0.log")).unwrap();
    let line = log.lines().next().unwrap_or_default();
    let text = line.splitn(4, ' ').nth(3).unwrap_or_default();
    assert_eq!(words(text), ["0", "1000", "100000"], "{log}");

    let id = p
        .run(container(&p, "sleeper", &["sleep", "300"], &ns))
        .await;
    assert_eq!(words(&exec(&mut p, &id, "id -u; id -g").await), ["0", "0"]);
    // Idmapped layers: the image's root-owned files are the container root's.
    assert_eq!(
        words(&exec(&mut p, &id, "stat -c '%u:%g' /bin /etc/passwd").await),
        ["0:0", "0:0"]
    );
    // Idmapped bind mounts: the pod's files too.
    assert_eq!(
        words(&exec(&mut p, &id, "stat -c '%u:%g' /etc/hosts /etc/resolv.conf").await),
        ["0:0", "0:0"]
    );
    // The writable layer is the container root's; on the host the mapped id's.
    assert_eq!(
        words(&exec(&mut p, &id, "mkdir -p /data && echo x > /data/file && chown 5:6 /data/file && stat -c '%u:%g' /data /data/file").await),
        ["0:0", "5:6"]
    );
    let upper = p.d.root().join("containers").join(&id).join("fs");
    let meta = std::fs::metadata(upper.join("data/file")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (HOST_ID + 5, HOST_ID + 6));
    let meta = std::fs::metadata(upper.join("data")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (HOST_ID, HOST_ID));
    // The process is the mapped id on the host.
    let status =
        p.c.runtime
            .container_status(cri::ContainerStatusRequest {
                container_id: id.clone(),
                verbose: true,
            })
            .await
            .unwrap()
            .into_inner();
    let info: serde_json::Value = serde_json::from_str(&status.info["info"]).unwrap();
    let pid = info["pid"].as_u64().unwrap();
    let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = proc_status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(words(uid_line)[1], HOST_ID.to_string(), "{uid_line}");
    // Its own network: sysfs mounted in the container (runc can only do that in a
    // netns the user namespace owns), localhost up, the pod's address on eth0.
    assert_eq!(
        words(
            &exec(
                &mut p,
                &id,
                "cat /sys/class/net/lo/operstate /sys/class/net/eth0/operstate"
            )
            .await
        ),
        ["unknown", "up"]
    );
    // The state the runtime passes through as the pod's root is closed to other
    // users: nobody gets into the container's state, bundle or rootfs.
    let state = p.d.dir().join("state");
    for path in [
        state.join("containers").join(&id).join("rootfs/bin"),
        state.join("bundles").join(&id).join("staged"),
        state.join("containers"),
        state.join("bundles"),
    ] {
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
            .args(["/bin/busybox", "ls"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success(), "nobody listed {}", path.display());
    }
    let owner = std::fs::read_link(format!("/proc/{pid}/ns/user")).unwrap();
    assert_ne!(owner, std::fs::read_link("/proc/self/ns/user").unwrap());

    for id in listed(&mut p).await.1 {
        remove_container(&mut p, &id).await;
    }
    p.stop_and_remove_pod(&pod).await;
    assert_eq!(
        state_mounts(&p),
        before,
        "a pin, staged tree or rootfs is left"
    );
    let userns_dir = p.d.dir().join("state/userns");
    let left: Vec<_> = std::fs::read_dir(&userns_dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// critest's other UserNamespaces specs: NODE mode runs with the host's mapping; more
/// than one mapping, a mapping without container id 0, CONTAINER and TARGET fail, as
/// does a pod user namespace beside the host's network, and a container asking for a
/// user namespace its pod does not have. None of them leaves a pod, netns or mount.
#[tokio::test(flavor = "multi_thread")]
async fn user_namespace_requests_crust_cannot_meet_are_refused_and_leave_nothing() {
    let mut p = TestPod::set_up(oci::busybox_image(), "").await;
    let (pods_before, _) = listed(&mut p).await;
    let mounts_before = state_mounts(&p);
    let netns_before = std::fs::read_dir(p.d.dir().join("state/netns"))
        .unwrap()
        .count();
    let mut host_network = options(cri::NamespaceMode::Pod, vec![mapping(0, HOST_ID)]);
    host_network.network = cri::NamespaceMode::Node as i32;
    let two = vec![mapping(0, HOST_ID), mapping(0, 2 * HOST_ID)];
    for (name, ns) in [
        ("two", options(cri::NamespaceMode::Pod, two)),
        (
            "no-root",
            options(cri::NamespaceMode::Pod, vec![mapping(1, HOST_ID)]),
        ),
        ("container", options(cri::NamespaceMode::Container, vec![])),
        ("target", options(cri::NamespaceMode::Target, vec![])),
        ("host-network", host_network),
    ] {
        let config = pod_config(&p, name, ns);
        let err = run_pod(&mut p, &config).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{name}: {err:?}");
    }
    assert_eq!(listed(&mut p).await.0, pods_before);
    assert_eq!(state_mounts(&p), mounts_before);
    assert_eq!(
        std::fs::read_dir(p.d.dir().join("state/netns"))
            .unwrap()
            .count(),
        netns_before
    );

    // NODE: the host's user namespace, whose uid_map the container shows.
    let ns = options(cri::NamespaceMode::Node, vec![]);
    let config = pod_config(&p, "node", ns.clone());
    let pod = run_pod(&mut p, &config).await.unwrap();
    p.sandbox = pod.clone();
    p.sandbox_config = config;
    let id = p
        .run(container(&p, "uidmap", &["cat", "/proc/self/uid_map"], &ns))
        .await;
    p.wait_exit(&id).await;
    let log = std::fs::read_to_string(p.logs.join("uidmap/0.log")).unwrap();
    let text = log
        .lines()
        .next()
        .and_then(|l| l.splitn(4, ' ').nth(3))
        .unwrap_or_default()
        .to_owned();
    let host = std::fs::read_to_string("/proc/self/uid_map").unwrap();
    assert_eq!(words(&text), words(&host), "{log}");
    // A container cannot ask for a user namespace of a pod that has none.
    let pod_mode = options(cri::NamespaceMode::Pod, vec![mapping(0, HOST_ID)]);
    let err = p
        .create(container(&p, "wants-userns", &["true"], &pod_mode))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    remove_container(&mut p, &id).await;
    p.stop_and_remove_pod(&pod).await;
}

/// On the embedded handler (libcontainer 0.7's exec would stay outside the user
/// namespace, as host root) a pod with a user namespace runs on the user namespace
/// runtime, runc by default, and exec lands inside it; with none configured it is
/// refused and Status does not claim user namespaces for the embedded handler.
#[tokio::test(flavor = "multi_thread")]
async fn embedded_handlers_hand_user_namespaced_pods_to_runc_or_refuse_them() {
    let mut p = TestPod::on_handler(oci::busybox_image(), "embedded").await;
    let ns = options(cri::NamespaceMode::Pod, vec![mapping(0, HOST_ID)]);
    let config = pod_config(&p, "handed", ns.clone());
    let pod = run_pod(&mut p, &config).await.unwrap();
    let status =
        p.c.runtime
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: pod.clone(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
    assert_eq!(status.runtime_handler, "runc");
    p.sandbox = pod.clone();
    p.sandbox_config = config;
    let id = p
        .run(container(&p, "sleeper", &["sleep", "300"], &ns))
        .await;
    assert!(p.d.dir().join("state/runtime/runc").join(&id).exists());
    assert_eq!(
        words(&exec(&mut p, &id, "cat /proc/self/uid_map").await),
        ["0", &HOST_ID.to_string(), &LENGTH.to_string()]
    );
    p.stop_and_remove_pod(&pod).await;

    let mut p = TestPod::set_up_configured(
        oci::busybox_image(),
        "default_runtime = \"embedded\"\nuser_namespace_runtime = \"\"\n",
        "",
        &[r#"{"type":"loopback"}"#],
    )
    .await;
    let handlers =
        p.c.runtime
            .status(cri::StatusRequest { verbose: false })
            .await
            .unwrap()
            .into_inner()
            .runtime_handlers;
    for handler in &handlers {
        let claims = handler.features.as_ref().unwrap().user_namespaces;
        assert_eq!(claims, handler.name == "runc", "{handler:?}");
    }
    let before = state_mounts(&p);
    let config = pod_config(&p, "refused", ns);
    let err = run_pod(&mut p, &config).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("user namespace"), "{err:?}");
    assert_eq!(state_mounts(&p), before);
    let netns: Vec<_> = std::fs::read_dir(p.d.dir().join("state/netns"))
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(netns.len() <= 1, "{netns:?}");
}
