//! A saga whose steps all succeed: outputs are merged into the state, each
//! action sees the state so far and its idempotency key, and the step log
//! holds one succeeded attempt per step.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::json;
use weir_saga::{Orchestrator, Registry, Saga, Status, Step, StepCtx};

use support::{GIVE_UP, Journal, database};

#[tokio::test]
async fn all_steps_run_in_order_and_the_saga_completes() {
    let (_db, store) = database("saga_happy").await;
    let journal = Journal::default();
    let step = |name: &'static str, out: serde_json::Value| {
        let journal = journal.clone();
        Step::new(name, move |ctx: StepCtx| {
            let journal = journal.clone();
            let out = out.clone();
            async move {
                journal.push(format!(
                    "{}|{}|{}",
                    ctx.step, ctx.idempotency_key, ctx.state
                ));
                Ok(out)
            }
        })
    };
    let saga = Saga::new("order", 1)
        .step(step("reserve", json!({ "reservation": "r-1" })))
        .step(step("charge", json!({ "payment": "p-1" })))
        .step(step("ship", json!("tracking-9")));
    let orch = Orchestrator::builder(store.clone(), Registry::new().with(saga).unwrap()).build();

    let id = orch
        .start("order", json!({ "sku": "apple" }))
        .await
        .unwrap();
    orch.run_pending().await.unwrap();
    let done = orch.wait(&id, GIVE_UP).await.unwrap();

    assert_eq!(done.status, Status::Completed);
    assert_eq!(done.version, 1);
    assert_eq!(done.step, 3);
    assert_eq!(done.error, None);
    assert_eq!(done.lease_owner, None, "a finished instance holds no lease");
    assert_eq!(
        done.state,
        json!({ "sku": "apple", "reservation": "r-1", "payment": "p-1", "ship": "tracking-9" })
    );
    assert_eq!(
        journal.entries(),
        vec![
            format!("reserve|{id}:reserve|{}", json!({ "sku": "apple" })),
            format!(
                "charge|{id}:charge|{}",
                json!({ "sku": "apple", "reservation": "r-1" })
            ),
            format!(
                "ship|{id}:ship|{}",
                json!({ "sku": "apple", "reservation": "r-1", "payment": "p-1" })
            ),
        ]
    );

    let log = store.steps(&id).await.unwrap();
    let summary: Vec<_> = log
        .iter()
        .map(|r| {
            (
                r.step.as_str(),
                r.phase.as_str(),
                r.attempt,
                r.status.as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("reserve", "forward", 1, "succeeded"),
            ("charge", "forward", 1, "succeeded"),
            ("ship", "forward", 1, "succeeded"),
        ]
    );
    assert_eq!(log[0].output, Some(json!({ "reservation": "r-1" })));
    assert!(log.iter().all(|r| r.finished_at.is_some()));

    // Starting again under the same id returns the same instance.
    let again = orch
        .start_with_id(&id, "order", json!({ "sku": "pear" }))
        .await
        .unwrap();
    assert_eq!(again.status, Status::Completed);
    assert_eq!(again.input, json!({ "sku": "apple" }));
    assert_eq!(orch.run_pending().await.unwrap(), 0);
}

#[tokio::test]
async fn bad_input_and_unknown_sagas_are_refused() {
    let (_db, store) = database("saga_refuse").await;
    let saga = Saga::new("order", 1).step(Step::new("a", |_c: StepCtx| async { Ok(json!(null)) }));
    let orch = Orchestrator::builder(store, Registry::new().with(saga).unwrap()).build();
    assert!(matches!(
        orch.start("order", json!([1, 2])).await,
        Err(weir_saga::SagaError::InvalidInput(_))
    ));
    assert!(matches!(
        orch.start("nope", json!({})).await,
        Err(weir_saga::SagaError::UnknownSaga(_))
    ));
    assert!(matches!(
        orch.start_with_id("a:b", "order", json!({})).await,
        Err(weir_saga::SagaError::InvalidInput(_))
    ));
    let dup = Saga::new("x", 1)
        .step(Step::new("a", |_c: StepCtx| async { Ok(json!(null)) }))
        .step(Step::new("a", |_c: StepCtx| async { Ok(json!(null)) }));
    assert!(matches!(
        Registry::new().with(dup),
        Err(weir_saga::SagaError::InvalidDefinition(_))
    ));
}
