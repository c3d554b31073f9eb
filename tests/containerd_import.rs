//! End-to-end: `crustd images import --from-containerd` against Debian's real
//! containerd, started by the test on private directories and a private socket, with
//! images it pulled from the test registry, which is gone by the time crust imports.

mod support;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crust_proto::cri;
use serde_json::json;
use support::cni::TestNetwork;
use support::crustd::{CriClient, Crustd};
use support::oci::{self, ImageSpec, Layer, LayerBuilder};
use support::pod::CgroupParent;
use support::registry::Registry;
use tempfile::TempDir;

/// A containerd of the test's own: its root, state, socket and config in a temporary
/// directory, with the CRI plugin off. Dropping it kills containerd.
struct Containerd {
    child: Child,
    dir: TempDir,
}

impl Containerd {
    fn start() -> Containerd {
        let dir = tempfile::Builder::new()
            .prefix("crust-containerd-")
            .tempdir()
            .unwrap();
        let p = dir.path();
        let config = format!(
            "version = 2\nroot = {root:?}\nstate = {state:?}\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.snapshotter.v1.btrfs\", \
             \"io.containerd.snapshotter.v1.zfs\", \"io.containerd.snapshotter.v1.devmapper\", \
             \"io.containerd.snapshotter.v1.aufs\", \"io.containerd.internal.v1.tracing\", \
             \"io.containerd.tracing.processor.v1.otlp\", \"io.containerd.internal.v1.restart\"]\n\
             [grpc]\naddress = {sock:?}\n[ttrpc]\naddress = {ttrpc:?}\n\
             [debug]\naddress = \"\"\n[metrics]\naddress = \"\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\npath = {opt:?}\n",
            root = p.join("root"),
            state = p.join("state"),
            sock = p.join("c.sock"),
            ttrpc = p.join("c.sock.ttrpc"),
            opt = p.join("opt"),
        );
        fs::write(p.join("config.toml"), config).unwrap();
        let log = fs::File::create(p.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(p.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn containerd (install Debian's containerd)");
        let mut c = Containerd { child, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = c.child.try_wait().unwrap() {
                panic!("containerd exited ({status}):\n{}", c.log());
            }
            if c.ctr(&["version"]).status.success() {
                return c;
            }
            assert!(Instant::now() < deadline, "containerd not up:\n{}", c.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    fn endpoint(&self) -> String {
        format!("unix://{}", self.dir.path().join("c.sock").display())
    }

    /// `ctr` against this containerd in namespace k8s.io.
    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(self.dir.path().join("c.sock"))
            .args(["-n", "k8s.io"])
            .args(args)
            .output()
            .expect("run ctr")
    }

    fn pull(&self, image: &str) {
        let out = self.ctr(&["images", "pull", "--plain-http", image]);
        assert!(
            out.status.success(),
            "ctr pull {image}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Where containerd's content store keeps blob `digest`.
    fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir
            .path()
            .join("root/io.containerd.content.v1.content/blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `crustd images import` on `d`'s configuration; exit status, stdout, stderr.
fn import(d: &Crustd, endpoint: &str, extra: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_crustd"))
        .arg("--config")
        .arg(d.dir().join("config.toml"))
        .args([
            "--log-level",
            "warn",
            "images",
            "import",
            "--from-containerd",
            endpoint,
        ])
        .args(extra)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .output()
        .expect("run crustd images import");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn pull(c: &mut CriClient, image: &str) {
    c.image
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("pull {image}: {e}"));
}

async fn status(c: &mut CriClient, image: &str) -> Option<cri::Image> {
    c.image
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .image
}

/// Layer directories in `root`'s layer store.
fn layer_dirs(root: &Path) -> Vec<String> {
    let mut dirs: Vec<String> = fs::read_dir(root.join("layers"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}

/// Runs `cmd` in a container of `image` in a host-network pod; its log.
async fn run_once(d: &Crustd, image: &str, cmd: &[&str]) -> String {
    let mut c = d.client().await;
    let logs = d.dir().join("pod-logs");
    let cgroups = CgroupParent(format!(
        "/crust-test-{}-{}",
        std::process::id(),
        d.dir().file_name().unwrap().to_string_lossy()
    ));
    let sandbox_config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "imported".into(),
            uid: "uid-imported".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: "imported".into(),
        log_directory: logs.display().to_string(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: cgroups.0.clone(),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let sandbox = c
        .runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(sandbox_config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let config = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "c".into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: cmd.iter().map(|s| s.to_string()).collect(),
        log_path: "c/0.log".into(),
        ..Default::default()
    };
    let id = c
        .runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: sandbox.clone(),
            config: Some(config),
            sandbox_config: Some(sandbox_config),
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    c.runtime
        .start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = c
            .runtime
            .container_status(cri::ContainerStatusRequest {
                container_id: id.clone(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        if st.state == cri::ContainerState::ContainerExited as i32 {
            assert_eq!(st.exit_code, 0, "{st:?}");
            break;
        }
        assert!(Instant::now() < deadline, "container did not exit: {st:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = fs::read_to_string(logs.join("c/0.log")).unwrap();
    c.runtime
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: sandbox.clone(),
        })
        .await
        .unwrap();
    c.runtime
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: sandbox,
        })
        .await
        .unwrap();
    log
}

/// A one-layer image of its own (uncompressed, so a flipped byte in the blob still
/// unpacks and only the digest tells), holding `marker`.
fn marker_image(marker: &str) -> ImageSpec {
    ImageSpec {
        layers: vec![Layer::uncompressed(
            LayerBuilder::new().file("marker", marker, 0o644).build(),
        )],
        config: json!({ "Cmd": ["/marker"] }),
        ..oci::busybox_image()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn containerd_images_import_as_a_pull_would_record_them() {
    let reg = Registry::start();
    let host = reg.host();
    let pushed = oci::push_image(&host, "test/box", "1", &oci::busybox_image()).await;
    // Its own config, so an image of its own.
    let mut multi = oci::busybox_image();
    multi.config["Env"] = json!([oci::DEFAULT_PATH, "IMAGE=multi"]);
    let other_arch = if oci::host_arch() == "arm64" {
        "amd64"
    } else {
        "arm64"
    };
    let index = oci::push_index(
        &host,
        "test/multi",
        "1",
        &[
            ("linux", other_arch, None, &marker_image("not this one")),
            ("linux", oci::host_arch(), None, &multi),
        ],
    )
    .await;
    let box_name = format!("{host}/test/box:1");
    let multi_name = format!("{host}/test/multi:1");

    // What a pull records, to compare with.
    let pulled = Crustd::start().await;
    let mut pc = pulled.client().await;
    pull(&mut pc, &box_name).await;
    pull(&mut pc, &multi_name).await;
    let want_box = status(&mut pc, &box_name).await.unwrap();
    let want_multi = status(&mut pc, &multi_name).await.unwrap();
    assert_eq!(want_box.id, pushed.config_digest);
    assert_eq!(
        want_multi.repo_digests,
        vec![format!("{host}/test/multi@{}", index.digest)]
    );

    let ctd = Containerd::start();
    ctd.pull(&box_name);
    ctd.pull(&multi_name);
    // No registry from here on.
    drop(reg);

    let mut d = Crustd::start().await;
    let _net = TestNetwork::create(&d.cni_conf_dir(), d.dir(), &[]);
    // A crustd running on the root holds the store: refused, and it says why.
    let (ok, _, err) = import(&d, &ctd.endpoint(), &[]);
    assert!(!ok);
    assert!(err.contains("crustd is running on root"), "{err}");

    d.stop();
    let (ok, out, err) = import(&d, &ctd.endpoint(), &[]);
    assert!(ok, "import failed:\n{out}{err}");
    assert!(
        out.contains(&format!("{box_name}: imported as {}", pushed.config_digest)),
        "{out}"
    );
    assert!(
        out.contains(&format!("{multi_name}: imported as ")),
        "{out}"
    );
    // The lease that kept containerd's GC off the blobs is gone.
    let leases = ctd.ctr(&["leases", "ls", "-q"]);
    assert!(leases.status.success());
    assert_eq!(String::from_utf8_lossy(&leases.stdout).trim(), "");
    d.start_again().await;
    let mut c = d.client().await;
    assert_eq!(status(&mut c, &box_name).await, Some(want_box.clone()));
    assert_eq!(status(&mut c, &multi_name).await, Some(want_multi.clone()));
    // Looked up by id and by digest too, as kubelet does.
    let by_digest = format!("{host}/test/box@{}", pushed.manifest_digest);
    assert_eq!(status(&mut c, &by_digest).await, Some(want_box.clone()));
    assert_eq!(
        status(&mut c, &pushed.config_digest).await,
        Some(want_box.clone())
    );

    let log = run_once(&d, &box_name, &["echo", "hello from an imported image"]).await;
    assert!(log.contains("hello from an imported image"), "{log}");

    // Again: already present, nothing read. The layer blob in containerd is broken
    // now, which a second read would notice.
    let blob = ctd.blob_path(&pushed.layer_digests[0]);
    let file = fs::OpenOptions::new().write(true).open(&blob).unwrap();
    file.write_at(b"\0\0\0\0", 100).unwrap();
    drop(file);
    d.stop();
    let (ok, out, err) = import(&d, &ctd.endpoint(), &[&box_name]);
    assert!(ok, "second import failed:\n{out}{err}");
    assert!(
        out.contains(&format!(
            "{box_name}: already present as {}",
            pushed.config_digest
        )),
        "{out}"
    );
    d.start_again().await;
    let mut c = d.client().await;
    assert_eq!(status(&mut c, &box_name).await, Some(want_box));
}

#[tokio::test(flavor = "multi_thread")]
async fn containerd_import_errors_are_clear_and_change_nothing() {
    let reg = Registry::start();
    let host = reg.host();
    let pushed = oci::push_image(&host, "test/marked", "1", &marker_image("intact")).await;
    let name = format!("{host}/test/marked:1");
    let ctd = Containerd::start();
    ctd.pull(&name);
    drop(reg);

    let mut d = Crustd::start().await;
    d.stop();

    // containerd not there.
    let missing = d.dir().join("no-containerd.sock");
    let (ok, _, err) = import(&d, &format!("unix://{}", missing.display()), &[]);
    assert!(!ok);
    assert!(
        err.contains("connect") && err.contains("is containerd running?"),
        "{err}"
    );

    // A namespace containerd lacks.
    let (ok, _, err) = import(&d, &ctd.endpoint(), &["--namespace", "nope"]);
    assert!(!ok);
    assert!(err.contains("namespace \"nope\" does not exist"), "{err}");

    // An image containerd lacks.
    let absent = format!("{host}/test/absent:1");
    let (ok, _, err) = import(&d, &ctd.endpoint(), &[&absent]);
    assert!(!ok);
    assert!(err.contains(&absent) && err.contains("not found"), "{err}");

    // A blob whose bytes no longer match its digest.
    let blob = ctd.blob_path(&pushed.layer_digests[0]);
    let bytes = fs::read(&blob).unwrap();
    let at = bytes.windows(6).position(|w| w == b"intact").unwrap();
    let file = fs::OpenOptions::new().write(true).open(&blob).unwrap();
    file.write_at(b"broken", at as u64).unwrap();
    drop(file);
    let (ok, _, err) = import(&d, &ctd.endpoint(), &[&name]);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "import {name}: layer {}: digest mismatch",
            pushed.layer_digests[0]
        )),
        "{err}"
    );
    // Nothing of it was kept.
    assert_eq!(layer_dirs(&d.root()), Vec::<String>::new());
    d.start_again().await;
    let mut c = d.client().await;
    assert_eq!(status(&mut c, &name).await, None);
    let images = c
        .image
        .list_images(cri::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images;
    assert!(images.is_empty(), "{images:?}");
}
