//! An orchestrator in a process of its own, for tests/crash_resume.rs: it
//! runs until one saga instance is terminal, and can SIGKILL itself at a
//! named point inside a step so the test can check what a restarted
//! orchestrator makes of the debris. Not for production use.
//!
//! Environment:
//! * `WEIR_SAGA_WORKER_DB`: PostgreSQL URL (the saga tables and the test's
//!   `crash_calls` / `crash_ledger` / `crash_applied` tables exist);
//! * `WEIR_SAGA_WORKER_WAIT`: the instance id to wait for;
//! * `WEIR_SAGA_WORKER_OWNER`: the orchestrator's lease owner name;
//! * `WEIR_SAGA_WORKER_KILL` (optional): `before:KEY_SUFFIX` or
//!   `after:KEY_SUFFIX`, e.g. `after:credit` or `before:debit:compensate` —
//!   kill the process in that action before or after its effect.
//!
//! Every action appends its idempotency key to `crash_calls` (each
//! invocation), then applies its effect through the idempotency key
//! (`crash_ledger` dedupes, `crash_applied` gets a row only when the
//! ledger insert was new), the way a remote service honouring the key
//! would.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio_postgres::NoTls;
use weir_layer::problem::{ErrorCode, Problem};
use weir_saga::{Orchestrator, Registry, RetryPolicy, Saga, SagaStore, Step, StepCtx};

struct Effects {
    db: tokio_postgres::Client,
    kill: Option<(String, String)>,
}

impl Effects {
    fn maybe_die(&self, when: &str, ctx: &StepCtx) {
        let Some((w, suffix)) = &self.kill else {
            return;
        };
        if w == when && ctx.idempotency_key == format!("{}:{suffix}", ctx.saga_id) {
            let pid = std::process::id().to_string();
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid])
                .status();
            // Only if `kill` was missing: still a crash, never a clean exit.
            std::process::abort();
        }
    }

    async fn apply(&self, ctx: &StepCtx) -> Result<serde_json::Value, Problem> {
        let fail = |e: tokio_postgres::Error| Problem::new(ErrorCode::StorageError, e.to_string());
        self.db
            .execute(
                "INSERT INTO crash_calls (key) VALUES ($1)",
                &[&ctx.idempotency_key],
            )
            .await
            .map_err(fail)?;
        self.maybe_die("before", ctx);
        self.db
            .execute(
                "WITH ins AS (INSERT INTO crash_ledger (key) VALUES ($1) \
                 ON CONFLICT DO NOTHING RETURNING key) \
                 INSERT INTO crash_applied (key) SELECT key FROM ins",
                &[&ctx.idempotency_key],
            )
            .await
            .map_err(fail)?;
        self.maybe_die("after", ctx);
        Ok(json!({ format!("{}_{}", ctx.step, ctx.phase): ctx.attempt }))
    }
}

fn step(fx: &Arc<Effects>, name: &str) -> Step {
    let (a, c) = (fx.clone(), fx.clone());
    Step::new(name, move |ctx: StepCtx| {
        let fx = a.clone();
        async move { fx.apply(&ctx).await }
    })
    .compensate(move |ctx: StepCtx| {
        let fx = c.clone();
        async move { fx.apply(&ctx).await }
    })
    .deadline(Duration::from_secs(30))
}

/// `transfer` completes; `transfer_doomed` fails at its third step and
/// compensates the first two.
fn registry(fx: &Arc<Effects>) -> Result<Registry, weir_saga::SagaError> {
    let transfer = Saga::new("transfer", 1)
        .step(step(fx, "debit"))
        .step(step(fx, "credit"))
        .step(step(fx, "notify"));
    let doomed = Saga::new("transfer_doomed", 1)
        .step(step(fx, "debit"))
        .step(step(fx, "credit"))
        .step(
            Step::new("approve", |_ctx: StepCtx| async {
                Err::<serde_json::Value, _>(Problem::new(ErrorCode::Forbidden, "not approved"))
            })
            .retry(RetryPolicy::none()),
        );
    Registry::new().with(transfer)?.with(doomed)
}

fn env(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("{name} is not set"))
}

async fn run() -> Result<(), String> {
    let url = env("WEIR_SAGA_WORKER_DB")?;
    let wait = env("WEIR_SAGA_WORKER_WAIT")?;
    let owner = env("WEIR_SAGA_WORKER_OWNER")?;
    let kill = std::env::var("WEIR_SAGA_WORKER_KILL")
        .ok()
        .map(|k| match k.split_once(':') {
            Some((w, s)) => Ok((w.to_owned(), s.to_owned())),
            None => Err(format!(
                "WEIR_SAGA_WORKER_KILL={k}: expected WHEN:KEY_SUFFIX"
            )),
        })
        .transpose()?;
    let (db, conn) = tokio_postgres::connect(&url, NoTls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let fx = Arc::new(Effects { db, kill });
    let store = SagaStore::new(&url).map_err(|e| e.to_string())?;
    let orch = Orchestrator::builder(store.clone(), registry(&fx).map_err(|e| e.to_string())?)
        .owner(owner)
        .lease(Duration::from_secs(1))
        .poll_interval(Duration::from_millis(50))
        .build();
    let done = async move {
        if let Err(e) = store.wait(&wait, Duration::from_secs(300)).await {
            eprintln!("crash worker: {e}");
        }
    };
    orch.run(done).await.map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crash worker: {e}");
            ExitCode::from(2)
        }
    }
}
