//! The user a container's process runs as, resolved as containerd does
//! (`pkg/oci/spec_opts.go`: `WithUser`, `WithAdditionalGIDs`; CRI's
//! `generateUserString`).
//!
//! Which user:
//!
//! 1. CRI `run_as_username`, else `run_as_user`, with `run_as_group` as the group when
//!    either is given (`run_as_group` alone is refused);
//! 2. else the image's `User`: `uid`, `uid:gid`, `name`, `name:group`, `uid:group`, ...;
//! 3. else root.
//!
//! Names are looked up in the image's `/etc/passwd` and `/etc/group`, never the host's.
//! A uid without a group takes the primary group of its passwd entry, or 0 when the uid
//! has none; a name or group that is not in the files is refused. The supplementary
//! groups are the primary gid, then every group of `/etc/group` that lists the user,
//! then the CRI `supplemental_groups` (with the `Strict` policy, only the primary gid and
//! the CRI groups).
//!
//! The files come from an image, which is untrusted: `/etc/passwd` may be a symlink to
//! `/etc/shadow` of the host, or a FIFO. They are opened with `openat2(RESOLVE_IN_ROOT)`,
//! so every symlink resolves inside the rootfs, must be regular files, and are read up to
//! [`MAX_ACCOUNT_FILE`] bytes. On kernels without openat2 (before 5.6) any symlink on the
//! way is refused instead.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Component, Path};

use crust_proto::cri;
use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

use crate::error::{Result, RuntimeError};

/// The largest /etc/passwd or /etc/group crust reads.
pub const MAX_ACCOUNT_FILE: u64 = 8 << 20;

/// The largest uid or gid runc accepts (containerd checks the same range).
const MAX_ID: i64 = i32::MAX as i64;

/// Who the container's process is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResolvedUser {
    /// The user id.
    pub uid: u32,
    /// The primary group id.
    pub gid: u32,
    /// The supplementary groups, the primary one first.
    pub additional_gids: Vec<u32>,
    /// The user's name in the image's /etc/passwd, when it has an entry.
    pub username: Option<String>,
}

/// Resolves the user of a container from its CRI security context and the image's
/// `User` (see the module doc). `rootfs` is the container's mounted root.
pub fn resolve_user(
    rootfs: &Path,
    security: Option<&cri::LinuxContainerSecurityContext>,
    image_user: &str,
) -> Result<ResolvedUser> {
    let run_as_username = security.map_or("", |s| s.run_as_username.as_str());
    let run_as_user = security
        .and_then(|s| s.run_as_user.as_ref())
        .map(|v| v.value);
    let run_as_group = security
        .and_then(|s| s.run_as_group.as_ref())
        .map(|v| v.value);
    let supplemental = security.map_or(&[][..], |s| s.supplemental_groups.as_slice());
    let policy = security.map_or(0, |s| s.supplemental_groups_policy);
    let strict = match cri::SupplementalGroupsPolicy::try_from(policy) {
        Ok(cri::SupplementalGroupsPolicy::Merge) => false,
        Ok(cri::SupplementalGroupsPolicy::Strict) => true,
        // A policy this crust does not know may be stricter than both: refused.
        Err(_) => {
            return Err(RuntimeError::invalid(
                "supplemental_groups_policy",
                &policy.to_string(),
                "unknown policy (Merge or Strict)",
            ));
        }
    };

    let (user, group): (String, Option<String>) = if !run_as_username.is_empty() {
        (
            run_as_username.to_owned(),
            run_as_group.map(|g| g.to_string()),
        )
    } else if let Some(uid) = run_as_user {
        check_id(uid, "run_as_user")?;
        (uid.to_string(), run_as_group.map(|g| g.to_string()))
    } else if let Some(gid) = run_as_group {
        return Err(RuntimeError::invalid(
            "run_as_group",
            &gid.to_string(),
            "set without run_as_user or run_as_username",
        ));
    } else {
        match image_user.split_once(':') {
            Some((user, group)) => (user.to_owned(), Some(group.to_owned())),
            None => (image_user.to_owned(), None),
        }
    };
    if let Some(gid) = run_as_group {
        check_id(gid, "run_as_group")?;
    }

    let accounts = Accounts::load(rootfs)?;
    let shown = match &group {
        Some(group) => format!("{user}:{group}"),
        None => user.clone(),
    };
    let entry = if user.is_empty() {
        if group.is_some() {
            return Err(RuntimeError::invalid("user", &shown, "empty user name"));
        }
        accounts.user_by_uid(0)
    } else if let Some(uid) = parse_id(&user) {
        accounts.user_by_uid(uid)
    } else {
        Some(accounts.user_by_name(&user).ok_or_else(|| {
            RuntimeError::invalid("user", &shown, "no such user in the image's /etc/passwd")
        })?)
    };
    let uid = match (&entry, parse_id(&user)) {
        (_, Some(uid)) => uid,
        (Some(entry), None) => entry.uid,
        (None, None) => 0,
    };
    let gid = match &group {
        Some(group) => match parse_id(group) {
            Some(gid) => gid,
            None if group.is_empty() => {
                return Err(RuntimeError::invalid("user", &shown, "empty group name"));
            }
            None => {
                accounts
                    .group_by_name(group)
                    .ok_or_else(|| {
                        RuntimeError::invalid(
                            "user",
                            &shown,
                            "no such group in the image's /etc/group",
                        )
                    })?
                    .gid
            }
        },
        None => entry.as_ref().map_or(0, |e| e.gid),
    };
    let username = entry.map(|e| e.name.clone());

    let mut additional_gids = vec![gid];
    let member = if strict { None } else { username.as_deref() };
    if let Some(name) = member {
        for group in accounts
            .groups
            .iter()
            .filter(|g| g.members.iter().any(|m| m == name))
        {
            push_unique(&mut additional_gids, group.gid);
        }
    }
    for &extra in supplemental {
        check_id(extra, "supplemental group")?;
        push_unique(&mut additional_gids, extra as u32);
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
        username,
    })
}

fn push_unique(list: &mut Vec<u32>, value: u32) {
    if !list.contains(&value) {
        list.push(value);
    }
}

fn check_id(id: i64, what: &'static str) -> Result<()> {
    if (0..=MAX_ID).contains(&id) {
        Ok(())
    } else {
        Err(RuntimeError::invalid(what, &id.to_string(), "out of range"))
    }
}

/// A decimal id in runc's range; anything else is a name.
fn parse_id(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<i64>()
        .ok()
        .filter(|id| *id <= MAX_ID)
        .map(|id| id as u32)
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// The accounts of an image: its /etc/passwd and /etc/group (either may be missing).
#[derive(Debug, Default)]
struct Accounts {
    users: Vec<PasswdEntry>,
    groups: Vec<GroupEntry>,
}

impl Accounts {
    fn load(rootfs: &Path) -> Result<Accounts> {
        let passwd = read_rootfs_file(rootfs, "etc/passwd", MAX_ACCOUNT_FILE)?;
        let group = read_rootfs_file(rootfs, "etc/group", MAX_ACCOUNT_FILE)?;
        Ok(Accounts {
            users: passwd.as_deref().map(parse_passwd).unwrap_or_default(),
            groups: group.as_deref().map(parse_group).unwrap_or_default(),
        })
    }

    fn user_by_uid(&self, uid: u32) -> Option<&PasswdEntry> {
        self.users.iter().find(|u| u.uid == uid)
    }

    fn user_by_name(&self, name: &str) -> Option<&PasswdEntry> {
        self.users.iter().find(|u| u.name == name)
    }

    fn group_by_name(&self, name: &str) -> Option<&GroupEntry> {
        self.groups.iter().find(|g| g.name == name)
    }
}

/// Entries of passwd(5) lines; comments, NIS (`+`/`-`) and malformed lines are skipped.
fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    account_lines(text)
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let _password = fields.next()?;
            let uid = parse_id(fields.next()?)?;
            let gid = parse_id(fields.next()?)?;
            Some(PasswdEntry {
                name: name.to_owned(),
                uid,
                gid,
            })
        })
        .collect()
}

/// Entries of group(5) lines; comments, NIS and malformed lines are skipped.
fn parse_group(text: &str) -> Vec<GroupEntry> {
    account_lines(text)
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let _password = fields.next()?;
            let gid = parse_id(fields.next()?)?;
            let members = fields
                .next()
                .unwrap_or("")
                .split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(str::to_owned)
                .collect();
            Some(GroupEntry {
                name: name.to_owned(),
                gid,
                members,
            })
        })
        .collect()
}

fn account_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim_end)
        .filter(|line| !line.is_empty() && !line.starts_with(['#', '+', '-']))
}

/// Reads `<rootfs>/<relative>` with every path component resolved inside `rootfs` (see
/// the module doc); `None` when it does not exist. Refuses anything but a regular file
/// and files larger than `limit`.
pub(crate) fn read_rootfs_file(
    rootfs: &Path,
    relative: &str,
    limit: u64,
) -> Result<Option<String>> {
    let path = rootfs.join(relative);
    let fd = match open_in_root(rootfs, relative) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => return Ok(None),
        Err(Errno::ELOOP) => {
            return Err(RuntimeError::invalid(
                "image file",
                &path.to_string_lossy(),
                "too many or refused symbolic links",
            ));
        }
        Err(errno) => return Err(RuntimeError::io("open", path, errno.into())),
    };
    let mut file = std::fs::File::from(fd);
    let metadata = file
        .metadata()
        .map_err(|err| RuntimeError::io("stat", &path, err))?;
    if !metadata.is_file() {
        return Err(RuntimeError::invalid(
            "image file",
            &path.to_string_lossy(),
            "not a regular file",
        ));
    }
    let mut bytes = Vec::new();
    file.by_ref()
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|err| RuntimeError::io("read", &path, err))?;
    if bytes.len() as u64 > limit {
        return Err(RuntimeError::invalid(
            "image file",
            &path.to_string_lossy(),
            format!("larger than {limit} bytes"),
        ));
    }
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

fn open_in_root(rootfs: &Path, relative: &str) -> std::result::Result<OwnedFd, Errno> {
    let root = nix::fcntl::open(
        rootfs,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    // O_NONBLOCK: opening a FIFO planted by the image must not hang us.
    let flags = OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK;
    let how = OpenHow::new()
        .flags(flags)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    match crust_util::resolve::retry_raced(|| nix::fcntl::openat2(&root, relative, how)) {
        Err(Errno::ENOSYS) => open_without_symlinks(root, relative, flags),
        other => other,
    }
}

/// The fallback without openat2: walk the components with O_NOFOLLOW, so any symlink
/// fails with ELOOP.
fn open_without_symlinks(
    root: OwnedFd,
    relative: &str,
    flags: OFlag,
) -> std::result::Result<OwnedFd, Errno> {
    let components: Vec<&std::ffi::OsStr> = Path::new(relative)
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(Ok(name)),
            Component::CurDir | Component::RootDir => None,
            _ => Some(Err(Errno::ELOOP)),
        })
        .collect::<std::result::Result<_, _>>()?;
    let Some((last, dirs)) = components.split_last() else {
        return Err(Errno::EISDIR);
    };
    let mut dir = root;
    for name in dirs {
        dir = nix::fcntl::openat(
            &dir,
            *name,
            OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
    }
    nix::fcntl::openat(&dir, *last, flags | OFlag::O_NOFOLLOW, Mode::empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
# a comment
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
alice:x:1000:1000:Alice:/home/alice:/bin/sh
bob:x:1001:100::/home/bob:/bin/sh
broken line
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
";
    const GROUP: &str = "\
root:x:0:
daemon:x:1:
users:x:100:alice
alice:x:1000:
wheel:x:10:alice, bob
audio:x:29:bob
nogroup:x:65534:
";

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), PASSWD).unwrap();
        std::fs::write(dir.path().join("etc/group"), GROUP).unwrap();
        dir
    }

    fn security() -> cri::LinuxContainerSecurityContext {
        cri::LinuxContainerSecurityContext::default()
    }

    fn user(uid: u32, gid: u32, gids: &[u32], name: Option<&str>) -> ResolvedUser {
        ResolvedUser {
            uid,
            gid,
            additional_gids: gids.to_vec(),
            username: name.map(str::to_owned),
        }
    }

    #[test]
    fn image_user_forms() {
        let root = rootfs();
        let cases = [
            ("", user(0, 0, &[0], Some("root"))),
            ("0", user(0, 0, &[0], Some("root"))),
            ("1000", user(1000, 1000, &[1000, 100, 10], Some("alice"))),
            ("alice", user(1000, 1000, &[1000, 100, 10], Some("alice"))),
            ("bob", user(1001, 100, &[100, 10, 29], Some("bob"))),
            ("alice:wheel", user(1000, 10, &[10, 100], Some("alice"))),
            ("1000:29", user(1000, 29, &[29, 100, 10], Some("alice"))),
            ("4242", user(4242, 0, &[0], None)),
            ("4242:4243", user(4242, 4243, &[4243], None)),
            (
                "nobody:nogroup",
                user(65534, 65534, &[65534], Some("nobody")),
            ),
        ];
        for (image_user, want) in cases {
            assert_eq!(
                resolve_user(root.path(), None, image_user).unwrap(),
                want,
                "{image_user:?}"
            );
        }
    }

    #[test]
    fn cri_fields_override_the_image() {
        let root = rootfs();
        let mut sc = security();
        sc.run_as_user = Some(cri::Int64Value { value: 1001 });
        assert_eq!(
            resolve_user(root.path(), Some(&sc), "alice:wheel").unwrap(),
            user(1001, 100, &[100, 10, 29], Some("bob"))
        );
        sc.run_as_group = Some(cri::Int64Value { value: 5000 });
        sc.supplemental_groups = vec![6000, 100];
        assert_eq!(
            resolve_user(root.path(), Some(&sc), "").unwrap(),
            user(1001, 5000, &[5000, 10, 29, 6000, 100], Some("bob"))
        );
        // The name wins over the uid.
        sc.run_as_username = "alice".into();
        sc.run_as_group = None;
        sc.supplemental_groups = vec![];
        assert_eq!(
            resolve_user(root.path(), Some(&sc), "").unwrap(),
            user(1000, 1000, &[1000, 100, 10], Some("alice"))
        );
        // Strict: no groups from /etc/group.
        sc.supplemental_groups = vec![7];
        sc.supplemental_groups_policy = cri::SupplementalGroupsPolicy::Strict as i32;
        assert_eq!(
            resolve_user(root.path(), Some(&sc), "").unwrap(),
            user(1000, 1000, &[1000, 7], Some("alice"))
        );
        sc.supplemental_groups_policy = 7;
        let err = resolve_user(root.path(), Some(&sc), "").unwrap_err();
        assert!(err.to_string().contains("unknown policy"), "{err}");
    }

    #[test]
    fn missing_names_and_bad_ids_are_refused() {
        let root = rootfs();
        for image_user in ["mallory", "alice:nosuch", "mallory:0", ":0"] {
            let err = resolve_user(root.path(), None, image_user).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{image_user}");
        }
        let err = resolve_user(root.path(), None, "mallory").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid user \"mallory\": no such user in the image's /etc/passwd"
        );
        let mut sc = security();
        sc.run_as_group = Some(cri::Int64Value { value: 1 });
        let err = resolve_user(root.path(), Some(&sc), "").unwrap_err();
        assert!(err.to_string().contains("without run_as_user"), "{err}");
        let mut sc = security();
        sc.run_as_user = Some(cri::Int64Value { value: -1 });
        assert_eq!(
            resolve_user(root.path(), Some(&sc), "").unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
    }

    #[test]
    fn no_account_files_means_numeric_ids_only() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(
            resolve_user(root.path(), None, "123").unwrap(),
            user(123, 0, &[0], None)
        );
        assert_eq!(
            resolve_user(root.path(), None, "").unwrap(),
            user(0, 0, &[0], None)
        );
        assert!(resolve_user(root.path(), None, "alice").is_err());
    }

    #[test]
    fn symlinks_resolve_inside_the_rootfs() {
        // /etc/passwd -> /outside/passwd must read <rootfs>/outside/passwd, and a link
        // climbing out with .. stays in the rootfs too.
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("passwd"), "evil:x:0:0::/:/bin/sh\n").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("passwd"),
            root.path().join("etc/passwd"),
        )
        .unwrap();
        assert!(resolve_user(root.path(), None, "evil").is_err());

        let inside = root.path().join(outside.path().strip_prefix("/").unwrap());
        std::fs::create_dir_all(&inside).unwrap();
        std::fs::write(inside.join("passwd"), "good:x:7:7::/:/bin/sh\n").unwrap();
        assert_eq!(
            resolve_user(root.path(), None, "good").unwrap(),
            user(7, 7, &[7], Some("good"))
        );

        std::fs::remove_file(root.path().join("etc/passwd")).unwrap();
        let climb = format!(
            "../../../../../../..{}",
            outside.path().join("passwd").display()
        );
        std::os::unix::fs::symlink(climb, root.path().join("etc/passwd")).unwrap();
        assert_eq!(
            resolve_user(root.path(), None, "good").unwrap(),
            user(7, 7, &[7], Some("good"))
        );
    }

    #[test]
    fn special_files_are_refused() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        nix::unistd::mkfifo(
            &root.path().join("etc/passwd"),
            Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        let err = resolve_user(root.path(), None, "x").unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        std::fs::remove_file(root.path().join("etc/passwd")).unwrap();
        std::fs::create_dir(root.path().join("etc/passwd")).unwrap();
        assert!(resolve_user(root.path(), None, "x").is_err());
    }

    #[test]
    fn fallback_walk_refuses_symlinks() {
        let root = rootfs();
        std::os::unix::fs::symlink("passwd", root.path().join("etc/link")).unwrap();
        let open = |rel: &str| {
            let fd = nix::fcntl::open(root.path(), OFlag::O_DIRECTORY, Mode::empty()).unwrap();
            open_without_symlinks(fd, rel, OFlag::O_RDONLY)
        };
        assert!(open("etc/passwd").is_ok());
        assert_eq!(open("etc/link").unwrap_err(), Errno::ELOOP);
        assert_eq!(open("etc/../etc/passwd").unwrap_err(), Errno::ELOOP);
    }

    #[test]
    fn account_file_parsing() {
        assert_eq!(parse_passwd(PASSWD).len(), 5);
        let groups = parse_group(GROUP);
        let wheel = groups.iter().find(|g| g.name == "wheel").unwrap();
        assert_eq!(wheel.members, ["alice", "bob"]);
        assert_eq!(parse_id("00012"), Some(12));
        assert_eq!(parse_id("4294967295"), None);
        assert_eq!(parse_id("-1"), None);
        assert_eq!(parse_id("1e3"), None);
    }
}
