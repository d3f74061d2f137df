//! The README's walk-through, programmatically: a real nats-server, a Weir
//! server (memory backend) for the bridge, a throwaway PostgreSQL database
//! for the saga. One order is confirmed, one is compensated (over the
//! credit limit: its stock comes back), notifications arrive through the
//! durable consumer, and the bridged Weir stream holds the order events.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use shop::inventory::SkuRef;
use shop::notifications::ListRequest;
use shop::{InventoryClient, NotificationsClient, OrdersClient, PlaceOrder, Shop, ShopConfig};
use tokio::net::TcpListener;
use weir_layer::store::postgres::testing::TestDatabase;
use weir_service::{Client, Ctx};
use weir_testkit::NatsServer;

async fn weir_server() -> (String, tokio::sync::oneshot::Sender<()>) {
    use weir_server::transport::{self, TransportConfig};
    let state = weir_server::AppState::new(
        Arc::new(weir_storage::memory::MemoryStorage::default()),
        weir_server::ServerConfig::conformance(),
    );
    let app = weir_server::router(state);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = transport::serve(listener, app, TransportConfig::default(), async {
            let _ = rx.await;
        })
        .await;
    });
    (format!("http://{addr}"), tx)
}

async fn read_stream(url: &str) -> Vec<serde_json::Value> {
    let r = reqwest::get(format!("{url}?offset=-1")).await.unwrap();
    if r.status() == 404 {
        return Vec::new();
    }
    let body = r.bytes().await.unwrap();
    if body.is_empty() {
        return Vec::new();
    }
    serde_json::from_slice(&body).unwrap()
}

fn ctx() -> Ctx {
    Ctx::with_timeout(Duration::from_secs(30))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn place_confirm_compensate_and_read_the_bridged_stream() {
    let nats = NatsServer::start();
    let (weir, _stop_weir) = weir_server().await;
    let db = TestDatabase::create("shop")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let stream = format!("{weir}/v1/stream/orders");
    let shop = Shop::start(ShopConfig {
        nats_url: nats.url().to_owned(),
        database_url: db.url().to_owned(),
        bridge_stream: Some(stream.clone()),
        bridge_auth: weir_bridge::WeirAuth::None,
        gateway: Some("127.0.0.1:0".parse().unwrap()),
    })
    .await
    .unwrap();

    let client = Client::new(shop.transport.clone());
    let orders = OrdersClient::connect(client.clone()).await.unwrap();
    let inventory = InventoryClient::connect(client.clone()).await.unwrap();
    let notifications = NotificationsClient::connect(client).await.unwrap();

    // 4 apples at 0.50 for Alice (credit 100.00): confirmed.
    let ok = orders
        .place(
            &ctx(),
            PlaceOrder {
                user: "alice".into(),
                sku: "apple".into(),
                qty: 4,
                order_id: Some("o-alice-1".into()),
            },
        )
        .await
        .unwrap();
    assert_eq!(ok.status, "confirmed", "{ok:?}");
    assert_eq!(ok.total, Some(200));
    let stock = inventory
        .stock(
            &ctx(),
            SkuRef {
                sku: "apple".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(stock.available, 96);

    // 50 apples (25.00) for Bob (credit 20.00): reserved, charge refused,
    // compensated — the stock comes back.
    let no = orders
        .place(
            &ctx(),
            PlaceOrder {
                user: "bob".into(),
                sku: "apple".into(),
                qty: 50,
                order_id: Some("o-bob-1".into()),
            },
        )
        .await
        .unwrap();
    assert_eq!(no.status, "cancelled", "{no:?}");
    assert!(
        no.reason
            .as_deref()
            .unwrap_or_default()
            .contains("credit limit"),
        "{no:?}"
    );
    let stock = inventory
        .stock(
            &ctx(),
            SkuRef {
                sku: "apple".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        stock.available, 96,
        "the compensation released the reservation"
    );

    // The same services over HTTP through the gateway: an order placed
    // with a POST, the stock read back, the OpenAPI document lists them.
    let gw = format!("http://{}", shop.gateway.unwrap());
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{gw}/api/orders/place"))
        .header("content-type", "application/json")
        .body(r#"{"user":"alice","sku":"pear","qty":2,"order_id":"o-alice-2"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let order: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(order["status"], "confirmed", "{order}");
    assert_eq!(order["total"], 240);
    let r = http
        .post(format!("{gw}/api/orders/place"))
        .header("content-type", "application/json")
        .body(r#"{"user":"alice","sku":"pear","qty":0}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "a request outside the contract is refused");
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/problem+json")
    );
    let doc: serde_json::Value = serde_json::from_slice(
        &http
            .get(format!("{gw}/openapi.json"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(doc["paths"].get("/api/orders/place").is_some(), "{doc}");

    // Placing the same order id again does not order twice.
    let again = orders
        .place(
            &ctx(),
            PlaceOrder {
                user: "alice".into(),
                sku: "apple".into(),
                qty: 4,
                order_id: Some("o-alice-1".into()),
            },
        )
        .await
        .unwrap();
    assert_eq!(again.status, "confirmed");
    assert_eq!(
        inventory
            .stock(
                &ctx(),
                SkuRef {
                    sku: "apple".into()
                }
            )
            .await
            .unwrap()
            .available,
        96
    );

    // The durable consumer told both users (bounded wait: it is async).
    let start = Instant::now();
    let sent = loop {
        let sent = notifications
            .list(&ctx(), ListRequest { user: None })
            .await
            .unwrap();
        if sent.len() >= 6 || start.elapsed() > Duration::from_secs(60) {
            break sent;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let texts: Vec<(String, String)> = sent
        .iter()
        .map(|n| (n.user.clone(), n.text.clone()))
        .collect();
    assert_eq!(texts.len(), 6, "{texts:?}");
    assert!(
        texts.contains(&(
            "alice".into(),
            "Order o-alice-1 is confirmed: 4 x apple.".into()
        )),
        "{texts:?}"
    );
    assert!(
        texts
            .iter()
            .any(|(u, t)| u == "bob" && t.starts_with("Order o-bob-1 was cancelled")),
        "{texts:?}"
    );

    // The bridge appended the order events to the Weir stream, once each.
    let start = Instant::now();
    let recs = loop {
        let recs = read_stream(&stream).await;
        if recs.len() >= 6 || start.elapsed() > Duration::from_secs(60) {
            break recs;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let seen: Vec<(String, String)> = recs
        .iter()
        .map(|r| {
            (
                r["subject"].as_str().unwrap().to_owned(),
                r["data"]["order_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("order.placed".to_owned(), "o-alice-1".to_owned()),
            ("order.confirmed".into(), "o-alice-1".into()),
            ("order.placed".into(), "o-bob-1".into()),
            ("order.cancelled".into(), "o-bob-1".into()),
            ("order.placed".into(), "o-alice-2".into()),
            ("order.confirmed".into(), "o-alice-2".into()),
        ]
    );
    assert!(
        recs[3]["data"]["reason"]
            .as_str()
            .unwrap()
            .contains("credit limit")
    );

    shop.stop().await.unwrap();
}
