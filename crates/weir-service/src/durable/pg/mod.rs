//! Effectively-once handling with PostgreSQL.
//!
//! A transactional listener ([`DurableListener::transactional`](super::DurableListener::transactional))
//! runs each delivery in one database transaction: it first inserts
//! `(consumer, event_id)` into `weir_inbox` — a conflict means the event
//! was already handled and committed, so it is acked without running the
//! handler — then the handler does its own writes through the same
//! [`Tx`], and may queue events in `weir_outbox` with [`Tx::outbox`].
//! Inbox row, effects and outbox rows commit or roll back together; the
//! ack comes after the commit. A crash anywhere before the commit leaves
//! nothing; a crash after it leaves the inbox row that makes the
//! redelivery a no-op.
//!
//! The [`OutboxRelay`] publishes outbox rows with `Nats-Msg-Id` = the row
//! id and deletes them after the stream acknowledged: a relay dying
//! between the two republishes the row with the same id, which the broker
//! drops inside the family's duplicate window.
//!
//! ```no_run
//! # async fn demo(transport: std::sync::Arc<dyn weir_service::Transport>) -> Result<(), Box<dyn std::error::Error>> {
//! use weir_service::durable::pg::{OutboxRelay, PgPool};
//! use weir_service::durable::{DurableListener, Family};
//! use weir_service::{ErrorCode, Problem, ServiceBuilder};
//!
//! let db = PgPool::new("postgres://app@127.0.0.1/app", 8);
//! let js = transport.jetstream().ok_or("no JetStream")?;
//! let _relay = OutboxRelay::spawn(db.clone(), js);
//! let svc = ServiceBuilder::new("stock", "1.0.0")
//!     .durable(DurableListener::new("reserve", Family::new("orders"), "orders.placed")
//!         .transactional(db.clone(), |ev, tx| async move {
//!             let db_err = |e: tokio_postgres::Error| Problem::new(ErrorCode::StorageUnavailable, e.to_string());
//!             tx.client().execute("UPDATE stock SET reserved = reserved + 1", &[]).await.map_err(db_err)?;
//!             tx.outbox_json("stock.reserved", &serde_json::json!({"order": ev.event_id})).await?;
//!             Ok(())
//!         }))
//!     .start(transport.clone())
//!     .await?;
//! # let _ = svc; Ok(()) }
//! ```

mod inbox;
mod migrations;
mod pool;
mod relay;

pub use inbox::Tx;
pub use migrations::MIGRATIONS;
pub use pool::{PgPool, Pooled};
pub use relay::{OutboxRelay, relay_once};
