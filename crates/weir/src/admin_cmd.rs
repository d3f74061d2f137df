//! `weir keys …` and `weir migrate …`: API keys and the production layer's
//! schema, on the SQLite database named by `auth.api_keys.sqlite_path`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use weir_layer::auth::apikey::{ApiKeys, NewApiKey};
use weir_layer::store::sqlite::SqliteStore;

use crate::config::{Config, Overrides};

/// Where the database is: `--db`, else the configuration's
/// `auth.api_keys.sqlite_path`.
#[derive(Args, Debug)]
pub struct DbArgs {
    /// SQLite database file.
    #[arg(long, env = "WEIR_DB")]
    pub db: Option<PathBuf>,
    #[command(flatten)]
    pub config: Overrides,
}

impl DbArgs {
    fn resolve(&self) -> anyhow::Result<(PathBuf, Config)> {
        let cfg = Config::load(&self.config)?;
        let path = self
            .db
            .clone()
            .or_else(|| cfg.auth.api_keys.sqlite_path.clone())
            .context("no database: pass --db or set auth.api_keys.sqlite_path")?;
        Ok((path, cfg))
    }
}

#[derive(Subcommand, Debug)]
pub enum MigrateCmd {
    /// Apply pending migrations (up to `--to`).
    Up {
        #[arg(long)]
        to: Option<u32>,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Roll back to version `--to` (0 = empty schema).
    Down {
        #[arg(long)]
        to: u32,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Show applied and pending migrations.
    Status {
        #[command(flatten)]
        db: DbArgs,
    },
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
}

pub fn migrate(cmd: MigrateCmd) -> anyhow::Result<()> {
    let (db, target, status_only, down) = match &cmd {
        MigrateCmd::Up { to, db } => (db, *to, false, false),
        MigrateCmd::Down { to, db } => (db, Some(*to), false, true),
        MigrateCmd::Status { db } => (db, None, true, false),
    };
    let (path, _) = db.resolve()?;
    let store = SqliteStore::open(&path).with_context(|| format!("opening {}", path.display()))?;
    if !status_only {
        let changed = if down {
            store.migrate_down(target.unwrap_or(0))?
        } else {
            store.migrate_up(target)?
        };
        println!(
            "{} {:?}",
            if down { "rolled back" } else { "applied" },
            changed
        );
    }
    for m in store.migrate_status()? {
        let state = match m.applied_at {
            Some(t) => format!("applied at {t}"),
            None => "pending".to_owned(),
        };
        println!("{:>4}  {:<40} {state}", m.version, m.name);
    }
    Ok(())
}

pub fn keys(cmd: KeysCmd) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let db = match &cmd {
            KeysCmd::Create { db, .. } | KeysCmd::Revoke { db, .. } | KeysCmd::List { db, .. } => {
                db
            }
        };
        let (path, cfg) = db.resolve()?;
        let store = Arc::new(
            SqliteStore::open_migrated(&path)
                .with_context(|| format!("opening {}", path.display()))?,
        );
        let keys = ApiKeys::new(
            store,
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
                println!("id:    {}", created.record.id);
                println!("token: {}", created.token.expose());
                eprintln!("the token is shown once; only its hash is stored");
            }
            KeysCmd::Revoke { id, .. } => {
                if !keys.revoke(&id).await? {
                    bail!("no key with id {id}");
                }
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
        }
        Ok(())
    })
}
