//! Steps that call real services over a real nats-server: an inventory
//! service's `reserve` (compensated by `release`) and a payment service
//! that refuses the second order. The idempotency key travels in the
//! request, so the service can recognise a re-run; the remote problem
//! ends up in the step log and the reservation is released.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use weir_layer::problem::{ErrorCode, Problem};
use weir_saga::{Orchestrator, Registry, Saga, Status, Step, StepCtx};
use weir_service::{Client, Ctx, Reply, Request, ServiceBuilder};
use weir_testkit::NatsServer;

use support::{GIVE_UP, database};

/// The inventory: stock per SKU and reservations by idempotency key.
#[derive(Default)]
struct Inventory {
    stock: HashMap<String, i64>,
    reservations: HashMap<String, (String, i64)>,
    released: Vec<String>,
}

fn decode(req: &Request) -> Result<Value, Problem> {
    serde_json::from_slice(&req.payload)
        .map_err(|e| Problem::new(ErrorCode::JsonInvalid, e.to_string()))
}

fn inventory_service(inv: Arc<Mutex<Inventory>>) -> ServiceBuilder {
    let (a, b) = (inv.clone(), inv);
    ServiceBuilder::new("inventory", "1.0.0")
        .endpoint("reserve", move |req: Request| {
            let inv = a.clone();
            async move {
                let body = decode(&req)?;
                let key = body["key"].as_str().unwrap_or_default().to_owned();
                let sku = body["sku"].as_str().unwrap_or_default().to_owned();
                let qty = body["qty"].as_i64().unwrap_or(0);
                let mut inv = inv.lock().unwrap();
                // A repeated key is the same reservation, not a new one.
                if !inv.reservations.contains_key(&key) {
                    let left = inv.stock.get(&sku).copied().unwrap_or(0);
                    if left < qty {
                        return Err(Problem::new(ErrorCode::LimitExceeded, "out of stock"));
                    }
                    inv.stock.insert(sku.clone(), left - qty);
                    inv.reservations.insert(key.clone(), (sku, qty));
                }
                Ok(Reply::new(json!({ "reservation": key }).to_string()))
            }
        })
        .endpoint("release", move |req: Request| {
            let inv = b.clone();
            async move {
                let body = decode(&req)?;
                let id = body["reservation"].as_str().unwrap_or_default().to_owned();
                let mut inv = inv.lock().unwrap();
                if let Some((sku, qty)) = inv.reservations.remove(&id) {
                    *inv.stock.entry(sku).or_default() += qty;
                    inv.released.push(id);
                }
                Ok(Reply::new("{}"))
            }
        })
}

fn payment_service() -> ServiceBuilder {
    ServiceBuilder::new("payments", "1.0.0").endpoint("charge", |req: Request| async move {
        let body = decode(&req)?;
        if body["amount"].as_i64().unwrap_or(0) > 100 {
            return Err(Problem::new(ErrorCode::Forbidden, "card limit exceeded"));
        }
        Ok(Reply::new(json!({ "charge": "ch-1" }).to_string()))
    })
}

/// Calls `subject` with `body`, the step's deadline and its idempotency
/// key; a failed call becomes the step's problem.
async fn call(
    client: &Client,
    ctx: &StepCtx,
    subject: &str,
    mut body: Value,
) -> Result<Value, Problem> {
    body["key"] = json!(ctx.idempotency_key);
    client
        .call(&Ctx::with_timeout(ctx.remaining()), subject, &body, true)
        .await
        .map_err(|e| e.to_problem())
}

fn order_saga(client: &Client) -> Saga {
    let (c1, c2, c3) = (client.clone(), client.clone(), client.clone());
    Saga::new("order", 1)
        .step(
            Step::new("reserve", move |ctx: StepCtx| {
                let c = c1.clone();
                async move {
                    let body = json!({ "sku": ctx.get("sku"), "qty": ctx.get("qty") });
                    call(&c, &ctx, "inventory.reserve", body).await
                }
            })
            .compensate(move |ctx: StepCtx| {
                let c = c2.clone();
                async move {
                    let body = json!({ "reservation": ctx.get("reservation") });
                    call(&c, &ctx, "inventory.release", body).await
                }
            })
            .deadline(Duration::from_secs(10)),
        )
        .step(
            Step::new("charge", move |ctx: StepCtx| {
                let c = c3.clone();
                async move {
                    call(
                        &c,
                        &ctx,
                        "payments.charge",
                        json!({ "amount": ctx.get("amount") }),
                    )
                    .await
                }
            })
            .retry(weir_saga::RetryPolicy::none())
            .deadline(Duration::from_secs(10)),
        )
}

#[tokio::test]
async fn steps_call_services_and_compensate_through_them() {
    let nats = NatsServer::start();
    let transport = nats.connect().await;
    let inv = Arc::new(Mutex::new(Inventory::default()));
    inv.lock().unwrap().stock.insert("widget".into(), 5);
    let _inventory = inventory_service(inv.clone())
        .start(transport.clone())
        .await
        .unwrap();
    let _payments = payment_service().start(transport.clone()).await.unwrap();

    let (_db, store) = database("saga_rpc").await;
    let client = Client::new(nats.connect().await);
    let orch = Orchestrator::builder(
        store.clone(),
        Registry::new().with(order_saga(&client)).unwrap(),
    )
    .build();

    let ok = orch
        .start("order", json!({ "sku": "widget", "qty": 2, "amount": 40 }))
        .await
        .unwrap();
    let refused = orch
        .start("order", json!({ "sku": "widget", "qty": 1, "amount": 500 }))
        .await
        .unwrap();
    orch.run_pending().await.unwrap();

    let ok = orch.wait(&ok, GIVE_UP).await.unwrap();
    assert_eq!(ok.status, Status::Completed);
    assert_eq!(ok.state["reservation"], json!(format!("{}:reserve", ok.id)));
    assert_eq!(ok.state["charge"], "ch-1");

    let refused = orch.wait(&refused, GIVE_UP).await.unwrap();
    assert_eq!(refused.status, Status::Compensated);
    assert!(
        refused
            .error
            .as_deref()
            .unwrap()
            .contains("card limit exceeded")
    );
    let log = store.steps(&refused.id).await.unwrap();
    let charge = log.iter().find(|r| r.step == "charge").unwrap();
    assert_eq!(charge.error.as_ref().unwrap()["code"], "forbidden");
    assert_eq!(charge.error.as_ref().unwrap()["status"], 403);

    let inv = inv.lock().unwrap();
    assert_eq!(
        inv.stock["widget"], 3,
        "the refused order's unit is back in stock"
    );
    assert_eq!(inv.released, vec![format!("{}:reserve", refused.id)]);
    assert!(inv.reservations.contains_key(&format!("{}:reserve", ok.id)));
}
