//! Time as the layer sees it. Token expiry, JWKS cache ages, API-key
//! last-use stamps and rate-limit state all read one injectable clock, so
//! tests move time forward instead of sleeping.

use std::cell::Cell;
use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Wall-clock time since the Unix epoch.
pub trait Clock: Send + Sync + Debug {
    fn now(&self) -> Duration;

    /// Whole seconds since the epoch (JWT `exp`/`nbf` resolution).
    fn unix_secs(&self) -> u64 {
        self.now().as_secs()
    }
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    /// The shared reading of this thread's [`OneReading`], if one is held;
    /// else the system time.
    fn now(&self) -> Duration {
        READING
            .try_with(Cell::get)
            .ok()
            .flatten()
            .unwrap_or_else(system_now)
    }
}

fn system_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

thread_local! {
    /// The reading [`SystemClock`] answers with while a [`OneReading`]
    /// lives on this thread.
    static READING: Cell<Option<Duration>> = const { Cell::new(None) };
}

/// While it lives, [`SystemClock`] answers on this thread with the one
/// reading taken when it was made. The production stack holds one while
/// it checks a request without waiting: the request id, the credential
/// memo's expiry check and the local rate limiter each read the system
/// clock (~100 instructions apiece under callgrind) for times a few
/// microseconds apart, which one reading serves as well. It is dropped
/// before the request's handler is called; other threads, and injected
/// clocks (tests), are unaffected.
pub(crate) struct OneReading {
    outer: Option<Duration>,
}

impl OneReading {
    pub(crate) fn begin() -> OneReading {
        let now = system_now();
        let outer = READING.try_with(|r| r.replace(Some(now))).ok().flatten();
        OneReading { outer }
    }
}

impl Drop for OneReading {
    fn drop(&mut self) {
        let _ = READING.try_with(|r| r.set(self.outer));
    }
}

/// A clock that only moves when told to (tests).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// Starts at the current system time, so real tokens and keys line up.
    pub fn new() -> Arc<ManualClock> {
        Arc::new(ManualClock(AtomicU64::new(
            SystemClock.now().as_nanos().min(u128::from(u64::MAX)) as u64,
        )))
    }

    pub fn advance(&self, d: Duration) {
        self.0.fetch_add(
            d.as_nanos().min(u128::from(u64::MAX)) as u64,
            Ordering::SeqCst,
        );
    }

    pub fn set(&self, since_epoch: Duration) {
        self.0.store(
            since_epoch.as_nanos().min(u128::from(u64::MAX)) as u64,
            Ordering::SeqCst,
        );
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::SeqCst))
    }
}

/// The shared clock handle every component takes.
pub type SharedClock = Arc<dyn Clock>;

/// The system clock as a [`SharedClock`].
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_reading_is_shared_until_dropped() {
        let reading = OneReading::begin();
        let a = SystemClock.now();
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(SystemClock.now(), a);
        let other = std::thread::spawn(|| SystemClock.now()).join().unwrap();
        assert!(other > a, "other threads read the system clock");
        drop(reading);
        assert!(SystemClock.now() > a);
    }
}
