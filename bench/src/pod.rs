//! Starting and removing one benchmark pod the way kubelet does, timing each RPC.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use crust_proto::cri;

use crate::cli::Workload;
use crate::kubelet_config::{self, Pod};
use crate::run::{ReadyImage, Run};

/// Durations per RPC name.
#[derive(Debug, Default)]
pub struct Timings(pub BTreeMap<&'static str, Vec<Duration>>);

impl Timings {
    /// Adds one sample.
    pub fn add(&mut self, rpc: &'static str, took: Duration) {
        self.0.entry(rpc).or_default().push(took);
    }

    /// Adds all samples of `other`.
    pub fn merge(&mut self, other: Timings) {
        for (rpc, samples) in other.0 {
            self.0.entry(rpc).or_default().extend(samples);
        }
    }
}

/// A pod whose sandbox and containers run.
pub struct RunningPod {
    /// Its identity.
    pub pod: Pod,
    /// The sandbox id.
    pub sandbox: String,
    /// The sandbox config, which containerd needs again in CreateContainer.
    pub config: cri::PodSandboxConfig,
    /// Container ids, in creation order.
    pub containers: Vec<String>,
    /// When the RunPodSandbox request went out.
    pub started: Instant,
    /// From the RunPodSandbox request to the last StartContainer answer.
    pub running_after: Duration,
}

/// Runs `pod` with `count` containers of `image`: RunPodSandbox, then CreateContainer
/// and StartContainer for each, recording every RPC in `timings`.
pub async fn start(
    run: &Run,
    workload: &Workload,
    image: &ReadyImage,
    pod: Pod,
    count: usize,
    timings: &mut Timings,
) -> anyhow::Result<RunningPod> {
    let config = kubelet_config::sandbox_config(&pod, &workload.cgroup_parent, &run.log_base);
    let names: Vec<String> = (0..count).map(|n| format!("c{n}")).collect();
    // kubelet makes the log directory and the termination-message files before it
    // calls the runtime; so do we, outside the timed window.
    std::fs::create_dir_all(&config.log_directory)
        .with_context(|| format!("create {}", config.log_directory))?;
    for name in &names {
        let file = pod.termination_log(&run.log_base, name);
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        std::fs::write(&file, b"").with_context(|| format!("create {}", file.display()))?;
    }
    run.created.cgroup(&pod.cgroup(&workload.cgroup_parent));

    let mut svc = run.cri.runtime.clone();
    let started = Instant::now();
    let request = cri::RunPodSandboxRequest {
        config: Some(config.clone()),
        runtime_handler: workload.runtime_handler.clone(),
    };
    let (answer, took) = run
        .cri
        .timed(
            &format!("RunPodSandbox {}", pod.name),
            svc.run_pod_sandbox(request),
        )
        .await?;
    timings.add("RunPodSandbox", took);
    let sandbox = answer.pod_sandbox_id;
    run.created.sandbox(&sandbox);

    let mut containers = Vec::new();
    for name in &names {
        let termination_log = pod.termination_log(&run.log_base, name);
        let request = cri::CreateContainerRequest {
            pod_sandbox_id: sandbox.clone(),
            config: Some(kubelet_config::container_config(
                &pod,
                name,
                &image.id,
                &image.reference,
                &workload.command,
                &termination_log,
            )),
            sandbox_config: Some(config.clone()),
        };
        let what = format!("CreateContainer {}/{name}", pod.name);
        let (answer, took) = run.cri.timed(&what, svc.create_container(request)).await?;
        timings.add("CreateContainer", took);
        let id = answer.container_id;
        run.created.container(&id);
        containers.push(id.clone());
    }
    // kubelet creates and starts each container in turn.
    for (id, name) in containers.iter().zip(&names) {
        let request = cri::StartContainerRequest {
            container_id: id.clone(),
        };
        let what = format!("StartContainer {}/{name}", pod.name);
        let (_, took) = run.cri.timed(&what, svc.start_container(request)).await?;
        timings.add("StartContainer", took);
    }
    Ok(RunningPod {
        pod,
        sandbox,
        config,
        containers,
        started,
        running_after: started.elapsed(),
    })
}

/// Runs `cmd` in the pod's first container with ExecSync, as a probe does.
pub async fn exec(
    run: &Run,
    pod: &RunningPod,
    cmd: &[String],
    timings: &mut Timings,
) -> anyhow::Result<()> {
    let Some(id) = pod.containers.first() else {
        return Ok(());
    };
    let mut svc = run.cri.runtime.clone();
    let request = cri::ExecSyncRequest {
        container_id: id.clone(),
        cmd: cmd.to_vec(),
        timeout: 10,
    };
    let what = format!("ExecSync {}", pod.pod.name);
    let (answer, took) = run.cri.timed(&what, svc.exec_sync(request)).await?;
    timings.add("ExecSync", took);
    anyhow::ensure!(
        answer.exit_code == 0,
        "{what}: {cmd:?} exited with {}: {}",
        answer.exit_code,
        String::from_utf8_lossy(&answer.stderr).trim()
    );
    Ok(())
}

/// Stops and removes the pod's containers, then stops and removes the sandbox, as
/// kubelet does when a pod is deleted; the pod cgroup goes last, as kubelet removes it.
/// Returns the pod's whole life: RunPodSandbox request to RemovePodSandbox answer.
pub async fn remove(
    run: &Run,
    workload: &Workload,
    pod: RunningPod,
    timings: &mut Timings,
) -> anyhow::Result<Duration> {
    let mut svc = run.cri.runtime.clone();
    for id in &pod.containers {
        let request = cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: workload.stop_timeout,
        };
        let what = format!("StopContainer {} {id}", pod.pod.name);
        let (_, took) = run.cri.timed(&what, svc.stop_container(request)).await?;
        timings.add("StopContainer", took);
    }
    for id in &pod.containers {
        let request = cri::RemoveContainerRequest {
            container_id: id.clone(),
        };
        let what = format!("RemoveContainer {} {id}", pod.pod.name);
        let (_, took) = run.cri.timed(&what, svc.remove_container(request)).await?;
        timings.add("RemoveContainer", took);
        run.created.container_gone(id);
    }
    let request = cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.sandbox.clone(),
    };
    let what = format!("StopPodSandbox {}", pod.pod.name);
    let (_, took) = run.cri.timed(&what, svc.stop_pod_sandbox(request)).await?;
    timings.add("StopPodSandbox", took);
    let request = cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.sandbox.clone(),
    };
    let what = format!("RemovePodSandbox {}", pod.pod.name);
    let (_, took) = run
        .cri
        .timed(&what, svc.remove_pod_sandbox(request))
        .await?;
    timings.add("RemovePodSandbox", took);
    let life = pod.started.elapsed();
    run.created.sandbox_gone(&pod.sandbox);
    run.created
        .cgroup_gone(&pod.pod.cgroup(&workload.cgroup_parent));
    let _ = std::fs::remove_dir_all(&pod.config.log_directory);
    let _ = std::fs::remove_dir_all(run.log_base.join("kubelet/pods").join(&pod.pod.uid));
    Ok(life)
}
