//! The one place where domain errors become gRPC statuses.

use crust_image::{ErrorKind as ImageKind, ImageError};
use tonic::{Code, Status};

/// Maps an image error to the status kubelet and crictl expect.
pub fn image_status(e: &ImageError) -> Status {
    let code = match e.kind() {
        ImageKind::NotFound => Code::NotFound,
        ImageKind::InvalidArgument => Code::InvalidArgument,
        ImageKind::FailedPrecondition => Code::FailedPrecondition,
        ImageKind::Unavailable => Code::Unavailable,
        ImageKind::DeadlineExceeded => Code::DeadlineExceeded,
        ImageKind::Cancelled => Code::Cancelled,
        ImageKind::PermissionDenied => Code::PermissionDenied,
        ImageKind::ResourceExhausted => Code::ResourceExhausted,
        ImageKind::Internal => Code::Internal,
    };
    Status::new(code, e.to_string())
}

/// Maps a sandbox error to its status.
pub fn sandbox_status(e: &crust_sandbox::SandboxError) -> Status {
    use crust_sandbox::ErrorKind as K;
    let code = match e.kind() {
        K::NotFound => Code::NotFound,
        K::AlreadyExists => Code::AlreadyExists,
        K::InvalidArgument => Code::InvalidArgument,
        K::FailedPrecondition => Code::FailedPrecondition,
        K::Unavailable => Code::Unavailable,
        K::DeadlineExceeded => Code::DeadlineExceeded,
        K::Internal => Code::Internal,
    };
    Status::new(code, e.to_string())
}

/// Maps a container error to its status.
pub fn container_status(e: &crust_runtime::container::ContainerError) -> Status {
    use crust_runtime::container::ContainerErrorKind as K;
    let code = match e.kind() {
        K::NotFound => Code::NotFound,
        K::AlreadyExists => Code::AlreadyExists,
        K::InvalidArgument => Code::InvalidArgument,
        K::FailedPrecondition => Code::FailedPrecondition,
        K::DeadlineExceeded => Code::DeadlineExceeded,
        K::Internal => Code::Internal,
    };
    Status::new(code, e.to_string())
}
