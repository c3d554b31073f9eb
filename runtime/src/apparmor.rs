//! crust's AppArmor profile for RuntimeDefault: is AppArmor on, is the profile loaded,
//! and loading it at start (with `apparmor_parser`) when it is not.

use std::io::Write;
use std::process::{Command, Stdio};

/// The profile crust applies for RuntimeDefault.
pub const DEFAULT_PROFILE_NAME: &str = "crust-default";
/// Its source, as `apparmor_parser` reads it.
pub const DEFAULT_PROFILE: &str = include_str!("spec/apparmor_default.profile");

/// `/sys/module/apparmor/parameters/enabled` says "Y".
pub fn enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|text| text.trim_start().starts_with('Y'))
}

/// Whether the kernel has a profile called `name` loaded.
pub fn loaded(name: &str) -> bool {
    std::fs::read_to_string("/sys/kernel/security/apparmor/profiles")
        .is_ok_and(|profiles| profiles_list(&profiles, name))
}

/// Lines of the kernel's list are "<name> (<mode>)".
fn profiles_list(profiles: &str, name: &str) -> bool {
    profiles
        .lines()
        .any(|line| line.rsplit_once(" (").is_some_and(|(n, _)| n == name))
}

/// What [`ensure_default_profile`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loaded {
    /// The host has no AppArmor: RuntimeDefault means no profile.
    NotEnabled,
    /// The profile was there already.
    AlreadyLoaded,
    /// crust loaded it now.
    LoadedNow,
}

/// Makes sure [`DEFAULT_PROFILE_NAME`] is loaded when the host has AppArmor; blocking
/// (runs `apparmor_parser`), for start-up. An error means containers that ask for
/// RuntimeDefault are refused (never run unconfined).
pub fn ensure_default_profile() -> Result<Loaded, String> {
    if !enabled() {
        return Ok(Loaded::NotEnabled);
    }
    if loaded(DEFAULT_PROFILE_NAME) {
        return Ok(Loaded::AlreadyLoaded);
    }
    // -r replaces (or adds) the profile; -K keeps the parser's cache out of it.
    let mut child = Command::new("apparmor_parser")
        .args(["-r", "-K"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run apparmor_parser (package apparmor): {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(DEFAULT_PROFILE.as_bytes())
            .map_err(|e| format!("write the profile to apparmor_parser: {e}"))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| format!("wait for apparmor_parser: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "apparmor_parser refused {DEFAULT_PROFILE_NAME}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(Loaded::LoadedNow)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_list_lines() {
        let list = "docker-default (enforce)\ncrust-default (enforce)\n/usr/bin/man (complain)\n";
        assert!(profiles_list(list, "crust-default"));
        assert!(profiles_list(list, "/usr/bin/man"));
        assert!(!profiles_list(list, "crust"));
        assert!(!profiles_list("", "crust-default"));
    }

    #[test]
    fn the_profile_is_named_as_the_spec_expects() {
        assert!(DEFAULT_PROFILE.contains(&format!("profile {DEFAULT_PROFILE_NAME} ")));
        assert!(DEFAULT_PROFILE.contains("deny mount,"));
    }
}
