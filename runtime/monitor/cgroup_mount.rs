//! The v1 `/sys/fs/cgroup` of a container that joins another's PID namespace.
//!
//! libcontainer 0.7 builds a v1 `cgroup` mount by reading `/proc/<getpid()>/cgroup`
//! from the host's /proc before the pivot. When the container joins a pod's PID
//! namespace its init's parent (this monitor) is outside it, so libcontainer takes the
//! init's own pid, which is a number in the pod's namespace: the host has no such
//! process (create fails) or has an unrelated one (its cgroups are read instead). For
//! those containers the spec's `cgroup` mount is replaced by what libcontainer would
//! have made from the right process, spelled as plain mounts it has no lookup for: a
//! tmpfs, and on it one bind mount per v1 hierarchy of the container's own cgroup
//! (comounted hierarchies such as `cpu,cpuacct` also appear under each controller's
//! name, where libcontainer would make symlinks).

use std::io::BufRead;
use std::path::{Path, PathBuf};

use crust_util::mountinfo::Mount;
use oci_spec::runtime::{LinuxNamespaceType, Mount as SpecMount, MountBuilder, Spec};

/// Where v1 hierarchies are mounted; libcontainer mounts only those below it.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The controllers libcgroups' v1 manager puts a container into (at its
/// `cgroupsPath`); in every other hierarchy the init stays where this monitor is.
const MANAGED: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "hugetlb",
    "memory",
    "pids",
    "perf_event",
    "blkio",
    "net_prio",
    "net_cls",
    "freezer",
];

/// Replaces `spec`'s `cgroup` mount when the container joins a PID namespace on a v1
/// host; `mountinfo` and `own_cgroups` are this monitor's `/proc/self/mountinfo` and
/// `/proc/self/cgroup`. Returns whether the spec changed.
pub fn replace_joined_pid_cgroup_mount(
    spec: &mut Spec,
    mountinfo: impl BufRead,
    own_cgroups: &str,
) -> bool {
    let Some(linux) = spec.linux() else {
        return false;
    };
    let joins_pid =
        linux.namespaces().iter().flatten().any(|namespace| {
            namespace.typ() == LinuxNamespaceType::Pid && namespace.path().is_some()
        });
    let Some(cgroups_path) = linux.cgroups_path().clone() else {
        return false;
    };
    if !joins_pid || !cgroups_path.is_absolute() {
        return false;
    }
    let Some(mounts) = spec.mounts() else {
        return false;
    };
    let Some(at) = mounts
        .iter()
        .position(|mount| mount.typ().as_deref() == Some("cgroup"))
    else {
        return false;
    };
    let hierarchies = hierarchies(mountinfo);
    if hierarchies.is_empty() {
        // A v2-only host: libcontainer mounts cgroup2 there without the lookup.
        return false;
    }
    let replacement = emulated(&mounts[at], &hierarchies, &cgroups_path, own_cgroups);
    let mut mounts = mounts.clone();
    mounts.splice(at..=at, replacement);
    spec.set_mounts(Some(mounts));
    true
}

/// One v1 hierarchy mounted below [`CGROUP_ROOT`].
#[derive(Debug, PartialEq)]
struct Hierarchy {
    /// Where it is mounted on the host.
    mount_point: PathBuf,
    /// Its controllers, and `name=...` for a named one.
    controllers: Vec<String>,
}

/// The v1 hierarchies below [`CGROUP_ROOT`], read a line at a time: a node's mount
/// table runs to thousands of lines.
fn hierarchies(mountinfo: impl BufRead) -> Vec<Hierarchy> {
    mountinfo
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| Mount::parse(&line))
        .filter(|mount| {
            mount.fstype == "cgroup"
                && Path::new(&mount.mount_point).parent() == Some(CGROUP_ROOT.as_ref())
        })
        .map(|mount| Hierarchy {
            mount_point: PathBuf::from(mount.mount_point),
            controllers: mount
                .super_options
                .split(',')
                .filter(|option| MANAGED.contains(option) || option.starts_with("name="))
                .map(str::to_owned)
                .collect(),
        })
        .collect()
}

/// The mounts that stand for `cgroup`: a tmpfs at its destination and, per hierarchy,
/// a bind of the container's cgroup with the `cgroup` mount's read-only-ness.
fn emulated(
    cgroup: &SpecMount,
    hierarchies: &[Hierarchy],
    cgroups_path: &Path,
    own_cgroups: &str,
) -> Vec<SpecMount> {
    let destination = cgroup.destination();
    let read_only = cgroup
        .options()
        .iter()
        .flatten()
        .any(|option| option == "ro");
    let mut options = vec!["bind", "nosuid", "noexec", "nodev"];
    if read_only {
        options.push("ro");
    }
    let mut mounts = vec![mount(
        "tmpfs",
        "tmpfs".into(),
        destination.clone(),
        &["nosuid", "noexec", "nodev", "mode=755"],
    )];
    for hierarchy in hierarchies {
        let Some(name) = hierarchy.mount_point.file_name() else {
            continue;
        };
        let path = if hierarchy
            .controllers
            .iter()
            .any(|controller| MANAGED.contains(&controller.as_str()))
        {
            cgroups_path.to_path_buf()
        } else {
            match own_path(own_cgroups, &hierarchy.controllers) {
                Some(path) => PathBuf::from(path),
                None => continue,
            }
        };
        let source = hierarchy
            .mount_point
            .join(path.strip_prefix("/").unwrap_or(&path));
        let name = name.to_string_lossy();
        let mut names = vec![name.to_string()];
        if name.contains(',') {
            names.extend(name.split(',').map(str::to_owned));
        }
        for name in names {
            mounts.push(mount(
                "bind",
                source.clone(),
                destination.join(name),
                &options,
            ));
        }
    }
    mounts
}

/// This process's cgroup in the hierarchy of `controllers`, from `/proc/self/cgroup`
/// (`id:controllers:path` lines).
fn own_path<'a>(own_cgroups: &'a str, controllers: &[String]) -> Option<&'a str> {
    own_cgroups.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, listed, path) = (fields.next()?, fields.next()?, fields.next()?);
        let listed: Vec<&str> = listed.split(',').collect();
        let same = !listed.is_empty()
            && listed.len() == controllers.len()
            && controllers.iter().all(|c| listed.contains(&c.as_str()));
        same.then_some(path)
    })
}

fn mount(typ: &str, source: PathBuf, destination: PathBuf, options: &[&str]) -> SpecMount {
    MountBuilder::default()
        .typ(typ)
        .source(source)
        .destination(destination)
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()
        .expect("every field of the mount is set")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
25 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec - tmpfs tmpfs ro,mode=755
32 31 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw
33 31 0:28 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime - cgroup cgroup rw,xattr,name=systemd
34 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:30 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime - cgroup cgroup rw,memory
36 30 0:30 / /var/lib/elsewhere rw - cgroup cgroup rw,memory
";

    const OWN: &str = "\
4:name=systemd:/system.slice/crust.service
3:cpu,cpuacct:/
2:memory:/crust
0::/
";

    fn spec(pid_path: Option<&str>, cgroup_options: &[&str]) -> Spec {
        let mut value = serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                 "options": cgroup_options},
                {"destination": "/etc/hosts", "type": "bind", "source": "/x/hosts",
                 "options": ["rbind"]},
            ],
            "linux": {
                "cgroupsPath": "/kubepods/pod1/c1",
                "namespaces": [{"type": "pid"}, {"type": "mount"}],
            },
        });
        if let Some(path) = pid_path {
            value["linux"]["namespaces"][0]["path"] = path.into();
        }
        serde_json::from_value(value).unwrap()
    }

    fn described(spec: &Spec) -> Vec<String> {
        spec.mounts()
            .iter()
            .flatten()
            .map(|m| {
                format!(
                    "{} {} {} {}",
                    m.typ().as_deref().unwrap_or(""),
                    m.source().as_deref().unwrap_or(Path::new("")).display(),
                    m.destination().display(),
                    m.options().clone().unwrap_or_default().join(",")
                )
            })
            .collect()
    }

    #[test]
    fn a_joined_pid_namespace_gets_binds_of_the_containers_own_cgroups() {
        let mut s = spec(
            Some("/proc/42/ns/pid"),
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        );
        assert!(replace_joined_pid_cgroup_mount(
            &mut s,
            MOUNTINFO.as_bytes(),
            OWN
        ));
        assert_eq!(
            described(&s),
            [
                "proc proc /proc ",
                "tmpfs tmpfs /sys/fs/cgroup nosuid,noexec,nodev,mode=755",
                "bind /sys/fs/cgroup/systemd/system.slice/crust.service /sys/fs/cgroup/systemd bind,nosuid,noexec,nodev,ro",
                "bind /sys/fs/cgroup/cpu,cpuacct/kubepods/pod1/c1 /sys/fs/cgroup/cpu,cpuacct bind,nosuid,noexec,nodev,ro",
                "bind /sys/fs/cgroup/cpu,cpuacct/kubepods/pod1/c1 /sys/fs/cgroup/cpu bind,nosuid,noexec,nodev,ro",
                "bind /sys/fs/cgroup/cpu,cpuacct/kubepods/pod1/c1 /sys/fs/cgroup/cpuacct bind,nosuid,noexec,nodev,ro",
                "bind /sys/fs/cgroup/memory/kubepods/pod1/c1 /sys/fs/cgroup/memory bind,nosuid,noexec,nodev,ro",
                "bind /x/hosts /etc/hosts rbind",
            ]
        );
    }

    #[test]
    fn a_writable_cgroup_mount_stays_writable() {
        let mut s = spec(Some("/proc/42/ns/pid"), &["nosuid", "rw"]);
        assert!(replace_joined_pid_cgroup_mount(
            &mut s,
            MOUNTINFO.as_bytes(),
            OWN
        ));
        assert!(
            described(&s)
                .iter()
                .filter(|m| m.starts_with("bind /sys"))
                .all(|m| !m.ends_with(",ro"))
        );
    }

    #[test]
    fn its_own_pid_namespace_or_a_v2_host_keeps_the_cgroup_mount() {
        let mut own = spec(None, &["ro"]);
        assert!(!replace_joined_pid_cgroup_mount(
            &mut own,
            MOUNTINFO.as_bytes(),
            OWN
        ));
        let v2 = "31 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let mut joined = spec(Some("/proc/42/ns/pid"), &["ro"]);
        assert!(!replace_joined_pid_cgroup_mount(
            &mut joined,
            v2.as_bytes(),
            OWN
        ));
        assert!(described(&joined)[1].starts_with("cgroup cgroup /sys/fs/cgroup"));
    }
}
