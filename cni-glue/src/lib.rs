//! CNI glue: network namespaces, CNI configuration loading, plugin execution and the
//! result cache.
//!
//! [`Cni`] is the facade the sandbox layer uses: it keeps the loaded network config
//! (re-read when the config directory changes), runs a pod's ADD through the plugin
//! list and caches the result in libcni's layout, and runs DEL with what ADD cached.
//! All calls block (plugins are external programs); the daemon calls them from
//! `tokio::task::spawn_blocking`.
#![deny(missing_docs)]

pub mod cache;
pub mod config;
pub mod error;
pub mod exec;
mod loopback;
pub mod netns;
pub mod result;
pub mod version;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

pub use cache::{CacheEntry, ResultCache};
pub use config::{ConfList, ConfigWatcher, PluginConf};
pub use error::{CniError, ErrorKind, Result};
pub use exec::{GcAttachment, PluginExec, RuntimeConf};
pub use netns::{NetNs, run_in_netns};
pub use result::CniResult;

/// The default network config directory.
pub const DEFAULT_CONF_DIR: &str = "/etc/cni/net.d";

/// The default interface name inside the sandbox.
pub const DEFAULT_IFNAME: &str = "eth0";

/// Where [`Cni`] finds configs and plugins and keeps its cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniOptions {
    /// The network config directory (default `/etc/cni/net.d`).
    pub conf_dir: PathBuf,
    /// The plugin directories, searched in order (default `/opt/cni/bin`, `/usr/lib/cni`).
    pub bin_dirs: Vec<PathBuf>,
    /// The cache directory; results go to `<cache_dir>/results` (default `/var/lib/cni`).
    pub cache_dir: PathBuf,
    /// How long one plugin invocation may take (default 60 s).
    pub plugin_timeout: Duration,
}

impl Default for CniOptions {
    fn default() -> Self {
        CniOptions {
            conf_dir: DEFAULT_CONF_DIR.into(),
            bin_dirs: exec::DEFAULT_BIN_DIRS.iter().map(PathBuf::from).collect(),
            cache_dir: cache::DEFAULT_CACHE_DIR.into(),
            plugin_timeout: exec::DEFAULT_PLUGIN_TIMEOUT,
        }
    }
}

/// A port mapping's protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

/// A host port forwarded to the pod (the `portMappings` capability).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    /// The port on the host; mappings with 0 are not passed to plugins.
    pub host_port: u16,
    /// The port in the pod.
    pub container_port: u16,
    /// The protocol.
    pub protocol: Protocol,
    /// The host address to bind; empty means all.
    #[serde(rename = "hostIP", skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
}

/// Traffic shaping for the pod (the `bandwidth` capability), in bits per second and bits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Bandwidth {
    /// Ingress rate.
    pub ingress_rate: u64,
    /// Ingress burst.
    pub ingress_burst: u64,
    /// Egress rate.
    pub egress_rate: u64,
    /// Egress burst.
    pub egress_burst: u64,
}

/// DNS settings for plugins that apply them (the `dns` capability).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DnsConfig {
    /// Name servers.
    pub servers: Vec<String>,
    /// Search domains.
    pub searches: Vec<String>,
    /// Resolver options.
    pub options: Vec<String>,
}

/// A pod's network attachment: what ADD, DEL and CHECK are run for.
#[derive(Debug, Clone, PartialEq)]
pub struct PodNetwork {
    /// The sandbox id (`CNI_CONTAINERID`, `K8S_POD_INFRA_CONTAINER_ID`).
    pub id: String,
    /// The pod's netns path (`CNI_NETNS`).
    pub netns_path: PathBuf,
    /// The interface name inside the pod (default `eth0`).
    pub ifname: String,
    /// The pod's namespace (`K8S_POD_NAMESPACE`).
    pub namespace: String,
    /// The pod's name (`K8S_POD_NAME`).
    pub name: String,
    /// The pod's uid (`K8S_POD_UID`).
    pub uid: String,
    /// Host ports (the `portMappings` capability).
    pub port_mappings: Vec<PortMapping>,
    /// Traffic shaping (the `bandwidth` capability).
    pub bandwidth: Option<Bandwidth>,
    /// DNS settings (the `dns` capability).
    pub dns: Option<DnsConfig>,
    /// Any other capability args (`ipRanges`, `cgroupPath`,
    /// `io.kubernetes.cri.pod-annotations`, ...); the typed fields above win.
    pub capability_args: Map<String, Value>,
}

impl PodNetwork {
    /// An attachment of sandbox `id` in `netns_path` on `eth0`, with nothing else set.
    pub fn new(id: impl Into<String>, netns_path: impl Into<PathBuf>) -> PodNetwork {
        PodNetwork {
            id: id.into(),
            netns_path: netns_path.into(),
            ifname: DEFAULT_IFNAME.into(),
            namespace: String::new(),
            name: String::new(),
            uid: String::new(),
            port_mappings: Vec::new(),
            bandwidth: None,
            dns: None,
            capability_args: Map::new(),
        }
    }

    /// The CNI_ARGS pairs kubelet's runtimes pass.
    pub fn cni_args(&self) -> Vec<(String, String)> {
        [
            ("IgnoreUnknown", "1"),
            ("K8S_POD_NAMESPACE", self.namespace.as_str()),
            ("K8S_POD_NAME", self.name.as_str()),
            ("K8S_POD_INFRA_CONTAINER_ID", self.id.as_str()),
            ("K8S_POD_UID", self.uid.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// The capability args: the extra ones, then the typed ones.
    pub fn capability_args(&self) -> Map<String, Value> {
        let mut args = self.capability_args.clone();
        let ports: Vec<&PortMapping> = self
            .port_mappings
            .iter()
            .filter(|p| p.host_port != 0)
            .collect();
        if !ports.is_empty() {
            args.insert("portMappings".into(), to_value(&ports));
        }
        if let Some(bandwidth) = &self.bandwidth {
            args.insert("bandwidth".into(), to_value(bandwidth));
        }
        if let Some(dns) = &self.dns {
            args.insert("dns".into(), to_value(dns));
        }
        args
    }

    /// The invocation arguments for this attachment, validated.
    pub fn runtime_conf(&self) -> Result<RuntimeConf> {
        let rt = RuntimeConf {
            container_id: self.id.clone(),
            netns: self.netns_path.to_string_lossy().into_owned(),
            ifname: self.ifname.clone(),
            args: self.cni_args(),
            capability_args: self.capability_args(),
        };
        rt.validate()?;
        Ok(rt)
    }
}

fn to_value<T: Serialize>(value: &T) -> Value {
    // These types hold only strings and numbers: serializing them cannot fail.
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// The CNI facade: the loaded network config, plugin execution and the result cache.
#[derive(Debug)]
pub struct Cni {
    exec: PluginExec,
    cache: ResultCache,
    config: Mutex<ConfigWatcher>,
}

impl Cni {
    /// A facade over `options`; the config is read on first use, and re-read whenever
    /// the directory changed (see [`Cni::reload_if_changed`]).
    pub fn new(options: CniOptions) -> Cni {
        Cni {
            exec: PluginExec::new(options.bin_dirs, options.plugin_timeout),
            cache: ResultCache::new(options.cache_dir),
            config: Mutex::new(ConfigWatcher::new(options.conf_dir)),
        }
    }

    /// Removes what interrupted cache writes left (see
    /// [`ResultCache::remove_stale_temporaries`]). Blocking.
    pub fn remove_stale_temporaries(&self) -> usize {
        self.cache.remove_stale_temporaries()
    }

    /// The plugin runner, for VERSION queries and direct use.
    pub fn exec(&self) -> &PluginExec {
        &self.exec
    }

    /// The result cache.
    pub fn cache(&self) -> &ResultCache {
        &self.cache
    }

    fn watcher(&self) -> MutexGuard<'_, ConfigWatcher> {
        // The watcher's state stays consistent even if a holder panicked.
        self.config
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Re-reads the config if the config directory changed; returns whether it did.
    /// Cheap (a listing and a few stats): the daemon calls it every second or two.
    pub fn reload_if_changed(&self) -> bool {
        self.watcher().load_if_changed()
    }

    /// The current network config (checking the directory for changes first).
    pub fn network_config(&self) -> Result<Arc<ConfList>> {
        let mut watcher = self.watcher();
        watcher.load_if_changed();
        watcher.current()
    }

    /// Whether pods can be networked: a config is loaded and all its plugin binaries
    /// exist. The error is the reason for `NetworkReady=false`.
    pub fn network_ready(&self) -> Result<()> {
        let list = self.network_config()?;
        for plugin in &list.plugins {
            self.exec.find(&plugin.plugin_type)?;
        }
        Ok(())
    }

    /// Attaches the pod: ADD through the list, then caches the final result.
    ///
    /// On failure nothing is left behind: DEL runs for the whole list (also when the
    /// cache cannot be written) and the first error is returned.
    pub fn setup(&self, pod: &PodNetwork) -> Result<CniResult> {
        let rt = pod.runtime_conf()?;
        let list = self.network_config()?;
        let result = self.exec.add_list(&list, &rt)?;
        let entry = CacheEntry {
            kind: cache::CACHE_KIND.into(),
            container_id: rt.container_id.clone(),
            config: list.bytes().to_vec(),
            ifname: rt.ifname.clone(),
            network_name: list.name.clone(),
            netns: rt.netns.clone(),
            cni_args: rt.args.clone(),
            capability_args: rt.capability_args.clone(),
            result: result.raw().clone(),
        };
        if let Err(err) = self.cache.write(&entry) {
            if let Err(undo) = self.exec.del_list(&list, &rt, Some(result.raw())) {
                tracing::warn!(network = %list.name, container = %rt.container_id, "cni undo after cache failure: {undo}");
            }
            return Err(err);
        }
        tracing::info!(
            network = %list.name,
            container = %rt.container_id,
            ip = ?result.primary_ip(),
            "attached pod network"
        );
        Ok(result)
    }

    /// Detaches the pod: DEL through the list, in reverse, then drops the cache entry.
    ///
    /// Uses what ADD cached (the config list, CNI_ARGS, capability args and result), so
    /// a config changed or removed since still tears down what was set up. Without a
    /// cache entry, DEL runs with the current config and no `prevResult`; with neither,
    /// nothing was set up by us and this succeeds. Repeating it succeeds.
    pub fn teardown(&self, pod: &PodNetwork) -> Result<()> {
        let rt = pod.runtime_conf()?;
        let entries: Vec<CacheEntry> = self
            .cache
            .list(Some(&rt.container_id))?
            .into_iter()
            .filter(|e| e.ifname == rt.ifname)
            .collect();
        let current = self.network_config();
        if entries.is_empty() {
            let list = match current {
                Ok(list) => list,
                Err(err) => {
                    tracing::warn!(container = %rt.container_id, "cni teardown without cached result or config: {err}");
                    return Ok(());
                }
            };
            // A pre-cniCacheV1 entry is found only by name.
            let prev = match self.cache.read(&list.name, &rt.container_id, &rt.ifname) {
                Ok(entry) => entry.map(|e| e.result),
                Err(err) => {
                    tracing::warn!(container = %rt.container_id, "ignoring unreadable cni cache: {err}");
                    None
                }
            };
            self.exec.del_list(&list, &rt, prev.as_ref())?;
            return self.cache.remove(&list.name, &rt.container_id, &rt.ifname);
        }
        let mut errors = Vec::new();
        for entry in entries {
            if let Err(err) = self.del_cached(&entry, &rt, current.as_ref().ok()) {
                errors.push(err);
            }
        }
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(CniError::Multiple(errors)),
        }
    }

    /// Runs DEL for one cached attachment and removes the entry.
    fn del_cached(
        &self,
        entry: &CacheEntry,
        rt: &RuntimeConf,
        current: Option<&Arc<ConfList>>,
    ) -> Result<()> {
        let cache_path =
            self.cache
                .path(&entry.network_name, &entry.container_id, &entry.ifname)?;
        let list = match ConfList::from_conflist_bytes(&entry.config, &cache_path) {
            Ok(list) => Arc::new(list),
            Err(err) => match current.filter(|l| l.name == entry.network_name) {
                Some(list) => list.clone(),
                None => return Err(err),
            },
        };
        let mut rt = rt.clone();
        if !entry.cni_args.is_empty() {
            rt.args = entry.cni_args.clone();
        }
        rt.capability_args = entry.capability_args.clone();
        let prev = (!entry.result.is_null()).then_some(&entry.result);
        self.exec.del_list(&list, &rt, prev)?;
        self.cache
            .remove(&entry.network_name, &entry.container_id, &entry.ifname)?;
        tracing::info!(network = %entry.network_name, container = %entry.container_id, "detached pod network");
        Ok(())
    }

    /// Checks the pod's attachment with CHECK (spec 0.4.0+; a no-op before, or with
    /// `disableCheck`). Fails with NotFound when ADD's result is not cached.
    pub fn check(&self, pod: &PodNetwork) -> Result<()> {
        let rt = pod.runtime_conf()?;
        let list = self.network_config()?;
        if list.spec_version < version::SpecVersion::V0_4_0 || list.disable_check {
            return Ok(());
        }
        let entry = self
            .cache
            .read(&list.name, &rt.container_id, &rt.ifname)?
            .ok_or_else(|| CniError::CacheMissing {
                network: list.name.clone(),
                container_id: rt.container_id.clone(),
                ifname: rt.ifname.clone(),
            })?;
        self.exec.check_list(&list, &rt, &entry.result)
    }

    /// The result ADD cached for the pod on the current network, if any (for recovery
    /// after a restart: the pod IP).
    pub fn cached_result(&self, pod: &PodNetwork) -> Result<Option<CniResult>> {
        let list = self.network_config()?;
        let Some(entry) = self.cache.read(&list.name, &pod.id, &pod.ifname)? else {
            return Ok(None);
        };
        CniResult::from_value(entry.result, &list.cni_version).map(Some)
    }

    /// Asks the plugins whether they are ready (STATUS, spec 1.1.0+; a no-op before).
    pub fn status(&self) -> Result<()> {
        let list = self.network_config()?;
        self.exec.status_list(&list)
    }

    /// Garbage-collects the current network: DEL for every cached attachment of it that
    /// is not in `valid` (as libcni does), then GC through the plugins (spec 1.1.0+).
    /// A no-op with `disableGC`.
    pub fn gc(&self, valid: &[GcAttachment]) -> Result<()> {
        let list = self.network_config()?;
        if list.disable_gc {
            return Ok(());
        }
        let mut errors = Vec::new();
        for entry in self.cache.list(None)? {
            let in_use = valid
                .iter()
                .any(|v| v.container_id == entry.container_id && v.ifname == entry.ifname);
            if entry.network_name != list.name || in_use {
                continue;
            }
            let rt = RuntimeConf {
                container_id: entry.container_id.clone(),
                netns: entry.netns.clone(),
                ifname: entry.ifname.clone(),
                args: entry.cni_args.clone(),
                capability_args: entry.capability_args.clone(),
            };
            if let Err(err) = self.del_cached(&entry, &rt, Some(&list)) {
                errors.push(err);
            }
        }
        if let Err(err) = self.exec.gc_list(&list, valid) {
            errors.push(err);
        }
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(CniError::Multiple(errors)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    /// A temp dir with a fake plugin `fake` that logs its calls and answers ADD.
    struct Fixture {
        dir: tempfile::TempDir,
        cni: Cni,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            for sub in ["bin", "net.d", "cache"] {
                fs::create_dir(dir.path().join(sub)).unwrap();
            }
            let log = dir.path().join("log");
            let plugin = dir.path().join("bin/fake");
            fs::write(
                &plugin,
                format!(
                    "#!/bin/sh\ncat > {log}.stdin.$CNI_COMMAND\necho \"$CNI_COMMAND $CNI_CONTAINERID\" >> {log}\n\
                     [ \"$CNI_COMMAND\" = ADD ] && echo '{{\"cniVersion\":\"1.1.0\",\"interfaces\":[{{\"name\":\"eth0\",\"sandbox\":\"/x\"}}],\"ips\":[{{\"address\":\"10.7.0.2/24\",\"interface\":0}}]}}'\n\
                     exit 0\n",
                    log = log.display()
                ),
            )
            .unwrap();
            fs::set_permissions(&plugin, fs::Permissions::from_mode(0o755)).unwrap();
            let cni = Cni::new(CniOptions {
                conf_dir: dir.path().join("net.d"),
                bin_dirs: vec![dir.path().join("bin")],
                cache_dir: dir.path().join("cache"),
                plugin_timeout: Duration::from_secs(10),
            });
            Fixture { dir, cni }
        }

        fn write_config(&self, network: &str) {
            fs::write(
                self.dir.path().join("net.d/10.conflist"),
                format!(
                    r#"{{"cniVersion":"1.1.0","name":"{network}","plugins":[{{"type":"fake"}}]}}"#
                ),
            )
            .unwrap();
        }

        fn log(&self) -> String {
            fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
        }

        fn stdin(&self, command: &str) -> Value {
            serde_json::from_slice(
                &fs::read(self.dir.path().join(format!("log.stdin.{command}"))).unwrap(),
            )
            .unwrap()
        }

        fn cached(&self, network: &str, id: &str) -> bool {
            self.dir
                .path()
                .join(format!("cache/results/{network}-{id}-eth0"))
                .exists()
        }
    }

    fn pod(id: &str) -> PodNetwork {
        let mut pod = PodNetwork::new(id, Path::new("/run/netns/x"));
        pod.namespace = "ns".into();
        pod.name = "name".into();
        pod.uid = "uid".into();
        pod.port_mappings = vec![
            PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: Protocol::Udp,
                host_ip: String::new(),
            },
            PortMapping {
                host_port: 0,
                container_port: 81,
                ..Default::default()
            },
        ];
        pod
    }

    #[test]
    fn pod_network_builds_kubernetes_cni_args_and_capabilities() {
        let rt = pod("p1").runtime_conf().unwrap();
        assert_eq!(
            rt.cni_args(),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=name;K8S_POD_INFRA_CONTAINER_ID=p1;K8S_POD_UID=uid"
        );
        assert_eq!(
            Value::Object(rt.capability_args),
            serde_json::json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "udp"}]})
        );
        assert!(pod("../p1").runtime_conf().is_err());
    }

    #[test]
    fn network_ready_reports_why_not() {
        let f = Fixture::new();
        let err = f.cni.network_ready().unwrap_err();
        assert!(
            err.to_string().starts_with("no network config found in"),
            "{err}"
        );
        fs::write(
            f.dir.path().join("net.d/10.conflist"),
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"absent"}]}"#,
        )
        .unwrap();
        assert!(matches!(
            f.cni.network_ready(),
            Err(CniError::PluginNotFound { .. })
        ));
        f.write_config("n");
        f.cni.network_ready().unwrap();
    }

    #[test]
    fn teardown_uses_the_cached_config_and_result() {
        let f = Fixture::new();
        f.write_config("first");
        let p = pod("p1");
        let result = f.cni.setup(&p).unwrap();
        assert_eq!(result.primary_ip(), Some("10.7.0.2".parse().unwrap()));
        assert!(f.cached("first", "p1"));
        f.cni.check(&p).unwrap();
        assert_eq!(f.stdin("CHECK")["prevResult"], *result.raw());

        // The config now names another network; DEL still goes to the first one.
        f.write_config("second");
        f.cni.teardown(&p).unwrap();
        assert!(!f.cached("first", "p1"));
        let del = f.stdin("DEL");
        assert_eq!(del["name"], "first");
        assert_eq!(del["prevResult"], *result.raw());
        assert_eq!(f.log(), "ADD p1\nCHECK p1\nDEL p1\n");

        // Without a cache entry DEL runs with the current config and no prevResult.
        f.cni.teardown(&p).unwrap();
        let del = f.stdin("DEL");
        assert_eq!(del["name"], "second");
        assert!(del.get("prevResult").is_none());

        // With neither a cache entry nor a config there is nothing to undo.
        fs::remove_file(f.dir.path().join("net.d/10.conflist")).unwrap();
        f.cni.teardown(&p).unwrap();
        assert_eq!(f.log(), "ADD p1\nCHECK p1\nDEL p1\nDEL p1\n");
    }

    #[test]
    fn check_without_a_cached_result_is_not_found() {
        let f = Fixture::new();
        f.write_config("n");
        assert_eq!(
            f.cni.check(&pod("p1")).unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert!(f.cni.cached_result(&pod("p1")).unwrap().is_none());
    }

    #[test]
    fn gc_deletes_stale_attachments_and_calls_gc() {
        let f = Fixture::new();
        f.write_config("n");
        f.cni.setup(&pod("keep")).unwrap();
        f.cni.setup(&pod("stale")).unwrap();
        let valid = [GcAttachment {
            container_id: "keep".into(),
            ifname: "eth0".into(),
        }];
        f.cni.gc(&valid).unwrap();
        assert!(f.cached("n", "keep"));
        assert!(!f.cached("n", "stale"));
        assert_eq!(f.log(), "ADD keep\nADD stale\nDEL stale\nGC \n");
        assert_eq!(
            f.stdin("GC")["cni.dev/valid-attachments"],
            serde_json::json!([{"containerID": "keep", "ifname": "eth0"}])
        );
        f.cni.status().unwrap();
        assert!(f.log().ends_with("STATUS \n"));
    }
}
