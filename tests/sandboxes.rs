//! End-to-end: pod sandboxes of a real crustd with real runc and Debian's CNI plugins.
//!
//! Every test has its own daemon, bridge, subnet and IPAM store; traffic stays on the
//! host's loopback/bridge and in the namespaces the tests made.

mod support;

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crust_proto::cri;
use support::cni::{self, TestNetwork, in_netns, mounts_under};
use support::crustd::{CriClient, Crustd};
use tonic::Code;

fn config(name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.to_string(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.to_string(),
        labels: HashMap::from([
            ("app".to_string(), name.to_string()),
            ("io.kubernetes.pod.uid".to_string(), format!("uid-{name}")),
        ]),
        annotations: HashMap::from([("note".to_string(), "kept as given".to_string())]),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    pid: cri::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn host_network(mut c: cri::PodSandboxConfig) -> cri::PodSandboxConfig {
    let ns = c
        .linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .namespace_options
        .as_mut()
        .unwrap();
    ns.network = cri::NamespaceMode::Node as i32;
    c
}

async fn run(c: &mut CriClient, config: cri::PodSandboxConfig) -> Result<String, tonic::Status> {
    c.runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .map(|r| r.into_inner().pod_sandbox_id)
}

async fn status(c: &mut CriClient, id: &str) -> (cri::PodSandboxStatus, serde_json::Value) {
    let r = c
        .runtime
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.to_string(),
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

async fn stop(c: &mut CriClient, id: &str) {
    c.runtime
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        })
        .await
        .unwrap();
}

async fn remove(c: &mut CriClient, id: &str) {
    c.runtime
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        })
        .await
        .unwrap();
}

async fn list(c: &mut CriClient, filter: Option<cri::PodSandboxFilter>) -> Vec<cri::PodSandbox> {
    c.runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter })
        .await
        .unwrap()
        .into_inner()
        .items
}

fn pid_alive(pid: i64) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

/// What a sandbox may leave behind anywhere: netns files, mounts, pod files, bundles,
/// CNI cache entries, bridge ports, IP reservations.
fn assert_nothing_left(d: &Crustd, net: &TestNetwork) {
    let state = d.dir().join("state");
    let netns: Vec<_> = fs::read_dir(state.join("netns"))
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(netns.is_empty(), "netns left: {netns:?}");
    let mounts: Vec<_> = mounts_under(d.dir())
        .into_iter()
        .filter(|m| !m.ends_with("/netns"))
        .collect();
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    for dir in [d.root().join("sandboxes"), state.join("sandboxes")] {
        let left: Vec<_> = fs::read_dir(&dir)
            .map(|r| r.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{} left: {left:?}", dir.display());
    }
    let cache: Vec<_> = fs::read_dir(d.dir().join("cni-cache/results"))
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(cache.is_empty(), "cni cache left: {cache:?}");
    assert!(
        cni::veths_on(&net.bridge).is_empty(),
        "veths left: {:?}",
        cni::veths_on(&net.bridge)
    );
    assert!(
        net.reservations().is_empty(),
        "ips left: {:?}",
        net.reservations()
    );
}

fn pause_processes(d: &Crustd) -> usize {
    let marker = d.dir().join("state").display().to_string();
    let mut n = 0;
    for e in fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = fs::read_to_string(e.path().join("cmdline")) {
            if cmd.starts_with("/pause") || cmd.contains(&marker) && cmd.contains("runc") {
                if let Ok(root) = fs::read_link(e.path().join("root")) {
                    if root.starts_with(&marker) {
                        n += 1;
                    }
                }
            }
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread")]
async fn run_status_list_stop_remove() {
    let d = Crustd::start().await;
    let net = TestNetwork::create(&d.cni_conf_dir(), d.dir(), &[]);
    let mut c = d.client().await;
    let id = run(&mut c, config("web")).await.unwrap();

    let (st, info) = status(&mut c, &id).await;
    assert_eq!(st.state, cri::PodSandboxState::SandboxReady as i32);
    assert_eq!(st.metadata.as_ref().unwrap().name, "web");
    assert_eq!(st.labels["app"], "web");
    assert_eq!(st.annotations["note"], "kept as given");
    let ip = st.network.as_ref().unwrap().ip.clone();
    assert!(ip.starts_with(&format!("{}.", net.prefix)), "{ip}");
    let netns = PathBuf::from(info["netnsPath"].as_str().unwrap());
    let (ok, out) = in_netns(&netns, &["ip", "-o", "-4", "addr", "show", "eth0"]);
    assert!(ok && out.contains(&format!("{ip}/24")), "{out}");
    let pid = info["pid"].as_i64().unwrap();
    assert!(pid_alive(pid));
    let hostname = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-u", "hostname"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&hostname.stdout).trim(), "web");
    // The pause process is PID 1 of the pod's own PID namespace.
    assert_ne!(
        fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap(),
        fs::read_link("/proc/self/ns/pid").unwrap()
    );

    // Filters: id prefix, state, labels.
    let by_id = list(
        &mut c,
        Some(cri::PodSandboxFilter {
            id: id[..12].to_string(),
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(by_id.len(), 1);
    let by_label = |v: &str| cri::PodSandboxFilter {
        label_selector: HashMap::from([("app".to_string(), v.to_string())]),
        ..Default::default()
    };
    assert_eq!(list(&mut c, Some(by_label("web"))).await.len(), 1);
    assert!(list(&mut c, Some(by_label("other"))).await.is_empty());
    let notready = cri::PodSandboxFilter {
        state: Some(cri::PodSandboxStateValue {
            state: cri::PodSandboxState::SandboxNotready as i32,
        }),
        ..Default::default()
    };
    assert!(list(&mut c, Some(notready.clone())).await.is_empty());

    stop(&mut c, &id).await;
    let (st, _) = status(&mut c, &id).await;
    assert_eq!(st.state, cri::PodSandboxState::SandboxNotready as i32);
    assert!(!pid_alive(pid));
    assert!(!netns.exists());
    assert_eq!(list(&mut c, Some(notready)).await.len(), 1);
    stop(&mut c, &id).await;
    remove(&mut c, &id).await;
    remove(&mut c, &id).await;
    let err = c
        .runtime
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(list(&mut c, None).await.is_empty());
    assert_nothing_left(&d, &net);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_refused_and_leave_nothing() {
    let d = Crustd::start().await;
    let net = TestNetwork::create(&d.cni_conf_dir(), d.dir(), &[]);
    let mut c = d.client().await;
    let id = run(&mut c, config("dup")).await.unwrap();
    let err = run(&mut c, config("dup")).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    // Another attempt of the same pod is a different sandbox.
    let mut again = config("dup");
    again.metadata.as_mut().unwrap().attempt = 1;
    let id2 = run(&mut c, again).await.unwrap();

    let mut no_meta = config("x");
    no_meta.metadata = None;
    assert_eq!(
        run(&mut c, no_meta).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let mut bad_sysctl = config("y");
    bad_sysctl
        .linux
        .as_mut()
        .unwrap()
        .sysctls
        .insert("kernel.panic".into(), "1".into());
    let err = run(&mut c, bad_sysctl).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("kernel.panic"), "{err:?}");
    let err = c
        .runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config("z")),
            runtime_handler: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("nope"), "{err:?}");
    // Stopping an unknown id succeeds (critest's idempotence spec), touching nothing.
    c.runtime
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: "0123456789ab".into(),
        })
        .await
        .unwrap();
    let err = c
        .runtime
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(list(&mut c, None).await.len(), 2);
    for id in [id, id2] {
        stop(&mut c, &id).await;
        remove(&mut c, &id).await;
    }
    assert_nothing_left(&d, &net);
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_reach_each_other_and_host_ports_reach_the_pod() {
    let d = Crustd::start().await;
    let net = TestNetwork::create(&d.cni_conf_dir(), d.dir(), &[]);
    let mut c = d.client().await;
    let a = run(&mut c, config("a")).await.unwrap();
    let host_port = 20000 + (std::process::id() % 20000) as i32;
    let mut with_port = config("b");
    with_port.port_mappings = vec![cri::PortMapping {
        protocol: cri::Protocol::Tcp as i32,
        container_port: 8080,
        host_port,
        host_ip: String::new(),
    }];
    let b = run(&mut c, with_port).await.unwrap();
    let (sa, ia) = status(&mut c, &a).await;
    let (sb, ib) = status(&mut c, &b).await;
    let (ns_a, ns_b) = (
        PathBuf::from(ia["netnsPath"].as_str().unwrap()),
        PathBuf::from(ib["netnsPath"].as_str().unwrap()),
    );
    let ip_b = sb.network.unwrap().ip;
    let (ok, out) = in_netns(&ns_a, &["busybox", "ping", "-c", "1", "-W", "3", &ip_b]);
    assert!(ok, "a cannot reach b: {out}");
    let ip_a = sa.network.unwrap().ip;
    let (ok, out) = in_netns(&ns_b, &["busybox", "ping", "-c", "1", "-W", "3", &ip_a]);
    assert!(ok, "b cannot reach a: {out}");

    // A listener in pod b, reached through the host port on the bridge address.
    let www = d.dir().join("www");
    fs::create_dir_all(&www).unwrap();
    fs::write(www.join("index.html"), "hello from b").unwrap();
    let mut httpd = Command::new("nsenter")
        .arg(format!("--net={}", ns_b.display()))
        .args(["busybox", "httpd", "-f", "-p", "8080", "-h"])
        .arg(&www)
        .spawn()
        .unwrap();
    let addr = format!("{}:{host_port}", net.gateway());
    let mut body = String::new();
    for _ in 0..50 {
        if let Ok(text) = http_get(&addr) {
            body = text;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = httpd.kill();
    let _ = httpd.wait();
    assert!(
        body.starts_with("HTTP/1.") && body.ends_with("hello from b"),
        "{body}"
    );
    for id in [a, b] {
        stop(&mut c, &id).await;
        remove(&mut c, &id).await;
    }
    // portmap's per-pod rules are gone with the pod.
    let rules = Command::new("iptables-save")
        .args(["-t", "nat"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&rules.stdout).contains(&format!("--dport {host_port}")));
    assert_nothing_left(&d, &net);
}

#[tokio::test(flavor = "multi_thread")]
async fn host_network_pods() {
    let d = Crustd::start().await;
    let net = TestNetwork::create(&d.cni_conf_dir(), d.dir(), &[]);
    let mut c = d.client().await;
    let id = run(&mut c, host_network(config("hostnet"))).await.unwrap();
    let (st, info) = status(&mut c, &id).await;
    assert_eq!(st.state, cri::PodSandboxState::SandboxReady as i32);
    assert!(info["netnsPath"].is_null());
    let pid = info["pid"].as_i64().unwrap();
    assert_eq!(
        fs::read_link(format!("/proc/{pid}/ns/net")).unwrap(),
        fs::read_link("/proc/self/ns/net").unwrap()
    );
    assert_eq!(
        st.linux
            .unwrap()
            .namespaces
            .unwrap()
            .options
            .unwrap()
            .network,
        cri::NamespaceMode::Node as i32
    );
    stop(&mut c, &id).await;
    remove(&mut c, &id).await;
    assert_nothing_left(&d, &net);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_plugin_leaves_nothing_behind() {
    let d = Crustd::start().await;
    let script = d.cni_bin_dir().join("crust-fail");
    fs::write(
        &script,
        "#!/bin/sh\ncat >/dev/null\nif [ \"$CNI_COMMAND\" = ADD ]; then\n  echo '{\"cniVersion\":\"1.0.0\",\"code\":7,\"msg\":\"injected failure\"}'\n  exit 1\nfi\nexit 0\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let net = TestNetwork::create(&d.cni_conf_dir(), d.dir(), &[r#"{"type":"crust-fail"}"#]);
    let mut c = d.client().await;
    let err = run(&mut c, config("fails")).await.unwrap_err();
    assert!(err.message().contains("network setup"), "{err:?}");
    assert!(err.message().contains("injected failure"), "{err:?}");
    assert!(list(&mut c, None).await.is_empty());
    assert_nothing_left(&d, &net);
    // The name is free again.
    fs::write(&script, "#!/bin/sh\ncat\n").unwrap();
    let net2 = TestNetwork::create(&d.cni_conf_dir(), d.dir(), &[]);
    let id = run(&mut c, config("fails")).await.unwrap();
    stop(&mut c, &id).await;
    remove(&mut c, &id).await;
    assert_nothing_left(&d, &net2);
}

#[tokio::test(flavor = "multi_thread")]
async fn sandboxes_survive_a_restart_and_dead_pauses_are_noticed() {
    let mut d = Crustd::start().await;
    let net = TestNetwork::create(&d.cni_conf_dir(), d.dir(), &[]);
    let mut c = d.client().await;
    let keep = run(&mut c, config("keep")).await.unwrap();
    let die = run(&mut c, config("die")).await.unwrap();
    let (before, _) = status(&mut c, &keep).await;
    let (_, die_info) = status(&mut c, &die).await;
    d.kill();
    let pid = die_info["pid"].as_i64().unwrap();
    // SAFETY: kill(2) on the pause process we just read from crust's status.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    for _ in 0..100 {
        if !pid_alive(pid) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    d.start_again().await;
    let mut c = d.client().await;
    let (after, _) = status(&mut c, &keep).await;
    assert_eq!(after.state, cri::PodSandboxState::SandboxReady as i32);
    assert_eq!(after.network, before.network);
    let (dead, _) = status(&mut c, &die).await;
    assert_eq!(dead.state, cri::PodSandboxState::SandboxNotready as i32);
    // A pause dying while crustd runs is noticed too.
    let (_, keep_info) = status(&mut c, &keep).await;
    unsafe { libc::kill(keep_info["pid"].as_i64().unwrap() as i32, libc::SIGKILL) };
    let mut state = 0;
    for _ in 0..100 {
        state = status(&mut c, &keep).await.0.state;
        if state == cri::PodSandboxState::SandboxNotready as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(state, cri::PodSandboxState::SandboxNotready as i32);
    for id in [keep, die] {
        stop(&mut c, &id).await;
        remove(&mut c, &id).await;
    }
    assert_nothing_left(&d, &net);
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_cycles_leave_nothing() {
    let d = Crustd::start().await;
    let net = TestNetwork::create(&d.cni_conf_dir(), d.dir(), &[]);
    let mut c = d.client().await;
    for i in 0..50 {
        let id = run(&mut c, config(&format!("cycle{i}"))).await.unwrap();
        stop(&mut c, &id).await;
        remove(&mut c, &id).await;
    }
    assert!(list(&mut c, None).await.is_empty());
    assert_nothing_left(&d, &net);
    assert_eq!(pause_processes(&d), 0);
    for handler in ["runc", "embedded"] {
        let state: Vec<_> = fs::read_dir(d.dir().join("state/runtime").join(handler))
            .map(|r| r.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(state.is_empty(), "{handler} state left: {state:?}");
    }
}

/// A plain HTTP/1.0 GET of `/` from `addr`, returning the whole response.
fn http_get(addr: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut out = String::new();
    stream.read_to_string(&mut out)?;
    if out.is_empty() {
        return Err(std::io::Error::other("empty response"));
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_runtime_handler_picks_the_oci_runtime() {
    // crun refuses this machine's hybrid cgroup layout, so the second handler is runc
    // under another name and absolute path: what matters is handler -> binary and root.
    let d = Crustd::start_with(
        "[runtimes.runc]\npath = \"runc\"\n[runtimes.other]\npath = \"/usr/sbin/runc\"\n",
    )
    .await;
    let net = TestNetwork::create(&d.cni_conf_dir(), d.dir(), &[]);
    let mut c = d.client().await;
    let id = c
        .runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config("other")),
            runtime_handler: "other".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let (st, _) = status(&mut c, &id).await;
    assert_eq!(st.runtime_handler, "other");
    assert_eq!(st.state, cri::PodSandboxState::SandboxReady as i32);
    // The runtime keeps its state under the handler's own root.
    assert!(d.dir().join("state/runtime/other").join(&id).exists());
    stop(&mut c, &id).await;
    remove(&mut c, &id).await;
    assert_nothing_left(&d, &net);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pause_image_replaces_the_built_in_pause() {
    let reg = support::registry::Registry::start();
    let mut image = support::oci::busybox_image();
    image.config =
        serde_json::json!({"Entrypoint": ["/bin/sleep"], "Cmd": ["1000000"], "Env": ["PATH=/bin"]});
    support::oci::push_image(&reg.host(), "pause", "1", &image).await;
    let mut d = Crustd::start().await;
    d.set_top_config(&format!("pause_image = \"{}/pause:1\"\n", reg.host()));
    d.restart().await;
    let net = TestNetwork::create(&d.cni_conf_dir(), d.dir(), &[]);
    let mut c = d.client().await;
    // The image is pulled on first use.
    let id = run(&mut c, config("imaged")).await.unwrap();
    let (st, info) = status(&mut c, &id).await;
    assert_eq!(st.state, cri::PodSandboxState::SandboxReady as i32);
    let pid = info["pid"].as_i64().unwrap();
    // runc start returns once the process is released; its exec may still be under way.
    let mut cmdline = String::new();
    for _ in 0..100 {
        cmdline = fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmdline.starts_with("/bin/sleep") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(cmdline.starts_with("/bin/sleep\u{0}1000000"), "{cmdline:?}");
    // Its layers are pinned while the pod exists, and it survives a restart.
    d.restart().await;
    let mut c = d.client().await;
    assert_eq!(
        status(&mut c, &id).await.0.state,
        cri::PodSandboxState::SandboxReady as i32
    );
    stop(&mut c, &id).await;
    remove(&mut c, &id).await;
    assert_nothing_left(&d, &net);
    let rootfs: Vec<_> = fs::read_dir(d.dir().join("state/pause-rootfs"))
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(rootfs.is_empty(), "{rootfs:?}");
    assert!(
        fs::read_dir(d.root().join("containers"))
            .map(|r| r.count())
            .unwrap_or(0)
            == 0
    );
}

/// `crust version | grep -q ...` under pipefail, or `crust pods | head`: the client ends
/// by SIGPIPE when its reader goes, never by a panic in `println!` (exit 101).
#[tokio::test(flavor = "multi_thread")]
async fn the_client_ends_quietly_when_its_reader_goes() {
    use std::os::unix::process::ExitStatusExt;
    let d = Crustd::start().await;
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_crustd"))
        .arg("--listen")
        .arg(d.socket())
        .args(["ctl", "version"])
        .stdout(writer)
        .output()
        .expect("run crustd ctl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?}: {stderr}",
        out.status
    );
}
