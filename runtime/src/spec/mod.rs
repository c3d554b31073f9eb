//! OCI runtime specs (config.json) for what crust runs, with containerd's defaults.
//!
//! [`sandbox`] builds the spec of a pod's pause container. The pieces every spec shares
//! live here: the default capability set, masked and read-only paths, the default
//! mounts, sysctl validation, the OOM score clamp and the atomic write of config.json.
//! The defaults are containerd 2's (`pkg/oci/spec.go`), which CRI-O matches.

pub mod container;
pub mod sandbox;
pub mod seccomp;
pub mod user;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Capability, Mount, MountBuilder, Spec};

use crate::error::{Result, RuntimeError};

pub use sandbox::{PidMode, SandboxSpec};

/// The file name of the spec in a bundle.
pub const CONFIG_FILE: &str = "config.json";

/// The OCI spec version crust writes.
pub const OCI_VERSION: &str = "1.0.2";

/// The capabilities of an unprivileged container: containerd 2's and CRI-O's default set
/// (MKNOD, NET_RAW, SETFCAP, SYS_CHROOT and AUDIT_WRITE are no longer in it).
pub const DEFAULT_CAPABILITIES: [Capability; 9] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::Kill,
];

/// Paths masked in unprivileged containers (bind-mounted over with /dev/null or an
/// empty read-only tmpfs), as containerd does: they leak host information or let a
/// container poke the kernel.
pub const MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/scsi",
];

/// Paths made read-only in unprivileged containers, as containerd does.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// How a container gets one of its namespaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespaceMode {
    /// A new namespace, made by the OCI runtime.
    New,
    /// An existing namespace, joined by path (a pinned netns, `/proc/<pid>/ns/...`).
    Path(PathBuf),
    /// The host's namespace: the spec lists none of that type.
    Host,
}

/// A mount the caller adds to a spec: files the pod shares (/etc/hosts,
/// /etc/resolv.conf, /dev/shm) or volumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    /// Where it appears in the container; absolute.
    pub destination: PathBuf,
    /// What is mounted: a host path for binds, a name for filesystems.
    pub source: PathBuf,
    /// The filesystem type: "bind", "tmpfs", ...
    pub kind: String,
    /// mount(8) options: "rbind", "ro", "nosuid", ...
    pub options: Vec<String>,
}

impl MountSpec {
    /// A read-only bind mount of `source` at `destination`, as containerd mounts a
    /// sandbox's resolv.conf and /dev/shm.
    pub fn bind_ro(source: impl Into<PathBuf>, destination: impl Into<PathBuf>) -> MountSpec {
        MountSpec {
            destination: destination.into(),
            source: source.into(),
            kind: "bind".into(),
            options: ["rbind", "ro", "nosuid", "nodev", "noexec"]
                .map(String::from)
                .to_vec(),
        }
    }

    fn to_oci(&self, id: &str) -> Result<Mount> {
        let destination = self.destination.to_string_lossy();
        if !self.destination.is_absolute() {
            return Err(RuntimeError::invalid(
                "mount destination",
                &destination,
                "not an absolute path",
            ));
        }
        if self
            .destination
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(RuntimeError::invalid(
                "mount destination",
                &destination,
                "contains '..'",
            ));
        }
        if self.kind.is_empty() {
            return Err(RuntimeError::invalid(
                "mount type",
                &self.kind,
                format!("empty for {destination}"),
            ));
        }
        MountBuilder::default()
            .destination(&self.destination)
            .typ(&self.kind)
            .source(&self.source)
            .options(self.options.clone())
            .build()
            .map_err(|err| spec_error(id, err))
    }
}

/// The mounts every container gets, containerd's defaults without /run (which
/// containerd drops for sandboxes too). `/sys` is read-only unless `sys_rw`.
///
/// A fresh sysfs also mounts when the container shares the host's network namespace:
/// crust runs as real root without a user namespace, and the kernel only refuses sysfs
/// to a user namespace that does not own the netns (then a read-only rbind of the
/// host's /sys is the way, which callers can pass as a mount of their own).
pub(crate) fn default_mounts(id: &str, sys_rw: bool) -> Result<Vec<Mount>> {
    let sys_options: &[&str] = if sys_rw {
        &["nosuid", "noexec", "nodev", "rw"]
    } else {
        &["nosuid", "noexec", "nodev", "ro"]
    };
    let table: [(&str, &str, &str, &[&str]); 6] = [
        ("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        (
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        (
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        (
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        (
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        ("/sys", "sysfs", "sysfs", sys_options),
    ];
    table
        .iter()
        .map(|(destination, kind, source, options)| {
            MountBuilder::default()
                .destination(destination)
                .typ(*kind)
                .source(source)
                .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
                .build()
                .map_err(|err| spec_error(id, err))
        })
        .collect()
}

/// `defaults` with the caller's mounts applied: a caller mount replaces the default at
/// the same destination in place (so /dev/shm still comes after /dev), others follow in
/// the caller's order.
pub(crate) fn merge_mounts(
    id: &str,
    defaults: Vec<Mount>,
    extra: &[MountSpec],
) -> Result<Vec<Mount>> {
    let mut mounts = defaults;
    for spec in extra {
        let mount = spec.to_oci(id)?;
        match mounts
            .iter_mut()
            .find(|m| m.destination() == mount.destination())
        {
            Some(slot) => *slot = mount,
            None => mounts.push(mount),
        }
    }
    Ok(mounts)
}

/// Refuses sysctls a pod may not set: only namespaced ones are allowed, those of the
/// IPC namespace (`kernel.shm*`, `kernel.msg*`, `kernel.sem`, `fs.mqueue.*`) unless the
/// pod shares the host's IPC namespace, and `net.*` only when it has its own network
/// namespace. Anything else would change the node itself.
pub fn validate_sysctls(
    sysctls: &BTreeMap<String, String>,
    has_own_netns: bool,
    ipc_host: bool,
) -> Result<()> {
    for (name, value) in sysctls {
        let refuse = |reason| {
            Err(RuntimeError::Sysctl {
                name: name.clone(),
                reason,
            })
        };
        if name.is_empty()
            || name.contains("..")
            || name.starts_with('.')
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
        {
            return refuse("not a sysctl name");
        }
        if value.contains(['\n', '\0']) {
            return refuse("value contains a newline or NUL");
        }
        // Kubernetes also accepts the slash form (net/ipv4/ip_forward), where '.' and
        // '/' trade places; classify by the dotted form.
        let dotted: String = if name.contains('/') {
            name.chars()
                .map(|c| match c {
                    '/' => '.',
                    '.' => '/',
                    c => c,
                })
                .collect()
        } else {
            name.clone()
        };
        let ipc = dotted.starts_with("kernel.shm")
            || dotted.starts_with("kernel.msg")
            || dotted == "kernel.sem"
            || dotted.starts_with("fs.mqueue.");
        if ipc {
            if ipc_host {
                return refuse("the pod shares the host IPC namespace");
            }
        } else if dotted.starts_with("net.") {
            if !has_own_netns {
                return refuse("the pod shares the host network namespace");
            }
        } else {
            return refuse("not a namespaced sysctl");
        }
    }
    Ok(())
}

/// The OOM score adjustment a container can actually get: `wanted`, but not below our
/// own. Lowering it needs CAP_SYS_RESOURCE, which even root lacks when the bounding set
/// drops it (as in many nested setups), and then the runtime's write fails; containerd
/// calls this `restrict_oom_score_adj`. If ours cannot be read, `wanted` is kept.
pub fn clamp_oom_score_adj(wanted: i32) -> i32 {
    let own = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|text| text.trim().parse::<i32>().ok());
    clamp_oom_score_adj_to(wanted, own)
}

/// [`clamp_oom_score_adj`] with our own score given; also keeps the result in the
/// kernel's range [-1000, 1000].
pub(crate) fn clamp_oom_score_adj_to(wanted: i32, own: Option<i32>) -> i32 {
    let wanted = wanted.clamp(-1000, 1000);
    match own {
        Some(own) => wanted.max(own),
        None => wanted,
    }
}

/// The capabilities this process has (its effective set): what a privileged container
/// gets, since the runtime, our child, cannot grant more (containerd does the same).
pub(crate) fn current_capabilities() -> Vec<Capability> {
    let mask = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                let hex = line.strip_prefix("CapEff:")?.trim();
                u64::from_str_radix(hex, 16).ok()
            })
        })
        .unwrap_or(0);
    capabilities_from_mask(mask)
}

/// The capabilities whose bits are set in `mask`, by the kernel's numbering.
pub(crate) fn capabilities_from_mask(mask: u64) -> Vec<Capability> {
    use Capability::*;
    // Index = capability number (linux/capability.h).
    const BY_NUMBER: [Capability; 41] = [
        Chown,
        DacOverride,
        DacReadSearch,
        Fowner,
        Fsetid,
        Kill,
        Setgid,
        Setuid,
        Setpcap,
        LinuxImmutable,
        NetBindService,
        NetBroadcast,
        NetAdmin,
        NetRaw,
        IpcLock,
        IpcOwner,
        SysModule,
        SysRawio,
        SysChroot,
        SysPtrace,
        SysPacct,
        SysAdmin,
        SysBoot,
        SysNice,
        SysResource,
        SysTime,
        SysTtyConfig,
        Mknod,
        Lease,
        AuditWrite,
        AuditControl,
        Setfcap,
        MacOverride,
        MacAdmin,
        Syslog,
        WakeAlarm,
        BlockSuspend,
        AuditRead,
        Perfmon,
        Bpf,
        CheckpointRestore,
    ];
    BY_NUMBER
        .iter()
        .enumerate()
        .filter(|(bit, _)| mask & (1u64 << bit) != 0)
        .map(|(_, cap)| *cap)
        .collect()
}

/// Writes `spec` to `<bundle>/config.json` atomically (a temporary file renamed into
/// place), so a crash never leaves a half-written spec for the runtime to read; creates
/// the bundle directory if needed. Returns the file's path.
///
/// Not synced: bundles live in the state directory, volatile by design (tmpfs on a
/// node; a reboot ends every container anyway), and a crustd crash keeps the page
/// cache. An fsync here was a disk flush on the pod-start path for nothing.
pub fn write_spec(bundle: &Path, spec: &Spec) -> Result<PathBuf> {
    std::fs::create_dir_all(bundle)
        .map_err(|err| RuntimeError::io("create bundle", bundle, err))?;
    let path = bundle.join(CONFIG_FILE);
    let bytes = serde_json::to_vec_pretty(spec).map_err(|err| RuntimeError::Spec {
        id: bundle.display().to_string(),
        reason: err.to_string(),
    })?;
    let mut temp = tempfile::Builder::new()
        .prefix(".config.json.")
        .tempfile_in(bundle)
        .map_err(|err| RuntimeError::io("create temporary spec in", bundle, err))?;
    temp.write_all(&bytes)
        .map_err(|err| RuntimeError::io("write spec", temp.path().to_owned(), err))?;
    temp.persist(&path)
        .map_err(|err| RuntimeError::io("write spec", &path, err.error))?;
    Ok(path)
}

pub(crate) fn spec_error(id: &str, err: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Spec {
        id: id.to_owned(),
        reason: err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn sysctls(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn namespaced_sysctls_are_allowed() {
        let all = sysctls(&[
            ("kernel.shm_rmid_forced", "1"),
            ("kernel.shmmax", "1000000"),
            ("kernel.msgmax", "8192"),
            ("kernel.sem", "250 32000 100 128"),
            ("fs.mqueue.msg_max", "10"),
            ("net.ipv4.ip_unprivileged_port_start", "0"),
            ("net.ipv4.conf.all.rp_filter", "1"),
            ("net/ipv4/conf/eth0.100/rp_filter", "1"),
        ]);
        validate_sysctls(&all, true, false).unwrap();
    }

    #[test]
    fn host_sysctls_and_host_namespaces_are_refused_by_name() {
        let cases = [
            (
                ("vm.overcommit_memory", "1"),
                true,
                false,
                "not a namespaced sysctl",
            ),
            (
                ("kernel.pid_max", "1"),
                true,
                false,
                "not a namespaced sysctl",
            ),
            (
                ("kernel.hostname", "x"),
                true,
                false,
                "not a namespaced sysctl",
            ),
            (
                ("vm/overcommit_memory", "1"),
                true,
                false,
                "not a namespaced sysctl",
            ),
            (
                ("net.ipv4.ip_forward", "1"),
                false,
                false,
                "the pod shares the host network namespace",
            ),
            (
                ("kernel.shmmax", "1"),
                true,
                true,
                "the pod shares the host IPC namespace",
            ),
            (("../../etc", "1"), true, false, "not a sysctl name"),
            (
                ("net.core.somaxconn", "1\n2"),
                true,
                false,
                "value contains a newline or NUL",
            ),
        ];
        for ((name, value), own_netns, ipc_host, reason) in cases {
            let err =
                validate_sysctls(&sysctls(&[(name, value)]), own_netns, ipc_host).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument);
            assert_eq!(err.to_string(), format!("sysctl {name}: {reason}"));
        }
    }

    #[test]
    fn oom_score_adj_is_clamped_to_our_own() {
        assert_eq!(clamp_oom_score_adj_to(-998, Some(0)), 0);
        assert_eq!(clamp_oom_score_adj_to(-998, Some(-999)), -998);
        assert_eq!(clamp_oom_score_adj_to(500, Some(-500)), 500);
        assert_eq!(clamp_oom_score_adj_to(-998, None), -998);
        assert_eq!(clamp_oom_score_adj_to(5000, None), 1000);
        assert_eq!(clamp_oom_score_adj_to(i32::MIN, Some(-1000)), -1000);
        let own: i32 = std::fs::read_to_string("/proc/self/oom_score_adj")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(clamp_oom_score_adj(-1000), own);
        assert_eq!(clamp_oom_score_adj(1000), 1000);
    }

    #[test]
    fn capability_masks() {
        assert_eq!(capabilities_from_mask(0), vec![]);
        assert_eq!(
            capabilities_from_mask(1 | 1 << 21 | 1 << 40),
            vec![
                Capability::Chown,
                Capability::SysAdmin,
                Capability::CheckpointRestore
            ]
        );
        // Bit 24 (CAP_SYS_RESOURCE) missing, as in this project's test machines.
        let caps = capabilities_from_mask(0x0000_01ff_feff_ffff);
        assert_eq!(caps.len(), 40);
        assert!(!caps.contains(&Capability::SysResource));
    }

    #[test]
    fn mounts_merge_in_place_and_append() {
        let defaults = default_mounts("c1", false).unwrap();
        let merged = merge_mounts(
            "c1",
            defaults,
            &[
                MountSpec::bind_ro("/run/crust/sb/shm", "/dev/shm"),
                MountSpec::bind_ro("/run/crust/sb/resolv.conf", "/etc/resolv.conf"),
            ],
        )
        .unwrap();
        let destinations: Vec<_> = merged
            .iter()
            .map(|m| m.destination().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            destinations,
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/sys",
                "/etc/resolv.conf"
            ]
        );
        assert_eq!(merged[3].typ().as_deref(), Some("bind"));

        for (destination, kind) in [("etc/hosts", "bind"), ("/a/../b", "bind"), ("/x", "")] {
            let err = merge_mounts(
                "c1",
                vec![],
                &[MountSpec {
                    destination: destination.into(),
                    source: "/y".into(),
                    kind: kind.into(),
                    options: vec![],
                }],
            )
            .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{destination}");
        }
    }

    #[test]
    fn spec_is_written_atomically_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("bundle");
        let mut spec = Spec::default();
        let path = write_spec(&bundle, &spec).unwrap();
        assert_eq!(path, bundle.join("config.json"));
        spec.set_hostname(Some("second".into()));
        write_spec(&bundle, &spec).unwrap();
        let back: Spec = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(back.hostname().as_deref(), Some("second"));
        // No temporary file is left beside it.
        let names: Vec<_> = std::fs::read_dir(&bundle)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["config.json"]);
    }
}
