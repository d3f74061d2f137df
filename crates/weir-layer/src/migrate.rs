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
//! `BIGINT`, `CREATE INDEX`), so one list serves both backends: the SQLite
//! runner is [`crate::store::sqlite`], the PostgreSQL runner
//! [`crate::store::postgres`]. Both share the planning below
//! ([`verify_applied`], [`plan_up`], [`plan_down`], [`status`]), so they
//! cannot disagree about what "up to version N" means.

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
    Migration {
        version: 3,
        name: "audit_log",
        // `id` is the time in ms (16 hex digits) followed by 8 random hex
        // digits: ids sort by time, and serve as the pagination cursor.
        up: "CREATE TABLE weir_audit (
                id TEXT PRIMARY KEY,
                at_ms BIGINT NOT NULL,
                actor TEXT NOT NULL,
                actor_tenant TEXT NOT NULL DEFAULT '',
                action TEXT NOT NULL,
                target TEXT NOT NULL DEFAULT '',
                tenant TEXT NOT NULL DEFAULT '',
                request_id TEXT NOT NULL DEFAULT '',
                detail TEXT NOT NULL DEFAULT '{}'
            );
            CREATE INDEX weir_audit_tenant ON weir_audit (tenant, id)",
        down: "DROP INDEX weir_audit_tenant; DROP TABLE weir_audit",
    },
    Migration {
        version: 4,
        name: "usage",
        // One row per tenant, subject, API key ('' without one) and window
        // (`window_start`: unix seconds, a multiple of
        // `store::USAGE_WINDOW_SECS`), one column per counter. The primary
        // key makes recording an upsert that adds
        // (`ON CONFLICT (…) DO UPDATE SET n = n + excluded.n`); the index
        // serves a tenant's usage over a time range across subjects.
        up: "CREATE TABLE weir_usage (
                tenant TEXT NOT NULL,
                subject TEXT NOT NULL,
                key_id TEXT NOT NULL DEFAULT '',
                window_start BIGINT NOT NULL,
                requests BIGINT NOT NULL DEFAULT 0,
                bytes_in BIGINT NOT NULL DEFAULT 0,
                bytes_out BIGINT NOT NULL DEFAULT 0,
                tokens_in BIGINT NOT NULL DEFAULT 0,
                tokens_out BIGINT NOT NULL DEFAULT 0,
                PRIMARY KEY (tenant, subject, key_id, window_start)
            );
            CREATE INDEX weir_usage_tenant ON weir_usage (tenant, window_start)",
        down: "DROP INDEX weir_usage_tenant; DROP TABLE weir_usage",
    },
];

/// The bookkeeping table, created before anything else by both runners.
pub const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS weir_migrations (
    version BIGINT PRIMARY KEY,
    name TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_at BIGINT NOT NULL
)";

/// One row of `weir_migrations`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub version: u32,
    pub checksum: String,
    /// Unix seconds.
    pub applied_at: u64,
}

/// A component's own list of migrations with its own bookkeeping table.
///
/// The layer's tables are one set ([`LAYER`]); other components that keep
/// state in the same database (sagas, the event inbox and outbox) bring
/// theirs. Separate sets version independently — a saga migration never
/// has to be numbered after the layer's — and each records its versions in
/// its own table, so `weir migrate` can run, roll back and report them one
/// by one, and a binary that does not know a set leaves its tables alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MigrationSet {
    /// Short name used on the command line (`weir migrate up --set saga`).
    pub name: &'static str,
    /// Bookkeeping table: `(version, name, checksum, applied_at)`. Must be a
    /// plain SQL identifier (`[a-z_][a-z0-9_]*`); it is spliced into SQL.
    pub table: &'static str,
    /// Oldest first. Append only: never edit a released entry.
    pub migrations: &'static [Migration],
}

/// The production layer's own set (API keys, audit log, usage).
pub const LAYER: MigrationSet = MigrationSet {
    name: "layer",
    table: "weir_migrations",
    migrations: MIGRATIONS,
};

impl MigrationSet {
    /// Refuses a bookkeeping table name that is not a plain identifier
    /// (it is interpolated into SQL, so this is checked before any use).
    pub fn check(&self) -> Result<(), MigrateError> {
        let ok =
            !self.table.is_empty()
                && self.table.len() <= 63
                && self.table.bytes().enumerate().all(|(i, b)| {
                    b == b'_' || b.is_ascii_lowercase() || (i > 0 && b.is_ascii_digit())
                });
        if ok {
            Ok(())
        } else {
            Err(MigrateError::Db(format!(
                "migration set {}: invalid bookkeeping table name {:?}",
                self.name, self.table
            )))
        }
    }

    /// `CREATE TABLE IF NOT EXISTS` for the bookkeeping table.
    pub fn table_sql(&self) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {} (
    version BIGINT PRIMARY KEY,
    name TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_at BIGINT NOT NULL
)",
            self.table
        )
    }

    /// Key for PostgreSQL's advisory lock while migrating this set: one
    /// lock per set, so migrating sagas does not wait for the layer. The
    /// layer's key stays the one earlier releases used.
    pub fn lock_key(&self) -> i64 {
        if self.table == LAYER.table {
            return 0x7765_6972; // "weir"
        }
        let d = Sha256::digest(self.table.as_bytes());
        let mut b = [0u8; 8];
        b.copy_from_slice(&d[..8]);
        i64::from_be_bytes(b)
    }

    /// Checks applied migrations (oldest first) against the code; returns
    /// the current version.
    pub fn verify_applied(&self, applied: &[Applied]) -> Result<u32, MigrateError> {
        for a in applied {
            match self.migrations.iter().find(|m| m.version == a.version) {
                Some(m) if m.checksum() == a.checksum => {}
                Some(m) => {
                    return Err(MigrateError::Checksum {
                        version: a.version,
                        name: m.name.into(),
                    });
                }
                None => return Err(MigrateError::TooNew(a.version, self.latest())),
            }
        }
        Ok(applied.last().map_or(0, |a| a.version))
    }

    fn known_target(&self, target: u32) -> Result<(), MigrateError> {
        if target != 0 && !self.migrations.iter().any(|m| m.version == target) {
            return Err(MigrateError::UnknownTarget(target));
        }
        Ok(())
    }

    /// The migrations to apply, in order, to go from `current` to `target`
    /// (default: latest).
    pub fn plan_up(
        &self,
        current: u32,
        target: Option<u32>,
    ) -> Result<Vec<&'static Migration>, MigrateError> {
        let target = target.unwrap_or_else(|| self.latest());
        self.known_target(target)?;
        Ok(self
            .migrations
            .iter()
            .filter(|m| m.version > current && m.version <= target)
            .collect())
    }

    /// The migrations to roll back, newest first, to go from `current` down
    /// to `target` (0: everything).
    pub fn plan_down(
        &self,
        current: u32,
        target: u32,
    ) -> Result<Vec<&'static Migration>, MigrateError> {
        self.known_target(target)?;
        Ok(self
            .migrations
            .iter()
            .rev()
            .filter(|m| m.version > target && m.version <= current)
            .collect())
    }

    /// Every known migration and whether it is applied.
    pub fn status(&self, applied: &[Applied]) -> Vec<MigrationState> {
        self.migrations
            .iter()
            .map(|m| MigrationState {
                version: m.version,
                name: m.name,
                applied_at: applied
                    .iter()
                    .find(|a| a.version == m.version)
                    .map(|a| a.applied_at),
            })
            .collect()
    }

    /// The version all migrations of the set lead to.
    pub fn latest(&self) -> u32 {
        self.migrations.last().map_or(0, |m| m.version)
    }
}

/// [`MigrationSet::verify_applied`] for the layer's set.
pub fn verify_applied(applied: &[Applied]) -> Result<u32, MigrateError> {
    LAYER.verify_applied(applied)
}

/// [`MigrationSet::plan_up`] for the layer's set.
pub fn plan_up(current: u32, target: Option<u32>) -> Result<Vec<&'static Migration>, MigrateError> {
    LAYER.plan_up(current, target)
}

/// [`MigrationSet::plan_down`] for the layer's set.
pub fn plan_down(current: u32, target: u32) -> Result<Vec<&'static Migration>, MigrateError> {
    LAYER.plan_down(current, target)
}

/// [`MigrationSet::status`] for the layer's set.
pub fn status(applied: &[Applied]) -> Vec<MigrationState> {
    LAYER.status(applied)
}

/// The version all of the layer's migrations lead to.
pub fn latest() -> u32 {
    LAYER.latest()
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
