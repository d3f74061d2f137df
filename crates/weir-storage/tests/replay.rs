//! Replaying a run's operations into a fresh table, and restoring from a
//! snapshot, reproduce every client-visible fact of the original.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use weir_core::offset::ReadFrom;
use weir_storage::backend::{Backend, Op, Ticket};
use weir_storage::chunk::Chunk;
use weir_storage::memory::{MemIndex, MemoryBackend};
use weir_storage::table::{Table, TableLimits};
use weir_storage::{Storage, StorageError, contract};

/// The memory backend, also recording every submitted op.
#[derive(Default)]
struct Recorder {
    inner: MemoryBackend,
    ops: Mutex<Vec<Op>>,
}

#[async_trait]
impl Backend for Recorder {
    type Index = MemIndex;
    fn new_index(&self) -> MemIndex {
        self.inner.new_index()
    }
    fn submit(&self, op: &Op, index: Option<&Arc<MemIndex>>) -> Result<Ticket, StorageError> {
        self.ops.lock().push(op.clone());
        self.inner.submit(op, index)
    }
    async fn chunks(
        &self,
        index: &Arc<MemIndex>,
        pos: u64,
        end: u64,
        budget: usize,
    ) -> Result<Vec<Chunk>, StorageError> {
        self.inner.chunks(index, pos, end, budget).await
    }
    fn used_bytes(&self) -> u64 {
        self.inner.used_bytes()
    }
}

/// Every stream's name, head and full contents.
async fn visible(s: &dyn Storage) -> Vec<String> {
    let mut out = Vec::new();
    for info in s.list("", None, usize::MAX).await.unwrap() {
        let c = s
            .read(&info.name, ReadFrom::Start, usize::MAX)
            .await
            .unwrap();
        out.push(format!(
            "{} {} {:?} {} closed={} {:?}",
            info.name,
            info.tail,
            info.expiry,
            info.content_type.as_str(),
            info.closed,
            c.pieces.concat()
        ));
    }
    for name in ["src", "fork", "chain", "sub", "t/a"] {
        let n = weir_core::StreamName::new(name).unwrap();
        out.push(format!(
            "{name}: {:?}",
            s.head(&n).await.map(|i| (i.tail, i.closed))
        ));
    }
    for key in s.kv_list("").await.unwrap() {
        out.push(format!("kv {key} {:?}", s.kv_get(&key).await.unwrap()));
    }
    out
}

#[tokio::test]
async fn replay_and_restore_reproduce_the_store() {
    let rec = Arc::new(Recorder::default());
    let table: Arc<Table<Recorder>> =
        Arc::new(Table::with_backend(rec.clone(), TableLimits::default()));
    // Exercise creates, appends, producers, closure, forks, soft deletes, kv.
    contract::listing_and_kv(table.clone()).await;
    contract::forks(table.clone()).await;
    contract::producers_and_closure(table.clone()).await;
    contract::random_model(table.clone(), 99).await;
    let before = visible(&*table).await;

    // Replay every op into a fresh table.
    let fresh = Arc::new(MemoryBackend::default());
    let replayed = Table::with_backend(fresh.clone(), TableLimits::default());
    for op in rec.ops.lock().iter() {
        replayed
            .replay(op, |idx| {
                fresh.submit(op, Some(idx)).unwrap();
            })
            .unwrap();
    }
    assert_eq!(visible(&replayed).await, before);

    // Restore from a snapshot of the original.
    let (snap, ()) = table.snapshot(|| ());
    let restored = Table::restore(rec.clone(), TableLimits::default(), snap).unwrap();
    assert_eq!(visible(&restored).await, before);
    // The restored table keeps working, including producer dedup state.
    let mut req = contract::bytes_append(b"again");
    req.producer = Some(weir_core::ProducerHeaders {
        id: "rp".into(),
        epoch: 0,
        seq: 0,
    });
    let out = restored
        .append(&weir_core::StreamName::new("m").unwrap(), req)
        .await
        .unwrap();
    assert!(matches!(
        out.result,
        Ok(weir_storage::AppendAck::Duplicate { .. })
    ));
}
