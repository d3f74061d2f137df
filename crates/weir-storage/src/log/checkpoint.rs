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
}

#[derive(Serialize, Deserialize)]
struct SavedStream {
    meta: StreamMeta,
    state: StreamState,
    soft_deleted: bool,
    anchors: Vec<(u64, u64)>,
    last: Option<(u64, u64)>,
    since_anchor: u64,
}

fn name(lsn: u64) -> String {
    format!("checkpoint-{lsn:020}.ckpt")
}

fn parse_name(n: &str) -> Option<u64> {
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
    let (snap, lsn) = table.snapshot(|| engine.submitted_lsn());
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
            .map(|s| {
                let saved = s.index.saved();
                SavedStream {
                    meta: s.meta,
                    state: s.state,
                    soft_deleted: s.soft_deleted,
                    anchors: saved.anchors,
                    last: saved.last,
                    since_anchor: saved.since_anchor,
                }
            })
            .collect(),
        kv: snap
            .kv
            .into_iter()
            .map(|(k, v, ver)| (k, base64::engine::general_purpose::STANDARD.encode(&v), ver))
            .collect(),
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

/// The newest readable checkpoint, as a table snapshot and its position.
pub(crate) fn load(fs: &dyn Fs, backend: &LogBackend) -> Option<(TableSnapshot<LogIndex>, u64)> {
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

fn read_one(fs: &dyn Fs, backend: &LogBackend, lsn: u64) -> Option<(TableSnapshot<LogIndex>, u64)> {
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
            })),
        })
        .collect();
    let kv = body
        .kv
        .into_iter()
        .map(|(k, v, ver)| {
            let v = base64::engine::general_purpose::STANDARD.decode(v).ok()?;
            Some((k, Bytes::from(v), ver))
        })
        .collect::<Option<Vec<_>>>()?;
    Some((
        TableSnapshot {
            next_id: body.next_id,
            streams,
            kv,
        },
        lsn,
    ))
}

/// Writes a checkpoint whenever the log has grown by `every_bytes` since
/// the last one (checked every few seconds).
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
                    Ok(lsn) => last = lsn,
                    Err(e) => tracing::warn!(error = %e, "checkpoint failed"),
                }
            }
        }
    })
}
