//! Wire contracts shared by every crust crate.
//!
//! The CRI v1 types come from the `k8s-cri` crate and are re-exported here so the whole
//! workspace compiles against exactly one version of them. [`monitor`] is the protocol
//! between crustd and crust-monitor; [`spdy`] is SPDY/3.1 framing for the streaming
//! server (exec, attach, port-forward), which crictl and kubelet speak.
#![deny(missing_docs)]

/// CRI v1 messages, clients and servers.
pub use k8s_cri::v1 as cri;

pub mod monitor;
pub mod spdy;
mod spdy_dictionary;
