//! The write path of the metadata store, as every crate that owns tables shares it.
//!
//! A durable redb commit costs an fsync (milliseconds on a busy disk); the pod-start
//! path pays at most one per CRI call. What a call learns after that commit (pids,
//! start times, the pod's IP) is committed without durability (`Durability::None`:
//! visible at once, made durable by the next durable commit of anyone) and written to
//! a volatile file in the object's bundle under the state directory (a tmpfs), which
//! survives a crash of crustd and, like the processes it describes, not a reboot.
//! Recovery reads the volatile file where the store lacks those facts.
//!
//! [`durable_commits`] counts durable commits, for the metrics endpoint and the tests
//! that hold each CRI call to its budget.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

static DURABLE: AtomicU64 = AtomicU64::new(0);
static DEFERRED: AtomicU64 = AtomicU64::new(0);

/// The name of the volatile file in a bundle.
pub const VOLATILE_FILE: &str = "volatile.json";

/// Counts one commit, durable or not; call it after the commit succeeded.
pub fn count_commit(durable: bool) {
    if durable {
        DURABLE.fetch_add(1, Ordering::Relaxed);
    } else {
        DEFERRED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Durable commits since the process started.
pub fn durable_commits() -> u64 {
    DURABLE.load(Ordering::Relaxed)
}

/// Commits without durability since the process started.
pub fn deferred_commits() -> u64 {
    DEFERRED.load(Ordering::Relaxed)
}

/// Writes `bytes` as `dir`/[`VOLATILE_FILE`], whole or not at all (a temporary file
/// renamed over it) but without fsync: the directory is on a tmpfs, and the file is
/// only needed across a crash of the process, never across a power loss.
pub fn write_volatile(dir: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(".volatile.json.tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, dir.join(VOLATILE_FILE))
}

/// Reads `dir`/[`VOLATILE_FILE`]; `None` when there is none.
pub fn read_volatile(dir: &Path) -> Option<Vec<u8>> {
    std::fs::read(dir.join(VOLATILE_FILE)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volatile_files_round_trip() {
        let dir = std::env::temp_dir().join(format!("crust-volatile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(read_volatile(&dir), None);
        write_volatile(&dir, b"{\"pid\":1}").unwrap();
        write_volatile(&dir, b"{\"pid\":2}").unwrap();
        assert_eq!(read_volatile(&dir).as_deref(), Some(&b"{\"pid\":2}"[..]));
        assert!(!dir.join(".volatile.json.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn commits_are_counted() {
        let (d, n) = (durable_commits(), deferred_commits());
        count_commit(true);
        count_commit(false);
        assert!(durable_commits() > d);
        assert!(deferred_commits() > n);
    }
}
