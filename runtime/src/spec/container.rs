//! The OCI spec of a CRI container, as containerd's CRI plugin builds it
//! (`internal/cri/server/container_create*.go`, `internal/cri/opts/spec_linux_opts.go`,
//! `pkg/oci/spec_opts.go`), with CRI-O where containerd leaves a gap.
//!
//! What [`build_container_spec`] decides:
//!
//! - **Command**: CRI `command` replaces the image's Entrypoint and CRI `args` its Cmd;
//!   when `command` is given the image's Cmd is not used even if `args` is empty (moby's
//!   rule, which containerd keeps). An Entrypoint of `[""]` counts as none. Nothing left:
//!   InvalidArgument "no command specified".
//! - **Environment**: the default PATH, `TERM=xterm` for a tty, `HOSTNAME` (the pod's, or
//!   the node's for a host-network pod without one), the image's Env, then the CRI envs;
//!   each replaces an earlier entry with the same key in place.
//! - **cwd**: CRI `working_dir`, else the image's WorkingDir, else `/`; it must be
//!   absolute.
//! - **User**: [`super::user`]. No rlimits (containerd 2 dropped the default NOFILE);
//!   `noNewPrivileges` is the CRI `no_new_privs`; `oomScoreAdj` is the CRI resources' value
//!   clamped to our own ([`super::clamp_oom_score_adj`]).
//! - **Namespaces**: mount new; network, IPC and UTS joined from the pod (the pinned
//!   netns, `/proc/<pause>/ns/{ipc,uts}`) or the host's when the pod uses the host's
//!   (UTS follows the network); PID per the container's `namespace_options.pid`: POD
//!   joins the pause's, CONTAINER gets a new one, NODE the host's, TARGET joins
//!   `/proc/<target pid>/ns/pid`. No cgroup namespace, no hostname (UTS is the pod's).
//! - **Mounts**: containerd's defaults without /run, a read-only `cgroup` at
//!   /sys/fs/cgroup (rw, like /sys, for privileged containers), then the pod's
//!   /etc/hostname, /etc/hosts, /etc/resolv.conf (read-only when the rootfs is) and
//!   /dev/shm (the host's for host-IPC pods) unless a CRI mount covers the path, then the
//!   CRI mounts. CRI mounts are binds with `rbind`, the propagation (`rprivate`,
//!   `rslave`, `rshared`; the latter two also set `rootfsPropagation`), `ro`/`rw`, and
//!   `rro` for `recursive_read_only` (which must be read-only and private; the container
//!   service turns it into a staged read-only tree, [`crate::rro`], for runtimes
//!   without it). They are ordered
//!   parents first; a default at the same path is dropped, and every default under /dev
//!   when /dev itself is mounted. `selinux_relabel` is ignored. Missing bind sources are
//!   not created here: [`BuiltSpec::bind_sources`] lists them for the caller.
//! - **Devices**: the CRI devices (a directory adds every device below it) with cgroup
//!   rules allowing them; the rule list starts with "deny all" and allows the standard
//!   char devices (null, zero, full, random, urandom, tty, ptmx, pts). Privileged: every
//!   device of the host's /dev and "allow all".
//! - **Resources**: [`linux_resources`], plus the device rules.
//! - **Security**: capabilities are [`DEFAULT_CAPABILITIES`] changed by the CRI
//!   add/drop lists in containerd's order (add ALL, drop ALL, add each, drop each; names
//!   with or without `CAP_`); "ALL" and privileged mean our own effective set (the
//!   runtime cannot grant more). Privileged also means no masked or read-only paths, /sys
//!   rw, all devices, no seccomp and no AppArmor RuntimeDefault; it needs a privileged
//!   sandbox. CRI masked/readonly paths replace the defaults when non-empty (an empty list
//!   cannot be told from an absent one on the wire; containerd behaves the same).
//!   Seccomp: [`super::seccomp`]. AppArmor: without AppArmor on the host, a Localhost
//!   profile is refused and anything else means none; with it, Localhost names a loaded
//!   profile, RuntimeDefault uses [`HostFeatures::apparmor_default_profile`] (crustd
//!   loads it at start, [`crate::apparmor`]) or is refused with FailedPrecondition when
//!   that is not loaded, and nothing asked means the default if loaded. SELinux options apply only where SELinux is enabled and
//!   are ignored elsewhere, as containerd does.
//! - **Annotations**: `io.kubernetes.cri.container-type=container`, `sandbox-id`,
//!   `container-name`, `sandbox-name`, `sandbox-namespace`, `sandbox-uid`, `image-name`
//!   (those that are known). CRI annotations are not copied, as containerd by default.
//!
//! The spec is assembled as JSON and then deserialized into [`Spec`]: oci-spec's
//! builders fill unset fields from an example config, while deserializing sets exactly
//! what is written (and checks names such as capabilities and seccomp actions).

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use crust_proto::cri;
use oci_spec::runtime::{
    Capability, LinuxCpu, LinuxHugepageLimit, LinuxMemory, LinuxResources, Process, Spec, User,
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::seccomp::{SeccompRequest, SeccompTarget};
pub use super::user::ResolvedUser;
use super::user::resolve_user;
use super::{
    DEFAULT_CAPABILITIES, MASKED_PATHS, OCI_VERSION, READONLY_PATHS, clamp_oom_score_adj_to,
    current_capabilities, default_mounts, spec_error,
};
use crate::error::{Result, RuntimeError};
use crate::oci::validate_id;

/// The PATH a container gets when its image sets none (containerd's default).
pub const DEFAULT_PATH_ENV: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Annotation: "container" (pause containers are "sandbox").
pub const ANNOTATION_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// Annotation: the sandbox id.
pub const ANNOTATION_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// Annotation: the container's CRI metadata name.
pub const ANNOTATION_CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
/// Annotation: the pod's name.
pub const ANNOTATION_SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
/// Annotation: the pod's namespace.
pub const ANNOTATION_SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
/// Annotation: the pod's uid.
pub const ANNOTATION_SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
/// Annotation: the image as the CRI request named it.
pub const ANNOTATION_IMAGE_NAME: &str = "io.kubernetes.cri.image-name";

/// The AppArmor profile crust uses for RuntimeDefault when it is loaded.
pub const DEFAULT_APPARMOR_PROFILE: &str = crate::apparmor::DEFAULT_PROFILE_NAME;

/// The first real-time signal as glibc numbers it (the kernel's 32 and 33 are taken).
const SIGRTMIN: i32 = 34;
/// The last real-time signal.
const SIGRTMAX: i32 = 64;

/// How a container joins its pod's namespaces.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SandboxNamespaces {
    /// The pause process, whose `/proc/<pid>/ns/{ipc,uts,pid}` the container joins.
    pub pause_pid: u32,
    /// The pod's pinned network namespace; `None`: `/proc/<pause_pid>/ns/net`.
    pub netns: Option<PathBuf>,
    /// The pod uses the host's network (and UTS) namespace.
    pub host_network: bool,
    /// The pod uses the host's IPC namespace.
    pub host_ipc: bool,
    /// The pod uses the host's PID namespace.
    pub host_pid: bool,
    /// For PID mode TARGET: the init pid of the target container.
    pub target_pid: Option<u32>,
    /// The pod's user namespace mappings; `None`: the pod uses the host's.
    pub userns: Option<crust_util::userns::IdMappings>,
    /// The pod's pinned IPC namespace, for a pod without a pause; `None`:
    /// `/proc/<pause_pid>/ns/ipc`.
    pub ipc: Option<PathBuf>,
    /// The pod's pinned UTS namespace, for a pod without a pause; `None`:
    /// `/proc/<pause_pid>/ns/uts`.
    pub uts: Option<PathBuf>,
}

impl SandboxNamespaces {
    fn proc_ns(pid: u32, kind: &str) -> String {
        format!("/proc/{pid}/ns/{kind}")
    }
}

/// The pod's shared files on the host; `None`: not mounted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodFilePaths {
    /// Mounted at /etc/hostname.
    pub hostname: Option<PathBuf>,
    /// Mounted at /etc/hosts.
    pub hosts: Option<PathBuf>,
    /// Mounted at /etc/resolv.conf.
    pub resolv_conf: Option<PathBuf>,
    /// The pod's /dev/shm; ignored for host-IPC pods, which get the host's /dev/shm.
    /// `None`: the container keeps a private tmpfs.
    pub shm: Option<PathBuf>,
}

/// Which optional cgroup controllers the node has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupSupport {
    /// The hugetlb controller: without it hugepage limits are left out.
    pub hugetlb: bool,
    /// Swap accounting: without it no swap limit is set.
    pub swap: bool,
}

impl CgroupSupport {
    /// Probes /sys/fs/cgroup once per process (controllers do not change at run time).
    pub fn detect() -> CgroupSupport {
        static DETECTED: OnceLock<CgroupSupport> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            let root = Path::new("/sys/fs/cgroup");
            match std::fs::read_to_string(root.join("cgroup.controllers")) {
                // cgroup v2 only: swap is accounted with the memory controller.
                Ok(controllers) => CgroupSupport {
                    hugetlb: controllers.split_whitespace().any(|c| c == "hugetlb"),
                    swap: controllers.split_whitespace().any(|c| c == "memory"),
                },
                Err(_) => CgroupSupport {
                    hugetlb: root.join("hugetlb").is_dir(),
                    swap: root.join("memory/memory.memsw.limit_in_bytes").exists(),
                },
            }
        })
    }
}

/// What the node offers, read once per container by [`HostFeatures::detect`]; tests
/// build it by hand.
#[derive(Debug, Clone, PartialEq)]
pub struct HostFeatures {
    /// Our effective capabilities: what privileged containers and "ALL" get.
    pub capabilities: Vec<Capability>,
    /// Our own OOM score adjustment, the floor of containers' (see
    /// [`super::clamp_oom_score_adj`]); `None`: unknown, no clamp.
    pub own_oom_score_adj: Option<i32>,
    /// `/sys/module/apparmor/parameters/enabled` says "Y".
    pub apparmor_enabled: bool,
    /// The AppArmor profile for RuntimeDefault, when one is loaded.
    pub apparmor_default_profile: Option<String>,
    /// SELinux is enabled (`/sys/fs/selinux` exists).
    pub selinux_enabled: bool,
    /// The optional cgroup controllers.
    pub cgroups: CgroupSupport,
    /// The machine seccomp profiles are resolved for.
    pub seccomp_target: SeccompTarget,
    /// The node's hostname, the HOSTNAME of host-network pods that name none.
    pub hostname: String,
}

impl HostFeatures {
    /// Reads the node's features (a few small files under /proc and /sys).
    pub fn detect() -> HostFeatures {
        let apparmor_enabled = crate::apparmor::enabled();
        let apparmor_default_profile = (apparmor_enabled
            && crate::apparmor::loaded(DEFAULT_APPARMOR_PROFILE))
        .then(|| DEFAULT_APPARMOR_PROFILE.to_owned());
        HostFeatures {
            capabilities: current_capabilities(),
            own_oom_score_adj: std::fs::read_to_string("/proc/self/oom_score_adj")
                .ok()
                .and_then(|text| text.trim().parse().ok()),
            apparmor_enabled,
            apparmor_default_profile,
            selinux_enabled: Path::new("/sys/fs/selinux").is_dir(),
            cgroups: CgroupSupport::detect(),
            seccomp_target: SeccompTarget::native(),
            hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|name| name.trim().to_owned())
                .unwrap_or_default(),
        }
    }
}

/// Everything [`build_container_spec`] needs; the service layer gathers it.
#[derive(Debug, Clone)]
pub struct ContainerSpecInput<'a> {
    /// The container id, also the OCI id.
    pub id: &'a str,
    /// The sandbox's id (for the annotations).
    pub sandbox_id: &'a str,
    /// The CRI request's container config.
    pub config: &'a cri::ContainerConfig,
    /// The pod's config.
    pub sandbox_config: &'a cri::PodSandboxConfig,
    /// The image config blob (`{"config": {"Entrypoint", "Cmd", "Env", ...}, ...}`).
    pub image_config: &'a Value,
    /// The container's mounted rootfs; its /etc/passwd and /etc/group are read.
    pub rootfs: &'a Path,
    /// How to join the pod's namespaces.
    pub sandbox: SandboxNamespaces,
    /// The pod's shared files.
    pub pod_files: PodFilePaths,
    /// `linux.cgroupsPath`, computed by the caller; empty: none.
    pub cgroups_path: String,
    /// The node's features ([`HostFeatures::detect`]).
    pub host: &'a HostFeatures,
}

/// A container's spec and what the caller must do or remember besides writing it.
#[derive(Debug, Clone, PartialEq)]
pub struct BuiltSpec {
    /// The OCI spec (config.json).
    pub spec: Spec,
    /// Who the process runs as.
    pub user: ResolvedUser,
    /// The image's StopSignal when it names a signal ([`parse_signal`]); `None`: SIGTERM.
    pub stop_signal: Option<String>,
    /// The image's volumes that no CRI mount covers, cleaned absolute paths: containerd
    /// creates them as directories in the writable layer before start.
    pub image_volumes: Vec<String>,
    /// The host paths of the CRI bind mounts, to create as directories when missing
    /// (containerd does so before start).
    pub bind_sources: Vec<PathBuf>,
    /// The pod's user namespace mappings, which bind mounts are idmapped with.
    pub userns: Option<crust_util::userns::IdMappings>,
}

/// The parts of the image config a container spec uses (Docker's names).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ImageConfig {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    stop_signal: Option<String>,
    #[serde(default)]
    volumes: Option<BTreeMap<String, Value>>,
}

impl ImageConfig {
    fn from_blob(blob: &Value) -> Result<ImageConfig> {
        match blob.get("config") {
            None | Some(Value::Null) => Ok(ImageConfig::default()),
            Some(config) => ImageConfig::deserialize(config)
                .map_err(|err| RuntimeError::invalid("image config", "config", err.to_string())),
        }
    }
}

/// Builds the OCI spec of a CRI container (see the module doc for every decision).
pub fn build_container_spec(input: &ContainerSpecInput) -> Result<BuiltSpec> {
    let id = input.id;
    validate_id(id)?;
    let config = input.config;
    let host = input.host;
    let image = ImageConfig::from_blob(input.image_config)?;
    let security = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref());
    let privileged = security.is_some_and(|s| s.privileged);
    if privileged
        && !input
            .sandbox_config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .is_some_and(|s| s.privileged)
    {
        return Err(RuntimeError::invalid(
            "container",
            id,
            "a privileged container needs a privileged sandbox",
        ));
    }
    let readonly_rootfs = security.is_some_and(|s| s.readonly_rootfs);
    let rootfs = path_str("rootfs", input.rootfs)?;
    if rootfs.is_empty() {
        return Err(RuntimeError::invalid("rootfs", "", "empty path"));
    }

    let args = process_args(config, &image)?;
    let user = resolve_user(
        input.rootfs,
        security,
        image.user.as_deref().unwrap_or_default(),
    )?;
    if let Some(maps) = &input.sandbox.userns {
        check_user_is_mapped(&user, maps)?;
    }
    let env = process_env(input, &image);
    let cwd = if !config.working_dir.is_empty() {
        config.working_dir.clone()
    } else {
        image
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".to_owned())
    };
    check_working_dir(&cwd)?;

    let caps = capabilities(security, host)?;
    let ambient = ambient_capabilities(security, privileged)?;
    let cap_names = |set: &[Capability]| -> Vec<Value> {
        set.iter()
            .map(|c| Value::from(super::seccomp::capability_name(*c)))
            .collect()
    };
    let mut bounding = caps.clone();
    for cap in &ambient {
        if !bounding.contains(cap) {
            bounding.push(*cap);
        }
    }
    let mut capabilities = json!({
        "bounding": cap_names(&bounding),
        "effective": cap_names(&bounding),
        "permitted": cap_names(&bounding),
    });
    if !ambient.is_empty() {
        capabilities["inheritable"] = cap_names(&ambient).into();
        capabilities["ambient"] = cap_names(&ambient).into();
    }

    let resources_cri = config.linux.as_ref().and_then(|l| l.resources.as_ref());
    let wanted_oom = resources_cri.map_or(0, |r| r.oom_score_adj);
    let oom_score_adj = clamp_oom_score_adj_to(
        wanted_oom.clamp(i32::MIN as i64, i32::MAX as i64) as i32,
        host.own_oom_score_adj,
    );

    let mut process = json!({
        "terminal": config.tty,
        "user": {
            "uid": user.uid,
            "gid": user.gid,
            "additionalGids": user.additional_gids,
        },
        "args": args,
        "env": env,
        "cwd": cwd,
        "capabilities": capabilities,
        "oomScoreAdj": oom_score_adj,
    });
    // Written only when set: libcontainer 0.7 loads seccomp before dropping
    // capabilities (which it needs without no_new_privs) only when the field is absent.
    if security.is_some_and(|s| s.no_new_privs) {
        process["noNewPrivileges"] = true.into();
    }
    if let Some(profile) = apparmor_profile(security, privileged, host)? {
        process["apparmorProfile"] = profile.into();
    }
    if let Some(label) = selinux_label(security, host) {
        process["selinuxLabel"] = label.into();
    }

    let mounts = build_mounts(input, privileged, readonly_rootfs)?;
    let (devices, device_rules) = build_devices(config, privileged)?;
    let mut resources = match resources_cri {
        Some(r) => linux_resources_with(r, host.cgroups),
        None => LinuxResources::default(),
    };
    resources.set_devices(Some(device_rules));

    let seccomp = if privileged {
        None
    } else {
        let request = SeccompRequest::from_cri(
            security.and_then(|s| s.seccomp.as_ref()),
            security.map_or("", deprecated_seccomp_path),
        )?;
        match request {
            SeccompRequest::Unconfined => None,
            SeccompRequest::RuntimeDefault => Some(super::seccomp::default_profile(
                &bounding,
                &host.seccomp_target,
            )?),
            SeccompRequest::Localhost(path) => Some(super::seccomp::load_profile(
                &path,
                &bounding,
                &host.seccomp_target,
            )?),
        }
    };

    let mut linux = json!({
        "resources": serde_json::to_value(&resources).map_err(|err| spec_error(id, err))?,
        "namespaces": namespaces(security, &input.sandbox)?,
    });
    if !input.cgroups_path.is_empty() {
        linux["cgroupsPath"] = input.cgroups_path.clone().into();
    }
    if let Some(maps) = &input.sandbox.userns {
        // runc joins the pod's namespace by path but still needs the mappings, to
        // know whose the container's root is on the host.
        linux["uidMappings"] = id_mapping_json(&maps.uids);
        linux["gidMappings"] = id_mapping_json(&maps.gids);
    }
    if !devices.is_empty() {
        linux["devices"] = devices.into();
    }
    if let Some(propagation) = mounts.rootfs_propagation {
        linux["rootfsPropagation"] = propagation.into();
    }
    if let Some(seccomp) = seccomp {
        linux["seccomp"] = serde_json::to_value(&seccomp).map_err(|err| spec_error(id, err))?;
    }
    if !privileged {
        let given = |list: Option<&Vec<String>>, default: &[&str]| -> Vec<String> {
            match list {
                Some(list) if !list.is_empty() => list.clone(),
                _ => default.iter().map(|p| p.to_string()).collect(),
            }
        };
        linux["maskedPaths"] = given(security.map(|s| &s.masked_paths), &MASKED_PATHS).into();
        linux["readonlyPaths"] = given(security.map(|s| &s.readonly_paths), &READONLY_PATHS).into();
    }

    let spec = json!({
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": rootfs, "readonly": readonly_rootfs},
        "mounts": mounts.mounts,
        "annotations": annotations(input),
        "linux": linux,
    });
    let spec: Spec = serde_json::from_value(spec).map_err(|err| spec_error(id, err))?;

    let covered: Vec<String> = config
        .mounts
        .iter()
        .filter_map(|m| clean_container_path(&m.container_path).ok())
        .collect();
    let image_volumes = image
        .volumes
        .iter()
        .flat_map(|v| v.keys())
        .filter_map(|volume| match clean_container_path(volume) {
            Ok(path) => Some(path),
            Err(err) => {
                tracing::warn!(container = id, volume, %err, "image volume ignored");
                None
            }
        })
        .filter(|path| !covered.contains(path))
        .collect();
    let stop_signal = image
        .stop_signal
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .filter(|s| {
            let known = parse_signal(s).is_some();
            if !known {
                tracing::warn!(container = id, signal = %s, "unknown image StopSignal, SIGTERM used");
            }
            known
        });
    Ok(BuiltSpec {
        spec,
        user,
        stop_signal,
        image_volumes,
        bind_sources: mounts.bind_sources,
        userns: input.sandbox.userns,
    })
}

/// The CRI resources as OCI `linux.resources` (no device rules), for create and for
/// `UpdateContainerResources`; leaves out hugepage and swap limits when the node lacks
/// those controllers ([`CgroupSupport::detect`]).
pub fn linux_resources(resources: &cri::LinuxContainerResources) -> LinuxResources {
    linux_resources_with(resources, CgroupSupport::detect())
}

/// [`linux_resources`] for the given controllers. Zero means unset, as in containerd; a
/// memory limit without a swap limit gets swap = limit (no swapping), as containerd does.
pub fn linux_resources_with(
    resources: &cri::LinuxContainerResources,
    cgroups: CgroupSupport,
) -> LinuxResources {
    let mut cpu = LinuxCpu::default();
    let mut cpu_set = false;
    if resources.cpu_period > 0 {
        cpu.set_period(Some(resources.cpu_period as u64));
        cpu_set = true;
    }
    if resources.cpu_quota != 0 {
        cpu.set_quota(Some(resources.cpu_quota));
        cpu_set = true;
    }
    if resources.cpu_shares > 0 {
        cpu.set_shares(Some(resources.cpu_shares as u64));
        cpu_set = true;
    }
    if !resources.cpuset_cpus.is_empty() {
        cpu.set_cpus(Some(resources.cpuset_cpus.clone()));
        cpu_set = true;
    }
    if !resources.cpuset_mems.is_empty() {
        cpu.set_mems(Some(resources.cpuset_mems.clone()));
        cpu_set = true;
    }

    let mut memory = LinuxMemory::default();
    let mut memory_set = false;
    if resources.memory_limit_in_bytes != 0 {
        memory.set_limit(Some(resources.memory_limit_in_bytes));
        memory_set = true;
        if resources.memory_swap_limit_in_bytes == 0 && cgroups.swap {
            memory.set_swap(Some(resources.memory_limit_in_bytes));
        }
    }
    if resources.memory_swap_limit_in_bytes != 0 && cgroups.swap {
        memory.set_swap(Some(resources.memory_swap_limit_in_bytes));
        memory_set = true;
    }

    let mut out = LinuxResources::default();
    out.set_cpu(cpu_set.then_some(cpu))
        .set_memory(memory_set.then_some(memory));
    if cgroups.hugetlb && !resources.hugepage_limits.is_empty() {
        let limits = resources
            .hugepage_limits
            .iter()
            .map(|h| {
                let mut limit = LinuxHugepageLimit::default();
                limit
                    .set_page_size(h.page_size.clone())
                    .set_limit(h.limit.min(i64::MAX as u64) as i64);
                limit
            })
            .collect();
        out.set_hugepage_limits(Some(limits));
    }
    if !resources.unified.is_empty() {
        out.set_unified(Some(
            resources
                .unified
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<HashMap<_, _>>(),
        ));
    }
    out
}

/// The process for `runc exec --process`: the container's process (user, env, cwd,
/// capabilities, no_new_privs, AppArmor, SELinux) running `cmd`, with a terminal when
/// `tty` (and `TERM=xterm` unless the env sets TERM). `cmd` must not be empty; the
/// caller checks.
pub fn exec_process(spec: &Spec, cmd: Vec<String>, tty: bool) -> Process {
    let mut process = spec.process().clone().unwrap_or_else(|| {
        // No process in the spec (not one crust wrote): root in /, nothing else.
        let mut process = Process::default();
        process
            .set_user(User::default())
            .set_env(Some(vec![DEFAULT_PATH_ENV.to_owned()]))
            .set_cwd(PathBuf::from("/"))
            .set_capabilities(None)
            .set_rlimits(None)
            .set_no_new_privileges(None)
            .set_apparmor_profile(None)
            .set_selinux_label(None)
            .set_oom_score_adj(None)
            .set_scheduler(None)
            .set_io_priority(None)
            .set_exec_cpu_affinity(None)
            .set_command_line(None);
        process
    });
    let mut env = process.env().clone().unwrap_or_default();
    if tty && !env.iter().any(|e| env_key(e) == "TERM") {
        env.push("TERM=xterm".to_owned());
    }
    process
        .set_args(Some(cmd))
        .set_terminal(Some(tty))
        .set_console_size(None)
        .set_env(Some(env));
    process
}

/// A signal by name (`SIGQUIT`, `quit`, `SIGRTMIN+3`, `RTMAX-1`) or number (`3`).
pub fn parse_signal(text: &str) -> Option<i32> {
    let text = text.trim();
    if let Ok(number) = text.parse::<i32>() {
        return (1..=SIGRTMAX).contains(&number).then_some(number);
    }
    let upper = text.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let realtime = |base: i32, rest: &str| -> Option<i32> {
        let number = match rest {
            "" => base,
            _ => {
                let (sign, digits) = rest.split_at(1);
                let offset: i32 = digits.parse().ok()?;
                match sign {
                    "+" => base.checked_add(offset)?,
                    "-" => base.checked_sub(offset)?,
                    _ => return None,
                }
            }
        };
        (SIGRTMIN..=SIGRTMAX).contains(&number).then_some(number)
    };
    if let Some(rest) = name.strip_prefix("RTMIN") {
        return realtime(SIGRTMIN, rest);
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        return realtime(SIGRTMAX, rest);
    }
    let number = match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "ILL" => libc::SIGILL,
        "TRAP" => libc::SIGTRAP,
        "ABRT" | "IOT" => libc::SIGABRT,
        "BUS" => libc::SIGBUS,
        "FPE" => libc::SIGFPE,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "SEGV" => libc::SIGSEGV,
        "USR2" => libc::SIGUSR2,
        "PIPE" => libc::SIGPIPE,
        "ALRM" => libc::SIGALRM,
        "TERM" => libc::SIGTERM,
        "STKFLT" => libc::SIGSTKFLT,
        "CHLD" | "CLD" => libc::SIGCHLD,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "TSTP" => libc::SIGTSTP,
        "TTIN" => libc::SIGTTIN,
        "TTOU" => libc::SIGTTOU,
        "URG" => libc::SIGURG,
        "XCPU" => libc::SIGXCPU,
        "XFSZ" => libc::SIGXFSZ,
        "VTALRM" => libc::SIGVTALRM,
        "PROF" => libc::SIGPROF,
        "WINCH" => libc::SIGWINCH,
        "IO" | "POLL" => libc::SIGIO,
        "PWR" => libc::SIGPWR,
        "SYS" => libc::SIGSYS,
        _ => return None,
    };
    Some(number)
}

fn path_str<'p>(what: &'static str, path: &'p Path) -> Result<&'p str> {
    path.to_str()
        .ok_or_else(|| RuntimeError::invalid(what, &path.to_string_lossy(), "not valid UTF-8"))
}

/// containerd's rule (from moby): see the module doc.
fn process_args(config: &cri::ContainerConfig, image: &ImageConfig) -> Result<Vec<String>> {
    let mut command = config.command.clone();
    let mut args = config.args.clone();
    if command.is_empty() {
        if args.is_empty() {
            args = image.cmd.clone().unwrap_or_default();
        }
        command = image
            .entrypoint
            .clone()
            .filter(|e| !(e.len() == 1 && e[0].is_empty()))
            .unwrap_or_default();
    }
    command.extend(args);
    if command.is_empty() {
        return Err(RuntimeError::invalid(
            "container command",
            "",
            "no command specified",
        ));
    }
    Ok(command)
}

fn env_key(entry: &str) -> &str {
    entry.split_once('=').map_or(entry, |(key, _)| key)
}

/// Sets `entry` (`KEY=value`) in place of an entry with the same key, or appends it; a
/// bare `KEY` removes the key (the OCI convention containerd follows).
fn set_env(env: &mut Vec<String>, entry: &str) {
    let key = env_key(entry);
    if key.is_empty() {
        return;
    }
    if !entry.contains('=') {
        env.retain(|e| env_key(e) != key);
        return;
    }
    match env.iter_mut().find(|e| env_key(e) == key) {
        Some(slot) => *slot = entry.to_owned(),
        None => env.push(entry.to_owned()),
    }
}

fn process_env(input: &ContainerSpecInput, image: &ImageConfig) -> Vec<String> {
    let mut env = vec![DEFAULT_PATH_ENV.to_owned()];
    if input.config.tty {
        set_env(&mut env, "TERM=xterm");
    }
    let hostname = if !input.sandbox_config.hostname.is_empty() {
        input.sandbox_config.hostname.as_str()
    } else if input.sandbox.host_network {
        input.host.hostname.as_str()
    } else {
        ""
    };
    if !hostname.is_empty() {
        set_env(&mut env, &format!("HOSTNAME={hostname}"));
    }
    for entry in image.env.iter().flatten() {
        set_env(&mut env, entry);
    }
    for kv in &input.config.envs {
        set_env(&mut env, &format!("{}={}", kv.key, kv.value));
    }
    env
}

fn parse_capability(name: &str) -> Result<Capability> {
    serde_json::from_value(Value::String(name.to_owned()))
        .map_err(|_| RuntimeError::invalid("capability", name, "unknown"))
}

fn capabilities(
    security: Option<&cri::LinuxContainerSecurityContext>,
    host: &HostFeatures,
) -> Result<Vec<Capability>> {
    if security.is_some_and(|s| s.privileged) {
        return Ok(host.capabilities.clone());
    }
    let mut caps = DEFAULT_CAPABILITIES.to_vec();
    let Some(wanted) = security.and_then(|s| s.capabilities.as_ref()) else {
        return Ok(caps);
    };
    let is_all = |name: &String| name.eq_ignore_ascii_case("ALL");
    if wanted.add_capabilities.iter().any(is_all) {
        caps = host.capabilities.clone();
    }
    if wanted.drop_capabilities.iter().any(is_all) {
        caps.clear();
    }
    for name in wanted.add_capabilities.iter().filter(|n| !is_all(n)) {
        let cap = parse_capability(name)?;
        if !caps.contains(&cap) {
            caps.push(cap);
        }
    }
    for name in wanted.drop_capabilities.iter().filter(|n| !is_all(n)) {
        let cap = parse_capability(name)?;
        caps.retain(|c| *c != cap);
    }
    Ok(caps)
}

/// CRI `add_ambient_capabilities`: raised in the ambient and inheritable sets (and kept
/// in the others). Ignored for privileged containers, like the other lists.
fn ambient_capabilities(
    security: Option<&cri::LinuxContainerSecurityContext>,
    privileged: bool,
) -> Result<Vec<Capability>> {
    if privileged {
        return Ok(Vec::new());
    }
    let mut ambient = Vec::new();
    for name in security
        .and_then(|s| s.capabilities.as_ref())
        .map(|c| c.add_ambient_capabilities.as_slice())
        .unwrap_or_default()
    {
        let cap = parse_capability(name)?;
        if !ambient.contains(&cap) {
            ambient.push(cap);
        }
    }
    Ok(ambient)
}

#[allow(deprecated)] // Still sent by older kubelets; containerd reads it too.
fn deprecated_seccomp_path(security: &cri::LinuxContainerSecurityContext) -> &str {
    &security.seccomp_profile_path
}

#[allow(deprecated)] // Still sent by older kubelets; containerd reads it too.
fn deprecated_apparmor_profile(security: &cri::LinuxContainerSecurityContext) -> &str {
    &security.apparmor_profile
}

/// What the request asks of AppArmor.
enum AppArmor {
    NotSet,
    Unconfined,
    RuntimeDefault,
    Localhost(String),
}

fn apparmor_profile(
    security: Option<&cri::LinuxContainerSecurityContext>,
    privileged: bool,
    host: &HostFeatures,
) -> Result<Option<String>> {
    use cri::security_profile::ProfileType;
    let localhost = |name: &str| -> Result<AppArmor> {
        let name = name.strip_prefix("localhost/").unwrap_or(name);
        if name.is_empty() {
            return Err(RuntimeError::invalid(
                "apparmor profile",
                name,
                "a localhost profile needs a name",
            ));
        }
        Ok(AppArmor::Localhost(name.to_owned()))
    };
    let request = match security.and_then(|s| s.apparmor.as_ref()) {
        Some(profile) => match ProfileType::try_from(profile.profile_type) {
            Ok(ProfileType::RuntimeDefault) => AppArmor::RuntimeDefault,
            Ok(ProfileType::Unconfined) => AppArmor::Unconfined,
            Ok(ProfileType::Localhost) => localhost(&profile.localhost_ref)?,
            Err(_) => {
                return Err(RuntimeError::invalid(
                    "apparmor profile type",
                    &profile.profile_type.to_string(),
                    "unknown",
                ));
            }
        },
        None => match security.map_or("", deprecated_apparmor_profile) {
            "" => AppArmor::NotSet,
            "unconfined" => AppArmor::Unconfined,
            "runtime/default" => AppArmor::RuntimeDefault,
            other if other.starts_with("localhost/") => localhost(other)?,
            other => {
                return Err(RuntimeError::invalid(
                    "apparmor profile",
                    other,
                    "not unconfined, runtime/default or localhost/<name>",
                ));
            }
        },
    };
    if !host.apparmor_enabled {
        return match request {
            AppArmor::Localhost(name) => Err(RuntimeError::invalid(
                "apparmor profile",
                &name,
                "apparmor is not enabled on this host",
            )),
            _ => Ok(None),
        };
    }
    Ok(match request {
        AppArmor::Unconfined => None,
        AppArmor::NotSet | AppArmor::RuntimeDefault if privileged => None,
        // Asked for by name, the default is applied or the container is refused: a
        // container that should be confined never runs unconfined.
        AppArmor::RuntimeDefault => {
            Some(host.apparmor_default_profile.clone().ok_or_else(|| {
                RuntimeError::Unsupported {
                    what: "apparmor profile RuntimeDefault",
                    reason: format!(
                        "the host has AppArmor but the {DEFAULT_APPARMOR_PROFILE} profile is not \
                     loaded (crustd loads it at start with apparmor_parser; see its log)"
                    ),
                }
            })?)
        }
        AppArmor::NotSet => host.apparmor_default_profile.clone(),
        AppArmor::Localhost(name) => Some(name),
    })
}

fn selinux_label(
    security: Option<&cri::LinuxContainerSecurityContext>,
    host: &HostFeatures,
) -> Option<String> {
    if !host.selinux_enabled {
        return None;
    }
    let options = security.and_then(|s| s.selinux_options.as_ref())?;
    if [
        &options.user,
        &options.role,
        &options.r#type,
        &options.level,
    ]
    .iter()
    .all(|f| f.is_empty())
    {
        return None;
    }
    let or = |value: &str, default: &str| {
        if value.is_empty() {
            default.to_owned()
        } else {
            value.to_owned()
        }
    };
    Some(format!(
        "{}:{}:{}:{}",
        or(&options.user, "system_u"),
        or(&options.role, "system_r"),
        or(&options.r#type, "container_t"),
        or(&options.level, "s0"),
    ))
}

/// A process in a user namespace can only be users and groups the namespace maps.
fn check_user_is_mapped(user: &ResolvedUser, maps: &crust_util::userns::IdMappings) -> Result<()> {
    if maps.uids.to_host(user.uid).is_none() {
        return Err(RuntimeError::invalid(
            "user",
            &user.uid.to_string(),
            "not mapped by the pod's user namespace",
        ));
    }
    if let Some(gid) = std::iter::once(&user.gid)
        .chain(&user.additional_gids)
        .find(|g| maps.gids.to_host(**g).is_none())
    {
        return Err(RuntimeError::invalid(
            "group",
            &gid.to_string(),
            "not mapped by the pod's user namespace",
        ));
    }
    Ok(())
}

/// An OCI `LinuxIDMapping` list of one range.
pub(crate) fn id_mapping_json(range: &crust_util::userns::IdRange) -> Value {
    json!([{
        "containerID": range.container_id,
        "hostID": range.host_id,
        "size": range.length,
    }])
}

fn namespaces(
    security: Option<&cri::LinuxContainerSecurityContext>,
    sandbox: &SandboxNamespaces,
) -> Result<Vec<Value>> {
    let pause = sandbox.pause_pid;
    let joined = |kind: &str, path: String| json!({"type": kind, "path": path});
    let mut list = Vec::new();
    // Never ignored: a container that believes it is unprivileged in a user namespace
    // must not run as the host's root, and one of a pod with a user namespace joins it.
    let requested = security
        .and_then(|s| s.namespace_options.as_ref())
        .and_then(|n| n.userns_options.as_ref())
        .map_or(cri::NamespaceMode::Node as i32, |u| u.mode);
    match (cri::NamespaceMode::try_from(requested), &sandbox.userns) {
        (Ok(cri::NamespaceMode::Pod), Some(_)) => {
            list.push(joined("user", SandboxNamespaces::proc_ns(pause, "user")));
        }
        (Ok(cri::NamespaceMode::Node), None) => {}
        (Ok(cri::NamespaceMode::Pod), None) => {
            return Err(RuntimeError::invalid(
                "user namespace mode",
                "POD",
                "the pod has no user namespace (it was run with the node's)",
            ));
        }
        (Ok(cri::NamespaceMode::Node), Some(_)) => {
            return Err(RuntimeError::invalid(
                "user namespace mode",
                "NODE",
                "the pod has a user namespace, which all its containers share",
            ));
        }
        _ => {
            return Err(RuntimeError::invalid(
                "user namespace mode",
                &requested.to_string(),
                "a container's user namespace is its pod's (POD) or the node's (NODE)",
            ));
        }
    }
    let pid_mode = security
        .and_then(|s| s.namespace_options.as_ref())
        .map_or(cri::NamespaceMode::Pod as i32, |n| n.pid);
    match cri::NamespaceMode::try_from(pid_mode) {
        Ok(cri::NamespaceMode::Pod) if sandbox.host_pid => {}
        // The pod shares no PID namespace (it was run with CONTAINER and has no
        // pause): the container's is its own, as it would be alone with the pause
        // elsewhere.
        Ok(cri::NamespaceMode::Pod) if pause == 0 => list.push(json!({"type": "pid"})),
        Ok(cri::NamespaceMode::Pod) => {
            list.push(joined("pid", SandboxNamespaces::proc_ns(pause, "pid")));
        }
        Ok(cri::NamespaceMode::Container) => list.push(json!({"type": "pid"})),
        Ok(cri::NamespaceMode::Node) => {}
        Ok(cri::NamespaceMode::Target) => {
            let target = sandbox.target_pid.ok_or_else(|| {
                let target_id = security
                    .and_then(|s| s.namespace_options.as_ref())
                    .map_or("", |n| n.target_id.as_str());
                RuntimeError::invalid(
                    "pid namespace target",
                    target_id,
                    "the target container is not running",
                )
            })?;
            list.push(joined("pid", SandboxNamespaces::proc_ns(target, "pid")));
        }
        Err(_) => {
            return Err(RuntimeError::invalid(
                "pid namespace mode",
                &pid_mode.to_string(),
                "unknown",
            ));
        }
    }
    let pinned_or_pause = |pin: &Option<PathBuf>, kind: &str| -> Result<String> {
        match pin {
            Some(path) => Ok(path_str("namespace path", path)?.to_owned()),
            None => Ok(SandboxNamespaces::proc_ns(pause, kind)),
        }
    };
    if !sandbox.host_ipc {
        list.push(joined("ipc", pinned_or_pause(&sandbox.ipc, "ipc")?));
    }
    if !sandbox.host_network {
        list.push(joined("uts", pinned_or_pause(&sandbox.uts, "uts")?));
    }
    list.push(json!({"type": "mount"}));
    if !sandbox.host_network {
        let path = match &sandbox.netns {
            Some(path) => path_str("network namespace path", path)?.to_owned(),
            None => SandboxNamespaces::proc_ns(pause, "net"),
        };
        if !path.starts_with('/') {
            return Err(RuntimeError::invalid(
                "network namespace path",
                &path,
                "not an absolute path",
            ));
        }
        list.push(joined("network", path));
    }
    Ok(list)
}

/// `path` absolute, without `..`, with `.` and repeated or trailing slashes removed.
/// Refuses working directories that are not absolute or lie in /proc. A cwd of
/// `/proc/self/fd/N` (CVE-2024-21626, "Leaky Vessels") makes an unpatched runc start
/// the process in a directory of the host it still holds open; nothing legitimate
/// works in /proc, so crust refuses it whatever the runtime, as later runc does.
fn check_working_dir(cwd: &str) -> Result<()> {
    if !cwd.starts_with('/') {
        return Err(RuntimeError::invalid(
            "working directory",
            cwd,
            "not an absolute path",
        ));
    }
    // Lexically, `..` climbing as the kernel would inside the container's root.
    let mut parts: Vec<&str> = Vec::new();
    for part in cwd.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            name => parts.push(name),
        }
    }
    if parts.first() == Some(&"proc") {
        return Err(RuntimeError::invalid(
            "working directory",
            cwd,
            "lies in /proc (refused: CVE-2024-21626)",
        ));
    }
    Ok(())
}

fn clean_container_path(path: &str) -> Result<String> {
    let as_path = Path::new(path);
    if !as_path.is_absolute() {
        return Err(RuntimeError::invalid(
            "container path",
            path,
            "not an absolute path",
        ));
    }
    let mut clean = String::new();
    for component in as_path.components() {
        match component {
            Component::Normal(name) => {
                clean.push('/');
                clean.push_str(&name.to_string_lossy());
            }
            Component::ParentDir => {
                return Err(RuntimeError::invalid(
                    "container path",
                    path,
                    "contains '..'",
                ));
            }
            _ => {}
        }
    }
    if clean.is_empty() {
        clean.push('/');
    }
    Ok(clean)
}

fn depth(path: &str) -> usize {
    path.split('/').filter(|c| !c.is_empty()).count()
}

struct Mounts {
    mounts: Vec<Value>,
    rootfs_propagation: Option<&'static str>,
    bind_sources: Vec<PathBuf>,
}

/// A bind mount the CRI way (pod files and CRI mounts).
struct Bind {
    destination: String,
    source: String,
    readonly: bool,
    propagation: i32,
    recursive_read_only: bool,
}

fn build_mounts(
    input: &ContainerSpecInput,
    privileged: bool,
    readonly_rootfs: bool,
) -> Result<Mounts> {
    let id = input.id;
    let mut binds: Vec<Bind> = Vec::new();
    let mut bind_sources = Vec::new();
    for mount in &input.config.mounts {
        let destination = clean_container_path(&mount.container_path)?;
        if mount.host_path.is_empty() || !mount.host_path.starts_with('/') {
            return Err(RuntimeError::invalid(
                "mount host path",
                &mount.host_path,
                format!("not an absolute path (for {destination})"),
            ));
        }
        if mount.recursive_read_only {
            if !mount.readonly {
                return Err(RuntimeError::invalid(
                    "mount",
                    &mount.host_path,
                    "recursive read-only needs a read-only mount",
                ));
            }
            if mount.propagation != cri::MountPropagation::PropagationPrivate as i32 {
                return Err(RuntimeError::invalid(
                    "mount",
                    &mount.host_path,
                    "recursive read-only needs private propagation",
                ));
            }
        }
        bind_sources.push(PathBuf::from(&mount.host_path));
        binds.push(Bind {
            destination,
            source: mount.host_path.clone(),
            readonly: mount.readonly,
            propagation: mount.propagation,
            recursive_read_only: mount.recursive_read_only,
        });
    }
    let covered = |binds: &[Bind], path: &str| binds.iter().any(|b| b.destination == path);
    let files = &input.pod_files;
    let mut pod_binds = Vec::new();
    for (destination, source) in [
        ("/etc/hostname", &files.hostname),
        ("/etc/hosts", &files.hosts),
        ("/etc/resolv.conf", &files.resolv_conf),
    ] {
        let Some(source) = source else { continue };
        if covered(&binds, destination) {
            continue;
        }
        pod_binds.push(Bind {
            destination: destination.to_owned(),
            source: path_str("pod file", source)?.to_owned(),
            readonly: readonly_rootfs,
            propagation: cri::MountPropagation::PropagationPrivate as i32,
            recursive_read_only: false,
        });
    }
    let shm = if input.sandbox.host_ipc {
        Some("/dev/shm".to_owned())
    } else {
        files
            .shm
            .as_deref()
            .map(|p| path_str("pod shm", p).map(str::to_owned))
            .transpose()?
    };
    if let Some(source) = shm.filter(|_| !covered(&binds, "/dev/shm")) {
        pod_binds.push(Bind {
            destination: "/dev/shm".to_owned(),
            source,
            readonly: false,
            propagation: cri::MountPropagation::PropagationPrivate as i32,
            recursive_read_only: false,
        });
    }
    // The pod's files first, then the CRI mounts, parents before children (stable).
    pod_binds.extend(binds);
    let mut binds = pod_binds;
    binds.sort_by_key(|b| depth(&b.destination));

    let mut defaults: Vec<Value> = default_mounts(id, privileged)?
        .iter()
        .map(serde_json::to_value)
        .collect::<std::result::Result<_, _>>()
        .map_err(|err| spec_error(id, err))?;
    let cgroup_mode = if privileged { "rw" } else { "ro" };
    defaults.push(json!({
        "destination": "/sys/fs/cgroup",
        "type": "cgroup",
        "source": "cgroup",
        "options": ["nosuid", "noexec", "nodev", "relatime", cgroup_mode],
    }));
    let dev_mounted = covered(&binds, "/dev");
    let mut mounts: Vec<Value> = defaults
        .into_iter()
        .filter(|m| {
            let destination = m["destination"].as_str().unwrap_or_default();
            let under_dev = dev_mounted && destination.starts_with("/dev/");
            !(covered(&binds, destination) || under_dev)
        })
        .collect();

    let mut rootfs_propagation = None;
    for bind in binds {
        let mut options = vec!["rbind"];
        match cri::MountPropagation::try_from(bind.propagation) {
            Ok(cri::MountPropagation::PropagationBidirectional) => {
                options.push("rshared");
                rootfs_propagation = Some("rshared");
            }
            Ok(cri::MountPropagation::PropagationHostToContainer) => {
                options.push("rslave");
                if rootfs_propagation != Some("rshared") {
                    rootfs_propagation = Some("rslave");
                }
            }
            Ok(cri::MountPropagation::PropagationPrivate) => options.push("rprivate"),
            Err(_) => {
                tracing::warn!(container = id, source = %bind.source, "unknown mount propagation, rprivate used");
                options.push("rprivate");
            }
        }
        options.push(if bind.readonly { "ro" } else { "rw" });
        if bind.recursive_read_only {
            options.push("rro");
        }
        mounts.push(json!({
            "destination": bind.destination,
            "type": "bind",
            "source": bind.source,
            "options": options,
        }));
    }
    Ok(Mounts {
        mounts,
        rootfs_propagation,
        bind_sources,
    })
}

/// The char devices every container may use (containerd's `WithDefaultUnixDevices`):
/// (major, minor; None = any).
const DEFAULT_ALLOWED_DEVICES: [(i64, Option<i64>); 8] = [
    (1, Some(3)), // null
    (1, Some(5)), // zero
    (1, Some(7)), // full
    (1, Some(8)), // random
    (1, Some(9)), // urandom
    (5, Some(0)), // tty
    (5, Some(2)), // ptmx
    (136, None),  // pts
];

/// `linux.devices` and the device cgroup rules.
fn build_devices(
    config: &cri::ContainerConfig,
    privileged: bool,
) -> Result<(Vec<Value>, Vec<oci_spec::runtime::LinuxDeviceCgroup>)> {
    let mut devices: Vec<HostDevice> = if privileged {
        host_devices()
    } else {
        Vec::new()
    };
    let mut rules: Vec<Value> = if privileged {
        vec![json!({"allow": true, "access": "rwm"})]
    } else {
        let mut rules = vec![json!({"allow": false, "access": "rwm"})];
        for (major, minor) in DEFAULT_ALLOWED_DEVICES {
            let mut rule = json!({"allow": true, "type": "c", "major": major, "access": "rwm"});
            if let Some(minor) = minor {
                rule["minor"] = minor.into();
            }
            rules.push(rule);
        }
        rules
    };
    for device in &config.devices {
        let container_path = clean_container_path(&device.container_path)?;
        let permissions = if device.permissions.is_empty() {
            "rwm".to_owned()
        } else {
            device.permissions.clone()
        };
        if !permissions.chars().all(|c| "rwm".contains(c)) {
            return Err(RuntimeError::invalid(
                "device permissions",
                &permissions,
                "only r, w and m are allowed",
            ));
        }
        for found in devices_at(Path::new(&device.host_path), &container_path)? {
            if !privileged {
                rules.push(json!({
                    "allow": true,
                    "type": found.kind,
                    "major": found.major,
                    "minor": found.minor,
                    "access": permissions,
                }));
            }
            devices.retain(|d| d.path != found.path);
            devices.push(found);
        }
    }
    let devices = devices
        .into_iter()
        .map(|d| {
            json!({
                "path": d.path,
                "type": d.kind,
                "major": d.major,
                "minor": d.minor,
                "fileMode": d.file_mode,
                "uid": d.uid,
                "gid": d.gid,
            })
        })
        .collect();
    let rules = serde_json::from_value(Value::Array(rules))
        .map_err(|err| RuntimeError::invalid("device rule", "", err.to_string()))?;
    Ok((devices, rules))
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct HostDevice {
    /// Where it appears in the container.
    path: String,
    kind: &'static str,
    major: u64,
    minor: u64,
    file_mode: u32,
    uid: u32,
    gid: u32,
}

fn device_from(metadata: &std::fs::Metadata, path: String) -> Option<HostDevice> {
    let file_type = metadata.file_type();
    let kind = if file_type.is_char_device() {
        "c"
    } else if file_type.is_block_device() {
        "b"
    } else {
        return None;
    };
    let rdev = metadata.rdev();
    Some(HostDevice {
        path,
        kind,
        major: nix::sys::stat::major(rdev),
        minor: nix::sys::stat::minor(rdev),
        file_mode: metadata.mode() & 0o7777,
        uid: metadata.uid(),
        gid: metadata.gid(),
    })
}

/// The CRI device at `host_path` (symlinks followed, as containerd resolves them), or
/// every device below it when it is a directory, mapped under `container_path`.
fn devices_at(host_path: &Path, container_path: &str) -> Result<Vec<HostDevice>> {
    let shown = host_path.to_string_lossy();
    let metadata = std::fs::metadata(host_path)
        .map_err(|err| RuntimeError::invalid("device", &shown, err.to_string()))?;
    if metadata.is_dir() {
        let mut found = Vec::new();
        walk_devices(host_path, &mut |path, metadata| {
            let relative = path.strip_prefix(host_path).unwrap_or(path);
            let inside = format!(
                "{}/{}",
                container_path.trim_end_matches('/'),
                relative.to_string_lossy()
            );
            found.extend(device_from(metadata, inside));
        });
        return Ok(found);
    }
    device_from(&metadata, container_path.to_owned())
        .map(|d| vec![d])
        .ok_or_else(|| RuntimeError::invalid("device", &shown, "not a device node"))
}

/// Every device node under `dir` (not following symlinks), except in the directories a
/// container gets its own of (containerd's `HostDevices` skips the same).
fn walk_devices(dir: &Path, found: &mut dyn FnMut(&Path, &std::fs::Metadata)) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(metadata) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let name = entry.file_name();
        if metadata.is_dir() {
            if !matches!(
                name.to_str(),
                Some("pts" | "shm" | "fd" | "mqueue" | ".lxc" | ".lxd-mounts" | ".udev")
            ) {
                walk_devices(&path, found);
            }
        } else if name != "console" {
            found(&path, &metadata);
        }
    }
}

/// The host's /dev, for privileged containers.
fn host_devices() -> Vec<HostDevice> {
    let mut devices = Vec::new();
    walk_devices(Path::new("/dev"), &mut |path, metadata| {
        devices.extend(device_from(metadata, path.to_string_lossy().into_owned()));
    });
    devices
}

fn annotations(input: &ContainerSpecInput) -> BTreeMap<&'static str, String> {
    let mut annotations = BTreeMap::new();
    annotations.insert(ANNOTATION_CONTAINER_TYPE, "container".to_owned());
    let mut put = |key: &'static str, value: &str| {
        if !value.is_empty() {
            annotations.insert(key, value.to_owned());
        }
    };
    put(ANNOTATION_SANDBOX_ID, input.sandbox_id);
    if let Some(metadata) = &input.config.metadata {
        put(ANNOTATION_CONTAINER_NAME, &metadata.name);
    }
    if let Some(metadata) = &input.sandbox_config.metadata {
        put(ANNOTATION_SANDBOX_NAME, &metadata.name);
        put(ANNOTATION_SANDBOX_NAMESPACE, &metadata.namespace);
        put(ANNOTATION_SANDBOX_UID, &metadata.uid);
    }
    if let Some(image) = &input.config.image {
        let name = if image.user_specified_image.is_empty() {
            &image.image
        } else {
            &image.user_specified_image
        };
        put(ANNOTATION_IMAGE_NAME, name);
    }
    annotations
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::spec::capabilities_from_mask;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nalice:x:1000:\nwheel:x:10:alice\n";

    struct Fixture {
        config: cri::ContainerConfig,
        sandbox_config: cri::PodSandboxConfig,
        image: Value,
        rootfs: tempfile::TempDir,
        sandbox: SandboxNamespaces,
        pod_files: PodFilePaths,
        host: HostFeatures,
    }

    impl Fixture {
        fn new() -> Fixture {
            let rootfs = tempfile::tempdir().unwrap();
            std::fs::create_dir(rootfs.path().join("etc")).unwrap();
            std::fs::write(rootfs.path().join("etc/passwd"), PASSWD).unwrap();
            std::fs::write(rootfs.path().join("etc/group"), GROUP).unwrap();
            Fixture {
                config: cri::ContainerConfig {
                    metadata: Some(cri::ContainerMetadata {
                        name: "web".into(),
                        attempt: 0,
                    }),
                    image: Some(cri::ImageSpec {
                        image: "sha256:abcd".into(),
                        user_specified_image: "busybox:1.36".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                sandbox_config: cri::PodSandboxConfig {
                    metadata: Some(cri::PodSandboxMetadata {
                        name: "pod".into(),
                        uid: "uid-1".into(),
                        namespace: "default".into(),
                        attempt: 0,
                    }),
                    hostname: "pod-host".into(),
                    ..Default::default()
                },
                image: json!({"config": {
                    "Entrypoint": ["/entry"],
                    "Cmd": ["--flag"],
                    "Env": ["PATH=/img/bin", "A=image", "B=image"],
                    "WorkingDir": "/work",
                    "StopSignal": "SIGQUIT",
                    "Volumes": {"/data": {}, "/cache/": {}},
                }}),
                rootfs,
                sandbox: SandboxNamespaces {
                    pause_pid: 42,
                    netns: Some("/run/netns/cni-1".into()),
                    ..Default::default()
                },
                pod_files: PodFilePaths {
                    hostname: Some("/run/crust/sb/hostname".into()),
                    hosts: Some("/run/crust/sb/hosts".into()),
                    resolv_conf: Some("/run/crust/sb/resolv.conf".into()),
                    shm: Some("/run/crust/sb/shm".into()),
                },
                host: HostFeatures {
                    // Everything but CAP_SYS_RESOURCE (bit 24), as on this CI host.
                    capabilities: capabilities_from_mask(0x1ff_feff_ffff),
                    own_oom_score_adj: Some(-500),
                    apparmor_enabled: false,
                    apparmor_default_profile: None,
                    selinux_enabled: false,
                    cgroups: CgroupSupport {
                        hugetlb: true,
                        swap: true,
                    },
                    seccomp_target: SeccompTarget {
                        scmp_arch: "SCMP_ARCH_X86_64",
                        go_arch: "amd64",
                        kernel: (6, 1),
                    },
                    hostname: "node-1".into(),
                },
            }
        }

        fn security(&mut self) -> &mut cri::LinuxContainerSecurityContext {
            self.config
                .linux
                .get_or_insert_with(Default::default)
                .security_context
                .get_or_insert_with(Default::default)
        }

        fn resources(&mut self) -> &mut cri::LinuxContainerResources {
            self.config
                .linux
                .get_or_insert_with(Default::default)
                .resources
                .get_or_insert_with(Default::default)
        }

        fn privileged_sandbox(&mut self) {
            self.sandbox_config.linux = Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    privileged: true,
                    ..Default::default()
                }),
                ..Default::default()
            });
        }

        fn build(&self) -> Result<BuiltSpec> {
            build_container_spec(&ContainerSpecInput {
                id: "c1",
                sandbox_id: "sb1",
                config: &self.config,
                sandbox_config: &self.sandbox_config,
                image_config: &self.image,
                rootfs: self.rootfs.path(),
                sandbox: self.sandbox.clone(),
                pod_files: self.pod_files.clone(),
                cgroups_path: "/kubepods/pod1/c1".into(),
                host: &self.host,
            })
        }

        fn json(&self) -> Value {
            serde_json::to_value(self.build().unwrap().spec).unwrap()
        }

        fn error(&self) -> RuntimeError {
            let err = self.build().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
            err
        }
    }

    fn strings(value: &Value) -> Vec<String> {
        value
            .as_array()
            .unwrap_or(&Vec::new())
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    }

    fn sorted(value: &Value) -> Vec<String> {
        let mut v = strings(value);
        v.sort();
        v
    }

    fn mount<'v>(spec: &'v Value, destination: &str) -> Option<&'v Value> {
        spec["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == destination)
    }

    fn namespaces(spec: &Value) -> Vec<(String, Option<String>)> {
        spec["linux"]["namespaces"]
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

    fn syscall_allowed(spec: &Value, name: &str) -> bool {
        spec["linux"]["seccomp"]["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .any(|rule| {
                rule["action"] == "SCMP_ACT_ALLOW"
                    && rule.get("args").is_none()
                    && rule["names"].as_array().unwrap().iter().any(|n| n == name)
            })
    }

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    /// (image Entrypoint, image Cmd, CRI command, CRI args, expected process.args)
    type ArgsCase = (
        Value,
        Value,
        &'static [&'static str],
        &'static [&'static str],
        &'static [&'static str],
    );

    #[test]
    fn command_and_args_merge_like_containerd() {
        // (image Entrypoint, image Cmd, CRI command, CRI args) -> process.args
        let cases: [ArgsCase; 8] = [
            (
                json!(["/entry"]),
                json!(["--flag"]),
                &[],
                &[],
                &["/entry", "--flag"],
            ),
            (
                json!(["/entry"]),
                json!(["--flag"]),
                &["/bin/sh"],
                &[],
                &["/bin/sh"],
            ),
            (
                json!(["/entry"]),
                json!(["--flag"]),
                &[],
                &["x"],
                &["/entry", "x"],
            ),
            (
                json!(["/entry"]),
                json!(["--flag"]),
                &["/bin/sh"],
                &["-c", "x"],
                &["/bin/sh", "-c", "x"],
            ),
            (json!(null), json!(["/cmd", "a"]), &[], &[], &["/cmd", "a"]),
            (json!([""]), json!(["/cmd"]), &[], &[], &["/cmd"]),
            (json!(["/entry"]), json!(null), &[], &[], &["/entry"]),
            (
                json!(null),
                json!(null),
                &["/bin/true"],
                &[],
                &["/bin/true"],
            ),
        ];
        for (entrypoint, cmd, command, args, want) in cases {
            let mut f = Fixture::new();
            f.image["config"]["Entrypoint"] = entrypoint.clone();
            f.image["config"]["Cmd"] = cmd.clone();
            f.config.command = v(command);
            f.config.args = v(args);
            assert_eq!(
                strings(&f.json()["process"]["args"]),
                v(want),
                "{entrypoint} {cmd} {command:?} {args:?}"
            );
        }
        let mut f = Fixture::new();
        f.image = json!({"config": {"Cmd": null, "Entrypoint": [""]}});
        assert!(f.error().to_string().contains("no command specified"));
        f.image = json!({});
        assert!(f.error().to_string().contains("no command specified"));
    }

    #[test]
    fn env_layers_defaults_hostname_image_and_cri() {
        let mut f = Fixture::new();
        f.config.envs = vec![
            cri::KeyValue {
                key: "A".into(),
                value: "cri".into(),
            },
            cri::KeyValue {
                key: "C".into(),
                value: "x=y".into(),
            },
        ];
        assert_eq!(
            strings(&f.json()["process"]["env"]),
            v(&[
                "PATH=/img/bin",
                "HOSTNAME=pod-host",
                "A=cri",
                "B=image",
                "C=x=y"
            ])
        );
        f.image["config"]["Env"] = json!(null);
        f.config.envs.clear();
        f.config.tty = true;
        f.sandbox_config.hostname.clear();
        f.sandbox.host_network = true;
        let spec = f.json();
        assert_eq!(
            strings(&spec["process"]["env"]),
            v(&[DEFAULT_PATH_ENV, "TERM=xterm", "HOSTNAME=node-1"])
        );
        assert_eq!(spec["process"]["terminal"], true);
    }

    #[test]
    fn working_dir_cri_then_image_then_root() {
        let mut f = Fixture::new();
        assert_eq!(f.json()["process"]["cwd"], "/work");
        f.config.working_dir = "/srv".into();
        assert_eq!(f.json()["process"]["cwd"], "/srv");
        f.config.working_dir.clear();
        f.image["config"]["WorkingDir"] = "".into();
        assert_eq!(f.json()["process"]["cwd"], "/");
        for evil in [
            "/proc/self/fd/7",
            "/proc",
            "/tmp/../proc/1/cwd",
            "//proc/./self",
        ] {
            f.config.working_dir = evil.into();
            let err = f.error();
            assert!(err.to_string().contains("CVE-2024-21626"), "{evil}: {err}");
        }
        f.config.working_dir = "/procfs".into();
        assert_eq!(f.json()["process"]["cwd"], "/procfs");
        f.config.working_dir = "relative".into();
        assert!(f.error().to_string().contains("not an absolute path"));
    }

    #[test]
    fn process_defaults() {
        let f = Fixture::new();
        let built = f.build().unwrap();
        let spec = serde_json::to_value(&built.spec).unwrap();
        let process = &spec["process"];
        assert_eq!(spec["ociVersion"], OCI_VERSION);
        assert_eq!(process["terminal"], false);
        assert!(process.get("noNewPrivileges").is_none());
        // Nothing asked: 0 (above our own -500, so kept).
        assert_eq!(process["oomScoreAdj"], 0);
        assert!(process.get("rlimits").is_none());
        assert!(process.get("apparmorProfile").is_none());
        assert!(process.get("selinuxLabel").is_none());
        assert!(process.get("consoleSize").is_none());
        assert_eq!(
            process["user"],
            json!({"uid": 0, "gid": 0, "additionalGids": [0]})
        );
        assert_eq!(built.user.username.as_deref(), Some("root"));
        assert_eq!(
            sorted(&process["capabilities"]["bounding"]),
            sorted(&json!([
                "CAP_CHOWN",
                "CAP_DAC_OVERRIDE",
                "CAP_FSETID",
                "CAP_FOWNER",
                "CAP_SETGID",
                "CAP_SETUID",
                "CAP_SETPCAP",
                "CAP_NET_BIND_SERVICE",
                "CAP_KILL"
            ]))
        );
        for set in ["effective", "permitted"] {
            assert_eq!(
                sorted(&process["capabilities"][set]),
                sorted(&process["capabilities"]["bounding"])
            );
        }
        assert!(process["capabilities"].get("inheritable").is_none());
        assert!(process["capabilities"].get("ambient").is_none());
        assert!(spec.get("hostname").is_none());
        assert!(spec.get("hooks").is_none());
        assert_eq!(
            spec["root"],
            json!({"path": f.rootfs.path().to_str().unwrap(), "readonly": false})
        );
        let linux = &spec["linux"];
        assert_eq!(linux["cgroupsPath"], "/kubepods/pod1/c1");
        assert_eq!(linux["maskedPaths"], json!(MASKED_PATHS));
        assert_eq!(linux["readonlyPaths"], json!(READONLY_PATHS));
        assert!(linux.get("seccomp").is_none());
        assert!(linux.get("sysctl").is_none());
        assert!(linux.get("devices").is_none());
        assert!(linux.get("rootfsPropagation").is_none());
        assert!(linux.get("uidMappings").is_none());
        assert_eq!(
            spec["annotations"],
            json!({
                "io.kubernetes.cri.container-type": "container",
                "io.kubernetes.cri.sandbox-id": "sb1",
                "io.kubernetes.cri.container-name": "web",
                "io.kubernetes.cri.sandbox-name": "pod",
                "io.kubernetes.cri.sandbox-namespace": "default",
                "io.kubernetes.cri.sandbox-uid": "uid-1",
                "io.kubernetes.cri.image-name": "busybox:1.36",
            })
        );
        assert_eq!(built.stop_signal.as_deref(), Some("SIGQUIT"));
        assert_eq!(built.image_volumes, v(&["/cache", "/data"]));
        assert!(built.bind_sources.is_empty());
    }

    #[test]
    fn users_from_image_and_cri() {
        let mut f = Fixture::new();
        f.image["config"]["User"] = "alice".into();
        let built = f.build().unwrap();
        assert_eq!(
            serde_json::to_value(&built.spec).unwrap()["process"]["user"],
            json!({"uid": 1000, "gid": 1000, "additionalGids": [1000, 10]})
        );
        assert_eq!(built.user.username.as_deref(), Some("alice"));
        f.image["config"]["User"] = "alice:wheel".into();
        assert_eq!(
            f.json()["process"]["user"],
            json!({"uid": 1000, "gid": 10, "additionalGids": [10]})
        );
        f.security().run_as_user = Some(cri::Int64Value { value: 2000 });
        f.security().run_as_group = Some(cri::Int64Value { value: 3000 });
        f.security().supplemental_groups = vec![4000];
        assert_eq!(
            f.json()["process"]["user"],
            json!({"uid": 2000, "gid": 3000, "additionalGids": [3000, 4000]})
        );
        f.security().run_as_username = "nobody".into();
        assert!(f.error().to_string().contains("no such user"));
    }

    #[test]
    fn namespaces_per_pid_mode() {
        let pod = [
            ("pid".to_owned(), Some("/proc/42/ns/pid".to_owned())),
            ("ipc".to_owned(), Some("/proc/42/ns/ipc".to_owned())),
            ("uts".to_owned(), Some("/proc/42/ns/uts".to_owned())),
            ("mount".to_owned(), None),
            ("network".to_owned(), Some("/run/netns/cni-1".to_owned())),
        ];
        let mut f = Fixture::new();
        assert_eq!(namespaces(&f.json()), pod);

        let mode = |f: &mut Fixture, mode: cri::NamespaceMode| {
            f.security()
                .namespace_options
                .get_or_insert_with(Default::default)
                .pid = mode as i32;
        };
        mode(&mut f, cri::NamespaceMode::Container);
        let mut want = pod.to_vec();
        want[0] = ("pid".into(), None);
        assert_eq!(namespaces(&f.json()), want);

        mode(&mut f, cri::NamespaceMode::Node);
        assert_eq!(namespaces(&f.json()), pod[1..].to_vec());

        mode(&mut f, cri::NamespaceMode::Target);
        f.security().namespace_options.as_mut().unwrap().target_id = "other".into();
        assert!(f.error().to_string().contains("\"other\""));
        f.sandbox.target_pid = Some(77);
        want[0] = ("pid".into(), Some("/proc/77/ns/pid".into()));
        assert_eq!(namespaces(&f.json()), want);

        // Host network, IPC and PID pods: those namespaces are the host's.
        let mut f = Fixture::new();
        f.sandbox.host_network = true;
        f.sandbox.host_ipc = true;
        f.sandbox.host_pid = true;
        f.sandbox.netns = None;
        assert_eq!(namespaces(&f.json()), [("mount".to_owned(), None)]);
        // Without a pinned netns the pause's is joined.
        let mut f = Fixture::new();
        f.sandbox.netns = None;
        assert_eq!(
            namespaces(&f.json())[4],
            ("network".to_owned(), Some("/proc/42/ns/net".to_owned()))
        );
    }

    #[test]
    fn default_and_pod_mounts() {
        let mut f = Fixture::new();
        let spec = f.json();
        let destinations: Vec<&str> = spec["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        assert_eq!(
            destinations,
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/mqueue",
                "/sys",
                "/sys/fs/cgroup",
                "/etc/hostname",
                "/etc/hosts",
                "/etc/resolv.conf",
                "/dev/shm",
            ]
        );
        assert_eq!(mount(&spec, "/sys").unwrap()["options"][3], "ro");
        assert_eq!(
            mount(&spec, "/sys/fs/cgroup").unwrap(),
            &json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                    "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]})
        );
        assert_eq!(
            mount(&spec, "/etc/resolv.conf").unwrap(),
            &json!({"destination": "/etc/resolv.conf", "type": "bind",
                    "source": "/run/crust/sb/resolv.conf", "options": ["rbind", "rprivate", "rw"]})
        );
        assert_eq!(
            mount(&spec, "/dev/shm").unwrap(),
            &json!({"destination": "/dev/shm", "type": "bind",
                    "source": "/run/crust/sb/shm", "options": ["rbind", "rprivate", "rw"]})
        );

        // A read-only rootfs makes the pod's files read-only, not /dev/shm.
        f.security().readonly_rootfs = true;
        let spec = f.json();
        assert_eq!(spec["root"]["readonly"], true);
        for file in ["/etc/hostname", "/etc/hosts", "/etc/resolv.conf"] {
            assert_eq!(mount(&spec, file).unwrap()["options"][2], "ro", "{file}");
        }
        assert_eq!(mount(&spec, "/dev/shm").unwrap()["options"][2], "rw");

        // Host IPC: the host's /dev/shm. No pod shm: the default tmpfs stays.
        let mut f = Fixture::new();
        f.sandbox.host_ipc = true;
        assert_eq!(mount(&f.json(), "/dev/shm").unwrap()["source"], "/dev/shm");
        let mut f = Fixture::new();
        f.pod_files = PodFilePaths::default();
        let spec = f.json();
        assert_eq!(mount(&spec, "/dev/shm").unwrap()["type"], "tmpfs");
        assert!(mount(&spec, "/etc/hosts").is_none());
    }

    fn cri_mount(host: &str, container: &str) -> cri::Mount {
        cri::Mount {
            host_path: host.into(),
            container_path: container.into(),
            ..Default::default()
        }
    }

    #[test]
    fn cri_mounts_with_propagation_and_read_only() {
        let mut f = Fixture::new();
        f.config.mounts = vec![
            cri::Mount {
                readonly: true,
                recursive_read_only: true,
                ..cri_mount("/var/lib/kubelet/pods/p/volumes/a", "/data/a/b")
            },
            cri::Mount {
                propagation: cri::MountPropagation::PropagationHostToContainer as i32,
                ..cri_mount("/mnt/host", "/data/")
            },
            cri::Mount {
                propagation: cri::MountPropagation::PropagationBidirectional as i32,
                ..cri_mount("/mnt/shared", "/shared")
            },
            cri_mount("/var/lib/kubelet/pods/p/etc-hosts", "/etc/hosts"),
        ];
        let built = f.build().unwrap();
        let spec = serde_json::to_value(&built.spec).unwrap();
        let binds: Vec<(String, Value)> = spec["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["type"] == "bind")
            .map(|m| {
                (
                    m["destination"].as_str().unwrap().to_owned(),
                    m["options"].clone(),
                )
            })
            .collect();
        assert_eq!(
            binds,
            [
                ("/data".to_owned(), json!(["rbind", "rslave", "rw"])),
                ("/shared".to_owned(), json!(["rbind", "rshared", "rw"])),
                (
                    "/etc/hostname".to_owned(),
                    json!(["rbind", "rprivate", "rw"])
                ),
                (
                    "/etc/resolv.conf".to_owned(),
                    json!(["rbind", "rprivate", "rw"])
                ),
                ("/dev/shm".to_owned(), json!(["rbind", "rprivate", "rw"])),
                ("/etc/hosts".to_owned(), json!(["rbind", "rprivate", "rw"])),
                (
                    "/data/a/b".to_owned(),
                    json!(["rbind", "rprivate", "ro", "rro"])
                ),
            ]
        );
        assert_eq!(
            mount(&spec, "/etc/hosts").unwrap()["source"],
            "/var/lib/kubelet/pods/p/etc-hosts"
        );
        assert_eq!(spec["linux"]["rootfsPropagation"], "rshared");
        assert_eq!(
            built.bind_sources,
            [
                "/var/lib/kubelet/pods/p/volumes/a",
                "/mnt/host",
                "/mnt/shared",
                "/var/lib/kubelet/pods/p/etc-hosts",
            ]
            .map(PathBuf::from)
        );
        // /data is covered by a CRI mount; /cache is not.
        assert_eq!(built.image_volumes, v(&["/cache"]));

        f.config.mounts.truncate(2);
        f.config.mounts.remove(0);
        assert_eq!(f.json()["linux"]["rootfsPropagation"], "rslave");
    }

    #[test]
    fn a_dev_mount_replaces_everything_under_dev() {
        let mut f = Fixture::new();
        f.config.mounts = vec![cri_mount("/dev", "/dev")];
        let spec = f.json();
        for gone in ["/dev/pts", "/dev/mqueue"] {
            assert!(mount(&spec, gone).is_none(), "{gone}");
        }
        assert_eq!(mount(&spec, "/dev").unwrap()["type"], "bind");
        // The pod's shm still goes on top (containerd checks only the exact path).
        assert_eq!(
            mount(&spec, "/dev/shm").unwrap()["source"],
            "/run/crust/sb/shm"
        );
        assert_eq!(
            spec["mounts"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|m| m["destination"] == "/dev/shm")
                .count(),
            1
        );
    }

    #[test]
    fn bad_mounts_are_refused() {
        let cases = [
            (cri_mount("/x", "relative/path"), "not an absolute path"),
            (cri_mount("/x", "/a/../etc"), "contains '..'"),
            (cri_mount("", "/a"), "not an absolute path"),
            (cri_mount("x", "/a"), "not an absolute path"),
            (
                cri::Mount {
                    recursive_read_only: true,
                    ..cri_mount("/x", "/a")
                },
                "needs a read-only mount",
            ),
            (
                cri::Mount {
                    readonly: true,
                    recursive_read_only: true,
                    propagation: cri::MountPropagation::PropagationHostToContainer as i32,
                    ..cri_mount("/x", "/a")
                },
                "needs private propagation",
            ),
        ];
        for (mount, reason) in cases {
            let mut f = Fixture::new();
            f.config.mounts = vec![mount];
            let err = f.error();
            assert!(err.to_string().contains(reason), "{err} / {reason}");
        }
    }

    #[test]
    fn devices_and_their_cgroup_rules() {
        let mut f = Fixture::new();
        let spec = f.json();
        let rules = spec["linux"]["resources"]["devices"].as_array().unwrap();
        assert_eq!(rules[0], json!({"allow": false, "access": "rwm"}));
        assert!(rules.contains(
            &json!({"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"})
        ));
        assert!(
            rules.contains(&json!({"allow": true, "type": "c", "major": 136, "access": "rwm"}))
        );
        assert_eq!(rules.len(), 9);

        f.config.devices = vec![cri::Device {
            host_path: "/dev/null".into(),
            container_path: "/dev/mynull".into(),
            permissions: "rw".into(),
        }];
        let spec = f.json();
        let devices = spec["linux"]["devices"].as_array().unwrap();
        assert_eq!(devices.len(), 1);
        let device = &devices[0];
        assert_eq!(device["path"], "/dev/mynull");
        assert_eq!(device["type"], "c");
        assert_eq!(
            (device["major"].clone(), device["minor"].clone()),
            (json!(1), json!(3))
        );
        assert_eq!(device["fileMode"], 0o666);
        assert_eq!(
            spec["linux"]["resources"]["devices"]
                .as_array()
                .unwrap()
                .last()
                .unwrap(),
            &json!({"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rw"})
        );

        for (host_path, permissions, reason) in [
            ("/nonexistent/dev", "rwm", "No such file"),
            ("/etc/hostname", "rwm", "not a device node"),
            ("/dev/null", "rwx", "only r, w and m"),
        ] {
            f.config.devices[0].host_path = host_path.into();
            f.config.devices[0].permissions = permissions.into();
            let err = f.error();
            assert!(err.to_string().contains(reason), "{err}");
        }
    }

    #[test]
    fn resources_from_cri() {
        let all = CgroupSupport {
            hugetlb: true,
            swap: true,
        };
        let r = cri::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 256 << 20,
            cpuset_cpus: "0-1".into(),
            cpuset_mems: "0".into(),
            hugepage_limits: vec![cri::HugepageLimit {
                page_size: "2MB".into(),
                limit: 0,
            }],
            unified: [("memory.high".to_owned(), "200000000".to_owned())].into(),
            oom_score_adj: 1000,
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(linux_resources_with(&r, all)).unwrap(),
            json!({
                "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0-1", "mems": "0"},
                "memory": {"limit": 268435456, "swap": 268435456},
                "hugepageLimits": [{"pageSize": "2MB", "limit": 0}],
                "unified": {"memory.high": "200000000"},
            })
        );
        let swap = cri::LinuxContainerResources {
            memory_swap_limit_in_bytes: 512 << 20,
            ..r.clone()
        };
        assert_eq!(
            serde_json::to_value(linux_resources_with(&swap, all)).unwrap()["memory"],
            json!({"limit": 268435456, "swap": 536870912})
        );
        let none = CgroupSupport {
            hugetlb: false,
            swap: false,
        };
        let without = serde_json::to_value(linux_resources_with(&swap, none)).unwrap();
        assert_eq!(without["memory"], json!({"limit": 268435456}));
        assert!(without.get("hugepageLimits").is_none());
        assert_eq!(
            serde_json::to_value(linux_resources_with(&Default::default(), all)).unwrap(),
            json!({})
        );

        let mut f = Fixture::new();
        *f.resources() = r;
        let spec = f.json();
        assert_eq!(spec["process"]["oomScoreAdj"], 1000);
        assert_eq!(spec["linux"]["resources"]["cpu"]["shares"], 512);
        assert_eq!(spec["linux"]["resources"]["devices"][0]["allow"], false);
        f.resources().oom_score_adj = -998;
        assert_eq!(f.json()["process"]["oomScoreAdj"], -500);
    }

    fn caps_of(f: &mut Fixture, add: &[&str], drop: &[&str]) -> Result<Vec<String>> {
        f.security().capabilities = Some(cri::Capability {
            add_capabilities: v(add),
            drop_capabilities: v(drop),
            add_ambient_capabilities: vec![],
        });
        let spec = serde_json::to_value(f.build()?.spec).unwrap();
        Ok(sorted(&spec["process"]["capabilities"]["bounding"]))
    }

    #[test]
    fn capabilities_add_and_drop() {
        let mut f = Fixture::new();
        let host: Vec<String> = {
            let mut v: Vec<String> = f
                .host
                .capabilities
                .iter()
                .map(|c| super::super::seccomp::capability_name(*c))
                .collect();
            v.sort();
            v
        };
        let caps = caps_of(
            &mut f,
            &["NET_ADMIN", "CAP_SYS_TIME", "net_raw"],
            &["CHOWN", "KILL"],
        )
        .unwrap();
        assert!(caps.contains(&"CAP_NET_ADMIN".to_owned()));
        assert!(caps.contains(&"CAP_SYS_TIME".to_owned()));
        assert!(caps.contains(&"CAP_NET_RAW".to_owned()));
        assert!(!caps.contains(&"CAP_CHOWN".to_owned()));
        assert!(!caps.contains(&"CAP_KILL".to_owned()));
        assert_eq!(caps.len(), DEFAULT_CAPABILITIES.len() + 1);

        assert_eq!(caps_of(&mut f, &["ALL"], &[]).unwrap(), host);
        assert!(!host.contains(&"CAP_SYS_RESOURCE".to_owned()));
        let mut all_but_chown = host.clone();
        all_but_chown.retain(|c| c != "CAP_CHOWN");
        assert_eq!(
            caps_of(&mut f, &["all"], &["CHOWN"]).unwrap(),
            all_but_chown
        );
        assert_eq!(
            caps_of(&mut f, &["NET_BIND_SERVICE"], &["ALL"]).unwrap(),
            v(&["CAP_NET_BIND_SERVICE"])
        );
        assert_eq!(
            caps_of(&mut f, &["ALL"], &["ALL"]).unwrap(),
            Vec::<String>::new()
        );
        // Drop wins over add for the same capability.
        assert!(
            !caps_of(&mut f, &["CHOWN"], &["CHOWN"])
                .unwrap()
                .contains(&"CAP_CHOWN".to_owned())
        );
        let err = caps_of(&mut f, &["SUPERPOWER"], &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid capability \"SUPERPOWER\": unknown"
        );

        f.security().capabilities = Some(cri::Capability {
            add_capabilities: vec![],
            drop_capabilities: vec![],
            add_ambient_capabilities: v(&["NET_BIND_SERVICE", "NET_RAW"]),
        });
        let spec = f.json();
        let caps = &spec["process"]["capabilities"];
        assert_eq!(
            sorted(&caps["ambient"]),
            v(&["CAP_NET_BIND_SERVICE", "CAP_NET_RAW"])
        );
        assert_eq!(sorted(&caps["inheritable"]), sorted(&caps["ambient"]));
        assert!(strings(&caps["permitted"]).contains(&"CAP_NET_RAW".to_owned()));
    }

    #[test]
    fn privileged_lifts_everything() {
        let mut f = Fixture::new();
        f.security().privileged = true;
        assert!(f.error().to_string().contains("privileged sandbox"));
        f.privileged_sandbox();
        f.security().seccomp = Some(cri::SecurityProfile {
            profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
            localhost_ref: String::new(),
        });
        f.security().capabilities = Some(cri::Capability {
            drop_capabilities: v(&["ALL"]),
            ..Default::default()
        });
        let spec = f.json();
        let linux = &spec["linux"];
        assert!(linux.get("maskedPaths").is_none());
        assert!(linux.get("readonlyPaths").is_none());
        assert!(linux.get("seccomp").is_none());
        assert_eq!(
            linux["resources"]["devices"],
            json!([{"allow": true, "access": "rwm"}])
        );
        let devices = linux["devices"].as_array().unwrap();
        assert!(devices.iter().any(|d| d["path"] == "/dev/null"));
        assert!(
            !devices
                .iter()
                .any(|d| d["path"].as_str().unwrap().starts_with("/dev/pts/"))
        );
        assert_eq!(
            spec["process"]["capabilities"]["bounding"]
                .as_array()
                .unwrap()
                .len(),
            f.host.capabilities.len()
        );
        assert_eq!(mount(&spec, "/sys").unwrap()["options"][3], "rw");
        assert_eq!(mount(&spec, "/sys/fs/cgroup").unwrap()["options"][4], "rw");
    }

    #[test]
    fn masked_and_readonly_paths_from_cri() {
        let mut f = Fixture::new();
        f.security().masked_paths = v(&["/proc/kcore"]);
        f.security().readonly_paths = v(&["/proc/sys", "/proc/bus"]);
        let spec = f.json();
        assert_eq!(spec["linux"]["maskedPaths"], json!(["/proc/kcore"]));
        assert_eq!(
            spec["linux"]["readonlyPaths"],
            json!(["/proc/sys", "/proc/bus"])
        );
        f.security().no_new_privs = true;
        assert_eq!(f.json()["process"]["noNewPrivileges"], true);
    }

    fn seccomp(f: &mut Fixture, kind: cri::security_profile::ProfileType, reference: &str) {
        f.security().seccomp = Some(cri::SecurityProfile {
            profile_type: kind as i32,
            localhost_ref: reference.into(),
        });
    }

    #[test]
    #[allow(deprecated)] // seccomp_profile_path
    fn seccomp_profiles() {
        use cri::security_profile::ProfileType;
        let mut f = Fixture::new();
        seccomp(&mut f, ProfileType::RuntimeDefault, "");
        let spec = f.json();
        assert_eq!(spec["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        assert!(syscall_allowed(&spec, "read"));
        assert!(!syscall_allowed(&spec, "reboot"));
        // Capabilities granted to the container unlock their syscalls.
        f.security().capabilities = Some(cri::Capability {
            add_capabilities: v(&["SYS_BOOT"]),
            ..Default::default()
        });
        assert!(syscall_allowed(&f.json(), "reboot"));

        seccomp(&mut f, ProfileType::Unconfined, "");
        assert!(f.json()["linux"].get("seccomp").is_none());

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("profile.json");
        std::fs::write(
            &path,
            r#"{"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}"#,
        )
        .unwrap();
        seccomp(&mut f, ProfileType::Localhost, path.to_str().unwrap());
        let spec = f.json();
        assert_eq!(spec["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ALLOW");
        assert_eq!(
            spec["linux"]["seccomp"]["syscalls"][0]["names"],
            json!(["mkdir"])
        );

        let missing = dir.path().join("missing.json");
        seccomp(&mut f, ProfileType::Localhost, missing.to_str().unwrap());
        let err = f.error();
        assert!(err.to_string().contains(missing.to_str().unwrap()), "{err}");

        // The deprecated string form.
        let mut f = Fixture::new();
        f.security().seccomp_profile_path = "runtime/default".into();
        assert!(syscall_allowed(&f.json(), "read"));
        f.security().seccomp_profile_path = "unconfined".into();
        assert!(f.json()["linux"].get("seccomp").is_none());
    }

    #[test]
    #[allow(deprecated)] // apparmor_profile
    fn apparmor_profiles() {
        use cri::security_profile::ProfileType;
        let apparmor = |f: &mut Fixture, kind: ProfileType, name: &str| {
            f.security().apparmor = Some(cri::SecurityProfile {
                profile_type: kind as i32,
                localhost_ref: name.into(),
            });
        };
        let mut f = Fixture::new();
        apparmor(&mut f, ProfileType::RuntimeDefault, "");
        assert!(f.json()["process"].get("apparmorProfile").is_none());
        apparmor(&mut f, ProfileType::Localhost, "localhost/my-profile");
        assert_eq!(
            f.error().to_string(),
            "invalid apparmor profile \"my-profile\": apparmor is not enabled on this host"
        );

        f.host.apparmor_enabled = true;
        assert_eq!(f.json()["process"]["apparmorProfile"], "my-profile");
        // Asked for on an AppArmor host without crust's profile: refused, never dropped.
        apparmor(&mut f, ProfileType::RuntimeDefault, "");
        let err = f.build().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
        assert!(
            err.to_string()
                .contains("crust-default profile is not loaded"),
            "{err}"
        );
        // Not asked for: the default where there is one, else none.
        f.security().apparmor = None;
        assert!(f.json()["process"].get("apparmorProfile").is_none());
        apparmor(&mut f, ProfileType::RuntimeDefault, "");
        f.host.apparmor_default_profile = Some(DEFAULT_APPARMOR_PROFILE.into());
        assert_eq!(
            f.json()["process"]["apparmorProfile"],
            DEFAULT_APPARMOR_PROFILE
        );
        f.security().apparmor = None;
        assert_eq!(
            f.json()["process"]["apparmorProfile"],
            DEFAULT_APPARMOR_PROFILE
        );
        f.security().apparmor_profile = "unconfined".into();
        assert!(f.json()["process"].get("apparmorProfile").is_none());
        f.security().apparmor_profile = "localhost/other".into();
        assert_eq!(f.json()["process"]["apparmorProfile"], "other");
        f.security().apparmor_profile = "weird".into();
        f.error();
        f.security().apparmor_profile.clear();
        f.privileged_sandbox();
        f.security().privileged = true;
        assert!(f.json()["process"].get("apparmorProfile").is_none());
    }

    #[test]
    fn user_namespace_requests_follow_the_pods() {
        let mut f = Fixture::new();
        let userns = |f: &mut Fixture, mode: cri::NamespaceMode| {
            f.security()
                .namespace_options
                .get_or_insert_with(Default::default)
                .userns_options = Some(cri::UserNamespace {
                mode: mode as i32,
                ..Default::default()
            });
        };
        // A pod on the node's user namespace: NODE, nothing else.
        userns(&mut f, cri::NamespaceMode::Node);
        assert!(f.json()["linux"].get("uidMappings").is_none());
        for mode in [cri::NamespaceMode::Pod, cri::NamespaceMode::Target] {
            userns(&mut f, mode);
            f.error();
        }
        // A pod with its own: POD joins the pause's, with the mappings runc needs.
        let range = crust_util::userns::IdRange {
            container_id: 0,
            host_id: 100_000,
            length: 65536,
        };
        f.sandbox.userns = Some(crust_util::userns::IdMappings {
            uids: range,
            gids: range,
        });
        userns(&mut f, cri::NamespaceMode::Pod);
        let spec = f.json();
        assert_eq!(
            namespaces(&spec)[0],
            ("user".to_owned(), Some("/proc/42/ns/user".to_owned()))
        );
        let want = json!([{"containerID": 0, "hostID": 100_000, "size": 65536}]);
        assert_eq!(spec["linux"]["uidMappings"], want);
        assert_eq!(spec["linux"]["gidMappings"], want);
        userns(&mut f, cri::NamespaceMode::Node);
        f.error();
        // Users outside the mapping cannot be.
        userns(&mut f, cri::NamespaceMode::Pod);
        f.security().run_as_user = Some(cri::Int64Value { value: 70_000 });
        let err = f.error();
        assert!(err.to_string().contains("not mapped"), "{err}");
    }

    #[test]
    fn selinux_only_where_enabled() {
        let mut f = Fixture::new();
        f.security().selinux_options = Some(cri::SeLinuxOption {
            level: "s0:c1,c2".into(),
            ..Default::default()
        });
        assert!(f.json()["process"].get("selinuxLabel").is_none());
        f.host.selinux_enabled = true;
        assert_eq!(
            f.json()["process"]["selinuxLabel"],
            "system_u:system_r:container_t:s0:c1,c2"
        );
    }

    #[test]
    fn signals() {
        let cases = [
            ("SIGQUIT", Some(3)),
            ("QUIT", Some(3)),
            ("sigterm", Some(15)),
            ("SIGKILL", Some(9)),
            ("SIGUSR1", Some(10)),
            ("SIGWINCH", Some(28)),
            ("3", Some(3)),
            ("64", Some(64)),
            ("SIGRTMIN", Some(34)),
            ("SIGRTMIN+3", Some(37)),
            ("RTMAX-1", Some(63)),
            ("SIGRTMAX+1", None),
            ("0", None),
            ("65", None),
            ("-9", None),
            ("SIGNOPE", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_signal(text), want, "{text}");
        }
        let mut f = Fixture::new();
        f.image["config"]["StopSignal"] = "SIGBOGUS".into();
        assert_eq!(f.build().unwrap().stop_signal, None);
        f.image["config"]["StopSignal"] = json!(null);
        assert_eq!(f.build().unwrap().stop_signal, None);
    }

    #[test]
    fn exec_process_keeps_the_containers_identity() {
        let mut f = Fixture::new();
        f.image["config"]["User"] = "alice".into();
        f.security().no_new_privs = true;
        let spec = f.build().unwrap().spec;
        let process = exec_process(&spec, v(&["/bin/sh", "-c", "id"]), false);
        let json = serde_json::to_value(&process).unwrap();
        let original = serde_json::to_value(spec.process().as_ref().unwrap()).unwrap();
        assert_eq!(json["args"], json!(["/bin/sh", "-c", "id"]));
        for key in ["user", "env", "cwd", "noNewPrivileges", "oomScoreAdj"] {
            assert_eq!(json[key], original[key], "{key}");
        }
        assert_eq!(
            sorted(&json["capabilities"]["bounding"]),
            sorted(&original["capabilities"]["bounding"])
        );
        assert_eq!(json["terminal"], false);
        let tty = serde_json::to_value(exec_process(&spec, v(&["sh"]), true)).unwrap();
        assert_eq!(tty["terminal"], true);
        assert_eq!(strings(&tty["env"]).last().unwrap(), "TERM=xterm");

        let bare = serde_json::to_value(exec_process(
            &Spec::default().set_process(None).clone(),
            v(&["x"]),
            false,
        ))
        .unwrap();
        assert_eq!(bare["user"], json!({"uid": 0, "gid": 0}));
        assert!(bare.get("rlimits").is_none());
        assert!(bare.get("capabilities").is_none());
    }

    #[test]
    fn bad_input() {
        let mut f = Fixture::new();
        f.image = json!({"config": {"Cmd": "not a list"}});
        assert!(f.error().to_string().contains("image config"));
        let mut f = Fixture::new();
        f.security().run_as_group = Some(cri::Int64Value { value: 5 });
        assert!(f.error().to_string().contains("run_as_group"));
        let mut f = Fixture::new();
        f.sandbox.netns = Some("netns/x".into());
        assert!(f.error().to_string().contains("not an absolute path"));
    }

    #[test]
    fn the_spec_survives_write_and_load() {
        let f = Fixture::new();
        let spec = f.build().unwrap().spec;
        let dir = tempfile::tempdir().unwrap();
        let path = crate::spec::write_spec(dir.path(), &spec).unwrap();
        assert_eq!(Spec::load(path).unwrap(), spec);
    }
}
