//! The outbox relay: committed outbox rows to JetStream.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use tokio::task::JoinHandle;

use super::pool::PgPool;
use crate::durable::error::DurableError;
use crate::durable::publish::DurablePublisher;

/// Publishes up to `limit` outbox rows, oldest first, and deletes those
/// the stream acknowledged; returns how many were published. Rows are
/// locked (`FOR UPDATE SKIP LOCKED`) so relays in several instances share
/// the work instead of publishing the same row side by side.
pub async fn relay_once(
    pool: &PgPool,
    js: &jetstream::Context,
    limit: i64,
) -> Result<usize, DurableError> {
    let db = |e: tokio_postgres::Error| DurableError::Database(e.to_string());
    let c = pool.get().await?;
    c.batch_execute("BEGIN").await.map_err(db)?;
    let rows = match c
        .query(
            "SELECT seq, id, subject, headers, payload FROM weir_outbox \
             ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
            &[&limit],
        )
        .await
    {
        Ok(r) => r,
        Err(e) => {
            if c.batch_execute("ROLLBACK").await.is_err() {
                c.discard();
            }
            return Err(db(e));
        }
    };
    let publisher = DurablePublisher::new(js.clone());
    let mut done: Vec<i64> = Vec::new();
    let mut failure = None;
    for r in &rows {
        let seq: i64 = r.get(0);
        let id: String = r.get(1);
        let subject: String = r.get(2);
        let headers: String = r.get(3);
        let payload: Vec<u8> = r.get(4);
        let mut h = HeaderMap::new();
        if let Ok(map) = serde_json::from_str::<BTreeMap<String, Vec<String>>>(&headers) {
            for (k, vs) in map {
                for v in vs {
                    h.append(k.as_str(), v.as_str());
                }
            }
        }
        // The row id is the broker dedupe id: publishing it again after a
        // crash before the delete below stores nothing new.
        match publisher
            .publish(&subject, &id, h, Bytes::from(payload))
            .await
        {
            Ok(_) => done.push(seq),
            Err(e) => {
                // Keep order: stop at the first row that cannot go out.
                failure = Some(e);
                break;
            }
        }
    }
    let deleted = c
        .execute("DELETE FROM weir_outbox WHERE seq = ANY($1)", &[&done])
        .await;
    let commit = c.batch_execute("COMMIT").await;
    let ok = metrics::counter!(crate::metrics::EVENTS_OUTBOX_RELAYED, "result" => "published");
    ok.increment(done.len() as u64);
    if deleted.is_err() || commit.is_err() {
        c.discard();
    }
    deleted.map_err(db)?;
    commit.map_err(db)?;
    if let Some(e) = failure {
        metrics::counter!(crate::metrics::EVENTS_OUTBOX_RELAYED, "result" => "error").increment(1);
        return Err(e);
    }
    Ok(done.len())
}

/// A background task relaying the outbox: woken by transactions of this
/// process that wrote outbox rows, and polling every `interval` for rows
/// other processes wrote (or that failed to go out). Stops when dropped.
#[derive(Debug)]
pub struct OutboxRelay {
    task: JoinHandle<()>,
}

impl OutboxRelay {
    /// Relays with a 500 ms poll interval.
    pub fn spawn(pool: PgPool, js: jetstream::Context) -> OutboxRelay {
        OutboxRelay::spawn_with(pool, js, Duration::from_millis(500))
    }

    pub fn spawn_with(pool: PgPool, js: jetstream::Context, interval: Duration) -> OutboxRelay {
        let task = tokio::spawn(async move {
            let mut failures = 0u32;
            loop {
                let woken = pool.outbox_notified();
                tokio::pin!(woken);
                woken.as_mut().enable();
                let wait = match relay_once(&pool, &js, 256).await {
                    Ok(n) if n > 0 => {
                        failures = 0;
                        continue;
                    }
                    Ok(_) => {
                        failures = 0;
                        interval
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "outbox relay failed; retrying");
                        failures = failures.saturating_add(1);
                        crate::error::backoff(interval, Duration::from_secs(10), failures)
                    }
                };
                tokio::select! {
                    _ = woken => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        });
        OutboxRelay { task }
    }
}

impl Drop for OutboxRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
