//! Killing every process of a container and removing its cgroups, for the embedded
//! handler, without libcgroups.
//!
//! libcgroups builds a cgroup manager for every kill-all and delete, and on a v1 or
//! hybrid host that reads the whole of `/proc/self/mountinfo` once per controller.
//! crustd's mount table holds every container's rootfs, so with 5,000 exited
//! containers that was most of crustd's CPU, and it made creating them quadratic. The
//! cgroup mounts do not move while crustd runs: they are read once
//! ([`CgroupLayout::host`]), and a container's directories are its cgroupfs path
//! joined under each hierarchy. Only the cgroupfs driver goes this way; systemd
//! `slice:prefix:name` paths stay with libcgroups.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::stats::cgroup::{CgroupLayout, cgroupfs_relative};

/// How many times removing a cgroup is retried while its last processes leave (they
/// leave at exit, before they are reaped) ...
const REMOVE_ATTEMPTS: u32 = 40;
/// ... and how long apart.
const REMOVE_PAUSE: Duration = Duration::from_millis(5);

/// How many times, a millisecond apart, the freezer is checked for `FROZEN`.
const FREEZE_CHECKS: u32 = 50;

/// The existing directories of cgroupfs path `cgroup_path` (absolute, as crust's
/// specs give it) in every mounted hierarchy; `None` for a path crust does not make
/// ([`cgroupfs_relative`]: systemd's form, relative, the root, or with `..`).
pub fn dirs(cgroup_path: &Path) -> Option<Vec<PathBuf>> {
    let text = cgroup_path.to_str()?;
    cgroupfs_relative(text)?;
    Some(
        CgroupLayout::host()
            .dirs_of(text)
            .into_iter()
            .filter(|d| d.is_dir())
            .collect(),
    )
}

/// Sends `signal` to every process in `dirs` (the container's cgroups), with the v1
/// freezer holding them still meanwhile, as runc and libcontainer do, so that none
/// forks out of reach between the listing and the signal.
pub fn kill_all(dirs: &[PathBuf], signal: i32) -> io::Result<()> {
    let freezer = dirs
        .iter()
        .find(|d| d.join("freezer.state").exists())
        .map(|d| d.join("freezer.state"));
    if let Some(state) = &freezer {
        freeze(state);
    }
    let result = pids(dirs).and_then(|pids| {
        for pid in pids {
            // SAFETY: kill(2) with plain integers; ESRCH (already gone) is success.
            if unsafe { libc::kill(pid, signal) } != 0 {
                let err = io::Error::last_os_error();
                if err.raw_os_error() != Some(libc::ESRCH) {
                    return Err(err);
                }
            }
        }
        Ok(())
    });
    if let Some(state) = &freezer {
        let _ = std::fs::write(state, "THAWED");
    }
    result
}

/// Asks the v1 freezer to freeze and waits a little for it: freezing is asynchronous
/// (`FREEZING` until every task stopped), and a task in uninterruptible sleep may hold
/// it up, so the wait is bounded and the kill goes on regardless.
fn freeze(state: &Path) {
    if std::fs::write(state, "FROZEN").is_err() {
        return;
    }
    for _ in 0..FREEZE_CHECKS {
        match std::fs::read_to_string(state) {
            Ok(now) if now.trim() != "FREEZING" => return,
            Ok(_) => std::thread::sleep(Duration::from_millis(1)),
            Err(_) => return,
        }
    }
}

/// The processes of the cgroup: its `cgroup.procs` and its descendants', read from the
/// first hierarchy that has them (every hierarchy holds the same processes).
fn pids(dirs: &[PathBuf]) -> io::Result<Vec<i32>> {
    let Some(dir) = dirs.iter().find(|d| d.join("cgroup.procs").exists()) else {
        return Ok(Vec::new());
    };
    let mut pids = Vec::new();
    let mut pending = vec![dir.clone()];
    while let Some(dir) = pending.pop() {
        match std::fs::read_to_string(dir.join("cgroup.procs")) {
            Ok(text) => pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(entry.path());
            }
        }
    }
    Ok(pids)
}

/// Removes the container's cgroups, children first. What still runs in them is
/// killed first, as libcgroups does: in a pod that shares one PID namespace, a process
/// exec'd into a container outlives its init. The wait for killed processes to leave
/// is brief; an absent directory is fine.
pub fn remove(dirs: &[PathBuf]) -> io::Result<()> {
    for pid in pids(dirs)? {
        // SAFETY: kill(2) with plain integers; a process already gone is fine.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    for dir in dirs {
        remove_tree(dir)?;
    }
    Ok(())
}

fn remove_tree(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path())?;
        }
    }
    let mut attempt = 0;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < REMOVE_ATTEMPTS => {
                attempt += 1;
                std::thread::sleep(REMOVE_PAUSE);
            }
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_cgroupfs_paths_crust_makes() {
        assert!(dirs(Path::new("system.slice:crust:abc")).is_none());
        assert!(dirs(Path::new("relative/path")).is_none());
        assert!(dirs(Path::new("/crust/../etc")).is_none());
        assert!(
            dirs(Path::new("/")).is_none(),
            "the root holds every process"
        );
        let none = dirs(Path::new("/crust-test-no-such-cgroup/x")).unwrap();
        assert!(none.is_empty(), "{none:?}");
    }

    #[test]
    fn pids_walk_children_and_removal_goes_children_first() {
        // Plain directories stand in for cgroups: the walk and the order are the same.
        let base = tempfile::tempdir().unwrap();
        let top = base.path().join("c");
        std::fs::create_dir_all(top.join("child")).unwrap();
        std::fs::write(top.join("cgroup.procs"), "10\n11\n").unwrap();
        std::fs::write(top.join("child/cgroup.procs"), "12\n").unwrap();
        let mut got = pids(std::slice::from_ref(&top)).unwrap();
        got.sort();
        assert_eq!(got, [10, 11, 12]);
        assert!(pids(&[base.path().join("absent")]).unwrap().is_empty());
        // cgroupfs directories hold only pseudo files, which rmdir ignores; here the
        // files are real, so clear them first.
        std::fs::remove_file(top.join("cgroup.procs")).unwrap();
        std::fs::remove_file(top.join("child/cgroup.procs")).unwrap();
        remove(&[top.clone(), base.path().join("absent")]).unwrap();
        assert!(!top.exists());
    }
}
