//! The bridge's metrics, recorded through the `metrics` facade (exported
//! when the process installs a recorder, as `weir bridge` does; no-ops
//! otherwise). All are labelled by `mapping`, the mapping's name.

use std::time::Duration;

/// Counter: events appended to Weir (acknowledged by it).
pub const EVENTS: &str = "weir_bridge_events_total";
/// Counter: append requests acknowledged by Weir.
pub const BATCHES: &str = "weir_bridge_batches_total";
/// Histogram: one append attempt's latency, seconds.
pub const APPEND_DURATION: &str = "weir_bridge_append_duration_seconds";
/// Counter `{reason}` (`connection`, `status`, `resync`): retried appends.
pub const RETRIES: &str = "weir_bridge_retries_total";
/// Counter: redelivered events skipped because Weir already holds them.
pub const SKIPPED: &str = "weir_bridge_skipped_total";
/// Gauge: events in the JetStream consumer not yet delivered to the bridge.
pub const LAG: &str = "weir_bridge_lag_events";

pub(crate) fn appended(mapping: &str, events: usize, took: Duration) {
    let m = mapping.to_owned();
    metrics::counter!(EVENTS, "mapping" => m.clone()).increment(events as u64);
    metrics::counter!(BATCHES, "mapping" => m.clone()).increment(1);
    metrics::histogram!(APPEND_DURATION, "mapping" => m).record(took.as_secs_f64());
}

pub(crate) fn retry(mapping: &str, reason: &'static str) {
    metrics::counter!(RETRIES, "mapping" => mapping.to_owned(), "reason" => reason).increment(1);
}

pub(crate) fn skipped(mapping: &str, n: u64) {
    metrics::counter!(SKIPPED, "mapping" => mapping.to_owned()).increment(n);
}

pub(crate) fn lag(mapping: &str, pending: u64) {
    metrics::gauge!(LAG, "mapping" => mapping.to_owned()).set(pending as f64);
}
