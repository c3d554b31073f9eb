//! The CRI container log format, which kubelet reads (`kubectl logs`) and rotates.
//!
//! One record per line of output:
//!
//! ```text
//! 2026-11-23T11:28:01.123456789Z stdout F hello world
//! ```
//!
//! - the time the monitor read the bytes, RFC 3339 in UTC with always nine fractional
//!   digits (containerd's fixed-width form; kubelet parses it as RFC3339Nano);
//! - the stream, `stdout` or `stderr` (a terminal's output is `stdout`);
//! - `F` for a full line, `P` for part of one: a line longer than [`MAX_LINE`] is
//!   split into `P` records of that size and ends with an `F` record, and a line still
//!   unfinished when the stream ends (or the container exits) is written as `P`;
//! - the text without its newline. Nothing else is changed (a terminal's `\r` stays),
//!   as containerd and conmon do.
//!
//! Each stream keeps its own unfinished line, so the two streams' lines never mix.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

/// The longest text of one record: containerd's and CRI-O's 16 KiB.
pub const MAX_LINE: usize = 16 * 1024;

/// Which of the container's output streams bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output, or the terminal.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Splits one stream's bytes into records, holding back an unfinished line.
#[derive(Debug)]
pub struct LineBuffer {
    stream: Stream,
    pending: Vec<u8>,
}

impl LineBuffer {
    /// An empty buffer for `stream`.
    pub fn new(stream: Stream) -> LineBuffer {
        LineBuffer {
            stream,
            pending: Vec::new(),
        }
    }

    /// Appends `data` and writes every record it completes to `out`, stamped `time`
    /// (one of [`rfc3339_nano`]'s strings).
    pub fn push(&mut self, data: &[u8], time: &str, out: &mut Vec<u8>) {
        let mut rest = data;
        while !rest.is_empty() {
            match rest.iter().position(|&b| b == b'\n') {
                Some(newline) => {
                    self.take(&rest[..newline], time, out);
                    let line = std::mem::take(&mut self.pending);
                    record(out, time, self.stream, false, &line);
                    // Keep the allocation for the next line.
                    self.pending = line;
                    self.pending.clear();
                    rest = &rest[newline + 1..];
                }
                None => {
                    self.take(rest, time, out);
                    rest = &[];
                }
            }
        }
    }

    /// Writes the unfinished line, if any, as a `P` record.
    pub fn flush(&mut self, time: &str, out: &mut Vec<u8>) {
        if !self.pending.is_empty() {
            record(out, time, self.stream, true, &self.pending);
            self.pending.clear();
        }
    }

    /// Adds bytes without a newline to the pending line, emitting a `P` record each
    /// time the line grows past [`MAX_LINE`].
    fn take(&mut self, mut bytes: &[u8], time: &str, out: &mut Vec<u8>) {
        // `>`: a line of exactly MAX_LINE bytes waits for its newline and is one F
        // record; only a byte beyond it makes the first MAX_LINE bytes a P record.
        while self.pending.len() + bytes.len() > MAX_LINE {
            let fill = MAX_LINE - self.pending.len();
            if self.pending.is_empty() {
                record(out, time, self.stream, true, &bytes[..fill]);
            } else {
                self.pending.extend_from_slice(&bytes[..fill]);
                record(out, time, self.stream, true, &self.pending);
                self.pending.clear();
            }
            bytes = &bytes[fill..];
        }
        self.pending.extend_from_slice(bytes);
    }
}

/// Appends one record.
fn record(out: &mut Vec<u8>, time: &str, stream: Stream, partial: bool, text: &[u8]) {
    out.extend_from_slice(time.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.name().as_bytes());
    out.extend_from_slice(if partial { b" P " } else { b" F " });
    out.extend_from_slice(text);
    out.push(b'\n');
}

/// `ns` nanoseconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`.
pub fn rfc3339_nano(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let nanos = ns.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01, by Howard Hinnant's
/// `civil_from_days` (eras of 400 years, years starting in March so that the leap day
/// is the last day of a year).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32; // [1, 12]
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The log file at a fixed path, reopened on request (kubelet rotates by renaming).
///
/// With a log directory (kubelet's `log_directory`), the path below it is resolved
/// with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` and the file opened with
/// `O_NOFOLLOW`: whoever can write into the pod's log directory cannot make the
/// monitor, which runs as root, create or append to a file elsewhere by planting or
/// swapping a symlink (for the container's directory or the file itself).
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    dir: Option<PathBuf>,
    file: Option<File>,
}

impl LogFile {
    /// Opens (creating) `path` for appending; with `dir`, `path` must lie below it and
    /// is reached without following any symlink below `dir`.
    pub fn open(path: PathBuf, dir: Option<PathBuf>) -> std::io::Result<LogFile> {
        let file = Self::open_file(&path, dir.as_deref())?;
        Ok(LogFile {
            path,
            dir,
            file: Some(file),
        })
    }

    /// Closes the file and opens (creates) the path again. When that fails, output is
    /// dropped until the next reopen succeeds: the monitor must keep serving.
    pub fn reopen(&mut self) -> std::io::Result<()> {
        self.file = None;
        self.file = Some(Self::open_file(&self.path, self.dir.as_deref())?);
        Ok(())
    }

    /// Writes whole records. A failed write (a full disk) loses them rather than
    /// stopping the monitor.
    pub fn write(&mut self, records: &[u8]) {
        if let Some(file) = &mut self.file
            && !records.is_empty()
        {
            let _ = file.write_all(records);
        }
    }

    fn open_file(path: &Path, dir: Option<&Path>) -> std::io::Result<File> {
        let Some(dir) = dir else {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            // 0640 as containerd creates container logs; O_APPEND so a record is never
            // written over another when something else appends too.
            return OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o640)
                .custom_flags(libc::O_CLOEXEC)
                .open(path);
        };
        let relative = path.strip_prefix(dir).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{} is not below {}", path.display(), dir.display()),
            )
        })?;
        // The log directory itself is kubelet's choice (created if missing, as
        // containerd does) and may be reached through symlinks; nothing below it may.
        std::fs::create_dir_all(dir)?;
        let root = nix::fcntl::open(
            dir,
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let beneath = ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS;
        let mut names: Vec<&std::ffi::OsStr> = Vec::new();
        for component in relative.components() {
            match component {
                Component::Normal(name) => names.push(name),
                Component::CurDir => {}
                _ => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("log path {} climbs out", path.display()),
                    ));
                }
            }
        }
        let Some((file_name, dirs)) = names.split_last() else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("log path {} names no file", path.display()),
            ));
        };
        let mut parent = root;
        for name in dirs {
            let how = OpenHow::new()
                .flags(OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC)
                .resolve(beneath);
            parent =
                match crust_util::resolve::retry_raced(|| nix::fcntl::openat2(&parent, *name, how))
                {
                    Ok(fd) => fd,
                    Err(Errno::ENOENT) => {
                        // 0755 as containerd makes the container's log directory.
                        match nix::sys::stat::mkdirat(
                            &parent,
                            *name,
                            Mode::from_bits_truncate(0o755),
                        ) {
                            Ok(()) | Err(Errno::EEXIST) => {}
                            Err(errno) => return Err(errno.into()),
                        }
                        crust_util::resolve::retry_raced(|| {
                            nix::fcntl::openat2(&parent, *name, how)
                        })?
                    }
                    Err(errno) => return Err(errno.into()),
                };
        }
        let how = OpenHow::new()
            .flags(
                OFlag::O_WRONLY
                    | OFlag::O_APPEND
                    | OFlag::O_CREAT
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_NOCTTY
                    // A FIFO planted at the name fails (ENXIO) instead of blocking.
                    | OFlag::O_NONBLOCK
                    | OFlag::O_CLOEXEC,
            )
            .mode(Mode::from_bits_truncate(0o640))
            .resolve(beneath);
        let fd =
            crust_util::resolve::retry_raced(|| nix::fcntl::openat2(&parent, *file_name, how))?;
        let file = File::from(fd);
        // Only a regular file: a FIFO or device planted at the name is not a log.
        if !file.metadata()?.is_file() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("log path {} is not a regular file", path.display()),
            ));
        }
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "2026-11-23T11:28:01.000000001Z";

    /// A parsed record: (time, stream, partial, text).
    fn records(bytes: &[u8]) -> Vec<(String, String, bool, String)> {
        let text = std::str::from_utf8(bytes).unwrap();
        assert!(text.is_empty() || text.ends_with('\n'), "{text:?}");
        // Split on '\n' only: a terminal's '\r' is part of the text.
        text.split_terminator('\n')
            .map(|line| {
                let mut parts = line.splitn(4, ' ');
                let time = parts.next().unwrap().to_owned();
                let stream = parts.next().unwrap().to_owned();
                let tag = parts.next().unwrap();
                assert!(tag == "P" || tag == "F", "{line:?}");
                (time, stream, tag == "P", parts.next().unwrap().to_owned())
            })
            .collect()
    }

    fn texts(bytes: &[u8]) -> Vec<(bool, String)> {
        records(bytes)
            .into_iter()
            .map(|(_, _, partial, text)| (partial, text))
            .collect()
    }

    #[test]
    fn full_lines_become_f_records() {
        let mut out = Vec::new();
        let mut buffer = LineBuffer::new(Stream::Stdout);
        buffer.push(b"one\ntwo\n\nthree", T, &mut out);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            format!("{T} stdout F one\n{T} stdout F two\n{T} stdout F \n")
        );
        out.clear();
        buffer.push(b" and more\r\n", T, &mut out);
        assert_eq!(texts(&out), [(false, "three and more\r".to_owned())]);
    }

    #[test]
    fn an_unfinished_line_is_flushed_as_p() {
        let mut out = Vec::new();
        let mut buffer = LineBuffer::new(Stream::Stderr);
        buffer.push(b"done\npart", T, &mut out);
        buffer.push(b"ial", T, &mut out);
        buffer.flush(T, &mut out);
        buffer.flush(T, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("{T} stderr F done\n{T} stderr P partial\n")
        );
    }

    #[test]
    fn long_lines_split_into_p_records_of_16k() {
        for chunk in [1, 1000, 4096, MAX_LINE, 40 * 1024 + 1] {
            let mut line = vec![b'x'; 40 * 1024];
            line.push(b'\n');
            line.extend_from_slice(&[b'y'; MAX_LINE]);
            line.extend_from_slice(b"\nz");
            let mut out = Vec::new();
            let mut buffer = LineBuffer::new(Stream::Stdout);
            for piece in line.chunks(chunk) {
                buffer.push(piece, T, &mut out);
            }
            buffer.flush(T, &mut out);
            let got: Vec<(bool, usize, u8)> = texts(&out)
                .into_iter()
                .map(|(partial, text)| (partial, text.len(), text.as_bytes()[0]))
                .collect();
            assert_eq!(
                got,
                [
                    (true, MAX_LINE, b'x'),
                    (true, MAX_LINE, b'x'),
                    (false, 8192, b'x'),
                    // Exactly 16 KiB then a newline fits one record.
                    (false, MAX_LINE, b'y'),
                    (true, 1, b'z'),
                ],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn both_streams_keep_their_own_lines() {
        let mut out = Vec::new();
        let mut stdout = LineBuffer::new(Stream::Stdout);
        let mut stderr = LineBuffer::new(Stream::Stderr);
        stdout.push(b"out-", T, &mut out);
        stderr.push(b"err-", T, &mut out);
        stderr.push(b"line\n", T, &mut out);
        stdout.push(b"line\n", T, &mut out);
        let got: Vec<(String, String)> = records(&out)
            .into_iter()
            .map(|(_, stream, _, text)| (stream, text))
            .collect();
        assert_eq!(
            got,
            [
                ("stderr".to_owned(), "err-line".to_owned()),
                ("stdout".to_owned(), "out-line".to_owned())
            ]
        );
    }

    /// A strict parser of the fixed-width form, as kubelet's RFC3339Nano parse would
    /// read it, back to nanoseconds since the epoch.
    fn parse_rfc3339_nano(text: &str) -> i64 {
        let b = text.as_bytes();
        assert_eq!(b.len(), 30, "{text}");
        assert_eq!(
            (b[4], b[7], b[10], b[13], b[16], b[19], b[29]),
            (b'-', b'-', b'T', b':', b':', b'.', b'Z')
        );
        let num = |range: std::ops::Range<usize>| text[range].parse::<i64>().unwrap();
        let (year, month, day) = (num(0..4), num(5..7), num(8..10));
        // days_from_civil, the inverse of civil_from_days, written independently.
        let y = if month <= 2 { year - 1 } else { year };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (month + 9) % 12;
        let doy = (153 * mp + 2) / 5 + day - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        let secs = days * 86_400 + num(11..13) * 3600 + num(14..16) * 60 + num(17..19);
        secs * 1_000_000_000 + num(20..29)
    }

    #[test]
    fn timestamps_are_rfc3339_nano_with_nine_digits() {
        assert_eq!(rfc3339_nano(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339_nano(1_795_778_881_123_456_789),
            "2026-11-27T11:28:01.123456789Z"
        );
        // A leap day, the last second of a leap year, the day after.
        assert_eq!(
            rfc3339_nano(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000000000Z"
        );
        assert_eq!(
            rfc3339_nano(1_735_689_599_999_999_999),
            "2024-12-31T23:59:59.999999999Z"
        );
        assert_eq!(
            rfc3339_nano(1_735_689_600_000_000_010),
            "2025-01-01T00:00:00.000000010Z"
        );
        // Spread over 1970..2100, odd offsets hitting every time of day.
        for k in 0..20_000i64 {
            let ns = k * 205_122_240_000_000 + k * k * 1_234_567_891;
            let text = rfc3339_nano(ns);
            assert_eq!(parse_rfc3339_nano(&text), ns, "{text}");
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64;
        assert_eq!(parse_rfc3339_nano(&rfc3339_nano(now)), now);
    }

    #[test]
    fn reopen_follows_a_rename() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut log = LogFile::open(path.clone(), None).unwrap();
        log.write(b"first\n");
        std::fs::rename(&path, dir.path().join("0.log.1")).unwrap();
        log.write(b"second\n");
        log.reopen().unwrap();
        log.write(b"third\n");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("0.log.1")).unwrap(),
            "first\nsecond\n"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "third\n");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640 & !umask()
        );
    }

    fn umask() -> u32 {
        // SAFETY: umask only swaps the process's file mode mask; it is set straight back.
        let mask = unsafe { libc::umask(0o022) };
        // SAFETY: as above.
        unsafe { libc::umask(mask) };
        mask
    }

    #[test]
    fn a_symlink_below_the_log_directory_is_not_followed() {
        let logs = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("victim");
        std::fs::write(&target, "").unwrap();
        let dir = Some(logs.path().to_path_buf());
        // The file itself a symlink.
        std::fs::create_dir(logs.path().join("c")).unwrap();
        std::os::unix::fs::symlink(&target, logs.path().join("c/0.log")).unwrap();
        assert!(LogFile::open(logs.path().join("c/0.log"), dir.clone()).is_err());
        // The container's directory a symlink.
        std::os::unix::fs::symlink(outside.path(), logs.path().join("d")).unwrap();
        assert!(LogFile::open(logs.path().join("d/victim"), dir.clone()).is_err());
        assert!(!outside.path().join("d").exists());
        assert_eq!(std::fs::read(&target).unwrap(), b"");
        // A plain path is created, directory included.
        let mut log = LogFile::open(logs.path().join("e/0.log"), dir).unwrap();
        log.write(b"x\n");
        assert_eq!(std::fs::read(logs.path().join("e/0.log")).unwrap(), b"x\n");
        // Swapped after rotation: the reopen fails, nothing reaches the target.
        std::fs::rename(logs.path().join("e/0.log"), logs.path().join("e/0.log.1")).unwrap();
        std::os::unix::fs::symlink(&target, logs.path().join("e/0.log")).unwrap();
        assert!(log.reopen().is_err());
        log.write(b"y\n");
        assert_eq!(std::fs::read(&target).unwrap(), b"");
    }
}
