//! Errors callers can match on.

use std::time::Duration;

use weir_layer::problem::{ErrorCode, Problem};

/// What went wrong with a call, an event or a transport operation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ServiceError {
    /// The remote handler (or a middleware on its side) answered with a problem.
    #[error("remote error: {0}")]
    Remote(Problem),
    /// The caller's deadline passed before a reply arrived.
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// Nobody listens on the subject.
    #[error("no responders on `{0}`")]
    NoResponders(String),
    /// The payload (plus headers) is larger than the server's `max_payload`.
    #[error("payload of {size} bytes exceeds the server's max_payload of {max} bytes")]
    PayloadTooLarge { size: usize, max: usize },
    /// The client-side circuit breaker for this endpoint is open.
    #[error("circuit open for `{0}`")]
    CircuitOpen(String),
    /// The request or reply could not be encoded or decoded.
    #[error("codec: {0}")]
    Codec(String),
    /// The service's contract is incompatible with the client's.
    #[error("incompatible contract: {0}")]
    Incompatible(String),
    /// The connection failed or was closed.
    #[error("transport: {0}")]
    Transport(String),
    /// The service is draining or stopped.
    #[error("shut down")]
    Shutdown,
}

impl ServiceError {
    /// Whether a retry could succeed (only idempotent calls are retried).
    pub fn is_transient(&self) -> bool {
        match self {
            ServiceError::NoResponders(_) | ServiceError::Transport(_) => true,
            ServiceError::Remote(p) => {
                matches!(p.status, 502..=504) || p.code == ErrorCode::Overloaded
            }
            _ => false,
        }
    }

    /// Whether this counts as a failure of the remote endpoint for the
    /// circuit breaker (client errors such as `4xx` problems do not).
    pub fn is_failure(&self) -> bool {
        match self {
            ServiceError::Remote(p) => p.status >= 500,
            ServiceError::DeadlineExceeded
            | ServiceError::NoResponders(_)
            | ServiceError::Transport(_) => true,
            _ => false,
        }
    }

    /// The problem code, when the error is a remote problem.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ServiceError::Remote(p) => Some(p.code),
            _ => None,
        }
    }

    /// The problem a service should answer with when this error escapes a
    /// handler (no internals: remote problems pass through, the rest map to
    /// generic problems).
    pub fn to_problem(&self) -> Problem {
        match self {
            ServiceError::Remote(p) => p.clone(),
            ServiceError::DeadlineExceeded => deadline_problem(),
            ServiceError::NoResponders(_)
            | ServiceError::CircuitOpen(_)
            | ServiceError::Shutdown => {
                Problem::new(ErrorCode::Overloaded, "a dependency is unavailable")
            }
            ServiceError::PayloadTooLarge { .. } => {
                Problem::new(ErrorCode::PayloadTooLarge, self.to_string())
            }
            _ => Problem::internal(),
        }
    }
}

impl From<Problem> for ServiceError {
    fn from(p: Problem) -> Self {
        ServiceError::Remote(p)
    }
}

impl From<ServiceError> for Problem {
    fn from(e: ServiceError) -> Self {
        e.to_problem()
    }
}

/// The problem sent when a deadline passes (504).
pub fn deadline_problem() -> Problem {
    Problem::new(ErrorCode::DeadlineExceeded, "the deadline passed")
}

/// A startup/configuration error of a service or client.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot connect to NATS: {0}")]
    Connect(String),
    #[error("cannot subscribe to `{subject}`: {reason}")]
    Subscribe { subject: String, reason: String },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Service(#[from] ServiceError),
}

/// Backoff between `attempt` (0-based) retries: exponential with full jitter.
pub(crate) fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.min(16)).min(max);
    let nanos = exp.as_nanos().min(u128::from(u64::MAX)) as u64;
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(rand::Rng::gen_range(
        &mut rand::thread_rng(),
        nanos / 2..=nanos,
    ))
}
