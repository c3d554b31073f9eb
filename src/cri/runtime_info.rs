//! Version, Status and RuntimeConfig.

use std::collections::HashMap;

use crust_proto::cri;
use tonic::{Request, Response, Status};

use super::Cri;
use crate::config::CgroupDriver;

/// The CRI version string kubelet insists on.
const CRI_VERSION: &str = "0.1.0";

impl Cri {
    pub(super) async fn version(
        &self,
        _request: Request<cri::VersionRequest>,
    ) -> Result<Response<cri::VersionResponse>, Status> {
        self.instrumented("Version", async {
            self.services()?;
            Ok(cri::VersionResponse {
                version: CRI_VERSION.into(),
                runtime_name: "crust".into(),
                runtime_version: env!("CARGO_PKG_VERSION").into(),
                runtime_api_version: "v1".into(),
            })
        })
        .await
    }

    pub(super) async fn status(
        &self,
        request: Request<cri::StatusRequest>,
    ) -> Result<Response<cri::StatusResponse>, Status> {
        self.instrumented("Status", async {
            let services = self.services()?;
            let runtime = cri::RuntimeCondition {
                r#type: "RuntimeReady".into(),
                status: true,
                reason: String::new(),
                message: String::new(),
            };
            let network = match services.sandboxes.network_ready() {
                Ok(()) => cri::RuntimeCondition {
                    r#type: "NetworkReady".into(),
                    status: true,
                    reason: String::new(),
                    message: String::new(),
                },
                Err(message) => cri::RuntimeCondition {
                    r#type: "NetworkReady".into(),
                    status: false,
                    reason: "NetworkPluginNotReady".into(),
                    message: format!("network plugin not ready: {message}"),
                },
            };
            let mut info = HashMap::new();
            if request.into_inner().verbose {
                let config = serde_json::json!({
                    "root": services.config.root,
                    "state": services.config.state,
                    "cgroupDriver": format!("{:?}", services.config.cgroup_driver).to_lowercase(),
                    "cniConfDir": services.config.cni.conf_dir,
                    "cniBinDirs": services.config.cni.bin_dirs,
                    "registryConfigPath": services.config.registry.config_path,
                });
                info.insert("config".to_string(), config.to_string());
            }
            Ok(cri::StatusResponse {
                status: Some(cri::RuntimeStatus {
                    conditions: vec![runtime, network],
                }),
                info,
                runtime_handlers: runtime_handlers(&services.config),
                features: Some(cri::RuntimeFeatures {
                    supplemental_groups_policy: true,
                }),
            })
        })
        .await
    }

    pub(super) async fn runtime_config(
        &self,
        _request: Request<cri::RuntimeConfigRequest>,
    ) -> Result<Response<cri::RuntimeConfigResponse>, Status> {
        self.instrumented("RuntimeConfig", async {
            let services = self.services()?;
            let driver = match services.config.cgroup_driver {
                CgroupDriver::Cgroupfs => cri::CgroupDriver::Cgroupfs,
                CgroupDriver::Systemd => cri::CgroupDriver::Systemd,
            };
            Ok(cri::RuntimeConfigResponse {
                linux: Some(cri::LinuxRuntimeConfiguration {
                    cgroup_driver: driver as i32,
                }),
            })
        })
        .await
    }
}

/// What each runtime handler can do, for kubelet and critest: the configured ones by
/// name and the default again as "" (what pods without a RuntimeClass get), as
/// containerd lists them. Recursive read-only and idmapped mounts are crust's own work
/// ([`crust_runtime::staging`], idmapped layers in the image store), and crust makes
/// the pod's user namespace itself, so every handler has both where the kernel has
/// `mount_setattr`.
fn runtime_handlers(config: &crate::config::Config) -> Vec<cri::RuntimeHandler> {
    // An embedded handler's pods with a user namespace run on the user namespace
    // runtime (libcontainer 0.7's exec stays outside the user namespace): it claims
    // them only when there is one.
    let userns_elsewhere = config.user_namespace_runtime().is_some();
    let features = |name: &str| {
        let embedded = config
            .runtimes
            .get(name)
            .is_some_and(|r| r.kind == crate::config::RuntimeKind::Embedded);
        Some(cri::RuntimeHandlerFeatures {
            recursive_read_only_mounts: crust_runtime::staging::supported(),
            user_namespaces: crust_runtime::staging::supported() && (!embedded || userns_elsewhere),
        })
    };
    std::iter::once(String::new())
        .chain(config.runtimes.keys().cloned())
        .map(|name| {
            let features = features(if name.is_empty() {
                &config.default_runtime
            } else {
                &name
            });
            cri::RuntimeHandler { name, features }
        })
        .collect()
}
