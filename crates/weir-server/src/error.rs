//! Error responses: RFC 9457 `application/problem+json` bodies with a stable
//! machine-readable `code` (listed in docs/errors.md), plus whatever
//! protocol headers the status needs (`Stream-Closed`, `Producer-Epoch`, …).

use axum::response::{IntoResponse, Response};
use http::{HeaderName, HeaderValue, StatusCode};
use serde::Serialize;
use weir_core::append::AppendRejection;
use weir_core::fork::ForkError;
use weir_storage::StorageError;

use crate::headers;

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    code: &'a str,
    detail: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            detail: detail.into(),
            headers: Vec::new(),
        }
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, detail)
    }

    pub fn not_found() -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "stream_not_found",
            "no stream exists at this URL",
        )
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: HeaderName, value: impl ToString) -> ApiError {
        if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
            self.headers.push((name, v));
        }
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error");
        let body = Problem {
            kind: format!("urn:weir:problem:{}", self.code),
            title,
            status: self.status.as_u16(),
            code: self.code,
            detail: &self.detail,
        };
        let json = serde_json::to_vec(&body).unwrap_or_default();
        let mut resp = (self.status, json).into_response();
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        for (k, v) in self.headers {
            resp.headers_mut().insert(k, v);
        }
        resp
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> ApiError {
        use StatusCode as S;
        let detail = e.to_string();
        let (status, code) = match &e {
            StorageError::NotFound => (S::NOT_FOUND, "stream_not_found"),
            StorageError::Gone => (S::GONE, "stream_gone"),
            StorageError::ConfigMismatch(_) => (S::CONFLICT, "stream_config_mismatch"),
            StorageError::PathBlocked => (S::CONFLICT, "stream_path_blocked"),
            StorageError::SourceNotFound => (S::NOT_FOUND, "fork_source_not_found"),
            StorageError::SourceGone => (S::CONFLICT, "fork_source_gone"),
            StorageError::ForkContentType => (S::CONFLICT, "content_type_mismatch"),
            StorageError::Fork(f) => (S::BAD_REQUEST, fork_code(f)),
            StorageError::OffsetInvalid => (S::BAD_REQUEST, "offset_invalid"),
            StorageError::OffsetGone => (S::GONE, "offset_gone"),
            StorageError::Json(_) => (S::BAD_REQUEST, "json_invalid"),
            StorageError::VersionConflict => (S::CONFLICT, "version_conflict"),
            StorageError::LimitExceeded(_) => (S::TOO_MANY_REQUESTS, "limit_exceeded"),
            StorageError::Full(_) => (S::INSUFFICIENT_STORAGE, "storage_full"),
            StorageError::Unavailable(_) => (S::SERVICE_UNAVAILABLE, "storage_unavailable"),
            StorageError::Io(_) => (S::SERVICE_UNAVAILABLE, "storage_error"),
        };
        let err = ApiError::new(status, code, detail);
        if status == S::SERVICE_UNAVAILABLE {
            err.with_header(http::header::RETRY_AFTER, 1)
        } else {
            err
        }
    }
}

fn fork_code(f: &ForkError) -> &'static str {
    match f {
        ForkError::BadSubOffset
        | ForkError::SubOffsetOvershoot
        | ForkError::SubOffsetWithoutOffset => "fork_sub_offset_invalid",
        ForkError::BeyondTail | ForkError::ForeignOffset => "fork_offset_invalid",
        ForkError::NotAFork | ForkError::BadSource => "fork_headers_invalid",
    }
}

/// Maps an append rejection; `tail`/`closed` fill the protocol headers.
pub fn rejection(r: AppendRejection, tail: &str, closed: bool) -> ApiError {
    use StatusCode as S;
    let detail = r.to_string();
    let err = match r {
        AppendRejection::EmptyBody => ApiError::new(S::BAD_REQUEST, "body_empty", detail),
        AppendRejection::Closed => ApiError::new(S::CONFLICT, "stream_closed", detail),
        AppendRejection::MissingContentType => {
            ApiError::new(S::BAD_REQUEST, "content_type_missing", detail)
        }
        AppendRejection::ContentTypeMismatch { .. } => {
            ApiError::new(S::CONFLICT, "content_type_mismatch", detail)
        }
        AppendRejection::SeqRegression { .. } => {
            ApiError::new(S::CONFLICT, "stream_seq_regression", detail)
        }
        AppendRejection::StaleEpoch { current_epoch } => {
            ApiError::new(S::FORBIDDEN, "producer_epoch_stale", detail)
                .with_header(headers::PRODUCER_EPOCH, current_epoch)
        }
        AppendRejection::EpochSeqNotZero => {
            ApiError::new(S::BAD_REQUEST, "producer_epoch_seq_not_zero", detail)
        }
        AppendRejection::SeqGap { expected, received } => {
            ApiError::new(S::CONFLICT, "producer_seq_gap", detail)
                .with_header(headers::PRODUCER_EXPECTED_SEQ, expected)
                .with_header(headers::PRODUCER_RECEIVED_SEQ, received)
        }
        AppendRejection::Json(_) => ApiError::new(S::BAD_REQUEST, "json_invalid", detail),
    };
    let err = err.with_header(headers::STREAM_NEXT_OFFSET, tail);
    if closed {
        err.with_header(headers::STREAM_CLOSED, "true")
    } else {
        err
    }
}
