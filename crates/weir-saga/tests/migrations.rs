//! The saga migration set: up creates the tables, down removes them and
//! its bookkeeping says so, up again works; the layer's own set is not
//! touched.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use weir_layer::migrate::LAYER;
use weir_layer::store::postgres::{migrate_down, migrate_status, migrate_up};
use weir_saga::MIGRATIONS;
use weir_testkit::pg;

async fn tables(c: &pg::Client) -> Vec<String> {
    pg::tables(c, "weir_%").await
}

#[tokio::test]
async fn up_down_up() {
    let db = pg::database("saga_migrate").await;
    let c = pg::connect(&db).await;
    assert_eq!(MIGRATIONS.name, "saga");
    assert_eq!(MIGRATIONS.table, "weir_saga_migrations");
    MIGRATIONS.check().unwrap();

    assert_eq!(migrate_up(&c, &MIGRATIONS, None).await.unwrap(), vec![1]);
    assert_eq!(
        tables(&c).await,
        vec![
            "weir_saga_instances",
            "weir_saga_migrations",
            "weir_saga_steps"
        ]
    );
    assert!(
        migrate_status(&c, &MIGRATIONS).await.unwrap()[0]
            .applied_at
            .is_some()
    );
    assert!(migrate_up(&c, &MIGRATIONS, None).await.unwrap().is_empty());

    // A row survives nothing of `down`, and `down` leaves the layer alone.
    migrate_up(&c, &LAYER, None).await.unwrap();
    c.execute(
        "INSERT INTO weir_saga_instances (id, saga, version, input, state, status, created_at, updated_at) \
         VALUES ('x', 's', 1, '{}', '{}', 'running', 0, 0)",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(migrate_down(&c, &MIGRATIONS, 0).await.unwrap(), vec![1]);
    assert_eq!(tables(&c).await, {
        let mut t = vec!["weir_saga_migrations".to_owned()];
        t.extend(
            [
                "weir_api_keys",
                "weir_audit",
                "weir_migrations",
                "weir_usage",
            ]
            .map(String::from),
        );
        t.sort();
        t
    });
    assert!(
        migrate_status(&c, &MIGRATIONS).await.unwrap()[0]
            .applied_at
            .is_none()
    );

    assert_eq!(migrate_up(&c, &MIGRATIONS, None).await.unwrap(), vec![1]);
    assert_eq!(
        pg::count(&c, "SELECT count(*) FROM weir_saga_instances").await,
        0
    );
    // The status constraint is in place.
    assert!(
        c.execute(
            "INSERT INTO weir_saga_instances (id, saga, version, input, state, status, created_at, updated_at) \
             VALUES ('y', 's', 1, '{}', '{}', 'bogus', 0, 0)",
            &[],
        )
        .await
        .is_err()
    );
}
