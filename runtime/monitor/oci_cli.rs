//! `crust-monitor oci ...`: the embedded handler's runc-compatible CLI.
//!
//! crustd runs what must fork a process into a container through this rather than
//! in its own threads: `exec` (ExecSync, streaming exec), `run --detach` (a pause
//! container), and `update` (the same code path as runc's, for one set of callers).
//! The command lines are runc's, so the OCI CLI driver drives both:
//!
//! ```text
//! crust-monitor oci --root R --log L --log-format json [--systemd-cgroup] VERB ... ID
//!   run --detach --bundle B --pid-file P [--no-new-keyring] ID
//!   exec [--detach] --process F --pid-file P [--console-socket S] ID
//!   update --resources F ID
//!   start ID | state ID | kill [--all] ID SIGNAL | delete [--force] ID
//!   pause ID | resume ID
//! ```
//!
//! A failure is one `{"level":"error","msg":...}` line appended to the log, as runc
//! writes it, and exit status 1; a non-detached exec exits with its process's status.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use libcontainer::container::Container;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::error::LibcontainerError;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::wait::{WaitStatus, waitpid};

/// The options of one invocation.
#[derive(Debug, Default, PartialEq, Eq)]
struct Invocation {
    root: Option<PathBuf>,
    log: Option<PathBuf>,
    systemd_cgroup: bool,
    verb: String,
    flags: Vec<String>,
    values: Vec<(String, OsString)>,
    positional: Vec<String>,
}

impl Invocation {
    fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }

    fn value(&self, name: &str) -> Option<PathBuf> {
        self.values
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| PathBuf::from(v))
    }

    fn required(&self, name: &str) -> Result<PathBuf, String> {
        self.value(name)
            .ok_or_else(|| format!("{} needs {name}", self.verb))
    }

    fn id(&self) -> Result<&str, String> {
        self.positional
            .first()
            .map(String::as_str)
            .ok_or_else(|| format!("{}: no container id", self.verb))
    }
}

/// Options that take a value, per place on the command line.
const GLOBAL_VALUES: &[&str] = &["--root", "--log", "--log-format"];
const VERB_VALUES: &[&str] = &[
    "--bundle",
    "--pid-file",
    "--process",
    "--console-socket",
    "--resources",
];

fn parse(argv: &[OsString]) -> Result<Invocation, String> {
    let mut inv = Invocation::default();
    let mut iter = argv.iter();
    while let Some(arg) = iter.next() {
        let text = arg
            .to_str()
            .ok_or_else(|| format!("argument {arg:?} is not UTF-8"))?;
        if inv.verb.is_empty() {
            match text {
                "--systemd-cgroup" => inv.systemd_cgroup = true,
                name if GLOBAL_VALUES.contains(&name) => {
                    let value = iter.next().ok_or_else(|| format!("{name} needs a value"))?;
                    match name {
                        "--root" => inv.root = Some(value.into()),
                        "--log" => inv.log = Some(value.into()),
                        // JSON is the only format written.
                        _ => {}
                    }
                }
                name if name.starts_with('-') => return Err(format!("unknown option {name}")),
                verb => inv.verb = verb.to_owned(),
            }
            continue;
        }
        match text {
            name if VERB_VALUES.contains(&name) => {
                let value = iter.next().ok_or_else(|| format!("{name} needs a value"))?;
                inv.values.push((name.to_owned(), value.clone()));
            }
            name if name.starts_with("--") => inv.flags.push(name.to_owned()),
            positional => inv.positional.push(positional.to_owned()),
        }
    }
    if inv.verb.is_empty() {
        return Err("no command".into());
    }
    Ok(inv)
}

/// Runs the CLI on the arguments after `oci`; the exit status.
pub fn main(argv: &[OsString]) -> i32 {
    let inv = match parse(argv) {
        Ok(inv) => inv,
        Err(message) => {
            eprintln!("crust-monitor oci: {message}");
            return 2;
        }
    };
    let log_start = inv.log.as_deref().map(crate::embedded::log_to);
    match run(&inv) {
        Ok(code) => code,
        Err(message) => {
            let message = match (inv.log.as_deref(), log_start) {
                (Some(log), Some(start)) => {
                    crate::embedded::with_logged_causes(message, log, start)
                }
                _ => message,
            };
            log_error(inv.log.as_deref(), &message);
            eprintln!("{message}");
            1
        }
    }
}

/// Appends runc's error line to the log.
fn log_error(log: Option<&Path>, message: &str) {
    let Some(log) = log else { return };
    let line = serde_json::json!({
        "level": "error",
        "msg": message,
        "time": chrono::Utc::now().to_rfc3339(),
    });
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        let _ = writeln!(file, "{line}");
    }
}

fn text(err: LibcontainerError) -> String {
    crust_runtime::embedded::error_chain(&err)
}

fn run(inv: &Invocation) -> Result<i32, String> {
    let root = inv.root.clone().ok_or("--root is required")?;
    let id = inv.id()?;
    let dir = root.join(id);
    let load = || -> Result<Container, String> {
        if !dir.join("state.json").exists() {
            return Err(format!("container {id} does not exist"));
        }
        Container::load(dir.clone()).map_err(text)
    };
    match inv.verb.as_str() {
        "run" => {
            let pid_file = inv.required("--pid-file")?;
            let bundle = inv.required("--bundle")?;
            touch(&pid_file)?;
            let mut container = ContainerBuilder::new(id.to_owned(), SyscallType::default())
                .with_root_path(&root)
                .and_then(|b| b.with_pid_file(Some(&pid_file)))
                .map_err(text)?
                .as_init(&bundle)
                .with_systemd(inv.systemd_cgroup)
                .with_detach(true)
                .build()
                .map_err(text)?;
            container.start().map_err(text)?;
            Ok(0)
        }
        "exec" => exec(inv, &root, id, load()?),
        "update" => {
            let container = load()?;
            let file = inv.required("--resources")?;
            let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let resources: oci_spec::runtime::LinuxResources = serde_json::from_slice(&bytes)
                .map_err(|e| format!("resources {}: {e}", file.display()))?;
            let config = container.spec().map_err(text)?;
            let manager =
                libcgroups::common::create_cgroup_manager(libcgroups::common::CgroupConfig {
                    cgroup_path: config.cgroup_path,
                    systemd_cgroup: container.systemd(),
                    container_name: id.to_owned(),
                })
                .map_err(|e| format!("cgroup of {id}: {e}"))?;
            libcgroups::common::CgroupManager::apply(
                &manager,
                &libcgroups::common::ControllerOpt {
                    resources: &resources,
                    disable_oom_killer: false,
                    oom_score_adj: None,
                    freezer_state: None,
                },
            )
            .map_err(|e| format!("update {id}: {e}"))?;
            Ok(0)
        }
        "start" => load()?.start().map(|()| 0).map_err(text),
        "state" => {
            let mut container = load()?;
            container.refresh_status().map_err(text)?;
            let state = serde_json::json!({
                "ociVersion": "1.0.2",
                "id": container.id(),
                "status": container.status().to_string().to_ascii_lowercase(),
                "pid": container.pid().map_or(0, |p| p.as_raw()),
                "bundle": container.bundle(),
                "created": container.created().map(|at| at.to_rfc3339()),
            });
            println!("{state}");
            Ok(0)
        }
        "kill" => {
            let signal = inv.positional.get(1).map_or("15", String::as_str);
            let signal = signal
                .parse::<i32>()
                .map_err(|e| e.to_string())
                .and_then(|n| libcontainer::signal::Signal::try_from(n).map_err(|e| e.to_string()))
                .or_else(|_| {
                    libcontainer::signal::Signal::try_from(signal).map_err(|e| e.to_string())
                })?;
            load()?
                .kill(signal, inv.flag("--all"))
                .map(|()| 0)
                .map_err(text)
        }
        "delete" => {
            let Ok(mut container) = load() else {
                return Err(format!("container {id} does not exist"));
            };
            container
                .delete(inv.flag("--force"))
                .map(|()| 0)
                .map_err(text)
        }
        "pause" => load()?.pause().map(|()| 0).map_err(text),
        "resume" => load()?.resume().map(|()| 0).map_err(text),
        other => Err(format!(
            "{other}: not offered by the embedded handler (checkpoint and restore need runc)"
        )),
    }
}

/// libcontainer canonicalizes a pid file's path: the file must exist.
fn touch(path: &Path) -> Result<(), String> {
    std::fs::write(path, b"").map_err(|e| format!("pid file {}: {e}", path.display()))
}

/// Starts `--process` in the running container; without `--detach` waits for it and
/// exits as it did.
fn exec(inv: &Invocation, root: &Path, id: &str, container: Container) -> Result<i32, String> {
    let mut container = container;
    container.refresh_status().map_err(text)?;
    if !container.can_exec() {
        return Err(format!("container {id} is not running"));
    }
    let process = inv.required("--process")?;
    let pid_file = inv.required("--pid-file")?;
    let detach = inv.flag("--detach");
    touch(&pid_file)?;
    let pid = ContainerBuilder::new(id.to_owned(), SyscallType::default())
        .with_root_path(root)
        .and_then(|b| b.with_pid_file(Some(&pid_file)))
        .map_err(text)?
        .with_console_socket(inv.value("--console-socket"))
        .as_tenant()
        .with_process(Some(&process))
        .with_detach(detach)
        .build()
        .map_err(text)?;
    if detach {
        return Ok(0);
    }
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid.as_raw()), None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, signal, _)) => return Ok(128 + signal as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(err) => return Err(format!("wait for exec in {id}: {err}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(line: &str) -> Vec<OsString> {
        line.split_whitespace().map(OsString::from).collect()
    }

    #[test]
    fn parses_runc_command_lines() {
        let inv = parse(&argv(
            "--root /r --log /b/log.json --log-format json --systemd-cgroup exec --detach \
             --process /b/p.json --pid-file /b/p.pid c1",
        ))
        .unwrap();
        assert_eq!(inv.root, Some("/r".into()));
        assert_eq!(inv.log, Some("/b/log.json".into()));
        assert!(inv.systemd_cgroup && inv.flag("--detach"));
        assert_eq!(inv.verb, "exec");
        assert_eq!(inv.value("--process"), Some("/b/p.json".into()));
        assert_eq!(inv.id().unwrap(), "c1");
        let kill = parse(&argv("--root /r kill --all c1 9")).unwrap();
        assert_eq!(kill.positional, ["c1", "9"]);
        assert!(kill.flag("--all"));
        assert!(parse(&argv("--root /r")).is_err());
        assert!(parse(&argv("--bogus x")).is_err());
        assert!(parse(&argv("--root")).is_err());
    }

    #[test]
    fn failures_are_runc_log_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log.json");
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let args = format!("--root {} --log {} start c1", root.display(), log.display());
        assert_eq!(main(&argv(&args)), 1);
        let written = std::fs::read(&log).unwrap();
        assert_eq!(
            crust_runtime::oci::last_log_error(&written).as_deref(),
            Some("container c1 does not exist")
        );
        let args = format!("--root {} checkpoint c1", root.display());
        assert_eq!(main(&argv(&args)), 1);
    }
}
