//! A private CNI network for one test: a bridge, a subnet and an IPAM store of its
//! own, written into the daemon's config directory. Dropping it deletes the bridge.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A bridge network written as a conflist.
pub struct TestNetwork {
    /// The bridge interface name.
    pub bridge: String,
    /// The first three octets of the /24, e.g. "10.123.4".
    pub prefix: String,
    /// host-local's data directory.
    pub ipam_dir: PathBuf,
}

impl TestNetwork {
    /// Writes `10-test.conflist` into `conf_dir` with bridge, host-local, portmap and
    /// loopback, plus `extra` plugins (JSON objects) appended to the list.
    pub fn create(conf_dir: &Path, state_dir: &Path, extra: &[&str]) -> TestNetwork {
        let mut plugins = vec![r#"{"type":"loopback"}"#];
        plugins.extend_from_slice(extra);
        Self::create_with(conf_dir, state_dir, &plugins)
    }

    /// Like [`TestNetwork::create`] but with only bridge, host-local and portmap before
    /// `extra`: no loopback plugin, as in conflists that leave `lo` to the runtime.
    pub fn create_with(conf_dir: &Path, state_dir: &Path, extra: &[&str]) -> TestNetwork {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let bridge = format!("crb{:05x}{:x}", pid & 0xfffff, n & 0xf);
        // Unique per process and test: 10.(64 + pid % 160).(n).0/24.
        let prefix = format!("10.{}.{}", 64 + pid % 160, (n * 7 + pid / 160) % 250 + 1);
        let ipam_dir = state_dir.join(format!("ipam-{n}"));
        let mut plugins = vec![
            format!(
                r#"{{"type":"bridge","bridge":"{bridge}","isGateway":true,"ipMasq":false,"hairpinMode":true,
                   "ipam":{{"type":"host-local","dataDir":"{}","ranges":[[{{"subnet":"{prefix}.0/24"}}]]}}}}"#,
                ipam_dir.display()
            ),
            r#"{"type":"portmap","capabilities":{"portMappings":true}}"#.to_string(),
        ];
        plugins.extend(extra.iter().map(|s| s.to_string()));
        let conf = format!(
            r#"{{"cniVersion":"1.0.0","name":"test-{bridge}","plugins":[{}]}}"#,
            plugins.join(",")
        );
        fs::write(conf_dir.join("10-test.conflist"), conf).unwrap();
        TestNetwork {
            bridge,
            prefix,
            ipam_dir,
        }
    }

    /// The bridge's (gateway) address.
    pub fn gateway(&self) -> String {
        format!("{}.1", self.prefix)
    }

    /// IP reservations host-local still holds.
    pub fn reservations(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Ok(rd) = fs::read_dir(&self.ipam_dir) {
            for net in rd.flatten() {
                if let Ok(files) = fs::read_dir(net.path()) {
                    for f in files.flatten() {
                        let name = f.file_name().to_string_lossy().into_owned();
                        if name.starts_with(&self.prefix) {
                            out.push(name);
                        }
                    }
                }
            }
        }
        out
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

/// Runs a command in a network namespace (by its pinned path) and returns stdout.
pub fn in_netns(netns: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(args)
        .output()
        .expect("nsenter");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// The veths enslaved to `bridge`: a test's own, whatever other tests run beside it.
pub fn veths_on(bridge: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show", "master", bridge])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

/// Mount points (from /proc/self/mountinfo) under `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let prefix = dir.display().to_string();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}
