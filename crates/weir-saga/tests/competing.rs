//! Two orchestrators (separate connections, separate owner names) work on
//! the same set of instances at once: each instance is worked on by one of
//! them only — every action runs exactly once — and all complete.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use serde_json::json;
use weir_saga::{Orchestrator, Registry, Saga, SagaStore, Status, Step, StepCtx};

use support::{GIVE_UP, Journal, database};

fn orchestrator(url: &str, owner: &str, journal: &Journal) -> Orchestrator {
    let step = |name: &'static str| {
        let journal = journal.clone();
        let owner = owner.to_owned();
        Step::new(name, move |ctx: StepCtx| {
            let journal = journal.clone();
            let owner = owner.clone();
            async move {
                journal.push(format!("{}|{owner}", ctx.idempotency_key));
                // Give the other orchestrator a chance to interleave.
                tokio::task::yield_now().await;
                Ok(json!(null))
            }
        })
    };
    let saga = Saga::new("job", 1)
        .step(step("one"))
        .step(step("two"))
        .step(step("three"));
    Orchestrator::builder(
        SagaStore::new(url).unwrap(),
        Registry::new().with(saga).unwrap(),
    )
    .owner(owner)
    .lease(Duration::from_secs(60))
    .poll_interval(Duration::from_millis(20))
    .concurrency(4)
    .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_instance_runs_once_under_one_owner() {
    let (db, store) = database("saga_compete").await;
    let journal = Journal::default();
    let a = orchestrator(db.url(), "orch-a", &journal);
    let b = orchestrator(db.url(), "orch-b", &journal);

    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(
            a.start_with_id(&format!("job-{i:02}"), "job", json!({ "i": i }))
                .await
                .unwrap()
                .id,
        );
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let run = |o: Orchestrator| {
        let mut rx = stop_rx.clone();
        tokio::spawn(async move {
            o.run(async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await
        })
    };
    let (ha, hb) = (run(a), run(b));
    for id in &ids {
        let done = store.wait(id, GIVE_UP).await.unwrap();
        assert_eq!(done.status, Status::Completed, "{id}");
    }
    stop_tx.send_replace(true);
    ha.await.unwrap().unwrap();
    hb.await.unwrap().unwrap();

    let entries = journal.entries();
    assert_eq!(
        entries.len(),
        ids.len() * 3,
        "every action ran exactly once"
    );
    let mut keys: Vec<_> = entries
        .iter()
        .map(|e| e.split('|').next().unwrap().to_owned())
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), ids.len() * 3);
    // All steps of one instance under one owner, as the step log records.
    for id in &ids {
        let owners: std::collections::BTreeSet<_> = store
            .steps(id)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.owner)
            .collect();
        assert_eq!(owners.len(), 1, "{id}: {owners:?}");
    }
}
