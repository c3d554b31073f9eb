//! End-to-end: pulls are bounded (issue #14, item 5). Compression bombs, oversized
//! manifests and configs, blobs longer than their descriptor and registries that stall
//! fail the pull with a clear error and leave nothing on disk; sparse files stay sparse.

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crust_proto::cri;
use serde_json::json;
use support::crustd::{CriClient, Crustd};
use support::fake_registry::{FakeRegistry, Reply, SeenRequest};
use support::oci::{self, BuiltImage, ImageSpec, Layer, LayerBuilder};
use support::registry::Registry;
use tonic::Code;

async fn pull(c: &mut CriClient, image: &str) -> Result<String, tonic::Status> {
    c.image
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().image_ref)
}

/// A pull that must fail within `secs` seconds, not hang.
async fn pull_within(c: &mut CriClient, image: &str, secs: u64) -> tonic::Status {
    let started = Instant::now();
    match tokio::time::timeout(Duration::from_secs(secs), pull(c, image)).await {
        Ok(r) => r.unwrap_err(),
        Err(_) => panic!("pull {image} still running after {:?}", started.elapsed()),
    }
}

async fn images(c: &mut CriClient) -> usize {
    c.image
        .list_images(cri::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images
        .len()
}

/// Every path under the daemon's root: a failed pull may change the database's
/// contents but must not leave a file or directory behind (no partial layer, no
/// temporary directory, no blob).
fn tree(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            out.insert(path.strip_prefix(root).unwrap().display().to_string());
            if fs::symlink_metadata(&path).unwrap().is_dir() {
                stack.push(path);
            }
        }
    }
    out
}

fn one_layer(tar: Vec<u8>) -> ImageSpec {
    ImageSpec {
        layers: vec![Layer::gzip(tar)],
        ..oci::busybox_image()
    }
}

fn assert_exhausted(err: &tonic::Status, needle: &str) {
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains(needle), "{err:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gzip_bomb_fails_resource_exhausted_and_leaves_nothing() {
    let reg = Registry::start();
    // 64 MiB of zeros gzip to about 64 KiB: far under any blob limit, far over the
    // 1 MiB a layer may unpack to here.
    let bomb = LayerBuilder::new()
        .file("zeros", vec![0u8; 64 << 20], 0o644)
        .build();
    let pushed = oci::push_image(&reg.host(), "bomb", "1", &one_layer(bomb)).await;
    assert!(pushed.layer_sizes[0] < 1 << 20);
    let d = Crustd::start_with_registry("max_layer_unpacked_bytes = 1048576").await;
    let mut c = d.client().await;
    let before = tree(&d.root());
    let err = pull(&mut c, &format!("{}/bomb:1", reg.host()))
        .await
        .unwrap_err();
    assert_exhausted(&err, "per-layer limit of 1048576 bytes");
    assert!(err.message().contains(&pushed.layer_digests[0]), "{err:?}");
    assert_eq!(images(&mut c).await, 0);
    assert_eq!(tree(&d.root()), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn layers_within_their_cap_still_exceed_the_image_cap_together() {
    let reg = Registry::start();
    let layer = |name: &str| {
        LayerBuilder::new()
            .file(name, vec![7u8; 700 << 10], 0o644)
            .build()
    };
    let spec = ImageSpec {
        layers: vec![Layer::gzip(layer("a")), Layer::gzip(layer("b"))],
        ..oci::busybox_image()
    };
    oci::push_image(&reg.host(), "two", "1", &spec).await;
    let d = Crustd::start_with_registry(
        "max_layer_unpacked_bytes = 1048576\nmax_image_unpacked_bytes = 1048576",
    )
    .await;
    let mut c = d.client().await;
    let before = tree(&d.root());
    let err = pull(&mut c, &format!("{}/two:1", reg.host()))
        .await
        .unwrap_err();
    assert_exhausted(&err, "per-image limit of 1048576 bytes");
    assert_eq!(images(&mut c).await, 0);
    assert_eq!(tree(&d.root()), before);
}

/// A fake registry serving `image` as `app:1`, with `layer` deciding how the layer
/// blob is answered.
fn serve(
    image: BuiltImage,
    layer: impl Fn(&SeenRequest) -> Reply + Send + Sync + 'static,
) -> FakeRegistry {
    FakeRegistry::start(move |r| {
        let blob = |b: &oci::Blob| r.path.ends_with(&format!("/blobs/{}", b.digest));
        if r.path == "/v2/" {
            Reply::ok("application/json", b"{}".to_vec())
        } else if r.path.ends_with("/manifests/1") {
            Reply::ok(&image.manifest.media_type, image.manifest.data.clone())
        } else if blob(&image.config) {
            Reply::ok("application/octet-stream", image.config.data.clone())
        } else if blob(&image.layers[0]) {
            layer(r)
        } else {
            Reply::not_found()
        }
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blob_longer_than_its_descriptor_is_cut_off() {
    let image = oci::build_image(&oci::busybox_image());
    // The real blob over and over: a valid multi-member gzip of ever more tar, with no
    // length promised and no end, so only the descriptor's size can stop it.
    let blob = image.layers[0].data.clone();
    let fake = serve(image.clone(), move |_| Reply::Endless {
        status: 200,
        content_length: None,
        chunk: blob.clone(),
        pause: Duration::ZERO,
    });
    let d = Crustd::start().await;
    let mut c = d.client().await;
    let before = tree(&d.root());
    let err = pull_within(&mut c, &format!("{}/app:1", fake.host()), 20).await;
    assert_exhausted(&err, "the size its descriptor gives");
    assert!(err.message().contains(&image.layers[0].digest), "{err:?}");
    assert_eq!(tree(&d.root()), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_that_stops_sending_times_out() {
    let image = oci::build_image(&oci::busybox_image());
    let size = image.layers[0].data.len() as u64;
    // The right length promised, a first chunk sent, then silence.
    let fake = serve(image.clone(), move |_| Reply::Endless {
        status: 200,
        content_length: Some(size),
        chunk: vec![0x5a; 1024],
        pause: Duration::from_secs(3600),
    });
    let d = Crustd::start_with_registry("read_timeout_secs = 1").await;
    let mut c = d.client().await;
    let before = tree(&d.root());
    let err = pull_within(&mut c, &format!("{}/app:1", fake.host()), 15).await;
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("timed out"), "{err:?}");
    assert_eq!(tree(&d.root()), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_over_4_mib_is_refused() {
    // distribution refuses to store one, so the fake serves it.
    let mut image = oci::build_image(&oci::busybox_image());
    let mut manifest: serde_json::Value = serde_json::from_slice(&image.manifest.data).unwrap();
    manifest["annotations"] = json!({ "padding": "x".repeat(5 << 20) });
    image.manifest.data = serde_json::to_vec(&manifest).unwrap();
    let config_digest = image.config.digest.clone();
    let fake = serve(image, |_| Reply::not_found());
    let d = Crustd::start().await;
    let mut c = d.client().await;
    let before = tree(&d.root());
    let err = pull(&mut c, &format!("{}/app:1", fake.host()))
        .await
        .unwrap_err();
    assert_exhausted(&err, "4 MiB");
    assert!(err.message().contains("manifest"), "{err:?}");
    assert!(
        !fake.seen().iter().any(|r| r.path.contains(&config_digest)),
        "the pull went on past the manifest"
    );
    assert_eq!(tree(&d.root()), before);
}

/// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
fn vm_kib(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// A tag whose manifest never ends (chunked), or claims 64 MiB and sends it: the pull
/// must stop at the 4 MiB cap without crustd holding the body. The peak resident set
/// (VmHWM) is what a whole-body read would raise, even if freed afterwards.
async fn an_endless_manifest_is_cut_at_the_cap(content_length: Option<u64>) {
    let image = oci::build_image(&oci::busybox_image());
    let config_digest = image.config.digest.clone();
    let fake = FakeRegistry::start(move |r| {
        if r.path == "/v2/" {
            Reply::ok("application/json", b"{}".to_vec())
        } else if r.path.ends_with("/manifests/1") {
            Reply::Endless {
                status: 200,
                content_length,
                chunk: vec![b' '; 64 << 10],
                pause: Duration::ZERO,
            }
        } else if r.path.contains(&image.config.digest) {
            Reply::ok("application/octet-stream", image.config.data.clone())
        } else {
            Reply::not_found()
        }
    });
    let d = Crustd::start().await;
    let mut c = d.client().await;
    let before = tree(&d.root());
    // Warm the daemon up (its first pull compiles the reference grammar and builds
    // the registry clients) so that only the manifest is measured.
    let missing = pull(&mut c, &format!("{}/app:missing", fake.host())).await;
    assert_eq!(missing.unwrap_err().code(), Code::NotFound);
    // "5" resets the peak resident set to the current one, so VmHWM measures this pull.
    fs::write(format!("/proc/{}/clear_refs", d.pid()), "5").unwrap();
    let rss_before = vm_kib(d.pid(), "VmRSS");
    let started = Instant::now();
    let err = pull_within(&mut c, &format!("{}/app:1", fake.host()), 20).await;
    let took = started.elapsed();
    assert_exhausted(&err, "4 MiB");
    assert!(err.message().contains("manifest"), "{err:?}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let peak = vm_kib(d.pid(), "VmHWM");
    eprintln!("refused in {took:?}; VmRSS before {rss_before} KiB, VmHWM after {peak} KiB");
    // The cap is 4 MiB; 64 MiB (or an endless body) read whole would show here.
    assert!(
        peak.saturating_sub(rss_before) < 16 << 10,
        "crustd's peak resident set grew from {rss_before} KiB to {peak} KiB"
    );
    assert!(
        !fake.seen().iter().any(|r| r.path.contains(&config_digest)),
        "the pull went on past the manifest"
    );
    assert_eq!(images(&mut c).await, 0);
    assert_eq!(tree(&d.root()), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endless_chunked_manifest_is_cut_at_the_cap() {
    an_endless_manifest_is_cut_at_the_cap(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_64_mib_manifest_is_refused_by_its_content_length() {
    an_endless_manifest_is_cut_at_the_cap(Some(64 << 20)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_pulled_by_digest_must_have_that_digest() {
    // Whatever digest is asked for, the fake serves the same (real) manifest.
    let image = oci::build_image(&oci::busybox_image());
    let (body, media) = (
        image.manifest.data.clone(),
        image.manifest.media_type.clone(),
    );
    let fake = FakeRegistry::start(move |r| {
        if r.path.contains("/manifests/") {
            Reply::ok(&media, body.clone())
        } else {
            Reply::ok("application/json", b"{}".to_vec())
        }
    });
    let d = Crustd::start().await;
    let mut c = d.client().await;
    let wrong = format!("sha256:{}", "0".repeat(64));
    let err = pull(&mut c, &format!("{}/app@{wrong}", fake.host()))
        .await
        .unwrap_err();
    assert!(err.message().contains("digest mismatch"), "{err:?}");
    assert!(
        err.message().contains(&format!("manifest {wrong}")),
        "{err:?}"
    );
    assert_eq!(images(&mut c).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_index_entry_over_4_mib_is_refused_before_it_is_fetched() {
    let image = oci::build_image(&oci::busybox_image());
    let child = image.manifest.digest.clone();
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": image.manifest.media_type,
            "digest": child,
            "size": 5 << 20,
            "platform": { "os": "linux", "architecture": oci::host_arch() },
        }],
    });
    let index = serde_json::to_vec(&index).unwrap();
    let fake = FakeRegistry::start(move |r| {
        if r.path.ends_with("/manifests/1") {
            Reply::ok("application/vnd.oci.image.index.v1+json", index.clone())
        } else if r.path == "/v2/" {
            Reply::ok("application/json", b"{}".to_vec())
        } else {
            Reply::not_found()
        }
    });
    let d = Crustd::start().await;
    let mut c = d.client().await;
    let err = pull(&mut c, &format!("{}/app:1", fake.host()))
        .await
        .unwrap_err();
    assert_exhausted(&err, "4 MiB");
    assert!(err.message().contains(&child), "{err:?}");
    assert!(!fake.seen().iter().any(|r| r.path.contains(&child)));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_config_over_4_mib_is_refused_before_it_is_fetched() {
    let mut image = oci::build_image(&oci::busybox_image());
    let mut manifest: serde_json::Value = serde_json::from_slice(&image.manifest.data).unwrap();
    manifest["config"]["size"] = json!(5 << 20);
    image.manifest.data = serde_json::to_vec(&manifest).unwrap();
    let config_digest = image.config.digest.clone();
    let fake = serve(image, |_| Reply::not_found());
    let d = Crustd::start().await;
    let mut c = d.client().await;
    let err = pull(&mut c, &format!("{}/app:1", fake.host()))
        .await
        .unwrap_err();
    assert_exhausted(&err, "4 MiB");
    assert!(err.message().contains(&config_digest), "{err:?}");
    assert!(
        !fake.seen().iter().any(|r| r.path.contains(&config_digest)),
        "the oversized config was fetched"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sparse_file_unpacks_with_its_holes() {
    // GNU tar's own sparse format, as `tar --sparse` writes it for a real sparse file.
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("disk.img");
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = fs::File::create(&file).unwrap();
        f.seek(SeekFrom::Start(32 << 20)).unwrap();
        f.write_all(&[b'x'; 4096]).unwrap();
        f.set_len(64 << 20).unwrap();
    }
    let tar_path = work.path().join("layer.tar");
    let status = std::process::Command::new("tar")
        .args(["--format=gnu", "--sparse", "--owner=0", "--group=0", "-cf"])
        .arg(&tar_path)
        .arg("-C")
        .arg(work.path())
        .arg("disk.img")
        .status()
        .unwrap();
    assert!(status.success());
    let tar = fs::read(&tar_path).unwrap();
    assert!(tar.len() < 1 << 20, "GNU tar did not write a sparse entry");
    let reg = Registry::start();
    let pushed = oci::push_image(&reg.host(), "sparse", "1", &one_layer(tar)).await;
    let d = Crustd::start().await;
    let mut c = d.client().await;
    pull(&mut c, &format!("{}/sparse:1", reg.host()))
        .await
        .unwrap();
    let unpacked = d
        .root()
        .join("layers")
        .join(pushed.diff_ids[0].trim_start_matches("sha256:"))
        .join("disk.img");
    let meta = fs::metadata(&unpacked).unwrap();
    assert_eq!(meta.len(), 64 << 20);
    // Written out as zeros it would take 131072 blocks of 512 bytes.
    assert!(meta.blocks() < 1024, "{} blocks allocated", meta.blocks());
    let data = fs::read(&unpacked).unwrap();
    assert_eq!(&data[32 << 20..(32 << 20) + 4096], &[b'x'; 4096][..]);
}

/// A registry that serves a valid manifest and config but answers the layer blob with
/// `status` and a body that never ends (chunked), or that claims 1 GiB: the pull must
/// fail at once, naming the status and the layer, without crustd reading the body.
async fn an_endless_blob_error_is_not_read(status: u16, content_length: Option<u64>) {
    let image = oci::build_image(&oci::busybox_image());
    let layer = image.layers[0].digest.clone();
    let fake = serve(image, move |_| Reply::Endless {
        status,
        content_length,
        chunk: vec![b'x'; 64 << 10],
        pause: Duration::ZERO,
    });
    let d = Crustd::start().await;
    let mut c = d.client().await;
    let before = tree(&d.root());
    // Warm the daemon up (reference grammar, registry clients) so that only the blob's
    // error response is measured.
    let missing = pull(&mut c, &format!("{}/app:missing", fake.host())).await;
    assert_eq!(missing.unwrap_err().code(), Code::NotFound);
    fs::write(format!("/proc/{}/clear_refs", d.pid()), "5").unwrap();
    let rss_before = vm_kib(d.pid(), "VmRSS");
    let started = Instant::now();
    let err = pull_within(&mut c, &format!("{}/app:1", fake.host()), 20).await;
    let took = started.elapsed();
    let peak = vm_kib(d.pid(), "VmHWM");
    eprintln!(
        "refused in {took:?}; VmRSS before {rss_before} KiB, VmHWM after {peak} KiB: {err:?}"
    );
    let code = if status == 404 {
        Code::NotFound
    } else {
        Code::Internal
    };
    assert_eq!(err.code(), code, "{err:?}");
    assert!(err.message().contains(&layer), "{err:?}");
    assert!(err.message().contains(&status.to_string()), "{err:?}");
    // What is quoted of the body is bounded too: a status message of megabytes would
    // break the gRPC response.
    assert!(err.message().len() < 4096, "{} bytes", err.message().len());
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(
        peak.saturating_sub(rss_before) < 16 << 10,
        "crustd's peak resident set grew from {rss_before} KiB to {peak} KiB"
    );
    assert_eq!(images(&mut c).await, 0);
    assert_eq!(tree(&d.root()), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blob_500_with_an_endless_body_fails_without_reading_it() {
    an_endless_blob_error_is_not_read(500, None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blob_404_claiming_1_gib_fails_without_reading_it() {
    an_endless_blob_error_is_not_read(404, Some(1 << 30)).await;
}
