//! Building OCI and Docker images in memory and pushing them to a test registry.
//!
//! Layers are written with [`LayerBuilder`], images described by an [`ImageSpec`] and
//! turned into exact bytes by [`build_image`]; [`push_image`], [`push_index`] and
//! [`push_manifest_list`] push them with oci-client. Everything is deterministic (fixed
//! modification times, sorted JSON keys), so the same spec always has the same digests.
//!
//! The helpers panic on failure: they are test set-up, not code under test.

use std::io::Write;
use std::sync::OnceLock;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI uncompressed layer.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI gzip layer.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI zstd layer.
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker uncompressed layer.
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// Docker gzip layer.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Every manifest media type, for `Accept` headers.
pub const ALL_MANIFEST_TYPES: [&str; 4] = [
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
];

/// Modification time of every tar entry (2023-11-14T22:13:20Z), for stable digests.
const LAYER_MTIME: u64 = 1_700_000_000;

/// `created` time written into image configs.
const CREATED: &str = "2023-11-14T22:13:20Z";

/// `PATH` set by [`busybox_image`].
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
    None,
}

impl Compression {
    /// Compresses an uncompressed layer tar.
    pub fn compress(self, tar: &[u8]) -> Vec<u8> {
        match self {
            Compression::Gzip => {
                // flate2 writes a zero mtime into the gzip header, so output is stable.
                let mut encoder =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                encoder.write_all(tar).expect("gzip layer");
                encoder.finish().expect("gzip layer")
            }
            Compression::Zstd => zstd::encode_all(tar, 3).expect("zstd layer"),
            Compression::None => tar.to_vec(),
        }
    }
}

/// Which family of media types an image uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaKind {
    /// OCI image manifest, config, layers and index.
    Oci,
    /// Docker schema 2 manifest, config, layers and manifest list.
    Docker2,
}

impl MediaKind {
    pub fn manifest_type(self) -> &'static str {
        match self {
            MediaKind::Oci => OCI_MANIFEST,
            MediaKind::Docker2 => DOCKER_MANIFEST,
        }
    }

    pub fn index_type(self) -> &'static str {
        match self {
            MediaKind::Oci => OCI_INDEX,
            MediaKind::Docker2 => DOCKER_MANIFEST_LIST,
        }
    }

    pub fn config_type(self) -> &'static str {
        match self {
            MediaKind::Oci => OCI_CONFIG,
            MediaKind::Docker2 => DOCKER_CONFIG,
        }
    }

    /// The layer media type; Docker schema 2 has no zstd type, so that panics.
    pub fn layer_type(self, compression: Compression) -> &'static str {
        match (self, compression) {
            (MediaKind::Oci, Compression::Gzip) => OCI_LAYER_GZIP,
            (MediaKind::Oci, Compression::Zstd) => OCI_LAYER_ZSTD,
            (MediaKind::Oci, Compression::None) => OCI_LAYER_TAR,
            (MediaKind::Docker2, Compression::Gzip) => DOCKER_LAYER_GZIP,
            (MediaKind::Docker2, Compression::None) => DOCKER_LAYER_TAR,
            (MediaKind::Docker2, Compression::Zstd) => {
                panic!("docker schema 2 has no zstd layer media type; use MediaKind::Oci")
            }
        }
    }
}

/// One layer of an image: its uncompressed tar and how to compress it for the registry.
#[derive(Clone, Debug)]
pub struct Layer {
    /// The uncompressed tar; its sha256 is the layer's diff ID.
    pub tar: Vec<u8>,
    pub compression: Compression,
}

impl Layer {
    pub fn gzip(tar: Vec<u8>) -> Layer {
        Layer {
            tar,
            compression: Compression::Gzip,
        }
    }

    pub fn zstd(tar: Vec<u8>) -> Layer {
        Layer {
            tar,
            compression: Compression::Zstd,
        }
    }

    pub fn uncompressed(tar: Vec<u8>) -> Layer {
        Layer {
            tar,
            compression: Compression::None,
        }
    }
}

/// Writes a layer tar entry by entry. Paths may be given with or without a leading `/`;
/// they are stored relative (`bin/sh`). Entries are owned by root and dated
/// [`LAYER_MTIME`] unless said otherwise.
pub struct LayerBuilder {
    tar: tar::Builder<Vec<u8>>,
}

impl Default for LayerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl LayerBuilder {
    pub fn new() -> LayerBuilder {
        LayerBuilder {
            tar: tar::Builder::new(Vec::new()),
        }
    }

    /// A regular file owned by root.
    pub fn file(self, path: &str, contents: impl AsRef<[u8]>, mode: u32) -> LayerBuilder {
        self.file_owned(path, contents, mode, 0, 0)
    }

    /// A regular file owned by `uid:gid`.
    pub fn file_owned(
        mut self,
        path: &str,
        contents: impl AsRef<[u8]>,
        mode: u32,
        uid: u64,
        gid: u64,
    ) -> LayerBuilder {
        let contents = contents.as_ref();
        let mut header = new_header(tar::EntryType::Regular, mode, uid, gid);
        header.set_size(contents.len() as u64);
        self.tar
            .append_data(&mut header, relative(path), contents)
            .unwrap_or_else(|err| panic!("layer file {path}: {err}"));
        self
    }

    /// A directory with mode 0755 owned by root.
    pub fn dir(self, path: &str) -> LayerBuilder {
        self.dir_owned(path, 0o755, 0, 0)
    }

    /// A directory with the given mode (which may include the sticky bit) and owner.
    pub fn dir_owned(mut self, path: &str, mode: u32, uid: u64, gid: u64) -> LayerBuilder {
        let mut header = new_header(tar::EntryType::Directory, mode, uid, gid);
        self.tar
            .append_data(&mut header, relative(path), std::io::empty())
            .unwrap_or_else(|err| panic!("layer dir {path}: {err}"));
        self
    }

    /// A symlink; `target` is stored byte for byte, so it may be absolute or climb out
    /// with `..`.
    pub fn symlink(mut self, path: &str, target: &str) -> LayerBuilder {
        let mut header = new_header(tar::EntryType::Symlink, 0o777, 0, 0);
        set_link_target(&mut header, target);
        self.tar
            .append_data(&mut header, relative(path), std::io::empty())
            .unwrap_or_else(|err| panic!("layer symlink {path}: {err}"));
        self
    }

    /// A hard link to `target`, another path in the image.
    pub fn hardlink(mut self, path: &str, target: &str) -> LayerBuilder {
        let mut header = new_header(tar::EntryType::Link, 0o644, 0, 0);
        set_link_target(&mut header, relative(target));
        self.tar
            .append_data(&mut header, relative(path), std::io::empty())
            .unwrap_or_else(|err| panic!("layer hardlink {path}: {err}"));
        self
    }

    /// A whiteout deleting `path` from lower layers: an empty file `dir/.wh.name`.
    pub fn whiteout(self, path: &str) -> LayerBuilder {
        let path = relative(path);
        let whiteout = match path.rsplit_once('/') {
            Some((dir, name)) => format!("{dir}/.wh.{name}"),
            None => format!(".wh.{path}"),
        };
        self.file(&whiteout, b"", 0o644)
    }

    /// An opaque whiteout hiding everything lower layers put in `dir`:
    /// `dir/.wh..wh..opq`.
    pub fn opaque(self, dir: &str) -> LayerBuilder {
        let marker = format!("{}/.wh..wh..opq", relative(dir).trim_end_matches('/'));
        self.file(&marker, b"", 0o644)
    }

    /// A regular file whose header name is exactly `name` (at most 100 bytes), such as
    /// `../../evil` or `/etc/x`, which the tar crate would otherwise refuse to write.
    pub fn raw_name_file(mut self, name: &[u8], contents: impl AsRef<[u8]>) -> LayerBuilder {
        let contents = contents.as_ref();
        let mut header = new_header(tar::EntryType::Regular, 0o644, 0, 0);
        header.set_size(contents.len() as u64);
        let field = &mut header.as_old_mut().name;
        assert!(
            name.len() <= field.len(),
            "raw tar name is longer than {} bytes",
            field.len()
        );
        field.fill(0);
        field[..name.len()].copy_from_slice(name);
        header.set_cksum();
        self.tar
            .append(&header, contents)
            .expect("append raw-named entry");
        self
    }

    /// The finished, uncompressed tar.
    pub fn build(self) -> Vec<u8> {
        self.tar.into_inner().expect("finish layer tar")
    }
}

fn new_header(entry_type: tar::EntryType, mode: u32, uid: u64, gid: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(entry_type);
    header.set_mode(mode);
    header.set_uid(uid);
    header.set_gid(gid);
    header.set_mtime(LAYER_MTIME);
    header.set_size(0);
    header
}

fn set_link_target(header: &mut tar::Header, target: &str) {
    // The literal setter keeps `..` and leading slashes that `set_link_name` rewrites.
    header
        .set_link_name_literal(target)
        .unwrap_or_else(|err| panic!("link target {target}: {err}"));
}

fn relative(path: &str) -> &str {
    path.trim_start_matches('/')
}

/// An image to build: its layers (lowest first), the `config` part of the image
/// config (`Entrypoint`, `Cmd`, `Env`, `User`, `WorkingDir`, ...), its platform and
/// which media types to use.
#[derive(Clone, Debug)]
pub struct ImageSpec {
    pub layers: Vec<Layer>,
    pub config: Value,
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
    pub manifest_media_type: MediaKind,
}

/// A blob as pushed: media type, digest and bytes.
#[derive(Clone, Debug)]
pub struct Blob {
    pub media_type: String,
    pub digest: String,
    pub data: Vec<u8>,
}

impl Blob {
    fn new(media_type: &str, data: Vec<u8>) -> Blob {
        Blob {
            media_type: media_type.to_string(),
            digest: sha256_digest(&data),
            data,
        }
    }

    /// The OCI descriptor of this blob.
    pub fn descriptor(&self) -> Value {
        json!({
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.data.len(),
        })
    }
}

/// The exact bytes of an image, before pushing.
#[derive(Clone, Debug)]
pub struct BuiltImage {
    pub config: Blob,
    /// Compressed layer blobs, lowest first.
    pub layers: Vec<Blob>,
    /// sha256 of each uncompressed layer tar.
    pub diff_ids: Vec<String>,
    pub manifest: Blob,
}

/// What a push produced, for comparing with what crust pulls.
#[derive(Clone, Debug)]
pub struct Pushed {
    pub manifest_digest: String,
    /// The manifest's media type.
    pub media_type: String,
    /// The manifest's exact bytes.
    pub manifest: Vec<u8>,
    /// The manifest's size in bytes, as an index descriptor states it.
    pub size: u64,
    pub config_digest: String,
    /// The config's exact bytes.
    pub config: Vec<u8>,
    /// Compressed layer blob digests, lowest first.
    pub layer_digests: Vec<String>,
    /// Compressed layer blob sizes, lowest first.
    pub layer_sizes: Vec<u64>,
    /// sha256 of each uncompressed layer tar.
    pub diff_ids: Vec<String>,
}

/// What pushing an index or manifest list produced.
#[derive(Clone, Debug)]
pub struct PushedIndex {
    pub digest: String,
    pub media_type: String,
    /// The index's exact bytes.
    pub manifest: Vec<u8>,
    /// The images it lists, in the order given.
    pub images: Vec<Pushed>,
}

/// One platform of an index: `(os, architecture, variant, image)`. The platform is
/// written into the index entry and into that image's config.
pub type IndexEntry<'a> = (&'a str, &'a str, Option<&'a str>, &'a ImageSpec);

/// Builds the config, compressed layers and manifest of `spec`.
pub fn build_image(spec: &ImageSpec) -> BuiltImage {
    let kind = spec.manifest_media_type;
    let layers: Vec<Blob> = spec
        .layers
        .iter()
        .map(|layer| {
            Blob::new(
                kind.layer_type(layer.compression),
                layer.compression.compress(&layer.tar),
            )
        })
        .collect();
    let diff_ids: Vec<String> = spec
        .layers
        .iter()
        .map(|layer| sha256_digest(&layer.tar))
        .collect();

    let history: Vec<Value> = (0..layers.len())
        .map(|n| json!({ "created": CREATED, "created_by": format!("crust test layer {n}") }))
        .collect();
    let mut config = json!({
        "architecture": spec.arch,
        "os": spec.os,
        "created": CREATED,
        "config": spec.config,
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": history,
    });
    if let Some(variant) = &spec.variant {
        config["variant"] = json!(variant);
    }
    let config = Blob::new(
        kind.config_type(),
        serde_json::to_vec(&config).expect("serialize image config"),
    );

    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": kind.manifest_type(),
        "config": config.descriptor(),
        "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
    });
    let manifest = Blob::new(
        kind.manifest_type(),
        serde_json::to_vec(&manifest).expect("serialize manifest"),
    );

    BuiltImage {
        config,
        layers,
        diff_ids,
        manifest,
    }
}

/// Builds `spec` and pushes it as `repo:tag`.
pub async fn push_image(registry_host: &str, repo: &str, tag: &str, spec: &ImageSpec) -> Pushed {
    push_built(registry_host, repo, tag, &build_image(spec)).await
}

/// Pushes the blobs of `image`, then its manifest under `tag_or_digest` (a tag, or the
/// manifest's own `sha256:` digest to push it untagged).
pub async fn push_built(
    registry_host: &str,
    repo: &str,
    tag_or_digest: &str,
    image: &BuiltImage,
) -> Pushed {
    for blob in image.layers.iter().chain([&image.config]) {
        push_blob(registry_host, repo, &blob.data).await;
    }
    let manifest_digest = push_manifest_bytes(
        registry_host,
        repo,
        tag_or_digest,
        &image.manifest.data,
        &image.manifest.media_type,
    )
    .await;
    Pushed {
        manifest_digest,
        media_type: image.manifest.media_type.clone(),
        manifest: image.manifest.data.clone(),
        size: image.manifest.data.len() as u64,
        config_digest: image.config.digest.clone(),
        config: image.config.data.clone(),
        layer_digests: image.layers.iter().map(|l| l.digest.clone()).collect(),
        layer_sizes: image.layers.iter().map(|l| l.data.len() as u64).collect(),
        diff_ids: image.diff_ids.clone(),
    }
}

/// Pushes each image by digest (with the media types its spec asks for), then an OCI
/// image index listing them under `tag`.
pub async fn push_index(
    registry_host: &str,
    repo: &str,
    tag: &str,
    entries: &[IndexEntry<'_>],
) -> PushedIndex {
    push_platform_list(registry_host, repo, tag, entries, MediaKind::Oci).await
}

/// Pushes each image by digest as a Docker schema 2 manifest (whatever the spec says),
/// then a Docker manifest list listing them under `tag`.
pub async fn push_manifest_list(
    registry_host: &str,
    repo: &str,
    tag: &str,
    entries: &[IndexEntry<'_>],
) -> PushedIndex {
    push_platform_list(registry_host, repo, tag, entries, MediaKind::Docker2).await
}

async fn push_platform_list(
    registry_host: &str,
    repo: &str,
    tag: &str,
    entries: &[IndexEntry<'_>],
    kind: MediaKind,
) -> PushedIndex {
    let mut images = Vec::new();
    let mut descriptors = Vec::new();
    for &(os, arch, variant, spec) in entries {
        let spec = ImageSpec {
            os: os.to_string(),
            arch: arch.to_string(),
            variant: variant.map(str::to_string),
            manifest_media_type: match kind {
                MediaKind::Oci => spec.manifest_media_type,
                MediaKind::Docker2 => MediaKind::Docker2,
            },
            ..spec.clone()
        };
        let built = build_image(&spec);
        let pushed = push_built(registry_host, repo, &built.manifest.digest, &built).await;

        let mut platform = json!({ "architecture": arch, "os": os });
        if let Some(variant) = variant {
            platform["variant"] = json!(variant);
        }
        let mut descriptor = built.manifest.descriptor();
        descriptor["platform"] = platform;
        descriptors.push(descriptor);
        images.push(pushed);
    }

    let index = json!({
        "schemaVersion": 2,
        "mediaType": kind.index_type(),
        "manifests": descriptors,
    });
    let index = serde_json::to_vec(&index).expect("serialize index");
    let digest = push_manifest_bytes(registry_host, repo, tag, &index, kind.index_type()).await;
    PushedIndex {
        digest,
        media_type: kind.index_type().to_string(),
        manifest: index,
        images,
    }
}

/// Pushes the manifest that `repo:existing` (a tag or digest) names under `new_tag`
/// too, byte for byte, and returns its digest.
pub async fn tag(registry_host: &str, repo: &str, existing: &str, new_tag: &str) -> String {
    let source = reference(registry_host, repo, existing);
    let (bytes, digest) = client()
        .pull_manifest_raw(&source, &RegistryAuth::Anonymous, &ALL_MANIFEST_TYPES)
        .await
        .unwrap_or_else(|err| panic!("pull manifest {source}: {err}"));
    let manifest: Value = serde_json::from_slice(&bytes).expect("manifest is JSON");
    let media_type = manifest["mediaType"]
        .as_str()
        .unwrap_or_else(|| panic!("manifest {source} has no mediaType"));
    let pushed = push_manifest_bytes(registry_host, repo, new_tag, &bytes, media_type).await;
    assert_eq!(pushed, digest, "retagged manifest changed digest");
    pushed
}

/// Pushes one blob and returns its digest.
pub async fn push_blob(registry_host: &str, repo: &str, data: &[u8]) -> String {
    let digest = sha256_digest(data);
    let target = reference(registry_host, repo, &digest);
    client()
        .push_blob(&target, data.to_vec(), &digest)
        .await
        .unwrap_or_else(|err| panic!("push blob {digest} to {target}: {err}"));
    digest
}

/// Pushes `bytes` as a manifest of `media_type` under `tag_or_digest` and returns its
/// digest. Nothing checks the bytes, so tests can push broken or hostile manifests.
pub async fn push_manifest_bytes(
    registry_host: &str,
    repo: &str,
    tag_or_digest: &str,
    bytes: &[u8],
    media_type: &str,
) -> String {
    let target = reference(registry_host, repo, tag_or_digest);
    let content_type = http::HeaderValue::from_str(media_type).expect("media type header");
    client()
        .push_manifest_raw(&target, bytes.to_vec(), content_type)
        .await
        .unwrap_or_else(|err| panic!("push manifest {target}: {err}"));
    sha256_digest(bytes)
}

/// An oci-client speaking plain HTTP, for talking to a test [`Registry`].
///
/// [`Registry`]: super::registry::Registry
pub fn client() -> Client {
    // rustls needs a process-wide crypto provider even when no TLS is used; the first
    // caller installs ring and later calls find it installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        use_monolithic_push: true,
        platform_resolver: None,
        ..Default::default()
    })
}

/// `host/repo:tag`, or `host/repo@sha256:...` when `tag_or_digest` is a digest.
pub fn reference(registry_host: &str, repo: &str, tag_or_digest: &str) -> Reference {
    let (host, repo, name) = (
        registry_host.to_string(),
        repo.to_string(),
        tag_or_digest.to_string(),
    );
    if tag_or_digest.starts_with("sha256:") {
        Reference::with_digest(host, repo, name)
    } else {
        Reference::with_tag(host, repo, name)
    }
}

/// The host's architecture as OCI (Go's `GOARCH`) names it.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

/// Commands that `/bin/<name>` links to busybox for in [`busybox_layer`].
pub const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "ls", "cat", "echo", "sleep", "id", "env", "pwd", "true", "false", "stat", "wc", "grep",
    "head", "tail", "mkdir", "touch", "rm", "stty", "httpd", "nc", "top", "ps", "dd", "yes", "seq",
    "wget",
];

const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
app:x:1000:1000::/home/app:/bin/sh
";

const GROUP: &str = "\
root:x:0:
app:x:1000:
nogroup:x:65534:
extra:x:2000:app
";

/// A root filesystem layer (uncompressed tar) with Debian's statically linked
/// `/bin/busybox`, its applets as symlinks (see [`BUSYBOX_APPLETS`]), users root, app
/// (1000) and nobody, a supplementary group `extra` (2000) holding app, and the usual
/// directories.
pub fn busybox_layer() -> Vec<u8> {
    static LAYER: OnceLock<Vec<u8>> = OnceLock::new();
    LAYER
        .get_or_init(|| {
            let busybox = std::fs::read("/bin/busybox")
                .expect("read /bin/busybox (install Debian's busybox-static)");
            let mut layer = LayerBuilder::new()
                .dir("bin")
                .file("bin/busybox", busybox, 0o755);
            for applet in BUSYBOX_APPLETS {
                layer = layer.symlink(&format!("bin/{applet}"), "busybox");
            }
            layer
                .dir("etc")
                .file("etc/passwd", PASSWD, 0o644)
                .file("etc/group", GROUP, 0o644)
                .dir_owned("tmp", 0o1777, 0, 0)
                .dir_owned("root", 0o700, 0, 0)
                .dir("home")
                .dir_owned("home/app", 0o755, 1000, 1000)
                .dir("proc")
                .dir("sys")
                .dir("dev")
                .build()
        })
        .clone()
}

/// A one-layer (gzip) busybox image for the host's architecture with OCI media types;
/// its command is `/bin/sh`. Change `manifest_media_type` for a Docker image.
pub fn busybox_image() -> ImageSpec {
    ImageSpec {
        layers: vec![Layer::gzip(busybox_layer())],
        config: json!({ "Cmd": ["/bin/sh"], "Env": [DEFAULT_PATH] }),
        os: "linux".to_string(),
        arch: host_arch().to_string(),
        variant: None,
        manifest_media_type: MediaKind::Oci,
    }
}
