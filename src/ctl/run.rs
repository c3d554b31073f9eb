//! `crust run`: one command in a pod of its own, the way `kubectl run --rm -i` feels,
//! through the CRI calls kubelet makes.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use crust_proto::cri;

use super::Client;

/// Arguments of `crust run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The pod's and the container's name [default: crust-run-<random>].
    #[arg(long)]
    name: Option<String>,
    /// The pod's namespace.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// The runtime handler (RuntimeClass) [default: the configured default].
    #[arg(long, default_value = "")]
    runtime: String,
    /// Leave the pod running and print its id and the container's instead of waiting.
    #[arg(short, long)]
    detach: bool,
    /// Where the pod's logs go (kubelet's layout).
    #[arg(long, default_value = "/var/log/pods")]
    log_root: PathBuf,
    /// The image to run.
    image: String,
    /// The command and its arguments [default: the image's].
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    cmd: Vec<String>,
}

/// Pulls `image` unless the daemon has it; the image's reference as the daemon names it.
pub async fn pull(c: &mut Client, image: &str) -> anyhow::Result<String> {
    let spec = cri::ImageSpec {
        image: image.to_string(),
        ..Default::default()
    };
    let present = c
        .image
        .image_status(cri::ImageStatusRequest {
            image: Some(spec.clone()),
            verbose: false,
        })
        .await?
        .into_inner()
        .image;
    if let Some(found) = present {
        return Ok(found.repo_tags.first().cloned().unwrap_or(found.id));
    }
    let pulled = c
        .image
        .pull_image(cri::PullImageRequest {
            image: Some(spec),
            ..Default::default()
        })
        .await
        .with_context(|| format!("pull {image}"))?
        .into_inner();
    Ok(pulled.image_ref)
}

/// Runs the command; the container's exit code (or 0 with `--detach`).
pub async fn run(c: &mut Client, args: RunArgs) -> anyhow::Result<i32> {
    pull(c, &args.image).await?;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("crust-run-{}", hex_id(4)));
    let uid = hex_id(16);
    let log_directory = args
        .log_root
        .join(format!("{}_{}_{}", args.namespace, name, uid));
    let sandbox_config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.clone(),
            uid,
            namespace: args.namespace.clone(),
            attempt: 0,
        }),
        hostname: name.clone(),
        log_directory: log_directory.display().to_string(),
        labels: [("io.crust.run".to_string(), "true".to_string())].into(),
        linux: Some(cri::LinuxPodSandboxConfig::default()),
        ..Default::default()
    };
    let pod = c
        .runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(sandbox_config.clone()),
            runtime_handler: args.runtime.clone(),
        })
        .await
        .context("run the pod")?
        .into_inner()
        .pod_sandbox_id;
    let result = run_in(c, &args, &name, &pod, sandbox_config).await;
    if args.detach && result.is_ok() {
        return result;
    }
    let removed = c.remove_pod(&pod).await;
    let _ = std::fs::remove_dir_all(&log_directory);
    let code = result?;
    removed?;
    Ok(code)
}

async fn run_in(
    c: &mut Client,
    args: &RunArgs,
    name: &str,
    pod: &str,
    sandbox_config: cri::PodSandboxConfig,
) -> anyhow::Result<i32> {
    let log_path = format!("{name}/0.log");
    let id = c
        .runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.to_string(),
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: name.to_string(),
                    attempt: 0,
                }),
                image: Some(cri::ImageSpec {
                    image: args.image.clone(),
                    ..Default::default()
                }),
                command: args.cmd.clone(),
                log_path: log_path.clone(),
                ..Default::default()
            }),
            sandbox_config: Some(sandbox_config.clone()),
        })
        .await
        .context("create the container")?
        .into_inner()
        .container_id;
    c.runtime
        .start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .context("start the container")?;
    if args.detach {
        println!("pod {pod}");
        println!("container {id}");
        return Ok(0);
    }
    let log = Path::new(&sandbox_config.log_directory).join(log_path);
    let mut tail = LogTail::new(log);
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let status = c.container_status(&id).await?;
        let exited = status.state == cri::ContainerState::ContainerExited as i32;
        tail.print_new()?;
        if exited {
            return Ok(status.exit_code);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = &mut interrupted => anyhow::bail!("interrupted"),
        }
    }
}

/// Prints a whole CRI log file as the container wrote it.
pub fn print_log(path: &Path) -> anyhow::Result<()> {
    let mut tail = LogTail::new(path.to_path_buf());
    tail.print_new()
}

/// Follows a CRI log file, printing each complete record's text to the stream it came
/// from.
struct LogTail {
    path: PathBuf,
    offset: u64,
    pending: Vec<u8>,
}

impl LogTail {
    fn new(path: PathBuf) -> Self {
        LogTail {
            path,
            offset: 0,
            pending: Vec::new(),
        }
    }

    fn print_new(&mut self) -> anyhow::Result<()> {
        let mut file = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("read {}", self.path.display())),
        };
        file.seek(SeekFrom::Start(self.offset))?;
        let mut buf = Vec::new();
        self.offset += file.read_to_end(&mut buf)? as u64;
        self.pending.extend_from_slice(&buf);
        let mut stdout = std::io::stdout().lock();
        let mut stderr = std::io::stderr().lock();
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            if let Some(record) = parse_record(&line[..line.len() - 1]) {
                let out: &mut dyn Write = if record.stderr {
                    &mut stderr
                } else {
                    &mut stdout
                };
                out.write_all(record.text)?;
                if !record.partial {
                    out.write_all(b"\n")?;
                }
            }
        }
        stdout.flush()?;
        Ok(())
    }
}

/// One line of a CRI log: `<time> <stdout|stderr> <P|F> <text>`.
struct Record<'a> {
    stderr: bool,
    partial: bool,
    text: &'a [u8],
}

fn parse_record(line: &[u8]) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, |&b| b == b' ');
    let _time = parts.next()?;
    let stream = parts.next()?;
    let tag = parts.next()?;
    let text = parts.next().unwrap_or_default();
    Some(Record {
        stderr: stream == b"stderr",
        partial: tag.starts_with(b"P"),
        text,
    })
}

fn hex_id(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse() {
        let r = parse_record(b"2026-01-01T00:00:00.1Z stderr P a b").unwrap();
        assert!(r.stderr && r.partial);
        assert_eq!(r.text, b"a b");
        let r = parse_record(b"2026-01-01T00:00:00.1Z stdout F ").unwrap();
        assert!(!r.stderr && !r.partial);
        assert_eq!(r.text, b"");
        assert!(parse_record(b"garbage").is_none());
    }
}
