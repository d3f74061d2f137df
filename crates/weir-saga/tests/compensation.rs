//! A step that keeps failing: it is retried per its policy, then the
//! completed steps are compensated in reverse order (a step without a
//! compensation is skipped) and the instance ends `compensated`. A
//! compensation that keeps failing leaves it `failed`, and an operator's
//! retry sends it back to compensating.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;
use weir_layer::problem::{ErrorCode, Problem};
use weir_saga::{Orchestrator, Registry, RetryPolicy, Saga, Status, Step, StepCtx};

use support::{GIVE_UP, Journal, database};

fn recording(journal: &Journal, tag: &'static str) -> impl weir_saga::Action + use<> {
    let journal = journal.clone();
    move |ctx: StepCtx| {
        let journal = journal.clone();
        async move {
            journal.push(format!("{tag}:{}#{}", ctx.step, ctx.attempt));
            Ok(json!(null))
        }
    }
}

fn fast(attempts: u32) -> RetryPolicy {
    RetryPolicy::attempts(attempts).backoff(Duration::from_millis(1), Duration::from_millis(5))
}

#[tokio::test]
async fn completed_steps_are_compensated_in_reverse_order() {
    let (_db, store) = database("saga_comp").await;
    let j = Journal::default();
    let failing = {
        let j = j.clone();
        move |ctx: StepCtx| {
            let j = j.clone();
            async move {
                j.push(format!("do:{}#{}", ctx.step, ctx.attempt));
                Err::<serde_json::Value, _>(Problem::new(ErrorCode::LimitExceeded, "card declined"))
            }
        }
    };
    let saga = Saga::new("order", 1)
        .step(Step::new("reserve", recording(&j, "do")).compensate(recording(&j, "undo")))
        .step(Step::new("notify", recording(&j, "do"))) // nothing to undo
        .step(Step::new("hold", recording(&j, "do")).compensate(recording(&j, "undo")))
        .step(
            Step::new("charge", failing)
                .compensate(recording(&j, "undo"))
                .retry(fast(3)),
        )
        .step(Step::new("ship", recording(&j, "do")));
    let orch = Orchestrator::builder(store.clone(), Registry::new().with(saga).unwrap()).build();
    let id = orch.start("order", json!({})).await.unwrap();
    orch.run_pending().await.unwrap();
    let done = orch.wait(&id, GIVE_UP).await.unwrap();

    assert_eq!(done.status, Status::Compensated);
    assert_eq!(done.step, 0);
    let error = done.error.unwrap();
    assert!(
        error.contains("charge") && error.contains("card declined") && error.contains("3 attempt"),
        "{error}"
    );
    // The failed step itself is not compensated; `notify` has no compensation.
    assert_eq!(
        j.entries(),
        vec![
            "do:reserve#1",
            "do:notify#1",
            "do:hold#1",
            "do:charge#1",
            "do:charge#2",
            "do:charge#3",
            "undo:hold#1",
            "undo:reserve#1",
        ]
    );
    let log: Vec<_> = store
        .steps(&id)
        .await
        .unwrap()
        .into_iter()
        .map(|r| format!("{}/{}/{}/{}", r.step, r.phase, r.attempt, r.status))
        .collect();
    assert_eq!(
        log,
        vec![
            "reserve/forward/1/succeeded",
            "notify/forward/1/succeeded",
            "hold/forward/1/succeeded",
            "charge/forward/1/failed",
            "charge/forward/2/failed",
            "charge/forward/3/failed",
            "hold/compensate/1/succeeded",
            "reserve/compensate/1/succeeded",
        ]
    );
    let failed = &store.steps(&id).await.unwrap()[3];
    let problem = failed.error.as_ref().unwrap();
    assert_eq!(problem["code"], "limit_exceeded");
    assert_eq!(problem["detail"], "card declined");
}

#[tokio::test]
async fn an_exhausted_compensation_fails_the_saga_until_an_operator_retries() {
    let (_db, store) = database("saga_comp_fail").await;
    let j = Journal::default();
    let refund_works = Arc::new(AtomicBool::new(false));
    let refund = {
        let j = j.clone();
        let works = refund_works.clone();
        move |ctx: StepCtx| {
            let j = j.clone();
            let works = works.load(Ordering::SeqCst);
            async move {
                j.push(format!("undo:{}#{}", ctx.step, ctx.attempt));
                if works {
                    Ok(json!({ "refunded": true }))
                } else {
                    Err(Problem::new(ErrorCode::StorageUnavailable, "bank down"))
                }
            }
        }
    };
    let saga = Saga::new("order", 1)
        .step(
            Step::new("pay", recording(&j, "do"))
                .compensate(refund)
                .compensation_retry(fast(2)),
        )
        .step(
            Step::new("ship", |_c: StepCtx| async {
                Err::<serde_json::Value, _>(Problem::new(ErrorCode::NotFound, "no such address"))
            })
            .retry(RetryPolicy::none()),
        );
    let orch = Orchestrator::builder(store.clone(), Registry::new().with(saga).unwrap()).build();
    let id = orch.start("order", json!({})).await.unwrap();
    orch.run_pending().await.unwrap();
    let failed = orch.wait(&id, GIVE_UP).await.unwrap();
    assert_eq!(failed.status, Status::Failed);
    let error = failed.error.clone().unwrap();
    assert!(
        error.contains("compensation of step pay") && error.contains("bank down"),
        "{error}"
    );
    assert!(error.contains("no such address"), "{error}");
    assert_eq!(
        orch.run_pending().await.unwrap(),
        0,
        "failed instances wait for an operator"
    );

    // The operator fixes the bank and retries: the failure count restarts.
    refund_works.store(true, Ordering::SeqCst);
    let retried = store.retry(&id).await.unwrap();
    assert_eq!(retried.status, Status::Compensating);
    assert_eq!(retried.epoch, 1);
    orch.run_pending().await.unwrap();
    let done = orch.wait(&id, GIVE_UP).await.unwrap();
    assert_eq!(done.status, Status::Compensated);
    assert_eq!(
        j.entries(),
        vec!["do:pay#1", "undo:pay#1", "undo:pay#2", "undo:pay#3"]
    );
    assert!(matches!(
        store.retry(&id).await,
        Err(weir_saga::SagaError::Terminal { .. })
    ));
    assert!(matches!(
        store.retry("missing").await,
        Err(weir_saga::SagaError::NotFound(_))
    ));
}
