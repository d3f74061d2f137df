//! The memory backend: every chunk in RAM.
//!
//! It is the reference implementation of the [`Storage`](crate::Storage)
//! contract (the stream table does all protocol work; this file only keeps
//! chunks) and the store for tests and `--storage memory` servers. A byte
//! budget turns "out of memory" into a clean `507` instead of an abort.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;

use crate::StorageError;
use crate::backend::{Backend, Op, Ticket};
use crate::chunk::{Chunk, ChunkBody};
use crate::lock::Mutex;
use crate::table::{Table, TableLimits};

/// Settings of the memory backend.
#[derive(Clone, Debug, Default)]
pub struct MemoryOptions {
    /// Refuse writes once this many bytes are held (`None`: unlimited).
    pub max_bytes: Option<u64>,
}

/// All streams in RAM.
pub type MemoryStorage = Table<MemoryBackend>;

/// Keeps chunks in per-stream vectors.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    used: Arc<AtomicU64>,
}

/// One stream's chunks.
#[derive(Debug)]
pub struct MemIndex {
    chunks: Mutex<Vec<Chunk>>,
    used: Arc<AtomicU64>,
}

impl Drop for MemIndex {
    fn drop(&mut self) {
        let bytes: u64 = self.chunks.get_mut().iter().map(Chunk::len).sum();
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }
}

impl Table<MemoryBackend> {
    /// An empty in-memory store.
    pub fn new(opts: MemoryOptions) -> MemoryStorage {
        Table::with_backend(
            Arc::new(MemoryBackend::default()),
            TableLimits {
                max_bytes: opts.max_bytes,
            },
        )
    }

    /// Bytes of stream data held.
    pub fn used_bytes(&self) -> u64 {
        self.backend().used_bytes()
    }
}

impl Default for Table<MemoryBackend> {
    fn default() -> Self {
        Table::new(MemoryOptions::default())
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    type Index = MemIndex;

    fn new_index(&self) -> MemIndex {
        MemIndex {
            chunks: Mutex::new(Vec::new()),
            used: self.used.clone(),
        }
    }

    fn submit(&self, op: &Op, index: Option<&Arc<MemIndex>>) -> Result<Ticket, StorageError> {
        let (start, json, commit) = match op {
            Op::Create { meta, commit } => (meta.own_start(), meta.content_type.is_json(), commit),
            Op::Append {
                start,
                json,
                commit,
                ..
            } => (*start, *json, commit),
            Op::Delete { .. } | Op::KvPut { .. } | Op::KvDelete { .. } => return Ok(None),
        };
        if let (Some(index), Some(body)) = (index, ChunkBody::from_entries(json, &commit.entries)) {
            self.used.fetch_add(body.len(), Ordering::Relaxed);
            index.chunks.lock().push(Chunk {
                start,
                body: body.compact(),
            });
        }
        Ok(None)
    }

    async fn chunks(
        &self,
        index: &Arc<MemIndex>,
        pos: u64,
        end: u64,
        budget: usize,
    ) -> Result<Vec<Chunk>, StorageError> {
        let chunks = index.chunks.lock();
        let first = chunks.partition_point(|c| c.end() <= pos);
        Ok(crate::chunk::covering(&chunks[first..], pos, end, budget))
    }

    fn used_bytes(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }
}
