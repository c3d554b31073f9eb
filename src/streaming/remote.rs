//! Exec and attach, whatever the wire: the client's streams as channels, the
//! process or the monitor's attach socket on the other side, and the outcome that
//! goes back on the error stream.

use std::sync::Arc;
use std::time::Duration;

use crust_proto::monitor::{FrameKind, Resize};
use crust_runtime::container::{ContainerService, ExecStreams, StreamingExec};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::fdio::FdIo;

/// How long output may still drain after the process exited (a child it left in the
/// background can hold a pipe open for ever).
const DRAIN: Duration = Duration::from_secs(2);

/// A terminal size as clients send it on the resize stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct TermSize {
    /// Columns.
    #[serde(rename = "Width")]
    pub width: u16,
    /// Rows.
    #[serde(rename = "Height")]
    pub height: u16,
}

/// The client's side of a remote command, as channels.
pub struct ClientStreams {
    /// What the client types; closed when it closes stdin.
    pub stdin: Option<mpsc::Receiver<Vec<u8>>>,
    /// Output for the client's stdout; dropped at the end.
    pub stdout: Option<mpsc::Sender<Vec<u8>>>,
    /// Output for the client's stderr; dropped at the end.
    pub stderr: Option<mpsc::Sender<Vec<u8>>>,
    /// Terminal resizes: the resize stream's bytes, JSON sizes one after another.
    pub resize: Option<mpsc::Receiver<Vec<u8>>>,
    /// Cancelled when the client has gone away.
    pub gone: CancellationToken,
}

/// How a remote command ended, for the error stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The command ran and exited with this code (0 for a finished attach).
    Exited(i32),
    /// It could not run.
    Failed(String),
}

impl Outcome {
    /// The `metav1.Status` JSON that protocol v4 and later write, as kubelet does.
    pub fn status_json(&self, cmd: &[String]) -> String {
        let value = match self {
            Outcome::Exited(0) => serde_json::json!({"metadata": {}, "status": "Success"}),
            Outcome::Exited(code) => serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": format!(
                    "command terminated with non-zero exit code: error executing command {}, exit code {code}",
                    go_slice(cmd)
                ),
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
            }),
            Outcome::Failed(message) => serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": message,
                "reason": "InternalError",
                "details": {"causes": [{"message": message}]},
                "code": 500,
            }),
        };
        value.to_string()
    }

    /// The plain text protocols before v4 write: nothing on success.
    pub fn status_text(&self, cmd: &[String]) -> Option<String> {
        match self {
            Outcome::Exited(0) => None,
            Outcome::Exited(code) => Some(format!(
                "command terminated with non-zero exit code: error executing command {}, exit code {code}",
                go_slice(cmd)
            )),
            Outcome::Failed(message) => Some(message.clone()),
        }
    }
}

/// A command line as Go prints a `[]string`, which is what clients show users.
fn go_slice(cmd: &[String]) -> String {
    format!("[{}]", cmd.join(" "))
}

/// Copies a descriptor's output to a client stream until its end.
async fn pump_out(fd: FdIo, tx: mpsc::Sender<Vec<u8>>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match fd.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send(buf[..n].to_vec()).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Feeds the client's input and resizes to the process, in the order they came: a
/// size sent before a line must be in place when the line is read. On a terminal, the
/// end of input is Ctrl-D (a pty has no other way to say it); on a pipe it is closing
/// the pipe.
async fn feed(
    process: Arc<StreamingExec>,
    mut fd: Option<FdIo>,
    mut stdin: Option<mpsc::Receiver<Vec<u8>>>,
    mut resize: Option<mpsc::Receiver<Vec<u8>>>,
    tty: bool,
) {
    let mut sizes = SizeParser::default();
    while stdin.is_some() || resize.is_some() {
        tokio::select! {
            // Both streams are filled in arrival order; preferring resizes keeps it.
            biased;
            bytes = recv_or_pending(&mut resize) => match bytes {
                Some(bytes) => {
                    for size in sizes.push(&bytes) {
                        let _ = process.resize(size.height, size.width);
                    }
                }
                None => resize = None,
            },
            bytes = recv_or_pending(&mut stdin) => match (bytes, &fd) {
                (Some(bytes), Some(f)) => {
                    if f.write_all(&bytes).await.is_err() {
                        fd = None;
                    }
                }
                (Some(_), None) => {}
                (None, _) => {
                    stdin = None;
                    if tty && let Some(f) = &fd {
                        let _ = f.write_all(&[4]).await;
                    }
                    fd = None;
                }
            },
        }
    }
}

/// Runs `cmd` in the container for the client and reports its exit code. A client
/// that goes away takes the process with it.
pub async fn exec(
    containers: &ContainerService,
    container_id: &str,
    cmd: Vec<String>,
    tty: bool,
    client: ClientStreams,
) -> Outcome {
    let ClientStreams {
        stdin,
        stdout,
        stderr,
        mut resize,
        gone,
    } = client;
    let streams = ExecStreams {
        stdin: stdin.is_some(),
        stdout: stdout.is_some(),
        stderr: stderr.is_some() && !tty,
        tty,
    };
    let mut process = match containers.exec_streaming(container_id, cmd, streams).await {
        Ok(p) => p,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    let mut outputs = JoinSet::new();
    let mut inputs = JoinSet::new();
    let fds = [
        (process.stdout.take(), stdout),
        (process.stderr.take(), stderr),
    ];
    for (fd, tx) in fds {
        if let (Some(fd), Some(tx)) = (fd, tx)
            && let Ok(fd) = FdIo::new(fd)
        {
            outputs.spawn(pump_out(fd, tx));
        }
    }
    let stdin_fd = process.stdin.take().and_then(|fd| FdIo::new(fd).ok());
    let process = Arc::new(process);
    inputs.spawn(feed(process.clone(), stdin_fd, stdin, resize.take(), tty));
    let code = tokio::select! {
        code = process.wait() => code,
        _ = gone.cancelled() => {
            process.kill();
            process.wait().await
        }
    };
    let _ = tokio::time::timeout(DRAIN, async {
        while outputs.join_next().await.is_some() {}
    })
    .await;
    outputs.abort_all();
    inputs.abort_all();
    match code {
        Ok(code) => Outcome::Exited(code),
        Err(e) => Outcome::Failed(format!("wait for the exec'd process: {e}")),
    }
}

/// Joins the container's monitor: its output from now on, the client's input, and
/// resizes. Ends when the container exits or the client leaves.
pub async fn attach(
    containers: &ContainerService,
    container_id: &str,
    client: ClientStreams,
) -> Outcome {
    let ClientStreams {
        mut stdin,
        stdout,
        stderr,
        mut resize,
        gone,
    } = client;
    let record = match containers.running(container_id) {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    let stdin_once = record.config.stdin_once;
    let conn = match crust_runtime::monitor::attach(&record.attach_socket()).await {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(format!("attach to container {container_id}: {e}")),
    };
    let (mut from_monitor, mut to_monitor) = conn.into_split();
    let output = async move {
        while let Ok(Some(frame)) = crust_runtime::monitor::read_frame(&mut from_monitor).await {
            let tx = match frame.kind {
                FrameKind::Stdout => stdout.as_ref(),
                // With a tty the monitor sends only stdout; without one, a client that
                // did not ask for stderr does not get it.
                FrameKind::Stderr => stderr.as_ref(),
                FrameKind::Exit => return,
                _ => None,
            };
            if let Some(tx) = tx {
                let _ = tx.send(frame.payload).await;
            }
        }
    };
    let input = async {
        let had_stdin = stdin.is_some();
        let mut sizes = SizeParser::default();
        loop {
            let (kind, payload) = tokio::select! {
                // Both streams are filled in arrival order; preferring resizes keeps it.
                biased;
                size = recv_or_pending(&mut resize) => match size {
                    // Only the latest of a burst of sizes matters.
                    Some(bytes) => match sizes.push(&bytes).pop() {
                        Some(size) => {
                            let resize = Resize { rows: size.height, cols: size.width };
                            (FrameKind::Resize, resize.encode().to_vec())
                        }
                        None => continue,
                    },
                    None => {
                        resize = None;
                        continue;
                    }
                },
                bytes = recv_or_pending(&mut stdin) => match bytes {
                    Some(bytes) => (FrameKind::Stdin, bytes),
                    None => {
                        stdin = None;
                        if !stdin_once {
                            continue;
                        }
                        (FrameKind::CloseStdin, Vec::new())
                    }
                },
                _ = gone.cancelled() => break,
            };
            let written = crust_runtime::monitor::write_frame(&mut to_monitor, kind, &payload);
            if written.await.is_err() {
                return;
            }
        }
        // The client left: a stdin_once container's stdin closes with its first attach.
        if had_stdin && stdin_once && stdin.is_some() {
            let close =
                crust_runtime::monitor::write_frame(&mut to_monitor, FrameKind::CloseStdin, &[]);
            let _ = close.await;
        }
    };
    tokio::select! {
        _ = output => {}
        _ = input => {}
    }
    Outcome::Exited(0)
}

/// Splits a byte stream of concatenated JSON objects into sizes.
#[derive(Default)]
pub struct SizeParser {
    buf: Vec<u8>,
}

impl SizeParser {
    /// Adds bytes and returns every size now complete; garbage is dropped.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<TermSize> {
        self.buf.extend_from_slice(bytes);
        let mut sizes = Vec::new();
        let mut stream = serde_json::Deserializer::from_slice(&self.buf).into_iter::<TermSize>();
        let mut consumed = 0;
        loop {
            match stream.next() {
                Some(Ok(size)) => {
                    sizes.push(size);
                    consumed = stream.byte_offset();
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(_)) => {
                    consumed = self.buf.len();
                    break;
                }
                None => {
                    consumed = stream.byte_offset();
                    break;
                }
            }
        }
        self.buf.drain(..consumed);
        // A client that never finishes an object cannot make us hold much.
        if self.buf.len() > 4096 {
            self.buf.clear();
        }
        sizes
    }
}

/// The next message of an optional channel; pending for ever without one.
async fn recv_or_pending<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd() -> Vec<String> {
        vec!["sh".into(), "-c".into(), "exit 3".into()]
    }

    #[test]
    fn success_is_a_bare_status() {
        assert_eq!(
            Outcome::Exited(0).status_json(&cmd()),
            r#"{"metadata":{},"status":"Success"}"#
        );
        assert_eq!(Outcome::Exited(0).status_text(&cmd()), None);
    }

    #[test]
    fn a_non_zero_exit_carries_its_code_as_kubelet_writes_it() {
        let v: serde_json::Value =
            serde_json::from_str(&Outcome::Exited(3).status_json(&cmd())).unwrap();
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "3");
        assert_eq!(
            v["message"],
            "command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3"
        );
        assert!(
            Outcome::Exited(3)
                .status_text(&cmd())
                .unwrap()
                .contains("exit code 3")
        );
    }

    #[test]
    fn a_failure_is_an_internal_error() {
        let v: serde_json::Value =
            serde_json::from_str(&Outcome::Failed("boom".into()).status_json(&cmd())).unwrap();
        assert_eq!(v["reason"], "InternalError");
        assert_eq!(v["message"], "boom");
        assert_eq!(v["code"], 500);
    }

    #[test]
    fn sizes_parse_as_clients_send_them() {
        let s: TermSize = serde_json::from_str(r#"{"Width":120,"Height":40}"#).unwrap();
        assert_eq!(
            s,
            TermSize {
                width: 120,
                height: 40
            }
        );
    }

    #[test]
    fn sizes_split_anywhere() {
        let mut p = SizeParser::default();
        assert_eq!(p.push(br#"{"Width":80,"Hei"#), vec![]);
        assert_eq!(
            p.push(br#"ght":24}{"Width":100,"Height":30}"#),
            vec![
                TermSize {
                    width: 80,
                    height: 24
                },
                TermSize {
                    width: 100,
                    height: 30
                }
            ]
        );
        assert_eq!(p.push(b"\n"), vec![]);
        assert_eq!(
            p.push(br#"{"Width":1,"Height":2}"#),
            vec![TermSize {
                width: 1,
                height: 2
            }]
        );
    }

    #[test]
    fn garbage_is_dropped() {
        let mut p = SizeParser::default();
        assert_eq!(p.push(b"nonsense"), vec![]);
        assert_eq!(
            p.push(br#"{"Width":3,"Height":4}"#),
            vec![TermSize {
                width: 3,
                height: 4
            }]
        );
    }
}
