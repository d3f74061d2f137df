//! Timers: periodic handlers with jitter, on every instance or on exactly
//! one (elected through a lease in JetStream KV; when the holder dies its
//! lease expires and another instance takes over).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{OnceCell, watch};

/// Where a timer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerMode {
    /// On every instance.
    EveryInstance,
    /// On exactly one instance of the service at a time; `lease_ttl` is how
    /// long a dead holder blocks the others (default 3 periods, at least 1 s).
    ExactlyOne { lease_ttl: Option<Duration> },
}

impl TimerMode {
    pub const fn exactly_one() -> TimerMode {
        TimerMode::ExactlyOne { lease_ttl: None }
    }
}

pub(crate) struct TimerDef {
    name: String,
    every: Duration,
    mode: TimerMode,
    f: Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>,
}

impl TimerDef {
    pub(crate) fn new<F, Fut>(name: String, every: Duration, mode: TimerMode, f: F) -> TimerDef
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        TimerDef {
            name,
            every,
            mode,
            f: Arc::new(move || Box::pin(f())),
        }
    }
}

/// Why a lease operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LeaseError {
    #[error("lease store: {0}")]
    Store(String),
}

/// A store of named leases with compare-and-set semantics.
#[async_trait::async_trait]
pub trait LeaseStore: Send + Sync {
    /// Takes or renews `key` for `holder` until `ttl` from now. True when
    /// `holder` holds the lease afterwards.
    async fn acquire(&self, key: &str, holder: &str, ttl: Duration) -> Result<bool, LeaseError>;
    /// Gives the lease up if `holder` has it.
    async fn release(&self, key: &str, holder: &str) -> Result<(), LeaseError>;
}

#[derive(Serialize, Deserialize)]
struct LeaseValue {
    holder: String,
    expires_ms: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Leases in a JetStream KV bucket (`weir_leases`, history 1), written with
/// the revision as the compare-and-set token. The expiry is a wall-clock
/// time inside the value: keep hosts' clocks in sync (NTP) to well under
/// the TTL.
pub struct KvLeases {
    js: async_nats::jetstream::Context,
    store: OnceCell<kv::Store>,
}

impl std::fmt::Debug for KvLeases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvLeases").finish_non_exhaustive()
    }
}

pub const LEASE_BUCKET: &str = "weir_leases";

impl KvLeases {
    pub fn new(js: async_nats::jetstream::Context) -> KvLeases {
        KvLeases {
            js,
            store: OnceCell::new(),
        }
    }

    async fn store(&self) -> Result<&kv::Store, LeaseError> {
        self.store
            .get_or_try_init(|| async {
                self.js
                    .create_or_update_key_value(kv::Config {
                        bucket: LEASE_BUCKET.into(),
                        history: 1,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| LeaseError::Store(e.to_string()))
            })
            .await
    }
}

#[async_trait::async_trait]
impl LeaseStore for KvLeases {
    async fn acquire(&self, key: &str, holder: &str, ttl: Duration) -> Result<bool, LeaseError> {
        let store = self.store().await?;
        let value = Bytes::from(
            serde_json::to_vec(&LeaseValue {
                holder: holder.to_owned(),
                expires_ms: now_ms() + ttl.as_millis() as u64,
            })
            .map_err(|e| LeaseError::Store(e.to_string()))?,
        );
        let current = store
            .entry(key)
            .await
            .map_err(|e| LeaseError::Store(e.to_string()))?
            .filter(|e| e.operation == kv::Operation::Put);
        match current {
            None => Ok(store.create(key, value).await.is_ok()),
            Some(e) => {
                let cur: Option<LeaseValue> = serde_json::from_slice(&e.value).ok();
                let free = cur
                    .as_ref()
                    .is_none_or(|c| c.holder == holder || c.expires_ms <= now_ms());
                if !free {
                    return Ok(false);
                }
                Ok(store.update(key, value, e.revision).await.is_ok())
            }
        }
    }

    async fn release(&self, key: &str, holder: &str) -> Result<(), LeaseError> {
        let store = self.store().await?;
        if let Ok(Some(e)) = store.entry(key).await
            && e.operation == kv::Operation::Put
            && serde_json::from_slice::<LeaseValue>(&e.value).is_ok_and(|v| v.holder == holder)
        {
            let _ = store.delete_expect_revision(key, Some(e.revision)).await;
        }
        Ok(())
    }
}

/// Leases in memory (the in-process transport's store), on tokio's clock so
/// tests can run under a paused clock.
#[derive(Debug, Default)]
pub struct MemoryLeases {
    leases: Mutex<HashMap<String, (String, tokio::time::Instant)>>,
}

#[async_trait::async_trait]
impl LeaseStore for MemoryLeases {
    async fn acquire(&self, key: &str, holder: &str, ttl: Duration) -> Result<bool, LeaseError> {
        let now = tokio::time::Instant::now();
        let mut m = self.leases.lock();
        match m.get(key) {
            Some((h, exp)) if h != holder && *exp > now => Ok(false),
            _ => {
                m.insert(key.to_owned(), (holder.to_owned(), now + ttl));
                Ok(true)
            }
        }
    }

    async fn release(&self, key: &str, holder: &str) -> Result<(), LeaseError> {
        let mut m = self.leases.lock();
        if m.get(key).is_some_and(|(h, _)| h == holder) {
            m.remove(key);
        }
        Ok(())
    }
}

fn jittered(every: Duration) -> Duration {
    // ±10% so instances started together do not fire in lockstep.
    let j = every / 10;
    if j.is_zero() {
        return every;
    }
    let n = j.as_nanos() as u64;
    every - j + Duration::from_nanos(rand::Rng::gen_range(&mut rand::thread_rng(), 0..=2 * n))
}

pub(crate) async fn run(
    t: TimerDef,
    service: String,
    instance: String,
    leases: Option<Arc<dyn LeaseStore>>,
    mut stop: watch::Receiver<bool>,
) {
    let key = format!("{service}.{}", t.name);
    let ttl = match t.mode {
        TimerMode::ExactlyOne { lease_ttl } => {
            Some(lease_ttl.unwrap_or((t.every * 3).max(Duration::from_secs(1))))
        }
        TimerMode::EveryInstance => None,
    };
    let runs = metrics::counter!(crate::metrics::TIMER_RUNS, "service" => service.clone(), "timer" => t.name.clone());
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep(jittered(t.every)) => {}
        }
        if let Some(ttl) = ttl {
            let Some(store) = &leases else {
                tracing::error!(timer = %key, "exactly-one timer needs a transport with a lease store");
                break;
            };
            match store.acquire(&key, &instance, ttl).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(timer = %key, error = %e, "lease check failed; skipping this tick");
                    continue;
                }
            }
        }
        runs.increment(1);
        // The handler runs to completion unless a drain stops it.
        tokio::select! {
            _ = stop.changed() => break,
            _ = (t.f)() => {}
        }
    }
    if ttl.is_some()
        && let Some(store) = &leases
    {
        let _ = store.release(&key, &instance).await;
    }
}
