//! The benchmark scenarios, one module each, and `suite`, which runs them in turn.

pub mod lifecycle;
pub mod list;
pub mod list_scale;
pub mod pull;
pub mod suite;
