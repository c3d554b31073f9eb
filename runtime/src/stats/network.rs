//! Interface counters of a pod's network namespace.
//!
//! `/proc/<pid>/net/dev` shows the interfaces of the network namespace `pid` is in, so
//! reading it for any process of the pod (the pause process) gives the pod's counters
//! without `setns`.

use std::fs;
use std::io;
use std::path::Path;

/// Cumulative counters of one network interface.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceStats {
    /// Interface name, such as `eth0`.
    pub name: String,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Bytes transmitted.
    pub tx_bytes: u64,
    /// Transmit errors.
    pub tx_errors: u64,
}

/// Reads the interfaces (except `lo`) of the network namespace of `pid`.
pub fn read_interfaces(pid: i32) -> io::Result<Vec<InterfaceStats>> {
    read_net_dev(Path::new(&format!("/proc/{pid}/net/dev")))
}

/// Reads a file in `/proc/net/dev` format, skipping `lo`.
pub fn read_net_dev(path: &Path) -> io::Result<Vec<InterfaceStats>> {
    let text = fs::read_to_string(path)
        .map_err(|e| io::Error::new(e.kind(), format!("read {}: {e}", path.display())))?;
    Ok(parse_net_dev(&text))
}

/// Parses `/proc/net/dev` text, skipping `lo` and the two header lines.
pub fn parse_net_dev(text: &str) -> Vec<InterfaceStats> {
    text.lines()
        .filter_map(|line| {
            // Old kernels glue large counters to the colon (`eth0:123`): split on it.
            let (name, counters) = line.split_once(':')?;
            let name = name.trim();
            let fields: Vec<u64> = counters
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            // Receive: bytes packets errs drop fifo frame compressed multicast;
            // transmit: bytes packets errs drop fifo colls carrier compressed.
            if name == "lo" || fields.len() < 16 {
                return None;
            }
            Some(InterfaceStats {
                name: name.to_owned(),
                rx_bytes: fields[0],
                rx_errors: fields[2],
                tx_bytes: fields[8],
                tx_errors: fields[10],
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_recorded_net_dev() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/stats/testdata/net_dev");
        let interfaces = read_net_dev(&path).unwrap();
        assert_eq!(
            interfaces,
            [
                InterfaceStats {
                    name: "eth0".into(),
                    rx_bytes: 123_456_789,
                    rx_errors: 3,
                    tx_bytes: 98_765_432,
                    tx_errors: 1,
                },
                InterfaceStats {
                    name: "net1".into(),
                    rx_bytes: 4_294_967_296,
                    rx_errors: 0,
                    tx_bytes: 2048,
                    tx_errors: 0,
                },
            ]
        );
    }

    #[test]
    fn reads_own_network_namespace() {
        // Parse one snapshot: other tests on this host add and remove veths meanwhile.
        let text = fs::read_to_string("/proc/self/net/dev").unwrap();
        let interfaces = parse_net_dev(&text);
        assert!(interfaces.iter().all(|i| i.name != "lo"));
        let listed = text.lines().filter(|l| l.contains(':')).count();
        let has_lo = text.lines().any(|l| l.trim_start().starts_with("lo:"));
        assert_eq!(interfaces.len(), listed - usize::from(has_lo), "{text}");
        let by_pid = read_interfaces(std::process::id() as i32).unwrap();
        assert!(by_pid.iter().all(|i| i.name != "lo"));
        if let Some(eth0) = by_pid.iter().find(|i| i.name == "eth0") {
            assert!(eth0.rx_bytes > 0, "{eth0:?}");
        }
    }
}
