//! Checks the end-to-end test support itself: the registry starts, images of every
//! shape push and pull back with the digests the builders reported, a blob corrupted on
//! disk is served corrupted, and hostile tar names are written as given.

mod support;

use std::io::Read;

use oci_client::secrets::RegistryAuth;
use serde_json::Value;
use support::oci::{self, ALL_MANIFEST_TYPES, ImageSpec, Layer, LayerBuilder, MediaKind};
use support::registry::Registry;

async fn pull_manifest(host: &str, repo: &str, tag_or_digest: &str) -> (Vec<u8>, String) {
    let reference = oci::reference(host, repo, tag_or_digest);
    let (bytes, digest) = oci::client()
        .pull_manifest_raw(&reference, &RegistryAuth::Anonymous, &ALL_MANIFEST_TYPES)
        .await
        .unwrap_or_else(|err| panic!("pull manifest {reference}: {err}"));
    (bytes.to_vec(), digest)
}

/// Pulls a blob through oci-client, which checks its digest.
async fn pull_blob(host: &str, repo: &str, digest: &str) -> Result<Vec<u8>, String> {
    let reference = oci::reference(host, repo, digest);
    let mut data = Vec::new();
    oci::client()
        .pull_blob(&reference, digest, &mut data)
        .await
        .map_err(|err| err.to_string())?;
    Ok(data)
}

/// Pulls the manifest and every blob of `pushed` and checks them against it.
async fn assert_pulls_back(host: &str, repo: &str, tag: &str, pushed: &oci::Pushed) {
    let (manifest, digest) = pull_manifest(host, repo, tag).await;
    assert_eq!(
        digest, pushed.manifest_digest,
        "{repo}:{tag} manifest digest"
    );
    assert_eq!(manifest, pushed.manifest, "{repo}:{tag} manifest bytes");
    assert_eq!(oci::sha256_digest(&manifest), pushed.manifest_digest);

    let manifest: Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(manifest["mediaType"], pushed.media_type);
    assert_eq!(manifest["config"]["digest"], pushed.config_digest);
    let config = pull_blob(host, repo, &pushed.config_digest).await.unwrap();
    assert_eq!(config, pushed.config);
    let config: Value = serde_json::from_slice(&config).unwrap();
    assert_eq!(
        config["rootfs"]["diff_ids"],
        serde_json::json!(pushed.diff_ids)
    );

    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), pushed.layer_digests.len());
    for (n, layer) in layers.iter().enumerate() {
        assert_eq!(layer["digest"], pushed.layer_digests[n]);
        let blob = pull_blob(host, repo, &pushed.layer_digests[n])
            .await
            .unwrap();
        assert_eq!(blob.len() as u64, pushed.layer_sizes[n]);
        let media_type = layer["mediaType"].as_str().unwrap();
        let tar = decompress(media_type, &blob);
        assert_eq!(
            oci::sha256_digest(&tar),
            pushed.diff_ids[n],
            "layer {n} diff ID"
        );
    }
}

fn decompress(media_type: &str, blob: &[u8]) -> Vec<u8> {
    let mut tar = Vec::new();
    if media_type.ends_with("gzip") {
        flate2::read::GzDecoder::new(blob)
            .read_to_end(&mut tar)
            .unwrap();
    } else if media_type.ends_with("zstd") {
        tar = zstd::decode_all(blob).unwrap();
    } else {
        tar = blob.to_vec();
    }
    tar
}

/// One tar entry as written: raw path and link target bytes, and the whole header.
struct Entry {
    path: Vec<u8>,
    kind: tar::EntryType,
    link: Option<Vec<u8>>,
    header: tar::Header,
}

fn tar_entries(tar: &[u8]) -> Vec<Entry> {
    let mut archive = tar::Archive::new(tar);
    archive
        .entries()
        .unwrap()
        .map(|entry| {
            let header = entry.unwrap().header().clone();
            Entry {
                path: header.path_bytes().into_owned(),
                kind: header.entry_type(),
                link: header.link_name_bytes().map(|link| link.into_owned()),
                header,
            }
        })
        .collect()
}

fn find<'a>(entries: &'a [Entry], path: &str) -> &'a Entry {
    entries
        .iter()
        .find(|entry| entry.path.strip_suffix(b"/").unwrap_or(&entry.path) == path.as_bytes())
        .unwrap_or_else(|| panic!("no {path} in layer"))
}

#[test]
fn busybox_layer_has_the_promised_files() {
    let entries = tar_entries(&oci::busybox_layer());

    let busybox = find(&entries, "bin/busybox");
    assert_eq!(busybox.kind, tar::EntryType::Regular);
    assert_eq!(busybox.header.mode().unwrap(), 0o755);
    assert_eq!(
        busybox.header.size().unwrap(),
        std::fs::metadata("/bin/busybox").unwrap().len()
    );
    for applet in oci::BUSYBOX_APPLETS {
        let link = find(&entries, &format!("bin/{applet}"));
        assert_eq!(link.kind, tar::EntryType::Symlink);
        assert_eq!(link.link.as_deref(), Some(&b"busybox"[..]));
    }
    assert_eq!(find(&entries, "tmp").header.mode().unwrap(), 0o1777);
    let home = &find(&entries, "home/app").header;
    assert_eq!((home.uid().unwrap(), home.gid().unwrap()), (1000, 1000));
    for dir in ["root", "proc", "sys", "dev", "etc"] {
        assert_eq!(find(&entries, dir).kind, tar::EntryType::Directory);
    }
}

#[test]
fn hostile_names_are_written_verbatim() {
    let tar = LayerBuilder::new()
        .raw_name_file(b"../../evil", "gotcha")
        .symlink("escape", "../../../etc")
        .symlink("abs", "/etc/shadow")
        .hardlink("hard", "/bin/busybox")
        .build();
    let entries = tar_entries(&tar);
    assert_eq!(entries[0].path, b"../../evil");
    assert_eq!(entries[0].kind, tar::EntryType::Regular);
    assert_eq!(entries[1].link.as_deref(), Some(&b"../../../etc"[..]));
    assert_eq!(entries[2].link.as_deref(), Some(&b"/etc/shadow"[..]));
    assert_eq!(entries[3].kind, tar::EntryType::Link);
    assert_eq!(entries[3].link.as_deref(), Some(&b"bin/busybox"[..]));

    let mut archive = tar::Archive::new(&tar[..]);
    let mut evil = archive.entries().unwrap().next().unwrap().unwrap();
    let mut contents = String::new();
    evil.read_to_string(&mut contents).unwrap();
    assert_eq!(contents, "gotcha");
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_round_trips_every_image_shape() {
    let registry = Registry::start();
    let host = registry.host();

    // busybox with OCI and with Docker schema 2 media types.
    let oci_busybox = oci::push_image(&host, "busybox", "oci", &oci::busybox_image()).await;
    assert_eq!(oci_busybox.media_type, oci::OCI_MANIFEST);
    assert_pulls_back(&host, "busybox", "oci", &oci_busybox).await;

    let docker_spec = ImageSpec {
        manifest_media_type: MediaKind::Docker2,
        ..oci::busybox_image()
    };
    let docker_busybox = oci::push_image(&host, "busybox", "docker", &docker_spec).await;
    assert_eq!(docker_busybox.media_type, oci::DOCKER_MANIFEST);
    assert_pulls_back(&host, "busybox", "docker", &docker_busybox).await;
    // Same layer bytes, different config and manifest media types.
    assert_eq!(docker_busybox.layer_digests, oci_busybox.layer_digests);
    assert_ne!(docker_busybox.manifest_digest, oci_busybox.manifest_digest);

    // Three layers: whiteout and opaque directory on top of busybox.
    let lower = LayerBuilder::new()
        .dir("data")
        .file("data/old", "old", 0o644)
        .file("etc/motd", "hello", 0o644)
        .build();
    let upper = LayerBuilder::new()
        .whiteout("/etc/motd")
        .opaque("data")
        .file("data/new", "new", 0o600)
        .build();
    let layered_spec = ImageSpec {
        layers: vec![
            Layer::gzip(oci::busybox_layer()),
            Layer::gzip(lower),
            Layer::uncompressed(upper.clone()),
        ],
        ..oci::busybox_image()
    };
    let layered = oci::push_image(&host, "layered", "v1", &layered_spec).await;
    assert_pulls_back(&host, "layered", "v1", &layered).await;
    let upper_entries = tar_entries(&upper);
    assert_eq!(upper_entries[0].path, b"etc/.wh.motd");
    assert_eq!(upper_entries[1].path, b"data/.wh..wh..opq");

    // A zstd layer.
    let zstd_spec = ImageSpec {
        layers: vec![Layer::zstd(oci::busybox_layer())],
        ..oci::busybox_image()
    };
    let zstd = oci::push_image(&host, "zstd", "v1", &zstd_spec).await;
    assert_pulls_back(&host, "zstd", "v1", &zstd).await;
    let (manifest, _) = pull_manifest(&host, "zstd", "v1").await;
    let manifest: Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(manifest["layers"][0]["mediaType"], oci::OCI_LAYER_ZSTD);
    assert_eq!(zstd.diff_ids, oci_busybox.diff_ids);

    // An OCI index and a Docker manifest list with three platforms.
    let busybox = oci::busybox_image();
    let platforms = [
        ("linux", "amd64", None, &busybox),
        ("linux", "arm64", None, &busybox),
        ("linux", "arm", Some("v7"), &busybox),
    ];
    let index = oci::push_index(&host, "multi", "index", &platforms).await;
    let list = oci::push_manifest_list(&host, "multi", "list", &platforms).await;
    assert!(
        list.images
            .iter()
            .all(|image| image.media_type == oci::DOCKER_MANIFEST)
    );
    for (tag, index) in [("index", index), ("list", list)] {
        let (bytes, digest) = pull_manifest(&host, "multi", tag).await;
        assert_eq!(digest, index.digest);
        assert_eq!(bytes, index.manifest);
        let pulled: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(pulled["mediaType"], index.media_type);
        let manifests = pulled["manifests"].as_array().unwrap();
        assert_eq!(manifests.len(), 3);
        for ((entry, image), (os, arch, variant, _)) in
            manifests.iter().zip(&index.images).zip(&platforms)
        {
            assert_eq!(entry["digest"], image.manifest_digest);
            assert_eq!(entry["size"], image.size);
            assert_eq!(entry["platform"]["os"], *os);
            assert_eq!(entry["platform"]["architecture"], *arch);
            assert_eq!(entry["platform"]["variant"].as_str(), *variant);
            assert_pulls_back(&host, "multi", &image.manifest_digest, image).await;
            let config: Value = serde_json::from_slice(&image.config).unwrap();
            assert_eq!(config["architecture"], *arch);
        }
    }

    // A second tag for the same manifest.
    let retagged = oci::tag(&host, "busybox", "oci", "second").await;
    assert_eq!(retagged, oci_busybox.manifest_digest);
    assert_pulls_back(&host, "busybox", "second", &oci_busybox).await;

    // Corrupt the busybox layer on disk: same length, other bytes.
    let digest = &oci_busybox.layer_digests[0];
    let path = registry.blob_path(digest);
    let original = std::fs::read(&path).unwrap();
    let corrupted: Vec<u8> = original.iter().map(|byte| byte ^ 0xff).collect();
    std::fs::write(&path, &corrupted).unwrap();

    let response = registry.get(&format!("/v2/busybox/blobs/{digest}"));
    assert_eq!(response.status, 200, "{}", response.headers);
    assert_eq!(response.body.len(), original.len());
    assert_eq!(response.body, corrupted);
    assert_ne!(&oci::sha256_digest(&response.body), digest);
    let err = pull_blob(&host, "busybox", digest)
        .await
        .expect_err("oci-client should reject the corrupted blob");
    assert!(err.to_lowercase().contains("digest"), "{err}");
}
