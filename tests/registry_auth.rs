//! End-to-end: registry credentials belong to the pull that carries them and reach only
//! the host they are for (issue #14, item 1). A real registry with htpasswd auth on
//! loopback, and a fake mirror that records whether credentials were offered to it.

mod support;

use std::fs;
use std::sync::{Arc, OnceLock};

use crust_proto::cri;
use support::crustd::{CriClient, Crustd};
use support::fake_registry::{FakeRegistry, Reply};
use support::oci;
use support::registry::Registry;
use tonic::Code;

async fn pull_as(
    c: &mut CriClient,
    image: &str,
    creds: Option<(&str, &str)>,
) -> Result<String, tonic::Status> {
    c.image
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            auth: creds.map(|(u, p)| cri::AuthConfig {
                username: u.into(),
                password: p.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().image_ref)
}

/// A pull with the whole AuthConfig given, as kubelet sends it.
async fn pull_with(
    c: &mut CriClient,
    image: &str,
    auth: cri::AuthConfig,
) -> Result<String, tonic::Status> {
    c.image
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            auth: Some(auth),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().image_ref)
}

/// `u`/`p` for the registry `server_address`.
fn secret_for(server_address: &str) -> cri::AuthConfig {
    cri::AuthConfig {
        username: "u".into(),
        password: "p".into(),
        server_address: server_address.into(),
        ..Default::default()
    }
}

async fn remove(c: &mut CriClient, image: &str) {
    c.image
        .remove_image(cri::RemoveImageRequest {
            image: Some(cri::ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
        })
        .await
        .expect("remove image");
}

/// A registry holding `private/app:1`, then locked with user `u` and `password`.
async fn private_registry(password: &str) -> (Registry, oci::Pushed) {
    let mut reg = Registry::start();
    let pushed = oci::push_image(&reg.host(), "private/app", "1", &oci::busybox_image()).await;
    reg.require_auth("u", password);
    (reg, pushed)
}

/// Writes a hosts.toml for `registry` into the daemon's tree.
fn hosts_toml(d: &Crustd, registry: &str, text: &str) {
    let dir = d.certs_dir().join(registry);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("hosts.toml"), text).unwrap();
}

/// The daemon, told that the loopback registry's plain HTTP is meant, so that
/// credentials may go to it.
async fn daemon_for(reg: &Registry, extra: &str) -> Crustd {
    let d = Crustd::start_with(extra).await;
    hosts_toml(
        &d,
        &reg.host(),
        &format!("server = \"http://{}\"\n", reg.host()),
    );
    d
}

fn assert_refused(r: Result<String, tonic::Status>, what: &str) {
    let err = r.expect_err(what);
    assert!(
        matches!(err.code(), Code::PermissionDenied | Code::Unauthenticated),
        "{what}: {err:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pull_secret_authorises_only_the_pull_that_carries_it() {
    let (reg, pushed) = private_registry("p").await;
    let d = daemon_for(&reg, "").await;
    let mut c = d.client().await;
    let name = format!("{}/private/app:1", reg.host());
    assert_eq!(
        pull_as(&mut c, &name, Some(("u", "p"))).await.unwrap(),
        pushed.config_digest
    );
    // kubelet's ensureSecretPulledImages pulls again for a pod without the secret while
    // the image is present: the registry must be asked, and must refuse.
    assert_refused(
        pull_as(&mut c, &name, None).await,
        "no secret, image present",
    );
    remove(&mut c, &name).await;
    assert_refused(
        pull_as(&mut c, &name, None).await,
        "no secret, image removed",
    );
    assert_refused(
        pull_as(&mut c, &name, Some(("u", "wrong"))).await,
        "a wrong secret after a right one",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rotated_credentials_take_effect_without_a_restart() {
    let (mut reg, pushed) = private_registry("old").await;
    let d = daemon_for(&reg, "").await;
    let mut c = d.client().await;
    let name = format!("{}/private/app:1", reg.host());
    pull_as(&mut c, &name, Some(("u", "old"))).await.unwrap();
    reg.require_auth("u", "new");
    remove(&mut c, &name).await;
    assert_eq!(
        pull_as(&mut c, &name, Some(("u", "new"))).await.unwrap(),
        pushed.config_digest
    );
    assert_refused(
        pull_as(&mut c, &name, Some(("u", "old"))).await,
        "the rotated-out secret",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_anonymous_first_pull_does_not_break_an_authenticated_one() {
    let (reg, pushed) = private_registry("p").await;
    let d = daemon_for(&reg, "").await;
    let mut c = d.client().await;
    let name = format!("{}/private/app:1", reg.host());
    assert_refused(pull_as(&mut c, &name, None).await, "anonymous");
    assert_eq!(
        pull_as(&mut c, &name, Some(("u", "p"))).await.unwrap(),
        pushed.config_digest
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_are_not_sent_to_a_mirror() {
    let (reg, pushed) = private_registry("p").await;
    // A mirror that asks every visitor for basic credentials, as a hostile or
    // misconfigured one would.
    let mirror = FakeRegistry::start(|_| Reply::basic_challenge());
    let d = daemon_for(
        &reg,
        &format!(
            "[registry.auths.\"{}\"]\nusername = \"u\"\npassword = \"p\"\n",
            reg.host()
        ),
    )
    .await;
    hosts_toml(
        &d,
        &reg.host(),
        &format!(
            "server = \"http://{}\"\n\n[host.\"http://{}\"]\ncapabilities = [\"pull\", \"resolve\"]\n",
            reg.host(),
            mirror.host()
        ),
    );
    let mut c = d.client().await;
    let name = format!("{}/private/app:1", reg.host());
    // The request's secret, then the configured one: both reach the registry, and the
    // pull falls through the refusing mirror to it.
    assert_eq!(
        pull_as(&mut c, &name, Some(("u", "p"))).await.unwrap(),
        pushed.config_digest
    );
    remove(&mut c, &name).await;
    assert_eq!(
        pull_as(&mut c, &name, None).await.unwrap(),
        pushed.config_digest
    );
    let seen = mirror.seen();
    assert!(!seen.is_empty(), "the mirror was never tried");
    for r in &seen {
        assert!(
            !r.has_authorization(),
            "credentials sent to the mirror: {r:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_are_not_sent_over_plain_http_by_default() {
    // A loopback registry gets plain HTTP without any hosts.toml; that default must
    // not carry a secret.
    let fake = FakeRegistry::start(|_| Reply::basic_challenge());
    let d = Crustd::start().await;
    let mut c = d.client().await;
    let err = pull_as(
        &mut c,
        &format!("{}/private/app:1", fake.host()),
        Some(("u", "p")),
    )
    .await
    .unwrap_err();
    assert!(err.message().contains("credentials withheld"), "{err:?}");
    assert!(err.message().contains("hosts.toml"), "{err:?}");
    let seen = fake.seen();
    assert!(!seen.is_empty());
    for r in &seen {
        assert!(
            !r.has_authorization(),
            "credentials sent over default plain HTTP: {r:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_for_another_server_address_are_not_used() {
    let (reg, pushed) = private_registry("p").await;
    // A registry that asks every visitor for credentials and records what it gets,
    // configured so that credentials may cross its plain HTTP.
    let fake = FakeRegistry::start(|_| Reply::basic_challenge());
    let d = daemon_for(&reg, "").await;
    hosts_toml(
        &d,
        &fake.host(),
        &format!("server = \"http://{}\"\n", fake.host()),
    );
    let mut c = d.client().await;
    let name = format!("{}/private/app:1", reg.host());
    // kubelet's keyring matched a secret of another registry: it must not be used.
    assert_refused(
        pull_with(&mut c, &name, secret_for("other.example:5000")).await,
        "a secret for another server",
    );
    let err = pull_with(
        &mut c,
        &format!("{}/private/app:1", fake.host()),
        secret_for(&reg.host()),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err.code(), Code::PermissionDenied | Code::Unauthenticated),
        "{err:?}"
    );
    let seen = fake.seen();
    assert!(!seen.is_empty(), "the fake was never asked");
    for r in &seen {
        assert!(
            !r.has_authorization(),
            "a secret for {} was sent to {}: {r:?}",
            reg.host(),
            fake.host()
        );
    }
    // The server_address forms kubelet writes, with scheme and path, still match.
    for address in [reg.host(), format!("http://{}/v2/", reg.host())] {
        assert_eq!(
            pull_with(&mut c, &name, secret_for(&address))
                .await
                .unwrap(),
            pushed.config_digest,
            "server_address {address}"
        );
        remove(&mut c, &name).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bearer_token_registry_authorises_manifests_and_blobs() {
    // The token dance as Docker Hub does it: /v2/ answers with a bearer challenge, the
    // realm hands out a token for basic credentials, content wants the token.
    let image = oci::build_image(&oci::busybox_image());
    let host: Arc<OnceLock<String>> = Arc::new(OnceLock::new());
    let fake = {
        let host = Arc::clone(&host);
        let image = image.clone();
        FakeRegistry::start(move |r| {
            let bearer = r
                .headers
                .lines()
                .any(|l| l.eq_ignore_ascii_case("authorization: bearer tok-1"));
            let challenge = || Reply::Full {
                status: 401,
                headers: vec![(
                    "WWW-Authenticate".into(),
                    format!(
                        "Bearer realm=\"http://{}/token\",service=\"fake\"",
                        host.get().unwrap()
                    ),
                )],
                body: br#"{"errors":[{"code":"UNAUTHORIZED","message":"token"}]}"#.to_vec(),
            };
            let blob = |b: &oci::Blob| r.path.ends_with(&format!("/blobs/{}", b.digest));
            if r.path.starts_with("/token") {
                // base64("u:p")
                if r.headers.contains("Basic dTpw") {
                    Reply::ok("application/json", br#"{"token":"tok-1"}"#.to_vec())
                } else {
                    Reply::basic_challenge()
                }
            } else if !bearer {
                challenge()
            } else if r.path == "/v2/" {
                Reply::ok("application/json", b"{}".to_vec())
            } else if r.path.ends_with("/manifests/1") {
                Reply::ok(&image.manifest.media_type, image.manifest.data.clone())
            } else if blob(&image.config) {
                Reply::ok("application/octet-stream", image.config.data.clone())
            } else if blob(&image.layers[0]) {
                Reply::ok("application/octet-stream", image.layers[0].data.clone())
            } else {
                Reply::not_found()
            }
        })
    };
    host.set(fake.host()).unwrap();
    let d = Crustd::start().await;
    hosts_toml(
        &d,
        &fake.host(),
        &format!("server = \"http://{}\"\n", fake.host()),
    );
    let mut c = d.client().await;
    let name = format!("{}/app:1", fake.host());
    assert_eq!(
        pull_with(&mut c, &name, secret_for(&fake.host()))
            .await
            .unwrap(),
        image.config.digest
    );
    let seen = fake.seen();
    let token_requests = seen.iter().filter(|r| r.path.starts_with("/token")).count();
    assert!(token_requests >= 1, "{seen:?}");
    assert!(
        seen.iter()
            .any(|r| r.path.ends_with("/manifests/1") && r.headers.contains("Bearer tok-1")),
        "{seen:?}"
    );
    // A second pull reuses the token the first one earned.
    remove(&mut c, &name).await;
    pull_with(&mut c, &name, secret_for(&fake.host()))
        .await
        .unwrap();
    let again = fake.seen();
    assert_eq!(
        again
            .iter()
            .filter(|r| r.path.starts_with("/token"))
            .count(),
        token_requests,
        "{again:?}"
    );
    // Without the secret the realm hands out nothing and the pull is refused.
    remove(&mut c, &name).await;
    assert_refused(
        pull_as(&mut c, &name, None).await,
        "no secret, bearer registry",
    );
}

/// The form fields of a request body, as `key=value` strings (still URL-encoded).
fn form_fields(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .split('&')
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_identity_token_is_exchanged_for_an_access_token() {
    // A token server that takes only an OAuth2 refresh-token POST, as containerd sends
    // it, and a registry that takes only the access token it hands out.
    let tokens = FakeRegistry::start(|r| {
        let fields = form_fields(&r.body);
        let form = r
            .headers
            .to_ascii_lowercase()
            .contains("content-type: application/x-www-form-urlencoded");
        let has = |f: &str| fields.iter().any(|x| x == f);
        let shape = [
            "grant_type=refresh_token",
            "client_id=crust",
            "service=fake",
        ]
        .iter()
        .all(|f| has(f))
            && has("scope=repository%3Aapp%3Apull");
        if r.method != "POST" || !r.path.starts_with("/token") || !form || !shape {
            Reply::Full {
                status: 405,
                headers: vec![],
                body: b"POST a refresh token".to_vec(),
            }
        } else if has("refresh_token=refresh-1") {
            Reply::ok(
                "application/json",
                br#"{"access_token":"access-1","expires_in":300,"scope":"repository:app:pull"}"#
                    .to_vec(),
            )
        } else {
            Reply::Full {
                status: 400,
                headers: vec![("Content-Type".into(), "application/json".into())],
                body: br#"{"error":"invalid_grant"}"#.to_vec(),
            }
        }
    });
    let image = oci::build_image(&oci::busybox_image());
    let realm = format!("http://{}/token", tokens.host());
    let fake = {
        let image = image.clone();
        FakeRegistry::start(move |r| {
            let blob = |b: &oci::Blob| r.path.ends_with(&format!("/blobs/{}", b.digest));
            if !r
                .headers
                .lines()
                .any(|l| l.eq_ignore_ascii_case("authorization: bearer access-1"))
            {
                Reply::Full {
                    status: 401,
                    headers: vec![(
                        "WWW-Authenticate".into(),
                        format!("Bearer realm=\"{realm}\",service=\"fake\""),
                    )],
                    body: br#"{"errors":[{"code":"UNAUTHORIZED","message":"token"}]}"#.to_vec(),
                }
            } else if r.path.ends_with("/manifests/1") {
                Reply::ok(&image.manifest.media_type, image.manifest.data.clone())
            } else if blob(&image.config) {
                Reply::ok("application/octet-stream", image.config.data.clone())
            } else if blob(&image.layers[0]) {
                Reply::ok("application/octet-stream", image.layers[0].data.clone())
            } else {
                Reply::not_found()
            }
        })
    };
    let d = Crustd::start().await;
    hosts_toml(
        &d,
        &fake.host(),
        &format!("server = \"http://{}\"\n", fake.host()),
    );
    let mut c = d.client().await;
    let name = format!("{}/app:1", fake.host());
    let identity = |token: &str| cri::AuthConfig {
        identity_token: token.into(),
        server_address: fake.host(),
        ..Default::default()
    };
    assert_eq!(
        pull_with(&mut c, &name, identity("refresh-1"))
            .await
            .unwrap(),
        image.config.digest
    );
    let exchanges = tokens.seen();
    assert!(
        exchanges.iter().any(|r| r.method == "POST"),
        "{exchanges:?}"
    );
    // The refresh token went only into the POST's body: never to the registry, never
    // into a URL or a header.
    for r in fake.seen().iter().chain(&exchanges) {
        assert!(
            !r.headers.contains("refresh-1") && !r.path.contains("refresh-1"),
            "{r:?}"
        );
    }
    // A wrong identity token is refused by the token server: PermissionDenied, even
    // though the image is present.
    let err = pull_with(&mut c, &name, identity("refresh-wrong"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("identity token"), "{err:?}");
    assert!(err.message().contains("400"), "{err:?}");
    assert!(!err.message().contains("refresh-wrong"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn blob_redirects_to_a_storage_host_carry_no_credentials() {
    // A registry that wants basic credentials and sends its layer blob to a storage
    // host, as registries backed by object stores do.
    let image = oci::build_image(&oci::busybox_image());
    let layer = image.layers[0].clone();
    let storage_refuses = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let storage = {
        let (layer, refuses) = (layer.clone(), Arc::clone(&storage_refuses));
        FakeRegistry::start(move |r| {
            if refuses.load(std::sync::atomic::Ordering::Relaxed) {
                // Asks for credentials it must not get.
                Reply::basic_challenge()
            } else if r.path.starts_with(&format!("/storage/{}", layer.digest)) {
                Reply::ok("application/octet-stream", layer.data.clone())
            } else {
                Reply::not_found()
            }
        })
    };
    let storage_host = storage.host();
    let fake = {
        let image = image.clone();
        FakeRegistry::start(move |r| {
            let blob = |b: &oci::Blob| r.path.ends_with(&format!("/blobs/{}", b.digest));
            if !r.headers.contains("Basic dTpw") {
                Reply::basic_challenge()
            } else if r.path.ends_with("/manifests/1") {
                Reply::ok(&image.manifest.media_type, image.manifest.data.clone())
            } else if blob(&image.config) {
                Reply::ok("application/octet-stream", image.config.data.clone())
            } else if blob(&image.layers[0]) {
                Reply::Full {
                    status: 307,
                    headers: vec![(
                        "Location".into(),
                        format!(
                            "http://{storage_host}/storage/{}?sig=1",
                            image.layers[0].digest
                        ),
                    )],
                    body: Vec::new(),
                }
            } else {
                Reply::not_found()
            }
        })
    };
    let d = Crustd::start().await;
    hosts_toml(
        &d,
        &fake.host(),
        &format!("server = \"http://{}\"\n", fake.host()),
    );
    let mut c = d.client().await;
    let name = format!("{}/app:1", fake.host());
    assert_eq!(
        pull_with(&mut c, &name, secret_for(&fake.host()))
            .await
            .unwrap(),
        image.config.digest
    );
    assert!(
        fake.seen()
            .iter()
            .any(|r| r.path.contains(&layer.digest) && r.has_authorization()),
        "the registry was asked for the blob with credentials"
    );
    // A storage host that asks for credentials gets none either: the pull fails.
    remove(&mut c, &name).await;
    storage_refuses.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_refused(
        pull_with(&mut c, &name, secret_for(&fake.host())).await,
        "a storage host that wants credentials",
    );
    let seen = storage.seen();
    assert!(seen.len() >= 2, "{seen:?}");
    for r in &seen {
        assert!(
            !r.has_authorization(),
            "credentials followed a redirect to {}: {r:?}",
            storage.host()
        );
    }
}
