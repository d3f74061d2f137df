//! The shared store: PostgreSQL for API keys, the audit log and usage
//! counters, with the same migrations as SQLite
//! ([`crate::migrate::MIGRATIONS`]).
//!
//! One `tokio-postgres` connection per node serves every query: the client
//! pipelines concurrent queries on it, and the layer's traffic is small
//! (key lookups are cached per node for `cache_ttl_ms`, `last_used_at`
//! writes are throttled, admin actions are rare), so a pool would buy
//! nothing but a dependency. The connection is opened on first use and
//! re-opened after it breaks; after a failed connect, calls fail at once
//! for a second (no pile-up of connect timeouts while the database is
//! down), and a query that takes over 5 s fails and drops the connection. Migrations run on a connection of their own,
//! because they use explicit transactions, under a session advisory lock so
//! two nodes starting at once do not both apply a step.
//!
//! TLS follows the URL's `sslmode` (`disable`, `prefer` — the default —,
//! `require`, `verify-full` with `sslrootcert`), see [`super::pg_tls`].

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, NoTls, Row};

use super::pg_tls::{self, RustlsConnect, TlsMode};

use crate::auth::apikey::{ApiKeyRecord, ApiKeyStore, StoreError};
use crate::migrate::{self, Applied, MigrateError, MigrationSet, MigrationState};
use crate::store::{
    AuditEntry, AuditLog, AuditQuery, USAGE_COLUMNS, UsageDelta, UsageLog, UsageQuery, UsageRow,
    i64_of, u64_of, usage_row, usage_window,
};

/// A PostgreSQL database holding the layer's tables.
#[derive(Clone)]
pub struct PgStore {
    config: Arc<Config>,
    tls: RustlsConnect,
    conn: Arc<tokio::sync::Mutex<Conn>>,
}

/// The shared connection and, after a failed connect, when and why.
#[derive(Default)]
struct Conn {
    client: Option<Arc<Client>>,
    failed: Option<(Instant, String)>,
}

/// After a failed connect, calls fail at once for this long instead of
/// each waiting for a connect timeout of its own.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Longest wait for one query; past it the connection is dropped and
/// re-opened by the next call.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for the readiness check's `SELECT 1`.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URL: it may carry a password.
        f.debug_struct("PgStore")
            .field("dbname", &self.config.get_dbname())
            .finish_non_exhaustive()
    }
}

/// The database URL could not be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid PostgreSQL URL: {0}")]
pub struct InvalidUrl(String);

fn db(e: tokio_postgres::Error) -> MigrateError {
    MigrateError::Db(describe(&e))
}

fn backend(e: tokio_postgres::Error) -> StoreError {
    StoreError::Backend(describe(&e))
}

/// The error with its cause (tokio-postgres' `Display` alone often says
/// only "error connecting to server").
fn describe(e: &tokio_postgres::Error) -> String {
    match (e.as_db_error(), std::error::Error::source(e)) {
        (Some(d), _) => format!("{}: {}", d.code().code(), d.message()),
        (None, Some(s)) => format!("{e}: {s}"),
        (None, None) => e.to_string(),
    }
}

impl PgStore {
    /// Parses `url` (`postgres://user[:pw]@host[:port]/db?…` or the
    /// `key=value` form); connects lazily.
    pub fn new(url: &str) -> Result<PgStore, InvalidUrl> {
        let (rest, mode) = pg_tls::split_url(url).map_err(|e| InvalidUrl(e.to_string()))?;
        let mut config: Config = rest.parse().map_err(|e: tokio_postgres::Error| {
            // The parser's message never repeats the URL (which may hold a password).
            InvalidUrl(e.to_string())
        })?;
        config.ssl_mode(mode.ssl_mode());
        let tls = pg_tls::connector(&mode).map_err(|e| InvalidUrl(e.to_string()))?;
        Ok(Self::with_tls(config, tls))
    }

    /// From a parsed configuration (connect timeout defaults to 5 s); TLS
    /// per its `ssl_mode`, the certificate unverified (`verify-full` needs
    /// [`PgStore::new`]'s URL with `sslrootcert`).
    pub fn with_config(config: Config) -> PgStore {
        // Only verify-full can fail to build, and this is not it.
        match pg_tls::connector(&TlsMode::Require) {
            Ok(tls) => Self::with_tls(config, tls),
            Err(e) => unreachable!("an unverified TLS client always builds: {e}"),
        }
    }

    fn with_tls(mut config: Config, tls: RustlsConnect) -> PgStore {
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        if config.get_application_name().is_none() {
            config.application_name("weir");
        }
        PgStore {
            config: Arc::new(config),
            tls,
            conn: Arc::new(tokio::sync::Mutex::new(Conn::default())),
        }
    }

    /// The configuration (e.g. to derive another database's URL in tests).
    pub fn config(&self) -> &Config {
        &self.config
    }

    async fn connect(&self) -> Result<Client, tokio_postgres::Error> {
        let (client, conn) = self.config.connect(self.tls.clone()).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::warn!(error = %describe(&e), "PostgreSQL connection closed");
            }
        });
        Ok(client)
    }

    /// The shared connection, (re)opened if needed.
    async fn client(&self) -> Result<Arc<Client>, StoreError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.client.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        if let Some((at, why)) = &slot.failed
            && at.elapsed() < RETRY_AFTER
        {
            return Err(StoreError::Backend(format!(
                "PostgreSQL unavailable: {why}"
            )));
        }
        match self.connect().await {
            Ok(c) => {
                let c = Arc::new(c);
                *slot = Conn {
                    client: Some(c.clone()),
                    failed: None,
                };
                Ok(c)
            }
            Err(e) => {
                let why = describe(&e);
                tracing::warn!(error = %why, "cannot connect to PostgreSQL");
                *slot = Conn {
                    client: None,
                    failed: Some((Instant::now(), why.clone())),
                };
                Err(StoreError::Backend(why))
            }
        }
    }

    /// Runs one store call with [`QUERY_TIMEOUT`]; a call that times out
    /// drops the shared connection (it may be stuck) for the next to re-open.
    async fn timed<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(QUERY_TIMEOUT, call).await {
            Ok(r) => r,
            Err(_) => {
                self.conn.lock().await.client = None;
                Err(StoreError::Backend(format!(
                    "PostgreSQL did not answer within {QUERY_TIMEOUT:?}"
                )))
            }
        }
    }

    /// Checks that the database answers (for readiness probes).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.client()
            .await?
            .simple_query("SELECT 1")
            .await
            .map(|_| ())
            .map_err(backend)
    }

    /// Whether the shared connection is encrypted (`pg_stat_ssl`).
    pub async fn encrypted(&self) -> Result<bool, StoreError> {
        self.timed(async {
            self.client()
                .await?
                .query_one(
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    &[],
                )
                .await
                .and_then(|r| r.try_get(0))
                .map_err(backend)
        })
        .await
    }

    // ------------------------------------------------------------ migrations

    /// Applies the layer's pending migrations up to `target` (default:
    /// latest) on a connection of its own; returns the versions applied.
    pub async fn migrate_up(&self, target: Option<u32>) -> Result<Vec<u32>, MigrateError> {
        self.migrate_set_up(&migrate::LAYER, target).await
    }

    /// Rolls back the layer's migrations above `target` (0: everything).
    pub async fn migrate_down(&self, target: u32) -> Result<Vec<u32>, MigrateError> {
        self.migrate_set_down(&migrate::LAYER, target).await
    }

    /// Every migration of the layer and whether it is applied.
    pub async fn migrate_status(&self) -> Result<Vec<MigrationState>, MigrateError> {
        self.migrate_set_status(&migrate::LAYER).await
    }

    /// [`migrate_up`] for any set, on a connection of its own.
    pub async fn migrate_set_up(
        &self,
        set: &MigrationSet,
        target: Option<u32>,
    ) -> Result<Vec<u32>, MigrateError> {
        let c = self.connect().await.map_err(db)?;
        migrate_up(&c, set, target).await
    }

    /// [`migrate_down`] for any set, on a connection of its own.
    pub async fn migrate_set_down(
        &self,
        set: &MigrationSet,
        target: u32,
    ) -> Result<Vec<u32>, MigrateError> {
        let c = self.connect().await.map_err(db)?;
        migrate_down(&c, set, target).await
    }

    /// [`migrate_status`] for any set, on a connection of its own.
    pub async fn migrate_set_status(
        &self,
        set: &MigrationSet,
    ) -> Result<Vec<MigrationState>, MigrateError> {
        let c = self.connect().await.map_err(db)?;
        migrate_status(&c, set).await
    }
}

// ---------------------------------------------------------------- migrations
//
// Free functions over a caller's connection so that every component keeping
// tables in PostgreSQL (the layer, sagas, the event inbox/outbox) migrates
// the same way. The connection must not be used concurrently while they run:
// each step is a BEGIN … COMMIT on it, and the set's advisory lock is a
// session lock held from start to finish (so two processes starting at once
// apply each step once).

/// Applies `set`'s pending migrations up to `target` (default: latest);
/// returns the versions applied.
pub async fn migrate_up(
    c: &Client,
    set: &MigrationSet,
    target: Option<u32>,
) -> Result<Vec<u32>, MigrateError> {
    locked(c, set, async {
        let current = set.verify_applied(&applied(c, set).await?)?;
        let mut done = Vec::new();
        for m in set.plan_up(current, target)? {
            let now = i64_of(now_secs());
            step(c, set, m, m.up, Some(now)).await?;
            done.push(m.version);
        }
        Ok(done)
    })
    .await
}

/// Rolls back `set`'s applied migrations above `target` (0: everything),
/// newest first; returns the versions rolled back.
pub async fn migrate_down(
    c: &Client,
    set: &MigrationSet,
    target: u32,
) -> Result<Vec<u32>, MigrateError> {
    locked(c, set, async {
        let current = set.verify_applied(&applied(c, set).await?)?;
        let mut done = Vec::new();
        for m in set.plan_down(current, target)? {
            step(c, set, m, m.down, None).await?;
            done.push(m.version);
        }
        Ok(done)
    })
    .await
}

/// Every migration of `set` and whether it is applied.
pub async fn migrate_status(
    c: &Client,
    set: &MigrationSet,
) -> Result<Vec<MigrationState>, MigrateError> {
    locked(c, set, async {
        let applied = applied(c, set).await?;
        set.verify_applied(&applied)?;
        Ok(set.status(&applied))
    })
    .await
}

/// Runs `f` holding the set's advisory lock, with its bookkeeping table in
/// place; the lock is released afterwards whatever `f` returned.
async fn locked<T>(
    c: &Client,
    set: &MigrationSet,
    f: impl std::future::Future<Output = Result<T, MigrateError>>,
) -> Result<T, MigrateError> {
    set.check()?;
    let key = set.lock_key();
    c.execute("SELECT pg_advisory_lock($1)", &[&key])
        .await
        .map_err(db)?;
    let out = match c.batch_execute(&set.table_sql()).await {
        Ok(()) => f.await,
        Err(e) => Err(db(e)),
    };
    let unlock = c
        .execute("SELECT pg_advisory_unlock($1)", &[&key])
        .await
        .map_err(db);
    let out = out?;
    unlock?;
    Ok(out)
}

async fn applied(c: &Client, set: &MigrationSet) -> Result<Vec<Applied>, MigrateError> {
    let rows = c
        .query(
            &format!(
                "SELECT version, checksum, applied_at FROM {} ORDER BY version",
                set.table
            ),
            &[],
        )
        .await
        .map_err(db)?;
    rows.iter()
        .map(|r| {
            Ok(Applied {
                version: u32::try_from(r.try_get::<_, i64>(0).map_err(db)?)
                    .map_err(|e| MigrateError::Db(e.to_string()))?,
                checksum: r.try_get(1).map_err(db)?,
                applied_at: u64_of(r.try_get(2).map_err(db)?),
            })
        })
        .collect()
}

/// Runs one step in a transaction: its script, then the bookkeeping.
async fn step(
    c: &Client,
    set: &MigrationSet,
    m: &migrate::Migration,
    script: &str,
    record: Option<i64>,
) -> Result<(), MigrateError> {
    let fail = |e: tokio_postgres::Error| MigrateError::Step {
        version: m.version,
        message: describe(&e),
    };
    c.batch_execute("BEGIN").await.map_err(fail)?;
    let run = async {
        c.batch_execute(script).await?;
        match record {
            Some(at) => {
                c.execute(
                    &format!(
                        "INSERT INTO {} (version, name, checksum, applied_at) VALUES ($1, $2, $3, $4)",
                        set.table
                    ),
                    &[&i64::from(m.version), &m.name, &m.checksum(), &at],
                )
                .await?;
            }
            None => {
                c.execute(
                    &format!("DELETE FROM {} WHERE version = $1", set.table),
                    &[&i64::from(m.version)],
                )
                .await?;
            }
        }
        c.batch_execute("COMMIT").await
    };
    if let Err(e) = run.await {
        // Leaves the connection clean for the caller.
        let _ = c.batch_execute("ROLLBACK").await;
        return Err(fail(e));
    }
    Ok(())
}

fn now_secs() -> u64 {
    crate::clock::Clock::unix_secs(&crate::clock::SystemClock)
}

const COLUMNS: &str = "id, tenant, subject, name, roles, scopes, secret_hash, created_at, expires_at, last_used_at, revoked_at";

fn row_to_record(r: &Row) -> Result<ApiKeyRecord, tokio_postgres::Error> {
    let list = |i: usize| -> Result<Vec<String>, tokio_postgres::Error> {
        let s: String = r.try_get(i)?;
        Ok(serde_json::from_str(&s).unwrap_or_default())
    };
    let opt = |i: usize| -> Result<Option<u64>, tokio_postgres::Error> {
        Ok(r.try_get::<_, Option<i64>>(i)?.map(u64_of))
    };
    Ok(ApiKeyRecord {
        id: r.try_get(0)?,
        tenant: r.try_get(1)?,
        subject: r.try_get(2)?,
        name: r.try_get(3)?,
        roles: list(4)?,
        scopes: list(5)?,
        secret_hash: r.try_get(6)?,
        created_at: u64_of(r.try_get(7)?),
        expires_at: opt(8)?,
        last_used_at: opt(9)?,
        revoked_at: opt(10)?,
    })
}

#[async_trait::async_trait]
impl ApiKeyStore for PgStore {
    fn dependency(&self) -> Option<&'static str> {
        Some("postgres")
    }

    /// `SELECT 1` on the shared connection within [`PROBE_TIMEOUT`].
    async fn probe(&self) -> Result<(), StoreError> {
        match tokio::time::timeout(PROBE_TIMEOUT, self.ping()).await {
            Ok(r) => r,
            Err(_) => {
                self.conn.lock().await.client = None;
                Err(StoreError::Backend(format!(
                    "PostgreSQL did not answer within {PROBE_TIMEOUT:?}"
                )))
            }
        }
    }

    async fn insert(&self, rec: &ApiKeyRecord) -> Result<(), StoreError> {
        self.timed(async {
            let roles =
                serde_json::to_string(&rec.roles).map_err(|e| StoreError::Backend(e.to_string()))?;
            let scopes =
                serde_json::to_string(&rec.scopes).map_err(|e| StoreError::Backend(e.to_string()))?;
            let opt = |v: Option<u64>| v.map(i64_of);
            self.client()
                .await?
                .execute(
                    &format!("INSERT INTO weir_api_keys ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"),
                    &[
                        &rec.id,
                        &rec.tenant,
                        &rec.subject,
                        &rec.name,
                        &roles,
                        &scopes,
                        &rec.secret_hash,
                        &i64_of(rec.created_at),
                        &opt(rec.expires_at),
                        &opt(rec.last_used_at),
                        &opt(rec.revoked_at),
                    ],
                )
                .await
                .map_err(|e| {
                    if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
                        StoreError::Duplicate
                    } else {
                        backend(e)
                    }
                })?;
            Ok(())
        })
        .await
    }

    async fn get(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.timed(async {
            let row = self
                .client()
                .await?
                .query_opt(
                    &format!("SELECT {COLUMNS} FROM weir_api_keys WHERE id = $1"),
                    &[&id],
                )
                .await
                .map_err(backend)?;
            row.as_ref().map(row_to_record).transpose().map_err(backend)
        })
        .await
    }

    async fn list(&self, tenant: Option<&str>) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.timed(async {
            let rows = self
                .client()
                .await?
                .query(
                    &format!(
                        "SELECT {COLUMNS} FROM weir_api_keys WHERE $1::TEXT IS NULL OR tenant = $1 ORDER BY created_at DESC, id"
                    ),
                    &[&tenant],
                )
                .await
                .map_err(backend)?;
            rows.iter()
                .map(|r| row_to_record(r).map_err(backend))
                .collect()
        })
        .await
    }

    async fn revoke(&self, id: &str, at: u64) -> Result<bool, StoreError> {
        self.timed(async {
            self.client()
                .await?
                .execute(
                    "UPDATE weir_api_keys SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1",
                    &[&id, &i64_of(at)],
                )
                .await
                .map(|n| n > 0)
                .map_err(backend)
        })
        .await
    }

    async fn touch(&self, id: &str, at: u64) -> Result<(), StoreError> {
        self.timed(async {
            self.client()
                .await?
                .execute(
                    "UPDATE weir_api_keys SET last_used_at = $2 WHERE id = $1",
                    &[&id, &i64_of(at)],
                )
                .await
                .map(|_| ())
                .map_err(backend)
        })
        .await
    }
}

const AUDIT_COLUMNS: &str =
    "id, at_ms, actor, actor_tenant, action, target, tenant, request_id, detail";

fn row_to_audit(r: &Row) -> Result<AuditEntry, tokio_postgres::Error> {
    let detail: String = r.try_get(8)?;
    Ok(AuditEntry {
        id: r.try_get(0)?,
        at_ms: u64_of(r.try_get(1)?),
        actor: r.try_get(2)?,
        actor_tenant: r.try_get(3)?,
        action: r.try_get(4)?,
        target: r.try_get(5)?,
        tenant: r.try_get(6)?,
        request_id: r.try_get(7)?,
        detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
    })
}

#[async_trait::async_trait]
impl AuditLog for PgStore {
    async fn record(&self, e: &AuditEntry) -> Result<(), StoreError> {
        self.timed(async {
            self.client()
                .await?
                .execute(
                    &format!("INSERT INTO weir_audit ({AUDIT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"),
                    &[
                        &e.id,
                        &i64_of(e.at_ms),
                        &e.actor,
                        &e.actor_tenant,
                        &e.action,
                        &e.target,
                        &e.tenant,
                        &e.request_id,
                        &e.detail.to_string(),
                    ],
                )
                .await
                .map(|_| ())
                .map_err(backend)
        })
        .await
    }

    async fn entries(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        self.timed(async {
            let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
            let rows = self
                .client()
                .await?
                .query(
                    &format!(
                        "SELECT {AUDIT_COLUMNS} FROM weir_audit
                         WHERE ($1::TEXT IS NULL OR tenant = $1) AND ($2::TEXT IS NULL OR id COLLATE \"C\" < $2)
                         ORDER BY id COLLATE \"C\" DESC LIMIT $3"
                    ),
                    &[&q.tenant, &q.before, &limit],
                )
                .await
                .map_err(backend)?;
            rows.iter()
                .map(|r| row_to_audit(r).map_err(backend))
                .collect()
        })
        .await
    }
}

#[async_trait::async_trait]
impl UsageLog for PgStore {
    async fn record(&self, d: &UsageDelta) -> Result<(), StoreError> {
        if d.counters.is_zero() {
            return Ok(());
        }
        self.timed(async {
            let n = &d.counters;
            self.client()
                .await?
                .execute(
                    "INSERT INTO weir_usage
                        (tenant, subject, key_id, window_start, requests, bytes_in, bytes_out, tokens_in, tokens_out)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                     ON CONFLICT (tenant, subject, key_id, window_start) DO UPDATE SET
                        requests = weir_usage.requests + excluded.requests,
                        bytes_in = weir_usage.bytes_in + excluded.bytes_in,
                        bytes_out = weir_usage.bytes_out + excluded.bytes_out,
                        tokens_in = weir_usage.tokens_in + excluded.tokens_in,
                        tokens_out = weir_usage.tokens_out + excluded.tokens_out",
                    &[
                        &d.tenant,
                        &d.subject,
                        &d.key_id,
                        &i64_of(usage_window(d.at)),
                        &i64_of(n.requests),
                        &i64_of(n.bytes_in),
                        &i64_of(n.bytes_out),
                        &i64_of(n.tokens_in),
                        &i64_of(n.tokens_out),
                    ],
                )
                .await
                .map(|_| ())
                .map_err(backend)
        })
        .await
    }

    async fn usage(&self, q: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        self.timed(async {
            let rows = self
                .client()
                .await?
                .query(
                    &format!(
                        "SELECT {USAGE_COLUMNS} FROM weir_usage
                         WHERE tenant = $1 AND ($2::TEXT IS NULL OR subject = $2)
                           AND ($3::BIGINT IS NULL OR window_start >= $3)
                           AND ($4::BIGINT IS NULL OR window_start < $4)
                         ORDER BY window_start, subject COLLATE \"C\", key_id COLLATE \"C\""
                    ),
                    &[
                        &q.tenant,
                        &q.subject,
                        &q.from.map(i64_of),
                        &q.to.map(i64_of),
                    ],
                )
                .await
                .map_err(backend)?;
            rows.iter()
                .map(|r| usage_row(|i| r.try_get(i), |i| r.try_get(i)).map_err(backend))
                .collect()
        })
        .await
    }
}

/// Throwaway databases for tests that need a real PostgreSQL (this crate's,
/// the binary's, later the chat backend's).
pub mod testing {
    use super::*;

    /// The server tests use: `WEIR_PG_URL` (scripts/test sets it), default
    /// `postgres://postgres@127.0.0.1:5432/postgres` (trust auth).
    pub fn server_url() -> String {
        std::env::var("WEIR_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
    }

    /// `url` with its database replaced by `dbname` (URL or `key=value` form).
    pub fn with_dbname(url: &str, dbname: &str) -> String {
        let Some((scheme, rest)) = url.split_once("://") else {
            return format!("{url} dbname={dbname}");
        };
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let host = rest.split_once('/').map_or(rest, |(h, _)| h);
        match query {
            Some(q) => format!("{scheme}://{host}/{dbname}?{q}"),
            None => format!("{scheme}://{host}/{dbname}"),
        }
    }

    /// A uniquely named database, dropped (with `FORCE`) when this value is.
    #[derive(Debug)]
    pub struct TestDatabase {
        name: String,
        url: String,
    }

    /// PostgreSQL could not be reached or refused the database.
    #[derive(Debug, thiserror::Error)]
    #[error(
        "PostgreSQL at {url}: {message} (start it, or set WEIR_PG_URL; scripts/test does both)"
    )]
    pub struct Unreachable {
        pub url: String,
        pub message: String,
    }

    async fn admin_client(url: &str) -> Result<Client, Unreachable> {
        let fail = |e: tokio_postgres::Error| Unreachable {
            url: url.to_owned(),
            message: describe(&e),
        };
        let mut cfg: Config = url.parse().map_err(fail)?;
        cfg.connect_timeout(Duration::from_secs(5));
        let (client, conn) = cfg.connect(NoTls).await.map_err(fail)?;
        tokio::spawn(conn);
        Ok(client)
    }

    impl TestDatabase {
        /// Creates `weir_test_{tag}_{pid}_{random}` on [`server_url`].
        pub async fn create(tag: &str) -> Result<TestDatabase, Unreachable> {
            let server = server_url();
            let name = format!(
                "weir_test_{tag}_{}_{:08x}",
                std::process::id(),
                rand::random::<u32>()
            );
            admin_client(&server)
                .await?
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .map_err(|e| Unreachable {
                    url: server.clone(),
                    message: describe(&e),
                })?;
            let url = with_dbname(&server, &name);
            Ok(TestDatabase { name, url })
        }

        /// The database's URL (no password unless `WEIR_PG_URL` has one).
        pub fn url(&self) -> &str {
            &self.url
        }

        pub fn name(&self) -> &str {
            &self.name
        }

        /// A store on this database (not migrated).
        pub fn store(&self) -> PgStore {
            // The URL was derived from one that parsed.
            PgStore::new(&self.url).unwrap_or_else(|_| {
                let mut c = Config::new();
                c.dbname(&self.name);
                PgStore::with_config(c)
            })
        }

        /// Drops the database now, terminating every connection to it
        /// (`WITH (FORCE)`): a database that went away under a running node.
        pub async fn drop_now(&self) -> Result<(), Unreachable> {
            let server = server_url();
            admin_client(&server)
                .await?
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                ))
                .await
                .map_err(|e| Unreachable {
                    url: server,
                    message: describe(&e),
                })
        }

        /// A plain connection to this database (for assertions on the schema).
        pub async fn connect(&self) -> Result<Client, Unreachable> {
            admin_client(&self.url).await
        }
    }

    impl Drop for TestDatabase {
        fn drop(&mut self) {
            let name = self.name.clone();
            let server = server_url();
            // Drop can't await: a short-lived runtime on a thread of its own.
            let _ = std::thread::spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async {
                    match admin_client(&server).await {
                        Ok(c) => {
                            if let Err(e) = c
                                .batch_execute(&format!(
                                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                                ))
                                .await
                            {
                                tracing::warn!(error = %describe(&e), %name, "could not drop the test database");
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "could not drop the test database"),
                    }
                });
            })
            .join();
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn dbname_is_replaced() {
            assert_eq!(
                with_dbname("postgres://postgres@127.0.0.1:5432/postgres", "x"),
                "postgres://postgres@127.0.0.1:5432/x"
            );
            assert_eq!(
                with_dbname("postgresql://u:p@h?connect_timeout=2", "x"),
                "postgresql://u:p@h/x?connect_timeout=2"
            );
            assert_eq!(with_dbname("host=h user=u", "x"), "host=h user=u dbname=x");
        }
    }
}
