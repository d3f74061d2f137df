#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A consumer process is SIGKILLed while its handler is mid-message (its
//! database effect and outbox row written, the transaction not committed,
//! the event not acked). After a restart the event is handled again and,
//! checked in PostgreSQL, the effect exists exactly once, the inbox has
//! one row, and the outbox event reached JetStream exactly once. A copy of
//! the event that gets past the broker later (the "committed but the ack
//! was lost" redelivery) is skipped by the inbox.
//!
//! The consumer runs in a child process: this test binary itself, running
//! only `child_consumer`, which does nothing unless the parent set
//! `WEIR_CRASH_NATS`.

mod durable_support;

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use durable_support::{PATIENCE, eventually, eventually_all_acked};
use tokio::io::{AsyncBufReadExt, BufReader};
use weir_layer::store::postgres::migrate_up;
use weir_service::durable::pg::{MIGRATIONS, OutboxRelay, PgPool};
use weir_service::durable::{DurableListener, DurableOptions, DurablePublisher, Family};
use weir_service::{ErrorCode, NatsTransport, Problem, ServiceBuilder};
use weir_testkit::{NatsServer, pg};

/// The consumer process (a no-op in a normal test run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_consumer() {
    let Ok(nats) = std::env::var("WEIR_CRASH_NATS") else {
        return;
    };
    let pg = std::env::var("WEIR_CRASH_PG").unwrap();
    let hang = std::env::var("WEIR_CRASH_MODE").as_deref() == Ok("hang");
    let t = NatsTransport::connect(&nats).await.unwrap();
    let js = t.jetstream().clone();
    let pool = PgPool::new(pg, 4);
    let _relay = OutboxRelay::spawn_with(pool.clone(), js, Duration::from_millis(100));
    let _svc = ServiceBuilder::new("stock", "1.0.0")
        .durable(
            DurableListener::new("reserve", Family::new("orders"), "orders.>")
                .options(
                    DurableOptions::default()
                        .ack_wait(Duration::from_secs(2))
                        .concurrency(1),
                )
                .transactional(pool, move |ev, tx| async move {
                    let db = |e: tokio_postgres::Error| {
                        Problem::new(ErrorCode::StorageUnavailable, e.to_string())
                    };
                    tx.client()
                        .execute(
                            "INSERT INTO effects (event_id) VALUES ($1)",
                            &[&ev.event_id],
                        )
                        .await
                        .map_err(db)?;
                    tx.outbox_json("stock.reserved", &serde_json::json!({"order": ev.event_id}))
                        .await?;
                    if hang {
                        println!("EFFECT_DONE");
                        std::future::pending::<()>().await;
                    }
                    Ok(())
                }),
        )
        .start(Arc::new(t))
        .await
        .unwrap();
    println!("CHILD_READY");
    std::future::pending::<()>().await;
}

/// Starts the child; returns it once it printed `until`.
async fn spawn_child(nats: &str, pg: &str, mode: &str, until: &str) -> tokio::process::Child {
    let exe = std::env::current_exe().unwrap();
    let mut child = tokio::process::Command::new(exe)
        .args([
            "--exact",
            "child_consumer",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("WEIR_CRASH_NATS", nats)
        .env("WEIR_CRASH_PG", pg)
        .env("WEIR_CRASH_MODE", mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    tokio::time::timeout(PATIENCE, async {
        while let Some(l) = lines.next_line().await.unwrap() {
            if l.trim().ends_with(until) {
                return;
            }
        }
        panic!("child exited before printing {until}");
    })
    .await
    .expect("child output");
    // Keep draining its stdout so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_mid_handler_is_handled_once_after_restart() {
    let db = pg::database("durable_crash").await;
    let c = pg::connect(&db).await;
    migrate_up(&c, &MIGRATIONS, None).await.unwrap();
    c.batch_execute("CREATE TABLE effects (event_id text NOT NULL)")
        .await
        .unwrap();
    let server = NatsServer::start();
    let nats = server.nats().await;
    let js = nats.jetstream().clone();
    Family::new("orders").ensure(&js).await.unwrap();
    Family::new("stock").ensure(&js).await.unwrap();
    let publisher = DurablePublisher::new(js.clone());
    publisher
        .publish_json("orders.placed", "order-1", &serde_json::json!({"sku": "x"}))
        .await
        .unwrap();

    // Killed mid-handler: effect and outbox row written, not committed.
    let mut first = spawn_child(server.url(), db.url(), "hang", "EFFECT_DONE").await;
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    assert_eq!(pg::count(&c, "SELECT count(*) FROM effects").await, 0);
    assert_eq!(pg::count(&c, "SELECT count(*) FROM weir_outbox").await, 0);

    // Restarted: the redelivery (after the ack wait) is handled.
    let mut second = spawn_child(server.url(), db.url(), "normal", "CHILD_READY").await;
    let stock_len = || {
        let js = js.clone();
        async move {
            let mut s = js.get_stream("EVENTS_stock").await.unwrap();
            s.info().await.unwrap().state.messages
        }
    };
    eventually("the outbox event published", || async {
        stock_len().await >= 1
    })
    .await;
    eventually("the outbox emptied", || async {
        pg::count(&c, "SELECT count(*) FROM weir_outbox").await == 0
    })
    .await;

    // A copy past the broker's dedupe (same event id, another msg id): the
    // inbox skips it.
    publisher
        .publish_with_msg_id(
            "orders.placed",
            "order-1",
            "order-1-redelivered",
            HeaderMap::new(),
            Bytes::from_static(b"{\"sku\":\"x\"}"),
        )
        .await
        .unwrap();
    // The copy acknowledged.
    eventually_all_acked(&js, "EVENTS_orders", "stock_reserve").await;
    second.start_kill().unwrap();
    second.wait().await.unwrap();

    assert_eq!(pg::count(&c, "SELECT count(*) FROM effects").await, 1);
    assert_eq!(
        pg::count(&c, "SELECT count(*) FROM weir_inbox WHERE consumer = 'stock_reserve' AND event_id = 'order-1'").await,
        1
    );
    assert_eq!(pg::count(&c, "SELECT count(*) FROM weir_outbox").await, 0);
    assert_eq!(stock_len().await, 1, "the outbox event was published once");
}
