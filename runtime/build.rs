//! Builds crust-pause (`pause/pause.rs`) into `$OUT_DIR/crust-pause`.
//!
//! The pause binary must run in a rootfs that holds nothing else, so it is linked
//! statically. Cargo cannot build one target of a package with different linking than
//! the rest, so the build script calls the same `rustc` cargo uses, on a single
//! std-only source file; the crate then embeds the result with `include_bytes!`.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=pause/pause.rs");
    println!("cargo:rerun-if-changed=build.rs");

    // Cargo always sets these for build scripts; a missing one is a broken build setup.
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let target = env::var("TARGET").expect("cargo sets TARGET");
    let version = env::var("CARGO_PKG_VERSION").unwrap_or_default();

    let source = manifest_dir.join("pause").join("pause.rs");
    let output = out_dir.join("crust-pause");
    let mut command = Command::new(&rustc);
    command
        .args([
            "--edition",
            "2024",
            "--crate-name",
            "crust_pause",
            "--crate-type",
            "bin",
        ])
        .args(["--target", &target])
        .args([
            "-C",
            "opt-level=s",
            "-C",
            "panic=abort",
            "-C",
            "strip=symbols",
        ])
        // Static: the sandbox rootfs has no dynamic loader and no libc.
        .args(["-C", "target-feature=+crt-static"])
        .arg(&source)
        .arg("-o")
        .arg(&output)
        .env("CRUST_PAUSE_VERSION", &version);
    // A linker configured for the target (target.<triple>.linker) applies here too.
    if let Some(linker) = env::var_os("RUSTC_LINKER") {
        command.arg("-C").arg({
            let mut flag = std::ffi::OsString::from("linker=");
            flag.push(linker);
            flag
        });
    }
    let status = command
        .status()
        .unwrap_or_else(|err| panic!("build crust-pause: run {rustc:?}: {err}"));
    if !status.success() {
        panic!(
            "build crust-pause: {rustc:?} {}: {status}",
            source.display()
        );
    }
}
