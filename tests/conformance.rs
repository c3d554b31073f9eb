//! End-to-end regressions for the critest v1.32 specs crust failed (issue 13), each
//! making the spec's CRI calls and its assertions against a real crustd with real runc,
//! CNI plugins and a busybox image from a registry on loopback. critest itself is a Go
//! program that cannot be built here; these keep its checks in the repository.

mod support;

use std::time::{Duration, Instant};

use crust_proto::cri;
use support::oci;
use support::pod::TestPod;
use tonic::Code;

fn sh(script: &str) -> Vec<&str> {
    vec!["/bin/sh", "-c", script]
}

async fn exec_sync(
    p: &mut TestPod,
    id: &str,
    cmd: &[&str],
    timeout: i64,
) -> Result<cri::ExecSyncResponse, tonic::Status> {
    p.c.runtime
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout,
        })
        .await
        .map(|r| r.into_inner())
}

/// A uuid-like id that names nothing, as critest's `uuid.New().String()`.
fn unknown_id() -> String {
    let bytes: [u8; 16] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Regression (kubelet readiness probes `wget http://127.0.0.1` timed out): `lo` was
/// DOWN in pods whose conflist has no loopback plugin. One container serves HTTP on
/// 127.0.0.1:80 only; another reaches it through the pod's shared localhost.
#[tokio::test(flavor = "multi_thread")]
async fn containers_of_a_pod_without_a_loopback_plugin_reach_each_other_on_127_0_0_1() {
    let mut p = TestPod::set_up_with_plugins(oci::busybox_image(), "", &[]).await;
    let conflist = std::fs::read_to_string(p.d.cni_conf_dir().join("10-test.conflist")).unwrap();
    assert!(!conflist.contains("loopback"), "{conflist}");

    let server = p
        .run(p.config(
            "server",
            &sh(
                "mkdir -p /tmp/www && echo hello-from-lo > /tmp/www/index.html \
                 && exec httpd -f -p 127.0.0.1:80 -h /tmp/www",
            ),
        ))
        .await;
    let client = p.run(p.config("client", &["/bin/sleep", "1000"])).await;

    // The probe kubelet runs, retried until the server listens.
    let probe = ["wget", "-qO-", "http://127.0.0.1:80/"];
    let deadline = Instant::now() + Duration::from_secs(20);
    let out = loop {
        let out = exec_sync(&mut p, &client, &probe, 5).await.unwrap();
        if out.exit_code == 0 || Instant::now() > deadline {
            break out;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        (out.exit_code, String::from_utf8_lossy(&out.stdout).as_ref()),
        (0, "hello-from-lo\n"),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And the server's own container reaches itself on localhost too.
    let out = exec_sync(&mut p, &server, &probe, 5).await.unwrap();
    assert_eq!(out.exit_code, 0, "{out:?}");
}

/// critest `Idempotence StopPodSandbox/StopContainer/RemovePodSandbox/RemoveContainer
/// should not return an error if not found`, while Status of the same ids stays
/// NotFound.
#[tokio::test(flavor = "multi_thread")]
async fn stop_and_remove_of_unknown_ids_succeed_and_status_is_not_found() {
    let mut p = TestPod::set_up(oci::busybox_image(), "").await;
    let rt = &mut p.c.runtime;
    let id = unknown_id();
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    rt.stop_container(cri::StopContainerRequest {
        container_id: id.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();

    let err = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: id.clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    // An empty id is bad input, not an unknown one.
    let err = rt
        .stop_container(cri::StopContainerRequest {
            container_id: String::new(),
            timeout: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // critest `... should not return an error if already stopped`: a stopped and
    // removed container stopped and removed again, with the pod still there.
    let c = p.run(p.config("idem", &sh("top"))).await;
    for _ in 0..2 {
        p.c.runtime
            .stop_container(cri::StopContainerRequest {
                container_id: c.clone(),
                timeout: 60,
            })
            .await
            .unwrap();
    }
    for _ in 0..2 {
        p.c.runtime
            .remove_container(cri::RemoveContainerRequest {
                container_id: c.clone(),
            })
            .await
            .unwrap();
    }
    p.c.runtime
        .stop_container(cri::StopContainerRequest {
            container_id: c.clone(),
            timeout: 0,
        })
        .await
        .unwrap();
    // The pod itself is untouched by all of this.
    let st =
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
    assert_eq!(st.state, cri::PodSandboxState::SandboxReady as i32);
}

/// critest `runtime should support execSync with timeout [Conformance]`: `sleep 4321`
/// with a one-second timeout fails, and afterwards no `sleep` process is left in the
/// container (critest runs `sh -c "pgrep sleep || true"`; busybox-static has no pgrep,
/// so the same match on /proc/*/comm). crust used to leave the killed process behind.
#[tokio::test(flavor = "multi_thread")]
async fn exec_sync_past_its_timeout_fails_and_leaves_no_process() {
    let mut p = TestPod::set_up(oci::busybox_image(), "").await;
    // critest's default container runs `top`.
    let id = p.run(p.config("execsync-timeout", &["top"])).await;

    let start = Instant::now();
    let err = exec_sync(&mut p, &id, &["sleep", "4321"], 1)
        .await
        .unwrap_err();
    let took = start.elapsed();
    // DeadlineExceeded is what kubelet's CRI client turns into a probe timeout.
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(10),
        "{took:?}"
    );

    let check = [
        "sh",
        "-c",
        "grep -lx sleep /proc/[0-9]*/comm 2>/dev/null || true",
    ];
    let out = exec_sync(&mut p, &id, &check, 30).await.unwrap();
    assert_eq!(out.exit_code, 0, "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "");

    // A command that ends in time is unaffected by the timeout.
    let out = exec_sync(&mut p, &id, &["echo", "hello"], 1).await.unwrap();
    assert_eq!((out.exit_code, out.stdout), (0, b"hello\n".to_vec()));
}

/// critest `Streaming runtime should support portforward [Conformance]` ("Handling
/// connection for 12001", then "lost connection to pod"): crust dials the pod's
/// 127.0.0.1, which failed with `lo` DOWN; client-go closes the whole connection on an
/// error-stream message. With a conflist that has no loopback plugin, a web server on
/// the pod's port answers through the forward, twice over one session, with nothing
/// on the error stream.
#[tokio::test(flavor = "multi_thread")]
async fn port_forward_reaches_a_pod_without_a_loopback_plugin() {
    use support::stream_client::PortForward;
    let mut p = TestPod::set_up_with_plugins(oci::busybox_image(), "", &[]).await;
    let web = p
        .run(p.config(
            "web",
            &sh(
                "mkdir -p /tmp/www && echo hi-from-nginx > /tmp/www/index.html \
                 && exec httpd -f -p 80 -h /tmp/www",
            ),
        ))
        .await;
    let ready = exec_sync(
        &mut p,
        &web,
        &sh(
            "for i in $(seq 100); do wget -qO- http://127.0.0.1:80/ && exit 0; \
             sleep 0.1; done; exit 1",
        ),
        30,
    )
    .await
    .unwrap();
    assert_eq!(ready.exit_code, 0, "httpd did not come up: {ready:?}");

    let url =
        p.c.runtime
            .port_forward(cri::PortForwardRequest {
                pod_sandbox_id: p.sandbox.clone(),
                port: vec![80],
            })
            .await
            .unwrap()
            .into_inner()
            .url;
    let mut pf = PortForward::connect(&url).await.unwrap();
    for _ in 0..2 {
        let f = pf.request(80, b"GET / HTTP/1.0\r\n\r\n").await;
        assert!(f.error.is_empty(), "error stream: {f:?}");
        let text = f.text();
        assert!(
            text.contains(" 200") && text.contains("hi-from-nginx"),
            "{f:?}"
        );
    }
    // The session is still open for the next local connection.
    assert!(!pf.conn().wait_closed(Duration::from_millis(300)).await);
}

async fn status(p: &mut TestPod, id: &str) -> cri::ContainerStatus {
    p.c.runtime
        .container_status(cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
}

/// Waits up to 10 s for the container's log to hold a line; its text.
async fn first_log_line(p: &TestPod, name: &str) -> String {
    let log = p.logs.join(format!("{name}/0.log"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(line) = std::fs::read_to_string(&log)
            .ok()
            .and_then(|l| l.lines().next().map(str::to_owned))
        {
            // "<time> stdout F <text>"
            return line.splitn(4, ' ').nth(3).unwrap_or_default().to_owned();
        }
        assert!(Instant::now() < deadline, "nothing in {}", log.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// critest gates its UserNamespaces, recursive read-only and SupplementalGroupsPolicy
/// specs on what Status advertises: the default handler ("") and each configured one
/// say what they support, truthfully.
#[tokio::test(flavor = "multi_thread")]
async fn status_advertises_each_handlers_features() {
    let mut p = TestPod::set_up(oci::busybox_image(), "").await;
    let status =
        p.c.runtime
            .status(cri::StatusRequest { verbose: false })
            .await
            .unwrap()
            .into_inner();
    assert_eq!(
        status.features,
        Some(cri::RuntimeFeatures {
            supplemental_groups_policy: true
        })
    );
    let names: Vec<&str> = status
        .runtime_handlers
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    assert_eq!(names, ["", "embedded", "runc"]);
    // The embedded handler's user-namespaced pods run on runc (see
    // tests/user_namespaces.rs), so every handler has both.
    for handler in &status.runtime_handlers {
        assert_eq!(
            handler.features,
            Some(cri::RuntimeHandlerFeatures {
                recursive_read_only_mounts: true,
                user_namespaces: true,
            }),
            "{handler:?}"
        );
    }
}

/// critest `SupplementalGroupsPolicy`: with Merge (the default) the groups the image's
/// /etc/group gives the user are added to the requested ones; with Strict they are
/// not. The first process, an exec'd one and ContainerStatus.user all agree.
#[tokio::test(flavor = "multi_thread")]
async fn supplemental_groups_policy_merge_and_strict() {
    let mut p = TestPod::set_up(oci::busybox_image(), "").await;
    // In the image, app (1000) is a member of extra (2000).
    for (name, policy, groups) in [
        (
            "merge",
            cri::SupplementalGroupsPolicy::Merge,
            vec![1000, 1234, 2000],
        ),
        (
            "strict",
            cri::SupplementalGroupsPolicy::Strict,
            vec![1000, 1234],
        ),
    ] {
        let mut config = p.config(name, &sh("id -G; sleep 60"));
        config.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                run_as_user: Some(cri::Int64Value { value: 1000 }),
                supplemental_groups: vec![1234],
                supplemental_groups_policy: policy as i32,
                ..Default::default()
            }),
            ..Default::default()
        });
        let id = p.run(config).await;
        let expected: String = groups
            .iter()
            .map(|g| g.to_string())
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(first_log_line(&p, name).await, expected, "{name}");
        let out = exec_sync(&mut p, &id, &["id", "-G"], 10).await.unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{expected}\n")
        );
        let mut user = status(&mut p, &id).await.user.unwrap().linux.unwrap();
        user.supplemental_groups.sort();
        assert_eq!(
            user,
            cri::LinuxContainerUser {
                uid: 1000,
                gid: 1000,
                supplemental_groups: groups,
            },
            "{name}"
        );
    }
}

/// A host directory with a tmpfs mounted in it, as critest's `createHostPathForRROMount`;
/// unmounted and removed at the end.
struct RroHostPath(std::path::PathBuf);

impl RroHostPath {
    fn new(p: &TestPod) -> RroHostPath {
        let dir = p.d.dir().join("rro-host");
        let tmpfs = dir.join("tmpfs");
        std::fs::create_dir_all(&tmpfs).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "none"])
            .arg(&tmpfs)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount a tmpfs");
        RroHostPath(dir)
    }
}

impl Drop for RroHostPath {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .args(["-l"])
            .arg(self.0.join("tmpfs"))
            .status();
    }
}

/// critest `Container Mount Readonly`: a recursive read-only mount makes the mounts
/// below it read-only too (runc 1.1 cannot, crust stages the tree), a plain read-only
/// one does not; rro with a writable mount or non-private propagation is refused; the
/// staging leaves no mount behind.
#[tokio::test(flavor = "multi_thread")]
async fn recursive_read_only_mounts() {
    let mut p = TestPod::set_up(oci::busybox_image(), "").await;
    let host = RroHostPath::new(&p);
    let mount = |readonly: bool, rro: bool, propagation: cri::MountPropagation| cri::Mount {
        container_path: "/mnt".into(),
        host_path: host.0.display().to_string(),
        readonly,
        recursive_read_only: rro,
        selinux_relabel: true,
        propagation: propagation as i32,
        ..Default::default()
    };
    let private = cri::MountPropagation::PropagationPrivate;

    let mut config = p.config("rro", &["sleep", "60"]);
    config.mounts = vec![mount(true, true, private)];
    let rro = p.run(config).await;
    let staged: Vec<String> = support::cni::mounts_under(p.d.dir())
        .into_iter()
        .filter(|m| m.contains("/staged/"))
        .collect();
    assert!(
        staged.is_empty(),
        "a staged tree stayed mounted: {staged:?}"
    );
    let out = exec_sync(
        &mut p,
        &rro,
        &sh(r#"touch /mnt/tmpfs/foo 2>&1 | grep -q "Read-only file system""#),
        10,
    )
    .await
    .unwrap();
    assert_eq!(out.exit_code, 0, "the submount is writable");
    let out = exec_sync(&mut p, &rro, &["touch", "/mnt/top"], 10)
        .await
        .unwrap();
    assert_ne!(out.exit_code, 0, "the mount itself is writable");

    let mut config = p.config("ro", &["sleep", "60"]);
    config.mounts = vec![mount(true, false, private)];
    let ro = p.run(config).await;
    let out = exec_sync(&mut p, &ro, &["touch", "/mnt/tmpfs/file"], 10)
        .await
        .unwrap();
    assert_eq!(out.exit_code, 0, "{}", String::from_utf8_lossy(&out.stderr));

    for (name, bad) in [
        ("rw", mount(false, true, private)),
        (
            "h2c",
            mount(
                true,
                true,
                cri::MountPropagation::PropagationHostToContainer,
            ),
        ),
        (
            "bidi",
            mount(true, true, cri::MountPropagation::PropagationBidirectional),
        ),
    ] {
        let mut config = p.config(name, &["true"]);
        config.mounts = vec![bad];
        let err = p.create(config).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{name}: {err:?}");
    }
    for id in [rro, ro] {
        p.c.runtime
            .stop_container(cri::StopContainerRequest {
                container_id: id.clone(),
                timeout: 0,
            })
            .await
            .unwrap();
        p.c.runtime
            .remove_container(cri::RemoveContainerRequest { container_id: id })
            .await
            .unwrap();
    }
    let left: Vec<String> = support::cni::mounts_under(p.d.dir())
        .into_iter()
        .filter(|m| m.contains("/containers/") || m.contains("/staged/"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
