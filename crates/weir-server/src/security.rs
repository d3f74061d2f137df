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

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use futures::TryFutureExt;
use futures::future::{Either, MapOk, Ready, ready};
use http::{HeaderValue, Method, Request, StatusCode, header};
use tower::{Layer, Service};
use tower_http::compression::{Compression, CompressionBody, Predicate, ResponseFuture};

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
        let add = if needs_cors(&req) {
            add_headers as AddHeaders
        } else {
            add_security_headers as AddHeaders
        };
        Either::Right(self.inner.call(req).map_ok(add))
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

/// Whether a response needs the CORS headers.
///
/// A browser sends `Origin` on every cross-origin request and on every
/// `POST`, `PUT` and `DELETE`; a response to a request without it goes to
/// a client that ignores CORS. `GET` and `HEAD` responses carry them
/// regardless: they can be cached and then served to a browser's request
/// (a `*` origin that never varies needs no `Vary: Origin`). Leaving them
/// off the rest spares every server-to-server append and create some 340
/// bytes of response head that the client would parse and drop.
fn needs_cors<B>(req: &Request<B>) -> bool {
    matches!(*req.method(), Method::GET | Method::HEAD)
        || req.headers().contains_key(header::ORIGIN)
}

/// `X-Content-Type-Options` and `Cross-Origin-Resource-Policy`, on every
/// response (PROTOCOL.md §12.7).
fn add_security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(CORP, HeaderValue::from_static("cross-origin"));
    resp
}

/// The security headers and the CORS headers of a simple request.
fn add_headers(resp: Response) -> Response {
    let mut resp = add_security_headers(resp);
    let h = resp.headers_mut();
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

// ---------------------------------------------------------------- compression

/// Response compression (`tower-http`) for the requests that can use it.
///
/// A request without `Accept-Encoding` can only get an identity body, yet
/// `tower-http`'s layer still wraps every such response body in its
/// `CompressionBody` (which axum then boxes again) and runs the predicate.
/// Those requests — most appends — go straight to the service below; the
/// only visible thing the compression layer would have done to them, a
/// `Vary: Accept-Encoding` on a compressible response, is done here the
/// same way. Requests that name any encoding take the full layer.
#[derive(Clone, Copy, Debug)]
pub struct CompressionLayer {
    enabled: bool,
}

impl CompressionLayer {
    /// Compression on (`server.compression`) or off (everything passes).
    pub fn new(enabled: bool) -> CompressionLayer {
        CompressionLayer { enabled }
    }
}

impl<S> Layer<S> for CompressionLayer {
    type Service = MaybeCompress<S>;
    fn layer(&self, inner: S) -> MaybeCompress<S> {
        // One copy of the service below (the stack is cloned per request).
        let compress = tower_http::compression::CompressionLayer::new()
            .compress_when(Compressible)
            .layer(inner);
        MaybeCompress {
            compress,
            enabled: self.enabled,
        }
    }
}

/// See [`CompressionLayer`].
#[derive(Clone)]
pub struct MaybeCompress<S> {
    /// Used whole for requests that accept an encoding; otherwise only the
    /// service inside it is called.
    compress: Compression<S, Compressible>,
    enabled: bool,
}

type AddVary = fn(Response) -> Response;
type ToAxum = fn(http::Response<CompressionBody<Body>>) -> Response;

impl<S> Service<Request<Body>> for MaybeCompress<S>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<
        Either<S::Future, MapOk<S::Future, AddVary>>,
        MapOk<ResponseFuture<S::Future, Compressible>, ToAxum>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.compress.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if !self.enabled {
            return Either::Left(Either::Left(self.compress.get_mut().call(req)));
        }
        if req.headers().contains_key(header::ACCEPT_ENCODING) {
            return Either::Right(self.compress.call(req).map_ok(to_axum as ToAxum));
        }
        Either::Left(Either::Right(
            self.compress
                .get_mut()
                .call(req)
                .map_ok(vary_if_compressible as AddVary),
        ))
    }
}

fn to_axum(resp: http::Response<CompressionBody<Body>>) -> Response {
    resp.map(Body::new)
}

/// What `tower-http` adds to a response it could have compressed for a
/// client that asked for no encoding: `Vary: Accept-Encoding`.
fn vary_if_compressible(mut resp: Response) -> Response {
    let h = resp.headers();
    let would = !h.contains_key(header::CONTENT_ENCODING)
        && !h.contains_key(header::CONTENT_RANGE)
        && compressible(h)
        && !h.get_all(header::VARY).iter().any(|v| {
            v.as_bytes()
                .windows(b"accept-encoding".len())
                .any(|w| w.eq_ignore_ascii_case(b"accept-encoding"))
        });
    if would {
        resp.headers_mut()
            .append(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    resp
}

/// Whether a response is worth compressing: text-like bodies of 1 KiB or
/// more. Binary streams are left alone (usually incompressible, and
/// catch-up reads of them should run at disk/network speed), and so is SSE
/// (a compressor would buffer events).
#[derive(Clone, Copy, Debug)]
pub struct Compressible;

impl Predicate for Compressible {
    fn should_compress<B: http_body::Body>(&self, response: &http::Response<B>) -> bool {
        compressible(response.headers())
    }
}

fn compressible(h: &http::HeaderMap) -> bool {
    let text = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| text_like(v.as_bytes()));
    let big = h
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_none_or(|n| n >= 1024);
    text && big
}

/// `text/*` except `text/event-stream`, or anything mentioning `json`
/// (ASCII case-insensitively, without allocating).
fn text_like(ct: &[u8]) -> bool {
    let starts = |p: &[u8]| ct.len() >= p.len() && ct[..p.len()].eq_ignore_ascii_case(p);
    let json = ct.windows(4).any(|w| w.eq_ignore_ascii_case(b"json"));
    (starts(b"text/") && !starts(b"text/event-stream")) || json
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_like_matches_the_old_predicate() {
        let old = |ct: &str| {
            let ct = ct.to_ascii_lowercase();
            (ct.starts_with("text/") && !ct.starts_with("text/event-stream")) || ct.contains("json")
        };
        for ct in [
            "text/plain",
            "TEXT/HTML; charset=utf-8",
            "text/event-stream",
            "Text/Event-Stream",
            "application/json",
            "application/problem+JSON",
            "application/octet-stream",
            "tex",
            "",
            "image/png",
        ] {
            assert_eq!(text_like(ct.as_bytes()), old(ct), "{ct}");
        }
    }
}
