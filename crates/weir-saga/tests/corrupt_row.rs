//! A row that does not decode (hand-edited state) is reported, released
//! and left alone for a lease period instead of being claimed again and
//! again; the other instances keep running.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::json;
use weir_saga::{Orchestrator, Registry, Saga, SagaError, Status, Step, StepCtx};

use support::{GIVE_UP, database};

#[tokio::test]
async fn an_undecodable_instance_does_not_block_the_others() {
    let (db, store) = database("saga_corrupt").await;
    let saga = Saga::new("s", 1).step(Step::new("a", |_c: StepCtx| async { Ok(json!(null)) }));
    let orch = Orchestrator::builder(store.clone(), Registry::new().with(saga).unwrap()).build();
    let good = orch.start("s", json!({})).await.unwrap();
    let c = weir_testkit::pg::connect(&db).await;
    // Oldest `updated_at`: claimed first.
    c.execute(
        "INSERT INTO weir_saga_instances (id, saga, version, input, state, status, created_at, updated_at) \
         VALUES ('broken', 's', 1, '{}', 'not json', 'running', 0, 0)",
        &[],
    )
    .await
    .unwrap();

    let err = orch.run_pending().await.unwrap_err();
    assert!(
        matches!(&err, SagaError::Corrupt { id, .. } if id == "broken"),
        "{err}"
    );
    assert_eq!(orch.run_pending().await.unwrap(), 1, "only the good one");
    assert_eq!(
        orch.wait(&good, GIVE_UP).await.unwrap().status,
        Status::Completed
    );
    let lease: Option<String> = c
        .query_one(
            "SELECT lease_owner FROM weir_saga_instances WHERE id = 'broken'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        lease, None,
        "released for others (or an operator) to look at"
    );
    assert!(matches!(
        store.get("broken").await,
        Err(SagaError::Corrupt { .. })
    ));
}
