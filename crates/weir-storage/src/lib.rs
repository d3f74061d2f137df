//! Storage for Weir: one trait, several backends.
//!
//! [`Storage`] is the only way the HTTP server (and later the gateway and
//! the chat app) touches stream data. It is shaped for three backends:
//!
//! * [`memory::MemoryStorage`] — everything in RAM; tests, development, and
//!   the reference the others are checked against.
//! * the embedded log (default) — one shared segmented log on local disk with
//!   group commit.
//! * NATS JetStream — stateless Weir nodes sharing streams.
//!
//! What the shape guarantees:
//!
//! * **Conditional, atomic appends.** [`Storage::append`] evaluates the
//!   protocol's rules ([`weir_core::append::decide`]) against the stream's
//!   state *inside* the backend's critical section and persists the data with
//!   the producer / closure / `Stream-Seq` state it implies as one unit.
//!   JetStream implements the same contract with expected-sequence publishes.
//! * **Reads by offset range** that only ever return durable data, stitched
//!   across fork boundaries.
//! * **Notifications**: [`Storage::watch`] hands out a `watch` receiver per
//!   stream that ticks once per commit (not per append), and
//!   [`Storage::events`] a server-wide feed (subscriptions use it).
//! * **Listing by prefix**, for the listing API and subscription backfill.
//! * **A small versioned key/value space** ([`Storage::kv_get`] /
//!   [`Storage::kv_put`]) with compare-and-set, for subscription state
//!   (cursors, generation, leases, retry schedule) and signing keys, stored
//!   by the same backend and with the same durability as the streams.

pub mod backend;
pub mod chunk;
#[cfg(any(test, feature = "contract-tests"))]
pub mod contract;
mod lock;
pub mod log;
pub mod memory;
pub mod table;
mod types;

pub use types::*;

use async_trait::async_trait;
use bytes::Bytes;
use weir_core::{StreamName, append::AppendRequest, offset::ReadFrom};

/// The storage contract. All methods are cancel-safe in the sense that a
/// dropped future either fully applied its change or did not apply it.
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Creates a stream, or confirms an identical one exists (`created:
    /// false`). A different configuration is [`StorageError::ConfigMismatch`].
    async fn create(&self, req: CreateRequest) -> Result<CreateOutcome, StorageError>;

    /// Appends (or closes) under the protocol's rules. Protocol rejections
    /// come back inside [`AppendOutcome`], with the stream's tail and closure
    /// state so the caller can answer with the right headers.
    async fn append(
        &self,
        name: &StreamName,
        req: AppendRequest,
    ) -> Result<AppendOutcome, StorageError>;

    /// Appends to several streams at once: each item is decided on its own
    /// (per-item results), and all accepted items are submitted before any
    /// is awaited, so they share one durable commit.
    async fn append_batch(
        &self,
        items: Vec<(StreamName, AppendRequest)>,
    ) -> Vec<Result<AppendOutcome, StorageError>> {
        let mut out = Vec::with_capacity(items.len());
        for (name, req) in items {
            out.push(self.append(&name, req).await);
        }
        out
    }

    /// Deletes a stream (soft-deletes it while forks still read from it).
    async fn delete(&self, name: &StreamName) -> Result<(), StorageError>;

    /// Metadata without touching the stream's TTL.
    async fn head(&self, name: &StreamName) -> Result<StreamInfo, StorageError>;

    /// Reads durable data from `from`, at most about `max_bytes` (at least
    /// one message), and refreshes a sliding TTL.
    async fn read(
        &self,
        name: &StreamName,
        from: ReadFrom,
        max_bytes: usize,
    ) -> Result<ReadChunk, StorageError>;

    /// A receiver that changes whenever the stream's durable tail, closure or
    /// existence changes. Subscribe *before* reading to never miss a wake-up.
    async fn watch(&self, name: &StreamName) -> Result<TailWatch, StorageError>;

    /// Streams whose names start with `prefix`, in name order, after `after`.
    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StreamInfo>, StorageError>;

    /// The server-wide feed of stream changes.
    fn events(&self) -> tokio::sync::broadcast::Receiver<StreamEvent>;

    /// The feed of streams created and deleted (expiry included), without
    /// the per-append events: for consumers that only track which streams
    /// exist and should not be woken by every append.
    fn lifecycle_events(&self) -> tokio::sync::broadcast::Receiver<StreamEvent>;

    /// Reads a key of the metadata space, with its version.
    async fn kv_get(&self, key: &str) -> Result<Option<(Bytes, u64)>, StorageError>;

    /// Writes a key if its current version is `expected` (`None`: must not
    /// exist). Returns the new version, or [`StorageError::VersionConflict`].
    async fn kv_put(
        &self,
        key: &str,
        value: Bytes,
        expected: Option<u64>,
    ) -> Result<u64, StorageError>;

    /// Deletes a key (idempotent).
    async fn kv_delete(&self, key: &str) -> Result<(), StorageError>;

    /// Keys starting with `prefix`, in order.
    async fn kv_list(&self, prefix: &str) -> Result<Vec<String>, StorageError>;

    /// Whether the backend can take writes now (for `/readyz`).
    async fn ready(&self) -> Result<(), StorageError> {
        Ok(())
    }

    /// Flushes and stops background work; called on graceful shutdown.
    async fn shutdown(&self) {}
}
