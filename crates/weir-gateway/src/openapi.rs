//! `GET /openapi.json` — an OpenAPI 3.1 document generated from the
//! contracts the services publish in `$SRV.INFO`.
//!
//! Contract schemas are JSON Schema 2020-12 documents with their own
//! `$defs`; OpenAPI 3.1 resolves `#/…` references against the OpenAPI
//! document, not the embedded schema, so each `$defs` entry is hoisted into
//! `components.schemas` under the schema's prefix and its references are
//! rewritten. Served as generated on each request (the catalog changes as
//! services come and go; generation is cheap next to a network round trip).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use weir_layer::auth::AuthMode;

use crate::State as St;
use crate::catalog::Snapshot;
use crate::config::RouteConfig;

/// Which security schemes to declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Security {
    pub mode: AuthMode,
    pub jwt: bool,
    pub api_keys: bool,
}

pub(crate) async fn handler(State(st): State<St>) -> Response {
    let auth = &st.layer.authenticator;
    let sec = Security {
        mode: auth.mode(),
        jwt: auth.jwt().is_some(),
        api_keys: auth.api_keys().is_some(),
    };
    let doc = document(
        &st.catalog.snapshot(),
        &st.cfg.routes,
        st.cfg.auto_routes,
        sec,
    );
    axum::Json(doc).into_response()
}

/// The whole document.
pub fn document(snap: &Snapshot, routes: &[RouteConfig], auto: bool, sec: Security) -> Value {
    let mut schemas = Map::new();
    schemas.insert("Problem".into(), problem_schema());
    let mut paths = Map::new();
    if auto {
        for svc in snap.services.values() {
            for ep in svc.endpoints.values() {
                let base = component_name(&format!("{}.{}", svc.name, ep.name));
                let req = ep
                    .request_schema
                    .as_ref()
                    .map(|s| hoist(&format!("{base}.Request"), s, &mut schemas));
                let resp = ep
                    .response_schema
                    .as_ref()
                    .map(|s| hoist(&format!("{base}.Response"), s, &mut schemas));
                let mut op = operation(&base, &svc.name, &svc.description, &ep.name, req, resp);
                if ep.idempotent {
                    op.insert("x-weir-idempotent".into(), true.into());
                }
                let mut item = Map::new();
                item.insert("post".into(), Value::Object(op));
                paths.insert(
                    format!("/api/{}/{}", svc.name, ep.name),
                    Value::Object(item),
                );
            }
        }
    }
    for r in routes {
        let (req, resp, tag) = match (&r.service, &r.endpoint) {
            (Some(s), Some(e)) => {
                let ep = snap.endpoint(s, e);
                let base = component_name(&format!("{s}.{e}"));
                let req = ep
                    .and_then(|ep| ep.request_schema.as_ref())
                    .map(|x| hoist(&format!("{base}.Request"), x, &mut schemas));
                let resp = ep
                    .and_then(|ep| ep.response_schema.as_ref())
                    .map(|x| hoist(&format!("{base}.Response"), x, &mut schemas));
                (req, resp, s.clone())
            }
            _ => (None, None, "routes".to_owned()),
        };
        let method = r.method.to_ascii_lowercase();
        let id = component_name(&format!("{method}{}", r.path.replace('/', ".")));
        let with_body = !matches!(method.as_str(), "get" | "delete");
        let mut op = operation(
            &id,
            &tag,
            "",
            &r.path,
            if with_body { req } else { None },
            resp,
        );
        let params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| {
                json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}})
            })
            .collect();
        if let Some(Value::Array(ps)) = op.get_mut("parameters") {
            ps.extend(params);
        }
        let item = paths
            .entry(r.path.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(item) = item {
            item.insert(method, Value::Object(op));
        }
    }
    paths.insert("/events".into(), events_path());

    let mut components = Map::new();
    components.insert("schemas".into(), Value::Object(schemas));
    components.insert(
        "responses".into(),
        json!({"Problem": {
            "description": "An RFC 9457 problem; match on `code` (docs/errors.md).",
            "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
        }}),
    );
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Weir service gateway",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Generated from the contracts the services publish in $SRV.INFO (docs/gateway.md)."
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "paths": paths,
    });
    let mut schemes = Map::new();
    if sec.mode != AuthMode::None {
        if sec.jwt || sec.api_keys {
            schemes.insert(
                "bearer".into(),
                json!({"type": "http", "scheme": "bearer", "bearerFormat": if sec.jwt { "JWT" } else { "API key (wk_…)" }}),
            );
        }
        if sec.api_keys {
            schemes.insert(
                "apiKey".into(),
                json!({"type": "apiKey", "in": "header", "name": "X-Api-Key"}),
            );
        }
        let mut reqs: Vec<Value> = schemes.keys().map(|k| json!({ k.clone(): [] })).collect();
        if sec.mode == AuthMode::Optional {
            reqs.push(json!({}));
        }
        doc["security"] = Value::Array(reqs);
    }
    if !schemes.is_empty() {
        components.insert("securitySchemes".into(), Value::Object(schemes));
    }
    doc["components"] = Value::Object(components);
    doc
}

fn operation(
    id: &str,
    tag: &str,
    description: &str,
    summary: &str,
    req: Option<Value>,
    resp: Option<Value>,
) -> Map<String, Value> {
    let mut op = Map::new();
    op.insert("operationId".into(), id.into());
    op.insert("tags".into(), json!([tag]));
    op.insert("summary".into(), summary.into());
    if !description.is_empty() {
        op.insert("description".into(), description.into());
    }
    op.insert(
        "parameters".into(),
        json!([{
            "name": "Request-Timeout", "in": "header", "required": false,
            "description": "The call's deadline in milliseconds (capped by the gateway).",
            "schema": {"type": "integer", "minimum": 1}
        }]),
    );
    if let Some(req) = req {
        op.insert(
            "requestBody".into(),
            json!({"required": true, "content": {"application/json": {"schema": req}}}),
        );
    }
    let ok_schema = resp.unwrap_or_else(|| json!({}));
    let mut responses = Map::new();
    responses.insert(
        "200".into(),
        json!({"description": "The service's reply.", "content": {"application/json": {"schema": ok_schema}}}),
    );
    for status in ["400", "401", "403", "404", "413", "429", "503", "504"] {
        responses.insert(
            status.into(),
            json!({"$ref": "#/components/responses/Problem"}),
        );
    }
    responses.insert(
        "default".into(),
        json!({"$ref": "#/components/responses/Problem"}),
    );
    op.insert("responses".into(), Value::Object(responses));
    op
}

fn events_path() -> Value {
    json!({"get": {
        "operationId": "events",
        "tags": ["events"],
        "summary": "Subscribe to NATS subjects as Server-Sent Events",
        "parameters": [{
            "name": "subject", "in": "query", "required": true,
            "description": "A NATS subject pattern; repeat for several.",
            "schema": {"type": "array", "items": {"type": "string"}},
            "style": "form", "explode": true
        }],
        "responses": {
            "200": {"description": "`event: message` with `{subject, data}`; heartbeats as comments.",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}}},
            "400": {"$ref": "#/components/responses/Problem"},
            "401": {"$ref": "#/components/responses/Problem"},
            "403": {"$ref": "#/components/responses/Problem"},
            "429": {"$ref": "#/components/responses/Problem"}
        }
    }})
}

fn problem_schema() -> Value {
    json!({
        "type": "object",
        "required": ["type", "title", "status", "code"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "code": {"type": "string", "description": "Stable error code (docs/errors.md)."},
            "detail": {"type": "string"},
            "correlation_id": {"type": "string"}
        }
    })
}

/// OpenAPI component names allow `[A-Za-z0-9._-]` only.
fn component_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect::<String>()
        .trim_matches('.')
        .to_owned()
}

/// Puts `schema` (and its `$defs`) into `schemas` under `name` and returns
/// a reference to it.
fn hoist(name: &str, schema: &Value, schemas: &mut Map<String, Value>) -> Value {
    let mut schema = schema.clone();
    let mut defs = Map::new();
    if let Value::Object(o) = &mut schema {
        o.remove("$schema");
        for key in ["$defs", "definitions"] {
            if let Some(Value::Object(d)) = o.remove(key) {
                defs.extend(d);
            }
        }
    }
    for (def, mut v) in defs {
        rewrite_refs(name, &mut v);
        schemas.insert(format!("{name}.{}", component_name(&def)), v);
    }
    rewrite_refs(name, &mut schema);
    schemas.insert(name.to_owned(), schema);
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn rewrite_refs(prefix: &str, v: &mut Value) {
    match v {
        Value::Object(o) => {
            for (k, x) in o.iter_mut() {
                if k == "$ref"
                    && let Value::String(r) = x
                {
                    if let Some(def) = r
                        .strip_prefix("#/$defs/")
                        .or_else(|| r.strip_prefix("#/definitions/"))
                    {
                        *r = format!("#/components/schemas/{prefix}.{}", component_name(def));
                    } else if r == "#" {
                        *r = format!("#/components/schemas/{prefix}");
                    }
                } else {
                    rewrite_refs(prefix, x);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| rewrite_refs(prefix, x)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defs_are_hoisted_and_refs_rewritten() {
        let mut schemas = Map::new();
        let s = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {"item": {"$ref": "#/$defs/Item"}},
            "$defs": {"Item": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Item"}}}}
        });
        let r = hoist("shop.order.Request", &s, &mut schemas);
        assert_eq!(
            r,
            json!({"$ref": "#/components/schemas/shop.order.Request"})
        );
        assert_eq!(
            schemas["shop.order.Request"]["properties"]["item"]["$ref"],
            "#/components/schemas/shop.order.Request.Item"
        );
        assert_eq!(
            schemas["shop.order.Request.Item"]["properties"]["next"]["$ref"],
            "#/components/schemas/shop.order.Request.Item"
        );
        assert!(schemas["shop.order.Request"].get("$defs").is_none());
        assert!(schemas["shop.order.Request"].get("$schema").is_none());
    }
}
