//! Containers: the OCI spec builder, the OCI runtime CLI driver and crust-monitor.
//!
//! Filled by the containers issue; nothing here is exposed yet.
#![deny(missing_docs)]
