#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Reading a family from a sequence and from a time (ephemeral ordered
//! consumer), and a durable listener created to start at a sequence.

mod durable_support;

use std::sync::Arc;
use std::time::Duration;

use durable_support::{env, eventually};
use futures::StreamExt;
use parking_lot::Mutex;
use weir_service::durable::{
    DurableListener, DurableOptions, DurablePublisher, Family, StartAt, read_family,
};
use weir_service::{Problem, ServiceBuilder};

async fn read_n(js: &async_nats::jetstream::Context, start: StartAt, n: usize) -> Vec<u64> {
    let mut s = read_family(js, "EVENTS_audit", "", start).await.unwrap();
    let mut out = Vec::new();
    while out.len() < n {
        let m = tokio::time::timeout(durable_support::PATIENCE, s.next())
            .await
            .expect("events")
            .unwrap()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        out.push(v["n"].as_u64().unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_from_sequence_and_time() {
    let env = env().await;
    let js = env.nats.jetstream().clone();
    Family::new("audit").ensure(&js).await.unwrap();
    let p = DurablePublisher::new(js.clone());
    let mut seqs = Vec::new();
    for n in 1..=3u64 {
        let a = p
            .publish_json(
                "audit.login",
                &format!("a{n}"),
                &serde_json::json!({"n": n}),
            )
            .await
            .unwrap();
        seqs.push(a.seq);
    }
    // The broker stamps events with its own clock; leave a gap so the
    // boundary falls between event 3 and event 4 whatever the resolution.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let boundary = time::OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::from_millis(50)).await;
    for n in 4..=6u64 {
        p.publish_json(
            "audit.login",
            &format!("a{n}"),
            &serde_json::json!({"n": n}),
        )
        .await
        .unwrap();
    }

    assert_eq!(
        read_n(&js, StartAt::Sequence(seqs[1]), 5).await,
        vec![2, 3, 4, 5, 6]
    );
    assert_eq!(read_n(&js, StartAt::Time(boundary), 3).await, vec![4, 5, 6]);
    assert_eq!(read_n(&js, StartAt::All, 6).await, vec![1, 2, 3, 4, 5, 6]);

    // A durable listener created to start at event 5.
    let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
    let s2 = seen.clone();
    let _svc = ServiceBuilder::new("reports", "1.0.0")
        .durable(
            DurableListener::new("rebuild", Family::new("audit"), "audit.>")
                .options(
                    DurableOptions::default()
                        .concurrency(1)
                        .start(StartAt::Sequence(seqs[2] + 2)),
                )
                .handler(move |ev| {
                    let s2 = s2.clone();
                    async move {
                        let v: serde_json::Value = ev.json()?;
                        s2.lock().push(v["n"].as_u64().unwrap_or(0));
                        Ok::<(), Problem>(())
                    }
                }),
        )
        .start(env.transport.clone())
        .await
        .unwrap();
    eventually("events 5 and 6", || async { seen.lock().len() >= 2 }).await;
    assert_eq!(seen.lock().clone(), vec![5, 6]);
}
