//! From a top-level manifest to what an image is made of: this host's platform chosen
//! from an index, the config fetched and verified, the layers with their diff_ids.
//! Shared by the pull and the import; the bytes come from a [`BlobSource`].

use bytes::Bytes;
use futures_util::TryStreamExt;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::{ErrorKind, Result};
use crate::reference::is_sha256_digest;
use crate::source::{BlobSource, Job};
use crate::store::LayerRef;

pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// The largest manifest, index or config accepted, as in containerd: real ones are a
/// few KiB, and each is held in memory whole.
pub(crate) const MAX_METADATA_BYTES: u64 = 4 << 20;
pub(crate) const METADATA_RULE: &str = "the 4 MiB cap on manifests, indexes and configs";

/// A content descriptor as manifests and indexes carry it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default)]
    pub(crate) media_type: String,
    pub(crate) digest: String,
    #[serde(default)]
    pub(crate) size: i64,
    #[serde(default)]
    pub(crate) platform: Option<Platform>,
}

/// The platform an index entry is built for.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Platform {
    #[serde(default)]
    pub(crate) architecture: String,
    #[serde(default)]
    pub(crate) os: String,
    #[serde(default)]
    pub(crate) variant: Option<String>,
}

/// An image manifest or an index, told apart by their fields.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestDoc {
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

/// The parts of an image config a pull needs.
#[derive(Debug, Deserialize)]
struct ConfigDoc {
    rootfs: RootFs,
}

#[derive(Debug, Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// What an image is made of, before its layers are fetched.
pub(crate) struct Resolved {
    /// The digest of what the reference names (an index's digest when it names one).
    pub(crate) top_digest: String,
    /// The config digest: the image id.
    pub(crate) config_digest: String,
    /// The config blob.
    pub(crate) config: String,
    /// Layers with their diff_ids, lowest first.
    pub(crate) layers: Vec<LayerRef>,
}

/// The host's platform in the GOARCH/GOOS words that indexes use.
pub(crate) fn host_platform() -> (&'static str, Option<&'static str>) {
    match std::env::consts::ARCH {
        "x86_64" => ("amd64", None),
        "aarch64" => ("arm64", Some("v8")),
        "arm" => ("arm", Some("v7")),
        "x86" => ("386", None),
        "powerpc64" => ("ppc64le", None),
        "s390x" => ("s390x", None),
        "riscv64" => ("riscv64", None),
        other => (other, None),
    }
}

/// Picks this host's entry from an index: linux, our architecture, and the variant when
/// both sides name one (arm64 entries often omit `v8`).
pub(crate) fn choose_platform<'a>(
    entries: &'a [Descriptor],
    arch: &str,
    variant: Option<&str>,
) -> Option<&'a Descriptor> {
    let candidates = entries.iter().filter(|d| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == "linux" && p.architecture == arch)
    });
    let mut fallback = None;
    for d in candidates {
        let theirs = d.platform.as_ref().and_then(|p| p.variant.as_deref());
        match (theirs, variant) {
            (Some(a), Some(b)) if a == b => return Some(d),
            (None, _) | (_, None) => {
                fallback.get_or_insert(d);
            }
            _ => {}
        }
    }
    fallback
}

/// `sha256:<hex>` of `bytes`.
pub(crate) fn sha256_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Fetches the manifest or index `digest` of `size` bytes (as its descriptor says)
/// through `source`, refusing one past the cap before asking for it and checking its
/// length and digest after.
pub(crate) async fn fetch_manifest<S: BlobSource>(
    job: &Job,
    source: &S,
    digest: &str,
    size: u64,
) -> Result<Bytes> {
    if !is_sha256_digest(digest) {
        return Err(job.bad(format!("bad manifest digest {digest:?}")));
    }
    let too_large = || {
        job.too_large(
            format!("manifest {digest}"),
            MAX_METADATA_BYTES,
            METADATA_RULE,
        )
    };
    if size > MAX_METADATA_BYTES {
        return Err(too_large());
    }
    let bytes = source.manifest(job, digest, size).await?;
    if bytes.len() as u64 > MAX_METADATA_BYTES {
        return Err(too_large());
    }
    let actual = sha256_of(&bytes);
    if actual != digest {
        return Err(job.mismatch("manifest", digest, actual));
    }
    Ok(bytes)
}

/// Resolves the top-level manifest or index `top` (whose digest is `top_digest`) down
/// to a config and a layer list, fetching what it points to through `source`.
pub(crate) async fn resolve<S: BlobSource>(
    job: &Job,
    source: &S,
    top: Bytes,
    top_digest: String,
) -> Result<Resolved> {
    let mut doc: ManifestDoc =
        serde_json::from_slice(&top).map_err(|e| job.bad(format!("manifest {top_digest}: {e}")))?;
    if doc.schema_version == Some(1) {
        return Err(job.bad("docker schema 1 manifests are not supported"));
    }
    if let Some(entries) = doc.manifests.take() {
        let (arch, variant) = host_platform();
        let entry = choose_platform(&entries, arch, variant).ok_or_else(|| {
            job.source_error(
                format!("index {top_digest} has no manifest for linux/{arch}"),
                ErrorKind::NotFound,
            )
        })?;
        let bytes = fetch_manifest(job, source, &entry.digest, entry.size.max(0) as u64).await?;
        doc = serde_json::from_slice(&bytes)
            .map_err(|e| job.bad(format!("manifest {}: {e}", entry.digest)))?;
        if doc.manifests.is_some() {
            return Err(job.bad(format!(
                "manifest {}: an index inside an index",
                entry.digest
            )));
        }
    }
    if let Some(mt) = doc.media_type.as_deref()
        && mt != OCI_MANIFEST
        && mt != DOCKER_MANIFEST
    {
        return Err(job.bad(format!("unsupported manifest media type {mt}")));
    }
    let (Some(config), Some(layers)) = (doc.config, doc.layers) else {
        return Err(job.bad("manifest has no config or no layers"));
    };
    if !is_sha256_digest(&config.digest) {
        return Err(job.bad(format!("config has a bad digest {:?}", config.digest)));
    }
    if config.size.max(0) as u64 > MAX_METADATA_BYTES {
        return Err(job.too_large(
            format!("config {}", config.digest),
            MAX_METADATA_BYTES,
            METADATA_RULE,
        ));
    }
    let config_bytes = fetch_config(job, source, &config).await?;
    let actual = sha256_of(&config_bytes);
    if actual != config.digest {
        return Err(job.mismatch("config", &config.digest, actual));
    }
    let config_text =
        String::from_utf8(config_bytes).map_err(|_| job.bad("config is not utf-8"))?;
    let parsed: ConfigDoc = serde_json::from_str(&config_text)
        .map_err(|e| job.bad(format!("config {}: {e}", config.digest)))?;
    if parsed.rootfs.diff_ids.len() != layers.len() {
        return Err(job.bad(format!(
            "config lists {} diff_ids for {} layers",
            parsed.rootfs.diff_ids.len(),
            layers.len()
        )));
    }
    let mut layer_refs = Vec::with_capacity(layers.len());
    for (layer, diff_id) in layers.iter().zip(parsed.rootfs.diff_ids) {
        if !is_sha256_digest(&layer.digest) || !is_sha256_digest(&diff_id) {
            return Err(job.bad(format!(
                "layer {} / diff_id {diff_id}: bad digest",
                layer.digest
            )));
        }
        if !is_layer_media_type(&layer.media_type) {
            return Err(job.bad(format!(
                "layer {}: unsupported media type {}",
                layer.digest, layer.media_type
            )));
        }
        layer_refs.push(LayerRef {
            diff_id,
            digest: layer.digest.clone(),
            size: layer.size.max(0) as u64,
        });
    }
    Ok(Resolved {
        top_digest,
        config_digest: config.digest,
        config: config_text,
        layers: layer_refs,
    })
}

/// Fetches the config blob, reading no more than its descriptor's size.
async fn fetch_config<S: BlobSource>(
    job: &Job,
    source: &S,
    config: &Descriptor,
) -> Result<Vec<u8>> {
    let size = config.size.max(0) as u64;
    let mut blob = source.blob(job, &config.digest, size).await?;
    let mut out = Vec::with_capacity(size as usize);
    loop {
        match blob.stream.try_next().await {
            Ok(Some(bytes)) => {
                if (out.len() + bytes.len()) as u64 > size {
                    return Err(job.too_large(
                        format!("config {}", config.digest),
                        size,
                        "the size its descriptor gives",
                    ));
                }
                out.extend_from_slice(&bytes);
            }
            Ok(None) => break,
            // The digest check below names both digests.
            Err(e) if e.digest_check => break,
            Err(e) => {
                return Err(job.source_error(
                    format!(
                        "{}: config {}: {}",
                        source.origin(),
                        config.digest,
                        e.message
                    ),
                    ErrorKind::Unavailable,
                ));
            }
        }
    }
    Ok(out)
}

fn is_layer_media_type(mt: &str) -> bool {
    // Compression is sniffed from the bytes, so any tar layer type is accepted.
    mt.starts_with("application/vnd.oci.image.layer.")
        || mt.starts_with("application/vnd.docker.image.rootfs.")
        || mt.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(arch: &str, variant: Option<&str>, digest: &str) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: digest.into(),
            size: 1,
            platform: Some(Platform {
                architecture: arch.into(),
                os: "linux".into(),
                variant: variant.map(str::to_string),
            }),
        }
    }

    #[test]
    fn platform_choice_prefers_exact_variant() {
        let entries = vec![
            entry("amd64", None, "a"),
            entry("arm", Some("v6"), "b"),
            entry("arm", Some("v7"), "c"),
            entry("arm64", None, "d"),
        ];
        assert_eq!(
            choose_platform(&entries, "amd64", None).unwrap().digest,
            "a"
        );
        assert_eq!(
            choose_platform(&entries, "arm", Some("v7")).unwrap().digest,
            "c"
        );
        assert_eq!(
            choose_platform(&entries, "arm64", Some("v8"))
                .unwrap()
                .digest,
            "d"
        );
        assert!(choose_platform(&entries, "s390x", None).is_none());
        let windows = vec![Descriptor {
            platform: Some(Platform {
                architecture: "amd64".into(),
                os: "windows".into(),
                variant: None,
            }),
            ..entry("amd64", None, "w")
        }];
        assert!(choose_platform(&windows, "amd64", None).is_none());
    }
}
