//! `crust` (or `crustd ctl`): a small CRI client for a node where nothing else is
//! installed. It speaks only the CRI, over the same socket kubelet uses, so what it
//! shows is what kubelet sees; crictl remains the tool of choice where it exists.

mod run;
mod table;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use cri::image_service_client::ImageServiceClient;
use cri::runtime_service_client::RuntimeServiceClient;
use crust_proto::cri;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use table::{Table, ago, short_id};

/// What `crust` can do.
#[derive(Subcommand, Debug)]
pub enum CtlCommand {
    /// Print the runtime's name and version.
    Version,
    /// Print the runtime's readiness conditions.
    Info,
    /// List pod sandboxes.
    Pods,
    /// List containers (running ones unless --all).
    Ps {
        /// Also list containers that are not running.
        #[arg(short, long)]
        all: bool,
    },
    /// List images.
    Images,
    /// Pull an image.
    Pull {
        /// Image reference, such as busybox or docker.io/library/busybox:1.36.
        image: String,
    },
    /// Remove an image (by name or id).
    Rmi {
        /// Image names or ids.
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Run a command in a new pod: pull the image if absent, create the pod and the
    /// container, print the container's output, remove both and exit with its code.
    Run(run::RunArgs),
    /// Run a command in a running container and print its output.
    Exec {
        /// Container id (or a unique prefix).
        container: String,
        /// Seconds to wait before the command is killed (0: no limit).
        #[arg(long, default_value_t = 0)]
        timeout: i64,
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        cmd: Vec<String>,
    },
    /// Print a container's log.
    Logs {
        /// Container id (or a unique prefix).
        container: String,
    },
    /// Stop and remove pods (with their containers).
    Rmp {
        /// Pod ids (or unique prefixes).
        pods: Vec<String>,
        /// Every pod on the node.
        #[arg(short, long, conflicts_with = "pods")]
        all: bool,
    },
}

/// Options shared by every `crust` command.
#[derive(Args, Debug)]
pub struct CtlArgs {
    /// The CRI socket [default: $CRUST_ENDPOINT, else the configured `listen`,
    /// /run/crust/crust.sock].
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Seconds to wait for each call.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// Both CRI services over one connection.
pub(crate) struct Client {
    runtime: RuntimeServiceClient<Channel>,
    image: ImageServiceClient<Channel>,
}

impl Client {
    async fn connect(socket: PathBuf, timeout: Duration) -> anyhow::Result<Client> {
        let path = socket.clone();
        // The URI is a placeholder: the connector below always dials the socket.
        let channel = Endpoint::from_static("http://[::]:50051")
            .timeout(timeout)
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .with_context(|| format!("connect to crustd at {}", socket.display()))?;
        Ok(Client {
            runtime: RuntimeServiceClient::new(channel.clone()),
            image: ImageServiceClient::new(channel),
        })
    }

    /// The one pod whose id starts with `prefix`.
    async fn pod_id(&mut self, prefix: &str) -> anyhow::Result<String> {
        let pods = self.pods().await?;
        unique(prefix, pods.iter().map(|p| p.id.as_str()), "pod")
    }

    /// The one container whose id starts with `prefix`.
    async fn container_id(&mut self, prefix: &str) -> anyhow::Result<String> {
        let containers = self.containers().await?;
        unique(
            prefix,
            containers.iter().map(|c| c.id.as_str()),
            "container",
        )
    }

    async fn container_status(&mut self, id: &str) -> anyhow::Result<cri::ContainerStatus> {
        self.runtime
            .container_status(cri::ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: false,
            })
            .await?
            .into_inner()
            .status
            .with_context(|| format!("container {id} has no status"))
    }

    async fn pods(&mut self) -> anyhow::Result<Vec<cri::PodSandbox>> {
        Ok(self
            .runtime
            .list_pod_sandbox(cri::ListPodSandboxRequest::default())
            .await?
            .into_inner()
            .items)
    }

    async fn containers(&mut self) -> anyhow::Result<Vec<cri::Container>> {
        Ok(self
            .runtime
            .list_containers(cri::ListContainersRequest::default())
            .await?
            .into_inner()
            .containers)
    }

    /// Stops and removes a pod; both are idempotent, so a pod half gone is finished.
    async fn remove_pod(&mut self, id: &str) -> anyhow::Result<()> {
        self.runtime
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.to_string(),
            })
            .await
            .with_context(|| format!("stop pod {id}"))?;
        self.runtime
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.to_string(),
            })
            .await
            .with_context(|| format!("remove pod {id}"))?;
        Ok(())
    }
}

/// The single id among `ids` that starts with `prefix`.
fn unique<'a>(
    prefix: &str,
    ids: impl Iterator<Item = &'a str>,
    kind: &str,
) -> anyhow::Result<String> {
    let matches: Vec<&str> = ids.filter(|id| id.starts_with(prefix)).collect();
    match matches.as_slice() {
        [one] => Ok(one.to_string()),
        [] => anyhow::bail!("no {kind} with id {prefix}"),
        _ => anyhow::bail!("{} {kind}s have ids starting with {prefix}", matches.len()),
    }
}

/// Runs one `crust` command against the daemon at `default_socket` (unless the
/// arguments name another); the process's exit code.
pub fn main(args: CtlArgs, default_socket: PathBuf) -> anyhow::Result<i32> {
    let endpoint = args
        .endpoint
        .clone()
        .or_else(|| std::env::var("CRUST_ENDPOINT").ok());
    let socket = match endpoint {
        Some(e) => PathBuf::from(e.strip_prefix("unix://").unwrap_or(&e)),
        None => default_socket,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime.block_on(async move {
        let timeout = Duration::from_secs(args.timeout.max(1));
        let mut client = Client::connect(socket, timeout).await?;
        dispatch(&mut client, args.command).await
    })
}

async fn dispatch(c: &mut Client, command: CtlCommand) -> anyhow::Result<i32> {
    match command {
        CtlCommand::Version => {
            let v = c
                .runtime
                .version(cri::VersionRequest::default())
                .await?
                .into_inner();
            println!("Version:  {}", v.version);
            println!("RuntimeName:  {}", v.runtime_name);
            println!("RuntimeVersion:  {}", v.runtime_version);
            println!("RuntimeApiVersion:  {}", v.runtime_api_version);
        }
        CtlCommand::Info => {
            let status = c
                .runtime
                .status(cri::StatusRequest { verbose: false })
                .await?
                .into_inner();
            let mut table = Table::new(["CONDITION", "STATUS", "REASON", "MESSAGE"]);
            for cond in status.status.map(|s| s.conditions).unwrap_or_default() {
                table.row([
                    cond.r#type,
                    cond.status.to_string(),
                    cond.reason,
                    cond.message,
                ]);
            }
            table.print();
        }
        CtlCommand::Pods => {
            let mut pods = c.pods().await?;
            pods.sort_by_key(|p| std::cmp::Reverse(p.created_at));
            let mut table = Table::new([
                "POD ID",
                "CREATED",
                "STATE",
                "NAME",
                "NAMESPACE",
                "ATTEMPT",
                "RUNTIME",
            ]);
            for p in pods {
                let meta = p.metadata.unwrap_or_default();
                let state = match cri::PodSandboxState::try_from(p.state) {
                    Ok(cri::PodSandboxState::SandboxReady) => "Ready",
                    _ => "NotReady",
                };
                table.row([
                    short_id(&p.id),
                    ago(p.created_at),
                    state.to_string(),
                    meta.name,
                    meta.namespace,
                    meta.attempt.to_string(),
                    if p.runtime_handler.is_empty() {
                        "(default)".to_string()
                    } else {
                        p.runtime_handler
                    },
                ]);
            }
            table.print();
        }
        CtlCommand::Ps { all } => {
            let mut containers = c.containers().await?;
            containers.sort_by_key(|c| std::cmp::Reverse(c.created_at));
            let mut table = Table::new([
                "CONTAINER",
                "IMAGE",
                "CREATED",
                "STATE",
                "NAME",
                "ATTEMPT",
                "POD ID",
            ]);
            for ctr in containers {
                let state = cri::ContainerState::try_from(ctr.state)
                    .unwrap_or(cri::ContainerState::ContainerUnknown);
                if !all && state != cri::ContainerState::ContainerRunning {
                    continue;
                }
                let meta = ctr.metadata.unwrap_or_default();
                let image = ctr.image.map(|i| i.image).unwrap_or_default();
                table.row([
                    short_id(&ctr.id),
                    short_id(image.trim_start_matches("sha256:")),
                    ago(ctr.created_at),
                    state_name(state).to_string(),
                    meta.name,
                    meta.attempt.to_string(),
                    short_id(&ctr.pod_sandbox_id),
                ]);
            }
            table.print();
        }
        CtlCommand::Images => {
            let images = c
                .image
                .list_images(cri::ListImagesRequest::default())
                .await?
                .into_inner()
                .images;
            let mut table = Table::new(["IMAGE", "TAG", "IMAGE ID", "SIZE"]);
            for image in images {
                let id = short_id(image.id.trim_start_matches("sha256:"));
                let size = table::bytes(image.size);
                if image.repo_tags.is_empty() {
                    let repo = image
                        .repo_digests
                        .first()
                        .and_then(|d| d.split_once('@'))
                        .map(|(repo, _)| repo.to_string())
                        .unwrap_or_else(|| "<none>".into());
                    table.row([repo, "<none>".into(), id, size]);
                    continue;
                }
                for tag in &image.repo_tags {
                    let (repo, tag) = split_tag(tag);
                    table.row([repo.to_string(), tag.to_string(), id.clone(), size.clone()]);
                }
            }
            table.print();
        }
        CtlCommand::Pull { image } => {
            let reference = run::pull(c, &image).await?;
            println!("Image is up to date for {reference}");
        }
        CtlCommand::Rmi { images } => {
            for image in images {
                c.image
                    .remove_image(cri::RemoveImageRequest {
                        image: Some(cri::ImageSpec {
                            image: image.clone(),
                            ..Default::default()
                        }),
                    })
                    .await
                    .with_context(|| format!("remove image {image}"))?;
                println!("Deleted: {image}");
            }
        }
        CtlCommand::Run(args) => return run::run(c, args).await,
        CtlCommand::Exec {
            container,
            timeout,
            cmd,
        } => {
            let id = c.container_id(&container).await?;
            let out = c
                .runtime
                .exec_sync(cri::ExecSyncRequest {
                    container_id: id,
                    cmd,
                    timeout,
                })
                .await?
                .into_inner();
            use std::io::Write;
            std::io::stdout().write_all(&out.stdout)?;
            std::io::stderr().write_all(&out.stderr)?;
            return Ok(out.exit_code);
        }
        CtlCommand::Logs { container } => {
            let id = c.container_id(&container).await?;
            let status = c.container_status(&id).await?;
            run::print_log(std::path::Path::new(&status.log_path))?;
        }
        CtlCommand::Rmp { pods, all } => {
            let ids = if all {
                c.pods().await?.into_iter().map(|p| p.id).collect()
            } else {
                anyhow::ensure!(!pods.is_empty(), "name the pods to remove, or --all");
                let mut ids = Vec::new();
                for prefix in &pods {
                    ids.push(c.pod_id(prefix).await?);
                }
                ids
            };
            for id in ids {
                c.remove_pod(&id).await?;
                println!("Removed pod {id}");
            }
        }
    }
    Ok(0)
}

fn state_name(state: cri::ContainerState) -> &'static str {
    match state {
        cri::ContainerState::ContainerCreated => "Created",
        cri::ContainerState::ContainerRunning => "Running",
        cri::ContainerState::ContainerExited => "Exited",
        cri::ContainerState::ContainerUnknown => "Unknown",
    }
}

/// `repo:tag` split at the tag's colon (not a registry port's).
fn split_tag(name: &str) -> (&str, &str) {
    match name.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (name, "<none>"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_split_after_the_port() {
        assert_eq!(
            split_tag("127.0.0.1:5000/box:1"),
            ("127.0.0.1:5000/box", "1")
        );
        assert_eq!(
            split_tag("127.0.0.1:5000/box"),
            ("127.0.0.1:5000/box", "<none>")
        );
    }

    #[test]
    fn prefixes_must_be_unique() {
        let ids = ["abc1", "abd2"];
        assert_eq!(unique("abc", ids.into_iter(), "pod").unwrap(), "abc1");
        assert!(unique("ab", ids.into_iter(), "pod").is_err());
        assert!(unique("x", ids.into_iter(), "pod").is_err());
    }
}
