//! End-to-end: CRI requests written by whoever may create a pod are checked before
//! anything is written (issue 14, item 6), and confinement is never silently dropped
//! (item 7), against a real crustd with real runc and CNI.

mod support;

use std::fs;
use std::time::{Duration, Instant};

use crust_proto::cri;
use support::cni;
use support::crustd::Crustd;
use support::oci;
use support::pod::TestPod;

fn sh(script: &str) -> Vec<&str> {
    vec!["/bin/sh", "-c", script]
}

async fn exec(p: &mut TestPod, id: &str, script: &str) -> String {
    let out =
        p.c.runtime
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.into(),
                cmd: sh(script).into_iter().map(String::from).collect(),
                timeout: 10,
            })
            .await
            .unwrap()
            .into_inner();
    assert_eq!(out.exit_code, 0, "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn sandboxes(p: &mut TestPod) -> Vec<cri::PodSandbox> {
    p.c.runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items
}

/// Another pod on the same daemon, like the test's own but named `name`.
fn other_pod(p: &TestPod, name: &str) -> cri::PodSandboxConfig {
    let mut config = p.sandbox_config.clone();
    let meta = config.metadata.as_mut().unwrap();
    meta.name = name.into();
    meta.uid = format!("uid-{name}");
    config.hostname = name.into();
    config.log_directory = p.d.dir().join(format!("{name}-logs")).display().to_string();
    config
}

/// Hostnames that are not RFC 1123 names, DNS settings that would add lines to
/// resolv.conf and user namespaces crust cannot make are refused with the right code,
/// and leave no sandbox, mount, netns or veth behind.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_pod_configs_are_refused_before_anything_is_made() {
    let mut p = TestPod::set_up(oci::busybox_image(), "").await;
    let mounts = cni::mounts_under(p.d.dir()).len();
    let veths = cni::veths_on(&p.net.bridge);
    let dns = |servers: &[&str], searches: &[&str], options: &[&str]| cri::DnsConfig {
        servers: servers.iter().map(|s| s.to_string()).collect(),
        searches: searches.iter().map(|s| s.to_string()).collect(),
        options: options.iter().map(|s| s.to_string()).collect(),
    };
    let mut cases: Vec<(&str, cri::PodSandboxConfig, tonic::Code)> = Vec::new();
    for hostname in ["-pod", "pod_1", "a..b", "pod\nevil", "pod name"] {
        let mut config = other_pod(&p, "h");
        config.hostname = hostname.into();
        cases.push(("hostname", config, tonic::Code::InvalidArgument));
    }
    // A host-network pod's hostname lands in /etc/hosts too.
    let mut config = other_pod(&p, "hn");
    config.hostname = "node\n6.6.6.6 evil".into();
    config.linux.as_mut().unwrap().security_context = Some(cri::LinuxSandboxSecurityContext {
        namespace_options: Some(cri::NamespaceOption {
            network: cri::NamespaceMode::Node as i32,
            ..Default::default()
        }),
        ..Default::default()
    });
    cases.push((
        "host-network hostname",
        config,
        tonic::Code::InvalidArgument,
    ));
    for bad in [
        dns(&["10.0.0.10\nnameserver 6.6.6.6"], &[], &[]),
        dns(&["dns.example.com"], &[], &[]),
        dns(&["10.0.0.10"], &["svc.local evil.example"], &[]),
        dns(&["10.0.0.10"], &[], &["ndots:5\nsearch evil.example"]),
    ] {
        let mut config = other_pod(&p, "d");
        config.dns_config = Some(bad);
        cases.push(("dns", config, tonic::Code::InvalidArgument));
    }
    let mut config = other_pod(&p, "u");
    config.linux.as_mut().unwrap().security_context = Some(cri::LinuxSandboxSecurityContext {
        namespace_options: Some(cri::NamespaceOption {
            userns_options: Some(cri::UserNamespace {
                mode: cri::NamespaceMode::Pod as i32,
                // Root unmapped: refused (tests/user_namespaces.rs has the rest).
                uids: vec![cri::IdMapping {
                    host_id: 100_000,
                    container_id: 1,
                    length: 65536,
                }],
                gids: vec![cri::IdMapping {
                    host_id: 100_000,
                    container_id: 0,
                    length: 65536,
                }],
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    cases.push(("user namespace", config, tonic::Code::InvalidArgument));

    for (what, config, code) in cases {
        let err =
            p.c.runtime
                .run_pod_sandbox(cri::RunPodSandboxRequest {
                    config: Some(config),
                    runtime_handler: String::new(),
                })
                .await
                .unwrap_err();
        assert_eq!(err.code(), code, "{what}: {err:?}");
    }
    assert_eq!(sandboxes(&mut p).await.len(), 1, "only the test's pod");
    assert_eq!(
        cni::mounts_under(p.d.dir()).len(),
        mounts,
        "a mount was left"
    );
    assert_eq!(cni::veths_on(&p.net.bridge), veths, "a veth was left");
    // The pod's own files were not touched by any of it.
    let id = p.run(p.config("c", &["sleep", "60"])).await;
    let resolv = exec(&mut p, &id, "cat /etc/resolv.conf /etc/hosts; hostname").await;
    assert!(
        !resolv.contains("6.6.6.6") && !resolv.contains("evil"),
        "{resolv}"
    );
    assert!(resolv.trim_end().ends_with("pod"), "{resolv}");
}

/// CreateContainer uses the pod's config as the pod was created, not the copy in the
/// request: a forged copy cannot move the container's log to another directory or
/// change its hostname.
#[tokio::test(flavor = "multi_thread")]
async fn create_container_ignores_a_forged_sandbox_config() {
    let mut p = TestPod::set_up(oci::busybox_image(), "").await;
    let elsewhere = p.d.dir().join("elsewhere");
    let mut forged = p.sandbox_config.clone();
    forged.log_directory = elsewhere.display().to_string();
    forged.hostname = "forged".into();
    let id =
        p.c.runtime
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: p.sandbox.clone(),
                config: Some(p.config("c", &["/bin/sh", "-c", "echo $HOSTNAME; sleep 60"])),
                sandbox_config: Some(forged),
            })
            .await
            .unwrap()
            .into_inner()
            .container_id;
    p.start(&id).await;
    let status =
        p.c.runtime
            .container_status(cri::ContainerStatusRequest {
                container_id: id.clone(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
    assert_eq!(
        status.log_path,
        p.logs.join("c/0.log").display().to_string()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = p.logs.join("c/0.log");
    while !fs::read_to_string(&log).is_ok_and(|l| l.contains("pod")) {
        assert!(
            Instant::now() < deadline,
            "no log line in {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!fs::read_to_string(&log).unwrap().contains("forged"));
    assert!(!elsewhere.exists(), "the forged log directory was made");
}

/// A container may join the PID namespace of a running container of its own pod
/// (NamespaceMode TARGET), never one of another pod, a stopped one, or an unknown one.
#[tokio::test(flavor = "multi_thread")]
async fn pid_namespace_targets_are_running_containers_of_the_same_pod() {
    let mut p = TestPod::set_up(oci::busybox_image(), "").await;
    let target_config = |p: &TestPod, name: &str, target: &str| {
        let mut config = p.config(name, &["sleep", "60"]);
        config.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    pid: cri::NamespaceMode::Target as i32,
                    target_id: target.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        config
    };
    // A running container in another pod of the same daemon.
    let other = other_pod(&p, "other");
    let other_sandbox =
        p.c.runtime
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(other.clone()),
                runtime_handler: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .pod_sandbox_id;
    let foreign =
        p.c.runtime
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: other_sandbox,
                config: Some(p.config("foreign", &["sleep", "61"])),
                sandbox_config: Some(other),
            })
            .await
            .unwrap()
            .into_inner()
            .container_id;
    p.start(&foreign).await;
    let err = p
        .create(target_config(&p, "a", &foreign))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let err = p
        .create(target_config(&p, "b", "no-such-container"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let done = p.run(p.config("done", &["true"])).await;
    p.wait_exit(&done).await;
    let err = p.create(target_config(&p, "c", &done)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    // Its own pod's running container: shared, the target's sleep is visible.
    let own = p.run(p.config("own", &["sleep", "62"])).await;
    let joined = p.run(target_config(&p, "d", &own)).await;
    let ps = exec(&mut p, &joined, "ps -o args").await;
    assert!(ps.contains("sleep 62"), "{ps}");
    assert!(!ps.contains("sleep 61"), "{ps}");
}

/// Regression (issue 14): the pause container ran without a seccomp filter.
#[tokio::test(flavor = "multi_thread")]
async fn the_pause_process_runs_under_the_default_seccomp_profile() {
    let mut p = TestPod::set_up(oci::busybox_image(), "").await;
    let info =
        p.c.runtime
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: p.sandbox.clone(),
                verbose: true,
            })
            .await
            .unwrap()
            .into_inner()
            .info;
    let info: serde_json::Value = serde_json::from_str(&info["info"]).unwrap();
    let pid = info["pid"].as_i64().unwrap();
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let seccomp = status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .unwrap()
        .trim();
    assert_eq!(seccomp, "2", "pause {pid} is not filtered:\n{status}");
}

/// Localhost seccomp profiles are regular files of bounded size: naming /dev/zero (or
/// a FIFO) neither hangs nor exhausts crustd, it is refused.
#[tokio::test(flavor = "multi_thread")]
async fn localhost_seccomp_profiles_that_are_not_small_files_are_refused() {
    let mut p = TestPod::set_up(oci::busybox_image(), "").await;
    let fifo = p.d.dir().join("profile.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    for (name, path) in [
        ("zero", "/dev/zero".to_string()),
        ("fifo", fifo.display().to_string()),
    ] {
        let mut config = p.config(name, &["true"]);
        config.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                seccomp: Some(cri::SecurityProfile {
                    profile_type: cri::security_profile::ProfileType::Localhost as i32,
                    localhost_ref: path.clone(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let started = Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(20), p.create(config))
            .await
            .expect("CreateContainer hung on the profile")
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{path}: {err:?}");
        assert!(err.message().contains("not a regular file"), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}

/// Regression (issue 14): crust ran containers with any runc, also one without the
/// fix for CVE-2024-21626 (Leaky Vessels). Such a runc stops crustd at start.
#[tokio::test(flavor = "multi_thread")]
async fn a_runc_without_the_leaky_vessels_fix_is_refused_at_start() {
    let mut d = Crustd::start().await;
    d.stop();
    let fake = d.dir().join("old-runc");
    fs::write(
        &fake,
        "#!/bin/sh\necho 'runc version 1.1.11'\necho 'commit: v1.1.11-0-g4bccb38c'\n\
         echo 'spec: 1.0.2-dev'\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
    d.set_extra_config(&format!("[runtimes.runc]\npath = {fake:?}\n"));
    let (status, log) = d.start_expecting_exit();
    assert!(!status.success(), "{log}");
    assert!(log.contains("CVE-2024-21626"), "{log}");
    // The machine's own runc (Debian's patched 1.1.5, or newer) is accepted.
    d.set_extra_config("");
    d.start_again().await;
}
