//! Registry host configuration in containerd's `hosts.toml` directory layout, so that an
//! existing `/etc/containerd/certs.d` tree works unchanged.
//!
//! The tree has one directory per registry host namespace, named as the registry is
//! written in image references (`docker.io`, `myregistry.io:5000`, with `myregistry.io_5000_`
//! tried first as containerd does), and `_default` for every registry without its own
//! directory. Each directory holds a `hosts.toml`:
//!
//! ```toml
//! server = "https://registry-1.docker.io"   # the upstream, tried last; optional
//! capabilities = ["pull", "resolve", "push"] # server settings may sit at the top level
//!
//! [host."https://mirror.internal"]          # mirrors, tried first, in file order
//!   capabilities = ["pull", "resolve"]
//!   ca = "mirror.crt"                        # relative to the host directory
//! ```
//!
//! A directory without `hosts.toml` is read the way Docker reads `certs.d`: `*.crt` are CA
//! files and `*.cert` (with a `*.key` of the same stem, if present) client certificates of
//! the default server.
//!
//! Unlike containerd, which logs a broken `hosts.toml` and carries on without it, we refuse
//! it: a typo in a mirror's name would otherwise silently send every pull upstream.
//! And where containerd tries HTTPS first and falls back to HTTP for loopback registries,
//! we use plain HTTP for them unless told otherwise, as Docker does.

use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// Where the default server of `docker.io` really is.
const DOCKER_HUB_REGISTRY: &str = "docker.io";
const DOCKER_HUB_SERVER: &str = "registry-1.docker.io";

/// The namespace directory used when a registry has none of its own.
const DEFAULT_DIR: &str = "_default";
const HOSTS_FILE: &str = "hosts.toml";

/// The protocol an endpoint is reached with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Plain HTTP, for loopback registries and those configured with `http://`.
    Http,
    /// HTTPS, the default.
    Https,
}

/// What an endpoint may be trusted to do; a public mirror should only `pull`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Capabilities {
    /// Fetch manifests and blobs by digest.
    pub pull: bool,
    /// Resolve a tag to a digest, which requires trusting the endpoint.
    pub resolve: bool,
    /// Upload content.
    pub push: bool,
}

impl Capabilities {
    /// Every capability, the default when `capabilities` is not given.
    pub const ALL: Capabilities = Capabilities {
        pull: true,
        resolve: true,
        push: true,
    };
    /// No capability, the start of an explicit `capabilities` list.
    pub const NONE: Capabilities = Capabilities {
        pull: false,
        resolve: false,
        push: false,
    };
}

/// One endpoint to try for a registry, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryEndpoint {
    /// The authority as used in URLs: `mirror.example:5000`, `[::1]:5000`.
    pub host: String,
    /// HTTP or HTTPS.
    pub scheme: Scheme,
    /// The API root path: `/v2` normally, the configured path verbatim with `override_path`.
    pub path_prefix: String,
    /// What this endpoint may be used for.
    pub capabilities: Capabilities,
    /// Skip verification of the server's certificate chain and name.
    pub skip_verify: bool,
    /// Extra CA files (PEM) to trust, as absolute paths.
    pub ca_files: Vec<PathBuf>,
    /// Client certificate files, each with its key file unless the key is in the same file.
    pub client_certs: Vec<(PathBuf, Option<PathBuf>)>,
    /// Extra request headers, in file order; a name repeats for multi-valued headers.
    pub headers: Vec<(String, String)>,
    /// The longest a connection attempt may take (`dial_timeout`), if configured.
    pub dial_timeout: Option<Duration>,
    /// The proxy URL to reach this endpoint through (`proxy`), if configured.
    pub proxy: Option<String>,
    /// True for `[host."..."]` entries, false for the upstream server itself.
    pub is_mirror: bool,
    /// Plain HTTP written out as `http://` in hosts.toml rather than defaulted for a
    /// loopback host: only then may credentials travel over it, as in containerd.
    pub explicit_http: bool,
}

/// Errors of registry host configuration; the message names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    /// The registry name cannot name a host directory.
    #[error("invalid registry host {0:?}")]
    InvalidRegistry(String),
    /// A host directory or its files could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The directory or file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// `hosts.toml` is not valid TOML.
    #[error("{}: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's complaint, with line and column.
        message: String,
    },
    /// A key of `hosts.toml` is unknown or has a value we refuse.
    #[error("{}: {key}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Where in the file: `host "https://mirror": capabilities`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

/// Resolves the endpoints for `registry` (as written in an image reference, e.g.
/// "docker.io", "127.0.0.1:5000", "localhost:5000", "[::1]:5000").
///
/// Mirrors come first in file order, then the server, which containerd always keeps as
/// the last resort; callers pick the endpoints whose capabilities fit the operation.
/// Without a config tree, or without a directory for `registry` or `_default` in it, the
/// only endpoint is the registry's default server.
pub fn resolve_endpoints(
    config_path: Option<&Path>,
    registry: &str,
) -> Result<Vec<RegistryEndpoint>, HostsError> {
    validate_registry(registry)?;
    let dir = match config_path {
        Some(root) => find_host_dir(root, registry)?,
        None => None,
    };
    match dir {
        Some(dir) => load_host_dir(&dir, registry),
        None => Ok(vec![default_server(registry)]),
    }
}

/// Refuses names that could escape the config tree or cannot be a registry authority.
fn validate_registry(registry: &str) -> Result<(), HostsError> {
    let allowed =
        |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']');
    if registry.is_empty() || registry.starts_with('.') || !registry.chars().all(allowed) {
        return Err(HostsError::InvalidRegistry(registry.to_string()));
    }
    Ok(())
}

/// The directory names tried for `registry`, in containerd's order: `host_port_` (which
/// also works where `:` cannot be in a file name), `host:port`, then `_default`.
fn host_dir_names(registry: &str) -> Vec<String> {
    let mut names = Vec::with_capacity(3);
    if let Some(idx) = registry.rfind(':').filter(|&i| i > 0) {
        names.push(format!("{}_{}_", &registry[..idx], &registry[idx + 1..]));
    }
    names.push(registry.to_string());
    names.push(DEFAULT_DIR.to_string());
    names
}

/// The first existing namespace directory for `registry`, made absolute so that paths
/// resolved against it are absolute too.
fn find_host_dir(root: &Path, registry: &str) -> Result<Option<PathBuf>, HostsError> {
    let root = std::path::absolute(root).map_err(|source| HostsError::Read {
        path: root.to_path_buf(),
        source,
    })?;
    for name in host_dir_names(registry) {
        let dir = root.join(name);
        match fs::metadata(&dir) {
            Ok(meta) if meta.is_dir() => return Ok(Some(dir)),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) => {}
            Err(source) => return Err(HostsError::Read { path: dir, source }),
        }
    }
    Ok(None)
}

fn load_host_dir(dir: &Path, registry: &str) -> Result<Vec<RegistryEndpoint>, HostsError> {
    let path = dir.join(HOSTS_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(source) => return Err(HostsError::Read { path, source }),
    };
    // An empty file counts as absent, as in containerd.
    if text.is_empty() {
        let mut server = default_server(registry);
        load_cert_files(dir, &mut server)?;
        return Ok(vec![server]);
    }
    HostsFile { path: &path, dir }.parse(&text, registry)
}

/// Docker's `certs.d` layout: `*.crt` are CA files, `*.cert` client certificates with an
/// optional `*.key` of the same stem.
fn load_cert_files(dir: &Path, endpoint: &mut RegistryEndpoint) -> Result<(), HostsError> {
    let read_err = |source| HostsError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        if !entry.file_type().map_err(read_err)?.is_dir() {
            files.push(entry.path());
        }
    }
    // read_dir's order is the file system's; sort so the result does not depend on it.
    files.sort();
    for file in files {
        match file.extension().and_then(|e| e.to_str()) {
            Some("crt") => endpoint.ca_files.push(file),
            Some("cert") => {
                let key = file.with_extension("key");
                let key = match fs::metadata(&key) {
                    Ok(_) => Some(key),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                    Err(source) => return Err(HostsError::Read { path: key, source }),
                };
                endpoint.client_certs.push((file, key));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The endpoint used when nothing is configured: the registry itself over HTTPS, except
/// Docker Hub's real host and plain HTTP for loopback registries.
fn default_server(registry: &str) -> RegistryEndpoint {
    let (scheme, host) = if registry == DOCKER_HUB_REGISTRY {
        (Scheme::Https, DOCKER_HUB_SERVER.to_string())
    } else {
        (default_scheme(registry), registry.to_string())
    };
    endpoint(host, scheme, "/v2".to_string(), false)
}

fn endpoint(
    host: String,
    scheme: Scheme,
    path_prefix: String,
    is_mirror: bool,
) -> RegistryEndpoint {
    RegistryEndpoint {
        host,
        scheme,
        path_prefix,
        capabilities: Capabilities::ALL,
        skip_verify: false,
        ca_files: Vec::new(),
        client_certs: Vec::new(),
        headers: Vec::new(),
        dial_timeout: None,
        proxy: None,
        is_mirror,
        explicit_http: false,
    }
}

/// HTTPS, except plain HTTP for loopback hosts as Docker treats them as insecure
/// registries; an explicit port 443 still means HTTPS.
fn default_scheme(authority: &str) -> Scheme {
    let (host, port) = split_authority(authority);
    if is_loopback(host) && port != Some("443") {
        Scheme::Http
    } else {
        Scheme::Https
    }
}

/// Splits `host:port`, `[v6]:port`, `[v6]` or a bare name into host and optional port.
fn split_authority(authority: &str) -> (&str, Option<&str>) {
    if let Some(rest) = authority.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((host, tail)) => (host, tail.strip_prefix(':')),
            None => (authority, None),
        };
    }
    match authority.split_once(':') {
        // More than one colon: a bare IPv6 address without a port.
        Some((_, port)) if port.contains(':') => (authority, None),
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    }
}

/// `localhost`, `127.0.0.0/8` and `::1` (also as an IPv4-mapped address).
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// One `hosts.toml` being parsed: where it is, for error messages and relative paths.
struct HostsFile<'a> {
    path: &'a Path,
    dir: &'a Path,
}

/// The settings a `[host."..."]` table or the top level may carry.
const SECTION_KEYS: &[&str] = &[
    "capabilities",
    "ca",
    "client",
    "skip_verify",
    "header",
    "override_path",
    "dial_timeout",
    "proxy",
];

impl HostsFile<'_> {
    fn invalid(&self, key: impl Into<String>, message: impl Into<String>) -> HostsError {
        HostsError::Invalid {
            path: self.path.to_path_buf(),
            key: key.into(),
            message: message.into(),
        }
    }

    fn parse(&self, text: &str, registry: &str) -> Result<Vec<RegistryEndpoint>, HostsError> {
        let doc = DeTable::parse(text).map_err(|e| HostsError::Syntax {
            path: self.path.to_path_buf(),
            message: syntax_message(text, &e),
        })?;
        let doc = doc.get_ref();

        for (key, _) in in_file_order(doc) {
            if key != "server" && key != "host" && !SECTION_KEYS.contains(&key) {
                return Err(self.invalid(key, "unknown key"));
            }
        }

        let mut endpoints = Vec::new();
        if let Some(hosts) = doc.get("host") {
            let DeValue::Table(hosts) = hosts.get_ref() else {
                return Err(self.invalid("host", "expected a table of hosts"));
            };
            for (name, value) in in_file_order(hosts) {
                let ctx = format!("host {name:?}");
                let DeValue::Table(table) = value else {
                    return Err(self.invalid(ctx, "expected a table"));
                };
                if let Some((key, _)) =
                    in_file_order(table).find(|(k, _)| !SECTION_KEYS.contains(k))
                {
                    return Err(self.invalid(format!("{ctx}: {key}"), "unknown key"));
                }
                let location = self.location(&ctx, name, table)?;
                let mut ep = self.section(&ctx, location, table, true)?;
                ep.explicit_http = is_explicit_http(name);
                endpoints.push(ep);
            }
        }

        // The server: the configured one, or the registry's default one carrying the
        // top-level settings.
        let mut explicit_http = false;
        let server = match doc.get("server").map(Spanned::get_ref) {
            Some(DeValue::String(server)) => {
                explicit_http = is_explicit_http(server);
                self.location("server", server, doc)?
            }
            Some(_) => return Err(self.invalid("server", "expected a string")),
            None => {
                let default = default_server(registry);
                (default.scheme, default.host, default.path_prefix)
            }
        };
        // Top-level settings name their key without a prefix.
        let mut server = self.section("", server, doc, false)?;
        server.explicit_http = explicit_http;
        endpoints.push(server);
        Ok(endpoints)
    }

    /// Parses a server or host location: `[scheme://]authority[/path]`.
    fn location(
        &self,
        ctx: &str,
        raw: &str,
        table: &DeTable<'_>,
    ) -> Result<(Scheme, String, String), HostsError> {
        let override_path = match table.get("override_path").map(Spanned::get_ref) {
            None => false,
            Some(DeValue::Boolean(b)) => *b,
            Some(_) => return Err(self.invalid(join(ctx, "override_path"), "expected a boolean")),
        };
        let bad = |message: String| self.invalid(ctx, message);

        let (scheme, rest) = match raw.split_once("://") {
            Some((s, rest)) if s.eq_ignore_ascii_case("https") => (Some(Scheme::Https), rest),
            Some((s, rest)) if s.eq_ignore_ascii_case("http") => (Some(Scheme::Http), rest),
            Some((s, _)) => return Err(bad(format!("unsupported scheme {s:?} in {raw:?}"))),
            None => (None, raw),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.is_empty()
            || authority.contains(|c: char| {
                c.is_whitespace() || c.is_control() || matches!(c, '@' | '?' | '#' | '\\')
            })
        {
            return Err(bad(format!("invalid host in {raw:?}")));
        }
        if path.contains(|c: char| c.is_whitespace() || c.is_control() || matches!(c, '?' | '#')) {
            return Err(bad(format!("invalid path in {raw:?}")));
        }
        let scheme = scheme.unwrap_or_else(|| default_scheme(authority));

        let mut path = clean_path(path);
        if !override_path && !path.ends_with("/v2") {
            path.push_str("/v2");
        }
        Ok((scheme, authority.to_string(), path))
    }

    /// Builds an endpoint from a location and the section's settings (already checked
    /// for unknown keys).
    fn section(
        &self,
        ctx: &str,
        (scheme, host, path_prefix): (Scheme, String, String),
        table: &DeTable<'_>,
        is_mirror: bool,
    ) -> Result<RegistryEndpoint, HostsError> {
        let mut ep = endpoint(host, scheme, path_prefix, is_mirror);
        for (key, value) in in_file_order(table) {
            let kctx = join(ctx, key);
            match key {
                "capabilities" => ep.capabilities = self.capabilities(&kctx, value)?,
                "ca" => ep.ca_files = self.paths(&kctx, value)?,
                "client" => ep.client_certs = self.client(&kctx, value)?,
                "skip_verify" => ep.skip_verify = self.boolean(&kctx, value)?,
                "header" => ep.headers = self.headers(&kctx, value)?,
                "dial_timeout" => {
                    let DeValue::String(s) = value else {
                        return Err(self.invalid(kctx, "expected a duration string such as \"5s\""));
                    };
                    ep.dial_timeout = Some(parse_duration(s).map_err(|m| self.invalid(&kctx, m))?);
                }
                "proxy" => {
                    let DeValue::String(s) = value else {
                        return Err(self.invalid(kctx, "expected a string"));
                    };
                    validate_proxy(s).map_err(|m| self.invalid(&kctx, m))?;
                    ep.proxy = Some(s.to_string());
                }
                // `override_path` is read by `location`; `server` and `host` at the top
                // level are not settings of the server.
                _ => {}
            }
        }
        Ok(ep)
    }

    fn boolean(&self, ctx: &str, value: &DeValue<'_>) -> Result<bool, HostsError> {
        match value {
            DeValue::Boolean(b) => Ok(*b),
            _ => Err(self.invalid(ctx, "expected a boolean")),
        }
    }

    fn capabilities(&self, ctx: &str, value: &DeValue<'_>) -> Result<Capabilities, HostsError> {
        let DeValue::Array(items) = value else {
            return Err(self.invalid(ctx, "expected an array of strings"));
        };
        // An empty list means the default, as in containerd.
        if items.is_empty() {
            return Ok(Capabilities::ALL);
        }
        let mut caps = Capabilities::NONE;
        for item in items {
            let DeValue::String(name) = item.get_ref() else {
                return Err(self.invalid(ctx, "expected an array of strings"));
            };
            match name.to_ascii_lowercase().as_str() {
                "pull" => caps.pull = true,
                "resolve" => caps.resolve = true,
                "push" => caps.push = true,
                _ => return Err(self.invalid(ctx, format!("unknown capability {name:?}"))),
            }
        }
        Ok(caps)
    }

    /// A path or an array of paths, resolved against the host directory.
    fn paths(&self, ctx: &str, value: &DeValue<'_>) -> Result<Vec<PathBuf>, HostsError> {
        match value {
            DeValue::String(p) => Ok(vec![self.path(ctx, p)?]),
            DeValue::Array(items) => items
                .iter()
                .map(|item| match item.get_ref() {
                    DeValue::String(p) => self.path(ctx, p),
                    _ => Err(self.invalid(ctx, "expected a path or an array of paths")),
                })
                .collect(),
            _ => Err(self.invalid(ctx, "expected a path or an array of paths")),
        }
    }

    fn path(&self, ctx: &str, p: &str) -> Result<PathBuf, HostsError> {
        if p.is_empty() {
            return Err(self.invalid(ctx, "empty path"));
        }
        // `join` keeps an absolute `p` as it is.
        Ok(self.dir.join(p))
    }

    /// `client`: a path, an array of paths, or an array of `[cert, key]` pairs where an
    /// empty key means the key is in the certificate file.
    fn client(
        &self,
        ctx: &str,
        value: &DeValue<'_>,
    ) -> Result<Vec<(PathBuf, Option<PathBuf>)>, HostsError> {
        const EXPECTED: &str =
            "expected a path, an array of paths or an array of [cert, key] pairs";
        let items = match value {
            DeValue::String(p) => return Ok(vec![(self.path(ctx, p)?, None)]),
            DeValue::Array(items) => items,
            _ => return Err(self.invalid(ctx, EXPECTED)),
        };
        let mut pairs = Vec::with_capacity(items.len());
        for item in items {
            match item.get_ref() {
                DeValue::String(p) => pairs.push((self.path(ctx, p)?, None)),
                DeValue::Array(pair) => {
                    let strings: Option<Vec<&str>> = pair
                        .iter()
                        .map(|v| match v.get_ref() {
                            DeValue::String(s) => Some(s.as_ref()),
                            _ => None,
                        })
                        .collect();
                    let [cert, key] = strings.as_deref().unwrap_or_default() else {
                        return Err(self.invalid(ctx, "a client pair must be [cert, key]"));
                    };
                    let key = if key.is_empty() {
                        None
                    } else {
                        Some(self.path(ctx, key)?)
                    };
                    pairs.push((self.path(ctx, cert)?, key));
                }
                _ => return Err(self.invalid(ctx, EXPECTED)),
            }
        }
        Ok(pairs)
    }

    /// `[header]`: each key a string or an array of strings.
    fn headers(&self, ctx: &str, value: &DeValue<'_>) -> Result<Vec<(String, String)>, HostsError> {
        let DeValue::Table(table) = value else {
            return Err(self.invalid(ctx, "expected a table"));
        };
        let mut headers = Vec::new();
        for (name, value) in in_file_order(table) {
            let hctx = join(ctx, name);
            if name.is_empty() || !name.bytes().all(is_token_byte) {
                return Err(self.invalid(hctx, "invalid header name"));
            }
            let values: Vec<&str> = match value {
                DeValue::String(s) => vec![s.as_ref()],
                DeValue::Array(items) => items
                    .iter()
                    .map(|v| match v.get_ref() {
                        DeValue::String(s) => Ok(s.as_ref()),
                        _ => Err(self.invalid(&hctx, "expected a string or an array of strings")),
                    })
                    .collect::<Result<_, _>>()?,
                _ => return Err(self.invalid(hctx, "expected a string or an array of strings")),
            };
            for v in values {
                if v.contains(['\r', '\n', '\0']) {
                    return Err(self.invalid(&hctx, "header value contains a line break or NUL"));
                }
                headers.push((name.to_string(), v.to_string()));
            }
        }
        Ok(headers)
    }
}

/// The entries of a table in the order they appear in the file. Without toml's
/// `preserve_order` the map is sorted by key, but every key keeps its span, and the span
/// of a table's key is where the table first appears, the order containerd uses.
fn in_file_order<'a, 'i>(
    table: &'a DeTable<'i>,
) -> impl Iterator<Item = (&'a str, &'a DeValue<'i>)> {
    let mut entries: Vec<_> = table.iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start);
    entries
        .into_iter()
        .map(|(k, v)| (k.get_ref().as_ref(), v.get_ref()))
}

/// Whether a `server` or `host` location names plain HTTP itself.
fn is_explicit_http(location: &str) -> bool {
    location
        .split_once("://")
        .is_some_and(|(s, _)| s.eq_ignore_ascii_case("http"))
}

fn join(ctx: &str, key: &str) -> String {
    if ctx.is_empty() {
        key.to_string()
    } else {
        format!("{ctx}: {key}")
    }
}

/// `path.Clean`-like: no empty or `.` segments, `..` pops, no trailing slash; the root
/// is the empty string.
fn clean_path(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    segments.iter().map(|s| format!("/{s}")).collect()
}

/// RFC 9110 token characters, the only ones allowed in a header name.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses a Go duration as containerd's `dial_timeout` takes it: `500ms`, `1m30s`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?}");
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_len);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let num: f64 = num.parse().map_err(|_| bad())?;
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += num * scale;
        rest = tail;
    }
    if !(total > 0.0 && total.is_finite()) {
        return Err(format!("duration {s:?} must be positive"));
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

/// A proxy is an absolute http, https or socks5 URL with a host and no path.
fn validate_proxy(s: &str) -> Result<(), String> {
    let bad = || format!("invalid proxy URL {s:?}");
    let (scheme, rest) = s.split_once("://").ok_or_else(bad)?;
    if !["http", "https", "socks5", "socks5h"].contains(&scheme.to_ascii_lowercase().as_str()) {
        return Err(format!("unsupported proxy scheme {scheme:?}"));
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() || rest.contains(['/', '?', '#']) || rest.contains(char::is_whitespace) {
        return Err(bad());
    }
    Ok(())
}

/// The parser's message with the line and column it points at.
fn syntax_message(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end();
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before
                .rfind('\n')
                .map_or(before, |i| &before[i + 1..])
                .chars()
                .count()
                + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config tree with `hosts.toml` files written as given.
    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for (dir, text) in files {
            let dir = root.path().join(dir);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join(HOSTS_FILE), text).unwrap();
        }
        root
    }

    fn resolve(root: &tempfile::TempDir, registry: &str) -> Vec<RegistryEndpoint> {
        resolve_endpoints(Some(root.path()), registry).unwrap()
    }

    fn error(root: &tempfile::TempDir, registry: &str) -> String {
        resolve_endpoints(Some(root.path()), registry)
            .unwrap_err()
            .to_string()
    }

    fn summary(eps: &[RegistryEndpoint]) -> Vec<(Scheme, &str, &str, bool)> {
        eps.iter()
            .map(|e| {
                (
                    e.scheme,
                    e.host.as_str(),
                    e.path_prefix.as_str(),
                    e.is_mirror,
                )
            })
            .collect()
    }

    #[test]
    fn docker_io_defaults_to_registry_1() {
        let eps = resolve_endpoints(None, "docker.io").unwrap();
        assert_eq!(
            summary(&eps),
            [(Scheme::Https, "registry-1.docker.io", "/v2", false)]
        );
        assert_eq!(eps[0].capabilities, Capabilities::ALL);
        assert!(!eps[0].skip_verify && eps[0].ca_files.is_empty() && eps[0].headers.is_empty());

        let eps = resolve_endpoints(None, "quay.io").unwrap();
        assert_eq!(summary(&eps), [(Scheme::Https, "quay.io", "/v2", false)]);
    }

    #[test]
    fn loopback_registries_default_to_http() {
        for registry in [
            "127.0.0.1:5000",
            "127.1.2.3:5000",
            "localhost:5000",
            "localhost",
            "[::1]:5000",
            "[::1]",
        ] {
            let eps = resolve_endpoints(None, registry).unwrap();
            assert_eq!(
                summary(&eps),
                [(Scheme::Http, registry, "/v2", false)],
                "{registry}"
            );
        }
        // An explicit 443 is HTTPS, and a name that merely starts like loopback is not loopback.
        for registry in [
            "localhost:443",
            "127.0.0.1.example.com:5000",
            "10.0.0.1:5000",
        ] {
            let eps = resolve_endpoints(None, registry).unwrap();
            assert_eq!(eps[0].scheme, Scheme::Https, "{registry}");
        }
    }

    #[test]
    fn missing_tree_or_host_dir_means_defaults() {
        let root = tempfile::tempdir().unwrap();
        let missing = root.path().join("nope");
        let eps = resolve_endpoints(Some(&missing), "docker.io").unwrap();
        assert_eq!(
            summary(&eps),
            [(Scheme::Https, "registry-1.docker.io", "/v2", false)]
        );

        let root = tree(&[("quay.io", "server = \"https://quay.example\"\n")]);
        assert_eq!(
            summary(&resolve(&root, "ghcr.io")),
            [(Scheme::Https, "ghcr.io", "/v2", false)]
        );
    }

    #[test]
    fn mirrors_come_first_in_file_order_then_server() {
        // "z" sorts after "a": the file order must win over the key order.
        let root = tree(&[(
            "docker.io",
            r#"
server = "https://registry-1.docker.io"

[host."https://z-mirror.internal"]
  capabilities = ["pull", "resolve"]

[host."https://a-public.example.com"]
  capabilities = ["pull"]
  [host."https://a-public.example.com".header]
    x-b = "1"
    x-a = ["2", "3"]

[host."https://z-mirror.internal".header]
  x-late = "yes"
"#,
        )]);
        let eps = resolve(&root, "docker.io");
        assert_eq!(
            summary(&eps),
            [
                (Scheme::Https, "z-mirror.internal", "/v2", true),
                (Scheme::Https, "a-public.example.com", "/v2", true),
                (Scheme::Https, "registry-1.docker.io", "/v2", false),
            ]
        );
        let pull_resolve = Capabilities {
            push: false,
            ..Capabilities::ALL
        };
        let pull_only = Capabilities {
            pull: true,
            ..Capabilities::NONE
        };
        assert_eq!(eps[0].capabilities, pull_resolve);
        assert_eq!(eps[1].capabilities, pull_only);
        assert_eq!(eps[2].capabilities, Capabilities::ALL);
        let h = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(eps[0].headers, h(&[("x-late", "yes")]));
        assert_eq!(
            eps[1].headers,
            h(&[("x-b", "1"), ("x-a", "2"), ("x-a", "3")])
        );
    }

    #[test]
    fn server_defaults_when_only_hosts_are_given() {
        let root = tree(&[("docker.io", "[host.\"mirror.internal\"]\n")]);
        assert_eq!(
            summary(&resolve(&root, "docker.io")),
            [
                (Scheme::Https, "mirror.internal", "/v2", true),
                (Scheme::Https, "registry-1.docker.io", "/v2", false),
            ]
        );
    }

    #[test]
    fn capabilities_parse_case_insensitively_and_apply_to_the_server() {
        let root = tree(&[(
            "reg.example",
            "capabilities = [\"PULL\", \"push\"]\n[host.\"https://m\"]\ncapabilities = []\n",
        )]);
        let eps = resolve(&root, "reg.example");
        assert_eq!(
            eps[0].capabilities,
            Capabilities::ALL,
            "an empty list is the default"
        );
        assert_eq!(
            eps[1].capabilities,
            Capabilities {
                resolve: false,
                ..Capabilities::ALL
            }
        );
    }

    #[test]
    fn ca_as_string_and_array_resolve_against_the_host_dir() {
        let root = tree(&[(
            "reg.example:5000",
            r#"
ca = "server.crt"
[host."https://m1"]
  ca = ["m1.pem", "/etc/certs/abs.pem", "sub/../m1b.pem"]
  client = [["c.cert", "c.key"], ["both.pem", ""]]
[host."https://m2"]
  client = "one.pem"
[host."https://m3"]
  client = ["a.pem", "b.pem"]
"#,
        )]);
        let eps = resolve(&root, "reg.example:5000");
        let dir = root.path().join("reg.example:5000");
        assert!(dir.is_absolute());
        assert_eq!(eps[3].ca_files, [dir.join("server.crt")]);
        assert_eq!(
            eps[0].ca_files,
            [
                dir.join("m1.pem"),
                PathBuf::from("/etc/certs/abs.pem"),
                dir.join("sub/../m1b.pem")
            ]
        );
        assert_eq!(
            eps[0].client_certs,
            [
                (dir.join("c.cert"), Some(dir.join("c.key"))),
                (dir.join("both.pem"), None)
            ]
        );
        assert_eq!(eps[1].client_certs, [(dir.join("one.pem"), None)]);
        assert_eq!(
            eps[2].client_certs,
            [(dir.join("a.pem"), None), (dir.join("b.pem"), None)]
        );
        assert!(eps[1].ca_files.is_empty());
    }

    #[test]
    fn relative_config_path_still_gives_absolute_ca_paths() {
        let root = tree(&[("reg.example", "ca = \"x.crt\"\n")]);
        let cwd = std::env::current_dir().unwrap();
        let rel: PathBuf = std::iter::repeat_n("..", cwd.components().count())
            .collect::<PathBuf>()
            .join(root.path().strip_prefix("/").unwrap());
        let eps = resolve_endpoints(Some(&rel), "reg.example").unwrap();
        assert!(eps[0].ca_files[0].is_absolute(), "{:?}", eps[0].ca_files);
    }

    #[test]
    fn skip_verify() {
        let root = tree(&[(
            "reg.example",
            "skip_verify = true\n[host.\"https://m\"]\nskip_verify = false\n[host.\"https://n\"]\nskip_verify = true\n",
        )]);
        let eps = resolve(&root, "reg.example");
        assert_eq!(
            eps.iter().map(|e| e.skip_verify).collect::<Vec<_>>(),
            [false, true, true]
        );

        let root = tree(&[("reg.example", "skip_verify = \"yes\"\n")]);
        assert!(error(&root, "reg.example").ends_with("skip_verify: expected a boolean"));
    }

    #[test]
    fn default_dir_is_the_fallback() {
        let root = tree(&[
            (
                "_default",
                "[host.\"https://registry.example.com\"]\ncapabilities = [\"pull\", \"resolve\"]\n",
            ),
            ("quay.io", "server = \"https://quay.example\"\n"),
        ]);
        assert_eq!(
            summary(&resolve(&root, "ghcr.io")),
            [
                (Scheme::Https, "registry.example.com", "/v2", true),
                (Scheme::Https, "ghcr.io", "/v2", false),
            ]
        );
        assert_eq!(
            summary(&resolve(&root, "localhost:5000")),
            [
                (Scheme::Https, "registry.example.com", "/v2", true),
                (Scheme::Http, "localhost:5000", "/v2", false),
            ]
        );
        // A registry with its own directory does not see `_default`.
        assert_eq!(
            summary(&resolve(&root, "quay.io")),
            [(Scheme::Https, "quay.example", "/v2", false)]
        );
    }

    #[test]
    fn explicit_scheme_decides() {
        let root = tree(&[
            (
                "reg.example",
                "server = \"http://reg.example:8080\"\n[host.\"http://m:5000\"]\n[host.\"localhost:5001\"]\n",
            ),
            ("localhost:5000", "server = \"https://localhost:5000\"\n"),
        ]);
        assert_eq!(
            summary(&resolve(&root, "reg.example")),
            [
                (Scheme::Http, "m:5000", "/v2", true),
                (Scheme::Http, "localhost:5001", "/v2", true),
                (Scheme::Http, "reg.example:8080", "/v2", false),
            ]
        );
        assert_eq!(
            summary(&resolve(&root, "localhost:5000")),
            [(Scheme::Https, "localhost:5000", "/v2", false)]
        );
        // Only a written-out `http://` lets credentials travel in the clear; loopback's
        // defaulted plain HTTP does not.
        let explicit: Vec<bool> = resolve(&root, "reg.example")
            .iter()
            .map(|e| e.explicit_http)
            .collect();
        assert_eq!(explicit, [true, false, true]);
        assert!(!resolve(&root, "127.0.0.1:5000")[0].explicit_http);
    }

    #[test]
    fn paths_get_v2_unless_overridden() {
        let root = tree(&[(
            "reg.example",
            r#"
server = "https://reg.example/"
[host."https://m1/mirror/"]
[host."https://m2/v2"]
[host."https://m3/v2/upstream"]
  override_path = true
[host."https://m4"]
  override_path = true
"#,
        )]);
        assert_eq!(
            summary(&resolve(&root, "reg.example")),
            [
                (Scheme::Https, "m1", "/mirror/v2", true),
                (Scheme::Https, "m2", "/v2", true),
                (Scheme::Https, "m3", "/v2/upstream", true),
                (Scheme::Https, "m4", "", true),
                (Scheme::Https, "reg.example", "/v2", false),
            ]
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let root = tree(&[("reg.example", "mirrors = []\n")]);
        let path = root.path().join("reg.example/hosts.toml");
        assert_eq!(
            error(&root, "reg.example"),
            format!("{}: mirrors: unknown key", path.display())
        );

        let root = tree(&[("reg.example", "[host.\"https://m\"]\nskip-verify = true\n")]);
        let path = root.path().join("reg.example/hosts.toml");
        assert_eq!(
            error(&root, "reg.example"),
            format!(
                "{}: host \"https://m\": skip-verify: unknown key",
                path.display()
            )
        );

        // Nested hosts are not supported.
        let root = tree(&[(
            "reg.example",
            "[host.\"https://m\"]\n[host.\"https://m\".\"https://n\"]\n",
        )]);
        assert!(
            error(&root, "reg.example").ends_with("host \"https://m\": https://n: unknown key")
        );
    }

    #[test]
    fn bad_values_are_refused() {
        let root = tree(&[(
            "reg.example",
            "[host.\"x\"]\ncapabilities = [\"pull\", \"fly\"]\n",
        )]);
        let path = root.path().join("reg.example/hosts.toml");
        assert_eq!(
            error(&root, "reg.example"),
            format!(
                "{}: host \"x\": capabilities: unknown capability \"fly\"",
                path.display()
            )
        );

        for (text, tail) in [
            (
                "capabilities = \"pull\"\n",
                "capabilities: expected an array of strings",
            ),
            ("ca = 1\n", "ca: expected a path or an array of paths"),
            (
                "client = [[\"a\"]]\n",
                "client: a client pair must be [cert, key]",
            ),
            (
                "server = \"ftp://x\"\n",
                "server: unsupported scheme \"ftp\" in \"ftp://x\"",
            ),
            (
                "server = \"https://\"\n",
                "server: invalid host in \"https://\"",
            ),
            (
                "[header]\n\"bad name\" = \"v\"\n",
                "header: bad name: invalid header name",
            ),
            (
                "[header]\nx = \"a\\nb\"\n",
                "header: x: header value contains a line break or NUL",
            ),
            ("host = 1\n", "host: expected a table of hosts"),
            (
                "dial_timeout = \"soon\"\n",
                "dial_timeout: invalid duration \"soon\"",
            ),
            (
                "proxy = \"ftp://p\"\n",
                "proxy: unsupported proxy scheme \"ftp\"",
            ),
        ] {
            let root = tree(&[("reg.example", text)]);
            let err = error(&root, "reg.example");
            assert!(err.ends_with(tail), "{text:?}: {err}");
        }

        let root = tree(&[("reg.example", "server = \n")]);
        let err = error(&root, "reg.example");
        assert!(err.contains("hosts.toml: line 1, column"), "{err}");
    }

    #[test]
    fn host_dir_with_port_in_name() {
        let root = tree(&[("myregistry.io:5000", "server = \"https://colon.example\"\n")]);
        assert_eq!(
            summary(&resolve(&root, "myregistry.io:5000"))[0].1,
            "colon.example"
        );
        // Without the port it is another namespace.
        assert_eq!(
            summary(&resolve(&root, "myregistry.io"))[0].1,
            "myregistry.io"
        );

        // `host_port_` wins over `host:port`, as in containerd.
        let root = tree(&[
            ("myregistry.io:5000", "server = \"https://colon.example\"\n"),
            (
                "myregistry.io_5000_",
                "server = \"https://underscore.example\"\n",
            ),
            ("[::1]_5000_", "server = \"http://v6.example\"\n"),
        ]);
        assert_eq!(
            summary(&resolve(&root, "myregistry.io:5000"))[0].1,
            "underscore.example"
        );
        assert_eq!(summary(&resolve(&root, "[::1]:5000"))[0].1, "v6.example");
    }

    #[test]
    fn docker_cert_files_without_hosts_toml() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("reg.example:5000");
        fs::create_dir_all(dir.join("sub.crt")).unwrap();
        for f in [
            "ca.crt",
            "client.cert",
            "client.key",
            "lone.cert",
            "notes.txt",
        ] {
            fs::write(dir.join(f), "").unwrap();
        }
        let eps = resolve_endpoints(Some(root.path()), "reg.example:5000").unwrap();
        assert_eq!(
            summary(&eps),
            [(Scheme::Https, "reg.example:5000", "/v2", false)]
        );
        assert_eq!(eps[0].ca_files, [dir.join("ca.crt")]);
        assert_eq!(
            eps[0].client_certs,
            [
                (dir.join("client.cert"), Some(dir.join("client.key"))),
                (dir.join("lone.cert"), None)
            ]
        );
    }

    #[test]
    fn dial_timeout_and_proxy_are_kept() {
        let root = tree(&[(
            "reg.example",
            "dial_timeout = \"1m30s\"\nproxy = \"http://proxy:8080/\"\n[host.\"https://m\"]\ndial_timeout = \"250ms\"\n",
        )]);
        let eps = resolve(&root, "reg.example");
        assert_eq!(eps[0].dial_timeout, Some(Duration::from_millis(250)));
        assert_eq!(eps[0].proxy, None);
        assert_eq!(eps[1].dial_timeout, Some(Duration::from_secs(90)));
        assert_eq!(eps[1].proxy.as_deref(), Some("http://proxy:8080/"));
    }

    #[test]
    fn registry_names_cannot_escape_the_tree() {
        for registry in ["", "..", "../etc", "a/b", ".hidden", "a b"] {
            assert!(matches!(
                resolve_endpoints(None, registry),
                Err(HostsError::InvalidRegistry(_))
            ));
        }
    }
}
