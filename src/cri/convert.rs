//! Domain records to CRI messages.

use crust_image::ImageRecord;
use crust_proto::cri;

/// The user an image's config names: a numeric uid, or a user name.
pub fn image_user(config: &serde_json::Value) -> (Option<i64>, String) {
    let user = config
        .pointer("/config/User")
        .and_then(|u| u.as_str())
        .unwrap_or("");
    // "user:group" names the group after the colon; only the user part matters here.
    let user = user.split(':').next().unwrap_or("");
    if user.is_empty() {
        return (None, String::new());
    }
    match user.parse::<i64>() {
        Ok(uid) => (Some(uid), String::new()),
        Err(_) => (None, user.to_string()),
    }
}

/// An image record as CRI's `Image`.
pub fn image(record: &ImageRecord) -> cri::Image {
    let (uid, username) = image_user(&record.config_json());
    cri::Image {
        id: record.id.clone(),
        repo_tags: record.repo_tags.clone(),
        repo_digests: record.repo_digests.clone(),
        size: record.size,
        uid: uid.map(|value| cri::Int64Value { value }),
        username,
        spec: Some(cri::ImageSpec {
            image: record.id.clone(),
            ..Default::default()
        }),
        pinned: record.pinned,
    }
}

/// A sandbox record as CRI's list item.
pub fn sandbox(r: &crust_sandbox::SandboxRecord) -> cri::PodSandbox {
    cri::PodSandbox {
        id: r.id.clone(),
        metadata: Some(r.metadata()),
        state: sandbox_state(r) as i32,
        created_at: r.created_at,
        labels: r.config.labels.clone(),
        annotations: r.config.annotations.clone(),
        runtime_handler: r.runtime_handler.clone(),
    }
}

/// A sandbox record's CRI state.
pub fn sandbox_state(r: &crust_sandbox::SandboxRecord) -> cri::PodSandboxState {
    if r.is_ready() {
        cri::PodSandboxState::SandboxReady
    } else {
        cri::PodSandboxState::SandboxNotready
    }
}

/// A sandbox record as CRI's status.
pub fn sandbox_status(r: &crust_sandbox::SandboxRecord) -> cri::PodSandboxStatus {
    cri::PodSandboxStatus {
        id: r.id.clone(),
        metadata: Some(r.metadata()),
        state: sandbox_state(r) as i32,
        created_at: r.created_at,
        network: Some(cri::PodSandboxNetworkStatus {
            ip: r.ip.clone(),
            additional_ips: r
                .additional_ips
                .iter()
                .map(|ip| cri::PodIp { ip: ip.clone() })
                .collect(),
        }),
        linux: Some(cri::LinuxPodSandboxStatus {
            namespaces: Some(cri::Namespace {
                options: Some(r.namespace_options()),
            }),
        }),
        labels: r.config.labels.clone(),
        annotations: r.config.annotations.clone(),
        runtime_handler: r.runtime_handler.clone(),
    }
}

/// A container record as CRI's list item.
pub fn container(r: &crust_runtime::container::ContainerRecord) -> cri::Container {
    cri::Container {
        id: r.id.clone(),
        pod_sandbox_id: r.sandbox_id.clone(),
        metadata: Some(r.metadata()),
        image: Some(cri::ImageSpec {
            image: r.image_name.clone(),
            ..Default::default()
        }),
        image_ref: r.image_ref.clone(),
        state: crust_runtime::container::state(r) as i32,
        created_at: r.created_at,
        labels: r.config.labels.clone(),
        annotations: r.config.annotations.clone(),
        image_id: r.image_id.clone(),
    }
}

/// A container record as CRI's status.
pub fn container_status(r: &crust_runtime::container::ContainerRecord) -> cri::ContainerStatus {
    let resources = r.resources.clone().map(|linux| cri::ContainerResources {
        linux: Some(linux),
        ..Default::default()
    });
    cri::ContainerStatus {
        id: r.id.clone(),
        metadata: Some(r.metadata()),
        state: crust_runtime::container::state(r) as i32,
        created_at: r.created_at,
        started_at: r.started_at.unwrap_or(0),
        finished_at: r.finished_at.unwrap_or(0),
        exit_code: r.exit_code.unwrap_or(0),
        image: Some(cri::ImageSpec {
            image: r.image_name.clone(),
            ..Default::default()
        }),
        image_ref: r.image_ref.clone(),
        reason: r.reason.clone(),
        message: r.message.clone(),
        labels: r.config.labels.clone(),
        annotations: r.config.annotations.clone(),
        mounts: r.config.mounts.clone(),
        log_path: r.log_path.display().to_string(),
        resources,
        image_id: r.image_id.clone(),
        user: Some(cri::ContainerUser {
            linux: Some(cri::LinuxContainerUser {
                uid: r.user.uid as i64,
                gid: r.user.gid as i64,
                supplemental_groups: r.user.additional_gids.iter().map(|g| *g as i64).collect(),
            }),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn image_users() {
        assert_eq!(
            image_user(&json!({"config": {"User": "1000"}})),
            (Some(1000), String::new())
        );
        assert_eq!(
            image_user(&json!({"config": {"User": "1000:2000"}})),
            (Some(1000), String::new())
        );
        assert_eq!(
            image_user(&json!({"config": {"User": "app:grp"}})),
            (None, "app".into())
        );
        assert_eq!(image_user(&json!({"config": {}})), (None, String::new()));
        assert_eq!(image_user(&json!({})), (None, String::new()));
    }
}
