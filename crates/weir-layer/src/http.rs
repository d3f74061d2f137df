//! The HTTP side: tower layers, axum extractors and `IntoResponse` for
//! [`Problem`].
//!
//! Mount order, outermost first (with `Router::layer`, the *last* call is
//! the outermost):
//!
//! ```text
//! RequestIdLayer   id in, X-Request-Id out, span, correlation_id in problem bodies
//!  MetricsLayer    weir_http_* by route template / method / status
//!   AuthLayer      Principal into extensions, or 401/503 problem
//!    RateLimitLayer 429 with Retry-After / RateLimit / RateLimit-Policy
//!     handlers
//! ```
//!
//! [`apply`] does exactly that. Use `Router::layer` (not a layer around the
//! whole `Router` service) so `MatchedPath` — the route template used as the
//! metrics label — is already known; the fallback route gets the label
//! `unmatched`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath};
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use http::request::Parts;
use http::{HeaderValue, Request, StatusCode};
use tower::{Layer, Service};
use tracing::Instrument;

use crate::auth::Authenticator;
use crate::metrics::names;
use crate::principal::{AuthError, Principal};
use crate::problem::{PROBLEM_JSON, Problem};
use crate::ratelimit::{self, RateLimiter, RequestInfo, Verdict};
use crate::request_id::{RequestId, X_REQUEST_ID};

/// Largest foreign problem body the request-id layer rewrites to add
/// `correlation_id` (problem bodies are small; anything bigger is left alone).
const MAX_REWRITE: usize = 64 * 1024;

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, self.to_json()).into_response();
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static(PROBLEM_JSON),
        );
        for (k, v) in &self.headers {
            h.append(k.clone(), v.clone());
        }
        // Lets the request-id layer add `correlation_id` without re-parsing.
        resp.extensions_mut().insert(self);
        resp
    }
}

// ---------------------------------------------------------------- request id

/// Assigns the request id (see [`crate::request_id`]), opens the request's
/// tracing span, echoes `X-Request-Id` on every response and puts
/// `correlation_id` into every `application/problem+json` body.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService { inner }
    }
}

#[derive(Clone, Debug)]
pub struct RequestIdService<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for RequestIdService<S>
where
    S: Service<Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let (id, span) = begin_request(&mut req);
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(
            async move {
                let resp = inner.call(req).await?;
                Ok(stamp(resp, &id).await)
            }
            .instrument(span),
        )
    }
}

/// The route label of a request that matched no route template (metrics
/// and the span's `http.route`).
pub(crate) const UNMATCHED_ROUTE: &str = "unmatched";

/// Takes the request's id (and W3C trace parent) from its headers into its
/// extensions and opens its span. Shared by [`RequestIdService`] and the
/// fused [`crate::stack::ProductionService`].
pub(crate) fn begin_request<B>(req: &mut Request<B>) -> (RequestId, tracing::Span) {
    let (id, traceparent) = RequestId::from_headers(req.headers());
    let route = req.extensions().get::<MatchedPath>().cloned();
    let route = route.as_ref().map_or(UNMATCHED_ROUTE, MatchedPath::as_str);
    let (id, span) = begin_request_with(req, id, traceparent, route);
    req.extensions_mut().insert(id.clone());
    (id, span)
}

/// [`begin_request`] with the id and trace parent already taken from the
/// headers (see [`LayerHeaders`]), except that the id is not put into the
/// request's extensions: the caller does (the fused stack together with
/// the principal, as a [`RequestContext`]). `route` is the template the
/// request is counted under ([`UNMATCHED_ROUTE`] when none).
pub(crate) fn begin_request_with<B>(
    req: &mut Request<B>,
    id: RequestId,
    traceparent: Option<crate::request_id::TraceParent>,
    route: &str,
) -> (RequestId, tracing::Span) {
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        path = %req.uri().path(),
        tenant = tracing::field::Empty,
        principal = tracing::field::Empty,
        // Exported traces only (see `crate::telemetry`).
        otel.kind = tracing::field::Empty,
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    crate::telemetry::begin(&span, traceparent.as_ref(), route);
    if let Some(tp) = traceparent {
        req.extensions_mut().insert(tp);
    }
    (id, span)
}

/// Adds the id to the response head and to a problem body.
pub(crate) async fn stamp(resp: Response, id: &RequestId) -> Response {
    match stamp_now(resp, id) {
        Ok(resp) => resp,
        Err(foreign) => foreign.rewrite(id).await,
    }
}

/// A response whose problem body was built elsewhere and must be read to
/// add `correlation_id` (see [`stamp_now`]).
pub(crate) struct ForeignProblem {
    parts: http::response::Parts,
    body: Body,
}

impl ForeignProblem {
    /// Adds `correlation_id` to the body (small bodies of known length
    /// only; others pass untouched).
    pub(crate) async fn rewrite(self, id: &RequestId) -> Response {
        let ForeignProblem { mut parts, body } = self;
        let Ok(bytes) = axum::body::to_bytes(body, MAX_REWRITE).await else {
            return Response::from_parts(parts, Body::empty());
        };
        match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&bytes) {
            Ok(mut m) if !m.contains_key("correlation_id") => {
                m.insert("correlation_id".into(), id.to_string().into());
                parts.headers.remove(http::header::CONTENT_LENGTH);
                let json = serde_json::to_vec(&m).unwrap_or_else(|_| bytes.to_vec());
                Response::from_parts(parts, Body::from(json))
            }
            _ => Response::from_parts(parts, Body::from(bytes)),
        }
    }
}

/// [`stamp`] up to the one step that waits (reading a foreign problem
/// body): nearly every response is done here, so the fused stack's future
/// finishes without a second future of its own.
// The response is handed back whole either way (moved, not boxed).
#[allow(clippy::result_large_err)]
pub(crate) fn stamp_now(mut resp: Response, id: &RequestId) -> Result<Response, ForeignProblem> {
    // Worked on in place: the response is taken apart only for the rare
    // bodies that change (a `Response` is a few hundred bytes to move).
    if let Some(v) = id.header_value() {
        resp.headers_mut().insert(&X_REQUEST_ID, v);
    }
    let status = resp.status();
    // One line per request at debug level (off by default: a disabled
    // callsite costs one check), inside the request's span like every
    // line it logs.
    tracing::debug!(status = status.as_u16(), "response");
    if crate::telemetry::enabled() {
        // Runs inside the request's span: its exported attributes and the
        // `traceparent` naming it.
        let span = tracing::Span::current();
        span.record("http.response.status_code", i64::from(status.as_u16()));
        if status.is_server_error() {
            // OpenTelemetry semantics: 5xx marks a server span as failed.
            span.record("otel.status_code", "error");
        }
        if let Some(tp) = crate::telemetry::traceparent_of(&span) {
            resp.headers_mut()
                .insert(&crate::request_id::TRACEPARENT, tp);
        }
    }
    if let Some(mut p) = resp.extensions_mut().remove::<Problem>() {
        if p.correlation_id.is_none() {
            p.correlation_id = Some(id.to_string());
        }
        let (mut parts, _) = resp.into_parts();
        parts.headers.remove(http::header::CONTENT_LENGTH);
        return Ok(Response::from_parts(parts, Body::from(p.to_json())));
    }
    // An empty body (every `204`, most appends) has nothing to rewrite:
    // asking the body is cheaper than looking up `Content-Type`.
    if http_body::Body::is_end_stream(resp.body()) {
        return Ok(resp);
    }
    let is_problem = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(PROBLEM_JSON));
    if !is_problem {
        return Ok(resp);
    }
    // A problem body built elsewhere (e.g. weir-server's own errors): only
    // small bodies of known length are rewritten; others pass untouched.
    let small = http_body::Body::size_hint(resp.body())
        .exact()
        .is_some_and(|n| n <= MAX_REWRITE as u64);
    if !small {
        return Ok(resp);
    }
    let (parts, body) = resp.into_parts();
    Err(ForeignProblem { parts, body })
}

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        Ok(request_id_of(&parts.extensions)
            .cloned()
            .unwrap_or_else(RequestId::generate))
    }
}

// ---------------------------------------------------------------- auth

/// Authenticates every request and inserts its [`Principal`]; refusals
/// answer `401 unauthorized` (with `WWW-Authenticate: Bearer`) or `503
/// auth_unavailable`. `OPTIONS` (CORS preflights carry no credentials) and
/// the configured public paths pass as the anonymous principal.
#[derive(Clone, Debug)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
}

impl AuthLayer {
    pub fn new(auth: Arc<Authenticator>) -> AuthLayer {
        AuthLayer { auth }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

impl<S, B> Service<Request<B>> for AuthService<S>
where
    S: Service<Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        Box::pin(async move {
            match authenticate(&auth, &mut req).await {
                Ok(()) => inner.call(req).await,
                Err(refusal) => Ok(refusal),
            }
        })
    }
}

/// Authenticates a request and puts its [`Principal`] into the request's
/// extensions (and its tenant and subject into the request span), or
/// returns the refusal to send: `401`/`503` problem, counted in
/// `weir_auth_failures_total`. `OPTIONS` and public paths pass as the
/// anonymous principal. Shared by [`AuthService`] and the fused
/// [`crate::stack::ProductionService`].
pub(crate) async fn authenticate<B>(
    auth: &Authenticator,
    req: &mut Request<B>,
) -> Result<(), Response> {
    let span = tracing::Span::current();
    if let Some(done) = authenticate_now(auth, req, &span) {
        return done;
    }
    let result = auth.authenticate(req.headers()).await.map(Arc::new);
    admit(req, result, &span)
}

/// [`authenticate`] when the answer needs no waiting (see
/// [`Authenticator::authenticate_now`]); `None`: call `authenticate`.
/// `span` is the request's (given by the caller that holds it: looking up
/// the current span is a registry lookup per request).
pub(crate) fn authenticate_now<B>(
    auth: &Authenticator,
    req: &mut Request<B>,
    span: &tracing::Span,
) -> Option<Result<(), Response>> {
    let now = authentication_now(
        auth,
        req.method(),
        req.uri().path(),
        req.headers(),
        crate::auth::credential_bytes_of(
            req.headers().get(http::header::AUTHORIZATION),
            req.headers().get(&crate::auth::X_API_KEY),
        ),
    )?;
    Some(admit_now(auth, req, now, span).map(|p| {
        req.extensions_mut().insert(p);
    }))
}

/// What authentication answers without waiting, decided on borrowed parts
/// of the request (so a caller that scanned the headers once can decide
/// before it takes the request mutably), applied by [`admit_now`].
pub(crate) enum AuthNow {
    /// The principal, or the refusal.
    Checked(Result<Arc<Principal>, AuthError>),
    /// A self-authenticating request (its handler verifies it).
    SelfAuthenticated,
}

/// The decision of [`authenticate_now`]; `credential` is the request's
/// [`crate::auth::credential`].
pub(crate) fn authentication_now(
    auth: &Authenticator,
    method: &http::Method,
    path: &str,
    headers: &http::HeaderMap,
    credential: Result<Option<&[u8]>, AuthError>,
) -> Option<AuthNow> {
    if method == http::Method::OPTIONS || auth.is_public(path) {
        Some(AuthNow::Checked(Ok(auth.anonymous().clone())))
    } else if auth.is_self_authenticating(method, path, headers) {
        Some(AuthNow::SelfAuthenticated)
    } else {
        auth.authenticate_credential_now(credential)
            .map(AuthNow::Checked)
    }
}

/// Applies an [`AuthNow`] to the request: the principal, for the caller
/// to put into the request's extensions, or the refusal.
// The refusal is the response itself, moved once (as in the async steps).
#[allow(clippy::result_large_err)]
pub(crate) fn admit_now<B>(
    auth: &Authenticator,
    req: &mut Request<B>,
    now: AuthNow,
    span: &tracing::Span,
) -> Result<Arc<Principal>, Response> {
    match now {
        AuthNow::Checked(result) => admitted(req, result, span),
        AuthNow::SelfAuthenticated => {
            // Its handler verifies the request's own credential.
            req.extensions_mut().insert(crate::auth::SelfAuthenticated);
            admitted(req, Ok(auth.anonymous().clone()), span)
        }
    }
}

/// The request headers the production layer reads from every request —
/// the credential, the request id, the trace parent — found in one pass
/// over the header map. Four `HeaderMap::get`s hash a name each (~130
/// instructions apiece under callgrind); one pass compares the handful of
/// names a request carries (a standard name against a custom one differs
/// at the first compare).
#[derive(Clone, Copy, Default)]
pub(crate) struct LayerHeaders<'a> {
    pub(crate) authorization: Option<&'a HeaderValue>,
    pub(crate) api_key: Option<&'a HeaderValue>,
    pub(crate) request_id: Option<&'a HeaderValue>,
    pub(crate) traceparent: Option<&'a HeaderValue>,
}

impl<'a> LayerHeaders<'a> {
    /// Past this many values the map is searched by name instead: a pass
    /// must not cost more than the lookups it replaces.
    const MAX_SCAN: usize = 24;

    /// Each header's first value, as `HeaderMap::get` returns it.
    pub(crate) fn scan(h: &'a http::HeaderMap) -> LayerHeaders<'a> {
        use crate::request_id::TRACEPARENT;
        if h.len() > Self::MAX_SCAN {
            return LayerHeaders {
                authorization: h.get(http::header::AUTHORIZATION),
                api_key: h.get(&crate::auth::X_API_KEY),
                request_id: h.get(&X_REQUEST_ID),
                traceparent: h.get(&TRACEPARENT),
            };
        }
        let mut out = LayerHeaders::default();
        for (name, value) in h {
            // The four names differ in length, so one length compare
            // rules out nearly every other header (`host`,
            // `content-length`, …) before any bytes are compared; a
            // `HeaderName` compare would match its representation
            // (standard or custom) first. Names are stored lowercase.
            let n = name.as_str();
            let slot = match n.len() {
                13 if n == "authorization" => &mut out.authorization,
                9 if n == "x-api-key" => &mut out.api_key,
                12 if n == "x-request-id" => &mut out.request_id,
                11 if n == "traceparent" => &mut out.traceparent,
                _ => continue,
            };
            // Later values of a repeated header come after its first.
            slot.get_or_insert(value);
        }
        out
    }
}

/// The principal into the request, or the refusal for the error.
// The refusal is the response itself, moved once (as in the async steps).
#[allow(clippy::result_large_err)]
fn admit<B>(
    req: &mut Request<B>,
    result: Result<Arc<Principal>, AuthError>,
    span: &tracing::Span,
) -> Result<(), Response> {
    let p = admitted(req, result, span)?;
    req.extensions_mut().insert(p);
    Ok(())
}

/// [`admit`] but for the insert: the principal, or the refusal.
#[allow(clippy::result_large_err)]
fn admitted<B>(
    req: &Request<B>,
    result: Result<Arc<Principal>, AuthError>,
    span: &tracing::Span,
) -> Result<Arc<Principal>, Response> {
    match result {
        Ok(p) => {
            span.record("tenant", p.tenant.as_str());
            span.record("principal", p.subject.as_str());
            Ok(p)
        }
        Err(e) => {
            let method = method_label(req.headers());
            metrics::counter!(names::AUTH_FAILURES, "method" => method, "reason" => e.label())
                .increment(1);
            if matches!(e, AuthError::Unavailable(_)) {
                tracing::warn!(error = %e, "authentication unavailable");
            } else {
                tracing::info!(reason = e.label(), error = %e, "authentication refused");
            }
            Err(e.to_problem().into_response())
        }
    }
}

pub(crate) fn method_label(h: &http::HeaderMap) -> &'static str {
    match crate::auth::credential(h) {
        Ok(Some(c)) if c.starts_with(crate::auth::apikey::PREFIX) => "api_key",
        Ok(Some(_)) => "jwt",
        Ok(None) => "none",
        Err(_) => "malformed",
    }
}

/// What the fused production stack puts into an authenticated request's
/// extensions: its id and principal as **one** entry. Each extension is a
/// boxed map entry (an allocation and a hash insert apiece), and these two
/// were the stack's per-request inserts; read them with
/// [`request_id_of`] and [`principal_of`] (or the `RequestId` and
/// `Principal` extractors), which also find the separate entries the
/// one-concern layers ([`RequestIdLayer`], [`AuthLayer`]) insert.
#[derive(Clone, Debug)]
pub struct RequestContext {
    pub id: RequestId,
    /// Shared with the credential memo.
    pub principal: Arc<Principal>,
}

/// The request's id, as a layer put it into the request's extensions.
pub fn request_id_of(ext: &http::Extensions) -> Option<&RequestId> {
    match ext.get::<RequestContext>() {
        Some(c) => Some(&c.id),
        None => ext.get::<RequestId>(),
    }
}

/// The request's principal as a layer put it into the request's
/// extensions (shared with the credential memo). `None` when no layer
/// authenticated it.
pub fn principal_arc_of(ext: &http::Extensions) -> Option<&Arc<Principal>> {
    match ext.get::<RequestContext>() {
        Some(c) => Some(&c.principal),
        None => ext.get::<Arc<Principal>>(),
    }
}

/// [`principal_arc_of`], borrowed: no copy.
pub fn principal_of(ext: &http::Extensions) -> Option<&Principal> {
    principal_arc_of(ext).map(|p| &**p)
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = Problem;
    /// The principal the [`AuthLayer`] inserted (as an `Arc<Principal>`:
    /// code on the hot path borrows it from the extensions instead). Its
    /// absence is a wiring bug (the layer is not mounted on this route),
    /// answered with 500 rather than silently treating the caller as anyone.
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        principal_of(&parts.extensions).cloned().ok_or_else(|| {
            tracing::error!("no Principal in request extensions: AuthLayer is not mounted");
            Problem::internal()
        })
    }
}

// ---------------------------------------------------------------- rate limit

/// The client address the rate limiter keys anonymous callers by. The
/// server inserts it after applying its trusted-proxy rules; without it the
/// layer uses the TCP peer (`ConnectInfo<SocketAddr>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// Applies the [`RateLimiter`] after authentication.
#[derive(Clone, Debug)]
pub struct RateLimitLayer {
    limiter: Arc<RateLimiter>,
}

impl RateLimitLayer {
    pub fn new(limiter: Arc<RateLimiter>) -> RateLimitLayer {
        RateLimitLayer { limiter }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService {
            inner,
            limiter: self.limiter.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RateLimitService<S> {
    inner: S,
    limiter: Arc<RateLimiter>,
}

impl<S, B> Service<Request<B>> for RateLimitService<S>
where
    S: Service<Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limiter = self.limiter.clone();
        Box::pin(async move {
            match check_rate_limit(&limiter, req.method(), req.uri().path(), req.extensions()).await
            {
                Ok(ds) => {
                    let mut resp = inner.call(req).await?;
                    add_rate_limit_headers(&limiter, &ds, &mut resp);
                    Ok(resp)
                }
                Err(refusal) => Ok(refusal),
            }
        })
    }
}

/// Checks a request against the rate limiter (after authentication, so the
/// principal is known): the applied policies, or the `429`/`503` to send.
/// A disabled limiter allows everything with no policies. Shared by
/// [`RateLimitService`] and the fused [`crate::stack::ProductionService`].
///
/// Takes the request's parts rather than the request: a body type need not
/// be `Sync` for the future to be `Send`.
pub(crate) async fn check_rate_limit(
    limiter: &RateLimiter,
    method: &http::Method,
    path: &str,
    ext: &http::Extensions,
) -> Result<ratelimit::Decisions, Response> {
    if !limiter.config().enabled {
        return Ok(ratelimit::Decisions::new());
    }
    verdict(
        limiter
            .check(request_info(limiter, method, path, ext))
            .await,
    )
}

/// [`check_rate_limit`] when the limiter answers without waiting (it is
/// off or local); `None`: call `check_rate_limit`.
pub(crate) fn check_rate_limit_now(
    limiter: &RateLimiter,
    method: &http::Method,
    path: &str,
    ext: &http::Extensions,
) -> Option<Result<ratelimit::Decisions, Response>> {
    if !limiter.config().enabled {
        return Some(Ok(ratelimit::Decisions::new()));
    }
    limiter
        .check_now(request_info(limiter, method, path, ext))
        .map(verdict)
}

fn request_info<'a>(
    limiter: &RateLimiter,
    method: &'a http::Method,
    path: &'a str,
    ext: &'a http::Extensions,
) -> RequestInfo<'a> {
    let principal = principal_arc_of(ext);
    // The client address costs two extension lookups; an authenticated
    // request is keyed by it only under an `ip` rule.
    let ip = if limiter.keys_by_ip(principal.map(|p| &**p)) {
        ext.get::<ClientIp>()
            .map(|c| c.0)
            .or_else(|| ext.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip()))
    } else {
        None
    };
    RequestInfo {
        method,
        path,
        principal,
        ip,
    }
}

#[allow(clippy::result_large_err)]
fn verdict(v: Verdict) -> Result<ratelimit::Decisions, Response> {
    match v {
        Verdict::Allowed(ds) => Ok(ds),
        Verdict::Limited(ds) => Err(ratelimit::limited_problem(&ds).into_response()),
        Verdict::Unavailable => Err(ratelimit::unavailable_problem().into_response()),
    }
}

const RATELIMIT: http::HeaderName = http::HeaderName::from_static("ratelimit");
const RATELIMIT_POLICY: http::HeaderName = http::HeaderName::from_static("ratelimit-policy");

/// `RateLimit` / `RateLimit-Policy` on an allowed request's response, when
/// `headers_on_success` is set.
pub(crate) fn add_rate_limit_headers(
    limiter: &RateLimiter,
    ds: &[ratelimit::PolicyDecision],
    resp: &mut Response,
) {
    rate_limit_headers(limiter, ds).apply(resp);
}

/// The `RateLimit` / `RateLimit-Policy` values of an allowed request's
/// response, taken when its decisions are made: a response future then
/// carries two header values instead of the decisions themselves.
#[derive(Default)]
pub(crate) struct RateLimitHeaders {
    ratelimit: Option<HeaderValue>,
    policy: Option<HeaderValue>,
}

impl RateLimitHeaders {
    pub(crate) fn apply(self, resp: &mut Response) {
        let h = resp.headers_mut();
        if let Some(v) = self.ratelimit {
            h.insert(RATELIMIT, v);
        }
        if let Some(v) = self.policy {
            h.insert(RATELIMIT_POLICY, v);
        }
    }
}

/// The headers [`add_rate_limit_headers`] adds for these decisions (none
/// unless `headers_on_success` is set).
pub(crate) fn rate_limit_headers(
    limiter: &RateLimiter,
    ds: &[ratelimit::PolicyDecision],
) -> RateLimitHeaders {
    if !limiter.config().headers_on_success {
        return RateLimitHeaders::default();
    }
    let (ratelimit, policy) = limiter.success_headers(ds);
    RateLimitHeaders { ratelimit, policy }
}

// ---------------------------------------------------------------- metrics

/// Records `weir_http_requests_total`, `weir_http_request_duration_seconds`
/// (to the response head: a streamed SSE body is not included, or every
/// live read would count as minutes) and `weir_http_requests_in_flight`.
#[derive(Clone, Copy, Debug, Default)]
pub struct MetricsLayer;

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MetricsService { inner }
    }
}

#[derive(Clone, Debug)]
pub struct MetricsService<S> {
    inner: S,
}

pub(crate) struct InFlight;

impl InFlight {
    pub(crate) fn start() -> InFlight {
        metrics::gauge!(names::HTTP_IN_FLIGHT).increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!(names::HTTP_IN_FLIGHT).decrement(1.0);
    }
}

pub(crate) fn method_name(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::PATCH => "PATCH",
        _ => "other",
    }
}

impl<S, B> Service<Request<B>> for MetricsService<S>
where
    S: Service<Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let route = req
            .extensions()
            .get::<MatchedPath>()
            .map_or_else(|| UNMATCHED_ROUTE.to_owned(), |m| m.as_str().to_owned());
        let method = method_name(req.method());
        Box::pin(async move {
            let start = Instant::now();
            let guard = InFlight::start();
            let resp = inner.call(req).await?;
            drop(guard);
            let status = resp.status().as_u16().to_string();
            metrics::counter!(names::HTTP_REQUESTS, "route" => route.clone(), "method" => method, "status" => status)
                .increment(1);
            metrics::histogram!(names::HTTP_DURATION, "route" => route, "method" => method)
                .record(start.elapsed().as_secs_f64());
            Ok(resp)
        })
    }
}

/// `GET /metrics`: the Prometheus text exposition.
pub async fn metrics_handler() -> Response {
    (
        [(http::header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        crate::metrics::render(),
    )
        .into_response()
}

/// Mounts the whole stack on a router in the documented order. `limiter`
/// `None` (or disabled in config) skips rate limiting.
pub fn apply<S: Clone + Send + Sync + 'static>(
    router: axum::Router<S>,
    auth: Arc<Authenticator>,
    limiter: Option<Arc<RateLimiter>>,
) -> axum::Router<S> {
    router.layer(crate::stack::ProductionLayer::new(auth, limiter))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-pass scan finds what `HeaderMap::get` finds: the first
    /// value of each header, with repeats, other headers in between, and
    /// past the scan limit.
    #[test]
    fn layer_headers_scan_is_get() {
        let mut h = http::HeaderMap::new();
        let check = |h: &http::HeaderMap| {
            let s = LayerHeaders::scan(h);
            assert_eq!(s.authorization, h.get(http::header::AUTHORIZATION));
            assert_eq!(s.api_key, h.get("x-api-key"));
            assert_eq!(s.request_id, h.get("x-request-id"));
            assert_eq!(s.traceparent, h.get("traceparent"));
        };
        check(&h);
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        h.append("x-request-id", HeaderValue::from_static("first"));
        h.insert("producer-id", HeaderValue::from_static("p"));
        h.append("x-request-id", HeaderValue::from_static("second"));
        h.append(
            http::header::AUTHORIZATION,
            HeaderValue::from_static("Bearer a"),
        );
        h.append(
            http::header::AUTHORIZATION,
            HeaderValue::from_static("Bearer b"),
        );
        check(&h);
        h.insert("x-api-key", HeaderValue::from_static("wk_x"));
        h.insert("traceparent", HeaderValue::from_static("00-x"));
        check(&h);
        for i in 0..LayerHeaders::MAX_SCAN {
            h.insert(
                http::HeaderName::try_from(format!("x-filler-{i}")).unwrap(),
                HeaderValue::from_static("v"),
            );
        }
        check(&h);
    }
}
