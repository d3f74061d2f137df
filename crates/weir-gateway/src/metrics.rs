//! The gateway's own metrics (documented in `docs/metrics.md`, "Gateway").
//! Request counts and latencies per route template come from the
//! production layer's stack; these add what only the gateway knows.

/// Counter `{service, endpoint, outcome}`: calls made for HTTP and
/// WebSocket clients. `outcome` is `ok`, `error` (the service answered a
/// problem), `timeout`, `no_responders` or `failed` (transport).
pub const CALLS: &str = "weir_gateway_calls_total";
/// Histogram `{service, endpoint}`: call latency in seconds.
pub const CALL_DURATION: &str = "weir_gateway_call_duration_seconds";
/// Gauge `{transport}` (`ws`, `sse`): open connections.
pub const CONNECTIONS: &str = "weir_gateway_connections";
/// Gauge `{transport}`: open event subscriptions.
pub const SUBSCRIPTIONS: &str = "weir_gateway_subscriptions";
/// Counter `{transport}`: events delivered to clients.
pub const EVENTS: &str = "weir_gateway_events_total";
/// Counter `{transport}`: connections closed because the client did not
/// keep up (outbound queue full).
pub const SLOW_CLOSED: &str = "weir_gateway_slow_consumers_total";
/// Gauge: services in the catalog after the last discovery.
pub const SERVICES: &str = "weir_gateway_services";

/// Increments a gauge now and decrements it when dropped, so an aborted
/// task or a client gone mid-stream never leaves the gauge high.
pub struct GaugeGuard(metrics::Gauge);

impl GaugeGuard {
    pub fn new(name: &'static str, transport: &'static str) -> GaugeGuard {
        let g = metrics::gauge!(name, "transport" => transport);
        g.increment(1.0);
        GaugeGuard(g)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Registers the help texts (the `# HELP` lines).
pub fn describe() {
    metrics::describe_counter!(
        CALLS,
        "Calls made by the gateway, by service, endpoint and outcome."
    );
    metrics::describe_histogram!(CALL_DURATION, "Gateway call latency in seconds.");
    metrics::describe_gauge!(CONNECTIONS, "Open gateway WebSocket and SSE connections.");
    metrics::describe_gauge!(SUBSCRIPTIONS, "Open gateway event subscriptions.");
    metrics::describe_counter!(EVENTS, "Events delivered to gateway clients.");
    metrics::describe_counter!(
        SLOW_CLOSED,
        "Gateway connections closed because the client did not keep up."
    );
    metrics::describe_gauge!(SERVICES, "Services in the gateway's catalog.");
}
