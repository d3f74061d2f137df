//! The saga tables in PostgreSQL: creating instances, claiming them under
//! a lease, the write-ahead step log and what the CLI reads.
//!
//! Every write an orchestrator makes while working on an instance is one
//! SQL statement that first re-checks `lease_owner` (a fence): if another
//! process took the instance over, the statement changes nothing and the
//! caller gets [`SagaError::LeaseLost`]. Single statements (data-modifying
//! CTEs) instead of `BEGIN … COMMIT` keep them atomic while letting many
//! instances share one pipelined connection.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio_postgres::{Client, Config, NoTls, Row};

use crate::definition::Phase;
use crate::error::{SagaError, db};
use crate::schema::MIGRATIONS;
use crate::status::Status;

/// The database's clock in milliseconds: every time in these tables comes
/// from it, so lease expiry never compares two hosts' clocks.
macro_rules! now_ms {
    () => {
        "(extract(epoch from clock_timestamp()) * 1000)::bigint"
    };
}

const INSTANCE_COLUMNS: &str = "id, saga, version, input, state, status, step, epoch, error, note, \
     lease_owner, lease_until, created_at, updated_at";

/// One saga instance as stored.
#[derive(Clone, Debug, Serialize)]
pub struct Instance {
    pub id: String,
    pub saga: String,
    pub version: u32,
    pub input: Value,
    pub state: Value,
    #[serde(serialize_with = "ser_status")]
    pub status: Status,
    /// Running: the next step to run; compensating: how many steps remain
    /// to be compensated.
    pub step: u32,
    /// Raised by each operator retry; failures are counted per epoch.
    pub epoch: u32,
    /// Why the saga is compensating or failed.
    pub error: Option<String>,
    /// Why no orchestrator works on it (e.g. its version is not registered).
    pub note: Option<String>,
    pub lease_owner: Option<String>,
    /// Milliseconds since the epoch (database clock).
    pub lease_until: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

fn ser_status<S: serde::Serializer>(s: &Status, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s.as_str())
}

/// One row of the step log.
#[derive(Clone, Debug, Serialize)]
pub struct StepRecord {
    pub id: i64,
    pub step_index: u32,
    pub step: String,
    /// `forward` or `compensate`.
    pub phase: String,
    pub epoch: u32,
    pub attempt: u32,
    /// `started` (in flight, or its process died), `succeeded`, `failed`,
    /// `interrupted` (a later attempt found it still `started`).
    pub status: String,
    pub owner: String,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub output: Option<Value>,
    pub error: Option<Value>,
}

/// Filter for [`SagaStore::list`].
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    pub status: Option<Status>,
    pub saga: Option<String>,
    /// At most this many, newest first (default 100).
    pub limit: Option<u32>,
}

/// A started step attempt: its log row and where it stands.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Begun {
    pub log_id: i64,
    pub attempt: u32,
    /// Failed attempts of this step and phase before this one, this epoch.
    pub failures: u32,
}

/// The instance's new position, written together with a step's result.
#[derive(Clone, Debug)]
pub(crate) struct Transition<'a> {
    pub state: &'a Value,
    pub status: Status,
    pub step: u32,
    pub error: Option<&'a str>,
}

/// How a step attempt ended, for its log row.
#[derive(Clone, Debug)]
pub(crate) enum LogResult<'a> {
    Succeeded(&'a Value),
    Failed(&'a Value),
}

/// Access to the saga tables over one lazily (re)opened connection.
#[derive(Clone)]
pub struct SagaStore {
    config: Arc<Config>,
    client: Arc<tokio::sync::Mutex<Option<Arc<Client>>>>,
}

impl std::fmt::Debug for SagaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URL: it may hold a password.
        f.debug_struct("SagaStore")
            .field("dbname", &self.config.get_dbname())
            .finish_non_exhaustive()
    }
}

fn i32_of(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

fn u32_of(v: i32) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

fn ms_of(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn json_of(id: &str, s: &str) -> Result<Value, SagaError> {
    serde_json::from_str(s).map_err(|e| SagaError::Corrupt {
        id: id.to_owned(),
        message: e.to_string(),
    })
}

fn instance_of(r: &Row) -> Result<Instance, SagaError> {
    let id: String = r.try_get("id").map_err(db)?;
    let status: String = r.try_get("status").map_err(db)?;
    let status = status.parse().map_err(|_| SagaError::Corrupt {
        id: id.clone(),
        message: format!("status {status:?}"),
    })?;
    let input: String = r.try_get("input").map_err(db)?;
    let state: String = r.try_get("state").map_err(db)?;
    Ok(Instance {
        input: json_of(&id, &input)?,
        state: json_of(&id, &state)?,
        saga: r.try_get("saga").map_err(db)?,
        version: u32_of(r.try_get("version").map_err(db)?),
        status,
        step: u32_of(r.try_get("step").map_err(db)?),
        epoch: u32_of(r.try_get("epoch").map_err(db)?),
        error: r.try_get("error").map_err(db)?,
        note: r.try_get("note").map_err(db)?,
        lease_owner: r.try_get("lease_owner").map_err(db)?,
        lease_until: r.try_get("lease_until").map_err(db)?,
        created_at: r.try_get("created_at").map_err(db)?,
        updated_at: r.try_get("updated_at").map_err(db)?,
        id,
    })
}

fn step_of(r: &Row) -> Result<StepRecord, SagaError> {
    let id: i64 = r.try_get("id").map_err(db)?;
    let json = |col: &str| -> Result<Option<Value>, SagaError> {
        let s: Option<String> = r.try_get(col).map_err(db)?;
        s.map(|s| json_of(&format!("step log {id}"), &s))
            .transpose()
    };
    Ok(StepRecord {
        id,
        step_index: u32_of(r.try_get("step_index").map_err(db)?),
        step: r.try_get("step").map_err(db)?,
        phase: r.try_get("phase").map_err(db)?,
        epoch: u32_of(r.try_get("epoch").map_err(db)?),
        attempt: u32_of(r.try_get("attempt").map_err(db)?),
        status: r.try_get("status").map_err(db)?,
        owner: r.try_get("owner").map_err(db)?,
        started_at: r.try_get("started_at").map_err(db)?,
        finished_at: r.try_get("finished_at").map_err(db)?,
        output: json("output")?,
        error: json("error")?,
    })
}

impl SagaStore {
    /// Parses `url` (`postgres://user@host:port/db` or `key=value` form);
    /// connects on first use and again after the connection breaks.
    pub fn new(url: &str) -> Result<SagaStore, SagaError> {
        let mut config: Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| SagaError::InvalidUrl(e.to_string()))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        if config.get_application_name().is_none() {
            config.application_name("weir-saga");
        }
        Ok(SagaStore {
            config: Arc::new(config),
            client: Arc::new(tokio::sync::Mutex::new(None)),
        })
    }

    async fn open(&self) -> Result<Client, SagaError> {
        let (client, conn) = self.config.connect(NoTls).await.map_err(db)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::warn!(error = %e, "saga store: PostgreSQL connection closed");
            }
        });
        Ok(client)
    }

    async fn client(&self) -> Result<Arc<Client>, SagaError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let c = Arc::new(self.open().await?);
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Applies the saga migrations (on a connection of their own: the
    /// runner holds a session lock and runs its own transactions).
    pub async fn migrate(&self) -> Result<Vec<u32>, SagaError> {
        let c = self.open().await?;
        weir_layer::store::postgres::migrate_up(&c, &MIGRATIONS, None)
            .await
            .map_err(|e| SagaError::Db(e.to_string()))
    }

    /// Inserts a running instance at step 0, or returns the existing one
    /// with this id (so a caller may retry `start` safely).
    pub(crate) async fn create(
        &self,
        id: &str,
        saga: &str,
        version: u32,
        input: &Value,
    ) -> Result<Instance, SagaError> {
        let c = self.client().await?;
        let input_text = input.to_string();
        c.execute(
            concat!(
                "INSERT INTO weir_saga_instances (id, saga, version, input, state, status, step, ",
                "epoch, created_at, updated_at) VALUES ($1, $2, $3, $4, $4, 'running', 0, 0, ",
                now_ms!(),
                ", ",
                now_ms!(),
                ") ON CONFLICT (id) DO NOTHING"
            ),
            &[&id, &saga, &i32_of(version), &input_text],
        )
        .await
        .map_err(db)?;
        let inst = self.get(id).await?;
        if inst.saga != saga {
            return Err(SagaError::IdConflict {
                id: id.to_owned(),
                existing: inst.saga,
            });
        }
        Ok(inst)
    }

    /// One instance.
    pub async fn get(&self, id: &str) -> Result<Instance, SagaError> {
        let c = self.client().await?;
        let sql = format!("SELECT {INSTANCE_COLUMNS} FROM weir_saga_instances WHERE id = $1");
        let row = c.query_opt(&sql, &[&id]).await.map_err(db)?;
        match row {
            Some(r) => instance_of(&r),
            None => Err(SagaError::NotFound(id.to_owned())),
        }
    }

    /// Instances, newest first.
    pub async fn list(&self, f: &ListFilter) -> Result<Vec<Instance>, SagaError> {
        let c = self.client().await?;
        let sql = format!(
            "SELECT {INSTANCE_COLUMNS} FROM weir_saga_instances \
             WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR saga = $2) \
             ORDER BY created_at DESC, id DESC LIMIT $3"
        );
        let status = f.status.map(|s| s.as_str());
        let limit = i64::from(f.limit.unwrap_or(100));
        c.query(&sql, &[&status, &f.saga, &limit])
            .await
            .map_err(db)?
            .iter()
            .map(instance_of)
            .collect()
    }

    /// The step log of one instance, oldest first.
    pub async fn steps(&self, id: &str) -> Result<Vec<StepRecord>, SagaError> {
        let c = self.client().await?;
        c.query(
            "SELECT id, step_index, step, phase, epoch, attempt, status, owner, started_at, \
             finished_at, output, error FROM weir_saga_steps WHERE saga_id = $1 ORDER BY id",
            &[&id],
        )
        .await
        .map_err(db)?
        .iter()
        .map(step_of)
        .collect()
    }

    /// Instances per `(saga, status)`.
    pub async fn counts(&self) -> Result<Vec<(String, Status, u64)>, SagaError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT saga, status, count(*) AS n FROM weir_saga_instances GROUP BY saga, status",
                &[],
            )
            .await
            .map_err(db)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let status: String = r.try_get("status").map_err(db)?;
            let Ok(status) = status.parse() else { continue };
            let n: i64 = r.try_get("n").map_err(db)?;
            out.push((
                r.try_get("saga").map_err(db)?,
                status,
                u64::try_from(n).unwrap_or(0),
            ));
        }
        Ok(out)
    }

    /// Operator action: a `failed` instance goes back to `compensating`; a
    /// running or compensating one loses its lease, so that any
    /// orchestrator picks it up at once. Either way the epoch is raised,
    /// which restarts the failure count of the current step and fences off
    /// a previous owner that might still be working on it.
    pub async fn retry(&self, id: &str) -> Result<Instance, SagaError> {
        let c = self.client().await?;
        let n = c
            .execute(
                concat!(
                    "UPDATE weir_saga_instances SET status = CASE WHEN status = 'failed' ",
                    "THEN 'compensating' ELSE status END, epoch = epoch + 1, lease_owner = NULL, ",
                    "lease_until = NULL, note = NULL, updated_at = ",
                    now_ms!(),
                    " WHERE id = $1 AND status IN ('running', 'compensating', 'failed')"
                ),
                &[&id],
            )
            .await
            .map_err(db)?;
        let inst = self.get(id).await?;
        if n == 0 {
            return Err(SagaError::Terminal {
                id: id.to_owned(),
                status: inst.status.to_string(),
            });
        }
        Ok(inst)
    }

    /// Takes one running or compensating instance whose lease is free or
    /// expired (or already ours, from before a restart), among the
    /// definitions in `known` (`name@version`) and not in `busy`.
    /// `FOR UPDATE SKIP LOCKED` keeps two orchestrators from taking the
    /// same row; the lease keeps them apart afterwards.
    pub(crate) async fn claim(
        &self,
        owner: &str,
        ttl: Duration,
        known: &[String],
        busy: &[String],
    ) -> Result<Option<Instance>, SagaError> {
        let c = self.client().await?;
        let sql = format!(
            concat!(
                "UPDATE weir_saga_instances SET lease_owner = $1, lease_until = ",
                now_ms!(),
                " + $2, note = NULL WHERE id = (SELECT id FROM weir_saga_instances ",
                "WHERE status IN ('running', 'compensating') ",
                "AND (lease_until IS NULL OR lease_until < ",
                now_ms!(),
                " OR lease_owner = $1) AND NOT (id = ANY($3)) ",
                "AND (saga || '@' || version::text) = ANY($4) ",
                "ORDER BY updated_at LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING {}"
            ),
            INSTANCE_COLUMNS
        );
        let row = c
            .query_opt(&sql, &[&owner, &ms_of(ttl), &busy, &known])
            .await
            .map_err(db)?;
        row.as_ref().map(instance_of).transpose()
    }

    /// Marks unclaimable instances of sagas this orchestrator runs, but in
    /// versions it does not know, so `weir saga show` says why they wait.
    /// Their status and lease are left alone: an orchestrator that knows
    /// the version takes them as usual.
    pub(crate) async fn note_unknown_versions(
        &self,
        owner: &str,
        names: &[String],
        known: &[String],
    ) -> Result<u64, SagaError> {
        let c = self.client().await?;
        c.execute(
            concat!(
                "UPDATE weir_saga_instances SET note = 'version ' || version::text || ",
                "' of saga ' || saga || ' is not registered in orchestrator ' || $1 ",
                "WHERE status IN ('running', 'compensating') AND note IS NULL ",
                "AND (lease_until IS NULL OR lease_until < ",
                now_ms!(),
                ") AND saga = ANY($2) AND NOT ((saga || '@' || version::text) = ANY($3))"
            ),
            &[&owner, &names, &known],
        )
        .await
        .map_err(db)
    }

    /// Extends our lease; `false` if it is no longer ours.
    pub(crate) async fn renew(
        &self,
        id: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, SagaError> {
        let c = self.client().await?;
        let n = c
            .execute(
                concat!(
                    "UPDATE weir_saga_instances SET lease_until = ",
                    now_ms!(),
                    " + $3 WHERE id = $1 AND lease_owner = $2"
                ),
                &[&id, &owner, &ms_of(ttl)],
            )
            .await
            .map_err(db)?;
        Ok(n == 1)
    }

    /// Gives the instance up (on shutdown) so that another orchestrator
    /// need not wait for the lease to expire.
    pub(crate) async fn release(&self, id: &str, owner: &str) -> Result<(), SagaError> {
        let c = self.client().await?;
        c.execute(
            "UPDATE weir_saga_instances SET lease_owner = NULL, lease_until = NULL \
             WHERE id = $1 AND lease_owner = $2",
            &[&id, &owner],
        )
        .await
        .map_err(db)?;
        Ok(())
    }

    /// Write-ahead record of an attempt, committed before the action runs.
    /// A row of this step and phase still `started` belonged to a process
    /// that died mid-attempt: it becomes `interrupted`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn begin(
        &self,
        id: &str,
        owner: &str,
        epoch: u32,
        ttl: Duration,
        step_index: u32,
        step: &str,
        phase: Phase,
    ) -> Result<Begun, SagaError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                concat!(
                    "WITH fence AS (UPDATE weir_saga_instances SET lease_until = ",
                    now_ms!(),
                    " + $7, updated_at = ",
                    now_ms!(),
                    " WHERE id = $1 AND lease_owner = $2 AND epoch = $6 RETURNING id), ",
                    "interrupted AS (UPDATE weir_saga_steps SET status = 'interrupted', ",
                    "finished_at = ",
                    now_ms!(),
                    " WHERE saga_id = $1 AND step_index = $3 AND phase = $5 ",
                    "AND status = 'started' AND EXISTS (SELECT 1 FROM fence) RETURNING 1), ",
                    "prior AS (SELECT count(*) AS attempts, ",
                    "count(*) FILTER (WHERE status = 'failed' AND epoch = $6) AS failures ",
                    "FROM weir_saga_steps WHERE saga_id = $1 AND step_index = $3 AND phase = $5) ",
                    "INSERT INTO weir_saga_steps (saga_id, step_index, step, phase, epoch, attempt, ",
                    "status, owner, started_at) SELECT $1, $3, $4, $5, $6, prior.attempts + 1, ",
                    "'started', $2, ",
                    now_ms!(),
                    " FROM fence, prior RETURNING id, attempt, (SELECT failures FROM prior) AS failures"
                ),
                &[
                    &id,
                    &owner,
                    &i32_of(step_index),
                    &step,
                    &phase.as_str(),
                    &i32_of(epoch),
                    &ms_of(ttl),
                ],
            )
            .await
            .map_err(db)?;
        let Some(r) = row else {
            return Err(SagaError::LeaseLost(id.to_owned()));
        };
        let attempt: i64 = r.try_get::<_, i32>("attempt").map_err(db)?.into();
        let failures: i64 = r.try_get("failures").map_err(db)?;
        Ok(Begun {
            log_id: r.try_get("id").map_err(db)?,
            attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
            failures: u32::try_from(failures).unwrap_or(u32::MAX),
        })
    }

    /// Records an attempt's result (if `log`) and the instance's new
    /// position in one statement, fenced by the lease. A terminal status
    /// releases the lease.
    pub(crate) async fn finish(
        &self,
        id: &str,
        owner: &str,
        ttl: Duration,
        to: &Transition<'_>,
        log: Option<(i64, LogResult<'_>)>,
    ) -> Result<(), SagaError> {
        let c = self.client().await?;
        let state = to.state.to_string();
        let (log_id, log_status, output, error) = match &log {
            Some((lid, LogResult::Succeeded(v))) => {
                (Some(*lid), "succeeded", Some(v.to_string()), None)
            }
            Some((lid, LogResult::Failed(e))) => (Some(*lid), "failed", None, Some(e.to_string())),
            None => (None, "succeeded", None, None),
        };
        let row = c
            .query_one(
                concat!(
                    "WITH fence AS (UPDATE weir_saga_instances SET state = $3, status = $4, ",
                    "step = $5, error = $6, updated_at = ",
                    now_ms!(),
                    ", lease_until = CASE WHEN $4 IN ('completed', 'compensated', 'failed') ",
                    "THEN NULL ELSE ",
                    now_ms!(),
                    " + $7 END, lease_owner = CASE WHEN $4 IN ('completed', 'compensated', ",
                    "'failed') THEN NULL ELSE lease_owner END ",
                    "WHERE id = $1 AND lease_owner = $2 RETURNING id), ",
                    "logged AS (UPDATE weir_saga_steps SET status = $9, output = $10, error = $11, ",
                    "finished_at = ",
                    now_ms!(),
                    " WHERE id = $8 AND EXISTS (SELECT 1 FROM fence) RETURNING 1) ",
                    "SELECT count(*) AS n FROM fence"
                ),
                &[
                    &id,
                    &owner,
                    &state,
                    &to.status.as_str(),
                    &i32_of(to.step),
                    &to.error,
                    &ms_of(ttl),
                    &log_id,
                    &log_status,
                    &output,
                    &error,
                ],
            )
            .await
            .map_err(db)?;
        let n: i64 = row.try_get("n").map_err(db)?;
        if n == 1 {
            Ok(())
        } else {
            Err(SagaError::LeaseLost(id.to_owned()))
        }
    }

    /// Polls until the instance is completed, compensated or failed.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Result<Instance, SagaError> {
        let until = tokio::time::Instant::now() + timeout;
        loop {
            let inst = self.get(id).await?;
            if inst.status.is_terminal() {
                return Ok(inst);
            }
            if tokio::time::Instant::now() >= until {
                return Err(SagaError::WaitTimeout(id.to_owned()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
