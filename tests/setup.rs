//! The front door: the README's install command (`packaging/install.sh`), the Debian
//! package (`packaging/build-deb.sh`) and `packaging/uninstall.sh`, each run as a new
//! user would (the steps are in tests/setup/scenario.sh) on a throwaway copy of this machine
//! (tests/setup/throwaway.sh), against a registry on the copy's loopback that holds a
//! busybox image. A renamed binary or package, or a step that stops working, fails here.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::oci;
use support::registry::Registry;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The build directory the scripts share with this test's own build, so the install
/// compiles only crust's crates again.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"))
}

/// A registry's data with `test/box:1` (busybox) in it; the registry process itself is
/// stopped when the value is dropped, and the throwaway copy serves the data again.
async fn registry_with_busybox() -> Registry {
    let reg = Registry::start();
    oci::push_image(&reg.host(), "test/box", "1", &oci::busybox_image()).await;
    reg
}

/// Runs `scenario.sh ARGS` in a throwaway copy; panics with its output when it fails.
fn throwaway(registry_data: &Path, hide_rust: bool, args: &[&str]) {
    let work = tempfile::Builder::new()
        .prefix("crust-setup-")
        .tempdir()
        .expect("tempdir");
    let mut command = Command::new(repo().join("tests/setup/throwaway.sh"));
    command.arg(work.path());
    if hide_rust {
        command.arg("--no-rust");
    }
    command
        .arg("--")
        .arg("/src/tests/setup/scenario.sh")
        .args(args)
        .env("CRUST_SRC", repo())
        .env("CARGO_TARGET_DIR", target_dir())
        .env("REGISTRY_DATA", registry_data);
    let out = command.output().expect("run throwaway.sh");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "scenario {args:?} failed:\n{text}");
    assert!(
        text.contains(&format!("scenario {}: ok", args[0])),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn install_script_installs_upgrades_and_uninstalls_from_a_fresh_clone() {
    let reg = registry_with_busybox().await;
    throwaway(&reg.storage_root(), false, &["install"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn debian_package_installs_and_runs_a_pod_where_rust_is_absent() {
    let reg = registry_with_busybox().await;
    let out_dir = tempfile::Builder::new()
        .prefix("crust-deb-")
        .tempdir()
        .expect("tempdir");
    let built = Command::new(repo().join("packaging/build-deb.sh"))
        .arg(out_dir.path())
        .env("CRUST_PROFILE", "dev")
        .env("CRUST_DEB_COMPRESSION", "gzip")
        .env("CARGO_TARGET_DIR", target_dir())
        .output()
        .expect("run build-deb.sh");
    assert!(
        built.status.success(),
        "build-deb.sh failed:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let deb = String::from_utf8_lossy(&built.stdout).trim().to_string();
    let info = Command::new("dpkg-deb")
        .args(["--info", &deb])
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    for dep in ["runc | crun", "containernetworking-plugins", "iptables"] {
        assert!(
            info.contains(dep),
            "the package does not depend on {dep}:\n{info}"
        );
    }
    let contents = Command::new("dpkg-deb")
        .args(["--contents", &deb])
        .output()
        .unwrap();
    let contents = String::from_utf8_lossy(&contents.stdout);
    for file in [
        "./usr/bin/crustd",
        "./usr/bin/crust-monitor",
        "./usr/bin/crust -> crustd",
        "./lib/systemd/system/crustd.service",
        "./etc/crust/config.toml",
        "./usr/share/crust/10-crust-bridge.conflist",
    ] {
        assert!(
            contents.contains(file),
            "{file} is not in the package:\n{contents}"
        );
    }
    // The package is read inside the copy where /tmp is private: pass it through /src's
    // sibling, the registry data directory, which the copy binds at /registry.
    let inside = reg.storage_root().join("crust.deb");
    std::fs::copy(&deb, &inside).expect("copy the package");
    throwaway(&reg.storage_root(), true, &["deb", "/registry/crust.deb"]);
}
