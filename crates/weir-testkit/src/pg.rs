//! A throwaway database on the machine's PostgreSQL (feature `pg`).
//!
//! The server is `WEIR_PG_URL` (scripts/test sets it), default
//! `postgres://postgres@127.0.0.1:5432/postgres` with trust auth. Each test
//! creates its own uniquely named database, `weir_test_{tag}_{pid}_{random}`,
//! dropped (with `FORCE`) when the [`TestDatabase`] is. An unreachable server
//! fails the test with how to fix it: it is not a reason to skip.
//!
//! [`TestDatabase`] is the production layer's own
//! (`weir_layer::store::postgres::testing`), so a test of any crate — the
//! layer's included — gets the same database and the same URL handling.

pub use tokio_postgres::Client;
pub use weir_layer::store::postgres::testing::{
    TestDatabase, Unreachable, server_url, with_dbname,
};

/// This test's own database, dropped with the returned value; panics with
/// the reason (and the fix) when PostgreSQL cannot be reached.
pub async fn database(tag: &str) -> TestDatabase {
    TestDatabase::create(tag)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A plain connection to `db` (for setup and assertions on the schema).
pub async fn connect(db: &TestDatabase) -> Client {
    db.connect().await.unwrap_or_else(|e| panic!("{e}"))
}

/// The public schema's tables whose names are `LIKE pattern`, sorted.
pub async fn tables(c: &Client, pattern: &str) -> Vec<String> {
    c.query(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_name LIKE $1 ORDER BY 1",
        &[&pattern],
    )
    .await
    .unwrap_or_else(|e| panic!("listing the tables like {pattern}: {e}"))
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// The single `bigint` that `sql` selects (`SELECT count(*) …`).
pub async fn count(c: &Client, sql: &str) -> i64 {
    c.query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}
