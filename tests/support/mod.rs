//! Support code shared by the end-to-end tests.
//!
//! Every test binary in `tests/` includes this tree with `mod support;`, and each one
//! uses a different part of it, so dead-code warnings are silenced for the whole tree.
//!
//! - [`registry`] runs Debian's `docker-registry` on a loopback port, one per test.
//! - [`fake_registry`] is a scripted loopback HTTP server that records requests and
//!   misbehaves on purpose (a mirror fishing for credentials, endless blobs).
//! - [`oci`] builds images in memory (layers, configs, manifests, indexes) and pushes
//!   them to such a registry.
//! - [`metrics`] scrapes crustd's `/metrics` endpoint and parses what it serves.
//! - [`stream_client`] speaks SPDY and WebSocket to crustd's streaming server, as
//!   crictl, kubelet and kubectl do.
#![allow(dead_code)]

pub mod cni;
pub mod crustd;
pub mod fake_registry;
pub mod metrics;
pub mod oci;
pub mod pod;
pub mod registry;
pub mod stream_client;
