//! The inbox transaction around a handler, and the [`Tx`] it hands over.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use futures::future::BoxFuture;
use tokio_postgres::Client;
use weir_layer::problem::{ErrorCode, Problem};

use super::pool::{PgPool, Pooled};
use crate::durable::error::DurableError;
use crate::durable::listener::{
    DurableEvent, DurableListener, DurableOptions, Outcome, Process, run_handler,
};

fn db_problem(what: &str, e: impl std::fmt::Display) -> Problem {
    Problem::new(ErrorCode::StorageUnavailable, format!("{what}: {e}"))
}

/// The open transaction of one delivery: the inbox row is already in it;
/// the handler's writes and outbox events join it. Committed by the
/// listener when the handler returns `Ok`, rolled back otherwise — never
/// commit or roll back yourself.
#[derive(Clone)]
pub struct Tx {
    inner: Arc<TxInner>,
}

struct TxInner {
    conn: Pooled,
    consumer: String,
    event_id: String,
    wrote_outbox: AtomicBool,
}

impl std::fmt::Debug for Tx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx")
            .field("consumer", &self.inner.consumer)
            .field("event_id", &self.inner.event_id)
            .finish_non_exhaustive()
    }
}

impl Tx {
    /// The connection, inside the transaction.
    pub fn client(&self) -> &Client {
        &self.inner.conn
    }

    pub fn consumer(&self) -> &str {
        &self.inner.consumer
    }

    pub fn event_id(&self) -> &str {
        &self.inner.event_id
    }

    /// Queues an event for the [`OutboxRelay`](super::OutboxRelay), in
    /// this transaction; returns its id (its `Nats-Msg-Id` and event id).
    pub async fn outbox(
        &self,
        subject: &str,
        headers: Option<&HeaderMap>,
        payload: Bytes,
    ) -> Result<String, Problem> {
        let id = crate::server::new_id();
        let headers: BTreeMap<String, Vec<String>> =
            crate::durable::dlq::DeadLetter::headers_of(headers);
        let headers = serde_json::to_string(&headers).map_err(|e| db_problem("headers", e))?;
        self.client()
            .execute(
                "INSERT INTO weir_outbox (id, subject, headers, payload) VALUES ($1, $2, $3, $4)",
                &[&id, &subject, &headers, &payload.as_ref()],
            )
            .await
            .map_err(|e| db_problem("outbox insert", e))?;
        self.inner.wrote_outbox.store(true, Ordering::Release);
        Ok(id)
    }

    /// [`outbox`](Self::outbox) with a JSON payload.
    pub async fn outbox_json<T: serde::Serialize + ?Sized>(
        &self,
        subject: &str,
        value: &T,
    ) -> Result<String, Problem> {
        let body = serde_json::to_vec(value)
            .map_err(|e| Problem::new(ErrorCode::InternalError, e.to_string()))?;
        self.outbox(subject, None, Bytes::from(body)).await
    }
}

type TxHandler =
    Arc<dyn Fn(DurableEvent, Tx) -> BoxFuture<'static, Result<(), Problem>> + Send + Sync>;

struct Transactional {
    pool: PgPool,
    handler: TxHandler,
    consumer: tokio::sync::OnceCell<String>,
}

impl Process for Transactional {
    fn prepare<'a>(
        &'a self,
        _js: &'a jetstream::Context,
        consumer: &'a str,
        _opts: &'a DurableOptions,
    ) -> BoxFuture<'a, Result<(), DurableError>> {
        Box::pin(async move {
            let _ = self.consumer.set(consumer.to_owned());
            // Fail at start, not at the first event, when the database or
            // the migration is missing.
            let c = self.pool.get().await?;
            c.execute("SELECT 1 FROM weir_inbox LIMIT 1", &[])
                .await
                .map_err(|e| {
                    DurableError::Database(format!(
                        "weir_inbox unavailable (run `weir migrate up --set events`): {e}"
                    ))
                })?;
            Ok(())
        })
    }

    fn process(&self, ev: DurableEvent, timeout: Duration) -> BoxFuture<'_, Outcome> {
        Box::pin(async move {
            let consumer = self.consumer.get().cloned().unwrap_or_default();
            let conn = match self.pool.get().await {
                Ok(c) => c,
                Err(e) => return Outcome::Failed(db_problem("database", e)),
            };
            if let Err(e) = conn.batch_execute("BEGIN").await {
                conn.discard();
                return Outcome::Failed(db_problem("begin", e));
            }
            let inserted = conn
                .execute(
                    "INSERT INTO weir_inbox (consumer, event_id) VALUES ($1, $2) \
                     ON CONFLICT DO NOTHING",
                    &[&consumer, &ev.event_id],
                )
                .await;
            match inserted {
                Ok(0) => {
                    if conn.batch_execute("ROLLBACK").await.is_err() {
                        conn.discard();
                    }
                    return Outcome::Duplicate("postgres");
                }
                Ok(_) => {}
                Err(e) => {
                    if conn.batch_execute("ROLLBACK").await.is_err() {
                        conn.discard();
                    }
                    return Outcome::Failed(db_problem("inbox insert", e));
                }
            }
            let tx = Tx {
                inner: Arc::new(TxInner {
                    conn,
                    consumer,
                    event_id: ev.event_id.clone(),
                    wrote_outbox: AtomicBool::new(false),
                }),
            };
            let result = run_handler((self.handler)(ev, tx.clone()), timeout).await;
            let c = tx.client();
            match result {
                Ok(()) => match c.batch_execute("COMMIT").await {
                    Ok(()) => {
                        if tx.inner.wrote_outbox.load(Ordering::Acquire) {
                            self.pool.outbox_written();
                        }
                        Outcome::Handled
                    }
                    // If the commit did land, the redelivery finds the
                    // inbox row and is skipped.
                    Err(e) => {
                        tx.inner.conn.poison();
                        Outcome::Failed(db_problem("commit", e))
                    }
                },
                Err(p) => {
                    if c.batch_execute("ROLLBACK").await.is_err() {
                        tx.inner.conn.poison();
                    }
                    Outcome::Failed(p)
                }
            }
        })
    }
}

impl DurableListener {
    /// The handler runs inside a PostgreSQL transaction on `pool` that also
    /// records the event in `weir_inbox` (effectively-once, see
    /// [`crate::durable::pg`]). Needs the `events` migration set.
    pub fn transactional<F, Fut>(self, pool: PgPool, f: F) -> Self
    where
        F: Fn(DurableEvent, Tx) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), Problem>> + Send + 'static,
    {
        self.set_process(Arc::new(Transactional {
            pool,
            handler: Arc::new(move |e, tx| Box::pin(f(e, tx))),
            consumer: tokio::sync::OnceCell::new(),
        }))
    }
}
