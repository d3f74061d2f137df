//! Protocol header names and parsing helpers: the only place where HTTP
//! header strings are turned into `weir-core` types.

use http::{HeaderMap, HeaderName};

use crate::error::ApiError;

pub const STREAM_NEXT_OFFSET: HeaderName = HeaderName::from_static("stream-next-offset");
pub const STREAM_UP_TO_DATE: HeaderName = HeaderName::from_static("stream-up-to-date");
pub const STREAM_CLOSED: HeaderName = HeaderName::from_static("stream-closed");
pub const STREAM_CURSOR: HeaderName = HeaderName::from_static("stream-cursor");
pub const STREAM_TTL: HeaderName = HeaderName::from_static("stream-ttl");
pub const STREAM_EXPIRES_AT: HeaderName = HeaderName::from_static("stream-expires-at");
pub const STREAM_SEQ: HeaderName = HeaderName::from_static("stream-seq");
pub const STREAM_FORKED_FROM: HeaderName = HeaderName::from_static("stream-forked-from");
pub const STREAM_FORK_OFFSET: HeaderName = HeaderName::from_static("stream-fork-offset");
pub const STREAM_FORK_SUB_OFFSET: HeaderName = HeaderName::from_static("stream-fork-sub-offset");
pub const STREAM_SSE_DATA_ENCODING: HeaderName =
    HeaderName::from_static("stream-sse-data-encoding");
pub const PRODUCER_ID: HeaderName = HeaderName::from_static("producer-id");
pub const PRODUCER_EPOCH: HeaderName = HeaderName::from_static("producer-epoch");
pub const PRODUCER_SEQ: HeaderName = HeaderName::from_static("producer-seq");
pub const PRODUCER_EXPECTED_SEQ: HeaderName = HeaderName::from_static("producer-expected-seq");
pub const PRODUCER_RECEIVED_SEQ: HeaderName = HeaderName::from_static("producer-received-seq");

/// Every protocol header a browser client must be allowed to read.
pub const EXPOSED: &str = "stream-next-offset, stream-up-to-date, stream-closed, stream-cursor, stream-ttl, \
stream-expires-at, stream-sse-data-encoding, producer-epoch, producer-seq, producer-expected-seq, \
producer-received-seq, etag, location, content-type, x-request-id, retry-after, ratelimit, ratelimit-policy";

/// Request headers a browser client may send.
pub const ALLOWED: &str = "content-type, authorization, if-none-match, stream-seq, stream-ttl, stream-expires-at, \
stream-closed, stream-forked-from, stream-fork-offset, stream-fork-sub-offset, producer-id, producer-epoch, \
producer-seq, x-request-id, traceparent, tracestate";

/// A header's value as UTF-8 text. Present-but-not-text is a `400`, so a
/// client never has a header silently ignored because of its encoding.
pub fn text<'a>(h: &'a HeaderMap, name: &HeaderName) -> Result<Option<&'a str>, ApiError> {
    match h.get(name) {
        None => Ok(None),
        Some(v) => v.to_str().map(Some).map_err(|_| {
            ApiError::bad_request(
                "header_invalid",
                format!("header {name} is not visible ASCII"),
            )
        }),
    }
}

/// `Stream-Closed` counts only when its value is `true` (any case); other
/// values are treated as absent (PROTOCOL.md §4.1).
pub fn closed_flag(h: &HeaderMap) -> bool {
    h.get(&STREAM_CLOSED)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}
