//! End-to-end: registry credentials belong to the pull that carries them and reach only
//! the host they are for (issue #14, item 1). A real registry with htpasswd auth on
//! loopback, and a fake mirror that records whether credentials were offered to it.

mod support;

use std::fs;

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
