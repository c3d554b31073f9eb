//! CNI glue: network namespaces, CNI configuration loading, plugin execution and the
//! result cache.
#![deny(missing_docs)]
