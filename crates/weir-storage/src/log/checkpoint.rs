//! Checkpoints: the whole stream table and every stream's sparse index at
//! one log position, so a restart loads the checkpoint and replays only the
//! log after it instead of the whole history.
//!
//! File: `checkpoint-{lsn:020}.ckpt`, written atomically (temp file, sync,
//! rename, directory sync) *after* the log is durable up to `lsn`:
//!
//! ```text
//! "WEIRCKPT 1 <crc32 of body, 8 hex digits>\n" body
//! ```
//!
//! The body is JSON (stream metadata must stay readable across versions).
//! It also carries each stream's compaction redirects and the segments
//! compacted but not yet removed (see [`super::compact`]).
//! The newest checkpoint that parses and matches its CRC wins; a damaged one
//! falls back to the previous, then to a full replay. Two are kept.

use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use weir_core::state::{StreamMeta, StreamState};

use super::backend::{LogBackend, LogIndex, LogStorage, SavedIndex};
use super::engine::Engine;
use super::fs::Fs;
use crate::StorageError;
use crate::table::{StreamSnapshot, TableSnapshot};

const MAGIC: &str = "WEIRCKPT 1";
const KEEP: usize = 2;

#[derive(Serialize, Deserialize)]
struct Body {
    lsn: u64,
    next_id: u64,
    streams: Vec<SavedStream>,
    kv: Vec<(String, String, u64)>,
    /// Compacted segments not yet removed: (segment, marker position).
    #[serde(default)]
    compacted: Vec<(u64, u64)>,
}

#[derive(Serialize, Deserialize)]
struct SavedStream {
    meta: StreamMeta,
    state: StreamState,
    soft_deleted: bool,
    anchors: Vec<(u64, u64)>,
    last: Option<(u64, u64)>,
    since_anchor: u64,
    /// Compaction redirects: (old LSN, relocated LSN).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    redirects: Vec<(u64, u64)>,
}

pub(crate) fn name(lsn: u64) -> String {
    format!("checkpoint-{lsn:020}.ckpt")
}

pub(crate) fn parse_name(n: &str) -> Option<u64> {
    n.strip_prefix("checkpoint-")?
        .strip_suffix(".ckpt")?
        .parse()
        .ok()
}

/// Writes a checkpoint of `table` and returns its position.
pub async fn write(table: &LogStorage) -> Result<u64, StorageError> {
    let backend = table.backend().clone();
    let engine = backend
        .engine_handle()
        .cloned()
        .ok_or_else(|| StorageError::Unavailable("log not open".into()))?;
    // Indexes are copied while submissions are paused: read later, they
    // could point at records after the checkpoint's position, which a crash
    // may take back.
    let (snap, (lsn, compacted, saved)) = table.snapshot_with(|streams| {
        let compacted: Vec<(u64, u64)> = backend
            .compacted
            .lock()
            .iter()
            .map(|(a, b)| (*a, *b))
            .collect();
        let saved: Vec<SavedIndex> = streams.iter().map(|s| s.index.saved()).collect();
        (engine.submitted_lsn(), compacted, saved)
    });
    engine
        .wait_durable(lsn)
        .await
        .map_err(|e| StorageError::Io(e.to_string()))?;
    let body = Body {
        lsn,
        next_id: snap.next_id,
        streams: snap
            .streams
            .into_iter()
            .zip(saved)
            .map(|(s, saved)| SavedStream {
                meta: s.meta,
                state: s.state,
                soft_deleted: s.soft_deleted,
                anchors: saved.anchors,
                last: saved.last,
                since_anchor: saved.since_anchor,
                redirects: saved.redirects,
            })
            .collect(),
        kv: snap
            .kv
            .into_iter()
            .map(|(k, v, ver)| (k, base64::engine::general_purpose::STANDARD.encode(&v), ver))
            .collect(),
        compacted,
    };
    let fs = engine.fs().clone();
    tokio::task::spawn_blocking(move || -> Result<(), StorageError> {
        let json = serde_json::to_vec(&body).map_err(|e| StorageError::Io(e.to_string()))?;
        let mut file = format!("{MAGIC} {:08x}\n", crc32fast::hash(&json)).into_bytes();
        file.extend_from_slice(&json);
        fs.write_atomic(&name(body.lsn), &file)
            .map_err(|e| StorageError::Io(e.to_string()))?;
        // Keep the newest KEEP checkpoints.
        let mut all: Vec<u64> = fs
            .list()
            .map_err(|e| StorageError::Io(e.to_string()))?
            .iter()
            .filter_map(|n| parse_name(n))
            .collect();
        all.sort_unstable();
        for old in all.iter().rev().skip(KEEP) {
            let _ = fs.remove(&name(*old));
        }
        fs.sync_dir().map_err(|e| StorageError::Io(e.to_string()))
    })
    .await
    .map_err(|e| StorageError::Io(e.to_string()))??;
    Ok(lsn)
}

/// A loaded checkpoint: the table, its position, the compacted segments.
pub(crate) type Loaded = (TableSnapshot<LogIndex>, u64, Vec<(u64, u64)>);

/// The positions of the checkpoints in `fs`, oldest first.
pub fn list(fs: &dyn Fs) -> Vec<u64> {
    let mut all: Vec<u64> = fs
        .list()
        .unwrap_or_default()
        .iter()
        .filter_map(|n| parse_name(n))
        .collect();
    all.sort_unstable();
    all
}

/// The newest readable checkpoint, as a table snapshot and its position.
pub(crate) fn load(fs: &dyn Fs, backend: &LogBackend) -> Option<Loaded> {
    let mut all: Vec<u64> = fs
        .list()
        .ok()?
        .iter()
        .filter_map(|n| parse_name(n))
        .collect();
    all.sort_unstable();
    for lsn in all.into_iter().rev() {
        match read_one(fs, backend, lsn) {
            Some(x) => return Some(x),
            None => tracing::warn!(lsn, "ignoring an unreadable checkpoint"),
        }
    }
    None
}

/// The stream table a checkpoint holds, without indexes (for `weir
/// storage verify`): (metadata, state, soft-deleted) per stream, the kv
/// space, the next id, and the checkpoint's position.
pub(crate) type Plain = (
    Vec<(StreamMeta, StreamState, bool)>,
    Vec<(String, Bytes, u64)>,
    u64,
    u64,
);

/// The newest readable checkpoint, without indexes.
pub(crate) fn load_plain(fs: &dyn Fs) -> Option<Plain> {
    for lsn in list(fs).into_iter().rev() {
        if let Some(body) = read_body(fs, lsn) {
            let kv = decode_kv(body.kv)?;
            let streams = body
                .streams
                .into_iter()
                .map(|s| (s.meta, s.state, s.soft_deleted))
                .collect();
            return Some((streams, kv, body.next_id, lsn));
        }
    }
    None
}

fn decode_kv(kv: Vec<(String, String, u64)>) -> Option<Vec<(String, Bytes, u64)>> {
    kv.into_iter()
        .map(|(k, v, ver)| {
            let v = base64::engine::general_purpose::STANDARD.decode(v).ok()?;
            Some((k, Bytes::from(v), ver))
        })
        .collect()
}

fn read_body(fs: &dyn Fs, lsn: u64) -> Option<Body> {
    let raw = fs.read(&name(lsn)).ok()?;
    let nl = raw.iter().position(|b| *b == b'\n')?;
    let head = std::str::from_utf8(&raw[..nl]).ok()?;
    let crc = head.strip_prefix(MAGIC)?.trim();
    let json = &raw[nl + 1..];
    if u32::from_str_radix(crc, 16).ok()? != crc32fast::hash(json) {
        return None;
    }
    let body: Body = serde_json::from_slice(json).ok()?;
    if body.lsn != lsn {
        return None;
    }
    Some(body)
}

fn read_one(fs: &dyn Fs, backend: &LogBackend, lsn: u64) -> Option<Loaded> {
    let body = read_body(fs, lsn)?;
    let streams = body
        .streams
        .into_iter()
        .map(|s| StreamSnapshot {
            meta: s.meta,
            state: s.state,
            soft_deleted: s.soft_deleted,
            index: Arc::new(backend.restored_index(SavedIndex {
                anchors: s.anchors,
                last: s.last,
                since_anchor: s.since_anchor,
                redirects: s.redirects,
            })),
        })
        .collect();
    let kv = decode_kv(body.kv)?;
    Some((
        TableSnapshot {
            next_id: body.next_id,
            streams,
            kv,
        },
        lsn,
        body.compacted,
    ))
}

/// Writes a checkpoint whenever the log has grown by `every_bytes` since
/// the last one (checked every few seconds), and runs compaction after
/// each one.
pub fn spawn_periodic(table: Arc<LogStorage>, every_bytes: u64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Some(engine) = table.backend().engine_handle().cloned() else {
            return;
        };
        let mut last = engine.durable_lsn();
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            let now: u64 = Engine::durable_lsn(&engine);
            if now.saturating_sub(last) >= every_bytes {
                match write(&table).await {
                    Ok(lsn) => {
                        last = lsn;
                        let opts = super::compact::CompactOptions::default();
                        match super::compact::run(&table, &opts).await {
                            Ok(r) if r != super::compact::CompactReport::default() => {
                                tracing::info!(?r, "compacted the log");
                            }
                            Ok(_) => {}
                            Err(e) => tracing::warn!(error = %e, "compaction failed"),
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "checkpoint failed"),
                }
            }
        }
    })
}
