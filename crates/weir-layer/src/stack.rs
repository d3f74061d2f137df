//! The production stack as **one** tower service.
//!
//! [`crate::http`] has one layer per concern (request id, metrics,
//! authentication, rate limit), which is the clearest way to read and test
//! them. Stacked, though, every layer clones the service below it and boxes
//! its own future on every request — with axum routes underneath, each
//! clone is itself a heap allocation — and callgrind showed that plumbing
//! costing more than the checks themselves. [`ProductionLayer`] runs the
//! same steps, in the same order, with the same functions, inside one
//! future: one clone and one box per request. Metric handles are cached per
//! (route, method, status) so recording is an atomic add, not a registry
//! lookup with freshly allocated labels.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::MatchedPath;
use axum::response::Response;
use futures::future::BoxFuture;
use http::Request;
use metrics::{Counter, Histogram};
use parking_lot::RwLock;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::auth::Authenticator;
use crate::http::{
    InFlight, add_rate_limit_headers, authenticate, begin_request, check_rate_limit, method_name,
    stamp,
};
use crate::metrics::names;
use crate::ratelimit::RateLimiter;

/// Request id, metrics, authentication and rate limits (see the module
/// docs); mount it with `Router::layer` so `MatchedPath` is known.
#[derive(Clone)]
pub struct ProductionLayer {
    shared: Arc<Shared>,
}

struct Shared {
    auth: Arc<Authenticator>,
    limiter: Option<Arc<RateLimiter>>,
    handles: RwLock<HashMap<LabelSet, Handles>>,
}

/// (route template, method, status).
type LabelSet = (Arc<str>, &'static str, u16);

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
                handles: RwLock::new(HashMap::new()),
            }),
        }
    }
}

impl<S> Layer<S> for ProductionLayer {
    type Service = ProductionService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ProductionService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Clone)]
pub struct ProductionService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl Shared {
    fn handles(&self, route: &Arc<str>, method: &'static str, status: u16) -> Handles {
        if let Some(h) = self.handles.read().get(&(route.clone(), method, status)) {
            return h.clone();
        }
        let h = Handles {
            requests: metrics::counter!(names::HTTP_REQUESTS, "route" => route.to_string(), "method" => method, "status" => status.to_string()),
            duration: metrics::histogram!(names::HTTP_DURATION, "route" => route.to_string(), "method" => method),
        };
        let mut map = self.handles.write();
        if map.len() < MAX_CACHED {
            map.insert((route.clone(), method, status), h.clone());
        }
        h
    }
}

/// Route templates as shared strings, so the handle cache can key on them
/// without allocating per request.
fn route_of<B>(req: &Request<B>) -> Arc<str> {
    thread_local! {
        static ROUTES: std::cell::RefCell<HashMap<String, Arc<str>>> =
            std::cell::RefCell::new(HashMap::new());
    }
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str);
    ROUTES.with(|r| {
        let mut r = r.borrow_mut();
        if let Some(a) = r.get(path) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(path);
        if r.len() < MAX_CACHED {
            r.insert(path.to_owned(), a.clone());
        }
        a
    })
}

impl<S, B> Service<Request<B>> for ProductionService<S>
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
        let route = route_of(&req);
        let method = method_name(req.method());
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        Box::pin(
            async move {
                let start = Instant::now();
                // A guard: a request dropped mid-way (client gone) still
                // leaves the in-flight gauge.
                let guard = InFlight::start();
                let resp = run(&shared, &mut inner, req).await;
                drop(guard);
                let resp = resp?;
                let h = shared.handles(&route, method, resp.status().as_u16());
                h.requests.increment(1);
                h.duration.record(start.elapsed().as_secs_f64());
                Ok(stamp(resp, &id).await)
            }
            .instrument(span),
        )
    }
}

/// Authentication, then the rate limit, then the handler — the same steps
/// (the same functions) as [`crate::http::AuthService`] and
/// [`crate::http::RateLimitService`].
async fn run<S, B>(
    shared: &Shared,
    inner: &mut S,
    mut req: Request<B>,
) -> Result<Response, S::Error>
where
    S: Service<Request<B>, Response = Response>,
{
    if let Err(refusal) = authenticate(&shared.auth, &mut req).await {
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
