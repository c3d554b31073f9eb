//! Registry access: which endpoints to try for a host (from hosts.toml), one registry
//! client per endpoint (kept, so connections and tokens are reused), and credentials.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use base64::Engine;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::error::{ErrorKind, ImageError, Result};
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
    /// An identity token, sent as a bearer token.
    #[serde(default)]
    pub identity_token: String,
    /// A registry token, sent as a bearer token.
    #[serde(default)]
    pub registry_token: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets never reach a log line.
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        *self == Credentials::default()
    }

    /// The registry client's form of these credentials.
    pub(crate) fn to_auth(&self, reference: &str) -> Result<RegistryAuth> {
        if !self.registry_token.is_empty() {
            return Ok(RegistryAuth::Bearer(self.registry_token.clone()));
        }
        if !self.identity_token.is_empty() {
            // oci-client has no OAuth2 refresh-token exchange; registries that accept the
            // identity token as a bearer token work, others refuse it.
            return Ok(RegistryAuth::Bearer(self.identity_token.clone()));
        }
        if !self.username.is_empty() || !self.password.is_empty() {
            return Ok(RegistryAuth::Basic(
                self.username.clone(),
                self.password.clone(),
            ));
        }
        if !self.auth.is_empty() {
            let bad = |why: &str| ImageError::Registry {
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
            return Ok(RegistryAuth::Basic(user.to_string(), pass.to_string()));
        }
        Ok(RegistryAuth::Anonymous)
    }
}

/// Settings of registry access.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// The hosts.toml tree (containerd's `config_path`), e.g. `/etc/containerd/certs.d`.
    pub config_path: Option<PathBuf>,
    /// Credentials per registry host, used when a request carries none.
    pub auths: HashMap<String, Credentials>,
}

/// Registry clients, one per endpoint configuration.
pub struct Registries {
    options: RegistryOptions,
    clients: Mutex<HashMap<String, Client>>,
}

/// One way to reach an image: a client and the reference to ask it for.
pub(crate) struct Route {
    pub(crate) client: Client,
    pub(crate) reference: Reference,
    pub(crate) endpoint: String,
}

impl Registries {
    /// Creates the client pool.
    pub fn new(options: RegistryOptions) -> Self {
        // reqwest is built without a bundled crypto provider so that one TLS stack
        // (rustls with ring) serves the whole daemon; installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Registries {
            options,
            clients: Mutex::new(HashMap::new()),
        }
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

    /// The endpoints to pull `image` from, in order, each with its client.
    pub(crate) fn routes(&self, image: &ImageRef) -> Result<Vec<Route>> {
        let endpoints =
            hosts::resolve_endpoints(self.options.config_path.as_deref(), image.registry())?;
        let mut routes = Vec::new();
        for ep in endpoints.into_iter().filter(|ep| ep.capabilities.pull) {
            let client = self.client_for(&ep, &image.to_string())?;
            let mut reference = image.client_ref().clone();
            let default_host = match image.registry() {
                "docker.io" => "registry-1.docker.io",
                other => other,
            };
            if ep.host != default_host && ep.host != image.registry() {
                reference.set_mirror_registry(ep.host.clone());
            }
            routes.push(Route {
                client,
                reference,
                endpoint: format!("{}://{}", scheme_name(ep.scheme), ep.host),
            });
        }
        if routes.is_empty() {
            return Err(ImageError::Registry {
                reference: image.to_string(),
                message: format!("no endpoint of {} may pull", image.registry()),
                kind: ErrorKind::FailedPrecondition,
            });
        }
        Ok(routes)
    }

    fn client_for(&self, ep: &RegistryEndpoint, reference: &str) -> Result<Client> {
        let key = format!(
            "{}|{:?}|{}|{:?}",
            ep.host, ep.scheme, ep.skip_verify, ep.ca_files
        );
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let mut extra_root_certificates = Vec::new();
        for ca in &ep.ca_files {
            let data = std::fs::read(ca).map_err(|e| ImageError::Registry {
                reference: reference.to_string(),
                message: format!("ca file {}: {e}", ca.display()),
                kind: ErrorKind::FailedPrecondition,
            })?;
            extra_root_certificates.push(Certificate {
                encoding: CertificateEncoding::Pem,
                data,
            });
        }
        let config = ClientConfig {
            protocol: match ep.scheme {
                Scheme::Http => ClientProtocol::Http,
                Scheme::Https => ClientProtocol::Https,
            },
            accept_invalid_certificates: ep.skip_verify,
            extra_root_certificates,
            connect_timeout: Some(std::time::Duration::from_secs(30)),
            // Platform resolution is ours (see pull.rs): the client only moves bytes.
            platform_resolver: None,
            ..Default::default()
        };
        let client = Client::new(config);
        clients.insert(key, client.clone());
        Ok(client)
    }
}

fn scheme_name(s: Scheme) -> &'static str {
    match s {
        Scheme::Http => "http",
        Scheme::Https => "https",
    }
}

/// Maps a registry client error to ours, keeping its message.
pub(crate) fn registry_error(
    reference: &str,
    endpoint: &str,
    e: OciDistributionError,
) -> ImageError {
    let kind = match &e {
        OciDistributionError::ImageManifestNotFoundError(_) => ErrorKind::NotFound,
        OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::UnauthorizedError { .. } => ErrorKind::PermissionDenied,
        OciDistributionError::RegistryError { envelope, .. } => {
            match envelope.errors.first().map(|e| &e.code) {
                Some(
                    OciErrorCode::ManifestUnknown
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::BlobUnknown
                    | OciErrorCode::NotFound,
                ) => ErrorKind::NotFound,
                Some(OciErrorCode::Unauthorized | OciErrorCode::Denied) => {
                    ErrorKind::PermissionDenied
                }
                Some(OciErrorCode::Toomanyrequests) => ErrorKind::Unavailable,
                _ => ErrorKind::Internal,
            }
        }
        OciDistributionError::ServerError { code, .. } => match code {
            401 | 403 => ErrorKind::PermissionDenied,
            404 => ErrorKind::NotFound,
            429 | 502..=504 => ErrorKind::Unavailable,
            _ => ErrorKind::Internal,
        },
        OciDistributionError::RequestError(_) | OciDistributionError::IoError(_) => {
            ErrorKind::Unavailable
        }
        OciDistributionError::DigestError(_) => ErrorKind::Internal,
        _ => ErrorKind::Internal,
    };
    ImageError::Registry {
        reference: reference.to_string(),
        message: format!("{endpoint}: {}", error_chain(&e)),
        kind,
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

    #[test]
    fn credentials_map_to_client_auth() {
        let c = Credentials {
            auth: base64::engine::general_purpose::STANDARD.encode("u:p:x"),
            ..Default::default()
        };
        assert_eq!(
            format!("{:?}", c.to_auth("r").unwrap()),
            format!("{:?}", RegistryAuth::Basic("u".into(), "p:x".into()))
        );
        let c = Credentials {
            username: "a".into(),
            password: "b".into(),
            ..Default::default()
        };
        assert!(
            matches!(c.to_auth("r").unwrap(), RegistryAuth::Basic(u, p) if u == "a" && p == "b")
        );
        let c = Credentials {
            registry_token: "t".into(),
            username: "a".into(),
            ..Default::default()
        };
        assert!(matches!(c.to_auth("r").unwrap(), RegistryAuth::Bearer(t) if t == "t"));
        let c = Credentials {
            identity_token: "i".into(),
            ..Default::default()
        };
        assert!(matches!(c.to_auth("r").unwrap(), RegistryAuth::Bearer(t) if t == "i"));
        assert!(matches!(
            Credentials::default().to_auth("r").unwrap(),
            RegistryAuth::Anonymous
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
    }
}
