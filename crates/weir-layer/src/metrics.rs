//! Prometheus metrics: the recorder, the text rendering for `/metrics`, and
//! the registry of metric names (documented in `docs/metrics.md`).
//!
//! Components record through the `metrics` facade (`metrics::counter!` …)
//! with the names in [`names`], so they need nothing from this module at
//! run time and cost nothing when no recorder is installed (tests, the
//! NATS service in a process that does not export). The exporter is built
//! without its HTTP listener: `/metrics` is a route of the server (or of its
//! admin listener), rendered by [`render`], so it shares the server's TLS,
//! auth and port instead of opening another one.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Every metric name Weir records. Label sets are fixed per name and their
/// values bounded (route templates, not paths; policy names from config).
pub mod names {
    /// Counter `{route, method, status}`: HTTP requests answered.
    pub const HTTP_REQUESTS: &str = "weir_http_requests_total";
    /// Histogram `{route, method}`: time to the response head, seconds.
    pub const HTTP_DURATION: &str = "weir_http_request_duration_seconds";
    /// Gauge: requests being handled (response head not yet sent).
    pub const HTTP_IN_FLIGHT: &str = "weir_http_requests_in_flight";
    /// Counter `{result}` (`ok`, `duplicate`, `rejected`): append requests.
    pub const APPENDS: &str = "weir_appends_total";
    /// Counter: payload bytes durably appended.
    pub const APPEND_BYTES: &str = "weir_append_bytes_total";
    /// Gauge `{mode}` (`long_poll`, `sse`): parked live readers.
    pub const LIVE_READERS: &str = "weir_live_readers";
    /// Gauge: streams that exist (not deleted or expired).
    pub const STREAMS_OPEN: &str = "weir_streams_open";
    /// Histogram: one storage sync (`fdatasync` of a group commit), seconds.
    pub const STORAGE_SYNC_DURATION: &str = "weir_storage_sync_duration_seconds";
    /// Histogram: records made durable by one sync.
    pub const STORAGE_SYNC_BATCH: &str = "weir_storage_sync_batch_size";
    /// Counter: bytes of log segments removed by compaction.
    pub const STORAGE_RECLAIMED_BYTES: &str = "weir_storage_reclaimed_bytes_total";
    /// Counter `{policy}`: requests refused by a rate limit.
    pub const RATELIMIT_REJECTIONS: &str = "weir_ratelimit_rejections_total";
    /// Counter `{mode}`: checks answered by the fallback while Redis was down.
    pub const RATELIMIT_FALLBACKS: &str = "weir_ratelimit_fallbacks_total";
    /// Gauge `{backend}`: 1 while the rate-limit backend answers.
    pub const RATELIMIT_BACKEND_UP: &str = "weir_ratelimit_backend_up";
    /// Gauge `{dependency}` (`postgres`): 1 while the dependency answers
    /// the readiness check, 0 while it does not.
    pub const DEPENDENCY_UP: &str = "weir_dependency_up";
    /// Counter `{method, reason}`: refused credentials.
    pub const AUTH_FAILURES: &str = "weir_auth_failures_total";
    /// Counter `{result}` (`ok`, `error`): JWKS fetches.
    pub const JWKS_FETCHES: &str = "weir_jwks_fetches_total";
    /// Counter `{reason}` (`requests`, `body_bytes`, `live_readers`):
    /// requests refused with `503 overloaded` by load shedding.
    pub const SHED: &str = "weir_shed_total";
    /// Counter `{result}` (`applied`, `refused`): configuration reloads
    /// (SIGHUP or `POST /admin/v1/reload`).
    pub const CONFIG_RELOADS: &str = "weir_config_reloads_total";

    /// `(name, kind, help)` of every metric, for descriptions and docs.
    pub const ALL: &[(&str, &str, &str)] = &[
        (
            HTTP_REQUESTS,
            "counter",
            "HTTP requests answered, by route template, method and status.",
        ),
        (
            HTTP_DURATION,
            "histogram",
            "Seconds from request to response head, by route template and method.",
        ),
        (
            HTTP_IN_FLIGHT,
            "gauge",
            "HTTP requests whose response head has not been sent yet.",
        ),
        (APPENDS, "counter", "Append requests, by result."),
        (APPEND_BYTES, "counter", "Payload bytes durably appended."),
        (LIVE_READERS, "gauge", "Parked live readers, by mode."),
        (STREAMS_OPEN, "gauge", "Streams that exist."),
        (
            STORAGE_SYNC_DURATION,
            "histogram",
            "Seconds per storage sync (group commit).",
        ),
        (
            STORAGE_SYNC_BATCH,
            "histogram",
            "Records made durable per storage sync.",
        ),
        (
            STORAGE_RECLAIMED_BYTES,
            "counter",
            "Bytes of log segment files removed by compaction.",
        ),
        (
            RATELIMIT_REJECTIONS,
            "counter",
            "Requests refused by a rate limit, by policy.",
        ),
        (
            RATELIMIT_FALLBACKS,
            "counter",
            "Rate-limit checks answered by the fallback while Redis was unreachable, by fail mode.",
        ),
        (
            RATELIMIT_BACKEND_UP,
            "gauge",
            "1 while the rate-limit backend answers, 0 while it is unreachable.",
        ),
        (
            DEPENDENCY_UP,
            "gauge",
            "1 while a dependency (the PostgreSQL store) answers the readiness check, 0 while it does not.",
        ),
        (
            AUTH_FAILURES,
            "counter",
            "Refused credentials, by method and reason.",
        ),
        (JWKS_FETCHES, "counter", "JWKS fetches, by result."),
        (
            SHED,
            "counter",
            "Requests refused by load shedding (503 overloaded), by exhausted budget.",
        ),
        (
            CONFIG_RELOADS,
            "counter",
            "Configuration reloads (SIGHUP or the admin API), by result.",
        ),
    ];
}

/// Latency buckets (seconds): 0.5 ms … 30 s, for sub-millisecond appends up
/// to long-polls that answer at their timeout.
pub const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Batch-size buckets (records per sync).
pub const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];

/// Installing the recorder failed (another recorder is already global).
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot install the Prometheus recorder: {0}")]
pub struct MetricsError(String);

static HANDLE: OnceLock<Result<PrometheusHandle, MetricsError>> = OnceLock::new();

/// Installs the global Prometheus recorder once (later calls return the
/// same handle) and starts its upkeep thread, which drains histogram
/// samples every 5 s so memory stays flat even if nobody scrapes.
pub fn install() -> Result<&'static PrometheusHandle, MetricsError> {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), DURATION_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(names::STORAGE_SYNC_BATCH.into()),
                        BATCH_BUCKETS,
                    )
                })
                .map_err(|e| MetricsError(e.to_string()))?
                .install_recorder()
                .map_err(|e| MetricsError(e.to_string()))?;
            describe();
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("weir-metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                })
                .map_err(|e| MetricsError(e.to_string()))?;
            Ok(handle)
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Registers help texts (the `# HELP` lines).
fn describe() {
    for (name, kind, help) in names::ALL {
        match *kind {
            "counter" => metrics::describe_counter!(*name, *help),
            "gauge" => metrics::describe_gauge!(*name, *help),
            _ => metrics::describe_histogram!(*name, *help),
        }
    }
}

/// The Prometheus text exposition (empty if [`install`] was never called).
pub fn render() -> String {
    match HANDLE.get() {
        Some(Ok(h)) => h.render(),
        _ => String::new(),
    }
}

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_are_documented() {
        let doc = include_str!("../../../docs/metrics.md");
        for (name, kind, _) in names::ALL {
            assert!(
                doc.contains(&format!("`{name}`")),
                "docs/metrics.md lacks {name}"
            );
            assert!(matches!(*kind, "counter" | "gauge" | "histogram"));
            assert!(name.starts_with("weir_"));
        }
    }
}
