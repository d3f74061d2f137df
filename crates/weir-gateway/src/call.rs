//! One RPC on behalf of an HTTP or WebSocket client: the caller's identity
//! and deadline onto the call, the service's answer (or failure) back as
//! JSON or a problem.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use weir_layer::problem::{ErrorCode, Problem};
use weir_layer::{AuthMethod, Principal};
use weir_service::{Call, Client, Ctx, ServiceError};

use crate::metrics as m;

/// Who is calling, as the production layer authenticated them.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    /// The caller's JWT, forwarded so each service's auth middleware
    /// verifies the end user itself (API keys are not forwarded: they are
    /// the gateway's to check, and services only accept tokens).
    pub token: Option<Arc<str>>,
    pub request_id: Option<String>,
}

impl Caller {
    /// From the request's headers and the extensions the layer filled in.
    pub fn from_parts(parts: &http::request::Parts) -> Option<Caller> {
        let principal = weir_layer::http::principal_of(&parts.extensions)?.clone();
        let token = if principal.auth_method == AuthMethod::Jwt {
            parts
                .headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(|t| Arc::<str>::from(t.trim()))
        } else {
            None
        };
        let request_id =
            weir_layer::http::request_id_of(&parts.extensions).map(|r| r.as_str().to_owned());
        Some(Caller {
            principal,
            token,
            request_id,
        })
    }

    fn ctx(&self, timeout: Duration) -> Ctx {
        let mut ctx = Ctx::with_timeout(timeout).with_principal(self.principal.clone());
        if let Some(t) = &self.token {
            ctx = ctx.token(t.clone());
        }
        if let Some(id) = &self.request_id {
            ctx = ctx.correlation(id.as_str());
        }
        ctx
    }
}

/// The `service` label of calls made by raw-subject routes.
pub const SUBJECT_LABEL: &str = "subject";

/// Where a call goes and how it is labelled.
#[derive(Debug, Clone)]
pub struct Target {
    pub subject: String,
    /// Metric labels (the service and endpoint names, or `subject` and the
    /// route template for raw-subject routes).
    pub service: String,
    pub endpoint: String,
    pub idempotent: bool,
}

/// Calls `target` with `body` within `timeout`.
pub async fn invoke(
    client: &Client,
    caller: &Caller,
    target: &Target,
    body: Bytes,
    timeout: Duration,
) -> Result<Bytes, Problem> {
    let start = Instant::now();
    let result = client
        .call_raw(Call {
            subject: target.subject.as_str().into(),
            payload: body,
            ctx: caller.ctx(timeout),
            idempotent: target.idempotent,
            headers: None,
        })
        .await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(ServiceError::Remote(_)) => "error",
        Err(ServiceError::DeadlineExceeded) => "timeout",
        Err(ServiceError::NoResponders(_) | ServiceError::CircuitOpen(_)) => "no_responders",
        Err(_) => "failed",
    };
    metrics::counter!(m::CALLS, "service" => target.service.clone(), "endpoint" => target.endpoint.clone(), "outcome" => outcome).increment(1);
    metrics::histogram!(m::CALL_DURATION, "service" => target.service.clone(), "endpoint" => target.endpoint.clone())
        .record(start.elapsed().as_secs_f64());
    result
        .map(|msg| msg.payload)
        .map_err(|e| problem_of(&e, target))
}

/// The problem an HTTP or WebSocket client sees for a failed call: the
/// service's own problem passes through unchanged (same code, same status);
/// the gateway's failures get stable codes.
pub fn problem_of(e: &ServiceError, target: &Target) -> Problem {
    match e {
        ServiceError::Remote(p) => {
            let mut p = p.clone();
            // The gateway's request id is the client's handle on the logs.
            p.correlation_id = None;
            p
        }
        ServiceError::DeadlineExceeded => weir_service::error::deadline_problem(),
        ServiceError::NoResponders(_) | ServiceError::CircuitOpen(_) | ServiceError::Shutdown => {
            let detail = if target.service == SUBJECT_LABEL {
                "nothing answers on this route's subject".to_owned()
            } else {
                format!("no instance of `{}` is available", target.service)
            };
            Problem::new(ErrorCode::ServiceUnavailable, detail)
                .header(http::header::RETRY_AFTER, "1")
        }
        ServiceError::PayloadTooLarge { .. } => {
            Problem::new(ErrorCode::PayloadTooLarge, e.to_string())
        }
        ServiceError::Transport(_) => {
            tracing::warn!(error = %e, subject = %target.subject, "gateway call failed");
            Problem::new(
                ErrorCode::ServiceUnavailable,
                "the message bus is unavailable",
            )
            .header(http::header::RETRY_AFTER, "1")
        }
        ServiceError::Codec(_) | ServiceError::Incompatible(_) => {
            tracing::error!(error = %e, subject = %target.subject, "gateway call failed");
            Problem::internal()
        }
    }
}

/// The deadline of a call: the caller's `Request-Timeout` (milliseconds)
/// capped at `max`, else `default`.
pub fn timeout_from(
    headers: &http::HeaderMap,
    default: Duration,
    max: Duration,
) -> Result<Duration, Problem> {
    let Some(v) = headers.get(crate::REQUEST_TIMEOUT) else {
        return Ok(default);
    };
    let ms = v
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .ok_or_else(|| {
            Problem::new(
                ErrorCode::HeaderInvalid,
                "Request-Timeout must be a positive number of milliseconds",
            )
            .extension("header", crate::REQUEST_TIMEOUT)
        })?;
    Ok(Duration::from_millis(ms).min(max))
}
