//! Which failures are worth another delivery, and when.

use std::time::Duration;

use weir_layer::problem::{ErrorCode, Problem};

/// Whether redelivering could succeed: server-side and dependency failures
/// (5xx, overloaded, rate limited, deadline) are retried; a request the
/// handler rejects as such (other 4xx: validation, not found, forbidden)
/// would fail the same way every time and is dead-lettered at once.
pub fn is_retryable(p: &Problem) -> bool {
    p.status >= 500
        || matches!(
            p.code,
            ErrorCode::Overloaded | ErrorCode::DeadlineExceeded | ErrorCode::RateLimited
        )
}

/// The nak delay after delivery `delivered` (1-based) failed: exponential
/// from `base`, capped at `max`, with jitter so a burst of failures does
/// not come back as a burst.
pub(crate) fn nak_delay(base: Duration, max: Duration, delivered: u64) -> Duration {
    let attempt = u32::try_from(delivered.saturating_sub(1)).unwrap_or(u32::MAX);
    crate::error::backoff(base, max, attempt)
}
