//! # weir-bridge: NATS subjects → Weir durable streams, exactly once
//!
//! A mapping appends every event published on a NATS subject pattern to a
//! Weir stream through Weir's HTTP API, so HTTP clients can replay service
//! events from any offset. It works against any Weir node and storage
//! backend because it only uses the protocol (PROTOCOL.md §5.2, §5.2.1).
//!
//! ## Source
//! The subject is captured by a JetStream stream (an existing one that
//! covers it, or `WEIR_BRIDGE_<NAME>` created on first start), so events
//! published while the bridge is down are kept. The bridge reads it with a
//! durable pull consumer named after the mapping, acking an event only
//! after the Weir append that carries it was acknowledged.
//!
//! ## Record format
//! JSON mode, one message per event: `{subject, seq, time, headers?,
//! data | data_base64}`; see [`record`].
//!
//! ## Exactly once: where the position lives
//! The Weir stream itself is the bridge's checkpoint. Each record carries
//! `seq`, its JetStream stream sequence. On start (and after any
//! disturbance) the bridge reads the `seq` of the stream's last record and
//! recreates its consumer to deliver from the next sequence. Nothing else
//! has to survive a crash: acks, producer counters and local files can
//! all be lost without losing or repeating an event.
//!
//! Three mechanisms keep appends single:
//! * **Ambiguous failures** (request sent, no answer): the same request is
//!   retried with the same `Producer-Id`/`Producer-Epoch`/`Producer-Seq`,
//!   so Weir answers `204` if the first attempt landed.
//! * **Restarts and concurrent writers**: every append carries
//!   `Stream-Seq` = the batch's first JetStream sequence (zero-padded, so
//!   byte order is numeric order). Weir refuses (`409`) a batch starting at
//!   or before the last one appended by anyone, and the bridge then
//!   re-reads the tail instead of duplicating.
//! * **Fencing**: the producer epoch starts at the wall clock in
//!   milliseconds and, on a first append refused as stale (`403`) or
//!   called a duplicate (`204` to a new request), moves past the server's.
//!   Once an instance has appended in its epoch, a `403` means a newer
//!   instance claimed the producer, and it stops with
//!   [`BridgeError::Fenced`]. A starting instance also replaces the durable
//!   consumer, and the old instance's pull ends with "consumer deleted",
//!   which stops it the same way.
//!
//! Redeliveries at or before the tail are acked and dropped; a
//! redelivery past it (ack wait expired) triggers a resync, so events are
//! appended in JetStream order without gaps.
//!
//! ## Failure handling
//! Connection errors, timeouts, `5xx` and `429` are retried with jittered
//! exponential backoff (the batch stays unacked, so the consumer's
//! `max_ack_pending` applies backpressure to JetStream). A closed stream
//! ([`BridgeError::StreamClosed`]), a deleted one
//! ([`BridgeError::StreamGone`]), bad credentials and other `4xx` stop the
//! mapping with a specific error. A `409` producer sequence gap (Weir lost
//! producer state) starts a new epoch and resyncs.

pub mod bridge;
pub mod config;
pub mod error;
pub mod metrics;
pub mod record;
pub mod sink;
pub mod source;

pub use bridge::run;
pub use config::{BatchConfig, BridgeConfig, Mapping, WeirAuth};
pub use error::BridgeError;
