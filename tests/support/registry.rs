//! A real OCI registry for one test: Debian's `docker-registry` (CNCF distribution 2.8)
//! on `127.0.0.1:<free port>`, storing its data in a temporary directory.
//!
//! The registry is a child process owned by a [`Registry`] value; dropping the value
//! kills and reaps the process and removes the directory, so it also goes away when the
//! test panics.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Where Debian's `docker-registry` package installs the registry.
const REGISTRY_BINARY: &str = "/usr/bin/docker-registry";

/// How long the registry may take to answer `GET /v2/` after it was started.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// How many times to try another port when the registry exits during start-up, which
/// happens when another process took the free port between our probe and its bind.
const START_ATTEMPTS: usize = 3;

/// A running registry; dropping it stops the process and deletes its storage.
pub struct Registry {
    child: Child,
    port: u16,
    dir: TempDir,
}

/// The status and body of a plain HTTP response.
pub struct HttpResponse {
    /// The status code, such as 200.
    pub status: u16,
    /// The header lines, without the status line, as sent.
    pub headers: String,
    /// The body, as sent.
    pub body: Vec<u8>,
}

impl Registry {
    /// Starts a registry on a free loopback port and waits until it answers `GET /v2/`.
    ///
    /// Panics, with the registry's log, when it does not come up.
    pub fn start() -> Registry {
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            match Self::try_start() {
                Ok(registry) => return registry,
                Err(failure) => failures.push(failure),
            }
        }
        panic!(
            "docker-registry did not start:\n{}",
            failures.join("\n---\n")
        );
    }

    fn try_start() -> Result<Registry, String> {
        let dir = tempfile::Builder::new()
            .prefix("crust-registry-")
            .tempdir()
            .expect("create registry temp dir");
        let port = free_loopback_port();
        Self::spawn(dir, port, None)
    }

    /// Restarts the registry on the same port and storage, now requiring HTTP basic
    /// authentication as `user` with `password` (an htpasswd file made by apache2-utils'
    /// `htpasswd -B`). Calling it again rotates the credentials.
    ///
    /// Push anonymously first: the test's push helpers send no credentials.
    pub fn require_auth(&mut self, user: &str, password: &str) {
        let htpasswd = self.dir.path().join("htpasswd");
        let out = Command::new("htpasswd")
            .args(["-Bbn", user, password])
            .output()
            .expect("run htpasswd");
        assert!(out.status.success(), "htpasswd: {out:?}");
        std::fs::write(&htpasswd, &out.stdout).expect("write htpasswd");
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Take the directory over into the new value; the old one is forgotten with a
        // child that is already reaped.
        let dir = std::mem::replace(
            &mut self.dir,
            tempfile::Builder::new()
                .prefix("crust-registry-old-")
                .tempdir()
                .expect("tempdir"),
        );
        let restarted = Self::spawn(dir, self.port, Some(&htpasswd))
            .unwrap_or_else(|e| panic!("docker-registry did not restart with auth: {e}"));
        let old = std::mem::replace(self, restarted);
        drop(old);
    }

    fn spawn(dir: TempDir, port: u16, htpasswd: Option<&Path>) -> Result<Registry, String> {
        let config_path = dir.path().join("config.yml");
        std::fs::write(
            &config_path,
            config_yaml(&dir.path().join("data"), port, htpasswd),
        )
        .expect("write registry config");
        let log_path = dir.path().join("registry.log");
        let log = File::create(&log_path).expect("create registry log");

        let child = Command::new(REGISTRY_BINARY)
            .arg("serve")
            .arg(&config_path)
            // Keep REGISTRY_* overrides and proxy settings of the caller out.
            .env_clear()
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone registry log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| panic!("spawn {REGISTRY_BINARY}: {err}"));
        // From here on, dropping `registry` kills the child.
        let mut registry = Registry { child, port, dir };

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = registry.child.try_wait() {
                return Err(format!(
                    "port {port}: exited with {status}:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                ));
            }
            let ready = if htpasswd.is_some() { 401 } else { 200 };
            if matches!(registry.try_get("/v2/"), Ok(response) if response.status == ready) {
                return Ok(registry);
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                // Make sure the process is gone before the next attempt.
                drop(registry);
                return Err(format!(
                    "port {port}: no answer to GET /v2/ within {STARTUP_TIMEOUT:?}:\n{log}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The registry's address as an image reference host, `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The directory the registry stores its data under (`rootdirectory`).
    pub fn storage_root(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Where the registry keeps the bytes of the blob `digest` (`sha256:<hex>`).
    ///
    /// The registry has no blob descriptor cache, so overwriting this file with other
    /// bytes of the same length makes it serve those bytes under the old digest.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest
            .strip_prefix("sha256:")
            .unwrap_or_else(|| panic!("blob digest {digest} is not sha256"));
        self.storage_root()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Sends `GET <path>` over plain HTTP/1.0, bypassing any client-side checks, and
    /// returns the response as sent. Panics when the request fails.
    pub fn get(&self, path: &str) -> HttpResponse {
        self.try_get(path)
            .unwrap_or_else(|err| panic!("GET http://{}{path}: {err}", self.host()))
    }

    fn try_get(&self, path: &str) -> std::io::Result<HttpResponse> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            stream,
            "GET {path} HTTP/1.0\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.host()
        )?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        parse_response(&response)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        // The process may already have exited; either way, reap it.
        let _ = self.child.kill();
        let _ = self.child.wait();
        // `dir` is removed when the field is dropped, after the process is gone.
    }
}

/// The registry configuration: filesystem storage with deletes enabled, and no blob
/// descriptor cache, so blobs corrupted on disk are served as they are now.
fn config_yaml(root: &Path, port: u16, htpasswd: Option<&Path>) -> String {
    let auth = match htpasswd {
        Some(path) => format!(
            "auth:\n  htpasswd:\n    realm: crust-test\n    path: {}\n",
            path.display()
        ),
        None => String::new(),
    };
    format!(
        "\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: crust-test-registry
health:
  storagedriver:
    enabled: false
{auth}",
        root = root.display()
    )
}

/// Asks the kernel for a free loopback port. The port is released again before the
/// registry binds it; [`Registry::start`] retries if someone else took it meanwhile.
fn free_loopback_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local address").port()
}

fn parse_response(response: &[u8]) -> std::io::Result<HttpResponse> {
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let end = response
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or_else(|| invalid("no end of headers"))?;
    let head = String::from_utf8_lossy(&response[..end]).into_owned();
    let (status_line, headers) = head.split_once("\r\n").unwrap_or((head.as_str(), ""));
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| invalid("bad status line"))?;
    Ok(HttpResponse {
        status,
        headers: headers.to_string(),
        body: response[end + 4..].to_vec(),
    })
}
