//! Writing an image as an OCI image layout directory (`oci-layout`, `index.json`,
//! `blobs/sha256/…`), which `skopeo copy oci:DIR:TAG docker://…` pushes to a registry.
//! Layers are gzip tars; everything is deterministic, so the same input always gives
//! the same digests.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// OCI manifest media type.
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI config media type.
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI gzip layer media type.
const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Modification time of every tar entry and the image's `created` (2023-11-14T22:13:20Z).
pub const MTIME: u64 = 1_700_000_000;
const CREATED: &str = "2023-11-14T22:13:20Z";

/// A blob written into the layout.
#[derive(Debug, Clone)]
struct Descriptor {
    media_type: &'static str,
    digest: String,
    size: usize,
}

impl Descriptor {
    fn json(&self) -> Value {
        json!({ "mediaType": self.media_type, "digest": self.digest, "size": self.size })
    }
}

/// An image being written into a layout directory.
pub struct Layout {
    dir: PathBuf,
    layers: Vec<Descriptor>,
    diff_ids: Vec<String>,
}

impl Layout {
    /// Creates the layout skeleton in `dir`.
    pub fn create(dir: &Path) -> anyhow::Result<Layout> {
        std::fs::create_dir_all(dir.join("blobs/sha256"))
            .with_context(|| format!("create {}", dir.display()))?;
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        Ok(Layout {
            dir: dir.to_path_buf(),
            layers: Vec::new(),
            diff_ids: Vec::new(),
        })
    }

    /// Adds a layer from its uncompressed tar, gzip-compressed.
    pub fn add_layer(&mut self, tar: &[u8]) -> anyhow::Result<()> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(tar)?;
        let compressed = gz.finish()?;
        self.diff_ids.push(digest(tar));
        let descriptor = self.blob(LAYER_GZIP, &compressed)?;
        self.layers.push(descriptor);
        Ok(())
    }

    /// Writes the config (with `config` as its runtime config), the manifest and the
    /// index naming it `tag`. Returns the manifest digest.
    pub fn finish(self, config: Value, tag: &str) -> anyhow::Result<String> {
        let history: Vec<Value> = (0..self.layers.len())
            .map(|n| json!({ "created": CREATED, "created_by": format!("crust-bench layer {n}") }))
            .collect();
        let image_config = json!({
            "architecture": host_arch(),
            "os": "linux",
            "created": CREATED,
            "config": config,
            "rootfs": { "type": "layers", "diff_ids": self.diff_ids },
            "history": history,
        });
        let config = self.blob(CONFIG, &serde_json::to_vec(&image_config)?)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": config.json(),
            "layers": self.layers.iter().map(Descriptor::json).collect::<Vec<_>>(),
        });
        let manifest = self.blob(MANIFEST, &serde_json::to_vec(&manifest)?)?;
        let mut entry = manifest.json();
        entry["annotations"] = json!({ "org.opencontainers.image.ref.name": tag });
        let index = json!({ "schemaVersion": 2, "manifests": [entry] });
        std::fs::write(self.dir.join("index.json"), serde_json::to_vec(&index)?)?;
        Ok(manifest.digest)
    }

    fn blob(&self, media_type: &'static str, data: &[u8]) -> anyhow::Result<Descriptor> {
        let digest = digest(data);
        let path = self
            .dir
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"));
        std::fs::write(&path, data).with_context(|| format!("write {}", path.display()))?;
        Ok(Descriptor {
            media_type,
            digest,
            size: data.len(),
        })
    }
}

/// `sha256:<hex>` of `data`.
fn digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// The host's architecture as OCI (Go's GOARCH) names it, so runtimes accept the image.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

/// Builds a layer tar entry by entry: root-owned, dated [`MTIME`].
pub struct TarLayer {
    tar: tar::Builder<Vec<u8>>,
}

impl Default for TarLayer {
    fn default() -> Self {
        TarLayer {
            tar: tar::Builder::new(Vec::new()),
        }
    }
}

impl TarLayer {
    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(MTIME);
        h.set_size(size);
        h
    }

    /// A directory.
    pub fn dir(&mut self, path: &str, mode: u32) -> anyhow::Result<()> {
        let mut h = Self::header(tar::EntryType::Directory, mode, 0);
        self.tar.append_data(&mut h, path, std::io::empty())?;
        Ok(())
    }

    /// A regular file.
    pub fn file(&mut self, path: &str, data: &[u8], mode: u32) -> anyhow::Result<()> {
        let mut h = Self::header(tar::EntryType::Regular, mode, data.len() as u64);
        self.tar.append_data(&mut h, path, data)?;
        Ok(())
    }

    /// A symlink to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> anyhow::Result<()> {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.tar.append_link(&mut h, path, target)?;
        Ok(())
    }

    /// The finished tar.
    pub fn finish(self) -> anyhow::Result<Vec<u8>> {
        Ok(self.tar.into_inner()?)
    }
}
