//! Reading processes' memory and CPU time from `/proc`, and finding helper processes
//! (crust-monitor, containerd-shim, conmon) by name.

use std::fs;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Memory of one process, from `/proc/PID/status` and `/proc/PID/smaps_rollup`, in kB.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Memory {
    /// Resident set size (`VmRSS`): anonymous + file-backed + shmem pages in RAM.
    pub vm_rss_kb: u64,
    /// Resident anonymous memory (`RssAnon`): what the process alone costs; shared
    /// libraries and the binary's text are file-backed and shared between instances.
    pub rss_anon_kb: u64,
    /// Resident file-backed memory (`RssFile`).
    pub rss_file_kb: u64,
    /// Proportional set size (`Pss`): shared pages divided among their users; 0 when
    /// smaps_rollup is not readable.
    pub pss_kb: u64,
}

/// CPU time of one process, in seconds, from `/proc/PID/stat`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct CpuTime {
    /// utime + stime of the process's own threads.
    pub own_s: f64,
    /// cutime + cstime: children it has waited for (CNI plugins, runc invocations).
    pub children_s: f64,
}

/// Reads the memory of `pid`.
pub fn memory(pid: u32) -> io::Result<Memory> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let mut m = Memory {
        vm_rss_kb: status_kb(&status, "VmRSS:"),
        rss_anon_kb: status_kb(&status, "RssAnon:"),
        rss_file_kb: status_kb(&status, "RssFile:"),
        pss_kb: 0,
    };
    // smaps_rollup walks the page tables: a few ms for a big daemon, so only here and
    // not in the sampler.
    if let Ok(rollup) = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
        m.pss_kb = status_kb(&rollup, "Pss:");
    }
    Ok(m)
}

/// Reads only `/proc/PID/status` (cheap enough to sample often).
pub fn memory_fast(pid: u32) -> io::Result<Memory> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(Memory {
        vm_rss_kb: status_kb(&status, "VmRSS:"),
        rss_anon_kb: status_kb(&status, "RssAnon:"),
        rss_file_kb: status_kb(&status, "RssFile:"),
        pss_kb: 0,
    })
}

/// The value of a `Key:   123 kB` line, 0 when absent (kernel threads have no VmRSS).
fn status_kb(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Reads the CPU time of `pid`.
pub fn cpu_time(pid: u32) -> io::Result<CpuTime> {
    parse_stat(
        &fs::read_to_string(format!("/proc/{pid}/stat"))?,
        clock_ticks(),
    )
    .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unexpected /proc/PID/stat"))
}

/// Parses `/proc/PID/stat`: fields 14–17 (utime, stime, cutime, cstime) in clock ticks,
/// counted after the `comm` field, which may itself hold spaces and parentheses.
fn parse_stat(stat: &str, ticks_per_s: f64) -> Option<CpuTime> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // after_comm starts at field 3 (state), so field N is at index N - 3.
    let tick = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(CpuTime {
        own_s: (tick(14)? + tick(15)?) as f64 / ticks_per_s,
        children_s: (tick(16)? + tick(17)?) as f64 / ticks_per_s,
    })
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`), 100 on every Linux in practice.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a constant of the C library; no memory is shared.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// Pids of running processes whose argv[0] file name or comm starts with `name`, and
/// whose command line contains `must_contain` when given. Zombies are left out: they
/// hold no memory.
pub fn find(name: &str, must_contain: Option<&str>) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // Processes may exit while we look: any read error means skip it.
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if cmdline.is_empty() {
            continue; // kernel threads and zombies
        }
        let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
        let argv0 = String::from_utf8_lossy(argv0);
        let base = Path::new(argv0.as_ref())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if !base.starts_with(name) && !comm.trim_end().starts_with(name) {
            continue;
        }
        if let Some(text) = must_contain {
            let joined = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if !joined.contains(text) {
                continue;
            }
        }
        pids.push(pid);
    }
    pids.sort_unstable();
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        let stat = "42 (a b) c)) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 7 3 20 0 1 0";
        let cpu = parse_stat(stat, 100.0).unwrap();
        assert_eq!(cpu.own_s, 3.0);
        assert_eq!(cpu.children_s, 0.1);
    }

    #[test]
    fn status_values_in_kb() {
        let status = "Name:\tx\nVmRSS:\t   1234 kB\nRssAnon:\t  56 kB\n";
        assert_eq!(status_kb(status, "VmRSS:"), 1234);
        assert_eq!(status_kb(status, "RssAnon:"), 56);
        assert_eq!(status_kb(status, "RssShmem:"), 0);
    }

    #[test]
    fn own_process_is_readable() {
        let me = std::process::id();
        assert!(memory(me).unwrap().vm_rss_kb > 0);
        assert!(cpu_time(me).is_ok());
        let exe = std::env::current_exe().unwrap();
        let name = exe.file_name().unwrap().to_string_lossy().into_owned();
        assert!(find(&name, None).contains(&me));
        assert!(!find(&name, Some("no such text \u{1}")).contains(&me));
    }
}
