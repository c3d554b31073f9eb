//! Resource usage for CRI's `ContainerStats` and `PodSandboxStats`.
//!
//! - [`cgroup`]: CPU, memory and process counters of a cgroup (v1, hybrid or v2).
//! - [`cpu`]: the CPU rate (`usage_nano_cores`) from successive samples.
//! - [`network`]: interface counters of a pod's network namespace.
//! - [`disk`]: a writable layer's bytes and inodes, walked at most once per interval.
//!
//! This module turns those readings into CRI messages; the daemon decides which cgroup,
//! process and directory belong to which container.

pub mod cgroup;
pub mod cpu;
pub mod disk;
pub mod network;

pub use cgroup::{CgroupLayout, CgroupPaths, CgroupStats, cgroup_paths_of, read_cgroup_stats};
pub use cpu::CpuSampler;
pub use disk::{DiskUsage, DiskUsageCache};
pub use network::InterfaceStats;

use crust_proto::cri;

/// The interface kubelet reports as the pod's own, as containerd and CRI-O choose it.
pub const DEFAULT_INTERFACE: &str = "eth0";

fn value(value: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value })
}

/// `CpuUsage` from a cgroup reading and the rate from a [`CpuSampler`].
pub fn cpu_usage(stats: &CgroupStats, nano_cores: Option<u64>) -> cri::CpuUsage {
    cri::CpuUsage {
        timestamp: stats.timestamp_ns,
        usage_core_nano_seconds: value(stats.cpu_usage_ns),
        usage_nano_cores: nano_cores.and_then(value),
    }
}

/// `MemoryUsage` from a cgroup reading; `available_bytes` only when a limit is set.
pub fn memory_usage(stats: &CgroupStats) -> cri::MemoryUsage {
    cri::MemoryUsage {
        timestamp: stats.timestamp_ns,
        working_set_bytes: value(stats.working_set),
        available_bytes: stats.available.and_then(value),
        usage_bytes: value(stats.memory_usage),
        rss_bytes: value(stats.rss),
        page_faults: value(stats.page_faults),
        major_page_faults: value(stats.major_page_faults),
    }
}

/// `SwapUsage` from a cgroup reading, if the kernel accounts swap.
pub fn swap_usage(stats: &CgroupStats) -> Option<cri::SwapUsage> {
    stats.swap_usage.map(|used| cri::SwapUsage {
        timestamp: stats.timestamp_ns,
        swap_available_bytes: None,
        swap_usage_bytes: value(used),
    })
}

/// `ProcessUsage` from a cgroup reading, if the pids controller is available.
pub fn process_usage(stats: &CgroupStats) -> Option<cri::ProcessUsage> {
    stats.processes.map(|count| cri::ProcessUsage {
        timestamp: stats.timestamp_ns,
        process_count: value(count),
    })
}

/// `FilesystemUsage` of a writable layer on the filesystem mounted at `mountpoint`.
pub fn filesystem_usage(disk: &DiskUsage, mountpoint: &str) -> cri::FilesystemUsage {
    cri::FilesystemUsage {
        timestamp: disk.timestamp_ns,
        fs_id: Some(cri::FilesystemIdentifier {
            mountpoint: mountpoint.to_owned(),
        }),
        used_bytes: value(disk.bytes),
        inodes_used: value(disk.inodes),
    }
}

/// A container's `ContainerStats`; `disk` is its writable layer, on `fs_mountpoint`.
pub fn container_stats(
    attributes: cri::ContainerAttributes,
    stats: &CgroupStats,
    nano_cores: Option<u64>,
    disk: Option<&DiskUsage>,
    fs_mountpoint: &str,
) -> cri::ContainerStats {
    cri::ContainerStats {
        attributes: Some(attributes),
        cpu: Some(cpu_usage(stats, nano_cores)),
        memory: Some(memory_usage(stats)),
        writable_layer: disk.map(|d| filesystem_usage(d, fs_mountpoint)),
        swap: swap_usage(stats),
    }
}

/// `NetworkUsage` with `eth0` (or else the first interface) as the default interface.
pub fn network_usage(interfaces: &[InterfaceStats], timestamp_ns: i64) -> cri::NetworkUsage {
    let default = interfaces
        .iter()
        .position(|i| i.name == DEFAULT_INTERFACE)
        .or((!interfaces.is_empty()).then_some(0));
    let convert = |i: &InterfaceStats| cri::NetworkInterfaceUsage {
        name: i.name.clone(),
        rx_bytes: value(i.rx_bytes),
        rx_errors: value(i.rx_errors),
        tx_bytes: value(i.tx_bytes),
        tx_errors: value(i.tx_errors),
    };
    cri::NetworkUsage {
        timestamp: timestamp_ns,
        default_interface: default.map(|d| convert(&interfaces[d])),
        interfaces: interfaces
            .iter()
            .enumerate()
            .filter(|(n, _)| Some(*n) != default)
            .map(|(_, i)| convert(i))
            .collect(),
    }
}

/// A pod's `LinuxPodSandboxStats` from its cgroup, network and containers' stats.
pub fn linux_pod_sandbox_stats(
    stats: &CgroupStats,
    nano_cores: Option<u64>,
    interfaces: Option<&[InterfaceStats]>,
    containers: Vec<cri::ContainerStats>,
) -> cri::LinuxPodSandboxStats {
    cri::LinuxPodSandboxStats {
        cpu: Some(cpu_usage(stats, nano_cores)),
        memory: Some(memory_usage(stats)),
        network: interfaces.map(|i| network_usage(i, stats.timestamp_ns)),
        process: process_usage(stats),
        containers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CgroupStats {
        CgroupStats {
            cpu_usage_ns: 5_000,
            memory_usage: 100,
            working_set: 80,
            rss: 60,
            page_faults: 7,
            major_page_faults: 1,
            available: Some(20),
            swap_usage: Some(4096),
            processes: Some(3),
            timestamp_ns: 42,
        }
    }

    fn iface(name: &str, rx: u64) -> InterfaceStats {
        InterfaceStats {
            name: name.into(),
            rx_bytes: rx,
            ..InterfaceStats::default()
        }
    }

    #[test]
    fn container_stats_fill_every_field() {
        let attributes = cri::ContainerAttributes {
            id: "abcd".into(),
            metadata: Some(cri::ContainerMetadata {
                name: "app".into(),
                attempt: 1,
            }),
            ..Default::default()
        };
        let disk = DiskUsage {
            bytes: 8192,
            inodes: 5,
            timestamp_ns: 40,
        };
        let stats = container_stats(
            attributes,
            &sample(),
            Some(250),
            Some(&disk),
            "/var/lib/crust",
        );
        assert_eq!(stats.attributes.unwrap().id, "abcd");
        let cpu = stats.cpu.unwrap();
        assert_eq!(
            (
                cpu.timestamp,
                cpu.usage_core_nano_seconds,
                cpu.usage_nano_cores
            ),
            (42, value(5_000), value(250))
        );
        let memory = stats.memory.unwrap();
        assert_eq!(memory.working_set_bytes, value(80));
        assert_eq!(memory.available_bytes, value(20));
        assert_eq!(memory.usage_bytes, value(100));
        assert_eq!(memory.rss_bytes, value(60));
        assert_eq!(
            (memory.page_faults, memory.major_page_faults),
            (value(7), value(1))
        );
        assert_eq!(stats.swap.unwrap().swap_usage_bytes, value(4096));
        let layer = stats.writable_layer.unwrap();
        assert_eq!(layer.fs_id.unwrap().mountpoint, "/var/lib/crust");
        assert_eq!(
            (layer.used_bytes, layer.inodes_used, layer.timestamp),
            (value(8192), value(5), 40)
        );
    }

    #[test]
    fn unknown_values_stay_unset() {
        let cg = CgroupStats {
            available: None,
            swap_usage: None,
            processes: None,
            ..sample()
        };
        let stats = container_stats(Default::default(), &cg, None, None, "/");
        assert_eq!(stats.cpu.unwrap().usage_nano_cores, None);
        assert_eq!(stats.memory.unwrap().available_bytes, None);
        assert_eq!(stats.swap, None);
        assert_eq!(stats.writable_layer, None);
        assert_eq!(
            linux_pod_sandbox_stats(&cg, None, None, Vec::new()).process,
            None
        );
    }

    #[test]
    fn eth0_is_the_default_interface() {
        let usage = network_usage(&[iface("net1", 1), iface("eth0", 2), iface("net2", 3)], 9);
        assert_eq!(usage.timestamp, 9);
        assert_eq!(usage.default_interface.unwrap().rx_bytes, value(2));
        let rest: Vec<_> = usage.interfaces.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(rest, ["net1", "net2"]);
    }

    #[test]
    fn first_interface_without_eth0() {
        let usage = network_usage(&[iface("ens3", 1), iface("net1", 2)], 9);
        assert_eq!(usage.default_interface.unwrap().name, "ens3");
        assert_eq!(usage.interfaces.len(), 1);
        let empty = network_usage(&[], 9);
        assert_eq!((empty.default_interface, empty.interfaces.len()), (None, 0));
    }

    #[test]
    fn pod_sandbox_stats_carry_network_and_processes() {
        let pod =
            linux_pod_sandbox_stats(&sample(), Some(1), Some(&[iface("eth0", 5)]), Vec::new());
        assert_eq!(
            pod.network.unwrap().default_interface.unwrap().rx_bytes,
            value(5)
        );
        assert_eq!(pod.process.unwrap().process_count, value(3));
        assert_eq!(pod.cpu.unwrap().usage_nano_cores, value(1));
    }
}
