//! Versioned definitions: an instance started under v1 is left alone (with
//! a note saying why) by an orchestrator that only knows v2, and is resumed
//! under v1's steps by one that knows both after its first orchestrator
//! died mid-step; new instances start under v2.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use serde_json::json;
use weir_saga::{Orchestrator, Registry, Saga, SagaStore, Status, Step, StepCtx};

use support::{GIVE_UP, Journal, database};

fn recording(j: &Journal, version: u32, name: &'static str) -> Step {
    let j = j.clone();
    Step::new(name, move |ctx: StepCtx| {
        let j = j.clone();
        async move {
            j.push(format!("v{version}:{}:{}", ctx.step, ctx.saga_id));
            Ok(json!({ name: ctx.version }))
        }
    })
}

fn v1(j: &Journal) -> Saga {
    Saga::new("signup", 1)
        .step(recording(j, 1, "create_account"))
        .step(recording(j, 1, "send_welcome"))
}

fn v2(j: &Journal) -> Saga {
    Saga::new("signup", 2)
        .step(recording(j, 2, "create_account"))
        .step(recording(j, 2, "verify_email"))
        .step(recording(j, 2, "send_welcome"))
}

fn orch(store: &SagaStore, owner: &str, reg: Registry) -> Orchestrator {
    Orchestrator::builder(store.clone(), reg)
        .owner(owner)
        .lease(Duration::from_millis(500))
        .build()
}

#[tokio::test]
async fn an_instance_finishes_under_the_version_it_started_with() {
    let (_db, store) = database("saga_versions").await;
    let j = Journal::default();

    // Process 1 knows only v1; its second step hangs, and the process dies.
    let hang = Saga::new("signup", 1)
        .step(recording(&j, 1, "create_account"))
        .step(Step::new("send_welcome", |_c: StepCtx| async {
            std::future::pending::<()>().await;
            Ok(json!(null))
        }));
    let p1 = orch(&store, "p1", Registry::new().with(hang).unwrap());
    let id = p1
        .start("signup", json!({ "email": "a@example.com" }))
        .await
        .unwrap();
    assert_eq!(store.get(&id).await.unwrap().version, 1);
    let crashed = tokio::spawn({
        let p1 = p1.clone();
        async move { p1.run(std::future::pending()).await }
    });
    // Wait until process 1 is inside step 2, then kill it.
    loop {
        let log = store.steps(&id).await.unwrap();
        if log
            .iter()
            .any(|r| r.step == "send_welcome" && r.status == "started")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    crashed.abort();
    let _ = crashed.await;

    // Process 2 knows only v2: it must not touch the v1 instance.
    let p2 = orch(&store, "p2", Registry::new().with(v2(&j)).unwrap());
    loop {
        // Once process 1's lease has expired the instance is noted.
        if p2.note_unknown_versions().await.unwrap() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(p2.run_pending().await.unwrap(), 0);
    let waiting = store.get(&id).await.unwrap();
    assert_eq!(waiting.status, Status::Running);
    assert_eq!(waiting.step, 1);
    assert_eq!(
        waiting.note.as_deref(),
        Some("version 1 of saga signup is not registered in orchestrator p2")
    );

    // Process 3 knows both: resumes under v1 and starts new ones under v2.
    let p3 = orch(
        &store,
        "p3",
        Registry::new().with(v1(&j)).unwrap().with(v2(&j)).unwrap(),
    );
    let newer = p3
        .start("signup", json!({ "email": "b@example.com" }))
        .await
        .unwrap();
    assert_eq!(store.get(&newer).await.unwrap().version, 2);
    assert_eq!(p3.run_pending().await.unwrap(), 2);
    let old = p3.wait(&id, GIVE_UP).await.unwrap();
    let new = p3.wait(&newer, GIVE_UP).await.unwrap();
    assert_eq!(old.status, Status::Completed);
    assert_eq!(old.note, None);
    assert_eq!(
        old.state,
        json!({ "email": "a@example.com", "create_account": 1, "send_welcome": 1 })
    );
    assert_eq!(new.status, Status::Completed);
    assert_eq!(
        new.state,
        json!({ "email": "b@example.com", "create_account": 2, "verify_email": 2, "send_welcome": 2 })
    );
    let mine = |sid: &str| -> Vec<String> {
        j.entries()
            .into_iter()
            .filter(|e| e.ends_with(sid))
            .map(|e| e.rsplit_once(':').unwrap().0.to_owned())
            .collect()
    };
    assert_eq!(mine(&id), vec!["v1:create_account", "v1:send_welcome"]);
    assert_eq!(
        mine(&newer),
        vec!["v2:create_account", "v2:verify_email", "v2:send_welcome"]
    );
    let log = store.steps(&id).await.unwrap();
    let welcome: Vec<_> = log
        .iter()
        .filter(|r| r.step == "send_welcome")
        .map(|r| (r.attempt, r.status.as_str(), r.owner.as_str()))
        .collect();
    assert_eq!(
        welcome,
        vec![(1, "interrupted", "p1"), (2, "succeeded", "p3")]
    );
}
