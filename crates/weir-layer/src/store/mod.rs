//! Persistent stores for the layer's own data: API keys, the audit log of
//! admin actions and per-user usage counters, in memory, in SQLite
//! (embedded) or in PostgreSQL (shared by several nodes). All three run the
//! same migrations ([`crate::migrate::MIGRATIONS`]) and implement the same
//! traits ([`ApiKeyStore`], [`AuditLog`], [`UsageLog`]).
//!
//! Which one is used is configured in `[auth.api_keys]`: `store =
//! "memory" | "sqlite" | "postgres"` with `sqlite_path` or `database_url`
//! / `database_url_file` ([`ApiKeyConfig::store_spec`]).

#[cfg(feature = "postgres")]
pub mod pg_tls;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::auth::apikey::{ApiKeyConfig, ApiKeyStore, MemoryApiKeyStore, StoreError};
use crate::secret::Secret;

/// Which backend holds the layer's tables (`auth.api_keys.store`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// In process memory: lost on restart, not shared (development).
    Memory,
    /// The embedded SQLite database at `sqlite_path` (one node).
    Sqlite,
    /// PostgreSQL at `database_url` (shared by every node).
    Postgres,
}

/// A resolved store choice: the kind and where it lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreSpec {
    Memory,
    Sqlite(PathBuf),
    Postgres(Secret),
}

impl ApiKeyConfig {
    /// Resolves `store` with `sqlite_path` / `database_url(_file)`. Unset
    /// `store`: SQLite when `sqlite_path` is set, PostgreSQL when a
    /// database URL is, else memory.
    pub fn store_spec(&self) -> Result<StoreSpec, StoreError> {
        let url = crate::secret::resolve(
            "auth.api_keys.database_url",
            self.database_url.as_ref(),
            self.database_url_file.as_deref(),
        )
        .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let kind = self.store.unwrap_or(if self.sqlite_path.is_some() {
            StoreKind::Sqlite
        } else if url.is_some() {
            StoreKind::Postgres
        } else {
            StoreKind::Memory
        });
        match kind {
            StoreKind::Memory => Ok(StoreSpec::Memory),
            StoreKind::Sqlite => self
                .sqlite_path
                .clone()
                .map(StoreSpec::Sqlite)
                .ok_or_else(|| StoreError::Invalid("store = \"sqlite\" needs sqlite_path".into())),
            StoreKind::Postgres => url.map(StoreSpec::Postgres).ok_or_else(|| {
                StoreError::Invalid(
                    "store = \"postgres\" needs database_url or database_url_file".into(),
                )
            }),
        }
    }
}

/// The layer's stores, opened and migrated.
#[derive(Clone)]
pub struct LayerStores {
    pub keys: Arc<dyn ApiKeyStore>,
    pub audit: Arc<dyn AuditLog>,
    pub usage: Arc<dyn UsageLog>,
}

impl std::fmt::Debug for LayerStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerStores").finish_non_exhaustive()
    }
}

impl LayerStores {
    /// Fresh in-memory stores (tests, development).
    pub fn memory() -> LayerStores {
        LayerStores {
            keys: Arc::new(MemoryApiKeyStore::default()),
            audit: Arc::new(MemoryAuditLog::default()),
            usage: Arc::new(MemoryUsageLog::default()),
        }
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Opens the configured store and migrates it to the latest version (what
/// a server does at start; PostgreSQL is connected here, so a wrong URL
/// fails the start instead of the first request).
pub async fn open(cfg: &ApiKeyConfig) -> Result<LayerStores, StoreError> {
    match cfg.store_spec()? {
        StoreSpec::Memory => {
            tracing::warn!(
                "API keys, the audit log and usage are kept in memory and lost on restart"
            );
            Ok(LayerStores::memory())
        }
        #[cfg(feature = "sqlite")]
        StoreSpec::Sqlite(path) => {
            let s = tokio::task::spawn_blocking(move || sqlite::SqliteStore::open_migrated(&path))
                .await
                .map_err(backend)?
                .map_err(backend)?;
            Ok(LayerStores {
                keys: Arc::new(s.clone()),
                audit: Arc::new(s.clone()),
                usage: Arc::new(s),
            })
        }
        #[cfg(feature = "postgres")]
        StoreSpec::Postgres(url) => {
            let s = postgres::PgStore::new(url.expose()).map_err(backend)?;
            s.migrate_up(None).await.map_err(backend)?;
            Ok(LayerStores {
                keys: Arc::new(s.clone()),
                audit: Arc::new(s.clone()),
                usage: Arc::new(s),
            })
        }
        #[allow(unreachable_patterns)]
        other => Err(StoreError::Backend(format!(
            "this build has no support for the {other:?} store (crate features)"
        ))),
    }
}

// ------------------------------------------------------------------ readiness

/// How long a dependency check's answer is reused: a storm of `/readyz`
/// probes costs the database at most one `SELECT 1` per second per node.
pub const DEPENDENCY_CHECK_TTL: Duration = Duration::from_secs(1);

/// One dependency's part of `/readyz` (e.g. the PostgreSQL store).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DependencyHealth {
    /// Its name, also the `dependency` label of `weir_dependency_up`.
    pub dependency: &'static str,
    /// Whether the last check succeeded.
    pub up: bool,
    /// Why the last check failed.
    pub error: Option<String>,
}

/// The readiness check of a store's dependency ([`ApiKeyStore::probe`]),
/// cached for [`DEPENDENCY_CHECK_TTL`]; concurrent checks of a stale
/// answer share one probe.
pub struct DependencyCheck {
    store: Arc<dyn ApiKeyStore>,
    name: &'static str,
    last: parking_lot::Mutex<Option<(Instant, DependencyHealth)>>,
    probing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for DependencyCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DependencyCheck")
            .field("dependency", &self.name)
            .finish_non_exhaustive()
    }
}

impl DependencyCheck {
    /// The check of `store`'s dependency, if it has one.
    pub fn of(store: &Arc<dyn ApiKeyStore>) -> Option<Arc<DependencyCheck>> {
        let name = store.dependency()?;
        Some(Arc::new(DependencyCheck {
            store: store.clone(),
            name,
            last: parking_lot::Mutex::new(None),
            probing: tokio::sync::Mutex::new(()),
        }))
    }

    /// The last answer, without checking (`None`: never checked).
    pub fn last(&self) -> Option<DependencyHealth> {
        self.last.lock().as_ref().map(|(_, h)| h.clone())
    }

    fn fresh(&self) -> Option<DependencyHealth> {
        self.last
            .lock()
            .as_ref()
            .filter(|(at, _)| at.elapsed() < DEPENDENCY_CHECK_TTL)
            .map(|(_, h)| h.clone())
    }

    /// The dependency's health: the cached answer if it is recent, else
    /// one probe (shared with concurrent callers).
    pub async fn check(&self) -> DependencyHealth {
        if let Some(h) = self.fresh() {
            return h;
        }
        let _probing = self.probing.lock().await;
        // Another caller may have probed while this one waited.
        if let Some(h) = self.fresh() {
            return h;
        }
        let result = self.store.probe().await;
        let health = DependencyHealth {
            dependency: self.name,
            up: result.is_ok(),
            error: result.err().map(|e| e.to_string()),
        };
        if let Some(why) = &health.error {
            tracing::warn!(dependency = self.name, error = %why, "dependency check failed");
        }
        metrics::gauge!(crate::metrics::names::DEPENDENCY_UP, "dependency" => self.name)
            .set(if health.up { 1.0 } else { 0.0 });
        *self.last.lock() = Some((Instant::now(), health.clone()));
        health
    }
}

// ------------------------------------------------------------------ audit log

/// What admin actions are recorded as (`action` column).
pub mod actions {
    pub const API_KEY_CREATED: &str = "api_key.created";
    pub const API_KEY_REVOKED: &str = "api_key.revoked";
}

/// One recorded admin action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Time-ordered id: 16 hex digits of `at_ms`, then 8 random ones.
    pub id: String,
    /// Unix milliseconds.
    pub at_ms: u64,
    /// Who did it: the principal's subject, or `cli:<user>` for the CLI.
    pub actor: String,
    /// The actor's tenant (empty for the CLI).
    pub actor_tenant: String,
    /// e.g. [`actions::API_KEY_CREATED`].
    pub action: String,
    /// What it was done to (a key id).
    pub target: String,
    /// The tenant the target belongs to.
    pub tenant: String,
    /// The request's id (empty for the CLI).
    pub request_id: String,
    /// Anything else worth keeping (JSON object; never secrets).
    pub detail: serde_json::Value,
}

impl AuditEntry {
    /// An entry stamped `at_ms` with a fresh time-ordered id.
    pub fn new(
        at_ms: u64,
        actor: impl Into<String>,
        action: impl Into<String>,
        target: impl Into<String>,
    ) -> AuditEntry {
        let rand = rand::thread_rng().next_u32();
        AuditEntry {
            id: format!("{at_ms:016x}{rand:08x}"),
            at_ms,
            actor: actor.into(),
            actor_tenant: String::new(),
            action: action.into(),
            target: target.into(),
            tenant: String::new(),
            request_id: String::new(),
            detail: serde_json::Value::Object(Default::default()),
        }
    }
}

/// Which entries to read: newest first, ids below `before`, at most `limit`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditQuery {
    pub tenant: Option<String>,
    pub before: Option<String>,
    pub limit: usize,
}

/// Where admin actions are recorded (append only).
#[async_trait::async_trait]
pub trait AuditLog: Send + Sync {
    async fn record(&self, entry: &AuditEntry) -> Result<(), StoreError>;
    /// Newest first.
    async fn entries(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError>;
}

/// An in-memory audit log (tests, development).
#[derive(Debug, Default)]
pub struct MemoryAuditLog {
    entries: parking_lot::RwLock<Vec<AuditEntry>>,
}

#[async_trait::async_trait]
impl AuditLog for MemoryAuditLog {
    async fn record(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        self.entries.write().push(entry.clone());
        Ok(())
    }

    async fn entries(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        let mut v: Vec<AuditEntry> = self
            .entries
            .read()
            .iter()
            .filter(|e| q.tenant.as_ref().is_none_or(|t| &e.tenant == t))
            .filter(|e| q.before.as_ref().is_none_or(|b| &e.id < b))
            .cloned()
            .collect();
        v.sort_by(|a, b| b.id.cmp(&a.id));
        v.truncate(q.limit);
        Ok(v)
    }
}

// ---------------------------------------------------------------------- usage

/// Length of a usage window in seconds: counters are summed per hour
/// (windows start at multiples of this, in UTC).
pub const USAGE_WINDOW_SECS: u64 = 3600;

/// The start of the window `at` (unix seconds) falls in.
pub fn usage_window(at: u64) -> u64 {
    at - at % USAGE_WINDOW_SECS
}

/// What one or more requests used (also the totals of a window).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageCounters {
    pub requests: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
}

impl UsageCounters {
    /// Adds `other` (saturating).
    pub fn add(&mut self, other: &UsageCounters) {
        self.requests = self.requests.saturating_add(other.requests);
        self.bytes_in = self.bytes_in.saturating_add(other.bytes_in);
        self.bytes_out = self.bytes_out.saturating_add(other.bytes_out);
        self.tokens_in = self.tokens_in.saturating_add(other.tokens_in);
        self.tokens_out = self.tokens_out.saturating_add(other.tokens_out);
    }

    /// Every counter is zero.
    pub fn is_zero(&self) -> bool {
        *self == UsageCounters::default()
    }
}

/// Usage to add to a principal's counters, e.g. one request, or one chunk
/// of a streamed response (`requests: 0`, only bytes/tokens).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageDelta {
    pub tenant: String,
    pub subject: String,
    /// The API key used, empty for other authentication.
    pub key_id: String,
    /// When it happened (unix seconds): picks the window.
    pub at: u64,
    pub counters: UsageCounters,
}

/// The summed usage of one principal (and key) in one window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRow {
    pub tenant: String,
    pub subject: String,
    pub key_id: String,
    /// Unix seconds, a multiple of [`USAGE_WINDOW_SECS`].
    pub window_start: u64,
    pub counters: UsageCounters,
}

/// Which rows to read: one tenant, optionally one subject, windows starting
/// in `from..to` (unix seconds; `from` inclusive, `to` exclusive; `None`:
/// unbounded).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageQuery {
    pub tenant: String,
    pub subject: Option<String>,
    pub from: Option<u64>,
    pub to: Option<u64>,
}

impl UsageQuery {
    fn matches(&self, r: &UsageRow) -> bool {
        r.tenant == self.tenant
            && self.subject.as_ref().is_none_or(|s| &r.subject == s)
            && self.from.is_none_or(|f| r.window_start >= f)
            && self.to.is_none_or(|t| r.window_start < t)
    }
}

/// Per-principal usage counters, summed per [`USAGE_WINDOW_SECS`] window.
#[async_trait::async_trait]
pub trait UsageLog: Send + Sync {
    /// Adds `delta`'s counters to the row of its tenant, subject, key and
    /// window (created at zero if missing). An all-zero delta writes nothing.
    async fn record(&self, delta: &UsageDelta) -> Result<(), StoreError>;
    /// Matching rows, oldest window first, then by subject and key.
    async fn usage(&self, q: &UsageQuery) -> Result<Vec<UsageRow>, StoreError>;
}

/// Row order of [`UsageLog::usage`].
type UsageKey = (u64, String, String);

/// In-memory usage counters (tests, development).
#[derive(Debug, Default)]
pub struct MemoryUsageLog {
    rows: parking_lot::RwLock<std::collections::BTreeMap<(String, UsageKey), UsageCounters>>,
}

#[async_trait::async_trait]
impl UsageLog for MemoryUsageLog {
    async fn record(&self, d: &UsageDelta) -> Result<(), StoreError> {
        if d.counters.is_zero() {
            return Ok(());
        }
        let key = (
            d.tenant.clone(),
            (usage_window(d.at), d.subject.clone(), d.key_id.clone()),
        );
        self.rows.write().entry(key).or_default().add(&d.counters);
        Ok(())
    }

    async fn usage(&self, q: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        Ok(self
            .rows
            .read()
            .iter()
            .map(|((tenant, (window_start, subject, key_id)), c)| UsageRow {
                tenant: tenant.clone(),
                subject: subject.clone(),
                key_id: key_id.clone(),
                window_start: *window_start,
                counters: *c,
            })
            .filter(|r| q.matches(r))
            .collect())
    }
}

/// The columns both SQL stores select for a [`UsageRow`], in the order
/// [`usage_row`] reads them.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) const USAGE_COLUMNS: &str = "tenant, subject, key_id, window_start,
    requests, bytes_in, bytes_out, tokens_in, tokens_out";

/// Maps one row selected with [`USAGE_COLUMNS`], read through the driver's
/// typed getters (SQLite's and PostgreSQL's rows both fit).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn usage_row<E>(
    text: impl Fn(usize) -> Result<String, E>,
    int: impl Fn(usize) -> Result<i64, E>,
) -> Result<UsageRow, E> {
    let n = |i: usize| int(i).map(u64_of);
    Ok(UsageRow {
        tenant: text(0)?,
        subject: text(1)?,
        key_id: text(2)?,
        window_start: n(3)?,
        counters: UsageCounters {
            requests: n(4)?,
            bytes_in: n(5)?,
            bytes_out: n(6)?,
            tokens_in: n(7)?,
            tokens_out: n(8)?,
        },
    })
}

/// A counter or timestamp as SQL's signed 64-bit integer (saturating).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A stored integer back as a counter (negative: 0).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Checks every store implementation passes, shared by this crate's unit
/// tests (memory, SQLite) and the PostgreSQL integration test
/// (`tests/postgres.rs`). Not part of the API.
#[doc(hidden)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub mod testing {
    use super::*;

    /// Checks any [`UsageLog`] on an empty store: windows, subjects, keys
    /// and tenants kept apart; streamed chunks recorded concurrently add up
    /// (the upsert is atomic); queries filter and order.
    pub async fn check_usage_log(log: &dyn UsageLog) {
        let t0 = 1_700_000_000 - 1_700_000_000 % USAGE_WINDOW_SECS;
        let delta =
            |tenant: &str, subject: &str, key: &str, at: u64, requests: u64, tokens: u64| {
                UsageDelta {
                    tenant: tenant.into(),
                    subject: subject.into(),
                    key_id: key.into(),
                    at,
                    counters: UsageCounters {
                        requests,
                        bytes_in: 10 * requests,
                        bytes_out: 100 * tokens,
                        tokens_in: 0,
                        tokens_out: tokens,
                    },
                }
            };
        // One request, then its streamed chunks (concurrently), and one
        // more request at the window's last second.
        log.record(&delta("a", "alice", "k1", t0 + 5, 1, 0))
            .await
            .unwrap();
        let chunks: Vec<_> = (0..20)
            .map(|i| delta("a", "alice", "k1", t0 + i, 0, 3))
            .collect();
        for r in futures::future::join_all(chunks.iter().map(|d| log.record(d))).await {
            r.unwrap();
        }
        log.record(&delta("a", "alice", "k1", t0 + USAGE_WINDOW_SECS - 1, 2, 0))
            .await
            .unwrap();
        // The next window, another subject, another key, another tenant, nothing.
        log.record(&delta("a", "alice", "k1", t0 + USAGE_WINDOW_SECS, 1, 1))
            .await
            .unwrap();
        log.record(&delta("a", "bob", "", t0 + 1, 4, 0))
            .await
            .unwrap();
        log.record(&delta("a", "alice", "k2", t0 + 2, 1, 0))
            .await
            .unwrap();
        log.record(&delta("b", "alice", "k1", t0 + 3, 9, 9))
            .await
            .unwrap();
        log.record(&delta("a", "alice", "k1", t0 + 4, 0, 0))
            .await
            .unwrap();

        let query =
            |tenant: &str, subject: Option<&str>, from: Option<u64>, to: Option<u64>| UsageQuery {
                tenant: tenant.into(),
                subject: subject.map(Into::into),
                from,
                to,
            };
        let all = log.usage(&query("a", None, None, None)).await.unwrap();
        let view: Vec<_> = all
            .iter()
            .map(|r| {
                (
                    r.window_start - t0,
                    r.subject.as_str(),
                    r.key_id.as_str(),
                    r.counters.requests,
                    r.counters.tokens_out,
                )
            })
            .collect();
        assert_eq!(
            view,
            [
                (0, "alice", "k1", 3, 60),
                (0, "alice", "k2", 1, 0),
                (0, "bob", "", 4, 0),
                (USAGE_WINDOW_SECS, "alice", "k1", 1, 1),
            ]
        );
        assert!(all.iter().all(|r| r.tenant == "a"));
        assert_eq!(
            (all[0].counters.bytes_in, all[0].counters.bytes_out),
            (30, 6000)
        );

        let alice_first = log
            .usage(&query(
                "a",
                Some("alice"),
                Some(t0),
                Some(t0 + USAGE_WINDOW_SECS),
            ))
            .await
            .unwrap();
        assert_eq!(alice_first.len(), 2);
        assert!(
            alice_first
                .iter()
                .all(|r| r.subject == "alice" && r.window_start == t0)
        );
        let later = log
            .usage(&query("a", None, Some(t0 + 1), None))
            .await
            .unwrap();
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].window_start, t0 + USAGE_WINDOW_SECS);

        // Tenant isolation.
        let b = log.usage(&query("b", None, None, None)).await.unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!((b[0].tenant.as_str(), b[0].counters.requests), ("b", 9));
        assert!(
            log.usage(&query("c", None, None, None))
                .await
                .unwrap()
                .is_empty()
        );
    }

    /// Checks any [`AuditLog`] on an empty store: newest first, pages by
    /// `before`, filters by tenant, keeps the detail and request id.
    pub async fn check_audit_log(log: &dyn AuditLog) {
        for i in 0..5u64 {
            let mut e = AuditEntry::new(
                1_700_000_000_000 + i,
                "root",
                actions::API_KEY_CREATED,
                format!("k{i}"),
            );
            e.tenant = if i % 2 == 0 { "a" } else { "b" }.into();
            e.request_id = format!("req-{i}");
            e.detail = serde_json::json!({ "n": i });
            log.record(&e).await.unwrap();
        }
        let targets = |v: &[AuditEntry]| v.iter().map(|e| e.target.clone()).collect::<Vec<_>>();
        let page = log
            .entries(&AuditQuery {
                limit: 2,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(targets(&page), ["k4", "k3"]);
        assert_eq!(page[0].detail, serde_json::json!({ "n": 4 }));
        assert_eq!(page[0].request_id, "req-4");
        let rest = log
            .entries(&AuditQuery {
                limit: 10,
                before: Some(page[1].id.clone()),
                tenant: Some("a".into()),
            })
            .await
            .unwrap();
        assert_eq!(targets(&rest), ["k2", "k0"]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_choice() {
        let mut c = ApiKeyConfig::default();
        assert_eq!(c.store_spec().unwrap(), StoreSpec::Memory);
        c.sqlite_path = Some("k.db".into());
        assert_eq!(c.store_spec().unwrap(), StoreSpec::Sqlite("k.db".into()));
        c.store = Some(StoreKind::Postgres);
        assert!(c.store_spec().is_err(), "postgres without a URL");
        c.database_url = Some(Secret::new("postgres://u:pw@h/db"));
        assert!(matches!(c.store_spec().unwrap(), StoreSpec::Postgres(_)));
        c.database_url_file = Some("/nonexistent".into());
        assert!(c.store_spec().is_err(), "both url and file");
        c.database_url = None;
        assert!(c.store_spec().is_err(), "unreadable file");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("url");
        std::fs::write(&f, "postgres://h/db\n").unwrap();
        c.database_url_file = Some(f);
        assert_eq!(
            c.store_spec().unwrap(),
            StoreSpec::Postgres(Secret::new("postgres://h/db"))
        );
    }

    #[tokio::test]
    async fn memory_usage_adds_per_window() {
        testing::check_usage_log(&MemoryUsageLog::default()).await;
        assert_eq!(usage_window(7199), 3600);
        assert_eq!(usage_window(7200), 7200);
    }

    #[tokio::test]
    async fn memory_audit_pages_newest_first() {
        testing::check_audit_log(&MemoryAuditLog::default()).await;
    }
}
