//! The production stack as **one** tower service.
//!
//! [`crate::http`] has one layer per concern (request id, metrics,
//! authentication, rate limit), which is the clearest way to read and test
//! them. Stacked, though, every layer clones the service below it and boxes
//! its own future on every request — with axum routes underneath, each
//! clone is itself a heap allocation — and callgrind showed that plumbing
//! costing more than the checks themselves. [`ProductionLayer`] runs the
//! same steps, in the same order, with the same functions, inside one
//! future. When authentication and the rate limit can answer without
//! waiting — no credential, or one verified recently, and a local limiter:
//! every request of a steady client — they run in `call` itself and the
//! service below is called there too, so it is not even
//! cloned into the future. Metric handles are cached per
//! (route, method, status) so recording is an atomic add, not a registry
//! lookup with freshly allocated labels; the in-flight gauge's handle is
//! bound once.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::MatchedPath;
use axum::response::Response;
use futures::future::BoxFuture;
use http::Request;
use metrics::{Counter, Gauge, Histogram};
use parking_lot::RwLock;
use tower::{Layer, Service};

use crate::auth::Authenticator;
use crate::auth::credential_bytes_of;
use crate::clock::OneReading;
use crate::http::RequestContext;
use crate::http::{
    AuthNow, LayerHeaders, RateLimitHeaders, add_rate_limit_headers, admit_now, authenticate,
    authentication_now, begin_request_with, check_rate_limit, check_rate_limit_now, method_name,
    rate_limit_headers, stamp_now,
};
use crate::metrics::names;
use crate::ratelimit::RateLimiter;
use crate::request_id::RequestId;
use crate::thread_memo;

/// Request id, metrics, authentication and rate limits (see the module
/// docs); mount it with `Router::layer` so `MatchedPath` is known, or
/// name the route with [`ProductionLayer::for_route`] when a service
/// routes without axum.
#[derive(Clone)]
pub struct ProductionLayer {
    shared: Arc<Shared>,
    route: Option<Arc<str>>,
}

struct Shared {
    auth: Arc<Authenticator>,
    limiter: Option<Arc<RateLimiter>>,
    /// Route template → that route's handles by (method, status). Keyed
    /// by the template itself (looked up as `&str`, hashed with foldhash:
    /// short trusted keys, no need for SipHash) so a request pays no
    /// allocation to find its handles; the few (method, status) pairs a
    /// route sees are scanned linearly.
    handles: RwLock<foldhash::HashMap<Box<str>, Vec<RouteHandles>>>,
    /// `weir_http_requests_in_flight`, bound on first use (after the
    /// recorder is installed) rather than looked up in the registry twice
    /// per request.
    in_flight: OnceLock<Gauge>,
}

/// One (method, status) of a route and its handles.
type RouteHandles = (&'static str, u16, Handles);

#[derive(Clone)]
struct Handles {
    requests: Counter,
    duration: Histogram,
}

/// Distinct (route, method, status) label sets cached at most; past it
/// handles are looked up per request (labels stay bounded anyway: routes
/// are templates).
const MAX_CACHED: usize = 4096;

impl ProductionLayer {
    pub fn new(auth: Arc<Authenticator>, limiter: Option<Arc<RateLimiter>>) -> ProductionLayer {
        ProductionLayer {
            shared: Arc::new(Shared {
                auth,
                limiter,
                handles: RwLock::new(foldhash::HashMap::default()),
                in_flight: OnceLock::new(),
            }),
            route: None,
        }
    }

    /// The same layer (one in-flight gauge, one handle cache) for a
    /// service that only ever serves the route `template`: its requests
    /// are counted under it whether or not axum matched them.
    pub fn for_route(&self, template: &str) -> ProductionLayer {
        ProductionLayer {
            shared: self.shared.clone(),
            route: Some(Arc::from(template)),
        }
    }
}

/// The route a request is counted under: the template axum matched, or
/// the one the layer was built for.
#[derive(Clone)]
enum Route {
    Matched(MatchedPath),
    Fixed(Arc<str>),
}

impl Route {
    fn as_str(&self) -> &str {
        match self {
            Route::Matched(m) => m.as_str(),
            Route::Fixed(t) => t,
        }
    }
}

impl<S> Layer<S> for ProductionLayer {
    type Service = ProductionService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ProductionService {
            inner,
            shared: self.shared.clone(),
            route: self.route.clone(),
        }
    }
}

#[derive(Clone)]
pub struct ProductionService<S> {
    inner: S,
    shared: Arc<Shared>,
    route: Option<Arc<str>>,
}

impl Shared {
    /// Counts one request and its duration (`route` `None`: unmatched).
    fn record(&self, route: Option<&Route>, method: &'static str, status: u16, secs: f64) {
        // The handles this thread used last, when they are this request's
        // (a steady client sends one kind of request): no lock, no hash.
        // A route is its template's shared string, held by the memo, so
        // its address names it (and cannot be reused while held). The
        // handles belong to the process's one recorder, whichever layer
        // asks.
        let addr = route.map_or(0, |r| r.as_str().as_ptr() as usize);
        let hit = thread_memo::read(&LAST_HANDLES, |l| {
            (l.addr == addr && l.status == status && same_method(l.method, method)).then(|| {
                l.handles.requests.increment(1);
                l.handles.duration.record(secs);
            })
        });
        if hit.is_some() {
            return;
        }
        let h = self.lookup(
            route.map_or(crate::http::UNMATCHED_ROUTE, Route::as_str),
            method,
            status,
        );
        h.requests.increment(1);
        h.duration.record(secs);
        thread_memo::update(&LAST_HANDLES, |last| {
            *last = Some(LastHandles {
                addr,
                _route: route.cloned(),
                method,
                status,
                handles: h,
            });
        });
    }

    /// The handles of (route, method, status), from the cache.
    fn lookup(&self, route: &str, method: &'static str, status: u16) -> Handles {
        if let Some(hs) = self.handles.read().get(route)
            && let Some((_, _, h)) = hs
                .iter()
                .find(|(m, s, _)| *s == status && same_method(m, method))
        {
            return h.clone();
        }
        self.handles(route, method, status)
    }

    fn handles(&self, route: &str, method: &'static str, status: u16) -> Handles {
        let h = Handles {
            requests: metrics::counter!(names::HTTP_REQUESTS, "route" => route.to_owned(), "method" => method, "status" => status.to_string()),
            duration: metrics::histogram!(names::HTTP_DURATION, "route" => route.to_owned(), "method" => method),
        };
        let mut map = self.handles.write();
        let cached: usize = map.values().map(Vec::len).sum();
        if cached < MAX_CACHED {
            let hs = map.entry(Box::from(route)).or_default();
            if !hs.iter().any(|(m, s, _)| *s == status && *m == method) {
                hs.push((method, status, h.clone()));
            }
        }
        h
    }

    fn in_flight(&self) -> &Gauge {
        self.in_flight
            .get_or_init(|| metrics::gauge!(names::HTTP_IN_FLIGHT))
    }
}

/// The metric handles a thread recorded into last (see `Shared::record`).
struct LastHandles {
    addr: usize,
    /// Keeps `addr` this route's.
    _route: Option<Route>,
    method: &'static str,
    status: u16,
    handles: Handles,
}

thread_local! {
    static LAST_HANDLES: std::cell::RefCell<Option<LastHandles>> =
        const { std::cell::RefCell::new(None) };
}

/// Method labels are the `&'static str`s of `method_name`: the same
/// label is (nearly always) the same pointer, compared before the bytes.
fn same_method(a: &'static str, b: &'static str) -> bool {
    std::ptr::eq(a, b) || a == b
}

/// Counts a request in `weir_http_requests_in_flight` while it lives: a
/// request dropped mid-way (client gone) still leaves the gauge.
struct InFlight(Arc<Shared>);

impl InFlight {
    fn start(shared: Arc<Shared>) -> InFlight {
        shared.in_flight().increment(1.0);
        InFlight(shared)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight().decrement(1.0);
    }
}

/// What is left to do once a request has its response head: count it,
/// leave the in-flight gauge, stamp the request id.
struct Finish {
    in_flight: InFlight,
    route: Option<Route>,
    method: &'static str,
    start: Instant,
    id: RequestId,
}

impl Finish {
    async fn finish(self, resp: Response) -> Response {
        match self.finish_now(resp) {
            Ok(resp) => resp,
            Err(rest) => rest.await,
        }
    }

    /// [`Finish::finish`] without waiting when it can (every response but
    /// a foreign problem body to rewrite); otherwise the rest of it.
    // The response is handed back whole (moved, not boxed).
    #[allow(clippy::result_large_err)]
    fn finish_now(self, resp: Response) -> Result<Response, BoxFuture<'static, Response>> {
        let secs = self.start.elapsed().as_secs_f64();
        self.in_flight.0.record(
            self.route.as_ref(),
            self.method,
            resp.status().as_u16(),
            secs,
        );
        drop(self.in_flight);
        let id = self.id;
        stamp_now(resp, &id).map_err(|foreign| {
            Box::pin(async move { foreign.rewrite(&id).await }) as BoxFuture<'static, Response>
        })
    }
}

/// How far a request got without waiting.
enum Checked {
    /// Authenticated and within its limits (the rate-limit headers of the
    /// applied policies): call the service below right away.
    Pass(RateLimitHeaders),
    /// Refused: this is the answer.
    Refused(Response),
    /// Authentication needs a lookup (a store, the JWKS): run it all in
    /// the future.
    AuthPending,
    /// Authenticated, but the rate limit needs its shared backend.
    LimitPending,
}

impl<S, B> Service<Request<B>> for ProductionService<S>
where
    S: Service<Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ProductionFuture<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // One wall-clock reading for the checks below (see `OneReading`).
        let reading = OneReading::begin();
        // One pass over the headers finds all the layer reads; the request
        // id and what authentication can answer at once are decided on it
        // (nothing there logs: the span is opened next), then applied.
        let (id, traceparent, auth_now) = {
            let h = LayerHeaders::scan(req.headers());
            let (id, traceparent) = RequestId::from_values(h.request_id, h.traceparent);
            let auth_now = authentication_now(
                &self.shared.auth,
                req.method(),
                req.uri().path(),
                req.headers(),
                credential_bytes_of(h.authorization, h.api_key),
            );
            (id, traceparent, auth_now)
        };
        // Both are an `Arc<str>` inside: cloning one is a count.
        let route = match &self.route {
            Some(t) => Some(Route::Fixed(t.clone())),
            None => req
                .extensions()
                .get::<MatchedPath>()
                .cloned()
                .map(Route::Matched),
        };
        let (id, span) = begin_request_with(
            &mut req,
            id,
            traceparent,
            route
                .as_ref()
                .map_or(crate::http::UNMATCHED_ROUTE, Route::as_str),
        );
        let fin = Finish {
            route,
            method: method_name(req.method()),
            start: Instant::now(),
            in_flight: InFlight::start(self.shared.clone()),
            id,
        };
        let entered = span.enter();
        let state = match check_now(&self.shared, &mut req, &span, auth_now, &fin.id) {
            // The common case (no credential lookup, a local limiter): the
            // service below is called here, so it need not be cloned into
            // the future, and the future is this one, unboxed.
            Checked::Pass(headers) => {
                drop(reading);
                let call = self.inner.call(req);
                drop(entered);
                return ProductionFuture {
                    call: Some(call),
                    state: State::Called(Some((fin, headers))),
                    span,
                };
            }
            // Answered here too (inside the span, as the future would).
            Checked::Refused(resp) => match fin.finish_now(resp) {
                Ok(resp) => State::Ready(Some(resp)),
                Err(rest) => State::Finishing(rest),
            },
            pending => {
                let authenticated = matches!(pending, Checked::LimitPending);
                if !authenticated {
                    // Authenticated later (`run`), which inserts the
                    // principal alone.
                    req.extensions_mut().insert(fin.id.clone());
                }
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                State::Pending(Box::pin(async move {
                    let shared = fin.in_flight.0.clone();
                    let resp = run(&shared, &mut inner, req, authenticated).await?;
                    Ok(fin.finish(resp).await)
                }))
            }
        };
        drop(entered);
        drop(reading);
        ProductionFuture {
            call: None,
            state,
            span,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`ProductionService`]: the request's span is
    /// entered whenever it is polled (as `Instrumented` does). A request
    /// whose checks passed without waiting — nearly every one — polls the
    /// service below in place: no box, no dynamic call; only the rare
    /// paths that wait (a credential or limiter lookup, a foreign problem
    /// body to rewrite) are boxed.
    pub struct ProductionFuture<F, E> {
        #[pin]
        call: Option<F>,
        state: State<E>,
        span: tracing::Span,
    }
}

enum State<E> {
    /// `call` runs; then the rate-limit headers and [`Finish`].
    Called(Option<(Finish, RateLimitHeaders)>),
    /// The answer, already finished.
    Ready(Option<Response>),
    /// Authentication or the rate limit waits: the whole request.
    Pending(BoxFuture<'static, Result<Response, E>>),
    /// [`Finish`] waits (a foreign problem body is being rewritten).
    Finishing(BoxFuture<'static, Response>),
}

impl<F, E> Future for ProductionFuture<F, E>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let _entered = this.span.enter();
        loop {
            match this.state {
                State::Called(done) => {
                    let Some(call) = this.call.as_mut().as_pin_mut() else {
                        panic!("ProductionFuture polled after completion");
                    };
                    let resp = std::task::ready!(call.poll(cx));
                    this.call.set(None);
                    let Some((fin, headers)) = done.take() else {
                        panic!("ProductionFuture polled after completion");
                    };
                    let mut resp = resp?;
                    headers.apply(&mut resp);
                    *this.state = match fin.finish_now(resp) {
                        Ok(resp) => return Poll::Ready(Ok(resp)),
                        Err(rest) => State::Finishing(rest),
                    };
                }
                State::Ready(resp) => match resp.take() {
                    Some(resp) => return Poll::Ready(Ok(resp)),
                    None => panic!("ProductionFuture polled after completion"),
                },
                State::Pending(fut) => return fut.as_mut().poll(cx),
                State::Finishing(fut) => return fut.as_mut().poll(cx).map(Ok),
            }
        }
    }
}

/// Authentication and the rate limit, as far as they go without waiting.
fn check_now<B>(
    shared: &Shared,
    req: &mut Request<B>,
    span: &tracing::Span,
    auth_now: Option<AuthNow>,
    id: &RequestId,
) -> Checked {
    let Some(now) = auth_now else {
        return Checked::AuthPending;
    };
    let principal = match admit_now(&shared.auth, req, now, span) {
        Ok(p) => p,
        Err(refusal) => return Checked::Refused(refusal),
    };
    // The id and the principal in one extension (see `RequestContext`).
    req.extensions_mut().insert(RequestContext {
        id: id.clone(),
        principal,
    });
    let Some(limiter) = shared.limiter.as_deref() else {
        return Checked::Pass(RateLimitHeaders::default());
    };
    match check_rate_limit_now(limiter, req.method(), req.uri().path(), req.extensions()) {
        None => Checked::LimitPending,
        Some(Ok(ds)) => Checked::Pass(rate_limit_headers(limiter, &ds)),
        Some(Err(refusal)) => Checked::Refused(refusal),
    }
}

/// Authentication (unless done), then the rate limit, then the handler —
/// the same steps (the same functions) as [`crate::http::AuthService`] and
/// [`crate::http::RateLimitService`].
async fn run<S, B>(
    shared: &Shared,
    inner: &mut S,
    mut req: Request<B>,
    authenticated: bool,
) -> Result<Response, S::Error>
where
    S: Service<Request<B>, Response = Response>,
{
    if !authenticated && let Err(refusal) = authenticate(&shared.auth, &mut req).await {
        return Ok(refusal);
    }
    let Some(limiter) = shared.limiter.as_deref() else {
        return inner.call(req).await;
    };
    match check_rate_limit(limiter, req.method(), req.uri().path(), req.extensions()).await {
        Ok(ds) => {
            let mut resp = inner.call(req).await?;
            add_rate_limit_headers(limiter, &ds, &mut resp);
            Ok(resp)
        }
        Err(refusal) => Ok(refusal),
    }
}
