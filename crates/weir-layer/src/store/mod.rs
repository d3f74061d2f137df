//! Persistent stores for the layer's own data.

#[cfg(feature = "sqlite")]
pub mod sqlite;
