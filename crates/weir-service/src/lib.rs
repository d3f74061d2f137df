//! Weir's service framework over NATS.
//!
//! * [`transport`] — the [`Transport`] trait, core NATS and in-process;
//! * [`server`] — services: endpoints on queue groups, listeners, timers,
//!   `$SRV` discovery, deadlines with cancellation, graceful drain;
//! * [`client`] — calls with deadlines, retries of idempotent calls,
//!   circuit breaker, metrics; event publishing;
//! * [`middleware`] — server layers: trace/correlation, metrics, timeout,
//!   bulkhead, auth (the production layer's verifier), per-caller rate limits;
//! * [`contract`] and [`macro@service`] — typed contracts with JSON Schemas;
//! * [`micro`] — ADR-32 types, discovery client, TTL registry;
//! * [`durable`] — durable events on JetStream: families, durable
//!   listeners with retries and a dead-letter stream, replay, dedupe;
//! * [`runner`] — many services in one process, drain on SIGTERM.
//!
//! See `docs/services.md`.

pub mod client;
pub mod context;
pub mod contract;
#[cfg(feature = "jetstream")]
pub mod durable;
pub mod error;
pub mod headers;
pub mod metrics;
pub mod micro;
pub mod middleware;
pub mod runner;
pub mod server;
pub mod timer;
pub mod transport;

pub use client::{BreakerConfig, BreakerLayer, Call, CircuitState, Client, RetryPolicy};
pub use context::{Ctx, TraceContext};
pub use contract::{Contract, ServiceContract};
pub use error::{ServiceError, SetupError};
pub use micro::{Discovery, Registry};
pub use middleware::{Layer, Reply, Request};
pub use runner::Runner;
pub use server::{Delivery, Event, ServiceBuilder, ServiceHandle};
pub use timer::TimerMode;
pub use transport::{InProcess, NatsTransport, Transport};
pub use weir_layer::problem::{ErrorCode, Problem};
pub use weir_service_macros::service;

/// Re-exports the generated code needs (not part of the public API).
#[doc(hidden)]
pub mod __private {
    pub use schemars;
    pub use serde_json;
}
