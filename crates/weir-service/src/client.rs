//! The client side: calls with deadlines, a client middleware stack (retries
//! for idempotent calls with a budget, circuit breaker, metrics), events.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use futures::future::BoxFuture;
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use weir_layer::problem::{ErrorCode, Problem};

use crate::context::Ctx;
use crate::error::{ServiceError, backoff};
use crate::headers as h;
use crate::transport::{Message, Transport, TransportError};

/// One outgoing call.
#[derive(Debug, Clone)]
pub struct Call {
    /// `{service}.{method}` (or a direct `_WEIR.{id}.{method}` subject).
    pub subject: Arc<str>,
    pub payload: Bytes,
    pub ctx: Ctx,
    /// Only idempotent calls are retried.
    pub idempotent: bool,
    /// Extra headers.
    pub headers: Option<HeaderMap>,
}

/// The client-side service (tower-style): a call in, the reply out.
pub trait CallHandler: Send + Sync + 'static {
    fn call(&self, call: Call) -> BoxFuture<'static, Result<Message, ServiceError>>;
}

pub type BoxCallHandler = Arc<dyn CallHandler>;

/// Wraps a call handler.
pub trait ClientLayer: Send + Sync + 'static {
    fn layer(&self, inner: BoxCallHandler) -> BoxCallHandler;
}

impl<F> CallHandler for F
where
    F: Fn(Call) -> BoxFuture<'static, Result<Message, ServiceError>> + Send + Sync + 'static,
{
    fn call(&self, call: Call) -> BoxFuture<'static, Result<Message, ServiceError>> {
        self(call)
    }
}

/// The innermost handler: headers from the context, `max_payload` check,
/// the request with the remaining deadline as timeout, error mapping.
struct Base {
    transport: Arc<dyn Transport>,
    default_timeout: Duration,
}

impl CallHandler for Base {
    fn call(&self, mut call: Call) -> BoxFuture<'static, Result<Message, ServiceError>> {
        let transport = self.transport.clone();
        let default_timeout = self.default_timeout;
        Box::pin(async move {
            send(
                &*transport,
                default_timeout,
                Outgoing::of(&mut call),
                Instant::now(),
            )
            .await
        })
    }
}

/// A [`Call`]'s parts as the base step uses them, borrowed where it only
/// reads them: [`Client::request`] sends without building a `Call` (no
/// `Arc<str>` for the subject, no context clone per call).
struct Outgoing<'a> {
    subject: &'a str,
    payload: Bytes,
    ctx: &'a Ctx,
    headers: Option<HeaderMap>,
    idempotent: bool,
}

impl<'a> Outgoing<'a> {
    /// A call's parts: the payload and headers taken out (the call is
    /// spent), the rest borrowed.
    fn of(call: &'a mut Call) -> Outgoing<'a> {
        Outgoing {
            subject: &call.subject,
            payload: std::mem::take(&mut call.payload),
            ctx: &call.ctx,
            headers: call.headers.take(),
            idempotent: call.idempotent,
        }
    }
}

/// The base step of a call, with the clock already read at `now` (one
/// clock read for the expiry check, the budget sent on and, on the inline
/// path, the call's latency).
async fn send(
    transport: &dyn Transport,
    default_timeout: Duration,
    call: Outgoing<'_>,
    now: Instant,
) -> Result<Message, ServiceError> {
    let remaining = match call.ctx.deadline() {
        Some(d) if d <= now => return Err(ServiceError::DeadlineExceeded),
        Some(d) => d - now,
        None => default_timeout,
    };
    let mut hm = call.headers.unwrap_or_default();
    call.ctx.write_headers_with(&mut hm, remaining);
    if call.idempotent {
        hm.insert(h::names::IDEMPOTENT, "1");
    }
    let subject = async_nats::Subject::from(call.subject);
    // Core NATS: async-nats' request future awaited right here, built in
    // place (not returned in a `Result` or wrapped in a future of ours: each
    // would be one more copy of over a kilobyte per call, and the trait
    // method boxed it); other transports through the trait.
    let reply = match transport.as_nats() {
        Some(nats) => match nats.request_for(Some(hm), call.payload, remaining) {
            Ok(req) => nats
                .client()
                .send_request(subject, req)
                .await
                .map_err(crate::transport::nats::request_err),
            Err(e) => Err(e),
        },
        None => {
            transport
                .request_to(subject, Some(hm), call.payload, remaining)
                .await
        }
    };
    let reply = reply.map_err(|e| match e {
        TransportError::TimedOut => ServiceError::DeadlineExceeded,
        TransportError::NoResponders => ServiceError::NoResponders(call.subject.to_string()),
        TransportError::PayloadTooLarge { size, max } => {
            ServiceError::PayloadTooLarge { size, max }
        }
        TransportError::Connection(c) => ServiceError::Transport(c),
    })?;
    check_reply(reply)
}

/// Turns an error reply (ADR-32 error headers) into [`ServiceError::Remote`].
pub fn check_reply(m: Message) -> Result<Message, ServiceError> {
    let Some(hm) = m.headers.as_ref() else {
        return Ok(m);
    };
    let Some(code) = hm.get(h::names::NATS_SERVICE_ERROR_CODE) else {
        return Ok(m);
    };
    let status: u16 = code.as_str().parse().unwrap_or(500);
    let problem = serde_json::from_slice::<Problem>(&m.payload).unwrap_or_else(|_| {
        let code = hm
            .get(h::ERROR_CODE)
            .and_then(|c| c.as_str().parse::<ErrorCode>().ok())
            .unwrap_or(ErrorCode::InternalError);
        let detail = hm
            .get(h::NATS_SERVICE_ERROR)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        Problem::with_status(code, status, detail)
    });
    if problem.status == 504 {
        return Err(ServiceError::DeadlineExceeded);
    }
    Err(ServiceError::Remote(problem))
}

/// Retries of idempotent calls: exponential backoff with jitter, within the
/// caller's deadline, limited by a budget (each call deposits `ratio` of a
/// token, each retry withdraws one; at most `max_tokens` saved), so retries
/// cannot multiply load during an outage.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base: Duration,
    pub max_backoff: Duration,
    pub budget_ratio: f64,
    pub budget_max_tokens: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(20),
            max_backoff: Duration::from_secs(1),
            budget_ratio: 0.2,
            budget_max_tokens: 10.0,
        }
    }
}

struct Budget {
    milli_tokens: AtomicU64,
    deposit: u64,
    max: u64,
}

impl Budget {
    fn deposit(&self) {
        let _ = self
            .milli_tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some((t + self.deposit).min(self.max))
            });
    }

    fn withdraw(&self) -> bool {
        self.milli_tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| t.checked_sub(1000))
            .is_ok()
    }
}

/// The retry layer.
#[derive(Debug, Clone, Copy, Default)]
pub struct RetryLayer(pub RetryPolicy);

impl ClientLayer for RetryLayer {
    fn layer(&self, inner: BoxCallHandler) -> BoxCallHandler {
        retry_handler(self.0, Arc::new(Budget::new(&self.0)), inner)
    }
}

impl Budget {
    fn new(p: &RetryPolicy) -> Budget {
        Budget {
            milli_tokens: AtomicU64::new((p.budget_max_tokens * 1000.0) as u64),
            deposit: (p.budget_ratio * 1000.0) as u64,
            max: (p.budget_max_tokens * 1000.0) as u64,
        }
    }
}

/// The retry layer's handler over `budget` (shared with the client's
/// inline path, which deposits into it too).
fn retry_handler(p: RetryPolicy, budget: Arc<Budget>, inner: BoxCallHandler) -> BoxCallHandler {
    Arc::new(
        move |call: Call| -> BoxFuture<'static, Result<Message, ServiceError>> {
            budget.deposit();
            if !call.idempotent {
                return inner.call(call);
            }
            let (inner, budget) = (inner.clone(), budget.clone());
            Box::pin(async move {
                let mut attempt = 0;
                loop {
                    let r = inner.call(call.clone()).await;
                    match r {
                        Err(e) if e.is_transient() && attempt + 1 < p.max_attempts => {
                            let wait = backoff(p.base, p.max_backoff, attempt);
                            let left = call.ctx.remaining();
                            if left.is_some_and(|l| l <= wait) || !budget.withdraw() {
                                return Err(e);
                            }
                            metrics::counter!(crate::metrics::RETRIES, "subject" => call.subject.to_string()).increment(1);
                            tracing::debug!(subject = %call.subject, attempt, error = %e, "retrying idempotent call");
                            tokio::time::sleep(wait).await;
                            attempt += 1;
                        }
                        other => return other,
                    }
                }
            })
        },
    )
}

/// Circuit breaker settings.
#[derive(Debug, Clone, Copy)]
pub struct BreakerConfig {
    /// Consecutive failures that open the circuit.
    pub failure_threshold: u32,
    /// How long the circuit stays open before one probe is let through.
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            open_for: Duration::from_secs(5),
        }
    }
}

/// Circuit state of one subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug)]
struct Circuit {
    state: CircuitState,
    failures: u32,
    opened_at: Instant,
    probing: bool,
}

/// A circuit breaker per subject: closed → open after `failure_threshold`
/// consecutive failures (timeouts, no responders, 5xx) → half-open after
/// `open_for`, where one probe decides: success closes, failure reopens.
#[derive(Clone, Default)]
pub struct BreakerLayer {
    cfg: BreakerConfig,
    circuits: Arc<Mutex<HashMap<Arc<str>, Circuit>>>,
}

impl BreakerLayer {
    pub fn new(cfg: BreakerConfig) -> BreakerLayer {
        BreakerLayer {
            cfg,
            circuits: Arc::default(),
        }
    }

    /// The state of `subject`'s circuit.
    pub fn state(&self, subject: &str) -> CircuitState {
        let now = Instant::now();
        match self.circuits.lock().get(subject) {
            None => CircuitState::Closed,
            Some(c) if c.state == CircuitState::Open && now >= c.opened_at + self.cfg.open_for => {
                CircuitState::HalfOpen
            }
            Some(c) => c.state,
        }
    }
}

impl ClientLayer for BreakerLayer {
    fn layer(&self, inner: BoxCallHandler) -> BoxCallHandler {
        let me = self.clone();
        Arc::new(
            move |call: Call| -> BoxFuture<'static, Result<Message, ServiceError>> {
                let now = Instant::now();
                {
                    let mut map = me.circuits.lock();
                    let c = map.entry(call.subject.clone()).or_insert(Circuit {
                        state: CircuitState::Closed,
                        failures: 0,
                        opened_at: now,
                        probing: false,
                    });
                    match c.state {
                        CircuitState::Closed => {}
                        CircuitState::Open if now >= c.opened_at + me.cfg.open_for => {
                            c.state = CircuitState::HalfOpen;
                            c.probing = true;
                            gauge(&call.subject, 2.0);
                        }
                        CircuitState::HalfOpen if !c.probing => c.probing = true,
                        _ => {
                            let s = call.subject.to_string();
                            return Box::pin(async move { Err(ServiceError::CircuitOpen(s)) });
                        }
                    }
                }
                let (inner, me) = (inner.clone(), me.clone());
                Box::pin(async move {
                    let subject = call.subject.clone();
                    let r = inner.call(call).await;
                    let failed = matches!(&r, Err(e) if e.is_failure());
                    let mut map = me.circuits.lock();
                    if let Some(c) = map.get_mut(&subject) {
                        c.probing = false;
                        if failed {
                            c.failures += 1;
                            if c.state == CircuitState::HalfOpen
                                || c.failures >= me.cfg.failure_threshold
                            {
                                c.state = CircuitState::Open;
                                c.opened_at = Instant::now();
                                gauge(&subject, 1.0);
                            }
                        } else if r.is_ok() || c.state == CircuitState::HalfOpen {
                            if c.state != CircuitState::Closed {
                                gauge(&subject, 0.0);
                            }
                            c.failures = 0;
                            c.state = CircuitState::Closed;
                        }
                    }
                    r
                })
            },
        )
    }
}

fn gauge(subject: &str, v: f64) {
    metrics::gauge!(crate::metrics::BREAKER_STATE, "subject" => subject.to_owned()).set(v);
}

/// Calls and latency per subject.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientMetricsLayer;

type Handles = (metrics::Counter, metrics::Counter, metrics::Histogram);

/// The client metrics layer's handles per subject, and the last subject
/// registered (checked first, without hashing).
#[derive(Default)]
struct HandleCache {
    last: Option<(Arc<str>, Arc<Handles>)>,
    map: HashMap<Arc<str>, Arc<Handles>>,
}

impl HandleCache {
    /// The handles of `subject`. Read-mostly: every call after a subject's
    /// first only takes the shared lock, so concurrent callers do not queue
    /// behind each other. The subject whose handles were registered last is
    /// compared before the map is consulted: a client that calls one
    /// subject (the common case) never hashes it.
    fn handles(cache: &RwLock<HandleCache>, subject: &str) -> Arc<Handles> {
        let cached = {
            let c = cache.read();
            match &c.last {
                Some((s, h)) if **s == *subject => Some(h.clone()),
                _ => c.map.get(subject).cloned(),
            }
        };
        cached.unwrap_or_else(|| {
            let mut c = cache.write();
            let subject: Arc<str> = Arc::from(subject);
            let h = c
                .map
                .entry(subject.clone())
                .or_insert_with(|| {
                    let s = subject.to_string();
                    Arc::new((
                        metrics::counter!(crate::metrics::CLIENT_CALLS, "subject" => s.clone(), "result" => "ok"),
                        metrics::counter!(crate::metrics::CLIENT_CALLS, "subject" => s.clone(), "result" => "error"),
                        metrics::histogram!(crate::metrics::CLIENT_DURATION, "subject" => s),
                    ))
                })
                .clone();
            c.last = Some((subject.clone(), h.clone()));
            h
        })
    }
}

/// Records one call's latency and outcome.
fn record(handles: &Handles, elapsed: Duration, ok: bool) {
    handles.2.record(elapsed.as_secs_f64());
    if ok { &handles.0 } else { &handles.1 }.increment(1);
}

impl ClientLayer for ClientMetricsLayer {
    fn layer(&self, inner: BoxCallHandler) -> BoxCallHandler {
        let cache: Arc<RwLock<HandleCache>> = Arc::default();
        Arc::new(
            move |call: Call| -> BoxFuture<'static, Result<Message, ServiceError>> {
                let handles = HandleCache::handles(&cache, &call.subject);
                let fut = inner.call(call);
                Box::pin(async move {
                    let start = Instant::now();
                    let r = fut.await;
                    record(&handles, start.elapsed(), r.is_ok());
                    r
                })
            },
        )
    }
}

/// The default stack (metrics → retry → base, no added layers) for calls
/// that are not idempotent, run inline by [`Client::call_raw`]: what the
/// three layers do to such a call, in the caller's future, instead of a
/// boxed future per layer (the base's is over a kilobyte: glibc's slow
/// path) and a second clock read.
struct Inline {
    transport: Arc<dyn Transport>,
    default_timeout: Duration,
    budget: Arc<Budget>,
    metrics: Option<RwLock<HandleCache>>,
}

impl Inline {
    /// Before the base step: the subject's metric handles, the retry-budget
    /// deposit every call makes, the clock read.
    fn begin(&self, subject: &str) -> (Option<Arc<Handles>>, Instant) {
        let handles = self
            .metrics
            .as_ref()
            .map(|m| HandleCache::handles(m, subject));
        self.budget.deposit();
        (handles, Instant::now())
    }

    /// After it: latency and outcome.
    fn end(handles: Option<Arc<Handles>>, start: Instant, ok: bool) {
        if let Some(h) = handles {
            record(&h, start.elapsed(), ok);
        }
    }
}

/// A client: calls services and publishes events.
#[derive(Clone)]
pub struct Client {
    transport: Arc<dyn Transport>,
    stack: BoxCallHandler,
    /// The default stack's path for calls that are not idempotent
    /// (`None` with added layers or without retries: then the stack).
    inline: Option<Arc<Inline>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

/// Builds a [`Client`] with its middleware.
pub struct ClientBuilder {
    transport: Arc<dyn Transport>,
    layers: Vec<Arc<dyn ClientLayer>>,
    default_timeout: Duration,
    retry: Option<RetryPolicy>,
    metrics: bool,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder").finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// Timeout of calls whose context has no deadline (default 5 s).
    pub fn default_timeout(mut self, d: Duration) -> Self {
        self.default_timeout = d;
        self
    }

    /// Retry policy of idempotent calls (`None`: never retry).
    pub fn retry(mut self, p: Option<RetryPolicy>) -> Self {
        self.retry = p;
        self
    }

    pub fn without_metrics(mut self) -> Self {
        self.metrics = false;
        self
    }

    /// Adds a layer inside the retry layer (so each attempt passes through
    /// it), e.g. a [`BreakerLayer`]; the first added is the outermost.
    pub fn layer(mut self, l: impl ClientLayer) -> Self {
        self.layers.push(Arc::new(l));
        self
    }

    pub fn build(self) -> Client {
        let mut stack: BoxCallHandler = Arc::new(Base {
            transport: self.transport.clone(),
            default_timeout: self.default_timeout,
        });
        for l in self.layers.iter().rev() {
            stack = l.layer(stack);
        }
        let mut inline = None;
        if let Some(p) = self.retry {
            let budget = Arc::new(Budget::new(&p));
            if self.layers.is_empty() {
                inline = Some(Arc::new(Inline {
                    transport: self.transport.clone(),
                    default_timeout: self.default_timeout,
                    budget: budget.clone(),
                    metrics: self.metrics.then(RwLock::default),
                }));
            }
            stack = retry_handler(p, budget, stack);
        }
        if self.metrics {
            stack = ClientMetricsLayer.layer(stack);
        }
        Client {
            transport: self.transport,
            stack,
            inline,
        }
    }
}

impl Client {
    /// A client with the default stack (metrics, retries of idempotent calls).
    pub fn new(transport: Arc<dyn Transport>) -> Client {
        Client::builder(transport).build()
    }

    pub fn builder(transport: Arc<dyn Transport>) -> ClientBuilder {
        ClientBuilder {
            transport,
            layers: Vec::new(),
            default_timeout: Duration::from_secs(5),
            retry: Some(RetryPolicy::default()),
            metrics: true,
        }
    }

    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.transport
    }

    /// Sends a raw call through the stack.
    pub async fn call_raw(&self, mut call: Call) -> Result<Message, ServiceError> {
        let Some(inline) = self.inline.as_deref().filter(|_| !call.idempotent) else {
            return self.stack.call(call).await;
        };
        // The default stack inline: metrics, a retry-budget deposit (as
        // every call makes), the base step; one clock read for the deadline
        // and the latency.
        let (handles, start) = inline.begin(&call.subject);
        let out = Outgoing::of(&mut call);
        let r = send(&*inline.transport, inline.default_timeout, out, start).await;
        Inline::end(handles, start, r.is_ok());
        r
    }

    /// Calls `subject` with raw bytes.
    pub async fn request(
        &self,
        ctx: &Ctx,
        subject: &str,
        payload: Bytes,
        idempotent: bool,
    ) -> Result<Bytes, ServiceError> {
        // The inline path of `call_raw`, from the borrowed parts.
        if let Some(inline) = self.inline.as_deref().filter(|_| !idempotent) {
            let (handles, start) = inline.begin(subject);
            let out = Outgoing {
                subject,
                payload,
                ctx,
                headers: None,
                idempotent,
            };
            let r = send(&*inline.transport, inline.default_timeout, out, start).await;
            Inline::end(handles, start, r.is_ok());
            return r.map(|m| m.payload);
        }
        self.call_raw(Call {
            subject: subject.into(),
            payload,
            ctx: ctx.clone(),
            idempotent,
            headers: None,
        })
        .await
        .map(|m| m.payload)
    }

    /// Calls `subject` with a JSON request and decodes the JSON reply.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        ctx: &Ctx,
        subject: &str,
        req: &Req,
        idempotent: bool,
    ) -> Result<Resp, ServiceError> {
        let body = serde_json::to_vec(req).map_err(|e| ServiceError::Codec(e.to_string()))?;
        let reply = self
            .request(ctx, subject, Bytes::from(body), idempotent)
            .await?;
        serde_json::from_slice(&reply).map_err(|e| ServiceError::Codec(e.to_string()))
    }

    /// Publishes an event (JSON) with trace and correlation headers.
    pub async fn publish<T: Serialize>(
        &self,
        ctx: &Ctx,
        subject: &str,
        event: &T,
    ) -> Result<(), ServiceError> {
        let body = serde_json::to_vec(event).map_err(|e| ServiceError::Codec(e.to_string()))?;
        let mut hm = HeaderMap::new();
        ctx.write_headers(&mut hm, Duration::from_secs(60));
        self.transport
            .publish(subject.to_owned(), None, Some(hm), Bytes::from(body))
            .await
            .map_err(|e| match e {
                TransportError::PayloadTooLarge { size, max } => {
                    ServiceError::PayloadTooLarge { size, max }
                }
                other => ServiceError::Transport(other.to_string()),
            })
    }
}
