//! Durable listeners: a durable pull consumer per listener, bounded
//! redelivery with backoff, dead-lettering, drain.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use weir_layer::problem::{ErrorCode, Problem};

use super::dlq::{Attempt, DeadLetter, DeadLetters, now_rfc3339};
use super::error::{DurableError, setup};
use super::family::Family;
use super::ledger::Ledger;
use super::replay::StartAt;
use super::retry::{is_retryable, nak_delay};
use super::{EVENT_ID, MSG_ID};
use crate::context::Ctx;
use crate::error::SetupError;

/// How a durable listener consumes.
#[derive(Debug, Clone)]
pub struct DurableOptions {
    /// Deliveries before an event is dead-lettered (retryable failures).
    pub max_deliver: u64,
    /// First nak delay; doubles per delivery (with jitter) up to `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// How long the broker waits for an ack before redelivering; a handler
    /// that needs longer calls [`DurableEvent::progress`].
    pub ack_wait: Duration,
    /// A handler running longer is cancelled and the attempt counts as a
    /// retryable `deadline_exceeded` failure.
    pub handler_timeout: Duration,
    /// Handlers running at once in this instance.
    pub concurrency: usize,
    /// Where a new consumer starts (an existing durable consumer resumes
    /// where it stopped; this only applies when it is created).
    pub start: StartAt,
    /// The handler tolerates duplicates itself: skip the KV ledger.
    pub idempotent: bool,
    /// How long the ledger remembers handled event ids and attempt history.
    pub ledger_ttl: Duration,
}

impl Default for DurableOptions {
    fn default() -> Self {
        DurableOptions {
            max_deliver: 5,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            ack_wait: Duration::from_secs(30),
            handler_timeout: Duration::from_secs(60),
            concurrency: 16,
            start: StartAt::All,
            idempotent: false,
            ledger_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

impl DurableOptions {
    pub fn max_deliver(mut self, n: u64) -> Self {
        self.max_deliver = n.max(1);
        self
    }
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_max = max.max(base);
        self
    }
    pub fn ack_wait(mut self, d: Duration) -> Self {
        self.ack_wait = d;
        self
    }
    pub fn handler_timeout(mut self, d: Duration) -> Self {
        self.handler_timeout = d;
        self
    }
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }
    pub fn start(mut self, s: StartAt) -> Self {
        self.start = s;
        self
    }
    pub fn idempotent(mut self, yes: bool) -> Self {
        self.idempotent = yes;
        self
    }
    pub fn ledger_ttl(mut self, d: Duration) -> Self {
        self.ledger_ttl = d;
        self
    }
}

/// One delivery of a durable event.
#[derive(Clone)]
pub struct DurableEvent {
    pub subject: String,
    pub headers: Option<HeaderMap>,
    pub payload: Bytes,
    pub ctx: Ctx,
    /// The logical id (`Weir-Event-Id`; else `Nats-Msg-Id`; else
    /// `<stream>:<seq>`).
    pub event_id: String,
    pub stream_seq: u64,
    /// 1 on the first delivery.
    pub delivered: u64,
    acker: Arc<jetstream::message::Acker>,
}

impl std::fmt::Debug for DurableEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableEvent")
            .field("subject", &self.subject)
            .field("event_id", &self.event_id)
            .field("stream_seq", &self.stream_seq)
            .field("delivered", &self.delivered)
            .finish_non_exhaustive()
    }
}

impl DurableEvent {
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Problem> {
        crate::contract::decode_json(&self.payload)
    }

    /// Tells the broker the handler is still working, restarting the ack
    /// wait, so a long handler is not redelivered to another instance.
    pub async fn progress(&self) -> Result<(), DurableError> {
        self.acker
            .ack_with(AckKind::Progress)
            .await
            .map_err(|e| DurableError::Read(e.to_string()))
    }
}

/// The result of processing one delivery.
pub(crate) enum Outcome {
    Handled,
    /// Already handled (the ledger named).
    Duplicate(&'static str),
    Failed(Problem),
}

/// How a listener turns a delivery into an outcome (plain handler with the
/// KV ledger, or the PostgreSQL inbox transaction).
pub(crate) trait Process: Send + Sync + 'static {
    fn process(&self, ev: DurableEvent, timeout: Duration) -> BoxFuture<'_, Outcome>;
    /// Opens what the processor needs once the consumer name is known.
    fn prepare<'a>(
        &'a self,
        _js: &'a jetstream::Context,
        _consumer: &'a str,
        _opts: &'a DurableOptions,
    ) -> BoxFuture<'a, Result<(), DurableError>> {
        Box::pin(async { Ok(()) })
    }
}

/// Runs a user handler with a deadline and panic isolation.
pub(crate) async fn run_handler(
    fut: impl std::future::Future<Output = Result<(), Problem>>,
    timeout: Duration,
) -> Result<(), Problem> {
    match tokio::time::timeout(timeout, AssertUnwindSafe(fut).catch_unwind()).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(Problem::new(
            ErrorCode::InternalError,
            "the event handler panicked",
        )),
        Err(_) => Err(crate::error::deadline_problem()),
    }
}

type Handler = Arc<dyn Fn(DurableEvent) -> BoxFuture<'static, Result<(), Problem>> + Send + Sync>;

struct Plain {
    handler: Handler,
    /// Unset for idempotent handlers.
    ledger: tokio::sync::OnceCell<Ledger>,
}

impl Process for Plain {
    fn prepare<'a>(
        &'a self,
        js: &'a jetstream::Context,
        consumer: &'a str,
        opts: &'a DurableOptions,
    ) -> BoxFuture<'a, Result<(), DurableError>> {
        Box::pin(async move {
            if !opts.idempotent {
                let l = Ledger::open(js, consumer, opts.ledger_ttl).await?;
                let _ = self.ledger.set(l);
            }
            Ok(())
        })
    }

    fn process(&self, ev: DurableEvent, timeout: Duration) -> BoxFuture<'_, Outcome> {
        Box::pin(async move {
            let ledger = self.ledger.get();
            let id = ev.event_id.clone();
            if let Some(l) = ledger {
                match l.seen(&id).await {
                    Ok(true) => return Outcome::Duplicate("kv"),
                    Ok(false) => {}
                    Err(e) => {
                        return Outcome::Failed(Problem::new(
                            ErrorCode::Overloaded,
                            format!("event ledger unavailable: {e}"),
                        ));
                    }
                }
            }
            match run_handler((self.handler)(ev), timeout).await {
                Ok(()) => {
                    if let Some(l) = ledger
                        && let Err(e) = l.record(&id).await
                    {
                        // Handled anyway; a redelivery would run it again.
                        tracing::warn!(event_id = %id, error = %e, "cannot record handled event");
                    }
                    Outcome::Handled
                }
                Err(p) => Outcome::Failed(p),
            }
        })
    }
}

/// A durable listener, declared with [`crate::ServiceBuilder::durable`].
pub struct DurableListener {
    name: String,
    family: Family,
    filter: String,
    options: DurableOptions,
    process: Option<Arc<dyn Process>>,
}

impl std::fmt::Debug for DurableListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableListener")
            .field("name", &self.name)
            .field("family", &self.family.name())
            .field("filter", &self.filter)
            .finish_non_exhaustive()
    }
}

impl DurableListener {
    /// Listener `name` on the events of `family` matching `filter` (a
    /// subject pattern inside the family, e.g. `orders.placed` or
    /// `orders.>`). Its durable consumer is `<service>_<name>`: instances
    /// of the service share it (each event goes to one of them).
    pub fn new(name: impl Into<String>, family: Family, filter: impl Into<String>) -> Self {
        DurableListener {
            name: name.into(),
            family,
            filter: filter.into(),
            options: DurableOptions::default(),
            process: None,
        }
    }

    pub fn options(mut self, o: DurableOptions) -> Self {
        self.options = o;
        self
    }

    /// The handler: `Ok` acks; a retryable `Err` is redelivered with
    /// backoff up to `max_deliver`, any other `Err` dead-letters at once.
    pub fn handler<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(DurableEvent) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), Problem>> + Send + 'static,
    {
        self.process = Some(Arc::new(Plain {
            handler: Arc::new(move |e| Box::pin(f(e))),
            ledger: tokio::sync::OnceCell::new(),
        }));
        self
    }

    #[cfg(feature = "postgres")]
    pub(crate) fn set_process(mut self, p: Arc<dyn Process>) -> Self {
        self.process = Some(p);
        self
    }

    /// Creates the family stream, the dead-letter stream, the ledger and
    /// the durable consumer, then spawns the consume loop.
    pub(crate) async fn start(
        self,
        service: &str,
        js: jetstream::Context,
        stop: watch::Receiver<bool>,
    ) -> Result<JoinHandle<()>, SetupError> {
        let consumer_name = format!("{service}_{}", self.name);
        let filter = self.filter.clone();
        let step = move |what: &'static str| {
            let filter = filter.clone();
            move |e: DurableError| SetupError::Subscribe {
                subject: filter,
                reason: format!("{what}: {e}"),
            }
        };
        if !crate::server::valid_name(&self.name) {
            return Err(SetupError::Config(format!(
                "durable listener name `{}` must match [A-Za-z0-9_-]+",
                self.name
            )));
        }
        let family_prefix = format!("{}.", self.family.name());
        if !self.filter.starts_with(&family_prefix) {
            return Err(SetupError::Config(format!(
                "durable listener `{}`: filter `{}` is outside family `{}`",
                self.name,
                self.filter,
                self.family.name()
            )));
        }
        let Some(process) = self.process.clone() else {
            return Err(SetupError::Config(format!(
                "durable listener `{}` has no handler",
                self.name
            )));
        };
        self.family
            .ensure(&js)
            .await
            .map_err(step("family stream"))?;
        let dlq = DeadLetters::new(js.clone());
        dlq.ensure().await.map_err(step("dead-letter stream"))?;
        // The attempt history lives in the ledger bucket even for
        // idempotent handlers (which skip only the handled-id check).
        let ledger = Ledger::open(&js, &consumer_name, self.options.ledger_ttl)
            .await
            .map_err(step("ledger bucket"))?;
        process
            .prepare(&js, &consumer_name, &self.options)
            .await
            .map_err(step("handler"))?;
        let stream = js
            .get_stream(self.family.stream_name())
            .await
            .map_err(|e| step("family stream")(setup(e)))?;
        let consumer: consumer::PullConsumer = stream
            .get_or_create_consumer(
                &consumer_name,
                consumer::pull::Config {
                    durable_name: Some(consumer_name.clone()),
                    filter_subject: self.filter.clone(),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: self.options.ack_wait,
                    // Unbounded at the broker: the listener dead-letters at
                    // `max_deliver` itself, so the broker never silently
                    // drops an event a crashed instance was handling.
                    max_deliver: -1,
                    deliver_policy: self.options.start.policy(),
                    max_ack_pending: i64::try_from(self.options.concurrency.saturating_mul(64))
                        .unwrap_or(i64::MAX),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| step("durable consumer")(setup(e)))?;
        let run = Run {
            consumer_name,
            family: self.family.name().to_owned(),
            stream: self.family.stream_name(),
            options: self.options,
            process,
            ledger,
            dlq,
            metrics: Metrics::new(service, &self.name),
        };
        Ok(tokio::spawn(run.consume(consumer, stop)))
    }
}

struct Metrics {
    ok: metrics::Counter,
    retry: metrics::Counter,
    dead: metrics::Counter,
    skipped: metrics::Counter,
    duration: metrics::Histogram,
    redeliveries: metrics::Counter,
    dead_lettered: metrics::Counter,
    pending: metrics::Gauge,
    ack_pending: metrics::Gauge,
    consumer: String,
}

impl Metrics {
    fn new(service: &str, listener: &str) -> Metrics {
        use crate::metrics as m;
        let c = format!("{service}_{listener}");
        let handled = |r: &'static str| metrics::counter!(m::EVENTS_HANDLED, "consumer" => c.clone(), "result" => r);
        Metrics {
            ok: handled("ok"),
            retry: handled("retry"),
            dead: handled("dead_letter"),
            skipped: handled("skipped"),
            duration: metrics::histogram!(m::EVENTS_DURATION, "consumer" => c.clone()),
            redeliveries: metrics::counter!(m::EVENTS_REDELIVERIES, "consumer" => c.clone()),
            dead_lettered: metrics::counter!(m::EVENTS_DEAD_LETTERED, "consumer" => c.clone()),
            pending: metrics::gauge!(m::EVENTS_PENDING, "consumer" => c.clone()),
            ack_pending: metrics::gauge!(m::EVENTS_ACK_PENDING, "consumer" => c.clone()),
            consumer: c,
        }
    }
}

struct Run {
    consumer_name: String,
    family: String,
    stream: String,
    options: DurableOptions,
    process: Arc<dyn Process>,
    ledger: Ledger,
    dlq: DeadLetters,
    metrics: Metrics,
}

/// Resolves once `stop` says so (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

impl Run {
    /// Fetches batches while not stopped, up to `concurrency` handlers at
    /// once; on stop, hands back what was fetched but not started (nak
    /// without delay, so another instance takes it now) and waits for the
    /// handlers in flight.
    async fn consume(self, consumer: consumer::PullConsumer, mut stop: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let slots = Arc::new(Semaphore::new(this.options.concurrency));
        let lag = tokio::spawn(poll_lag(this.clone(), consumer.clone(), stop.clone()));
        let mut failures = 0u32;
        'fetch: loop {
            let free = slots.available_permits().max(1);
            let batch = tokio::select! {
                biased;
                _ = stopped(&mut stop) => break 'fetch,
                b = consumer.batch().max_messages(free).expires(Duration::from_secs(1)).messages() => b,
            };
            let mut batch = match batch {
                Ok(b) => {
                    failures = 0;
                    b
                }
                Err(e) => {
                    tracing::warn!(consumer = %this.consumer_name, error = %e, "fetch failed; retrying");
                    let wait = crate::error::backoff(
                        Duration::from_millis(100),
                        Duration::from_secs(5),
                        failures,
                    );
                    failures = failures.saturating_add(1);
                    tokio::select! {
                        _ = stopped(&mut stop) => break 'fetch,
                        _ = tokio::time::sleep(wait) => continue 'fetch,
                    }
                }
            };
            loop {
                let next = tokio::select! {
                    biased;
                    _ = stopped(&mut stop) => {
                        while let Some(Some(Ok(m))) = batch.next().now_or_never() {
                            let _ = m.ack_with(AckKind::Nak(None)).await;
                        }
                        break 'fetch;
                    }
                    m = batch.next() => m,
                };
                match next {
                    None => break,
                    Some(Err(e)) => {
                        tracing::debug!(consumer = %this.consumer_name, error = %e, "batch ended");
                        break;
                    }
                    Some(Ok(msg)) => {
                        let Ok(permit) = slots.clone().acquire_owned().await else {
                            break 'fetch;
                        };
                        let this = this.clone();
                        tokio::spawn(async move {
                            this.handle(msg).await;
                            drop(permit);
                        });
                    }
                }
            }
        }
        // Drain: every slot back means every handler finished.
        let all = u32::try_from(this.options.concurrency).unwrap_or(u32::MAX);
        let _ = slots.acquire_many(all).await;
        lag.abort();
    }

    async fn handle(&self, msg: jetstream::Message) {
        let (delivered, stream_seq) = match msg.info() {
            Ok(i) => (u64::try_from(i.delivered).unwrap_or(1), i.stream_sequence),
            Err(e) => {
                tracing::warn!(error = %e, "JetStream message without metadata; skipped");
                return;
            }
        };
        let (m, acker) = msg.split();
        let acker = Arc::new(acker);
        if delivered > 1 {
            self.metrics.redeliveries.increment(1);
        }
        let header = |k: &str| {
            m.headers
                .as_ref()
                .and_then(|h| h.get(k))
                .map(|v| v.as_str().to_owned())
        };
        let event_id = header(EVENT_ID)
            .or_else(|| header(MSG_ID))
            .unwrap_or_else(|| format!("{}:{stream_seq}", self.stream));
        let ev = DurableEvent {
            subject: m.subject.to_string(),
            ctx: Ctx::from_headers(m.headers.as_ref()).timeout(self.options.handler_timeout),
            headers: m.headers.clone(),
            payload: m.payload.clone(),
            event_id: event_id.clone(),
            stream_seq,
            delivered,
            acker: acker.clone(),
        };
        if delivered > self.options.max_deliver {
            // Earlier deliveries ended without an outcome (the instance
            // died, or its nak or ack was lost): stop here all the same.
            let p = Problem::new(
                ErrorCode::InternalError,
                format!("delivered {delivered} times without an outcome"),
            );
            let history = self.record_attempt(stream_seq, delivered, p.clone()).await;
            self.dead_letter(&m, &acker, stream_seq, Some(event_id), p, history)
                .await;
            return;
        }
        let started = Instant::now();
        let outcome = self.process.process(ev, self.options.handler_timeout).await;
        self.metrics
            .duration
            .record(started.elapsed().as_secs_f64());
        match outcome {
            Outcome::Handled => {
                self.metrics.ok.increment(1);
                if let Err(e) = acker.ack().await {
                    tracing::warn!(consumer = %self.metrics.consumer, error = %e, "ack failed; the event will be redelivered and deduplicated");
                }
                if delivered > 1 {
                    let _ = self.ledger.clear_attempts(stream_seq).await;
                }
            }
            Outcome::Duplicate(ledger) => {
                self.metrics.skipped.increment(1);
                metrics::counter!(crate::metrics::EVENTS_LEDGER_HITS,
                    "consumer" => self.metrics.consumer.clone(), "ledger" => ledger)
                .increment(1);
                let _ = acker.ack().await;
            }
            Outcome::Failed(p) => {
                let history = self.record_attempt(stream_seq, delivered, p.clone()).await;
                if !is_retryable(&p) || delivered >= self.options.max_deliver {
                    self.dead_letter(&m, &acker, stream_seq, Some(event_id), p, history)
                        .await;
                } else {
                    self.metrics.retry.increment(1);
                    tracing::debug!(consumer = %self.metrics.consumer, delivered, code = %p.code, detail = %p.detail, "event failed; redelivering later");
                    let delay = nak_delay(
                        self.options.backoff_base,
                        self.options.backoff_max,
                        delivered,
                    );
                    let _ = acker.ack_with(AckKind::Nak(Some(delay))).await;
                }
            }
        }
    }

    async fn record_attempt(&self, seq: u64, delivered: u64, p: Problem) -> Vec<Attempt> {
        let a = Attempt::now(delivered, p);
        match self.ledger.push_attempt(seq, a.clone()).await {
            Ok(all) => all,
            Err(e) => {
                tracing::warn!(error = %e, "cannot record the delivery attempt");
                vec![a]
            }
        }
    }

    async fn dead_letter(
        &self,
        m: &async_nats::Message,
        acker: &jetstream::message::Acker,
        stream_seq: u64,
        event_id: Option<String>,
        error: Problem,
        attempts: Vec<Attempt>,
    ) {
        let d = DeadLetter {
            consumer: self.consumer_name.clone(),
            family: self.family.clone(),
            stream: self.stream.clone(),
            stream_seq,
            subject: m.subject.to_string(),
            headers: DeadLetter::headers_of(m.headers.as_ref()),
            payload: DeadLetter::encode_payload(&m.payload),
            event_id,
            error,
            attempts,
            dead_lettered_at: now_rfc3339(),
        };
        match self.dlq.put(&d).await {
            Ok(seq) => {
                self.metrics.dead.increment(1);
                self.metrics.dead_lettered.increment(1);
                tracing::warn!(consumer = %self.consumer_name, stream_seq, dlq_seq = seq,
                    code = %d.error.code, detail = %d.error.detail, "event dead-lettered");
                let _ = acker.ack_with(AckKind::Term).await;
                let _ = self.ledger.clear_attempts(stream_seq).await;
            }
            Err(e) => {
                // Keep the event: it comes back and is dead-lettered then.
                tracing::error!(consumer = %self.consumer_name, error = %e, "cannot dead-letter; redelivering");
                let _ = acker
                    .ack_with(AckKind::Nak(Some(self.options.backoff_max)))
                    .await;
            }
        }
    }
}

/// Publishes the consumer's lag as gauges every five seconds.
async fn poll_lag(
    run: Arc<Run>,
    mut consumer: consumer::PullConsumer,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if let Ok(info) = consumer.info().await {
            run.metrics.pending.set(info.num_pending as f64);
            run.metrics.ack_pending.set(info.num_ack_pending as f64);
        }
        tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}
