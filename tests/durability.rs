//! End-to-end: what crustd records durably is on disk before the record says so.
//!
//! A power loss cannot be staged here, so the test watches the order of the system
//! calls instead: `strace` follows every thread of a running crustd while it pulls an
//! image and runs a pod. Each layer's tree is synced (`syncfs` on its temporary
//! directory) before the rename that puts it in place, the rename is synced (fsync of
//! the layer store directory), and only then is the metadata store committed. Each pod
//! file is synced before the rename that makes it the file.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crust_proto::cri;
use support::cni::TestNetwork;
use support::crustd::Crustd;
use support::oci;
use support::registry::Registry;

/// strace attached to a process (every thread, and those it starts), writing to a file.
struct Strace {
    child: std::process::Child,
    out: std::path::PathBuf,
}

impl Strace {
    fn attach(pid: u32, out: &Path) -> Strace {
        let child = Command::new("strace")
            .args(["-f", "-qq", "-y", "-e"])
            .arg("trace=syncfs,fsync,fdatasync,rename,renameat,renameat2")
            .arg("-o")
            .arg(out)
            .args(["-p", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("strace (packaging/test.sh installs it)");
        // strace writes nothing until attached; a traced syscall of any thread is the
        // sign. The daemon's idle threads make none, so wait for the file instead.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !out.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        Strace {
            child,
            out: out.to_path_buf(),
        }
    }

    /// Detaches and returns the trace, one syscall per line.
    fn finish(mut self) -> Vec<String> {
        // SIGINT makes strace detach. Under load it has been seen to miss it; SIGKILL
        // then, which detaches its tracees just as well (they run on).
        // SAFETY: kill(2) of the strace this test started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::fs::read_to_string(&self.out)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// The position of the first line after `from` that `matches`.
fn find(lines: &[String], from: usize, matches: impl Fn(&str) -> bool) -> Option<usize> {
    lines
        .iter()
        .enumerate()
        .skip(from)
        .find(|(_, l)| matches(l))
        .map(|(i, _)| i)
}

#[tokio::test(flavor = "multi_thread")]
async fn layers_and_pod_files_are_synced_before_they_are_recorded() {
    let reg = Registry::start();
    oci::push_image(&reg.host(), "test/box", "1", &oci::busybox_image()).await;
    let d = Crustd::start().await;
    let _net = TestNetwork::create(&d.cni_conf_dir(), d.dir(), &[]);
    let mut c = d.client().await;
    let trace_file = d.dir().join("strace.out");
    let strace = Strace::attach(d.pid(), &trace_file);

    c.image
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: format!("{}/test/box:1", reg.host()),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "durable".into(),
            uid: "uid-durable".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: "durable".into(),
        log_directory: d.dir().join("pod-logs").display().to_string(),
        ..Default::default()
    };
    let pod = c
        .runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let lines = strace.finish();
    let layers = d.root().join("layers").display().to_string();
    let db = d.root().join("crust.redb").display().to_string();

    // Every layer: syncfs of its temporary tree, its rename, the store directory's
    // fsync, then a commit of the metadata store.
    let renames: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| {
            l.contains("rename") && l.contains(&format!("{layers}/tmp-")) && l.ends_with("= 0")
        })
        .map(|(i, _)| i)
        .collect();
    assert!(
        !renames.is_empty(),
        "no layer rename traced:\n{}",
        lines.join("\n")
    );
    for &rename in &renames {
        let line = &lines[rename];
        let temp = line
            .split('"')
            .nth(1)
            .expect("rename's first path")
            .to_owned();
        let synced = lines[..rename]
            .iter()
            .any(|l| l.contains("syncfs(") && l.contains(&format!("<{temp}>")));
        assert!(
            synced,
            "{temp} renamed without a syncfs before:\n{}",
            lines.join("\n")
        );
        let dir_synced = find(&lines, rename, |l| {
            l.contains("fsync(") && l.contains(&format!("<{layers}>"))
        })
        .unwrap_or_else(|| panic!("no fsync of {layers} after {line}"));
        find(&lines, dir_synced, |l| {
            (l.contains("fdatasync(") || l.contains("fsync(")) && l.contains(&db)
        })
        .unwrap_or_else(|| panic!("no metadata commit after the layer's rename {line}"));
    }

    // Every pod file: its temporary file synced, then renamed into place.
    let pod_dir = d.root().join("sandboxes").join(&pod).display().to_string();
    for name in ["hostname", "resolv.conf", "hosts"] {
        let temp = format!("{pod_dir}/{name}").replace(".conf", "") + ".tmp";
        let rename = find(&lines, 0, |l| {
            l.contains("rename") && l.contains(&format!("\"{pod_dir}/{name}\""))
        })
        .unwrap_or_else(|| panic!("no rename to {name}:\n{}", lines.join("\n")));
        let synced = lines[..rename]
            .iter()
            .any(|l| l.contains("fdatasync(") && l.contains(&format!("<{temp}>")));
        assert!(synced, "{name} renamed without syncing {temp} first");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("fsync(") && l.contains(&format!("<{pod_dir}>"))),
        "the pod files' directory was not synced"
    );
}
