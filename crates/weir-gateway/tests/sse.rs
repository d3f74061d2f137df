//! `GET /events`: events published on NATS arrive as SSE, tenant-scoped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};
use support::{http, jwt_layer, orders_for_clerks, start, token};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_delivers_tenant_events() {
    let env = start(orders_for_clerks(), jwt_layer()).await;
    let r = http()
        .get(format!("{}/events?subject=orders.>", env.base))
        .bearer_auth(token("ana", "acme", &["clerk"]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");

    // Another tenant's event first, then ours, until ours arrives.
    let bus = env.bus.clone();
    let publisher = tokio::spawn(async move {
        loop {
            for (subject, who) in [
                ("globex.orders.created", "globex"),
                ("acme.orders.created", "acme"),
            ] {
                bus.publish(
                    subject.into(),
                    None,
                    None,
                    Bytes::from(json!({"tenant": who}).to_string()),
                )
                .await
                .unwrap();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut body = r.bytes_stream();
    let mut buf = String::new();
    let event = 'found: loop {
        let chunk = tokio::time::timeout(Duration::from_secs(20), body.next())
            .await
            .expect("an event")
            .expect("the stream is open")
            .unwrap();
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            if block.lines().any(|l| l == "event: message") {
                let data = block
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .unwrap();
                break 'found serde_json::from_str::<Value>(data).unwrap();
            }
        }
    };
    publisher.abort();
    // The tenant token is not shown, and only the principal's tenant is seen.
    assert_eq!(
        event,
        json!({"subject": "orders.created", "data": {"tenant": "acme"}})
    );
}
