//! Images: references, the registry client, the content store, safe layer unpacking,
//! the layer store and image records.
#![deny(missing_docs)]
