//! Compaction: gives back the space of deleted and expired streams.
//!
//! Once both kept checkpoints lie after a sealed segment, recovery never
//! reads it: everything but stream *data* in it (metadata, producer state,
//! closure, deletes, kv) is captured by both checkpoints. Its live bytes
//! are therefore the data records (create with data, append, relocate) of
//! streams the table still holds, live or soft-deleted for their forks.
//!
//! A run, after each checkpoint:
//!
//! 1. deletes expired streams (expiry is otherwise noticed on access);
//! 2. removes every compacted segment whose compacted marker lies before
//!    the older kept checkpoint — so both checkpoints hold the relocated
//!    positions, and falling back to the older one never needs the file;
//! 3. picks sealed segments wholly before the older checkpoint whose live
//!    bytes are below `max_live_ratio` of the segment size, and copies each
//!    stream's live data out of them through the normal submit path, as
//!    *relocate* records: a stream's records with contiguous positions are
//!    coalesced into one, split at the stream's anchors and at
//!    [`RUN_BYTES`]. The stream's index then points at the copy: the anchor
//!    of the run (if any) and the newest record are replaced, and a
//!    redirect (position of the run's last original record → copy) lets the
//!    next record's back pointer, written before the copy existed, still
//!    resolve. Then a *compacted* marker for the segment is written.
//!
//! Crash safety: the marker is written after all relocations of its
//! segment, so a log that holds it holds them. A crash before the marker
//! leaves the segment uncompacted: the next run scans it again and skips
//! the runs whose redirect already exists. Redirects and the compacted set
//! are saved in checkpoints and rebuilt by replaying relocate and marker
//! records.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;

use super::backend::{ANCHOR_BYTES, LogStorage};
use super::codec::{self, Relocate};
use super::engine::{CommitWaiter, LogError};
use super::frame;
use crate::StorageError;

/// Largest relocate record compaction writes (at most a quarter of the
/// segment size; a single bigger original record is copied whole).
pub const RUN_BYTES: u64 = ANCHOR_BYTES;

/// Compaction settings.
#[derive(Clone, Debug)]
pub struct CompactOptions {
    /// Compact a segment whose live bytes are below this share of the
    /// segment size. The space bound is `1 / max_live_ratio` × live data.
    pub max_live_ratio: f64,
    /// Segments compacted per run at most (bounds the work after one
    /// checkpoint; the rest waits for the next run).
    pub max_segments_per_run: usize,
    /// Segments read to learn their per-stream usage per run at most (the
    /// first runs after a start read the old log once; this spreads it).
    pub max_scans_per_run: usize,
}

impl Default for CompactOptions {
    fn default() -> Self {
        CompactOptions {
            max_live_ratio: 0.5,
            max_segments_per_run: 8,
            max_scans_per_run: 64,
        }
    }
}

/// What one run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// Expired streams deleted.
    pub expired: usize,
    /// Segments whose live data was relocated in this run.
    pub segments_compacted: u64,
    /// Relocate records written, and the data bytes they hold.
    pub runs_relocated: u64,
    pub bytes_relocated: u64,
    /// Segment files removed, and their size.
    pub segments_removed: u64,
    pub bytes_reclaimed: u64,
}

/// Per segment: stream id → bytes of that stream's data records (frames).
pub(crate) type Usage = BTreeMap<u64, HashMap<u64, u64>>;

/// One live data record found in a segment being compacted.
struct Live {
    lsn: u64,
    prev: u64,
    start: u64,
    len: u64,
    json: bool,
    entries: Vec<Bytes>,
}

/// Runs compaction once (see the module docs).
pub async fn run(
    table: &Arc<LogStorage>,
    opts: &CompactOptions,
) -> Result<CompactReport, StorageError> {
    let table = table.clone();
    let opts = opts.clone();
    let (report, wait) = tokio::task::spawn_blocking(move || run_blocking(&table, &opts))
        .await
        .map_err(|e| StorageError::Io(e.to_string()))??;
    for rx in wait {
        crate::log::engine::committed(rx).await.map_err(io)?;
    }
    Ok(report)
}

fn io(e: LogError) -> StorageError {
    StorageError::Io(e.to_string())
}

fn run_blocking(
    table: &LogStorage,
    opts: &CompactOptions,
) -> Result<(CompactReport, Vec<CommitWaiter>), StorageError> {
    let backend = table.backend().clone();
    let engine = backend
        .engine_handle()
        .cloned()
        .ok_or_else(|| StorageError::Unavailable("log not open".into()))?;
    let mut report = CompactReport {
        expired: table.sweep_expired(),
        ..CompactReport::default()
    };
    let ckpts = super::checkpoint::list(&**engine.fs());
    let [.., older, _newer] = ckpts[..] else {
        return Ok((report, Vec::new()));
    };
    let size = engine.segment_size();
    let present = engine.segments().map_err(io)?;

    // Remove segments whose relocations both checkpoints hold.
    let due: Vec<u64> = backend
        .compacted
        .lock()
        .iter()
        .filter(|(_, marker)| **marker < older)
        .map(|(seg, _)| *seg)
        .collect();
    for seg in due {
        if present.binary_search(&seg).is_ok() && (seg + 1) * size <= older {
            let bytes = {
                let _no_walks = backend.walks.write();
                engine.remove_segment(seg).map_err(io)?
            };
            report.segments_removed += 1;
            report.bytes_reclaimed += bytes;
        }
        backend.compacted.lock().remove(&seg);
    }

    // Pick segments wholly before the older checkpoint, least live first.
    let present = engine.segments().map_err(io)?;
    let current = engine.current_segment();
    let compacted: Vec<u64> = backend.compacted.lock().keys().copied().collect();
    let mut candidates = Vec::new();
    let mut scans = 0;
    for &seg in &present {
        if (seg + 1) * size > older || seg >= current || compacted.contains(&seg) {
            continue;
        }
        let known = backend.usage.lock().contains_key(&seg);
        if !known {
            if scans >= opts.max_scans_per_run {
                continue;
            }
            scans += 1;
            match scan_usage(&engine, seg) {
                Ok(usage) => {
                    backend.usage.lock().insert(seg, usage);
                }
                Err(e) => {
                    // Left alone (recovery never reads it; `weir storage
                    // verify` reports it); the others are still compacted.
                    tracing::warn!(seg, error = %e, "not compacting an unreadable segment");
                    continue;
                }
            }
        }
        let live: u64 = backend.usage.lock()[&seg]
            .iter()
            .filter(|(id, _)| table.index_of(**id).is_some())
            .map(|(_, b)| *b)
            .sum();
        if (live as f64) < opts.max_live_ratio * size as f64 {
            candidates.push((live, seg));
        }
    }
    // The least live ones, compacted oldest first: a run's predecessor is
    // then usually done already, so its redirect can be dropped.
    candidates.sort_unstable();
    let mut chosen: Vec<u64> = candidates
        .into_iter()
        .take(opts.max_segments_per_run)
        .map(|(_, seg)| seg)
        .collect();
    chosen.sort_unstable();
    let mut wait = Vec::new();
    for seg in chosen {
        // Relocations bypass the free-space guard (compaction is how space
        // comes back), so keep a segment of headroom: a disk filled by them
        // would stop every write.
        if engine.free_bytes().is_ok_and(|free| free < size) {
            tracing::warn!(seg, "too little free space to relocate; compaction waits");
            break;
        }
        engine.upgrade_format().map_err(io)?;
        relocate_segment(table, &engine, seg, &mut report, &mut wait)?;
        report.segments_compacted += 1;
        backend.usage.lock().remove(&seg);
    }
    // Forget usage of segments that are gone.
    backend
        .usage
        .lock()
        .retain(|seg, _| present.binary_search(seg).is_ok());
    Ok((report, wait))
}

/// Bytes of data records per stream in a sealed segment.
fn scan_usage(engine: &super::engine::Engine, seg: u64) -> Result<HashMap<u64, u64>, StorageError> {
    let mut usage = HashMap::new();
    let mut bad = None;
    engine
        .scan_segment(seg, |lsn, h, payload| {
            match codec::decode_record(&payload) {
                Ok(rec) => {
                    if let Some((id, ..)) = codec::record_data(&rec) {
                        *usage.entry(id).or_insert(0) += frame::frame_len(h.len as usize) as u64;
                    }
                }
                Err(e) => bad = Some(format!("record at {lsn}: {e}")),
            }
        })
        .map_err(io)?;
    match bad {
        Some(b) => Err(StorageError::Io(b)),
        None => Ok(usage),
    }
}

fn relocate_segment(
    table: &LogStorage,
    engine: &super::engine::Engine,
    seg: u64,
    report: &mut CompactReport,
    wait: &mut Vec<CommitWaiter>,
) -> Result<(), StorageError> {
    let backend = table.backend();
    let size = engine.segment_size();
    // A relocate record must fit a segment with room to spare.
    let cap = RUN_BYTES.min(size / 4);
    let done: Vec<u64> = backend.compacted.lock().keys().copied().collect();
    let present = engine.segments().map_err(io)?;
    let mut prune = Vec::new();
    // The live data records, per stream.
    let mut live: BTreeMap<u64, Vec<Live>> = BTreeMap::new();
    let mut bad = None;
    engine
        .scan_segment(seg, |lsn, h, payload| {
            match codec::decode_record(&payload) {
                Ok(rec) => {
                    if let Some((id, start, json, entries)) = codec::record_data(&rec)
                        && table.index_of(id).is_some()
                    {
                        live.entry(id).or_default().push(Live {
                            lsn,
                            prev: h.prev,
                            start,
                            len: entries.iter().map(|e| e.len() as u64).sum(),
                            json,
                            entries: entries.to_vec(),
                        });
                    }
                }
                Err(e) => bad = Some(format!("record at {lsn}: {e}")),
            }
        })
        .map_err(io)?;
    if let Some(b) = bad {
        return Err(StorageError::Io(b));
    }
    for (id, mut records) in live {
        let Some(index) = table.index_of(id) else {
            continue;
        };
        records.sort_by_key(|r| r.start);
        let anchors = index.anchor_starts();
        // Split into runs: contiguous positions, no anchor inside, bounded.
        let mut runs: Vec<Vec<Live>> = Vec::new();
        for r in records {
            let extend = runs.last().is_some_and(|run: &Vec<Live>| {
                let (first, last) = (&run[0], &run[run.len() - 1]);
                last.start + last.len == r.start
                    && anchors.binary_search(&r.start).is_err()
                    && (last.start + last.len - first.start) + r.len <= cap
            });
            if extend {
                if let Some(run) = runs.last_mut() {
                    run.push(r);
                }
            } else {
                runs.push(vec![r]);
            }
        }
        for run in runs {
            let (first, last) = (&run[0], &run[run.len() - 1]);
            let reloc = Relocate {
                id,
                start: first.start,
                json: first.json,
                old_last: last.lsn,
                first_prev: first.prev,
                entries: run.iter().flat_map(|r| r.entries.iter().cloned()).collect(),
            };
            let first_prev = first.prev;
            let bytes: u64 = run.iter().map(|r| r.len).sum();
            let submitted = table.gated(|| -> Result<Option<CommitWaiter>, StorageError> {
                // Deleted meanwhile, or relocated before a crash: nothing to do.
                match table.index_of(id) {
                    Some(cur) if Arc::ptr_eq(&cur, &index) && !index.relocated(reloc.old_last) => {
                        Ok(Some(backend.submit_relocate(&index, &reloc)?.1))
                    }
                    _ => Ok(None),
                }
            })?;
            if let Some(rx) = submitted {
                wait.push(rx);
                report.runs_relocated += 1;
                report.bytes_relocated += bytes;
            }
            // The redirect the run's first record needed (its predecessor
            // run was relocated) is needed by nothing once this run is
            // relocated too — the original first record is unreachable —
            // provided the predecessor's segment is done, so no retry after
            // a crash looks for it: this segment (after its marker), or an
            // earlier one that is compacted or gone.
            if first_prev != frame::NO_PREV && index.relocated(reloc.old_last) {
                let prev_seg = first_prev / size;
                if prev_seg == seg
                    || done.contains(&prev_seg)
                    || present.binary_search(&prev_seg).is_err()
                {
                    prune.push((index.clone(), first_prev));
                }
            }
        }
    }
    let (_, rx) = table.gated(|| backend.submit_compacted(seg))?;
    wait.push(rx);
    let _no_walks = backend.walks.write();
    for (index, old) in prune {
        index.forget_redirect(old);
    }
    Ok(())
}
