//! The Durable Streams protocol model.
//!
//! This crate is the part of Weir that knows what a stream *is*: how offsets
//! are minted and parsed, which appends a stream accepts (closure, content
//! type, `Stream-Seq`, idempotent producers), how JSON-mode bodies are framed
//! into messages, how forks address their source's data, and when a stream
//! expires. It does no I/O and has no async runtime, so every rule can be unit
//! and property tested in isolation, and every storage backend applies the
//! *same* rules inside its own critical section (see `weir-storage`).
//!
//! Nothing here knows about HTTP header names or files: the server translates
//! headers into these types, and storage backends persist them.

pub mod append;
pub mod content_type;
pub mod cursor;
pub mod expiry;
pub mod fork;
pub mod glob;
pub mod json;
pub mod name;
pub mod offset;
pub mod producer;
pub mod state;

pub use append::{AppendDecision, AppendRejection, AppendRequest, Body};
pub use content_type::ContentType;
pub use expiry::{Expiry, ExpiryError};
pub use name::{NameError, StreamName};
pub use offset::{Offset, OffsetError, ReadFrom};
pub use producer::{ProducerCheck, ProducerHeaders, ProducerState};
pub use state::{ForkOrigin, StreamMeta, StreamState};
