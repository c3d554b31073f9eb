//! One benchmark run: the connection, the run id every object is labelled with, the
//! directory for pod logs, the images it needs, and the record of what it created.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use crust_proto::cri;

use crate::cleanup::Created;
use crate::cli::{Connection, Workload};
use crate::cri_client::Cri;

/// A connected run.
pub struct Run {
    /// 8 hex digits, unique per run: in pod uids and the run label.
    pub id: String,
    /// The runtime.
    pub cri: Cri,
    /// Everything to remove at the end.
    pub created: Created,
    /// The runtime's name and version, from Version.
    pub version: (String, String),
    /// Base directory of pod logs and termination-message files.
    pub log_base: PathBuf,
}

/// An image ready for CreateContainer.
#[derive(Debug, Clone)]
pub struct ReadyImage {
    /// The reference the user gave.
    pub reference: String,
    /// The runtime's image id (`sha256:…`), which kubelet passes to CreateContainer.
    pub id: String,
}

impl Run {
    /// Connects and makes the run's log directory under `log_dir`.
    pub async fn start(connection: &Connection, log_dir: Option<&PathBuf>) -> anyhow::Result<Run> {
        let cri = Cri::connect(&connection.endpoint, connection.timeout()).await?;
        let version = cri.version().await?;
        let id = run_id();
        let created = Created::default();
        let log_base = match log_dir {
            Some(dir) => {
                let base = dir.join(format!("crust-bench-{id}"));
                std::fs::create_dir_all(&base)
                    .with_context(|| format!("create {}", base.display()))?;
                created.dir(&base);
                base
            }
            None => std::env::temp_dir(),
        };
        Ok(Run {
            id,
            cri,
            created,
            version,
            log_base,
        })
    }

    /// Removes what the run created; returns how many objects could not be removed.
    pub async fn finish(&self, workload: Option<&Workload>) -> usize {
        let parent = workload.map(|w| w.cgroup_parent.as_str()).unwrap_or("");
        self.created
            .teardown(Some(&self.cri), &self.id, parent)
            .await
    }

    /// The runtime's id for `image`, None when the image is absent.
    pub async fn image_id(&self, image: &str) -> anyhow::Result<Option<String>> {
        let mut svc = self.cri.image.clone();
        let status = self
            .cri
            .call(
                "ImageStatus",
                svc.image_status(cri::ImageStatusRequest {
                    image: Some(spec(image)),
                    verbose: false,
                }),
            )
            .await?;
        Ok(status.image.map(|i| i.id).filter(|id| !id.is_empty()))
    }

    /// Pulls `image` and returns how long the pull took.
    pub async fn pull(&self, image: &str) -> anyhow::Result<Duration> {
        let mut svc = self.cri.image.clone();
        let request = cri::PullImageRequest {
            image: Some(spec(image)),
            auth: None,
            sandbox_config: None,
        };
        let (_, took) = self
            .cri
            .timed(&format!("PullImage {image}"), svc.pull_image(request))
            .await?;
        Ok(took)
    }

    /// Removes `image` (by id, so all its names go).
    pub async fn remove_image(&self, id: &str) -> anyhow::Result<()> {
        let mut svc = self.cri.image.clone();
        self.cri
            .call(
                &format!("RemoveImage {id}"),
                svc.remove_image(cri::RemoveImageRequest {
                    image: Some(spec(id)),
                }),
            )
            .await?;
        Ok(())
    }

    /// Makes sure `image` is present, pulling it if not (and then removing it at the
    /// end of the run).
    pub async fn ensure_image(&self, image: &str) -> anyhow::Result<ReadyImage> {
        let id = match self.image_id(image).await? {
            Some(id) => id,
            None => {
                self.pull(image).await?;
                let id = self.image_id(image).await?.with_context(|| {
                    format!("{image}: pulled, but ImageStatus does not know it")
                })?;
                self.created.image(&id);
                id
            }
        };
        Ok(ReadyImage {
            reference: image.to_string(),
            id,
        })
    }
}

/// An ImageSpec naming `image`.
pub fn spec(image: &str) -> cri::ImageSpec {
    cri::ImageSpec {
        image: image.to_string(),
        ..Default::default()
    }
}

/// 8 hex digits from the clock and the pid: unique enough for objects of one runtime.
fn run_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mixed = (nanos as u64) ^ ((std::process::id() as u64) << 40);
    format!("{:08x}", (mixed ^ (mixed >> 32)) as u32)
}
