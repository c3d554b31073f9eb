//! Pod sandboxes: network namespace, CNI, the pause process and pod files.
//!
//! Filled by the sandbox issue; nothing here is exposed yet.
#![deny(missing_docs)]
