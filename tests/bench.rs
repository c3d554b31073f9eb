//! End-to-end: the `crust-bench` binary against a real crustd, with small counts: it
//! must measure every scenario, write sane JSON, chart it, and leave nothing behind
//! (no sandbox, container, image, log directory or cgroup).
//!
//! crust-bench is another package of the workspace, so cargo gives this test no
//! `CARGO_BIN_EXE_` for it; it is found beside crustd, which `cargo test --workspace`
//! builds together with it.

mod support;

use std::path::{Path, PathBuf};

use crust_proto::cri;
use serde_json::Value;
use support::cni::TestNetwork;
use support::crustd::Crustd;
use support::oci::{self, Layer, LayerBuilder};
use support::registry::Registry;

/// The crust-bench binary of this build.
fn bench_binary() -> PathBuf {
    let crustd = Path::new(env!("CARGO_BIN_EXE_crustd"));
    let bench = crustd.with_file_name("crust-bench");
    assert!(
        bench.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (or build -p crust-bench)",
        bench.display()
    );
    bench
}

/// Runs crust-bench with `args` and returns its stdout; panics with its output when it
/// fails.
async fn bench(args: &[&str]) -> String {
    let out = tokio::process::Command::new(bench_binary())
        .args(args)
        .output()
        .await
        .expect("run crust-bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "crust-bench {args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The number at `pointer` in `json`.
fn num(json: &Value, pointer: &str) -> f64 {
    json.pointer(pointer)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{pointer} is not a number in:\n{json:#}"))
}

/// A latency summary at `pointer` with `n` samples, positive and ordered.
fn assert_summary(json: &Value, pointer: &str, n: f64) {
    assert_eq!(num(json, &format!("{pointer}/n")), n, "{pointer}");
    let (min, p50, p99, max) = (
        num(json, &format!("{pointer}/min_ms")),
        num(json, &format!("{pointer}/p50_ms")),
        num(json, &format!("{pointer}/p99_ms")),
        num(json, &format!("{pointer}/max_ms")),
    );
    assert!(
        0.0 < min && min <= p50 && p50 <= p99 && p99 <= max && max < 60_000.0,
        "{pointer}: min {min} p50 {p50} p99 {p99} max {max}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn suite_measures_every_scenario_and_leaves_nothing_behind() {
    let reg = Registry::start();
    oci::push_image(&reg.host(), "bench/box", "1", &oci::busybox_image()).await;
    // A two-layer image for the cold pull.
    let mut layered = oci::busybox_image();
    layered.layers.push(Layer::gzip(
        LayerBuilder::new()
            .dir("data")
            .file("data/blob", vec![7u8; 256 << 10], 0o644)
            .build(),
    ));
    oci::push_image(&reg.host(), "bench/layered", "1", &layered).await;
    let d = Crustd::start().await;
    let _net = TestNetwork::create(&d.cni_conf_dir(), d.dir(), &[]);

    let image = format!("{}/bench/box:1", reg.host());
    let pull_image = format!("{}/bench/layered:1", reg.host());
    let json_path = d.dir().join("crust.json");
    let cgroup_parent = format!("/crust-bench-e2e-{}", std::process::id());
    let socket = d.socket().display().to_string();
    let pid = d.pid().to_string();
    let dir = d.dir().display().to_string();
    let stdout = bench(&[
        "suite",
        "--endpoint",
        &socket,
        "--name",
        "crust",
        "--json",
        &json_path.display().to_string(),
        "--daemon-pid",
        &pid,
        "--helper",
        "crust-monitor",
        "--helper-match",
        &dir,
        "--image",
        &image,
        "--pull-image",
        &pull_image,
        "--pull-runs",
        "1",
        "--sequential",
        "2",
        "--concurrent",
        "3",
        "--concurrency",
        "2",
        "--pods",
        "3",
        "--containers-per-pod",
        "2",
        "--list-iterations",
        "20",
        "--setup-concurrency",
        "2",
        "--cgroup-parent",
        &cgroup_parent,
        "--log-dir",
        &dir,
    ])
    .await;
    assert!(stdout.contains("pod running"), "{stdout}");

    let json: Value = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(json["name"], "crust");
    assert!(num(&json, "/daemon_idle/vm_rss_kb") > 1000.0);
    assert!(num(&json, "/daemon_idle/rss_anon_kb") > 0.0);
    assert!(num(&json, "/daemon_after/vm_rss_kb") > 1000.0);

    assert_eq!(json["pull"]["runs_ms"].as_array().unwrap().len(), 1);
    assert_summary(&json, "/pull/summary", 1.0);

    assert_eq!(num(&json, "/lifecycle/0/concurrency"), 1.0);
    assert_eq!(num(&json, "/lifecycle/1/concurrency"), 2.0);
    for (run, n) in [(0, 2.0), (1, 3.0)] {
        assert_summary(&json, &format!("/lifecycle/{run}/pod_running"), n);
        assert_summary(&json, &format!("/lifecycle/{run}/total"), n);
        let rpcs = json["lifecycle"][run]["rpcs"].as_object().unwrap();
        assert_eq!(rpcs.len(), 8, "{rpcs:?}");
        for rpc in rpcs.keys() {
            assert_summary(&json, &format!("/lifecycle/{run}/rpcs/{rpc}"), n);
        }
        assert!(num(&json, &format!("/lifecycle/{run}/daemon/peak/vm_rss_kb")) > 1000.0);
        assert!(num(&json, &format!("/lifecycle/{run}/daemon_cpu_s_per_pod")) >= 0.0);
        assert!(
            num(&json, &format!("/lifecycle/{run}/pod_running/p50_ms"))
                <= num(&json, &format!("/lifecycle/{run}/total/p50_ms"))
        );
    }

    assert_eq!(num(&json, "/list/pods"), 3.0);
    assert_eq!(num(&json, "/list/containers"), 6.0);
    for call in [
        "ListContainers",
        "ListPodSandbox",
        "ListContainers by pod uid",
        "ListPodSandbox by pod uid",
    ] {
        assert_summary(&json, &format!("/list/calls/{call}"), 20.0);
    }
    // One monitor per container at least (the pauses may have theirs too).
    assert!(num(&json, "/list/helpers/count") >= 6.0, "{json:#}");
    assert!(num(&json, "/list/helpers/avg_rss_anon_kb") > 0.0);
    assert!(num(&json, "/list/helpers_rss_anon_kb_per_pod") > 0.0);

    // Nothing is left: no sandbox, container or image, no log directory, no cgroup.
    let mut c = d.client().await;
    let sandboxes = c
        .runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(sandboxes.is_empty(), "{sandboxes:?}");
    let containers = c
        .runtime
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(containers.is_empty(), "{containers:?}");
    let images = c
        .image
        .list_images(cri::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images;
    assert!(images.is_empty(), "{images:?}");
    let leftovers: Vec<_> = std::fs::read_dir(d.dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("crust-bench-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    for controller in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let cgroup = controller
            .path()
            .join(cgroup_parent.trim_start_matches('/'));
        assert!(!cgroup.exists(), "{} is left", cgroup.display());
    }

    // The chart of a run against itself: every ratio is 1.
    let svg = d.dir().join("chart.svg");
    let table = bench(&[
        "chart",
        &json_path.display().to_string(),
        &json_path.display().to_string(),
        "--out",
        &svg.display().to_string(),
    ])
    .await;
    assert!(table.contains("| pod running p50, sequential |"), "{table}");
    let svg = std::fs::read_to_string(svg).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("1.00×"), "{svg}");
}

#[tokio::test]
async fn image_writes_an_oci_layout() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("layered");
    let digest = bench(&[
        "image",
        "--out",
        &out.display().to_string(),
        "--tag",
        "1",
        "layered",
        "--layers",
        "2",
        "--layer-mib",
        "1",
    ])
    .await;
    let blob = |digest: &str| {
        let path = out
            .join("blobs/sha256")
            .join(digest.trim().trim_start_matches("sha256:"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let index: Value =
        serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], digest.trim());
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "1"
    );
    let manifest: Value = serde_json::from_slice(&blob(&digest)).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3, "busybox base and two generated layers");
    for layer in layers {
        let bytes = blob(layer["digest"].as_str().unwrap());
        assert_eq!(bytes.len() as u64, layer["size"].as_u64().unwrap());
    }
    let config: Value =
        serde_json::from_slice(&blob(manifest["config"]["digest"].as_str().unwrap())).unwrap();
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 3);
}
