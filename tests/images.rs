//! End-to-end: the ImageService of a real crustd against a real registry on loopback.

mod support;

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::time::Duration;

use crust_proto::cri;
use serde_json::json;
use support::crustd::{CriClient, Crustd};
use support::metrics;
use support::oci::{self, ImageSpec, Layer, LayerBuilder, MediaKind};
use support::registry::Registry;
use tonic::Code;

fn spec(image: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: image.to_string(),
        ..Default::default()
    })
}

async fn pull(c: &mut CriClient, image: &str) -> Result<String, tonic::Status> {
    c.image
        .pull_image(cri::PullImageRequest {
            image: spec(image),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().image_ref)
}

async fn status(c: &mut CriClient, image: &str) -> Option<cri::Image> {
    c.image
        .image_status(cri::ImageStatusRequest {
            image: spec(image),
            verbose: false,
        })
        .await
        .expect("image status")
        .into_inner()
        .image
}

async fn list(c: &mut CriClient) -> Vec<cri::Image> {
    c.image
        .list_images(cri::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images
}

async fn remove(c: &mut CriClient, image: &str) -> Result<(), tonic::Status> {
    c.image
        .remove_image(cri::RemoveImageRequest { image: spec(image) })
        .await
        .map(|_| ())
}

fn layer_dir(d: &Crustd, diff_id: &str) -> std::path::PathBuf {
    d.root()
        .join("layers")
        .join(diff_id.trim_start_matches("sha256:"))
}

/// Names in the layer store directory: after a failed or cancelled pull nothing, not
/// even a temporary directory, may remain.
fn layer_store_entries(d: &Crustd) -> Vec<String> {
    match fs::read_dir(d.root().join("layers")) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn version_status_and_runtime_config() {
    let d = Crustd::start().await;
    let mut c = d.client().await;
    let v = c
        .runtime
        .version(cri::VersionRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.version, "0.1.0");
    assert_eq!(v.runtime_name, "crust");
    assert_eq!(v.runtime_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(v.runtime_api_version, "v1");

    let conditions = |s: cri::StatusResponse| s.status.unwrap().conditions;
    let st = conditions(
        c.runtime
            .status(cri::StatusRequest::default())
            .await
            .unwrap()
            .into_inner(),
    );
    let runtime = st.iter().find(|c| c.r#type == "RuntimeReady").unwrap();
    assert!(runtime.status);
    let network = st.iter().find(|c| c.r#type == "NetworkReady").unwrap();
    assert!(!network.status);
    assert_eq!(network.reason, "NetworkPluginNotReady");
    assert!(!network.message.is_empty());

    // A network config appearing takes effect without a restart.
    fs::write(
        d.cni_conf_dir().join("10-test.conflist"),
        r#"{"cniVersion":"1.0.0","name":"t","plugins":[{"type":"loopback"}]}"#,
    )
    .unwrap();
    let st = conditions(
        c.runtime
            .status(cri::StatusRequest::default())
            .await
            .unwrap()
            .into_inner(),
    );
    assert!(
        st.iter()
            .find(|c| c.r#type == "NetworkReady")
            .unwrap()
            .status
    );

    let rc = c
        .runtime
        .runtime_config(cri::RuntimeConfigRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        rc.linux.unwrap().cgroup_driver,
        cri::CgroupDriver::Cgroupfs as i32
    );

    let meta = fs::metadata(d.socket()).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_daemon_on_the_same_socket_is_refused() {
    let d = Crustd::start().await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_crustd"))
        .arg("--config")
        .arg(d.dir().join("config.toml"))
        .arg("--root")
        .arg(d.dir().join("root2"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already listening"), "{err}");
    // The first one still answers.
    d.client()
        .await
        .runtime
        .version(cri::VersionRequest::default())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_by_tag_and_digest_list_status_remove_and_restart() {
    let reg = Registry::start();
    let host = reg.host();
    let pushed = oci::push_image(&host, "test/busybox", "1.0", &oci::busybox_image()).await;
    let mut d = Crustd::start().await;
    let mut c = d.client().await;

    let tag = format!("{host}/test/busybox:1.0");
    let id = pull(&mut c, &tag).await.unwrap();
    assert_eq!(id, pushed.config_digest);
    let img = status(&mut c, &tag).await.unwrap();
    assert_eq!(img.id, pushed.config_digest);
    assert_eq!(img.repo_tags, vec![tag.clone()]);
    assert_eq!(
        img.repo_digests,
        vec![format!("{host}/test/busybox@{}", pushed.manifest_digest)]
    );
    assert_eq!(
        img.size,
        pushed.config.len() as u64 + pushed.layer_sizes.iter().sum::<u64>()
    );
    assert!(
        layer_dir(&d, &pushed.diff_ids[0])
            .join("bin/busybox")
            .is_file()
    );

    // Looked up by id, bare hex id and digest reference alike.
    for name in [id.clone(), id[7..].to_string(), img.repo_digests[0].clone()] {
        assert_eq!(status(&mut c, &name).await.unwrap().id, id, "{name}");
    }
    // Pulling by digest adds nothing new and answers the same id.
    let by_digest = format!("{host}/test/busybox@{}", pushed.manifest_digest);
    assert_eq!(pull(&mut c, &by_digest).await.unwrap(), id);
    assert_eq!(list(&mut c).await.len(), 1);

    // ListImages filter.
    let filtered = c
        .image
        .list_images(cri::ListImagesRequest {
            filter: Some(cri::ImageFilter { image: spec(&tag) }),
        })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(filtered.len(), 1);
    let none = c
        .image
        .list_images(cri::ListImagesRequest {
            filter: Some(cri::ImageFilter {
                image: spec("nothing/here:1"),
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert!(none.is_empty());

    // Verbose status carries the image config.
    let verbose = c
        .image
        .image_status(cri::ImageStatusRequest {
            image: spec(&tag),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&verbose.info["info"]).unwrap();
    assert_eq!(info["imageSpec"]["config"]["Cmd"], json!(["/bin/sh"]));

    // ImageFsInfo counts the unpacked layer.
    let fs_info = c
        .image
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let usage = &fs_info.image_filesystems[0];
    assert!(
        usage.used_bytes.as_ref().unwrap().value > 1_000_000,
        "{usage:?}"
    );
    assert!(usage.inodes_used.as_ref().unwrap().value > 10);
    assert!(
        usage
            .fs_id
            .as_ref()
            .unwrap()
            .mountpoint
            .starts_with(&d.root().display().to_string())
    );

    // Images survive a restart.
    d.restart().await;
    let mut c = d.client().await;
    assert_eq!(status(&mut c, &tag).await.unwrap().id, id);

    // Removing by id removes every name and the layers.
    remove(&mut c, &id).await.unwrap();
    assert!(status(&mut c, &tag).await.is_none());
    assert!(status(&mut c, &by_digest).await.is_none());
    assert!(list(&mut c).await.is_empty());
    assert!(
        layer_store_entries(&d).is_empty(),
        "{:?}",
        layer_store_entries(&d)
    );
    // Removing again, or something never pulled, succeeds.
    remove(&mut c, &id).await.unwrap();
    remove(&mut c, "never/pulled:1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn short_names_docker_schema2_and_two_tags() {
    let reg = Registry::start();
    let host = reg.host();
    let mut docker = oci::busybox_image();
    docker.manifest_media_type = MediaKind::Docker2;
    let pushed = oci::push_image(&host, "library/box", "a", &docker).await;
    oci::tag(&host, "library/box", "a", "b").await;
    let d = Crustd::start().await;
    let mut c = d.client().await;

    let a = format!("{host}/library/box:a");
    let b = format!("{host}/library/box:b");
    assert_eq!(pull(&mut c, &a).await.unwrap(), pushed.config_digest);
    assert_eq!(pull(&mut c, &b).await.unwrap(), pushed.config_digest);
    let images = list(&mut c).await;
    assert_eq!(images.len(), 1);
    let tags: HashSet<_> = images[0].repo_tags.iter().cloned().collect();
    assert_eq!(tags, HashSet::from([a.clone(), b.clone()]));

    // By tag, only that name goes; with the last tag, the image and its layers go.
    remove(&mut c, &a).await.unwrap();
    let img = status(&mut c, &b).await.unwrap();
    assert_eq!(img.repo_tags, vec![b.clone()]);
    assert!(status(&mut c, &a).await.is_none());
    assert!(layer_dir(&d, &pushed.diff_ids[0]).exists());
    remove(&mut c, &b).await.unwrap();
    assert!(list(&mut c).await.is_empty());
    assert!(layer_store_entries(&d).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn multi_layer_whiteouts_opaque_dirs_and_metadata() {
    let reg = Registry::start();
    let host = reg.host();
    let base = LayerBuilder::new()
        .dir("etc")
        .file("etc/keep", "keep", 0o644)
        .file("etc/gone", "gone", 0o644)
        .dir("data")
        .file("data/old", "old", 0o600)
        .file_owned("owned", "o", 0o4755, 1234, 5678)
        .hardlink("owned-link", "owned")
        .build();
    let top = LayerBuilder::new()
        .whiteout("etc/gone")
        .opaque("data")
        .file("data/new", "new", 0o640)
        .build();
    let image = ImageSpec {
        layers: vec![
            Layer::gzip(oci::busybox_layer()),
            Layer::gzip(base),
            Layer::uncompressed(top),
        ],
        ..oci::busybox_image()
    };
    let pushed = oci::push_image(&host, "multi", "1", &image).await;
    let d = Crustd::start().await;
    let mut c = d.client().await;
    pull(&mut c, &format!("{host}/multi:1")).await.unwrap();

    let base_dir = layer_dir(&d, &pushed.diff_ids[1]);
    let top_dir = layer_dir(&d, &pushed.diff_ids[2]);
    let owned = fs::metadata(base_dir.join("owned")).unwrap();
    assert_eq!(
        (owned.uid(), owned.gid(), owned.mode() & 0o7777),
        (1234, 5678, 0o4755)
    );
    assert_eq!(
        fs::metadata(base_dir.join("owned-link")).unwrap().ino(),
        owned.ino()
    );
    let whiteout = fs::symlink_metadata(top_dir.join("etc/gone")).unwrap();
    assert!(whiteout.file_type().is_char_device());
    assert_eq!(whiteout.rdev(), 0);
    assert!(!top_dir.join("etc/.wh.gone").exists());
    assert_eq!(
        xattr(&top_dir.join("data"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(fs::read_to_string(top_dir.join("data/new")).unwrap(), "new");
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let out = std::process::Command::new("getfattr")
        .args(["--only-values", "-n", name])
        .arg(path)
        .output()
        .ok()?;
    out.status.success().then_some(out.stdout)
}

#[tokio::test(flavor = "multi_thread")]
async fn index_zstd_and_user() {
    let reg = Registry::start();
    let host = reg.host();
    let mut mine = oci::busybox_image();
    mine.config = json!({"Cmd": ["/bin/sh"], "User": "1000:1000"});
    let mut other = oci::busybox_image();
    other.config = json!({"Cmd": ["/bin/other"], "User": "app"});
    let other_arch = if oci::host_arch() == "amd64" {
        "arm64"
    } else {
        "amd64"
    };
    let index = oci::push_index(
        &host,
        "multiarch",
        "1",
        &[
            ("linux", other_arch, None, &other),
            ("linux", "arm", Some("v7"), &other),
            ("linux", oci::host_arch(), None, &mine),
        ],
    )
    .await;
    let d = Crustd::start().await;
    let mut c = d.client().await;
    let name = format!("{host}/multiarch:1");
    let id = pull(&mut c, &name).await.unwrap();
    let ours = index
        .images
        .iter()
        .find(|p| {
            serde_json::from_slice::<serde_json::Value>(&p.config).unwrap()["architecture"]
                == oci::host_arch()
        })
        .unwrap();
    assert_eq!(id, ours.config_digest);
    let img = status(&mut c, &name).await.unwrap();
    assert_eq!(img.uid.map(|u| u.value), Some(1000));
    // The repo digest is the index's, as containerd records it.
    assert_eq!(
        img.repo_digests,
        vec![format!("{host}/multiarch@{}", index.digest)]
    );

    // A zstd layer and a user given by name.
    let zstd = ImageSpec {
        layers: vec![Layer::zstd(oci::busybox_layer())],
        config: json!({"Cmd": ["/bin/sh"], "User": "app"}),
        ..oci::busybox_image()
    };
    oci::push_image(&host, "zstd", "1", &zstd).await;
    let zname = format!("{host}/zstd:1");
    pull(&mut c, &zname).await.unwrap();
    let img = status(&mut c, &zname).await.unwrap();
    assert_eq!(img.username, "app");
    assert!(img.uid.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupted_blob_fails_the_pull_and_records_nothing() {
    let reg = Registry::start();
    let host = reg.host();
    let pushed = oci::push_image(&host, "corrupt", "1", &oci::busybox_image()).await;
    let blob = reg.blob_path(&pushed.layer_digests[0]);
    let mut bytes = fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&blob, bytes).unwrap();

    let d = Crustd::start().await;
    let mut c = d.client().await;
    let err = pull(&mut c, &format!("{host}/corrupt:1"))
        .await
        .unwrap_err();
    assert!(err.message().contains(&pushed.layer_digests[0]), "{err:?}");
    assert!(err.message().contains("digest mismatch"), "{err:?}");
    assert!(list(&mut c).await.is_empty());
    assert!(
        layer_store_entries(&d).is_empty(),
        "{:?}",
        layer_store_entries(&d)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_diff_id_fails_the_pull() {
    let reg = Registry::start();
    let host = reg.host();
    let image = oci::busybox_image();
    let mut built = oci::build_image(&image);
    // A config that promises other layer content than the blob holds.
    let mut config: serde_json::Value = serde_json::from_slice(&built.config.data).unwrap();
    let fake = format!("sha256:{}", "0".repeat(64));
    config["rootfs"]["diff_ids"] = json!([fake]);
    built.config.data = serde_json::to_vec(&config).unwrap();
    built.config.digest = oci::sha256_digest(&built.config.data);
    let mut manifest: serde_json::Value = serde_json::from_slice(&built.manifest.data).unwrap();
    manifest["config"]["digest"] = json!(built.config.digest);
    manifest["config"]["size"] = json!(built.config.data.len());
    built.manifest.data = serde_json::to_vec(&manifest).unwrap();
    built.manifest.digest = oci::sha256_digest(&built.manifest.data);
    oci::push_built(&host, "diffid", "1", &built).await;

    let d = Crustd::start().await;
    let mut c = d.client().await;
    let err = pull(&mut c, &format!("{host}/diffid:1")).await.unwrap_err();
    assert!(err.message().contains("diff_id"), "{err:?}");
    assert!(err.message().contains(&fake), "{err:?}");
    assert!(list(&mut c).await.is_empty());
    assert!(layer_store_entries(&d).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_layers_fail_without_writing_outside_the_store() {
    let reg = Registry::start();
    let host = reg.host();
    let d = Crustd::start().await;
    let mut c = d.client().await;
    // Targets outside the store that the layers aim at, relative to a layer directory
    // (root/layers/<id>) and absolute.
    let victim = d.dir().join("victim");
    fs::create_dir_all(&victim).unwrap();
    fs::write(victim.join("secret"), "secret").unwrap();
    let rel = "../../../victim";
    let abs = victim.display().to_string();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "dotdot",
            LayerBuilder::new()
                .raw_name_file(format!("{rel}/evil").as_bytes(), "x")
                .build(),
        ),
        (
            "symlink-rel",
            LayerBuilder::new()
                .symlink("link", rel)
                .file("link/evil", "x", 0o644)
                .build(),
        ),
        (
            "symlink-abs",
            LayerBuilder::new()
                .symlink("link", &abs)
                .file("link/evil", "x", 0o644)
                .build(),
        ),
        (
            "hardlink-rel",
            LayerBuilder::new()
                .hardlink("stolen", &format!("{rel}/secret"))
                .build(),
        ),
        (
            "hardlink-abs",
            LayerBuilder::new()
                .hardlink("stolen", &format!("{abs}/secret"))
                .build(),
        ),
        (
            "hardlink-via-symlink",
            LayerBuilder::new()
                .symlink("link", rel)
                .hardlink("stolen", "link/secret")
                .build(),
        ),
    ];
    for (name, layer) in cases {
        let image = ImageSpec {
            layers: vec![Layer::gzip(layer)],
            ..oci::busybox_image()
        };
        oci::push_image(&host, &format!("hostile/{name}"), "1", &image).await;
        let result = pull(&mut c, &format!("{host}/hostile/{name}:1")).await;
        // An absolute hardlink target means the layer's own path (as tar does), which
        // does not exist in the layer: either way the pull must fail.
        let err = result.expect_err(name);
        assert_eq!(err.code(), Code::Internal, "{name}: {err:?}");
        let mut left: Vec<_> = fs::read_dir(&victim)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec![std::ffi::OsString::from("secret")],
            "{name} wrote outside"
        );
        assert_eq!(
            fs::metadata(victim.join("secret")).unwrap().nlink(),
            1,
            "{name} linked the secret"
        );
        assert!(list(&mut c).await.is_empty(), "{name}");
        assert!(
            layer_store_entries(&d).is_empty(),
            "{name}: {:?}",
            layer_store_entries(&d)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_clear_errors() {
    let reg = Registry::start();
    let host = reg.host();
    let d = Crustd::start().await;
    let mut c = d.client().await;
    let err = pull(&mut c, "").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = pull(&mut c, "Not A Reference!").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("Not A Reference!"), "{err:?}");
    let err = pull(&mut c, &format!("{host}/missing:1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    // Nothing listens on port 1 of loopback.
    let err = pull(&mut c, "127.0.0.1:1/x:1").await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(status(&mut c, "absent/image:1").await.is_none());
    let err = c
        .image
        .image_status(cri::ImageStatusRequest {
            image: None,
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(list(&mut c).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_pulls_fetch_each_blob_once() {
    let reg = Registry::start();
    let host = reg.host();
    let shared = Layer::gzip(oci::busybox_layer());
    let one = ImageSpec {
        layers: vec![
            shared.clone(),
            Layer::gzip(LayerBuilder::new().file("one", "1", 0o644).build()),
        ],
        ..oci::busybox_image()
    };
    let two = ImageSpec {
        layers: vec![
            shared,
            Layer::gzip(LayerBuilder::new().file("two", "2", 0o644).build()),
        ],
        ..oci::busybox_image()
    };
    let p1 = oci::push_image(&host, "shared/one", "1", &one).await;
    oci::push_image(&host, "shared/two", "1", &two).await;
    let d = Crustd::start().await;
    let c = d.client().await;
    let mut tasks = Vec::new();
    for name in ["shared/one", "shared/one", "shared/two", "shared/two"] {
        let mut c = c.clone();
        let reference = format!("{host}/{name}:1");
        tasks.push(tokio::spawn(async move { pull(&mut c, &reference).await }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let mut c = c.clone();
    assert_eq!(list(&mut c).await.len(), 2);
    let digest = format!("digest={}", p1.layer_digests[0]);
    let fetched = d
        .log()
        .lines()
        .filter(|l| l.contains("layer fetched") && l.contains(&digest))
        .count();
    assert_eq!(fetched, 1, "shared layer fetched {fetched} times");
}

/// An image big enough that pulling it takes a while: one incompressible layer.
fn big_image(mb: usize) -> ImageSpec {
    let mut data = vec![0u8; mb << 20];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    ImageSpec {
        layers: vec![Layer::uncompressed(
            LayerBuilder::new().file("big", data, 0o644).build(),
        )],
        ..oci::busybox_image()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pull_past_its_deadline_leaves_nothing() {
    let reg = Registry::start();
    let host = reg.host();
    oci::push_image(&host, "big", "1", &big_image(400)).await;
    let d = Crustd::start().await;
    let mut c = d.client().await;
    let mut req = tonic::Request::new(cri::PullImageRequest {
        image: spec(&format!("{host}/big:1")),
        ..Default::default()
    });
    // The deadline as kubelet sends it: only the header, so that what we see is the
    // server's answer rather than the client giving up on its own.
    req.metadata_mut()
        .insert("grpc-timeout", "300m".parse().unwrap());
    let err = c.image.pull_image(req).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    // The cancelled pull winds down by itself: give it a moment, then nothing remains.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(list(&mut c).await.is_empty());
    assert!(
        layer_store_entries(&d).is_empty(),
        "{:?}",
        layer_store_entries(&d)
    );
    // And the next pull completes.
    pull(&mut c, &format!("{host}/big:1")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_during_a_pull_leaves_no_half_image() {
    let reg = Registry::start();
    let host = reg.host();
    oci::push_image(&host, "big", "1", &big_image(400)).await;
    let mut d = Crustd::start().await;
    let c = d.client().await;
    let name = format!("{host}/big:1");
    let pulling = {
        let mut c = c.clone();
        let name = name.clone();
        tokio::spawn(async move { pull(&mut c, &name).await })
    };
    // Kill the daemon once the layer is being unpacked.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !layer_store_entries(&d)
        .iter()
        .any(|n| n.starts_with("tmp-"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the pull never started unpacking"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    d.kill();
    assert!(pulling.await.unwrap().is_err());
    d.start_again().await;
    let mut c = d.client().await;
    assert!(list(&mut c).await.is_empty());
    assert!(
        layer_store_entries(&d).is_empty(),
        "{:?}",
        layer_store_entries(&d)
    );
    pull(&mut c, &name).await.unwrap();
    assert_eq!(list(&mut c).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn hosts_toml_mirrors_and_configured_credentials() {
    let reg = Registry::start();
    let host = reg.host();
    let pushed = oci::push_image(&host, "mirrored/app", "1", &oci::busybox_image()).await;
    let d = Crustd::start_with(&format!(
        "[registry.auths.\"{host}\"]\nusername = \"u\"\npassword = \"p\"\n"
    ))
    .await;
    // A registry name that resolves nowhere, whose only reachable endpoint is the
    // mirror; its server is a closed loopback port so nothing leaves the machine.
    let dir = d.certs_dir().join("registry.crust.test");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("hosts.toml"),
        format!("server = \"http://127.0.0.1:1\"\n\n[host.\"http://{host}\"]\ncapabilities = [\"pull\", \"resolve\"]\n"),
    )
    .unwrap();
    let mut c = d.client().await;
    let name = "registry.crust.test/mirrored/app:1";
    assert_eq!(pull(&mut c, name).await.unwrap(), pushed.config_digest);
    assert_eq!(
        status(&mut c, name).await.unwrap().repo_tags,
        vec![name.to_string()]
    );
    // Credentials from the request win over configured ones; the registry has no auth,
    // so both work: what matters is that neither breaks a pull.
    let r = c
        .image
        .pull_image(cri::PullImageRequest {
            image: spec(&format!("{host}/mirrored/app:1")),
            auth: Some(cri::AuthConfig {
                username: "someone".into(),
                password: "pw".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    r.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_metrics_endpoint_is_scraped_and_parsed() {
    let port = metrics::free_port();
    let mut d = Crustd::start().await;
    d.set_top_config(&metrics::config(port));
    d.restart().await;
    let reg = Registry::start();
    oci::push_image(&reg.host(), "m/box", "1", &oci::busybox_image()).await;
    let mut c = d.client().await;
    c.runtime
        .version(cri::VersionRequest::default())
        .await
        .unwrap();
    pull(&mut c, &format!("{}/m/box:1", reg.host()))
        .await
        .unwrap();
    let _ = pull(&mut c, "127.0.0.1:1/absent:1").await;

    let (content_type, body) = metrics::scrape(port, "*/*");
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    let samples = metrics::samples(&body);
    assert!(
        samples[r#"crust_rpc_requests_total{method="Version",code="Ok"}"#] >= 1.0,
        "{body}"
    );
    assert!(
        samples.contains_key(
            r#"crust_rpc_duration_seconds_bucket{method="PullImage",code="Ok",le="+Inf"}"#
        ),
        "{body}"
    );
    assert_eq!(
        samples[r#"crust_image_pull_duration_seconds_count{result="success"}"#],
        1.0
    );
    assert_eq!(
        samples[r#"crust_image_pull_duration_seconds_count{result="failure"}"#],
        1.0
    );
    assert!(samples[r#"crust_image_pull_bytes_total{result="success"}"#] > 100_000.0);
    assert_eq!(samples[r#"crust_sandboxes{state="ready"}"#], 0.0);
    assert_eq!(samples[r#"crust_containers{state="running"}"#], 0.0);
    assert_eq!(samples["crust_monitors"], 0.0);
}
