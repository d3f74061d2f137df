//! Time as the layer sees it. Token expiry, JWKS cache ages, API-key
//! last-use stamps and rate-limit state all read one injectable clock, so
//! tests move time forward instead of sleeping.

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
    fn now(&self) -> Duration {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
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
