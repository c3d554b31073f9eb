//! The start of most container tests: a daemon with a private network, a registry on
//! loopback holding an image the daemon has pulled, and one running pod.

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

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
        Self::set_up_with_plugins(image, extra, &[r#"{"type":"loopback"}"#]).await
    }

    /// Like [`TestPod::set_up`], with `plugins` (JSON objects) after the network's
    /// bridge, host-local and portmap instead of the loopback plugin.
    pub async fn set_up_with_plugins(image: ImageSpec, extra: &str, plugins: &[&str]) -> TestPod {
        Self::set_up_configured(image, "", extra, plugins).await
    }

    /// Like [`TestPod::set_up`], on runtime `handler` by default (runc for CRIU, which
    /// runs through an OCI runtime binary).
    pub async fn on_handler(image: ImageSpec, handler: &str) -> TestPod {
        let top = format!("default_runtime = {handler:?}\n");
        Self::set_up_configured(image, &top, "", &[r#"{"type":"loopback"}"#]).await
    }

    /// Like [`TestPod::set_up_with_plugins`], with `top` top-level config keys too.
    pub async fn set_up_configured(
        image: ImageSpec,
        top: &str,
        extra: &str,
        plugins: &[&str],
    ) -> TestPod {
        let reg = Registry::start();
        oci::push_image(&reg.host(), "test/box", "1", &image).await;
        let d = Crustd::start_configured(top, extra).await;
        let net = TestNetwork::create_with(&d.cni_conf_dir(), d.dir(), plugins);
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

    /// Runs another pod on the daemon, configured like the first but named `name`
    /// (uid `uid-NAME`); its id and config.
    pub async fn run_other_pod(&mut self, name: &str) -> (String, cri::PodSandboxConfig) {
        let mut config = self.sandbox_config.clone();
        let meta = config.metadata.as_mut().unwrap();
        meta.name = name.into();
        meta.uid = format!("uid-{name}");
        let id = self
            .c
            .runtime
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .pod_sandbox_id;
        (id, config)
    }

    /// StopPodSandbox then RemovePodSandbox of `id`, which must succeed.
    pub async fn stop_and_remove_pod(&mut self, id: &str) {
        self.c
            .runtime
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await
            .unwrap();
        self.c
            .runtime
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await
            .unwrap();
    }

    /// A container config for the pulled image: `cmd`, a log at `NAME/0.log`, the
    /// label `name=NAME`.
    pub fn config(&self, name: &str, cmd: &[&str]) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: self.image.clone(),
                ..Default::default()
            }),
            command: cmd.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}/0.log"),
            labels: HashMap::from([("name".to_string(), name.to_string())]),
            ..Default::default()
        }
    }

    /// CreateContainer in the pod.
    pub async fn create(&mut self, config: cri::ContainerConfig) -> Result<String, tonic::Status> {
        self.c
            .runtime
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: self.sandbox.clone(),
                config: Some(config),
                sandbox_config: Some(self.sandbox_config.clone()),
            })
            .await
            .map(|r| r.into_inner().container_id)
    }

    /// StartContainer, which must succeed.
    pub async fn start(&mut self, id: &str) {
        self.c
            .runtime
            .start_container(cri::StartContainerRequest {
                container_id: id.into(),
            })
            .await
            .unwrap();
    }

    /// Creates and starts a container; its id.
    pub async fn run(&mut self, config: cri::ContainerConfig) -> String {
        let id = self.create(config).await.unwrap();
        self.start(&id).await;
        id
    }

    /// Waits (up to 20 s) for the container to have exited; its status then.
    pub async fn wait_exit(&mut self, id: &str) -> cri::ContainerStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let st = self
                .c
                .runtime
                .container_status(cri::ContainerStatusRequest {
                    container_id: id.into(),
                    verbose: false,
                })
                .await
                .unwrap()
                .into_inner()
                .status
                .unwrap();
            if st.state == cri::ContainerState::ContainerExited as i32 {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "container {id} did not exit: {st:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
