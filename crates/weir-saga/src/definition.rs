//! Saga definitions: a name, a version and ordered steps, each with an
//! action, an optional compensation, a deadline and a retry policy.
//!
//! Definitions are plain values built in code. They are never stored: the
//! database records only `(name, version)` per instance, so the code that
//! resumes an instance must still register the version it started with
//! (see [`crate::Registry`]).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;
use weir_layer::problem::Problem;

use crate::error::SagaError;

/// The future an [`Action`] returns: the output merged into the saga's
/// state, or the problem that failed this attempt.
pub type ActionFuture = Pin<Box<dyn Future<Output = Result<Value, Problem>> + Send>>;

/// A step's forward action or its compensation.
///
/// Implemented for every `Fn(StepCtx) -> impl Future<Output = Result<Value,
/// Problem>>`, so closures work directly:
/// `|ctx: StepCtx| async move { Ok(json!({})) }`.
pub trait Action: Send + Sync + 'static {
    fn call(&self, ctx: StepCtx) -> ActionFuture;
}

impl<F, Fut> Action for F
where
    F: Fn(StepCtx) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, Problem>> + Send + 'static,
{
    fn call(&self, ctx: StepCtx) -> ActionFuture {
        Box::pin(self(ctx))
    }
}

/// Whether a step runs forward or is being undone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    Forward,
    Compensate,
}

impl Phase {
    /// The form stored in the step log and used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Forward => "forward",
            Phase::Compensate => "compensate",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an action gets to see.
#[derive(Clone, Debug)]
pub struct StepCtx {
    /// The instance's id.
    pub saga_id: String,
    /// The saga's name and the version this instance runs under.
    pub saga: String,
    pub version: u32,
    pub step: String,
    pub phase: Phase,
    /// 1 for the first attempt of this step and phase; attempts interrupted
    /// by a crash count too, so a re-run after a crash sees a higher number.
    pub attempt: u32,
    /// `{saga_id}:{step}` forward, `{saga_id}:{step}:compensate` for the
    /// compensation. The same on every attempt and after a crash: pass it
    /// to the services the action calls, so that a re-run is recognised as
    /// a duplicate and applied once.
    pub idempotency_key: String,
    /// The saga's state: its input plus every completed step's output.
    pub state: Value,
    /// When the orchestrator drops the action's future (counted as a failed
    /// attempt). Pass the remaining time on to remote calls.
    pub deadline: Instant,
}

impl StepCtx {
    /// Time left before the deadline (zero once it passed).
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// A member of the state, e.g. `ctx.get("order_id")`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.state.get(key)
    }
}

/// How often a step is tried and how long to wait between tries.
///
/// Each failure (an error or a passed deadline) counts; after `attempts`
/// failures the step has failed for good: forward, the saga compensates;
/// a compensation that fails for good leaves the instance `failed` for an
/// operator (`weir saga retry`). Attempts cut short by a crash of the
/// orchestrator do not count as failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// At least 1.
    pub attempts: u32,
    /// Wait after the first failure; doubled after each further one.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// Three attempts, 100 ms then 200 ms apart (with jitter).
    fn default() -> RetryPolicy {
        RetryPolicy {
            attempts: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// One attempt, no retry.
    pub fn none() -> RetryPolicy {
        RetryPolicy {
            attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// `attempts` tries with the default backoff.
    pub fn attempts(attempts: u32) -> RetryPolicy {
        RetryPolicy {
            attempts: attempts.max(1),
            ..RetryPolicy::default()
        }
    }

    pub fn backoff(mut self, initial: Duration, max: Duration) -> RetryPolicy {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }

    /// The wait after `failures` failures: exponential, capped, with the
    /// upper half jittered so that many instances failing on the same
    /// dependency do not retry in lock step.
    pub fn delay(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(30);
        let full = self
            .initial_backoff
            .saturating_mul(1u32 << exp)
            .min(self.max_backoff);
        let half = full / 2;
        let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        let jitter = if jitter_ms == 0 {
            Duration::ZERO
        } else {
            Duration::from_millis(rand::random::<u64>() % (jitter_ms + 1))
        };
        half + jitter
    }
}

/// One step of a saga.
#[derive(Clone)]
pub struct Step {
    pub(crate) name: String,
    pub(crate) action: Arc<dyn Action>,
    pub(crate) compensation: Option<Arc<dyn Action>>,
    pub(crate) deadline: Duration,
    pub(crate) retry: RetryPolicy,
    pub(crate) compensation_retry: RetryPolicy,
}

impl fmt::Debug for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Step")
            .field("name", &self.name)
            .field("compensates", &self.compensation.is_some())
            .field("deadline", &self.deadline)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// Deadline of a step that does not set one.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);

impl Step {
    /// A step with a 30 s deadline, the default retry policy and no
    /// compensation. `name` must be unique within the saga and use only
    /// `[A-Za-z0-9_.-]` (it is part of the idempotency key).
    pub fn new(name: impl Into<String>, action: impl Action) -> Step {
        Step {
            name: name.into(),
            action: Arc::new(action),
            compensation: None,
            deadline: DEFAULT_DEADLINE,
            retry: RetryPolicy::default(),
            compensation_retry: RetryPolicy {
                attempts: 10,
                ..RetryPolicy::default()
            },
        }
    }

    /// Undoes the step's effect when a later step fails for good. Runs only
    /// if the step completed; it should tolerate running more than once
    /// (a crash may interrupt it after its effect).
    pub fn compensate(mut self, action: impl Action) -> Step {
        self.compensation = Some(Arc::new(action));
        self
    }

    /// Per attempt, for the action and the compensation alike.
    pub fn deadline(mut self, d: Duration) -> Step {
        self.deadline = d;
        self
    }

    pub fn retry(mut self, p: RetryPolicy) -> Step {
        self.retry = p;
        self
    }

    /// Retries of the compensation (default: 10 attempts): a compensation
    /// that gives up leaves the instance for an operator, so it is worth
    /// trying harder than the forward action.
    pub fn compensation_retry(mut self, p: RetryPolicy) -> Step {
        self.compensation_retry = p;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A saga definition: steps run in order; when one fails for good, the
/// completed ones are compensated in reverse order.
#[derive(Clone, Debug)]
pub struct Saga {
    pub(crate) name: String,
    pub(crate) version: u32,
    pub(crate) steps: Vec<Step>,
}

impl Saga {
    /// `version` identifies this list of steps: change it whenever steps
    /// are added, removed, reordered or change meaning, and keep the old
    /// version registered while instances started under it may still run.
    pub fn new(name: impl Into<String>, version: u32) -> Saga {
        Saga {
            name: name.into(),
            version,
            steps: Vec::new(),
        }
    }

    pub fn step(mut self, step: Step) -> Saga {
        self.steps.push(step);
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// Refuses what would break idempotency keys or the step log.
    pub(crate) fn validate(&self) -> Result<(), SagaError> {
        check_name("saga name", &self.name)?;
        if self.version == 0 || i32::try_from(self.version).is_err() {
            return Err(SagaError::InvalidDefinition(format!(
                "saga {}: version must be in 1..=2^31-1",
                self.name
            )));
        }
        for (i, s) in self.steps.iter().enumerate() {
            check_name("step name", &s.name)?;
            if self.steps[..i].iter().any(|o| o.name == s.name) {
                return Err(SagaError::InvalidDefinition(format!(
                    "saga {} v{}: step {:?} appears twice",
                    self.name, self.version, s.name
                )));
            }
            if s.retry.attempts == 0 || s.compensation_retry.attempts == 0 {
                return Err(SagaError::InvalidDefinition(format!(
                    "saga {} v{}: step {:?} needs at least one attempt",
                    self.name, self.version, s.name
                )));
            }
        }
        Ok(())
    }
}

/// Names and ids: 1–128 characters of `[A-Za-z0-9_.-]`. Keeps the
/// idempotency key `{id}:{step}` unambiguous and the CLI output plain.
pub(crate) fn check_name(what: &str, s: &str) -> Result<(), SagaError> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(SagaError::InvalidDefinition(format!(
            "{what} {s:?}: use 1-128 characters of [A-Za-z0-9_.-]"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered_within_bounds() {
        let p = RetryPolicy::attempts(10)
            .backoff(Duration::from_millis(100), Duration::from_millis(1000));
        for _ in 0..200 {
            let d1 = p.delay(1);
            assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100));
            let d3 = p.delay(3);
            assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400));
            let d9 = p.delay(9);
            assert!(d9 >= Duration::from_millis(500) && d9 <= Duration::from_millis(1000));
        }
        assert_eq!(RetryPolicy::attempts(0).attempts, 1);
        let zero = RetryPolicy::none().backoff(Duration::ZERO, Duration::ZERO);
        assert_eq!(zero.delay(5), Duration::ZERO);
    }

    #[test]
    fn names_that_would_make_keys_ambiguous_are_refused() {
        for bad in ["", "a:b", "a b", "ä", &"x".repeat(129)] {
            assert!(check_name("step", bad).is_err(), "{bad:?}");
        }
        for good in ["a", "reserve_stock", "v1.2-x", &"x".repeat(128)] {
            assert!(check_name("step", good).is_ok(), "{good:?}");
        }
        let zero = Saga::new("s", 0);
        assert!(zero.validate().is_err());
    }
}
