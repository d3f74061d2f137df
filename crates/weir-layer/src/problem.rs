//! RFC 9457 problem details with Weir's stable error codes.
//!
//! Clients match on [`ErrorCode`] (serialized as the `code` member), never on
//! `detail`, which is prose for humans and may change. Every code is listed
//! with its status in `docs/errors.md`; adding a variant here means adding a
//! row there.
//!
//! This module depends only on serde and `http` so that the NATS service
//! framework can carry the same bodies without pulling in axum; the axum
//! `IntoResponse` impl lives in [`crate::http`].

use std::fmt;
use std::str::FromStr;

use http::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The media type of problem bodies.
pub const PROBLEM_JSON: &str = "application/problem+json";

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $variant:ident = ($code:literal, $status:literal) ),+ $(,)?) => {
        /// A stable, machine-readable error code (the `code` member of a
        /// problem body). The string form is snake_case and never changes
        /// once released.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant, )+
        }

        impl ErrorCode {
            /// Every code, in declaration order (for docs and tests).
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),+];

            /// The snake_case wire form.
            pub const fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $code,)+ }
            }

            /// The HTTP status this code is sent with.
            pub const fn status(self) -> u16 {
                match self { $(ErrorCode::$variant => $status,)+ }
            }
        }

        impl FromStr for ErrorCode {
            type Err = UnknownErrorCode;
            fn from_str(s: &str) -> Result<ErrorCode, UnknownErrorCode> {
                match s {
                    $($code => Ok(ErrorCode::$variant),)+
                    _ => Err(UnknownErrorCode(s.to_owned())),
                }
            }
        }
    };
}

error_codes! {
    // --- the streams protocol (docs/errors.md) ---
    StreamNotFound = ("stream_not_found", 404),
    StreamGone = ("stream_gone", 410),
    StreamNameInvalid = ("stream_name_invalid", 400),
    StreamConfigMismatch = ("stream_config_mismatch", 409),
    StreamPathBlocked = ("stream_path_blocked", 409),
    StreamClosed = ("stream_closed", 409),
    StreamSeqRegression = ("stream_seq_regression", 409),
    StreamSeqInvalid = ("stream_seq_invalid", 400),
    BodyEmpty = ("body_empty", 400),
    BodyUnreadable = ("body_unreadable", 400),
    PayloadTooLarge = ("payload_too_large", 413),
    ContentTypeMissing = ("content_type_missing", 400),
    ContentTypeInvalid = ("content_type_invalid", 400),
    ContentTypeMismatch = ("content_type_mismatch", 409),
    JsonInvalid = ("json_invalid", 400),
    HeaderInvalid = ("header_invalid", 400),
    ExpiryInvalid = ("expiry_invalid", 400),
    OffsetInvalid = ("offset_invalid", 400),
    OffsetRequired = ("offset_required", 400),
    OffsetGone = ("offset_gone", 410),
    LiveModeInvalid = ("live_mode_invalid", 400),
    ProducerHeadersInvalid = ("producer_headers_invalid", 400),
    ProducerEpochStale = ("producer_epoch_stale", 403),
    ProducerEpochSeqNotZero = ("producer_epoch_seq_not_zero", 400),
    ProducerSeqGap = ("producer_seq_gap", 409),
    ForkSourceNotFound = ("fork_source_not_found", 404),
    ForkSourceGone = ("fork_source_gone", 409),
    ForkHeadersInvalid = ("fork_headers_invalid", 400),
    ForkOffsetInvalid = ("fork_offset_invalid", 400),
    ForkSubOffsetInvalid = ("fork_sub_offset_invalid", 400),
    MethodNotAllowed = ("method_not_allowed", 405),
    RouteNotFound = ("route_not_found", 404),
    LimitInvalid = ("limit_invalid", 400),
    BatchInvalid = ("batch_invalid", 400),
    VersionConflict = ("version_conflict", 409),
    LimitExceeded = ("limit_exceeded", 429),
    StorageFull = ("storage_full", 507),
    StorageUnavailable = ("storage_unavailable", 503),
    StorageError = ("storage_error", 503),
    /// A load-shedding budget is exhausted (`Retry-After` is set).
    Overloaded = ("overloaded", 503),
    /// A service call's deadline passed before it was answered.
    DeadlineExceeded = ("deadline_exceeded", 504),
    /// No instance of the called service answered (none running, or its circuit is open).
    ServiceUnavailable = ("service_unavailable", 503),
    /// One message is larger than `limits.max_message_bytes`.
    MessageTooLarge = ("message_too_large", 413),
    /// The tenant holds `limits.max_streams_per_tenant` streams already.
    StreamQuotaExceeded = ("stream_quota_exceeded", 403),
    // --- the production layer ---
    /// No credentials, or credentials that did not verify (`WWW-Authenticate` is set).
    Unauthorized = ("unauthorized", 401),
    /// Authenticated, but the principal lacks the permission.
    Forbidden = ("forbidden", 403),
    /// A rate limit rejected the request (`Retry-After`, `RateLimit`, `RateLimit-Policy` are set).
    RateLimited = ("rate_limited", 429),
    /// The rate limiter's shared backend is down and the limiter is configured to fail closed.
    RateLimiterUnavailable = ("rate_limiter_unavailable", 503),
    /// The identity provider's keys could not be fetched and the cached ones expired.
    AuthUnavailable = ("auth_unavailable", 503),
    /// The tenant in the path is not a valid tenant id.
    TenantInvalid = ("tenant_invalid", 400),
    /// A resource that is not a stream does not exist (or belongs to another tenant).
    NotFound = ("not_found", 404),
    // --- the admin API (`admin.listen`) ---
    /// The admin API names an API key that does not exist (or belongs to another tenant).
    ApiKeyNotFound = ("api_key_not_found", 404),
    /// An admin API request body or query parameter is malformed.
    AdminRequestInvalid = ("admin_request_invalid", 400),
    /// The admin API's key endpoints were called while `auth.api_keys.enabled` is false.
    ApiKeysDisabled = ("api_keys_disabled", 409),
    /// The layer's store (API keys, audit log) failed; `Retry-After` is set.
    AdminStoreUnavailable = ("admin_store_unavailable", 503),
    /// A configuration reload was refused: the new configuration is invalid
    /// and the running one keeps serving.
    ConfigInvalid = ("config_invalid", 422),
    /// A bug or an unexpected failure; the correlation id finds the log lines.
    InternalError = ("internal_error", 500),
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A code string that no [`ErrorCode`] has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown error code `{0}`")]
pub struct UnknownErrorCode(pub String);

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ErrorCode, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An RFC 9457 problem body plus the response headers its status needs.
///
/// On the wire: `type` (`urn:weir:problem:{code}` — stable, not
/// dereferenceable: a URL would promise documentation at that address),
/// `title` (the status's reason phrase), `status`, `code`, `detail`,
/// `correlation_id` and any extension members (e.g. `violated-policies` on
/// `rate_limited`). `type` and `title` are derived from `code` and `status`
/// rather than stored, which keeps the struct small enough to return by
/// value from hot functions.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    pub status: u16,
    pub code: ErrorCode,
    pub detail: String,
    /// The request id ([`crate::request_id`]); filled in by the request-id
    /// layer on the way out, so handlers never have to thread it through.
    pub correlation_id: Option<String>,
    /// Extension members of the body.
    pub extensions: Map<String, Value>,
    /// Response headers that go with this problem (`WWW-Authenticate`,
    /// `Retry-After`, …). Not part of the body.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

#[derive(Serialize)]
struct WireRef<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    code: ErrorCode,
    detail: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation_id: Option<&'a str>,
    #[serde(flatten)]
    extensions: &'a Map<String, Value>,
}

#[derive(Deserialize)]
struct Wire {
    status: u16,
    code: ErrorCode,
    #[serde(default)]
    detail: String,
    #[serde(default)]
    correlation_id: Option<String>,
    #[serde(flatten)]
    extensions: Map<String, Value>,
}

impl Serialize for Problem {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        WireRef {
            kind: self.kind(),
            title: self.title(),
            status: self.status,
            code: self.code,
            detail: &self.detail,
            correlation_id: self.correlation_id.as_deref(),
            extensions: &self.extensions,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Problem {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Problem, D::Error> {
        let mut w = Wire::deserialize(d)?;
        w.extensions.remove("type");
        w.extensions.remove("title");
        Ok(Problem {
            status: w.status,
            code: w.code,
            detail: w.detail,
            correlation_id: w.correlation_id,
            extensions: w.extensions,
            headers: Vec::new(),
        })
    }
}

impl Problem {
    /// A problem with the code's own status.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Problem {
        Problem::with_status(code, code.status(), detail)
    }

    /// A problem whose status differs from the code's usual one (rare:
    /// prefer adding a code).
    pub fn with_status(code: ErrorCode, status: u16, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            code,
            detail: detail.into(),
            correlation_id: None,
            extensions: Map::new(),
            headers: Vec::new(),
        }
    }

    /// The `type` member: `urn:weir:problem:{code}`.
    pub fn kind(&self) -> String {
        format!("urn:weir:problem:{}", self.code)
    }

    /// The `title` member: the status's reason phrase.
    pub fn title(&self) -> &'static str {
        title_for(self.status)
    }

    /// The first header of that name.
    pub fn header_value(&self, name: impl AsRef<str>) -> Option<&HeaderValue> {
        let name = name.as_ref();
        self.headers
            .iter()
            .find(|(k, _)| k.as_str().eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Adds a response header (ignored if the value is not a valid header value).
    pub fn header(mut self, name: HeaderName, value: impl AsRef<str>) -> Problem {
        if let Ok(v) = HeaderValue::from_str(value.as_ref()) {
            self.headers.push((name, v));
        }
        self
    }

    /// Adds an extension member to the body.
    pub fn extension(mut self, key: impl Into<String>, value: impl Into<Value>) -> Problem {
        self.extensions.insert(key.into(), value.into());
        self
    }

    /// Sets the correlation id.
    pub fn correlation_id(mut self, id: impl Into<String>) -> Problem {
        self.correlation_id = Some(id.into());
        self
    }

    /// The body as JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing a map of strings and JSON values cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// `401 unauthorized` with `WWW-Authenticate: Bearer` (RFC 6750 §3).
    pub fn unauthorized(detail: impl Into<String>) -> Problem {
        Problem::new(ErrorCode::Unauthorized, detail).header(
            http::header::WWW_AUTHENTICATE,
            "Bearer realm=\"weir\", error=\"invalid_token\"",
        )
    }

    /// `403 forbidden`.
    pub fn forbidden(detail: impl Into<String>) -> Problem {
        Problem::new(ErrorCode::Forbidden, detail)
    }

    /// `404 not_found`.
    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(ErrorCode::NotFound, detail)
    }

    /// `500 internal_error`; the detail is generic on purpose (no internals leak).
    pub fn internal() -> Problem {
        Problem::new(
            ErrorCode::InternalError,
            "an unexpected error occurred; quote the correlation id when reporting it",
        )
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.detail)
    }
}

impl std::error::Error for Problem {}

/// The reason phrase used as `title` (same for every problem with that status,
/// as RFC 9457 §3.1.3 suggests for problem types without their own title).
pub fn title_for(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_snake_case() {
        for &c in ErrorCode::ALL {
            let s = c.as_str();
            assert!(
                s.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_'),
                "{s}"
            );
            assert_eq!(s.parse::<ErrorCode>().unwrap(), c);
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), c);
            assert!((400..600).contains(&c.status()));
        }
        assert!("nope".parse::<ErrorCode>().is_err());
    }

    #[test]
    fn every_code_is_documented() {
        let doc = include_str!("../../../docs/errors.md");
        for &c in ErrorCode::ALL {
            let row = format!("| `{}` | {} |", c.as_str(), c.status());
            assert!(doc.contains(&row), "docs/errors.md lacks the row {row}");
        }
    }

    #[test]
    fn problem_serializes_rfc9457_members() {
        let p = Problem::new(ErrorCode::StreamClosed, "the stream is closed")
            .correlation_id("abc")
            .extension("violated-policies", vec!["x"]);
        let v: Value = serde_json::from_slice(&p.to_json()).unwrap();
        assert_eq!(v["type"], "urn:weir:problem:stream_closed");
        assert_eq!(v["title"], "Conflict");
        assert_eq!(v["status"], 409);
        assert_eq!(v["code"], "stream_closed");
        assert_eq!(v["correlation_id"], "abc");
        assert_eq!(v["violated-policies"][0], "x");
        let back: Problem = serde_json::from_value(v).unwrap();
        assert_eq!(back.code, ErrorCode::StreamClosed);
        assert_eq!(back.correlation_id.as_deref(), Some("abc"));
    }

    #[test]
    fn unauthorized_carries_www_authenticate() {
        let p = Problem::unauthorized("no token");
        assert_eq!(p.status, 401);
        assert!(
            p.header_value("www-authenticate")
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("Bearer")
        );
        assert!(std::mem::size_of::<Problem>() <= 128);
    }
}
