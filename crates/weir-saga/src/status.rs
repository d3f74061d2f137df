//! An instance's lifecycle.
//!
//! ```text
//! running ──all steps done──────────────────▶ completed
//!    │
//!    └─a step failed for good─▶ compensating ──all undone──▶ compensated
//!                                    │
//!                                    └─a compensation failed for good─▶ failed
//! ```
//!
//! `failed` means the saga could not be undone and needs an operator;
//! `weir saga retry` sends it back to `compensating`.

use std::fmt;
use std::str::FromStr;

use crate::error::SagaError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    Running,
    Compensating,
    Completed,
    Compensated,
    Failed,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Status::Running,
        Status::Compensating,
        Status::Completed,
        Status::Compensated,
        Status::Failed,
    ];

    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Compensating => "compensating",
            Status::Completed => "completed",
            Status::Compensated => "compensated",
            Status::Failed => "failed",
        }
    }

    /// No orchestrator works on it any more (`failed` only after an
    /// operator's retry).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Completed | Status::Compensated | Status::Failed
        )
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = SagaError;
    fn from_str(s: &str) -> Result<Status, SagaError> {
        Status::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| {
                SagaError::InvalidInput(format!(
                    "unknown status {s:?} (running, compensating, completed, compensated, failed)"
                ))
            })
    }
}
