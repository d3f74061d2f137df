//! Notifications: a durable consumer of the `order` event family that
//! "sends" a message per order event (kept in memory here), and
//! `notifications.list` to read them. Being durable, it catches up on
//! events published while it was down, and the ledger handles each event
//! once even when JetStream redelivers it.

use std::sync::Arc;

use parking_lot::Mutex;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use weir_service::durable::{DurableListener, DurableOptions, Family};
use weir_service::{Ctx, Problem, ServiceBuilder, ServiceContract};

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct Notification {
    pub user: String,
    pub order_id: String,
    pub text: String,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct ListRequest {
    /// Only this user's notifications.
    #[serde(default)]
    pub user: Option<String>,
}

/// The notifications service (its outbox is shared with the consumer).
#[derive(Clone, Default)]
pub struct Notifications {
    sent: Arc<Mutex<Vec<Notification>>>,
}

/// The text a user gets for an order event, or `None` for events that do
/// not notify.
pub fn text_for(subject: &str, ev: &Value) -> Option<String> {
    let id = ev["order_id"].as_str().unwrap_or("?");
    match subject {
        "order.placed" => Some(format!("We got your order {id}.")),
        "order.confirmed" => Some(format!(
            "Order {id} is confirmed: {} x {}.",
            ev["qty"],
            ev["sku"].as_str().unwrap_or("?")
        )),
        "order.cancelled" => Some(format!(
            "Order {id} was cancelled: {}.",
            ev["reason"].as_str().unwrap_or("unknown reason")
        )),
        _ => None,
    }
}

impl Notifications {
    /// The service with its durable listener on `order.>`.
    pub fn with_consumer(self, family: Family) -> ServiceBuilder {
        let sent = self.sent.clone();
        self.builder().durable(
            DurableListener::new("notify", family, "order.>")
                .options(DurableOptions::default().max_deliver(5))
                .handler(move |ev| {
                    let sent = sent.clone();
                    async move {
                        let body: Value = ev.json()?;
                        if let Some(text) = text_for(&ev.subject, &body) {
                            let user = body["user"].as_str().unwrap_or_default().to_owned();
                            let order_id = body["order_id"].as_str().unwrap_or_default().to_owned();
                            tracing::info!(%user, %order_id, %text, "notification sent");
                            sent.lock().push(Notification {
                                user,
                                order_id,
                                text,
                            });
                        }
                        Ok::<(), Problem>(())
                    }
                }),
        )
    }
}

#[weir_service::service(
    name = "notifications",
    version = "1.0.0",
    description = "Tells users about their orders"
)]
impl Notifications {
    #[weir(idempotent)]
    async fn list(&self, _ctx: Ctx, req: ListRequest) -> Result<Vec<Notification>, Problem> {
        let all = self.sent.lock();
        Ok(all
            .iter()
            .filter(|n| req.user.as_ref().is_none_or(|u| *u == n.user))
            .cloned()
            .collect())
    }
}
