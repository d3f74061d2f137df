//! Orders: `orders.place` runs the `place_order` saga and answers with the
//! outcome; `orders.get` reads it back.
//!
//! The saga, persisted in PostgreSQL so it resumes after a crash:
//!
//! | step | forward | compensation |
//! |---|---|---|
//! | `open` | publish `order.placed` | publish `order.cancelled` (with the reason) |
//! | `reserve` | `inventory.reserve` | `inventory.release` |
//! | `charge` | `users.charge` (refused past the credit limit) | `users.refund` |
//! | `confirm` | publish `order.confirmed` | — |
//!
//! Events are published through JetStream with an id derived from the
//! order (`o-…:placed`), so a step re-run publishes once. Every service
//! call carries a key derived from the saga id for the same reason.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use weir_saga::{Orchestrator, RetryPolicy, Saga, SagaError, SagaStore, Status, Step, StepCtx};
use weir_service::durable::DurablePublisher;
use weir_service::{Client, Ctx, ErrorCode, Problem};

/// The saga's name in the registry.
pub const SAGA: &str = "place_order";

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct PlaceOrder {
    #[schemars(length(min = 1, max = 64))]
    pub user: String,
    #[schemars(length(min = 1, max = 64))]
    pub sku: String,
    #[schemars(range(min = 1, max = 1000))]
    pub qty: u32,
    /// Lets a client retry `place` without ordering twice; generated when
    /// absent. Letters, digits, `-` and `_`.
    #[serde(default)]
    pub order_id: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct OrderRef {
    pub order_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct Order {
    pub order_id: String,
    /// `pending`, `confirmed`, `cancelled` or `failed`.
    pub status: String,
    pub user: String,
    pub sku: String,
    pub qty: u32,
    /// Cents, once stock was reserved.
    pub total: Option<u64>,
    /// Why the order was cancelled or failed.
    pub reason: Option<String>,
}

/// The orders service.
pub struct Orders {
    pub orchestrator: Orchestrator,
    /// How long `place` waits for the saga before answering `pending`.
    pub wait: Duration,
}

fn problem(e: SagaError) -> Problem {
    match e {
        SagaError::NotFound(_) => Problem::new(ErrorCode::NotFound, e.to_string()),
        SagaError::InvalidInput(_) => Problem::new(ErrorCode::JsonInvalid, e.to_string()),
        other => Problem::new(ErrorCode::InternalError, other.to_string()),
    }
}

fn order_of(inst: &weir_saga::Instance) -> Order {
    let s = &inst.state;
    let status = match inst.status {
        Status::Completed => "confirmed",
        Status::Compensated => "cancelled",
        Status::Failed => "failed",
        Status::Running | Status::Compensating => "pending",
    };
    Order {
        order_id: inst.id.clone(),
        status: status.into(),
        user: s["user"].as_str().unwrap_or_default().into(),
        sku: s["sku"].as_str().unwrap_or_default().into(),
        qty: s["qty"]
            .as_u64()
            .and_then(|q| u32::try_from(q).ok())
            .unwrap_or(0),
        total: s["total"].as_u64(),
        reason: inst.error.clone(),
    }
}

#[weir_service::service(
    name = "orders",
    version = "1.0.0",
    description = "Places orders through a saga"
)]
impl Orders {
    /// Places an order and waits (a bounded time) for the saga's outcome.
    #[weir(idempotent)]
    async fn place(&self, ctx: Ctx, req: PlaceOrder) -> Result<Order, Problem> {
        let id = req.order_id.clone().unwrap_or_else(|| {
            format!(
                "o-{}",
                DurablePublisher::new_event_id().replace(|c: char| !c.is_ascii_alphanumeric(), "")
            )
        });
        let input = json!({ "order_id": id, "user": req.user, "sku": req.sku, "qty": req.qty });
        self.orchestrator
            .start_with_id(&id, SAGA, input)
            .await
            .map_err(problem)?;
        let wait = ctx.remaining().unwrap_or(self.wait).min(self.wait);
        let inst = match self.orchestrator.wait(&id, wait).await {
            Ok(i) => i,
            Err(SagaError::WaitTimeout(_)) => {
                self.orchestrator.store().get(&id).await.map_err(problem)?
            }
            Err(e) => return Err(problem(e)),
        };
        Ok(order_of(&inst))
    }

    #[weir(idempotent)]
    async fn get(&self, _ctx: Ctx, req: OrderRef) -> Result<Order, Problem> {
        let inst = self
            .orchestrator
            .store()
            .get(&req.order_id)
            .await
            .map_err(problem)?;
        Ok(order_of(&inst))
    }
}

fn call_ctx(ctx: &StepCtx) -> Ctx {
    Ctx::with_timeout(ctx.remaining())
}

fn str_of(ctx: &StepCtx, key: &str) -> String {
    ctx.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// The `place_order` saga, version 1.
pub fn saga(client: Client, events: DurablePublisher, store: SagaStore) -> Saga {
    let publish = |events: DurablePublisher, event: &'static str| {
        move |ctx: StepCtx| {
            let events = events.clone();
            async move {
                let id = str_of(&ctx, "order_id");
                let body = json!({
                    "order_id": id, "user": ctx.get("user"), "sku": ctx.get("sku"),
                    "qty": ctx.get("qty"), "total": ctx.get("total"),
                });
                events
                    .publish_json(&format!("order.{event}"), &format!("{id}:{event}"), &body)
                    .await
                    .map_err(|e| Problem::new(ErrorCode::InternalError, e.to_string()))?;
                Ok(Value::Null)
            }
        }
    };
    let cancelled = {
        let (events, store) = (events.clone(), store);
        move |ctx: StepCtx| {
            let (events, store) = (events.clone(), store.clone());
            async move {
                let id = str_of(&ctx, "order_id");
                let reason = store.get(&ctx.saga_id).await.ok().and_then(|i| i.error);
                let body = json!({ "order_id": id, "user": ctx.get("user"), "reason": reason });
                events
                    .publish_json("order.cancelled", &format!("{id}:cancelled"), &body)
                    .await
                    .map_err(|e| Problem::new(ErrorCode::InternalError, e.to_string()))?;
                Ok(Value::Null)
            }
        }
    };
    let reserve = {
        let client = client.clone();
        move |ctx: StepCtx| {
            let client = client.clone();
            async move {
                let req = json!({ "sku": ctx.get("sku"), "qty": ctx.get("qty"), "key": ctx.idempotency_key });
                let r: Value = client
                    .call(&call_ctx(&ctx), "inventory.reserve", &req, true)
                    .await
                    .map_err(|e| e.to_problem())?;
                Ok(json!({ "total": r["total"] }))
            }
        }
    };
    let release = {
        let client = client.clone();
        move |ctx: StepCtx| {
            let client = client.clone();
            async move {
                // The forward step's key: `{saga}:reserve`.
                let req = json!({ "key": format!("{}:reserve", ctx.saga_id) });
                let _: Value = client
                    .call(&call_ctx(&ctx), "inventory.release", &req, true)
                    .await
                    .map_err(|e| e.to_problem())?;
                Ok(Value::Null)
            }
        }
    };
    let charge = {
        let client = client.clone();
        move |ctx: StepCtx| {
            let client = client.clone();
            async move {
                let req = json!({ "user": ctx.get("user"), "amount": ctx.get("total"), "key": ctx.idempotency_key });
                let r: Value = client
                    .call(&call_ctx(&ctx), "users.charge", &req, true)
                    .await
                    .map_err(|e| e.to_problem())?;
                Ok(json!({ "remaining_credit": r["remaining_credit"] }))
            }
        }
    };
    let refund = move |ctx: StepCtx| {
        let client = client.clone();
        async move {
            let req = json!({ "key": format!("{}:charge", ctx.saga_id) });
            let _: Value = client
                .call(&call_ctx(&ctx), "users.refund", &req, true)
                .await
                .map_err(|e| e.to_problem())?;
            Ok(Value::Null)
        }
    };
    // Three attempts for a lost reply or a slow service. The saga retries
    // refusals (out of stock, over the limit) too; the keyed calls make
    // that harmless, it only delays the compensation a little.
    let business =
        RetryPolicy::attempts(3).backoff(Duration::from_millis(100), Duration::from_secs(1));
    Saga::new(SAGA, 1)
        .step(Step::new("open", publish(events.clone(), "placed")).compensate(cancelled))
        .step(
            Step::new("reserve", reserve)
                .compensate(release)
                .retry(business),
        )
        .step(
            Step::new("charge", charge)
                .compensate(refund)
                .retry(business),
        )
        .step(Step::new("confirm", publish(events, "confirmed")))
}
