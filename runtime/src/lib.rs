//! Containers: the OCI runtime CLI driver, OCI spec building, and crust-pause.
//!
//! - [`oci`]: runs runc, crun or youki (`create`, `start`, `state`, `kill`, `delete`)
//!   with the contract DESIGN.md sets: `--root`, `--log <bundle>/log.json --log-format
//!   json`, stdin /dev/null, a timeout, and errors that carry the runtime's evidence.
//! - [`spec`]: config.json for a pod's pause container ([`spec::SandboxSpec`]) and the
//!   defaults every spec shares (capabilities, masked paths, mounts, sysctls, OOM score).
//! - [`pause`]: the embedded static crust-pause binary and its shared read-only rootfs.
//! - [`pause_spec`]: the pause container's spec pieces gathered for the sandbox crate.
//! - [`checkpoint`]: checkpoint archives (CRIU images, spec, rootfs diff) as CRI-O
//!   writes them.
//!
//! The crate knows neither images nor sandboxes: callers hand it plain data (rootfs
//! paths, namespace paths, cgroup paths).
#![deny(missing_docs)]

pub mod apparmor;
pub mod cgroupfs;
pub mod checkpoint;
pub mod console;
pub mod container;
pub mod embedded;
pub mod error;
pub mod fsmode;
pub mod inroot;
pub mod keyed_lock;
pub mod liveness;
pub mod lowlevel;
pub mod monitor;
pub mod mountinfo;
pub mod oci;
pub mod oci_version;
pub mod pause;
pub mod pause_spec;
pub mod spec;
pub mod staging;
pub mod stats;

pub use embedded::Embedded;
pub use error::{ErrorKind, Failure, Result, RuntimeError};
pub use lowlevel::{CreateEngine, LowLevelRuntime};
pub use oci::{CheckpointOptions, CreateOptions, OciRuntime, RestoreOptions, State};
pub use pause::{PAUSE_BINARY, PAUSE_PATH, install_pause_rootfs};
pub use spec::{MountSpec, NamespaceMode, PidMode, SandboxSpec};
