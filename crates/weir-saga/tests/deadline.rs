//! A step that outlives its deadline: its future is dropped (the action is
//! cancelled at its next await), the attempt is logged as failed with
//! `deadline_exceeded`, and once its attempts are used up the saga
//! compensates.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::json;
use weir_saga::{Orchestrator, Registry, RetryPolicy, Saga, Status, Step, StepCtx};

use support::{GIVE_UP, Journal, database};

/// Sets the flag when dropped: proves the orchestrator dropped the future.
struct DropFlag(Arc<AtomicU32>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_step_past_its_deadline_is_dropped_and_the_saga_compensates() {
    let (_db, store) = database("saga_deadline").await;
    let j = Journal::default();
    let dropped = Arc::new(AtomicU32::new(0));
    let finished = Arc::new(AtomicU32::new(0));
    let slow = {
        let (dropped, finished) = (dropped.clone(), finished.clone());
        move |ctx: StepCtx| {
            let guard = DropFlag(dropped.clone());
            let finished = finished.clone();
            async move {
                assert!(ctx.remaining() <= Duration::from_millis(200));
                // Never finishes within its deadline.
                tokio::time::sleep(Duration::from_secs(3600)).await;
                finished.fetch_add(1, Ordering::SeqCst);
                drop(guard);
                Ok(json!(null))
            }
        }
    };
    let undo = {
        let j = j.clone();
        move |ctx: StepCtx| {
            let j = j.clone();
            async move {
                j.push(format!("undo:{}:{}", ctx.step, ctx.idempotency_key));
                Ok(json!(null))
            }
        }
    };
    let saga = Saga::new("booking", 1)
        .step(
            Step::new("hold_seat", |_c: StepCtx| async {
                Ok(json!({ "seat": "12A" }))
            })
            .compensate(undo),
        )
        .step(
            Step::new("confirm", slow)
                .deadline(Duration::from_millis(200))
                .retry(
                    RetryPolicy::attempts(2)
                        .backoff(Duration::from_millis(1), Duration::from_millis(2)),
                ),
        );
    let orch = Orchestrator::builder(store.clone(), Registry::new().with(saga).unwrap()).build();
    let id = orch.start("booking", json!({})).await.unwrap();
    orch.run_pending().await.unwrap();
    let done = orch.wait(&id, GIVE_UP).await.unwrap();

    assert_eq!(done.status, Status::Compensated);
    assert!(done.error.unwrap().contains("deadline"));
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        2,
        "both attempts were dropped"
    );
    assert_eq!(finished.load(Ordering::SeqCst), 0);
    assert_eq!(
        j.entries(),
        vec![format!("undo:hold_seat:{id}:hold_seat:compensate")]
    );
    let log = store.steps(&id).await.unwrap();
    let confirm: Vec<_> = log.iter().filter(|r| r.step == "confirm").collect();
    assert_eq!(confirm.len(), 2);
    for r in confirm {
        assert_eq!(r.status, "failed");
        assert_eq!(r.error.as_ref().unwrap()["code"], "deadline_exceeded");
    }
}
