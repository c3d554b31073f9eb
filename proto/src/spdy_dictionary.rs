//! The SPDY/3 header compression dictionary (draft-mbelshe-httpbis-spdy-00,
//! section 2.6.10.1).
//!
//! Every SPDY/3 header block is zlib-compressed with this preset dictionary, so
//! it has to be byte-exact: a single wrong byte changes its Adler-32 id
//! (0xe3c6a7c2) and the peer's inflate refuses the stream. It is spelled here as
//! the structure the spec describes (length-prefixed header names and common
//! values, then a run of raw status codes, dates and media types) rather than as
//! an opaque hex dump, and glued together at compile time.

/// Length of the dictionary in bytes.
const LEN: usize = 1423;

/// The pieces of the dictionary, in order.
const PARTS: &[&[u8]] = &[
    b"\0\0\0\x07options",
    b"\0\0\0\x04head",
    b"\0\0\0\x04post",
    b"\0\0\0\x03put",
    b"\0\0\0\x06delete",
    b"\0\0\0\x05trace",
    b"\0\0\0\x06accept",
    b"\0\0\0\x0eaccept-charset",
    b"\0\0\0\x0faccept-encoding",
    b"\0\0\0\x0faccept-language",
    b"\0\0\0\x0daccept-ranges",
    b"\0\0\0\x03age",
    b"\0\0\0\x05allow",
    b"\0\0\0\x0dauthorization",
    b"\0\0\0\x0dcache-control",
    b"\0\0\0\x0aconnection",
    b"\0\0\0\x0ccontent-base",
    b"\0\0\0\x10content-encoding",
    b"\0\0\0\x10content-language",
    b"\0\0\0\x0econtent-length",
    b"\0\0\0\x10content-location",
    b"\0\0\0\x0bcontent-md5",
    b"\0\0\0\x0dcontent-range",
    b"\0\0\0\x0ccontent-type",
    b"\0\0\0\x04date",
    b"\0\0\0\x04etag",
    b"\0\0\0\x06expect",
    b"\0\0\0\x07expires",
    b"\0\0\0\x04from",
    b"\0\0\0\x04host",
    b"\0\0\0\x08if-match",
    b"\0\0\0\x11if-modified-since",
    b"\0\0\0\x0dif-none-match",
    b"\0\0\0\x08if-range",
    b"\0\0\0\x13if-unmodified-since",
    b"\0\0\0\x0dlast-modified",
    b"\0\0\0\x08location",
    b"\0\0\0\x0cmax-forwards",
    b"\0\0\0\x06pragma",
    b"\0\0\0\x12proxy-authenticate",
    b"\0\0\0\x13proxy-authorization",
    b"\0\0\0\x05range",
    b"\0\0\0\x07referer",
    b"\0\0\0\x0bretry-after",
    b"\0\0\0\x06server",
    b"\0\0\0\x02te",
    b"\0\0\0\x07trailer",
    b"\0\0\0\x11transfer-encoding",
    b"\0\0\0\x07upgrade",
    b"\0\0\0\x0auser-agent",
    b"\0\0\0\x04vary",
    b"\0\0\0\x03via",
    b"\0\0\0\x07warning",
    b"\0\0\0\x10www-authenticate",
    b"\0\0\0\x06method",
    b"\0\0\0\x03get",
    b"\0\0\0\x06status",
    b"\0\0\0\x06200 OK",
    b"\0\0\0\x07version",
    b"\0\0\0\x08HTTP/1.1",
    b"\0\0\0\x03url",
    b"\0\0\0\x06public",
    b"\0\0\0\x0aset-cookie",
    b"\0\0\0\x0akeep-alive",
    b"\0\0\0\x06origin",
    b"100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
    b"203 Non-Authoritative Information",
    b"204 No Content",
    b"301 Moved Permanently",
    b"400 Bad Request",
    b"401 Unauthorized",
    b"403 Forbidden",
    b"404 Not Found",
    b"500 Internal Server Error",
    b"501 Not Implemented",
    b"503 Service Unavailable",
    b"Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
    b"chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,text/javascript,",
    b"publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
];

/// Concatenates `parts` into one array at compile time; fails the build if the
/// total is not exactly `N` bytes.
const fn concat<const N: usize>(parts: &[&[u8]]) -> [u8; N] {
    let mut out = [0u8; N];
    let mut at = 0;
    let mut p = 0;
    while p < parts.len() {
        let part = parts[p];
        let mut i = 0;
        while i < part.len() {
            out[at] = part[i];
            at += 1;
            i += 1;
        }
        p += 1;
    }
    assert!(at == N, "spdy dictionary has the wrong length");
    out
}

/// The dictionary as one array.
const BYTES: [u8; LEN] = concat(PARTS);

/// The SPDY/3 zlib preset dictionary for header blocks.
pub const DICTIONARY: &[u8] = &BYTES;
