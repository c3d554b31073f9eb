//! The wrapper every RPC goes through: readiness, logging with duration and code, and
//! the detached execution of mutating work.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status};

/// Runs an RPC body, logs it at debug level with its duration and result code, and
/// wraps the answer.
pub async fn instrument<T>(
    method: &'static str,
    body: impl Future<Output = Result<T, Status>>,
) -> Result<Response<T>, Status> {
    let start = Instant::now();
    let result = body.await;
    let elapsed_us = start.elapsed().as_micros() as u64;
    match &result {
        Ok(_) => tracing::debug!(rpc = method, elapsed_us, code = ?Code::Ok, "rpc"),
        Err(s) if matches!(s.code(), Code::Internal | Code::Unknown) => {
            tracing::warn!(rpc = method, elapsed_us, code = ?s.code(), message = s.message(), "rpc failed")
        }
        Err(s) => {
            tracing::debug!(rpc = method, elapsed_us, code = ?s.code(), message = s.message(), "rpc")
        }
    }
    result.map(Response::new)
}

/// The deadline the client set (`grpc-timeout`), if any.
pub fn deadline_of<T>(request: &Request<T>) -> Option<Duration> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Runs cancellable work in its own task, so the caller's future being dropped cannot
/// leave it halfway: the work sees its token cancelled and winds down by itself.
///
/// With a deadline, the work is cancelled a little before the client's deadline (tonic
/// drops the handler right at it) and the answer is DeadlineExceeded.
pub async fn detached_cancellable<T, F, Fut>(
    deadline: Option<Duration>,
    work: F,
) -> Result<T, Status>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = Result<T, Status>> + Send + 'static,
    T: Send + 'static,
{
    let token = CancellationToken::new();
    let guard = token.clone().drop_guard();
    let mut handle = tokio::spawn(work(token.clone()));
    let joined = match deadline {
        Some(d) => {
            let margin = (d / 20).clamp(Duration::from_millis(10), Duration::from_millis(500));
            match tokio::time::timeout(d.saturating_sub(margin), &mut handle).await {
                Ok(joined) => joined,
                Err(_) => {
                    // Answer now; the cancelled work cleans up after itself in its task.
                    drop(guard);
                    return Err(Status::deadline_exceeded("deadline exceeded"));
                }
            }
        }
        None => handle.await,
    };
    guard.disarm();
    joined.map_err(|e| Status::internal(format!("rpc task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        let mut r = Request::new(());
        assert_eq!(deadline_of(&r), None);
        r.metadata_mut()
            .insert("grpc-timeout", "1500m".parse().unwrap());
        assert_eq!(deadline_of(&r), Some(Duration::from_millis(1500)));
        r.metadata_mut()
            .insert("grpc-timeout", "2S".parse().unwrap());
        assert_eq!(deadline_of(&r), Some(Duration::from_secs(2)));
        r.metadata_mut()
            .insert("grpc-timeout", "2X".parse().unwrap());
        assert_eq!(deadline_of(&r), None);
    }

    #[tokio::test]
    async fn deadline_cancels_the_work() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let r: Result<(), Status> =
            detached_cancellable(Some(Duration::from_millis(200)), |token| async move {
                token.cancelled().await;
                let _ = tx.send(());
                Err(Status::cancelled("x"))
            })
            .await;
        assert_eq!(r.unwrap_err().code(), Code::DeadlineExceeded);
        rx.await.unwrap();
    }
}
