//! The server side: endpoints on queue groups, event listeners, timers,
//! `$SRV` discovery, deadline enforcement with real cancellation, graceful
//! drain.

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use weir_layer::problem::Problem;

use crate::context::Ctx;
use crate::contract::Contract;
use crate::error::{SetupError, deadline_problem};
use crate::headers as h;
use crate::micro::{
    self, EndpointInfo, EndpointStats, InfoResponse, PingResponse, StatsResponse, Verb,
};
use crate::middleware::{self, BoxHandler, EndpointMeta, Layer, Request};
use crate::timer::{TimerDef, TimerMode};
use crate::transport::{Message, Transport, TransportError};

/// The default queue group (as in ADR-32).
pub const DEFAULT_QUEUE_GROUP: &str = "q";

/// How a listener shares events among the instances of its service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Every instance gets every event.
    FanOut,
    /// Each event goes to one instance (a queue group per listener).
    Competing,
}

/// One received event.
#[derive(Debug, Clone)]
pub struct Event {
    pub subject: String,
    pub headers: Option<HeaderMap>,
    pub payload: Bytes,
    pub ctx: Ctx,
}

impl Event {
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Problem> {
        crate::contract::decode_json(&self.payload)
    }
}

type EventHandler =
    Arc<dyn Fn(Event) -> futures::future::BoxFuture<'static, Result<(), Problem>> + Send + Sync>;

struct EndpointDef {
    name: String,
    subject: Option<String>,
    queue_group: Option<Option<String>>,
    metadata: BTreeMap<String, String>,
    handler: BoxHandler,
}

struct ListenerDef {
    name: String,
    pattern: String,
    delivery: Delivery,
    handler: EventHandler,
}

/// Builds a service.
pub struct ServiceBuilder {
    name: String,
    version: String,
    description: String,
    metadata: BTreeMap<String, String>,
    queue_group: Option<String>,
    endpoints: Vec<EndpointDef>,
    listeners: Vec<ListenerDef>,
    timers: Vec<TimerDef>,
    #[cfg(feature = "jetstream")]
    durables: Vec<crate::durable::DurableListener>,
    layers: Vec<Arc<dyn Layer>>,
    default_layers: bool,
    max_handler_time: Duration,
    drain_timeout: Duration,
    contract: Option<Contract>,
}

impl std::fmt::Debug for ServiceBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceBuilder")
            .field("name", &self.name)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// A name is `[A-Za-z0-9_-]+` (ADR-32).
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl ServiceBuilder {
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> ServiceBuilder {
        ServiceBuilder {
            name: name.into(),
            version: version.into(),
            description: String::new(),
            metadata: BTreeMap::new(),
            queue_group: Some(DEFAULT_QUEUE_GROUP.to_owned()),
            endpoints: Vec::new(),
            listeners: Vec::new(),
            timers: Vec::new(),
            #[cfg(feature = "jetstream")]
            durables: Vec::new(),
            layers: Vec::new(),
            default_layers: true,
            max_handler_time: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(30),
            contract: None,
        }
    }

    pub fn description(mut self, d: impl Into<String>) -> Self {
        self.description = d.into();
        self
    }

    pub fn metadata(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.metadata.insert(k.into(), v.into());
        self
    }

    /// The queue group of every endpoint (`None`: every instance gets every
    /// request, which is rarely what you want).
    pub fn queue_group(mut self, q: Option<&str>) -> Self {
        self.queue_group = q.map(str::to_owned);
        self
    }

    /// Adds a middleware layer (the first added is the outermost).
    pub fn layer(mut self, l: impl Layer) -> Self {
        self.layers.push(Arc::new(l));
        self
    }

    /// Without the default trace and metrics layers.
    pub fn without_default_layers(mut self) -> Self {
        self.default_layers = false;
        self
    }

    /// Longest a handler may run when the caller sent no deadline.
    pub fn max_handler_time(mut self, d: Duration) -> Self {
        self.max_handler_time = d;
        self
    }

    /// Longest a drain waits for in-flight work.
    pub fn drain_timeout(mut self, d: Duration) -> Self {
        self.drain_timeout = d;
        self
    }

    /// An endpoint on subject `{service}.{name}`.
    pub fn endpoint(self, name: impl Into<String>, handler: impl middleware::Handler) -> Self {
        self.endpoint_with(name, None, BTreeMap::new(), Arc::new(handler))
    }

    /// An endpoint with an explicit subject (or `None` for `{service}.{name}`)
    /// and metadata.
    pub fn endpoint_with(
        mut self,
        name: impl Into<String>,
        subject: Option<String>,
        metadata: BTreeMap<String, String>,
        handler: BoxHandler,
    ) -> Self {
        self.endpoints.push(EndpointDef {
            name: name.into(),
            subject,
            queue_group: None,
            metadata,
            handler,
        });
        self
    }

    /// An event listener on `pattern` (wildcards allowed).
    pub fn listener<F, Fut>(
        mut self,
        name: impl Into<String>,
        pattern: impl Into<String>,
        delivery: Delivery,
        f: F,
    ) -> Self
    where
        F: Fn(Event) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Problem>> + Send + 'static,
    {
        self.listeners.push(ListenerDef {
            name: name.into(),
            pattern: pattern.into(),
            delivery,
            handler: Arc::new(move |e| Box::pin(f(e))),
        });
        self
    }

    /// A durable listener on a JetStream family (see [`crate::durable`]);
    /// the transport must have JetStream.
    #[cfg(feature = "jetstream")]
    pub fn durable(mut self, l: crate::durable::DurableListener) -> Self {
        self.durables.push(l);
        self
    }

    /// A periodic handler.
    pub fn timer<F, Fut>(
        mut self,
        name: impl Into<String>,
        every: Duration,
        mode: TimerMode,
        f: F,
    ) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.timers.push(TimerDef::new(name.into(), every, mode, f));
        self
    }

    /// Publishes `contract` (schemas and hash) in the INFO metadata.
    pub fn contract(mut self, c: Contract) -> Self {
        self.metadata
            .insert(crate::contract::META_VERSION.into(), c.version.clone());
        self.metadata
            .insert(crate::contract::META_HASH.into(), c.hash());
        if !c.events.is_empty() {
            let events: serde_json::Map<String, serde_json::Value> = c
                .events
                .iter()
                .map(|e| (e.subject.clone(), e.schema.clone()))
                .collect();
            self.metadata.insert(
                crate::contract::META_EVENTS.into(),
                serde_json::Value::Object(events).to_string(),
            );
        }
        self.contract = Some(c);
        self
    }

    /// Subscribes everything and starts serving.
    pub async fn start(self, transport: Arc<dyn Transport>) -> Result<ServiceHandle, SetupError> {
        if !valid_name(&self.name) {
            return Err(SetupError::Config(format!(
                "service name `{}` must match [A-Za-z0-9_-]+",
                self.name
            )));
        }
        let id = new_id();
        let (stop_tx, stop_rx) = watch::channel(false);
        let inner = Arc::new(Inner {
            name: self.name.clone(),
            id: id.clone(),
            version: self.version.clone(),
            description: self.description.clone(),
            metadata: self.metadata.clone(),
            started: time::OffsetDateTime::now_utc(),
            endpoints: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
            draining: AtomicBool::new(false),
            transport: transport.clone(),
        });
        let mut tasks = Vec::new();
        let mut layers: Vec<Arc<dyn Layer>> = Vec::new();
        // Requests, errors and handler time per endpoint are recorded by the
        // dispatch itself (`weir_service_requests_total`, `…_duration_seconds`),
        // deadline expiry included.
        if self.default_layers {
            layers.push(Arc::new(middleware::TraceLayer));
        }
        layers.extend(self.layers.iter().cloned());
        let contract_methods: BTreeMap<String, BTreeMap<String, String>> = self
            .contract
            .as_ref()
            .map(|c| c.endpoint_metadata())
            .unwrap_or_default();
        for ep in self.endpoints {
            let subject = ep
                .subject
                .clone()
                .unwrap_or_else(|| format!("{}.{}", self.name, ep.name));
            let queue = ep
                .queue_group
                .clone()
                .unwrap_or_else(|| self.queue_group.clone());
            let meta = EndpointMeta {
                service: self.name.as_str().into(),
                endpoint: ep.name.as_str().into(),
                subject: subject.as_str().into(),
            };
            let handler = middleware::stack(&layers, &meta, ep.handler.clone());
            let mut metadata = ep.metadata.clone();
            if let Some(m) = contract_methods.get(&ep.name) {
                metadata.extend(m.clone());
            }
            let stats = Arc::new(EpStats::new(
                &self.name,
                EndpointInfo {
                    name: ep.name.clone(),
                    subject: subject.clone(),
                    queue_group: queue.clone(),
                    metadata,
                },
            ));
            inner.endpoints.lock().push(stats.clone());
            let direct = micro::Registry::direct_subject(&id, &ep.name);
            for (subj, q) in [(subject.clone(), queue.clone()), (direct, None)] {
                let sub = subscribe(&*transport, &subj, q.clone()).await?;
                tasks.push(tokio::spawn(serve_endpoint(
                    inner.clone(),
                    stats.clone(),
                    handler.clone(),
                    subj,
                    q,
                    sub,
                    stop_rx.clone(),
                    self.max_handler_time,
                )));
            }
        }
        for l in self.listeners {
            let q = match l.delivery {
                Delivery::Competing => Some(format!("{}.{}", self.name, l.name)),
                Delivery::FanOut => None,
            };
            let sub = subscribe(&*transport, &l.pattern, q.clone()).await?;
            tasks.push(tokio::spawn(serve_listener(
                inner.clone(),
                l.handler,
                l.pattern,
                q,
                sub,
                stop_rx.clone(),
            )));
        }
        #[cfg(feature = "jetstream")]
        if !self.durables.is_empty() {
            let js = transport.jetstream().ok_or_else(|| {
                SetupError::Config(format!(
                    "service `{}` declares durable listeners but its transport has no JetStream",
                    self.name
                ))
            })?;
            for d in self.durables {
                tasks.push(d.start(&self.name, js.clone(), stop_rx.clone()).await?);
            }
        }
        for verb in Verb::ALL {
            for subj in [
                micro::subject(verb, None, None),
                micro::subject(verb, Some(&self.name), None),
                micro::subject(verb, Some(&self.name), Some(&id)),
            ] {
                let sub = subscribe(&*transport, &subj, None).await?;
                tasks.push(tokio::spawn(serve_srv(
                    inner.clone(),
                    verb,
                    sub,
                    stop_rx.clone(),
                )));
            }
        }
        for t in self.timers {
            tasks.push(tokio::spawn(crate::timer::run(
                t,
                self.name.clone(),
                id.clone(),
                transport.leases(),
                stop_rx.clone(),
            )));
        }
        transport
            .flush()
            .await
            .map_err(|e| SetupError::Connect(e.to_string()))?;
        Ok(ServiceHandle {
            inner,
            stop: stop_tx,
            tasks: Mutex::new(tasks),
            drain_timeout: self.drain_timeout,
        })
    }
}

async fn subscribe(
    t: &dyn Transport,
    subject: &str,
    q: Option<String>,
) -> Result<crate::transport::Subscription, SetupError> {
    t.subscribe(subject.to_owned(), q)
        .await
        .map_err(|e| SetupError::Subscribe {
            subject: subject.to_owned(),
            reason: e.to_string(),
        })
}

/// A random 22-character instance id.
pub fn new_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::thread_rng();
    (0..22)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

struct Inner {
    name: String,
    id: String,
    version: String,
    description: String,
    metadata: BTreeMap<String, String>,
    started: time::OffsetDateTime,
    endpoints: Mutex<Vec<Arc<EpStats>>>,
    in_flight: AtomicUsize,
    idle: Notify,
    draining: AtomicBool,
    transport: Arc<dyn Transport>,
}

struct EpStats {
    info: EndpointInfo,
    /// Per-endpoint metric handles (resolved once).
    ok: metrics::Counter,
    err: metrics::Counter,
    duration: metrics::Histogram,
    requests: AtomicU64,
    errors: AtomicU64,
    nanos: AtomicU64,
    last_error: Mutex<String>,
}

impl EpStats {
    fn new(service: &str, info: EndpointInfo) -> EpStats {
        let labels = |r: &'static str| {
            [
                ("service", service.to_owned()),
                ("endpoint", info.name.clone()),
                ("result", r.to_owned()),
            ]
        };
        EpStats {
            ok: metrics::counter!(crate::metrics::REQUESTS, &labels("ok")),
            err: metrics::counter!(crate::metrics::REQUESTS, &labels("error")),
            duration: metrics::histogram!(crate::metrics::DURATION,
                "service" => service.to_owned(), "endpoint" => info.name.clone()),
            info,
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            nanos: AtomicU64::new(0),
            last_error: Mutex::new(String::new()),
        }
    }

    fn snapshot(&self) -> EndpointStats {
        let n = self.requests.load(Ordering::Relaxed);
        let t = self.nanos.load(Ordering::Relaxed);
        EndpointStats {
            name: self.info.name.clone(),
            subject: self.info.subject.clone(),
            queue_group: self.info.queue_group.clone(),
            num_requests: n,
            num_errors: self.errors.load(Ordering::Relaxed),
            last_error: self.last_error.lock().clone(),
            processing_time: t,
            average_processing_time: t.checked_div(n).unwrap_or(0),
            data: None,
        }
    }
}

/// Counts a unit of in-flight work; the drain waits for zero.
struct InFlight(Arc<Inner>);

impl InFlight {
    fn new(inner: &Arc<Inner>) -> InFlight {
        inner.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(inner.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Reads messages until stopped; on stop, unsubscribes and handles what was
/// already buffered. Resubscribes with backoff if the subscription ends on
/// its own (connection closed and reopened).
///
/// `on_message` returns the part of a message's handling that this loop
/// awaits itself (an endpoint's reply to a handler that finished at once);
/// anything longer it spawns.
async fn pump<F, Fut>(
    inner: &Arc<Inner>,
    subject: &str,
    queue: Option<String>,
    mut sub: crate::transport::Subscription,
    mut stop: watch::Receiver<bool>,
    mut on_message: F,
) where
    F: FnMut(Message) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut attempt = 0u32;
    // One stop future for the whole loop (not one per message), polled only
    // when no message is ready: polling it before every message cost more
    // than a hundred instructions each. Under a steady stream of messages
    // the stop is seen by the draining flag instead, which
    // `ServiceHandle::drain` sets before it signals the stop.
    let stopped = stop.changed();
    tokio::pin!(stopped);
    // Once polled, the stop future stays registered with this task's waker,
    // so it is polled again only once the drain has begun (the flag is set
    // before the stop is signalled; a dropped handle aborts the task).
    let mut stop_registered = false;
    loop {
        let next = std::future::poll_fn(|cx| {
            if let std::task::Poll::Ready(m) = sub.poll_next_unpin(cx) {
                return std::task::Poll::Ready(Some(m));
            }
            if !stop_registered || inner.draining.load(Ordering::Acquire) {
                stop_registered = true;
                if stopped.as_mut().poll(cx).is_ready() {
                    return std::task::Poll::Ready(None);
                }
            }
            std::task::Poll::Pending
        })
        .await;
        match next {
            Some(Some(m)) => {
                attempt = 0;
                on_message(m).await;
                if !inner.draining.load(Ordering::Acquire) {
                    continue;
                }
            }
            Some(None) => {
                if inner.draining.load(Ordering::Acquire) {
                    return;
                }
                tracing::warn!(subject, "subscription ended; resubscribing");
                tokio::time::sleep(crate::error::backoff(
                    Duration::from_millis(50),
                    Duration::from_secs(5),
                    attempt,
                ))
                .await;
                attempt += 1;
                match inner
                    .transport
                    .subscribe(subject.to_owned(), queue.clone())
                    .await
                {
                    Ok(s) => sub = s,
                    Err(e) => tracing::warn!(subject, error = %e, "resubscribe failed"),
                }
                continue;
            }
            None => {}
        }
        // Stopped: unsubscribe, handle what was already buffered.
        sub.drain().await;
        while let Some(m) = sub.next().await {
            on_message(m).await;
        }
        return;
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_endpoint(
    inner: Arc<Inner>,
    stats: Arc<EpStats>,
    handler: BoxHandler,
    subject: String,
    queue: Option<String>,
    sub: crate::transport::Subscription,
    stop: watch::Receiver<bool>,
    max_time: Duration,
) {
    let inner2 = inner.clone();
    pump(&inner, &subject, queue, sub, stop, move |msg| {
        // Fast path: a handler that completes at its first poll is answered
        // from this loop, as a raw NATS responder would, without a boxed
        // future or a task per request (and without the in-flight count:
        // a drain joins this loop before it waits for in-flight work).
        // Otherwise `start_request` has spawned a task that owns the rest.
        let done = start_request(&inner2, &stats, &handler, msg, max_time)
            .map(|d| (d, inner2.clone(), stats.clone()));
        async move {
            if let Some(((reply_to, result, start), inner, stats)) = done {
                finish_request(&inner, &stats, reply_to, result, start).await;
            }
        }
    })
    .await;
}

/// A request whose handler finished at its first poll: where to reply,
/// the outcome, when handling began.
type Finished = (
    async_nats::Subject,
    Result<middleware::Reply, Problem>,
    tokio::time::Instant,
);

/// Everything of a request up to the handler's first poll. Returns the
/// outcome if the handler is already done (or never ran: expired deadline);
/// otherwise spawns a task that waits for it (at most until the deadline,
/// then drops it: that is the cancellation) and replies, and returns `None`.
fn start_request(
    inner: &Arc<Inner>,
    stats: &Arc<EpStats>,
    handler: &BoxHandler,
    msg: Message,
    max_time: Duration,
) -> Option<Finished> {
    let Some(reply_to) = msg.reply else {
        tracing::debug!(subject = %msg.subject, "request without reply subject ignored");
        return None;
    };
    // One clock read per request: the local deadline and the handler time.
    let now = tokio::time::Instant::now();
    let ctx = Ctx::from_headers_at(msg.headers.as_ref(), now);
    let deadline = ctx.deadline().unwrap_or(now + max_time);
    if deadline <= now {
        return Some((reply_to, Err(deadline_problem()), now));
    }
    let mut fut = handler.call(Request {
        subject: msg.subject,
        headers: msg.headers,
        payload: msg.payload,
        ctx,
    });
    // A handler that is ready at its first poll needs no timer and no task:
    // the deadline was checked above and it never waited. The noop waker is
    // enough: a pending handler is polled again by its task, with a real one.
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(&mut cx))) {
        Ok(std::task::Poll::Ready(r)) => Some((reply_to, r, now)),
        Ok(std::task::Poll::Pending) => {
            let guard = InFlight::new(inner);
            let (inner, stats) = (inner.clone(), stats.clone());
            tokio::spawn(async move {
                let outcome =
                    tokio::time::timeout_at(deadline, AssertUnwindSafe(fut).catch_unwind()).await;
                let result = match outcome {
                    Ok(Ok(r)) => r,
                    Ok(Err(_panic)) => panicked(&stats),
                    Err(_) => Err(deadline_problem()),
                };
                finish_request(&inner, &stats, reply_to, result, now).await;
                drop(guard);
            });
            None
        }
        Err(_panic) => Some((reply_to, panicked(stats), now)),
    }
}

/// The outcome of a handler that panicked (logged; the caller gets a bare
/// internal error, never the panic's message).
fn panicked(stats: &EpStats) -> Result<middleware::Reply, Problem> {
    tracing::error!(endpoint = %stats.info.subject, "handler panicked");
    Err(Problem::internal())
}

/// Records the request (metrics, `$SRV` stats) and sends its reply.
async fn finish_request(
    inner: &Inner,
    stats: &EpStats,
    reply_to: async_nats::Subject,
    result: Result<middleware::Reply, Problem>,
    start: tokio::time::Instant,
) {
    let elapsed = start.elapsed();
    stats.duration.record(elapsed.as_secs_f64());
    if result.is_ok() {
        &stats.ok
    } else {
        &stats.err
    }
    .increment(1);
    stats.requests.fetch_add(1, Ordering::Relaxed);
    stats.nanos.fetch_add(
        elapsed.as_nanos().min(u128::from(u64::MAX)) as u64,
        Ordering::Relaxed,
    );
    let (headers, payload) = match result {
        Ok(reply) => (reply.headers, reply.payload),
        Err(p) => {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            *stats.last_error.lock() = format!("{}:{}", p.status, p.detail);
            error_message(&p)
        }
    };
    // Core NATS: the size is checked before anything is sent, so the reply
    // subject is used once (not cloned for the too-large case) and
    // async-nats' publish future is awaited here, without a future of ours
    // around it (each would be one more copy of it per request).
    let sent = match inner.transport.as_nats() {
        Some(nats) => {
            let (headers, payload) = match nats.check_size(headers.as_ref(), &payload) {
                Err(TransportError::PayloadTooLarge { size, max }) => too_large(size, max),
                _ => (headers, payload),
            };
            match headers {
                None => nats.client().publish(reply_to, payload).await,
                Some(h) => {
                    nats.client()
                        .publish_with_headers(reply_to, h, payload)
                        .await
                }
            }
            .map_err(crate::transport::nats::conn_err)
        }
        None => match inner
            .transport
            .reply(reply_to.clone(), headers, payload)
            .await
        {
            Err(TransportError::PayloadTooLarge { size, max }) => {
                let (h, b) = too_large(size, max);
                inner.transport.reply(reply_to, h, b).await
            }
            other => other,
        },
    };
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot send reply");
    }
}

/// The error reply sent instead of a reply over `max_payload`.
fn too_large(size: usize, max: usize) -> (Option<HeaderMap>, Bytes) {
    error_message(&Problem::new(
        weir_layer::ErrorCode::PayloadTooLarge,
        format!("the reply of {size} bytes exceeds max_payload {max}"),
    ))
}

/// An error reply: ADR-32 headers plus the problem body (never internals).
pub fn error_message(p: &Problem) -> (Option<HeaderMap>, Bytes) {
    let mut hm = HeaderMap::new();
    hm.insert(
        h::names::NATS_SERVICE_ERROR,
        p.detail.replace(['\r', '\n'], " "),
    );
    hm.insert(h::names::NATS_SERVICE_ERROR_CODE, p.status.to_string());
    hm.insert(h::names::ERROR_CODE, p.code.as_str());
    hm.insert(h::names::CONTENT_TYPE, weir_layer::problem::PROBLEM_JSON);
    for (k, v) in &p.headers {
        if let Ok(v) = v.to_str() {
            hm.insert(k.as_str(), v);
        }
    }
    (Some(hm), Bytes::from(p.to_json()))
}

async fn serve_listener(
    inner: Arc<Inner>,
    handler: EventHandler,
    pattern: String,
    queue: Option<String>,
    sub: crate::transport::Subscription,
    stop: watch::Receiver<bool>,
) {
    let inner2 = inner.clone();
    pump(&inner, &pattern, queue, sub, stop, move |msg| {
        let guard = InFlight::new(&inner2);
        let handler = handler.clone();
        tokio::spawn(async move {
            let ev = Event {
                subject: msg.subject.to_string(),
                ctx: Ctx::from_headers(msg.headers.as_ref()),
                headers: msg.headers,
                payload: msg.payload,
            };
            let subject = ev.subject.clone();
            match AssertUnwindSafe(handler(ev)).catch_unwind().await {
                Ok(Ok(())) => {}
                Ok(Err(p)) => tracing::warn!(subject, code = %p.code, detail = %p.detail, "event handler failed"),
                Err(_) => tracing::error!(subject, "event handler panicked"),
            }
            drop(guard);
        });
        std::future::ready(())
    })
    .await;
}

async fn serve_srv(
    inner: Arc<Inner>,
    verb: Verb,
    mut sub: crate::transport::Subscription,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let msg = tokio::select! {
            _ = stop.changed() => { sub.drain().await; return; }
            m = sub.next() => match m { Some(m) => m, None => return },
        };
        let Some(reply) = msg.reply else { continue };
        let body = match verb {
            Verb::Ping => serde_json::to_vec(&inner.ping()),
            Verb::Info => serde_json::to_vec(&inner.info()),
            Verb::Stats => serde_json::to_vec(&inner.stats()),
        };
        if let Ok(body) = body
            && let Err(e) = inner
                .transport
                .publish(reply.to_string(), None, None, Bytes::from(body))
                .await
        {
            tracing::debug!(error = %e, "cannot answer $SRV");
        }
    }
}

impl Inner {
    fn ping(&self) -> PingResponse {
        PingResponse {
            kind: micro::PING_TYPE.into(),
            name: self.name.clone(),
            id: self.id.clone(),
            version: self.version.clone(),
            metadata: self.metadata.clone(),
        }
    }

    fn info(&self) -> InfoResponse {
        InfoResponse {
            kind: micro::INFO_TYPE.into(),
            name: self.name.clone(),
            id: self.id.clone(),
            version: self.version.clone(),
            metadata: self.metadata.clone(),
            description: self.description.clone(),
            endpoints: self
                .endpoints
                .lock()
                .iter()
                .map(|e| e.info.clone())
                .collect(),
        }
    }

    fn stats(&self) -> StatsResponse {
        let started = self
            .started
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        StatsResponse {
            kind: micro::STATS_TYPE.into(),
            name: self.name.clone(),
            id: self.id.clone(),
            version: self.version.clone(),
            metadata: self.metadata.clone(),
            started,
            endpoints: self.endpoints.lock().iter().map(|e| e.snapshot()).collect(),
        }
    }
}

/// A running service.
pub struct ServiceHandle {
    inner: Arc<Inner>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    drain_timeout: Duration,
}

impl std::fmt::Debug for ServiceHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceHandle")
            .field("name", &self.inner.name)
            .field("id", &self.inner.id)
            .finish()
    }
}

impl ServiceHandle {
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn id(&self) -> &str {
        &self.inner.id
    }

    pub fn info(&self) -> InfoResponse {
        self.inner.info()
    }

    pub fn stats(&self) -> StatsResponse {
        self.inner.stats()
    }

    /// Requests and event handlers running now.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::Acquire)
    }

    /// Subscribed and not draining.
    pub fn is_ready(&self) -> bool {
        !self.inner.draining.load(Ordering::Acquire)
    }

    /// Graceful drain: stop taking work (unsubscribe), finish what is in
    /// flight (at most the drain timeout), stop timers. Returns whether
    /// everything finished in time.
    pub async fn drain(&self) -> bool {
        self.inner.draining.store(true, Ordering::Release);
        let _ = self.stop.send(true);
        let tasks: Vec<_> = std::mem::take(&mut *self.tasks.lock());
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        for t in tasks {
            if tokio::time::timeout_at(deadline, t).await.is_err() {
                return false;
            }
        }
        loop {
            let idle = self.inner.idle.notified();
            if self.inner.in_flight.load(Ordering::Acquire) == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return false;
            }
        }
        let _ = self.inner.transport.flush().await;
        true
    }

    /// Stops at once without draining (a crash, for tests): subscriptions,
    /// timers and leases are abandoned, not released.
    pub fn abort(&self) {
        self.inner.draining.store(true, Ordering::Release);
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
    }
}

impl Drop for ServiceHandle {
    fn drop(&mut self) {
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
    }
}
