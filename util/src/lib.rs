//! Small helpers that several crust crates need alike, at the bottom of the crate graph
//! (it depends on no other crust crate, so every one of them may depend on it). Each
//! crate keeps its own logic; only what was copied word for word lives here.
#![deny(missing_docs)]

pub mod mount_tree;
pub mod mountinfo;
pub mod process;
pub mod resolve;
pub mod store;
pub mod time;
pub mod userns;
