//! Crash-resume: an orchestrator in a child process is SIGKILLed inside
//! each step in turn — once before the step's effect (its start is already
//! committed) and once after the effect but before its result is recorded
//! — then a new process takes over. Every saga must end as designed, with
//! no step before the crash run again, the interrupted one re-run with the
//! same idempotency key, and every effect applied exactly once.
//!
//! "before" crashes restart under the same owner name (the instance is
//! taken back at once); "after" crashes restart under another name, which
//! must wait for the dead process's lease to expire.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;

use serde_json::json;
use tokio::process::Command;
use weir_saga::{Orchestrator, Registry, Saga, SagaStore, Status, Step, StepCtx};

use support::{GIVE_UP, database};

const WORKER: &str = env!("CARGO_BIN_EXE_weir-saga-crash-worker");

/// Definitions with the worker's names and versions, to start instances
/// from the test (the actions never run here).
fn starter(store: &SagaStore) -> Orchestrator {
    let saga = |name: &str, steps: &[&str]| {
        steps.iter().fold(Saga::new(name, 1), |s, n| {
            s.step(Step::new(*n, |_c: StepCtx| async { Ok(json!(null)) }))
        })
    };
    let reg = Registry::new()
        .with(saga("transfer", &["debit", "credit", "notify"]))
        .unwrap()
        .with(saga("transfer_doomed", &["debit", "credit", "approve"]))
        .unwrap();
    Orchestrator::builder(store.clone(), reg).build()
}

async fn worker(url: &str, id: &str, owner: &str, kill: Option<&str>) -> std::process::ExitStatus {
    let mut cmd = Command::new(WORKER);
    cmd.env("WEIR_SAGA_WORKER_DB", url)
        .env("WEIR_SAGA_WORKER_WAIT", id)
        .env("WEIR_SAGA_WORKER_OWNER", owner)
        .env_remove("WEIR_SAGA_WORKER_KILL")
        .stdout(Stdio::null())
        .kill_on_drop(true);
    if let Some(k) = kill {
        cmd.env("WEIR_SAGA_WORKER_KILL", k);
    }
    let mut child = cmd.spawn().expect("spawning the crash worker");
    tokio::time::timeout(GIVE_UP, child.wait())
        .await
        .expect("the worker neither finished nor died")
        .unwrap()
}

async fn keys(c: &tokio_postgres::Client, table: &str, id: &str) -> Vec<String> {
    c.query(
        &format!("SELECT key FROM {table} WHERE key LIKE $1 || ':%' ORDER BY key"),
        &[&id],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

struct Case {
    saga: &'static str,
    /// Suffix of the idempotency key of the action to crash in.
    at: &'static str,
    /// Key suffixes every action of the saga runs under, in order.
    keys: &'static [&'static str],
    end: Status,
}

#[tokio::test]
async fn the_saga_finishes_correctly_after_a_kill_at_every_step() {
    let (db, store) = database("saga_crash").await;
    let c = weir_testkit::pg::connect(&db).await;
    c.batch_execute(
        "CREATE TABLE crash_calls (n BIGSERIAL PRIMARY KEY, key TEXT NOT NULL);
         CREATE TABLE crash_ledger (key TEXT PRIMARY KEY);
         CREATE TABLE crash_applied (n BIGSERIAL PRIMARY KEY, key TEXT NOT NULL);",
    )
    .await
    .unwrap();
    let starter = starter(&store);

    const OK: &[&str] = &["debit", "credit", "notify"];
    const DOOMED: &[&str] = &["debit", "credit", "credit:compensate", "debit:compensate"];
    let mut cases = Vec::new();
    for at in OK {
        cases.push(Case {
            saga: "transfer",
            at,
            keys: OK,
            end: Status::Completed,
        });
    }
    for at in DOOMED {
        cases.push(Case {
            saga: "transfer_doomed",
            at,
            keys: DOOMED,
            end: Status::Compensated,
        });
    }

    for case in &cases {
        for when in ["before", "after"] {
            let id = format!("{}-{}-{when}", case.saga, case.at.replace(':', "-"));
            let what = format!("{} killed {when} the effect of {}", case.saga, case.at);
            starter
                .start_with_id(&id, case.saga, json!({ "amount": 10 }))
                .await
                .unwrap();

            let first = worker(
                db.url(),
                &id,
                "worker-a",
                Some(&format!("{when}:{}", case.at)),
            )
            .await;
            assert_eq!(
                first.signal(),
                Some(9),
                "{what}: the worker was to be SIGKILLed, got {first}"
            );
            let mid = store.get(&id).await.unwrap();
            assert!(
                !mid.status.is_terminal(),
                "{what}: finished before the crash point"
            );
            assert_eq!(mid.lease_owner.as_deref(), Some("worker-a"), "{what}");

            let owner = if when == "before" {
                "worker-a"
            } else {
                "worker-b"
            };
            let second = worker(db.url(), &id, owner, None).await;
            assert!(
                second.success(),
                "{what}: the restarted worker exited with {second}"
            );

            let done = store.get(&id).await.unwrap();
            assert_eq!(done.status, case.end, "{what}: {:?}", done.error);
            assert_eq!(done.lease_owner, None, "{what}");

            // Every action ran once, except the interrupted one: twice,
            // under the same key.
            let mut expected_calls: Vec<String> =
                case.keys.iter().map(|k| format!("{id}:{k}")).collect();
            expected_calls.push(format!("{id}:{}", case.at));
            expected_calls.sort();
            assert_eq!(
                keys(&c, "crash_calls", &id).await,
                expected_calls,
                "{what}: calls"
            );
            // Every effect applied exactly once.
            let mut expected: Vec<String> = case.keys.iter().map(|k| format!("{id}:{k}")).collect();
            expected.sort();
            assert_eq!(
                keys(&c, "crash_applied", &id).await,
                expected,
                "{what}: effects"
            );

            // The step log shows the interrupted attempt and its re-run.
            let log = store.steps(&id).await.unwrap();
            let (step, phase) = match case.at.split_once(':') {
                Some((s, _)) => (s, "compensate"),
                None => (case.at, "forward"),
            };
            let attempts: Vec<_> = log
                .iter()
                .filter(|r| r.step == step && r.phase == phase)
                .map(|r| (r.attempt, r.status.as_str(), r.owner.as_str()))
                .collect();
            assert_eq!(
                attempts,
                vec![(1, "interrupted", "worker-a"), (2, "succeeded", owner)],
                "{what}"
            );
            assert!(
                log.iter().all(|r| r.status != "started"),
                "{what}: nothing is left in flight"
            );
        }
    }
}
