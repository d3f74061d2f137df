//! Resource limits and load shedding.
//!
//! A server that queues whatever arrives turns overload into unbounded memory
//! and then into a crash that loses every in-flight request. Weir instead
//! refuses work it cannot hold, early and cheaply, with `503 overloaded` and
//! a `Retry-After` — a client that backs off and retries (every Durable
//! Streams client resumes from its last offset) loses nothing.
//!
//! Three budgets are enforced with semaphores, so the check is one atomic
//! operation and the permit is released by `Drop` on every path (errors,
//! cancelled requests, closed connections):
//! - **requests in flight** (`max_in_flight_requests`): requests between
//!   arrival and their response head;
//! - **request body bytes in flight** (`max_in_flight_body_bytes`): reserved
//!   from `Content-Length` (or the body limit when the length is not
//!   declared) *before* the body is read, which bounds the memory of
//!   buffered uploads independently of how many arrive at once;
//! - **live readers** (`max_live_readers`): parked long-polls plus open SSE
//!   streams, held for the reader's whole life.
//!
//! Per-message and per-tenant limits (`max_message_bytes`,
//! `max_streams_per_tenant`) are checked by the handlers they concern.

use std::sync::Arc;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use futures::future::{BoxFuture, Either};
use http::{Method, StatusCode, header};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::AppState;
use crate::error::ApiError;
use crate::metrics::{LiveMode, LiveReader};

/// Configured limits (`[limits]` in the configuration file).
#[derive(Clone, Debug)]
pub struct Limits {
    /// Requests being handled at once (response head not yet sent).
    pub max_in_flight_requests: usize,
    /// Request body bytes being received or held at once.
    pub max_in_flight_body_bytes: usize,
    /// Parked long-polls plus open SSE streams.
    pub max_live_readers: usize,
    /// Largest single message: a binary or text append body, or one value
    /// of a JSON-mode append.
    pub max_message_bytes: usize,
    /// Streams one tenant may hold (all streams when tenancy is off).
    pub max_streams_per_tenant: Option<usize>,
    /// `Retry-After` seconds on a `503 overloaded`.
    pub retry_after_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_in_flight_requests: 4096,
            max_in_flight_body_bytes: 512 * 1024 * 1024,
            max_live_readers: 20_000,
            max_message_bytes: 64 * 1024 * 1024,
            max_streams_per_tenant: None,
            retry_after_secs: 1,
        }
    }
}

/// Body bytes are reserved in units of 1 KiB: tokio's semaphore takes at
/// most `u32` permits per acquisition.
const BODY_UNIT: usize = 1024;

/// The live budgets.
#[derive(Debug)]
pub struct Shedder {
    requests: Arc<Semaphore>,
    body_units: Arc<Semaphore>,
    body_units_total: usize,
    live: Arc<Semaphore>,
    retry_after_secs: u64,
}

/// A live reader's slot: its share of the live-reader budget and its count
/// in `weir_live_readers{mode}`, both released when dropped.
pub struct LiveSlot {
    _permit: OwnedSemaphorePermit,
    _reader: LiveReader,
}

impl std::fmt::Debug for LiveSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveSlot").finish_non_exhaustive()
    }
}

impl Shedder {
    pub fn new(l: &Limits) -> Shedder {
        let body_units_total = l.max_in_flight_body_bytes.div_ceil(BODY_UNIT).max(1);
        Shedder {
            requests: Arc::new(Semaphore::new(l.max_in_flight_requests.max(1))),
            body_units: Arc::new(Semaphore::new(body_units_total)),
            body_units_total,
            live: Arc::new(Semaphore::new(l.max_live_readers)),
            retry_after_secs: l.retry_after_secs.max(1),
        }
    }

    fn overloaded(&self, what: &'static str) -> ApiError {
        metrics::counter!(weir_layer::metrics::names::SHED, "reason" => what).increment(1);
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            format!("the server is at its {what} limit; retry later"),
        )
        .with_header(header::RETRY_AFTER, self.retry_after_secs)
    }

    /// Takes a live reader slot, or refuses with `503 overloaded`.
    pub(crate) fn live(&self, mode: LiveMode) -> Result<LiveSlot, ApiError> {
        match self.live.clone().try_acquire_owned() {
            Ok(p) => Ok(LiveSlot {
                _permit: p,
                _reader: LiveReader::enter(mode),
            }),
            Err(_) => Err(self.overloaded("live_readers")),
        }
    }

    /// Live readers currently holding a slot.
    pub fn live_in_use(&self, configured: usize) -> usize {
        configured.saturating_sub(self.live.available_permits())
    }
}

/// Sheds requests past the in-flight budgets (see [`Shedder`]); mounted
/// inside the production layer, so refusals carry a request id and count in
/// the request metrics. `/healthz`, `/readyz` and `/metrics` always pass
/// (probes and scrapes must work exactly when the server is busiest); so
/// do live reads for the request count (they hold a live-reader slot
/// instead).
///
/// A hand-written service rather than `axum::middleware::from_fn`: that
/// boxes the inner service and two futures per request, which showed in
/// append profiles. Admitted requests run the inner future in place, with
/// their permits held beside it until the response head is ready.
#[derive(Clone)]
pub struct ShedLayer {
    state: AppState,
}

impl ShedLayer {
    pub fn new(state: AppState) -> ShedLayer {
        ShedLayer { state }
    }
}

impl<S> tower::Layer<S> for ShedLayer {
    type Service = Shed<S>;
    fn layer(&self, inner: S) -> Shed<S> {
        Shed {
            inner,
            state: self.state.clone(),
        }
    }
}

/// See [`ShedLayer`].
#[derive(Clone)]
pub struct Shed<S> {
    inner: S,
    state: AppState,
}

/// Permits an admitted request holds until its response head.
type Permits = (Option<OwnedSemaphorePermit>, Option<OwnedSemaphorePermit>);

pin_project_lite::pin_project! {
    /// The inner service's future with the request's permits beside it.
    pub struct Admitted<F> {
        #[pin]
        inner: F,
        permits: Permits,
    }
}

impl<F: Future> Future for Admitted<F> {
    type Output = F::Output;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        // Released with the response head, as before the fused service.
        *this.permits = (None, None);
        Poll::Ready(out)
    }
}

impl<S> tower::Service<Request> for Shed<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Admitted<S::Future>, BoxFuture<'static, Result<Response, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        match admit(&self.state, &req) {
            Ok(permits) => Either::Left(Admitted {
                inner: self.inner.call(req),
                permits,
            }),
            Err((err, held)) => {
                let st = self.state.clone();
                Either::Right(Box::pin(async move {
                    let resp = refuse(&st, req, err).await;
                    drop(held);
                    Ok(resp)
                }))
            }
        }
    }
}

/// The permits for a request, or the `503` to send (with the request
/// permit, if one was taken, held while the refused body drains).
fn admit(
    st: &AppState,
    req: &Request,
) -> Result<Permits, (ApiError, Option<OwnedSemaphorePermit>)> {
    let path = req.uri().path();
    if matches!(path, "/healthz" | "/readyz" | "/metrics") {
        return Ok((None, None));
    }
    let shedder = &st.shedder;
    // Live reads are bounded by the live-reader budget for their whole
    // life instead: a parked long-poll has no response head yet and would
    // otherwise hold a request slot for up to the long-poll timeout.
    let live = req.uri().query().is_some_and(|q| q.contains("live="));
    let request = if live {
        None
    } else {
        match shedder.requests.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => return Err((shedder.overloaded("requests"), None)),
        }
    };
    let body = if carries_body(req.method()) {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        // Over-limit bodies are refused by the handler with `413`; reserve
        // at most the limit for them so they are not mistaken for overload.
        let bytes = declared
            .unwrap_or(st.config.max_body_bytes)
            .min(st.config.max_body_bytes);
        let units = bytes.div_ceil(BODY_UNIT).min(shedder.body_units_total);
        if units == 0 {
            None
        } else {
            let units = u32::try_from(units).unwrap_or(u32::MAX);
            match shedder.body_units.clone().try_acquire_many_owned(units) {
                Ok(p) => Some(p),
                Err(_) => return Err((shedder.overloaded("body_bytes"), request)),
            }
        }
    } else {
        None
    };
    Ok((request, body))
}

/// Refuses a body holding a message over `max` bytes with `413
/// message_too_large`. JSON bodies that did not parse are left to the
/// append rules (which report them as `json_invalid`).
pub fn check_messages(body: &weir_core::append::Body, max: usize) -> Result<(), ApiError> {
    use weir_core::append::Body;
    let largest = match body {
        Body::Empty | Body::Json(Err(_)) => 0,
        Body::Bytes(b) => b.len(),
        Body::Json(Ok(msgs)) => msgs.iter().map(|m| m.len()).max().unwrap_or(0),
    };
    if largest > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "message_too_large",
            format!("a message of {largest} bytes exceeds the limit of {max} bytes"),
        ));
    }
    Ok(())
}

/// Refuses a create that would take `tenant` (or, without tenancy, the
/// whole store) past `max_streams_per_tenant`. Counting lists at most
/// `max + 1` names, so the check costs O(limit) and only on creates; two
/// racing creates can overshoot by one each (a quota, not an invariant).
pub async fn check_stream_quota(
    st: &AppState,
    tenant: Option<&str>,
    name: &weir_core::StreamName,
) -> Result<(), ApiError> {
    let Some(max) = st.config.limits.max_streams_per_tenant else {
        return Ok(());
    };
    // Re-creating an existing stream is idempotent and adds nothing.
    if st.storage.head(name).await.is_ok() {
        return Ok(());
    }
    let prefix = tenant.map(|t| format!("{t}/")).unwrap_or_default();
    let mut count = 0usize;
    let mut after: Option<String> = None;
    loop {
        let page = st
            .storage
            .list(&prefix, after.as_deref(), 1000.min(max + 1))
            .await?;
        count += page.len();
        if count >= max {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "stream_quota_exceeded",
                format!("the tenant already has the maximum of {max} streams"),
            ));
        }
        match page.last() {
            Some(last) if page.len() == 1000.min(max + 1) => {
                after = Some(last.name.as_str().to_owned())
            }
            _ => return Ok(()),
        }
    }
}

/// Answers a shed request. Its body is read and discarded first (chunk by
/// chunk, never held; at most the body limit, for at most two seconds):
/// a server that answers before the upload ends and closes the socket
/// makes most HTTP/1.1 clients fail with a broken pipe instead of showing
/// the `503` and its `Retry-After`.
async fn refuse(st: &AppState, req: Request, err: ApiError) -> Response {
    use http_body_util::BodyExt;
    if carries_body(req.method()) {
        let limit = st.config.max_body_bytes;
        let mut body = req.into_body();
        let drain = async {
            let mut seen = 0usize;
            while let Some(Ok(frame)) = body.frame().await {
                seen += frame.data_ref().map_or(0, |d| d.len());
                if seen > limit {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), drain).await;
    }
    err.into_response()
}

fn carries_body(m: &Method) -> bool {
    matches!(*m, Method::POST | Method::PUT | Method::PATCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_slots_are_returned_on_drop() {
        let s = Shedder::new(&Limits {
            max_live_readers: 2,
            ..Limits::default()
        });
        let a = s.live(LiveMode::Sse);
        let b = s.live(LiveMode::LongPoll);
        assert!(a.is_ok() && b.is_ok());
        let c = s.live(LiveMode::Sse);
        assert!(c.is_err_and(|e| e.code == "overloaded" && e.status == 503));
        drop(a);
        assert!(s.live(LiveMode::Sse).is_ok());
        assert_eq!(s.live_in_use(2), 1);
    }
}
