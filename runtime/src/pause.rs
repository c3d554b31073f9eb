//! crust-pause, embedded, and the rootfs it runs from.
//!
//! The binary is built from `pause/pause.rs` by the build script: std only, statically
//! linked, so a rootfs holding nothing but it is enough. [`install_pause_rootfs`] lays
//! that rootfs out once; every sandbox mounts it read-only.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The crust-pause executable, statically linked.
pub const PAUSE_BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/crust-pause"));

/// Where pause is inside its rootfs: the sandbox's command line.
pub const PAUSE_PATH: &str = "/pause";

/// Directories the runtime mounts over (/dev, /proc, /sys) or binds files into (/etc):
/// made here because the shared rootfs is read-only once a sandbox runs.
const MOUNTPOINT_DIRS: [&str; 4] = ["dev", "proc", "sys", "etc"];
/// Files the sandbox may bind-mount from the pod's own copies.
const MOUNTPOINT_FILES: [&str; 3] = ["etc/hosts", "etc/resolv.conf", "etc/hostname"];
/// Directories and the binary: passable and executable by the pause's user (65535, or
/// a user-namespaced pod's root passing through the 0711 state directory), readable by
/// nobody but root; the mountpoint files are root's alone (mounts only look them up).
const DIR_MODE: u32 = 0o711;
const BINARY_MODE: u32 = 0o711;
const FILE_MODE: u32 = 0o600;

/// Writes the pause rootfs under `dir` and returns its path, `<dir>/rootfs`:
/// `rootfs/pause` (mode 0711, like its directories) and empty mountpoints `rootfs/{dev,proc,sys,etc}` and
/// `rootfs/etc/{hosts,resolv.conf,hostname}`.
///
/// Idempotent, and safe while sandboxes run from it: a binary that already matches is
/// left alone, another one is replaced by rename, so running pause processes keep their
/// old inode and no reader ever sees a half-written file.
pub fn install_pause_rootfs(dir: &Path) -> io::Result<PathBuf> {
    let rootfs = dir.join("rootfs");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(&rootfs)?;
    // The pause process runs as 65535: the root of its filesystem must be open to it
    // whatever crustd's umask (0077) made of the mode above.
    fs::set_permissions(&rootfs, fs::Permissions::from_mode(DIR_MODE))?;
    for name in MOUNTPOINT_DIRS {
        match fs::DirBuilder::new()
            .mode(DIR_MODE)
            .create(rootfs.join(name))
        {
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                // Something else in its place would make a mount fail later, obscurely.
                if !fs::symlink_metadata(rootfs.join(name))?.is_dir() {
                    return Err(not_a(&rootfs.join(name), "directory"));
                }
            }
            other => other?,
        }
        fs::set_permissions(rootfs.join(name), fs::Permissions::from_mode(DIR_MODE))?;
    }
    for name in MOUNTPOINT_FILES {
        let path = rootfs.join(name);
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&path)
        {
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                if !fs::symlink_metadata(&path)?.is_file() {
                    return Err(not_a(&path, "regular file"));
                }
            }
            other => drop(other?),
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(FILE_MODE))?;
    }
    install_binary(&rootfs.join(PAUSE_PATH.trim_start_matches('/')))?;
    Ok(rootfs)
}

fn install_binary(path: &Path) -> io::Result<()> {
    let installed = install_binary_bytes(path);
    // Comparing or writing it touched every page of the embedded binary; crustd has no
    // other use for them, so give them back rather than keep them resident for ever.
    release_pages(PAUSE_BINARY);
    installed
}

/// Drops this process's mapping of the whole pages inside `bytes`, which must be
/// read-only data of the executable: touched again, they are read back from the file.
fn release_pages(bytes: &[u8]) {
    // SAFETY: sysconf has no memory effects.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
    let start = (bytes.as_ptr() as usize).div_ceil(page) * page;
    let end = (bytes.as_ptr() as usize + bytes.len()) / page * page;
    if end > start {
        // SAFETY: the range lies inside `bytes`, a read-only, file-backed mapping of the
        // executable that is never written, so MADV_DONTNEED only unmaps pages whose
        // content the file gives back unchanged on the next access.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    }
}

fn install_binary_bytes(path: &Path) -> io::Result<()> {
    if let Ok(meta) = fs::symlink_metadata(path)
        && meta.is_file()
        && meta.permissions().mode() & 0o7777 == BINARY_MODE
        && meta.len() == PAUSE_BINARY.len() as u64
        && fs::read(path)? == PAUSE_BINARY
    {
        return Ok(());
    }
    let parent = path.parent().unwrap_or(Path::new("."));
    let mut temp = tempfile::Builder::new()
        .prefix(".pause.")
        .permissions(fs::Permissions::from_mode(BINARY_MODE))
        .tempfile_in(parent)?;
    temp.write_all(PAUSE_BINARY)?;
    temp.as_file().sync_all()?;
    // The umask may have narrowed the mode given at creation.
    temp.as_file()
        .set_permissions(fs::Permissions::from_mode(BINARY_MODE))?;
    temp.persist(path).map_err(|err| err.error)?;
    Ok(())
}

fn not_a(path: &Path, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("{} exists and is not a {what}", path.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The program header types of an ELF64 little-endian file.
    fn program_header_types(elf: &[u8]) -> Vec<u32> {
        assert_eq!(&elf[..4], b"\x7fELF", "not ELF");
        assert_eq!(elf[4], 2, "not ELF64");
        assert_eq!(elf[5], 1, "not little-endian");
        let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
        let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
        let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
        (0..phnum)
            .map(|i| {
                let o = phoff + i * phentsize;
                u32::from_le_bytes(elf[o..o + 4].try_into().unwrap())
            })
            .collect()
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn pause_binary_is_static() {
        const PT_LOAD: u32 = 1;
        const PT_INTERP: u32 = 3;
        let types = program_header_types(PAUSE_BINARY);
        assert!(types.contains(&PT_LOAD));
        // No PT_INTERP: no dynamic loader is asked for, so the binary runs alone.
        assert!(!types.contains(&PT_INTERP), "{types:?}");
    }

    #[test]
    fn rootfs_layout_and_idempotence() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = install_pause_rootfs(dir.path()).unwrap();
        assert_eq!(rootfs, dir.path().join("rootfs"));
        let pause = rootfs.join("pause");
        let meta = fs::metadata(&pause).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o711);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&rootfs), 0o711);
        assert_eq!(fs::read(&pause).unwrap(), PAUSE_BINARY);
        for d in MOUNTPOINT_DIRS {
            assert!(rootfs.join(d).is_dir(), "{d}");
            assert_eq!(mode(&rootfs.join(d)), 0o711, "{d}");
        }
        for f in MOUNTPOINT_FILES {
            assert_eq!(fs::metadata(rootfs.join(f)).unwrap().len(), 0, "{f}");
            assert_eq!(mode(&rootfs.join(f)), 0o600, "{f}");
        }
        let mut names: Vec<_> = fs::read_dir(&rootfs)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["dev", "etc", "pause", "proc", "sys"]);

        // A second install keeps the same file (same inode: not rewritten).
        use std::os::unix::fs::MetadataExt;
        let inode = meta.ino();
        install_pause_rootfs(dir.path()).unwrap();
        assert_eq!(fs::metadata(&pause).unwrap().ino(), inode);

        // A stale binary is replaced by a new file.
        fs::write(&pause, b"old pause").unwrap();
        install_pause_rootfs(dir.path()).unwrap();
        assert_eq!(fs::read(&pause).unwrap(), PAUSE_BINARY);
        assert_eq!(
            fs::metadata(&pause).unwrap().permissions().mode() & 0o7777,
            0o711
        );
        // Existing mountpoint files are not truncated.
        fs::write(rootfs.join("etc/hosts"), b"127.0.0.1 localhost\n").unwrap();
        install_pause_rootfs(dir.path()).unwrap();
        assert_eq!(
            fs::read(rootfs.join("etc/hosts")).unwrap(),
            b"127.0.0.1 localhost\n"
        );
    }

    #[test]
    fn a_file_where_a_mountpoint_dir_belongs_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("rootfs")).unwrap();
        fs::write(dir.path().join("rootfs/proc"), b"").unwrap();
        let err = install_pause_rootfs(dir.path()).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("proc exists and is not a directory"),
            "{err}"
        );
    }
}
