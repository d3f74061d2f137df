//! The memory backend: every stream in RAM.
//!
//! It is the reference implementation of the [`Storage`] contract — the
//! embedded log and JetStream backends are tested against the same suites —
//! and the store for tests and `--storage memory` development servers.
//!
//! Concurrency: a registry `RwLock` maps names to streams (write-locked only
//! to create or delete); each stream has its own `Mutex` over its chunks and
//! writer state, held for the few microseconds an append or a read takes.
//! Forks hold an `Arc` to their source, so a soft-deleted source stays
//! readable through its forks and is freed when the last fork goes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{broadcast, watch};
use weir_core::append::{self, AppendDecision, AppendRequest, Body, Commit};
use weir_core::fork::{self, ForkError, Remaining};
use weir_core::offset::ReadFrom;
use weir_core::state::{ForkOrigin, StreamMeta, StreamState};
use weir_core::{ContentType, Expiry, Offset, StreamName};

use crate::{
    AppendAck, AppendOutcome, CreateOutcome, CreateRequest, ReadChunk, Storage, StorageError,
    StreamEvent, StreamEventKind, StreamInfo, Tail, TailWatch,
};

/// Settings of the memory backend.
#[derive(Clone, Debug, Default)]
pub struct MemoryOptions {
    /// Refuse appends once this many bytes are held (`None`: unlimited).
    pub max_bytes: Option<u64>,
}

/// All streams in RAM.
pub struct MemoryStorage {
    registry: RwLock<BTreeMap<StreamName, Slot>>,
    next_id: AtomicU64,
    used_bytes: AtomicU64,
    events: broadcast::Sender<StreamEvent>,
    kv: Mutex<BTreeMap<String, (Bytes, u64)>>,
    opts: MemoryOptions,
}

#[derive(Clone)]
enum Slot {
    Live(Arc<Stream>),
    /// Deleted by its owner, kept for its forks' reads.
    SoftDeleted(Arc<Stream>),
}

struct Stream {
    meta: StreamMeta,
    source: Option<Arc<Stream>>,
    data: Mutex<Data>,
    tail_tx: watch::Sender<Tail>,
    /// Forks (live or soft-deleted) that read from this stream.
    forks: AtomicUsize,
    last_access_ms: AtomicI64,
}

struct Data {
    state: StreamState,
    chunks: Vec<Chunk>,
}

/// One append's data.
struct Chunk {
    start: u64,
    body: ChunkBody,
}

enum ChunkBody {
    Bytes(Bytes),
    Messages(Vec<Bytes>),
}

impl Chunk {
    fn len(&self) -> u64 {
        match &self.body {
            ChunkBody::Bytes(b) => b.len() as u64,
            ChunkBody::Messages(m) => m.iter().map(|b| b.len() as u64).sum(),
        }
    }
    fn end(&self) -> u64 {
        self.start + self.len()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Default for MemoryStorage {
    fn default() -> Self {
        MemoryStorage::new(MemoryOptions::default())
    }
}

impl MemoryStorage {
    /// An empty store.
    pub fn new(opts: MemoryOptions) -> MemoryStorage {
        let (events, _) = broadcast::channel(4096);
        MemoryStorage {
            registry: RwLock::new(BTreeMap::new()),
            next_id: AtomicU64::new(1),
            used_bytes: AtomicU64::new(0),
            events,
            kv: Mutex::new(BTreeMap::new()),
            opts,
        }
    }

    /// Bytes of stream data held.
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes.load(Ordering::Relaxed)
    }

    fn emit(&self, name: &StreamName, kind: StreamEventKind, tail: Offset) {
        let _ = self.events.send(StreamEvent {
            name: name.clone(),
            kind,
            tail,
        });
    }

    /// The live stream at `name`, expiring it first if its time has come.
    fn live(&self, name: &StreamName) -> Result<Arc<Stream>, StorageError> {
        let now = now_ms();
        {
            let reg = self.registry.read();
            match reg.get(name) {
                None => return Err(StorageError::NotFound),
                Some(Slot::SoftDeleted(_)) => return Err(StorageError::Gone),
                Some(Slot::Live(s)) if !s.expired(now) => return Ok(s.clone()),
                Some(Slot::Live(_)) => {}
            }
        }
        let mut reg = self.registry.write();
        if let Some(Slot::Live(s)) = reg.get(name).cloned()
            && s.expired(now)
        {
            self.remove_locked(&mut reg, &s);
        }
        Err(StorageError::NotFound)
    }

    /// Deletes `s` (which must be live in `reg`): soft if forks read from it.
    fn remove_locked(&self, reg: &mut BTreeMap<StreamName, Slot>, s: &Arc<Stream>) {
        let tail = s.tail_offset();
        if s.forks.load(Ordering::Acquire) > 0 {
            reg.insert(s.meta.name.clone(), Slot::SoftDeleted(s.clone()));
        } else {
            reg.remove(&s.meta.name);
            self.free(reg, s);
        }
        s.tail_tx.send_modify(|t| t.gone = true);
        self.emit(&s.meta.name, StreamEventKind::Deleted, tail);
    }

    /// Releases a fully deleted stream's data and its hold on its source,
    /// cascading up the fork chain through soft-deleted sources.
    fn free(&self, reg: &mut BTreeMap<StreamName, Slot>, s: &Arc<Stream>) {
        let bytes: u64 = s.data.lock().chunks.iter().map(Chunk::len).sum();
        self.used_bytes.fetch_sub(bytes, Ordering::Relaxed);
        let Some(src) = &s.source else { return };
        if src.forks.fetch_sub(1, Ordering::AcqRel) == 1
            && let Some(Slot::SoftDeleted(slot)) = reg.get(&src.meta.name)
            && Arc::ptr_eq(slot, src)
        {
            reg.remove(&src.meta.name);
            self.free(reg, src);
        }
    }

    fn check_budget(&self, extra: u64) -> Result<(), StorageError> {
        if let Some(max) = self.opts.max_bytes
            && self.used_bytes.load(Ordering::Relaxed) + extra > max
        {
            return Err(StorageError::Full(format!(
                "memory budget of {max} bytes exhausted"
            )));
        }
        Ok(())
    }

    fn create_locked(
        &self,
        reg: &mut BTreeMap<StreamName, Slot>,
        req: CreateRequest,
    ) -> Result<CreateOutcome, StorageError> {
        let now = now_ms();
        match reg.get(&req.name).cloned() {
            Some(Slot::SoftDeleted(_)) => return Err(StorageError::PathBlocked),
            Some(Slot::Live(s)) if !s.expired(now) => {
                s.same_config(&req, &self.source_ct(reg, &req))?;
                return Ok(CreateOutcome {
                    created: false,
                    info: s.info(),
                });
            }
            Some(Slot::Live(s)) => self.remove_locked(reg, &s),
            None => {}
        }

        // Resolve the fork source, if any.
        let mut source = None;
        let mut origin = None;
        let mut content_type = req
            .content_type
            .clone()
            .unwrap_or_else(ContentType::default_type);
        let mut expiry = req.expiry;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut lineage = StreamMeta::root_lineage(id);
        if let Some(f) = &req.fork {
            let src = match reg.get(&f.source) {
                None => return Err(StorageError::SourceNotFound),
                Some(Slot::SoftDeleted(_)) => return Err(StorageError::SourceGone),
                Some(Slot::Live(s)) if s.expired(now) => return Err(StorageError::SourceNotFound),
                Some(Slot::Live(s)) => s.clone(),
            };
            match &req.content_type {
                Some(ct) if !ct.matches(&src.meta.content_type) => {
                    return Err(StorageError::ForkContentType);
                }
                _ => content_type = src.meta.content_type.clone(),
            }
            let src_tail = src.data.lock().state.tail;
            let anchor = match f.offset {
                Some(o) if o.pos > src_tail => return Err(ForkError::BeyondTail.into()),
                Some(o) if !src.meta.owns(o, src_tail) => {
                    return Err(ForkError::ForeignOffset.into());
                }
                Some(o) => o,
                None if f.sub_offset > 0 => return Err(ForkError::SubOffsetWithoutOffset.into()),
                None => src.meta.offset_at(src_tail),
            };
            let remaining = src.remaining_after(anchor.pos, src_tail);
            let position = fork::resolve(anchor.pos, f.sub_offset, &remaining)?;
            expiry = Expiry::for_fork(req.expiry, src.meta.expiry);
            lineage = StreamMeta::fork_lineage(&src.meta.lineage, position, id);
            origin = Some(ForkOrigin {
                source: f.source.clone(),
                source_id: src.meta.id,
                offset: anchor,
                sub_offset: f.sub_offset,
                position,
            });
            source = Some(src);
        }

        let entries = match req.body {
            Body::Empty => Vec::new(),
            Body::Bytes(b) if b.is_empty() => Vec::new(),
            Body::Bytes(b) => vec![b],
            Body::Json(Ok(m)) => m,
            Body::Json(Err(e)) => return Err(e.into()),
        };
        let commit = Commit {
            entries,
            close: req.closed,
            producer: None,
            closed_by: None,
            stream_seq: None,
        };
        self.check_budget(commit.len())?;

        let meta = StreamMeta {
            id,
            name: req.name.clone(),
            content_type,
            expiry,
            fork: origin,
            lineage,
            created_at_ms: now,
        };
        let start = meta.own_start();
        let (tail_tx, _) = watch::channel(Tail {
            pos: start,
            closed: false,
            gone: false,
        });
        let stream = Arc::new(Stream {
            meta,
            source: source.clone(),
            data: Mutex::new(Data {
                state: StreamState::new(start, now),
                chunks: Vec::new(),
            }),
            tail_tx,
            forks: AtomicUsize::new(0),
            last_access_ms: AtomicI64::new(now),
        });
        stream.commit(&commit, &self.used_bytes);
        if let Some(src) = &source {
            src.forks.fetch_add(1, Ordering::AcqRel);
        }
        reg.insert(req.name.clone(), Slot::Live(stream.clone()));
        self.emit(&req.name, StreamEventKind::Created, stream.tail_offset());
        Ok(CreateOutcome {
            created: true,
            info: stream.info(),
        })
    }

    /// The content type a fork request would inherit (for idempotency checks).
    fn source_ct(
        &self,
        reg: &BTreeMap<StreamName, Slot>,
        req: &CreateRequest,
    ) -> Option<ContentType> {
        let f = req.fork.as_ref()?;
        match reg.get(&f.source) {
            Some(Slot::Live(s) | Slot::SoftDeleted(s)) => Some(s.meta.content_type.clone()),
            None => None,
        }
    }
}

impl Stream {
    fn expired(&self, now: i64) -> bool {
        self.meta
            .expiry
            .is_expired(self.last_access_ms.load(Ordering::Relaxed), now)
    }

    fn touch(&self, now: i64) {
        if self.meta.expiry.is_sliding() {
            self.last_access_ms.fetch_max(now, Ordering::Relaxed);
        }
    }

    fn tail_offset(&self) -> Offset {
        self.meta.offset_at(self.data.lock().state.tail)
    }

    fn info(&self) -> StreamInfo {
        let d = self.data.lock();
        self.info_locked(&d)
    }

    fn info_locked(&self, d: &Data) -> StreamInfo {
        StreamInfo {
            id: self.meta.id,
            name: self.meta.name.clone(),
            content_type: self.meta.content_type.clone(),
            expiry: self.meta.expiry,
            expires_at_ms: self
                .meta
                .expiry
                .deadline_ms(self.last_access_ms.load(Ordering::Relaxed)),
            tail: self.meta.offset_at(d.state.tail),
            closed: d.state.closed,
            created_at_ms: self.meta.created_at_ms,
        }
    }

    /// Whether an existing stream matches a create request (PUT idempotency).
    fn same_config(
        &self,
        req: &CreateRequest,
        inherited_ct: &Option<ContentType>,
    ) -> Result<(), StorageError> {
        let want_ct = req
            .content_type
            .clone()
            .or_else(|| inherited_ct.clone())
            .unwrap_or_else(ContentType::default_type);
        if !want_ct.matches(&self.meta.content_type) {
            return Err(StorageError::ConfigMismatch("content type differs".into()));
        }
        let want_expiry = match (&req.fork, &self.meta.fork) {
            (Some(_), Some(_)) if req.expiry == Expiry::Never => self.meta.expiry,
            _ => req.expiry,
        };
        if want_expiry != self.meta.expiry {
            return Err(StorageError::ConfigMismatch("TTL or expiry differs".into()));
        }
        if req.closed != self.data.lock().state.closed {
            return Err(StorageError::ConfigMismatch(
                "closure status differs".into(),
            ));
        }
        match (&req.fork, &self.meta.fork) {
            (None, None) => Ok(()),
            (Some(f), Some(o))
                if f.source == o.source
                    && f.offset.is_none_or(|off| off == o.offset)
                    && f.sub_offset == o.sub_offset =>
            {
                Ok(())
            }
            _ => Err(StorageError::ConfigMismatch("fork origin differs".into())),
        }
    }

    /// Appends a decided commit's data and state. Caller holds no lock.
    fn commit(&self, c: &Commit, used: &AtomicU64) {
        let mut d = self.data.lock();
        self.commit_locked(&mut d, c, used);
    }

    fn commit_locked(&self, d: &mut Data, c: &Commit, used: &AtomicU64) {
        let start = d.state.tail;
        if !c.entries.is_empty() {
            let body = if self.meta.content_type.is_json() {
                ChunkBody::Messages(c.entries.clone())
            } else if c.entries.len() == 1 {
                ChunkBody::Bytes(c.entries[0].clone())
            } else {
                ChunkBody::Bytes(Bytes::from(c.entries.concat()))
            };
            d.chunks.push(Chunk { start, body });
        }
        used.fetch_add(c.len(), Ordering::Relaxed);
        c.apply(&mut d.state);
        let (pos, closed) = (d.state.tail, d.state.closed);
        self.tail_tx.send_modify(|t| {
            t.pos = pos;
            t.closed = closed;
        });
    }

    /// What follows `pos` up to the next data boundary, as this stream sees
    /// it (inherited chunks end at the fork point).
    fn remaining_after(&self, pos: u64, view_end: u64) -> Remaining {
        if let (Some(src), Some(f)) = (&self.source, &self.meta.fork)
            && pos < f.position
        {
            return src.remaining_after(pos, f.position.min(view_end));
        }
        let d = self.data.lock();
        let end = view_end.min(d.state.tail);
        let i = d.chunks.partition_point(|c| c.end() <= pos);
        let Some(c) = d.chunks.get(i).filter(|c| c.start <= pos && pos < end) else {
            return Remaining::Nothing;
        };
        match &c.body {
            ChunkBody::Bytes(_) => Remaining::Bytes(c.end().min(end) - pos),
            ChunkBody::Messages(ms) => {
                let mut at = c.start;
                let mut lens = Vec::new();
                for m in ms {
                    let l = m.len() as u64;
                    if at >= pos && at + l <= end {
                        lens.push(l);
                    }
                    at += l;
                }
                Remaining::Messages(lens)
            }
        }
    }

    /// Whether `pos` falls on a message boundary (JSON streams only need it).
    fn is_boundary(&self, pos: u64) -> bool {
        if !self.meta.content_type.is_json() {
            return true;
        }
        if let (Some(src), Some(f)) = (&self.source, &self.meta.fork)
            && pos < f.position
        {
            return src.is_boundary(pos);
        }
        let d = self.data.lock();
        let i = d.chunks.partition_point(|c| c.end() <= pos);
        let Some(c) = d.chunks.get(i).filter(|c| c.start <= pos) else {
            return true;
        };
        let ChunkBody::Messages(ms) = &c.body else {
            return true;
        };
        let mut at = c.start;
        for m in ms {
            if at == pos {
                return true;
            }
            at += m.len() as u64;
        }
        at == pos
    }

    /// Collects data from `pos` up to `cap` (exclusive) into `out`, spending
    /// `budget` bytes (at least one piece is always taken). Returns the new
    /// position.
    fn collect(&self, mut pos: u64, cap: u64, budget: &mut usize, out: &mut Vec<Bytes>) -> u64 {
        if let (Some(src), Some(f)) = (&self.source, &self.meta.fork)
            && pos < f.position
        {
            let inherited_end = cap.min(f.position);
            pos = src.collect(pos, inherited_end, budget, out);
            if pos < inherited_end {
                return pos;
            }
        }
        let d = self.data.lock();
        let end = cap.min(d.state.tail);
        let mut i = d.chunks.partition_point(|c| c.end() <= pos);
        while pos < end {
            let Some(c) = d.chunks.get(i) else { break };
            match &c.body {
                ChunkBody::Bytes(b) => {
                    if *budget == 0 && !out.is_empty() {
                        break;
                    }
                    let from = usize::try_from(pos - c.start).unwrap_or(usize::MAX);
                    let to = usize::try_from(c.end().min(end) - c.start).unwrap_or(usize::MAX);
                    let take = (to - from).min((*budget).max(1));
                    out.push(b.slice(from..from + take));
                    *budget = budget.saturating_sub(take);
                    pos += take as u64;
                }
                ChunkBody::Messages(ms) => {
                    let mut at = c.start;
                    for m in ms {
                        let l = m.len() as u64;
                        if at >= pos && at + l <= end {
                            if m.len() > *budget && !out.is_empty() {
                                return pos;
                            }
                            out.push(m.clone());
                            *budget = budget.saturating_sub(m.len());
                            pos = at + l;
                        }
                        at += l;
                    }
                    if pos < c.end().min(end) {
                        // Budget ran out inside the chunk.
                        return pos;
                    }
                }
            }
            if *budget == 0 {
                break;
            }
            i += 1;
        }
        pos
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    async fn create(&self, req: CreateRequest) -> Result<CreateOutcome, StorageError> {
        let mut reg = self.registry.write();
        self.create_locked(&mut reg, req)
    }

    async fn append(
        &self,
        name: &StreamName,
        req: AppendRequest,
    ) -> Result<AppendOutcome, StorageError> {
        let s = self.live(name)?;
        let now = now_ms();
        let mut d = s.data.lock();
        let decision = append::decide(&s.meta, &d.state, &req);
        let mut bytes = 0;
        let result = match decision {
            Ok(AppendDecision::Commit(c)) => {
                if let Err(e) = self.check_budget(c.len()) {
                    drop(d);
                    return Err(e);
                }
                bytes = c.len();
                let had_data = !c.is_empty();
                let producer = c.producer.as_ref().map(|(_, p)| *p);
                s.commit_locked(&mut d, &c, &self.used_bytes);
                s.touch(now);
                let tail = s.meta.offset_at(d.state.tail);
                if had_data {
                    self.emit(name, StreamEventKind::Appended, tail);
                }
                if c.close {
                    self.emit(name, StreamEventKind::Closed, tail);
                }
                Ok(AppendAck::Appended { producer })
            }
            Ok(AppendDecision::Duplicate { producer, .. }) => Ok(AppendAck::Duplicate { producer }),
            Ok(AppendDecision::AlreadyClosed) => {
                s.touch(now);
                Ok(AppendAck::AlreadyClosed)
            }
            Err(rejection) => Err(rejection),
        };
        Ok(AppendOutcome {
            result,
            tail: s.meta.offset_at(d.state.tail),
            closed: d.state.closed,
            bytes,
        })
    }

    async fn delete(&self, name: &StreamName) -> Result<(), StorageError> {
        let s = self.live(name)?;
        let mut reg = self.registry.write();
        match reg.get(name) {
            Some(Slot::Live(cur)) if Arc::ptr_eq(cur, &s) => {
                self.remove_locked(&mut reg, &s);
                Ok(())
            }
            Some(Slot::SoftDeleted(_)) => Err(StorageError::Gone),
            _ => Err(StorageError::NotFound),
        }
    }

    async fn head(&self, name: &StreamName) -> Result<StreamInfo, StorageError> {
        Ok(self.live(name)?.info())
    }

    async fn read(
        &self,
        name: &StreamName,
        from: ReadFrom,
        max_bytes: usize,
    ) -> Result<ReadChunk, StorageError> {
        let s = self.live(name)?;
        s.touch(now_ms());
        let tail = s.data.lock().state.tail;
        let start = match from {
            ReadFrom::Start => 0,
            ReadFrom::Now => tail,
            ReadFrom::At(o) => {
                if !s.meta.owns(o, tail) || !s.is_boundary(o.pos) {
                    return Err(StorageError::OffsetInvalid);
                }
                o.pos
            }
        };
        let mut pieces = Vec::new();
        let mut budget = max_bytes;
        let next = if start < tail {
            s.collect(start, tail, &mut budget, &mut pieces)
        } else {
            start
        };
        let d = s.data.lock();
        let info = s.info_locked(&d);
        Ok(ReadChunk {
            start: s.meta.offset_at(start),
            next: s.meta.offset_at(next),
            up_to_date: next >= d.state.tail,
            info,
            pieces,
        })
    }

    async fn watch(&self, name: &StreamName) -> Result<TailWatch, StorageError> {
        Ok(self.live(name)?.tail_tx.subscribe())
    }

    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StreamInfo>, StorageError> {
        let now = now_ms();
        let reg = self.registry.read();
        let start = match after {
            Some(a) if a >= prefix => std::ops::Bound::Excluded(a),
            _ => std::ops::Bound::Included(prefix),
        };
        let mut out = Vec::new();
        for (name, slot) in reg.range::<str, _>((start, std::ops::Bound::Unbounded)) {
            if !name.has_prefix(prefix) {
                break;
            }
            if let Slot::Live(s) = slot
                && !s.expired(now)
            {
                out.push(s.info());
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    fn events(&self) -> broadcast::Receiver<StreamEvent> {
        self.events.subscribe()
    }

    async fn kv_get(&self, key: &str) -> Result<Option<(Bytes, u64)>, StorageError> {
        Ok(self.kv.lock().get(key).cloned())
    }

    async fn kv_put(
        &self,
        key: &str,
        value: Bytes,
        expected: Option<u64>,
    ) -> Result<u64, StorageError> {
        let mut kv = self.kv.lock();
        let current = kv.get(key).map(|(_, v)| *v);
        if current != expected {
            return Err(StorageError::VersionConflict);
        }
        let next = current.unwrap_or(0) + 1;
        kv.insert(key.to_owned(), (value, next));
        Ok(next)
    }

    async fn kv_delete(&self, key: &str) -> Result<(), StorageError> {
        self.kv.lock().remove(key);
        Ok(())
    }

    async fn kv_list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        Ok(self
            .kv
            .lock()
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect())
    }
}
