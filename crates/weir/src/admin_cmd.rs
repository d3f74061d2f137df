//! `weir keys …` and `weir migrate …`: API keys, the audit log and the
//! production layer's schema, on SQLite (`--db`, `auth.api_keys.sqlite_path`)
//! or PostgreSQL (`--database-url`, `auth.api_keys.database_url(_file)`).
//! Key changes made here are written to the audit log with the actor
//! `cli:<$USER>`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use weir_layer::auth::apikey::{ApiKeyRecord, ApiKeyStore, ApiKeys, NewApiKey};
use weir_layer::migrate::{LAYER, MigrationSet, MigrationState};
use weir_layer::secret::Secret;
use weir_layer::store::postgres::PgStore;
use weir_layer::store::sqlite::SqliteStore;
use weir_layer::store::{AuditEntry, AuditLog, AuditQuery, StoreSpec, actions};

use crate::config::{Config, Overrides};

/// Where the database is: `--database-url` or `--db`, else the
/// configuration's `[auth.api_keys]` store.
#[derive(Args, Debug)]
pub struct DbArgs {
    /// SQLite database file.
    #[arg(long, env = "WEIR_DB", conflicts_with = "database_url")]
    pub db: Option<PathBuf>,
    /// PostgreSQL URL, e.g. postgres://weir@127.0.0.1:5432/weir.
    #[arg(long, env = "WEIR_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    #[command(flatten)]
    pub config: Overrides,
}

/// An opened database.
enum Db {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

impl DbArgs {
    fn resolve(&self) -> anyhow::Result<(StoreSpec, Config)> {
        let cfg = Config::load(&self.config)?;
        if let Some(url) = &self.database_url {
            return Ok((StoreSpec::Postgres(Secret::new(url.clone())), cfg));
        }
        if let Some(path) = &self.db {
            return Ok((StoreSpec::Sqlite(path.clone()), cfg));
        }
        match cfg.auth.api_keys.store_spec()? {
            StoreSpec::Memory => bail!(
                "no database: pass --db or --database-url, or set auth.api_keys.sqlite_path or database_url"
            ),
            spec => Ok((spec, cfg)),
        }
    }

    fn open(&self) -> anyhow::Result<(Db, Config)> {
        let (spec, cfg) = self.resolve()?;
        let db = match spec {
            StoreSpec::Sqlite(path) => Db::Sqlite(
                SqliteStore::open(&path).with_context(|| format!("opening {}", path.display()))?,
            ),
            StoreSpec::Postgres(url) => Db::Postgres(PgStore::new(url.expose())?),
            StoreSpec::Memory => bail!("no database"),
        };
        Ok((db, cfg))
    }
}

impl Db {
    async fn up(&self, to: Option<u32>) -> anyhow::Result<Vec<u32>> {
        Ok(match self {
            Db::Sqlite(s) => s.migrate_up(to)?,
            Db::Postgres(p) => p.migrate_up(to).await?,
        })
    }

    async fn down(&self, to: u32) -> anyhow::Result<Vec<u32>> {
        Ok(match self {
            Db::Sqlite(s) => s.migrate_down(to)?,
            Db::Postgres(p) => p.migrate_down(to).await?,
        })
    }

    async fn status(&self) -> anyhow::Result<Vec<MigrationState>> {
        Ok(match self {
            Db::Sqlite(s) => s.migrate_status()?,
            Db::Postgres(p) => p.migrate_status().await?,
        })
    }

    /// The key store and audit log, migrated to the latest version.
    async fn stores(self) -> anyhow::Result<(Arc<dyn ApiKeyStore>, Arc<dyn AuditLog>)> {
        self.up(None).await.context("migrating the database")?;
        Ok(match self {
            Db::Sqlite(s) => (Arc::new(s.clone()), Arc::new(s)),
            Db::Postgres(p) => (Arc::new(p.clone()), Arc::new(p)),
        })
    }
}

#[derive(Subcommand, Debug)]
pub enum MigrateCmd {
    /// Apply pending migrations of every set (or of `--set`, up to `--to`).
    Up {
        /// Only this set (`weir migrate sets` lists them).
        #[arg(long)]
        set: Option<String>,
        /// Target version within `--set`.
        #[arg(long, requires = "set")]
        to: Option<u32>,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Roll one set back to version `--to` (0 = none of its tables).
    Down {
        #[arg(long)]
        set: Option<String>,
        #[arg(long)]
        to: u32,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Show applied and pending migrations of every set (or of `--set`).
    Status {
        #[arg(long)]
        set: Option<String>,
        #[command(flatten)]
        db: DbArgs,
    },
    /// List the migration sets this build knows.
    Sets,
}

#[derive(Subcommand, Debug)]
pub enum KeysCmd {
    /// Create an API key; prints the token once (it is stored hashed).
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        subject: String,
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
        /// Expiry, Unix seconds.
        #[arg(long)]
        expires_at: Option<u64>,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Revoke a key by id.
    Revoke {
        id: String,
        #[command(flatten)]
        db: DbArgs,
    },
    /// List keys (never their secrets).
    List {
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Show the audit log of admin actions, newest first (one JSON object a line).
    Audit {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        db: DbArgs,
    },
}

/// Every migration set this build knows, the layer's first. Each keeps its
/// own bookkeeping table, so sets version (and roll back) independently.
pub fn migration_sets() -> Vec<&'static MigrationSet> {
    vec![
        &weir_layer::migrate::LAYER,
        &weir_service::durable::pg::MIGRATIONS,
        &weir_saga::MIGRATIONS,
    ]
}

fn find_set(name: &str) -> anyhow::Result<&'static MigrationSet> {
    migration_sets()
        .into_iter()
        .find(|s| s.name == name)
        .with_context(|| {
            let known: Vec<_> = migration_sets().iter().map(|s| s.name).collect();
            format!("no migration set {name:?} (known: {})", known.join(", "))
        })
}

impl Db {
    async fn set_up(&self, set: &MigrationSet, to: Option<u32>) -> anyhow::Result<Vec<u32>> {
        match self {
            Db::Postgres(p) => Ok(p.migrate_set_up(set, to).await?),
            Db::Sqlite(_) if set.name == LAYER.name => self.up(to).await,
            Db::Sqlite(_) => bail!("migration set {} needs PostgreSQL", set.name),
        }
    }

    async fn set_down(&self, set: &MigrationSet, to: u32) -> anyhow::Result<Vec<u32>> {
        match self {
            Db::Postgres(p) => Ok(p.migrate_set_down(set, to).await?),
            Db::Sqlite(_) if set.name == LAYER.name => self.down(to).await,
            Db::Sqlite(_) => bail!("migration set {} needs PostgreSQL", set.name),
        }
    }

    async fn set_status(&self, set: &MigrationSet) -> anyhow::Result<Vec<MigrationState>> {
        match self {
            Db::Postgres(p) => Ok(p.migrate_set_status(set).await?),
            Db::Sqlite(_) if set.name == LAYER.name => self.status().await,
            Db::Sqlite(_) => bail!("migration set {} needs PostgreSQL", set.name),
        }
    }
}

pub fn migrate(cmd: MigrateCmd) -> anyhow::Result<()> {
    let (db, set) = match &cmd {
        MigrateCmd::Sets => {
            for s in migration_sets() {
                println!("{:<8} table {:<24} latest {}", s.name, s.table, s.latest());
            }
            return Ok(());
        }
        MigrateCmd::Up { db, set, .. }
        | MigrateCmd::Down { db, set, .. }
        | MigrateCmd::Status { db, set } => (db, set.as_deref()),
    };
    let chosen = match set {
        Some(name) => vec![find_set(name)?],
        None => migration_sets(),
    };
    let (store, _) = db.open()?;
    let sqlite = matches!(store, Db::Sqlite(_));
    crate::runtime()?.block_on(async move {
        for set in &chosen {
            // A SQLite database holds only the layer's tables; the other
            // sets are skipped unless asked for by name.
            if sqlite && set.name != LAYER.name && chosen.len() > 1 {
                continue;
            }
            match &cmd {
                MigrateCmd::Up { to, .. } => {
                    let done = store.set_up(set, *to).await?;
                    println!("{}: applied {done:?}", set.name);
                }
                MigrateCmd::Down { to, .. } => {
                    if chosen.len() > 1 {
                        bail!("`weir migrate down` rolls back one set: pass --set NAME");
                    }
                    let done = store.set_down(set, *to).await?;
                    println!("{}: rolled back {done:?}", set.name);
                }
                MigrateCmd::Status { .. } | MigrateCmd::Sets => {}
            }
            for m in store.set_status(set).await? {
                let state = match m.applied_at {
                    Some(t) => format!("applied at {t}"),
                    None => "pending".to_owned(),
                };
                println!("{:<8} {:>4}  {:<40} {state}", set.name, m.version, m.name);
            }
        }
        Ok(())
    })
}

/// The CLI's audit actor: `cli:<$USER>`.
fn actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}")
}

fn audit_entry(action: &str, rec: &ApiKeyRecord) -> AuditEntry {
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut e = AuditEntry::new(at_ms, actor(), action, rec.id.clone());
    e.tenant.clone_from(&rec.tenant);
    e.detail = serde_json::json!({
        "via": "cli",
        "subject": rec.subject,
        "name": rec.name,
        "roles": rec.roles,
        "scopes": rec.scopes,
        "expires_at": rec.expires_at,
    });
    e
}

pub fn keys(cmd: KeysCmd) -> anyhow::Result<()> {
    let db = match &cmd {
        KeysCmd::Create { db, .. }
        | KeysCmd::Revoke { db, .. }
        | KeysCmd::List { db, .. }
        | KeysCmd::Audit { db, .. } => db,
    };
    let (store, cfg) = db.open()?;
    crate::runtime()?.block_on(async move {
        let (store, audit) = store.stores().await?;
        let keys = ApiKeys::new(
            store.clone(),
            cfg.auth.api_keys.clone(),
            Arc::new(cfg.authz.table()),
            weir_layer::clock::system(),
        );
        match cmd {
            KeysCmd::Create {
                tenant,
                subject,
                name,
                roles,
                scopes,
                expires_at,
                ..
            } => {
                let created = keys
                    .create(NewApiKey {
                        tenant,
                        subject,
                        name,
                        roles,
                        scopes,
                        expires_at,
                    })
                    .await?;
                if let Err(e) = audit
                    .record(&audit_entry(actions::API_KEY_CREATED, &created.record))
                    .await
                {
                    // An unaudited key must not stay usable.
                    keys.revoke(&created.record.id).await?;
                    bail!("could not write the audit log ({e}); the key was revoked again");
                }
                println!("id:    {}", created.record.id);
                println!("token: {}", created.token.expose());
                eprintln!("the token is shown once; only its hash is stored");
            }
            KeysCmd::Revoke { id, .. } => {
                let Some(rec) = store.get(&id).await? else {
                    bail!("no key with id {id}");
                };
                keys.revoke(&id).await?;
                audit
                    .record(&audit_entry(actions::API_KEY_REVOKED, &rec))
                    .await
                    .context("the key is revoked, but the audit log could not be written")?;
                println!("revoked {id}");
            }
            KeysCmd::List { tenant, .. } => {
                for k in keys.list(tenant.as_deref()).await? {
                    let state = match (k.revoked_at, k.expires_at) {
                        (Some(_), _) => "revoked",
                        (None, Some(_)) => "expires",
                        (None, None) => "active",
                    };
                    println!(
                        "{}  tenant={} subject={} roles={} state={state} name={:?}",
                        k.id,
                        k.tenant,
                        k.subject,
                        k.roles.join(","),
                        k.name
                    );
                }
            }
            KeysCmd::Audit { tenant, limit, .. } => {
                let entries = audit
                    .entries(&AuditQuery {
                        tenant,
                        before: None,
                        limit,
                    })
                    .await?;
                for e in entries {
                    println!("{}", serde_json::to_string(&e)?);
                }
            }
        }
        Ok(())
    })
}
