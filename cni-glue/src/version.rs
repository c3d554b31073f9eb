//! CNI spec versions: parsing and comparison of `major.minor.patch` strings.

use std::fmt;
use std::str::FromStr;

/// A CNI spec version such as `0.4.0` or `1.0.0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpecVersion {
    /// The major number.
    pub major: u32,
    /// The minor number.
    pub minor: u32,
    /// The patch number.
    pub patch: u32,
}

impl SpecVersion {
    /// Builds a version from its three numbers.
    pub const fn new(major: u32, minor: u32, patch: u32) -> SpecVersion {
        SpecVersion {
            major,
            minor,
            patch,
        }
    }

    /// The version configs without `cniVersion` are read as (what plugins assume).
    pub const DEFAULT: SpecVersion = SpecVersion::new(0, 1, 0);
    /// The first version with interfaces and the `ips` list (0.3.0).
    pub const V0_3_0: SpecVersion = SpecVersion::new(0, 3, 0);
    /// The first version with CHECK and a cached prevResult on DEL (0.4.0).
    pub const V0_4_0: SpecVersion = SpecVersion::new(0, 4, 0);
    /// The version that dropped `version` from IP configs (1.0.0).
    pub const V1_0_0: SpecVersion = SpecVersion::new(1, 0, 0);
    /// The first version with STATUS and GC (1.1.0); also the newest this crate knows.
    pub const V1_1_0: SpecVersion = SpecVersion::new(1, 1, 0);
}

impl FromStr for SpecVersion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split('.');
        let mut next = || -> Result<u32, String> {
            let part = parts
                .next()
                .ok_or_else(|| format!("version {s:?} is not major.minor.patch"))?;
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("version {s:?} is not major.minor.patch"));
            }
            part.parse::<u32>()
                .map_err(|_| format!("version {s:?} has a number out of range"))
        };
        let version = SpecVersion::new(next()?, next()?, next()?);
        if parts.next().is_some() {
            return Err(format!("version {s:?} is not major.minor.patch"));
        }
        Ok(version)
    }
}

impl fmt::Display for SpecVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_order_numerically() {
        let v: SpecVersion = "0.10.0".parse().unwrap();
        assert!(v > "0.4.0".parse().unwrap());
        assert!(SpecVersion::V1_0_0 > v);
        assert_eq!(v.to_string(), "0.10.0");
        for bad in ["", "1", "1.0", "1.0.0.0", "a.b.c", "1.-1.0", "1..0"] {
            assert!(bad.parse::<SpecVersion>().is_err(), "{bad:?}");
        }
    }
}
