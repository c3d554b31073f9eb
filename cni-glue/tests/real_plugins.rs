//! Integration tests with Debian's real CNI plugins (bridge, host-local, loopback,
//! portmap) in network namespaces made by the netns module. They need root, which the
//! test machines have; they never skip.
//!
//! Every test uses its own names (bridge `crtest<hex>`, a /24 in 10.88-10.99 that no
//! host address or route uses yet), keeps IPAM state and the cache in its temp dir, and
//! cleans up in a Drop guard even when an assertion fails. No traffic is sent.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crust_cni::{
    Cni, CniOptions, ErrorKind, NetNs, PodNetwork, PortMapping, Protocol, run_in_netns,
};

const PLUGIN_DIR: &str = "/usr/lib/cni";

static SALT: AtomicU32 = AtomicU32::new(0);

fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A unique 4-hex-digit suffix for this test in this process.
fn unique_suffix() -> String {
    let salt = SALT.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let mixed = std::process::id().wrapping_mul(2_654_435_761) ^ nanos ^ salt.wrapping_mul(40_503);
    format!("{:04x}", mixed & 0xffff)
}

/// A /24 in 10.88.0.0-10.99.255.0, derived from the pid, that the host does not use.
fn free_subnet() -> (u8, u8) {
    let used = format!(
        "{}{}",
        sh("ip", &["-o", "-4", "addr"]),
        sh("ip", &["-4", "route"])
    );
    let start = std::process::id() * 7 + SALT.fetch_add(1, Ordering::Relaxed) * 131;
    for i in 0..(12 * 256) {
        let n = (start + i) % (12 * 256);
        let (b, c) = (88 + (n / 256) as u8, (n % 256) as u8);
        if !used.contains(&format!("10.{b}.{c}.")) {
            return (b, c);
        }
    }
    panic!("no free subnet in 10.88.0.0/12");
}

/// Everything one test creates, removed on drop in reverse order.
struct TestEnv {
    root: tempfile::TempDir,
    suffix: String,
    bridge: String,
    network: String,
    subnet: (u8, u8),
    netns: Option<NetNs>,
    cni: Option<Cni>,
    pod: Option<PodNetwork>,
}

impl TestEnv {
    fn new(extra_bin_dir: bool) -> TestEnv {
        let suffix = unique_suffix();
        let root = tempfile::Builder::new()
            .prefix("crust-cni-test")
            .tempdir()
            .unwrap();
        let mut env = TestEnv {
            bridge: format!("crtest{suffix}"),
            network: format!("crtest-{suffix}"),
            subnet: free_subnet(),
            suffix,
            root,
            netns: None,
            cni: None,
            pod: None,
        };
        fs::create_dir_all(env.conf_dir()).unwrap();
        fs::create_dir_all(env.bin_dir()).unwrap();
        let mut bin_dirs = Vec::new();
        if extra_bin_dir {
            bin_dirs.push(env.bin_dir());
        }
        bin_dirs.push(PathBuf::from(PLUGIN_DIR));
        env.cni = Some(Cni::new(CniOptions {
            conf_dir: env.conf_dir(),
            bin_dirs,
            cache_dir: env.cache_dir(),
            plugin_timeout: Duration::from_secs(60),
        }));
        env.netns =
            Some(NetNs::create(&env.netns_dir(), &format!("crtest-{}", env.suffix)).unwrap());
        env
    }

    fn conf_dir(&self) -> PathBuf {
        self.root.path().join("net.d")
    }
    fn bin_dir(&self) -> PathBuf {
        self.root.path().join("bin")
    }
    fn cache_dir(&self) -> PathBuf {
        self.root.path().join("cache")
    }
    fn ipam_dir(&self) -> PathBuf {
        self.root.path().join("ipam")
    }
    fn netns_dir(&self) -> PathBuf {
        self.root.path().join("netns")
    }
    fn netns_path(&self) -> PathBuf {
        self.netns.as_ref().unwrap().path().to_path_buf()
    }
    fn cni(&self) -> &Cni {
        self.cni.as_ref().unwrap()
    }
    fn container_id(&self) -> String {
        format!("crtestpod{}", self.suffix)
    }

    /// Writes the conflist, with extra plugin JSON objects inserted after the bridge.
    fn write_conflist(&self, middle: &[&str]) {
        let (b, c) = self.subnet;
        let mut plugins = vec![
            r#"{"type": "loopback"}"#.to_string(),
            format!(
                r#"{{"type": "bridge", "bridge": "{}", "isGateway": true, "ipMasq": false,
                    "ipam": {{"type": "host-local", "ranges": [[{{"subnet": "10.{b}.{c}.0/24"}}]],
                              "dataDir": "{}"}}}}"#,
                self.bridge,
                self.ipam_dir().display()
            ),
        ];
        plugins.extend(middle.iter().map(|p| p.to_string()));
        plugins.push(r#"{"type": "portmap", "capabilities": {"portMappings": true}}"#.to_string());
        let text = format!(
            r#"{{"cniVersion": "1.0.0", "name": "{}", "plugins": [{}]}}"#,
            self.network,
            plugins.join(",")
        );
        fs::write(self.conf_dir().join("10-crtest.conflist"), text).unwrap();
    }

    fn pod(&self) -> PodNetwork {
        let mut pod = PodNetwork::new(self.container_id(), self.netns_path());
        pod.namespace = "default".into();
        pod.name = format!("pod-{}", self.suffix);
        pod.uid = format!("uid-{}", self.suffix);
        pod.port_mappings = vec![PortMapping {
            host_port: 30000 + (std::process::id() % 20000) as u16,
            container_port: 80,
            protocol: Protocol::Tcp,
            host_ip: "127.0.0.1".into(),
        }];
        pod
    }

    fn cache_file(&self) -> PathBuf {
        self.cache_dir().join("results").join(format!(
            "{}-{}-eth0",
            self.network,
            self.container_id()
        ))
    }

    /// Links on the host enslaved to the test bridge.
    fn bridge_ports(&self) -> String {
        sh("ip", &["-o", "link", "show", "master", &self.bridge])
    }

    /// IPAM reservation files naming the container.
    fn ipam_reservations(&self) -> Vec<PathBuf> {
        let dir = self.ipam_dir().join(&self.network);
        let Ok(entries) = fs::read_dir(&dir) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| fs::read_to_string(p).is_ok_and(|t| t.contains(&self.container_id())))
            .collect()
    }

    fn nat_rules_for_pod(&self) -> Vec<String> {
        sh("iptables-save", &["-t", "nat"])
            .lines()
            .filter(|l| l.contains(&self.container_id()))
            .map(str::to_string)
            .collect()
    }
}

fn mounted(path: &Path) -> bool {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let path = path.to_string_lossy();
    mountinfo
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(path.as_ref()))
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if let (Some(cni), Some(pod)) = (&self.cni, &self.pod)
            && let Err(err) = cni.teardown(pod)
        {
            eprintln!("cleanup: teardown: {err}");
        }
        if let Some(netns) = &self.netns
            && let Err(err) = netns.remove()
        {
            eprintln!("cleanup: remove netns: {err}");
        }
        // NetNs::create made the netns dir a (shared) bind mount of itself.
        while nix::mount::umount2(&self.netns_dir(), nix::mount::MntFlags::MNT_DETACH).is_ok() {}
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

#[test]
fn add_check_del_with_real_plugins_leaves_nothing_behind() {
    let mut env = TestEnv::new(false);
    env.write_conflist(&[]);
    let cni = env.cni();
    cni.network_ready().unwrap();

    let pod = env.pod();
    env.pod = Some(pod.clone());
    let cni = env.cni();
    let result = cni.setup(&pod).unwrap();

    // The pod IP is in the test subnet, on eth0 inside the netns.
    let (b, c) = env.subnet;
    let ip = result.primary_ip().expect("a pod ip").to_string();
    assert!(ip.starts_with(&format!("10.{b}.{c}.")), "{ip}");
    assert!(result.additional_ips().is_empty(), "{result:?}");
    let netns = env.netns_path();
    let addr = sh(
        "nsenter",
        &[
            &format!("--net={}", netns.display()),
            "ip",
            "-o",
            "-4",
            "addr",
            "show",
            "eth0",
        ],
    );
    assert!(addr.contains(&format!("inet {ip}/24")), "{addr}");
    // The same seen through run_in_netns (a child inherits the thread's netns).
    let inside = run_in_netns(&netns, || {
        Command::new("ip")
            .args(["-o", "-4", "addr"])
            .output()
            .unwrap()
    })
    .unwrap();
    let inside = String::from_utf8_lossy(&inside.stdout);
    assert!(
        inside.contains(&format!("eth0    inet {ip}/24")),
        "{inside}"
    );
    assert!(
        inside.contains("lo    inet 127.0.0.1/8"),
        "loopback plugin ran: {inside}"
    );

    // The host side: a veth on the bridge, a reservation, portmap's rules, the cache.
    let host_veth = result
        .interfaces
        .iter()
        .find(|i| i.sandbox.is_none() && i.name != env.bridge)
        .expect("host veth in result")
        .name
        .clone();
    assert!(
        env.bridge_ports().contains(&host_veth),
        "{}",
        env.bridge_ports()
    );
    assert_eq!(env.ipam_reservations().len(), 1);
    assert!(!env.nat_rules_for_pod().is_empty(), "portmap made no rules");
    let cached: serde_json::Value =
        serde_json::from_slice(&fs::read(env.cache_file()).unwrap()).unwrap();
    assert_eq!(cached["kind"], "cniCacheV1");
    assert_eq!(cached["containerId"], env.container_id());
    assert_eq!(cached["result"], *result.raw());
    assert_eq!(
        cached["capabilityArgs"]["portMappings"][0]["containerPort"],
        80
    );
    assert_eq!(
        cni.cached_result(&pod).unwrap().unwrap().primary_ip(),
        result.primary_ip()
    );

    // CHECK runs in order and stops at the first failure. portmap 1.1.1 (Debian's)
    // fails CHECK for IPv4-only mappings by looking for IPv6 rules
    // (containernetworking/plugins#819); anything else must pass.
    match cni.check(&pod) {
        Ok(()) => {}
        Err(crust_cni::CniError::Plugin {
            plugin,
            command,
            msg,
            ..
        }) if plugin == "portmap" && command == "CHECK" && msg.contains("ipv6") => {}
        Err(err) => panic!("check: {err}"),
    }

    // Teardown works from the cache even after the config is gone.
    fs::remove_file(env.conf_dir().join("10-crtest.conflist")).unwrap();
    assert_eq!(
        cni.network_ready().unwrap_err().kind(),
        ErrorKind::FailedPrecondition
    );
    cni.teardown(&pod).unwrap();
    assert!(!env.cache_file().exists());
    assert_eq!(env.bridge_ports(), "");
    assert_eq!(sh("ip", &["-o", "link", "show", &host_veth]), "");
    assert!(env.ipam_reservations().is_empty());
    assert!(
        env.nat_rules_for_pod().is_empty(),
        "{:?}",
        env.nat_rules_for_pod()
    );
    // Idempotent.
    cni.teardown(&pod).unwrap();

    env.netns.as_ref().unwrap().remove().unwrap();
    assert!(!netns.exists());
    assert!(!mounted(&netns));
    env.netns.as_ref().unwrap().remove().unwrap();
    env.netns = None;
    env.pod = None;

    let bridge = env.bridge.clone();
    drop(env);
    assert_eq!(
        sh("ip", &["-o", "link", "show", &bridge]),
        "",
        "bridge left"
    );
}

#[test]
fn a_failing_plugin_in_the_middle_undoes_the_earlier_ones() {
    let mut env = TestEnv::new(true);
    let failer = env.bin_dir().join(format!("crfail{}", env.suffix));
    fs::write(
        &failer,
        "#!/bin/sh\ncat >/dev/null\n\
         [ \"$CNI_COMMAND\" = DEL ] && exit 0\n\
         echo '{\"cniVersion\":\"1.0.0\",\"code\":110,\"msg\":\"injected failure\",\"details\":\"crfail\"}'\n\
         exit 1\n",
    )
    .unwrap();
    fs::set_permissions(&failer, fs::Permissions::from_mode(0o755)).unwrap();
    let failer_plugin = format!(r#"{{"type": "crfail{}"}}"#, env.suffix);
    env.write_conflist(&[&failer_plugin]);

    let pod = env.pod();
    env.pod = Some(pod.clone());
    let err = env.cni().setup(&pod).unwrap_err();
    assert_eq!(err.plugin_code(), Some(110), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "cni plugin crfail{} ADD: error code 110: injected failure (crfail)",
            env.suffix
        )
    );

    // bridge's ADD ran (the bridge exists) and its DEL undid the attachment.
    assert!(
        !sh("ip", &["-o", "link", "show", &env.bridge]).is_empty(),
        "bridge never made"
    );
    assert_eq!(env.bridge_ports(), "");
    assert!(
        env.ipam_reservations().is_empty(),
        "{:?}",
        env.ipam_reservations()
    );
    assert!(env.nat_rules_for_pod().is_empty());
    assert!(!env.cache_file().exists());
    let inside = sh(
        "nsenter",
        &[
            &format!("--net={}", env.netns_path().display()),
            "ip",
            "-o",
            "link",
        ],
    );
    assert!(!inside.contains("eth0"), "{inside}");
}

#[test]
fn netns_create_refuses_an_existing_name_and_remove_is_idempotent() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("netns");
    let name = format!("crtest-{}", unique_suffix());
    let ns = NetNs::create(&dir, &name).unwrap();
    let guard = scopeguard(&dir, ns.path().to_path_buf());
    assert!(mounted(ns.path()));
    let err = NetNs::create(&dir, &name).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);

    // A fresh netns has only a down loopback; the caller's netns is untouched.
    let inside = run_in_netns(ns.path(), || {
        fs::read_to_string("/proc/thread-self/net/dev").unwrap()
    })
    .unwrap();
    assert_eq!(inside.lines().count(), 3, "{inside}");
    let outside = fs::read_to_string("/proc/thread-self/net/dev").unwrap();
    assert!(outside.lines().count() > 3, "{outside}");

    ns.remove().unwrap();
    assert!(!ns.path().exists());
    assert!(!mounted(ns.path()));
    ns.remove().unwrap();
    drop(guard);
}

/// Removes a netns and unmounts its directory on drop.
struct NetnsGuard(PathBuf, PathBuf);

fn scopeguard(dir: &Path, path: PathBuf) -> NetnsGuard {
    NetnsGuard(dir.to_path_buf(), path)
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = crust_cni::netns::remove(&self.1);
        while nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH).is_ok() {}
    }
}
