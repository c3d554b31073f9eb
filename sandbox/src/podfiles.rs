//! Files a pod's containers mount: hostname, resolv.conf, hosts, and the pod-wide
//! /dev/shm (a tmpfs of its own unless the pod shares the host's IPC namespace).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crust_proto::cri;
use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// Size of a pod's /dev/shm, as Docker and containerd default it.
const SHM_SIZE: &str = "size=65536k";

/// Where a sandbox's files live.
#[derive(Debug, Clone)]
pub struct PodFiles {
    /// `<root>/sandboxes/<id>`: hostname, resolv.conf, hosts.
    pub dir: PathBuf,
    /// `<state>/sandboxes/<id>/shm`: the tmpfs mountpoint.
    pub shm: PathBuf,
}

impl PodFiles {
    /// The paths for sandbox `id`.
    pub fn new(root: &Path, state: &Path, id: &str) -> Self {
        PodFiles {
            dir: root.join("sandboxes").join(id),
            shm: state.join("sandboxes").join(id).join("shm"),
        }
    }

    /// The hostname file.
    pub fn hostname(&self) -> PathBuf {
        self.dir.join("hostname")
    }

    /// The resolv.conf file.
    pub fn resolv_conf(&self) -> PathBuf {
        self.dir.join("resolv.conf")
    }

    /// The hosts file.
    pub fn hosts(&self) -> PathBuf {
        self.dir.join("hosts")
    }

    /// Writes hostname, resolv.conf and hosts. `host_network` pods get the host's files.
    pub fn write(
        &self,
        hostname: &str,
        dns: Option<&cri::DnsConfig>,
        host_network: bool,
    ) -> io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        write_atomic(&self.hostname(), format!("{hostname}\n").as_bytes())?;
        let resolv = match dns
            .filter(|d| !d.servers.is_empty() || !d.searches.is_empty() || !d.options.is_empty())
        {
            Some(d) => resolv_conf(d),
            None => fs::read("/etc/resolv.conf").unwrap_or_default(),
        };
        write_atomic(&self.resolv_conf(), &resolv)?;
        let hosts = if host_network {
            fs::read("/etc/hosts").unwrap_or_else(|_| default_hosts(hostname).into_bytes())
        } else {
            default_hosts(hostname).into_bytes()
        };
        write_atomic(&self.hosts(), &hosts)?;
        // The renames made durable too: the pod outlives a power loss on the
        // persistent root, and its containers bind-mount these files again.
        fs::File::open(&self.dir)?.sync_all()
    }

    /// Mounts the pod's /dev/shm tmpfs.
    pub fn mount_shm(&self) -> io::Result<()> {
        fs::create_dir_all(&self.shm)?;
        if is_mountpoint(&self.shm) {
            return Ok(());
        }
        mount(
            Some("shm"),
            &self.shm,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some(format!("mode=1777,{SHM_SIZE}").as_str()),
        )
        .map_err(io::Error::from)
    }

    /// Unmounts the shm tmpfs; absent is fine.
    pub fn unmount_shm(&self) -> io::Result<()> {
        while is_mountpoint(&self.shm) {
            umount2(&self.shm, MntFlags::MNT_DETACH).map_err(io::Error::from)?;
        }
        Ok(())
    }

    /// Unmounts and deletes everything; absent is fine.
    pub fn remove(&self) -> io::Result<()> {
        self.unmount_shm()?;
        if let Some(parent) = self.shm.parent() {
            remove_dir_all_if_exists(parent)?;
        }
        remove_dir_all_if_exists(&self.dir)
    }
}

fn remove_dir_all_if_exists(p: &Path) -> io::Result<()> {
    match fs::remove_dir_all(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Whether `path` is a mountpoint, from /proc/self/mountinfo.
pub fn is_mountpoint(path: &Path) -> bool {
    crust_runtime::mountinfo::is_mount_point(path)
}

fn resolv_conf(d: &cri::DnsConfig) -> Vec<u8> {
    let mut out = String::new();
    if !d.searches.is_empty() {
        out.push_str(&format!("search {}\n", d.searches.join(" ")));
    }
    for s in &d.servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !d.options.is_empty() {
        out.push_str(&format!("options {}\n", d.options.join(" ")));
    }
    out.into_bytes()
}

fn default_hosts(hostname: &str) -> String {
    let mut s = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\n\
         fe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    if !hostname.is_empty() {
        s.push_str(&format!("127.0.1.1\t{hostname}\n"));
    }
    s
}

/// Writes `path` through a synced temporary file and a rename. The file is created anew
/// (`O_EXCL`, so a symlink or file planted at the temporary name is never followed or
/// reused) with mode 0644 set explicitly: every container user reads these files,
/// whatever crustd's umask.
fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_CLOEXEC)
        .open(&tmp)?;
    file.set_permissions(fs::Permissions::from_mode(0o644))?;
    file.write_all(data)?;
    // Durable before the rename makes it the file, never an empty one after a crash.
    file.sync_data()?;
    drop(file);
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_from_dns_config() {
        let d = cri::DnsConfig {
            servers: vec!["10.0.0.10".into(), "10.0.0.11".into()],
            searches: vec!["ns.svc.cluster.local".into(), "svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            String::from_utf8(resolv_conf(&d)).unwrap(),
            "search ns.svc.cluster.local svc.cluster.local\nnameserver 10.0.0.10\nnameserver 10.0.0.11\noptions ndots:5\n"
        );
    }

    #[test]
    fn files_are_written_and_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let f = PodFiles::new(&tmp.path().join("root"), &tmp.path().join("state"), "abc");
        f.write("pod-a", None, false).unwrap();
        assert_eq!(fs::read_to_string(f.hostname()).unwrap(), "pod-a\n");
        assert!(fs::read_to_string(f.hosts()).unwrap().contains("pod-a"));
        f.mount_shm().unwrap();
        assert!(is_mountpoint(&f.shm));
        f.remove().unwrap();
        assert!(!is_mountpoint(&f.shm));
        assert!(!f.dir.exists());
        assert!(!tmp.path().join("state/sandboxes/abc").exists());
    }
}
