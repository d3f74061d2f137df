//! The embedded log backend: every storage operation is one record in a
//! shared, segmented, checksummed log with group commit ([`engine`]); see
//! docs/storage.md for the on-disk format and recovery.

pub mod backend;
pub mod checkpoint;
pub mod codec;
pub mod compact;
pub mod engine;
pub mod frame;
pub mod fs;
pub mod sim;
