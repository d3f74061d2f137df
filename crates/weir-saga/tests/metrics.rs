//! The saga metrics reach the Prometheus exposition: step durations and
//! failures, a compensation, and the instance gauge read from the
//! database. (Its own test binary: the recorder is process-global.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use serde_json::json;
use weir_layer::problem::{ErrorCode, Problem};
use weir_saga::{Orchestrator, Registry, RetryPolicy, Saga, Status, Step, StepCtx};

use support::{GIVE_UP, database};

#[tokio::test]
async fn steps_compensations_and_instance_counts_are_exported() {
    weir_layer::metrics::install().unwrap();
    let (_db, store) = database("saga_metrics").await;
    let saga = Saga::new("metered", 1)
        .step(
            Step::new("book", |_c: StepCtx| async {
                Ok(json!({ "booked": true }))
            })
            .compensate(|_c: StepCtx| async { Ok(json!(null)) }),
        )
        .step(
            Step::new("pay", |_c: StepCtx| async {
                Err::<serde_json::Value, _>(Problem::new(ErrorCode::Forbidden, "no"))
            })
            .retry(RetryPolicy::none()),
        );
    let orch = Orchestrator::builder(store.clone(), Registry::new().with(saga).unwrap())
        .poll_interval(Duration::from_millis(20))
        .gauge_interval(Duration::from_millis(20))
        .build();
    let id = orch.start("metered", json!({})).await.unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn({
        let orch = orch.clone();
        async move {
            orch.run(async move {
                let _ = stop_rx.await;
            })
            .await
        }
    });
    assert_eq!(
        orch.wait(&id, GIVE_UP).await.unwrap().status,
        Status::Compensated
    );
    let gauge = r#"weir_saga_instances{saga="metered",status="compensated"} 1"#;
    let text = tokio::time::timeout(GIVE_UP, async {
        loop {
            let text = weir_layer::metrics::render();
            if text.contains(gauge) {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the instance gauge was never published");
    stop_tx.send(()).unwrap();
    running.await.unwrap().unwrap();

    for line in [
        r#"weir_saga_step_failures_total{saga="metered",step="pay",phase="forward"} 1"#,
        r#"weir_saga_compensations_total{saga="metered"} 1"#,
        r#"weir_saga_step_duration_seconds_count{saga="metered",step="book",phase="forward",result="ok"} 1"#,
        r#"weir_saga_step_duration_seconds_count{saga="metered",step="book",phase="compensate",result="ok"} 1"#,
        r#"weir_saga_step_duration_seconds_count{saga="metered",step="pay",phase="forward",result="error"} 1"#,
    ] {
        assert!(text.contains(line), "missing {line} in:\n{text}");
    }
    assert!(!text.contains("weir_saga_failed_total{saga=\"metered\"}"));
}
