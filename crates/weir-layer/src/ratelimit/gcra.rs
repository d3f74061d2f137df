//! GCRA (the generic cell rate algorithm), in whole microseconds.
//!
//! State per key is one number, the theoretical arrival time (TAT). A limit
//! of `requests` per `window` with `burst` allows a request at `now` when
//! `max(tat, now) + interval·cost − now ≤ tolerance`, where
//! `interval = window / requests` and `tolerance = interval · burst`. The
//! same arithmetic runs here (local backend) and in the Redis Lua script,
//! so falling back from Redis to local limits changes where state lives,
//! not what a limit means.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A limit: `requests` per `window_secs`, with bursts of up to `burst`
/// (default `requests`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    pub requests: u64,
    pub window_secs: u64,
    #[serde(default)]
    pub burst: Option<u64>,
}

impl Limit {
    pub fn per_second(requests: u64) -> Limit {
        Limit {
            requests,
            window_secs: 1,
            burst: None,
        }
    }

    pub fn burst(&self) -> u64 {
        self.burst.unwrap_or(self.requests).max(1)
    }

    /// Emission interval in µs (at least 1).
    pub fn interval_us(&self) -> u64 {
        (self.window_secs.saturating_mul(1_000_000) / self.requests.max(1)).max(1)
    }

    /// Delay-variation tolerance in µs.
    pub fn tolerance_us(&self) -> u64 {
        self.interval_us().saturating_mul(self.burst())
    }

    /// Whether the limit is usable (non-zero requests and window).
    pub fn is_valid(&self) -> bool {
        self.requests > 0 && self.window_secs > 0 && self.burst.is_none_or(|b| b > 0)
    }
}

/// The outcome of one check, with what the `RateLimit` headers report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Whole requests left right now.
    pub remaining: u64,
    /// Until at least one more request is available.
    pub reset_after: Duration,
    /// Until this request would have been allowed (rejections only).
    pub retry_after: Option<Duration>,
}

/// Checks and (if allowed) advances the state. Returns the decision and the
/// new TAT to store (`None`: leave the state alone).
pub fn check(tat: Option<u64>, now: u64, limit: &Limit, cost: u64) -> (Decision, Option<u64>) {
    let tat = tat.unwrap_or(now).max(now);
    let new_tat = tat.saturating_add(limit.interval_us().saturating_mul(cost));
    let diff = new_tat - now;
    if diff > limit.tolerance_us() {
        (rejected(tat - now, limit, cost), None)
    } else {
        (allowed(diff, limit), Some(new_tat))
    }
}

/// The decision for an allowed request whose new TAT lies `diff` µs ahead.
pub fn allowed(diff: u64, limit: &Limit) -> Decision {
    let (t, tol) = (limit.interval_us(), limit.tolerance_us());
    let remaining = tol.saturating_sub(diff) / t;
    let reset = (diff + (remaining + 1) * t).saturating_sub(tol);
    Decision {
        allowed: true,
        remaining,
        reset_after: Duration::from_micros(reset.max(1)),
        retry_after: None,
    }
}

/// The decision for a rejected request whose current TAT lies `ahead` µs ahead.
pub fn rejected(ahead: u64, limit: &Limit, cost: u64) -> Decision {
    let need = ahead + limit.interval_us().saturating_mul(cost);
    let wait = Duration::from_micros(need.saturating_sub(limit.tolerance_us()).max(1));
    Decision {
        allowed: false,
        remaining: 0,
        reset_after: wait,
        retry_after: Some(wait),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_steady_rate() {
        let l = Limit {
            requests: 10,
            window_secs: 1,
            burst: Some(3),
        };
        let mut tat = None;
        let now = 1_000_000_000;
        let mut remaining = vec![];
        for _ in 0..3 {
            let (d, t) = check(tat, now, &l, 1);
            assert!(d.allowed);
            remaining.push(d.remaining);
            tat = t;
        }
        assert_eq!(remaining, vec![2, 1, 0]);
        let (d, t) = check(tat, now, &l, 1);
        assert!(!d.allowed && t.is_none());
        assert_eq!(d.retry_after, Some(Duration::from_millis(100)));
        // After one interval, exactly one more.
        let (d, t) = check(tat, now + 100_000, &l, 1);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        let (d, _) = check(t, now + 100_000, &l, 1);
        assert!(!d.allowed);
        // After a long idle period the full burst is back.
        let (d, _) = check(t, now + 10_000_000, &l, 1);
        assert_eq!(d.remaining, 2);
        assert_eq!(d.reset_after, Duration::from_millis(100));
    }

    #[test]
    fn cost_above_burst_never_passes() {
        let l = Limit::per_second(5);
        let (d, _) = check(None, 0, &l, 6);
        assert!(!d.allowed);
        let zero = Limit {
            requests: 0,
            window_secs: 1,
            burst: None,
        };
        assert!(!zero.is_valid());
    }
}
