//! The Redis backend: one atomic Lua script per check, so several Weir
//! nodes share each limit exactly (no read-modify-write races, one round
//! trip). The script reads Redis's own `TIME`, so node clocks do not need to
//! agree. State is one string key per limited key, expiring when the key is
//! fully replenished.
//!
//! Availability: the connection is a lazily connecting, self-reconnecting
//! `ConnectionManager`. A failed or slow call (over `timeout`) marks the
//! backend down for `retry_after`, during which checks go straight to the
//! caller's fallback instead of paying the timeout on every request.

use std::time::Duration;

use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::gcra::{self, Decision, Limit};
use crate::clock::SharedClock;

/// `KEYS[1]`: the limit key. `ARGV`: interval µs, tolerance µs, cost.
/// Returns `{1, diff}` (allowed; new TAT − now) or `{0, ahead}` (rejected;
/// current TAT − now), matching `gcra::allowed` / `gcra::rejected`.
pub const GCRA_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
local new_tat = tat + interval * cost
local diff = new_tat - now
if diff > tolerance then
  return {0, tat - now}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil(diff / 1000) + 1)
return {1, diff}
";

/// Why a Redis check did not produce a decision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedisError {
    #[error("redis is marked down after a recent failure")]
    Down,
    #[error("redis call timed out")]
    Timeout,
    #[error("redis error: {0}")]
    Redis(String),
}

#[derive(Debug)]
struct State {
    up: bool,
    down_until: Option<Duration>,
    last_error: Option<String>,
}

pub struct RedisBackend {
    conn: ConnectionManager,
    script: redis::Script,
    prefix: String,
    timeout: Duration,
    retry_after: Duration,
    state: Mutex<State>,
    clock: SharedClock,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// Connects lazily (this never blocks and succeeds while Redis is down;
    /// it must be called inside a tokio runtime).
    pub fn new(
        url: &str,
        prefix: impl Into<String>,
        timeout: Duration,
        retry_after: Duration,
        clock: SharedClock,
    ) -> Result<RedisBackend, RedisError> {
        let client = redis::Client::open(url).map_err(|e| RedisError::Redis(e.to_string()))?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(retry_after);
        let conn = ConnectionManager::new_lazy_with_config(client, cfg)
            .map_err(|e| RedisError::Redis(e.to_string()))?;
        Ok(RedisBackend {
            conn,
            script: redis::Script::new(GCRA_LUA),
            prefix: prefix.into(),
            timeout,
            retry_after,
            state: Mutex::new(State {
                up: true,
                down_until: None,
                last_error: None,
            }),
            clock,
        })
    }

    /// Whether the last call succeeded (true before the first call).
    pub fn is_up(&self) -> bool {
        self.state.lock().up
    }

    pub fn last_error(&self) -> Option<String> {
        self.state.lock().last_error.clone()
    }

    /// One atomic check.
    pub async fn check(&self, key: &str, limit: &Limit, cost: u64) -> Result<Decision, RedisError> {
        let now = self.clock.now();
        if self.state.lock().down_until.is_some_and(|t| now < t) {
            return Err(RedisError::Down);
        }
        let mut conn = self.conn.clone();
        let mut inv = self.script.prepare_invoke();
        inv.key(format!("{}{}", self.prefix, key))
            .arg(limit.interval_us())
            .arg(limit.tolerance_us())
            .arg(cost);
        let result =
            match tokio::time::timeout(self.timeout, inv.invoke_async::<(i64, i64)>(&mut conn))
                .await
            {
                Ok(Ok(r)) => Ok(r),
                Ok(Err(e)) => Err(RedisError::Redis(e.to_string())),
                Err(_) => Err(RedisError::Timeout),
            };
        let mut st = self.state.lock();
        match result {
            Ok((ok, d)) => {
                if !st.up {
                    tracing::info!("redis rate limiter reachable again");
                }
                st.up = true;
                st.down_until = None;
                st.last_error = None;
                let d = d.max(0) as u64;
                Ok(if ok == 1 {
                    gcra::allowed(d, limit)
                } else {
                    gcra::rejected(d, limit, cost)
                })
            }
            Err(e) => {
                if st.up {
                    tracing::warn!(error = %e, "redis rate limiter unreachable; using the fallback");
                }
                st.up = false;
                st.down_until = Some(self.clock.now() + self.retry_after);
                st.last_error = Some(e.to_string());
                Err(e)
            }
        }
    }
}
