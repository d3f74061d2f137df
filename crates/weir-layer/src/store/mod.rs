//! Persistent stores for the layer's own data: API keys and the audit log
//! of admin actions, in memory, in SQLite (embedded) or in PostgreSQL
//! (shared by several nodes). All three run the same migrations
//! ([`crate::migrate::MIGRATIONS`]) and implement the same traits
//! ([`ApiKeyStore`], [`AuditLog`]).
//!
//! Which one is used is configured in `[auth.api_keys]`: `store =
//! "memory" | "sqlite" | "postgres"` with `sqlite_path` or `database_url`
//! / `database_url_file` ([`ApiKeyConfig::store_spec`]).

#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

use std::path::PathBuf;
use std::sync::Arc;

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
            tracing::warn!("API keys and the audit log are kept in memory and lost on restart");
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
                audit: Arc::new(s),
            })
        }
        #[cfg(feature = "postgres")]
        StoreSpec::Postgres(url) => {
            let s = postgres::PgStore::new(url.expose()).map_err(backend)?;
            s.migrate_up(None).await.map_err(backend)?;
            Ok(LayerStores {
                keys: Arc::new(s.clone()),
                audit: Arc::new(s),
            })
        }
        #[allow(unreachable_patterns)]
        other => Err(StoreError::Backend(format!(
            "this build has no support for the {other:?} store (crate features)"
        ))),
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
    async fn memory_audit_pages_newest_first() {
        let log = MemoryAuditLog::default();
        for i in 0..5u64 {
            let mut e = AuditEntry::new(1000 + i, "root", actions::API_KEY_CREATED, "k");
            e.tenant = if i % 2 == 0 { "a" } else { "b" }.into();
            log.record(&e).await.unwrap();
        }
        let first = log
            .entries(&AuditQuery {
                limit: 2,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            first.iter().map(|e| e.at_ms).collect::<Vec<_>>(),
            [1004, 1003]
        );
        let next = log
            .entries(&AuditQuery {
                limit: 10,
                before: Some(first[1].id.clone()),
                tenant: Some("a".into()),
            })
            .await
            .unwrap();
        assert_eq!(
            next.iter().map(|e| e.at_ms).collect::<Vec<_>>(),
            [1002, 1000]
        );
    }
}
