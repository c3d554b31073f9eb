//! Exec, Attach and PortForward: validate, park the request, answer with its URL on
//! the streaming server.

use crust_proto::cri;
use crust_runtime::container::ExecStreams;
use tonic::{Request, Response, Status};

use super::{Cri, error};
use crate::streaming::{Parked, RemoteCommand};

/// Kubelet's rules for the streams of an exec or attach.
fn validate_streams(container_id: &str, streams: ExecStreams) -> Result<(), Status> {
    if container_id.is_empty() {
        return Err(Status::invalid_argument("container_id: required"));
    }
    if streams.tty && streams.stderr {
        // A terminal has one output; stderr cannot be told apart from stdout.
        return Err(Status::invalid_argument(
            "tty and stderr cannot both be true",
        ));
    }
    if !streams.stdin && !streams.stdout && !streams.stderr {
        return Err(Status::invalid_argument(
            "one of stdin, stdout, or stderr must be set",
        ));
    }
    Ok(())
}

/// The streams an exec or attach request asks for.
fn streams_of(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> ExecStreams {
    ExecStreams {
        stdin,
        stdout,
        stderr,
        tty,
    }
}

impl Cri {
    /// Validates a remote command against its running container and parks it.
    fn remote_url(&self, command: RemoteCommand) -> Result<String, Status> {
        let services = self.services()?;
        validate_streams(command.container_id(), command.streams())?;
        if let RemoteCommand::Exec { cmd, .. } = &command
            && cmd.is_empty()
        {
            return Err(Status::invalid_argument("cmd: required"));
        }
        services
            .containers
            .running(command.container_id())
            .map_err(|e| error::container_status(&e))?;
        services.streaming.url_for(Parked::Remote(command))
    }

    pub(super) async fn exec(
        &self,
        request: Request<cri::ExecRequest>,
    ) -> Result<Response<cri::ExecResponse>, Status> {
        let req = request.into_inner();
        self.instrumented("Exec", async {
            let url = self.remote_url(RemoteCommand::Exec {
                container_id: req.container_id,
                cmd: req.cmd,
                streams: streams_of(req.stdin, req.stdout, req.stderr, req.tty),
            })?;
            Ok(cri::ExecResponse { url })
        })
        .await
    }

    pub(super) async fn attach(
        &self,
        request: Request<cri::AttachRequest>,
    ) -> Result<Response<cri::AttachResponse>, Status> {
        let req = request.into_inner();
        self.instrumented("Attach", async {
            let url = self.remote_url(RemoteCommand::Attach {
                container_id: req.container_id,
                streams: streams_of(req.stdin, req.stdout, req.stderr, req.tty),
            })?;
            Ok(cri::AttachResponse { url })
        })
        .await
    }

    pub(super) async fn port_forward(
        &self,
        request: Request<cri::PortForwardRequest>,
    ) -> Result<Response<cri::PortForwardResponse>, Status> {
        let req = request.into_inner();
        self.instrumented("PortForward", async {
            let services = self.services()?;
            if req.pod_sandbox_id.is_empty() {
                return Err(Status::invalid_argument("pod_sandbox_id: required"));
            }
            if let Some(p) = req.port.iter().find(|p| !(1..=65535).contains(*p)) {
                return Err(Status::invalid_argument(format!("port {p}: out of range")));
            }
            let sandbox = services.sandboxes.get(&req.pod_sandbox_id).ok_or_else(|| {
                Status::not_found(format!("pod sandbox {} not found", req.pod_sandbox_id))
            })?;
            if !sandbox.is_ready() {
                return Err(Status::failed_precondition(format!(
                    "pod sandbox {} is not ready",
                    sandbox.id
                )));
            }
            let url = services.streaming.url_for(Parked::PortForward {
                sandbox_id: sandbox.id.clone(),
            })?;
            Ok(cri::PortForwardResponse { url })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_follow_kubelets_rules() {
        assert!(validate_streams("c", streams_of(false, true, true, false)).is_ok());
        assert!(validate_streams("c", streams_of(true, true, false, true)).is_ok());
        let e = validate_streams("c", streams_of(false, false, false, false)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let e = validate_streams("c", streams_of(false, true, true, true)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let e = validate_streams("", streams_of(false, true, false, false)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }
}
