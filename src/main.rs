//! crustd: the crust CRI daemon.

mod config;
mod cri;
mod ctl;
mod import;
mod metrics;
mod orphans;
mod server;
mod streaming;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_stream::wrappers::UnixListenerStream;

use config::{Config, LogFormat};

/// crustd serves the Kubernetes CRI (RuntimeService and ImageService) on a unix socket.
#[derive(Parser, Debug)]
#[command(name = "crustd", version, about)]
struct Cli {
    /// Configuration file [default: /etc/crust/config.toml; a missing default file means defaults].
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Root directory for persistent data (overrides `root`).
    #[arg(long)]
    root: Option<PathBuf>,
    /// State directory for runtime state (overrides `state`).
    #[arg(long)]
    state: Option<PathBuf>,
    /// CRI socket path (overrides `listen`).
    #[arg(long)]
    listen: Option<PathBuf>,
    /// Log level or tracing filter (overrides `log_level`).
    #[arg(long)]
    log_level: Option<String>,
    /// Log format (overrides `log_format`).
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        what: ConfigCommand,
    },
    /// A small CRI client (also installed as `crust`): version, pods, ps, images, pull, run, ...
    Ctl(ctl::CtlArgs),
    /// Work on the image store directly (crustd stopped).
    Images {
        #[command(subcommand)]
        what: ImagesCommand,
    },
}

#[derive(Subcommand, Debug)]
enum ImagesCommand {
    /// Import images from a running containerd (manifests, configs and layers read over
    /// its API, verified and unpacked into the store under --root; no registry contacted).
    Import(import::ImportArgs),
}

/// crust: a small client of crustd's CRI socket (`crustd ctl` under another name).
#[derive(Parser, Debug)]
#[command(name = "crust", version)]
struct CtlCli {
    /// Configuration file whose `listen` names the socket [default: /etc/crust/config.toml].
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    args: ctl::CtlArgs,
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Print the complete default configuration, documented.
    Default,
    /// Check a configuration file (with flags applied) and print the result.
    Check,
    /// Print one setting (root, state or listen), for scripts.
    Get {
        /// The key.
        #[arg(value_parser = ["root", "state", "listen"])]
        key: String,
    },
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let (path, required) = match &cli.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(config::DEFAULT_CONFIG_PATH), false),
    };
    let mut config = Config::load(&path, required)?;
    if let Some(v) = &cli.root {
        config.root = v.clone();
    }
    if let Some(v) = &cli.state {
        config.state = v.clone();
    }
    if let Some(v) = &cli.listen {
        config.listen = v.clone();
    }
    if let Some(v) = &cli.log_level {
        config.log_level = v.clone();
    }
    if let Some(v) = cli.log_format {
        config.log_format = v;
    }
    config.validate().context("command-line flags")?;
    Ok(config)
}

/// Caps glibc's malloc arenas at one per core (its default is eight per core).
///
/// Every thread that allocates may claim an arena of its own, and freed memory stays
/// resident in it: with tokio's blocking pool coming and going, crustd's anonymous
/// memory wandered by a megabyte (a sixth of it) with how many arenas a run touched.
fn limit_malloc_arenas() {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    // SAFETY: mallopt only sets an allocator parameter; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, cores as libc::c_int);
    }
}

/// The tracing filter a configured log level stands for.
fn log_directive(level: &str) -> String {
    // A bare level applies to crust; the libraries underneath (h2, hyper, rustls) stay
    // at info, or debug would be their frame-by-frame chatter. libcgroups logs every
    // controller the host lacks on every stats read, kill and delete: only its errors.
    const QUIET: &str = "libcgroups=error,libcontainer=warn";
    match level {
        "trace" | "debug" => format!(
            "info,crustd={level},crust_image={level},crust_cni={level},crust_runtime={level},crust_sandbox={level},{QUIET}"
        ),
        "info" | "warn" | "error" => format!("{level},{QUIET}"),
        other => other.to_string(),
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::new(log_directive(&config.log_level));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// The socket named by the configuration file (or the default one), for the client.
fn configured_socket(config: Option<&PathBuf>) -> anyhow::Result<PathBuf> {
    let (path, required) = match config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(config::DEFAULT_CONFIG_PATH), false),
    };
    Ok(Config::load(&path, required)?.listen)
}

/// `crust ps | head` must end quietly when the reader goes, as other Unix tools do, not
/// panic in `println!` on EPIPE: the client takes SIGPIPE's default action back (Rust
/// ignores it). The daemon keeps ignoring it; its peers may close sockets at any time.
fn client_dies_on_closed_pipe() {
    // SAFETY: called first thing in main, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> anyhow::Result<()> {
    // Installed as a link named `crust`, the binary is the client.
    let invoked_as = std::env::args_os().next().map(PathBuf::from);
    if invoked_as.as_deref().and_then(|p| p.file_name()) == Some("crust".as_ref()) {
        client_dies_on_closed_pipe();
        let cli = CtlCli::parse();
        let socket = configured_socket(cli.config.as_ref())?;
        std::process::exit(ctl::main(cli.args, socket)?);
    }
    let mut cli = Cli::parse();
    match cli.command.take() {
        Some(Command::Ctl(args)) => {
            client_dies_on_closed_pipe();
            let socket = match &cli.listen {
                Some(listen) => listen.clone(),
                None => configured_socket(cli.config.as_ref())?,
            };
            std::process::exit(ctl::main(args, socket)?);
        }
        Some(Command::Config {
            what: ConfigCommand::Default,
        }) => {
            print!("{}", config::DEFAULT_CONFIG_TOML);
            return Ok(());
        }
        Some(Command::Config {
            what: ConfigCommand::Get { key },
        }) => {
            let config = load_config(&cli)?;
            let value = match key.as_str() {
                "root" => &config.root,
                "state" => &config.state,
                _ => &config.listen,
            };
            println!("{}", value.display());
            return Ok(());
        }
        Some(Command::Config {
            what: ConfigCommand::Check,
        }) => {
            let config = load_config(&cli)?;
            println!("{config:#?}");
            return Ok(());
        }
        Some(Command::Images {
            what: ImagesCommand::Import(args),
        }) => {
            let config = load_config(&cli)?;
            init_logging(&config);
            std::process::exit(import::main(&config, args)?);
        }
        None => {}
    }
    limit_malloc_arenas();
    let config = load_config(&cli)?;
    init_logging(&config);
    // Private by default, whoever started us (the systemd unit sets the same): the
    // store, bundles and writable layers hold secrets and setuid binaries. What
    // containers must reach gets its mode explicitly (crust_runtime::fsmode).
    crust_runtime::fsmode::set_daemon_umask();
    // Pause processes and monitors outlive the processes that started them; as a
    // subreaper crustd inherits them (and reaps them when they end) instead of an init
    // that may not reap at all.
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!(error = %e, "cannot become a child subreaper");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("crustd")
        .build()
        .context("start the async runtime")?;
    let result = runtime.block_on(serve(Arc::new(config)));
    if let Err(e) = &result {
        tracing::error!("{e:#}");
    }
    result
}

async fn serve(config: Arc<Config>) -> anyhow::Result<()> {
    // The root holds nothing another user may see: 0700. The state directory is 0711
    // as containerd makes /run/containerd: the CRI socket lives there by default and
    // its own mode (0660) decides who may connect, so others may pass through without
    // listing; everything below it is 0700 (the umask), but for the few directories
    // the runtime passes through as a user-namespaced pod's root (0711; see fsmode).
    for (dir, mode) in [(&config.root, 0o700), (&config.state, 0o711)] {
        crust_runtime::fsmode::private_dir(dir, mode)
            .with_context(|| format!("create {}", dir.display()))?;
    }
    for sub in crust_runtime::fsmode::TRAVERSED_STATE_DIRS {
        let dir = config.state.join(sub);
        crust_runtime::fsmode::private_dir(&dir, 0o711)
            .with_context(|| format!("create {}", dir.display()))?;
    }
    let listener = server::bind(&config.listen).await?;
    let metrics = Arc::new(metrics::Metrics::new());
    if let Some(addr) = config.metrics_address {
        let (listener, bound) = metrics::bind(addr)
            .await
            .with_context(|| format!("metrics address {addr}"))?;
        tracing::info!(address = %bound, "serving metrics");
        tokio::spawn(metrics::serve_listener(
            listener,
            Arc::clone(&metrics),
            std::future::pending(),
        ));
    }
    let streams = streaming::bind(&config.streaming).await?;
    let cri = cri::Cri::new(Arc::clone(&metrics));
    let (runtime_service, image_service) = cri::services(cri.clone());
    tracing::info!(socket = %config.listen.display(), version = env!("CARGO_PKG_VERSION"), "crustd serving");
    let server = tonic::transport::Server::builder()
        .add_service(runtime_service)
        .add_service(image_service)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), server::shutdown_signal());
    let recovery = tokio::spawn(recover(Arc::clone(&config), streams.base_url().to_string()));
    tokio::pin!(server);
    // Serve (with Unavailable answers) while recovery runs, so clients see a live
    // socket; recovery failing stops the daemon.
    tokio::select! {
        r = &mut server => return r.context("grpc server"),
        r = recovery => {
            let services = Arc::new(r.context("recovery task")??);
            let weak = Arc::downgrade(&services);
            let exits = Arc::clone(&metrics);
            services.containers.set_exit_hook(Box::new(move |id| {
                if let Some(s) = weak.upgrade() {
                    if s.containers.get(id).is_some_and(|c| c.reason == "OOMKilled") {
                        exits.observe_oom();
                    }
                    s.events.emit(&s, id, crust_proto::cri::ContainerEventType::ContainerStoppedEvent);
                }
            }));
            metrics.set_gauge_source(gauges(Arc::downgrade(&services)));
            tokio::spawn(streaming::serve(streams, Arc::clone(&services.streaming)));
            cri.set_ready(services);
            tracing::info!("recovery finished; ready");
        }
    }
    server.await.context("grpc server")?;
    let _ = std::fs::remove_file(&config.listen);
    tracing::info!("stopped");
    Ok(())
}

/// The metadata store's page cache. Records are read once, at start-up; a commit
/// touches a few pages. Measured over 1,500 container cycles, 4 MiB let crustd's
/// anonymous memory climb twice as far as 512 KiB does, at no visible cost per call.
const DB_CACHE_BYTES: usize = 512 << 10;

/// The metadata store's file under the root.
const DB_FILE: &str = "crust.redb";

/// The image store's options, from the configuration.
fn registry_options(config: &Config) -> crust_image::RegistryOptions {
    crust_image::RegistryOptions {
        config_path: config.registry.config_path.clone(),
        auths: config.registry.auths.clone().into_iter().collect(),
        max_layer_unpacked_bytes: config.registry.max_layer_unpacked_bytes,
        max_image_unpacked_bytes: config.registry.max_image_unpacked_bytes,
        read_timeout: std::time::Duration::from_secs(config.registry.read_timeout_secs),
    }
}

/// Opens the store and reconciles it with the disk and what runs: what start-up must
/// finish before any RPC is answered.
async fn recover(config: Arc<Config>, streaming_url: String) -> anyhow::Result<cri::Services> {
    let db_path = config.root.join(DB_FILE);
    let db = tokio::task::spawn_blocking(move || {
        // Lists and statuses are served from memory; redb's page cache (1 GiB by
        // default) only speeds up writes, and would grow with every record written.
        let db = redb::Database::builder()
            .set_cache_size(DB_CACHE_BYTES)
            .create(&db_path)
            .with_context(|| {
                format!(
                    "open metadata store {} (is another crustd using this root?)",
                    db_path.display()
                )
            })?;
        // Container environments (secrets) are in there; an older crustd may have
        // created it 0644.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&db_path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod {}", db_path.display()))?;
        anyhow::Ok(db)
    })
    .await??;
    let db = Arc::new(db);
    let options = registry_options(&config);
    let images = {
        let (root, db) = (config.root.clone(), Arc::clone(&db));
        tokio::task::spawn_blocking(move || crust_image::ImageService::open(root, db, options))
            .await?
            .context("open the image store")?
    };
    let cni = Arc::new(crust_cni::Cni::new(crust_cni::CniOptions {
        conf_dir: config.cni.conf_dir.clone(),
        bin_dirs: config.cni.bin_dirs.clone(),
        cache_dir: config.cni.cache_dir.clone(),
        ..Default::default()
    }));
    let monitor_binary = match &config.monitor_path {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("locate crustd")?
            .with_file_name("crust-monitor"),
    };
    let sandbox_options = crust_sandbox::SandboxOptions {
        root: config.root.clone(),
        state: config.state.clone(),
        runtimes: config
            .runtimes
            .iter()
            .map(|(k, v)| (k.clone(), v.handler()))
            .collect(),
        monitor_binary: monitor_binary.clone(),
        default_runtime: config.default_runtime.clone(),
        user_namespace_runtime: config.user_namespace_runtime(),
        cgroup_driver: match config.cgroup_driver {
            config::CgroupDriver::Cgroupfs => crust_sandbox::CgroupDriver::Cgroupfs,
            config::CgroupDriver::Systemd => crust_sandbox::CgroupDriver::Systemd,
        },
        drop_infra: config.drop_infra_container,
    };
    let sandboxes = crust_sandbox::SandboxService::open(Arc::clone(&db), sandbox_options, cni)
        .await
        .context("recover pod sandboxes")?;
    // RuntimeDefault AppArmor means crust's profile: loaded now if the host has
    // AppArmor and lacks it. If that fails, containers asking for it are refused.
    match tokio::task::spawn_blocking(crust_runtime::apparmor::ensure_default_profile).await? {
        Ok(crust_runtime::apparmor::Loaded::NotEnabled) => {}
        Ok(loaded) => tracing::info!(
            profile = crust_runtime::apparmor::DEFAULT_PROFILE_NAME,
            ?loaded,
            "apparmor"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "apparmor: the RuntimeDefault profile is not loaded; containers asking for it will be refused")
        }
    }
    let containers = crust_runtime::container::ContainerService::open(
        Arc::clone(&db),
        crust_runtime::container::ContainerOptions {
            state: config.state.clone(),
            monitor_binary,
            runtimes: sandboxes.runtimes(),
            checkpoint_dir: config.root.join("checkpoints"),
            restore_dir: config.root.join("restores"),
        },
    )
    .await
    .context("recover containers")?;
    let images = Arc::new(images);
    let streaming = Arc::new(streaming::StreamingServer::new(
        streaming_url,
        std::time::Duration::from_secs(config.streaming.token_ttl_secs),
        streaming::Limits::from_config(&config.streaming),
        streaming::StreamContext {
            containers: Arc::clone(&containers),
            sandboxes: Arc::clone(&sandboxes),
        },
    ));
    let services = cri::Services {
        config: Arc::clone(&config),
        images,
        sandboxes,
        containers,
        streaming,
        stats: cri::stats::StatsState::new(),
        events: cri::events::Events::new(),
    };
    orphans::sweep(&services).await?;
    Ok(services)
}

/// The gauges computed at each scrape: sandboxes and containers by state, live monitors.
fn gauges(
    services: std::sync::Weak<cri::Services>,
) -> Box<dyn Fn() -> Vec<metrics::Gauge> + Send + Sync> {
    Box::new(move || {
        let Some(s) = services.upgrade() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        // Gauges of monotonic counts (the gauge source has no counter type); the
        // pod-start path pays at most one durable commit per CRI call.
        for (durability, value) in [
            ("durable", crust_util::store::durable_commits()),
            ("deferred", crust_util::store::deferred_commits()),
        ] {
            out.push(metrics::Gauge {
                name: "crust_store_commits",
                help: "Metadata store commits since start-up: durable ones (an fsync each) and deferred ones (made durable by the next durable one).",
                labels: vec![("durability", durability.to_string())],
                value: value as f64,
            });
        }
        let sandboxes = s.sandboxes.list();
        for (state, ready) in [("ready", true), ("notready", false)] {
            out.push(metrics::Gauge {
                name: "crust_sandboxes",
                help: "Pod sandboxes by state.",
                labels: vec![("state", state.to_string())],
                value: sandboxes.iter().filter(|r| r.is_ready() == ready).count() as f64,
            });
        }
        let containers = s.containers.list();
        for (state, name) in [
            (
                crust_proto::cri::ContainerState::ContainerCreated,
                "created",
            ),
            (
                crust_proto::cri::ContainerState::ContainerRunning,
                "running",
            ),
            (crust_proto::cri::ContainerState::ContainerExited, "exited"),
            (
                crust_proto::cri::ContainerState::ContainerUnknown,
                "unknown",
            ),
        ] {
            out.push(metrics::Gauge {
                name: "crust_containers",
                help: "Containers by state.",
                labels: vec![("state", name.to_string())],
                value: containers
                    .iter()
                    .filter(|c| crust_runtime::container::state(c) == state)
                    .count() as f64,
            });
        }
        out.push(metrics::Gauge {
            name: "crust_monitors",
            help: "Live crust-monitor processes.",
            labels: Vec::new(),
            value: containers
                .iter()
                .filter(|c| c.finished_at.is_none() && c.monitor_pid > 0)
                .count() as f64,
        });
        out
    })
}

#[cfg(test)]
mod tests {
    use super::log_directive;

    #[test]
    fn bare_levels_quiet_libcgroups_and_filters_pass_through() {
        assert_eq!(
            log_directive("info"),
            "info,libcgroups=error,libcontainer=warn"
        );
        let debug = log_directive("debug");
        assert!(debug.starts_with("info,crustd=debug,"), "{debug}");
        assert!(
            debug.ends_with(",libcgroups=error,libcontainer=warn"),
            "{debug}"
        );
        assert_eq!(
            log_directive("crustd=trace,h2=warn"),
            "crustd=trace,h2=warn"
        );
    }
}
