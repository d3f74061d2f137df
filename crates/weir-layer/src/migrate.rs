//! Versioned schema migrations for the layer's own tables.
//!
//! Each [`Migration`] has an `up` and a `down` script; applied versions are
//! recorded in `weir_migrations (version, name, checksum, applied_at)`. The
//! checksum (SHA-256 of `up`) catches a released migration that was edited
//! afterwards — the database would silently differ from what the code
//! expects, so the migrator refuses to go on. Each step runs in its own
//! transaction (both SQLite and PostgreSQL have transactional DDL), so a
//! failed step leaves the previous version intact.
//!
//! The SQL is kept to the common subset of SQLite and PostgreSQL (`TEXT`,
//! `BIGINT`, `CREATE INDEX`), so one list serves both backends; the SQLite
//! runner is [`crate::store::sqlite`], a PostgreSQL runner applies the same
//! list.

use serde::Serialize;
use sha2::{Digest, Sha256};

/// One schema change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub up: &'static str,
    pub down: &'static str,
}

impl Migration {
    /// Hex SHA-256 of `up`.
    pub fn checksum(&self) -> String {
        Sha256::digest(self.up.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// The layer's migrations, oldest first. Append only: never edit a
/// released entry, add a new version instead.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "api_keys",
        up: "CREATE TABLE weir_api_keys (
                id TEXT PRIMARY KEY,
                tenant TEXT NOT NULL,
                subject TEXT NOT NULL,
                name TEXT NOT NULL DEFAULT '',
                roles TEXT NOT NULL DEFAULT '[]',
                scopes TEXT NOT NULL DEFAULT '[]',
                secret_hash TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                expires_at BIGINT,
                last_used_at BIGINT,
                revoked_at BIGINT
            )",
        down: "DROP TABLE weir_api_keys",
    },
    Migration {
        version: 2,
        name: "api_keys_tenant_index",
        up: "CREATE INDEX weir_api_keys_tenant ON weir_api_keys (tenant, created_at)",
        down: "DROP INDEX weir_api_keys_tenant",
    },
];

/// The version all migrations lead to.
pub fn latest() -> u32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// One row of `weir migrate status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MigrationState {
    pub version: u32,
    pub name: &'static str,
    /// Unix seconds, `None` if pending.
    pub applied_at: Option<u64>,
}

/// A migration run failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("migration {version} ({name}) was changed after it was applied (checksum mismatch)")]
    Checksum { version: u32, name: String },
    #[error("the database is at version {0}, newer than this build knows ({1})")]
    TooNew(u32, u32),
    #[error("no migration has version {0}")]
    UnknownTarget(u32),
    #[error("migration {version} failed: {message}")]
    Step { version: u32, message: String },
    #[error("database error: {0}")]
    Db(String),
}
