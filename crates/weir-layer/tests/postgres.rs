//! The PostgreSQL store on the machine's real PostgreSQL (`WEIR_PG_URL`,
//! default `postgres://postgres@127.0.0.1:5432/postgres`, trust auth; set by
//! scripts/test). Each test creates its own uniquely named database and
//! drops it at the end. An unreachable server fails the tests: it is not a
//! reason to skip them.
#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use weir_layer::auth::apikey::{ApiKeyConfig, ApiKeyStore, ApiKeys, NewApiKey, StoreError};
use weir_layer::authz::PermissionTable;
use weir_layer::migrate::{MIGRATIONS, MigrateError, latest};
use weir_layer::principal::AuthError;
use weir_layer::store::postgres::PgStore;
use weir_layer::store::postgres::testing::TestDatabase;
use weir_layer::store::testing;

/// This test's own database; PostgreSQL being unreachable fails the test.
struct TestDb {
    db: TestDatabase,
    config: tokio_postgres::Config,
}

impl TestDb {
    async fn create(tag: &str) -> TestDb {
        let db = TestDatabase::create(tag)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let config = db.url().parse().unwrap();
        TestDb { db, config }
    }

    fn store(&self) -> PgStore {
        self.db.store()
    }
}

async fn tables(s: &PgStore, db: &TestDb) -> Vec<String> {
    let _ = s;
    let (c, conn) = db.config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    c.query(
        "SELECT relname::TEXT FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND relkind IN ('r', 'i') AND relname LIKE 'weir_%'
           AND relname NOT LIKE 'weir_migrations%' AND relname NOT LIKE '%_pkey'
         ORDER BY relname",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[tokio::test]
async fn migrations_up_down_up() {
    let db = TestDb::create("migrate").await;
    let s = db.store();
    let st = s.migrate_status().await.unwrap();
    assert_eq!(st.len(), MIGRATIONS.len());
    assert!(st.iter().all(|m| m.applied_at.is_none()));

    assert_eq!(s.migrate_up(Some(1)).await.unwrap(), vec![1]);
    assert_eq!(tables(&s, &db).await, vec!["weir_api_keys"]);
    let all: Vec<u32> = MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(s.migrate_up(None).await.unwrap(), all[1..].to_vec());
    assert_eq!(
        tables(&s, &db).await,
        vec![
            "weir_api_keys",
            "weir_api_keys_tenant",
            "weir_audit",
            "weir_audit_tenant",
            "weir_usage",
            "weir_usage_tenant"
        ]
    );
    // The usage table alone goes down and comes back.
    assert_eq!(s.migrate_down(3).await.unwrap(), vec![4]);
    assert!(
        !tables(&s, &db)
            .await
            .iter()
            .any(|t| t.starts_with("weir_usage"))
    );
    assert_eq!(s.migrate_up(None).await.unwrap(), vec![4]);
    assert!(s.migrate_up(None).await.unwrap().is_empty(), "idempotent");
    assert!(
        s.migrate_status()
            .await
            .unwrap()
            .iter()
            .all(|m| m.applied_at.is_some())
    );

    // Down to 1, then to nothing, then all the way up again.
    let mut above_one: Vec<u32> = all[1..].to_vec();
    above_one.reverse();
    assert_eq!(s.migrate_down(1).await.unwrap(), above_one);
    assert_eq!(tables(&s, &db).await, vec!["weir_api_keys"]);
    assert_eq!(s.migrate_down(0).await.unwrap(), vec![1]);
    assert!(tables(&s, &db).await.is_empty());
    assert_eq!(s.migrate_up(None).await.unwrap(), all);
    assert_eq!(
        s.migrate_status()
            .await
            .unwrap()
            .iter()
            .filter(|m| m.applied_at.is_some())
            .count(),
        MIGRATIONS.len()
    );
    assert!(matches!(
        s.migrate_up(Some(99)).await,
        Err(MigrateError::UnknownTarget(99))
    ));

    // An applied migration edited afterwards, and a database from the future.
    let (c, conn) = db.config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    c.batch_execute("UPDATE weir_migrations SET checksum = 'x' WHERE version = 1")
        .await
        .unwrap();
    assert!(matches!(
        s.migrate_up(None).await,
        Err(MigrateError::Checksum { version: 1, .. })
    ));
    c.execute(
        "UPDATE weir_migrations SET checksum = $1 WHERE version = 1",
        &[&MIGRATIONS[0].checksum()],
    )
    .await
    .unwrap();
    c.batch_execute("INSERT INTO weir_migrations VALUES (999, 'future', 'y', 0)")
        .await
        .unwrap();
    assert!(matches!(
        s.migrate_status().await,
        Err(MigrateError::TooNew(999, v)) if v == latest()
    ));
}

#[tokio::test]
async fn concurrent_migrators_apply_each_step_once() {
    let db = TestDb::create("race").await;
    let (a, b) = (db.store(), db.store());
    let (ra, rb) = tokio::join!(a.migrate_up(None), b.migrate_up(None));
    let (mut ra, rb) = (ra.unwrap(), rb.unwrap());
    ra.extend(rb);
    ra.sort_unstable();
    let all: Vec<u32> = MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(ra, all, "every step applied exactly once");
}

trait ApiKeyRecordExt {
    fn without_use(self) -> Self;
}

impl ApiKeyRecordExt for weir_layer::auth::apikey::ApiKeyRecord {
    fn without_use(mut self) -> Self {
        self.last_used_at = None;
        self
    }
}

fn node(store: PgStore, cache_ttl_ms: u64) -> ApiKeys {
    ApiKeys::new(
        Arc::new(store),
        ApiKeyConfig {
            enabled: true,
            cache_ttl_ms,
            ..Default::default()
        },
        Arc::new(PermissionTable::default()),
        weir_layer::clock::system(),
    )
}

fn new_key() -> NewApiKey {
    NewApiKey {
        tenant: "acme".into(),
        subject: "ci".into(),
        name: "deploy".into(),
        roles: vec!["writer".into()],
        scopes: vec!["weir:read".into()],
        expires_at: None,
    }
}

#[tokio::test]
async fn api_keys_create_verify_revoke() {
    let db = TestDb::create("keys").await;
    let s = db.store();
    s.migrate_up(None).await.unwrap();
    let keys = node(s.clone(), 5000);
    let created = keys.create(new_key()).await.unwrap();
    let token = created.token.expose().to_owned();
    let p = keys.verify_key(&token).await.unwrap();
    assert_eq!((p.tenant.as_str(), p.subject.as_str()), ("acme", "ci"));

    // Stored as written, hash only.
    let rec = s.get(&created.record.id).await.unwrap().unwrap();
    // (`last_used_at` may already be written: that happens off the request path.)
    let as_created = ApiKeyRecordExt::without_use(rec.clone());
    assert_eq!(as_created, created.record);
    assert!(!token.contains(&rec.secret_hash));
    assert!(matches!(s.insert(&rec).await, Err(StoreError::Duplicate)));
    assert!(s.get("0000000000000000").await.unwrap().is_none());
    assert_eq!(s.list(Some("acme")).await.unwrap().len(), 1);
    assert!(s.list(Some("other")).await.unwrap().is_empty());
    assert_eq!(s.list(None).await.unwrap().len(), 1);

    // last_used_at is written off the request path.
    let mut used = None;
    for _ in 0..100 {
        used = s.get(&rec.id).await.unwrap().unwrap().last_used_at;
        if used.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(used.is_some(), "last_used_at recorded");

    assert!(keys.revoke(&rec.id).await.unwrap());
    assert_eq!(keys.verify_key(&token).await, Err(AuthError::Revoked));
    assert!(!keys.revoke("0000000000000000").await.unwrap());
    let revoked = s.get(&rec.id).await.unwrap().unwrap();
    assert!(revoked.revoked_at.is_some());

    // The connection comes back after the server drops it.
    let (c, conn) = db.config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    c.batch_execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .await
    .unwrap();
    let mut back = false;
    for _ in 0..50 {
        if s.get(&rec.id).await.is_ok() {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(back, "reconnected after the connection was terminated");
}

/// Two nodes (verifiers with their own caches) share one database: a key
/// revoked on node A is refused by node B within B's `cache_ttl_ms`.
#[tokio::test]
async fn revocation_reaches_the_other_node_within_the_cache_ttl() {
    let db = TestDb::create("bound").await;
    db.store().migrate_up(None).await.unwrap();
    let ttl = Duration::from_millis(400);
    let a = node(db.store(), ttl.as_millis() as u64);
    let b = node(db.store(), ttl.as_millis() as u64);
    let created = a.create(new_key()).await.unwrap();
    let token = created.token.expose();
    assert!(b.verify_key(token).await.is_ok(), "B caches the key");

    a.revoke(&created.record.id).await.unwrap();
    let revoked_at = std::time::Instant::now();
    assert_eq!(
        a.verify_key(token).await,
        Err(AuthError::Revoked),
        "at once on A"
    );
    // B refuses it no later than the bound (plus scheduling slack).
    loop {
        match b.verify_key(token).await {
            Err(AuthError::Revoked) => break,
            Ok(_) => {
                assert!(
                    revoked_at.elapsed() < ttl + Duration::from_millis(200),
                    "B still accepts the key {:?} after revocation (bound {ttl:?})",
                    revoked_at.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    // A new node never saw the key valid.
    let c = node(db.store(), ttl.as_millis() as u64);
    assert_eq!(c.verify_key(token).await, Err(AuthError::Revoked));
}

/// The same checks as the memory and SQLite stores (`weir_layer::store::testing`).
#[tokio::test]
async fn audit_log_round_trip() {
    let db = TestDb::create("audit").await;
    let s = db.store();
    s.migrate_up(None).await.unwrap();
    testing::check_audit_log(&s).await;
}

#[tokio::test]
async fn usage_adds_per_window_and_tenant() {
    let db = TestDb::create("usage").await;
    let s = db.store();
    s.migrate_up(None).await.unwrap();
    testing::check_usage_log(&s).await;
}

#[tokio::test]
async fn unreachable_database_is_a_clear_error() {
    // A port nothing listens on: the error names the cause, fast.
    let s = PgStore::new("postgres://postgres@127.0.0.1:1/postgres?connect_timeout=2").unwrap();
    let err = s.get("0123456789abcdef").await.unwrap_err().to_string();
    assert!(err.contains("key store failure"), "{err}");
    // Within the retry interval, calls fail at once instead of each waiting
    // for a connect of its own.
    let t = std::time::Instant::now();
    let again = s.get("0123456789abcdef").await.unwrap_err().to_string();
    assert!(again.contains("PostgreSQL unavailable"), "{again}");
    assert!(t.elapsed() < Duration::from_millis(200));
    assert!(PgStore::new("postgres://h:notaport/db").is_err());
}

/// A component's own migration set versions independently of the layer's:
/// its own bookkeeping table, its own advisory lock, up/down/up without
/// touching the layer's tables — and a bad table name is refused before
/// any SQL runs.
#[tokio::test]
async fn migration_sets_version_independently() {
    use weir_layer::migrate::{LAYER, Migration, MigrationSet};
    use weir_layer::store::postgres::{migrate_down, migrate_status, migrate_up};

    const SET: MigrationSet = MigrationSet {
        name: "widgets",
        table: "weir_widgets_migrations",
        migrations: &[
            Migration {
                version: 1,
                name: "widgets",
                up: "CREATE TABLE weir_widgets (id TEXT PRIMARY KEY)",
                down: "DROP TABLE weir_widgets",
            },
            Migration {
                version: 2,
                name: "widgets_size",
                up: "ALTER TABLE weir_widgets ADD COLUMN size BIGINT NOT NULL DEFAULT 0",
                down: "ALTER TABLE weir_widgets DROP COLUMN size",
            },
        ],
    };
    let db = TestDb::create("sets").await;
    let store = db.store();
    let c = db.db.connect().await.unwrap();

    assert_eq!(migrate_up(&c, &SET, None).await.unwrap(), vec![1, 2]);
    assert_eq!(migrate_up(&c, &SET, None).await.unwrap(), Vec::<u32>::new());
    // The layer's set is untouched by the widgets' set…
    assert!(
        store
            .migrate_status()
            .await
            .unwrap()
            .iter()
            .all(|m| m.applied_at.is_none())
    );
    assert_eq!(
        tables(&store, &db).await,
        vec![
            "weir_widgets".to_owned(),
            "weir_widgets_migrations".to_owned()
        ]
    );
    // …and the other way round.
    assert_eq!(
        store.migrate_set_up(&LAYER, None).await.unwrap().len(),
        MIGRATIONS.len()
    );
    assert_eq!(migrate_down(&c, &SET, 1).await.unwrap(), vec![2]);
    let st = migrate_status(&c, &SET).await.unwrap();
    assert!(st[0].applied_at.is_some() && st[1].applied_at.is_none());
    assert_eq!(migrate_down(&c, &SET, 0).await.unwrap(), vec![1]);
    assert!(
        !tables(&store, &db)
            .await
            .contains(&"weir_widgets".to_owned())
    );
    assert_eq!(migrate_up(&c, &SET, None).await.unwrap(), vec![1, 2]);
    // The connection is usable afterwards (the lock was released, no open
    // transaction), and another connection can take the set's lock.
    c.simple_query("SELECT 1").await.unwrap();
    let other = db.db.connect().await.unwrap();
    assert_eq!(migrate_status(&other, &SET).await.unwrap().len(), 2);

    const BAD: MigrationSet = MigrationSet {
        name: "bad",
        table: "x; DROP TABLE weir_widgets",
        migrations: &[],
    };
    assert!(matches!(
        migrate_up(&c, &BAD, None).await,
        Err(MigrateError::Db(_))
    ));
    assert!(
        tables(&store, &db)
            .await
            .contains(&"weir_widgets".to_owned())
    );
}
