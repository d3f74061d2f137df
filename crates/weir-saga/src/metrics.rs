//! Saga metrics (documented in docs/metrics.md, "Sagas").
//!
//! The instance gauge is read from the database, not counted in memory:
//! several orchestrators share the instances, and a count kept by one of
//! them would be neither complete nor survive its restart.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::definition::Phase;
use crate::status::Status;

pub const INSTANCES: &str = "weir_saga_instances";
pub const STEP_DURATION: &str = "weir_saga_step_duration_seconds";
pub const STEP_FAILURES: &str = "weir_saga_step_failures_total";
pub const COMPENSATIONS: &str = "weir_saga_compensations_total";
pub const FAILED: &str = "weir_saga_failed_total";

pub(crate) fn step_duration(saga: &str, step: &str, phase: Phase, ok: bool, d: Duration) {
    metrics::histogram!(
        STEP_DURATION,
        "saga" => saga.to_owned(),
        "step" => step.to_owned(),
        "phase" => phase.as_str(),
        "result" => if ok { "ok" } else { "error" },
    )
    .record(d.as_secs_f64());
}

pub(crate) fn step_failure(saga: &str, step: &str, phase: Phase) {
    metrics::counter!(
        STEP_FAILURES,
        "saga" => saga.to_owned(),
        "step" => step.to_owned(),
        "phase" => phase.as_str(),
    )
    .increment(1);
}

pub(crate) fn compensation_started(saga: &str) {
    metrics::counter!(COMPENSATIONS, "saga" => saga.to_owned()).increment(1);
}

pub(crate) fn saga_failed(saga: &str) {
    metrics::counter!(FAILED, "saga" => saga.to_owned()).increment(1);
}

/// Publishes `counts` as the instance gauge; label pairs seen before but
/// absent now are set to 0 rather than left at their last value.
pub(crate) fn publish_counts(
    counts: &[(String, Status, u64)],
    seen: &mut BTreeSet<(String, Status)>,
) {
    let mut now = BTreeSet::new();
    for (saga, status, n) in counts {
        metrics::gauge!(INSTANCES, "saga" => saga.clone(), "status" => status.as_str())
            .set(*n as f64);
        now.insert((saga.clone(), *status));
    }
    for (saga, status) in seen.difference(&now) {
        metrics::gauge!(INSTANCES, "saga" => saga.clone(), "status" => status.as_str()).set(0.0);
    }
    seen.extend(now);
}
