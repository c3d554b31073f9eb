//! The OCI spec of a pod's pause (infra) container, as containerd's CRI plugin makes it
//! (`internal/cri/server/podsandbox/sandbox_run_linux.go`).
//!
//! What the pause container gets, beyond containerd's default spec:
//!
//! - a read-only root (the pause rootfs is shared by every sandbox), cwd `/`;
//! - user 65535:65535 unless the pod asks for another (the pause image's user);
//! - no rlimits: containerd removes the default `RLIMIT_NOFILE` for sandboxes
//!   (containerd issue 515), so pause inherits the runtime's;
//! - the RuntimeDefault seccomp profile (unless privileged), whatever the pod asks for
//!   its containers: pause makes a handful of syscalls, and an unconfined process in
//!   every pod is attack surface for nothing (containerd confines it only when the pod
//!   names a profile). No AppArmor profile: crust has none it can be sure is loaded;
//! - `linux.resources.cpu.shares` = 2 (the minimum), as containerd's
//!   `WithDefaultSandboxShares`: pause must not weigh in the pod's CPU split;
//! - OOM score adjustment -998 (kubelet's value for pause), clamped to our own;
//! - namespaces: mount always new; network new, joined by path, or the host's; PID new
//!   (owned by this pause, which then reaps the pod's orphans) or the host's; IPC and
//!   UTS new or the host's. No user or cgroup namespace;
//! - a hostname only when the UTS namespace is the pause's own (runc refuses to set one
//!   in the host's);
//! - privileged pods: the runtime's own capabilities, no masked or read-only paths,
//!   all devices allowed, /sys read-write (privileged lifts them all).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capabilities, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder,
    LinuxDeviceCgroupBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResourcesBuilder,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use super::{
    DEFAULT_CAPABILITIES, MASKED_PATHS, MountSpec, NamespaceMode, OCI_VERSION, READONLY_PATHS,
    clamp_oom_score_adj, current_capabilities, default_mounts, merge_mounts, spec_error,
    validate_sysctls, write_spec,
};
use crate::error::{Result, RuntimeError};
use crate::oci::validate_id;

/// The user and group pause runs as unless the pod says otherwise (the pause image's).
pub const PAUSE_USER: (u32, u32) = (65535, 65535);

/// The OOM score adjustment kubelet and containerd give pause, before the clamp.
pub const DEFAULT_SANDBOX_OOM_SCORE_ADJ: i32 = -998;

/// The CPU shares of a sandbox's pause container, containerd's `DefaultSandboxCPUshares`.
pub const DEFAULT_SANDBOX_CPU_SHARES: u64 = 2;

/// The longest hostname the kernel accepts (HOST_NAME_MAX).
const HOSTNAME_MAX: usize = 64;

/// The PID namespace of a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PidMode {
    /// A new PID namespace owned by this pause (PID 1 in it), shared by the pod's
    /// containers when they ask for it.
    Pod,
    /// The host's PID namespace.
    Node,
}

/// What the pause container of a sandbox needs; [`SandboxSpec::build`] turns it into an
/// OCI spec. `Default` gives containerd's defaults with an empty id and rootfs.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxSpec {
    /// The sandbox id, also the OCI container id.
    pub id: String,
    /// The pod's hostname; ignored when `uts_host`.
    pub hostname: String,
    /// The rootfs holding pause ([`crate::pause::install_pause_rootfs`]).
    pub rootfs: PathBuf,
    /// Mount the rootfs read-only (it is shared by all sandboxes).
    pub readonly_rootfs: bool,
    /// The process's command line.
    pub args: Vec<String>,
    /// The process's environment, `NAME=value`.
    pub env: Vec<String>,
    /// The network namespace.
    pub netns: NamespaceMode,
    /// Share the host's IPC namespace.
    pub ipc_host: bool,
    /// The PID namespace.
    pub pid: PidMode,
    /// Share the host's UTS namespace (host-network pods do).
    pub uts_host: bool,
    /// `linux.cgroupsPath` (cgroupfs path or systemd `slice:prefix:name`); empty: none.
    pub cgroups_path: String,
    /// Sysctls, checked by [`validate_sysctls`].
    pub sysctls: BTreeMap<String, String>,
    /// The OOM score adjustment wanted; [`clamp_oom_score_adj`] is applied.
    pub oom_score_adj: i32,
    /// CPU shares; `None`: [`DEFAULT_SANDBOX_CPU_SHARES`].
    pub cpu_shares: Option<u64>,
    /// uid and gid of the process.
    pub run_as_user: (u32, u32),
    /// Additional gids of the process.
    pub supplemental_groups: Vec<u32>,
    /// Mounts added to (or replacing, by destination) the default ones.
    pub mounts: Vec<MountSpec>,
    /// Annotations of the spec.
    pub annotations: BTreeMap<String, String>,
    /// Lift the security defaults (see the module doc).
    pub privileged: bool,
    /// The pod's pinned user namespace and its mappings; `None`: the host's.
    pub userns: Option<(PathBuf, crust_util::userns::IdMappings)>,
}

impl Default for SandboxSpec {
    fn default() -> SandboxSpec {
        SandboxSpec {
            id: String::new(),
            hostname: String::new(),
            rootfs: PathBuf::new(),
            readonly_rootfs: true,
            args: vec![crate::pause::PAUSE_PATH.to_owned()],
            env: Vec::new(),
            netns: NamespaceMode::New,
            ipc_host: false,
            pid: PidMode::Pod,
            uts_host: false,
            cgroups_path: String::new(),
            sysctls: BTreeMap::new(),
            oom_score_adj: DEFAULT_SANDBOX_OOM_SCORE_ADJ,
            cpu_shares: None,
            run_as_user: PAUSE_USER,
            supplemental_groups: Vec::new(),
            mounts: Vec::new(),
            annotations: BTreeMap::new(),
            privileged: false,
            userns: None,
        }
    }
}

impl SandboxSpec {
    /// The defaults for sandbox `id` running crust-pause from `rootfs`.
    pub fn new(id: impl Into<String>, rootfs: impl Into<PathBuf>) -> SandboxSpec {
        SandboxSpec {
            id: id.into(),
            rootfs: rootfs.into(),
            ..SandboxSpec::default()
        }
    }

    /// Builds the OCI spec, refusing ids, sysctls, mounts and hostnames the runtime
    /// would refuse or that would touch the node.
    pub fn build(&self) -> Result<Spec> {
        let id = self.id.as_str();
        validate_id(id)?;
        if self.args.is_empty() {
            return Err(RuntimeError::invalid(
                "sandbox args",
                "",
                "empty command line",
            ));
        }
        if self.rootfs.as_os_str().is_empty() {
            return Err(RuntimeError::invalid("sandbox rootfs", "", "empty path"));
        }
        validate_sysctls(
            &self.sysctls,
            self.netns != NamespaceMode::Host,
            self.ipc_host,
        )?;
        let hostname = if self.uts_host || self.hostname.is_empty() {
            None
        } else {
            validate_hostname(&self.hostname)?;
            Some(self.hostname.clone())
        };

        let caps: Capabilities = if self.privileged {
            current_capabilities().into_iter().collect()
        } else {
            DEFAULT_CAPABILITIES.into_iter().collect()
        };
        // The builders start from oci-spec's `Default` impls, which are youki's example
        // config (inheritable and ambient capabilities, rlimits, masked paths, hostname
        // "youki"): every optional field is therefore set explicitly after building.
        let mut capabilities = LinuxCapabilitiesBuilder::default()
            .bounding(caps.clone())
            .effective(caps.clone())
            .permitted(caps)
            .build()
            .map_err(|err| spec_error(id, err))?;
        capabilities.set_inheritable(None).set_ambient(None);
        let mut user = UserBuilder::default()
            .uid(self.run_as_user.0)
            .gid(self.run_as_user.1)
            .build()
            .map_err(|err| spec_error(id, err))?;
        user.set_additional_gids(
            (!self.supplemental_groups.is_empty()).then(|| self.supplemental_groups.clone()),
        );
        let mut process = ProcessBuilder::default()
            .user(user)
            .args(self.args.clone())
            .cwd("/")
            .build()
            .map_err(|err| spec_error(id, err))?;
        process
            .set_terminal(Some(false))
            .set_env(Some(self.env.clone()))
            .set_capabilities(Some(capabilities))
            // containerd drops the default RLIMIT_NOFILE for sandboxes (its issue 515).
            .set_rlimits(None)
            .set_no_new_privileges(Some(true))
            .set_apparmor_profile(None)
            .set_selinux_label(None)
            .set_oom_score_adj(Some(clamp_oom_score_adj(self.oom_score_adj)));

        let mut linux = LinuxBuilder::default()
            .namespaces(self.namespaces()?)
            .resources(self.resources()?)
            .build()
            .map_err(|err| spec_error(id, err))?;
        let (masked, readonly) = if self.privileged {
            (None, None)
        } else {
            (
                Some(MASKED_PATHS.map(String::from).to_vec()),
                Some(READONLY_PATHS.map(String::from).to_vec()),
            )
        };
        linux
            .set_cgroups_path(
                (!self.cgroups_path.is_empty()).then(|| PathBuf::from(&self.cgroups_path)),
            )
            .set_sysctl((!self.sysctls.is_empty()).then(|| {
                self.sysctls
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            }))
            .set_masked_paths(masked)
            .set_readonly_paths(readonly)
            .set_seccomp(if self.privileged {
                None
            } else {
                Some(super::seccomp::default_profile(
                    &DEFAULT_CAPABILITIES,
                    &super::seccomp::SeccompTarget::native(),
                )?)
            })
            .set_devices(None)
            .set_uid_mappings(None)
            .set_gid_mappings(None);
        if let Some((_, maps)) = &self.userns {
            // runc joins the pinned namespace by path but still needs the mappings,
            // to know whose the pause's root is on the host.
            let mapping = |r: &crust_util::userns::IdRange| {
                oci_spec::runtime::LinuxIdMappingBuilder::default()
                    .container_id(r.container_id)
                    .host_id(r.host_id)
                    .size(r.length)
                    .build()
                    .map_err(|err| spec_error(id, err))
            };
            linux
                .set_uid_mappings(Some(vec![mapping(&maps.uids)?]))
                .set_gid_mappings(Some(vec![mapping(&maps.gids)?]));
        }

        let root = RootBuilder::default()
            .path(&self.rootfs)
            .readonly(self.readonly_rootfs)
            .build()
            .map_err(|err| spec_error(id, err))?;
        let mounts = merge_mounts(id, default_mounts(id, self.privileged)?, &self.mounts)?;
        let mut spec = SpecBuilder::default()
            .version(OCI_VERSION)
            .root(root)
            .mounts(mounts)
            .process(process)
            .linux(linux)
            .build()
            .map_err(|err| spec_error(id, err))?;
        spec.set_hostname(hostname)
            .set_domainname(None)
            .set_hooks(None)
            .set_annotations((!self.annotations.is_empty()).then(|| {
                self.annotations
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            }));
        Ok(spec)
    }

    /// Builds the spec and writes it to `<bundle>/config.json` atomically.
    pub fn write(&self, bundle: &Path) -> Result<PathBuf> {
        write_spec(bundle, &self.build()?)
    }

    fn namespaces(&self) -> Result<Vec<oci_spec::runtime::LinuxNamespace>> {
        let mut wanted: Vec<(LinuxNamespaceType, Option<&Path>)> =
            vec![(LinuxNamespaceType::Mount, None)];
        if let Some((path, _)) = &self.userns {
            // First: runc joins it before the others, which belong to it.
            wanted.insert(0, (LinuxNamespaceType::User, Some(path.as_path())));
        }
        match &self.netns {
            NamespaceMode::New => wanted.push((LinuxNamespaceType::Network, None)),
            NamespaceMode::Path(path) => {
                if !path.is_absolute() {
                    return Err(RuntimeError::invalid(
                        "network namespace path",
                        &path.to_string_lossy(),
                        "not an absolute path",
                    ));
                }
                wanted.push((LinuxNamespaceType::Network, Some(path)));
            }
            NamespaceMode::Host => {}
        }
        if self.pid == PidMode::Pod {
            wanted.push((LinuxNamespaceType::Pid, None));
        }
        if !self.ipc_host {
            wanted.push((LinuxNamespaceType::Ipc, None));
        }
        if !self.uts_host {
            wanted.push((LinuxNamespaceType::Uts, None));
        }
        wanted
            .into_iter()
            .map(|(typ, path)| {
                let builder = LinuxNamespaceBuilder::default().typ(typ);
                match path {
                    Some(path) => builder.path(path),
                    None => builder,
                }
                .build()
                .map_err(|err| spec_error(&self.id, err))
            })
            .collect()
    }

    fn resources(&self) -> Result<oci_spec::runtime::LinuxResources> {
        let id = self.id.as_str();
        // Deny every device but those the runtime always allows (null, zero, ...);
        // privileged pods get them all.
        let devices = LinuxDeviceCgroupBuilder::default()
            .allow(self.privileged)
            .access("rwm")
            .build()
            .map_err(|err| spec_error(id, err))?;
        let cpu = LinuxCpuBuilder::default()
            .shares(self.cpu_shares.unwrap_or(DEFAULT_SANDBOX_CPU_SHARES))
            .build()
            .map_err(|err| spec_error(id, err))?;
        LinuxResourcesBuilder::default()
            .devices(vec![devices])
            .cpu(cpu)
            .build()
            .map_err(|err| spec_error(id, err))
    }
}

fn validate_hostname(hostname: &str) -> Result<()> {
    let reason = if hostname.len() > HOSTNAME_MAX {
        "longer than 64 bytes"
    } else if hostname.contains(['/', '\0', '\n']) || hostname.contains(char::is_whitespace) {
        "contains '/', whitespace or NUL"
    } else {
        return Ok(());
    };
    Err(RuntimeError::invalid("hostname", hostname, reason))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use serde_json::{Value, json};

    fn json_of(spec: &SandboxSpec) -> Value {
        serde_json::to_value(spec.build().unwrap()).unwrap()
    }

    fn namespaces(value: &Value) -> Vec<(String, Option<String>)> {
        value["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|ns| {
                (
                    ns["type"].as_str().unwrap().to_owned(),
                    ns.get("path").and_then(Value::as_str).map(str::to_owned),
                )
            })
            .collect()
    }

    fn sorted_strings(value: &Value) -> Vec<String> {
        let mut v: Vec<String> = value
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect();
        v.sort();
        v
    }

    fn pod() -> SandboxSpec {
        SandboxSpec {
            hostname: "web-0".into(),
            cgroups_path: "/kubepods/besteffort/pod123/sb1".into(),
            netns: NamespaceMode::Path("/run/netns/cni-1234".into()),
            mounts: vec![
                MountSpec::bind_ro("/run/crust/sandboxes/sb1/shm", "/dev/shm"),
                MountSpec::bind_ro("/run/crust/sandboxes/sb1/resolv.conf", "/etc/resolv.conf"),
            ],
            sysctls: [(
                "net.ipv4.ip_unprivileged_port_start".to_owned(),
                "0".to_owned(),
            )]
            .into(),
            annotations: [("io.kubernetes.cri.sandbox-id".to_owned(), "sb1".to_owned())].into(),
            ..SandboxSpec::new("sb1", "/var/lib/crust/pause/rootfs")
        }
    }

    #[test]
    fn pod_sandbox_has_containerds_defaults() {
        let v = json_of(&pod());
        assert_eq!(v["ociVersion"], "1.0.2");
        assert_eq!(
            v["root"],
            json!({"path": "/var/lib/crust/pause/rootfs", "readonly": true})
        );
        assert_eq!(v["hostname"], "web-0");
        let process = &v["process"];
        assert_eq!(process["args"], json!(["/pause"]));
        assert_eq!(process["cwd"], "/");
        assert_eq!(process["user"], json!({"uid": 65535, "gid": 65535}));
        assert_eq!(process["noNewPrivileges"], true);
        assert_eq!(process["terminal"], false);
        assert!(process.get("rlimits").is_none());
        assert_eq!(
            process["oomScoreAdj"],
            clamp_oom_score_adj(DEFAULT_SANDBOX_OOM_SCORE_ADJ)
        );
        let caps = &process["capabilities"];
        let default: Vec<String> = {
            let mut v = vec![
                "CAP_CHOWN",
                "CAP_DAC_OVERRIDE",
                "CAP_FSETID",
                "CAP_FOWNER",
                "CAP_SETGID",
                "CAP_SETUID",
                "CAP_SETPCAP",
                "CAP_NET_BIND_SERVICE",
                "CAP_KILL",
            ]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
            v.sort();
            v
        };
        for set in ["bounding", "effective", "permitted"] {
            assert_eq!(sorted_strings(&caps[set]), default, "{set}");
        }
        assert!(caps.get("inheritable").is_none());
        assert!(caps.get("ambient").is_none());

        let linux = &v["linux"];
        assert_eq!(linux["cgroupsPath"], "/kubepods/besteffort/pod123/sb1");
        assert_eq!(
            namespaces(&v),
            [
                ("mount".into(), None),
                ("network".into(), Some("/run/netns/cni-1234".into())),
                ("pid".into(), None),
                ("ipc".into(), None),
                ("uts".into(), None),
            ]
        );
        assert_eq!(
            linux["sysctl"],
            json!({"net.ipv4.ip_unprivileged_port_start": "0"})
        );
        assert_eq!(
            linux["resources"],
            json!({"devices": [{"allow": false, "access": "rwm"}], "cpu": {"shares": 2}})
        );
        assert_eq!(linux["maskedPaths"], json!(MASKED_PATHS));
        assert_eq!(linux["readonlyPaths"], json!(READONLY_PATHS));
        // Confined like a RuntimeDefault container: EPERM for what is not allowed.
        assert_eq!(linux["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        let allowed: Vec<&str> = linux["seccomp"]["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["action"] == "SCMP_ACT_ALLOW")
            .flat_map(|r| {
                r["names"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|n| n.as_str().unwrap())
            })
            .collect();
        assert!(allowed.contains(&"pause"), "{allowed:?}");
        assert!(!allowed.contains(&"mount"), "{allowed:?}");
        assert_eq!(
            v["annotations"],
            json!({"io.kubernetes.cri.sandbox-id": "sb1"})
        );

        let mounts = v["mounts"].as_array().unwrap();
        let by_dest = |d: &str| mounts.iter().find(|m| m["destination"] == d).unwrap();
        assert_eq!(
            by_dest("/proc"),
            &json!({"destination": "/proc", "type": "proc", "source": "proc",
                    "options": ["nosuid", "noexec", "nodev"]})
        );
        assert_eq!(by_dest("/dev")["type"], "tmpfs");
        assert_eq!(by_dest("/dev/pts")["type"], "devpts");
        assert_eq!(by_dest("/dev/mqueue")["type"], "mqueue");
        assert_eq!(
            by_dest("/sys"),
            &json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
                    "options": ["nosuid", "noexec", "nodev", "ro"]})
        );
        assert_eq!(
            by_dest("/dev/shm"),
            &json!({"destination": "/dev/shm", "type": "bind",
                    "source": "/run/crust/sandboxes/sb1/shm",
                    "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]})
        );
        assert_eq!(
            by_dest("/etc/resolv.conf")["source"],
            "/run/crust/sandboxes/sb1/resolv.conf"
        );
        assert_eq!(mounts.len(), 7);
    }

    #[test]
    fn host_namespaces_are_left_out() {
        let spec = SandboxSpec {
            netns: NamespaceMode::Host,
            uts_host: true,
            ipc_host: true,
            pid: PidMode::Node,
            hostname: "ignored-with-host-uts".into(),
            ..SandboxSpec::new("sb2", "/r")
        };
        let v = json_of(&spec);
        assert_eq!(namespaces(&v), [("mount".to_owned(), None)]);
        assert!(v.get("hostname").is_none());
        // Still a fresh, read-only sysfs: we are root in the host's user namespace.
        let sys = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/sys")
            .unwrap();
        assert_eq!(sys["type"], "sysfs");
        assert!(v["linux"].get("cgroupsPath").is_none());
        assert!(v["linux"].get("sysctl").is_none());
    }

    #[test]
    fn new_network_namespace_has_no_path() {
        let v = json_of(&SandboxSpec::new("sb3", "/r"));
        assert_eq!(
            namespaces(&v),
            [
                ("mount".into(), None),
                ("network".into(), None),
                ("pid".into(), None),
                ("ipc".into(), None),
                ("uts".into(), None),
            ]
        );
    }

    #[test]
    fn user_groups_shares_and_oom_as_given() {
        let spec = SandboxSpec {
            run_as_user: (1000, 2000),
            supplemental_groups: vec![3000, 3001],
            cpu_shares: Some(512),
            oom_score_adj: 1000,
            env: vec!["A=b".into()],
            readonly_rootfs: false,
            ..SandboxSpec::new("sb4", "/r")
        };
        let v = json_of(&spec);
        assert_eq!(
            v["process"]["user"],
            json!({"uid": 1000, "gid": 2000, "additionalGids": [3000, 3001]})
        );
        assert_eq!(v["process"]["env"], json!(["A=b"]));
        assert_eq!(v["process"]["oomScoreAdj"], 1000);
        assert_eq!(v["linux"]["resources"]["cpu"]["shares"], 512);
        assert_eq!(v["root"]["readonly"], false);
    }

    #[test]
    fn privileged_lifts_the_security_defaults() {
        let spec = SandboxSpec {
            privileged: true,
            ..SandboxSpec::new("sb5", "/r")
        };
        let v = json_of(&spec);
        let linux = &v["linux"];
        assert!(linux.get("maskedPaths").is_none());
        assert!(linux.get("readonlyPaths").is_none());
        assert!(linux.get("seccomp").is_none());
        assert_eq!(
            linux["resources"]["devices"],
            json!([{"allow": true, "access": "rwm"}])
        );
        let ours = current_capabilities();
        assert_eq!(
            v["process"]["capabilities"]["bounding"]
                .as_array()
                .unwrap()
                .len(),
            ours.len()
        );
        assert!(ours.len() > DEFAULT_CAPABILITIES.len());
        let sys = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/sys")
            .unwrap();
        assert_eq!(sys["options"], json!(["nosuid", "noexec", "nodev", "rw"]));
    }

    #[test]
    fn bad_input_is_refused_with_invalid_argument() {
        let cases: Vec<(SandboxSpec, &str)> = vec![
            (
                SandboxSpec::new("", "/r"),
                "invalid container id \"\": empty",
            ),
            (
                SandboxSpec::new("sb", ""),
                "invalid sandbox rootfs \"\": empty path",
            ),
            (
                SandboxSpec {
                    args: vec![],
                    ..SandboxSpec::new("sb", "/r")
                },
                "invalid sandbox args \"\": empty command line",
            ),
            (
                SandboxSpec {
                    netns: NamespaceMode::Host,
                    sysctls: [("net.core.somaxconn".to_owned(), "1024".to_owned())].into(),
                    ..SandboxSpec::new("sb", "/r")
                },
                "sysctl net.core.somaxconn: the pod shares the host network namespace",
            ),
            (
                SandboxSpec {
                    netns: NamespaceMode::Path("netns/x".into()),
                    ..SandboxSpec::new("sb", "/r")
                },
                "invalid network namespace path \"netns/x\": not an absolute path",
            ),
            (
                SandboxSpec {
                    hostname: "h".repeat(65),
                    ..SandboxSpec::new("sb", "/r")
                },
                "longer than 64 bytes",
            ),
            (
                SandboxSpec {
                    mounts: vec![MountSpec::bind_ro("/x", "relative")],
                    ..SandboxSpec::new("sb", "/r")
                },
                "invalid mount destination \"relative\": not an absolute path",
            ),
        ];
        for (spec, message) in cases {
            let err = spec.build().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{message}");
            assert!(err.to_string().ends_with(message), "{err} / {message}");
        }
    }

    #[test]
    fn write_puts_config_json_in_the_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("sb1");
        let path = pod().write(&bundle).unwrap();
        let back: Spec = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        assert_eq!(back, pod().build().unwrap());
    }
}
