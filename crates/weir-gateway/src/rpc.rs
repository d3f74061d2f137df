//! HTTP routes → RPC: the automatic `POST /api/{service}/{endpoint}`, the
//! configured routes, and the gateway's load shedding.

use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, on};
use http::{HeaderValue, StatusCode, header};
use serde_json::{Map, Value};
use weir_layer::problem::{ErrorCode, Problem};

use crate::call::{Caller, Target, invoke, timeout_from};
use crate::config::RouteConfig;
use crate::{GatewayError, State as St};

/// `POST /api/{service}/{endpoint}`: the JSON body is the request.
pub(crate) async fn auto_route(
    State(st): State<St>,
    Path((service, endpoint)): Path<(String, String)>,
    req: Request,
) -> Response {
    let Some(ep) = st.catalog.find(&service, &endpoint).await else {
        return Problem::new(
            ErrorCode::NotFound,
            format!("no endpoint `{endpoint}` on service `{service}`"),
        )
        .into_response();
    };
    let target = Target {
        subject: ep.subject,
        service,
        endpoint,
        idempotent: ep.idempotent,
    };
    forward(&st, req, &target, None)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// Mounts configured route number `index`.
pub(crate) fn mount_route(router: Router<St>, index: usize, r: &RouteConfig) -> Router<St> {
    let filter = method_filter(&r.method).unwrap_or(MethodFilter::POST);
    router.route(
        &r.path,
        on(filter, move |State(st): State<St>, req: Request| async move {
            configured(st, index, req).await
        }),
    )
}

async fn configured(st: St, index: usize, req: Request) -> Response {
    let Some(r) = st.cfg.routes.get(index) else {
        return Problem::internal().into_response();
    };
    let default_idempotent = r.method.eq_ignore_ascii_case("GET");
    let target = if let Some(subject) = &r.subject {
        Target {
            subject: subject.clone(),
            service: crate::call::SUBJECT_LABEL.into(),
            endpoint: r.path.clone(),
            idempotent: r.idempotent.unwrap_or(default_idempotent),
        }
    } else {
        let (Some(service), Some(endpoint)) = (&r.service, &r.endpoint) else {
            return Problem::internal().into_response();
        };
        let Some(ep) = st.catalog.find(service, endpoint).await else {
            return Problem::new(
                ErrorCode::ServiceUnavailable,
                format!("service `{service}` (endpoint `{endpoint}`) is not running"),
            )
            .header(header::RETRY_AFTER, "1")
            .into_response();
        };
        Target {
            subject: ep.subject,
            service: service.clone(),
            endpoint: endpoint.clone(),
            idempotent: r.idempotent.unwrap_or(ep.idempotent || default_idempotent),
        }
    };
    let params = path_params(&r.path, req.uri().path());
    let mut params = params.unwrap_or_default();
    if matches!(r.method.to_ascii_uppercase().as_str(), "GET" | "DELETE") {
        params.extend(query_params(req.uri().query().unwrap_or("")));
    }
    forward(&st, req, &target, Some(params))
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// Reads the body, merges `params`, calls, and answers the reply as JSON.
async fn forward(
    st: &St,
    req: Request,
    target: &Target,
    params: Option<Vec<(String, String)>>,
) -> Result<Response, Problem> {
    let (parts, body) = req.into_parts();
    let caller = Caller::from_parts(&parts).ok_or_else(|| {
        tracing::error!("no Principal in request extensions: the production layer is not mounted");
        Problem::internal()
    })?;
    let timeout = timeout_from(
        &parts.headers,
        Duration::from_millis(st.cfg.default_timeout_ms),
        Duration::from_millis(st.cfg.max_timeout_ms),
    )?;
    let bytes = axum::body::to_bytes(body, st.cfg.max_body_bytes)
        .await
        .map_err(|_| {
            Problem::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "the request body is larger than {} bytes",
                    st.cfg.max_body_bytes
                ),
            )
        })?;
    let body = request_body(&bytes, params.unwrap_or_default())?;
    let reply = invoke(&st.client, &caller, target, body, timeout).await?;
    let mut resp = Response::new(Body::from(reply));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// The request payload: the body (an empty one is `{}`) with path and query
/// parameters merged in as strings. Parameters need an object body.
fn request_body(bytes: &Bytes, params: Vec<(String, String)>) -> Result<Bytes, Problem> {
    let trimmed = bytes.iter().all(u8::is_ascii_whitespace);
    if params.is_empty() && !trimmed {
        // Validate without re-encoding: the service gets the client's bytes.
        serde_json::from_slice::<serde::de::IgnoredAny>(bytes).map_err(json_invalid)?;
        return Ok(bytes.clone());
    }
    let mut obj = if trimmed {
        Map::new()
    } else {
        match serde_json::from_slice::<Value>(bytes).map_err(json_invalid)? {
            Value::Object(o) => o,
            _ => {
                return Err(Problem::new(
                    ErrorCode::JsonInvalid,
                    "this route merges path parameters into the body, which must be a JSON object",
                ));
            }
        }
    };
    for (k, v) in params {
        obj.insert(k, Value::String(v));
    }
    serde_json::to_vec(&Value::Object(obj))
        .map(Bytes::from)
        .map_err(|_| Problem::internal())
}

fn json_invalid(e: serde_json::Error) -> Problem {
    Problem::new(
        ErrorCode::JsonInvalid,
        format!("the request body is not valid JSON: {e}"),
    )
}

/// `{name}` segments of `template` taken from the (already matched) `path`.
fn path_params(template: &str, path: &str) -> Option<Vec<(String, String)>> {
    let t: Vec<&str> = template.trim_matches('/').split('/').collect();
    let p: Vec<&str> = path.trim_matches('/').split('/').collect();
    if t.len() != p.len() {
        return None;
    }
    Some(
        t.iter()
            .zip(p)
            .filter_map(|(t, p)| {
                let name = t.strip_prefix('{')?.strip_suffix('}')?;
                let value = percent_encoding::percent_decode_str(p)
                    .decode_utf8_lossy()
                    .into_owned();
                Some((name.to_owned(), value))
            })
            .collect(),
    )
}

/// `a=1&b=x+y` → pairs (form decoding: `+` is a space).
pub(crate) fn query_params(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let dec = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (dec(k), dec(v))
        })
        .collect()
}

fn method_filter(m: &str) -> Option<MethodFilter> {
    Some(match m.to_ascii_uppercase().as_str() {
        "GET" => MethodFilter::GET,
        "POST" => MethodFilter::POST,
        "PUT" => MethodFilter::PUT,
        "PATCH" => MethodFilter::PATCH,
        "DELETE" => MethodFilter::DELETE,
        _ => return None,
    })
}

/// Refuses routes the router or the call could not serve, at startup.
pub fn check_route(r: &RouteConfig) -> Result<(), GatewayError> {
    let err = |reason: &str| GatewayError::Route {
        method: r.method.clone(),
        path: r.path.clone(),
        reason: reason.to_owned(),
    };
    if method_filter(&r.method).is_none() {
        return Err(err("method must be GET, POST, PUT, PATCH or DELETE"));
    }
    if !r.path.starts_with('/') {
        return Err(err("path must start with `/`"));
    }
    if r.path.contains("{*") {
        return Err(err("wildcard segments are not supported"));
    }
    if r.path == "/openapi.json"
        || r.path == "/events"
        || r.path == "/ws"
        || r.path == "/metrics"
        || r.path.starts_with("/api/")
    {
        return Err(err("the path is one of the gateway's own routes"));
    }
    match (&r.subject, &r.service, &r.endpoint) {
        (Some(s), None, None) => {
            crate::subject::validate(s).map_err(|e| err(&e.to_string()))?;
            if s.contains('*') || s.contains('>') {
                return Err(err("a route's subject cannot have wildcards"));
            }
            Ok(())
        }
        (None, Some(_), Some(_)) => Ok(()),
        _ => Err(err("give either `subject`, or `service` and `endpoint`")),
    }
}

/// `GET /readyz`: the layer's dependencies (rate-limit backend, JWKS, the
/// PostgreSQL key store).
pub(crate) async fn ready(State(st): State<St>) -> Response {
    let h = st.layer.check_health().await;
    let status = if h.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(h)).into_response()
}

/// Unknown paths: the shared `route_not_found`.
pub async fn fallback(req: Request) -> Response {
    Problem::new(
        ErrorCode::RouteNotFound,
        format!("no route for {} {}", req.method(), req.uri().path()),
    )
    .into_response()
}

/// At most `max_in_flight` requests at once (the streams server's shedding
/// policy: refuse early with `Retry-After` rather than queue).
pub(crate) async fn shed(State(st): State<St>, req: Request, next: Next) -> Response {
    let Ok(_permit) = st.in_flight.clone().try_acquire_owned() else {
        return Problem::new(ErrorCode::Overloaded, "too many requests in flight")
            .header(header::RETRY_AFTER, "1")
            .into_response();
    };
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_and_bodies() {
        assert_eq!(
            path_params("/users/{id}/orders/{n}", "/users/a%20b/orders/7"),
            Some(vec![("id".into(), "a b".into()), ("n".into(), "7".into())])
        );
        assert_eq!(
            query_params("a=1&b=x+y&c"),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y".into()),
                ("c".into(), "".into())
            ]
        );
        let b = request_body(
            &Bytes::from_static(b"{\"x\":1}"),
            vec![("id".into(), "7".into())],
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v, serde_json::json!({"x": 1, "id": "7"}));
        assert_eq!(
            request_body(&Bytes::from_static(b"[1]"), vec![("id".into(), "7".into())])
                .unwrap_err()
                .code,
            ErrorCode::JsonInvalid
        );
        assert_eq!(
            request_body(&Bytes::from_static(b"{nope"), vec![])
                .unwrap_err()
                .code,
            ErrorCode::JsonInvalid
        );
        assert_eq!(&request_body(&Bytes::new(), vec![]).unwrap()[..], b"{}");
    }
}
