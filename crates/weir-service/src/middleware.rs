//! Tower-style middleware: a [`Handler`] is a service from [`Request`] to
//! [`Reply`]; a [`Layer`] wraps one handler into another. Server stacks are
//! built once per endpoint (so layers can cache per-endpoint state such as
//! metric handles) and shared by every request.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::sync::Semaphore;
use tracing::Instrument;
use weir_layer::TokenVerifier;
use weir_layer::problem::{ErrorCode, Problem};
use weir_layer::ratelimit::gcra::Limit;
use weir_layer::ratelimit::local::LocalBackend;

use crate::context::Ctx;
use crate::headers as h;

/// One incoming request.
#[derive(Debug, Clone)]
pub struct Request {
    pub subject: Subject,
    pub headers: Option<HeaderMap>,
    pub payload: Bytes,
    pub ctx: Ctx,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.as_ref()?.get(name).map(|v| v.as_str())
    }
}

/// A successful reply.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    pub headers: Option<HeaderMap>,
    pub payload: Bytes,
}

impl Reply {
    pub fn new(payload: impl Into<Bytes>) -> Reply {
        Reply {
            headers: None,
            payload: payload.into(),
        }
    }
}

/// An endpoint's handler, or a handler wrapped in middleware.
pub trait Handler: Send + Sync + 'static {
    fn call(&self, req: Request) -> BoxFuture<'static, Result<Reply, Problem>>;
}

pub type BoxHandler = Arc<dyn Handler>;

impl<F, Fut> Handler for F
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Reply, Problem>> + Send + 'static,
{
    fn call(&self, req: Request) -> BoxFuture<'static, Result<Reply, Problem>> {
        Box::pin(self(req))
    }
}

/// What a layer knows about the endpoint it wraps.
#[derive(Debug, Clone)]
pub struct EndpointMeta {
    pub service: Arc<str>,
    pub endpoint: Arc<str>,
    pub subject: Arc<str>,
}

/// Wraps a handler (tower's `Layer`, specialised to boxed handlers).
pub trait Layer: Send + Sync + 'static {
    fn layer(&self, meta: &EndpointMeta, inner: BoxHandler) -> BoxHandler;
}

fn reject(meta: &EndpointMeta, reason: &'static str) {
    metrics::counter!(crate::metrics::REJECTIONS,
        "service" => meta.service.to_string(), "endpoint" => meta.endpoint.to_string(), "reason" => reason)
    .increment(1);
}

// --- tracing / correlation ---------------------------------------------------

/// A `tracing` span per request carrying the endpoint, the correlation id
/// and the trace id, so every log line of the handler can be correlated.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceLayer;

impl Layer for TraceLayer {
    fn layer(&self, meta: &EndpointMeta, inner: BoxHandler) -> BoxHandler {
        Arc::new(TraceHandler {
            endpoint: meta.subject.clone(),
            inner,
        })
    }
}

/// The [`TraceLayer`]'s handler. A type of its own rather than a closure:
/// a closure handler's future is boxed again by the blanket [`Handler`]
/// impl, and with tracing off this one hands on the inner future as is
/// (one allocation per request less).
struct TraceHandler {
    endpoint: Arc<str>,
    inner: BoxHandler,
}

impl Handler for TraceHandler {
    fn call(&self, req: Request) -> BoxFuture<'static, Result<Reply, Problem>> {
        if !tracing::enabled!(tracing::Level::INFO) {
            return self.inner.call(req);
        }
        let span = tracing::info_span!(
            "rpc",
            endpoint = %self.endpoint,
            correlation_id = req.ctx.correlation_id().unwrap_or(""),
            trace_id = %req.ctx.trace().map(|t| t.trace_id_hex()).unwrap_or_default(),
        );
        let fut = self.inner.call(req);
        Box::pin(
            async move {
                let r = fut.await;
                if let Err(p) = &r {
                    tracing::info!(code = %p.code, status = p.status, "request failed");
                }
                r
            }
            .instrument(span),
        )
    }
}

// --- timeout ---------------------------------------------------------------

/// Caps handler time at `max` (the caller's deadline applies too, whichever
/// is sooner); the handler's future is dropped when it fires.
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer(pub Duration);

impl Layer for TimeoutLayer {
    fn layer(&self, meta: &EndpointMeta, inner: BoxHandler) -> BoxHandler {
        let max = self.0;
        let meta = meta.clone();
        Arc::new(move |req: Request| {
            let fut = inner.call(req);
            let meta = meta.clone();
            async move {
                match tokio::time::timeout(max, fut).await {
                    Ok(r) => r,
                    Err(_) => {
                        reject(&meta, "timeout");
                        Err(crate::error::deadline_problem())
                    }
                }
            }
        })
    }
}

// --- bulkhead ----------------------------------------------------------------

/// At most `max_concurrent` requests run; up to `max_queue` more wait; the
/// rest are refused at once with `503 overloaded`.
#[derive(Debug, Clone, Copy)]
pub struct BulkheadLayer {
    pub max_concurrent: usize,
    pub max_queue: usize,
}

impl Layer for BulkheadLayer {
    fn layer(&self, meta: &EndpointMeta, inner: BoxHandler) -> BoxHandler {
        let sem = Arc::new(Semaphore::new(self.max_concurrent));
        let waiting = Arc::new(AtomicUsize::new(0));
        let max_queue = self.max_queue;
        let meta = meta.clone();
        Arc::new(move |req: Request| {
            let (sem, waiting, inner, meta) =
                (sem.clone(), waiting.clone(), inner.clone(), meta.clone());
            async move {
                let permit = match sem.clone().try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => {
                        if waiting.fetch_add(1, Ordering::AcqRel) >= max_queue {
                            waiting.fetch_sub(1, Ordering::AcqRel);
                            reject(&meta, "bulkhead");
                            return Err(Problem::new(
                                ErrorCode::Overloaded,
                                "the endpoint is at its concurrency limit",
                            )
                            .header(http::header::RETRY_AFTER, "1"));
                        }
                        let p = sem.acquire_owned().await;
                        waiting.fetch_sub(1, Ordering::AcqRel);
                        p.map_err(|_| Problem::internal())?
                    }
                };
                let r = inner.call(req).await;
                drop(permit);
                r
            }
        })
    }
}

// --- auth --------------------------------------------------------------------

/// Verifies the forwarded bearer token with the production layer's verifier
/// (e.g. `weir_layer::auth::jwt::JwtVerifier`) and puts the principal into
/// the context. `required = false` lets anonymous calls through.
#[derive(Clone)]
pub struct AuthLayer {
    pub verifier: Arc<dyn TokenVerifier>,
    pub required: bool,
}

impl Layer for AuthLayer {
    fn layer(&self, meta: &EndpointMeta, inner: BoxHandler) -> BoxHandler {
        let verifier = self.verifier.clone();
        let required = self.required;
        let meta = meta.clone();
        Arc::new(move |mut req: Request| {
            let (verifier, inner, meta) = (verifier.clone(), inner.clone(), meta.clone());
            async move {
                match req.ctx.bearer_token() {
                    Some(tok) => match verifier.verify(tok).await {
                        Ok(p) => req.ctx = req.ctx.clone().with_principal(p),
                        Err(e) => {
                            reject(&meta, "unauthorized");
                            return Err(e.to_problem());
                        }
                    },
                    None if required => {
                        reject(&meta, "unauthorized");
                        return Err(Problem::unauthorized("credentials are required"));
                    }
                    None => {}
                }
                inner.call(req).await
            }
        })
    }
}

// --- rate limit --------------------------------------------------------------

/// A GCRA limit per caller (the verified principal's subject, else the
/// `Weir-Principal` header, else `anonymous`), on the production layer's
/// bounded in-process store. Put it after [`AuthLayer`].
#[derive(Clone)]
pub struct RateLimitLayer {
    pub limit: Limit,
    pub store: Arc<LocalBackend>,
}

impl RateLimitLayer {
    pub fn per_second(requests: u64) -> RateLimitLayer {
        RateLimitLayer {
            limit: Limit::per_second(requests),
            store: Arc::new(LocalBackend::new(100_000, weir_layer::clock::system())),
        }
    }
}

impl Layer for RateLimitLayer {
    fn layer(&self, meta: &EndpointMeta, inner: BoxHandler) -> BoxHandler {
        let (limit, store, meta) = (self.limit, self.store.clone(), meta.clone());
        Arc::new(move |req: Request| {
            let caller = req
                .ctx
                .principal()
                .map(|p| p.subject.clone())
                .or_else(|| req.header(h::PRINCIPAL).map(str::to_owned))
                .unwrap_or_else(|| "anonymous".to_owned());
            let key = format!("{}:{caller}", meta.service);
            let d = store.check(&key, &limit, 1);
            if !d.allowed {
                reject(&meta, "rate_limited");
                let secs = d.retry_after.unwrap_or_default().as_secs().max(1);
                let p = Problem::new(ErrorCode::RateLimited, "rate limit exceeded")
                    .header(http::header::RETRY_AFTER, secs.to_string());
                return Box::pin(async move { Err(p) }) as BoxFuture<'static, _>;
            }
            inner.call(req)
        })
    }
}

/// Applies `layers` (outermost first) around `handler`.
pub fn stack(layers: &[Arc<dyn Layer>], meta: &EndpointMeta, handler: BoxHandler) -> BoxHandler {
    layers.iter().rev().fold(handler, |h, l| l.layer(meta, h))
}
