//! Stopping an orchestrator: the step in flight is allowed to finish and
//! its result is recorded, no further step starts, and the lease is
//! released so that another orchestrator continues at once (without
//! waiting for the lease to expire) from the next step.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::{Notify, oneshot};
use weir_saga::{Orchestrator, Registry, Saga, Status, Step, StepCtx};

use support::{GIVE_UP, Journal, database};

#[tokio::test]
async fn stop_finishes_the_current_step_and_hands_the_rest_over() {
    let (_db, store) = database("saga_stop").await;
    let j = Journal::default();
    let entered = Arc::new(Notify::new());
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let release_rx = Arc::new(tokio::sync::Mutex::new(Some(release_rx)));
    let first = {
        let (j, entered, release_rx) = (j.clone(), entered.clone(), release_rx.clone());
        move |ctx: StepCtx| {
            let (j, entered, release_rx) = (j.clone(), entered.clone(), release_rx.clone());
            async move {
                entered.notify_one();
                if let Some(rx) = release_rx.lock().await.take() {
                    let _ = rx.await;
                }
                j.push(format!("{}#{}", ctx.step, ctx.attempt));
                Ok(json!({ "first": "done" }))
            }
        }
    };
    let second = {
        let j = j.clone();
        move |ctx: StepCtx| {
            let j = j.clone();
            async move {
                j.push(format!("{}#{}", ctx.step, ctx.attempt));
                Ok(json!(null))
            }
        }
    };
    let saga = || {
        Saga::new("two", 1)
            .step(Step::new("first", first.clone()))
            .step(Step::new("second", second.clone()))
    };
    // A long lease: the second orchestrator can only start at once if the
    // first released it.
    let build = |owner: &str| {
        Orchestrator::builder(store.clone(), Registry::new().with(saga()).unwrap())
            .owner(owner)
            .lease(Duration::from_secs(3600))
            .build()
    };
    let a = build("a");
    let id = a.start("two", json!({})).await.unwrap();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (seen_tx, seen_rx) = oneshot::channel::<()>();
    let running = tokio::spawn({
        let a = a.clone();
        async move {
            a.run(async move {
                let _ = stop_rx.await;
                let _ = seen_tx.send(());
            })
            .await
        }
    });
    entered.notified().await;
    stop_tx.send(()).unwrap();
    // The orchestrator has taken the stop (on this single-threaded
    // runtime it marks itself stopping in the same poll) before the step
    // is allowed to end.
    seen_rx.await.unwrap();
    release_tx.send(()).unwrap();
    tokio::time::timeout(GIVE_UP, running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    let paused = store.get(&id).await.unwrap();
    assert_eq!(paused.status, Status::Running);
    assert_eq!(paused.step, 1, "the step in flight was recorded");
    assert_eq!(paused.state, json!({ "first": "done" }));
    assert_eq!(paused.lease_owner, None, "the lease was released");
    assert_eq!(j.entries(), vec!["first#1"]);

    let b = build("b");
    assert_eq!(b.run_pending().await.unwrap(), 1);
    let done = b.wait(&id, GIVE_UP).await.unwrap();
    assert_eq!(done.status, Status::Completed);
    assert_eq!(j.entries(), vec!["first#1", "second#1"]);
}
