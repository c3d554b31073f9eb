//! crustd's configuration: a TOML file, overridden by command-line flags.
//!
//! Every field has a default, so a missing file means "all defaults". Unknown keys and
//! bad values are refused at start with a message naming the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use crust_image::Credentials;
use serde::Deserialize;

/// Where crustd looks for its configuration when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/crust/config.toml";

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Persistent data: the metadata store, unpacked layers, containers' writable layers.
    pub root: PathBuf,
    /// Runtime state on tmpfs: bundles, mountpoints, monitor sockets, pinned netns.
    pub state: PathBuf,
    /// The CRI socket kubelet and crictl connect to.
    pub listen: PathBuf,
    /// Log level: error, warn, info, debug or trace (or a tracing filter directive).
    pub log_level: String,
    /// Log format: "text" for people, "json" for log collectors.
    pub log_format: LogFormat,
    /// The cgroup driver reported to kubelet: "cgroupfs" or "systemd".
    pub cgroup_driver: CgroupDriver,
    /// Image registries.
    pub registry: RegistryConfig,
    /// Pod networking.
    pub cni: CniConfig,
    /// The runtime handler used when a pod names none.
    pub default_runtime: String,
    /// OCI runtimes by RuntimeClass handler name.
    pub runtimes: BTreeMap<String, RuntimeConfig>,
    /// The handler that runs pods with a user namespace when theirs is an embedded one
    /// (libcontainer 0.7 runs exec outside the container's user namespace); unset: the
    /// `runc` handler where one is configured; "": such pods are refused there.
    pub user_namespace_runtime: Option<String>,
    /// The crust-monitor binary; by default the one beside crustd.
    pub monitor_path: Option<PathBuf>,
    /// Where to serve Prometheus metrics (`/metrics`); off when unset.
    pub metrics_address: Option<std::net::SocketAddr>,
    /// A registry image to run as every pod's pause process instead of the built-in one.
    pub pause_image: Option<String>,
    /// Run no pause process for pods that need none (no shared PID namespace).
    pub drop_infra_container: bool,
    /// The streaming server (exec, attach, port-forward).
    pub streaming: StreamingConfig,
}

/// Where the URLs of Exec, Attach and PortForward lead.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StreamingConfig {
    /// The address to listen on; loopback keeps streams on the node, for kubelet.
    pub address: std::net::IpAddr,
    /// The TCP port; 0 picks a free one.
    pub port: u16,
    /// PEM certificate (chain) to serve TLS with; needs `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// How long a URL stays valid, in seconds (kubelet: one minute).
    pub token_ttl_secs: u64,
    /// Seconds without a frame or message either way after which an upgraded
    /// connection is closed (kubelet's and containerd's default: four hours).
    pub idle_timeout_secs: u64,
    /// Seconds a client has to open an exec or attach's streams, or the second
    /// stream of a port-forward pair (kubelet: 30).
    pub stream_creation_timeout_secs: u64,
    /// Upgraded connections served at once; more are answered 503 before the upgrade.
    pub max_connections: usize,
    /// Streams one SPDY connection may have open or queued at once.
    pub max_streams_per_session: usize,
    /// Largest decompressed SPDY header block.
    pub max_header_block_bytes: usize,
    /// Decompressed header bytes one SPDY connection's open streams may hold together.
    pub max_header_bytes: usize,
    /// Port-forward streams waiting for their pair, per SPDY connection.
    pub max_pending_port_forward_pairs: usize,
    /// Largest WebSocket message (and frame) a client may send.
    pub ws_max_message_bytes: usize,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        StreamingConfig {
            address: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            port: 0,
            tls_cert: None,
            tls_key: None,
            token_ttl_secs: 60,
            idle_timeout_secs: 4 * 60 * 60,
            stream_creation_timeout_secs: 30,
            max_connections: 128,
            max_streams_per_session: 64,
            max_header_block_bytes: 64 << 10,
            max_header_bytes: 1 << 20,
            max_pending_port_forward_pairs: 32,
            ws_max_message_bytes: 1 << 20,
        }
    }
}

/// One runtime handler's low-level runtime.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// What runs the containers: a runc-compatible binary, or libcontainer in crust.
    #[serde(default, rename = "type")]
    pub kind: RuntimeKind,
    /// The binary of an `oci` runtime: a name looked up in PATH, or an absolute path.
    #[serde(default)]
    pub path: PathBuf,
}

/// The kinds of low-level runtime.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// A runc-compatible CLI (runc, crun, youki) at `path`.
    #[default]
    Oci,
    /// youki's libcontainer inside crust-monitor and crustd: no runtime binary.
    Embedded,
}

impl RuntimeConfig {
    /// The handler as the sandbox service takes it.
    pub fn handler(&self) -> crust_sandbox::Handler {
        match self.kind {
            RuntimeKind::Oci => crust_sandbox::Handler::Oci(self.path.clone()),
            RuntimeKind::Embedded => crust_sandbox::Handler::Embedded,
        }
    }
}

/// Log output formats.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Cgroup drivers kubelet knows.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    /// Cgroup paths are file-system paths (`/kubepods/burstable/pod<uid>`).
    Cgroupfs,
    /// Cgroups are systemd slices (`kubepods-burstable-pod<uid>.slice`).
    Systemd,
}

/// Registry access.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// A directory in containerd's hosts.toml layout (`<host>/hosts.toml`): mirrors,
    /// plain HTTP, TLS settings. Point it at `/etc/containerd/certs.d` to share
    /// containerd's.
    pub config_path: Option<PathBuf>,
    /// Credentials per registry host, used when a pull request carries none.
    pub auths: BTreeMap<String, Credentials>,
    /// The most one layer may unpack to (its archive, and its files, holes counted).
    pub max_layer_unpacked_bytes: u64,
    /// The most all of an image's layers may unpack to together.
    pub max_image_unpacked_bytes: u64,
    /// How long a registry connection may stay silent before the pull fails, in seconds.
    pub read_timeout_secs: u64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            config_path: None,
            auths: BTreeMap::new(),
            max_layer_unpacked_bytes: crust_image::registry::DEFAULT_MAX_LAYER_UNPACKED_BYTES,
            max_image_unpacked_bytes: crust_image::registry::DEFAULT_MAX_IMAGE_UNPACKED_BYTES,
            read_timeout_secs: crust_image::registry::DEFAULT_READ_TIMEOUT.as_secs(),
        }
    }
}

/// CNI network configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CniConfig {
    /// Directory of network configurations; the lexically first one is used.
    pub conf_dir: PathBuf,
    /// Directories searched for plugin binaries, in order.
    pub bin_dirs: Vec<PathBuf>,
    /// Where plugin results are cached (libcni's layout).
    pub cache_dir: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: "/var/lib/crust".into(),
            state: "/run/crust".into(),
            listen: "/run/crust/crust.sock".into(),
            log_level: "info".into(),
            log_format: LogFormat::Text,
            cgroup_driver: CgroupDriver::Cgroupfs,
            registry: RegistryConfig {
                config_path: Some("/etc/crust/certs.d".into()),
                ..RegistryConfig::default()
            },
            cni: CniConfig::default(),
            default_runtime: "embedded".into(),
            runtimes: BTreeMap::from([
                (
                    "runc".to_string(),
                    RuntimeConfig {
                        kind: RuntimeKind::Oci,
                        path: "runc".into(),
                    },
                ),
                (
                    "embedded".to_string(),
                    RuntimeConfig {
                        kind: RuntimeKind::Embedded,
                        path: PathBuf::new(),
                    },
                ),
            ]),
            user_namespace_runtime: None,
            monitor_path: None,
            metrics_address: None,
            pause_image: None,
            drop_infra_container: true,
            streaming: StreamingConfig::default(),
        }
    }
}

impl Default for CniConfig {
    fn default() -> Self {
        CniConfig {
            conf_dir: "/etc/cni/net.d".into(),
            bin_dirs: vec!["/opt/cni/bin".into(), "/usr/lib/cni".into()],
            cache_dir: "/var/lib/cni".into(),
        }
    }
}

/// The default configuration as a commented TOML file: what `crustd config default` prints.
pub const DEFAULT_CONFIG_TOML: &str = r#"# crustd configuration. Every key is optional; these are the defaults.
# Command-line flags (--root, --state, --listen, --log-level, --log-format) override them.

# Persistent data: the metadata store, unpacked image layers, containers' writable layers.
root = "/var/lib/crust"

# Runtime state, best on tmpfs: bundles, rootfs mountpoints, monitor sockets, pinned netns.
state = "/run/crust"

# The CRI socket (mode 0660) for kubelet (--container-runtime-endpoint
# unix:///run/crust/crust.sock) and crictl.
listen = "/run/crust/crust.sock"

# error, warn, info, debug or trace; debug logs every RPC with its duration and code.
# Any tracing filter directive works too, e.g. "info,crust_image=debug".
log_level = "info"

# "text" for people, "json" for log collectors.
log_format = "text"

# The cgroup driver kubelet must use with crust: "cgroupfs" or "systemd".
cgroup_driver = "cgroupfs"

# The runtime handler for pods whose RuntimeClass names none: the embedded one starts
# containers without running a runtime binary; "runc" for CRIU checkpoints of every
# pod (the embedded handler refuses them).
default_runtime = "embedded"

# The handler that runs pods with a user namespace (hostUsers: false) when the one they
# name is embedded: libcontainer 0.7 would exec into them outside their user namespace.
# Unset: "runc" where it is configured; "" refuses such pods on embedded handlers.
# user_namespace_runtime = "runc"

# The per-container monitor; unset means the crust-monitor installed beside crustd.
# monitor_path = "/usr/local/bin/crust-monitor"

# Prometheus/OpenMetrics metrics (per-RPC latency and counts, image pulls, pod and
# container start latency, OOM kills, sandboxes and containers by state, live monitors)
# at http://ADDRESS/metrics. Off unless set; prefer loopback.
# metrics_address = "127.0.0.1:9539"

# Pods run crust's built-in static pause program, which needs no image. To run a pause
# image instead (pulled on first use and kept pinned), name it here.
# pause_image = "registry.k8s.io/pause:3.10"

# Pods whose containers do not share a PID namespace (Kubernetes' default) and that
# have no user namespace run no pause process at all: crust pins their IPC and UTS
# namespaces as it pins the network namespace, as CRI-O's drop_infra_ctr does. False
# gives every pod a pause process.
drop_infra_container = true

# Runtime handlers by RuntimeClass name. `type = "oci"` (the default) is any
# runc-compatible CLI at `path` (runc, crun, youki); `type = "embedded"` is youki's
# libcontainer built into crust: no runtime binary runs, crust-monitor creates the
# container itself (checkpoint and restore need an oci handler). A pod asking for a
# handler not listed here is refused.
[runtimes.runc]
path = "runc"

[runtimes.embedded]
type = "embedded"

# [runtimes.crun]
# path = "/usr/bin/crun"

[streaming]
# Exec, Attach and PortForward answer with a URL on this server (SPDY/3.1 and
# WebSocket). Loopback keeps it private to the node, which is where kubelet and crictl
# connect from; port 0 picks a free port.
address = "127.0.0.1"
port = 0
# Serve TLS with this PEM certificate chain and key (both or neither).
# tls_cert = "/etc/crust/streaming.crt"
# tls_key = "/etc/crust/streaming.key"
# How long a URL works, once, after the call that issued it.
token_ttl_secs = 60
# Limits on what a client can make crustd hold. A connection that goes this many
# seconds without a frame or message either way is closed.
idle_timeout_secs = 14400
# Time to open an exec or attach's streams, or a port-forward pair's second stream.
stream_creation_timeout_secs = 30
# Upgraded connections at once; more are answered 503 Service Unavailable.
max_connections = 128
# SPDY: streams open or queued per connection (more are refused with RST_STREAM and
# a client that keeps trying gets GOAWAY), the largest decompressed header block and
# the header bytes a connection's open streams may hold (more ends it with GOAWAY).
max_streams_per_session = 64
max_header_block_bytes = 65536
max_header_bytes = 1048576
# SPDY port-forward: streams waiting for the other stream of their pair.
max_pending_port_forward_pairs = 32
# WebSocket: the largest message or frame a client may send; more closes with 1009.
ws_max_message_bytes = 1048576

[registry]
# Registry hosts in containerd's hosts.toml layout: one directory per registry host
# (certs.d/<host>/hosts.toml) with `server`, mirror `[host."..."]` entries and their
# capabilities, `skip_verify` and `ca` files. Set it to /etc/containerd/certs.d to use
# containerd's tree unchanged. Registries on loopback addresses use plain HTTP, but
# credentials only go over plain HTTP to an endpoint hosts.toml names with http://.
config_path = "/etc/crust/certs.d"

# Pulls are bounded. A layer may not unpack to more than this (its uncompressed
# archive, and its file data counting sparse files' holes): 16 GiB.
max_layer_unpacked_bytes = 17179869184
# Nor an image, all layers together: 64 GiB. Manifests, indexes and configs are
# capped at 4 MiB, and every blob at its descriptor's size.
max_image_unpacked_bytes = 68719476736
# Seconds a registry connection may stay silent before the pull fails.
read_timeout_secs = 60

# Credentials per registry host, used when kubelet sends none:
# [registry.auths."registry.example.com"]
# username = "me"
# password = "secret"
# auth = "base64(user:password)"   # instead of username/password
# identity_token = "..."
# registry_token = "..."

[cni]
# Network configurations (.conf, .conflist, .json); the lexically first one is used
# and changes are picked up without a restart.
conf_dir = "/etc/cni/net.d"
# Plugin binaries, searched in order (Debian's containernetworking-plugins install
# into /usr/lib/cni).
bin_dirs = ["/opt/cni/bin", "/usr/lib/cni"]
# Plugin results, in libcni's layout, so DEL gets what ADD returned.
cache_dir = "/var/lib/cni"
"#;

impl Config {
    /// Reads `path`; a missing file means defaults unless `required`.
    pub fn load(path: &Path, required: bool) -> anyhow::Result<Config> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Config::default());
            }
            Err(e) => return Err(e).with_context(|| format!("read config {}", path.display())),
        };
        let config = Self::parse(&text).with_context(|| format!("config {}", path.display()))?;
        Ok(config)
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> anyhow::Result<Config> {
        let mut config: Config =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))?;
        // The embedded handler needs nothing installed: it stays configured beside
        // the handlers a config lists, unless one takes its name.
        config
            .runtimes
            .entry("embedded".to_owned())
            .or_insert_with(|| RuntimeConfig {
                kind: RuntimeKind::Embedded,
                path: PathBuf::new(),
            });
        config.validate()?;
        Ok(config)
    }

    /// The handler that runs user-namespaced pods of embedded handlers, resolved: the
    /// configured one, else `runc` when it is an OCI runtime here; `None`: refused.
    pub fn user_namespace_runtime(&self) -> Option<String> {
        match self.user_namespace_runtime.as_deref() {
            Some("") => None,
            Some(name) => Some(name.to_owned()),
            None => self
                .runtimes
                .get("runc")
                .is_some_and(|r| r.kind == RuntimeKind::Oci)
                .then(|| "runc".to_owned()),
        }
    }

    /// Refuses values that parse but cannot work.
    pub fn validate(&self) -> anyhow::Result<()> {
        for (key, path) in [
            ("root", &self.root),
            ("state", &self.state),
            ("listen", &self.listen),
        ] {
            if !path.is_absolute() {
                bail!("{key}: {path:?} is not an absolute path");
            }
        }
        if self.root == self.state {
            bail!("root and state: must be different directories");
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            bail!("log_level: {:?}: {e}", self.log_level);
        }
        if !self.cni.conf_dir.is_absolute() {
            bail!(
                "cni.conf_dir: {:?} is not an absolute path",
                self.cni.conf_dir
            );
        }
        if let Some(p) = self.cni.bin_dirs.iter().find(|p| !p.is_absolute()) {
            bail!("cni.bin_dirs: {p:?} is not an absolute path");
        }
        if !self.runtimes.contains_key(&self.default_runtime) {
            bail!(
                "default_runtime: {:?} is not a configured [runtimes.*] entry",
                self.default_runtime
            );
        }
        if let Some(name) = self
            .user_namespace_runtime
            .as_deref()
            .filter(|n| !n.is_empty())
        {
            match self.runtimes.get(name) {
                Some(r) if r.kind == RuntimeKind::Oci => {}
                Some(_) => bail!("user_namespace_runtime: {name:?} is an embedded runtime"),
                None => {
                    bail!("user_namespace_runtime: {name:?} is not a configured [runtimes.*] entry")
                }
            }
        }
        for (name, runtime) in &self.runtimes {
            match runtime.kind {
                RuntimeKind::Oci if runtime.path.as_os_str().is_empty() => {
                    bail!("runtimes.{name}.path: empty");
                }
                RuntimeKind::Embedded if !runtime.path.as_os_str().is_empty() => {
                    bail!("runtimes.{name}.path: an embedded runtime runs no binary");
                }
                _ => {}
            }
        }
        if self.streaming.tls_cert.is_some() != self.streaming.tls_key.is_some() {
            bail!("streaming.tls_cert and streaming.tls_key: set both or neither");
        }
        let s = &self.streaming;
        for (key, value) in [
            ("token_ttl_secs", s.token_ttl_secs as usize),
            ("idle_timeout_secs", s.idle_timeout_secs as usize),
            (
                "stream_creation_timeout_secs",
                s.stream_creation_timeout_secs as usize,
            ),
            ("max_connections", s.max_connections),
            ("max_streams_per_session", s.max_streams_per_session),
            ("max_header_block_bytes", s.max_header_block_bytes),
            ("max_header_bytes", s.max_header_bytes),
            (
                "max_pending_port_forward_pairs",
                s.max_pending_port_forward_pairs,
            ),
            ("ws_max_message_bytes", s.ws_max_message_bytes),
        ] {
            if value == 0 {
                bail!("streaming.{key}: must be at least 1");
            }
        }
        if s.max_header_block_bytes > s.max_header_bytes {
            bail!("streaming.max_header_block_bytes: must not exceed max_header_bytes");
        }
        // The SPDY length field has 24 bits: a larger block could never arrive.
        if s.max_header_block_bytes >= 1 << 24 {
            bail!("streaming.max_header_block_bytes: must be below 16 MiB");
        }
        for (key, value) in [
            (
                "max_layer_unpacked_bytes",
                self.registry.max_layer_unpacked_bytes,
            ),
            (
                "max_image_unpacked_bytes",
                self.registry.max_image_unpacked_bytes,
            ),
            ("read_timeout_secs", self.registry.read_timeout_secs),
        ] {
            if value == 0 {
                bail!("registry.{key}: must be at least 1");
            }
        }
        for (host, creds) in &self.registry.auths {
            if creds.is_empty() {
                bail!("registry.auths.{host:?}: no credentials given");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_namespace_runtime_defaults_to_runc_and_must_be_an_oci_handler() {
        let defaults = Config::default();
        assert_eq!(defaults.default_runtime, "embedded");
        assert_eq!(defaults.user_namespace_runtime().as_deref(), Some("runc"));
        let off = Config::parse("user_namespace_runtime = \"\"\n").unwrap();
        assert_eq!(off.user_namespace_runtime(), None);
        let only_embedded =
            Config::parse("default_runtime = \"e\"\n[runtimes.e]\ntype = \"embedded\"\n").unwrap();
        assert_eq!(only_embedded.user_namespace_runtime(), None);
        for (text, says) in [
            (
                "user_namespace_runtime = \"embedded\"\n",
                "is an embedded runtime",
            ),
            ("user_namespace_runtime = \"crun\"\n", "not a configured"),
        ] {
            let err = Config::parse(text).unwrap_err().to_string();
            assert!(err.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn documented_defaults_are_the_defaults() {
        assert_eq!(
            Config::parse(DEFAULT_CONFIG_TOML).unwrap(),
            Config::default()
        );
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = Config::parse("rooot = \"/x\"").unwrap_err().to_string();
        assert!(e.contains("rooot"), "{e}");
        let e = Config::parse("[registry]\nmirrors = 1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("mirrors"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let e = Config::parse("cgroup_driver = \"cgroupv3\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cgroup_driver"), "{e}");
        let e = Config::parse("root = \"relative\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("root"), "{e}");
        let e = Config::parse("log_level = \"loud[\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("log_level"), "{e}");
        let e = Config::parse("[registry.auths.\"r.example\"]\nuser = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("user"), "{e}");
    }

    #[test]
    fn streaming_limits_are_checked() {
        let c = Config::parse("[streaming]\nmax_connections = 2\nidle_timeout_secs = 5").unwrap();
        assert_eq!(c.streaming.max_connections, 2);
        assert_eq!(c.streaming.idle_timeout_secs, 5);
        let e = Config::parse("[streaming]\nmax_streams_per_session = 0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("streaming.max_streams_per_session"), "{e}");
        let e = Config::parse("[streaming]\nmax_header_block_bytes = 2000000")
            .unwrap_err()
            .to_string();
        assert!(e.contains("streaming.max_header_block_bytes"), "{e}");
    }

    #[test]
    fn pull_bounds_parse_and_refuse_zero() {
        let c = Config::parse(
            "[registry]\nmax_layer_unpacked_bytes = 1048576\nmax_image_unpacked_bytes = 2097152\nread_timeout_secs = 2",
        )
        .unwrap();
        assert_eq!(c.registry.max_layer_unpacked_bytes, 1 << 20);
        assert_eq!(c.registry.max_image_unpacked_bytes, 2 << 20);
        assert_eq!(c.registry.read_timeout_secs, 2);
        let e = Config::parse("[registry]\nread_timeout_secs = 0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("registry.read_timeout_secs"), "{e}");
    }

    #[test]
    fn credentials_parse() {
        let c = Config::parse("[registry.auths.\"r.example\"]\nusername = \"u\"\npassword = \"p\"")
            .unwrap();
        assert_eq!(c.registry.auths["r.example"].username, "u");
    }
}
