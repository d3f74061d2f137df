//! Stream requests straight to their handler, the rest through the router.
//!
//! Nearly every request a Durable Streams server sees is an append or a
//! read under the stream root, and for those axum's router did work whose
//! result was known in advance: it matched the path against the route
//! table, percent-decoded the `{*path}` capture into a vector of
//! parameters in the request's extensions, stored the matched template
//! there too, cloned the route's boxed service and extracted the capture
//! again as a `String`. Callgrind put that at about 2,800 instructions of
//! the ~35,000 an append costs (allocations included).
//!
//! [`Front`] looks at the path first. A path under the stream root goes to
//! [`Direct`], which decodes the name once and calls
//! [`crate::streams::dispatch`] — behind the same middleware stack as every
//! routed request, with the production layer naming the route's template
//! itself ([`weir_layer::stack::ProductionLayer::for_route`]), so metrics
//! label it as before. Everything else goes to the router unchanged.
//! [`applies`] turns the shortcut off for a stream root under which another
//! route lives, where the router's precedence would decide.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::future::RouteFuture;
use futures::future::{BoxFuture, Either};
use tower::Service;

use crate::AppState;
use crate::error::ApiError;

/// Whether stream paths can bypass the router: no other route may start
/// with `{root}/` (then a static route would have won over the capture).
pub(crate) fn applies<'a>(root: &str, other_routes: impl IntoIterator<Item = &'a str>) -> bool {
    let prefix = format!("{root}/");
    !root.is_empty() && !other_routes.into_iter().any(|r| r.starts_with(&prefix))
}

/// Serves `{root}/{*path}` with `direct`, everything else with `routes`.
#[derive(Clone)]
pub(crate) struct Front<D> {
    /// `{root}/`.
    prefix: Arc<str>,
    direct: D,
    routes: Router,
}

impl<D> Front<D> {
    /// `prefix` is `{root}/`, shared with `direct`.
    pub(crate) fn new(prefix: Arc<str>, direct: D, routes: Router) -> Front<D> {
        Front {
            prefix,
            direct,
            routes,
        }
    }

    fn is_stream_path(&self, path: &str) -> bool {
        // The router's capture needs at least one character.
        path.len() > self.prefix.len() && path.starts_with(&*self.prefix)
    }
}

impl<D> Service<Request> for Front<D>
where
    D: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<D::Future, RouteFuture<Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // A `Router` is always ready; the direct stack is asked here.
        self.direct.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        if self.is_stream_path(req.uri().path()) {
            Either::Left(self.direct.call(req))
        } else {
            Either::Right(self.routes.call(req))
        }
    }
}

/// The stream handler as a service: what the route `{root}/{*path}` with
/// `any(streams::dispatch)` did, minus the routing.
#[derive(Clone)]
pub(crate) struct Direct {
    state: AppState,
    /// `{root}/`.
    prefix: Arc<str>,
}

impl Direct {
    /// `prefix` is `{root}/`.
    pub(crate) fn new(state: AppState, prefix: Arc<str>) -> Direct {
        Direct { state, prefix }
    }
}

impl Service<Request> for Direct {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let st = self.state.clone();
        // Decoded like the router's capture: percent-escapes, then UTF-8.
        let name = req
            .uri()
            .path()
            .strip_prefix(&*self.prefix)
            .map(|tail| percent_encoding::percent_decode_str(tail).decode_utf8());
        let name = match name {
            Some(Ok(n)) => Ok(n.into_owned()),
            Some(Err(_)) => Err(ApiError::bad_request(
                "stream_name_invalid",
                "the stream path is not UTF-8 once percent-decoded",
            )),
            // `Front` only sends paths under the prefix.
            None => Err(ApiError::new(
                http::StatusCode::NOT_FOUND,
                "route_not_found",
                "no such route",
            )),
        };
        Box::pin(async move {
            Ok(match name {
                Ok(path) => crate::streams::dispatch(State(st), Path(path), req).await,
                Err(e) => e.into_response(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::applies;

    #[test]
    fn the_shortcut_stays_off_where_another_route_lives_under_the_root() {
        let others = ["/_weir/streams", "/t/{tenant}/_weir/streams", "/healthz"];
        assert!(applies("/v1/stream", others));
        assert!(!applies("", others));
        assert!(!applies("/_weir", others));
        assert!(!applies("/t", others));
    }
}
