//! CreateContainer from a checkpoint archive (CRI-O's restore): `config.image.image`
//! is the absolute path of an archive CheckpointContainer (crust's or CRI-O's) wrote.
//!
//! ```text
//! extract (bounded, into root/restores/.import-*) ─> config.dump, spec.dump read
//!   ─> the original image resolved ─> the config merged ─> name reserved
//!   ─> root/restores/<id> ─> rootfs mounted ─> deleted.files removed, rootfs-diff.tar
//!   unpacked, both inside the rootfs ─> the runtime records it CREATED
//! ```
//!
//! What the new container takes from where, as CRI-O does it: metadata, labels,
//! annotations, mounts, log path, resources and security context from the request
//! (kubelet keeps its bookkeeping in the labels and annotations it sends); the
//! command, environment and working directory from spec.dump (CRIU restores the
//! process as it was: the spec says what it is), as are the masked and read-only
//! paths; the image from config.dump. Every bind mount the checkpointed container had
//! (beyond the ones the runtime makes for each container) must be in the request:
//! an archive cannot make crust mount a host path nobody asked for.
//!
//! Every failure before the runtime's record removes what was made: the extracted
//! directory, the rootfs and the name.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crust_proto::cri;
use crust_runtime::checkpoint::import::{self, ImportError};
use crust_runtime::container::RestoreSource;
use tonic::Status;

use super::{Services, container, error};

/// What a rootfs-diff.tar may unpack to (the per-layer unpack cap's default).
const MAX_ROOTFS_DIFF_BYTES: u64 = crust_image::registry::DEFAULT_MAX_LAYER_UNPACKED_BYTES;

/// Mount destinations every container gets from the runtime, not from its request
/// (CRI-O's list, and the pod files crust mounts).
const RUNTIME_MOUNTS: [&str; 14] = [
    "/proc",
    "/dev",
    "/dev/pts",
    "/dev/mqueue",
    "/sys",
    "/sys/fs/cgroup",
    "/dev/shm",
    "/etc/resolv.conf",
    "/etc/hostname",
    "/etc/hosts",
    "/etc/passwd",
    "/etc/group",
    "/run/secrets",
    "/run/.containerenv",
];

fn import_status(archive: &str, e: ImportError) -> Status {
    match e {
        ImportError::Invalid(_) => Status::invalid_argument(format!("image {archive:?}: {e}")),
        ImportError::Io { .. } => Status::internal(format!("image {archive:?}: {e}")),
    }
}

/// Creates a container of `sandbox` from the checkpoint archive at `archive`.
pub(super) async fn create(
    services: &Arc<Services>,
    sandbox: &crust_sandbox::SandboxRecord,
    config: cri::ContainerConfig,
    archive: String,
) -> Result<String, Status> {
    if sandbox.userns.is_some() {
        return Err(Status::failed_precondition(format!(
            "image {archive:?}: restoring into a pod with its own user namespace is not supported"
        )));
    }
    if config.tty {
        return Err(Status::failed_precondition(format!(
            "image {archive:?}: containers with a terminal cannot be restored \
             (the OCI runtime's restore has no console socket)"
        )));
    }
    let root = services.containers.restore_root();
    let path = archive.clone();
    let (extracted, checkpoint) =
        tokio::task::spawn_blocking(move || import::extract_file(&root, &path))
            .await
            .map_err(|e| Status::internal(format!("extract task failed: {e}")))?
            .map_err(|e| import_status(&archive, e))?;
    let wanted = checkpoint.config.image().to_owned();
    let image = [
        &checkpoint.config.rootfs_image_name,
        &checkpoint.config.rootfs_image_ref,
        &checkpoint.config.rootfs_image,
    ]
    .into_iter()
    .filter(|name| !name.is_empty())
    .find_map(|name| services.images.resolve(name))
    .ok_or_else(|| {
        Status::not_found(format!(
            "image {archive:?}: the checkpointed container's image {wanted:?} is not \
             present; pull it first"
        ))
    })?;
    let image_name = Some(&checkpoint.config.rootfs_image)
        .filter(|name| !name.is_empty())
        .cloned()
        .unwrap_or_else(|| wanted.clone());
    let config = restored_config(&config, &checkpoint.spec, &image_name)
        .map_err(|e| Status::invalid_argument(format!("image {archive:?}: {e}")))?;
    let id = services
        .containers
        .reserve(&sandbox.id, &config)
        .map_err(|e| error::container_status(&e))?;
    let dir = services.containers.restore_dir(&id);
    let moved = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || {
            let from = extracted.keep();
            std::fs::rename(&from, &dir).inspect_err(|_| {
                let _ = std::fs::remove_dir_all(&from);
            })
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r)
    };
    if let Err(e) = moved {
        services.containers.unreserve(&sandbox.id, &config, &id);
        return Err(Status::internal(format!(
            "image {archive:?}: move the extracted archive to {}: {e}",
            dir.display()
        )));
    }
    let undo = |status: Status| {
        let (services, sandbox_id, config, id, dir) = (
            Arc::clone(services),
            sandbox.id.clone(),
            config.clone(),
            id.clone(),
            dir.clone(),
        );
        async move {
            services.containers.unreserve(&sandbox_id, &config, &id);
            if let Err(e) = services.images.remove_rootfs(&id).await {
                tracing::warn!(container = %id, error = %e, "rootfs cleanup after a failed restore");
            }
            container::remove_state_dir(&services, &id).await;
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
            status
        }
    };
    let mountpoint = services
        .config
        .state
        .join("containers")
        .join(&id)
        .join("rootfs");
    let rootfs = match services
        .images
        .create_rootfs(&image, &id, &mountpoint, None)
        .await
    {
        Ok(rootfs) => rootfs,
        Err(e) => return Err(undo(error::image_status(&e)).await),
    };
    let applied = {
        let (rootfs, deleted) = (rootfs.clone(), checkpoint.deleted.clone());
        let diff = checkpoint
            .has_rootfs_diff
            .then(|| dir.join(crust_runtime::checkpoint::ROOTFS_DIFF));
        tokio::task::spawn_blocking(move || apply_changes(&rootfs, &deleted, diff.as_deref()))
            .await
            .map_err(|e| Status::internal(format!("rootfs diff task failed: {e}")))
            .and_then(|r| {
                r.map_err(|e| Status::invalid_argument(format!("image {archive:?}: {e}")))
            })
    };
    if let Err(status) = applied {
        return Err(undo(status).await);
    }
    let create =
        container::create_request(services, sandbox, &id, &config, &image, image_name, rootfs);
    let source = RestoreSource {
        dir: dir.clone(),
        archive: archive.clone(),
        checkpointed_at: checkpoint.config.checkpointed_at.clone(),
        log_dir: PathBuf::from(&sandbox.config.log_directory),
    };
    match services.containers.create_restored(create, source).await {
        Ok(r) => {
            tracing::info!(container = %r.id, archive = %archive, from = %checkpoint.config.id, "container created from a checkpoint");
            Ok(r.id.clone())
        }
        Err(e) => Err(undo(error::container_status(&e)).await),
    }
}

/// Removes what the checkpointed container deleted from its image, then unpacks what
/// it added or changed, both resolved inside `rootfs`. Deletions go first: crust lists
/// a directory the container replaced (an opaque one) among them, and its new
/// content is in the diff.
fn apply_changes(rootfs: &Path, deleted: &[String], diff: Option<&Path>) -> Result<(), String> {
    for path in deleted {
        crust_runtime::inroot::remove_in_root(rootfs, path)
            .map_err(|e| format!("deleted.files: remove {path:?}: {e}"))?;
    }
    let Some(diff) = diff else {
        return Ok(());
    };
    let file = std::fs::File::open(diff).map_err(|e| format!("rootfs-diff.tar: {e}"))?;
    let limits = crust_image::unpack::Limits {
        layer_bytes: MAX_ROOTFS_DIFF_BYTES,
        image: None,
    };
    crust_image::unpack::unpack_layer_limited(std::io::BufReader::new(file), rootfs, &limits)
        .map(drop)
        .map_err(|e| format!("rootfs-diff.tar: {e}"))
}

/// The strings of a JSON array, if it is one of strings.
fn strings(value: Option<&serde_json::Value>) -> Option<Vec<String>> {
    value?
        .as_array()?
        .iter()
        .map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// The new container's config: the request's, with the process (command,
/// environment, working directory), the masked and read-only paths from `spec` (the
/// checkpointed container's) and the image `image_name`. Fails when a bind mount of
/// `spec` is not among the request's mounts.
fn restored_config(
    request: &cri::ContainerConfig,
    spec: &serde_json::Value,
    image_name: &str,
) -> Result<cri::ContainerConfig, String> {
    let mut config = request.clone();
    let process = spec.get("process");
    config.command = strings(process.and_then(|p| p.get("args"))).unwrap_or_default();
    config.args = Vec::new();
    config.working_dir = process
        .and_then(|p| p.get("cwd"))
        .and_then(|c| c.as_str())
        .unwrap_or_default()
        .to_owned();
    config.envs = strings(process.and_then(|p| p.get("env")))
        .unwrap_or_default()
        .into_iter()
        .map(|kv| {
            let (key, value) = kv.split_once('=').unwrap_or((&kv, ""));
            cri::KeyValue {
                key: key.to_owned(),
                value: value.to_owned(),
            }
        })
        .collect();
    config.image = Some(cri::ImageSpec {
        image: image_name.to_owned(),
        ..Default::default()
    });
    let linux = spec.get("linux");
    let masked = strings(linux.and_then(|l| l.get("maskedPaths")));
    let readonly = strings(linux.and_then(|l| l.get("readonlyPaths")));
    if masked.is_some() || readonly.is_some() {
        let security = config
            .linux
            .get_or_insert_with(Default::default)
            .security_context
            .get_or_insert_with(Default::default);
        if let Some(masked) = masked {
            security.masked_paths = masked;
        }
        if let Some(readonly) = readonly {
            security.readonly_paths = readonly;
        }
    }
    let missing: Vec<&str> = spec
        .get("mounts")
        .and_then(|m| m.as_array())
        .into_iter()
        .flatten()
        .filter(|m| {
            m.get("type").and_then(|t| t.as_str()) == Some("bind")
                || m.get("options")
                    .and_then(|o| o.as_array())
                    .is_some_and(|o| o.iter().any(|o| o == "bind" || o == "rbind"))
        })
        .filter_map(|m| m.get("destination")?.as_str())
        .filter(|d| !RUNTIME_MOUNTS.contains(d))
        .filter(|d| !request.mounts.iter().any(|m| m.container_path == *d))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "the checkpointed container had bind mounts the request does not give: {}",
            missing.join(", ")
        ));
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_comes_from_the_dump_and_the_rest_from_the_request() {
        let request = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: "restored".into(),
                attempt: 2,
            }),
            command: vec!["ignored".into()],
            args: vec!["also".into()],
            labels: [("app".to_string(), "x".to_string())].into(),
            annotations: [("io.kubernetes.container.hash".to_string(), "1".to_string())].into(),
            mounts: vec![cri::Mount {
                container_path: "/data".into(),
                host_path: "/srv/data".into(),
                ..Default::default()
            }],
            log_path: "restored/0.log".into(),
            ..Default::default()
        };
        let spec = serde_json::json!({
            "process": {"args": ["sh", "-c", "count"], "cwd": "/work",
                        "env": ["PATH=/bin", "EMPTY=", "ODD"]},
            "linux": {"maskedPaths": ["/proc/kcore"], "readonlyPaths": ["/proc/sys"]},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "type": "bind", "source": "/x", "options": ["rbind"]},
                {"destination": "/data", "type": "bind", "source": "/old", "options": ["rbind"]},
            ],
        });
        let config = restored_config(&request, &spec, "busybox:1.36").unwrap();
        assert_eq!(config.command, ["sh", "-c", "count"]);
        assert!(config.args.is_empty());
        assert_eq!(config.working_dir, "/work");
        let envs: Vec<(&str, &str)> = config
            .envs
            .iter()
            .map(|kv| (kv.key.as_str(), kv.value.as_str()))
            .collect();
        assert_eq!(envs, [("PATH", "/bin"), ("EMPTY", ""), ("ODD", "")]);
        assert_eq!(config.image.unwrap().image, "busybox:1.36");
        assert_eq!(config.metadata, request.metadata);
        assert_eq!(config.labels, request.labels);
        assert_eq!(config.annotations, request.annotations);
        assert_eq!(config.mounts, request.mounts);
        assert_eq!(config.log_path, request.log_path);
        let security = config.linux.unwrap().security_context.unwrap();
        assert_eq!(security.masked_paths, ["/proc/kcore"]);
        assert_eq!(security.readonly_paths, ["/proc/sys"]);
    }

    #[test]
    fn a_bind_mount_of_the_dump_must_be_in_the_request() {
        let spec = serde_json::json!({"mounts": [
            {"destination": "/data", "type": "bind", "source": "/old"},
            {"destination": "/logs", "source": "/var/log", "options": ["rbind", "ro"]},
            {"destination": "/dev/shm", "type": "bind", "source": "/shm"},
        ]});
        let err = restored_config(&cri::ContainerConfig::default(), &spec, "i").unwrap_err();
        assert!(err.ends_with("does not give: /data, /logs"), "{err}");
    }

    #[test]
    fn deletions_then_the_diff_inside_the_rootfs() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("var/cache")).unwrap();
        std::fs::write(r.join("var/cache/old"), b"image's").unwrap();
        std::fs::write(r.join("gone"), b"x").unwrap();
        let mut diff = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(3);
        diff.append_data(&mut header, "var/cache/new", &b"new"[..])
            .unwrap();
        let tar_dir = tempfile::tempdir().unwrap();
        let tar_path = tar_dir.path().join("rootfs-diff.tar");
        std::fs::write(&tar_path, diff.into_inner().unwrap()).unwrap();
        apply_changes(
            r,
            &["/gone".into(), "/var/cache".into(), "/not/there".into()],
            Some(&tar_path),
        )
        .unwrap();
        assert!(!r.join("gone").exists());
        assert!(!r.join("var/cache/old").exists());
        assert_eq!(std::fs::read(r.join("var/cache/new")).unwrap(), b"new");
        let err = apply_changes(r, &["/../etc".into()], None).unwrap_err();
        assert!(err.contains("'..'"), "{err}");
    }
}
