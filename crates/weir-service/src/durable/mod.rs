//! Durable events on JetStream: at-least-once delivery with bounded
//! retries, a dead-letter stream, replay, and the dedupe layers that turn
//! it into effectively-once handling (see `docs/events.md`).
//!
//! Core NATS listeners ([`crate::Delivery`]) lose events published while no
//! instance is subscribed; durable listeners read a JetStream stream through
//! a durable pull consumer, so an event survives restarts and crashes and is
//! handled until a handler acknowledges it or it is dead-lettered.
//!
//! ```no_run
//! # async fn demo(transport: std::sync::Arc<dyn weir_service::Transport>) -> Result<(), Box<dyn std::error::Error>> {
//! use weir_service::durable::{DurableListener, DurableOptions, DurablePublisher, Family};
//! use weir_service::{Problem, ServiceBuilder};
//!
//! let js = transport.jetstream().ok_or("no JetStream")?;
//! // One stream per family: `orders` holds `orders.>`.
//! let orders = Family::new("orders");
//! orders.ensure(&js).await?;
//!
//! let service = ServiceBuilder::new("billing", "1.0.0")
//!     .durable(
//!         DurableListener::new("invoice", orders.clone(), "orders.placed")
//!             .options(DurableOptions::default().max_deliver(5))
//!             .handler(|ev| async move {
//!                 let order: serde_json::Value = ev.json()?;
//!                 // … create the invoice (idempotently or not: the ledger
//!                 // skips an event id already handled) …
//!                 let _ = order;
//!                 Ok::<(), Problem>(())
//!             }),
//!     )
//!     .start(transport.clone())
//!     .await?;
//!
//! let publisher = DurablePublisher::new(js);
//! let ack = publisher.publish_json("orders.placed", "order-42", &serde_json::json!({"id": 42})).await?;
//! assert!(!ack.duplicate);
//! # let _ = service; Ok(()) }
//! ```
//!
//! With the `postgres` feature, [`pg`] gives handlers the open transaction
//! their effects, the inbox record and outbox events commit in.

mod dlq;
mod error;
mod family;
mod ledger;
mod listener;
#[cfg(feature = "postgres")]
pub mod pg;
mod publish;
mod replay;
mod retry;

pub use dlq::{Attempt, DEAD_LETTER_STREAM, DeadLetter, DeadLetters};
pub use error::DurableError;
pub use family::Family;
pub use ledger::Ledger;
pub use listener::{DurableEvent, DurableListener, DurableOptions};
pub use publish::{DurablePublisher, Published};
pub use replay::{StartAt, read_family, stream_of};
pub use retry::is_retryable;

/// Header carrying an event's logical id: stable across DLQ replays, used
/// by the consumer-side ledger and inbox (unlike `Nats-Msg-Id`, which a
/// replay must change or the broker's duplicate window drops it).
pub const EVENT_ID: &str = "Weir-Event-Id";
/// JetStream's publish-side dedupe header.
pub const MSG_ID: &str = "Nats-Msg-Id";
/// Set on a message republished from the dead-letter stream: the DLQ
/// sequence it came from.
pub const REPLAYED_FROM: &str = "Weir-Replayed-From";
