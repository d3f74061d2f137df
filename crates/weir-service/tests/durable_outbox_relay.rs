#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The outbox relay publishes a row with `Nats-Msg-Id` = its id and deletes
//! it; if it died between publish and delete (the row is back), the second
//! publish is a broker duplicate and the stream still holds one event.
//! A row for a subject no stream stores stays in the outbox.

mod durable_support;

use durable_support::env;
use weir_layer::store::postgres::migrate_up;
use weir_service::durable::pg::{MIGRATIONS, PgPool, relay_once};
use weir_service::durable::{EVENT_ID, Family};
use weir_testkit::pg;

async fn insert(c: &tokio_postgres::Client, id: &str, subject: &str) {
    c.execute(
        "INSERT INTO weir_outbox (id, subject, headers, payload) VALUES ($1, $2, '{\"X-Kind\":[\"test\"]}', $3)",
        &[&id, &subject, &b"{\"n\":1}".as_slice()],
    )
    .await
    .unwrap();
}

async fn outbox_len(c: &tokio_postgres::Client) -> i64 {
    pg::count(c, "SELECT count(*) FROM weir_outbox").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_crash_between_publish_and_delete_publishes_once() {
    let db = pg::database("outbox_relay").await;
    let c = pg::connect(&db).await;
    migrate_up(&c, &MIGRATIONS, None).await.unwrap();
    let env = env().await;
    let js = env.nats.jetstream().clone();
    Family::new("mail").ensure(&js).await.unwrap();
    let pool = PgPool::new(db.url(), 2);

    insert(&c, "row-1", "mail.send").await;
    assert_eq!(relay_once(&pool, &js, 100).await.unwrap(), 1);
    assert_eq!(outbox_len(&c).await, 0);
    // The relay "crashed" before its delete: the row is there again.
    insert(&c, "row-1", "mail.send").await;
    assert_eq!(relay_once(&pool, &js, 100).await.unwrap(), 1);
    assert_eq!(outbox_len(&c).await, 0);

    let mut s = js.get_stream("EVENTS_mail").await.unwrap();
    assert_eq!(s.info().await.unwrap().state.messages, 1);
    let m = s.get_raw_message(1).await.unwrap();
    assert_eq!(m.headers.get(EVENT_ID).unwrap().as_str(), "row-1");
    assert_eq!(m.headers.get("X-Kind").unwrap().as_str(), "test");
    assert_eq!(&m.payload[..], b"{\"n\":1}");

    // No stream for the subject: the row stays for a later pass.
    insert(&c, "row-2", "nowhere.send").await;
    assert!(relay_once(&pool, &js, 100).await.is_err());
    assert_eq!(outbox_len(&c).await, 1);
}
