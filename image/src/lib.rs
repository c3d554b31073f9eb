//! Images: references, the registry client, imports from containerd, safe layer
//! unpacking, the layer store and image records.
//!
//! [`ImageService`] is the whole of it as the daemon sees it: pull, import, list, look
//! up, remove, and the usage numbers of ImageFsInfo. Every read is served from memory; the
//! records live in the daemon's redb database, in the tables this crate owns
//! (`images`, `layers`).
#![deny(missing_docs)]

mod containerd;
pub mod error;
mod fetch;
pub mod hosts;
pub mod layers;
mod manifest;
mod pull;
pub mod reference;
pub mod registry;
mod registry_http;
mod registry_manifest;
mod registry_token;
pub mod rootfs;
mod source;
pub mod store;
pub mod unpack;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use redb::Database;
use tokio_util::sync::CancellationToken;

pub use containerd::{Containerd, ImportOutcome};
pub use error::{ErrorKind, ImageError, Op, Result};
use layers::LayerStore;
use reference::{ImageRef, is_image_id};
use registry::Registries;
pub use registry::{Credentials, RegistryOptions};
use source::{BlobSource, Job};
use store::ImageIndex;
pub use store::{ImageRecord, LayerRef};

/// Nanoseconds since the epoch, now.
pub(crate) use crust_util::time::now_nanos;

/// Whether `path` is a mountpoint (from /proc/self/mountinfo).
use crust_util::mountinfo::is_mount_point as is_mountpoint;

/// What a finished pull reports.
#[derive(Debug, Clone)]
pub struct PullOutcome {
    /// The image as recorded.
    pub image: Arc<ImageRecord>,
    /// Compressed bytes downloaded for layers (0 when every layer was present).
    pub bytes_downloaded: u64,
}

/// Images on this node.
pub struct ImageService {
    db: Arc<Database>,
    layers: Arc<LayerStore>,
    registries: Registries,
    index: RwLock<ImageIndex>,
    /// Serializes changes to image records, so a pull's commit and a removal never
    /// interleave between the table write and the index update.
    meta: tokio::sync::Mutex<()>,
    /// Layers held by containers' root filesystems, by container id.
    pins: std::sync::Mutex<std::collections::HashMap<String, rootfs::Pin>>,
    /// Where containers' writable layers live.
    containers_dir: PathBuf,
}

impl ImageService {
    /// Opens the image store under `root` and reconciles records with the disk.
    pub fn open(root: PathBuf, db: Arc<Database>, options: RegistryOptions) -> Result<Self> {
        let layers = Arc::new(LayerStore::open(root.join("layers"), Arc::clone(&db))?);
        let mut index = ImageIndex::default();
        let mut broken = Vec::new();
        for record in store::load_all(&db)? {
            if let Some(missing) = record.layers.iter().find(|l| !layers.contains(&l.diff_id)) {
                tracing::warn!(image = %record.id, layer = %missing.diff_id, "image lost a layer; forgetting it");
                broken.push(record.id.clone());
                continue;
            }
            index.insert(Arc::new(record));
        }
        let refs: Vec<&str> = broken.iter().map(String::as_str).collect();
        store::write(&db, &[], &refs)?;
        let pins = rootfs::load(&db)?;
        layers::private_dir(&root.join("containers"))?;
        let service = ImageService {
            pins: std::sync::Mutex::new(pins),
            containers_dir: root.join("containers"),
            db,
            layers,
            registries: Registries::new(options),
            index: RwLock::new(index),
            meta: tokio::sync::Mutex::new(()),
        };
        let removed = service.layers.gc(&service.referenced_layers())?;
        if !removed.ids.is_empty() {
            tracing::info!(count = removed.ids.len(), "removed layers no image uses");
        }
        removed.delete();
        Ok(service)
    }

    fn read(&self) -> RwLockReadGuard<'_, ImageIndex> {
        // Index updates are single inserts and removes; a panic cannot leave it torn.
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, ImageIndex> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The layer store, for callers that mount layers.
    pub fn layer_store(&self) -> &Arc<LayerStore> {
        &self.layers
    }

    /// Pulls `reference` and records it. `auth` overrides configured credentials.
    /// Cancelling `cancel` stops the pull and leaves nothing of it behind.
    pub async fn pull(
        &self,
        reference: &str,
        auth: Option<&Credentials>,
        cancel: CancellationToken,
    ) -> Result<PullOutcome> {
        let image = ImageRef::parse(reference)?;
        let job = Job::new(Op::Pull, image.to_string());
        let mut last_error = None;
        let mut resolved = None;
        for route in self.registries.routes(&image, auth)? {
            let endpoint = route.endpoint.clone();
            let withheld = route.withheld.clone();
            let attempt = tokio::select! {
                r = pull::resolve(&job, route) => r,
                _ = cancel.cancelled() => return Err(job.cancelled()),
            };
            match attempt {
                Ok(r) => {
                    resolved = Some(r);
                    break;
                }
                Err(e) => {
                    let e = match withheld {
                        Some(why) => e.with_hint(&why),
                        None => e,
                    };
                    tracing::debug!(image = %job.name, %endpoint, error = %e, "endpoint failed");
                    last_error = Some(e);
                }
            }
        }
        let (resolved, source) = match (resolved, last_error) {
            (Some(r), _) => r,
            (None, Some(e)) => return Err(e),
            (None, None) => return Err(ImageError::NotFound(job.name)),
        };
        self.install(&job, &image, Arc::new(source), resolved, cancel)
            .await
    }

    /// Streams the layers of a resolved image from `source` into the layer store and
    /// records the image under `image`'s names: the end of a pull and of an import.
    /// On failure nothing of it is left: no record, and the layers it committed are
    /// collected.
    async fn install<S: BlobSource>(
        &self,
        job: &Job,
        image: &ImageRef,
        source: Arc<S>,
        resolved: manifest::Resolved,
        cancel: CancellationToken,
    ) -> Result<PullOutcome> {
        let lease = self
            .layers
            .lease(resolved.layers.iter().map(|l| l.diff_id.clone()));
        let options = self.registries.options();
        let limits = unpack::Limits {
            layer_bytes: options.max_layer_unpacked_bytes,
            image: Some(Arc::new(unpack::ImageBudget::new(
                options.max_image_unpacked_bytes,
            ))),
        };
        let fetched = fetch::fetch_layers(
            &self.layers,
            job,
            &source,
            &resolved.layers,
            &limits,
            &cancel,
        )
        .await;
        let outcome = match fetched {
            Ok(bytes) if !cancel.is_cancelled() => {
                self.commit(image, resolved).await.map(|image| PullOutcome {
                    image,
                    bytes_downloaded: bytes,
                })
            }
            Ok(_) => Err(job.cancelled()),
            Err(e) => Err(e),
        };
        drop(lease);
        if outcome.is_err() {
            // Layers this job committed but no image records are garbage now.
            let meta = self.meta.lock().await;
            match self.collect_layers().await {
                Ok(collected) => {
                    drop(meta);
                    delete_collected(collected).await;
                }
                Err(e) => tracing::warn!(error = %e, "layer cleanup after a failed {}", job.op),
            }
        }
        outcome
    }

    async fn commit(
        &self,
        image: &ImageRef,
        resolved: manifest::Resolved,
    ) -> Result<Arc<ImageRecord>> {
        let size =
            resolved.config.len() as u64 + resolved.layers.iter().map(|l| l.size).sum::<u64>();
        let mut names = Vec::new();
        if image.tag().is_some() {
            names.push(image.to_string());
        }
        let digest_name = image.with_digest(&resolved.top_digest);
        let _meta = self.meta.lock().await;
        let (record, others) = {
            let index = self.read();
            let mut record = match index.by_id.get(&resolved.config_digest) {
                Some(existing) => (**existing).clone(),
                None => ImageRecord::new(
                    resolved.config_digest.clone(),
                    resolved.layers.clone(),
                    resolved.config.clone(),
                    size,
                ),
            };
            for tag in &names {
                if !record.repo_tags.contains(tag) {
                    record.repo_tags.push(tag.clone());
                }
            }
            if !record.repo_digests.contains(&digest_name) {
                record.repo_digests.push(digest_name.clone());
            }
            // A tag that named another image moves to this one.
            let mut others: Vec<ImageRecord> = Vec::new();
            for tag in &names {
                if let Some(owner) = index.by_name.get(tag).filter(|o| **o != record.id)
                    && let Some(other) = index.by_id.get(owner)
                {
                    let mut other = others
                        .iter()
                        .position(|o| o.id == other.id)
                        .map(|i| others.remove(i))
                        .unwrap_or_else(|| (**other).clone());
                    other.repo_tags.retain(|t| t != tag);
                    others.push(other);
                }
            }
            (record, others)
        };
        let (db, put) = (Arc::clone(&self.db), {
            let mut put = vec![record.clone()];
            put.extend(others.iter().cloned());
            put
        });
        blocking("store image", move || {
            store::write(&db, &put.iter().collect::<Vec<_>>(), &[])
        })
        .await?;
        let record = Arc::new(record);
        let mut index = self.write();
        for other in others {
            index.insert(Arc::new(other));
        }
        index.insert(Arc::clone(&record));
        Ok(record)
    }

    /// Finds an image by id (`sha256:…` or bare hex), tag or digest reference.
    pub fn resolve(&self, name: &str) -> Option<Arc<ImageRecord>> {
        let index = self.read();
        if is_image_id(name) {
            let id = if name.starts_with("sha256:") {
                name.to_string()
            } else {
                format!("sha256:{name}")
            };
            return index.by_id.get(&id).cloned();
        }
        let normalized = ImageRef::parse(name).ok()?.to_string();
        let id = index.by_name.get(&normalized)?;
        index.by_id.get(id).cloned()
    }

    /// Every image, in no particular order.
    pub fn list(&self) -> Vec<Arc<ImageRecord>> {
        self.read().by_id.values().cloned().collect()
    }

    /// Removes an image by id (with all its names), or one of its names (and the image
    /// with its last tag). Absent images are not an error. Layers no longer used go too.
    pub async fn remove(&self, name: &str) -> Result<()> {
        let meta = self.meta.lock().await;
        let Some(record) = self.resolve(name) else {
            return Ok(());
        };
        let by_id = is_image_id(name);
        let normalized = if by_id {
            None
        } else {
            ImageRef::parse(name).ok().map(|r| r.to_string())
        };
        let mut updated = (*record).clone();
        if let Some(n) = &normalized {
            updated.repo_tags.retain(|t| t != n);
            updated.repo_digests.retain(|d| d != n);
        }
        let db = Arc::clone(&self.db);
        if by_id || updated.repo_tags.is_empty() {
            let id = record.id.clone();
            blocking("remove image", move || {
                store::write(&db, &[], &[id.as_str()])
            })
            .await?;
            self.write().remove(&record.id);
        } else {
            let put = updated.clone();
            blocking("store image", move || store::write(&db, &[&put], &[])).await?;
            self.write().insert(Arc::new(updated));
        }
        let collected = self.collect_layers().await?;
        drop(meta);
        delete_collected(collected).await;
        Ok(())
    }

    /// Bytes and inodes used by unpacked layers, and where they live.
    pub fn usage(&self) -> (PathBuf, u64, u64) {
        let (bytes, inodes) = self.layers.usage();
        (self.layers.dir().to_path_buf(), bytes, inodes)
    }

    /// Takes unreferenced layers out of the store (records deleted, a durable
    /// commit, on a blocking thread); the caller holds `meta`, so that no record or
    /// pin appears meanwhile, and deletes the trees once it let go.
    async fn collect_layers(&self) -> Result<layers::Collected> {
        let (layers, referenced) = (Arc::clone(&self.layers), self.referenced_layers());
        blocking("collect layers", move || layers.gc(&referenced)).await
    }

    fn referenced_layers(&self) -> HashSet<String> {
        let mut used: HashSet<String> = self
            .read()
            .by_id
            .values()
            .flat_map(|r| r.layers.iter().map(|l| l.diff_id.clone()))
            .collect();
        used.extend(rootfs::pinned(
            &self.pins.lock().unwrap_or_else(|p| p.into_inner()),
        ));
        used
    }

    /// Creates and mounts a container's root filesystem at `mountpoint`: the image's
    /// layers under a writable layer of its own (in `root/containers/<id>`). With
    /// `idmap` (a pod with its own user namespace) the layers are shown through those
    /// mappings, so the host's root files are the container root's, and the writable
    /// layer is that root's. The layers stay pinned until [`ImageService::remove_rootfs`].
    pub async fn create_rootfs(
        &self,
        image: &ImageRecord,
        container_id: &str,
        mountpoint: &std::path::Path,
        idmap: Option<crust_util::userns::IdMappings>,
    ) -> Result<PathBuf> {
        let _meta = self.meta.lock().await;
        if let Some(missing) = image
            .layers
            .iter()
            .find(|l| !self.layers.contains(&l.diff_id))
        {
            return Err(ImageError::NotFound(format!(
                "{} (layer {} is gone)",
                image.id, missing.diff_id
            )));
        }
        let pin = rootfs::Pin {
            diff_ids: image.layers.iter().map(|l| l.diff_id.clone()).collect(),
            mountpoint: mountpoint.to_path_buf(),
            rw_dir: self.containers_dir.join(container_id),
            idmap,
        };
        // Pinned in memory under the lock, which is all a collection looks at; the
        // durable pin and the mount follow without it, so creates mount in parallel.
        self.pins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(container_id.to_string(), pin.clone());
        drop(_meta);
        let (db, id, lower) = (
            Arc::clone(&self.db),
            container_id.to_owned(),
            self.lower_dirs(&pin),
        );
        // Pin before mounting: a crash after this leaves a pin that remove_rootfs (or
        // recovery through it) releases, never a mount whose layers were collected.
        let result = blocking("mount rootfs", move || {
            rootfs::put(&db, &id, &pin)?;
            mount_pin(&pin, &lower)
        })
        .await;
        if result.is_err() {
            let _ = self.remove_rootfs(container_id).await;
        }
        result
    }

    /// The overlay lower directories of `pin`, topmost first.
    fn lower_dirs(&self, pin: &rootfs::Pin) -> Vec<PathBuf> {
        pin.diff_ids
            .iter()
            .rev()
            .map(|d| self.layers.path(d))
            .collect()
    }

    /// Mounts a pinned rootfs again if it is not mounted (after a reboot emptied the
    /// state directory); returns the mountpoint.
    pub fn ensure_rootfs_mounted(&self, container_id: &str) -> Result<PathBuf> {
        let pin = self
            .pins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(container_id)
            .cloned()
            .ok_or_else(|| ImageError::NotFound(format!("rootfs of container {container_id}")))?;
        if is_mountpoint(&pin.mountpoint) {
            return Ok(pin.mountpoint);
        }
        mount_pin(&pin, &self.lower_dirs(&pin))
    }

    /// Unmounts and deletes a container's rootfs and writable layer and unpins its
    /// layers. Absent is fine. The unmount and the deletion of the writable layer (which
    /// can hold gigabytes) run on a blocking thread without the metadata lock, so other
    /// creates and pulls go on meanwhile; only the unpinning takes the lock.
    pub async fn remove_rootfs(&self, container_id: &str) -> Result<()> {
        let pin = self
            .pins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(container_id)
            .cloned();
        let Some(pin) = pin else {
            return Ok(());
        };
        let (mountpoint, rw_dir) = (pin.mountpoint.clone(), pin.rw_dir.clone());
        tokio::task::spawn_blocking(move || -> Result<()> {
            rootfs::unmount(&mountpoint)
                .map_err(|e| ImageError::io(format!("unmount {}", mountpoint.display()), e))?;
            let _ = std::fs::remove_dir(&mountpoint);
            match std::fs::remove_dir_all(&rw_dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(ImageError::io(format!("remove {}", rw_dir.display()), e))
                }
                _ => Ok(()),
            }
        })
        .await
        .map_err(|e| ImageError::io("remove rootfs", std::io::Error::other(e)))??;
        let meta = self.meta.lock().await;
        let (db, id) = (Arc::clone(&self.db), container_id.to_owned());
        tokio::task::spawn_blocking(move || rootfs::delete(&db, &id))
            .await
            .map_err(|e| ImageError::io("unpin rootfs", std::io::Error::other(e)))??;
        self.pins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(container_id);
        // Layers of an image removed while this container used them go now.
        let collected = self.collect_layers().await?;
        drop(meta);
        delete_collected(collected).await;
        Ok(())
    }

    /// Removes the writable layers that no pin names: a create that died after
    /// pinning without a durable commit (see `rootfs::put`) and after mounting. Call it
    /// once the mounts of rootfs without an owner are detached. Returns how many.
    pub async fn remove_unpinned(&self) -> usize {
        let pinned: HashSet<PathBuf> = self
            .pins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|p| p.rw_dir.clone())
            .collect();
        let dir = self.containers_dir.clone();
        tokio::task::spawn_blocking(move || {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                return 0;
            };
            let mut removed = 0;
            for path in entries.flatten().map(|e| e.path()) {
                if pinned.contains(&path) {
                    continue;
                }
                match std::fs::remove_dir_all(&path) {
                    Ok(()) => removed += 1,
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "remove an unpinned writable layer")
                    }
                }
            }
            removed
        })
        .await
        .unwrap_or(0)
    }

    /// Ids of containers holding a rootfs.
    pub fn rootfs_owners(&self) -> Vec<String> {
        self.pins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// The writable layer directory of a container (for usage stats).
    pub fn writable_layer(&self, container_id: &str) -> Option<PathBuf> {
        self.pins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(container_id)
            .map(|p| p.rw_dir.join("fs"))
    }
}

/// Runs blocking `work` (fsyncs, mounts) on a blocking thread.
async fn blocking<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ImageError::io(what, std::io::Error::other(e)))?
}

/// Mounts a pinned rootfs: `lower` under its writable layer. Blocking.
fn mount_pin(pin: &rootfs::Pin, lower: &[PathBuf]) -> Result<PathBuf> {
    let upper = pin.rw_dir.join("fs");
    let work = pin.rw_dir.join("work");
    for d in [&upper, &work] {
        std::fs::create_dir_all(d)
            .map_err(|e| ImageError::io(format!("create {}", d.display()), e))?;
    }
    // The upper directory's attributes are those of the container's `/`: 0755 as
    // containerd's snapshotter makes it, so containers running as any user can
    // walk their rootfs. Its parent (`containers/<id>`) stays 0700: overlayfs
    // reaches it with root's credentials, host users cannot.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&upper, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| ImageError::io(format!("chmod {}", upper.display()), e))?;
    }
    let Some(maps) = &pin.idmap else {
        let options = rootfs::overlay_options(lower, &upper, &work)?;
        rootfs::mount_overlay(&options, &pin.mountpoint).map_err(|e| {
            ImageError::io(format!("mount rootfs at {}", pin.mountpoint.display()), e)
        })?;
        return Ok(pin.mountpoint.clone());
    };
    // The writable layer is the namespace root's, as its `/` (containerd chowns its
    // snapshot the same way); what the container writes lands there with host ids.
    let (uid, gid) = maps
        .host_root()
        .ok_or_else(|| ImageError::Store("user namespace mappings do not map root".into()))?;
    std::os::unix::fs::chown(&upper, Some(uid), Some(gid))
        .map_err(|e| ImageError::io(format!("chown {}", upper.display()), e))?;
    let staging = pin.rw_dir.join("lower");
    let result = mount_idmapped(pin, maps, lower, &staging, &upper, &work);
    // Overlayfs holds private clones of its layers: the staged ones go either way.
    rootfs::unstage_lower(&staging);
    result
}

/// Mounts the overlay of `pin` over idmapped clones of `lower`, attached below
/// `staging` for the mount call. Blocking.
fn mount_idmapped(
    pin: &rootfs::Pin,
    maps: &crust_util::userns::IdMappings,
    lower: &[PathBuf],
    staging: &std::path::Path,
    upper: &std::path::Path,
    work: &std::path::Path,
) -> Result<PathBuf> {
    let ns = maps
        .open_userns()
        .map_err(|e| ImageError::io("make a user namespace for idmapped layers", e))?;
    let mut staged = Vec::with_capacity(lower.len());
    for (i, layer) in lower.iter().enumerate() {
        let target = staging.join(i.to_string());
        std::fs::create_dir_all(&target)
            .map_err(|e| ImageError::io(format!("create {}", target.display()), e))?;
        crust_util::mount_tree::attach(
            layer,
            &target,
            crust_util::mount_tree::TreeAttrs {
                idmap: Some(std::os::fd::AsFd::as_fd(&ns)),
                ..Default::default()
            },
        )
        .map_err(|e| ImageError::io(format!("idmapped mount of {}", layer.display()), e))?;
        staged.push(target);
    }
    let options = rootfs::overlay_options(&staged, upper, work)?;
    rootfs::mount_overlay(&options, &pin.mountpoint)
        .map_err(|e| ImageError::io(format!("mount rootfs at {}", pin.mountpoint.display()), e))?;
    Ok(pin.mountpoint.clone())
}

/// Deletes the trees a layer GC moved aside, on a blocking thread.
async fn delete_collected(collected: layers::Collected) {
    if let Err(e) = tokio::task::spawn_blocking(move || collected.delete()).await {
        tracing::warn!(error = %e, "layer deletion task failed");
    }
}
