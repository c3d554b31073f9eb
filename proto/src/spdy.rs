//! SPDY/3.1 framing: the wire format of kubelet's exec, attach and
//! port-forward streams (moby/spdystream, used by
//! k8s.io/apimachinery/pkg/util/httpstream/spdy).
//!
//! ```text
//! control frame                          data frame
//! +-+-------------+---------------+      +-+-----------------------------+
//! |1|  version=3  |     type      |      |0|          stream id          |
//! +---------------+---------------+      +---------------+---------------+
//! |     flags     |  length (24)  |      |     flags     |  length (24)  |
//! +---------------+---------------+      +---------------+---------------+
//! |          payload ...          |      |            data ...           |
//! ```
//!
//! Header blocks (SYN_STREAM, SYN_REPLY, HEADERS) are zlib-compressed with one
//! stream per direction that lives as long as the connection: each block ends
//! with a SYNC_FLUSH and may refer back to earlier blocks, so a [`HeaderCodec`]
//! belongs to exactly one connection and every frame must pass through it in
//! order. For the same reason any error from [`HeaderCodec::decode`] is fatal
//! for the connection: the decompressor's state can no longer be trusted.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::spdy_dictionary::DICTIONARY;

/// The SPDY version this module speaks.
const VERSION: u16 = 3;
/// Size of every frame header, control or data.
const FRAME_HEADER_LEN: usize = 8;
/// The largest payload the 24-bit length field can describe.
const MAX_WIRE_LEN: usize = (1 << 24) - 1;
/// Mask for 31-bit stream ids and window deltas.
const ID_MASK: u32 = 0x7fff_ffff;
/// FLAG_FIN on data frames and SYN_STREAM, SYN_REPLY and HEADERS.
const FLAG_FIN: u8 = 0x01;
/// FLAG_UNIDIRECTIONAL on SYN_STREAM.
const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// FLAG_SETTINGS_CLEAR_SETTINGS on SETTINGS.
const FLAG_CLEAR_SETTINGS: u8 = 0x01;

/// Control frame type codes.
mod kind {
    /// SYN_STREAM.
    pub const SYN_STREAM: u16 = 1;
    /// SYN_REPLY.
    pub const SYN_REPLY: u16 = 2;
    /// RST_STREAM.
    pub const RST_STREAM: u16 = 3;
    /// SETTINGS.
    pub const SETTINGS: u16 = 4;
    /// PING.
    pub const PING: u16 = 6;
    /// GOAWAY.
    pub const GOAWAY: u16 = 7;
    /// HEADERS.
    pub const HEADERS: u16 = 8;
    /// WINDOW_UPDATE.
    pub const WINDOW_UPDATE: u16 = 9;
}

/// Default limit on a control frame's payload: 16 MiB, which the 24-bit length
/// field cannot exceed anyway.
pub const DEFAULT_MAX_FRAME_LEN: usize = 16 << 20;
/// Largest piece of a DATA frame [`HeaderCodec::decode`] hands out: a longer frame
/// comes out as several `Data` frames, so a peer declaring 16 MiB of payload cannot
/// make us buffer it whole.
pub const MAX_DATA_CHUNK: usize = 64 * 1024;
/// Default limit on one decompressed header block: 1 MiB, so that a few bytes
/// of hostile deflate cannot expand into gigabytes.
pub const DEFAULT_MAX_HEADER_BLOCK: usize = 1 << 20;

/// Header name/value pairs; names are lower-case on the wire.
pub type Headers = Vec<(String, String)>;

/// One SPDY/3 frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Opens a stream.
    SynStream {
        /// The new stream's id (31 bits, non-zero).
        stream_id: u32,
        /// The stream this one is associated with, or 0.
        associated_id: u32,
        /// Priority, 0 (highest) to 7.
        priority: u8,
        /// The sender will send nothing more on this stream.
        fin: bool,
        /// The receiver must not send on this stream.
        unidirectional: bool,
        /// Request headers.
        headers: Headers,
    },
    /// Accepts a stream.
    SynReply {
        /// The accepted stream's id.
        stream_id: u32,
        /// The sender will send nothing more on this stream.
        fin: bool,
        /// Reply headers.
        headers: Headers,
    },
    /// Aborts a stream.
    RstStream {
        /// The aborted stream's id.
        stream_id: u32,
        /// Why (PROTOCOL_ERROR = 1, CANCEL = 5, ...).
        status: u32,
    },
    /// Connection settings.
    Settings {
        /// FLAG_SETTINGS_CLEAR_SETTINGS.
        clear: bool,
        /// (flags, 24-bit id, value) entries.
        entries: Vec<(u8, u32, u32)>,
    },
    /// Liveness check, echoed by the receiver.
    Ping {
        /// Opaque id; odd from clients, even from servers.
        id: u32,
    },
    /// Closes the connection.
    GoAway {
        /// The last stream the sender processed.
        last_good_stream_id: u32,
        /// Why (OK = 0, PROTOCOL_ERROR = 1, INTERNAL_ERROR = 2).
        status: u32,
    },
    /// Additional headers on an open stream.
    Headers {
        /// The stream's id.
        stream_id: u32,
        /// The sender will send nothing more on this stream.
        fin: bool,
        /// The headers.
        headers: Headers,
    },
    /// Grants the peer more flow-control window.
    WindowUpdate {
        /// The stream's id (0 is not used by SPDY/3.1 stream windows).
        stream_id: u32,
        /// Bytes added to the window (31 bits).
        delta: u32,
    },
    /// Stream payload.
    Data {
        /// The stream's id.
        stream_id: u32,
        /// The sender will send nothing more on this stream.
        fin: bool,
        /// The payload.
        data: Vec<u8>,
    },
}

/// Errors from encoding or decoding SPDY frames.
#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    /// spdy frame of {len} bytes exceeds the {max}-byte limit
    #[error("spdy frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge {
        /// The frame's payload length.
        len: usize,
        /// The limit it broke.
        max: usize,
    },
    /// spdy header block exceeds {max} bytes
    #[error("spdy header block exceeds {max} bytes")]
    HeaderBlockTooLarge {
        /// The limit it broke.
        max: usize,
    },
    /// spdy control frame has version {0}, want 3
    #[error("spdy control frame has version {0}, want 3")]
    UnsupportedVersion(u16),
    /// invalid spdy {frame} frame: {reason}
    #[error("invalid spdy {frame} frame: {reason}")]
    InvalidFrame {
        /// The frame type, e.g. "SYN_STREAM".
        frame: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// spdy header compression
    #[error("spdy header compression")]
    Compress(#[from] flate2::CompressError),
    /// spdy header decompression
    #[error("spdy header decompression")]
    Decompress(#[from] flate2::DecompressError),
}

/// Shorthand for [`SpdyError::InvalidFrame`].
fn invalid(frame: &'static str, reason: &'static str) -> SpdyError {
    SpdyError::InvalidFrame { frame, reason }
}

/// Encoder and streaming decoder for one SPDY connection, holding the header
/// compressor for what we send and the decompressor for what we receive.
pub struct HeaderCodec {
    /// Compresses outgoing header blocks; created, with the dictionary, on first use.
    deflate: Option<Compress>,
    /// Decompresses incoming header blocks; the dictionary is supplied when the
    /// zlib stream asks for it.
    inflate: Decompress,
    /// Largest control frame payload accepted (DATA frames are split instead).
    max_frame_len: usize,
    /// Largest decompressed header block accepted or produced.
    max_header_block: usize,
}

impl Default for HeaderCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for HeaderCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderCodec")
            .field("max_frame_len", &self.max_frame_len)
            .field("max_header_block", &self.max_header_block)
            .finish_non_exhaustive()
    }
}

impl HeaderCodec {
    /// A codec for a new connection with the default limits.
    pub fn new() -> Self {
        Self::with_limits(DEFAULT_MAX_FRAME_LEN, DEFAULT_MAX_HEADER_BLOCK)
    }

    /// A codec for a new connection with explicit limits on control frame payload
    /// and decompressed header block sizes.
    pub fn with_limits(max_frame_len: usize, max_header_block: usize) -> Self {
        Self {
            deflate: None,
            inflate: Decompress::new(true),
            max_frame_len,
            max_header_block,
        }
    }

    /// Appends `frame` to `out`; on error `out` is left as it was.
    pub fn encode(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<(), SpdyError> {
        let start = out.len();
        let result = self.encode_inner(frame, out);
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    /// Does the work of [`Self::encode`], possibly leaving a partial frame.
    fn encode_inner(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<(), SpdyError> {
        let start = out.len();
        match frame {
            Frame::SynStream {
                stream_id,
                associated_id,
                priority,
                fin,
                unidirectional,
                headers,
            } => {
                let name = "SYN_STREAM";
                let block = self.header_block(name, headers)?;
                if *priority > 7 {
                    return Err(invalid(name, "priority above 7"));
                }
                let flags = flag(*fin, FLAG_FIN) | flag(*unidirectional, FLAG_UNIDIRECTIONAL);
                control_header(out, kind::SYN_STREAM, flags);
                put_u32(out, stream_id_of(name, *stream_id)?);
                put_u32(out, id31(name, *associated_id)?);
                out.extend_from_slice(&[priority << 5, 0]);
                self.compress(&block, out)?;
            }
            // SYN_REPLY and HEADERS share one layout and differ only in their type.
            Frame::SynReply {
                stream_id,
                fin,
                headers,
            }
            | Frame::Headers {
                stream_id,
                fin,
                headers,
            } => {
                let (name, frame_kind) = if matches!(frame, Frame::SynReply { .. }) {
                    ("SYN_REPLY", kind::SYN_REPLY)
                } else {
                    ("HEADERS", kind::HEADERS)
                };
                let block = self.header_block(name, headers)?;
                control_header(out, frame_kind, flag(*fin, FLAG_FIN));
                put_u32(out, stream_id_of(name, *stream_id)?);
                self.compress(&block, out)?;
            }
            Frame::RstStream { stream_id, status } => {
                control_header(out, kind::RST_STREAM, 0);
                put_u32(out, stream_id_of("RST_STREAM", *stream_id)?);
                put_u32(out, *status);
            }
            Frame::Settings { clear, entries } => {
                control_header(out, kind::SETTINGS, flag(*clear, FLAG_CLEAR_SETTINGS));
                let count = u32::try_from(entries.len())
                    .map_err(|_| invalid("SETTINGS", "too many entries"))?;
                put_u32(out, count);
                for &(flags, id, value) in entries {
                    if id > 0x00ff_ffff {
                        return Err(invalid("SETTINGS", "id wider than 24 bits"));
                    }
                    put_u32(out, (u32::from(flags) << 24) | id);
                    put_u32(out, value);
                }
            }
            Frame::Ping { id } => {
                control_header(out, kind::PING, 0);
                put_u32(out, *id);
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                control_header(out, kind::GOAWAY, 0);
                put_u32(out, id31("GOAWAY", *last_good_stream_id)?);
                put_u32(out, *status);
            }
            Frame::WindowUpdate { stream_id, delta } => {
                control_header(out, kind::WINDOW_UPDATE, 0);
                put_u32(out, id31("WINDOW_UPDATE", *stream_id)?);
                put_u32(out, id31("WINDOW_UPDATE", *delta)?);
            }
            Frame::Data {
                stream_id,
                fin,
                data,
            } => {
                put_u32(out, stream_id_of("DATA", *stream_id)?);
                out.extend_from_slice(&[flag(*fin, FLAG_FIN), 0, 0, 0]);
                out.extend_from_slice(data);
            }
        }
        let len = out.len() - start - FRAME_HEADER_LEN;
        if len > MAX_WIRE_LEN {
            return Err(SpdyError::FrameTooLarge {
                len,
                max: MAX_WIRE_LEN,
            });
        }
        out[start + 5..start + 8].copy_from_slice(&(len as u32).to_be_bytes()[1..]);
        Ok(())
    }

    /// Serialises `headers` into an uncompressed SPDY/3 name/value block:
    /// a count, then length-prefixed names and values. Names are lower-cased
    /// and repeated names are merged into one NUL-separated value, as peers
    /// (spdystream among them) reject duplicate names.
    fn header_block(&self, frame: &'static str, headers: &Headers) -> Result<Vec<u8>, SpdyError> {
        let mut merged: Vec<(String, String)> = Vec::new();
        for (name, value) in headers {
            if name.is_empty() {
                return Err(invalid(frame, "empty header name"));
            }
            if value.contains('\0') {
                return Err(invalid(frame, "header value contains NUL"));
            }
            let name = name.to_ascii_lowercase();
            match merged.iter_mut().find(|(n, _)| *n == name) {
                Some((_, v)) => {
                    v.push('\0');
                    v.push_str(value);
                }
                None => merged.push((name, value.clone())),
            }
        }
        let too_large = SpdyError::HeaderBlockTooLarge {
            max: self.max_header_block,
        };
        let mut block = Vec::new();
        put_u32(
            &mut block,
            u32::try_from(merged.len()).map_err(|_| invalid(frame, "too many headers"))?,
        );
        for (name, value) in &merged {
            for s in [name, value] {
                let len = u32::try_from(s.len()).map_err(|_| invalid(frame, "header too long"))?;
                put_u32(&mut block, len);
                block.extend_from_slice(s.as_bytes());
            }
            // Checked before compressing, so a refused frame leaves the
            // connection's compression state untouched.
            if block.len() > self.max_header_block {
                return Err(too_large);
            }
        }
        Ok(block)
    }

    /// Compresses `block` onto `out` with the connection's compressor, ending
    /// with a SYNC_FLUSH so the peer can decode it without later input.
    fn compress(&mut self, block: &[u8], out: &mut Vec<u8>) -> Result<(), SpdyError> {
        let deflate = match &mut self.deflate {
            Some(d) => d,
            None => {
                let mut d = Compress::new(Compression::default(), true);
                d.set_dictionary(DICTIONARY)?;
                self.deflate.insert(d)
            }
        };
        let start_in = deflate.total_in();
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(block.len() / 2 + 256);
            }
            let consumed = (deflate.total_in() - start_in) as usize;
            deflate.compress_vec(&block[consumed..], out, FlushCompress::Sync)?;
            let consumed = (deflate.total_in() - start_in) as usize;
            // zlib's rule: the flush is complete once all input is taken and
            // the output was not filled to the brim.
            if consumed == block.len() && out.len() < out.capacity() {
                return Ok(());
            }
        }
    }

    /// Takes the next frame off the front of `buf`, returning `None` until a
    /// whole frame is buffered. Control frames of unknown types are consumed
    /// and skipped. DATA frames longer than [`MAX_DATA_CHUNK`] come out in
    /// pieces of that size, only the last carrying the frame's FIN. Any error is
    /// fatal for the connection.
    pub fn decode(&mut self, buf: &mut Vec<u8>) -> Result<Option<Frame>, SpdyError> {
        loop {
            let Some(header) = buf.first_chunk::<FRAME_HEADER_LEN>() else {
                return Ok(None);
            };
            let len =
                usize::from(header[5]) << 16 | usize::from(header[6]) << 8 | usize::from(header[7]);
            let is_data = header[0] & 0x80 == 0;
            if is_data && len > MAX_DATA_CHUNK {
                if buf.len() < FRAME_HEADER_LEN + MAX_DATA_CHUNK {
                    return Ok(None);
                }
                let stream_id = nonzero("DATA", be32(&buf[0..4]))?;
                let data = buf[FRAME_HEADER_LEN..FRAME_HEADER_LEN + MAX_DATA_CHUNK].to_vec();
                // What remains stays a frame of its own, with the original flags.
                let rest = (len - MAX_DATA_CHUNK) as u32;
                buf.drain(FRAME_HEADER_LEN..FRAME_HEADER_LEN + MAX_DATA_CHUNK);
                buf[5..8].copy_from_slice(&rest.to_be_bytes()[1..]);
                return Ok(Some(Frame::Data {
                    stream_id,
                    fin: false,
                    data,
                }));
            }
            if !is_data && len > self.max_frame_len {
                return Err(SpdyError::FrameTooLarge {
                    len,
                    max: self.max_frame_len,
                });
            }
            let total = FRAME_HEADER_LEN + len;
            if buf.len() < total {
                return Ok(None);
            }
            let result = self.parse(&buf[..total]);
            buf.drain(..total);
            if let Some(frame) = result? {
                return Ok(Some(frame));
            }
        }
    }

    /// Parses one complete frame; `Ok(None)` for a skipped control frame.
    fn parse(&mut self, frame: &[u8]) -> Result<Option<Frame>, SpdyError> {
        let word = be32(&frame[0..4]);
        let flags = frame[4];
        let payload = &frame[FRAME_HEADER_LEN..];
        if word & 0x8000_0000 == 0 {
            let stream_id = nonzero("DATA", word)?;
            return Ok(Some(Frame::Data {
                stream_id,
                fin: flags & FLAG_FIN != 0,
                data: payload.to_vec(),
            }));
        }
        let version = ((word >> 16) & 0x7fff) as u16;
        if version != VERSION {
            return Err(SpdyError::UnsupportedVersion(version));
        }
        let fin = flags & FLAG_FIN != 0;
        let parsed = match (word & 0xffff) as u16 {
            kind::SYN_STREAM => {
                let name = "SYN_STREAM";
                if payload.len() < 10 {
                    return Err(invalid(name, "shorter than 10 bytes"));
                }
                // Decompress before validating anything else, so the zlib
                // stream stays in step with the peer's.
                let headers = self.headers(name, &payload[10..])?;
                Frame::SynStream {
                    stream_id: nonzero(name, be32(&payload[0..4]))?,
                    associated_id: be32(&payload[4..8]) & ID_MASK,
                    priority: payload[8] >> 5,
                    fin,
                    unidirectional: flags & FLAG_UNIDIRECTIONAL != 0,
                    headers,
                }
            }
            kind::SYN_REPLY | kind::HEADERS => {
                let is_reply = (word & 0xffff) as u16 == kind::SYN_REPLY;
                let name = if is_reply { "SYN_REPLY" } else { "HEADERS" };
                if payload.len() < 4 {
                    return Err(invalid(name, "shorter than 4 bytes"));
                }
                let headers = self.headers(name, &payload[4..])?;
                let stream_id = nonzero(name, be32(&payload[0..4]))?;
                if is_reply {
                    Frame::SynReply {
                        stream_id,
                        fin,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream_id,
                        fin,
                        headers,
                    }
                }
            }
            kind::RST_STREAM => {
                let p = exact::<8>("RST_STREAM", payload)?;
                Frame::RstStream {
                    stream_id: nonzero("RST_STREAM", be32(&p[0..4]))?,
                    status: be32(&p[4..8]),
                }
            }
            kind::SETTINGS => {
                let name = "SETTINGS";
                if payload.len() < 4 {
                    return Err(invalid(name, "shorter than 4 bytes"));
                }
                let count = be32(&payload[0..4]) as usize;
                let body = &payload[4..];
                if !body.len().is_multiple_of(8) || body.len() / 8 != count {
                    return Err(invalid(name, "entry count does not match length"));
                }
                let entries = body
                    .chunks_exact(8)
                    .map(|e| (e[0], be32(&e[0..4]) & 0x00ff_ffff, be32(&e[4..8])))
                    .collect();
                Frame::Settings {
                    clear: flags & FLAG_CLEAR_SETTINGS != 0,
                    entries,
                }
            }
            kind::PING => Frame::Ping {
                id: be32(exact::<4>("PING", payload)?),
            },
            kind::GOAWAY => {
                let p = exact::<8>("GOAWAY", payload)?;
                Frame::GoAway {
                    last_good_stream_id: be32(&p[0..4]) & ID_MASK,
                    status: be32(&p[4..8]),
                }
            }
            kind::WINDOW_UPDATE => {
                let p = exact::<8>("WINDOW_UPDATE", payload)?;
                Frame::WindowUpdate {
                    stream_id: be32(&p[0..4]) & ID_MASK,
                    delta: be32(&p[4..8]) & ID_MASK,
                }
            }
            // NOOP (SPDY/2), CREDENTIAL and anything newer carry no header
            // block, so skipping them leaves the zlib stream intact.
            _ => return Ok(None),
        };
        Ok(Some(parsed))
    }

    /// Decompresses one header block and parses its name/value pairs.
    fn headers(&mut self, frame: &'static str, compressed: &[u8]) -> Result<Headers, SpdyError> {
        let block = self.decompress(frame, compressed)?;
        parse_header_block(frame, &block)
    }

    /// Inflates one header block, continuing the connection's zlib stream and
    /// refusing to produce more than the header block limit.
    fn decompress(&mut self, frame: &'static str, input: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let max = self.max_header_block;
        let mut out = Vec::new();
        let mut chunk = [0u8; 4096];
        let mut pos = 0;
        loop {
            let (in0, out0) = (self.inflate.total_in(), self.inflate.total_out());
            let result = self
                .inflate
                .decompress(&input[pos..], &mut chunk, FlushDecompress::Sync);
            let read = (self.inflate.total_in() - in0) as usize;
            let wrote = (self.inflate.total_out() - out0) as usize;
            pos += read;
            out.extend_from_slice(&chunk[..wrote]);
            if out.len() > max {
                return Err(SpdyError::HeaderBlockTooLarge { max });
            }
            let status = match result {
                Ok(status) => status,
                // The first block's zlib header names the dictionary by its
                // Adler-32; zlib checks it when the dictionary is supplied.
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate.set_dictionary(DICTIONARY)?;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if status == Status::StreamEnd {
                if pos < input.len() {
                    return Err(invalid(frame, "data after end of zlib stream"));
                }
                return Ok(out);
            }
            if pos == input.len() && wrote < chunk.len() {
                return Ok(out);
            }
            if read == 0 && wrote == 0 {
                return Err(invalid(frame, "truncated header block"));
            }
        }
    }
}

/// Parses an uncompressed name/value block. Names are lower-cased and
/// NUL-separated values are split into one pair each.
fn parse_header_block(frame: &'static str, block: &[u8]) -> Result<Headers, SpdyError> {
    let truncated = || invalid(frame, "truncated header block");
    let mut rest = block;
    let mut take = |n: usize| -> Result<&[u8], SpdyError> {
        if rest.len() < n {
            return Err(truncated());
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    let count = be32(take(4)?) as usize;
    // Every pair takes at least 8 bytes, so a hostile count cannot make us
    // reserve more than the (already bounded) block justifies.
    let mut headers = Vec::with_capacity(count.min(block.len() / 8));
    for _ in 0..count {
        let len = be32(take(4)?) as usize;
        let name = take(len)?;
        if name.is_empty() {
            return Err(invalid(frame, "empty header name"));
        }
        let name = std::str::from_utf8(name)
            .map_err(|_| invalid(frame, "header name is not utf-8"))?
            .to_ascii_lowercase();
        let len = be32(take(4)?) as usize;
        let value = std::str::from_utf8(take(len)?)
            .map_err(|_| invalid(frame, "header value is not utf-8"))?;
        for v in value.split('\0') {
            headers.push((name.clone(), v.to_owned()));
        }
    }
    if !rest.is_empty() {
        return Err(invalid(frame, "trailing bytes in header block"));
    }
    Ok(headers)
}

/// Writes a control frame header with a zero length, fixed up by `encode`.
fn control_header(out: &mut Vec<u8>, kind: u16, flags: u8) {
    let word = 0x8000_0000 | (u32::from(VERSION) << 16) | u32::from(kind);
    put_u32(out, word);
    out.extend_from_slice(&[flags, 0, 0, 0]);
}

/// `bit` if `set`, else 0.
fn flag(set: bool, bit: u8) -> u8 {
    if set { bit } else { 0 }
}

/// Appends a big-endian u32.
fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Reads a big-endian u32 from the first four bytes of `b` (callers pass at least four).
fn be32(b: &[u8]) -> u32 {
    match b.first_chunk::<4>() {
        Some(w) => u32::from_be_bytes(*w),
        None => 0,
    }
}

/// Checks a value fits in 31 bits.
fn id31(frame: &'static str, v: u32) -> Result<u32, SpdyError> {
    if v > ID_MASK {
        Err(invalid(frame, "value wider than 31 bits"))
    } else {
        Ok(v)
    }
}

/// Checks a stream id fits in 31 bits and is not zero.
fn stream_id_of(frame: &'static str, v: u32) -> Result<u32, SpdyError> {
    nonzero(frame, id31(frame, v)?)
}

/// Masks a received stream id to 31 bits and rejects zero.
fn nonzero(frame: &'static str, v: u32) -> Result<u32, SpdyError> {
    match v & ID_MASK {
        0 => Err(invalid(frame, "stream id 0")),
        id => Ok(id),
    }
}

/// Requires a payload of exactly `N` bytes.
fn exact<'a, const N: usize>(
    frame: &'static str,
    payload: &'a [u8],
) -> Result<&'a [u8], SpdyError> {
    if payload.len() != N {
        return Err(invalid(frame, "wrong length"));
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn all_frames() -> Vec<Frame> {
        vec![
            Frame::SynStream {
                stream_id: 1,
                associated_id: 0,
                priority: 0,
                fin: false,
                unidirectional: false,
                headers: h(&[("streamtype", "error")]),
            },
            Frame::SynStream {
                stream_id: 0x7fff_ffff,
                associated_id: 3,
                priority: 7,
                fin: true,
                unidirectional: true,
                headers: h(&[
                    ("streamtype", "stdout"),
                    ("port", "8080"),
                    ("requestid", "0"),
                ]),
            },
            Frame::SynReply {
                stream_id: 2,
                fin: false,
                headers: h(&[]),
            },
            Frame::SynReply {
                stream_id: 3,
                fin: true,
                headers: h(&[("x", "1"), ("x", "2"), ("y", "")]),
            },
            Frame::RstStream {
                stream_id: 5,
                status: 5,
            },
            Frame::Settings {
                clear: true,
                entries: vec![(1, 4, 100), (0, 7, 65536), (2, 0x00ff_ffff, u32::MAX)],
            },
            Frame::Settings {
                clear: false,
                entries: vec![],
            },
            Frame::Ping { id: 1 },
            Frame::GoAway {
                last_good_stream_id: 9,
                status: 2,
            },
            Frame::Headers {
                stream_id: 7,
                fin: true,
                headers: h(&[("a", "b")]),
            },
            Frame::WindowUpdate {
                stream_id: 1,
                delta: 0x7fff_ffff,
            },
            Frame::Data {
                stream_id: 1,
                fin: false,
                data: b"hello".to_vec(),
            },
            Frame::Data {
                stream_id: 2,
                fin: true,
                data: vec![],
            },
        ]
    }

    fn encode_all(codec: &mut HeaderCodec, frames: &[Frame]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in frames {
            codec.encode(f, &mut out).unwrap();
        }
        out
    }

    fn decode_all(codec: &mut HeaderCodec, mut buf: Vec<u8>) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(f) = codec.decode(&mut buf).unwrap() {
            frames.push(f);
        }
        assert!(buf.is_empty(), "{} bytes left over", buf.len());
        frames
    }

    #[test]
    fn dictionary_is_the_spdy3_one() {
        // zlib headers of SPDY/3 header blocks name dictionary id 0xe3c6a7c2.
        let mut c = Compress::new(Compression::default(), true);
        let adler = c.set_dictionary(DICTIONARY).unwrap();
        assert_eq!((DICTIONARY.len(), adler), (1423, 0xe3c6_a7c2));
    }

    #[test]
    fn round_trips_every_frame_type() {
        let frames = all_frames();
        let wire = encode_all(&mut HeaderCodec::new(), &frames);
        assert_eq!(decode_all(&mut HeaderCodec::new(), wire), frames);
    }

    #[test]
    fn header_names_are_lower_cased() {
        let frame = Frame::Headers {
            stream_id: 1,
            fin: false,
            headers: h(&[("StreamType", "Data")]),
        };
        let wire = encode_all(&mut HeaderCodec::new(), &[frame]);
        let decoded = decode_all(&mut HeaderCodec::new(), wire);
        assert_eq!(
            decoded,
            vec![Frame::Headers {
                stream_id: 1,
                fin: false,
                headers: h(&[("streamtype", "Data")])
            }]
        );
    }

    #[test]
    fn control_frame_layout_matches_spec() {
        let mut out = Vec::new();
        HeaderCodec::new()
            .encode(&Frame::Ping { id: 0x0102_0304 }, &mut out)
            .unwrap();
        assert_eq!(
            out,
            [0x80, 0x03, 0x00, 0x06, 0x00, 0x00, 0x00, 0x04, 1, 2, 3, 4]
        );
        out.clear();
        HeaderCodec::new()
            .encode(
                &Frame::Data {
                    stream_id: 5,
                    fin: true,
                    data: vec![9],
                },
                &mut out,
            )
            .unwrap();
        assert_eq!(out, [0, 0, 0, 5, 0x01, 0, 0, 1, 9]);
    }

    /// Builds a SYN_STREAM by hand, compressing the block with a separate
    /// flate2 compressor primed with the dictionary, as spdystream would.
    #[test]
    fn decodes_header_block_from_independent_encoder() {
        let mut block = Vec::new();
        block.extend_from_slice(&2u32.to_be_bytes());
        for s in ["streamtype", "stdin", "Accept", "a\0b"] {
            block.extend_from_slice(&(s.len() as u32).to_be_bytes());
            block.extend_from_slice(s.as_bytes());
        }
        let mut z = Compress::new(Compression::best(), true);
        z.set_dictionary(DICTIONARY).unwrap();
        let mut compressed = Vec::with_capacity(1024);
        z.compress_vec(&block, &mut compressed, FlushCompress::Sync)
            .unwrap();
        // FDICT set, then the SPDY/3 dictionary id.
        assert!(compressed[1] & 0x20 != 0);
        assert_eq!(&compressed[2..6], &[0xe3, 0xc6, 0xa7, 0xc2]);

        let mut wire = vec![0x80, 0x03, 0x00, 0x01, 0x01];
        wire.extend_from_slice(&((10 + compressed.len()) as u32).to_be_bytes()[1..]);
        wire.extend_from_slice(&[0, 0, 0, 3, 0, 0, 0, 0, 0x40, 0]);
        wire.extend_from_slice(&compressed);
        let frames = decode_all(&mut HeaderCodec::new(), wire);
        assert_eq!(
            frames,
            vec![Frame::SynStream {
                stream_id: 3,
                associated_id: 0,
                priority: 2,
                fin: true,
                unidirectional: false,
                headers: h(&[("streamtype", "stdin"), ("accept", "a"), ("accept", "b")]),
            }]
        );
    }

    #[test]
    fn decodes_one_byte_at_a_time() {
        let frames = all_frames();
        let wire = encode_all(&mut HeaderCodec::new(), &frames);
        let mut codec = HeaderCodec::new();
        let mut buf = Vec::new();
        let mut got = Vec::new();
        for b in wire {
            buf.push(b);
            if let Some(f) = codec.decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert!(buf.is_empty());
        assert_eq!(got, frames);
    }

    #[test]
    fn consecutive_syn_streams_share_compression_state() {
        let frame = |id| Frame::SynStream {
            stream_id: id,
            associated_id: 0,
            priority: 0,
            fin: false,
            unidirectional: false,
            headers: h(&[
                ("streamtype", "stdout"),
                ("requestid", "some-long-request-identifier"),
            ]),
        };
        let mut tx = HeaderCodec::new();
        let mut first = Vec::new();
        tx.encode(&frame(1), &mut first).unwrap();
        let mut second = Vec::new();
        tx.encode(&frame(3), &mut second).unwrap();
        // The second block refers back to the first and carries no zlib header.
        assert!(
            second.len() < first.len(),
            "{} >= {}",
            second.len(),
            first.len()
        );
        assert_ne!(&second[20..24], &[0xe3, 0xc6, 0xa7, 0xc2]);
        assert_eq!(&first[20..24], &[0xe3, 0xc6, 0xa7, 0xc2]);

        let mut rx = HeaderCodec::new();
        let mut both = first.clone();
        both.extend_from_slice(&second);
        assert_eq!(decode_all(&mut rx, both), vec![frame(1), frame(3)]);
        // A fresh decoder cannot make sense of the second block alone.
        let mut alone = second;
        assert!(HeaderCodec::new().decode(&mut alone).is_err());
    }

    #[test]
    fn skips_unknown_control_frames() {
        let mut wire = vec![0x80, 0x03, 0x00, 0x0a, 0x00, 0x00, 0x00, 0x03, 1, 2, 3];
        wire.extend(encode_all(
            &mut HeaderCodec::new(),
            &[Frame::Ping { id: 7 }],
        ));
        assert_eq!(
            decode_all(&mut HeaderCodec::new(), wire),
            vec![Frame::Ping { id: 7 }]
        );
    }

    #[test]
    fn rejects_truncated_and_malformed_frames() {
        let cases: &[&[u8]] = &[
            &[0x80, 0x03, 0x00, 0x06, 0x00, 0x00, 0x00, 0x03, 1, 2, 3], // short PING
            &[0x80, 0x03, 0x00, 0x03, 0x00, 0x00, 0x00, 0x04, 0, 0, 0, 1], // short RST_STREAM
            &[0x80, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x02, 0, 1],    // short SYN_STREAM
            &[
                0x80, 0x03, 0x00, 0x04, 0x00, 0x00, 0x00, 0x0c, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 1,
            ], // SETTINGS count
            &[0x80, 0x02, 0x00, 0x06, 0x00, 0x00, 0x00, 0x04, 0, 0, 0, 1], // SPDY/2
            &[0, 0, 0, 0, 0, 0, 0, 1, 7],                               // DATA on stream 0
            // SYN_REPLY whose header block is cut off mid-stream.
            &[
                0x80, 0x03, 0x00, 0x02, 0x00, 0x00, 0x00, 0x07, 0, 0, 0, 1, 0x38, 0xea, 0xe3,
            ],
        ];
        for case in cases {
            let mut buf = case.to_vec();
            assert!(
                HeaderCodec::new().decode(&mut buf).is_err(),
                "{case:x?} accepted"
            );
        }
        // A partial frame is not an error, just not a frame yet.
        let mut buf = vec![0x80, 0x03, 0x00, 0x06, 0x00, 0x00, 0x00, 0x04, 1, 2];
        assert!(HeaderCodec::new().decode(&mut buf).unwrap().is_none());
        assert_eq!(buf.len(), 10);

        // Block with a truncated header block inside valid zlib.
        let mut z = Compress::new(Compression::default(), true);
        z.set_dictionary(DICTIONARY).unwrap();
        let mut compressed = Vec::with_capacity(256);
        z.compress_vec(
            &[0, 0, 0, 1, 0, 0, 0, 9, b'x'],
            &mut compressed,
            FlushCompress::Sync,
        )
        .unwrap();
        let mut wire = vec![0x80, 0x03, 0x00, 0x08, 0x00];
        wire.extend_from_slice(&((4 + compressed.len()) as u32).to_be_bytes()[1..]);
        wire.extend_from_slice(&[0, 0, 0, 1]);
        wire.extend_from_slice(&compressed);
        assert!(matches!(
            HeaderCodec::new().decode(&mut wire),
            Err(SpdyError::InvalidFrame { .. })
        ));
    }

    #[test]
    fn rejects_oversized_frames_before_buffering_them() {
        let mut codec = HeaderCodec::with_limits(1024, DEFAULT_MAX_HEADER_BLOCK);
        // Only the header of a SETTINGS frame has arrived: the declared length is
        // enough to refuse.
        let mut buf = vec![0x80, 3, 0, 4, 0, 0x00, 0x04, 0x01];
        assert!(matches!(
            codec.decode(&mut buf),
            Err(SpdyError::FrameTooLarge {
                len: 1025,
                max: 1024
            })
        ));

        let huge = Frame::Data {
            stream_id: 1,
            fin: false,
            data: vec![0; MAX_WIRE_LEN + 1],
        };
        let mut out = vec![1, 2, 3];
        assert!(matches!(
            HeaderCodec::new().encode(&huge, &mut out),
            Err(SpdyError::FrameTooLarge { .. })
        ));
        assert_eq!(out, [1, 2, 3]);
    }

    #[test]
    fn long_data_frames_come_out_in_bounded_pieces() {
        let payload: Vec<u8> = (0..MAX_DATA_CHUNK * 2 + 10).map(|i| i as u8).collect();
        let frame = Frame::Data {
            stream_id: 5,
            fin: true,
            data: payload.clone(),
        };
        let mut wire = encode_all(&mut HeaderCodec::new(), &[frame]);
        let mut codec = HeaderCodec::with_limits(1024, 1024);
        // Half a chunk is not enough to hand anything out.
        let mut buf = wire[..FRAME_HEADER_LEN + MAX_DATA_CHUNK / 2].to_vec();
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        buf = std::mem::take(&mut wire);
        let mut pieces = Vec::new();
        while let Some(frame) = codec.decode(&mut buf).unwrap() {
            let Frame::Data {
                stream_id,
                fin,
                data,
            } = frame
            else {
                panic!("{frame:?}");
            };
            assert_eq!(stream_id, 5);
            assert!(data.len() <= MAX_DATA_CHUNK);
            pieces.push((fin, data));
        }
        assert!(buf.is_empty());
        assert_eq!(pieces.len(), 3);
        let fins: Vec<bool> = pieces.iter().map(|(f, _)| *f).collect();
        assert_eq!(fins, [false, false, true]);
        let joined: Vec<u8> = pieces.into_iter().flat_map(|(_, d)| d).collect();
        assert_eq!(joined, payload);
    }

    #[test]
    fn rejects_header_block_bombs() {
        // 2 MiB of one byte compresses to a few KiB but must not be inflated past 1 MiB.
        let value = vec![b'a'; 2 << 20];
        let mut block = Vec::new();
        block.extend_from_slice(&1u32.to_be_bytes());
        block.extend_from_slice(&1u32.to_be_bytes());
        block.push(b'x');
        block.extend_from_slice(&(value.len() as u32).to_be_bytes());
        block.extend_from_slice(&value);
        let mut z = Compress::new(Compression::default(), true);
        z.set_dictionary(DICTIONARY).unwrap();
        let mut compressed = Vec::with_capacity(64 << 10);
        z.compress_vec(&block, &mut compressed, FlushCompress::Sync)
            .unwrap();
        assert!(compressed.len() < 32 << 10);
        let mut wire = vec![0x80, 0x03, 0x00, 0x08, 0x00];
        wire.extend_from_slice(&((4 + compressed.len()) as u32).to_be_bytes()[1..]);
        wire.extend_from_slice(&[0, 0, 0, 1]);
        wire.extend_from_slice(&compressed);
        assert!(matches!(
            HeaderCodec::new().decode(&mut wire),
            Err(SpdyError::HeaderBlockTooLarge { .. })
        ));

        // The encoder refuses too, without touching its compression state.
        let mut tx = HeaderCodec::new();
        let big = Frame::Headers {
            stream_id: 1,
            fin: false,
            headers: vec![("x".into(), "a".repeat(2 << 20))],
        };
        assert!(matches!(
            tx.encode(&big, &mut Vec::new()),
            Err(SpdyError::HeaderBlockTooLarge { .. })
        ));
        let frames = all_frames();
        let wire = encode_all(&mut tx, &frames);
        assert_eq!(decode_all(&mut HeaderCodec::new(), wire), frames);
    }

    #[test]
    fn rejects_unencodable_frames() {
        let bad = [
            Frame::Ping { id: 1 },
            Frame::Data {
                stream_id: 0,
                fin: false,
                data: vec![],
            },
            Frame::RstStream {
                stream_id: 0x8000_0000,
                status: 1,
            },
            Frame::WindowUpdate {
                stream_id: 1,
                delta: 0x8000_0000,
            },
            Frame::Settings {
                clear: false,
                entries: vec![(0, 0x0100_0000, 1)],
            },
            Frame::Headers {
                stream_id: 1,
                fin: false,
                headers: h(&[("", "x")]),
            },
            Frame::Headers {
                stream_id: 1,
                fin: false,
                headers: h(&[("x", "a\0b")]),
            },
            Frame::SynStream {
                stream_id: 1,
                associated_id: 0,
                priority: 8,
                fin: false,
                unidirectional: false,
                headers: vec![],
            },
        ];
        for (i, f) in bad.iter().enumerate() {
            let mut out = Vec::new();
            assert_eq!(
                HeaderCodec::new().encode(f, &mut out).is_err(),
                i != 0,
                "{f:?}"
            );
        }
    }

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let valid = encode_all(&mut HeaderCodec::new(), &all_frames());
        for round in 0..3000 {
            let mut buf = if round % 2 == 0 {
                // Pure noise, sometimes dressed as a SPDY/3 control frame.
                let len = (rng.next() % 256) as usize;
                let mut b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                if round % 4 == 0 && b.len() >= 8 {
                    b[0] = 0x80;
                    b[1] = 3;
                    b[3] = (rng.next() % 10) as u8;
                    b[5] = 0;
                    b[6] = 0;
                }
                b
            } else {
                // A valid stream with a few bytes flipped.
                let mut b = valid.clone();
                for _ in 0..1 + rng.next() % 4 {
                    let i = (rng.next() as usize) % b.len();
                    b[i] ^= (rng.next() as u8) | 1;
                }
                b
            };
            let mut codec = HeaderCodec::with_limits(1 << 16, 1 << 16);
            let mut steps = 0;
            while let Ok(Some(_)) = codec.decode(&mut buf) {
                steps += 1;
                assert!(steps < 10_000);
            }
        }
    }
}
