//! Seccomp profiles for containers: the RuntimeDefault profile and profiles loaded from
//! files on the node (CRI `Localhost`).
//!
//! Profiles are written in Docker's format, which containerd and CRI-O read too: the OCI
//! `linux.seccomp` fields plus an `archMap` (the native architecture and the ones it can
//! also execute) and, per syscall rule, `includes` / `excludes` conditions on the
//! container's capabilities, the CPU architecture (Go's names: `amd64`, `arm64`, ...) and
//! the kernel version. [`profile_from_json`] resolves those conditions for one container
//! and yields a plain OCI [`LinuxSeccomp`]; a profile already in OCI form passes through.
//!
//! The RuntimeDefault profile ([`DEFAULT_PROFILE_JSON`], in `seccomp_default.json`) is
//! moby's `profiles/seccomp/default.json` allowlist, which containerd's
//! `contrib/seccomp` mirrors, for x86_64 and aarch64: every syscall not listed fails with
//! EPERM; `clone3` fails with ENOSYS for containers without CAP_SYS_ADMIN, so that libc
//! falls back to `clone`, whose namespace flags the filter can inspect; the syscalls
//! guarded by a capability (`reboot` by CAP_SYS_BOOT, `mount` by CAP_SYS_ADMIN, ...) are
//! allowed exactly when the container's bounding set has that capability, as containerd
//! computes it from the spec.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crust_proto::cri;
use oci_spec::runtime::{Capability, LinuxSeccomp};
use serde_json::{Map, Value};

use crate::error::{Result, RuntimeError};

/// The RuntimeDefault profile in Docker's format (see the module doc).
pub const DEFAULT_PROFILE_JSON: &str = include_str!("seccomp_default.json");

/// What a container's security context asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeccompRequest {
    /// No filter.
    Unconfined,
    /// The runtime's default profile ([`DEFAULT_PROFILE_JSON`]).
    RuntimeDefault,
    /// A profile file on the node, by absolute path.
    Localhost(PathBuf),
}

impl SeccompRequest {
    /// Reads the request from the CRI `seccomp` field, or, when that is absent, from the
    /// deprecated `seccomp_profile_path` string (`""` and `unconfined`: none;
    /// `runtime/default` and `docker/default`: the default; `localhost/<absolute path>`).
    /// Nothing asked means unconfined, as containerd does without
    /// `unset_seccomp_profile` (kubelet always sends the field it wants).
    pub fn from_cri(profile: Option<&cri::SecurityProfile>, deprecated_path: &str) -> Result<Self> {
        use cri::security_profile::ProfileType;
        let Some(profile) = profile else {
            return match deprecated_path {
                "" | "unconfined" => Ok(SeccompRequest::Unconfined),
                "runtime/default" | "docker/default" => Ok(SeccompRequest::RuntimeDefault),
                other => match other.strip_prefix("localhost/") {
                    Some(path) => localhost(path),
                    None => Err(RuntimeError::invalid(
                        "seccomp profile",
                        other,
                        "not unconfined, runtime/default or localhost/<path>",
                    )),
                },
            };
        };
        match ProfileType::try_from(profile.profile_type) {
            Ok(ProfileType::RuntimeDefault) => Ok(SeccompRequest::RuntimeDefault),
            Ok(ProfileType::Unconfined) => Ok(SeccompRequest::Unconfined),
            Ok(ProfileType::Localhost) => localhost(&profile.localhost_ref),
            Err(_) => Err(RuntimeError::invalid(
                "seccomp profile type",
                &profile.profile_type.to_string(),
                "unknown",
            )),
        }
    }
}

fn localhost(path: &str) -> Result<SeccompRequest> {
    let path = Path::new(path);
    if !path.is_absolute() {
        return Err(RuntimeError::invalid(
            "seccomp profile",
            &path.to_string_lossy(),
            "a localhost profile must be an absolute path",
        ));
    }
    Ok(SeccompRequest::Localhost(path.to_owned()))
}

/// The machine a profile is resolved for: its architecture in libseccomp's and Go's
/// names and its kernel version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeccompTarget {
    /// libseccomp's name of the native architecture (`SCMP_ARCH_X86_64`).
    pub scmp_arch: &'static str,
    /// Go's name of it, which `includes.arches` use (`amd64`).
    pub go_arch: &'static str,
    /// The kernel version (major, minor), for `minKernel`.
    pub kernel: (u32, u32),
}

impl SeccompTarget {
    /// This machine, by the architecture crust was built for and `/proc`'s kernel release.
    pub fn native() -> SeccompTarget {
        let (scmp_arch, go_arch) = match std::env::consts::ARCH {
            "x86_64" => ("SCMP_ARCH_X86_64", "amd64"),
            "aarch64" => ("SCMP_ARCH_AARCH64", "arm64"),
            "x86" => ("SCMP_ARCH_X86", "386"),
            "arm" => ("SCMP_ARCH_ARM", "arm"),
            "riscv64" => ("SCMP_ARCH_RISCV64", "riscv64"),
            "s390x" => ("SCMP_ARCH_S390X", "s390x"),
            "powerpc64" => ("SCMP_ARCH_PPC64LE", "ppc64le"),
            "loongarch64" => ("SCMP_ARCH_LOONGARCH64", "loong64"),
            _ => ("SCMP_ARCH_NATIVE", "unknown"),
        };
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .and_then(|release| parse_kernel_version(&release))
            .unwrap_or((0, 0));
        SeccompTarget {
            scmp_arch,
            go_arch,
            kernel,
        }
    }
}

/// "6.1.0-18-amd64" → (6, 1).
fn parse_kernel_version(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.trim().split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts
        .next()
        .map(|minor| {
            let digits: String = minor.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().unwrap_or(0)
        })
        .unwrap_or(0);
    Some((major, minor))
}

/// The filter for a container whose bounding set is `caps`: `None` for unconfined.
pub fn seccomp_for(request: &SeccompRequest, caps: &[Capability]) -> Result<Option<LinuxSeccomp>> {
    let target = SeccompTarget::native();
    match request {
        SeccompRequest::Unconfined => Ok(None),
        SeccompRequest::RuntimeDefault => default_profile(caps, &target).map(Some),
        SeccompRequest::Localhost(path) => load_profile(path, caps, &target).map(Some),
    }
}

/// The RuntimeDefault profile resolved for a container whose bounding set is `caps`.
pub fn default_profile(caps: &[Capability], target: &SeccompTarget) -> Result<LinuxSeccomp> {
    static PARSED: OnceLock<std::result::Result<Value, String>> = OnceLock::new();
    let parsed = PARSED
        .get_or_init(|| serde_json::from_str(DEFAULT_PROFILE_JSON).map_err(|err| err.to_string()));
    match parsed {
        Ok(value) => resolve(value, caps, target, "runtime/default"),
        // A test parses the embedded profile, so this is a build defect.
        Err(err) => Err(RuntimeError::invalid(
            "seccomp profile",
            "runtime/default",
            err.clone(),
        )),
    }
}

/// Loads the profile file at `path` (CRI `Localhost`) and resolves it.
pub fn load_profile(
    path: &Path,
    caps: &[Capability],
    target: &SeccompTarget,
) -> Result<LinuxSeccomp> {
    let shown = path.to_string_lossy();
    let text = read_profile_file(path)
        .map_err(|reason| RuntimeError::invalid("seccomp profile", &shown, reason))?;
    profile_from_json(&text, caps, target, &shown)
}

/// The largest Localhost profile read; Docker's default profile is about 20 KiB.
pub const PROFILE_MAX_BYTES: u64 = 1024 * 1024;

/// Reads a profile the pod spec names: only a regular file of at most
/// [`PROFILE_MAX_BYTES`], so that `/dev/zero`, a FIFO or a huge file can neither hang
/// nor exhaust crustd. `O_NONBLOCK` keeps the open of a FIFO from waiting for a writer.
fn read_profile_file(path: &Path) -> std::result::Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)
        .map_err(|err| {
            if err.kind() == std::io::ErrorKind::NotFound {
                "no such file on this node".to_owned()
            } else {
                format!("open: {err}")
            }
        })?;
    let meta = file.metadata().map_err(|err| format!("stat: {err}"))?;
    if !meta.is_file() {
        return Err("not a regular file".to_owned());
    }
    if meta.len() > PROFILE_MAX_BYTES {
        return Err(format!(
            "{} bytes is more than the {PROFILE_MAX_BYTES} a profile may have",
            meta.len()
        ));
    }
    let mut text = String::new();
    file.take(PROFILE_MAX_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|err| format!("read: {err}"))?;
    if text.len() as u64 > PROFILE_MAX_BYTES {
        return Err("grew past the size a profile may have while it was read".to_owned());
    }
    Ok(text)
}

/// Parses a profile in Docker's (or OCI) format and resolves it for a container whose
/// bounding set is `caps`; `source` names it in errors.
pub fn profile_from_json(
    text: &str,
    caps: &[Capability],
    target: &SeccompTarget,
    source: &str,
) -> Result<LinuxSeccomp> {
    let value: Value = serde_json::from_str(text).map_err(|err| {
        RuntimeError::invalid("seccomp profile", source, format!("not JSON: {err}"))
    })?;
    resolve(&value, caps, target, source)
}

fn resolve(
    profile: &Value,
    caps: &[Capability],
    target: &SeccompTarget,
    source: &str,
) -> Result<LinuxSeccomp> {
    let bad = |reason: String| RuntimeError::invalid("seccomp profile", source, reason);
    let object = profile
        .as_object()
        .ok_or_else(|| bad("not a JSON object".into()))?;
    let cap_names: Vec<String> = caps.iter().map(|cap| capability_name(*cap)).collect();

    let mut out = Map::new();
    match object.get("defaultAction").and_then(Value::as_str) {
        Some(action) if !action.is_empty() => {
            out.insert("defaultAction".into(), action.into());
        }
        _ => return Err(bad("no defaultAction".into())),
    }
    for key in [
        "defaultErrnoRet",
        "flags",
        "listenerPath",
        "listenerMetadata",
    ] {
        if let Some(value) = object.get(key).filter(|v| !v.is_null()) {
            out.insert(key.into(), value.clone());
        }
    }

    let listed = non_empty_array(object.get("architectures"));
    let mapped = non_empty_array(object.get("archMap"));
    match (listed, mapped) {
        (Some(_), Some(_)) => {
            return Err(bad("both architectures and archMap are given".into()));
        }
        (Some(arches), None) => {
            out.insert("architectures".into(), Value::Array(arches.clone()));
        }
        (None, Some(map)) => {
            let mut arches = Vec::new();
            for entry in map {
                if entry.get("architecture").and_then(Value::as_str) != Some(target.scmp_arch) {
                    continue;
                }
                arches.push(Value::from(target.scmp_arch));
                if let Some(subs) = non_empty_array(entry.get("subArchitectures")) {
                    arches.extend(subs.iter().cloned());
                }
            }
            if !arches.is_empty() {
                out.insert("architectures".into(), Value::Array(arches));
            }
        }
        (None, None) => {}
    }

    let mut syscalls = Vec::new();
    for rule in non_empty_array(object.get("syscalls"))
        .into_iter()
        .flatten()
    {
        let rule = rule
            .as_object()
            .ok_or_else(|| bad("a syscall rule is not an object".into()))?;
        let mut names: Vec<Value> = Vec::new();
        if let Some(name) = rule.get("name").and_then(Value::as_str) {
            names.push(name.into());
        }
        if let Some(list) = non_empty_array(rule.get("names")) {
            if !names.is_empty() {
                return Err(bad("a syscall rule has both name and names".into()));
            }
            names.extend(list.iter().cloned());
        }
        if names.is_empty() {
            return Err(bad("a syscall rule names no syscall".into()));
        }
        if !applies(rule, &cap_names, target) {
            continue;
        }
        let mut entry = Map::new();
        entry.insert("names".into(), Value::Array(names));
        for key in ["action", "errnoRet", "args"] {
            if let Some(value) = rule.get(key).filter(|v| !v.is_null()) {
                entry.insert(key.into(), value.clone());
            }
        }
        syscalls.push(Value::Object(entry));
    }
    if !syscalls.is_empty() {
        out.insert("syscalls".into(), Value::Array(syscalls));
    }
    serde_json::from_value(Value::Object(out)).map_err(|err| bad(err.to_string()))
}

/// Whether a rule's `includes` all hold and none of its `excludes` does.
fn applies(rule: &Map<String, Value>, caps: &[String], target: &SeccompTarget) -> bool {
    let strings = |filter: &Value, key: &str| -> Vec<String> {
        non_empty_array(filter.get(key))
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    let min_kernel = |filter: &Value| {
        filter
            .get("minKernel")
            .and_then(Value::as_str)
            .and_then(parse_kernel_version)
    };
    if let Some(includes) = rule.get("includes").filter(|v| v.is_object()) {
        let arches = strings(includes, "arches");
        if !arches.is_empty() && !arches.iter().any(|a| a == target.go_arch) {
            return false;
        }
        if !strings(includes, "caps").iter().all(|c| caps.contains(c)) {
            return false;
        }
        if min_kernel(includes).is_some_and(|min| target.kernel < min) {
            return false;
        }
    }
    if let Some(excludes) = rule.get("excludes").filter(|v| v.is_object()) {
        if strings(excludes, "arches")
            .iter()
            .any(|a| a == target.go_arch)
        {
            return false;
        }
        if strings(excludes, "caps").iter().any(|c| caps.contains(c)) {
            return false;
        }
        if min_kernel(excludes).is_some_and(|min| target.kernel >= min) {
            return false;
        }
    }
    true
}

fn non_empty_array(value: Option<&Value>) -> Option<&Vec<Value>> {
    value.and_then(Value::as_array).filter(|a| !a.is_empty())
}

/// "CAP_SYS_ADMIN": the spec's (serde) name, which profiles use.
pub(crate) fn capability_name(cap: Capability) -> String {
    match serde_json::to_value(cap) {
        Ok(Value::String(name)) => name,
        // Capability serializes as a plain string; keep a readable fallback anyway.
        _ => format!("CAP_{cap}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::spec::DEFAULT_CAPABILITIES;

    const X86: SeccompTarget = SeccompTarget {
        scmp_arch: "SCMP_ARCH_X86_64",
        go_arch: "amd64",
        kernel: (6, 1),
    };
    const ARM: SeccompTarget = SeccompTarget {
        scmp_arch: "SCMP_ARCH_AARCH64",
        go_arch: "arm64",
        kernel: (5, 10),
    };

    fn allowed_names(profile: &LinuxSeccomp) -> Vec<String> {
        let json = serde_json::to_value(profile).unwrap();
        json["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|rule| rule["action"] == "SCMP_ACT_ALLOW" && rule.get("args").is_none())
            .flat_map(|rule| rule["names"].as_array().unwrap().clone())
            .map(|name| name.as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn default_profile_denies_with_eperm_and_allows_the_basics() {
        let profile = default_profile(&DEFAULT_CAPABILITIES, &X86).unwrap();
        let json = serde_json::to_value(&profile).unwrap();
        assert_eq!(json["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(json["defaultErrnoRet"], 1);
        assert_eq!(
            json["architectures"],
            serde_json::json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
        );
        let allowed = allowed_names(&profile);
        for name in [
            "read",
            "write",
            "execve",
            "exit_group",
            "arch_prctl",
            "ptrace",
        ] {
            assert!(
                allowed.iter().any(|n| n == name),
                "{name} should be allowed"
            );
        }
        for name in [
            "reboot",
            "mount",
            "unshare",
            "setns",
            "chroot",
            "init_module",
            "set_tls",
        ] {
            assert!(
                !allowed.iter().any(|n| n == name),
                "{name} should be denied"
            );
        }
        // clone only without namespace flags; clone3 answers ENOSYS.
        let rules = json["syscalls"].as_array().unwrap();
        let clone = rules
            .iter()
            .find(|r| r["names"] == serde_json::json!(["clone"]))
            .unwrap();
        assert_eq!(clone["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
        assert_eq!(clone["args"][0]["value"], 2114060288u64);
        let clone3 = rules
            .iter()
            .find(|r| r["names"] == serde_json::json!(["clone3"]))
            .unwrap();
        assert_eq!(clone3["action"], "SCMP_ACT_ERRNO");
        assert_eq!(clone3["errnoRet"], 38);
    }

    #[test]
    fn capabilities_unlock_their_syscalls() {
        let mut caps = DEFAULT_CAPABILITIES.to_vec();
        caps.extend([Capability::SysAdmin, Capability::SysBoot]);
        let profile = default_profile(&caps, &X86).unwrap();
        let allowed = allowed_names(&profile);
        for name in ["reboot", "mount", "unshare", "clone", "clone3"] {
            assert!(allowed.iter().any(|n| n == name), "{name}");
        }
        let json = serde_json::to_value(&profile).unwrap();
        assert!(
            !json["syscalls"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["action"] == "SCMP_ACT_ERRNO")
        );
    }

    #[test]
    fn arch_and_kernel_conditions() {
        let profile = default_profile(&DEFAULT_CAPABILITIES, &ARM).unwrap();
        let json = serde_json::to_value(&profile).unwrap();
        assert_eq!(
            json["architectures"],
            serde_json::json!(["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"])
        );
        let allowed = allowed_names(&profile);
        assert!(allowed.iter().any(|n| n == "set_tls"));
        assert!(!allowed.iter().any(|n| n == "arch_prctl"));
        let old = SeccompTarget {
            kernel: (4, 4),
            ..X86
        };
        let allowed = allowed_names(&default_profile(&DEFAULT_CAPABILITIES, &old).unwrap());
        assert!(!allowed.iter().any(|n| n == "ptrace"));
    }

    #[test]
    fn oci_profiles_pass_through_and_bad_ones_are_refused() {
        let text = r#"{"defaultAction": "SCMP_ACT_LOG", "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}"#;
        let profile = profile_from_json(text, &[], &X86, "t").unwrap();
        let json = serde_json::to_value(&profile).unwrap();
        assert_eq!(json["defaultAction"], "SCMP_ACT_LOG");
        assert_eq!(json["syscalls"][0]["errnoRet"], 13);

        for (text, reason) in [
            ("[]", "not a JSON object"),
            ("{", "not JSON"),
            (r#"{"syscalls": []}"#, "no defaultAction"),
            (
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
                   "archMap": [{"architecture": "SCMP_ARCH_X86_64"}]}"#,
                "both architectures and archMap",
            ),
            (r#"{"defaultAction": "SCMP_ACT_NOPE"}"#, "unknown variant"),
        ] {
            let err = profile_from_json(text, &[], &X86, "/p.json").unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument);
            assert!(err.to_string().contains(reason), "{err}");
            assert!(err.to_string().contains("/p.json"), "{err}");
        }
    }

    #[test]
    fn requests_from_cri_fields() {
        use cri::security_profile::ProfileType;
        let sp = |t: ProfileType, r: &str| cri::SecurityProfile {
            profile_type: t as i32,
            localhost_ref: r.into(),
        };
        assert_eq!(
            SeccompRequest::from_cri(Some(&sp(ProfileType::RuntimeDefault, "")), "").unwrap(),
            SeccompRequest::RuntimeDefault
        );
        assert_eq!(
            SeccompRequest::from_cri(Some(&sp(ProfileType::Unconfined, "")), "runtime/default")
                .unwrap(),
            SeccompRequest::Unconfined
        );
        assert_eq!(
            SeccompRequest::from_cri(Some(&sp(ProfileType::Localhost, "/p/a.json")), "").unwrap(),
            SeccompRequest::Localhost("/p/a.json".into())
        );
        assert!(SeccompRequest::from_cri(Some(&sp(ProfileType::Localhost, "a.json")), "").is_err());
        for (path, want) in [
            ("", SeccompRequest::Unconfined),
            ("unconfined", SeccompRequest::Unconfined),
            ("runtime/default", SeccompRequest::RuntimeDefault),
            ("docker/default", SeccompRequest::RuntimeDefault),
            (
                "localhost//x/y.json",
                SeccompRequest::Localhost("/x/y.json".into()),
            ),
        ] {
            assert_eq!(
                SeccompRequest::from_cri(None, path).unwrap(),
                want,
                "{path}"
            );
        }
        let err = SeccompRequest::from_cri(None, "strict").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    }

    #[test]
    fn localhost_profiles_must_be_small_regular_files() {
        let caps = [Capability::Chown];
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.json");
        std::fs::write(&good, r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#).unwrap();
        load_profile(&good, &caps, &X86).unwrap();
        let refused = |path: &Path, why: &str| {
            let err = load_profile(path, &caps, &X86).unwrap_err().to_string();
            assert!(err.contains(why), "{}: {err}", path.display());
        };
        refused(Path::new("/dev/zero"), "not a regular file");
        refused(dir.path(), "not a regular file");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        refused(&fifo, "not a regular file");
        let big = dir.path().join("big.json");
        let file = std::fs::File::create(&big).unwrap();
        file.set_len(PROFILE_MAX_BYTES + 1).unwrap();
        refused(&big, "bytes is more than");
        refused(&dir.path().join("missing.json"), "no such file");
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(parse_kernel_version("6.18.44-fc-v782\n"), Some((6, 18)));
        assert_eq!(parse_kernel_version("4.8"), Some((4, 8)));
        assert_eq!(parse_kernel_version("5.10.0-rc1"), Some((5, 10)));
        assert_eq!(parse_kernel_version("x"), None);
    }
}
