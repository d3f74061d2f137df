#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A handler that keeps failing: redelivered with backoff up to
//! `max_deliver`, then dead-lettered with the payload, subject, headers,
//! stream sequence, the error and every attempt. A non-retryable error
//! dead-letters at the first delivery.

mod durable_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use durable_support::{consumer_info, dead_letters, env, eventually};
use weir_service::durable::{DurableListener, DurableOptions, DurablePublisher, Family};
use weir_service::{ErrorCode, Problem, ServiceBuilder};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_then_dead_letters_with_history() {
    let env = env().await;
    let js = env.nats.jetstream().clone();
    let family = Family::new("orders");
    family.ensure(&js).await.unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let c = calls.clone();
    let svc = ServiceBuilder::new("billing", "1.0.0")
        .durable(
            DurableListener::new("invoice", family.clone(), "orders.>")
                .options(
                    DurableOptions::default()
                        .max_deliver(3)
                        .backoff(Duration::from_millis(10), Duration::from_millis(40)),
                )
                .handler(move |ev| {
                    let c = c.clone();
                    async move {
                        c.fetch_add(1, Ordering::SeqCst);
                        if ev.subject == "orders.invalid" {
                            return Err(Problem::new(ErrorCode::JsonInvalid, "no such order"));
                        }
                        Err(Problem::new(
                            ErrorCode::StorageUnavailable,
                            format!("ledger down (delivery {})", ev.delivered),
                        ))
                    }
                }),
        )
        .start(env.transport.clone())
        .await
        .unwrap();

    let publisher = DurablePublisher::new(js.clone());
    let mut h = HeaderMap::new();
    h.insert("X-Tenant", "acme");
    let first = publisher
        .publish(
            "orders.placed",
            "ev-1",
            h,
            Bytes::from_static(b"{\"id\":1}"),
        )
        .await
        .unwrap();

    eventually("the dead letter", || async {
        !dead_letters(&js).await.is_empty()
    })
    .await;
    let letters = dead_letters(&js).await;
    assert_eq!(letters.len(), 1);
    let d = &letters[0].1;
    assert_eq!(d.consumer, "billing_invoice");
    assert_eq!(d.family, "orders");
    assert_eq!(d.stream, "EVENTS_orders");
    assert_eq!(d.stream_seq, first.seq);
    assert_eq!(d.subject, "orders.placed");
    assert_eq!(d.event_id.as_deref(), Some("ev-1"));
    assert_eq!(d.headers.get("X-Tenant"), Some(&vec!["acme".to_owned()]));
    assert_eq!(d.payload_bytes().unwrap(), b"{\"id\":1}");
    assert_eq!(d.error.code, ErrorCode::StorageUnavailable);
    assert_eq!(d.error.detail, "ledger down (delivery 3)");
    let deliveries: Vec<u64> = d.attempts.iter().map(|a| a.delivery).collect();
    assert_eq!(deliveries, vec![1, 2, 3]);
    assert!(d.attempts.iter().all(|a| !a.at.is_empty()));
    assert_eq!(
        d.attempts[0].error.detail, "ledger down (delivery 1)",
        "each attempt keeps its own error"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // Non-retryable: dead-lettered at the first delivery.
    publisher
        .publish_json("orders.invalid", "ev-2", &serde_json::json!({}))
        .await
        .unwrap();
    eventually("the second dead letter", || async {
        dead_letters(&js).await.len() == 2
    })
    .await;
    let letters = dead_letters(&js).await;
    let d = &letters[1].1;
    assert_eq!(d.error.code, ErrorCode::JsonInvalid);
    assert_eq!(d.attempts.len(), 1);
    assert_eq!(calls.load(Ordering::SeqCst), 4);

    // The originals are terminated, not pending.
    assert!(svc.drain().await);
    let info = consumer_info(&js, "EVENTS_orders", "billing_invoice").await;
    assert_eq!(info.num_pending, 0);
    assert_eq!(info.num_ack_pending, 0);
}
