#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The `events` migration set goes up, down and up again on PostgreSQL.

use weir_layer::store::postgres::{migrate_down, migrate_status, migrate_up};
use weir_service::durable::pg::MIGRATIONS;
use weir_testkit::pg;

/// `weir_inbox` and `weir_outbox`, those of them that exist.
async fn tables(c: &pg::Client) -> Vec<String> {
    pg::tables(c, "weir_%box").await
}

#[tokio::test]
async fn up_down_up() {
    let db = pg::database("events_migrations").await;
    let c = pg::connect(&db).await;
    assert_eq!(MIGRATIONS.name, "events");
    assert_eq!(MIGRATIONS.table, "weir_events_migrations");

    assert_eq!(migrate_up(&c, &MIGRATIONS, None).await.unwrap(), vec![1]);
    assert_eq!(tables(&c).await, vec!["weir_inbox", "weir_outbox"]);
    assert!(migrate_up(&c, &MIGRATIONS, None).await.unwrap().is_empty());
    assert!(
        migrate_status(&c, &MIGRATIONS)
            .await
            .unwrap()
            .iter()
            .all(|s| s.applied_at.is_some())
    );

    assert_eq!(migrate_down(&c, &MIGRATIONS, 0).await.unwrap(), vec![1]);
    assert!(tables(&c).await.is_empty());

    assert_eq!(migrate_up(&c, &MIGRATIONS, None).await.unwrap(), vec![1]);
    assert_eq!(tables(&c).await, vec!["weir_inbox", "weir_outbox"]);
    // The inbox key is (consumer, event_id).
    c.execute(
        "INSERT INTO weir_inbox (consumer, event_id) VALUES ('a', 'e')",
        &[],
    )
    .await
    .unwrap();
    assert!(
        c.execute(
            "INSERT INTO weir_inbox (consumer, event_id) VALUES ('a', 'e')",
            &[]
        )
        .await
        .is_err()
    );
}
