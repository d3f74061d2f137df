//! Sagas that survive a crash: orchestrated steps with compensations,
//! per-step deadlines and retries, state and a write-ahead step log in
//! PostgreSQL, leases so that several orchestrators share the work, and
//! versioned definitions. The model and the crash-resume argument are in
//! docs/sagas.md.
//!
//! ```no_run
//! use std::time::Duration;
//! use serde_json::json;
//! use weir_layer::problem::Problem;
//! use weir_saga::{Orchestrator, Registry, RetryPolicy, Saga, SagaStore, Step, StepCtx};
//!
//! # async fn demo(client: weir_service::Client) -> Result<(), Box<dyn std::error::Error>> {
//! let reserve = {
//!     let client = client.clone();
//!     move |ctx: StepCtx| {
//!         let client = client.clone();
//!         async move {
//!             // The idempotency key makes a re-run after a crash harmless.
//!             let req = json!({ "sku": ctx.get("sku"), "key": ctx.idempotency_key });
//!             let call = weir_service::Ctx::with_timeout(ctx.remaining());
//!             let reply: serde_json::Value = client
//!                 .call(&call, "inventory.reserve", &req, true)
//!                 .await
//!                 .map_err(|e| e.to_problem())?;
//!             Ok(json!({ "reservation": reply["id"] }))   // merged into the state
//!         }
//!     }
//! };
//! let release = move |ctx: StepCtx| async move {
//!     // … call inventory.release with ctx.get("reservation") …
//!     Ok::<_, Problem>(json!(null))
//! };
//! let order_v1 = Saga::new("place_order", 1)
//!     .step(
//!         Step::new("reserve", reserve)
//!             .compensate(release)
//!             .deadline(Duration::from_secs(5))
//!             .retry(RetryPolicy::attempts(3)),
//!     )
//!     .step(Step::new("charge", |_ctx: StepCtx| async { Ok(json!({ "paid": true })) }));
//!
//! let store = SagaStore::new("postgres://postgres@127.0.0.1:5432/shop")?;
//! store.migrate().await?;                       // or `weir migrate up --set saga`
//! let orch = Orchestrator::builder(store, Registry::new().with(order_v1)?).build();
//! let runner = tokio::spawn({
//!     let orch = orch.clone();
//!     async move { orch.run(std::future::pending()).await }
//! });
//! let id = orch.start("place_order", json!({ "sku": "apple", "qty": 2 })).await?;
//! let done = orch.wait(&id, Duration::from_secs(30)).await?;
//! println!("{} is {}", done.id, done.status);
//! # runner.abort();
//! # Ok(()) }
//! ```

pub mod definition;
pub mod error;
pub mod metrics;
pub mod orchestrator;
pub mod registry;
pub mod schema;
pub mod status;
pub mod store;

pub use definition::{Action, ActionFuture, Phase, RetryPolicy, Saga, Step, StepCtx};
pub use error::SagaError;
pub use orchestrator::{Orchestrator, OrchestratorBuilder};
pub use registry::Registry;
pub use schema::MIGRATIONS;
pub use status::Status;
pub use store::{Instance, ListFilter, SagaStore, StepRecord};
