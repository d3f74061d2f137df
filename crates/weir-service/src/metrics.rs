//! Metric names recorded through the `metrics` facade (exported by the
//! production layer's Prometheus recorder when one is installed). Handles
//! are resolved when an endpoint's stack is built, so install the recorder
//! before starting services.

/// Counter `{service, endpoint, result}` (`ok`, `error`): requests handled.
pub const REQUESTS: &str = "weir_service_requests_total";
/// Histogram `{service, endpoint}`: handler time, seconds.
pub const DURATION: &str = "weir_service_request_duration_seconds";
/// Counter `{service, endpoint, reason}` (`bulkhead`, `rate_limited`,
/// `unauthorized`, `deadline`): requests refused or cut short by middleware.
pub const REJECTIONS: &str = "weir_service_rejections_total";
/// Counter `{subject, result}`: calls made by clients.
pub const CLIENT_CALLS: &str = "weir_service_client_calls_total";
/// Histogram `{subject}`: client-observed call latency, seconds.
pub const CLIENT_DURATION: &str = "weir_service_client_call_duration_seconds";
/// Counter `{subject}`: retries of idempotent calls.
pub const RETRIES: &str = "weir_service_retries_total";
/// Gauge `{subject}`: 0 closed, 1 open, 2 half-open.
pub const BREAKER_STATE: &str = "weir_service_circuit_state";
/// Counter: slow-consumer events (messages dropped by the broker or the
/// in-process transport).
pub const SLOW_CONSUMERS: &str = "weir_service_slow_consumers_total";
/// Counter: NATS disconnections.
pub const DISCONNECTS: &str = "weir_service_disconnects_total";
/// Counter `{service, timer}`: timer runs.
pub const TIMER_RUNS: &str = "weir_service_timer_runs_total";
