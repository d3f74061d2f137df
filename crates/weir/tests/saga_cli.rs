//! `weir saga list / show / retry` against a real PostgreSQL database (the
//! test creates and drops its own): one saga completes, one ends `failed`
//! because its compensation keeps failing; the CLI lists and filters them,
//! shows the step log, and its `retry` hands the failed one back to an
//! orchestrator, which then compensates it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use weir_layer::problem::{ErrorCode, Problem};
use weir_saga::{Orchestrator, Registry, RetryPolicy, Saga, SagaStore, Status, Step, StepCtx};
use weir_testkit::pg;

/// Only there so that a broken orchestrator fails the test instead of
/// hanging it.
const GIVE_UP: Duration = Duration::from_secs(120);

/// Runs `weir saga …` with the database in `WEIR_DATABASE_URL`.
fn weir(url: &str, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("saga")
        .args(args)
        .env("WEIR_DATABASE_URL", url)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(url: &str, args: &[&str]) -> String {
    let (success, stdout, stderr) = weir(url, args);
    assert!(success, "weir saga {args:?} failed: {stdout}{stderr}");
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_show_and_retry_a_failed_saga() {
    let db = pg::database("saga_cli").await;
    let url = db.url().to_owned();
    let store = SagaStore::new(&url).unwrap();
    store.migrate().await.unwrap();

    let refund_works = Arc::new(AtomicBool::new(false));
    let refund = {
        let works = refund_works.clone();
        move |_ctx: StepCtx| {
            let works = works.load(Ordering::SeqCst);
            async move {
                if works {
                    Ok(json!({ "refunded": true }))
                } else {
                    Err(Problem::new(ErrorCode::StorageUnavailable, "bank down"))
                }
            }
        }
    };
    let order = Saga::new("order", 1)
        .step(
            Step::new("pay", |_c: StepCtx| async { Ok(json!({ "paid": 12 })) })
                .compensate(refund)
                .compensation_retry(RetryPolicy::none()),
        )
        .step(
            Step::new("ship", |c: StepCtx| async move {
                match c.get("address") {
                    Some(_) => Ok(json!({ "shipped": true })),
                    None => Err(Problem::new(ErrorCode::NotFound, "no address")),
                }
            })
            .retry(RetryPolicy::none()),
        );
    let orch = Orchestrator::builder(store.clone(), Registry::new().with(order).unwrap()).build();
    let good = orch
        .start("order", json!({ "address": "1 Main St" }))
        .await
        .unwrap();
    let bad = orch.start("order", json!({})).await.unwrap();
    orch.run_pending().await.unwrap();
    assert_eq!(
        orch.wait(&good, GIVE_UP).await.unwrap().status,
        Status::Completed
    );
    assert_eq!(
        orch.wait(&bad, GIVE_UP).await.unwrap().status,
        Status::Failed
    );

    // The table lists both; the filters narrow it down.
    let all = ok(&url, &["list"]);
    assert!(all.starts_with("ID"), "{all}");
    assert!(all.contains(&good) && all.contains(&bad), "{all}");
    let failed = ok(&url, &["list", "--status", "failed", "--saga", "order"]);
    assert!(failed.contains(&bad) && !failed.contains(&good), "{failed}");
    assert!(failed.contains("bank down"), "{failed}");
    let none = ok(&url, &["list", "--saga", "refund"]);
    assert!(none.contains("(no instances)"), "{none}");
    let lines: Vec<Value> = ok(&url, &["list", "--json", "--status", "completed"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["id"], good.as_str());
    assert_eq!(lines[0]["state"]["shipped"], true);
    let (success, _, stderr) = weir(&url, &["list", "--status", "stuck"]);
    assert!(!success && stderr.contains("unknown status"), "{stderr}");

    // `show`: the state and the step log, as text and as JSON.
    let shown = ok(&url, &["show", &bad]);
    assert!(shown.contains("status       failed"), "{shown}");
    assert!(
        shown.contains("#0 pay forward attempt 1 epoch 0: succeeded"),
        "{shown}"
    );
    assert!(
        shown.contains("#1 ship forward attempt 1 epoch 0: failed"),
        "{shown}"
    );
    assert!(
        shown.contains("#0 pay compensate attempt 1 epoch 0: failed"),
        "{shown}"
    );
    let shown: Value = serde_json::from_str(&ok(&url, &["show", "--json", &bad])).unwrap();
    assert_eq!(shown["instance"]["status"], "failed");
    let steps = shown["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3);
    assert_eq!(steps[1]["error"]["detail"], "no address");
    let (success, _, stderr) = weir(&url, &["show", "nope"]);
    assert!(
        !success && stderr.contains("no saga instance nope"),
        "{stderr}"
    );

    // `retry`: refused for a finished instance, accepted for the failed
    // one, which an orchestrator then compensates.
    let (success, _, stderr) = weir(&url, &["retry", &good]);
    assert!(!success && stderr.contains("nothing to retry"), "{stderr}");
    refund_works.store(true, Ordering::SeqCst);
    let retried = ok(&url, &["retry", &bad]);
    assert!(
        retried.contains("compensating again (epoch 1)"),
        "{retried}"
    );
    assert_eq!(store.get(&bad).await.unwrap().status, Status::Compensating);
    orch.run_pending().await.unwrap();
    let done = orch.wait(&bad, GIVE_UP).await.unwrap();
    assert_eq!(done.status, Status::Compensated);
    let shown = ok(&url, &["show", &bad]);
    assert!(
        shown.contains("#0 pay compensate attempt 2 epoch 1: succeeded"),
        "{shown}"
    );
}
