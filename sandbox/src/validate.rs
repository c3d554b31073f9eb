//! Pod sandbox configs are checked before anything is written for them: names that
//! become paths, the hostname and DNS settings that become files every container
//! reads, ports, namespaces and sysctls.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crust_proto::cri;
use crust_runtime::pause_spec;

use crust_util::userns::{IdMappings, IdRange};

use crate::error::{Result, SandboxError};

/// The kernel's limit (`HOST_NAME_MAX`); RFC 1123 allows longer names, Linux does not.
const HOSTNAME_MAX: usize = 64;
/// resolv.conf's own limits are glibc's: 6 search domains of 256 bytes were the old
/// ones; Kubernetes allows 32 domains and 2048 bytes in all, and so does crust.
const SEARCHES_MAX: usize = 32;
const SEARCH_BYTES_MAX: usize = 2048;
/// More name servers than this are ignored by every resolver (glibc's MAXNS is 3);
/// kubelet sends at most 3 too, the extra room is for tests of odd nodes.
const SERVERS_MAX: usize = 16;
const OPTIONS_MAX: usize = 64;

/// Checks a sandbox config before anything is done with it.
pub(crate) fn sandbox_config(config: &cri::PodSandboxConfig) -> Result<cri::PodSandboxMetadata> {
    let meta = config
        .metadata
        .clone()
        .ok_or_else(|| SandboxError::Invalid("metadata: missing".into()))?;
    for (field, value) in [
        ("name", &meta.name),
        ("namespace", &meta.namespace),
        ("uid", &meta.uid),
    ] {
        if value.is_empty() {
            return Err(SandboxError::Invalid(format!("metadata.{field}: empty")));
        }
        if value.contains('/') || value.contains('\0') {
            return Err(SandboxError::Invalid(format!(
                "metadata.{field}: {value:?} contains '/' or NUL"
            )));
        }
    }
    hostname(&config.hostname)?;
    if let Some(dns) = &config.dns_config {
        dns_config(dns)?;
    }
    for (field, value) in [
        ("log_directory", &config.log_directory),
        (
            "cgroup_parent",
            &config
                .linux
                .as_ref()
                .map(|l| l.cgroup_parent.clone())
                .unwrap_or_default(),
        ),
    ] {
        if value.contains(|c: char| c.is_control()) {
            return Err(SandboxError::Invalid(format!(
                "{field}: {value:?} contains a control character"
            )));
        }
    }
    for p in &config.port_mappings {
        if !(0..=65535).contains(&p.host_port) || !(0..=65535).contains(&p.container_port) {
            return Err(SandboxError::Invalid(format!(
                "port_mappings: {}:{} is out of range",
                p.host_port, p.container_port
            )));
        }
        if cri::Protocol::try_from(p.protocol).is_err() {
            return Err(SandboxError::Invalid(format!(
                "port_mappings: unknown protocol {}",
                p.protocol
            )));
        }
    }
    if let Some(linux) = &config.linux {
        let ns = linux
            .security_context
            .as_ref()
            .and_then(|s| s.namespace_options.clone())
            .unwrap_or_default();
        for (what, mode) in [("network", ns.network), ("pid", ns.pid), ("ipc", ns.ipc)] {
            if cri::NamespaceMode::try_from(mode).is_err() {
                return Err(SandboxError::Invalid(format!(
                    "namespace_options.{what}: unknown mode {mode}"
                )));
            }
        }
        if let Some(userns) = &ns.userns_options {
            user_namespace(userns, &ns)?;
        }
        if ns.pid == cri::NamespaceMode::Target as i32 {
            return Err(SandboxError::Invalid(
                "namespace_options.pid: TARGET is for containers, not sandboxes".into(),
            ));
        }
        let sysctls: BTreeMap<String, String> = linux.sysctls.clone().into_iter().collect();
        pause_spec::validate_sysctls(
            &sysctls,
            ns.network != cri::NamespaceMode::Node as i32,
            ns.ipc == cri::NamespaceMode::Node as i32,
        )
        .map_err(|e| SandboxError::Invalid(e.to_string()))?;
    }
    Ok(meta)
}

/// A pod's user namespace request: NODE (the host's, as without one) or POD with one
/// uid and one gid range that map the container's root (what kubelet sends and critest
/// demands) to host ids other than root; the mappings for POD. CONTAINER and TARGET
/// are not modes a pod can have, and a pod with its own user namespace shares none of
/// the host's other namespaces (Kubernetes refuses `hostUsers: false` with them too).
pub(crate) fn user_namespace(
    userns: &cri::UserNamespace,
    ns: &cri::NamespaceOption,
) -> Result<Option<IdMappings>> {
    let invalid =
        |why: String| SandboxError::Invalid(format!("namespace_options.userns_options: {why}"));
    match cri::NamespaceMode::try_from(userns.mode) {
        Ok(cri::NamespaceMode::Node) if userns.uids.is_empty() && userns.gids.is_empty() => {
            Ok(None)
        }
        Ok(cri::NamespaceMode::Node) => {
            Err(invalid("NODE mode takes no uid or gid mappings".into()))
        }
        Ok(cri::NamespaceMode::Pod) => {
            let node = cri::NamespaceMode::Node as i32;
            for (what, mode) in [("network", ns.network), ("pid", ns.pid), ("ipc", ns.ipc)] {
                if mode == node {
                    return Err(invalid(format!(
                        "a pod with its own user namespace cannot use the node's {what} namespace"
                    )));
                }
            }
            let uids = id_range("uids", &userns.uids).map_err(invalid)?;
            let gids = id_range("gids", &userns.gids).map_err(invalid)?;
            if !crust_util::mount_tree::supported() {
                return Err(SandboxError::Unsupported(
                    "namespace_options.userns_options: pod user namespaces need idmapped                      mounts (Linux 5.12, mount_setattr)"
                        .into(),
                ));
            }
            Ok(Some(IdMappings { uids, gids }))
        }
        Ok(mode) => Err(invalid(format!(
            "mode {} is not valid for a pod",
            mode.as_str_name()
        ))),
        Err(_) => Err(invalid(format!("unknown mode {}", userns.mode))),
    }
}

/// The one range of a POD mapping list.
fn id_range(what: &str, list: &[cri::IdMapping]) -> std::result::Result<IdRange, String> {
    let [m] = list else {
        return Err(format!(
            "{what}: exactly one mapping is supported, {} given",
            list.len()
        ));
    };
    if m.container_id != 0 {
        return Err(format!(
            "{what}: the mapping must start at container id 0 (the container's root), not {}",
            m.container_id
        ));
    }
    if m.length == 0 || m.host_id.checked_add(m.length - 1).is_none() {
        return Err(format!(
            "{what}: host ids {}+{} are not a range of 32-bit ids",
            m.host_id, m.length
        ));
    }
    if m.host_id == 0 {
        return Err(format!(
            "{what}: the range maps the host's root (host id 0); a user namespace would isolate nothing"
        ));
    }
    Ok(IdRange {
        container_id: m.container_id,
        host_id: m.host_id,
        length: m.length,
    })
}

/// The user namespace mappings of a checked pod config; `None`: the host's namespace.
pub(crate) fn pod_mappings(config: &cri::PodSandboxConfig) -> Result<Option<IdMappings>> {
    let ns = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default();
    match &ns.userns_options {
        Some(userns) => user_namespace(userns, &ns),
        None => Ok(None),
    }
}

/// An RFC 1123 host name: dot-separated labels of ASCII letters, digits and `-`, none
/// empty, longer than 63 bytes or starting or ending with `-`; at most 64 bytes in
/// all. Empty means "none given". Host-network pods are checked too: their name lands
/// in /etc/hosts and the HOSTNAME of their containers.
pub(crate) fn hostname(name: &str) -> Result<()> {
    if name.is_empty() {
        return Ok(());
    }
    let bad = |why: &str| {
        Err(SandboxError::Invalid(format!(
            "hostname: {name:?} is not an RFC 1123 host name: {why}"
        )))
    };
    if name.len() > HOSTNAME_MAX {
        return bad("longer than 64 bytes");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return bad("empty label");
        }
        if label.len() > 63 {
            return bad("a label is longer than 63 bytes");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return bad("only letters, digits, '-' and '.' are allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("a label starts or ends with '-'");
        }
    }
    Ok(())
}

/// DNS settings become lines of resolv.conf: nothing in them may start a line of its
/// own (control characters) or split a word (whitespace); servers are IP addresses.
pub(crate) fn dns_config(dns: &cri::DnsConfig) -> Result<()> {
    let bad = |field: &str, value: &str, why: &str| {
        Err(SandboxError::Invalid(format!(
            "dns_config.{field}: {value:?} {why}"
        )))
    };
    let word = |field: &str, value: &str| {
        if value.is_empty() {
            return bad(field, value, "is empty");
        }
        if value.contains(|c: char| c.is_control() || c.is_whitespace()) {
            return bad(field, value, "contains whitespace or a control character");
        }
        Ok(())
    };
    if dns.servers.len() > SERVERS_MAX {
        return bad(
            "servers",
            &dns.servers.len().to_string(),
            "servers: too many",
        );
    }
    for server in &dns.servers {
        word("servers", server)?;
        // An IPv6 link-local server may carry its zone ("fe80::1%eth0").
        let address = server.split_once('%').map_or(server.as_str(), |(a, _)| a);
        if address.parse::<IpAddr>().is_err() {
            return bad("servers", server, "is not an IP address");
        }
    }
    if dns.searches.len() > SEARCHES_MAX {
        return bad(
            "searches",
            &dns.searches.len().to_string(),
            "searches: too many",
        );
    }
    if dns.searches.iter().map(|s| s.len() + 1).sum::<usize>() > SEARCH_BYTES_MAX {
        return bad("searches", "", "are longer than 2048 bytes in all");
    }
    for search in &dns.searches {
        word("searches", search)?;
    }
    if dns.options.len() > OPTIONS_MAX {
        return bad(
            "options",
            &dns.options.len().to_string(),
            "options: too many",
        );
    }
    for option in &dns.options {
        word("options", option)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_are_rfc_1123() {
        for good in [
            "",
            "pod",
            "my-pod.ns.svc",
            "a1",
            "Node-1.Example.com",
            &"a".repeat(63),
        ] {
            assert!(hostname(good).is_ok(), "{good:?}");
        }
        for bad in [
            "-pod",
            "pod-",
            "a..b",
            ".pod",
            "pod.",
            "pod name",
            "pod\nx",
            "pod/../x",
            "pod_1",
            "p\u{e9}d",
            &"a".repeat(64),
            &format!("{}.{}", "a".repeat(40), "b".repeat(30)),
        ] {
            let err = hostname(bad).unwrap_err();
            assert!(err.to_string().contains("RFC 1123"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn user_namespace_requests_are_checked() {
        let range = |container_id, host_id, length| cri::IdMapping {
            host_id,
            container_id,
            length,
        };
        let userns = |mode: cri::NamespaceMode, uids: Vec<cri::IdMapping>| cri::UserNamespace {
            mode: mode as i32,
            gids: uids.clone(),
            uids,
        };
        let pod = cri::NamespaceOption::default();
        assert_eq!(
            user_namespace(&userns(cri::NamespaceMode::Node, vec![]), &pod).unwrap(),
            None
        );
        let maps = user_namespace(
            &userns(cri::NamespaceMode::Pod, vec![range(0, 1000, 100_000)]),
            &pod,
        )
        .unwrap()
        .unwrap();
        assert_eq!(maps.host_root(), Some((1000, 1000)));
        let host_net = cri::NamespaceOption {
            network: cri::NamespaceMode::Node as i32,
            ..Default::default()
        };
        for (request, ns, says) in [
            (
                userns(cri::NamespaceMode::Node, vec![range(0, 1000, 10)]),
                &pod,
                "NODE mode",
            ),
            (
                userns(cri::NamespaceMode::Container, vec![]),
                &pod,
                "CONTAINER",
            ),
            (userns(cri::NamespaceMode::Target, vec![]), &pod, "TARGET"),
            (userns(cri::NamespaceMode::Pod, vec![]), &pod, "0 given"),
            (
                userns(
                    cri::NamespaceMode::Pod,
                    vec![range(0, 1000, 100_000), range(0, 2000, 100_000)],
                ),
                &pod,
                "2 given",
            ),
            (
                userns(cri::NamespaceMode::Pod, vec![range(1, 1000, 100_000)]),
                &pod,
                "container id 0",
            ),
            (
                userns(cri::NamespaceMode::Pod, vec![range(0, 0, 65536)]),
                &pod,
                "host's root",
            ),
            (
                userns(cri::NamespaceMode::Pod, vec![range(0, 1000, 0)]),
                &pod,
                "32-bit",
            ),
            (
                userns(cri::NamespaceMode::Pod, vec![range(0, u32::MAX, 2)]),
                &pod,
                "32-bit",
            ),
            (
                userns(cri::NamespaceMode::Pod, vec![range(0, 1000, 10)]),
                &host_net,
                "network",
            ),
        ] {
            let err = user_namespace(&request, ns).unwrap_err();
            assert_eq!(
                err.kind(),
                crate::error::ErrorKind::InvalidArgument,
                "{err}"
            );
            assert!(err.to_string().contains(says), "{says}: {err}");
        }
    }

    #[test]
    fn dns_settings_cannot_add_lines_to_resolv_conf() {
        let ok = cri::DnsConfig {
            servers: vec!["10.96.0.10".into(), "fe80::1%eth0".into(), "::1".into()],
            searches: vec!["ns.svc.cluster.local".into(), "cluster.local".into()],
            options: vec!["ndots:5".into(), "edns0".into()],
        };
        dns_config(&ok).unwrap();
        let with = |f: &dyn Fn(&mut cri::DnsConfig)| {
            let mut d = ok.clone();
            f(&mut d);
            dns_config(&d)
        };
        for case in [
            with(&|d| d.servers.push("1.2.3.4\nnameserver 6.6.6.6".into())),
            with(&|d| d.servers.push("dns.example.com".into())),
            with(&|d| d.servers.push(String::new())),
            with(&|d| d.searches.push("a b".into())),
            with(&|d| d.searches.push("x\roptions debug".into())),
            with(&|d| d.options.push("ndots:1\nsearch evil".into())),
            with(&|d| d.searches = vec!["s".repeat(100); 30]),
            with(&|d| d.searches = vec!["s".into(); 33]),
        ] {
            let err = case.unwrap_err();
            assert!(err.to_string().contains("dns_config"), "{err}");
        }
    }
}
