//! The server's metrics (names in `weir_layer::metrics::names`, documented
//! in docs/metrics.md): appends by result, bytes appended, live readers by
//! mode, streams open.
//!
//! Handles are registered once and kept in `OnceLock`s, so recording on
//! the append path is an atomic add: no label allocation, no registry
//! lookup. They bind to the recorder installed when first used, so
//! `weir_layer::metrics::install()` must run before the first request (it
//! does in `weir serve`); without a recorder every call is a no-op.

use std::sync::{Arc, OnceLock, Weak};

use metrics::{Counter, Gauge};
use weir_layer::metrics::names;
use weir_storage::{AppendAck, AppendOutcome, Storage, StorageError, StreamEventKind};

struct AppendHandles {
    ok: Counter,
    duplicate: Counter,
    rejected: Counter,
    bytes: Counter,
}

fn appends() -> &'static AppendHandles {
    static H: OnceLock<AppendHandles> = OnceLock::new();
    H.get_or_init(|| AppendHandles {
        ok: metrics::counter!(names::APPENDS, "result" => "ok"),
        duplicate: metrics::counter!(names::APPENDS, "result" => "duplicate"),
        rejected: metrics::counter!(names::APPENDS, "result" => "rejected"),
        bytes: metrics::counter!(names::APPEND_BYTES),
    })
}

/// Records one append request (`POST` on a stream, or one item of
/// `/_weir/batch`) that reached storage: `ok` with its bytes, `duplicate`
/// (an idempotent producer retry, or closing an already closed stream), or
/// `rejected` (a protocol rejection or a storage error). Requests refused
/// before storage (malformed headers, oversized messages) only count in
/// `weir_http_requests_total` under their 4xx status.
pub(crate) fn append(outcome: &Result<AppendOutcome, StorageError>) {
    let h = appends();
    match outcome {
        Ok(AppendOutcome {
            result: Ok(AppendAck::Appended { .. }),
            bytes,
            ..
        }) => {
            h.ok.increment(1);
            if *bytes > 0 {
                h.bytes.increment(*bytes);
            }
        }
        Ok(AppendOutcome {
            result: Ok(AppendAck::Duplicate { .. } | AppendAck::AlreadyClosed),
            ..
        }) => h.duplicate.increment(1),
        Ok(AppendOutcome { result: Err(_), .. }) | Err(_) => h.rejected.increment(1),
    }
}

/// The kind of live read.
#[derive(Clone, Copy, Debug)]
pub(crate) enum LiveMode {
    LongPoll,
    Sse,
}

fn live_gauge(mode: LiveMode) -> &'static Gauge {
    static LONG_POLL: OnceLock<Gauge> = OnceLock::new();
    static SSE: OnceLock<Gauge> = OnceLock::new();
    match mode {
        LiveMode::LongPoll => {
            LONG_POLL.get_or_init(|| metrics::gauge!(names::LIVE_READERS, "mode" => "long_poll"))
        }
        LiveMode::Sse => SSE.get_or_init(|| metrics::gauge!(names::LIVE_READERS, "mode" => "sse")),
    }
}

/// Counts one live reader in `weir_live_readers{mode}` while it lives: a
/// long-poll until it answers, an SSE body until it ends or the client goes
/// (the body is dropped then, and so is this guard).
pub(crate) struct LiveReader(LiveMode);

impl LiveReader {
    pub(crate) fn enter(mode: LiveMode) -> LiveReader {
        live_gauge(mode).increment(1.0);
        LiveReader(mode)
    }
}

impl Drop for LiveReader {
    fn drop(&mut self) {
        live_gauge(self.0).decrement(1.0);
    }
}

/// Keeps `weir_streams_open` current: counts the streams once, then follows
/// the storage's lifecycle feed (`Created` +1, `Deleted` −1, expiry
/// included; appends do not wake it),
/// recounting if the feed lagged. Holds the storage only weakly, so the task
/// ends when the storage is dropped. The gauge is process-wide: one server
/// per process (as `weir serve` runs) keeps it exact.
pub(crate) fn spawn_streams_gauge(storage: &Arc<dyn Storage>) {
    let weak = Arc::downgrade(storage);
    let mut events = storage.lifecycle_events();
    let gauge = metrics::gauge!(names::STREAMS_OPEN);
    tokio::spawn(async move {
        let mut open = match count(&weak).await {
            Some(n) => n,
            None => return,
        };
        gauge.set(open as f64);
        loop {
            match events.recv().await {
                Ok(e) => match e.kind {
                    StreamEventKind::Created => open += 1,
                    StreamEventKind::Deleted => open = open.saturating_sub(1),
                    StreamEventKind::Appended | StreamEventKind::Closed => continue,
                },
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    match count(&weak).await {
                        Some(n) => open = n,
                        None => return,
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
            gauge.set(open as f64);
        }
    });
}

/// Streams that exist, by paging through the listing.
async fn count(storage: &Weak<dyn Storage>) -> Option<u64> {
    const PAGE: usize = 1000;
    let storage = storage.upgrade()?;
    let mut n = 0u64;
    let mut after: Option<String> = None;
    loop {
        let page = match storage.list("", after.as_deref(), PAGE).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "counting streams for weir_streams_open failed");
                return Some(n);
            }
        };
        n += page.len() as u64;
        if page.len() < PAGE {
            return Some(n);
        }
        after = page.last().map(|i| i.name.to_string());
    }
}
