//! A router that can be replaced while it serves: what a configuration
//! reload swaps.
//!
//! [`SwapRouter`] is the service a listener serves. Each request loads the
//! current [`Router`] once (one `ArcSwap` load, no lock) and runs on it to
//! the end; a [`SwapRouter::replace`] affects requests that arrive after it,
//! so connections stay open and requests in flight finish on the router they
//! started on. Process-wide state (storage, caches, the subscription engine)
//! is shared by the routers through `Arc`s, not rebuilt.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use axum::Router;
use axum::body::Bytes;
use axum::response::Response;
use axum::routing::future::RouteFuture;
use http::Request;
use tower::Service;

/// A [`Router`] behind an `ArcSwap`; clones share the same slot.
#[derive(Clone)]
pub struct SwapRouter {
    current: Arc<ArcSwap<Router>>,
}

impl std::fmt::Debug for SwapRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwapRouter").finish_non_exhaustive()
    }
}

impl SwapRouter {
    pub fn new(router: Router) -> SwapRouter {
        SwapRouter {
            current: Arc::new(ArcSwap::from_pointee(router)),
        }
    }

    /// Serves `router` to every request that arrives from now on.
    pub fn replace(&self, router: Router) {
        self.current.store(Arc::new(router));
    }

    /// The router serving now.
    pub fn current(&self) -> Router {
        Router::clone(&self.current.load())
    }

    /// An axum app serving through this slot (for `axum::serve`, which
    /// wants a `Router`). The streams listener serves the [`SwapRouter`]
    /// itself: the extra routing step is for the admin listener only.
    pub fn into_router(self) -> Router {
        Router::new().fallback_service(self)
    }
}

impl<B> Service<Request<B>> for SwapRouter
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = RouteFuture<Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // A `Router` is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let mut router = Router::clone(&self.current.load());
        router.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tower::ServiceExt;

    #[tokio::test]
    async fn requests_after_a_replace_see_the_new_router() {
        let swap = SwapRouter::new(Router::new().route("/", get(|| async { "one" })));
        let body = |r: Response| async {
            let b = axum::body::to_bytes(r.into_body(), 1024)
                .await
                .unwrap_or_default();
            String::from_utf8_lossy(&b).into_owned()
        };
        let req = || Request::builder().uri("/").body(axum::body::Body::empty());
        let r = swap.clone().oneshot(req().unwrap_or_default()).await;
        assert_eq!(body(r.unwrap_or_default()).await, "one");
        swap.replace(Router::new().route("/", get(|| async { "two" })));
        let r = swap.clone().oneshot(req().unwrap_or_default()).await;
        assert_eq!(body(r.unwrap_or_default()).await, "two");
        let r = swap.into_router().oneshot(req().unwrap_or_default()).await;
        assert_eq!(body(r.unwrap_or_default()).await, "two");
    }
}
