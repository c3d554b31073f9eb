//! End-to-end crash recovery: rounds of random CRI operations in flight, crustd
//! killed with SIGKILL in the middle of them, restarted, and the node checked.
//!
//! After every restart: each pod and container the CRI reported as made is listed
//! unless its removal succeeded (or was in flight when crustd died); no mount, netns,
//! bundle, writable layer, runtime state, cgroup, CNI cache entry, IPAM address,
//! iptables rule or monitor is left that no listed pod or container owns. At the end
//! every surviving container is exec'd into, stopped and removed, every pod too, and
//! nothing at all is left.
//!
//! `CRUST_CRASH_ROUNDS` sets the number of kills (CI runs a few), `CRUST_CRASH_SEED`
//! replays a run (the seed is printed).

mod support;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crust_proto::cri;
use support::crustd::CriClient;
use support::oci;
use support::pod::TestPod;

/// Kills in a CI run.
const DEFAULT_ROUNDS: u32 = 4;
/// Operations running at once.
const WORKERS: usize = 5;
/// At most this many pods exist at once, so a long run stays small.
const MAX_PODS: usize = 6;
/// At most this many containers exist at once.
const MAX_CONTAINERS: usize = 14;
/// How long the leak checks wait for recovery's background work to settle.
const SETTLE: Duration = Duration::from_secs(15);

/// What the test knows of an object's removal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Reported made, never asked to go: it must be listed.
    Live,
    /// A removal was in flight (or failed with crustd gone): listed or not.
    Maybe,
}

/// What the CRI told the test, across restarts.
#[derive(Default)]
struct Model {
    pods: HashMap<String, (cri::PodSandboxConfig, Fate)>,
    containers: HashMap<String, (String, Fate)>,
    next: u32,
    /// Operations that succeeded and failed, by name.
    outcomes: HashMap<&'static str, (u32, u32)>,
    /// Distinct failure messages (the first of each code and operation).
    failures: HashMap<(&'static str, tonic::Code), String>,
}

/// A small xorshift generator: reproducible from its seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> Option<T> {
        (!items.is_empty()).then(|| items[self.below(items.len() as u64) as usize].clone())
    }
}

/// The fixed parts every operation needs.
struct Setup {
    base: cri::PodSandboxConfig,
    image: String,
    host_port_base: i32,
}

impl Setup {
    fn pod_config(&self, n: u32) -> cri::PodSandboxConfig {
        let mut config = self.base.clone();
        let meta = config.metadata.as_mut().unwrap();
        meta.name = format!("crash{n}");
        meta.uid = format!("uid-crash{n}");
        // Every third pod runs without a pause: its pinned IPC and UTS namespaces must
        // survive a crash or go with it.
        if n % 3 == 1 {
            config
                .linux
                .get_or_insert_with(Default::default)
                .security_context
                .get_or_insert_with(Default::default)
                .namespace_options = Some(cri::NamespaceOption {
                pid: cri::NamespaceMode::Container as i32,
                ..Default::default()
            });
        }
        // Every other pod maps a port: portmap's iptables rules must go with it.
        if n % 2 == 0 {
            config.port_mappings = vec![cri::PortMapping {
                protocol: cri::Protocol::Tcp as i32,
                container_port: 80,
                host_port: self.host_port_base + (n % 1000) as i32,
                host_ip: "127.0.0.1".into(),
            }];
        }
        config
    }

    fn container_config(&self, n: u32, cmd: &[&str]) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: format!("c{n}"),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: self.image.clone(),
                ..Default::default()
            }),
            command: cmd.iter().map(|s| s.to_string()).collect(),
            log_path: format!("c{n}.log"),
            ..Default::default()
        }
    }
}

/// One random operation against the daemon, its outcome recorded in the model.
async fn operate(c: &mut CriClient, setup: &Setup, model: &Mutex<Model>, rng: &mut Rng) {
    let (pods, containers, n) = {
        let mut m = model.lock().unwrap();
        m.next += 1;
        let live = |fate: &Fate| *fate == Fate::Live;
        let pods: Vec<(String, cri::PodSandboxConfig)> = m
            .pods
            .iter()
            .filter(|(_, (_, f))| live(f))
            .map(|(id, (config, _))| (id.clone(), config.clone()))
            .collect();
        let containers: Vec<String> = m
            .containers
            .iter()
            .filter(|(_, (_, f))| live(f))
            .map(|(id, _)| id.clone())
            .collect();
        (pods, containers, m.next)
    };
    let record = |name: &'static str, r: Result<(), &tonic::Status>| {
        let mut m = model.lock().unwrap();
        let entry = m.outcomes.entry(name).or_default();
        match r {
            Ok(()) => entry.0 += 1,
            Err(status) => {
                entry.1 += 1;
                m.failures
                    .entry((name, status.code()))
                    .or_insert_with(|| status.message().to_owned());
            }
        }
    };
    let choice = rng.below(100);
    match choice {
        0..=14 if pods.len() < MAX_PODS => {
            let config = setup.pod_config(n);
            let r = c
                .runtime
                .run_pod_sandbox(cri::RunPodSandboxRequest {
                    config: Some(config.clone()),
                    runtime_handler: String::new(),
                })
                .await;
            record("run pod", r.as_ref().map(drop));
            if let Ok(r) = r {
                let id = r.into_inner().pod_sandbox_id;
                model.lock().unwrap().pods.insert(id, (config, Fate::Live));
            }
        }
        15..=21 => {
            let Some((id, _)) = rng.pick(&pods) else {
                return;
            };
            let r = c
                .runtime
                .stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id })
                .await;
            record("stop pod", r.as_ref().map(drop));
        }
        22..=29 => {
            let Some((id, _)) = rng.pick(&pods) else {
                return;
            };
            {
                let mut m = model.lock().unwrap();
                if let Some(p) = m.pods.get_mut(&id) {
                    p.1 = Fate::Maybe;
                }
                for (pod, fate) in m.containers.values_mut() {
                    if *pod == id {
                        *fate = Fate::Maybe;
                    }
                }
            }
            let r = c
                .runtime
                .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await;
            record("remove pod", r.as_ref().map(drop));
            if r.is_ok() {
                let mut m = model.lock().unwrap();
                m.pods.remove(&id);
                m.containers.retain(|_, (pod, _)| *pod != id);
            }
        }
        30..=59 if containers.len() < MAX_CONTAINERS => {
            let Some((pod, config)) = rng.pick(&pods) else {
                return;
            };
            let cmd: &[&str] = if rng.below(4) == 0 {
                &["/bin/true"]
            } else {
                &["/bin/sleep", "1000"]
            };
            let r = c
                .runtime
                .create_container(cri::CreateContainerRequest {
                    pod_sandbox_id: pod.clone(),
                    config: Some(setup.container_config(n, cmd)),
                    sandbox_config: Some(config),
                })
                .await;
            record("create container", r.as_ref().map(drop));
            let Ok(r) = r else { return };
            let id = r.into_inner().container_id;
            {
                let mut m = model.lock().unwrap();
                // The pod's removal may have won meanwhile; then the container went too.
                let fate = match m.pods.get(&pod) {
                    Some((_, Fate::Live)) => Fate::Live,
                    _ => Fate::Maybe,
                };
                m.containers.insert(id.clone(), (pod, fate));
            }
            let r = c
                .runtime
                .start_container(cri::StartContainerRequest { container_id: id })
                .await;
            record("start container", r.as_ref().map(drop));
        }
        60..=74 => {
            let Some(id) = rng.pick(&containers) else {
                return;
            };
            let r = c
                .runtime
                .stop_container(cri::StopContainerRequest {
                    container_id: id,
                    timeout: 0,
                })
                .await;
            record("stop container", r.as_ref().map(drop));
        }
        75..=89 => {
            let Some(id) = rng.pick(&containers) else {
                return;
            };
            if let Some(ctr) = model.lock().unwrap().containers.get_mut(&id) {
                ctr.1 = Fate::Maybe;
            }
            let r = c
                .runtime
                .remove_container(cri::RemoveContainerRequest {
                    container_id: id.clone(),
                })
                .await;
            record("remove container", r.as_ref().map(drop));
            if r.is_ok() {
                model.lock().unwrap().containers.remove(&id);
            }
        }
        _ => {
            let r = c
                .image
                .pull_image(cri::PullImageRequest {
                    image: Some(cri::ImageSpec {
                        image: setup.image.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await;
            record("pull", r.as_ref().map(drop));
        }
    }
}

/// What the restarted daemon lists.
struct Listed {
    pods: HashMap<String, bool>,
    containers: HashMap<String, cri::ContainerState>,
}

async fn listed(c: &mut CriClient) -> Listed {
    let pods = c
        .runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items
        .into_iter()
        .map(|p| (p.id, p.state == cri::PodSandboxState::SandboxReady as i32))
        .collect();
    let containers = c
        .runtime
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers
        .into_iter()
        .map(|c| (c.id.clone(), c.state()))
        .collect();
    Listed { pods, containers }
}

fn names_in(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Everything of the daemon's on the node that no id in `owners` owns (its name or
/// path contains no owner). Empty when the node is clean.
fn unowned(p: &TestPod, owners: &HashSet<String>, pods: usize) -> Vec<String> {
    let owned = |s: &str| owners.iter().any(|id| s.contains(id.as_str()));
    let dir = p.d.dir();
    let mut left = Vec::new();
    for sub in [
        "state/netns",
        "state/userns",
        "state/ipcns",
        "state/utsns",
        "state/bundles",
        "state/containers",
        "state/sandboxes",
        "state/runtime/runc",
        "state/runtime/embedded",
        "root/containers",
        "root/sandboxes",
        "cni-cache/results",
    ] {
        for name in names_in(&dir.join(sub)) {
            if !owned(&name) {
                left.push(format!("{sub}/{name}"));
            }
        }
    }
    for mount in support::cni::mounts_under(dir) {
        // The pin directories themselves are (shared) mountpoints for good.
        let pin_dir = ["/netns", "/userns", "/ipcns", "/utsns"]
            .iter()
            .any(|d| mount.ends_with(d));
        if !pin_dir && !owned(&mount) {
            left.push(format!("mount {mount}"));
        }
    }
    // host-local names a reservation by address; the file holds the container id.
    if let Ok(nets) = fs::read_dir(&p.net.ipam_dir) {
        for net in nets.flatten() {
            for file in names_in(&net.path()) {
                if !file.starts_with(&p.net.prefix) {
                    continue;
                }
                let holder = fs::read_to_string(net.path().join(&file)).unwrap_or_default();
                if !owned(holder.lines().next().unwrap_or_default()) {
                    left.push(format!("ip {file} of {holder:?}"));
                }
            }
        }
    }
    // A pod not ready (its pause died with crustd mid-stop) keeps its network until
    // StopPodSandbox, as with containerd: at most one veth per listed pod.
    let veths = support::cni::veths_on(&p.net.bridge);
    if veths.len() > pods {
        left.push(format!("{} veths for {pods} pods", veths.len()));
    }
    let rules = std::process::Command::new("iptables-save")
        .args(["-t", "nat"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for line in rules.lines().filter(|l| l.contains(&p.net.bridge)) {
        if let Some(id) = line
            .split("id: \\\"")
            .nth(1)
            .and_then(|rest| rest.split("\\\"").next())
            && !owned(id)
        {
            left.push(format!("iptables {line}"));
        }
    }
    let marker = dir.display().to_string();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !args.first().is_some_and(|a| a.ends_with("crust-monitor"))
            || !args.iter().any(|a| a.contains(&marker))
        {
            continue;
        }
        let id = args
            .windows(2)
            .find(|w| w[0] == "--id")
            .map(|w| w[1].clone())
            .unwrap_or_default();
        if !owners.contains(&id) {
            left.push(format!("monitor of {id}"));
        }
    }
    for hierarchy in ["memory", "pids", "cpu"] {
        let parent = Path::new("/sys/fs/cgroup")
            .join(hierarchy)
            .join(p.cgroups.0.trim_start_matches('/'));
        for name in names_in(&parent) {
            if parent.join(&name).is_dir() && !owned(&name) {
                left.push(format!("cgroup {hierarchy}/{name}"));
            }
        }
    }
    left
}

/// After a restart: what the CRI reported is there, and nothing else is left. Waits
/// for background recovery up to [`SETTLE`].
async fn check(p: &mut TestPod, model: &Mutex<Model>, round: u32) -> Listed {
    let deadline = Instant::now() + SETTLE;
    loop {
        let now = listed(&mut p.c).await;
        let mut problems = Vec::new();
        {
            let m = model.lock().unwrap();
            for (id, (_, fate)) in &m.pods {
                if *fate == Fate::Live && !now.pods.contains_key(id) {
                    problems.push(format!("lost pod {id}"));
                }
            }
            for (id, (_, fate)) in &m.containers {
                if *fate == Fate::Live && !now.containers.contains_key(id) {
                    problems.push(format!("lost container {id}"));
                }
            }
        }
        let owners: HashSet<String> = now
            .pods
            .keys()
            .chain(now.containers.keys())
            .cloned()
            .collect();
        problems.extend(
            unowned(p, &owners, now.pods.len())
                .into_iter()
                .map(|l| format!("leaked {l}")),
        );
        if problems.is_empty() {
            return now;
        }
        assert!(Instant::now() < deadline, "round {round}: {problems:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Brings the model in line with what the daemon lists: gone is gone, and what a
/// crash left unreported stays unknown to the operations (it is cleaned up at the end).
fn reconcile(model: &Mutex<Model>, now: &Listed) {
    let mut m = model.lock().unwrap();
    m.pods.retain(|id, _| now.pods.contains_key(id));
    m.containers.retain(|id, _| now.containers.contains_key(id));
    for (_, fate) in m.pods.values_mut() {
        *fate = Fate::Live;
    }
    for (_, fate) in m.containers.values_mut() {
        *fate = Fate::Live;
    }
}

async fn exec_true(c: &mut CriClient, id: &str) -> Result<i32, tonic::Status> {
    c.runtime
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["/bin/true".into()],
            timeout: 10,
        })
        .await
        .map(|r| r.into_inner().exit_code)
}

#[tokio::test(flavor = "multi_thread")]
async fn random_operations_killed_mid_flight_lose_and_leak_nothing() {
    let rounds: u32 = std::env::var("CRUST_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_ROUNDS);
    let seed: u64 = std::env::var("CRUST_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("crash test: {rounds} rounds, CRUST_CRASH_SEED={seed}");
    let mut p = TestPod::set_up(oci::busybox_image(), "").await;
    let setup = Arc::new(Setup {
        base: p.sandbox_config.clone(),
        image: p.image.clone(),
        // Above the 20000-39999 that tests/sandboxes.rs picks from, so that the host
        // ports of the two never meet in the host's iptables.
        host_port_base: 40000 + (std::process::id() % 20000) as i32,
    });
    let model = Arc::new(Mutex::new(Model::default()));
    model
        .lock()
        .unwrap()
        .pods
        .insert(p.sandbox.clone(), (p.sandbox_config.clone(), Fate::Live));
    let mut rng = Rng(seed);
    let mut recovered_containers = 0;
    for round in 0..rounds {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                let (mut c, setup, model, stop) = (
                    p.c.clone(),
                    Arc::clone(&setup),
                    Arc::clone(&model),
                    Arc::clone(&stop),
                );
                let mut rng = Rng(rng.next() | 1 | w as u64);
                tokio::spawn(async move {
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        operate(&mut c, &setup, &model, &mut rng).await;
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300 + rng.below(1200))).await;
        // No new operation starts; those in flight are cut short by the kill.
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        p.d.kill();
        for w in workers {
            w.await.unwrap();
        }
        p.d.start_again().await;
        p.c = p.d.client().await;
        let now = check(&mut p, &model, round).await;
        reconcile(&model, &now);
        recovered_containers += now.containers.len();
        // A surviving running container still answers.
        let running: Vec<&String> = now
            .containers
            .iter()
            .filter(|(_, s)| **s == cri::ContainerState::ContainerRunning)
            .map(|(id, _)| id)
            .collect();
        if let Some(id) = rng.pick(&running) {
            assert_eq!(exec_true(&mut p.c, id).await.unwrap(), 0, "exec into {id}");
        }
    }

    // Everything left still works: exec, stop, remove; then the node is clean.
    let now = listed(&mut p.c).await;
    for (id, state) in &now.containers {
        if *state == cri::ContainerState::ContainerRunning {
            assert_eq!(exec_true(&mut p.c, id).await.unwrap(), 0, "exec into {id}");
        }
        p.c.runtime
            .stop_container(cri::StopContainerRequest {
                container_id: id.clone(),
                timeout: 0,
            })
            .await
            .unwrap();
        p.c.runtime
            .remove_container(cri::RemoveContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap();
    }
    for id in now.pods.keys() {
        p.stop_and_remove_pod(id).await;
    }
    let left = unowned(&p, &HashSet::new(), 0);
    assert!(left.is_empty(), "left at the end: {left:#?}");
    let (outcomes, failures) = {
        let m = model.lock().unwrap();
        (m.outcomes.clone(), m.failures.clone())
    };
    println!("crash test: failures seen: {failures:#?}");
    println!(
        "crash test: {rounds} kills, {recovered_containers} containers recovered, \
         0 lost, 0 leaked; operations (ok, failed): {outcomes:?}"
    );
}
