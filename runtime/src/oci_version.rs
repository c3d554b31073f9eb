//! What an OCI runtime binary says it is (`<binary> --version`), and whether crust may
//! run containers with it.
//!
//! runc before 1.1.12 leaks a host directory fd into the container (CVE-2024-21626,
//! "Leaky Vessels"): an image or pod whose working directory is `/proc/self/fd/<n>`
//! escapes to the host. crust refuses such a runc at start rather than trust that
//! every path into it is filtered. Distributions backport the fix without raising the
//! upstream version, so their fixed builds are recognised by the package version runc
//! prints as its commit.

use std::path::Path;
use std::process::Command;

use crate::error::{Result, RuntimeError};

/// The first upstream runc with the CVE-2024-21626 fix.
pub const RUNC_MIN_VERSION: (u32, u32, u32) = (1, 1, 12);

/// Distribution builds of an older runc that carry the fix: the package version
/// prefix and the first fixed Debian revision number after it (`+deb12u1`).
const PATCHED_BUILDS: &[(&str, u32)] = &[
    // DSA-5615-1 (bookworm).
    ("1.1.5+ds1-1+deb12u", 1),
    // DSA-5615-1 (bullseye).
    ("1.0.0~rc93+ds1-5+deb11u", 3),
];

/// The identity of one runtime binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeVersion {
    /// The implementation, as the first word of `--version` names it (`runc`, `crun`).
    pub name: String,
    /// The version string after "version" (`1.1.5+ds1`).
    pub version: String,
    /// The `commit:` line (a git hash, or a distribution's package version).
    pub commit: String,
}

impl RuntimeVersion {
    /// Parses `--version` output: `runc version 1.1.12\ncommit: v1.1.12-0-g51d5e946\n...`.
    pub fn parse(text: &str) -> Option<RuntimeVersion> {
        let mut lines = text.lines();
        let first = lines.next()?;
        let (name, version) = first.trim().split_once(" version ")?;
        let commit = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("commit:"))
            .map(|c| c.trim().to_owned())
            .unwrap_or_default();
        Some(RuntimeVersion {
            name: name.trim().to_owned(),
            version: version.trim().to_owned(),
            commit,
        })
    }

    /// The numeric `major.minor.patch` at the start of the version, if it has one.
    pub fn numeric(&self) -> Option<(u32, u32, u32)> {
        let mut parts = self
            .version
            .trim_start_matches('v')
            .split(|c: char| !c.is_ascii_digit())
            .map(|p| p.parse::<u32>().ok());
        Some((
            parts.next()??,
            parts.next()??,
            parts.next().flatten().unwrap_or(0),
        ))
    }

    /// Why this runtime must not run containers, if it must not.
    pub fn unsafe_reason(&self) -> Option<String> {
        if self.name != "runc" {
            // crun and youki never had the leaked-fd flaw.
            return None;
        }
        let numeric = self.numeric();
        if numeric.is_some_and(|v| v >= RUNC_MIN_VERSION) || self.is_patched_build() {
            return None;
        }
        let (a, b, c) = RUNC_MIN_VERSION;
        Some(format!(
            "runc {} (commit {}) predates {a}.{b}.{c} and lacks the fix for CVE-2024-21626 \
             (a working directory in /proc/self/fd escapes to the host); upgrade runc",
            self.version,
            if self.commit.is_empty() {
                "unknown"
            } else {
                &self.commit
            },
        ))
    }

    fn is_patched_build(&self) -> bool {
        PATCHED_BUILDS.iter().any(|(prefix, first_fixed)| {
            self.commit.strip_prefix(prefix).is_some_and(|rest| {
                let revision: String = rest.chars().take_while(char::is_ascii_digit).collect();
                revision.parse::<u32>().is_ok_and(|r| r >= *first_fixed)
            })
        })
    }
}

/// Runs `<binary> --version` (blocking; at start only) and refuses a runtime that is
/// missing, says nothing we understand, or is a runc without the CVE-2024-21626 fix.
pub fn check(binary: &Path) -> Result<RuntimeVersion> {
    let shown = binary.to_string_lossy();
    let output = Command::new(binary)
        .arg("--version")
        .output()
        .map_err(|e| {
            RuntimeError::invalid("runtime binary", &shown, format!("run --version: {e}"))
        })?;
    let text = String::from_utf8_lossy(&output.stdout);
    let version = RuntimeVersion::parse(&text).ok_or_else(|| {
        RuntimeError::invalid(
            "runtime binary",
            &shown,
            format!(
                "--version printed no \"<name> version <x>\" line: {:?}",
                text.trim()
            ),
        )
    })?;
    if let Some(reason) = version.unsafe_reason() {
        return Err(RuntimeError::invalid("runtime binary", &shown, reason));
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runc(version: &str, commit: &str) -> RuntimeVersion {
        RuntimeVersion::parse(&format!(
            "runc version {version}\ncommit: {commit}\nspec: 1.0.2-dev\n"
        ))
        .unwrap()
    }

    #[test]
    fn parses_runc_and_crun() {
        let v = runc("1.1.5+ds1", "1.1.5+ds1-1+deb12u1");
        assert_eq!(v.name, "runc");
        assert_eq!(v.numeric(), Some((1, 1, 5)));
        let crun = RuntimeVersion::parse(
            "crun version 1.8.1\ncommit: f8a096be\nrundir: /run/crun\n+SYSTEMD",
        )
        .unwrap();
        assert_eq!(
            (crun.name.as_str(), crun.numeric()),
            ("crun", Some((1, 8, 1)))
        );
        assert!(RuntimeVersion::parse("nonsense").is_none());
    }

    #[test]
    fn old_runc_is_refused_fixed_ones_are_not() {
        assert!(
            runc("1.1.11", "v1.1.11-0-g4bccb38c")
                .unsafe_reason()
                .is_some()
        );
        assert!(runc("1.1.5+ds1", "1.1.5+ds1-1").unsafe_reason().is_some());
        assert!(runc("1.0.0-rc93", "").unsafe_reason().is_some());
        assert!(
            runc("1.1.12", "v1.1.12-0-g51d5e946")
                .unsafe_reason()
                .is_none()
        );
        assert!(runc("1.2.0", "v1.2.0").unsafe_reason().is_none());
        assert!(
            runc("1.1.5+ds1", "1.1.5+ds1-1+deb12u1")
                .unsafe_reason()
                .is_none()
        );
        assert!(
            runc("1.1.5+ds1", "1.1.5+ds1-1+deb12u2")
                .unsafe_reason()
                .is_none()
        );
        assert!(
            runc("1.0.0~rc93+ds1", "1.0.0~rc93+ds1-5+deb11u2")
                .unsafe_reason()
                .is_some()
        );
        let reason = runc("1.1.4", "v1.1.4").unsafe_reason().unwrap();
        assert!(reason.contains("CVE-2024-21626"), "{reason}");
    }

    #[test]
    fn other_runtimes_are_not_version_gated() {
        let crun = RuntimeVersion::parse("crun version 0.9\ncommit: abc\n").unwrap();
        assert!(crun.unsafe_reason().is_none());
    }

    #[test]
    fn a_binary_that_says_nothing_useful_is_refused() {
        let err = check(Path::new("/bin/true")).unwrap_err();
        assert!(err.to_string().contains("--version"), "{err}");
        let err = check(Path::new("/nonexistent/runc")).unwrap_err();
        assert!(err.to_string().contains("run --version"), "{err}");
    }
}
