//! The crust-monitor protocol: what crustd and a container's monitor say to each other.
//!
//! Three channels, each with its own shape:
//!
//! - **Start-up handshake** on a socketpair crustd creates and the monitor inherits
//!   (`--sync-fd N`): newline-terminated JSON [`SyncMessage`]s. The monitor first says
//!   which process it is (`{"monitor_pid":N}`, it forks away from crustd's child), then
//!   exactly one answer: `{"pid":N}` once `<runtime> create` succeeded, or
//!   `{"error":"..."}` (with the runtime's evidence when the runtime failed). Then it
//!   closes its end.
//! - **Attach socket** (a unix stream socket per container, mode 0600): binary
//!   [`Frame`]s both ways. A frame is 1 byte [`FrameKind`], 4 bytes big-endian payload
//!   length, then the payload. A client receives the container's output from the
//!   moment it connects (`Stdout`, `Stderr`), then `Exit` when the container has
//!   exited; it may send `Stdin`, `CloseStdin`, `Resize` and `ReopenLog` (answered
//!   with `Ack`).
//! - **Exit file**: [`ExitStatus`] as JSON, written atomically (temporary file and
//!   rename) when the container has exited and its output is drained. It is how
//!   crustd learns the exit status, also after a restart.

use serde::{Deserialize, Serialize};

/// Bytes before a frame's payload: the kind and the big-endian payload length.
pub const HEADER_LEN: usize = 5;

/// The largest payload a frame may carry; a longer frame is a protocol error. Output
/// frames are much smaller (one read of a pipe); this bounds what a client can make
/// the monitor buffer.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// Monitor → client: bytes the container wrote to stdout (or to its terminal).
    Stdout = 1,
    /// Monitor → client: bytes the container wrote to stderr.
    Stderr = 2,
    /// Monitor → client: the container has exited; the payload is its exit code as
    /// decimal text (128 + signal for a signal death). The last frame on a connection.
    Exit = 3,
    /// Monitor → client: the request before it (`ReopenLog`) is done.
    Ack = 4,
    /// Client → monitor: bytes for the container's stdin.
    Stdin = 10,
    /// Client → monitor: close the container's stdin (on a terminal: send it EOF,
    /// Ctrl-D) once the bytes sent before are written. No payload.
    CloseStdin = 11,
    /// Client → monitor: resize the container's terminal; the payload is a [`Resize`].
    Resize = 12,
    /// Client → monitor: close and reopen the log file (kubelet renamed it to rotate
    /// it). Answered with `Ack`. No payload.
    ReopenLog = 13,
}

impl TryFrom<u8> for FrameKind {
    type Error = FrameError;

    fn try_from(byte: u8) -> Result<FrameKind, FrameError> {
        Ok(match byte {
            1 => FrameKind::Stdout,
            2 => FrameKind::Stderr,
            3 => FrameKind::Exit,
            4 => FrameKind::Ack,
            10 => FrameKind::Stdin,
            11 => FrameKind::CloseStdin,
            12 => FrameKind::Resize,
            13 => FrameKind::ReopenLog,
            other => return Err(FrameError::UnknownKind(other)),
        })
    }
}

/// One message on the attach socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What the payload is.
    pub kind: FrameKind,
    /// The payload, at most [`MAX_PAYLOAD`] bytes.
    pub payload: Vec<u8>,
}

/// A byte sequence that is not a valid frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The kind byte names no [`FrameKind`].
    UnknownKind(u8),
    /// The header announces a payload longer than [`MAX_PAYLOAD`].
    TooLong(u32),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::UnknownKind(kind) => write!(f, "unknown frame kind {kind}"),
            FrameError::TooLong(len) => {
                write!(f, "frame payload of {len} bytes exceeds {MAX_PAYLOAD}")
            }
        }
    }
}

impl std::error::Error for FrameError {}

impl Frame {
    /// A frame of `kind` carrying `payload`.
    pub fn new(kind: FrameKind, payload: impl Into<Vec<u8>>) -> Frame {
        Frame {
            kind,
            payload: payload.into(),
        }
    }

    /// The frame's bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        encode_frame(self.kind, &self.payload, &mut out);
        out
    }
}

/// Appends the frame `kind`/`payload` to `out`, without building a [`Frame`].
///
/// A payload longer than `u32::MAX` cannot be framed; callers send at most
/// [`MAX_PAYLOAD`] bytes per frame, which the receiving side enforces.
pub fn encode_frame(kind: FrameKind, payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.reserve(HEADER_LEN + payload.len());
    out.push(kind as u8);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&payload[..len as usize]);
}

/// Decodes the first frame in `buf`: `Ok(None)` when `buf` holds only part of one,
/// otherwise the frame and how many bytes of `buf` it used. The header is checked as
/// soon as it is complete, so a bad stream fails before its payload arrives.
pub fn decode_frame(buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let kind = FrameKind::try_from(header[0])?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if len as usize > MAX_PAYLOAD {
        return Err(FrameError::TooLong(len));
    }
    let end = HEADER_LEN + len as usize;
    let Some(payload) = buf.get(HEADER_LEN..end) else {
        return Ok(None);
    };
    Ok(Some((Frame::new(kind, payload), end)))
}

/// The payload of a [`FrameKind::Resize`] frame: rows then columns, each a big-endian
/// `u16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resize {
    /// Terminal height in characters.
    pub rows: u16,
    /// Terminal width in characters.
    pub cols: u16,
}

impl Resize {
    /// The 4-byte payload.
    pub fn encode(self) -> [u8; 4] {
        let [r0, r1] = self.rows.to_be_bytes();
        let [c0, c1] = self.cols.to_be_bytes();
        [r0, r1, c0, c1]
    }

    /// Reads a payload; `None` unless it is exactly 4 bytes.
    pub fn decode(payload: &[u8]) -> Option<Resize> {
        let [r0, r1, c0, c1] = payload.try_into().ok()?;
        Some(Resize {
            rows: u16::from_be_bytes([r0, r1]),
            cols: u16::from_be_bytes([c0, c1]),
        })
    }
}

/// The payload of an [`FrameKind::Exit`] frame for `exit_code`.
pub fn exit_payload(exit_code: i32) -> Vec<u8> {
    exit_code.to_string().into_bytes()
}

/// The exit code in an [`FrameKind::Exit`] frame's payload.
pub fn parse_exit_payload(payload: &[u8]) -> Option<i32> {
    std::str::from_utf8(payload).ok()?.trim().parse().ok()
}

/// How a container ended: the monitor's exit file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// The exit code, or 128 + the signal's number when a signal killed it.
    pub exit_code: i32,
    /// When the monitor saw it exit, in nanoseconds since the Unix epoch.
    pub exited_at: i64,
    /// Whether the kernel's OOM killer killed a process in the container's memory
    /// cgroup while it ran.
    pub oom_killed: bool,
}

/// One line of the start-up handshake, monitor → crustd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SyncMessage {
    /// First: the monitor's pid (it is not crustd's child: it forked away), so that
    /// crustd can kill it, and the runtime in its process group, if it hangs.
    Hello {
        /// The monitor's pid, also its session and process group id.
        monitor_pid: i32,
    },
    /// `<runtime> create` succeeded; the container process waits for `start`.
    Created {
        /// The container process's pid on the host.
        pid: i32,
    },
    /// The container could not be created; the monitor has exited or is exiting, and
    /// left no process behind.
    Failed(CreateFailure),
}

/// Why a monitor could not create its container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateFailure {
    /// The whole message, for people.
    pub error: String,
    /// When the runtime ran and failed: how it ended ("exit status 1").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// When the runtime ran and failed: the last error line of its log.json.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_error: Option<String>,
    /// When the runtime ran and failed: the end of what it wrote to stderr.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    /// When the runtime ran: its command line.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
}

impl SyncMessage {
    /// The message as one line of JSON, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        // Serializing these plain structs cannot fail (no maps with non-string keys,
        // no custom serializers), so the fallback is never used.
        let mut line = serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec());
        line.push(b'\n');
        line
    }

    /// Parses one line (with or without its newline).
    pub fn from_line(line: &[u8]) -> serde_json::Result<SyncMessage> {
        serde_json::from_slice(line.trim_ascii())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_lay_out_as_documented() {
        let frame = Frame::new(FrameKind::Stdout, b"hello\n".to_vec());
        let bytes = frame.encode();
        assert_eq!(bytes, b"\x01\x00\x00\x00\x06hello\n");
        assert_eq!(decode_frame(&bytes).unwrap(), Some((frame, 11)));

        let empty = Frame::new(FrameKind::CloseStdin, Vec::new()).encode();
        assert_eq!(empty, [11, 0, 0, 0, 0]);
        assert_eq!(
            decode_frame(&empty).unwrap(),
            Some((Frame::new(FrameKind::CloseStdin, Vec::new()), 5))
        );
        for kind in [1u8, 2, 3, 4, 10, 11, 12, 13] {
            assert_eq!(FrameKind::try_from(kind).unwrap() as u8, kind);
        }
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let mut stream = Vec::new();
        encode_frame(FrameKind::Stdin, b"abc", &mut stream);
        encode_frame(FrameKind::ReopenLog, b"", &mut stream);
        for cut in 0..8 {
            assert_eq!(decode_frame(&stream[..cut]).unwrap(), None, "cut at {cut}");
        }
        let (first, used) = decode_frame(&stream).unwrap().unwrap();
        assert_eq!(first, Frame::new(FrameKind::Stdin, b"abc".to_vec()));
        let (second, rest) = decode_frame(&stream[used..]).unwrap().unwrap();
        assert_eq!(second.kind, FrameKind::ReopenLog);
        assert_eq!(used + rest, stream.len());
    }

    #[test]
    fn bad_headers_fail_before_the_payload_arrives() {
        assert_eq!(
            decode_frame(&[99, 0, 0, 0, 1]),
            Err(FrameError::UnknownKind(99))
        );
        assert_eq!(
            decode_frame(&[10, 0xff, 0xff, 0xff, 0xff]),
            Err(FrameError::TooLong(u32::MAX))
        );
        let max = u32::try_from(MAX_PAYLOAD).unwrap();
        assert_eq!(decode_frame(&[10, 0, 0x10, 0, 0]).unwrap(), None);
        assert_eq!(max, 0x0010_0000);
        assert_eq!(
            FrameError::TooLong(max + 1).to_string(),
            "frame payload of 1048577 bytes exceeds 1048576"
        );
    }

    #[test]
    fn resize_and_exit_payloads() {
        let resize = Resize {
            rows: 40,
            cols: 0x0102,
        };
        assert_eq!(resize.encode(), [0, 40, 1, 2]);
        assert_eq!(Resize::decode(&resize.encode()), Some(resize));
        assert_eq!(Resize::decode(&[0, 1, 2]), None);
        assert_eq!(Resize::decode(&[0, 1, 2, 3, 4]), None);

        assert_eq!(exit_payload(137), b"137");
        assert_eq!(parse_exit_payload(b"137"), Some(137));
        assert_eq!(parse_exit_payload(b"-1"), Some(-1));
        assert_eq!(parse_exit_payload(b"x"), None);
    }

    #[test]
    fn exit_status_json() {
        let status = ExitStatus {
            exit_code: 137,
            exited_at: 1_795_000_000_123_456_789,
            oom_killed: true,
        };
        let json = serde_json::to_string(&status).unwrap();
        assert_eq!(
            json,
            r#"{"exit_code":137,"exited_at":1795000000123456789,"oom_killed":true}"#
        );
        assert_eq!(serde_json::from_str::<ExitStatus>(&json).unwrap(), status);
    }

    #[test]
    fn sync_messages() {
        assert_eq!(
            SyncMessage::Created { pid: 42 }.to_line(),
            b"{\"pid\":42}\n"
        );
        assert_eq!(
            SyncMessage::Hello { monitor_pid: 7 }.to_line(),
            b"{\"monitor_pid\":7}\n"
        );
        let failure = SyncMessage::Failed(CreateFailure {
            error: "boom".into(),
            status: None,
            log_error: None,
            stderr: None,
            args: vec![],
        });
        assert_eq!(failure.to_line(), b"{\"error\":\"boom\"}\n");
        for message in [
            SyncMessage::Created { pid: 42 },
            SyncMessage::Hello { monitor_pid: 7 },
            failure,
            SyncMessage::Failed(CreateFailure {
                error: "oci runtime runc create c1: exit status 1: bad".into(),
                status: Some("exit status 1".into()),
                log_error: Some("bad".into()),
                stderr: Some("bad\n".into()),
                args: vec!["runc".into(), "create".into()],
            }),
        ] {
            assert_eq!(SyncMessage::from_line(&message.to_line()).unwrap(), message);
        }
        assert!(SyncMessage::from_line(b"{\"nothing\":1}").is_err());
    }
}
