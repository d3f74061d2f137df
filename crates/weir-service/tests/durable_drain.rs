#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Drain with a durable handler in flight: fetching stops, the handler
//! finishes, its event is acked (not redelivered), then drain returns.

mod durable_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use durable_support::{consumer_info, env, eventually};
use tokio::sync::Notify;
use weir_service::durable::{DurableListener, DurablePublisher, Family};
use weir_service::{Problem, ServiceBuilder};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_finishes_in_flight_and_acks() {
    let env = env().await;
    let js = env.nats.jetstream().clone();
    let family = Family::new("jobs");
    family.ensure(&js).await.unwrap();
    let started = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(AtomicU64::new(0));
    let release = Arc::new(Notify::new());
    let (s, f, r) = (started.clone(), finished.clone(), release.clone());
    let svc = ServiceBuilder::new("worker", "1.0.0")
        .durable(
            DurableListener::new("run", family.clone(), "jobs.>").handler(move |_ev| {
                let (s, f, r) = (s.clone(), f.clone(), r.clone());
                async move {
                    let wait = r.notified();
                    s.fetch_add(1, Ordering::SeqCst);
                    wait.await;
                    f.fetch_add(1, Ordering::SeqCst);
                    Ok::<(), Problem>(())
                }
            }),
        )
        .start(env.transport.clone())
        .await
        .unwrap();
    DurablePublisher::new(js.clone())
        .publish_json("jobs.new", "job-1", &serde_json::json!({}))
        .await
        .unwrap();
    eventually("the handler running", || async {
        started.load(Ordering::SeqCst) == 1
    })
    .await;

    let drain = tokio::spawn(async move { svc.drain().await });
    // Drain cannot complete while the handler is blocked.
    tokio::task::yield_now().await;
    assert!(!drain.is_finished());
    eventually("the handler released", || {
        release.notify_waiters();
        async { finished.load(Ordering::SeqCst) == 1 }
    })
    .await;
    assert!(drain.await.unwrap(), "drain finished in time");

    let i = consumer_info(&js, "EVENTS_jobs", "worker_run").await;
    assert_eq!(i.num_ack_pending, 0, "acked before drain returned");
    assert_eq!(i.num_pending, 0);
    assert_eq!(started.load(Ordering::SeqCst), 1);
}
