//! A real `crustd` for one test: its own root, state, socket and config in a temporary
//! directory, and a CRI client connected to it.
//!
//! Dropping a [`Crustd`] stops the daemon (SIGTERM, then SIGKILL) and removes its
//! directories, so it also goes away when the test panics.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cri::image_service_client::ImageServiceClient;
use cri::runtime_service_client::RuntimeServiceClient;
use crust_proto::cri;
use hyper_util::rt::TokioIo;
use tempfile::TempDir;
use tonic::transport::{Channel, Endpoint, Uri};

/// A running crustd with its directories.
pub struct Crustd {
    child: Option<Child>,
    dir: TempDir,
    /// Extra TOML appended to the generated config (tables).
    extra_config: String,
    /// Extra top-level keys, written before the first table.
    top_config: String,
    /// Extra keys of the `[registry]` table.
    registry_config: String,
}

/// The two CRI clients over one connection.
#[derive(Clone)]
pub struct CriClient {
    /// RuntimeService.
    pub runtime: RuntimeServiceClient<Channel>,
    /// ImageService.
    pub image: ImageServiceClient<Channel>,
}

impl Crustd {
    /// Starts crustd with default settings for a test.
    pub async fn start() -> Crustd {
        Self::start_with("").await
    }

    /// Starts crustd with `keys` added to its `[registry]` table.
    pub async fn start_with_registry(keys: &str) -> Crustd {
        Self::start_full("", keys, "").await
    }

    /// Starts crustd with `extra` TOML added to its config file.
    pub async fn start_with(extra: &str) -> Crustd {
        Self::start_configured("", extra).await
    }

    /// Starts crustd with `top` top-level keys and `extra` tables in its config file.
    pub async fn start_configured(top: &str, extra: &str) -> Crustd {
        Self::start_full(top, "", extra).await
    }

    async fn start_full(top: &str, registry: &str, extra: &str) -> Crustd {
        let dir = tempfile::Builder::new()
            .prefix("crust-e2e-")
            .tempdir()
            .expect("tempdir");
        // Traversable as a node's /run is: a pod's mapped root joins the pinned
        // namespaces below `state` by path.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o711)).unwrap();
        for sub in ["root", "state", "cni-conf", "cni-bin", "certs.d"] {
            fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let mut d = Crustd {
            child: None,
            dir,
            extra_config: extra.to_string(),
            top_config: top.to_string(),
            registry_config: registry.to_string(),
        };
        d.write_config();
        d.spawn().await;
        d
    }

    fn write_config(&self) {
        let p = self.dir.path();
        // The whole suite can run on another handler than the default embedded one
        // (`CRUST_TEST_DEFAULT_RUNTIME=runc`): only where a test picks none itself.
        let mut top = self.top_config.clone();
        if let Ok(handler) = std::env::var("CRUST_TEST_DEFAULT_RUNTIME")
            && !handler.is_empty()
            && !top.contains("default_runtime")
            && !self.extra_config.contains("[runtimes.")
        {
            top = format!("default_runtime = {handler:?}\n{top}");
        }
        let config = format!(
            "root = {root:?}\nstate = {state:?}\nlisten = {sock:?}\nlog_level = \"debug\"\n{top}\
             [registry]\nconfig_path = {certs:?}\n{registry}\n\
             [cni]\nconf_dir = {cni:?}\ncache_dir = {cache:?}\nbin_dirs = [{bin:?}, \"/usr/lib/cni\", \"/opt/cni/bin\"]\n{extra}\n",
            root = p.join("root"),
            state = p.join("state"),
            sock = self.socket(),
            certs = p.join("certs.d"),
            cni = p.join("cni-conf"),
            cache = p.join("cni-cache"),
            bin = p.join("cni-bin"),
            extra = self.extra_config,
            registry = self.registry_config,
        );
        fs::write(p.join("config.toml"), config).unwrap();
    }

    async fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_crustd"))
            .arg("--config")
            .arg(self.dir.path().join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn crustd");
        self.child = Some(child);
        self.wait_ready().await;
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("crustd exited during start-up ({status}):\n{}", self.log());
            }
            if let Ok(mut c) = self.try_client().await
                && c.runtime
                    .version(cri::VersionRequest::default())
                    .await
                    .is_ok()
            {
                return;
            }
            if Instant::now() > deadline {
                panic!("crustd did not become ready:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The test's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The root directory.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// The hosts.toml tree the daemon is configured with.
    pub fn certs_dir(&self) -> PathBuf {
        self.dir.path().join("certs.d")
    }

    /// A CNI plugin directory searched first, for fake plugins.
    pub fn cni_bin_dir(&self) -> PathBuf {
        self.dir.path().join("cni-bin")
    }

    /// The CNI config directory the daemon is configured with.
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.path().join("cni-conf")
    }

    /// The CRI socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("state").join("crust.sock")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("crustd.log")
    }

    /// Everything crustd has logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// A CRI client connected to the daemon, or the connection error.
    pub async fn try_client(&self) -> Result<CriClient, tonic::transport::Error> {
        let path = self.socket();
        let channel = Endpoint::try_from("http://[::]:50051")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await?;
        Ok(CriClient {
            runtime: RuntimeServiceClient::new(channel.clone()),
            image: ImageServiceClient::new(channel),
        })
    }

    /// A CRI client connected to the daemon.
    pub async fn client(&self) -> CriClient {
        self.try_client().await.expect("connect to crustd")
    }

    /// Stops crustd with SIGTERM and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills crustd with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts crustd again on the same directories.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    /// Replaces the extra top-level keys of the config, for the next start.
    pub fn set_top_config(&mut self, top: &str) {
        self.top_config = top.to_string();
        self.write_config();
    }

    /// Replaces the extra TOML tables of the config, for the next start.
    pub fn set_extra_config(&mut self, extra: &str) {
        self.extra_config = extra.to_string();
        self.write_config();
    }

    /// Starts crustd (after a stop) expecting it to exit during start-up within 30 s;
    /// its exit status and log.
    pub fn start_expecting_exit(&mut self) -> (std::process::ExitStatus, String) {
        assert!(self.child.is_none(), "crustd is running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_crustd"))
            .arg("--config")
            .arg(self.dir.path().join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn crustd");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status, self.log());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("crustd kept running:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts crustd again after [`Crustd::kill`] or [`Crustd::stop`].
    pub async fn start_again(&mut self) {
        self.spawn().await;
    }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) with a pid we spawned and a valid signal number has no memory effects.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

impl Crustd {
    /// Stops and removes every sandbox the daemon knows, so that a failing test leaves
    /// no network namespace, veth, iptables rule or pause process behind.
    fn remove_all_sandboxes(&self) {
        if self.child.is_none() {
            return;
        }
        let socket = self.socket();
        let this = SocketOnly(socket);
        // Drop runs inside the test's runtime, which cannot be blocked on: use a thread
        // with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let work = async {
                    let Ok(mut c) = this.client().await else {
                        return;
                    };
                    let Ok(list) = c
                        .runtime
                        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
                        .await
                    else {
                        return;
                    };
                    for s in list.into_inner().items {
                        let id = s.id;
                        let _ = c
                            .runtime
                            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                                pod_sandbox_id: id.clone(),
                            })
                            .await;
                        let _ = c
                            .runtime
                            .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
                            .await;
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(30), work).await;
            });
        })
        .join();
    }
}

/// Just enough of a [`Crustd`] to connect from another thread.
struct SocketOnly(PathBuf);

impl SocketOnly {
    async fn client(&self) -> Result<CriClient, tonic::transport::Error> {
        let path = self.0.clone();
        let channel = Endpoint::try_from("http://[::]:50051")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await?;
        Ok(CriClient {
            runtime: RuntimeServiceClient::new(channel.clone()),
            image: ImageServiceClient::new(channel),
        })
    }
}

impl Drop for Crustd {
    fn drop(&mut self) {
        self.remove_all_sandboxes();
        self.stop();
        // crustd makes its namespace pin directories (shared) mountpoints, as iproute2
        // does with /run/netns, and keeps them for the node's lifetime; a test's node
        // ends here.
        for dir in ["state/netns", "state/userns", "state/ipcns", "state/utsns"] {
            let pins = self.dir.path().join(dir);
            if let Ok(path) = std::ffi::CString::new(pins.display().to_string()) {
                // SAFETY: umount2 with a valid NUL-terminated path; no memory is shared.
                while unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } == 0 {}
            }
        }
        if std::thread::panicking() {
            eprintln!("--- crustd log ---\n{}", self.log());
        }
    }
}
