//! The embedded log backend: the stream table over the log engine.
//!
//! Every operation becomes one record (see [`super::codec`]); its data,
//! producer state, closure and `Stream-Seq` are therefore durable together
//! or not at all. Each stream keeps, in memory, only
//!
//! * a *hot* cache of its newest chunks (bounded bytes), which serves live
//!   readers without touching the disk, and
//! * a *sparse* index: one anchor (position → record LSN) every
//!   [`ANCHOR_BYTES`] of data, plus its newest data record. Every data
//!   record points back at the stream's previous data record, so a cold
//!   read walks back from the next anchor to the one before the wanted
//!   position: memory grows with stream size / 64 KiB, not with appends.
//!
//! Compaction ([`super::compact`]) may move a run of a stream's records to
//! a *relocate* record; the index then points at the copy and keeps a
//! redirect from the run's old last position, which cold reads follow.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;

use super::codec::{self, kind_and_key};
use super::engine::{Engine, EngineOptions, LogError, RecoveryReport, SyncMode};
use super::frame::{self, NO_PREV};
use super::fs::{Fs, RealFs};
use crate::StorageError;
use crate::backend::{Backend, OnDurable, Op, Ticket};
use crate::chunk::{Chunk, ChunkBody};
use crate::lock::Mutex;
use crate::table::{Table, TableLimits};

/// Data between two sparse-index anchors.
pub const ANCHOR_BYTES: u64 = 64 * 1024;
/// Newest data kept in memory per stream.
pub const HOT_BYTES_PER_STREAM: u64 = 256 * 1024;

/// Settings of the log backend.
#[derive(Clone, Debug)]
pub struct LogOptions {
    pub engine: EngineOptions,
    /// Refuse writes when the device has less free space than this.
    pub min_free_bytes: u64,
    pub limits: TableLimits,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            engine: EngineOptions::default(),
            min_free_bytes: 256 * 1024 * 1024,
            limits: TableLimits::default(),
        }
    }
}

/// The store: the stream table over the log.
pub type LogStorage = Table<LogBackend>;

/// Persists operations as log records.
pub struct LogBackend {
    engine: std::sync::OnceLock<Arc<Engine>>,
    hot_used: Arc<AtomicU64>,
    min_free_bytes: u64,
    /// Free-space guard: refreshed at most once a second on the write path.
    low_space: std::sync::atomic::AtomicBool,
    space_checked_ms: std::sync::atomic::AtomicI64,
    /// Compacted segments not yet removed: segment → position of its
    /// compacted marker (see [`super::compact`]).
    pub(crate) compacted: Mutex<BTreeMap<u64, u64>>,
    /// Data bytes per stream of each sealed segment compaction has scanned.
    pub(crate) usage: Mutex<super::compact::Usage>,
    /// Cold reads hold it shared for a whole walk down a record chain;
    /// compaction holds it exclusively while it removes segments and drops
    /// redirects, so a walk never finds a position it resolved a moment ago
    /// gone from under it.
    pub(crate) walks: Arc<crate::lock::RwLock<()>>,
    /// Held for the backend's lifetime: a second process cannot open the
    /// same directory.
    _lock: File,
}

/// One stream's in-memory index.
pub struct LogIndex {
    inner: Mutex<IndexInner>,
    hot_used: Arc<AtomicU64>,
}

#[derive(Default)]
struct IndexInner {
    /// Newest chunks with their record positions, oldest first.
    hot: VecDeque<(Chunk, u64)>,
    hot_bytes: u64,
    /// (start position, record LSN) every ANCHOR_BYTES of data.
    anchors: Vec<(u64, u64)>,
    since_anchor: u64,
    /// Newest data record: (start position, LSN).
    last: Option<(u64, u64)>,
    /// Compaction: the position of the last original record of each
    /// relocated run → the relocate record that replaced the run. The
    /// run's successor still points back at the old position.
    redirects: BTreeMap<u64, u64>,
}

/// What a checkpoint saves of an index.
pub(crate) struct SavedIndex {
    /// (start position, LSN) anchors.
    pub anchors: Vec<(u64, u64)>,
    /// Newest data record: (start position, LSN).
    pub last: Option<(u64, u64)>,
    pub since_anchor: u64,
    /// Old LSN → relocated LSN.
    pub redirects: Vec<(u64, u64)>,
}

impl LogIndex {
    /// The part of the index a checkpoint saves (hot data is not saved).
    pub(crate) fn saved(&self) -> SavedIndex {
        let i = self.inner.lock();
        SavedIndex {
            anchors: i.anchors.clone(),
            last: i.last,
            since_anchor: i.since_anchor,
            redirects: i.redirects.iter().map(|(a, b)| (*a, *b)).collect(),
        }
    }

    /// The start positions of the stream's anchors (relocated runs never
    /// cross one, so every anchor keeps pointing at a record start).
    pub(crate) fn anchor_starts(&self) -> Vec<u64> {
        self.inner.lock().anchors.iter().map(|(s, _)| *s).collect()
    }

    /// Whether the run ending with the record at `old_last` was relocated.
    pub(crate) fn relocated(&self, old_last: u64) -> bool {
        self.inner.lock().redirects.contains_key(&old_last)
    }

    /// Drops a redirect nothing points through any more (compaction).
    pub(crate) fn forget_redirect(&self, old: u64) {
        self.inner.lock().redirects.remove(&old);
    }

    /// Follows redirects from `lsn` to where the record lives now.
    pub(crate) fn resolve(&self, lsn: u64) -> u64 {
        self.inner.lock().resolve(lsn)
    }

    /// (anchors, redirects) counts, for tests and metrics.
    pub fn index_sizes(&self) -> (usize, usize) {
        let i = self.inner.lock();
        (i.anchors.len(), i.redirects.len())
    }
}

impl Drop for LogIndex {
    fn drop(&mut self) {
        self.hot_used
            .fetch_sub(self.inner.get_mut().hot_bytes, Ordering::Relaxed);
    }
}

impl IndexInner {
    /// Where the record once at `lsn` lives now.
    fn resolve(&self, mut lsn: u64) -> u64 {
        // Each hop moves to a newer relocate record; bounded anyway.
        for _ in 0..64 {
            match self.redirects.get(&lsn) {
                Some(&to) if to != lsn => lsn = to,
                _ => break,
            }
        }
        lsn
    }

    /// Records that the run of records starting at position `start` and
    /// ending with the record at `old_last` now lives at `new_lsn`.
    fn relocated(&mut self, start: u64, old_last: u64, new_lsn: u64) {
        self.redirects.insert(old_last, new_lsn);
        let i = self.anchors.partition_point(|(s, _)| *s < start);
        if let Some(a) = self.anchors.get_mut(i)
            && a.0 == start
        {
            a.1 = new_lsn;
        }
        if let Some(last) = &mut self.last
            && last.1 == old_last
        {
            *last = (start, new_lsn);
        }
    }

    /// Records a data record; `chunk` is kept hot when given.
    fn add(&mut self, start: u64, len: u64, lsn: u64, chunk: Option<Chunk>, hot_used: &AtomicU64) {
        if self.anchors.is_empty() || self.since_anchor >= ANCHOR_BYTES {
            self.anchors.push((start, lsn));
            self.since_anchor = 0;
        }
        self.since_anchor += len;
        self.last = Some((start, lsn));
        if let Some(c) = chunk {
            self.hot_bytes += len;
            hot_used.fetch_add(len, Ordering::Relaxed);
            self.hot.push_back((c, lsn));
            while self.hot_bytes > HOT_BYTES_PER_STREAM && self.hot.len() > 1 {
                if let Some((old, _)) = self.hot.pop_front() {
                    self.hot_bytes -= old.len();
                    hot_used.fetch_sub(old.len(), Ordering::Relaxed);
                }
            }
        }
    }
}

fn storage_error(e: LogError) -> StorageError {
    match e {
        LogError::DiskFull(m) => StorageError::Full(m),
        LogError::TooLarge(n) => {
            StorageError::LimitExceeded(format!("record of {n} bytes is too large"))
        }
        other => StorageError::Io(other.to_string()),
    }
}

/// The data an op adds to its stream: (start, chunk).
fn op_chunk(op: &Op) -> Option<(u64, ChunkBody)> {
    match op {
        Op::Create { meta, commit } => {
            ChunkBody::from_entries(meta.content_type.is_json(), &commit.entries)
                .map(|b| (meta.own_start(), b))
        }
        Op::Append {
            start,
            json,
            commit,
            ..
        } => ChunkBody::from_entries(*json, &commit.entries).map(|b| (*start, b)),
        _ => None,
    }
}

impl LogBackend {
    fn engine(&self) -> Result<&Arc<Engine>, StorageError> {
        self.engine
            .get()
            .ok_or_else(|| StorageError::Unavailable("the log is still recovering".into()))
    }

    /// Frames `op` as one record (chained to its stream's previous data
    /// record), queues it, and returns the ticket of its durability.
    fn submit_op(
        &self,
        op: &Op,
        index: Option<&Arc<LogIndex>>,
        publish: Option<OnDurable>,
    ) -> Result<Ticket, StorageError> {
        let engine = self.engine()?;
        if !matches!(op, Op::Delete { .. } | Op::KvDelete { .. }) {
            self.check_space(engine)?;
        }
        // The payload is encoded straight into the frame, outside the lock.
        let mut frame = frame::unsealed(codec::encoded_len_hint(op), |b| {
            codec::encode_into(op, b);
        });
        let (kind, key) = kind_and_key(op);
        let data = op_chunk(op);
        let rx = match (data, index) {
            (Some((start, body)), Some(index)) => {
                // Chain to the stream's previous data record, then index
                // this one — under the index lock so the chain is ordered.
                let mut inner = index.inner.lock();
                let prev = inner.last.map_or(NO_PREV, |(_, l)| l);
                frame::seal(&mut frame, kind, key, prev);
                let (lsn, rx) = engine.submit_frame(frame, publish).map_err(storage_error)?;
                let len = body.len();
                let chunk = Chunk {
                    start,
                    body: body.compact(),
                };
                inner.add(start, len, lsn, Some(chunk), &self.hot_used);
                rx
            }
            _ => {
                frame::seal(&mut frame, kind, key, NO_PREV);
                engine
                    .submit_frame(frame, publish)
                    .map_err(storage_error)?
                    .1
            }
        };
        Ok(Some(Box::pin(async move {
            crate::log::engine::committed(rx)
                .await
                .map_err(storage_error)
        })))
    }

    /// Refuses writes (507) while the data volume has less free space than
    /// the threshold, so the disk never fills mid-batch. Deletes pass: they
    /// are how space comes back.
    fn check_space(&self, engine: &Engine) -> Result<(), StorageError> {
        if self.min_free_bytes == 0 {
            return Ok(());
        }
        let now = crate::table::now_ms();
        if now - self.space_checked_ms.load(Ordering::Relaxed) >= 1000 {
            self.space_checked_ms.store(now, Ordering::Relaxed);
            let low = engine
                .free_bytes()
                .is_ok_and(|free| free < self.min_free_bytes);
            self.low_space.store(low, Ordering::Relaxed);
        }
        if self.low_space.load(Ordering::Relaxed) {
            return Err(StorageError::Full(format!(
                "less than {} bytes free on the data volume; writes are refused until space is freed",
                self.min_free_bytes
            )));
        }
        Ok(())
    }

    /// Records where a replayed op's data lives.
    fn replayed(&self, index: &LogIndex, op: &Op, lsn: u64) {
        if let Some((start, body)) = op_chunk(op) {
            index
                .inner
                .lock()
                .add(start, body.len(), lsn, None, &self.hot_used);
        }
    }

    /// An index rebuilt from a checkpoint (no hot data).
    pub(crate) fn restored_index(&self, saved: SavedIndex) -> LogIndex {
        LogIndex {
            inner: Mutex::new(IndexInner {
                anchors: saved.anchors,
                last: saved.last,
                since_anchor: saved.since_anchor,
                redirects: saved.redirects.into_iter().collect(),
                ..IndexInner::default()
            }),
            hot_used: self.hot_used.clone(),
        }
    }

    /// What recovery found, for logs and `weir storage verify`.
    pub fn engine_handle(&self) -> Option<&Arc<Engine>> {
        self.engine.get()
    }

    /// Bytes compaction has given back (segment files removed) since the
    /// log opened, for metrics.
    pub fn reclaimed_bytes(&self) -> u64 {
        self.engine.get().map_or(0, |e| e.reclaimed_bytes())
    }

    /// Submits a relocate record for a run of `index`'s stream and points
    /// the index at it, under the index lock (so an append racing with it
    /// chains to whichever of the two the index shows). `first_prev` is the
    /// back pointer of the run's first original record.
    pub(crate) fn submit_relocate(
        &self,
        index: &LogIndex,
        r: &codec::Relocate,
    ) -> Result<(u64, crate::log::engine::CommitWaiter), StorageError> {
        let engine = self.engine()?;
        let payload = codec::encode_relocate(r);
        let mut inner = index.inner.lock();
        let prev = if r.first_prev == NO_PREV {
            NO_PREV
        } else {
            inner.resolve(r.first_prev)
        };
        let (lsn, rx) = engine
            .submit(codec::kind::RELOCATE, r.id, prev, &payload)
            .map_err(storage_error)?;
        inner.relocated(r.start, r.old_last, lsn);
        Ok((lsn, rx))
    }

    /// Submits a compacted marker for `seg` and records it.
    pub(crate) fn submit_compacted(
        &self,
        seg: u64,
    ) -> Result<(u64, crate::log::engine::CommitWaiter), StorageError> {
        let engine = self.engine()?;
        let (lsn, rx) = engine
            .submit(
                codec::kind::COMPACTED,
                0,
                NO_PREV,
                &codec::encode_compacted(seg),
            )
            .map_err(storage_error)?;
        self.compacted.lock().insert(seg, lsn);
        Ok((lsn, rx))
    }
}

#[async_trait]
impl Backend for LogBackend {
    type Index = LogIndex;

    fn new_index(&self) -> LogIndex {
        LogIndex {
            inner: Mutex::new(IndexInner::default()),
            hot_used: self.hot_used.clone(),
        }
    }

    fn submit(&self, op: &Op, index: Option<&Arc<LogIndex>>) -> Result<Ticket, StorageError> {
        self.submit_op(op, index, None)
    }

    fn submit_append(
        &self,
        op: &Op,
        index: &Arc<LogIndex>,
        on_durable: OnDurable,
    ) -> Result<Ticket, StorageError> {
        self.submit_op(op, Some(index), Some(on_durable))
    }

    async fn chunks(
        &self,
        index: &Arc<LogIndex>,
        pos: u64,
        end: u64,
        budget: usize,
    ) -> Result<Vec<Chunk>, StorageError> {
        {
            let inner = index.inner.lock();
            if inner.hot.front().is_some_and(|(c, _)| c.start <= pos) {
                let first = inner.hot.partition_point(|(c, _)| c.end() <= pos);
                return Ok(crate::chunk::covering(
                    inner.hot.iter().skip(first).map(|(c, _)| c),
                    pos,
                    end,
                    budget,
                ));
            }
        }
        // Cold: positioned reads off the async workers. Compaction may
        // remove a segment between reading the index and reading the
        // records: the second try sees the relocated positions.
        let index = index.clone();
        let engine = self.engine()?.clone();
        let walks = self.walks.clone();
        tokio::task::spawn_blocking(move || {
            let _walk = walks.read();
            cold_chunks(&engine, &index, pos, end)
                .or_else(|_| cold_chunks(&engine, &index, pos, end))
        })
        .await
        .map_err(|e| StorageError::Io(e.to_string()))?
    }

    fn used_bytes(&self) -> u64 {
        self.engine
            .get()
            .map_or(0, |e| e.durable_lsn().saturating_sub(e.reclaimed_bytes()))
    }

    async fn ready(&self) -> Result<(), StorageError> {
        let engine = self.engine()?;
        if let Some(p) = engine.poisoned() {
            return Err(StorageError::Io(p));
        }
        let free = engine.free_bytes().map_err(storage_error)?;
        if free < self.min_free_bytes {
            return Err(StorageError::Unavailable(format!(
                "{free} bytes free on the data volume, below the {} byte threshold",
                self.min_free_bytes
            )));
        }
        Ok(())
    }

    async fn shutdown(&self) {
        if let Some(e) = self.engine.get() {
            e.close();
        }
    }
}

/// Reads the data records of a stream that cover `[pos, …)` (blocking),
/// walking the back-chain from the anchor after `pos` down to the anchor
/// before it.
fn cold_chunks(
    engine: &Engine,
    index: &LogIndex,
    pos: u64,
    end: u64,
) -> Result<Vec<Chunk>, StorageError> {
    let (from_start, from_lsn, upper) = {
        let inner = index.inner.lock();
        let i = inner.anchors.partition_point(|(start, _)| *start <= pos);
        if i == 0 {
            return Ok(Vec::new());
        }
        let (from_start, from) = inner.anchors[i - 1];
        // Walk back from the record just before the next anchor, or from
        // the newest record.
        let upper = match inner.anchors.get(i) {
            Some(&(_, next)) => Some((next, true)),
            None => inner.last.map(|(_, l)| (l, false)),
        };
        (from_start, from, upper)
    };
    let Some((mut lsn, skip_first)) = upper else {
        return Ok(Vec::new());
    };
    let mut records = Vec::new();
    let mut first = true;
    // An anchor interval holds at most ANCHOR_BYTES of data plus one
    // record, each record at least one byte: a longer walk is a broken
    // chain (relocation makes positions along a chain non-monotonic, so
    // `prev < lsn` is no longer a test).
    let mut steps = 0u64;
    loop {
        // The walk starts at the newest submitted record and follows
        // redirects to relocated copies: either may still be in the
        // committer's queue, not yet written.
        engine.wait_written(lsn).map_err(storage_error)?;
        let (h, payload) = engine.read(lsn).map_err(storage_error)?;
        let rec = codec::decode_record(&payload).map_err(|e| StorageError::Io(e.to_string()))?;
        let start = codec::record_data(&rec).map(|(_, start, ..)| start);
        if !(first && skip_first) {
            records.push(rec);
        }
        first = false;
        // Stop at the lower anchor (also when a compaction relocated it
        // after the anchors above were read: then its start ends the walk).
        if lsn == from_lsn || h.prev == NO_PREV || start.is_some_and(|s| s <= from_start) {
            break;
        }
        steps += 1;
        if steps > 2 * ANCHOR_BYTES + 2 {
            return Err(StorageError::Io(format!("broken record chain at {lsn}")));
        }
        lsn = index.resolve(h.prev);
    }
    records.reverse();
    let mut out = Vec::with_capacity(records.len());
    for rec in records {
        if let Some((_, start, json, entries)) = codec::record_data(&rec)
            && let Some(body) = ChunkBody::from_entries(json, entries)
        {
            let c = Chunk { start, body };
            if c.end() > pos && c.start < end {
                out.push(c);
            }
        }
    }
    Ok(out)
}

/// Opens (or creates) a log store in `dir`: takes the directory lock,
/// replays the log into a fresh table and starts the committer.
pub fn open(dir: &Path, opts: LogOptions) -> Result<(LogStorage, RecoveryReport), StorageError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| StorageError::Io(format!("creating {}: {e}", dir.display())))?;
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("LOCK"))
        .map_err(|e| StorageError::Io(e.to_string()))?;
    lock.try_lock().map_err(|_| {
        StorageError::Unavailable(format!("{} is in use by another process", dir.display()))
    })?;
    let fs: Arc<dyn Fs> = Arc::new(RealFs::new(dir).map_err(|e| StorageError::Io(e.to_string()))?);
    open_with(fs, lock, opts)
}

/// [`open`] over any file layer (tests use a simulated disk).
pub fn open_with(
    fs: Arc<dyn Fs>,
    lock: File,
    opts: LogOptions,
) -> Result<(LogStorage, RecoveryReport), StorageError> {
    let backend = Arc::new(LogBackend {
        engine: std::sync::OnceLock::new(),
        hot_used: Arc::new(AtomicU64::new(0)),
        min_free_bytes: opts.min_free_bytes,
        low_space: std::sync::atomic::AtomicBool::new(false),
        space_checked_ms: std::sync::atomic::AtomicI64::new(0),
        compacted: Mutex::new(BTreeMap::new()),
        usage: Mutex::new(BTreeMap::new()),
        walks: Arc::new(crate::lock::RwLock::new(())),
        _lock: lock,
    });
    let (table, from) = match super::checkpoint::load(&*fs, &backend) {
        Some((snap, lsn, compacted)) => {
            *backend.compacted.lock() = compacted.into_iter().collect();
            let t = Table::restore(backend.clone(), opts.limits.clone(), snap)
                .map_err(|e| StorageError::Io(format!("restoring the checkpoint: {e}")))?;
            (t, lsn)
        }
        None => (Table::with_backend(backend.clone(), opts.limits.clone()), 0),
    };
    let mut replay_error = None;
    // Redirects compaction dropped once a segment's marker was written are
    // dropped again when the marker is replayed (same rule as
    // `compact::relocate_segment`): segment → (index, redirect).
    let size = super::engine::segment_size_of(&*fs).unwrap_or(opts.engine.segment_size);
    let mut prunable: BTreeMap<u64, Vec<(Arc<LogIndex>, u64)>> = BTreeMap::new();
    let (engine, report) = Engine::open(fs, opts.engine.clone(), from, |rec| {
        if replay_error.is_some() {
            return;
        }
        match codec::decode_record(&rec.payload) {
            Ok(codec::Record::Op(op)) => {
                if let Err(e) = table.replay(&op, |idx| backend.replayed(idx, &op, rec.lsn)) {
                    replay_error = Some(e.to_string());
                }
            }
            Ok(codec::Record::Relocate(r)) => {
                // A stream deleted since keeps nothing to relocate.
                if let Some(idx) = table.index_of(r.id) {
                    idx.inner.lock().relocated(r.start, r.old_last, rec.lsn);
                    let (seg, prev_seg) = (r.old_last / size, r.first_prev / size);
                    if r.first_prev != NO_PREV
                        && (prev_seg == seg || backend.compacted.lock().contains_key(&prev_seg))
                    {
                        prunable.entry(seg).or_default().push((idx, r.first_prev));
                    }
                }
            }
            Ok(codec::Record::Compacted(seg)) => {
                backend.compacted.lock().insert(seg, rec.lsn);
                for (idx, old) in prunable.remove(&seg).unwrap_or_default() {
                    idx.forget_redirect(old);
                }
            }
            Err(e) => replay_error = Some(format!("record at {}: {e}", rec.lsn)),
        }
    })
    .map_err(storage_error)?;
    if let Some(e) = replay_error {
        engine.close();
        return Err(StorageError::Io(format!("replaying the log: {e}")));
    }
    let _ = backend.engine.set(engine);
    if let Some(t) = &report.torn {
        tracing::warn!(torn = %t, records = report.records, dropped_segments = report.dropped_segments, "recovered the log; truncated a torn tail");
    }
    Ok((table, report))
}

/// Sync modes accepted by `--sync`.
pub fn parse_sync(s: &str) -> Option<SyncMode> {
    match s {
        "data" | "fsync" | "durable" => Some(SyncMode::Data),
        "none" => Some(SyncMode::None),
        _ => None,
    }
}

/// What `weir storage verify` found.
#[derive(Debug)]
pub struct VerifySummary {
    pub report: RecoveryReport,
    /// Streams (live and soft-deleted) the log describes.
    pub streams: usize,
    /// Records that passed their CRCs but do not make sense (undecodable
    /// payload, append to an unknown stream, …).
    pub problems: Vec<String>,
    /// The first segment on disk (above 0 once compaction removed older
    /// ones), and the checkpoint the check started from in that case.
    pub first_segment: u64,
    pub checkpoint: Option<u64>,
}

/// Checks a data directory offline: every record's checksums, that every
/// payload decodes, and that replaying them builds a consistent store. Takes
/// no lock and writes nothing, so it is safe next to a running server (it
/// then checks the prefix written so far). When compaction has removed the
/// first segments, the replay starts from the newest readable checkpoint
/// (which must lie within the log) instead of from nothing.
pub fn verify_dir(dir: &Path) -> Result<VerifySummary, StorageError> {
    let fs = RealFs::new(dir).map_err(|e| StorageError::Io(e.to_string()))?;
    let size = super::engine::segment_size_of(&fs).map_err(storage_error)?;
    let segments = super::engine::list_segments(&fs).map_err(storage_error)?;
    let first_segment = segments.first().copied().unwrap_or(0);
    let memory = Arc::new(crate::memory::MemoryBackend::default());
    let mut problems = Vec::new();
    let (table, from, checkpoint) = if first_segment == 0 {
        (
            Table::with_backend(memory.clone(), TableLimits::default()),
            0,
            None,
        )
    } else {
        let Some((streams, kv, next_id, lsn)) = super::checkpoint::load_plain(&fs) else {
            return Err(storage_error(LogError::MissingSegments(format!(
                "segments 0..{first_segment} were removed by compaction and no checkpoint is readable"
            ))));
        };
        if lsn < first_segment * size {
            return Err(storage_error(LogError::MissingSegments(format!(
                "the newest readable checkpoint ({lsn}) needs segment {} but the log starts at segment {first_segment}",
                lsn / size
            ))));
        }
        let snap = crate::table::TableSnapshot {
            next_id,
            streams: streams
                .into_iter()
                .map(|(meta, state, soft_deleted)| crate::table::StreamSnapshot {
                    meta,
                    state,
                    soft_deleted,
                    index: Arc::new(memory.new_index()),
                })
                .collect(),
            kv,
        };
        let t = Table::restore(memory.clone(), TableLimits::default(), snap)
            .map_err(|e| StorageError::Io(format!("restoring the checkpoint: {e}")))?;
        (t, lsn, Some(lsn))
    };
    let report = super::engine::verify(&fs, from, |rec| match codec::decode_record(&rec.payload) {
        Ok(codec::Record::Op(op)) if rec.lsn >= from => {
            if let Err(e) = table.replay(&op, |idx| {
                let _ = memory.submit(&op, Some(idx));
            }) {
                problems.push(format!("record at {}: {e}", rec.lsn));
            }
        }
        Ok(_) => {}
        Err(e) => problems.push(format!("record at {}: {e}", rec.lsn)),
    })
    .map_err(storage_error)?;
    let (snap, ()) = table.snapshot(|| ());
    Ok(VerifySummary {
        report,
        streams: snap.streams.len(),
        problems,
        first_segment,
        checkpoint,
    })
}

/// Takes a consistent copy of a data directory, safe while the server runs.
pub fn backup_dir(dir: &Path, dest: &Path) -> Result<u64, StorageError> {
    let src = RealFs::new(dir).map_err(|e| StorageError::Io(e.to_string()))?;
    let dst = RealFs::new(dest).map_err(|e| StorageError::Io(e.to_string()))?;
    super::engine::backup(&src, &dst).map_err(storage_error)
}
