//! The embedded store: SQLite (bundled, so no system library is needed) for
//! API keys, the audit log and usage counters, with the layer's migrations.
//!
//! rusqlite is synchronous; every call runs on tokio's blocking pool behind
//! one mutex-guarded connection. That is plenty here: key lookups are cached
//! ([`crate::auth::apikey`]) and `last_used_at` writes are throttled, so the
//! store sees a few queries per second, not one per request. WAL mode lets
//! the CLI (`weir keys create`) write while a server reads.

use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, params};

use crate::auth::apikey::{ApiKeyRecord, ApiKeyStore, StoreError};
use crate::migrate::{self, Applied, MigrateError, MigrationState};
use crate::store::{
    AuditEntry, AuditLog, AuditQuery, USAGE_COLUMNS, UsageDelta, UsageLog, UsageQuery, UsageRow,
    i64_of, usage_row, usage_window,
};

/// A SQLite database holding the layer's tables.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

fn db(e: rusqlite::Error) -> MigrateError {
    MigrateError::Db(e.to_string())
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` without migrating.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore, MigrateError> {
        let conn = Connection::open(path).map_err(db)?;
        Self::init(conn)
    }

    /// An in-memory database (tests).
    pub fn open_in_memory() -> Result<SqliteStore, MigrateError> {
        Self::init(Connection::open_in_memory().map_err(db)?)
    }

    /// Opens and migrates to the latest version (what a server does at start).
    pub fn open_migrated(path: impl AsRef<Path>) -> Result<SqliteStore, MigrateError> {
        let s = Self::open(path)?;
        s.migrate_up(None)?;
        Ok(s)
    }

    fn init(conn: Connection) -> Result<SqliteStore, MigrateError> {
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        conn.pragma_update(None, "busy_timeout", 5000).map_err(db)?;
        conn.execute_batch(migrate::MIGRATIONS_TABLE).map_err(db)?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    fn applied(conn: &Connection) -> Result<Vec<Applied>, MigrateError> {
        let mut st = conn
            .prepare("SELECT version, checksum, applied_at FROM weir_migrations ORDER BY version")
            .map_err(db)?;
        let rows = st
            .query_map([], |r| {
                Ok(Applied {
                    version: r.get::<_, i64>(0)? as u32,
                    checksum: r.get(1)?,
                    applied_at: r.get::<_, i64>(2)? as u64,
                })
            })
            .map_err(db)?;
        rows.map(|r| r.map_err(db)).collect()
    }

    /// Runs one step in a transaction: its script, then the bookkeeping.
    fn step(conn: &mut Connection, m: &migrate::Migration, up: bool) -> Result<(), MigrateError> {
        let step = |e: rusqlite::Error| MigrateError::Step {
            version: m.version,
            message: e.to_string(),
        };
        let tx = conn.transaction().map_err(step)?;
        if up {
            tx.execute_batch(m.up).map_err(step)?;
            tx.execute(
                "INSERT INTO weir_migrations (version, name, checksum, applied_at) VALUES (?1, ?2, ?3, ?4)",
                params![m.version, m.name, m.checksum(), now_secs() as i64],
            )
            .map_err(step)?;
        } else {
            tx.execute_batch(m.down).map_err(step)?;
            tx.execute(
                "DELETE FROM weir_migrations WHERE version = ?1",
                params![m.version],
            )
            .map_err(step)?;
        }
        tx.commit().map_err(step)
    }

    /// Applies pending migrations up to `target` (default: latest); returns
    /// the versions applied.
    pub fn migrate_up(&self, target: Option<u32>) -> Result<Vec<u32>, MigrateError> {
        let mut conn = self.conn.lock();
        let current = migrate::verify_applied(&Self::applied(&conn)?)?;
        let mut done = Vec::new();
        for m in migrate::plan_up(current, target)? {
            Self::step(&mut conn, m, true)?;
            done.push(m.version);
        }
        Ok(done)
    }

    /// Rolls back applied migrations above `target` (0: everything), newest
    /// first; returns the versions rolled back.
    pub fn migrate_down(&self, target: u32) -> Result<Vec<u32>, MigrateError> {
        let mut conn = self.conn.lock();
        let current = migrate::verify_applied(&Self::applied(&conn)?)?;
        let mut done = Vec::new();
        for m in migrate::plan_down(current, target)? {
            Self::step(&mut conn, m, false)?;
            done.push(m.version);
        }
        Ok(done)
    }

    /// Every known migration and whether it is applied.
    pub fn migrate_status(&self) -> Result<Vec<MigrationState>, MigrateError> {
        let conn = self.conn.lock();
        let applied = Self::applied(&conn)?;
        migrate::verify_applied(&applied)?;
        Ok(migrate::status(&applied))
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || f(&conn.lock()))
            .await
            .map_err(backend)?
    }
}

fn now_secs() -> u64 {
    crate::clock::Clock::unix_secs(&crate::clock::SystemClock)
}

fn row_to_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApiKeyRecord> {
    let list = |i: usize| -> rusqlite::Result<Vec<String>> {
        let s: String = r.get(i)?;
        Ok(serde_json::from_str(&s).unwrap_or_default())
    };
    let opt = |i: usize| -> rusqlite::Result<Option<u64>> {
        Ok(r.get::<_, Option<i64>>(i)?.map(|v| v as u64))
    };
    Ok(ApiKeyRecord {
        id: r.get(0)?,
        tenant: r.get(1)?,
        subject: r.get(2)?,
        name: r.get(3)?,
        roles: list(4)?,
        scopes: list(5)?,
        secret_hash: r.get(6)?,
        created_at: r.get::<_, i64>(7)? as u64,
        expires_at: opt(8)?,
        last_used_at: opt(9)?,
        revoked_at: opt(10)?,
    })
}

const COLUMNS: &str = "id, tenant, subject, name, roles, scopes, secret_hash, created_at, expires_at, last_used_at, revoked_at";

#[async_trait::async_trait]
impl ApiKeyStore for SqliteStore {
    async fn insert(&self, rec: &ApiKeyRecord) -> Result<(), StoreError> {
        let rec = rec.clone();
        self.with(move |c| {
            let roles = serde_json::to_string(&rec.roles).map_err(backend)?;
            let scopes = serde_json::to_string(&rec.scopes).map_err(backend)?;
            c.execute(
                &format!("INSERT INTO weir_api_keys ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"),
                params![
                    rec.id,
                    rec.tenant,
                    rec.subject,
                    rec.name,
                    roles,
                    scopes,
                    rec.secret_hash,
                    rec.created_at as i64,
                    rec.expires_at.map(|v| v as i64),
                    rec.last_used_at.map(|v| v as i64),
                    rec.revoked_at.map(|v| v as i64),
                ],
            )
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    StoreError::Duplicate
                }
                e => backend(e),
            })?;
            Ok(())
        })
        .await
    }

    async fn get(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let id = id.to_owned();
        self.with(move |c| {
            c.query_row(
                &format!("SELECT {COLUMNS} FROM weir_api_keys WHERE id = ?1"),
                params![id],
                row_to_record,
            )
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn list(&self, tenant: Option<&str>) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let tenant = tenant.map(str::to_owned);
        self.with(move |c| {
            let mut st = c
                .prepare(&format!(
                    "SELECT {COLUMNS} FROM weir_api_keys WHERE ?1 IS NULL OR tenant = ?1 ORDER BY created_at DESC, id"
                ))
                .map_err(backend)?;
            let rows = st
                .query_map(params![tenant], row_to_record)
                .map_err(backend)?;
            rows.map(|r| r.map_err(backend)).collect()
        })
        .await
    }

    async fn revoke(&self, id: &str, at: u64) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.with(move |c| {
            c.execute(
                "UPDATE weir_api_keys SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1",
                params![id, at as i64],
            )
            .map(|n| n > 0)
            .map_err(backend)
        })
        .await
    }

    async fn touch(&self, id: &str, at: u64) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.with(move |c| {
            c.execute(
                "UPDATE weir_api_keys SET last_used_at = ?2 WHERE id = ?1",
                params![id, at as i64],
            )
            .map(|_| ())
            .map_err(backend)
        })
        .await
    }
}

const AUDIT_COLUMNS: &str =
    "id, at_ms, actor, actor_tenant, action, target, tenant, request_id, detail";

#[async_trait::async_trait]
impl AuditLog for SqliteStore {
    async fn record(&self, e: &AuditEntry) -> Result<(), StoreError> {
        let e = e.clone();
        self.with(move |c| {
            c.execute(
                &format!("INSERT INTO weir_audit ({AUDIT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
                params![
                    e.id,
                    e.at_ms as i64,
                    e.actor,
                    e.actor_tenant,
                    e.action,
                    e.target,
                    e.tenant,
                    e.request_id,
                    e.detail.to_string(),
                ],
            )
            .map(|_| ())
            .map_err(backend)
        })
        .await
    }

    async fn entries(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        let q = q.clone();
        self.with(move |c| {
            let mut st = c
                .prepare(&format!(
                    "SELECT {AUDIT_COLUMNS} FROM weir_audit
                     WHERE (?1 IS NULL OR tenant = ?1) AND (?2 IS NULL OR id < ?2)
                     ORDER BY id DESC LIMIT ?3"
                ))
                .map_err(backend)?;
            let rows = st
                .query_map(
                    params![
                        q.tenant,
                        q.before,
                        i64::try_from(q.limit).unwrap_or(i64::MAX)
                    ],
                    |r| {
                        let detail: String = r.get(8)?;
                        Ok(AuditEntry {
                            id: r.get(0)?,
                            at_ms: r.get::<_, i64>(1)? as u64,
                            actor: r.get(2)?,
                            actor_tenant: r.get(3)?,
                            action: r.get(4)?,
                            target: r.get(5)?,
                            tenant: r.get(6)?,
                            request_id: r.get(7)?,
                            detail: serde_json::from_str(&detail)
                                .unwrap_or(serde_json::Value::Null),
                        })
                    },
                )
                .map_err(backend)?;
            rows.map(|r| r.map_err(backend)).collect()
        })
        .await
    }
}

/// Adds into the row of the delta's window, creating it if missing.
const USAGE_UPSERT: &str = "INSERT INTO weir_usage
        (tenant, subject, key_id, window_start, requests, bytes_in, bytes_out, tokens_in, tokens_out)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
    ON CONFLICT (tenant, subject, key_id, window_start) DO UPDATE SET
        requests = weir_usage.requests + excluded.requests,
        bytes_in = weir_usage.bytes_in + excluded.bytes_in,
        bytes_out = weir_usage.bytes_out + excluded.bytes_out,
        tokens_in = weir_usage.tokens_in + excluded.tokens_in,
        tokens_out = weir_usage.tokens_out + excluded.tokens_out";

#[async_trait::async_trait]
impl UsageLog for SqliteStore {
    async fn record(&self, d: &UsageDelta) -> Result<(), StoreError> {
        if d.counters.is_zero() {
            return Ok(());
        }
        let d = d.clone();
        self.with(move |c| {
            let n = &d.counters;
            c.execute(
                USAGE_UPSERT,
                params![
                    d.tenant,
                    d.subject,
                    d.key_id,
                    i64_of(usage_window(d.at)),
                    i64_of(n.requests),
                    i64_of(n.bytes_in),
                    i64_of(n.bytes_out),
                    i64_of(n.tokens_in),
                    i64_of(n.tokens_out),
                ],
            )
            .map(|_| ())
            .map_err(backend)
        })
        .await
    }

    async fn usage(&self, q: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        let q = q.clone();
        self.with(move |c| {
            let mut st = c
                .prepare(&format!(
                    "SELECT {USAGE_COLUMNS} FROM weir_usage
                     WHERE tenant = ?1 AND (?2 IS NULL OR subject = ?2)
                       AND (?3 IS NULL OR window_start >= ?3) AND (?4 IS NULL OR window_start < ?4)
                     ORDER BY window_start, subject, key_id"
                ))
                .map_err(backend)?;
            let rows = st
                .query_map(
                    params![q.tenant, q.subject, q.from.map(i64_of), q.to.map(i64_of)],
                    |r| usage_row(|i| r.get(i), |i| r.get(i)),
                )
                .map_err(backend)?;
            rows.map(|r| r.map_err(backend)).collect()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables(s: &SqliteStore) -> Vec<String> {
        let c = s.conn.lock();
        let mut st = c
            .prepare("SELECT name FROM sqlite_master WHERE type IN ('table','index') AND name LIKE 'weir_api%' ORDER BY name")
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    fn usage_tables(s: &SqliteStore) -> Vec<String> {
        let c = s.conn.lock();
        let mut st = c
            .prepare("SELECT name FROM sqlite_master WHERE type IN ('table','index') AND name LIKE 'weir_usage%' ORDER BY name")
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn migrations_up_down_up() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path().join("weir.db")).unwrap();
        assert!(
            s.migrate_status()
                .unwrap()
                .iter()
                .all(|m| m.applied_at.is_none())
        );
        assert_eq!(s.migrate_up(Some(1)).unwrap(), vec![1]);
        assert_eq!(tables(&s), vec!["weir_api_keys"]);
        assert_eq!(s.migrate_up(Some(2)).unwrap(), vec![2]);
        assert_eq!(tables(&s), vec!["weir_api_keys", "weir_api_keys_tenant"]);
        assert_eq!(s.migrate_up(None).unwrap(), vec![3, 4]);
        assert!(s.migrate_up(None).unwrap().is_empty(), "idempotent");
        let st = s.migrate_status().unwrap();
        assert!(st.iter().all(|m| m.applied_at.is_some()));
        assert_eq!(s.migrate_down(1).unwrap(), vec![4, 3, 2]);
        assert_eq!(tables(&s), vec!["weir_api_keys"]);
        assert_eq!(s.migrate_down(0).unwrap(), vec![1]);
        assert!(tables(&s).is_empty());
        assert_eq!(s.migrate_up(None).unwrap(), vec![1, 2, 3, 4]);
        assert_eq!(usage_tables(&s), vec!["weir_usage", "weir_usage_tenant"]);
        assert_eq!(s.migrate_down(3).unwrap(), vec![4]);
        assert!(usage_tables(&s).is_empty());
        assert_eq!(s.migrate_up(None).unwrap(), vec![4]);
        assert!(matches!(
            s.migrate_up(Some(99)),
            Err(MigrateError::UnknownTarget(99))
        ));
    }

    #[test]
    fn edited_migrations_are_detected() {
        let s = SqliteStore::open_in_memory().unwrap();
        s.migrate_up(None).unwrap();
        s.conn
            .lock()
            .execute(
                "UPDATE weir_migrations SET checksum = 'x' WHERE version = 1",
                [],
            )
            .unwrap();
        assert!(matches!(
            s.migrate_up(None),
            Err(MigrateError::Checksum { version: 1, .. })
        ));
        s.conn
            .lock()
            .execute(
                "INSERT INTO weir_migrations VALUES (999, 'future', 'y', 0)",
                [],
            )
            .unwrap();
        assert!(s.migrate_status().is_err());
    }

    #[tokio::test]
    async fn store_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open_migrated(dir.path().join("k.db")).unwrap();
        let rec = ApiKeyRecord {
            id: "0123456789abcdef".into(),
            tenant: "acme".into(),
            subject: "ci".into(),
            name: "deploy".into(),
            roles: vec!["writer".into()],
            scopes: vec!["weir:read".into()],
            secret_hash: "ab".repeat(32),
            created_at: 10,
            expires_at: Some(100),
            last_used_at: None,
            revoked_at: None,
        };
        s.insert(&rec).await.unwrap();
        assert!(matches!(s.insert(&rec).await, Err(StoreError::Duplicate)));
        assert_eq!(s.get(&rec.id).await.unwrap().unwrap(), rec);
        assert!(s.get("nope").await.unwrap().is_none());
        s.touch(&rec.id, 50).await.unwrap();
        assert!(s.revoke(&rec.id, 60).await.unwrap());
        assert!(s.revoke(&rec.id, 70).await.unwrap());
        let got = s.get(&rec.id).await.unwrap().unwrap();
        assert_eq!((got.last_used_at, got.revoked_at), (Some(50), Some(60)));
        assert_eq!(s.list(Some("acme")).await.unwrap().len(), 1);
        assert!(s.list(Some("other")).await.unwrap().is_empty());
        assert_eq!(s.list(None).await.unwrap().len(), 1);
        // Persisted across reopen.
        drop(s);
        let again = SqliteStore::open_migrated(dir.path().join("k.db")).unwrap();
        assert!(again.get(&rec.id).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn audit_round_trip() {
        let s = SqliteStore::open_in_memory().unwrap();
        s.migrate_up(None).unwrap();
        crate::store::testing::check_audit_log(&s).await;
    }

    #[tokio::test]
    async fn usage_adds_per_window() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open_migrated(dir.path().join("u.db")).unwrap();
        crate::store::testing::check_usage_log(&s).await;
        // Persisted across reopen.
        drop(s);
        let again = SqliteStore::open_migrated(dir.path().join("u.db")).unwrap();
        let rows = again
            .usage(&UsageQuery {
                tenant: "a".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(rows.len(), 4);
    }
}
