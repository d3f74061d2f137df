//! Metric names recorded through the `metrics` facade (exported by the
//! production layer's Prometheus recorder when one is installed). Handles
//! are resolved when an endpoint's stack is built, so install the recorder
//! before starting services.

/// Counter `{service, endpoint, result}` (`ok`, `error`): requests handled.
pub const REQUESTS: &str = "weir_service_requests_total";
/// Histogram `{service, endpoint}`: handler time, seconds.
pub const DURATION: &str = "weir_service_request_duration_seconds";
/// Counter `{service, endpoint, reason}` (`bulkhead`, `rate_limited`,
/// `unauthorized`, `timeout`): requests refused or cut short by middleware
/// (documented with the others in `docs/metrics.md`).
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

// Durable events (`durable` module, docs/events.md).

/// Counter `{duplicate}`: durable publishes acknowledged by a stream.
pub const EVENTS_PUBLISHED: &str = "weir_events_published_total";
/// Counter `{consumer, result}` (`ok`, `retry`, `dead_letter`, `skipped`):
/// durable deliveries by outcome.
pub const EVENTS_HANDLED: &str = "weir_events_handled_total";
/// Histogram `{consumer}`: durable handler time, seconds.
pub const EVENTS_DURATION: &str = "weir_events_handle_duration_seconds";
/// Counter `{consumer}`: deliveries that were redeliveries (count > 1).
pub const EVENTS_REDELIVERIES: &str = "weir_events_redeliveries_total";
/// Counter `{consumer}`: events moved to the dead-letter stream.
pub const EVENTS_DEAD_LETTERED: &str = "weir_events_dead_lettered_total";
/// Counter `{consumer, ledger}` (`kv`, `postgres`): events skipped because
/// their id was already handled.
pub const EVENTS_LEDGER_HITS: &str = "weir_events_ledger_hits_total";
/// Gauge `{consumer}`: messages not yet delivered to the consumer (its
/// lag), polled from the consumer info.
pub const EVENTS_PENDING: &str = "weir_events_consumer_pending";
/// Gauge `{consumer}`: delivered and not yet acknowledged.
pub const EVENTS_ACK_PENDING: &str = "weir_events_consumer_ack_pending";
/// Counter `{result}` (`published`, `error`): outbox rows relayed.
pub const EVENTS_OUTBOX_RELAYED: &str = "weir_events_outbox_relayed_total";
