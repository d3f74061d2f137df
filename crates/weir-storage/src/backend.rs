//! The seam between the shared stream table and where bytes are kept.
//!
//! [`crate::table::Table`] implements every protocol-visible behaviour of
//! single-node storage — the registry, fork reference counts and soft
//! deletes, expiry, the append decision, watches and events — once. A
//! [`Backend`] only persists the operations the table hands it, in order,
//! and serves chunks back. The memory backend keeps chunks in RAM; the
//! embedded log writes each operation as one record and keeps a sparse index.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use weir_core::append::Commit;
use weir_core::state::StreamMeta;

use crate::StorageError;
use crate::chunk::Chunk;

/// One state change to persist. Every field needed to replay it is here, so
/// a backend can log it as one atomic record.
#[derive(Clone, Debug)]
pub enum Op {
    /// A stream is born with its initial data (`commit`) and closure.
    Create { meta: StreamMeta, commit: Commit },
    /// Data and/or writer state (producer, `Stream-Seq`, closure) change.
    Append {
        id: u64,
        start: u64,
        json: bool,
        commit: Commit,
    },
    /// The owner deleted the stream (or it expired). The table derives soft
    /// deletes and cascading frees from the fork graph, so replaying the
    /// deletes reproduces them.
    Delete { id: u64 },
    /// A metadata key was written at `version`.
    KvPut {
        key: String,
        value: Bytes,
        version: u64,
    },
    /// A metadata key was removed.
    KvDelete { key: String },
}

/// Where a stream's durable progress is published (its tail watch).
/// Publishing is monotonic: an older `(tail, closed, commits)` than the
/// current one changes nothing, so it may be published twice.
pub trait Publish: Send + Sync + 'static {
    fn publish(&self, tail: u64, closed: bool, commits: u64);
}

/// What to publish once an append is durable: whoever learns it first (the
/// log's committer thread, right after the batch's sync) wakes the stream's
/// readers, without waiting for the appending task to be scheduled.
pub struct OnDurable {
    pub target: Arc<dyn Publish>,
    pub tail: u64,
    pub closed: bool,
    pub commits: u64,
}

impl OnDurable {
    /// Publishes the progress this op makes durable.
    pub fn publish(&self) {
        self.target.publish(self.tail, self.closed, self.commits);
    }
}

/// Resolves when the operation it was issued for is durable.
pub type Ticket = Option<Pin<Box<dyn Future<Output = Result<(), StorageError>> + Send>>>;

/// Where a single-node backend keeps data.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Per-stream index of the stream's own chunks. Has its own interior
    /// locking so durability callbacks can update it.
    type Index: Send + Sync + 'static;

    /// A fresh, empty index for a new stream.
    fn new_index(&self) -> Self::Index;

    /// Persists `op`. Called while the table holds the stream's lock (or the
    /// registry lock for creates/deletes, the kv lock for kv ops), so calls
    /// concerning one stream arrive in commit order. Must not block on I/O:
    /// return a [`Ticket`] that resolves once `op` is durable (`None` when it
    /// already is).
    fn submit(&self, op: &Op, index: Option<&Arc<Self::Index>>) -> Result<Ticket, StorageError>;

    /// [`Backend::submit`] of an append whose durability also publishes
    /// `on_durable`. A backend that learns of durability away from the
    /// submitting task (the log's committer) publishes it there, before
    /// completing the ticket, so readers wake one hop earlier; it must never
    /// publish before the op is durable, nor after a failed write. The table
    /// publishes again once the ticket resolves (a no-op by then).
    fn submit_append(
        &self,
        op: &Op,
        index: &Arc<Self::Index>,
        on_durable: OnDurable,
    ) -> Result<Ticket, StorageError> {
        let _ = on_durable;
        self.submit(op, Some(index))
    }

    /// The stream's own chunks overlapping `[pos, end)`, in order, enough to
    /// cover `budget` bytes (at least one chunk when any overlaps).
    async fn chunks(
        &self,
        index: &Arc<Self::Index>,
        pos: u64,
        end: u64,
        budget: usize,
    ) -> Result<Vec<Chunk>, StorageError>;

    /// Bytes of stream data currently held (for budgets and metrics).
    fn used_bytes(&self) -> u64;

    /// Whether writes can be taken now.
    async fn ready(&self) -> Result<(), StorageError> {
        Ok(())
    }

    /// Flushes and stops background work.
    async fn shutdown(&self) {}
}
