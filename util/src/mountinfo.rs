//! `/proc/self/mountinfo`: its lines parsed, its octal escapes undone.
//!
//! A line is `id parent maj:min root mount_point mount_options [optional…] - fstype
//! source super_options` (proc(5)); fields are separated by single spaces, and spaces,
//! tabs, newlines and backslashes inside them are written as `\040`, `\011`, `\012`
//! and `\134`.

use std::io;
use std::path::{Path, PathBuf};

/// Where this process's mount table is read from.
const SELF_MOUNTINFO: &str = "/proc/self/mountinfo";

/// One mount, the fields crust uses, unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The directory of the filesystem that is mounted (for cgroups: a cgroup path).
    pub root: String,
    /// Where it is mounted.
    pub mount_point: String,
    /// Per-mount options (`rw,relatime`).
    pub mount_options: String,
    /// The filesystem type (`ext4`, `cgroup2`).
    pub fstype: String,
    /// The mount source (`/dev/vda1`, `tmpfs`; `none` and the like when there is none).
    pub source: String,
    /// Per-superblock options (`rw,memory` for a v1 memory cgroup).
    pub super_options: String,
}

impl Mount {
    /// Parses one line; `None` for one without the ` - ` separator or its first five
    /// fields.
    pub fn parse(line: &str) -> Option<Mount> {
        let (left, right) = line.split_once(" - ")?;
        let mut left = left.split(' ');
        let root = unescape(left.nth(3)?);
        let mount_point = unescape(left.next()?);
        let mount_options = left.next().unwrap_or_default().to_owned();
        let mut right = right.split(' ');
        let fstype = unescape(right.next()?);
        let source = unescape(right.next().unwrap_or_default());
        let super_options = right.next().unwrap_or_default().to_owned();
        Some(Mount {
            root,
            mount_point,
            mount_options,
            fstype,
            source,
            super_options,
        })
    }
}

/// Every well-formed line of mountinfo text, in order (parents before the mounts on
/// them).
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines().filter_map(Mount::parse).collect()
}

/// This process's mounts.
pub fn read() -> io::Result<Vec<Mount>> {
    Ok(parse(&std::fs::read_to_string(SELF_MOUNTINFO)?))
}

/// Every mount point of this process's mount namespace, in mountinfo's order; none when
/// mountinfo cannot be read.
pub fn mount_points() -> Vec<PathBuf> {
    read()
        .unwrap_or_default()
        .into_iter()
        .map(|m| PathBuf::from(m.mount_point))
        .collect()
}

/// Whether `path` is a mount point in this process's mount namespace.
///
/// Asked of the path itself (statx's `STATX_ATTR_MOUNT_ROOT`, Linux 5.8) rather than
/// of mountinfo, whose every line the kernel formats on each read: crustd's table holds
/// every container's rootfs. Older kernels, which do not report the attribute, get
/// the mountinfo answer.
pub fn is_mount_point(path: &Path) -> bool {
    use rustix::fs::{AtFlags, CWD, StatxAttributes, StatxFlags};
    const ROOT: StatxAttributes = StatxAttributes::MOUNT_ROOT;
    let flags = AtFlags::SYMLINK_NOFOLLOW | AtFlags::NO_AUTOMOUNT;
    match rustix::fs::statx(CWD, path, flags, StatxFlags::TYPE) {
        Ok(st) if st.stx_attributes_mask.contains(ROOT) => st.stx_attributes.contains(ROOT),
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => false,
        _ => mount_points().iter().any(|p| p == path),
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`, or any
/// other three octal digits); a backslash not followed by three of them stays as it is.
pub fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(digits)) => {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                // The kernel escapes single bytes, so the value fits; `\777` is no escape
                // of its, and wraps rather than failing.
                out.push(value as u8);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_optional_fields_and_escapes() {
        let info = "22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                    40 22 0:35 / /run/a\\040b rw - tmpfs tmpfs rw,size=10k\n\
                    41 40 0:36 / /run/a\\040b/c\\134d rw,nosuid master:3 propagate_from:2 unbindable - tmpfs my\\011src rw\n\
                    35 25 0:30 /kubepods /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory\n\
                    not a mountinfo line\n\
                    50 22 0:40 / /no/super rw - overlay\n";
        let mounts = parse(info);
        assert_eq!(mounts.len(), 5);
        assert_eq!(
            mounts[0],
            Mount {
                root: "/".into(),
                mount_point: "/".into(),
                mount_options: "rw,relatime".into(),
                fstype: "ext4".into(),
                source: "/dev/vda".into(),
                super_options: "rw".into(),
            }
        );
        assert_eq!(mounts[1].mount_point, "/run/a b");
        assert_eq!(mounts[1].super_options, "rw,size=10k");
        // Any number of optional fields before the separator.
        assert_eq!(mounts[2].mount_point, "/run/a b/c\\d");
        assert_eq!(mounts[2].fstype, "tmpfs");
        assert_eq!(mounts[2].source, "my\tsrc");
        assert_eq!(mounts[3].root, "/kubepods");
        assert_eq!(mounts[3].super_options, "rw,memory");
        // A line cut short after the type still names its mount.
        assert_eq!(mounts[4].fstype, "overlay");
        assert_eq!(mounts[4].source, "");
        assert_eq!(mounts[4].super_options, "");
    }

    #[test]
    fn short_lines_are_skipped() {
        assert_eq!(Mount::parse("1 2 3:4 / - ext4 x rw"), None);
        assert_eq!(Mount::parse("1 2 3:4 / /mnt rw"), None);
        assert_eq!(Mount::parse(""), None);
    }

    #[test]
    fn unescape_cases() {
        assert_eq!(unescape("a\\040b\\011c\\012d\\134e"), "a b\tc\nd\\e");
        assert_eq!(unescape("plain"), "plain");
        // Not an escape: fewer than three digits, or not octal.
        assert_eq!(unescape("x\\04"), "x\\04");
        assert_eq!(unescape("x\\089"), "x\\089");
        assert_eq!(unescape("trailing\\"), "trailing\\");
        // Bytes that make UTF-8 together.
        assert_eq!(unescape("\\303\\251t\\303\\251"), "été");
    }

    #[test]
    fn this_namespace_has_a_root() {
        assert!(is_mount_point(Path::new("/")));
        assert!(!is_mount_point(Path::new("/nonexistent/nowhere")));
        // statx's answer agrees with mountinfo's, for a mount point and for what is not.
        for point in mount_points().iter().take(20) {
            if std::fs::symlink_metadata(point).is_ok() {
                assert!(is_mount_point(point), "{}", point.display());
            }
        }
        let dir = std::env::temp_dir();
        assert_eq!(is_mount_point(&dir), mount_points().contains(&dir));
        assert!(read().unwrap().iter().any(|m| m.mount_point == "/"));
    }
}
