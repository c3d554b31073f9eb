//! Disk usage of writable layers, walked at most once per interval per path.
//!
//! kubelet asks for stats every few seconds for every container, and a writable layer can
//! hold many files, so a full walk per call would be the most expensive part of the stats
//! RPCs. Like cAdvisor's fs handler, [`DiskUsageCache`] keeps the last result per path
//! and walks again only when it is older than the interval.
//!
//! The walk counts what `du -x` counts: allocated bytes (`st_blocks` × 512, so sparse
//! files are not over-counted) and inodes, each hard-linked inode once, symlinks
//! themselves and not their targets, and nothing on another filesystem.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::cgroup::now_ns;

/// How long a walk's result is reused unless configured otherwise.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// Space and inodes used under one directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskUsage {
    /// Allocated bytes (`st_blocks` × 512).
    pub bytes: u64,
    /// Inodes, the directory itself included.
    pub inodes: u64,
    /// Wall-clock time of the walk, in nanoseconds since the epoch.
    pub timestamp_ns: i64,
}

/// Caches [`DiskUsage`] per path, walking a path at most once per interval.
#[derive(Debug)]
pub struct DiskUsageCache {
    interval: Duration,
    entries: Mutex<HashMap<PathBuf, (Instant, DiskUsage)>>,
}

impl Default for DiskUsageCache {
    fn default() -> Self {
        Self::new(DEFAULT_INTERVAL)
    }
}

impl DiskUsageCache {
    /// A cache that reuses a walk's result for `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The usage under `path`, walked now if the cached result is older than the interval.
    ///
    /// The lock is not held during the walk, so a slow walk of one layer does not delay
    /// the others; two concurrent callers for the same stale path may both walk.
    pub fn usage(&self, path: &Path) -> io::Result<DiskUsage> {
        if let Some((at, usage)) = self.lock().get(path)
            && at.elapsed() < self.interval
        {
            return Ok(*usage);
        }
        let usage = walk(path)?;
        self.lock().insert(path.to_owned(), (Instant::now(), usage));
        Ok(usage)
    }

    /// Keeps the results of the paths `alive` accepts, forgetting removed layers.
    pub fn retain(&self, alive: &dyn Fn(&Path) -> bool) {
        self.lock().retain(|path, _| alive(path));
    }

    /// Drops the cached result of `path`, once its container is removed.
    pub fn forget(&self, path: &Path) {
        self.lock().remove(path);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, (Instant, DiskUsage)>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Walks `root` without following symlinks or leaving its filesystem.
pub fn walk(root: &Path) -> io::Result<DiskUsage> {
    let timestamp_ns = now_ns();
    let top = fs::symlink_metadata(root).map_err(|e| annotate(e, root))?;
    let device = top.dev();
    let mut usage = DiskUsage {
        timestamp_ns,
        ..DiskUsage::default()
    };
    let mut seen = HashSet::new();
    count(&top, &mut usage, &mut seen);
    if !top.is_dir() {
        return Ok(usage);
    }
    // An explicit stack: layer trees can be deeper than a thread's stack allows.
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            // The container keeps running while we walk: files come and go.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(annotate(e, &dir)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| annotate(e, &dir))?;
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(annotate(e, &entry.path())),
            };
            // A mount point shows the mounted filesystem's root: not ours to count.
            if meta.dev() != device {
                continue;
            }
            count(&meta, &mut usage, &mut seen);
            // DirEntry::metadata is lstat: a symlink to a directory is not a directory.
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok(usage)
}

fn count(meta: &fs::Metadata, usage: &mut DiskUsage, seen: &mut HashSet<u64>) {
    // A hard-linked inode is counted at its first name only.
    if meta.nlink() > 1 && !meta.is_dir() && !seen.insert(meta.ino()) {
        return;
    }
    usage.bytes += meta.blocks() * 512;
    usage.inodes += 1;
}

fn annotate(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("disk usage of {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn write(path: &Path, len: usize) {
        fs::write(path, vec![0xa5u8; len]).unwrap();
    }

    #[test]
    fn counts_blocks_and_inodes_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("a/b")).unwrap();
        write(&root.join("a/b/big"), 64 * 1024);
        write(&root.join("small"), 10);
        fs::hard_link(root.join("small"), root.join("a/small-link")).unwrap();
        // Symlinks count themselves, not their targets: /usr is not walked.
        symlink("/usr", root.join("usr")).unwrap();
        let usage = walk(root).unwrap();
        // root, a, a/b, big, small (one inode for both names), usr.
        assert_eq!(usage.inodes, 6);
        let blocks: u64 = ["", "a", "a/b", "a/b/big", "small", "usr"]
            .iter()
            .map(|p| fs::symlink_metadata(root.join(p)).unwrap().blocks() * 512)
            .sum();
        assert_eq!(usage.bytes, blocks);
        assert!(usage.bytes >= 64 * 1024);
        assert!(usage.timestamp_ns > 0);
    }

    /// Unmounts on drop so a failed assertion leaves no mount behind.
    struct Mounted(PathBuf);

    impl Drop for Mounted {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }

    #[test]
    fn stays_on_one_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &mnt,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=1m"),
        )
        .expect("mount tmpfs (tests run as root)");
        let _mounted = Mounted(mnt.clone());
        fs::create_dir(mnt.join("inside")).unwrap();
        write(&mnt.join("inside/file"), 8192);
        write(&dir.path().join("outside"), 1);
        // The temp dir and `outside`; neither the tmpfs root nor anything under it.
        assert_eq!(walk(dir.path()).unwrap().inodes, 2);
    }

    #[test]
    fn reuses_a_walk_within_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(&root.join("one"), 4096);
        let cache = DiskUsageCache::default();
        let first = cache.usage(root).unwrap();
        assert_eq!(first.inodes, 2);
        write(&root.join("two"), 4096);
        assert_eq!(
            cache.usage(root).unwrap(),
            first,
            "walked again within 10 s"
        );
        cache.forget(root);
        assert_eq!(cache.usage(root).unwrap().inodes, 3);

        let uncached = DiskUsageCache::new(Duration::ZERO);
        assert_eq!(uncached.usage(root).unwrap().inodes, 3);
        write(&root.join("three"), 1);
        assert_eq!(uncached.usage(root).unwrap().inodes, 4);
    }

    #[test]
    fn missing_path_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = DiskUsageCache::default()
            .usage(&dir.path().join("gone"))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("gone"), "{err}");
    }
}
