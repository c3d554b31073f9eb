//! The command line, parsed by hand (no clap: the monitor stays small).
//!
//! ```text
//! crust-monitor --id ID --bundle B (--runtime BIN | --embedded) --runtime-root R [--bundle-dir D]
//!     [--systemd-cgroup] --log-path L [--log-dir D] --exit-file E --attach-socket A
//!     [--tty] [--stdin] [--stdin-once] [--create-timeout SECS]
//!     [--restore-images DIR --restore-work DIR] --sync-fd N
//! ```
//!
//! With `--restore-images` the monitor runs `<runtime> restore` from those CRIU
//! images instead of `<runtime> create` (see `create`). With `--embedded` it creates
//! the container itself with libcontainer (see `embedded`), keeping its state under
//! the runtime root as the embedded handler's CLI does.
//!
//! `crust-monitor oci ...` is another program altogether: the embedded handler's
//! runc-compatible CLI (see `oci_cli`).
//!
//! Every option is `--name value` or a bare flag; paths need not be UTF-8.

use std::ffi::{OsStr, OsString};
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::Duration;

/// How long `<runtime> create` may take unless `--create-timeout` says otherwise:
/// the OCI runtime driver's own default.
const DEFAULT_CREATE_TIMEOUT: Duration = crust_runtime::oci::DEFAULT_TIMEOUT;

/// What the monitor was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// The container id.
    pub id: String,
    /// The bundle directory (config.json, log.json, the pid file).
    pub bundle: PathBuf,
    /// The OCI runtime binary; `None` with `--embedded`.
    pub runtime: Option<PathBuf>,
    /// The runtime's `--root`.
    pub runtime_root: PathBuf,
    /// The directory of all bundles, as the runtime driver is configured.
    pub bundle_dir: Option<PathBuf>,
    /// Pass `--systemd-cgroup` to the runtime.
    pub systemd_cgroup: bool,
    /// The CRI log file.
    pub log_path: PathBuf,
    /// The pod's log directory, below which the log file is reached without symlinks.
    pub log_dir: Option<PathBuf>,
    /// Where the exit status is written.
    pub exit_file: PathBuf,
    /// The attach socket's path.
    pub attach_socket: PathBuf,
    /// Give the container a terminal.
    pub tty: bool,
    /// Keep the container's stdin open for attach clients.
    pub stdin: bool,
    /// Close the container's stdin when the first client that wrote to it leaves.
    pub stdin_once: bool,
    /// Kill `<runtime> create` after this long.
    pub create_timeout: Duration,
    /// Restore from a checkpoint instead of creating: CRIU's images and work directory.
    pub restore: Option<Restore>,
    /// The inherited socketpair end of the start-up handshake.
    pub sync_fd: RawFd,
}

/// Where a restore reads CRIU's images and writes its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restore {
    /// CRIU's image directory.
    pub images: PathBuf,
    /// CRIU's work directory (`restore.log`).
    pub work: PathBuf,
}

/// Parses the arguments after the program name.
pub fn parse(argv: &[OsString]) -> Result<Args, String> {
    let mut id = None;
    let mut bundle = None;
    let mut runtime = None;
    let mut runtime_root = None;
    let mut bundle_dir = None;
    let mut log_path = None;
    let mut log_dir = None;
    let mut exit_file = None;
    let mut attach_socket = None;
    let mut create_timeout = None;
    let mut sync_fd = None;
    let mut restore_images = None;
    let mut restore_work = None;
    let (mut tty, mut stdin, mut stdin_once, mut systemd_cgroup) = (false, false, false, false);
    let mut embedded = false;

    let mut iter = argv.iter();
    while let Some(arg) = iter.next() {
        let name = arg
            .to_str()
            .ok_or_else(|| format!("unexpected argument {arg:?}"))?;
        let flag = match name {
            "--tty" => Some(&mut tty),
            "--stdin" => Some(&mut stdin),
            "--stdin-once" => Some(&mut stdin_once),
            "--systemd-cgroup" => Some(&mut systemd_cgroup),
            "--embedded" => Some(&mut embedded),
            _ => None,
        };
        if let Some(flag) = flag {
            *flag = true;
            continue;
        }
        let slot = match name {
            "--id" => &mut id,
            "--bundle" => &mut bundle,
            "--runtime" => &mut runtime,
            "--runtime-root" => &mut runtime_root,
            "--bundle-dir" => &mut bundle_dir,
            "--log-path" => &mut log_path,
            "--log-dir" => &mut log_dir,
            "--exit-file" => &mut exit_file,
            "--attach-socket" => &mut attach_socket,
            "--create-timeout" => &mut create_timeout,
            "--sync-fd" => &mut sync_fd,
            "--restore-images" => &mut restore_images,
            "--restore-work" => &mut restore_work,
            _ => return Err(format!("unexpected argument {name:?}")),
        };
        let value = iter.next().ok_or_else(|| format!("{name} needs a value"))?;
        if value.is_empty() {
            return Err(format!("{name} needs a value"));
        }
        if slot.replace(value.clone()).is_some() {
            return Err(format!("{name} given twice"));
        }
    }

    let required =
        |value: Option<OsString>, name: &str| value.ok_or_else(|| format!("missing {name}"));
    let sync_fd = parse_fd(&required(sync_fd, "--sync-fd")?)?;
    let id = required(id, "--id")?
        .into_string()
        .map_err(|id| format!("--id {id:?} is not UTF-8"))?;
    let create_timeout = match create_timeout {
        None => DEFAULT_CREATE_TIMEOUT,
        Some(secs) => secs
            .to_str()
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|&s| s > 0)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("--create-timeout {secs:?} is not a positive number"))?,
    };
    let restore = match (restore_images, restore_work) {
        (None, None) => None,
        (Some(images), Some(work)) => Some(Restore {
            images: images.into(),
            work: work.into(),
        }),
        _ => return Err("--restore-images and --restore-work go together".into()),
    };
    let runtime = match (runtime, embedded) {
        (Some(runtime), false) => Some(runtime.into()),
        (None, true) => None,
        (None, false) => return Err("missing --runtime (or --embedded)".into()),
        (Some(_), true) => return Err("--runtime and --embedded exclude each other".into()),
    };
    if embedded && restore.is_some() {
        return Err("--embedded cannot restore a checkpoint".into());
    }
    Ok(Args {
        id,
        bundle: required(bundle, "--bundle")?.into(),
        runtime,
        runtime_root: required(runtime_root, "--runtime-root")?.into(),
        bundle_dir: bundle_dir.map(PathBuf::from),
        systemd_cgroup,
        log_path: required(log_path, "--log-path")?.into(),
        log_dir: log_dir.map(PathBuf::from),
        exit_file: required(exit_file, "--exit-file")?.into(),
        attach_socket: required(attach_socket, "--attach-socket")?.into(),
        tty,
        stdin,
        stdin_once,
        create_timeout,
        restore,
        sync_fd,
    })
}

/// The `--sync-fd` value in an argument list that may not parse as a whole, so that
/// a usage error can still be reported to whoever waits on it.
pub fn find_sync_fd(argv: &[OsString]) -> Option<RawFd> {
    let at = argv.iter().position(|arg| arg == "--sync-fd")?;
    parse_fd(argv.get(at + 1)?).ok()
}

fn parse_fd(value: &OsStr) -> Result<RawFd, String> {
    value
        .to_str()
        .and_then(|s| s.parse::<RawFd>().ok())
        // 0-2 become /dev/null: the handshake cannot be one of them.
        .filter(|&fd| fd > 2)
        .ok_or_else(|| format!("--sync-fd {value:?} is not a file descriptor above 2"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(line: &str) -> Vec<OsString> {
        line.split_whitespace().map(OsString::from).collect()
    }

    const MINIMAL: &str = "--id c1 --bundle /b --runtime /usr/sbin/runc --runtime-root /r \
                           --log-path /l/0.log --exit-file /e --attach-socket /a --sync-fd 5";

    #[test]
    fn parses_the_minimal_command_line() {
        let args = parse(&argv(MINIMAL)).unwrap();
        assert_eq!(
            args,
            Args {
                id: "c1".into(),
                bundle: "/b".into(),
                runtime: Some("/usr/sbin/runc".into()),
                runtime_root: "/r".into(),
                bundle_dir: None,
                systemd_cgroup: false,
                log_path: "/l/0.log".into(),
                log_dir: None,
                exit_file: "/e".into(),
                attach_socket: "/a".into(),
                tty: false,
                stdin: false,
                stdin_once: false,
                create_timeout: DEFAULT_CREATE_TIMEOUT,
                restore: None,
                sync_fd: 5,
            }
        );
    }

    #[test]
    fn parses_flags_anywhere() {
        let args = parse(&argv(&format!(
            "--tty {MINIMAL} --stdin --bundle-dir /bd --stdin-once --systemd-cgroup \
             --create-timeout 7"
        )))
        .unwrap();
        assert!(args.tty && args.stdin && args.stdin_once && args.systemd_cgroup);
        assert_eq!(args.bundle_dir, Some("/bd".into()));
        assert_eq!(args.create_timeout, Duration::from_secs(7));
        assert_eq!(args.restore, None);
        let args = parse(&argv(&format!(
            "{MINIMAL} --restore-images /w/checkpoint --restore-work /w"
        )))
        .unwrap();
        assert_eq!(
            args.restore,
            Some(Restore {
                images: "/w/checkpoint".into(),
                work: "/w".into()
            })
        );
        assert_eq!(
            parse(&argv(&format!("{MINIMAL} --restore-images /w/checkpoint"))).unwrap_err(),
            "--restore-images and --restore-work go together"
        );
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        for (line, error) in [
            ("", "missing --sync-fd"),
            ("--sync-fd 5", "missing --id"),
            ("--bogus", "unexpected argument \"--bogus\""),
            ("c1", "unexpected argument \"c1\""),
            ("--id", "--id needs a value"),
            ("--id c1 --id c2", "--id given twice"),
            (
                "--sync-fd 2 --id c1",
                "--sync-fd \"2\" is not a file descriptor above 2",
            ),
            (
                "--sync-fd x",
                "--sync-fd \"x\" is not a file descriptor above 2",
            ),
        ] {
            assert_eq!(parse(&argv(line)).unwrap_err(), error, "{line:?}");
        }
        let mut missing_timeout = argv(MINIMAL);
        missing_timeout.extend(argv("--create-timeout 0"));
        assert!(parse(&missing_timeout).is_err());
        let mut empty = argv(MINIMAL);
        empty.extend([OsString::from("--bundle-dir"), OsString::new()]);
        assert_eq!(parse(&empty).unwrap_err(), "--bundle-dir needs a value");
    }

    #[test]
    fn embedded_replaces_the_runtime_binary() {
        let line = MINIMAL.replace("--runtime /usr/sbin/runc", "--embedded");
        assert_eq!(parse(&argv(&line)).unwrap().runtime, None);
        assert_eq!(
            parse(&argv(&format!("{MINIMAL} --embedded"))).unwrap_err(),
            "--runtime and --embedded exclude each other"
        );
        let none = MINIMAL.replace("--runtime /usr/sbin/runc", "");
        assert_eq!(
            parse(&argv(&none)).unwrap_err(),
            "missing --runtime (or --embedded)"
        );
        assert!(
            parse(&argv(&format!(
                "{line} --restore-images /i --restore-work /w"
            )))
            .is_err()
        );
    }

    #[test]
    fn finds_the_sync_fd_in_a_bad_command_line() {
        assert_eq!(find_sync_fd(&argv("--bogus --sync-fd 9 --tty")), Some(9));
        assert_eq!(find_sync_fd(&argv("--bogus --sync-fd")), None);
        assert_eq!(find_sync_fd(&argv("--bogus")), None);
    }
}
