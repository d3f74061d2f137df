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

use std::collections::VecDeque;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::codec::{self, kind_and_key};
use super::engine::{Engine, EngineOptions, LogError, RecoveryReport, SyncMode};
use super::frame::NO_PREV;
use super::fs::{Fs, RealFs};
use crate::StorageError;
use crate::backend::{Backend, Op, Ticket};
use crate::chunk::{Chunk, ChunkBody};
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
}

/// What a checkpoint saves of an index.
pub(crate) struct SavedIndex {
    /// (start position, LSN) anchors.
    pub anchors: Vec<(u64, u64)>,
    /// Newest data record: (start position, LSN).
    pub last: Option<(u64, u64)>,
    pub since_anchor: u64,
}

impl LogIndex {
    /// The part of the index a checkpoint saves (hot data is not saved).
    pub(crate) fn saved(&self) -> SavedIndex {
        let i = self.inner.lock();
        SavedIndex {
            anchors: i.anchors.clone(),
            last: i.last,
            since_anchor: i.since_anchor,
        }
    }
}

impl Drop for LogIndex {
    fn drop(&mut self) {
        self.hot_used
            .fetch_sub(self.inner.get_mut().hot_bytes, Ordering::Relaxed);
    }
}

impl IndexInner {
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
                ..IndexInner::default()
            }),
            hot_used: self.hot_used.clone(),
        }
    }

    /// What recovery found, for logs and `weir storage verify`.
    pub fn engine_handle(&self) -> Option<&Arc<Engine>> {
        self.engine.get()
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
        let engine = self.engine()?;
        if !matches!(op, Op::Delete { .. } | Op::KvDelete { .. }) {
            self.check_space(engine)?;
        }
        let payload = codec::encode(op);
        let (kind, key) = kind_and_key(op);
        let data = op_chunk(op);
        let (lsn, rx) = match (&data, index) {
            (Some((start, body)), Some(index)) => {
                // Chain to the stream's previous data record, then index
                // this one — under the index lock so the chain is ordered.
                let mut inner = index.inner.lock();
                let prev = inner.last.map_or(NO_PREV, |(_, l)| l);
                let (lsn, rx) = engine
                    .submit(kind, key, prev, &payload)
                    .map_err(storage_error)?;
                let chunk = Chunk {
                    start: *start,
                    body: body.compact(),
                };
                inner.add(*start, body.len(), lsn, Some(chunk), &self.hot_used);
                (lsn, rx)
            }
            _ => engine
                .submit(kind, key, NO_PREV, &payload)
                .map_err(storage_error)?,
        };
        let _ = lsn; // Positions are recorded in the index above.
        Ok(Some(Box::pin(async move {
            match rx.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(storage_error(e)),
                Err(_) => Err(StorageError::Io("the log committer stopped".into())),
            }
        })))
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
        // Cold: positioned reads off the async workers.
        let index = index.clone();
        let engine = self.engine()?.clone();
        tokio::task::spawn_blocking(move || cold_chunks(&engine, &index, pos, end))
            .await
            .map_err(|e| StorageError::Io(e.to_string()))?
    }

    fn used_bytes(&self) -> u64 {
        self.engine.get().map_or(0, |e| e.durable_lsn())
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
    let (from_lsn, upper) = {
        let inner = index.inner.lock();
        let i = inner.anchors.partition_point(|(start, _)| *start <= pos);
        if i == 0 {
            return Ok(Vec::new());
        }
        let from = inner.anchors[i - 1].1;
        // Walk back from the record just before the next anchor, or from
        // the newest record.
        let upper = match inner.anchors.get(i) {
            Some(&(_, next)) => Some((next, true)),
            None => inner.last.map(|(_, l)| (l, false)),
        };
        (from, upper)
    };
    let Some((mut lsn, skip_first)) = upper else {
        return Ok(Vec::new());
    };
    let mut records = Vec::new();
    let mut first = true;
    loop {
        let (h, payload) = engine.read(lsn).map_err(storage_error)?;
        if !(first && skip_first) {
            records.push(payload);
        }
        first = false;
        if lsn == from_lsn || h.prev == NO_PREV {
            break;
        }
        if h.prev >= lsn {
            return Err(StorageError::Io(format!("broken record chain at {lsn}")));
        }
        lsn = h.prev;
    }
    records.reverse();
    let mut out = Vec::with_capacity(records.len());
    for payload in records {
        let op = codec::decode(&payload).map_err(|e| StorageError::Io(e.to_string()))?;
        if let Some((start, body)) = op_chunk(&op) {
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
        _lock: lock,
    });
    let (table, from) = match super::checkpoint::load(&*fs, &backend) {
        Some((snap, lsn)) => {
            let t = Table::restore(backend.clone(), opts.limits.clone(), snap)
                .map_err(|e| StorageError::Io(format!("restoring the checkpoint: {e}")))?;
            (t, lsn)
        }
        None => (Table::with_backend(backend.clone(), opts.limits.clone()), 0),
    };
    let mut replay_error = None;
    let (engine, report) = Engine::open(fs, opts.engine.clone(), from, |rec| {
        if replay_error.is_some() {
            return;
        }
        match codec::decode(&rec.payload) {
            Ok(op) => {
                if let Err(e) = table.replay(&op, |idx| backend.replayed(idx, &op, rec.lsn)) {
                    replay_error = Some(e.to_string());
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
}

/// Checks a data directory offline: every record's checksums, that every
/// payload decodes, and that replaying them builds a consistent store. Takes
/// no lock and writes nothing, so it is safe next to a running server (it
/// then checks the prefix written so far).
pub fn verify_dir(dir: &Path) -> Result<VerifySummary, StorageError> {
    let fs = RealFs::new(dir).map_err(|e| StorageError::Io(e.to_string()))?;
    let memory = Arc::new(crate::memory::MemoryBackend::default());
    let table = Table::with_backend(memory.clone(), TableLimits::default());
    let mut problems = Vec::new();
    let report = super::engine::verify(&fs, |rec| match codec::decode(&rec.payload) {
        Ok(op) => {
            if let Err(e) = table.replay(&op, |idx| {
                let _ = memory.submit(&op, Some(idx));
            }) {
                problems.push(format!("record at {}: {e}", rec.lsn));
            }
        }
        Err(e) => problems.push(format!("record at {}: {e}", rec.lsn)),
    })
    .map_err(storage_error)?;
    let (snap, ()) = table.snapshot(|| ());
    Ok(VerifySummary {
        report,
        streams: snap.streams.len(),
        problems,
    })
}

/// Takes a consistent copy of a data directory, safe while the server runs.
pub fn backup_dir(dir: &Path, dest: &Path) -> Result<u64, StorageError> {
    let src = RealFs::new(dir).map_err(|e| StorageError::Io(e.to_string()))?;
    let dst = RealFs::new(dest).map_err(|e| StorageError::Io(e.to_string()))?;
    super::engine::backup(&src, &dst).map_err(storage_error)
}
