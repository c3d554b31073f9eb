//! Everything the sandbox work needs to write a pause container's spec, in one place.
//!
//! The builder lives in [`crate::spec::sandbox`] and the shared pieces in
//! [`crate::spec`]; this module gathers them under the name the sandbox crate uses.

use std::path::{Path, PathBuf};

use crate::error::Result;

pub use crate::spec::sandbox::{
    DEFAULT_SANDBOX_CPU_SHARES, DEFAULT_SANDBOX_OOM_SCORE_ADJ, PAUSE_USER, PidMode, SandboxSpec,
};
pub use crate::spec::{MountSpec, NamespaceMode, clamp_oom_score_adj, validate_sysctls};

/// Builds `spec` and writes it to `<bundle>/config.json` atomically; returns that path.
pub fn write_bundle(spec: &SandboxSpec, bundle: &Path) -> Result<PathBuf> {
    spec.write(bundle)
}
