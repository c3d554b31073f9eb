//! Safe unpacking of one image layer (an uncompressed tar stream) into a directory of its
//! own, later used as an overlayfs lower directory.
//!
//! A layer is untrusted input. Checking entry names lexically is not enough: an entry can
//! plant a symlink (`a -> /etc`, `a -> ../../..`) or replace a directory with one, and a
//! later entry (`a/passwd`, a hardlink to `a/shadow`) then walks through it. So every
//! directory is resolved by the kernel with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_MAGICLINKS)` relative to a descriptor of the layer directory, which refuses
//! any escape with `EXDEV` whatever earlier entries left on disk, and the last component
//! is then created with an `*at` call on that parent's descriptor that never follows a
//! symlink. An entry that would escape fails the whole unpack; nothing is skipped
//! silently.
//!
//! Path rules, applied to entry names and hardlink targets alike: leading `/` is
//! stripped (as tar does), `.` components are dropped, and `..` is applied lexically
//! (`a/../b` is `b`); a `..` that climbs above the layer root is an error. So a hardlink
//! to `/etc/passwd` means the layer's own `etc/passwd`, which must already be unpacked.
//! Symlinks in parent directories are followed by the kernel only while they stay
//! beneath the layer root, which also means an absolute symlink (`lib -> /usr/lib`) can
//! be created but not walked through by a later entry.
//!
//! Whiteouts follow the OCI image-spec layer format, converted to what overlayfs reads:
//! `dir/.wh.name` becomes a 0/0 character device `dir/name`, `dir/.wh..wh..opq` sets
//! `trusted.overlay.opaque=y` on `dir`, and other `.wh..wh.*` names (aufs bookkeeping) are
//! ignored. `trusted.overlay.*` xattrs carried in the archive's PAX headers are dropped,
//! so only whiteout entries decide what overlayfs hides or redirects.
//!
//! Ownership and modes are applied as recorded (the daemon runs as root). Directory
//! times are applied after the last entry, so entries created inside a directory later
//! in the stream do not bump them.
//!
//! A layer is bounded ([`Limits`]): neither its uncompressed archive nor the file data
//! it holds may pass the layer's cap, and the file data of all an image's layers
//! together may not pass the image's. File sizes count as their apparent size, holes
//! included: a GNU sparse entry claiming a terabyte of holes costs a terabyte of reading
//! even if not of disk. The holes themselves are not written out: runs of zeros the
//! archive reader produces for them become seeks, so the file stays sparse on disk.

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{
    AtFlags, FileType, Gid, Mode, OFlags, ResolveFlags, Timespec, Timestamps, Uid, XattrFlags,
};
use rustix::io::Errno;
use tar::EntryType;

/// Read-ahead for the tar stream: header blocks are 512 bytes, so reading the caller's
/// stream unbuffered would mean one small read per header.
const READ_BUFFER: usize = 128 * 1024;
/// Chunk size for copying file data.
const COPY_BUFFER: usize = 128 * 1024;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
const WHITEOUT_OPAQUE: &[u8] = b".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const OVERLAY_XATTR_PREFIX: &[u8] = b"trusted.overlay.";
const PAX_XATTR_PREFIX: &[u8] = b"SCHILY.xattr.";
const PAX_MTIME: &[u8] = b"mtime";

/// What an unpack wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Tar entries applied (files, directories, links, devices, whiteouts).
    pub entries: u64,
    /// Bytes of regular file data, counting sparse files' holes.
    pub bytes: u64,
}

/// Bounds on what one layer's unpack may read and write.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The most bytes of uncompressed archive, and of file data, the layer may hold.
    pub layer_bytes: u64,
    /// The budget of file data shared by every layer of the image being pulled.
    pub image: Option<Arc<ImageBudget>>,
}

impl Limits {
    /// No bounds at all.
    pub fn none() -> Self {
        Limits {
            layer_bytes: u64::MAX,
            image: None,
        }
    }
}

/// File data an image's layers may unpack to together; layers unpacked in parallel
/// charge it concurrently.
#[derive(Debug)]
pub struct ImageBudget {
    limit: u64,
    used: AtomicU64,
}

impl ImageBudget {
    /// A budget of `limit` bytes, none used.
    pub fn new(limit: u64) -> Self {
        ImageBudget {
            limit,
            used: AtomicU64::new(0),
        }
    }

    /// The budget's size.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Uses `bytes` of the budget; false once the total is past the limit.
    pub fn charge(&self, bytes: u64) -> bool {
        let before = self.used.fetch_add(bytes, Ordering::Relaxed);
        before.saturating_add(bytes) <= self.limit
    }
}

/// Which cap an unpack ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    /// The layer's own cap (`max_layer_unpacked_bytes`).
    Layer,
    /// The image-wide cap (`max_image_unpacked_bytes`).
    Image,
}

impl std::fmt::Display for Cap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cap::Layer => "the layer unpacks to more than the per-layer limit of",
            Cap::Image => "the image unpacks to more than the per-image limit of",
        })
    }
}

/// Why a layer could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The layer directory itself could not be opened.
    #[error("open layer directory {}: {source}", .path.display())]
    OpenDir {
        /// The layer directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The tar stream could not be read or is malformed.
    #[error("read layer archive: {0}")]
    Archive(#[source] io::Error),
    /// An entry's path leads outside the layer directory.
    #[error("entry {path}: escapes the layer directory")]
    Escape {
        /// The entry's path as recorded in the archive.
        path: String,
    },
    /// A hardlink's target lies outside the layer directory.
    #[error("entry {path}: hardlink target {target} escapes the layer directory")]
    LinkEscape {
        /// The entry's path as recorded in the archive.
        path: String,
        /// The hardlink target as recorded in the archive.
        target: String,
    },
    /// An entry is malformed or cannot be applied as described.
    #[error("entry {path}: {reason}")]
    Invalid {
        /// The entry's path as recorded in the archive.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The layer or the image is larger than allowed.
    #[error("{cap} {limit} bytes")]
    TooLarge {
        /// Which cap.
        cap: Cap,
        /// The cap, in bytes.
        limit: u64,
    },
    /// A filesystem operation for an entry failed.
    #[error("entry {path}: {op}: {source}")]
    Io {
        /// The entry's path as recorded in the archive.
        path: String,
        /// The operation that failed.
        op: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Unpacks the uncompressed layer tar `reader` into the empty directory `dest`, reading
/// the stream to its very end.
pub fn unpack_layer<R: Read>(reader: R, dest: &Path) -> Result<UnpackStats, UnpackError> {
    unpack_layer_limited(reader, dest, &Limits::none())
}

/// [`unpack_layer`] within `limits`. On [`UnpackError::TooLarge`] the directory holds a
/// partial layer, which the caller removes as after any other failure.
pub fn unpack_layer_limited<R: Read>(
    reader: R,
    dest: &Path,
    limits: &Limits,
) -> Result<UnpackStats, UnpackError> {
    let over = Rc::new(Cell::new(false));
    let reader = Bounded {
        inner: reader,
        left: limits.layer_bytes,
        over: Rc::clone(&over),
    };
    let too_large = || UnpackError::TooLarge {
        cap: Cap::Layer,
        limit: limits.layer_bytes,
    };
    // The archive reader wraps read errors in its own, so the cap is told apart by the
    // flag, not by the error that surfaces.
    let result = unpack_bounded(reader, dest, limits);
    match result {
        Err(_) if over.get() => Err(too_large()),
        other => other,
    }
}

/// Reads at most `left` bytes of `inner`, failing (and raising `over`) on more.
struct Bounded<R> {
    inner: R,
    left: u64,
    over: Rc<Cell<bool>>,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // One byte past the bound is asked for, so a stream of exactly `left` bytes
        // passes and a longer one is caught.
        let want = buf
            .len()
            .min(usize::try_from(self.left.saturating_add(1)).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n as u64 > self.left {
            self.over.set(true);
            return Err(io::Error::other("archive larger than the layer limit"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn unpack_bounded<R: Read>(
    reader: R,
    dest: &Path,
    limits: &Limits,
) -> Result<UnpackStats, UnpackError> {
    let root = rustix::fs::open(
        dest,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| UnpackError::OpenDir {
        path: dest.to_path_buf(),
        source: e.into(),
    })?;
    let mut unpacker = Unpacker {
        root,
        dir_times: HashMap::new(),
        buf: vec![0; COPY_BUFFER],
        stats: UnpackStats::default(),
        limits: limits.clone(),
    };
    let mut archive = tar::Archive::new(BufReader::with_capacity(READ_BUFFER, reader));
    for entry in archive.entries().map_err(UnpackError::Archive)? {
        let mut entry = entry.map_err(UnpackError::Archive)?;
        unpacker.apply(&mut entry)?;
    }
    unpacker.apply_dir_times()?;
    // The archive stops at the first zero block; the second one and any record padding
    // are still unread, and the caller's diff_id must cover every byte of the stream.
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(UnpackError::Archive)?;
    Ok(unpacker.stats)
}

/// Ownership, mode, time and xattrs of an entry, as recorded in its headers.
struct Meta {
    uid: Uid,
    gid: Gid,
    /// Permission bits including setuid, setgid and sticky.
    mode: u32,
    mtime: Timespec,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

impl Meta {
    fn times(&self) -> Timestamps {
        Timestamps {
            last_access: self.mtime,
            last_modification: self.mtime,
        }
    }
}

/// A file to set xattrs on: an open descriptor, or a `/proc/self/fd/N/name` path for
/// files that cannot be opened safely (symlinks, devices, fifos).
enum XattrTarget<'a> {
    Fd(BorrowedFd<'a>),
    Path(&'a OsStr),
}

struct Unpacker {
    /// The layer directory: every path is resolved beneath it.
    root: OwnedFd,
    /// Directory mtimes to apply once all entries are written, keyed by normalized path
    /// ("" is the layer root).
    dir_times: HashMap<PathBuf, Timespec>,
    buf: Vec<u8>,
    stats: UnpackStats,
    limits: Limits,
}

impl Unpacker {
    fn apply<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            // Global PAX headers carry defaults (comments, charset) nothing here needs.
            return Ok(());
        }
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let comps = normalize(&raw).ok_or_else(|| UnpackError::Escape {
            path: shown.clone(),
        })?;
        let meta = read_meta(entry, &shown)?;
        self.stats.entries += 1;

        let Some((name, dirs)) = comps.split_last() else {
            let is_dir = kind.is_dir() || (kind.is_file() && raw.ends_with(b"/"));
            if !is_dir {
                return Err(invalid(&shown, "only a directory can name the layer root"));
            }
            return self.root_dir(&meta, &shown);
        };

        let name_bytes = name.as_bytes();
        if name_bytes == WHITEOUT_OPAQUE {
            return self.opaque(dirs, &shown);
        }
        if name_bytes.starts_with(WHITEOUT_META_PREFIX) {
            return Ok(());
        }
        if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX) {
            return self.whiteout(dirs, OsStr::from_bytes(hidden), &meta, &shown);
        }

        let rel: PathBuf = comps.iter().collect();
        let parent = self.parent_dir(dirs, &shown)?;
        match kind {
            // Old tars mark directories with a regular type and a trailing slash.
            EntryType::Regular if raw.ends_with(b"/") => {
                self.directory(&parent, name, &rel, &meta, &shown)
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.regular(entry, &parent, name, &rel, &meta, &shown)
            }
            EntryType::Directory => self.directory(&parent, name, &rel, &meta, &shown),
            EntryType::Symlink => self.symlink(entry, &parent, name, &rel, &meta, &shown),
            EntryType::Link => self.hardlink(entry, &parent, name, &comps, &shown),
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                self.special(entry, kind, &parent, name, &rel, &meta, &shown)
            }
            other => Err(invalid(
                &shown,
                format!("unsupported entry type {:?}", other.as_byte() as char),
            )),
        }
    }

    /// A directory entry for the layer root itself (`./`): its metadata is the merged
    /// root's when this layer is the topmost to carry one.
    fn root_dir(&mut self, meta: &Meta, shown: &str) -> Result<(), UnpackError> {
        let fd = self.root.as_fd();
        set_owner_mode_fd(fd, meta, shown)?;
        set_xattrs(XattrTarget::Fd(fd), &meta.xattrs, shown)?;
        self.dir_times.insert(PathBuf::new(), meta.mtime);
        Ok(())
    }

    fn regular<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        parent: &OwnedFd,
        name: &OsStr,
        rel: &Path,
        meta: &Meta,
        shown: &str,
    ) -> Result<(), UnpackError> {
        self.clear(parent, name, rel, false, shown)?;
        let fd = rustix::fs::openat(
            parent,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(io_err(shown, "create file"))?;
        let mut file = File::from(fd);
        let sparse = entry.header().entry_type().is_gnu_sparse();
        let mut written = 0u64;
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(shown, "read data")(e)),
            };
            self.charge(n as u64)?;
            let chunk = self.buf.get(..n).unwrap_or_default();
            // The tar reader hands a sparse file's holes over as reads of zeros, each
            // read within one hole or one data block; skipping the zeros keeps the hole.
            if sparse && chunk.iter().all(|&b| b == 0) {
                file.seek(SeekFrom::Current(n as i64))
                    .map_err(io_err(shown, "seek over a hole"))?;
            } else {
                file.write_all(chunk).map_err(io_err(shown, "write data"))?;
            }
            written += n as u64;
        }
        if sparse {
            // A hole at the end has no byte after it to give the file its length.
            file.set_len(written).map_err(io_err(shown, "set length"))?;
        }
        // A stream cut inside a file's data reads as a short file, not an error.
        if !entry.header().entry_type().is_gnu_sparse() && written != entry.size() {
            return Err(invalid(
                shown,
                format!("truncated data: {written} of {} bytes", entry.size()),
            ));
        }
        // chown clears setuid/setgid and security.capability, so it goes first.
        set_owner_mode_fd(file.as_fd(), meta, shown)?;
        set_xattrs(XattrTarget::Fd(file.as_fd()), &meta.xattrs, shown)?;
        rustix::fs::futimens(&file, &meta.times()).map_err(io_err(shown, "set times"))?;
        Ok(())
    }

    /// Counts `n` more bytes of file data against the layer's and the image's caps.
    fn charge(&mut self, n: u64) -> Result<(), UnpackError> {
        self.stats.bytes += n;
        if self.stats.bytes > self.limits.layer_bytes {
            return Err(UnpackError::TooLarge {
                cap: Cap::Layer,
                limit: self.limits.layer_bytes,
            });
        }
        if let Some(image) = &self.limits.image
            && !image.charge(n)
        {
            return Err(UnpackError::TooLarge {
                cap: Cap::Image,
                limit: image.limit(),
            });
        }
        Ok(())
    }

    fn directory(
        &mut self,
        parent: &OwnedFd,
        name: &OsStr,
        rel: &Path,
        meta: &Meta,
        shown: &str,
    ) -> Result<(), UnpackError> {
        if !self.clear(parent, name, rel, true, shown)? {
            rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700))
                .map_err(io_err(shown, "create directory"))?;
        }
        let fd = rustix::fs::openat(
            parent,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io_err(shown, "open directory"))?;
        set_owner_mode_fd(fd.as_fd(), meta, shown)?;
        set_xattrs(XattrTarget::Fd(fd.as_fd()), &meta.xattrs, shown)?;
        self.dir_times.insert(rel.to_path_buf(), meta.mtime);
        Ok(())
    }

    fn symlink<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        parent: &OwnedFd,
        name: &OsStr,
        rel: &Path,
        meta: &Meta,
        shown: &str,
    ) -> Result<(), UnpackError> {
        let target = entry
            .link_name_bytes()
            .ok_or_else(|| invalid(shown, "symlink without a target"))?;
        self.clear(parent, name, rel, false, shown)?;
        rustix::fs::symlinkat(OsStr::from_bytes(&target), parent, name)
            .map_err(io_err(shown, "create symlink"))?;
        rustix::fs::chownat(
            parent,
            name,
            Some(meta.uid),
            Some(meta.gid),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(io_err(shown, "set owner"))?;
        if !meta.xattrs.is_empty() {
            let path = proc_path(parent, name);
            set_xattrs(XattrTarget::Path(&path), &meta.xattrs, shown)?;
        }
        rustix::fs::utimensat(parent, name, &meta.times(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(io_err(shown, "set times"))?;
        Ok(())
    }

    /// A hardlink to a file unpacked earlier. Its metadata is the target's: applying the
    /// link header's would change the shared inode.
    fn hardlink<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        parent: &OwnedFd,
        name: &OsStr,
        comps: &[OsString],
        shown: &str,
    ) -> Result<(), UnpackError> {
        let raw = entry
            .link_name_bytes()
            .ok_or_else(|| invalid(shown, "hardlink without a target"))?;
        let target_shown = String::from_utf8_lossy(&raw).into_owned();
        let escape = || UnpackError::LinkEscape {
            path: shown.to_owned(),
            target: target_shown.clone(),
        };
        let target = normalize(&raw).ok_or_else(escape)?;
        let Some((target_name, target_dirs)) = target.split_last() else {
            return Err(invalid(shown, "hardlink target is the layer root"));
        };
        let missing = || {
            invalid(
                shown,
                format!("hardlink target {target_shown} does not exist in the layer"),
            )
        };
        let target_rel: PathBuf = target_dirs.iter().collect();
        let target_parent = match self.open_dir(&target_rel) {
            Ok(fd) => fd,
            Err(Errno::XDEV) => return Err(escape()),
            Err(Errno::NOENT) => return Err(missing()),
            Err(e) => return Err(io_err(shown, "resolve hardlink target")(e)),
        };
        let st = match rustix::fs::statat(&target_parent, target_name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Err(missing()),
            Err(e) => return Err(io_err(shown, "inspect hardlink target")(e)),
        };
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            return Err(invalid(
                shown,
                format!("hardlink target {target_shown} is a directory"),
            ));
        }
        if target.as_slice() == comps {
            // A link to itself: the file is already there.
            return Ok(());
        }
        let rel: PathBuf = comps.iter().collect();
        self.clear(parent, name, &rel, false, shown)?;
        rustix::fs::linkat(&target_parent, target_name, parent, name, AtFlags::empty())
            .map_err(io_err(shown, "create hardlink"))?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn special<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        kind: EntryType,
        parent: &OwnedFd,
        name: &OsStr,
        rel: &Path,
        meta: &Meta,
        shown: &str,
    ) -> Result<(), UnpackError> {
        let header = entry.header();
        let file_type = match kind {
            EntryType::Char => FileType::CharacterDevice,
            EntryType::Block => FileType::BlockDevice,
            _ => FileType::Fifo,
        };
        let (major, minor) = if file_type == FileType::Fifo {
            // A fifo's device numbers mean nothing, and writers leave them blank.
            (0, 0)
        } else {
            let (raw_major, raw_minor) = match (header.as_gnu(), header.as_ustar()) {
                (Some(gnu), _) => (gnu.dev_major, gnu.dev_minor),
                (None, Some(ustar)) => (ustar.dev_major, ustar.dev_minor),
                // Old v7 headers have no device numbers.
                (None, None) => ([0; 8], [0; 8]),
            };
            let bad_dev = |e: io::Error| invalid(shown, format!("malformed device number: {e}"));
            let major = numeric(&raw_major, || header.device_major())
                .map_err(bad_dev)?
                .unwrap_or(0);
            let minor = numeric(&raw_minor, || header.device_minor())
                .map_err(bad_dev)?
                .unwrap_or(0);
            (major, minor)
        };
        self.clear(parent, name, rel, false, shown)?;
        rustix::fs::mknodat(
            parent,
            name,
            file_type,
            Mode::from_raw_mode(0o600),
            rustix::fs::makedev(major, minor),
        )
        .map_err(io_err(shown, "create device node"))?;
        rustix::fs::chownat(
            parent,
            name,
            Some(meta.uid),
            Some(meta.gid),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(io_err(shown, "set owner"))?;
        // Opening a device or fifo to get a descriptor could block or have side effects,
        // so this goes by name; the name was created just above in a directory only this
        // unpack writes, and mknodat never makes a symlink.
        rustix::fs::chmodat(
            parent,
            name,
            Mode::from_raw_mode(meta.mode),
            AtFlags::empty(),
        )
        .map_err(io_err(shown, "set mode"))?;
        if !meta.xattrs.is_empty() {
            let path = proc_path(parent, name);
            set_xattrs(XattrTarget::Path(&path), &meta.xattrs, shown)?;
        }
        rustix::fs::utimensat(parent, name, &meta.times(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(io_err(shown, "set times"))?;
        Ok(())
    }

    /// `dir/.wh.name`: hides `name` of lower layers with an overlayfs whiteout.
    fn whiteout(
        &mut self,
        dirs: &[OsString],
        hidden: &OsStr,
        meta: &Meta,
        shown: &str,
    ) -> Result<(), UnpackError> {
        if matches!(hidden.as_bytes(), b"" | b"." | b"..") || hidden.as_bytes().contains(&b'/') {
            return Err(invalid(shown, "invalid whiteout name"));
        }
        let parent = self.parent_dir(dirs, shown)?;
        let rel: PathBuf = dirs
            .iter()
            .map(OsString::as_os_str)
            .chain([hidden])
            .collect();
        self.clear(&parent, hidden, &rel, false, shown)?;
        rustix::fs::mknodat(
            &parent,
            hidden,
            FileType::CharacterDevice,
            Mode::empty(),
            rustix::fs::makedev(0, 0),
        )
        .map_err(io_err(shown, "create whiteout"))?;
        rustix::fs::chownat(
            &parent,
            hidden,
            Some(meta.uid),
            Some(meta.gid),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(io_err(shown, "set owner"))?;
        rustix::fs::utimensat(&parent, hidden, &meta.times(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(io_err(shown, "set times"))?;
        Ok(())
    }

    /// `dir/.wh..wh..opq`: hides everything lower layers have in `dir`.
    fn opaque(&mut self, dirs: &[OsString], shown: &str) -> Result<(), UnpackError> {
        let dir = self.parent_dir(dirs, shown)?;
        rustix::fs::fsetxattr(&dir, OPAQUE_XATTR, b"y", XattrFlags::empty())
            .map_err(io_err(shown, "mark directory opaque"))
    }

    /// Opens `rel` (a normalized directory path, "" for the root) beneath the layer root,
    /// following symlinks only while they stay beneath it.
    fn open_dir(&self, rel: &Path) -> Result<OwnedFd, Errno> {
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        crust_util::resolve::retry_raced(|| {
            rustix::fs::openat2(
                &self.root,
                rel,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
            )
        })
    }

    /// Opens the directory `dirs`, creating missing ones with mode 0755.
    fn parent_dir(&self, dirs: &[OsString], shown: &str) -> Result<OwnedFd, UnpackError> {
        let resolve_err = |e: Errno| {
            if e == Errno::XDEV {
                UnpackError::Escape {
                    path: shown.to_owned(),
                }
            } else {
                io_err(shown, "resolve parent directory")(e)
            }
        };
        let rel: PathBuf = dirs.iter().collect();
        match self.open_dir(&rel) {
            Ok(fd) => return Ok(fd),
            Err(Errno::NOENT) => {}
            Err(e) => return Err(resolve_err(e)),
        }
        // Each prefix is resolved afresh from the root rather than relative to the last
        // one, so a symlink along the way is judged against the layer root, not against
        // the directory it sits in.
        let mut cur = self.open_dir(Path::new("")).map_err(resolve_err)?;
        let mut prefix = PathBuf::new();
        for comp in dirs {
            prefix.push(comp);
            cur = match self.open_dir(&prefix) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => {
                    let created = match rustix::fs::mkdirat(&cur, comp, Mode::from_raw_mode(0o755))
                    {
                        Ok(()) => true,
                        Err(Errno::EXIST) => false,
                        Err(e) => return Err(io_err(shown, "create parent directory")(e)),
                    };
                    let fd = self.open_dir(&prefix).map_err(resolve_err)?;
                    if created {
                        // mkdirat's mode is filtered by the umask.
                        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o755))
                            .map_err(io_err(shown, "set parent directory mode"))?;
                    }
                    fd
                }
                Err(e) => return Err(resolve_err(e)),
            };
        }
        Ok(cur)
    }

    /// Makes room for a new entry `name` in `parent`: an existing directory is kept when
    /// `keep_dir` (returns true), anything else is removed.
    fn clear(
        &mut self,
        parent: &OwnedFd,
        name: &OsStr,
        rel: &Path,
        keep_dir: bool,
        shown: &str,
    ) -> Result<bool, UnpackError> {
        let st = match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(false),
            Err(e) => return Err(io_err(shown, "inspect existing entry")(e)),
        };
        if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
            rustix::fs::unlinkat(parent, name, AtFlags::empty())
                .map_err(io_err(shown, "remove existing entry"))?;
            return Ok(false);
        }
        if keep_dir {
            return Ok(true);
        }
        remove_tree(parent, name).map_err(io_err(shown, "remove existing directory"))?;
        self.dir_times.retain(|dir, _| !dir.starts_with(rel));
        Ok(false)
    }

    fn apply_dir_times(&mut self) -> Result<(), UnpackError> {
        for (rel, mtime) in std::mem::take(&mut self.dir_times) {
            let shown = if rel.as_os_str().is_empty() {
                ".".to_owned()
            } else {
                rel.display().to_string()
            };
            let times = Timestamps {
                last_access: mtime,
                last_modification: mtime,
            };
            let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
                rustix::fs::futimens(&self.root, &times)
                    .map_err(io_err(&shown, "set directory times"))?;
                continue;
            };
            // A later entry may have replaced the directory, or one of its parents,
            // through a symlinked path the lexical bookkeeping in `clear` cannot see.
            let parent = match self.open_dir(parent) {
                Ok(fd) => fd,
                Err(Errno::NOENT | Errno::NOTDIR | Errno::XDEV) => continue,
                Err(e) => return Err(io_err(&shown, "set directory times")(e)),
            };
            match rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {}
                Ok(_) | Err(Errno::NOENT) => continue,
                Err(e) => return Err(io_err(&shown, "set directory times")(e)),
            }
            rustix::fs::utimensat(&parent, name, &times, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(io_err(&shown, "set directory times"))?;
        }
        Ok(())
    }
}

/// Splits an entry path into normal components: leading `/` and `.` are dropped, `..`
/// removes the previous component. `None` when a `..` climbs above the root.
fn normalize(raw: &[u8]) -> Option<Vec<OsString>> {
    let mut comps: Vec<OsString> = Vec::new();
    for comp in raw.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                comps.pop()?;
            }
            name => comps.push(OsStr::from_bytes(name).to_owned()),
        }
    }
    Some(comps)
}

fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>, shown: &str) -> Result<Meta, UnpackError> {
    let header = entry.header();
    let old = header.as_old();
    let field = |what: &str, e: io::Error| invalid(shown, format!("malformed {what}: {e}"));
    let uid = numeric(&old.uid, || header.uid()).map_err(|e| field("uid", e))?;
    let gid = numeric(&old.gid, || header.gid()).map_err(|e| field("gid", e))?;
    // u32::MAX is chown's "leave unchanged", not an id.
    let uid = u32::try_from(uid)
        .ok()
        .filter(|id| *id != u32::MAX)
        .ok_or_else(|| invalid(shown, format!("uid {uid} out of range")))?;
    let gid = u32::try_from(gid)
        .ok()
        .filter(|id| *id != u32::MAX)
        .ok_or_else(|| invalid(shown, format!("gid {gid} out of range")))?;
    let mode = numeric(&old.mode, || header.mode()).map_err(|e| field("mode", e))? & 0o7777;
    let secs = numeric(&old.mtime, || header.mtime()).map_err(|e| field("mtime", e))?;
    let secs =
        i64::try_from(secs).map_err(|_| invalid(shown, format!("mtime {secs} out of range")))?;
    let mut mtime = Timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    let mut xattrs = Vec::new();
    // The tar crate already applies PAX path, linkpath, size, uid and gid; mtime (with
    // sub-second precision) and xattrs are left to us.
    if let Some(extensions) = entry.pax_extensions().map_err(UnpackError::Archive)? {
        for ext in extensions {
            let ext = ext.map_err(|e| field("pax header", e))?;
            let key = ext.key_bytes();
            if let Some(name) = key.strip_prefix(PAX_XATTR_PREFIX) {
                xattrs.push((
                    OsStr::from_bytes(name).to_owned(),
                    ext.value_bytes().to_vec(),
                ));
            } else if key == PAX_MTIME {
                mtime = parse_pax_time(ext.value_bytes())
                    .ok_or_else(|| invalid(shown, "malformed pax mtime"))?;
            }
        }
    }
    Ok(Meta {
        uid: Uid::from_raw(uid),
        gid: Gid::from_raw(gid),
        mode,
        mtime,
        xattrs,
    })
}

/// A numeric header field, with a blank one (all NULs or spaces, as some writers leave
/// fields they consider irrelevant) read as zero, as GNU tar and Go's archive/tar do.
fn numeric<T: Default>(raw: &[u8], parse: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    if raw.iter().all(|b| *b == 0 || *b == b' ') {
        return Ok(T::default());
    }
    parse()
}

/// Parses a PAX time, `[-]seconds[.fraction]`.
fn parse_pax_time(value: &[u8]) -> Option<Timespec> {
    let text = std::str::from_utf8(value).ok()?;
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = secs.parse().ok()?;
    // Digits past nanoseconds are dropped, as GNU tar does.
    let mut nanos: i64 = 0;
    for i in 0..9 {
        let digit = frac.as_bytes().get(i).map_or(0, |b| i64::from(b - b'0'));
        nanos = nanos * 10 + digit;
    }
    if !negative {
        return Some(Timespec {
            tv_sec: secs,
            tv_nsec: nanos,
        });
    }
    if nanos == 0 {
        return Some(Timespec {
            tv_sec: secs.checked_neg()?,
            tv_nsec: 0,
        });
    }
    Some(Timespec {
        tv_sec: secs.checked_neg()?.checked_sub(1)?,
        tv_nsec: 1_000_000_000 - nanos,
    })
}

/// Applies owner then mode (chown clears setuid/setgid) through a descriptor.
fn set_owner_mode_fd(fd: BorrowedFd<'_>, meta: &Meta, shown: &str) -> Result<(), UnpackError> {
    rustix::fs::fchown(fd, Some(meta.uid), Some(meta.gid)).map_err(io_err(shown, "set owner"))?;
    rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode)).map_err(io_err(shown, "set mode"))
}

fn set_xattrs(
    target: XattrTarget<'_>,
    xattrs: &[(OsString, Vec<u8>)],
    shown: &str,
) -> Result<(), UnpackError> {
    for (name, value) in xattrs {
        if name.as_bytes().starts_with(OVERLAY_XATTR_PREFIX) {
            tracing::warn!(entry = shown, xattr = ?name, "ignoring overlayfs xattr from layer archive");
            continue;
        }
        let result = match target {
            XattrTarget::Fd(fd) => rustix::fs::fsetxattr(fd, name, value, XattrFlags::empty()),
            XattrTarget::Path(path) => {
                rustix::fs::lsetxattr(path, name, value, XattrFlags::empty())
            }
        };
        match result {
            Ok(()) => {}
            // As containerd does: a filesystem without xattrs loses them, with a warning.
            Err(Errno::OPNOTSUPP) => {
                tracing::warn!(entry = shown, xattr = ?name, "filesystem does not support xattrs");
            }
            Err(e) => {
                return Err(UnpackError::Io {
                    path: shown.to_owned(),
                    op: format!("set xattr {}", name.to_string_lossy()),
                    source: e.into(),
                });
            }
        }
    }
    Ok(())
}

/// A path naming `name` in the directory `dir` through procfs, for the xattr calls that
/// have no `*at` form; the `l` variants keep `name` itself from being followed.
fn proc_path(dir: &OwnedFd, name: &OsStr) -> OsString {
    let mut path = OsString::from(format!("/proc/self/fd/{}/", dir.as_raw_fd()));
    path.push(name);
    path
}

/// Removes the directory `name` in `parent` and everything in it, never following a
/// symlink.
fn remove_tree(parent: &OwnedFd, name: &OsStr) -> Result<(), Errno> {
    let fd = rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut children = Vec::new();
    for child in rustix::fs::Dir::read_from(&fd)? {
        let child = child?;
        let child_name = child.file_name().to_bytes();
        if child_name != b"." && child_name != b".." {
            children.push(OsStr::from_bytes(child_name).to_owned());
        }
    }
    for child in children {
        let st = rustix::fs::statat(&fd, &child, AtFlags::SYMLINK_NOFOLLOW)?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            remove_tree(&fd, &child)?;
        } else {
            rustix::fs::unlinkat(&fd, &child, AtFlags::empty())?;
        }
    }
    rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)
}

fn invalid(shown: &str, reason: impl Into<String>) -> UnpackError {
    UnpackError::Invalid {
        path: shown.to_owned(),
        reason: reason.into(),
    }
}

/// Builds the error for a failed `op` lazily, so the success path does not allocate.
fn io_err<'a, E: Into<io::Error>>(
    shown: &'a str,
    op: &'static str,
) -> impl FnOnce(E) -> UnpackError + 'a {
    move |e| UnpackError::Io {
        path: shown.to_owned(),
        op: op.to_owned(),
        source: e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use tar::{Builder, Header};
    use tempfile::TempDir;

    const MTIME: u64 = 1_600_000_000;

    /// A temp dir with an empty `layer/` to unpack into and an `outside/` sibling that
    /// hostile archives aim at.
    struct Fixture {
        _tmp: TempDir,
        layer: PathBuf,
        outside: PathBuf,
    }

    fn fixture() -> Fixture {
        let tmp = TempDir::new().unwrap();
        let layer = tmp.path().join("layer");
        let outside = tmp.path().join("outside");
        fs::create_dir(&layer).unwrap();
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("secret"), b"secret").unwrap();
        Fixture {
            _tmp: tmp,
            layer,
            outside,
        }
    }

    /// Names, types, sizes, modes, owners, mtimes and contents of everything under
    /// `dir`, to show a hostile archive changed nothing.
    fn snapshot(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let meta = fs::symlink_metadata(&d).unwrap();
            out.push(format!(
                "{} {:o} {}:{} {} {}",
                d.display(),
                meta.mode(),
                meta.uid(),
                meta.gid(),
                meta.mtime(),
                meta.mtime_nsec()
            ));
            for child in fs::read_dir(&d).unwrap() {
                let path = child.unwrap().path();
                let meta = fs::symlink_metadata(&path).unwrap();
                if meta.is_dir() {
                    stack.push(path);
                } else {
                    let data = if meta.is_file() {
                        fs::read(&path).unwrap()
                    } else {
                        Vec::new()
                    };
                    out.push(format!(
                        "{} {:o} {}:{} {} {} {:?}",
                        path.display(),
                        meta.mode(),
                        meta.uid(),
                        meta.gid(),
                        meta.mtime(),
                        meta.nlink(),
                        data
                    ));
                }
            }
        }
        out.sort();
        out
    }

    /// A header with raw name bytes, so hostile names the tar crate refuses to set can
    /// be written.
    fn header(kind: EntryType, name: &[u8], size: u64) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        let slot = &mut h.as_old_mut().name;
        slot.fill(0);
        slot[..name.len()].copy_from_slice(name);
        h.set_size(size);
        h.set_mode(if kind == EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(MTIME);
        h.set_cksum();
        h
    }

    fn with_link(mut h: Header, target: &[u8]) -> Header {
        let slot = &mut h.as_old_mut().linkname;
        slot.fill(0);
        slot[..target.len()].copy_from_slice(target);
        h.set_cksum();
        h
    }

    fn file(b: &mut Builder<Vec<u8>>, name: &str, data: &[u8]) {
        b.append(
            &header(EntryType::Regular, name.as_bytes(), data.len() as u64),
            data,
        )
        .unwrap();
    }

    fn dir(b: &mut Builder<Vec<u8>>, name: &str) {
        b.append(
            &header(EntryType::Directory, name.as_bytes(), 0),
            io::empty(),
        )
        .unwrap();
    }

    fn symlink(b: &mut Builder<Vec<u8>>, name: &str, target: &str) {
        let h = with_link(
            header(EntryType::Symlink, name.as_bytes(), 0),
            target.as_bytes(),
        );
        b.append(&h, io::empty()).unwrap();
    }

    fn hardlink(b: &mut Builder<Vec<u8>>, name: &str, target: &str) {
        let h = with_link(
            header(EntryType::Link, name.as_bytes(), 0),
            target.as_bytes(),
        );
        b.append(&h, io::empty()).unwrap();
    }

    fn build(f: impl FnOnce(&mut Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = Builder::new(Vec::new());
        f(&mut b);
        b.into_inner().unwrap()
    }

    fn unpack(fx: &Fixture, tar: &[u8]) -> Result<UnpackStats, UnpackError> {
        unpack_layer(tar, &fx.layer)
    }

    /// Unpacks a hostile archive: it must fail with an error naming `entry`, and leave
    /// `outside/` as it was.
    fn assert_refused(fx: &Fixture, tar: &[u8], entry: &str) -> UnpackError {
        let before = snapshot(&fx.outside);
        let err = unpack(fx, tar).expect_err("hostile archive was unpacked");
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("entry {entry}:")),
            "error does not name {entry}: {message}"
        );
        assert_eq!(snapshot(&fx.outside), before, "outside/ changed");
        err
    }

    fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 256];
        let n = rustix::fs::lgetxattr(path, name, &mut buf).ok()?;
        buf.truncate(n);
        Some(buf)
    }

    #[test]
    fn regular_file_keeps_data_mode_owner_and_mtime() {
        let fx = fixture();
        let tar = build(|b| {
            let mut h = header(EntryType::Regular, b"etc/app.conf", 5);
            h.set_mode(0o640);
            h.set_uid(1000);
            h.set_gid(2000);
            h.set_cksum();
            b.append(&h, &b"hello"[..]).unwrap();
        });
        let stats = unpack(&fx, &tar).unwrap();
        assert_eq!(
            stats,
            UnpackStats {
                entries: 1,
                bytes: 5
            }
        );
        let path = fx.layer.join("etc/app.conf");
        assert_eq!(fs::read(&path).unwrap(), b"hello");
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o640);
        assert_eq!((meta.uid(), meta.gid()), (1000, 2000));
        assert_eq!(meta.mtime(), MTIME as i64);
        let etc = fs::metadata(fx.layer.join("etc")).unwrap();
        assert!(etc.is_dir());
        assert_eq!(etc.mode() & 0o7777, 0o755);
    }

    #[test]
    fn missing_parents_are_created() {
        let fx = fixture();
        let tar = build(|b| file(b, "a/b/c/file", b"x"));
        unpack(&fx, &tar).unwrap();
        for d in ["a", "a/b", "a/b/c"] {
            let meta = fs::symlink_metadata(fx.layer.join(d)).unwrap();
            assert!(meta.is_dir(), "{d}");
            assert_eq!(meta.mode() & 0o7777, 0o755, "{d}");
        }
        assert_eq!(fs::read(fx.layer.join("a/b/c/file")).unwrap(), b"x");
    }

    #[test]
    fn setuid_and_setgid_survive_chown() {
        let fx = fixture();
        let tar = build(|b| {
            let mut h = header(EntryType::Regular, b"bin/su", 2);
            h.set_mode(0o6755);
            h.set_uid(1000);
            h.set_gid(1000);
            h.set_cksum();
            b.append(&h, &b"#!"[..]).unwrap();
            let mut h = header(EntryType::Directory, b"tmp/", 0);
            h.set_mode(0o1777);
            h.set_cksum();
            b.append(&h, io::empty()).unwrap();
        });
        unpack(&fx, &tar).unwrap();
        let su = fs::metadata(fx.layer.join("bin/su")).unwrap();
        assert_eq!(su.mode() & 0o7777, 0o6755);
        assert_eq!(su.uid(), 1000);
        let tmp = fs::metadata(fx.layer.join("tmp")).unwrap();
        assert_eq!(tmp.mode() & 0o7777, 0o1777);
    }

    #[test]
    fn symlinks_are_kept_as_links_and_not_followed() {
        let fx = fixture();
        let tar = build(|b| {
            let mut h = with_link(header(EntryType::Symlink, b"bin/sh", 0), b"/bin/busybox");
            h.set_uid(7);
            h.set_gid(8);
            h.set_cksum();
            b.append(&h, io::empty()).unwrap();
            symlink(b, "passwd", "/etc/passwd");
            symlink(b, "lib", "usr/lib");
            file(b, "usr/lib/libc.so", b"elf");
        });
        unpack(&fx, &tar).unwrap();
        let sh = fx.layer.join("bin/sh");
        assert_eq!(fs::read_link(&sh).unwrap(), Path::new("/bin/busybox"));
        let meta = fs::symlink_metadata(&sh).unwrap();
        assert!(meta.file_type().is_symlink());
        assert_eq!((meta.uid(), meta.gid()), (7, 8));
        assert_eq!(meta.mtime(), MTIME as i64);
        assert_eq!(
            fs::read_link(fx.layer.join("passwd")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert_eq!(fs::read(fx.layer.join("lib/libc.so")).unwrap(), b"elf");
    }

    #[test]
    fn hardlink_inside_shares_the_inode() {
        let fx = fixture();
        let tar = build(|b| {
            file(b, "usr/bin/perl", b"perl");
            hardlink(b, "usr/bin/perl5", "usr/bin/perl");
            // An absolute target means the layer's own file.
            hardlink(b, "perl-abs", "/usr/bin/perl");
        });
        unpack(&fx, &tar).unwrap();
        let a = fs::metadata(fx.layer.join("usr/bin/perl")).unwrap();
        let b = fs::metadata(fx.layer.join("usr/bin/perl5")).unwrap();
        let c = fs::metadata(fx.layer.join("perl-abs")).unwrap();
        assert_eq!(a.ino(), b.ino());
        assert_eq!(a.ino(), c.ino());
        assert_eq!(a.nlink(), 3);
    }

    #[test]
    fn device_nodes_and_fifos_are_created() {
        let fx = fixture();
        let tar = build(|b| {
            let mut h = header(EntryType::Char, b"dev/null", 0);
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
            h.set_mode(0o666);
            h.set_cksum();
            b.append(&h, io::empty()).unwrap();
            let mut h = header(EntryType::Block, b"dev/loop0", 0);
            h.set_device_major(7).unwrap();
            h.set_device_minor(0).unwrap();
            h.set_mode(0o660);
            h.set_gid(6);
            h.set_cksum();
            b.append(&h, io::empty()).unwrap();
            b.append(&header(EntryType::Fifo, b"run/fifo", 0), io::empty())
                .unwrap();
        });
        unpack(&fx, &tar).unwrap();
        let null = fs::symlink_metadata(fx.layer.join("dev/null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(
            (
                rustix::fs::major(null.rdev()),
                rustix::fs::minor(null.rdev())
            ),
            (1, 3)
        );
        assert_eq!(null.mode() & 0o7777, 0o666);
        let lp = fs::symlink_metadata(fx.layer.join("dev/loop0")).unwrap();
        assert!(lp.file_type().is_block_device());
        assert_eq!(
            (rustix::fs::major(lp.rdev()), rustix::fs::minor(lp.rdev())),
            (7, 0)
        );
        assert_eq!((lp.mode() & 0o7777, lp.gid()), (0o660, 6));
        let fifo = fs::symlink_metadata(fx.layer.join("run/fifo")).unwrap();
        assert!(fifo.file_type().is_fifo());
        assert_eq!(fifo.mode() & 0o7777, 0o644);
    }

    #[test]
    fn whiteout_becomes_overlay_char_device() {
        let fx = fixture();
        let tar = build(|b| {
            dir(b, "etc/");
            file(b, "etc/.wh.motd", b"");
            file(b, ".wh.gone-at-root", b"");
        });
        let stats = unpack(&fx, &tar).unwrap();
        assert_eq!(stats.entries, 3);
        for path in ["etc/motd", "gone-at-root"] {
            let meta = fs::symlink_metadata(fx.layer.join(path)).unwrap();
            assert!(meta.file_type().is_char_device(), "{path}");
            assert_eq!(meta.rdev(), 0, "{path}");
        }
        assert!(fs::symlink_metadata(fx.layer.join("etc/.wh.motd")).is_err());
    }

    #[test]
    fn opaque_marker_sets_the_overlay_xattr() {
        let fx = fixture();
        let tar = build(|b| {
            dir(b, "var/");
            file(b, "var/.wh..wh..opq", b"");
            // Marker before its directory's own entry, and for a directory never listed.
            file(b, "opt/.wh..wh..opq", b"");
            dir(b, "opt/");
            file(b, "srv/data/.wh..wh..opq", b"");
        });
        unpack(&fx, &tar).unwrap();
        for d in ["var", "opt", "srv/data"] {
            let path = fx.layer.join(d);
            assert!(fs::metadata(&path).unwrap().is_dir(), "{d}");
            assert_eq!(
                xattr(&path, "trusted.overlay.opaque").as_deref(),
                Some(&b"y"[..]),
                "{d}"
            );
            assert!(fs::symlink_metadata(path.join(".wh..wh..opq")).is_err());
        }
    }

    #[test]
    fn pax_xattrs_are_kept_and_overlay_ones_dropped() {
        let fx = fixture();
        let tar = build(|b| {
            b.append_pax_extensions([
                ("SCHILY.xattr.user.foo", &b"bar"[..]),
                ("SCHILY.xattr.trusted.overlay.redirect", &b"/etc"[..]),
                ("mtime", &b"1600000000.25"[..]),
            ])
            .unwrap();
            file(b, "file", b"data");
        });
        unpack(&fx, &tar).unwrap();
        let path = fx.layer.join("file");
        assert_eq!(xattr(&path, "user.foo").as_deref(), Some(&b"bar"[..]));
        assert_eq!(xattr(&path, "trusted.overlay.redirect"), None);
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(
            (meta.mtime(), meta.mtime_nsec()),
            (MTIME as i64, 250_000_000)
        );
    }

    #[test]
    fn later_entries_replace_earlier_ones() {
        let fx = fixture();
        let tar = build(|b| {
            // A directory with contents replaced by a file.
            dir(b, "x/");
            file(b, "x/inner", b"inner");
            file(b, "x", b"now a file");
            // A file replaced by a directory.
            file(b, "y", b"file");
            dir(b, "y/");
            file(b, "y/inner", b"y");
            // A directory listed twice keeps its contents and takes the new metadata.
            dir(b, "z/");
            file(b, "z/keep", b"keep");
            let mut h = header(EntryType::Directory, b"z/", 0);
            h.set_mode(0o700);
            h.set_cksum();
            b.append(&h, io::empty()).unwrap();
            // A file replaced by a symlink, and a file by a file.
            file(b, "s", b"file");
            symlink(b, "s", "target");
            file(b, "f", b"old");
            file(b, "f", b"new");
        });
        unpack(&fx, &tar).unwrap();
        assert_eq!(fs::read(fx.layer.join("x")).unwrap(), b"now a file");
        assert!(fs::metadata(fx.layer.join("y")).unwrap().is_dir());
        assert_eq!(fs::read(fx.layer.join("y/inner")).unwrap(), b"y");
        let z = fs::metadata(fx.layer.join("z")).unwrap();
        assert_eq!(z.mode() & 0o7777, 0o700);
        assert_eq!(fs::read(fx.layer.join("z/keep")).unwrap(), b"keep");
        assert_eq!(
            fs::read_link(fx.layer.join("s")).unwrap(),
            Path::new("target")
        );
        assert_eq!(fs::read(fx.layer.join("f")).unwrap(), b"new");
    }

    #[test]
    fn directory_removed_through_a_symlinked_path_is_not_an_error() {
        let fx = fixture();
        let tar = build(|b| {
            dir(b, "usr/lib/x/y/");
            symlink(b, "lib", "usr/lib");
            file(b, "lib/x", b"file");
        });
        unpack(&fx, &tar).unwrap();
        assert_eq!(fs::read(fx.layer.join("usr/lib/x")).unwrap(), b"file");
    }

    #[test]
    fn hardlink_to_directory_or_missing_file_is_refused() {
        let fx = fixture();
        let tar = build(|b| {
            dir(b, "d/");
            hardlink(b, "h", "d");
        });
        let err = unpack(&fx, &tar).unwrap_err();
        assert_eq!(err.to_string(), "entry h: hardlink target d is a directory");
        let tar = build(|b| hardlink(b, "h2", "nope"));
        let err = unpack(&fx, &tar).unwrap_err();
        assert_eq!(
            err.to_string(),
            "entry h2: hardlink target nope does not exist in the layer"
        );
    }

    #[test]
    fn directory_times_are_set_after_their_contents() {
        let fx = fixture();
        let tar = build(|b| {
            let mut h = header(EntryType::Directory, b"./", 0);
            h.set_mode(0o755);
            h.set_cksum();
            b.append(&h, io::empty()).unwrap();
            dir(b, "d/");
            file(b, "d/f", b"f");
            file(b, "d/.wh.w", b"");
        });
        unpack(&fx, &tar).unwrap();
        assert_eq!(
            fs::metadata(fx.layer.join("d")).unwrap().mtime(),
            MTIME as i64
        );
        assert_eq!(fs::metadata(&fx.layer).unwrap().mtime(), MTIME as i64);
    }

    #[test]
    fn paths_are_normalized_beneath_the_layer() {
        let fx = fixture();
        let tar = build(|b| {
            file(b, "/abs/file", b"abs");
            file(b, "./a/../b", b"b");
            file(b, "c/./d", b"d");
        });
        unpack(&fx, &tar).unwrap();
        assert_eq!(fs::read(fx.layer.join("abs/file")).unwrap(), b"abs");
        assert_eq!(fs::read(fx.layer.join("b")).unwrap(), b"b");
        assert_eq!(fs::read(fx.layer.join("c/d")).unwrap(), b"d");
        assert!(!fx.layer.join("a").exists());
    }

    #[test]
    fn gnu_long_names_are_handled() {
        let fx = fixture();
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(150));
        let target = format!("{}/{}", "d".repeat(120), "t".repeat(150));
        let tar = build(|b| {
            let mut h = Header::new_gnu();
            h.set_size(4);
            h.set_mode(0o644);
            b.append_data(&mut h, &long, &b"long"[..]).unwrap();
            let mut h = Header::new_gnu();
            h.set_entry_type(EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, "short", &target).unwrap();
        });
        unpack(&fx, &tar).unwrap();
        assert_eq!(fs::read(fx.layer.join(&long)).unwrap(), b"long");
        assert_eq!(
            fs::read_link(fx.layer.join("short")).unwrap(),
            Path::new(&target)
        );
    }

    #[test]
    fn reader_is_drained_to_the_end() {
        struct Counting<'a> {
            inner: &'a [u8],
            read: usize,
        }
        impl Read for Counting<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = self.inner.read(buf)?;
                self.read += n;
                Ok(n)
            }
        }
        let fx = fixture();
        let mut tar = build(|b| file(b, "f", b"data"));
        // Tar tools pad the archive to a whole record after the two zero blocks.
        tar.resize(10240, 0);
        let mut reader = Counting {
            inner: &tar,
            read: 0,
        };
        unpack_layer(&mut reader, &fx.layer).unwrap();
        assert_eq!(reader.read, tar.len());
    }

    fn limited(layer_bytes: u64, image: Option<&Arc<ImageBudget>>) -> Limits {
        Limits {
            layer_bytes,
            image: image.cloned(),
        }
    }

    #[test]
    fn a_layer_past_its_cap_fails_and_one_at_it_passes() {
        let tar = build(|b| {
            file(b, "a", &[1u8; 3000]);
            file(b, "b", &[2u8; 3000]);
        });
        let cap = tar.len() as u64;
        let fx = fixture();
        let err = unpack_layer_limited(&tar[..], &fx.layer, &limited(cap - 1, None)).unwrap_err();
        assert!(
            matches!(err, UnpackError::TooLarge { cap: Cap::Layer, limit } if limit == cap - 1),
            "{err}"
        );
        assert!(err.to_string().contains("per-layer limit of"), "{err}");
        let fx = fixture();
        let stats = unpack_layer_limited(&tar[..], &fx.layer, &limited(cap, None)).unwrap();
        assert_eq!(stats.bytes, 6000);
    }

    #[test]
    fn an_archive_past_the_layer_cap_fails_even_without_file_data() {
        // A decompression bomb need not hold files: ten thousand empty directories are
        // five MiB of headers and no data.
        let fx = fixture();
        let tar = build(|b| {
            for n in 0..10_000 {
                dir(b, &format!("d{n}"));
            }
        });
        let err = unpack_layer_limited(&tar[..], &fx.layer, &limited(1 << 20, None)).unwrap_err();
        assert!(
            matches!(
                err,
                UnpackError::TooLarge {
                    cap: Cap::Layer,
                    ..
                }
            ),
            "{err}"
        );
        let fx = fixture();
        unpack_layer_limited(&tar[..], &fx.layer, &limited(tar.len() as u64, None)).unwrap();
    }

    #[test]
    fn the_image_budget_is_shared_by_its_layers() {
        let budget = Arc::new(ImageBudget::new(5000));
        let tar = build(|b| file(b, "f", &[3u8; 3000]));
        let fx = fixture();
        unpack_layer_limited(&tar[..], &fx.layer, &limited(u64::MAX, Some(&budget))).unwrap();
        let fx = fixture();
        let err = unpack_layer_limited(&tar[..], &fx.layer, &limited(u64::MAX, Some(&budget)))
            .unwrap_err();
        assert!(
            matches!(
                err,
                UnpackError::TooLarge {
                    cap: Cap::Image,
                    limit: 5000
                }
            ),
            "{err}"
        );
    }

    /// A GNU sparse entry (old GNU format, as `tar --sparse` writes it): `real` bytes
    /// long with `data` at `offset` and holes elsewhere.
    fn sparse(b: &mut Builder<Vec<u8>>, name: &str, real: u64, offset: u64, data: &[u8]) {
        let mut h = header(EntryType::GNUSparse, name.as_bytes(), data.len() as u64);
        let gnu = h.as_gnu_mut().unwrap();
        gnu.set_real_size(real);
        gnu.sparse[0].set_offset(offset);
        gnu.sparse[0].set_length(data.len() as u64);
        // The closing empty block at the end records the trailing hole.
        gnu.sparse[1].set_offset(real);
        gnu.sparse[1].set_length(0);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    #[test]
    fn sparse_files_keep_their_holes() {
        let fx = fixture();
        let real = 64 << 20;
        let tar = build(|b| sparse(b, "disk.img", real, 32 << 20, &[b'x'; 4096]));
        let stats = unpack(&fx, &tar).unwrap();
        assert_eq!(stats.bytes, real);
        let path = fx.layer.join("disk.img");
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), real);
        // 64 MiB written out as zeros would be 131072 blocks of 512 bytes.
        assert!(meta.blocks() < 1024, "{} blocks allocated", meta.blocks());
        let data = fs::read(&path).unwrap();
        assert_eq!(&data[(32 << 20)..(32 << 20) + 4096], &[b'x'; 4096][..]);
        assert!(data[..32 << 20].iter().all(|&b| b == 0));
        assert!(data[(32 << 20) + 4096..].iter().all(|&b| b == 0));
    }

    #[test]
    fn sparse_holes_count_against_the_cap() {
        let fx = fixture();
        let tar = build(|b| sparse(b, "huge", 1 << 40, 0, &[b'x'; 512]));
        let err = unpack_layer_limited(&tar[..], &fx.layer, &limited(1 << 20, None)).unwrap_err();
        assert!(
            matches!(
                err,
                UnpackError::TooLarge {
                    cap: Cap::Layer,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn truncated_stream_is_an_error() {
        let fx = fixture();
        let tar = build(|b| file(b, "f", &[7u8; 4000]));
        let err = unpack(&fx, &tar[..2048]).unwrap_err();
        assert!(err.to_string().starts_with("entry f:"), "{err}");
    }

    #[test]
    fn refuses_dotdot_into_sibling() {
        let fx = fixture();
        let tar = build(|b| file(b, "../outside/evil", b"evil"));
        let err = assert_refused(&fx, &tar, "../outside/evil");
        assert!(matches!(err, UnpackError::Escape { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "entry ../outside/evil: escapes the layer directory"
        );
    }

    #[test]
    fn refuses_deep_dotdot() {
        let fx = fixture();
        let tar = build(|b| file(b, "a/../../../etc/x", b"evil"));
        let err = assert_refused(&fx, &tar, "a/../../../etc/x");
        assert!(matches!(err, UnpackError::Escape { .. }), "{err}");
        let tar = build(|b| file(b, "/../../etc/x", b"evil"));
        assert_refused(&fx, &tar, "/../../etc/x");
    }

    #[test]
    fn refuses_walking_through_relative_symlink_out() {
        let fx = fixture();
        let tar = build(|b| {
            symlink(b, "link", "../outside");
            file(b, "link/evil", b"evil");
        });
        let err = assert_refused(&fx, &tar, "link/evil");
        assert!(matches!(err, UnpackError::Escape { .. }), "{err}");
        let tar = build(|b| {
            symlink(b, "up", "../../..");
            file(b, "up/evil", b"evil");
        });
        assert_refused(&fx, &tar, "up/evil");
    }

    #[test]
    fn refuses_walking_through_absolute_symlink() {
        let fx = fixture();
        let unique = format!("crust-unpack-evil-{}", std::process::id());
        let host = Path::new("/tmp").join(&unique);
        let entry = format!("root/tmp/{unique}");
        let tar = build(|b| {
            symlink(b, "root", "/");
            file(b, &entry, b"evil");
        });
        assert_refused(&fx, &tar, &entry);
        assert!(!host.exists(), "wrote to the host's /tmp");

        let passwd = fs::read("/etc/passwd").unwrap();
        let tar = build(|b| {
            symlink(b, "etc", "/etc");
            file(b, "etc/passwd", b"root::0:0::/:/bin/sh\n");
        });
        assert_refused(&fx, &tar, "etc/passwd");
        assert_eq!(fs::read("/etc/passwd").unwrap(), passwd);
    }

    #[test]
    fn refuses_symlink_replacing_a_directory() {
        let fx = fixture();
        let tar = build(|b| {
            dir(b, "d/");
            file(b, "d/ok", b"ok");
            symlink(b, "d", "../outside");
            file(b, "d/evil", b"evil");
        });
        assert_refused(&fx, &tar, "d/evil");
    }

    #[test]
    fn refuses_hardlink_to_sibling() {
        let fx = fixture();
        let tar = build(|b| hardlink(b, "h", "../outside/secret"));
        let err = assert_refused(&fx, &tar, "h");
        assert!(matches!(err, UnpackError::LinkEscape { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "entry h: hardlink target ../outside/secret escapes the layer directory"
        );
        assert_eq!(fs::metadata(fx.outside.join("secret")).unwrap().nlink(), 1);
    }

    #[test]
    fn refuses_hardlink_to_host_file() {
        let fx = fixture();
        let host = fs::metadata("/etc/passwd").unwrap();
        let tar = build(|b| hardlink(b, "h", "/etc/passwd"));
        assert_refused(&fx, &tar, "h");
        let mut stack = vec![fx.layer.clone()];
        while let Some(d) = stack.pop() {
            for child in fs::read_dir(&d).unwrap() {
                let path = child.unwrap().path();
                let meta = fs::symlink_metadata(&path).unwrap();
                assert!(
                    (meta.dev(), meta.ino()) != (host.dev(), host.ino()),
                    "{} is the host's /etc/passwd",
                    path.display()
                );
                if meta.is_dir() {
                    stack.push(path);
                }
            }
        }
    }

    #[test]
    fn refuses_hardlink_through_symlinked_directory() {
        let fx = fixture();
        let tar = build(|b| {
            symlink(b, "link", "../outside");
            hardlink(b, "h", "link/secret");
        });
        let err = assert_refused(&fx, &tar, "h");
        assert!(matches!(err, UnpackError::LinkEscape { .. }), "{err}");
        let tar = build(|b| {
            symlink(b, "etc", "/etc");
            hardlink(b, "h2", "etc/passwd");
        });
        assert_refused(&fx, &tar, "h2");
        assert_eq!(fs::metadata(fx.outside.join("secret")).unwrap().nlink(), 1);
    }

    #[test]
    fn refuses_whiteouts_outside() {
        let fx = fixture();
        let tar = build(|b| file(b, "../outside/.wh.secret", b""));
        assert_refused(&fx, &tar, "../outside/.wh.secret");
        let tar = build(|b| {
            symlink(b, "link", "../outside");
            file(b, "link/.wh.secret", b"");
        });
        assert_refused(&fx, &tar, "link/.wh.secret");
        let tar = build(|b| {
            symlink(b, "link2", "../outside");
            file(b, "link2/.wh..wh..opq", b"");
        });
        assert_refused(&fx, &tar, "link2/.wh..wh..opq");
        assert_eq!(xattr(&fx.outside, "trusted.overlay.opaque"), None);
    }

    #[test]
    fn refuses_non_directory_at_the_root() {
        let fx = fixture();
        let tar = build(|b| symlink(b, ".", "/"));
        let err = unpack(&fx, &tar).unwrap_err();
        assert!(matches!(err, UnpackError::Invalid { .. }), "{err}");
        assert!(fs::symlink_metadata(&fx.layer).unwrap().is_dir());
    }

    #[test]
    fn pax_time_parsing() {
        let t = |s: &str| parse_pax_time(s.as_bytes()).map(|t| (t.tv_sec, t.tv_nsec));
        assert_eq!(t("12"), Some((12, 0)));
        assert_eq!(t("12.5"), Some((12, 500_000_000)));
        assert_eq!(t("12.1234567891"), Some((12, 123_456_789)));
        assert_eq!(t("-1.5"), Some((-2, 500_000_000)));
        assert_eq!(t("-3"), Some((-3, 0)));
        assert_eq!(t(""), None);
        assert_eq!(t("1.x"), None);
        assert_eq!(t("99999999999999999999"), None);
    }
}
