//! `weir saga`: what an operator needs when a saga is stuck — list the
//! instances, read one's state and step log, and send a failed or stuck
//! instance back to an orchestrator (docs/sagas.md, "Operating").
//!
//! The command talks to PostgreSQL only; it never runs a step itself, so
//! it is safe next to running orchestrators: `retry` just clears the lease
//! and raises the epoch, and whichever orchestrator polls next takes over.

use anyhow::Context;
use clap::{Args, Subcommand};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use weir_saga::{Instance, ListFilter, SagaError, SagaStore, Status, StepRecord};

/// Where the saga tables are.
#[derive(Args, Debug)]
pub struct SagaDb {
    /// PostgreSQL URL of the database holding the saga tables.
    #[arg(long, env = "WEIR_DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
}

#[derive(Subcommand, Debug)]
pub enum SagaCmd {
    /// List saga instances, newest first.
    List {
        /// Only instances in this status (running, compensating, completed,
        /// compensated, failed).
        #[arg(long)]
        status: Option<Status>,
        /// Only instances of this saga.
        #[arg(long)]
        saga: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: SagaDb,
    },
    /// Show one instance: its state and its step log.
    Show {
        id: String,
        /// One JSON object `{instance, steps}` instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: SagaDb,
    },
    /// Hand a failed or stuck instance back to the orchestrators: `failed`
    /// goes back to `compensating`; a running or compensating instance
    /// loses its lease so that the next orchestrator picks it up at once.
    Retry {
        id: String,
        #[command(flatten)]
        db: SagaDb,
    },
}

fn store(db: &SagaDb) -> anyhow::Result<SagaStore> {
    SagaStore::new(&db.database_url).context("opening the saga database")
}

/// Points at the likely cause when the saga tables are missing
/// (PostgreSQL's `undefined_table`), instead of leaving the operator with
/// a bare SQLSTATE.
fn hint(e: SagaError) -> anyhow::Error {
    let missing = matches!(&e, SagaError::Db(m) if m.starts_with("42P01"));
    let e = anyhow::Error::new(e);
    if missing {
        e.context("the saga tables are missing: apply the \"saga\" migration set (weir migrate)")
    } else {
        e
    }
}

pub fn run(cmd: SagaCmd) -> anyhow::Result<()> {
    crate::runtime()?.block_on(async {
        match cmd {
            SagaCmd::List {
                status,
                saga,
                limit,
                json,
                db,
            } => {
                let filter = ListFilter {
                    status,
                    saga,
                    limit: Some(limit),
                };
                let list = store(&db)?.list(&filter).await.map_err(hint)?;
                if json {
                    for inst in &list {
                        println!("{}", serde_json::to_string(inst)?);
                    }
                } else {
                    print!("{}", list_table(&list));
                }
                Ok(())
            }
            SagaCmd::Show { id, json, db } => {
                let store = store(&db)?;
                let inst = store.get(&id).await.map_err(hint)?;
                let steps = store.steps(&id).await?;
                if json {
                    let out = serde_json::json!({ "instance": inst, "steps": steps });
                    println!("{}", serde_json::to_string_pretty(&out)?);
                } else {
                    print!("{}", show_text(&inst, &steps));
                }
                Ok(())
            }
            SagaCmd::Retry { id, db } => {
                let inst = store(&db)?.retry(&id).await.map_err(hint)?;
                println!(
                    "{} is {} again (epoch {}); an orchestrator will pick it up",
                    inst.id, inst.status, inst.epoch
                );
                Ok(())
            }
        }
    })
}

/// Milliseconds since the Unix epoch as RFC 3339 (UTC); the raw number
/// if it is out of range.
fn at(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

fn list_table(list: &[Instance]) -> String {
    let mut rows = vec![[
        "ID".to_owned(),
        "SAGA".to_owned(),
        "VERSION".to_owned(),
        "STATUS".to_owned(),
        "STEP".to_owned(),
        "UPDATED".to_owned(),
        "NOTE/ERROR".to_owned(),
    ]];
    for i in list {
        rows.push([
            i.id.clone(),
            i.saga.clone(),
            i.version.to_string(),
            i.status.to_string(),
            i.step.to_string(),
            at(i.updated_at),
            i.note
                .clone()
                .or_else(|| i.error.clone())
                .unwrap_or_default(),
        ]);
    }
    let mut widths = [0usize; 7];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (k, (c, w)) in r.iter().zip(widths).enumerate() {
            if k + 1 == r.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if list.is_empty() {
        out.push_str("(no instances)\n");
    }
    out
}

fn show_text(i: &Instance, steps: &[StepRecord]) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<12} {v}\n"));
    line("id", i.id.clone());
    line("saga", format!("{} v{}", i.saga, i.version));
    line("status", i.status.to_string());
    line("step", i.step.to_string());
    line("epoch", i.epoch.to_string());
    if let Some(e) = &i.error {
        line("error", e.clone());
    }
    if let Some(n) = &i.note {
        line("note", n.clone());
    }
    match (&i.lease_owner, i.lease_until) {
        (Some(o), Some(u)) => line("lease", format!("{o} until {}", at(u))),
        (Some(o), None) => line("lease", o.clone()),
        _ => line("lease", "-".to_owned()),
    }
    line("created", at(i.created_at));
    line("updated", at(i.updated_at));
    line("input", i.input.to_string());
    line("state", i.state.to_string());
    out.push_str("\nstep log:\n");
    if steps.is_empty() {
        out.push_str("  (empty)\n");
    }
    for s in steps {
        let took = s
            .finished_at
            .map(|f| format!(" {}ms", f - s.started_at))
            .unwrap_or_default();
        out.push_str(&format!(
            "  {} #{} {} {} attempt {} epoch {}: {}{} ({})\n",
            at(s.started_at),
            s.step_index,
            s.step,
            s.phase,
            s.attempt,
            s.epoch,
            s.status,
            took,
            s.owner,
        ));
        if let Some(o) = &s.output {
            out.push_str(&format!("      output {o}\n"));
        }
        if let Some(e) = &s.error {
            out.push_str(&format!("      error  {e}\n"));
        }
    }
    out
}
