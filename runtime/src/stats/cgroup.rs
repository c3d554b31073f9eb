//! Reading a process's cgroup counters, on cgroup v1, hybrid and pure v2 hosts.
//!
//! Two inputs decide where the files are, and neither is guessed:
//! - the mount layout, from `/proc/self/mountinfo`: every `cgroup` (v1) mount with the
//!   controllers in its super options, and the `cgroup2` mount (at `/sys/fs/cgroup` on a
//!   pure v2 host, usually `/sys/fs/cgroup/unified` on a hybrid one);
//! - the membership, from `/proc/<pid>/cgroup`: `N:controllers:/path` lines for v1
//!   hierarchies and one `0::/path` line for v2.
//!
//! A directory is the mount point joined with the membership path made relative to the
//! mount's root (field 4 of mountinfo), which is `/` on a host but a sub-path when the
//! hierarchy is bind-mounted (as inside a container).
//!
//! Each resource is read from its v1 controller when that controller is mounted as v1,
//! otherwise from the v2 directory. Missing files read as zero or `None`: a container
//! that just exited, or a kernel without swap accounting, is not an error.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// v1 `memory.limit_in_bytes` above this means "no limit" (the kernel reports
/// `PAGE_COUNTER_MAX` pages, 0x7FFFFFFFFFFFF000 on 64-bit with 4 KiB pages); cAdvisor
/// uses the same threshold.
const V1_UNLIMITED: u64 = 1 << 62;

/// Controllers that can appear in a v1 mount's super options, so that mount flags such as
/// `rw`, `xattr` or `release_agent=…` are not taken for controllers.
const V1_CONTROLLERS: &[&str] = &[
    "blkio",
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "freezer",
    "hugetlb",
    "memory",
    "misc",
    "net_cls",
    "net_prio",
    "perf_event",
    "pids",
    "rdma",
];

/// A cgroup's counters at one instant, in the units CRI wants.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// Cumulative CPU time of all tasks, in nanoseconds.
    pub cpu_usage_ns: u64,
    /// Memory in use, page cache included.
    pub memory_usage: u64,
    /// Usage minus inactive file pages: what the kubelet evicts on.
    pub working_set: u64,
    /// Anonymous memory (v1 `total_rss`, v2 `anon`).
    pub rss: u64,
    /// Cumulative page faults.
    pub page_faults: u64,
    /// Cumulative major page faults.
    pub major_page_faults: u64,
    /// Limit minus working set, when a memory limit is set.
    pub available: Option<u64>,
    /// Swap in use, when swap accounting is available.
    pub swap_usage: Option<u64>,
    /// Number of tasks, when the pids controller is available.
    pub processes: Option<u64>,
    /// Wall-clock time of the reading, in nanoseconds since the epoch.
    pub timestamp_ns: i64,
}

/// One cgroup hierarchy mounted on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    /// Controllers of a v1 hierarchy (`name=systemd` included); empty for v2.
    pub controllers: Vec<String>,
    /// Path inside the hierarchy that is mounted (mountinfo field 4), usually `/`.
    pub root: PathBuf,
    /// Where the hierarchy is mounted.
    pub mount_point: PathBuf,
}

/// The cgroup hierarchies mounted on this host, as found in mountinfo.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupLayout {
    /// v1 hierarchies, in mountinfo order.
    pub v1: Vec<CgroupMount>,
    /// The v2 hierarchy, if mounted.
    pub v2: Option<CgroupMount>,
}

/// A process's cgroup membership, as listed in `/proc/<pid>/cgroup`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupMembership {
    /// v1 hierarchies: the controllers of the hierarchy and the path in it.
    pub v1: Vec<(Vec<String>, String)>,
    /// The path in the v2 hierarchy (the `0::` line).
    pub v2: Option<String>,
}

/// The directories to read one cgroup's counters from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupPaths {
    /// v1 `cpuacct` directory.
    pub cpuacct: Option<PathBuf>,
    /// v1 `memory` directory.
    pub memory: Option<PathBuf>,
    /// v1 `pids` directory.
    pub pids: Option<PathBuf>,
    /// v2 directory, used for every resource whose v1 controller is not mounted.
    pub unified: Option<PathBuf>,
}

/// Cgroupfs path `path` relative to a hierarchy's root, when it is one crust may touch:
/// absolute, not the root itself, without `..`. `None` for anything else, systemd's
/// `slice:prefix:name` form included.
pub fn cgroupfs_relative(path: &str) -> Option<&str> {
    path.strip_prefix('/')
        .filter(|r| !r.is_empty() && !r.split('/').any(|c| c == ".."))
}

/// Removes the (empty) cgroup at cgroupfs path `path` from every mounted hierarchy.
/// Cgroups still holding processes, and systemd `slice:prefix:name` paths, are left.
pub fn remove_empty_cgroup(path: &str) {
    let Some(rel) = cgroupfs_relative(path) else {
        return;
    };
    let root = Path::new("/sys/fs/cgroup");
    // Only the pod's own cgroup goes: a shared parent such as `/crust` stays, because
    // removing it races a runtime creating a sibling under it (mkdir ENOENT).
    let _ = std::fs::remove_dir(root.join(rel));
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let _ = std::fs::remove_dir(entry.path().join(rel));
    }
}

/// Finds the directories of `pid`'s cgroups from `/proc/self/mountinfo` and
/// `/proc/<pid>/cgroup`.
pub fn cgroup_paths_of(pid: i32) -> io::Result<CgroupPaths> {
    CgroupLayout::host().paths_of(pid)
}

/// Reads the counters of the cgroup at `paths`; missing files give zero or `None`.
pub fn read_cgroup_stats(paths: &CgroupPaths) -> io::Result<CgroupStats> {
    read_from(paths)
}

/// Reads the counters from explicit directories (fixture directories in tests).
pub fn read_from(paths: &CgroupPaths) -> io::Result<CgroupStats> {
    let mut stats = CgroupStats {
        timestamp_ns: now_ns(),
        ..CgroupStats::default()
    };
    let unified = paths.unified.as_deref();

    if let Some(dir) = &paths.cpuacct {
        stats.cpu_usage_ns = read_u64(&dir.join("cpuacct.usage"))?.unwrap_or(0);
    } else if let Some(dir) = unified {
        let cpu = read_keyed(&dir.join("cpu.stat"))?;
        stats.cpu_usage_ns = key(&cpu, "usage_usec").saturating_mul(1000);
    }

    if let Some(dir) = &paths.memory {
        read_memory_v1(dir, &mut stats)?;
    } else if let Some(dir) = unified {
        read_memory_v2(dir, &mut stats)?;
    }

    if let Some(dir) = paths.pids.as_deref().or(unified) {
        stats.processes = read_u64(&dir.join("pids.current"))?;
    }
    Ok(stats)
}

fn read_memory_v1(dir: &Path, stats: &mut CgroupStats) -> io::Result<()> {
    let usage = read_u64(&dir.join("memory.usage_in_bytes"))?.unwrap_or(0);
    let stat = read_keyed(&dir.join("memory.stat"))?;
    stats.memory_usage = usage;
    stats.working_set = usage.saturating_sub(key(&stat, "total_inactive_file"));
    stats.rss = key(&stat, "total_rss");
    stats.page_faults = key(&stat, "total_pgfault");
    stats.major_page_faults = key(&stat, "total_pgmajfault");
    stats.available = read_u64(&dir.join("memory.limit_in_bytes"))?
        .filter(|&limit| limit < V1_UNLIMITED)
        .map(|limit| limit.saturating_sub(stats.working_set));
    // memsw counts memory plus swap; it exists only with swap accounting enabled.
    stats.swap_usage = read_u64(&dir.join("memory.memsw.usage_in_bytes"))?
        .map(|memsw| memsw.saturating_sub(usage));
    Ok(())
}

fn read_memory_v2(dir: &Path, stats: &mut CgroupStats) -> io::Result<()> {
    let usage = read_u64(&dir.join("memory.current"))?.unwrap_or(0);
    let stat = read_keyed(&dir.join("memory.stat"))?;
    stats.memory_usage = usage;
    stats.working_set = usage.saturating_sub(key(&stat, "inactive_file"));
    stats.rss = key(&stat, "anon");
    stats.page_faults = key(&stat, "pgfault");
    stats.major_page_faults = key(&stat, "pgmajfault");
    // `memory.max` holds "max" when unlimited, which read_u64 returns as None.
    stats.available =
        read_u64(&dir.join("memory.max"))?.map(|limit| limit.saturating_sub(stats.working_set));
    stats.swap_usage = read_u64(&dir.join("memory.swap.current"))?;
    Ok(())
}

impl CgroupLayout {
    /// Reads the cgroup mounts visible to this process from `/proc/self/mountinfo`.
    pub fn detect() -> io::Result<Self> {
        Ok(Self::parse_mountinfo(&fs::read_to_string(
            "/proc/self/mountinfo",
        )?))
    }

    /// This host's layout, read from mountinfo once: cgroup hierarchies are mounted at
    /// boot and do not move, while the rest of the mount table (every container's
    /// rootfs) is long and costly to read.
    pub fn host() -> &'static CgroupLayout {
        static HOST: std::sync::OnceLock<CgroupLayout> = std::sync::OnceLock::new();
        HOST.get_or_init(|| Self::detect().unwrap_or_default())
    }

    /// The directory of cgroup `path` in each hierarchy (v1 ones, then v2), whether or
    /// not it exists.
    pub fn dirs_of(&self, path: &str) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self
            .v1
            .iter()
            .chain(&self.v2)
            // A mount of a sub-tree holds only the paths under its root.
            .filter(|mount| Path::new(path).starts_with(&mount.root))
            .map(|mount| join_in_mount(mount, path))
            .collect();
        // A hierarchy mounted twice (a bind mount of it) names one directory twice.
        let mut seen = std::collections::HashSet::new();
        dirs.retain(|d| seen.insert(d.clone()));
        dirs
    }

    /// Parses mountinfo text, keeping the `cgroup` and `cgroup2` mounts.
    pub fn parse_mountinfo(text: &str) -> Self {
        let mut layout = Self::default();
        for m in crust_util::mountinfo::parse(text) {
            let mut mount = CgroupMount {
                controllers: Vec::new(),
                root: PathBuf::from(m.root),
                mount_point: PathBuf::from(m.mount_point),
            };
            match m.fstype.as_str() {
                // Keep the first: later ones are bind mounts of the same hierarchy.
                "cgroup2" if layout.v2.is_none() => layout.v2 = Some(mount),
                "cgroup" => {
                    mount.controllers = m
                        .super_options
                        .split(',')
                        .filter(|o| V1_CONTROLLERS.contains(o) || o.starts_with("name="))
                        .map(str::to_owned)
                        .collect();
                    layout.v1.push(mount);
                }
                _ => {}
            }
        }
        layout
    }

    /// Reads `/proc/<pid>/cgroup` and resolves its directories in this layout.
    pub fn paths_of(&self, pid: i32) -> io::Result<CgroupPaths> {
        let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        Ok(self.resolve(&CgroupMembership::parse(&text)))
    }

    /// Resolves a membership to directories in this layout.
    pub fn resolve(&self, membership: &CgroupMembership) -> CgroupPaths {
        CgroupPaths {
            cpuacct: self.resolve_v1(membership, "cpuacct"),
            memory: self.resolve_v1(membership, "memory"),
            pids: self.resolve_v1(membership, "pids"),
            unified: match (&self.v2, &membership.v2) {
                (Some(mount), Some(path)) => Some(join_in_mount(mount, path)),
                _ => None,
            },
        }
    }

    fn resolve_v1(&self, membership: &CgroupMembership, controller: &str) -> Option<PathBuf> {
        let has = |list: &[String]| list.iter().any(|c| c == controller);
        let (_, path) = membership.v1.iter().find(|(c, _)| has(c))?;
        let mounts = self.v1.iter().filter(|m| has(&m.controllers));
        // Of several mounts of the hierarchy, prefer one whose root contains the path.
        let mut fallback = None;
        for mount in mounts {
            if Path::new(path).starts_with(&mount.root) {
                return Some(join_in_mount(mount, path));
            }
            fallback.get_or_insert(mount);
        }
        fallback.map(|mount| join_in_mount(mount, path))
    }
}

impl CgroupMembership {
    /// Parses the text of `/proc/<pid>/cgroup`.
    pub fn parse(text: &str) -> Self {
        let mut membership = Self::default();
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(id), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if id == "0" && controllers.is_empty() {
                membership.v2 = Some(path.to_owned());
            } else if !controllers.is_empty() {
                let list = controllers.split(',').map(str::to_owned).collect();
                membership.v1.push((list, path.to_owned()));
            }
        }
        membership
    }
}

/// The directory of cgroup `path` under `mount`, whose root may be a sub-path.
fn join_in_mount(mount: &CgroupMount, path: &str) -> PathBuf {
    let path = Path::new(path);
    // Outside a cgroup namespace the path is absolute in the hierarchy; strip the mounted
    // sub-tree. Inside one, paths are already relative to the namespace root.
    let relative = path
        .strip_prefix(&mount.root)
        .or_else(|_| path.strip_prefix("/"))
        .unwrap_or(path);
    mount.mount_point.join(relative)
}

/// Reads a file, mapping "does not exist" to `None`.
fn read_optional(path: &Path) -> io::Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        // ENODEV comes from reading a cgroup file while the cgroup is being removed.
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENODEV) => {
            Ok(None)
        }
        Err(e) => Err(with_path(e, path)),
    }
}

/// Reads a one-number file; `None` if missing or not a number (v2 "max").
fn read_u64(path: &Path) -> io::Result<Option<u64>> {
    Ok(read_optional(path)?.and_then(|text| text.trim().parse().ok()))
}

/// Reads a `key value` file such as `memory.stat` or `cpu.stat`; empty if missing.
fn read_keyed(path: &Path) -> io::Result<Vec<(String, u64)>> {
    let Some(text) = read_optional(path)? else {
        return Ok(Vec::new());
    };
    Ok(text
        .lines()
        .filter_map(|line| {
            let (k, v) = line.split_once(' ')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect())
}

fn key(entries: &[(String, u64)], name: &str) -> u64 {
    entries
        .iter()
        .find(|(k, _)| k == name)
        .map_or(0, |(_, v)| *v)
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("read {}: {e}", path.display()))
}

/// Nanoseconds since the epoch, the timestamp unit of CRI.
pub(crate) fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn testdata(sub: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/stats/testdata")
            .join(sub)
    }

    /// A hybrid host (systemd's default before v2): v1 controllers plus an empty
    /// unified hierarchy, with one escaped mount point.
    const HYBRID_MOUNTINFO: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 25 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
32 31 0:29 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
33 31 0:30 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
36 31 0:33 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,cpu,cpuacct
37 31 0:34 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup rw,memory
38 31 0:35 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:18 - cgroup cgroup rw,pids
39 31 0:36 /kubepods /mnt/my\\040cgroups rw,relatime - cgroup cgroup rw,memory
40 30 0:37 / /proc rw,nosuid,nodev,noexec,relatime shared:13 - proc proc rw
";

    const HYBRID_CGROUP: &str = "\
12:pids:/kubepods/besteffort/pod1234/abcd
11:memory:/kubepods/besteffort/pod1234/abcd
4:cpu,cpuacct:/kubepods/besteffort/pod1234/abcd
1:name=systemd:/kubepods/besteffort/pod1234/abcd
0::/kubepods/besteffort/pod1234/abcd
";

    const V2_MOUNTINFO: &str = "\
24 29 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:2 - sysfs sysfs rw
27 24 0:25 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    const V2_CGROUP: &str = "0::/kubepods.slice/kubepods-pod1234.slice/cri-containerd-abcd.scope\n";

    #[test]
    fn parses_hybrid_mountinfo() {
        let layout = CgroupLayout::parse_mountinfo(HYBRID_MOUNTINFO);
        let v2 = layout.v2.as_ref().unwrap();
        assert_eq!(v2.mount_point, Path::new("/sys/fs/cgroup/unified"));
        assert!(v2.controllers.is_empty());
        let controllers: Vec<_> = layout.v1.iter().map(|m| m.controllers.join(",")).collect();
        assert_eq!(
            controllers,
            ["name=systemd", "cpu,cpuacct", "memory", "pids", "memory"]
        );
        assert_eq!(layout.v1[4].root, Path::new("/kubepods"));
        assert_eq!(layout.v1[4].mount_point, Path::new("/mnt/my cgroups"));
    }

    #[test]
    fn a_cgroup_path_has_one_directory_per_hierarchy() {
        let layout = CgroupLayout::parse_mountinfo(HYBRID_MOUNTINFO);
        let dirs = layout.dirs_of("/crust/c1");
        let want: Vec<PathBuf> = [
            "/sys/fs/cgroup/systemd/crust/c1",
            "/sys/fs/cgroup/cpu,cpuacct/crust/c1",
            "/sys/fs/cgroup/memory/crust/c1",
            "/sys/fs/cgroup/pids/crust/c1",
            "/sys/fs/cgroup/unified/crust/c1",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(dirs, want);
        let under = layout.dirs_of("/kubepods/pod1/c1");
        assert!(
            under.contains(&PathBuf::from("/mnt/my cgroups/pod1/c1")),
            "{under:?}"
        );
    }

    #[test]
    fn resolves_hybrid_membership() {
        let layout = CgroupLayout::parse_mountinfo(HYBRID_MOUNTINFO);
        let membership = CgroupMembership::parse(HYBRID_CGROUP);
        assert_eq!(membership.v1.len(), 4);
        assert_eq!(membership.v1[2].0, ["cpu", "cpuacct"]);
        assert_eq!(
            membership.v2.as_deref(),
            Some("/kubepods/besteffort/pod1234/abcd")
        );
        let paths = layout.resolve(&membership);
        let dir = "kubepods/besteffort/pod1234/abcd";
        assert_eq!(
            paths.cpuacct,
            Some(Path::new("/sys/fs/cgroup/cpu,cpuacct").join(dir))
        );
        // The bind mount rooted at /kubepods also contains the path; the first mount in
        // mountinfo order whose root contains it is used.
        assert_eq!(
            paths.memory,
            Some(Path::new("/sys/fs/cgroup/memory").join(dir))
        );
        assert_eq!(paths.pids, Some(Path::new("/sys/fs/cgroup/pids").join(dir)));
        assert_eq!(
            paths.unified,
            Some(Path::new("/sys/fs/cgroup/unified").join(dir))
        );
    }

    #[test]
    fn resolves_path_under_a_bind_mounted_root() {
        let mount = CgroupMount {
            controllers: vec!["memory".into()],
            root: PathBuf::from("/kubepods"),
            mount_point: PathBuf::from("/mnt/my cgroups"),
        };
        let layout = CgroupLayout {
            v1: vec![mount],
            v2: None,
        };
        let membership = CgroupMembership::parse("11:memory:/kubepods/pod1/abcd\n");
        let paths = layout.resolve(&membership);
        assert_eq!(
            paths.memory,
            Some(PathBuf::from("/mnt/my cgroups/pod1/abcd"))
        );
        assert_eq!(paths.unified, None);
    }

    #[test]
    fn resolves_pure_v2_membership() {
        let layout = CgroupLayout::parse_mountinfo(V2_MOUNTINFO);
        assert!(layout.v1.is_empty());
        let membership = CgroupMembership::parse(V2_CGROUP);
        assert!(membership.v1.is_empty());
        let paths = layout.resolve(&membership);
        assert_eq!(
            paths,
            CgroupPaths {
                unified: Some(PathBuf::from(
                    "/sys/fs/cgroup/kubepods.slice/kubepods-pod1234.slice/cri-containerd-abcd.scope"
                )),
                ..CgroupPaths::default()
            }
        );
    }

    #[test]
    fn reads_recorded_v1_files() {
        let root = testdata("v1");
        let paths = CgroupPaths {
            cpuacct: Some(root.join("cpuacct")),
            memory: Some(root.join("memory")),
            pids: Some(root.join("pids")),
            unified: None,
        };
        let stats = read_cgroup_stats(&paths).unwrap();
        assert_eq!(stats.cpu_usage_ns, 1_234_567_890_123);
        assert_eq!(stats.memory_usage, 52_428_800);
        assert_eq!(stats.working_set, 52_428_800 - 10_485_760);
        assert_eq!(stats.rss, 31_457_280);
        assert_eq!(stats.page_faults, 123_456);
        assert_eq!(stats.major_page_faults, 78);
        assert_eq!(
            stats.available,
            Some(134_217_728 - (52_428_800 - 10_485_760))
        );
        assert_eq!(stats.swap_usage, Some(4096));
        assert_eq!(stats.processes, Some(7));
        assert!(stats.timestamp_ns > 0);
    }

    #[test]
    fn v1_unlimited_memory_and_missing_files() {
        let root = testdata("v1");
        let paths = CgroupPaths {
            // memory-unlimited has only usage, stat and a PAGE_COUNTER_MAX limit.
            memory: Some(root.join("memory-unlimited")),
            cpuacct: Some(root.join("does-not-exist")),
            pids: None,
            unified: None,
        };
        let stats = read_cgroup_stats(&paths).unwrap();
        assert_eq!(stats.cpu_usage_ns, 0);
        assert_eq!(stats.memory_usage, 8_192_000);
        assert_eq!(stats.available, None);
        assert_eq!(stats.swap_usage, None);
        assert_eq!(stats.processes, None);
    }

    #[test]
    fn reads_recorded_v2_files() {
        let paths = CgroupPaths {
            unified: Some(testdata("v2")),
            ..CgroupPaths::default()
        };
        let stats = read_cgroup_stats(&paths).unwrap();
        assert_eq!(stats.cpu_usage_ns, 987_654_321_000);
        assert_eq!(stats.memory_usage, 41_943_040);
        assert_eq!(stats.working_set, 41_943_040 - 8_388_608);
        assert_eq!(stats.rss, 25_165_824);
        assert_eq!(stats.page_faults, 45_678);
        assert_eq!(stats.major_page_faults, 12);
        assert_eq!(
            stats.available,
            Some(268_435_456 - (41_943_040 - 8_388_608))
        );
        assert_eq!(stats.swap_usage, Some(0));
        assert_eq!(stats.processes, Some(3));
    }

    #[test]
    fn v2_max_is_no_limit() {
        let paths = CgroupPaths {
            unified: Some(testdata("v2-unlimited")),
            ..CgroupPaths::default()
        };
        let stats = read_cgroup_stats(&paths).unwrap();
        assert_eq!(stats.memory_usage, 4096);
        assert_eq!(stats.available, None);
        assert_eq!(stats.swap_usage, None);
    }

    #[test]
    fn reads_own_cgroup_on_this_host() {
        let paths = cgroup_paths_of(std::process::id() as i32).unwrap();
        assert!(
            paths.cpuacct.is_some() || paths.unified.is_some(),
            "no cpu accounting directory found: {paths:?}"
        );
        // Burn a little CPU so even a fresh cgroup has a non-zero counter.
        let mut x = 0u64;
        for i in 0..1_000_000u64 {
            x = x.wrapping_add(std::hint::black_box(i));
        }
        std::hint::black_box(x);
        let stats = read_cgroup_stats(&paths).unwrap();
        assert!(stats.cpu_usage_ns > 0, "{stats:?} from {paths:?}");
        assert!(stats.memory_usage > 0, "{stats:?} from {paths:?}");
        assert!(stats.working_set <= stats.memory_usage);
    }
}
