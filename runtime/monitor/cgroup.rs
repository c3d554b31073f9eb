//! Whether the OOM killer struck in the container's memory cgroup.
//!
//! Right after create, the monitor reads the container process's `/proc/<pid>/cgroup`,
//! finds its memory cgroup (the v1 `memory` controller's line, else the v2 `0::` line),
//! locates that hierarchy's mount in `/proc/self/mountinfo`, and reads the cgroup's
//! `oom_kill` counter: `memory.oom_control` on v1, `memory.events` on v2. When the
//! container has exited, a counter that grew means a process in it was OOM-killed, which
//! is what kubelet shows as `OOMKilled`. The cgroup still exists then: the runtime
//! removes it at `delete`, after the monitor is done.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use crust_util::mountinfo::Mount;

/// The counter file of one memory cgroup and its value when the watch began.
#[derive(Debug)]
pub struct OomWatch {
    file: PathBuf,
    start: u64,
}

impl OomWatch {
    /// Watches the memory cgroup of `pid`; `None` when it has none we can read (no
    /// memory controller mounted, a kernel without the `oom_kill` counter).
    pub fn of_process(pid: i32) -> Option<OomWatch> {
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        // A node's mount table runs to thousands of lines (every container's rootfs,
        // shm and netns); read it a line at a time so that it never sits in the
        // monitor's heap, which stays resident for the container's whole life.
        let mountinfo = std::fs::File::open("/proc/self/mountinfo").ok()?;
        let file = counter_file(&cgroups, BufReader::with_capacity(4096, mountinfo))?;
        let start = read_oom_kills(&file)?;
        Some(OomWatch { file, start })
    }

    /// Whether the counter grew since the watch began.
    pub fn oom_killed(&self) -> bool {
        read_oom_kills(&self.file).is_some_and(|now| now > self.start)
    }
}

fn read_oom_kills(file: &Path) -> Option<u64> {
    oom_kills(&std::fs::read_to_string(file).ok()?)
}

/// The `oom_kill N` line of `memory.oom_control` (v1) or `memory.events` (v2).
fn oom_kills(text: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == "oom_kill").then(|| value.trim().parse().ok())?
    })
}

/// The counter file of the memory cgroup named in `cgroups` (a `/proc/<pid>/cgroup`),
/// found through the mounts in `mountinfo`: v1 when the memory controller is mounted
/// there, else v2.
fn counter_file(cgroups: &str, mut mountinfo: impl BufRead) -> Option<PathBuf> {
    let mut v1 = None;
    let mut v2 = None;
    for line in cgroups.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if controllers.is_empty() {
            v2 = Some(path);
        } else if controllers.split(',').any(|c| c == "memory") {
            v1 = Some(path);
        }
    }
    let mut mounts = Vec::new();
    let mut line = String::new();
    while matches!(mountinfo.read_line(&mut line), Ok(n) if n > 0) {
        if let Some(mount) = Mount::parse(line.trim_end())
            && mount.fstype.starts_with("cgroup")
        {
            mounts.push(mount);
        }
        line.clear();
    }
    if let Some(path) = v1
        && let Some(mount) = mounts
            .iter()
            .find(|m| m.fstype == "cgroup" && m.super_options.split(',').any(|o| o == "memory"))
        && let Some(dir) = locate(mount, path)
    {
        return Some(dir.join("memory.oom_control"));
    }
    let path = v2?;
    let mount = mounts.iter().find(|m| m.fstype == "cgroup2")?;
    Some(locate(mount, path)?.join("memory.events"))
}

/// Where cgroup `path` is under `mount`, if the mount shows it.
fn locate(mount: &Mount, path: &str) -> Option<PathBuf> {
    let relative = if mount.root == "/" {
        path
    } else {
        let rest = path.strip_prefix(mount.root.as_str())?;
        if !rest.is_empty() && !rest.starts_with('/') {
            return None;
        }
        rest
    };
    Some(Path::new(&mount.mount_point).join(relative.trim_start_matches('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTS: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn v1_memory_controller_wins_in_a_hybrid_setup() {
        let cgroups = "9:name=systemd:/\n4:memory:/crust-test/c1\n1:cpu:/\n0::/crust-test/c1\n";
        assert_eq!(
            counter_file(cgroups, HYBRID_MOUNTS.as_bytes()),
            Some("/sys/fs/cgroup/memory/crust-test/c1/memory.oom_control".into())
        );
        // Memory co-mounted with other controllers.
        let comounted = "12:cpu,memory:/kubepods/pod1/c1\n";
        let mounts = "35 31 0:32 / /sys/fs/cgroup/cpu,memory rw - cgroup cgroup rw,cpu,memory\n";
        assert_eq!(
            counter_file(comounted, mounts.as_bytes()),
            Some("/sys/fs/cgroup/cpu,memory/kubepods/pod1/c1/memory.oom_control".into())
        );
    }

    #[test]
    fn v2_when_there_is_no_memory_controller_line_or_mount() {
        let mounts = "25 22 0:23 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            counter_file("0::/kubepods/burstable/pod1/c1\n", mounts.as_bytes()),
            Some("/sys/fs/cgroup/kubepods/burstable/pod1/c1/memory.events".into())
        );
        // A v1 line whose hierarchy is not mounted here falls back to v2.
        assert_eq!(
            counter_file("4:memory:/c1\n0::/c1\n", mounts.as_bytes()),
            Some("/sys/fs/cgroup/c1/memory.events".into())
        );
        assert_eq!(counter_file("4:memory:/c1\n", mounts.as_bytes()), None);
    }

    #[test]
    fn mount_roots_and_escapes() {
        // A mount of a sub-cgroup (inside a cgroup namespace, or a bind mount).
        let mounts = "41 31 0:38 /outer /sys/fs/cgroup\\040x rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            counter_file("0::/outer/c1\n", mounts.as_bytes()),
            Some("/sys/fs/cgroup x/c1/memory.events".into())
        );
        assert_eq!(
            counter_file("0::/outer\n", mounts.as_bytes()),
            Some("/sys/fs/cgroup x/memory.events".into())
        );
        assert_eq!(counter_file("0::/outerwear/c1\n", mounts.as_bytes()), None);
        assert_eq!(counter_file("0::/other\n", mounts.as_bytes()), None);
    }

    #[test]
    fn reads_the_oom_kill_counter() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(oom_kills(v1), Some(3));
        let v2 = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(oom_kills(v2), Some(1));
        assert_eq!(oom_kills("oom_kill_disable 0\nunder_oom 0\n"), None);
    }

    #[test]
    fn watches_its_own_cgroup() {
        // The test process is in some memory cgroup on any Linux with cgroups; its
        // counter exists and has not grown within this test.
        let watch = OomWatch::of_process(std::process::id() as i32).unwrap();
        assert!(watch.file.exists(), "{:?}", watch.file);
        assert!(!watch.oom_killed());
    }
}
