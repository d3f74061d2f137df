#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The test kit in in-process mode: a service tested against a mocked
//! dependency, its events caught, under tokio's paused clock (no server).

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use weir_service::{
    Client, Ctx, ErrorCode, Problem, Reply, Request, ServiceBuilder, ServiceContract, ServiceError,
    TimerMode,
};
use weir_testkit::{EventCatcher, MockService, in_process};

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct QuoteRequest {
    pub sku: String,
    pub qty: u32,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Quote {
    pub cents: u64,
}

/// The dependency (its real implementation is not used in this test).
pub struct Pricing;

#[weir_service::service(name = "pricing", version = "1.0.0")]
impl Pricing {
    async fn quote(&self, _ctx: Ctx, _req: QuoteRequest) -> Result<Quote, Problem> {
        Err(Problem::internal())
    }
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Order {
    pub sku: String,
    pub qty: u32,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct Placed {
    pub total_cents: u64,
}

/// The service under test, with its dependency injected.
pub struct Checkout {
    pricing: PricingClient,
    events: Client,
}

#[weir_service::service(name = "checkout", version = "1.0.0", events(Placed = "orders.placed"))]
impl Checkout {
    async fn place(&self, ctx: Ctx, order: Order) -> Result<Placed, Problem> {
        let q = self
            .pricing
            .quote(
                &ctx,
                QuoteRequest {
                    sku: order.sku.clone(),
                    qty: order.qty,
                },
            )
            .await?;
        let placed = Placed {
            total_cents: q.cents,
        };
        self.events.publish(&ctx, "orders.placed", &placed).await?;
        Ok(placed)
    }
}

#[tokio::test(start_paused = true)]
async fn service_with_mocked_dependency_and_caught_events() {
    let bus = in_process();
    let mock = MockService::of::<Pricing>()
        .on("quote", |r: QuoteRequest| {
            Ok(Quote {
                cents: 250 * u64::from(r.qty),
            })
        })
        .start(bus.clone())
        .await;
    let catcher = EventCatcher::start(&bus, "orders.>").await;
    let client = Client::new(bus.clone());
    let pricing = PricingClient::connect(client.clone()).await.unwrap();
    let _svc = Checkout {
        pricing,
        events: client.clone(),
    }
    .builder()
    .start(bus.clone())
    .await
    .unwrap();
    let checkout = CheckoutClient::connect(client).await.unwrap();
    let ctx = Ctx::with_timeout(Duration::from_secs(1)).correlation("order-1");
    let placed = checkout
        .place(
            &ctx,
            Order {
                sku: "tea".into(),
                qty: 3,
            },
        )
        .await
        .unwrap();
    assert_eq!(placed, Placed { total_cents: 750 });
    assert_eq!(
        mock.calls("quote"),
        vec![serde_json::json!({"sku": "tea", "qty": 3})]
    );
    let events = catcher.wait_for(1, Duration::from_secs(1)).await;
    let h = events[0].headers.as_ref().unwrap();
    assert_eq!(h.get("Weir-Correlation-Id").unwrap().as_str(), "order-1");
    assert_eq!(catcher.json::<Placed>(), vec![Placed { total_cents: 750 }]);
    // The event's schema is part of the published contract.
    assert_eq!(Checkout::contract().events[0].subject, "orders.placed");
    let info = weir_service::Discovery::new(bus.clone())
        .info_one("checkout")
        .await
        .unwrap()
        .unwrap();
    assert!(info.metadata["weir.events"].contains("total_cents"));
}

#[tokio::test(start_paused = true)]
async fn virtual_time_makes_deadlines_and_timers_instant() {
    let bus = in_process();
    let ticks = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t = ticks.clone();
    let _svc = ServiceBuilder::new("sleepy", "1.0.0")
        .endpoint("nap", |_r: Request| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(Reply::new("rested"))
        })
        .timer(
            "hourly",
            Duration::from_secs(3600),
            TimerMode::exactly_one(),
            move || {
                let t = t.clone();
                async move {
                    t.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            },
        )
        .start(bus.clone())
        .await
        .unwrap();
    let wall = std::time::Instant::now();
    let client = Client::new(bus);
    let r = client
        .request(
            &Ctx::with_timeout(Duration::from_secs(30)),
            "sleepy.nap",
            Default::default(),
            false,
        )
        .await;
    assert!(matches!(r, Err(ServiceError::DeadlineExceeded)), "{r:?}");
    tokio::time::sleep(Duration::from_secs(10 * 3600)).await;
    let n = ticks.load(std::sync::atomic::Ordering::SeqCst);
    assert!((9..=11).contains(&n), "{n} ticks in 10 virtual hours");
    assert!(wall.elapsed() < Duration::from_secs(5));
    // A call to a method nobody serves.
    let r = client
        .request(
            &Ctx::with_timeout(Duration::from_secs(1)),
            "sleepy.missing",
            Default::default(),
            false,
        )
        .await;
    assert!(matches!(r, Err(ServiceError::NoResponders(_))), "{r:?}");
    let _ = ErrorCode::NotFound;
}
