//! Runs saga instances to the end: claims them under a lease, runs each
//! step with its deadline and retries, writes the step log ahead of every
//! action, compensates in reverse order, and resumes whatever a crashed
//! orchestrator left behind. The argument for why this is crash-safe is in
//! docs/sagas.md.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use serde_json::Value;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use weir_layer::problem::{ErrorCode, Problem};

use crate::definition::{Action, Phase, RetryPolicy, Saga, StepCtx, check_name};
use crate::error::SagaError;
use crate::metrics;
use crate::registry::Registry;
use crate::status::Status;
use crate::store::{Instance, LogResult, SagaStore, Transition};

/// Tuning of an [`Orchestrator`].
#[derive(Clone, Debug)]
pub struct OrchestratorBuilder {
    store: SagaStore,
    registry: Registry,
    owner: Option<String>,
    lease: Duration,
    poll_interval: Duration,
    concurrency: usize,
    gauge_interval: Duration,
}

impl OrchestratorBuilder {
    /// This process's name in leases and the step log. Must be unique
    /// among live orchestrators: an orchestrator takes back instances
    /// leased to its own name at once (a restarted process with a stable
    /// name resumes its work without waiting for the lease to expire).
    /// Default: `$HOSTNAME-pid-random`.
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// How long a claim lasts without renewal (default 30 s); renewed every
    /// third of it while the instance is worked on. After a crash, other
    /// orchestrators wait this long before taking over.
    pub fn lease(mut self, ttl: Duration) -> Self {
        self.lease = ttl.max(Duration::from_millis(300));
        self
    }

    /// How often `run` looks for claimable instances (default 1 s);
    /// `start` on the same orchestrator wakes it at once.
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d;
        self
    }

    /// Instances worked on at the same time (default 32).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// How often `run` refreshes the `weir_saga_instances` gauge (default 15 s).
    pub fn gauge_interval(mut self, d: Duration) -> Self {
        self.gauge_interval = d;
        self
    }

    pub fn build(self) -> Orchestrator {
        let owner = self.owner.unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "orchestrator".into());
            format!(
                "{host}-{}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            )
        });
        let (stopping, _) = watch::channel(false);
        Orchestrator {
            inner: Arc::new(Inner {
                known: self.registry.keys(),
                names: self.registry.names(),
                store: self.store,
                registry: self.registry,
                owner,
                lease: self.lease,
                poll_interval: self.poll_interval,
                concurrency: self.concurrency,
                gauge_interval: self.gauge_interval,
                wake: Notify::new(),
                busy: Mutex::new(HashSet::new()),
                cooling: Mutex::new(HashMap::new()),
                stopping,
            }),
        }
    }
}

/// Runs the registered sagas' instances stored in one database. Cheap to
/// clone; any number may run against the same database.
#[derive(Clone, Debug)]
pub struct Orchestrator {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: SagaStore,
    registry: Registry,
    known: Vec<String>,
    names: Vec<String>,
    owner: String,
    lease: Duration,
    poll_interval: Duration,
    concurrency: usize,
    gauge_interval: Duration,
    wake: Notify,
    /// Instances this process is working on (never claimed twice here).
    busy: Mutex<HashSet<String>>,
    /// Instances this process gave up on after an error, and until when it
    /// leaves them to others: without it, an instance whose row cannot be
    /// processed (or a statement that keeps failing) would be re-claimed
    /// and fail again in a tight loop.
    cooling: Mutex<HashMap<String, Instant>>,
    stopping: watch::Sender<bool>,
}

/// How a step's attempts ended.
enum Outcome {
    Succeeded {
        log_id: i64,
        output: Value,
    },
    Failed {
        log_id: i64,
        problem: Problem,
        failures: u32,
    },
    /// The orchestrator is shutting down (between attempts).
    Stopped,
}

/// Removes the instance from the busy set when its drive ends, however.
struct BusyGuard<'a> {
    inner: &'a Inner,
    id: String,
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut b) = self.inner.busy.lock() {
            b.remove(&self.id);
        }
    }
}

/// Aborts the lease renewal task when the drive ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn new_id() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    // Time first: ids sort roughly by creation.
    format!("{ms:012x}{:016x}", rand::random::<u64>())
}

/// Shallow merge: an object output adds or replaces members of the state;
/// any other non-null output is stored under the step's name.
fn merge(state: &mut Value, step: &str, output: &Value) {
    let Value::Object(s) = state else { return };
    match output {
        Value::Null => {}
        Value::Object(m) => {
            for (k, v) in m {
                s.insert(k.clone(), v.clone());
            }
        }
        other => {
            s.insert(step.to_owned(), other.clone());
        }
    }
}

fn problem_json(p: &Problem) -> Value {
    serde_json::to_value(p).unwrap_or_else(|_| Value::String(p.to_string()))
}

/// `{what} failed after N attempt(s): STATUS CODE: DETAIL`, the instance's
/// error once an action's attempts ran out.
fn gave_up(what: &str, failures: u32, p: &Problem) -> String {
    format!(
        "{what} failed after {failures} attempt(s): {} {}: {}",
        p.status, p.code, p.detail
    )
}

/// Resolves when the lease is reported lost; never if the renewal task
/// went away (the fence on every write still catches a lost lease).
async fn lease_lost(mut rx: watch::Receiver<bool>) {
    if rx.wait_for(|lost| *lost).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn stop_requested(mut rx: watch::Receiver<bool>) {
    if rx.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

impl Orchestrator {
    pub fn builder(store: SagaStore, registry: Registry) -> OrchestratorBuilder {
        OrchestratorBuilder {
            store,
            registry,
            owner: None,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            concurrency: 32,
            gauge_interval: Duration::from_secs(15),
        }
    }

    pub fn owner(&self) -> &str {
        &self.inner.owner
    }

    pub fn store(&self) -> &SagaStore {
        &self.inner.store
    }

    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// Starts an instance of `saga`'s latest registered version with a
    /// new id; returns the id. `input` must be a JSON object: it is the
    /// saga's initial state.
    pub async fn start(&self, saga: &str, input: Value) -> Result<String, SagaError> {
        let id = new_id();
        self.start_with_id(&id, saga, input).await?;
        Ok(id)
    }

    /// Starts an instance under a caller-chosen id (e.g. the order id), or
    /// returns the existing instance with that id: a caller that is not
    /// sure its first `start` went through may simply call it again.
    pub async fn start_with_id(
        &self,
        id: &str,
        saga: &str,
        input: Value,
    ) -> Result<Instance, SagaError> {
        check_name("saga id", id).map_err(|e| SagaError::InvalidInput(e.to_string()))?;
        if !input.is_object() {
            return Err(SagaError::InvalidInput(
                "the input must be a JSON object (it becomes the saga's state)".into(),
            ));
        }
        let def = self.inner.registry.latest(saga)?;
        let inst = self
            .inner
            .store
            .create(id, saga, def.version, &input)
            .await?;
        self.inner.wake.notify_one();
        Ok(inst)
    }

    /// Waits until the instance is completed, compensated or failed.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Result<Instance, SagaError> {
        self.inner.store.wait(id, timeout).await
    }

    /// Claims and runs, one after another, every instance claimable now
    /// until none is left; returns how many were worked on. For tests and
    /// for callers that schedule the orchestrator themselves.
    pub async fn run_pending(&self) -> Result<usize, SagaError> {
        let mut n = 0;
        while let Some(inst) = self.claim().await? {
            n += 1;
            self.inner.clone().drive(inst).await;
        }
        Ok(n)
    }

    /// Works on instances until `shutdown` resolves, then lets each
    /// in-flight instance finish its current step, releases its lease and
    /// returns.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<(), SagaError> {
        let inner = &self.inner;
        let permits = Arc::new(Semaphore::new(inner.concurrency));
        let mut tasks = JoinSet::new();
        let mut seen = BTreeSet::new();
        let mut next_gauge = Instant::now();
        let mut shutdown = std::pin::pin!(shutdown);
        tracing::info!(owner = %inner.owner, sagas = ?inner.known, "saga orchestrator running");
        loop {
            while tasks.try_join_next().is_some() {}
            if Instant::now() >= next_gauge {
                next_gauge = Instant::now() + inner.gauge_interval;
                self.housekeeping(&mut seen).await;
            }
            while let Ok(permit) = permits.clone().try_acquire_owned() {
                match self.claim().await {
                    Ok(Some(inst)) => {
                        let inner = inner.clone();
                        tasks.spawn(async move {
                            inner.drive(inst).await;
                            drop(permit);
                        });
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "saga orchestrator: claim failed");
                        break;
                    }
                }
            }
            tokio::select! {
                () = &mut shutdown => break,
                () = inner.wake.notified() => {}
                () = tokio::time::sleep(inner.poll_interval) => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        inner.stopping.send_replace(true);
        while tasks.join_next().await.is_some() {}
        tracing::info!(owner = %inner.owner, "saga orchestrator stopped");
        Ok(())
    }

    /// The instance gauge, and a note on instances whose version no one
    /// here knows.
    async fn housekeeping(&self, seen: &mut BTreeSet<(String, Status)>) {
        let inner = &self.inner;
        match inner.store.counts().await {
            Ok(c) => metrics::publish_counts(&c, seen),
            Err(e) => tracing::warn!(error = %e, "saga orchestrator: counting instances failed"),
        }
        if let Err(e) = inner
            .store
            .note_unknown_versions(&inner.owner, &inner.names, &inner.known)
            .await
        {
            tracing::warn!(error = %e, "saga orchestrator: noting unknown versions failed");
        }
    }

    /// Marks running instances of known sagas whose version is not
    /// registered here (also done periodically by `run`); returns how many
    /// were marked.
    pub async fn note_unknown_versions(&self) -> Result<u64, SagaError> {
        let inner = &self.inner;
        inner
            .store
            .note_unknown_versions(&inner.owner, &inner.names, &inner.known)
            .await
    }

    async fn claim(&self) -> Result<Option<Instance>, SagaError> {
        let inner = &self.inner;
        let mut skip: Vec<String> = inner
            .busy
            .lock()
            .map(|b| b.iter().cloned().collect())
            .unwrap_or_default();
        if let Ok(mut c) = inner.cooling.lock() {
            let now = Instant::now();
            c.retain(|_, until| *until > now);
            skip.extend(c.keys().cloned());
        }
        let inst = match inner
            .store
            .claim(&inner.owner, inner.lease, &inner.known, &skip)
            .await
        {
            Ok(i) => i,
            Err(e) => {
                if let SagaError::Corrupt { id, .. } = &e {
                    // Claimed, but the row does not decode.
                    inner.cool(id);
                    let _ = inner.store.release(id, &inner.owner).await;
                }
                return Err(e);
            }
        };
        if let Some(i) = &inst
            && let Ok(mut b) = inner.busy.lock()
        {
            b.insert(i.id.clone());
        }
        Ok(inst)
    }
}

impl Inner {
    /// Leaves `id` to other orchestrators for one lease period.
    fn cool(&self, id: &str) {
        if let Ok(mut c) = self.cooling.lock() {
            c.insert(id.to_owned(), Instant::now() + self.lease);
        }
    }

    /// Works on one claimed instance until it is terminal, the lease is
    /// lost or the orchestrator stops. Errors are logged, not returned:
    /// whatever was not committed is redone by the next owner.
    async fn drive(self: Arc<Inner>, inst: Instance) {
        let _busy = BusyGuard {
            inner: &self,
            id: inst.id.clone(),
        };
        let id = inst.id.clone();
        let saga = match self.registry.get(&inst.saga, inst.version) {
            Ok(s) => s.clone(),
            Err(e) => {
                // Claims only match registered versions; kept for safety.
                tracing::warn!(%id, error = %e, "saga orchestrator: cannot run instance");
                let _ = self.store.release(&id, &self.owner).await;
                return;
            }
        };
        let (lost_tx, lost_rx) = watch::channel(false);
        let renewer = {
            let store = self.store.clone();
            let owner = self.owner.clone();
            let ttl = self.lease;
            let id = id.clone();
            AbortOnDrop(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(ttl / 3).await;
                    match store.renew(&id, &owner, ttl).await {
                        Ok(true) => {}
                        Ok(false) => {
                            lost_tx.send_replace(true);
                            return;
                        }
                        Err(e) => tracing::warn!(%id, error = %e, "saga lease renewal failed"),
                    }
                }
            }))
        };
        let result = self.drive_steps(&saga, inst, lost_rx).await;
        drop(renewer);
        match result {
            Ok(true) => {}
            Ok(false) => {
                if let Err(e) = self.store.release(&id, &self.owner).await {
                    tracing::warn!(%id, error = %e, "saga orchestrator: releasing lease failed");
                }
            }
            Err(SagaError::LeaseLost(_)) => {
                tracing::warn!(%id, owner = %self.owner, "saga lease lost; another orchestrator continues");
            }
            Err(e) => {
                tracing::warn!(%id, error = %e, "saga orchestrator: giving the instance up for now");
                self.cool(&id);
                let _ = self.store.release(&id, &self.owner).await;
            }
        }
    }

    /// `Ok(true)`: the instance reached a terminal status; `Ok(false)`:
    /// stopped on shutdown with the instance still open.
    async fn drive_steps(
        &self,
        saga: &Saga,
        mut inst: Instance,
        lost: watch::Receiver<bool>,
    ) -> Result<bool, SagaError> {
        let n = u32::try_from(saga.steps.len()).unwrap_or(u32::MAX);
        loop {
            if *self.stopping.borrow() {
                return Ok(false);
            }
            match inst.status {
                Status::Completed | Status::Compensated | Status::Failed => return Ok(true),
                Status::Running if inst.step >= n => {
                    self.transition(&inst, Status::Completed, n, None, None)
                        .await?;
                    inst.status = Status::Completed;
                }
                Status::Running => {
                    let idx = inst.step;
                    let step = &saga.steps[idx as usize];
                    match self
                        .attempts(
                            saga,
                            &inst,
                            idx,
                            Phase::Forward,
                            &step.action,
                            step.retry,
                            &lost,
                        )
                        .await?
                    {
                        Outcome::Stopped => return Ok(false),
                        Outcome::Succeeded { log_id, output } => {
                            merge(&mut inst.state, &step.name, &output);
                            let next = idx + 1;
                            let status = if next >= n {
                                Status::Completed
                            } else {
                                Status::Running
                            };
                            let log = (log_id, LogResult::Succeeded(&output));
                            self.transition(&inst, status, next, None, Some(log))
                                .await?;
                            inst.step = next;
                            inst.status = status;
                            inst.error = None;
                        }
                        Outcome::Failed {
                            log_id,
                            problem,
                            failures,
                        } => {
                            let what = format!("step {}", step.name);
                            let error = gave_up(&what, failures, &problem);
                            self.give_up(
                                &inst,
                                Status::Compensating,
                                idx,
                                &error,
                                log_id,
                                &problem,
                            )
                            .await?;
                            metrics::compensation_started(&saga.name);
                            tracing::info!(id = %inst.id, saga = %saga.name, %error, "saga compensating");
                            inst.status = Status::Compensating;
                            inst.error = Some(error);
                        }
                    }
                }
                Status::Compensating if inst.step == 0 => {
                    self.transition(&inst, Status::Compensated, 0, inst.error.as_deref(), None)
                        .await?;
                    inst.status = Status::Compensated;
                }
                Status::Compensating => {
                    let idx = inst.step - 1;
                    let Some(step) = saga.steps.get(idx as usize) else {
                        return Err(SagaError::Corrupt {
                            id: inst.id.clone(),
                            message: format!("compensating step {idx} of a saga with {n} steps"),
                        });
                    };
                    let Some(comp) = &step.compensation else {
                        // Nothing to undo: move on without a log row.
                        self.transition(
                            &inst,
                            Status::Compensating,
                            idx,
                            inst.error.as_deref(),
                            None,
                        )
                        .await?;
                        inst.step = idx;
                        continue;
                    };
                    match self
                        .attempts(
                            saga,
                            &inst,
                            idx,
                            Phase::Compensate,
                            comp,
                            step.compensation_retry,
                            &lost,
                        )
                        .await?
                    {
                        Outcome::Stopped => return Ok(false),
                        Outcome::Succeeded { log_id, output } => {
                            let log = (log_id, LogResult::Succeeded(&output));
                            let error = inst.error.as_deref();
                            self.transition(&inst, Status::Compensating, idx, error, Some(log))
                                .await?;
                            inst.step = idx;
                        }
                        Outcome::Failed {
                            log_id,
                            problem,
                            failures,
                        } => {
                            let what = format!("compensation of step {}", step.name);
                            let error = format!(
                                "{} (the saga was compensating because: {})",
                                gave_up(&what, failures, &problem),
                                inst.error.as_deref().unwrap_or("?")
                            );
                            self.give_up(
                                &inst,
                                Status::Failed,
                                inst.step,
                                &error,
                                log_id,
                                &problem,
                            )
                            .await?;
                            metrics::saga_failed(&saga.name);
                            tracing::error!(id = %inst.id, saga = %saga.name, %error, "saga failed: needs an operator");
                            inst.status = Status::Failed;
                        }
                    }
                }
            }
        }
    }

    /// Moves `inst` to `status` at `step` with `error` (the instance's state
    /// as it is now), fenced by this orchestrator's lease; `log` completes
    /// the attempt's row when an attempt ended.
    async fn transition(
        &self,
        inst: &Instance,
        status: Status,
        step: u32,
        error: Option<&str>,
        log: Option<(i64, LogResult<'_>)>,
    ) -> Result<(), SagaError> {
        let to = Transition {
            state: &inst.state,
            status,
            step,
            error,
        };
        self.store
            .finish(&inst.id, &self.owner, self.lease, &to, log)
            .await
    }

    /// The attempts at an action ran out: `inst` moves to `status` at `step`
    /// with `error`, and the last attempt's log row keeps its problem.
    async fn give_up(
        &self,
        inst: &Instance,
        status: Status,
        step: u32,
        error: &str,
        log_id: i64,
        problem: &Problem,
    ) -> Result<(), SagaError> {
        let problem = problem_json(problem);
        let log = (log_id, LogResult::Failed(&problem));
        self.transition(inst, status, step, Some(error), Some(log))
            .await
    }

    /// Runs one step's action (or compensation) until it succeeds or its
    /// failures reach the policy's attempts. Each attempt is logged as
    /// `started` before the action runs.
    #[allow(clippy::too_many_arguments)]
    async fn attempts(
        &self,
        saga: &Saga,
        inst: &Instance,
        idx: u32,
        phase: Phase,
        action: &Arc<dyn Action>,
        policy: RetryPolicy,
        lost: &watch::Receiver<bool>,
    ) -> Result<Outcome, SagaError> {
        let step = &saga.steps[idx as usize];
        let key = match phase {
            Phase::Forward => format!("{}:{}", inst.id, step.name),
            Phase::Compensate => format!("{}:{}:compensate", inst.id, step.name),
        };
        loop {
            let begun = self
                .store
                .begin(
                    &inst.id,
                    &self.owner,
                    inst.epoch,
                    self.lease,
                    idx,
                    &step.name,
                    phase,
                )
                .await?;
            let ctx = StepCtx {
                saga_id: inst.id.clone(),
                saga: saga.name.clone(),
                version: saga.version,
                step: step.name.clone(),
                phase,
                attempt: begun.attempt,
                idempotency_key: key.clone(),
                state: inst.state.clone(),
                deadline: Instant::now() + step.deadline,
            };
            let started = Instant::now();
            let run = AssertUnwindSafe(action.call(ctx)).catch_unwind();
            let result = tokio::select! {
                r = tokio::time::timeout(step.deadline, run) => match r {
                    Ok(Ok(r)) => r,
                    Ok(Err(_panic)) => Err(Problem::new(
                        ErrorCode::InternalError,
                        format!("the {phase} action of step {} panicked", step.name),
                    )),
                    Err(_elapsed) => Err(Problem::new(
                        ErrorCode::DeadlineExceeded,
                        format!(
                            "step {} ({phase}) passed its deadline of {} ms",
                            step.name,
                            step.deadline.as_millis()
                        ),
                    )),
                },
                () = lease_lost(lost.clone()) => return Err(SagaError::LeaseLost(inst.id.clone())),
            };
            metrics::step_duration(
                &saga.name,
                &step.name,
                phase,
                result.is_ok(),
                started.elapsed(),
            );
            let problem = match result {
                Ok(output) => {
                    return Ok(Outcome::Succeeded {
                        log_id: begun.log_id,
                        output,
                    });
                }
                Err(p) => p,
            };
            metrics::step_failure(&saga.name, &step.name, phase);
            let failures = begun.failures.saturating_add(1);
            if failures >= policy.attempts {
                return Ok(Outcome::Failed {
                    log_id: begun.log_id,
                    problem,
                    failures,
                });
            }
            tracing::debug!(id = %inst.id, step = %step.name, %phase, attempt = begun.attempt, error = %problem, "saga step attempt failed; retrying");
            // The instance stays where it is; only the attempt is logged.
            let to = Transition {
                state: &inst.state,
                status: inst.status,
                step: inst.step,
                error: inst.error.as_deref(),
            };
            self.store
                .finish(
                    &inst.id,
                    &self.owner,
                    self.lease,
                    &to,
                    Some((begun.log_id, LogResult::Failed(&problem_json(&problem)))),
                )
                .await?;
            tokio::select! {
                () = tokio::time::sleep(policy.delay(failures)) => {}
                () = stop_requested(self.stopping.subscribe()) => return Ok(Outcome::Stopped),
                () = lease_lost(lost.clone()) => return Err(SagaError::LeaseLost(inst.id.clone())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn outputs_merge_into_the_state() {
        let mut s = json!({ "a": 1, "b": 2 });
        merge(&mut s, "step", &json!({ "b": 3, "c": 4 }));
        assert_eq!(s, json!({ "a": 1, "b": 3, "c": 4 }));
        merge(&mut s, "step", &Value::Null);
        assert_eq!(s, json!({ "a": 1, "b": 3, "c": 4 }));
        merge(&mut s, "ship", &json!("T-1"));
        assert_eq!(s["ship"], "T-1");
    }

    #[test]
    fn ids_are_unique_and_usable_in_keys() {
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
        assert!(check_name("id", &a).is_ok());
    }
}
