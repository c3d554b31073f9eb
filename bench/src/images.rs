//! The benchmark's images, built from what Debian ships (a static busybox) and generated
//! files, so a run needs nothing from the internet:
//!
//! - `busybox`: one layer, the workload of every pod;
//! - `layered`: its own busybox base plus N layers of many generated files (text-like
//!   and incompressible), for cold pulls that fetch, decompress and unpack real work;
//! - `pause`: one static binary as the entrypoint, for containerd's `sandbox_image`.

use std::path::Path;

use anyhow::Context;
use serde_json::json;

use crate::cli::{ImageArgs, ImageKind};
use crate::oci_layout::{Layout, TarLayer};

/// Busybox applets the images link, enough for the workload, probes and a shell.
const APPLETS: [&str; 13] = [
    "sh", "sleep", "true", "false", "echo", "cat", "ls", "ps", "env", "id", "hostname", "nc", "top",
];

const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Writes the image `args` asks for and prints its manifest digest.
pub fn write(args: &ImageArgs) -> anyhow::Result<()> {
    let mut layout = Layout::create(&args.out)?;
    let config = match &args.kind {
        ImageKind::Busybox { busybox } => {
            layout.add_layer(&busybox_layer(busybox, None)?)?;
            json!({ "Cmd": ["/bin/sh"], "Env": [PATH_ENV] })
        }
        ImageKind::Layered {
            busybox,
            layers,
            layer_mib,
        } => {
            // A marker file makes this base layer differ from the busybox image's, so
            // a cold pull of this image never finds its base already unpacked.
            layout.add_layer(&busybox_layer(busybox, Some("layered"))?)?;
            for n in 0..*layers {
                layout.add_layer(&generated_layer(n, layer_mib * 1024 * 1024)?)?;
            }
            json!({ "Cmd": ["/bin/sh"], "Env": [PATH_ENV] })
        }
        ImageKind::Pause { binary } => {
            let bytes =
                std::fs::read(binary).with_context(|| format!("read {}", binary.display()))?;
            let mut layer = TarLayer::default();
            layer.file("pause", &bytes, 0o755)?;
            layout.add_layer(&layer.finish()?)?;
            json!({ "Entrypoint": ["/pause"], "Env": [PATH_ENV] })
        }
    };
    let digest = layout.finish(config, &args.tag)?;
    println!("{digest}");
    Ok(())
}

/// A root filesystem with `busybox` at /bin/busybox, its applets, passwd and group, and
/// the usual directories; `marker` adds /etc/crust-bench-<marker>.
fn busybox_layer(busybox: &Path, marker: Option<&str>) -> anyhow::Result<Vec<u8>> {
    let binary = std::fs::read(busybox)
        .with_context(|| format!("read {} (install busybox-static)", busybox.display()))?;
    let mut layer = TarLayer::default();
    layer.dir("bin", 0o755)?;
    layer.file("bin/busybox", &binary, 0o755)?;
    for applet in APPLETS {
        layer.symlink(&format!("bin/{applet}"), "busybox")?;
    }
    layer.dir("etc", 0o755)?;
    layer.file(
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        0o644,
    )?;
    layer.file("etc/group", b"root:x:0:\nnogroup:x:65534:\n", 0o644)?;
    if let Some(marker) = marker {
        layer.file(
            &format!("etc/crust-bench-{marker}"),
            marker.as_bytes(),
            0o644,
        )?;
    }
    for dir in ["dev", "proc", "sys", "home", "var", "usr"] {
        layer.dir(dir, 0o755)?;
    }
    layer.dir("root", 0o700)?;
    layer.dir("tmp", 0o1777)?;
    layer.finish()
}

/// Layer `n` of the layered image: about `bytes` of files in 16 directories, sized like
/// a distribution's (mostly a few KiB, some large), three quarters text-like and one
/// quarter incompressible, so gzip shrinks it roughly as it shrinks real layers.
fn generated_layer(n: usize, bytes: usize) -> anyhow::Result<Vec<u8>> {
    let mut rng = SplitMix(0x5eed_0000 + n as u64);
    let mut layer = TarLayer::default();
    let root = format!("usr/share/crust-bench/layer{n}");
    layer.dir("usr/share", 0o755)?;
    layer.dir("usr/share/crust-bench", 0o755)?;
    layer.dir(&root, 0o755)?;
    for d in 0..16 {
        layer.dir(&format!("{root}/d{d:02}"), 0o755)?;
    }
    let mut written = 0;
    let mut file = 0;
    while written < bytes {
        let size = match rng.next() % 100 {
            0..=69 => 256 + rng.next() as usize % (8 << 10),
            70..=96 => (8 << 10) + rng.next() as usize % (56 << 10),
            _ => (64 << 10) + rng.next() as usize % (960 << 10),
        };
        let size = size.min(bytes - written).max(1);
        let data = if rng.next() % 4 == 0 {
            random_bytes(&mut rng, size)
        } else {
            text(&mut rng, size)
        };
        layer.file(
            &format!("{root}/d{:02}/f{file:05}", file % 16),
            &data,
            0o644,
        )?;
        written += size;
        file += 1;
    }
    layer.finish()
}

/// Text from a small vocabulary: compresses about 3:1 with gzip, as source and
/// documentation do.
fn text(rng: &mut SplitMix, size: usize) -> Vec<u8> {
    const WORDS: [&str; 32] = [
        "container",
        "runtime",
        "the",
        "of",
        "pod",
        "sandbox",
        "image",
        "layer",
        "kubelet",
        "network",
        "namespace",
        "cgroup",
        "memory",
        "process",
        "signal",
        "monitor",
        "exit",
        "status",
        "log",
        "file",
        "directory",
        "mount",
        "overlay",
        "registry",
        "digest",
        "a",
        "to",
        "and",
        "is",
        "in",
        "for",
        "with",
    ];
    let mut out = Vec::with_capacity(size + 16);
    while out.len() < size {
        let r = rng.next();
        out.extend_from_slice(WORDS[(r % 32) as usize].as_bytes());
        // Some numbers make it less repetitive than plain words.
        if r % 7 == 0 {
            out.extend_from_slice(format!(" {}", (r >> 8) % 100_000).as_bytes());
        }
        out.push(if r % 11 == 0 { b'\n' } else { b' ' });
    }
    out.truncate(size);
    out
}

/// Incompressible bytes, as already-compressed assets are.
fn random_bytes(rng: &mut SplitMix, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(size);
    out
}

/// splitmix64: a tiny deterministic generator, so images are the same on every run.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_layers_are_deterministic_and_about_the_size_asked() {
        let a = generated_layer(1, 256 << 10).unwrap();
        let b = generated_layer(1, 256 << 10).unwrap();
        assert_eq!(a, b);
        assert!(a.len() >= 256 << 10 && a.len() < 512 << 10, "{}", a.len());
        assert_ne!(a, generated_layer(2, 256 << 10).unwrap());
    }
}
