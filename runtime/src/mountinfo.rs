//! The mount points of crustd's mount namespace, from `/proc/self/mountinfo`.

use std::path::{Path, PathBuf};

pub use crust_util::mountinfo::{is_mount_point, mount_points};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_namespace_has_a_root() {
        assert!(is_mount_point(Path::new("/")));
        assert!(mount_points_below(Path::new("/nonexistent")).is_empty());
    }
}
