//! Protocol handlers: create (PUT), append/close (POST), read (GET), metadata
//! (HEAD) and delete (DELETE) on one stream URL.

use axum::body::Body as HttpBody;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use weir_core::append::{AppendRequest, Body, valid_stream_seq};
use weir_core::fork::{ForkError, parse_sub_offset};
use weir_core::json::split_messages;
use weir_core::offset::ReadFrom;
use weir_core::producer::ProducerHeaders;
use weir_core::{ContentType, Expiry, Offset, StreamName};
use weir_storage::{AppendAck, CreateRequest, ForkRequest, ReadChunk, StorageError, StreamInfo};

use crate::AppState;
use crate::error::{ApiError, rejection};
use crate::headers::{self, closed_flag, text};
use crate::live;
use crate::query::{Live, ReadQuery};

/// The caller's tenant when streams are tenant-scoped, after checking the
/// permission the operation needs. `Ok(None)`: no tenancy (auth off).
pub(crate) fn tenant_of(
    st: &AppState,
    req: &Request,
    needed: weir_layer::Permission,
) -> Result<Option<String>, Box<Response>> {
    Ok(tenant_in(st, req, needed)?.map(str::to_owned))
}

/// [`tenant_of`], borrowed from the request's principal (no copy).
pub(crate) fn tenant_in<'r>(
    st: &AppState,
    req: &'r Request,
    needed: weir_layer::Permission,
) -> Result<Option<&'r str>, Box<Response>> {
    if !st.tenancy() {
        return Ok(None);
    }
    let Some(p) = weir_layer::http::principal_of(req.extensions()) else {
        return Err(Box::new(
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "authentication required",
            )
            .into_response(),
        ));
    };
    if st.path_tenancy() {
        // Path mode: the URL names the tenant; it must be the caller's.
        // Any other tenant answers exactly what a missing resource does.
        match req.extensions().get::<PathTenant>() {
            None => {
                return Err(Box::new(
                    ApiError::new(
                        StatusCode::NOT_FOUND,
                        "route_not_found",
                        "this server takes the tenant from the URL: /t/{tenant}/…",
                    )
                    .into_response(),
                ));
            }
            Some(PathTenant(t)) if *t != p.tenant => {
                return Err(Box::new(ApiError::not_found().into_response()));
            }
            Some(_) => {}
        }
    }
    weir_layer::require(p, needed).map_err(|e| Box::new(e.into_response()))?;
    Ok(Some(p.tenant.as_str()))
}

/// The tenant named by a `/t/{tenant}/…` URL (`authz.tenant_source =
/// "path"`), put into the request's extensions by [`in_tenant`].
#[derive(Clone, Debug)]
pub(crate) struct PathTenant(pub String);

/// The URL prefix of the caller's resources: `/t/{tenant}` in path mode,
/// empty otherwise.
pub(crate) fn url_prefix(req_ext: &http::Extensions) -> String {
    req_ext
        .get::<PathTenant>()
        .map(|PathTenant(t)| format!("/t/{t}"))
        .unwrap_or_default()
}

/// Checks the `{tenant}` of a `/t/{tenant}/…` URL and records it for
/// [`tenant_of`]. A malformed id answers `400 tenant_invalid`.
pub(crate) fn in_tenant(
    st: &AppState,
    tenant: &str,
    req: &mut Request,
) -> Result<(), Box<Response>> {
    if !st.path_tenancy() {
        return Err(Box::new(fallback_response()));
    }
    weir_layer::authz::validate_tenant(tenant).map_err(|e| {
        Box::new(ApiError::bad_request("tenant_invalid", e.to_string()).into_response())
    })?;
    req.extensions_mut().insert(PathTenant(tenant.to_owned()));
    Ok(())
}

/// [`dispatch`] for `/t/{tenant}{root}/{*path}` (path tenant mode).
pub async fn dispatch_in_tenant(
    State(st): State<AppState>,
    Path((tenant, path)): Path<(String, String)>,
    mut req: Request,
) -> Response {
    if let Err(r) = in_tenant(&st, &tenant, &mut req) {
        return *r;
    }
    dispatch(State(st), Path(path), req).await
}

/// A stream name in storage: scoped under the tenant when there is one.
pub(crate) fn scoped(tenant: Option<&str>, path: &str) -> Result<StreamName, ApiError> {
    // The client's part is validated on its own (so `__ds` stays reserved)
    // and the whole as a name: `StreamName::scoped` does both in one pass
    // and one allocation.
    match tenant {
        None => StreamName::new(path),
        Some(t) => StreamName::scoped(t, path),
    }
    .map_err(|e| ApiError::bad_request("stream_name_invalid", e.to_string()))
}

/// Routes a request under the stream root by method.
pub async fn dispatch(
    State(st): State<AppState>,
    Path(path): Path<String>,
    req: Request,
) -> Response {
    if path == "__ds" || path.starts_with("__ds/") {
        // Subscriptions are tenant-scoped like streams (the tenant and the
        // permission each route needs are checked there). Boxed, like
        // `create` below: this future is built, moved and boxed on every
        // request, and inline the subscription API's state machine made it
        // 3.7 KB for every append and read (2.0 KB boxed; 118 fewer
        // instructions per append, callgrind).
        return Box::pin(crate::subscriptions::dispatch(st, &path, req)).await;
    }
    // The tenant is borrowed from the principal; only a create keeps a
    // copy (the request moves into the handler).
    let (tenant, name) = {
        let tenant = match tenant_in(&st, &req, weir_layer::Permission::for_method(req.method())) {
            Ok(t) => t,
            Err(r) => return *r,
        };
        match scoped(tenant, &path) {
            Ok(n) => (
                tenant
                    .filter(|_| req.method() == Method::PUT)
                    .map(str::to_owned),
                n,
            ),
            Err(e) => return e.into_response(),
        }
    };
    let result = match *req.method() {
        Method::PUT => Box::pin(create(&st, name, tenant.as_deref(), req)).await,
        Method::POST => append(&st, name, req).await,
        Method::GET => read(&st, name, req).await,
        Method::HEAD => head(&st, name).await,
        Method::DELETE => delete(&st, name).await,
        _ => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "streams support GET, HEAD, PUT, POST and DELETE",
        )
        .with_header(header::ALLOW, "GET, HEAD, PUT, POST, DELETE, OPTIONS")),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

/// Anything outside the stream root.
pub async fn fallback() -> Response {
    fallback_response()
}

fn fallback_response() -> Response {
    ApiError::new(StatusCode::NOT_FOUND, "route_not_found", "no such route").into_response()
}

/// `/readyz`: storage can take writes and the production layer's
/// dependencies (JWKS, a fail-closed Redis limiter, the PostgreSQL key
/// store) are usable.
pub async fn ready(State(st): State<AppState>) -> Response {
    if let Err(e) = st.storage.ready().await {
        let mut e = ApiError::from(e);
        e.status = StatusCode::SERVICE_UNAVAILABLE;
        return e.into_response();
    }
    if let Some(layer) = &st.layer {
        let h = layer.check_health().await;
        if !h.ready {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "dependency_unavailable",
                format!(
                    "production layer not ready: {}",
                    serde_json::to_string(&h).unwrap_or_default()
                ),
            )
            .into_response();
        }
    }
    (StatusCode::OK, "ready").into_response()
}

/// Reads the whole request body, mapping an over-limit body to `413`.
pub(crate) async fn body_bytes(limit: usize, req: Request) -> Result<(HeaderMap, Bytes), ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body exceeds the server's limit of {limit} bytes"),
        )
    };
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    collect_body(body, limit, declared.unwrap_or(0) as usize)
        .await
        .map(|b| (parts.headers, b))
        .map_err(|e| match e {
            BodyError::TooLarge => too_large(),
            BodyError::Read(e) => {
                // The router's body limit reports itself as a read error.
                let mut src: Option<&(dyn std::error::Error + 'static)> =
                    std::error::Error::source(&e);
                while let Some(s) = src {
                    if s.is::<http_body_util::LengthLimitError>() {
                        return too_large();
                    }
                    src = s.source();
                }
                ApiError::bad_request(
                    "body_unreadable",
                    format!("could not read request body: {e}"),
                )
            }
        })
}

enum BodyError {
    TooLarge,
    Read(axum::Error),
}

/// Reads a body of at most `limit` bytes. A body that arrives as one frame
/// (the usual small append) is returned as is, without a copy; a body in
/// several frames is gathered into one buffer sized from `Content-Length`
/// up front, so a large upload is held once — growing a buffer by doubling
/// would briefly hold it twice, which showed in peak memory under load.
async fn collect_body(
    mut body: axum::body::Body,
    limit: usize,
    declared: usize,
) -> Result<Bytes, BodyError> {
    use http_body_util::BodyExt;
    let mut first: Option<Bytes> = None;
    let mut buf = bytes::BytesMut::new();
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BodyError::Read)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        len += data.len();
        if len > limit {
            return Err(BodyError::TooLarge);
        }
        if buf.is_empty() && first.is_none() {
            first = Some(data);
            continue;
        }
        if let Some(f) = first.take() {
            buf.reserve(declared.clamp(len, limit));
            buf.extend_from_slice(&f);
        }
        buf.extend_from_slice(&data);
    }
    Ok(match first {
        Some(f) => f,
        None => buf.freeze(),
    })
}

fn content_type(h: &HeaderMap) -> Result<Option<ContentType>, ApiError> {
    match text(h, &header::CONTENT_TYPE)? {
        None => Ok(None),
        Some(v) if v.trim().is_empty() => Ok(None),
        Some(v) => ContentType::parse(v).map(Some).ok_or_else(|| {
            ApiError::bad_request("content_type_invalid", format!("`{v}` is not a media type"))
        }),
    }
}

/// The absolute base URL clients reached us at (for `Location`, JWKS and
/// callback URLs): the configured `public_url`; else `X-Forwarded-Proto` /
/// `X-Forwarded-Host` when the peer is a trusted proxy; else the `Host`.
pub(crate) fn base_url(st: &AppState, h: &HeaderMap, peer: Option<std::net::IpAddr>) -> String {
    if let Some(p) = &st.config.public_url {
        return p.trim_end_matches('/').to_owned();
    }
    let trusted = peer.is_some_and(|ip| st.config.trusted_proxies.contains(&ip));
    let forwarded = |name: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let host = trusted
        .then(|| forwarded("x-forwarded-host"))
        .flatten()
        .or_else(|| h.get(header::HOST).and_then(|v| v.to_str().ok()))
        .unwrap_or("localhost");
    let scheme = match trusted.then(|| forwarded("x-forwarded-proto")).flatten() {
        Some("https") => "https",
        Some("http") => "http",
        _ if st.config.tls => "https",
        _ => "http",
    };
    format!("{scheme}://{host}")
}

/// The connecting peer's address, if the transport recorded it.
pub(crate) fn peer_ip(req: &Request) -> Option<std::net::IpAddr> {
    req.extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
}

/// Percent-encodes a stream name for use in a URL path.
pub(crate) fn url_path(name: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
        .add(b' ')
        .add(b'"')
        .add(b'#')
        .add(b'%')
        .add(b'<')
        .add(b'>')
        .add(b'?')
        .add(b'`')
        .add(b'{')
        .add(b'}');
    percent_encoding::utf8_percent_encode(name, SET).to_string()
}

fn set(h: &mut HeaderMap, name: http::HeaderName, value: impl ToString) {
    if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
        h.insert(name, v);
    }
}

fn ct_header(h: &mut HeaderMap, ct: &ContentType) {
    set(h, header::CONTENT_TYPE, ct.as_str());
}

/// Turns a `Stream-Forked-From` value (a URL path on this server) into the
/// source stream's name (in the caller's tenant).
fn source_name(
    st: &AppState,
    value: &str,
    tenant: Option<&str>,
    prefix: &str,
) -> Result<StreamName, ApiError> {
    let root = st.config.stream_root.trim_end_matches('/');
    let path = value.split(['?', '#']).next().unwrap_or("");
    // Path tenant mode: a source in another tenant's URL space is as
    // unknown as a missing one.
    let path = path.strip_prefix(prefix).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "fork_source_not_found",
            "no stream exists at the fork source URL",
        )
    })?;
    let rel = path
        .strip_prefix(root)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(|| {
            ApiError::bad_request("fork_headers_invalid", ForkError::BadSource.to_string())
        })?;
    let decoded = percent_encoding::percent_decode_str(rel)
        .decode_utf8()
        .map_err(|_| {
            ApiError::bad_request("fork_headers_invalid", ForkError::BadSource.to_string())
        })?;
    scoped(tenant, &decoded).map_err(|e| ApiError::bad_request("fork_headers_invalid", e.detail))
}

async fn create(
    st: &AppState,
    name: StreamName,
    tenant: Option<&str>,
    req: Request,
) -> Result<Response, ApiError> {
    let peer = peer_ip(&req);
    let prefix = url_prefix(req.extensions());
    let (h, body) = body_bytes(st.config.max_body_bytes, req).await?;
    let ct = content_type(&h)?;
    let expiry = Expiry::from_headers(
        text(&h, &headers::STREAM_TTL)?,
        text(&h, &headers::STREAM_EXPIRES_AT)?,
    )
    .map_err(|e| ApiError::bad_request("expiry_invalid", e.to_string()))?;
    let closed = closed_flag(&h);

    let forked_from = text(&h, &headers::STREAM_FORKED_FROM)?;
    let fork_offset = text(&h, &headers::STREAM_FORK_OFFSET)?;
    let sub_offset = text(&h, &headers::STREAM_FORK_SUB_OFFSET)?;
    let fork = match forked_from {
        None if fork_offset.is_some() || sub_offset.is_some() => {
            return Err(ApiError::bad_request(
                "fork_headers_invalid",
                ForkError::NotAFork.to_string(),
            ));
        }
        None => None,
        Some(src) => {
            let source = source_name(st, src, tenant, &prefix)?;
            let offset = fork_offset
                .map(|o| {
                    Offset::parse(o)
                        .map_err(|e| ApiError::bad_request("fork_offset_invalid", e.to_string()))
                })
                .transpose()?;
            let sub_offset = sub_offset
                .map(|s| {
                    parse_sub_offset(s).map_err(|e| {
                        ApiError::bad_request("fork_sub_offset_invalid", e.to_string())
                    })
                })
                .transpose()?
                .unwrap_or(0);
            Some(ForkRequest {
                source,
                offset,
                sub_offset,
            })
        }
    };

    // The body's framing depends on the stream's type: for a fork without
    // an explicit type that is the source's.
    let effective_ct = match (&ct, &fork) {
        (Some(ct), _) => Some(ct.clone()),
        (None, Some(f)) if !body.is_empty() => match st.storage.head(&f.source).await {
            Ok(info) => Some(info.content_type),
            Err(StorageError::Gone) => return Err(StorageError::SourceGone.into()),
            Err(StorageError::NotFound) => return Err(StorageError::SourceNotFound.into()),
            Err(e) => return Err(e.into()),
        },
        _ => None,
    };
    let body = if body.is_empty() {
        Body::Empty
    } else if effective_ct.as_ref().is_some_and(ContentType::is_json) {
        Body::Json(Ok(split_messages(&body, true).map_err(|e| {
            ApiError::bad_request("json_invalid", e.to_string())
        })?))
    } else {
        Body::Bytes(body)
    };
    crate::limits::check_messages(&body, st.config.limits.max_message_bytes)?;
    crate::limits::check_stream_quota(st, tenant, &name).await?;

    let out = st
        .storage
        .create(CreateRequest {
            name: name.clone(),
            content_type: ct,
            expiry,
            closed,
            body,
            fork,
        })
        .await?;
    let status = if out.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut resp = status.into_response();
    let rh = resp.headers_mut();
    ct_header(rh, &out.info.content_type);
    set(rh, headers::STREAM_NEXT_OFFSET, out.info.tail);
    if out.info.closed {
        set(rh, headers::STREAM_CLOSED, "true");
    }
    if out.created {
        let root = st.config.stream_root.trim_end_matches('/');
        // The client's name, without the tenant scope.
        let own = tenant
            .and_then(|t| weir_layer::authz::unscoped_name(t, name.as_str()))
            .unwrap_or(name.as_str());
        set(
            rh,
            header::LOCATION,
            format!("{}{prefix}{root}/{}", base_url(st, &h, peer), url_path(own)),
        );
    }
    Ok(resp)
}

async fn append(st: &AppState, name: StreamName, req: Request) -> Result<Response, ApiError> {
    let h = req.headers();
    let producer = ProducerHeaders::from_headers(
        text(h, &headers::PRODUCER_ID)?,
        text(h, &headers::PRODUCER_EPOCH)?,
        text(h, &headers::PRODUCER_SEQ)?,
    )
    .map_err(|e| ApiError::bad_request("producer_headers_invalid", e.to_string()))?;
    let stream_seq = match text(h, &headers::STREAM_SEQ)? {
        Some(s) if !valid_stream_seq(s) => {
            return Err(ApiError::bad_request(
                "stream_seq_invalid",
                "Stream-Seq must be a non-empty token",
            ));
        }
        other => other.map(str::to_owned),
    };
    let close = closed_flag(h);
    let (h, body) = body_bytes(st.config.max_body_bytes, req).await?;
    // An unparseable Content-Type on a close-only request is ignored.
    let ct = match content_type(&h) {
        Ok(ct) => ct,
        Err(_) if body.is_empty() => None,
        Err(e) => return Err(e),
    };
    let body = if body.is_empty() {
        Body::Empty
    } else if ct.as_ref().is_some_and(ContentType::is_json) {
        Body::Json(split_messages(&body, false))
    } else {
        Body::Bytes(body)
    };
    crate::limits::check_messages(&body, st.config.limits.max_message_bytes)?;
    let had_producer = producer.is_some();
    let out = st
        .storage
        .append(
            &name,
            AppendRequest {
                content_type: ct,
                body,
                close,
                stream_seq,
                producer,
            },
        )
        .await;
    crate::metrics::append(&out);
    let out = out?;
    let tail = out.tail.to_string();
    let ack = match out.result {
        Ok(ack) => ack,
        Err(r) => return Err(rejection(r, &tail, out.closed)),
    };
    let (status, producer) = match ack {
        AppendAck::Appended { producer } if had_producer && out.bytes > 0 => {
            (StatusCode::OK, producer)
        }
        AppendAck::Appended { producer } => (StatusCode::NO_CONTENT, producer),
        AppendAck::Duplicate { producer } => (StatusCode::NO_CONTENT, Some(producer)),
        AppendAck::AlreadyClosed => (StatusCode::NO_CONTENT, None),
    };
    let mut resp = status.into_response();
    let rh = resp.headers_mut();
    // Sized once for everything the stack adds on the way out (offset,
    // producer, request id, rate limit, the security headers): the default
    // map holds 6 and would grow, moving every entry, on each append.
    *rh = HeaderMap::with_capacity(APPEND_HEADERS);
    // The offset string becomes the header value as is (no second copy).
    if let Ok(v) = HeaderValue::try_from(tail) {
        rh.insert(headers::STREAM_NEXT_OFFSET, v);
    }
    if out.closed {
        set(rh, headers::STREAM_CLOSED, "true");
    }
    if let Some(p) = producer {
        set(rh, headers::PRODUCER_EPOCH, p.epoch);
        set(rh, headers::PRODUCER_SEQ, p.last_seq);
    }
    Ok(resp)
}

/// Headers an append's response carries at most with every layer on: its
/// own 4 (offset, closed, producer epoch and seq), `X-Request-Id`,
/// `RateLimit` and `RateLimit-Policy`, the 4 security headers, and a spare.
const APPEND_HEADERS: usize = 12;

/// Status and producer headers of an accepted append: `200` only for a
/// producer append that wrote data, `204` otherwise (duplicates included).
pub(crate) fn ack_status(
    ack: AppendAck,
    had_producer: bool,
    bytes: u64,
) -> (StatusCode, Option<weir_core::ProducerState>) {
    match ack {
        AppendAck::Appended { producer } if had_producer && bytes > 0 => (StatusCode::OK, producer),
        AppendAck::Appended { producer } => (StatusCode::NO_CONTENT, producer),
        AppendAck::Duplicate { producer } => (StatusCode::NO_CONTENT, Some(producer)),
        AppendAck::AlreadyClosed => (StatusCode::NO_CONTENT, None),
    }
}

async fn head(st: &AppState, name: StreamName) -> Result<Response, ApiError> {
    let info = st.storage.head(&name).await?;
    let mut resp = StatusCode::OK.into_response();
    let rh = resp.headers_mut();
    meta_headers(rh, &info);
    set(rh, header::CACHE_CONTROL, "no-store");
    Ok(resp)
}

fn meta_headers(rh: &mut HeaderMap, info: &StreamInfo) {
    ct_header(rh, &info.content_type);
    set(rh, headers::STREAM_NEXT_OFFSET, info.tail);
    match info.expiry {
        Expiry::Ttl { secs } => set(rh, headers::STREAM_TTL, secs),
        Expiry::At { unix_ms } => set(
            rh,
            headers::STREAM_EXPIRES_AT,
            Expiry::format_expires_at(unix_ms),
        ),
        Expiry::Never => {}
    }
    if info.closed {
        set(rh, headers::STREAM_CLOSED, "true");
    }
}

async fn delete(st: &AppState, name: StreamName) -> Result<Response, ApiError> {
    st.storage.delete(&name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn read(st: &AppState, name: StreamName, req: Request) -> Result<Response, ApiError> {
    let q = ReadQuery::parse(req.uri().query())?;
    match q.live {
        Live::No => {}
        Live::LongPoll | Live::Sse if q.offset.is_none() => {
            return Err(ApiError::bad_request(
                "offset_required",
                "live reads require the offset parameter",
            ));
        }
        Live::LongPoll => return live::long_poll(st, name, q).await,
        Live::Sse => return live::sse(st, name, q).await,
    }
    let from = q.offset.unwrap_or(ReadFrom::Start);
    let chunk = st
        .storage
        .read(&name, from, st.config.max_read_bytes)
        .await?;
    let now = from == ReadFrom::Now;
    let etag = etag(&chunk);
    if !now && if_none_match(req.headers(), &etag) {
        let mut resp = StatusCode::NOT_MODIFIED.into_response();
        set(resp.headers_mut(), header::ETAG, &etag);
        return Ok(resp);
    }
    let mut resp = data_response(st, &chunk, StatusCode::OK);
    let rh = resp.headers_mut();
    if now {
        set(rh, header::CACHE_CONTROL, "no-store");
    } else {
        set(rh, header::ETAG, &etag);
        let cacheable = !chunk.pieces.is_empty() || chunk.at_eof();
        set(rh, header::CACHE_CONTROL, cache_control(st, cacheable));
    }
    Ok(resp)
}

pub(crate) fn cache_control(st: &AppState, cacheable: bool) -> &'static str {
    use crate::config::CacheVisibility;
    match (cacheable, st.config.cache_visibility) {
        (false, _) => "no-store",
        (true, CacheVisibility::Public) => "public, max-age=60, stale-while-revalidate=300",
        (true, CacheVisibility::Private) => "private, max-age=60, stale-while-revalidate=300",
    }
}

/// `"{stream id}:{start}:{end}"`, with `:c` once the stream is closed and
/// the response reaches its end, so closure always changes the tag.
pub(crate) fn etag(c: &ReadChunk) -> String {
    let closed = if c.at_eof() { ":c" } else { "" };
    format!("\"{}:{}:{}{closed}\"", c.info.id, c.start.pos, c.next.pos)
}

fn if_none_match(h: &HeaderMap, etag: &str) -> bool {
    h.get_all(header::IF_NONE_MATCH).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',').any(|t| {
                let t = t.trim();
                t == "*" || t == etag || t.strip_prefix("W/") == Some(etag)
            })
        })
    })
}

/// A `200` (or other) response carrying a read's data and headers.
pub(crate) fn data_response(_st: &AppState, c: &ReadChunk, status: StatusCode) -> Response {
    let body = if c.info.content_type.is_json() {
        let mut out = Vec::with_capacity(c.byte_len() + c.pieces.len() + 2);
        weir_core::json::wrap_array(c.pieces.iter().map(|p| &p[..]), &mut out);
        HttpBody::from(Bytes::from(out))
    } else {
        HttpBody::new(crate::pieces::Pieces::new(c.pieces.iter().cloned()))
    };
    let mut resp = (status, body).into_response();
    let rh = resp.headers_mut();
    ct_header(rh, &c.info.content_type);
    set(rh, headers::STREAM_NEXT_OFFSET, c.next);
    if c.up_to_date {
        set(rh, headers::STREAM_UP_TO_DATE, "true");
    }
    if c.at_eof() {
        set(rh, headers::STREAM_CLOSED, "true");
    }
    resp
}
