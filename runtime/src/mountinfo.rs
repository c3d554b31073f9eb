//! The mount points of crustd's mount namespace, from `/proc/self/mountinfo`.

use std::path::{Path, PathBuf};

/// Every mount point, in mountinfo's order (parents before the mounts on them).
pub fn mount_points() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|info| parse_mount_points(&info))
        .unwrap_or_default()
}

/// Whether `path` is a mount point.
pub fn is_mount_point(path: &Path) -> bool {
    mount_points().iter().any(|p| p == path)
}

/// Mount points strictly below `dir`, deepest first (the order to unmount them in).
pub fn mount_points_below(dir: &Path) -> Vec<PathBuf> {
    let mut points: Vec<PathBuf> = mount_points()
        .into_iter()
        .filter(|p| p.starts_with(dir) && p != dir)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    points
}

fn parse_mount_points(info: &str) -> Vec<PathBuf> {
    info.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_escapes() {
        let info = "22 1 0:21 / / rw,relatime - ext4 /dev/vda rw\n\
                    40 22 0:35 / /run/a\\040b rw - tmpfs tmpfs rw\n\
                    41 40 0:36 / /run/a\\040b/c\\134d rw - tmpfs tmpfs rw\n";
        assert_eq!(
            parse_mount_points(info),
            [
                PathBuf::from("/"),
                PathBuf::from("/run/a b"),
                PathBuf::from("/run/a b/c\\d")
            ]
        );
    }

    #[test]
    fn this_namespace_has_a_root() {
        assert!(is_mount_point(Path::new("/")));
        assert!(mount_points_below(Path::new("/nonexistent")).is_empty());
    }
}
