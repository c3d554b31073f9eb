//! CNI results of every published spec version, normalized into one struct.
//!
//! 0.1.0 and 0.2.0 results carry one `ip4` and one `ip6` object; 0.3.0 and later carry
//! `interfaces`, `ips` (pointing at an interface by index), `routes` and `dns`. The raw
//! JSON is kept, because it is what gets cached and chained as `prevResult`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::error::{CniError, Result};
use crate::version::SpecVersion;

/// An address with its prefix length, as in `10.88.0.5/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpCidr {
    /// The address.
    pub addr: IpAddr,
    /// The prefix length.
    pub prefix_len: u8,
}

impl FromStr for IpCidr {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("address {s:?} has no prefix length"))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("address {s:?} is not an IP"))?;
        let prefix_len: u8 = prefix
            .parse()
            .map_err(|_| format!("address {s:?} has a bad prefix length"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix_len > max {
            return Err(format!("address {s:?} has a prefix length over {max}"));
        }
        Ok(IpCidr { addr, prefix_len })
    }
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// An interface a plugin created or configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// The interface name.
    pub name: String,
    /// The hardware address, if reported.
    pub mac: Option<String>,
    /// The netns path for interfaces inside the sandbox; `None` for host interfaces.
    pub sandbox: Option<String>,
    /// The MTU, if reported (1.1.0).
    pub mtu: Option<u32>,
}

/// An IP address assigned to an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// The address with its prefix length.
    pub address: IpCidr,
    /// The default gateway of the subnet, if any.
    pub gateway: Option<IpAddr>,
    /// The index into [`CniResult::interfaces`], when the result says.
    pub interface: Option<usize>,
}

/// A route set up in the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The destination.
    pub dst: IpCidr,
    /// The next hop; `None` means the default gateway.
    pub gw: Option<IpAddr>,
    /// The route MTU (1.1.0).
    pub mtu: Option<u32>,
    /// The advertised MSS (1.1.0).
    pub advmss: Option<u32>,
    /// The route priority (1.1.0).
    pub priority: Option<u32>,
    /// The routing table (1.1.0).
    pub table: Option<u32>,
    /// The route scope (1.1.0).
    pub scope: Option<u32>,
}

/// DNS settings a plugin reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Dns {
    /// Name servers, in order of preference.
    pub nameservers: Vec<String>,
    /// The local domain.
    pub domain: Option<String>,
    /// Search domains.
    pub search: Vec<String>,
    /// Resolver options.
    pub options: Vec<String>,
}

/// A parsed CNI result of any spec version, with its raw JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct CniResult {
    /// The result's `cniVersion`.
    pub cni_version: String,
    /// The interfaces (empty for 0.1.0/0.2.0 results).
    pub interfaces: Vec<Interface>,
    /// The assigned addresses, in the order the plugin gave them.
    pub ips: Vec<IpConfig>,
    /// The routes.
    pub routes: Vec<Route>,
    /// The DNS settings.
    pub dns: Dns,
    raw: Value,
}

#[derive(Deserialize)]
struct RawRoute {
    dst: String,
    #[serde(default)]
    gw: Option<String>,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    advmss: Option<u32>,
    #[serde(default)]
    priority: Option<u32>,
    #[serde(default)]
    table: Option<u32>,
    #[serde(default)]
    scope: Option<u32>,
}

#[derive(Deserialize)]
struct RawIpConfigV02 {
    ip: String,
    #[serde(default)]
    gateway: Option<String>,
    #[serde(default)]
    routes: Vec<RawRoute>,
}

#[derive(Deserialize)]
struct RawResultV02 {
    #[serde(default)]
    ip4: Option<RawIpConfigV02>,
    #[serde(default)]
    ip6: Option<RawIpConfigV02>,
    #[serde(default)]
    dns: Option<Dns>,
}

#[derive(Deserialize)]
struct RawInterface {
    name: String,
    #[serde(default)]
    mac: Option<String>,
    #[serde(default)]
    sandbox: Option<String>,
    #[serde(default)]
    mtu: Option<u32>,
}

#[derive(Deserialize)]
struct RawIpConfig {
    address: String,
    #[serde(default)]
    gateway: Option<String>,
    #[serde(default)]
    interface: Option<i64>,
}

#[derive(Deserialize)]
struct RawResult {
    #[serde(default)]
    interfaces: Vec<RawInterface>,
    #[serde(default)]
    ips: Vec<RawIpConfig>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    dns: Option<Dns>,
}

impl CniResult {
    /// Parses a plugin's stdout; `default_version` is used when the result has no
    /// `cniVersion` (it must then be the config's version).
    pub fn parse(bytes: &[u8], default_version: &str) -> Result<CniResult> {
        let raw: Value = serde_json::from_slice(bytes)
            .map_err(|err| CniError::InvalidResult(format!("bad JSON: {err}")))?;
        Self::from_value(raw, default_version)
    }

    /// Parses a result already decoded as JSON (a cached one, a chained one).
    pub fn from_value(mut raw: Value, default_version: &str) -> Result<CniResult> {
        let Value::Object(doc) = &mut raw else {
            return Err(CniError::InvalidResult("not a JSON object".into()));
        };
        let cni_version = match doc.get("cniVersion") {
            Some(Value::String(v)) if !v.is_empty() => v.clone(),
            Some(Value::String(_)) | None => {
                doc.insert(
                    "cniVersion".into(),
                    Value::String(default_version.to_string()),
                );
                default_version.to_string()
            }
            Some(_) => return Err(CniError::InvalidResult("cniVersion is not a string".into())),
        };
        let version: SpecVersion = cni_version.parse().map_err(CniError::InvalidResult)?;
        let mut result = if version < SpecVersion::V0_3_0 {
            Self::from_legacy(&raw)?
        } else {
            Self::from_current(&raw)?
        };
        result.cni_version = cni_version;
        result.raw = raw;
        Ok(result)
    }

    fn from_legacy(raw: &Value) -> Result<CniResult> {
        let doc: RawResultV02 = serde_json::from_value(raw.clone())
            .map_err(|err| CniError::InvalidResult(err.to_string()))?;
        let mut ips = Vec::new();
        let mut routes = Vec::new();
        for config in [doc.ip4, doc.ip6].into_iter().flatten() {
            ips.push(IpConfig {
                address: parse_cidr(&config.ip)?,
                gateway: parse_opt_ip(config.gateway.as_deref())?,
                interface: None,
            });
            for route in config.routes {
                routes.push(convert_route(route)?);
            }
        }
        Ok(CniResult {
            cni_version: String::new(),
            interfaces: Vec::new(),
            ips,
            routes,
            dns: doc.dns.unwrap_or_default(),
            raw: Value::Null,
        })
    }

    fn from_current(raw: &Value) -> Result<CniResult> {
        let doc: RawResult = serde_json::from_value(raw.clone())
            .map_err(|err| CniError::InvalidResult(err.to_string()))?;
        let interfaces: Vec<Interface> = doc
            .interfaces
            .into_iter()
            .map(|i| Interface {
                name: i.name,
                mac: i.mac.filter(|m| !m.is_empty()),
                sandbox: i.sandbox.filter(|s| !s.is_empty()),
                mtu: i.mtu,
            })
            .collect();
        let ips = doc
            .ips
            .into_iter()
            .map(|ip| {
                let interface = match ip.interface {
                    None => None,
                    Some(index) => match usize::try_from(index) {
                        Ok(index) if index < interfaces.len() => Some(index),
                        _ => {
                            return Err(CniError::InvalidResult(format!(
                                "ip {} refers to interface {index} of {}",
                                ip.address,
                                interfaces.len()
                            )));
                        }
                    },
                };
                Ok(IpConfig {
                    address: parse_cidr(&ip.address)?,
                    gateway: parse_opt_ip(ip.gateway.as_deref())?,
                    interface,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let routes = doc
            .routes
            .into_iter()
            .map(convert_route)
            .collect::<Result<Vec<_>>>()?;
        Ok(CniResult {
            cni_version: String::new(),
            interfaces,
            ips,
            routes,
            dns: doc.dns.unwrap_or_default(),
            raw: Value::Null,
        })
    }

    /// The result's JSON as the plugin gave it (with `cniVersion` filled in if missing).
    pub fn raw(&self) -> &Value {
        &self.raw
    }

    /// The IPs that can be the pod's: those on an interface inside the sandbox (or on
    /// no named interface, as in 0.2.0 results), loopback addresses excluded; all
    /// non-loopback IPs when none is inside the sandbox.
    fn pod_ip_candidates(&self) -> Vec<IpAddr> {
        let in_sandbox = |ip: &&IpConfig| match ip.interface {
            Some(index) => self
                .interfaces
                .get(index)
                .is_some_and(|i| i.sandbox.is_some()),
            None => true,
        };
        let usable = |ip: &&IpConfig| !ip.address.addr.is_loopback();
        let sandboxed: Vec<IpAddr> = self
            .ips
            .iter()
            .filter(in_sandbox)
            .filter(usable)
            .map(|ip| ip.address.addr)
            .collect();
        if !sandboxed.is_empty() {
            return sandboxed;
        }
        self.ips
            .iter()
            .filter(usable)
            .map(|ip| ip.address.addr)
            .collect()
    }

    /// The pod IP: the first IPv4 address inside the sandbox, else the first address
    /// (containerd's choice, which kubelet's probes dial).
    pub fn primary_ip(&self) -> Option<IpAddr> {
        let candidates = self.pod_ip_candidates();
        candidates
            .iter()
            .find(|ip| ip.is_ipv4())
            .or_else(|| candidates.first())
            .copied()
    }

    /// The pod's other IPs (dual stack), in result order, without the primary one.
    pub fn additional_ips(&self) -> Vec<IpAddr> {
        let primary = self.primary_ip();
        let mut seen = Vec::new();
        for ip in self.pod_ip_candidates() {
            if Some(ip) != primary && !seen.contains(&ip) {
                seen.push(ip);
            }
        }
        seen
    }

    /// The result as JSON of spec version `version`, to chain or pass as `prevResult`
    /// to a list whose version differs from the result's.
    ///
    /// Within 0.3.0 and later the raw JSON is kept (unknown fields included) and only
    /// `cniVersion` and the IPs' `version` field are adjusted; across the 0.2.0/0.3.0
    /// boundary the result is rebuilt from the parsed fields.
    pub fn to_version(&self, version: &str) -> Result<Value> {
        if version == self.cni_version {
            return Ok(self.raw.clone());
        }
        let target: SpecVersion = version.parse().map_err(CniError::InvalidResult)?;
        let own: SpecVersion = self.cni_version.parse().map_err(CniError::InvalidResult)?;
        if target < SpecVersion::V0_3_0 {
            return Ok(self.legacy_json(version));
        }
        let mut doc = if own >= SpecVersion::V0_3_0 {
            match &self.raw {
                Value::Object(doc) => doc.clone(),
                _ => Map::new(),
            }
        } else {
            self.current_json()
        };
        doc.insert("cniVersion".into(), Value::String(version.to_string()));
        if let Some(Value::Array(ips)) = doc.get_mut("ips") {
            for ip in ips.iter_mut().filter_map(Value::as_object_mut) {
                if target >= SpecVersion::V1_0_0 {
                    ip.remove("version");
                } else if !ip.contains_key("version") {
                    let family = ip
                        .get("address")
                        .and_then(Value::as_str)
                        .map(|a| if a.contains(':') { "6" } else { "4" })
                        .unwrap_or("4");
                    ip.insert("version".into(), Value::String(family.into()));
                }
            }
        }
        Ok(Value::Object(doc))
    }

    fn current_json(&self) -> Map<String, Value> {
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut obj = Map::new();
                obj.insert("name".into(), json!(i.name));
                if let Some(mac) = &i.mac {
                    obj.insert("mac".into(), json!(mac));
                }
                if let Some(sandbox) = &i.sandbox {
                    obj.insert("sandbox".into(), json!(sandbox));
                }
                Value::Object(obj)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut obj = Map::new();
                obj.insert("address".into(), json!(ip.address.to_string()));
                if let Some(gw) = ip.gateway {
                    obj.insert("gateway".into(), json!(gw.to_string()));
                }
                if let Some(index) = ip.interface {
                    obj.insert("interface".into(), json!(index));
                }
                Value::Object(obj)
            })
            .collect();
        let mut doc = Map::new();
        doc.insert("interfaces".into(), Value::Array(interfaces));
        doc.insert("ips".into(), Value::Array(ips));
        doc.insert(
            "routes".into(),
            Value::Array(self.routes.iter().map(route_json).collect()),
        );
        doc.insert("dns".into(), dns_json(&self.dns));
        doc
    }

    fn legacy_json(&self, version: &str) -> Value {
        let mut doc = Map::new();
        doc.insert("cniVersion".into(), json!(version));
        for (key, v4) in [("ip4", true), ("ip6", false)] {
            let Some(ip) = self.ips.iter().find(|ip| ip.address.addr.is_ipv4() == v4) else {
                continue;
            };
            let mut obj = Map::new();
            obj.insert("ip".into(), json!(ip.address.to_string()));
            if let Some(gw) = ip.gateway {
                obj.insert("gateway".into(), json!(gw.to_string()));
            }
            let routes: Vec<Value> = self
                .routes
                .iter()
                .filter(|r| r.dst.addr.is_ipv4() == v4)
                .map(route_json)
                .collect();
            if !routes.is_empty() {
                obj.insert("routes".into(), Value::Array(routes));
            }
            doc.insert(key.into(), Value::Object(obj));
        }
        doc.insert("dns".into(), dns_json(&self.dns));
        Value::Object(doc)
    }
}

fn route_json(route: &Route) -> Value {
    let mut obj = Map::new();
    obj.insert("dst".into(), json!(route.dst.to_string()));
    if let Some(gw) = route.gw {
        obj.insert("gw".into(), json!(gw.to_string()));
    }
    Value::Object(obj)
}

fn dns_json(dns: &Dns) -> Value {
    let mut obj = Map::new();
    if !dns.nameservers.is_empty() {
        obj.insert("nameservers".into(), json!(dns.nameservers));
    }
    if let Some(domain) = &dns.domain {
        obj.insert("domain".into(), json!(domain));
    }
    if !dns.search.is_empty() {
        obj.insert("search".into(), json!(dns.search));
    }
    if !dns.options.is_empty() {
        obj.insert("options".into(), json!(dns.options));
    }
    Value::Object(obj)
}

fn parse_cidr(s: &str) -> Result<IpCidr> {
    s.parse().map_err(CniError::InvalidResult)
}

fn parse_opt_ip(s: Option<&str>) -> Result<Option<IpAddr>> {
    match s {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| CniError::InvalidResult(format!("gateway {s:?} is not an IP"))),
    }
}

fn convert_route(route: RawRoute) -> Result<Route> {
    Ok(Route {
        dst: parse_cidr(&route.dst)?,
        gw: parse_opt_ip(route.gw.as_deref())?,
        mtu: route.mtu,
        advmss: route.advmss,
        priority: route.priority,
        table: route.table,
        scope: route.scope,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const V020: &str = r#"{
        "cniVersion": "0.2.0",
        "ip4": {"ip": "10.1.0.5/16", "gateway": "10.1.0.1", "routes": [{"dst": "0.0.0.0/0"}]},
        "ip6": {"ip": "fd00::5/64", "routes": [{"dst": "::/0", "gw": "fd00::1"}]},
        "dns": {"nameservers": ["10.1.0.1"]}
    }"#;

    const V031: &str = r#"{
        "cniVersion": "0.3.1",
        "interfaces": [
            {"name": "cni0", "mac": "00:11:22:33:44:55"},
            {"name": "veth1", "mac": "00:11:22:33:44:66"},
            {"name": "eth0", "mac": "00:11:22:33:44:77", "sandbox": "/run/netns/x"}
        ],
        "ips": [
            {"version": "6", "address": "fd00::7/64", "gateway": "fd00::1", "interface": 2},
            {"version": "4", "address": "10.88.0.7/16", "gateway": "10.88.0.1", "interface": 2}
        ],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {}
    }"#;

    const V040: &str = r#"{
        "cniVersion": "0.4.0",
        "interfaces": [
            {"name": "cni0", "mac": "00:11:22:33:44:55"},
            {"name": "eth0", "mac": "00:11:22:33:44:77", "sandbox": "/run/netns/x"}
        ],
        "ips": [
            {"version": "4", "address": "10.0.0.9/24", "interface": 0},
            {"version": "4", "address": "10.88.0.8/16", "gateway": "10.88.0.1", "interface": 1}
        ],
        "dns": {"nameservers": ["1.1.1.1"], "domain": "example", "search": ["a"], "options": ["ndots:5"]}
    }"#;

    const V100: &str = r#"{
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": "/run/netns/x"},
            {"name": "eth0", "mac": "aa:bb:cc:dd:ee:ff", "sandbox": "/run/netns/x"}
        ],
        "ips": [
            {"address": "127.0.0.1/8", "interface": 0},
            {"address": "fd00::9/64", "gateway": "fd00::1", "interface": 1},
            {"address": "10.88.0.9/16", "gateway": "10.88.0.1", "interface": 1}
        ],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.88.0.1"}],
        "dns": {}
    }"#;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_0_2_0() {
        let r = CniResult::parse(V020.as_bytes(), "0.2.0").unwrap();
        assert!(r.interfaces.is_empty());
        assert_eq!(r.ips.len(), 2);
        assert_eq!(r.ips[0].address.to_string(), "10.1.0.5/16");
        assert_eq!(r.ips[0].gateway, Some(ip("10.1.0.1")));
        assert_eq!(r.routes.len(), 2);
        assert_eq!(r.routes[1].gw, Some(ip("fd00::1")));
        assert_eq!(r.dns.nameservers, vec!["10.1.0.1"]);
        assert_eq!(r.primary_ip(), Some(ip("10.1.0.5")));
        assert_eq!(r.additional_ips(), vec![ip("fd00::5")]);
    }

    #[test]
    fn parses_0_3_1_and_prefers_ipv4_in_the_sandbox() {
        let r = CniResult::parse(V031.as_bytes(), "0.3.1").unwrap();
        assert_eq!(r.interfaces.len(), 3);
        assert_eq!(r.interfaces[0].sandbox, None);
        assert_eq!(r.interfaces[2].sandbox.as_deref(), Some("/run/netns/x"));
        assert_eq!(r.ips[0].interface, Some(2));
        assert_eq!(r.primary_ip(), Some(ip("10.88.0.7")));
        assert_eq!(r.additional_ips(), vec![ip("fd00::7")]);
    }

    #[test]
    fn parses_0_4_0_and_skips_host_side_ips() {
        let r = CniResult::parse(V040.as_bytes(), "0.4.0").unwrap();
        assert_eq!(r.primary_ip(), Some(ip("10.88.0.8")));
        assert!(r.additional_ips().is_empty());
        assert_eq!(r.dns.domain.as_deref(), Some("example"));
        assert_eq!(r.dns.options, vec!["ndots:5"]);
    }

    #[test]
    fn parses_1_0_0_and_skips_loopback() {
        let r = CniResult::parse(V100.as_bytes(), "1.0.0").unwrap();
        assert_eq!(r.ips.len(), 3);
        assert_eq!(r.primary_ip(), Some(ip("10.88.0.9")));
        assert_eq!(r.additional_ips(), vec![ip("fd00::9")]);
        assert_eq!(r.routes[0].gw, Some(ip("10.88.0.1")));
    }

    #[test]
    fn parses_1_1_0_route_fields() {
        let text = r#"{"cniVersion":"1.1.0","interfaces":[{"name":"eth0","sandbox":"/x","mtu":1400}],
            "ips":[{"address":"10.2.0.2/24","interface":0}],
            "routes":[{"dst":"10.0.0.0/8","mtu":1300,"priority":5,"table":100,"scope":253}]}"#;
        let r = CniResult::parse(text.as_bytes(), "1.1.0").unwrap();
        assert_eq!(r.interfaces[0].mtu, Some(1400));
        assert_eq!(r.routes[0].table, Some(100));
        assert_eq!(r.routes[0].scope, Some(253));
        assert_eq!(r.primary_ip(), Some(ip("10.2.0.2")));
    }

    #[test]
    fn a_missing_version_is_taken_from_the_config() {
        let r = CniResult::parse(br#"{"ips":[{"address":"10.3.0.2/24"}]}"#, "1.0.0").unwrap();
        assert_eq!(r.cni_version, "1.0.0");
        assert_eq!(r.raw()["cniVersion"], "1.0.0");
        assert_eq!(r.primary_ip(), Some(ip("10.3.0.2")));
    }

    #[test]
    fn bad_results_are_errors() {
        for bad in [
            "[]",
            "{",
            r#"{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.1"}]}"#,
            r#"{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.1/24","interface":3}]}"#,
            r#"{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.1/24","interface":-1}]}"#,
            r#"{"cniVersion":"x","ips":[]}"#,
        ] {
            assert!(CniResult::parse(bad.as_bytes(), "1.0.0").is_err(), "{bad}");
        }
    }

    #[test]
    fn converts_between_versions() {
        let r = CniResult::parse(V100.as_bytes(), "1.0.0").unwrap();
        let v040 = r.to_version("0.4.0").unwrap();
        assert_eq!(v040["cniVersion"], "0.4.0");
        assert_eq!(v040["ips"][1]["version"], "6");
        assert_eq!(v040["ips"][2]["version"], "4");
        let back = CniResult::from_value(v040, "0.4.0").unwrap();
        assert_eq!(back.ips, r.ips);

        let legacy = r.to_version("0.2.0").unwrap();
        assert_eq!(legacy["ip4"]["ip"], "127.0.0.1/8");
        assert_eq!(legacy["ip6"]["gateway"], "fd00::1");

        let old = CniResult::parse(V020.as_bytes(), "0.2.0").unwrap();
        let new = old.to_version("1.0.0").unwrap();
        let reparsed = CniResult::from_value(new.clone(), "1.0.0").unwrap();
        assert_eq!(reparsed.ips, old.ips);
        assert_eq!(reparsed.routes, old.routes);
        assert!(new["ips"][0].get("version").is_none());
    }
}
