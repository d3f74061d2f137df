//! A small pool of dedicated connections: a transaction needs a connection
//! of its own for its whole length, which a shared pipelined client cannot
//! give.

use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_postgres::{Client, NoTls};

use crate::durable::error::DurableError;

/// Up to `size` connections to one database, opened on demand and
/// replaced when they break.
#[derive(Clone)]
pub struct PgPool {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    idle: Mutex<Vec<Client>>,
    slots: Arc<Semaphore>,
    /// Woken after a transaction wrote outbox rows (the relay waits on it).
    pub(crate) outbox: Notify,
}

impl std::fmt::Debug for PgPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgPool").finish_non_exhaustive()
    }
}

/// A connection taken from the pool; goes back when dropped (unless broken).
pub struct Pooled {
    client: Option<Client>,
    /// Set when the session state is unknown (a failed COMMIT or ROLLBACK
    /// on a connection that is still open): never reused.
    poisoned: std::sync::atomic::AtomicBool,
    pool: Arc<Inner>,
    _permit: OwnedSemaphorePermit,
}

impl std::fmt::Debug for Pooled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pooled").finish_non_exhaustive()
    }
}

impl std::ops::Deref for Pooled {
    type Target = Client;
    fn deref(&self) -> &Client {
        // Present from construction until drop.
        match &self.client {
            Some(c) => c,
            None => unreachable!("pooled client taken before drop"),
        }
    }
}

impl Pooled {
    /// Keeps the connection out of the pool (its session state is unknown).
    pub(crate) fn discard(mut self) {
        self.client = None;
    }

    /// Like [`discard`](Self::discard) for a connection still shared.
    pub(crate) fn poison(&self) {
        self.poisoned
            .store(true, std::sync::atomic::Ordering::Release);
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(c) = self.client.take()
            && !c.is_closed()
            && !self.poisoned.load(std::sync::atomic::Ordering::Acquire)
        {
            self.pool.idle.lock().push(c);
        }
    }
}

impl PgPool {
    /// A pool for `url` (`postgres://…` or `key=value` form) of at most
    /// `size` connections; nothing is opened until needed.
    pub fn new(url: impl Into<String>, size: usize) -> PgPool {
        PgPool {
            inner: Arc::new(Inner {
                url: url.into(),
                idle: Mutex::new(Vec::new()),
                slots: Arc::new(Semaphore::new(size.max(1))),
                outbox: Notify::new(),
            }),
        }
    }

    /// A connection (waits while all are in use).
    pub async fn get(&self) -> Result<Pooled, DurableError> {
        let permit = self
            .inner
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| DurableError::Database(e.to_string()))?;
        let idle = {
            let mut idle = self.inner.idle.lock();
            idle.retain(|c| !c.is_closed());
            idle.pop()
        };
        let client = match idle {
            Some(c) => c,
            None => {
                let (c, conn) = tokio_postgres::connect(&self.inner.url, NoTls)
                    .await
                    .map_err(|e| DurableError::Database(e.to_string()))?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "PostgreSQL connection ended");
                    }
                });
                c
            }
        };
        Ok(Pooled {
            client: Some(client),
            poisoned: std::sync::atomic::AtomicBool::new(false),
            pool: self.inner.clone(),
            _permit: permit,
        })
    }

    pub(crate) fn outbox_written(&self) {
        self.inner.outbox.notify_waiters();
    }

    pub(crate) fn outbox_notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.inner.outbox.notified()
    }
}
