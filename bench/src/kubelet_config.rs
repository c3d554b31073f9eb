//! Pod and container configs shaped as kubelet sends them for a BestEffort pod, so a
//! runtime does the same work it does in a cluster: metadata, the `io.kubernetes.*`
//! labels and annotations, log directory and path, a pod cgroup under the parent,
//! namespace options, the RuntimeDefault seccomp profile, kubelet's masked and
//! read-only paths, BestEffort resources and the termination-message mount.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crust_proto::cri;

/// The label every object of one benchmark run carries, so the final sweep finds what
/// a timed-out call created after the client gave up.
pub const RUN_LABEL: &str = "crust-bench.run";

/// The namespace of every benchmark pod.
pub const NAMESPACE: &str = "crust-bench";

/// kubelet's masked paths (`securitycontext.ConvertToRuntimeMaskedPaths`, default
/// ProcMount).
const MASKED_PATHS: [&str; 11] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// kubelet's read-only paths (`securitycontext.ConvertToRuntimeReadonlyPaths`).
const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// One benchmark pod's identity.
#[derive(Debug, Clone)]
pub struct Pod {
    /// `metadata.name`, unique within the run.
    pub name: String,
    /// `metadata.uid`, UUID-shaped as kubelet's.
    pub uid: String,
    /// The run id, stored in [`RUN_LABEL`].
    pub run: String,
}

impl Pod {
    /// Pod number `n` of scenario `scenario` in run `run` (8 hex digits).
    pub fn new(run: &str, scenario: &str, n: usize) -> Pod {
        let tag = scenario_tag(scenario);
        Pod {
            name: format!("bench-{scenario}-{n}"),
            uid: format!("{run}-{tag:04x}-4000-8000-{n:012x}"),
            run: run.to_string(),
        }
    }

    /// The pod's cgroup, `PARENT/pod<uid>`.
    pub fn cgroup(&self, parent: &str) -> String {
        format!("{}/pod{}", parent.trim_end_matches('/'), self.uid)
    }

    /// The pod's log directory as kubelet names it: `<base>/<ns>_<name>_<uid>`.
    pub fn log_directory(&self, base: &Path) -> PathBuf {
        base.join("pods")
            .join(format!("{NAMESPACE}_{}_{}", self.name, self.uid))
    }

    /// Where kubelet would keep a container's termination-message file.
    pub fn termination_log(&self, base: &Path, container: &str) -> PathBuf {
        base.join("kubelet/pods")
            .join(&self.uid)
            .join("containers")
            .join(container)
            .join("termination-log")
    }
}

/// A stable 16-bit tag for a scenario name, so uids of different scenarios differ.
fn scenario_tag(scenario: &str) -> u16 {
    scenario
        .bytes()
        .fold(0u16, |h, b| h.wrapping_mul(31).wrapping_add(b as u16))
}

/// The RunPodSandbox config kubelet sends for `pod`.
pub fn sandbox_config(pod: &Pod, cgroup_parent: &str, log_base: &Path) -> cri::PodSandboxConfig {
    let labels = HashMap::from([
        ("io.kubernetes.pod.name".to_string(), pod.name.clone()),
        ("io.kubernetes.pod.namespace".to_string(), NAMESPACE.into()),
        ("io.kubernetes.pod.uid".to_string(), pod.uid.clone()),
        ("app".to_string(), "crust-bench".into()),
        (RUN_LABEL.to_string(), pod.run.clone()),
    ]);
    let annotations = HashMap::from([
        ("kubernetes.io/config.source".to_string(), "api".into()),
        (
            "kubernetes.io/config.seen".to_string(),
            "2024-01-01T00:00:00.000000000Z".into(),
        ),
    ]);
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: pod.name.clone(),
            uid: pod.uid.clone(),
            namespace: NAMESPACE.into(),
            attempt: 0,
        }),
        hostname: pod.name.clone(),
        log_directory: pod.log_directory(log_base).display().to_string(),
        dns_config: Some(cri::DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec![
                format!("{NAMESPACE}.svc.cluster.local"),
                "svc.cluster.local".into(),
                "cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        }),
        port_mappings: Vec::new(),
        labels,
        annotations,
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: pod.cgroup(cgroup_parent),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(namespaces()),
                seccomp: Some(runtime_default()),
                ..Default::default()
            }),
            // kubelet sends the pod's resources (KEP-1287) for the sandbox.
            resources: Some(best_effort()),
            ..Default::default()
        }),
        windows: None,
    }
}

/// The CreateContainer config kubelet sends for container `name` of `pod`, running
/// `/bin/sh -c command` from `image` (an image id or reference) with the
/// termination-message file `termination_log` mounted.
pub fn container_config(
    pod: &Pod,
    name: &str,
    image: &str,
    user_image: &str,
    command: &str,
    termination_log: &Path,
) -> cri::ContainerConfig {
    let labels = HashMap::from([
        ("io.kubernetes.container.name".to_string(), name.to_string()),
        ("io.kubernetes.pod.name".to_string(), pod.name.clone()),
        ("io.kubernetes.pod.namespace".to_string(), NAMESPACE.into()),
        ("io.kubernetes.pod.uid".to_string(), pod.uid.clone()),
        (RUN_LABEL.to_string(), pod.run.clone()),
    ]);
    let annotations = HashMap::from([
        (
            "io.kubernetes.container.hash".to_string(),
            "5e7a1f0c".into(),
        ),
        (
            "io.kubernetes.container.restartCount".to_string(),
            "0".into(),
        ),
        (
            "io.kubernetes.container.terminationMessagePath".to_string(),
            "/dev/termination-log".into(),
        ),
        (
            "io.kubernetes.container.terminationMessagePolicy".to_string(),
            "File".into(),
        ),
        (
            "io.kubernetes.pod.terminationGracePeriod".to_string(),
            "30".into(),
        ),
    ]);
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.to_string(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.to_string(),
            user_specified_image: user_image.to_string(),
            ..Default::default()
        }),
        command: vec!["/bin/sh".into(), "-c".into(), command.to_string()],
        envs: vec![
            env("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            env("KUBERNETES_SERVICE_PORT", "443"),
            env("KUBERNETES_PORT", "tcp://10.96.0.1:443"),
        ],
        mounts: vec![cri::Mount {
            container_path: "/dev/termination-log".into(),
            host_path: termination_log.display().to_string(),
            ..Default::default()
        }],
        labels,
        annotations,
        log_path: format!("{name}/0.log"),
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(best_effort()),
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(namespaces()),
                seccomp: Some(runtime_default()),
                masked_paths: MASKED_PATHS.iter().map(|p| p.to_string()).collect(),
                readonly_paths: READONLY_PATHS.iter().map(|p| p.to_string()).collect(),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

/// A label selector for the pod's containers, as kubelet filters by pod.
pub fn pod_selector(uid: &str) -> HashMap<String, String> {
    HashMap::from([("io.kubernetes.pod.uid".to_string(), uid.to_string())])
}

/// A label selector for everything of one run.
pub fn run_selector(run: &str) -> HashMap<String, String> {
    HashMap::from([(RUN_LABEL.to_string(), run.to_string())])
}

/// Pod network and IPC, the container's own PID namespace: kubelet's defaults.
fn namespaces() -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: cri::NamespaceMode::Pod as i32,
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// The RuntimeDefault seccomp profile, which modern clusters ask for
/// (`--seccomp-default`, Pod Security `restricted`); each runtime applies its own.
fn runtime_default() -> cri::SecurityProfile {
    cri::SecurityProfile {
        profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
        localhost_ref: String::new(),
    }
}

/// What kubelet sends for a BestEffort container: minimal shares, the default CFS
/// period, and the OOM score BestEffort pods get.
fn best_effort() -> cri::LinuxContainerResources {
    cri::LinuxContainerResources {
        cpu_period: 100_000,
        cpu_shares: 2,
        oom_score_adj: 1000,
        ..Default::default()
    }
}

fn env(key: &str, value: &str) -> cri::KeyValue {
    cri::KeyValue {
        key: key.into(),
        value: value.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_get_distinct_uuid_shaped_uids_and_kubelet_paths() {
        let a = Pod::new("0123abcd", "lifecycle", 7);
        let b = Pod::new("0123abcd", "list", 7);
        assert_ne!(a.uid, b.uid);
        let parts: Vec<usize> = a.uid.split('-').map(str::len).collect();
        assert_eq!(parts, [8, 4, 4, 4, 12]);
        assert_eq!(
            a.cgroup("/crust-bench/"),
            format!("/crust-bench/pod{}", a.uid)
        );
        let config = sandbox_config(&a, "/crust-bench", Path::new("/l"));
        assert_eq!(
            config.log_directory,
            format!("/l/pods/crust-bench_bench-lifecycle-7_{}", a.uid)
        );
        assert_eq!(config.labels["io.kubernetes.pod.uid"], a.uid);
    }

    #[test]
    fn containers_carry_the_pod_labels_and_a_relative_log_path() {
        let pod = Pod::new("0123abcd", "list", 1);
        let c = container_config(&pod, "c0", "sha256:ab", "img", "true", Path::new("/t"));
        assert_eq!(c.log_path, "c0/0.log");
        assert_eq!(c.labels["io.kubernetes.pod.uid"], pod.uid);
        assert_eq!(c.labels[RUN_LABEL], "0123abcd");
        assert_eq!(c.command, ["/bin/sh", "-c", "true"]);
    }
}
