//! The IPC and UTS namespaces of a pod that runs no pause process (CRI-O's
//! `drop_infra_ctr`), pinned by bind mounts the way its network namespace is.
//!
//! A pause process exists to hold the pod's namespaces and, with a shared PID
//! namespace, to be its init. Without a shared PID namespace the namespaces need no
//! process: a short-lived thread unshares them, gives the UTS namespace the pod's
//! hostname, writes the pod's sysctls (from inside the pod's network namespace too,
//! which the thread joins first: `/proc/sys` answers for the namespaces of the thread
//! that opens it), and its namespace files are bind-mounted onto
//! `<state>/ipcns/<id>` and `<state>/utsns/<id>`. The containers join those paths.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;

/// What to make for one pod.
pub(crate) struct PodNamespaces<'a> {
    /// Where to pin the IPC namespace; `None`: the pod uses the host's.
    pub(crate) ipc: Option<&'a Path>,
    /// Where to pin the UTS namespace, and the hostname; `None`: the host's.
    pub(crate) uts: Option<(&'a Path, &'a str)>,
    /// The pod's pinned network namespace, joined for its sysctls.
    pub(crate) netns: Option<&'a Path>,
    /// The pod's sysctls, already checked against its namespaces.
    pub(crate) sysctls: &'a BTreeMap<String, String>,
}

/// Makes and pins the namespaces. Blocking. On error nothing stays pinned.
pub(crate) fn create(ns: &PodNamespaces<'_>) -> io::Result<()> {
    let result = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("crust-podns".into())
            .spawn_scoped(scope, || in_new_namespaces(ns))?
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
    });
    if result.is_err() {
        remove(ns.ipc.into_iter().chain(ns.uts.map(|(p, _)| p)));
    }
    result
}

/// Runs on a thread of its own, which ends with it: its namespaces never reach other
/// work.
fn in_new_namespaces(ns: &PodNamespaces<'_>) -> io::Result<()> {
    if let Some(path) = ns.netns {
        let file = File::open(path)?;
        nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)?;
    }
    let mut flags = CloneFlags::empty();
    if ns.ipc.is_some() {
        flags |= CloneFlags::CLONE_NEWIPC;
    }
    if ns.uts.is_some() {
        flags |= CloneFlags::CLONE_NEWUTS;
    }
    nix::sched::unshare(flags)?;
    if let Some((_, hostname)) = ns.uts
        && !hostname.is_empty()
    {
        nix::unistd::sethostname(hostname)?;
    }
    for (key, value) in ns.sysctls {
        let path = sysctl_path(key);
        std::fs::write(&path, value)
            .map_err(|e| io::Error::new(e.kind(), format!("sysctl {key}={value}: {e}")))?;
    }
    let tid = nix::unistd::gettid();
    for (kind, target) in [("ipc", ns.ipc), ("uts", ns.uts.map(|(p, _)| p))] {
        let Some(target) = target else { continue };
        let source = PathBuf::from(format!("/proc/self/task/{tid}/ns/{kind}"));
        crust_cni::netns::pin(&source, target).map_err(io::Error::other)?;
    }
    Ok(())
}

/// `/proc/sys/<key with dots as slashes>`. Keys are checked names (validate_sysctls);
/// a slash in one stands for a dot in a component (`net.ipv4.conf.eth0/1.forwarding`),
/// as sysctl(8) reads it.
fn sysctl_path(key: &str) -> PathBuf {
    let components: Vec<String> = key.split('.').map(|c| c.replace('/', ".")).collect();
    Path::new("/proc/sys").join(components.join("/"))
}

/// Unpins what is pinned at `paths` and removes the files. Blocking; absent is fine.
pub(crate) fn remove<'a>(paths: impl IntoIterator<Item = &'a Path>) -> Vec<String> {
    paths
        .into_iter()
        .filter_map(|p| crust_cni::netns::remove(p).err().map(|e| e.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_keys_become_proc_paths() {
        assert_eq!(
            sysctl_path("kernel.shm_rmid_forced"),
            Path::new("/proc/sys/kernel/shm_rmid_forced")
        );
        assert_eq!(
            sysctl_path("net.ipv4.conf.eth0/1.forwarding"),
            Path::new("/proc/sys/net/ipv4/conf/eth0.1/forwarding")
        );
    }

    #[test]
    fn pinned_namespaces_hold_the_hostname_and_sysctls_and_go_away() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (ipc, uts) = (dir.path().join("ipcns/p"), dir.path().join("utsns/p"));
        let sysctls = BTreeMap::from([("kernel.shm_rmid_forced".to_string(), "1".to_string())]);
        create(&PodNamespaces {
            ipc: Some(&ipc),
            uts: Some((&uts, "podname")),
            netns: None,
            sysctls: &sysctls,
        })
        .unwrap();
        let seen = std::thread::spawn({
            let (ipc, uts) = (ipc.clone(), uts.clone());
            move || {
                nix::sched::setns(File::open(&uts).unwrap(), CloneFlags::CLONE_NEWUTS).unwrap();
                nix::sched::setns(File::open(&ipc).unwrap(), CloneFlags::CLONE_NEWIPC).unwrap();
                let host = nix::unistd::gethostname().unwrap();
                let forced = std::fs::read_to_string("/proc/sys/kernel/shm_rmid_forced").unwrap();
                (host.into_string().unwrap(), forced.trim().to_string())
            }
        })
        .join()
        .unwrap();
        assert_eq!(seen, ("podname".to_string(), "1".to_string()));
        assert_ne!(
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap()
                .trim(),
            "podname"
        );
        assert!(remove([ipc.as_path(), uts.as_path()]).is_empty());
        assert!(!ipc.exists() && !uts.exists());
        for d in ["ipcns", "utsns"] {
            let p = dir.path().join(d);
            while nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH).is_ok() {}
        }
    }

    #[test]
    fn a_bad_sysctl_pins_nothing() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let ipc = dir.path().join("ipcns/p");
        let sysctls = BTreeMap::from([("kernel.no_such_knob".to_string(), "1".to_string())]);
        let err = create(&PodNamespaces {
            ipc: Some(&ipc),
            uts: None,
            netns: None,
            sysctls: &sysctls,
        })
        .unwrap_err();
        assert!(err.to_string().contains("no_such_knob"), "{err}");
        assert!(!ipc.exists());
        let p = dir.path().join("ipcns");
        while nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH).is_ok() {}
    }
}
