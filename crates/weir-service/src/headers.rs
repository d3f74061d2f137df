//! Header names Weir puts on NATS messages (documented in `docs/services.md`).

/// The caller's remaining time budget in milliseconds when the message was
/// sent. Each hop turns it into a local deadline (`now + budget`), so clock
/// skew between hosts never matters.
pub const DEADLINE_MS: &str = "Weir-Deadline-Ms";
/// W3C trace context (`00-{trace-id}-{parent-id}-{flags}`).
pub const TRACEPARENT: &str = "traceparent";
/// Correlation id: the same for every hop of one logical request.
pub const CORRELATION_ID: &str = "Weir-Correlation-Id";
/// `Bearer <jwt>`: the end user's token, forwarded hop to hop and verified by
/// each service's auth middleware.
pub const AUTHORIZATION: &str = "Authorization";
/// The caller's tenant and principal subject (informational; the token is
/// what authenticates).
pub const TENANT: &str = "Weir-Tenant";
pub const PRINCIPAL: &str = "Weir-Principal";
/// Set to `1` on calls the caller marks idempotent.
pub const IDEMPOTENT: &str = "Weir-Idempotent";
/// The problem code (`ErrorCode` wire form) of an error reply.
pub const ERROR_CODE: &str = "Weir-Error-Code";
/// ADR-32 error headers: human description and numeric code.
pub const NATS_SERVICE_ERROR: &str = "Nats-Service-Error";
pub const NATS_SERVICE_ERROR_CODE: &str = "Nats-Service-Error-Code";

/// Pre-built header names (no allocation per lookup or insert).
pub(crate) mod names {
    use async_nats::header::HeaderName;

    pub const DEADLINE_MS: HeaderName = HeaderName::from_static(super::DEADLINE_MS);
    pub const TRACEPARENT: HeaderName = HeaderName::from_static(super::TRACEPARENT);
    pub const CORRELATION_ID: HeaderName = HeaderName::from_static(super::CORRELATION_ID);
    pub const AUTHORIZATION: HeaderName = HeaderName::from_static(super::AUTHORIZATION);
    pub const TENANT: HeaderName = HeaderName::from_static(super::TENANT);
    pub const PRINCIPAL: HeaderName = HeaderName::from_static(super::PRINCIPAL);
    pub const IDEMPOTENT: HeaderName = HeaderName::from_static(super::IDEMPOTENT);
    pub const NATS_SERVICE_ERROR_CODE: HeaderName =
        HeaderName::from_static(super::NATS_SERVICE_ERROR_CODE);
    pub const NATS_SERVICE_ERROR: HeaderName = HeaderName::from_static(super::NATS_SERVICE_ERROR);
    pub const ERROR_CODE: HeaderName = HeaderName::from_static(super::ERROR_CODE);
    pub const CONTENT_TYPE: HeaderName = HeaderName::from_static("Content-Type");
}
