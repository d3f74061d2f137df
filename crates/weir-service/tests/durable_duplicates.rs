#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The same event published twice is handled once: inside the duplicate
//! window the broker drops the copy (same `Nats-Msg-Id`); a copy that gets
//! past the broker (another `Nats-Msg-Id`, e.g. republished after the
//! window) is skipped by the consumer's KV ledger. A listener declared
//! idempotent has no ledger and sees that copy — which shows the ledger is
//! what skipped it.

mod durable_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_nats::HeaderMap;
use bytes::Bytes;
use durable_support::{env, eventually, eventually_all_acked};
use weir_service::durable::{DurableListener, DurableOptions, DurablePublisher, Family};
use weir_service::{Problem, ServiceBuilder};

fn counting(name: &str, family: &Family, idempotent: bool, n: Arc<AtomicU64>) -> DurableListener {
    DurableListener::new(name, family.clone(), "shipments.>")
        // One at a time: the KV ledger is check-then-record, so two copies
        // of an event handled *concurrently* can both run (docs/events.md;
        // the PostgreSQL inbox closes that gap with its row lock).
        .options(
            DurableOptions::default()
                .idempotent(idempotent)
                .concurrency(1),
        )
        .handler(move |_ev| {
            let n = n.clone();
            async move {
                n.fetch_add(1, Ordering::SeqCst);
                Ok::<(), Problem>(())
            }
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_handled_once() {
    let env = env().await;
    let js = env.nats.jetstream().clone();
    let family = Family::new("shipments");
    family.ensure(&js).await.unwrap();
    let ledgered = Arc::new(AtomicU64::new(0));
    let idempotent = Arc::new(AtomicU64::new(0));
    let _svc = ServiceBuilder::new("notify", "1.0.0")
        .durable(counting("mail", &family, false, ledgered.clone()))
        .durable(counting("audit", &family, true, idempotent.clone()))
        .start(env.transport.clone())
        .await
        .unwrap();

    let p = DurablePublisher::new(js.clone());
    let body = Bytes::from_static(b"{}");
    let first = p
        .publish("shipments.sent", "ship-1", HeaderMap::new(), body.clone())
        .await
        .unwrap();
    let second = p
        .publish("shipments.sent", "ship-1", HeaderMap::new(), body.clone())
        .await
        .unwrap();
    assert!(!first.duplicate);
    assert!(second.duplicate, "broker dedupe inside the window");
    assert_eq!(second.seq, first.seq);

    // Past the broker: same event id, another Nats-Msg-Id.
    let third = p
        .publish_with_msg_id(
            "shipments.sent",
            "ship-1",
            "ship-1-again",
            HeaderMap::new(),
            body,
        )
        .await
        .unwrap();
    assert!(!third.duplicate);
    assert_eq!(third.seq, first.seq + 1);

    // A marker event after both: once each listener handled it, the copy
    // before it was delivered too (one consumer delivers in order here).
    p.publish_json("shipments.sent", "ship-2", &serde_json::json!({}))
        .await
        .unwrap();
    eventually(
        "the idempotent listener saw all three stored events",
        || async { idempotent.load(Ordering::SeqCst) == 3 },
    )
    .await;
    eventually("the ledgered listener handled two", || async {
        ledgered.load(Ordering::SeqCst) == 2
    })
    .await;
    // Everything acked: the skipped copy was not left pending.
    eventually_all_acked(&js, "EVENTS_shipments", "notify_mail").await;
    assert_eq!(ledgered.load(Ordering::SeqCst), 2);
}
