//! Wire contracts shared by every crust crate.
//!
//! The CRI v1 types come from the `k8s-cri` crate and are re-exported here so the whole
//! workspace compiles against exactly one version of them.
#![deny(missing_docs)]

/// CRI v1 messages, clients and servers.
pub use k8s_cri::v1 as cri;

pub mod monitor;
