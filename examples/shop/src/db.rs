//! Creates the shop's PostgreSQL database on first run, so one command
//! starts everything on a fresh machine.

use anyhow::Context;

/// Creates the database named in `url` (connecting to `postgres` on the
/// same server) unless it exists.
pub async fn ensure_database(url: &str) -> anyhow::Result<()> {
    let cfg: tokio_postgres::Config = url.parse().context("database URL")?;
    let Some(name) = cfg.get_dbname().map(str::to_owned) else {
        return Ok(());
    };
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        anyhow::bail!("database name `{name}`: use letters, digits and `_`");
    }
    let mut admin = cfg.clone();
    admin.dbname("postgres");
    let (client, conn) = admin
        .connect(tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to PostgreSQL ({url})"))?;
    let conn = tokio::spawn(conn);
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .is_some();
    if !exists {
        // A concurrent creator makes this fail with duplicate_database.
        if let Err(e) = client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            && e.code() != Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE)
        {
            return Err(e.into());
        }
        tracing::info!(database = %name, "created the shop's database");
    }
    drop(client);
    let _ = conn.await;
    Ok(())
}
