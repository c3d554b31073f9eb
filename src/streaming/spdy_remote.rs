//! Exec and attach over SPDY: kubelet's remote-command protocols `channel.k8s.io`
//! (v1) to `v5.channel.k8s.io`.
//!
//! The client opens one stream per channel, named by its `streamType` header: error
//! (always), stdin, stdout, stderr (not with a tty from v2 on) and resize (with a tty
//! from v3 on). Once all it asked for are open the command runs; at the end the
//! outcome goes on the error stream (text before v4, a `metav1.Status` from v4), the
//! streams end and the connection says GOAWAY.

use std::time::Duration;

use tokio::sync::mpsc;

use super::remote::{ClientStreams, Outcome};
use super::spdy_session::{Incoming, PROTOCOL_ERROR, Session};
use super::{Limits, RemoteCommand, RemoteProtocol, StreamContext};

/// How long the client gets to read the end before the connection is closed.
const LINGER: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Opened {
    error: Option<Incoming>,
    stdin: Option<Incoming>,
    stdout: Option<Incoming>,
    stderr: Option<Incoming>,
    resize: Option<Incoming>,
}

/// Serves one remote command on an upgraded connection.
pub async fn serve(
    mut session: Session,
    protocol: RemoteProtocol,
    command: RemoteCommand,
    ctx: StreamContext,
    limits: &Limits,
) {
    let want = command.streams();
    let tty_merges_stderr = want.tty && protocol >= RemoteProtocol::V2;
    let wants_resize = want.tty && protocol >= RemoteProtocol::V3;
    let mut opened = Opened::default();
    let complete = |o: &Opened| {
        o.error.is_some()
            && (!want.stdin || o.stdin.is_some())
            && (!want.stdout || o.stdout.is_some())
            && (!want.stderr || tty_merges_stderr || o.stderr.is_some())
            && (!wants_resize || o.resize.is_some())
    };
    let deadline = tokio::time::Instant::now() + limits.stream_creation_timeout;
    while !complete(&opened) {
        let stream = tokio::select! {
            s = session.incoming.recv() => s,
            _ = tokio::time::sleep_until(deadline) => {
                tracing::debug!("remote command: the client did not open its streams in time");
                None
            }
        };
        let Some(stream) = stream else {
            return;
        };
        let slot = match stream.header("streamtype").unwrap_or_default() {
            "error" => &mut opened.error,
            "stdin" => &mut opened.stdin,
            "stdout" => &mut opened.stdout,
            "stderr" => &mut opened.stderr,
            "resize" => &mut opened.resize,
            other => {
                tracing::debug!(stream_type = other, "remote command: unknown stream reset");
                session.writer().reset(stream.id, PROTOCOL_ERROR).await;
                continue;
            }
        };
        if slot.is_some() {
            tracing::debug!(
                id = stream.id,
                "remote command: second stream of a kind reset"
            );
            session.writer().reset(stream.id, PROTOCOL_ERROR).await;
            continue;
        }
        *slot = Some(stream);
    }
    let writer = session.writer();
    let mut pumps = tokio::task::JoinSet::new();
    // The streams stay in `opened` until the end, holding their slots in the session.
    let mut output = |stream: &Option<Incoming>, wanted: bool| {
        let stream = stream.as_ref().filter(|_| wanted)?;
        let (tx, rx) = mpsc::channel(8);
        pumps.spawn(writer.clone().pump(stream.id, rx));
        Some(tx)
    };
    let stdout = output(&opened.stdout, want.stdout);
    let stderr = output(&opened.stderr, want.stderr && !want.tty);
    let client = ClientStreams {
        stdin: opened
            .stdin
            .as_mut()
            .filter(|_| want.stdin)
            .map(Incoming::take_data),
        stdout,
        stderr,
        resize: opened.resize.as_mut().map(Incoming::take_data),
        gone: session.gone.clone(),
    };
    let outcome = command.run(&ctx, client).await;
    let _ =
        tokio::time::timeout(LINGER, async { while pumps.join_next().await.is_some() {} }).await;
    if let Some(error) = opened.error {
        let status = match protocol {
            RemoteProtocol::V4 | RemoteProtocol::V5 => Some(outcome.status_json(command.cmd())),
            _ => outcome.status_text(command.cmd()),
        };
        if let Some(status) = status {
            writer.data(error.id, status.as_bytes()).await;
        }
        writer.finish(error.id).await;
    }
    log_outcome(&command, &outcome);
    session.close(LINGER).await;
}

/// Logs how a remote command ended.
pub fn log_outcome(command: &RemoteCommand, outcome: &Outcome) {
    match outcome {
        Outcome::Exited(code) => {
            tracing::debug!(
                container = command.container_id(),
                code,
                "remote command ended"
            )
        }
        Outcome::Failed(message) => {
            tracing::info!(container = command.container_id(), %message, "remote command failed")
        }
    }
}
