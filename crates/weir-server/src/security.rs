//! Headers every response carries (PROTOCOL.md §12.7) and CORS.
//!
//! Applied as the outermost layer so error responses, 404s and preflights
//! get them too.
//!
//! A hand-written tower service rather than `axum::middleware::from_fn`:
//! `from_fn` boxes the service below it and its own future on every
//! request, and on the append path that plumbing cost more than setting
//! four static headers. This one calls the inner service directly and maps
//! its future with a plain function pointer — no allocation.

use std::convert::Infallible;
use std::task::{Context, Poll};

use axum::response::{IntoResponse, Response};
use futures::TryFutureExt;
use futures::future::{Either, MapOk, Ready, ready};
use http::{HeaderValue, Method, Request, StatusCode, header};
use tower::{Layer, Service};

use crate::headers::{ALLOWED, EXPOSED};

/// Answers CORS preflights and adds the security and CORS headers to every
/// response.
#[derive(Clone, Copy, Debug, Default)]
pub struct SecurityHeadersLayer;

impl<S> Layer<S> for SecurityHeadersLayer {
    type Service = SecurityHeaders<S>;
    fn layer(&self, inner: S) -> Self::Service {
        SecurityHeaders { inner }
    }
}

/// See [`SecurityHeadersLayer`].
#[derive(Clone, Debug)]
pub struct SecurityHeaders<S> {
    inner: S,
}

const CORP: http::HeaderName = http::HeaderName::from_static("cross-origin-resource-policy");

type AddHeaders = fn(Response) -> Response;

impl<S, B> Service<Request<B>> for SecurityHeaders<S>
where
    S: Service<Request<B>, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response, Infallible>>, MapOk<S::Future, AddHeaders>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if req.method() == Method::OPTIONS {
            return Either::Left(ready(Ok(add_headers(preflight(req.headers())))));
        }
        Either::Right(self.inner.call(req).map_ok(add_headers as AddHeaders))
    }
}

/// The answer to a CORS preflight: every method, the headers asked for.
fn preflight(req: &http::HeaderMap) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, PUT, POST, DELETE, OPTIONS"),
    );
    let allow = req
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned()
        .unwrap_or(HeaderValue::from_static(ALLOWED));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allow);
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    r
}

fn add_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(CORP, HeaderValue::from_static("cross-origin"));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSED),
    );
    resp
}
