//! Registry access: which endpoints to try for a host (from hosts.toml), which
//! credentials each endpoint may see, and the registry clients.
//!
//! An oci-client `Client` remembers the first credentials it is given for a registry
//! and caches the tokens they earn, so a client shared between pulls would let one
//! pull use another's secret. Clients are therefore kept per endpoint *and*
//! credentials (by a digest of them, never the secret itself): a pull reuses
//! connections and tokens only of pulls that carried the same credentials.
//!
//! Credentials go only where they belong, as containerd sends them:
//! - a request's credentials (or those configured for the image's registry) only to
//!   that registry's own host, never to a mirror or another `server`, which get only
//!   credentials configured for their own host, or none;
//! - never over plain HTTP unless hosts.toml names that endpoint with `http://`: the
//!   plain HTTP that loopback registries get by default carries no credentials;
//! - a request's credentials whose `server_address` names another registry are not
//!   used at all (kubelet sends one per matching secret; containerd's `ParseAuth`
//!   drops a mismatch the same way): that pull is anonymous;
//! - to a token realm the registry names only as the registry itself is reached: over
//!   https, or over plain HTTP when the registry is (see [`crate::registry_token`]).
//!
//! Manifests and blobs are fetched by crust's own requests ([`crate::registry_http`],
//! with reqwest), which bound every body they read; oci-client provides only the
//! reference and error-format types.

use std::collections::HashMap;
use std::hash::Hash;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use oci_client::Reference;
use sha2::{Digest, Sha256};

use crate::error::{ErrorKind, ImageError, Op, Result};
use crate::hosts::{self, RegistryEndpoint, Scheme};
use crate::reference::ImageRef;

/// Credentials for one registry, as CRI's AuthConfig or crust's config give them.
#[derive(Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// User name for basic authentication.
    #[serde(default)]
    pub username: String,
    /// Password for basic authentication.
    #[serde(default)]
    pub password: String,
    /// `base64(username:password)`, as in Docker's config.json.
    #[serde(default)]
    pub auth: String,
    /// An identity token: an OAuth2 refresh token, exchanged at the registry's token
    /// server for a bearer token.
    #[serde(default)]
    pub identity_token: String,
    /// A registry token, sent as a bearer token.
    #[serde(default)]
    pub registry_token: String,
    /// The registry these credentials are for (CRI's `AuthConfig.server_address`):
    /// `host[:port]`, with or without a scheme and path. Empty means the image's own
    /// registry. Not a configuration key: configured credentials are keyed by host.
    #[serde(skip)]
    pub server_address: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets never reach a log line.
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("server_address", &self.server_address)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Whether no secret is set (a `server_address` alone authorises nothing).
    pub fn is_empty(&self) -> bool {
        self.username.is_empty()
            && self.password.is_empty()
            && self.auth.is_empty()
            && self.identity_token.is_empty()
            && self.registry_token.is_empty()
    }

    /// Whether these credentials may be used for an image of `registry`: their
    /// `server_address` is empty or names that registry.
    pub fn are_for(&self, registry: &str) -> bool {
        self.server_address.trim().is_empty() || names_registry(&self.server_address, registry)
    }

    /// The form in which requests present these credentials.
    pub(crate) fn to_auth(&self, reference: &str) -> Result<Auth> {
        if !self.registry_token.is_empty() {
            return Ok(Auth::Bearer(self.registry_token.clone()));
        }
        // A user name wins over an identity token, as in containerd's ParseAuth.
        if !self.username.is_empty() {
            return Ok(Auth::Basic(self.username.clone(), self.password.clone()));
        }
        if !self.identity_token.is_empty() {
            return Ok(Auth::RefreshToken(self.identity_token.clone()));
        }
        if !self.password.is_empty() {
            return Ok(Auth::Basic(String::new(), self.password.clone()));
        }
        if !self.auth.is_empty() {
            let bad = |why: &str| ImageError::Source {
                op: Op::Pull,
                reference: reference.to_string(),
                message: format!("auth: {why}"),
                kind: ErrorKind::InvalidArgument,
            };
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(self.auth.trim())
                .map_err(|_| bad("not base64"))?;
            let decoded = String::from_utf8(decoded).map_err(|_| bad("not utf-8"))?;
            let (user, pass) = decoded
                .split_once(':')
                .ok_or_else(|| bad("not user:password"))?;
            // Docker's config.json pads with NULs at times; containerd trims them too.
            return Ok(Auth::Basic(
                user.to_string(),
                pass.trim_matches('\0').to_string(),
            ));
        }
        Ok(Auth::Anonymous)
    }
}

/// Credentials as requests present them.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Auth {
    /// None.
    Anonymous,
    /// User and password: basic auth to the registry, or to its token server.
    Basic(String, String),
    /// A registry token (CRI's `registry_token`): the bearer token itself.
    Bearer(String),
    /// An OAuth2 refresh token (CRI's `identity_token`), exchanged at the token server.
    RefreshToken(String),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets never reach a log line.
        match self {
            Auth::Anonymous => f.write_str("Anonymous"),
            Auth::Basic(user, _) => write!(f, "Basic({user:?}, \"<redacted>\")"),
            Auth::Bearer(_) => f.write_str("Bearer(<redacted>)"),
            Auth::RefreshToken(_) => f.write_str("RefreshToken(<redacted>)"),
        }
    }
}

/// Whether a CRI `server_address` (`host[:port]`, `https://host[:port]/path`, as
/// kubelet's keyring writes them, e.g. `https://index.docker.io/v1/`) names the
/// registry host `registry`. Docker Hub's names are one registry.
pub(crate) fn names_registry(server_address: &str, registry: &str) -> bool {
    let s = server_address.trim();
    let s = s.split_once("://").map_or(s, |(_, rest)| rest);
    let authority = s.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, h)| h)
        .to_ascii_lowercase();
    let registry = registry.to_ascii_lowercase();
    let hub = |h: &str| matches!(h, "docker.io" | "index.docker.io" | "registry-1.docker.io");
    !host.is_empty() && (host == registry || (hub(&host) && hub(&registry)))
}

/// Default cap on one layer's unpacked size: far above real layers (CUDA and ML
/// framework images have layers of a few GiB), far below a bomb meant to fill a disk.
pub const DEFAULT_MAX_LAYER_UNPACKED_BYTES: u64 = 16 << 30;
/// Default cap on an image's unpacked size, all layers together.
pub const DEFAULT_MAX_IMAGE_UNPACKED_BYTES: u64 = 64 << 30;
/// Default longest wait for the next bytes from a registry.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a connection attempt may take unless hosts.toml gives a `dial_timeout`.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings of registry access.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// The hosts.toml tree (containerd's `config_path`), e.g. `/etc/containerd/certs.d`.
    pub config_path: Option<PathBuf>,
    /// Credentials per registry host, used when a request carries none.
    pub auths: HashMap<String, Credentials>,
    /// The most one layer may unpack to: its uncompressed archive, and its file data
    /// with sparse files' holes counted.
    pub max_layer_unpacked_bytes: u64,
    /// The most an image's layers may unpack to together (file data, holes counted).
    pub max_image_unpacked_bytes: u64,
    /// The longest a registry connection may stay silent while we wait for bytes.
    pub read_timeout: Duration,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            config_path: None,
            auths: HashMap::new(),
            max_layer_unpacked_bytes: DEFAULT_MAX_LAYER_UNPACKED_BYTES,
            max_image_unpacked_bytes: DEFAULT_MAX_IMAGE_UNPACKED_BYTES,
            read_timeout: DEFAULT_READ_TIMEOUT,
        }
    }
}

/// Clients kept at most; beyond that the least recently used goes. Each distinct pull
/// secret makes a client, so without a bound a node cycling through many would grow
/// without end.
const MAX_CLIENTS: usize = 64;

/// Registry clients, one per endpoint configuration and credentials.
pub struct Registries {
    options: RegistryOptions,
    clients: Mutex<LruCache<ClientKey, EndpointClients>>,
}

/// Repositories whose `Authorization` header one endpoint client keeps: each pull of
/// another repository needs a token of its own scope.
const MAX_AUTHORIZATIONS: usize = 64;

/// `Authorization` header values that earned a manifest, per repository.
pub(crate) type Authorizations = Arc<Mutex<LruCache<String, String>>>;

/// What one endpoint and set of credentials talk through: an HTTP client for the
/// registry, one of the same settings that follows no redirects for its token server,
/// and the `Authorization` headers earned so far.
#[derive(Clone)]
struct EndpointClients {
    http: reqwest::Client,
    token_http: reqwest::Client,
    authorizations: Authorizations,
}

/// What a cached client is for: the endpoint's settings and whose credentials.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    endpoint: String,
    /// sha256 of the credentials, `None` for anonymous access.
    credentials: Option<[u8; 32]>,
}

/// One way to reach an image: a client, the reference to ask it for, and the
/// credentials this endpoint may see.
#[derive(Clone)]
pub(crate) struct Route {
    /// The HTTP client manifests and blobs are fetched with (see
    /// [`crate::registry_http`]).
    pub(crate) http: reqwest::Client,
    /// The HTTP client of token requests: the same settings, no redirects, so that
    /// credentials reach the realm the registry named and nowhere else.
    pub(crate) token_http: reqwest::Client,
    /// `Authorization` headers earned before, per repository.
    pub(crate) authorizations: Authorizations,
    /// `http` or `https`.
    pub(crate) scheme: &'static str,
    pub(crate) reference: Reference,
    pub(crate) endpoint: String,
    pub(crate) auth: Auth,
    /// Why credentials meant for this registry were not sent to this endpoint, for
    /// the error message when it then refuses us.
    pub(crate) withheld: Option<String>,
}

/// A small least-recently-used map: lookups and inserts are linear, which at
/// [`MAX_CLIENTS`] entries costs nothing next to a registry round trip.
pub(crate) struct LruCache<K, V> {
    capacity: usize,
    tick: u64,
    entries: HashMap<K, (u64, V)>,
}

impl<K: Hash + Eq + Clone, V: Clone> LruCache<K, V> {
    fn new(capacity: usize) -> Self {
        LruCache {
            capacity: capacity.max(1),
            tick: 0,
            entries: HashMap::new(),
        }
    }

    pub(crate) fn get(&mut self, key: &K) -> Option<V> {
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(key).map(|(used, v)| {
            *used = tick;
            v.clone()
        })
    }

    pub(crate) fn insert(&mut self, key: K, value: V) {
        self.tick += 1;
        if !self.entries.contains_key(&key) && self.entries.len() >= self.capacity {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (used, _))| *used)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(key, (self.tick, value));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// A digest naming credentials without holding them; `None` for anonymous access.
fn fingerprint(auth: &Auth) -> Option<[u8; 32]> {
    let mut h = Sha256::new();
    // Length-prefixed fields, so ("ab", "c") and ("a", "bc") differ.
    let mut field = |b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    match auth {
        Auth::Anonymous => return None,
        Auth::Basic(user, pass) => {
            field(b"basic");
            field(user.as_bytes());
            field(pass.as_bytes());
        }
        Auth::Bearer(token) => {
            field(b"bearer");
            field(token.as_bytes());
        }
        Auth::RefreshToken(token) => {
            field(b"refresh");
            field(token.as_bytes());
        }
    }
    Some(h.finalize().into())
}

/// Whether `host` is the registry `registry` itself rather than a mirror or another
/// server standing in for it.
fn is_own_host(registry: &str, host: &str) -> bool {
    host == registry || (registry == "docker.io" && host == "registry-1.docker.io")
}

impl Registries {
    /// Creates the client pool.
    pub fn new(options: RegistryOptions) -> Self {
        // reqwest is built without a bundled crypto provider so that one TLS stack
        // (rustls with ring) serves the whole daemon; installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Registries {
            options,
            clients: Mutex::new(LruCache::new(MAX_CLIENTS)),
        }
    }

    /// The settings these clients were made with.
    pub(crate) fn options(&self) -> &RegistryOptions {
        &self.options
    }

    /// The configured credentials for a registry host.
    pub(crate) fn configured_auth(&self, registry: &str) -> Option<&Credentials> {
        self.options.auths.get(registry).or_else(|| {
            (registry == "docker.io")
                .then(|| {
                    self.options
                        .auths
                        .get("registry-1.docker.io")
                        .or(self.options.auths.get("index.docker.io"))
                })
                .flatten()
        })
    }

    /// The endpoints to pull `image` from, in order, each with its client and the
    /// credentials it may see. `request` are the pull's own credentials, which take the
    /// place of configured ones for the image's registry.
    pub(crate) fn routes(
        &self,
        image: &ImageRef,
        request: Option<&Credentials>,
    ) -> Result<Vec<Route>> {
        let name = image.to_string();
        let endpoints =
            hosts::resolve_endpoints(self.options.config_path.as_deref(), image.registry())?;
        let own = match request.filter(|c| !c.is_empty()) {
            // Meant for another registry: neither these nor configured ones are used,
            // so a secret never follows an image to a host it was not given for.
            Some(c) if !c.are_for(image.registry()) => {
                tracing::debug!(
                    image = %name,
                    server_address = %c.server_address,
                    "pull credentials are for another registry; pulling anonymously"
                );
                None
            }
            Some(c) => Some(c),
            None => self.configured_auth(image.registry()),
        };
        let mut routes = Vec::new();
        for ep in endpoints.into_iter().filter(|ep| ep.capabilities.pull) {
            let endpoint = format!("{}://{}", scheme_name(ep.scheme), ep.host);
            let mut creds = if is_own_host(image.registry(), &ep.host) {
                own
            } else {
                self.options.auths.get(&ep.host)
            };
            let mut withheld = None;
            if creds.is_some() && ep.scheme == Scheme::Http && !ep.explicit_http {
                creds = None;
                withheld = Some(format!(
                    "credentials withheld from {endpoint}: plain HTTP by default only; \
                     name it \"http://{}\" in hosts.toml to send credentials over it",
                    ep.host
                ));
            }
            let auth = match creds {
                Some(c) => c.to_auth(&name)?,
                None => Auth::Anonymous,
            };
            let clients = self.client_for(&ep, &auth, &name)?;
            let mut reference = image.client_ref().clone();
            let default_host = match image.registry() {
                "docker.io" => "registry-1.docker.io",
                other => other,
            };
            if ep.host != default_host && ep.host != image.registry() {
                reference.set_mirror_registry(ep.host.clone());
            }
            routes.push(Route {
                http: clients.http,
                token_http: clients.token_http,
                authorizations: clients.authorizations,
                scheme: scheme_name(ep.scheme),
                reference,
                endpoint,
                auth,
                withheld,
            });
        }
        if routes.is_empty() {
            return Err(ImageError::Source {
                op: Op::Pull,
                reference: image.to_string(),
                message: format!("no endpoint of {} may pull", image.registry()),
                kind: ErrorKind::FailedPrecondition,
            });
        }
        Ok(routes)
    }

    fn client_for(
        &self,
        ep: &RegistryEndpoint,
        auth: &Auth,
        reference: &str,
    ) -> Result<EndpointClients> {
        let key = ClientKey {
            endpoint: format!(
                "{}|{:?}|{}|{:?}|{:?}",
                ep.host, ep.scheme, ep.skip_verify, ep.ca_files, ep.dial_timeout
            ),
            credentials: fingerprint(auth),
        };
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(&key) {
            return Ok(client);
        }
        let bad_ca = |ca: &std::path::Path, why: String| ImageError::Source {
            op: Op::Pull,
            reference: reference.to_string(),
            message: format!("ca file {}: {why}", ca.display()),
            kind: ErrorKind::FailedPrecondition,
        };
        let mut certificates = Vec::new();
        for ca in &ep.ca_files {
            let data = std::fs::read(ca).map_err(|e| bad_ca(ca, e.to_string()))?;
            certificates.push(
                reqwest::Certificate::from_pem(&data).map_err(|e| bad_ca(ca, e.to_string()))?,
            );
        }
        let build = |redirect: reqwest::redirect::Policy| {
            reqwest::Client::builder()
                .danger_accept_invalid_certs(ep.skip_verify)
                .connect_timeout(ep.dial_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT))
                // Without it a registry that stops sending mid-blob holds the pull until
                // kubelet gives up, and its layer lock with it.
                .read_timeout(self.options.read_timeout)
                .user_agent(USER_AGENT)
                .tls_certs_merge(certificates.iter().cloned())
                .redirect(redirect)
                .build()
                .map_err(|e| ImageError::Source {
                    op: Op::Pull,
                    reference: reference.to_string(),
                    message: format!("http client for {}: {}", ep.host, error_chain(&e)),
                    kind: ErrorKind::Internal,
                })
        };
        let made = EndpointClients {
            // reqwest drops the Authorization header on a redirect to another host,
            // scheme or port, so a redirect never carries our credentials away.
            http: build(reqwest::redirect::Policy::limited(5))?,
            // A POST redirected with 307 or 308 would take its body, the refresh
            // token, along: token servers get no redirects at all.
            token_http: build(reqwest::redirect::Policy::none())?,
            authorizations: Arc::new(Mutex::new(LruCache::new(MAX_AUTHORIZATIONS))),
        };
        clients.insert(key, made.clone());
        Ok(made)
    }
}

/// The User-Agent of registry requests.
const USER_AGENT: &str = concat!("crust/", env!("CARGO_PKG_VERSION"));

fn scheme_name(s: Scheme) -> &'static str {
    match s {
        Scheme::Http => "http",
        Scheme::Https => "https",
    }
}

/// The error and its causes on one line, as request errors hide the useful part inside.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(u: &str, p: &str) -> Credentials {
        Credentials {
            username: u.into(),
            password: p.into(),
            ..Default::default()
        }
    }

    fn registries(
        hosts: &[(&str, &str)],
        auths: &[(&str, Credentials)],
    ) -> (Registries, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        for (host, toml) in hosts {
            std::fs::create_dir_all(dir.path().join(host)).unwrap();
            std::fs::write(dir.path().join(host).join("hosts.toml"), toml).unwrap();
        }
        let r = Registries::new(RegistryOptions {
            config_path: Some(dir.path().to_path_buf()),
            auths: auths
                .iter()
                .cloned()
                .map(|(h, c)| (h.to_string(), c))
                .collect(),
            ..Default::default()
        });
        (r, dir)
    }

    fn auths_of(routes: &[Route]) -> Vec<(String, String)> {
        routes
            .iter()
            .map(|r| (r.endpoint.clone(), format!("{:?}", r.auth)))
            .collect()
    }

    #[test]
    fn lru_evicts_the_least_recently_used() {
        let mut c = LruCache::new(2);
        c.insert("a", 1);
        c.insert("b", 2);
        assert_eq!(c.get(&"a"), Some(1));
        c.insert("c", 3);
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(&"b"), None, "b was used least recently");
        assert_eq!(c.get(&"a"), Some(1));
        assert_eq!(c.get(&"c"), Some(3));
        // Replacing a present key evicts nothing.
        c.insert("c", 4);
        assert_eq!((c.len(), c.get(&"a"), c.get(&"c")), (2, Some(1), Some(4)));
    }

    #[test]
    fn fingerprints_tell_credentials_apart() {
        let b = |u: &str, p: &str| Auth::Basic(u.into(), p.into());
        assert_eq!(fingerprint(&Auth::Anonymous), None);
        assert_eq!(fingerprint(&b("u", "p")), fingerprint(&b("u", "p")));
        assert_ne!(fingerprint(&b("u", "p")), fingerprint(&b("u", "p2")));
        assert_ne!(fingerprint(&b("ab", "c")), fingerprint(&b("a", "bc")));
        assert_ne!(
            fingerprint(&Auth::Bearer("t".into())),
            fingerprint(&b("t", ""))
        );
        assert_ne!(
            fingerprint(&Auth::Bearer("t".into())),
            fingerprint(&Auth::RefreshToken("t".into()))
        );
    }

    #[test]
    fn clients_are_kept_per_endpoint_and_credentials_and_bounded() {
        let (r, _dir) = registries(&[], &[]);
        let image = ImageRef::parse("reg.example/app:1").unwrap();
        let key = |routes: &[Route]| fingerprint(&routes[0].auth);
        let a = r.routes(&image, Some(&basic("u", "a"))).unwrap();
        let anon = r.routes(&image, None).unwrap();
        let b = r.routes(&image, Some(&basic("u", "b"))).unwrap();
        assert_eq!(key(&anon), None);
        assert!(key(&a).is_some() && key(&a) != key(&b));
        // Three credentials, three clients; the same credentials again, no new one.
        assert_eq!(r.clients.lock().unwrap().len(), 3);
        r.routes(&image, Some(&basic("u", "a"))).unwrap();
        assert_eq!(r.clients.lock().unwrap().len(), 3);
        for n in 0..MAX_CLIENTS * 2 {
            r.routes(&image, Some(&basic("u", &n.to_string()))).unwrap();
        }
        assert_eq!(r.clients.lock().unwrap().len(), MAX_CLIENTS);
    }

    #[test]
    fn request_credentials_go_only_to_the_registry_itself() {
        let (r, _dir) = registries(
            &[(
                "reg.example",
                "server = \"https://reg.example\"\n\
                 [host.\"https://mirror.example\"]\n\
                 [host.\"https://own-creds.example\"]\n",
            )],
            &[("own-creds.example", basic("m", "m"))],
        );
        let image = ImageRef::parse("reg.example/app:1").unwrap();
        let routes = r.routes(&image, Some(&basic("u", "p"))).unwrap();
        assert_eq!(
            auths_of(&routes),
            [
                ("https://mirror.example".into(), "Anonymous".into()),
                (
                    "https://own-creds.example".into(),
                    "Basic(\"m\", \"<redacted>\")".into()
                ),
                (
                    "https://reg.example".into(),
                    "Basic(\"u\", \"<redacted>\")".into()
                ),
            ]
        );
        // Configured credentials of the registry follow the same rule.
        let (r, _dir) = registries(
            &[("reg.example", "[host.\"https://mirror.example\"]\n")],
            &[("reg.example", basic("c", "c"))],
        );
        let routes = r.routes(&image, None).unwrap();
        assert_eq!(format!("{:?}", routes[0].auth), "Anonymous");
        assert_eq!(
            format!("{:?}", routes[1].auth),
            "Basic(\"c\", \"<redacted>\")"
        );
    }

    #[test]
    fn credentials_cross_plain_http_only_when_configured_so() {
        let (r, _dir) = registries(
            &[("127.0.0.1:5001", "server = \"http://127.0.0.1:5001\"\n")],
            &[],
        );
        // Loopback defaults to plain HTTP, which carries no credentials...
        let image = ImageRef::parse("127.0.0.1:5000/app:1").unwrap();
        let routes = r.routes(&image, Some(&basic("u", "p"))).unwrap();
        assert_eq!(format!("{:?}", routes[0].auth), "Anonymous");
        assert!(
            routes[0]
                .withheld
                .as_deref()
                .unwrap()
                .contains("http://127.0.0.1:5000")
        );
        // ...unless hosts.toml asks for plain HTTP in so many words.
        let image = ImageRef::parse("127.0.0.1:5001/app:1").unwrap();
        let routes = r.routes(&image, Some(&basic("u", "p"))).unwrap();
        assert_eq!(
            format!("{:?}", routes[0].auth),
            "Basic(\"u\", \"<redacted>\")"
        );
        assert!(routes[0].withheld.is_none());
        // Nothing is withheld from an anonymous pull.
        let image = ImageRef::parse("127.0.0.1:5000/app:1").unwrap();
        assert!(r.routes(&image, None).unwrap()[0].withheld.is_none());
    }

    #[test]
    fn server_addresses_name_registries_as_kubelet_writes_them() {
        for (address, registry) in [
            ("reg.example", "reg.example"),
            ("reg.example:5000", "reg.example:5000"),
            ("https://reg.example:5000", "reg.example:5000"),
            ("https://reg.example/v2/", "reg.example"),
            ("http://REG.example/", "reg.example"),
            ("https://index.docker.io/v1/", "docker.io"),
            ("registry-1.docker.io", "docker.io"),
            ("docker.io", "docker.io"),
        ] {
            assert!(names_registry(address, registry), "{address} / {registry}");
        }
        for (address, registry) in [
            ("other.example", "reg.example"),
            ("reg.example:5000", "reg.example"),
            ("reg.example", "reg.example:5000"),
            ("https://reg.example.evil/", "reg.example"),
            ("https://evil/reg.example", "reg.example"),
            ("", "reg.example"),
            ("https://", "reg.example"),
            ("ghcr.io", "docker.io"),
        ] {
            assert!(!names_registry(address, registry), "{address} / {registry}");
        }
    }

    #[test]
    fn request_credentials_for_another_server_make_the_pull_anonymous() {
        let (r, _dir) = registries(&[], &[("reg.example", basic("c", "c"))]);
        let image = ImageRef::parse("reg.example/app:1").unwrap();
        let scoped = |server: &str| Credentials {
            server_address: server.into(),
            ..basic("u", "p")
        };
        let auth = |c: &Credentials| format!("{:?}", r.routes(&image, Some(c)).unwrap()[0].auth);
        assert_eq!(auth(&scoped("other.example")), "Anonymous");
        assert_eq!(
            auth(&scoped("https://reg.example/v2/")),
            "Basic(\"u\", \"<redacted>\")"
        );
        assert_eq!(auth(&scoped("")), "Basic(\"u\", \"<redacted>\")");
        // A server_address with no secret is no request credentials: configured ones.
        let bare = Credentials {
            server_address: "other.example".into(),
            ..Default::default()
        };
        assert!(bare.is_empty());
        assert_eq!(auth(&bare), "Basic(\"c\", \"<redacted>\")");
    }

    #[test]
    fn credentials_map_to_client_auth() {
        let c = Credentials {
            auth: base64::engine::general_purpose::STANDARD.encode("u:p:x"),
            ..Default::default()
        };
        assert_eq!(
            format!("{:?}", c.to_auth("r").unwrap()),
            format!("{:?}", Auth::Basic("u".into(), "p:x".into()))
        );
        let c = Credentials {
            username: "a".into(),
            password: "b".into(),
            ..Default::default()
        };
        assert!(matches!(c.to_auth("r").unwrap(), Auth::Basic(u, p) if u == "a" && p == "b"));
        let c = Credentials {
            registry_token: "t".into(),
            username: "a".into(),
            ..Default::default()
        };
        assert!(matches!(c.to_auth("r").unwrap(), Auth::Bearer(t) if t == "t"));
        let c = Credentials {
            identity_token: "i".into(),
            username: "a".into(),
            ..Default::default()
        };
        assert!(matches!(c.to_auth("r").unwrap(), Auth::Basic(u, _) if u == "a"));
        let c = Credentials {
            auth: base64::engine::general_purpose::STANDARD.encode("u:p\0\0"),
            ..Default::default()
        };
        assert!(matches!(c.to_auth("r").unwrap(), Auth::Basic(_, p) if p == "p"));
        let c = Credentials {
            identity_token: "i".into(),
            ..Default::default()
        };
        assert!(matches!(c.to_auth("r").unwrap(), Auth::RefreshToken(t) if t == "i"));
        assert!(matches!(
            Credentials::default().to_auth("r").unwrap(),
            Auth::Anonymous
        ));
        let bad = Credentials {
            auth: "!!!".into(),
            ..Default::default()
        };
        assert_eq!(
            bad.to_auth("r").unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        assert!(
            !format!(
                "{:?}",
                Credentials {
                    password: "secret".into(),
                    ..Default::default()
                }
            )
            .contains("secret")
        );
        for auth in [
            Auth::Basic("u".into(), "secret".into()),
            Auth::Bearer("secret".into()),
            Auth::RefreshToken("secret".into()),
        ] {
            assert!(!format!("{auth:?}").contains("secret"), "{auth:?}");
        }
    }
}
