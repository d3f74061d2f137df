//! Weir's own management API under `/_weir/` (not the protocol's reserved
//! `__ds` prefix): paginated stream listing and multi-stream batch append.

use axum::Json;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use weir_core::append::{AppendRequest, Body, valid_stream_seq};
use weir_core::json::split_messages;
use weir_core::producer::ProducerHeaders;
use weir_core::{ContentType, Expiry, StreamName};

use crate::AppState;
use crate::error::{ApiError, rejection};
use crate::streams::{ack_status, body_bytes};

/// Most streams one listing page returns.
pub const MAX_PAGE: usize = 1000;
/// Most items one batch may carry.
pub const MAX_BATCH: usize = 1000;

#[derive(Serialize)]
struct ListedStream {
    name: String,
    content_type: String,
    next_offset: String,
    closed: bool,
    created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
}

#[derive(Serialize)]
struct Listing {
    streams: Vec<ListedStream>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// `GET /_weir/streams?prefix=&cursor=&limit=` (only the caller's tenant)
/// [`list`] under `/t/{tenant}/_weir/streams` (path tenant mode).
pub async fn list_in_tenant(
    State(st): State<AppState>,
    axum::extract::Path(tenant): axum::extract::Path<String>,
    mut req: Request,
) -> Response {
    if let Err(r) = crate::streams::in_tenant(&st, &tenant, &mut req) {
        return *r;
    }
    list(State(st), req).await
}

/// [`batch`] under `/t/{tenant}/_weir/batch` (path tenant mode).
pub async fn batch_in_tenant(
    State(st): State<AppState>,
    axum::extract::Path(tenant): axum::extract::Path<String>,
    mut req: Request,
) -> Response {
    if let Err(r) = crate::streams::in_tenant(&st, &tenant, &mut req) {
        return *r;
    }
    batch(State(st), req).await
}

pub async fn list(State(st): State<AppState>, req: Request) -> Response {
    let tenant = match crate::streams::tenant_of(&st, &req, weir_layer::Permission::Read) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let scope = |s: &str| -> String {
        match &tenant {
            Some(t) => weir_layer::authz::scoped_name(t, s),
            None => s.to_owned(),
        }
    };
    let mut prefix = String::new();
    let mut cursor = None;
    let mut limit = 100usize;
    for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "prefix" => prefix = v.into_owned(),
            "cursor" => cursor = Some(v.into_owned()),
            "limit" => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_PAGE).contains(&n) => limit = n,
                _ => {
                    return ApiError::bad_request(
                        "limit_invalid",
                        format!("limit must be between 1 and {MAX_PAGE}"),
                    )
                    .into_response();
                }
            },
            _ => {}
        }
    }
    let page = match st
        .storage
        .list(
            &scope(&prefix),
            cursor.as_deref().map(scope).as_deref(),
            limit + 1,
        )
        .await
    {
        Ok(p) => p,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let more = page.len() > limit;
    let streams: Vec<ListedStream> = page
        .into_iter()
        .take(limit)
        .map(|i| ListedStream {
            name: match &tenant {
                Some(t) => weir_layer::authz::unscoped_name(t, i.name.as_str())
                    .unwrap_or_default()
                    .to_owned(),
                None => i.name.to_string(),
            },
            content_type: i.content_type.as_str().to_owned(),
            next_offset: i.tail.to_string(),
            closed: i.closed,
            created_at: Expiry::format_expires_at(i.created_at_ms),
            ttl_seconds: match i.expiry {
                Expiry::Ttl { secs } => Some(secs),
                _ => None,
            },
            expires_at: i.expires_at_ms.map(Expiry::format_expires_at),
        })
        .collect();
    let next_cursor = if more {
        streams.last().map(|s| s.name.clone())
    } else {
        None
    };
    Json(Listing {
        streams,
        next_cursor,
    })
    .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    appends: Vec<BatchItem>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchItem {
    stream: String,
    content_type: Option<String>,
    /// UTF-8 data.
    data: Option<String>,
    /// Binary data, standard base64.
    data_base64: Option<String>,
    /// A JSON value (JSON streams; arrays are flattened as on `POST`).
    json: Option<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    close: bool,
    seq: Option<String>,
    producer: Option<BatchProducer>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchProducer {
    id: String,
    epoch: u64,
    seq: u64,
}

#[derive(Serialize, Default)]
struct BatchResult {
    stream: String,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_offset: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    closed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    producer_epoch: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    producer_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

impl BatchResult {
    fn error(stream: String, e: ApiError) -> BatchResult {
        BatchResult {
            stream,
            status: e.status.as_u16(),
            code: Some(e.code),
            detail: Some(e.detail),
            ..BatchResult::default()
        }
    }
}

fn item_request(
    item: &BatchItem,
    tenant: Option<&str>,
    max_message_bytes: usize,
) -> Result<(StreamName, AppendRequest), ApiError> {
    let name = crate::streams::scoped(tenant, &item.stream)?;
    let content_type = item
        .content_type
        .as_deref()
        .map(|c| {
            ContentType::parse(c)
                .ok_or_else(|| ApiError::bad_request("content_type_invalid", "not a media type"))
        })
        .transpose()?;
    let body = match (&item.data, &item.data_base64, &item.json) {
        (None, None, None) => Body::Empty,
        (Some(d), None, None) => Body::Bytes(Bytes::copy_from_slice(d.as_bytes())),
        (None, Some(b), None) => Body::Bytes(Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|_| {
                    ApiError::bad_request("batch_invalid", "data_base64 is not valid base64")
                })?,
        )),
        (None, None, Some(j)) => Body::Json(split_messages(
            &Bytes::copy_from_slice(j.get().as_bytes()),
            false,
        )),
        _ => {
            return Err(ApiError::bad_request(
                "batch_invalid",
                "give at most one of data, data_base64 and json",
            ));
        }
    };
    let body = match body {
        Body::Bytes(b) if content_type.as_ref().is_some_and(ContentType::is_json) => {
            Body::Json(split_messages(&b, false))
        }
        other => other,
    };
    crate::limits::check_messages(&body, max_message_bytes)?;
    if let Some(s) = &item.seq
        && !valid_stream_seq(s)
    {
        return Err(ApiError::bad_request(
            "stream_seq_invalid",
            "seq must be a non-empty token",
        ));
    }
    let producer = item
        .producer
        .as_ref()
        .map(|p| {
            ProducerHeaders::from_headers(
                Some(&p.id),
                Some(&p.epoch.to_string()),
                Some(&p.seq.to_string()),
            )
            .map_err(|e| ApiError::bad_request("producer_headers_invalid", e.to_string()))
        })
        .transpose()?
        .flatten();
    Ok((
        name,
        AppendRequest {
            content_type,
            body,
            close: item.close,
            stream_seq: item.seq.clone(),
            producer,
        },
    ))
}

/// `POST /_weir/batch`: appends to several streams with one durable commit
/// and per-item results (`200` with a `results` array in request order).
pub async fn batch(State(st): State<AppState>, req: Request) -> Response {
    let tenant = match crate::streams::tenant_of(&st, &req, weir_layer::Permission::Write) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let body = match body_bytes(st.config.max_body_bytes, req).await {
        Ok((_, b)) => b,
        Err(e) => return e.into_response(),
    };
    let parsed: BatchRequest = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return ApiError::bad_request("batch_invalid", e.to_string()).into_response(),
    };
    if parsed.appends.is_empty() || parsed.appends.len() > MAX_BATCH {
        return ApiError::bad_request(
            "batch_invalid",
            format!("a batch holds 1 to {MAX_BATCH} appends"),
        )
        .into_response();
    }
    let mut results: Vec<Option<BatchResult>> = Vec::with_capacity(parsed.appends.len());
    let mut requests = Vec::new();
    let mut slots = Vec::new();
    for (i, item) in parsed.appends.iter().enumerate() {
        match item_request(item, tenant.as_deref(), st.config.limits.max_message_bytes) {
            Ok(r) => {
                results.push(None);
                slots.push((i, r.1.producer.is_some()));
                requests.push(r);
            }
            Err(e) => results.push(Some(BatchResult::error(item.stream.clone(), e))),
        }
    }
    let outcomes = st.storage.append_batch(requests).await;
    for ((i, had_producer), outcome) in slots.into_iter().zip(outcomes) {
        crate::metrics::append(&outcome);
        let stream = parsed.appends[i].stream.clone();
        results[i] = Some(match outcome {
            Err(e) => BatchResult::error(stream, ApiError::from(e)),
            Ok(out) => {
                let tail = out.tail.to_string();
                match out.result {
                    Err(r) => BatchResult::error(stream, rejection(r, &tail, out.closed)),
                    Ok(ack) => {
                        let (status, producer) = ack_status(ack, had_producer, out.bytes);
                        BatchResult {
                            stream,
                            status: status.as_u16(),
                            next_offset: Some(tail),
                            closed: out.closed,
                            producer_epoch: producer.map(|p| p.epoch),
                            producer_seq: producer.map(|p| p.last_seq),
                            ..BatchResult::default()
                        }
                    }
                }
            }
        });
    }
    let results: Vec<BatchResult> = results.into_iter().flatten().collect();
    Json(serde_json::json!({ "results": results })).into_response()
}
