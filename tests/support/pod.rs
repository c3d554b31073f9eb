//! The start of most container tests: a daemon with a private network, a registry on
//! loopback holding an image the daemon has pulled, and one running pod.

use std::fs;
use std::path::PathBuf;

use crust_proto::cri;

use super::cni::TestNetwork;
use super::crustd::{CriClient, Crustd};
use super::oci::{self, ImageSpec};
use super::registry::Registry;

/// A daemon, its network and registry, a pulled image and one running pod. Fields drop
/// in order: the daemon (and every pod it runs) first, the pod cgroup parent last.
pub struct TestPod {
    /// The daemon.
    pub d: Crustd,
    /// Its CNI network.
    pub net: TestNetwork,
    /// The registry the image came from.
    pub reg: Registry,
    /// A CRI client of the daemon.
    pub c: CriClient,
    /// The pulled image's name.
    pub image: String,
    /// The running pod's id.
    pub sandbox: String,
    /// The config the pod was run with (CreateContainer sends it again).
    pub sandbox_config: cri::PodSandboxConfig,
    /// The pod's log directory.
    pub logs: PathBuf,
    /// The TOML tables added to the daemon's config.
    pub extra_config: String,
    /// The pod's cgroup parent, removed when the test ends.
    pub cgroups: CgroupParent,
}

/// The test's pod cgroup parent (what kubelet would create and delete).
pub struct CgroupParent(pub String);

impl Drop for CgroupParent {
    fn drop(&mut self) {
        for ctrl in fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = fs::remove_dir(ctrl.path().join(self.0.trim_start_matches('/')));
        }
    }
}

impl TestPod {
    /// A pod on a daemon with `extra` TOML tables in its config, with `image` pushed
    /// as `test/box:1` and pulled.
    pub async fn set_up(image: ImageSpec, extra: &str) -> TestPod {
        let reg = Registry::start();
        oci::push_image(&reg.host(), "test/box", "1", &image).await;
        let d = Crustd::start_with(extra).await;
        let net = TestNetwork::create(&d.cni_conf_dir(), d.dir(), &[]);
        let mut c = d.client().await;
        let name = format!("{}/test/box:1", reg.host());
        c.image
            .pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image: name.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap();
        let logs = d.dir().join("pod-logs");
        let cgroup_parent = format!(
            "/crust-test-{}-{}",
            std::process::id(),
            d.dir().file_name().unwrap().to_string_lossy()
        );
        let sandbox_config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "pod".into(),
                uid: "uid-pod".into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: "pod".into(),
            log_directory: logs.display().to_string(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: cgroup_parent.clone(),
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
        TestPod {
            d,
            net,
            reg,
            c,
            image: name,
            sandbox,
            sandbox_config,
            logs,
            extra_config: extra.to_string(),
            cgroups: CgroupParent(cgroup_parent),
        }
    }
}
