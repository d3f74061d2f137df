//! Typed contracts: JSON Schemas of request/response/event types, a version
//! hash published in `$SRV` INFO metadata, the client-side compatibility
//! check, payload validation against the published schema, and the typed
//! handler adapter the `#[service]` macro uses.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};
use weir_layer::problem::{ErrorCode, Problem};

use crate::context::Ctx;
use crate::micro::InfoResponse;
use crate::middleware::{BoxHandler, Reply, Request};

/// Service metadata key: the contract version (semver).
pub const META_VERSION: &str = "weir.contract.version";
/// Service metadata key: hash of the whole contract.
pub const META_HASH: &str = "weir.contract.hash";
/// Service metadata key: `{subject: schema}` of the events the service publishes.
pub const META_EVENTS: &str = "weir.events";
/// Endpoint metadata keys: request and response JSON Schemas.
pub const META_REQUEST: &str = "weir.schema.request";
pub const META_RESPONSE: &str = "weir.schema.response";
pub const META_IDEMPOTENT: &str = "weir.idempotent";

/// The JSON Schema of `T`.
pub fn schema_of<T: JsonSchema>() -> Value {
    schemars::SchemaGenerator::default()
        .into_root_schema_for::<T>()
        .to_value()
}

/// One method of a contract.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MethodContract {
    pub name: String,
    pub request: Value,
    pub response: Value,
    pub idempotent: bool,
}

/// One event type a service publishes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventContract {
    pub subject: String,
    pub schema: Value,
}

/// A service's published contract.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Contract {
    pub name: String,
    pub version: String,
    pub methods: Vec<MethodContract>,
    pub events: Vec<EventContract>,
}

impl Contract {
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Contract {
        Contract {
            name: name.into(),
            version: version.into(),
            methods: Vec::new(),
            events: Vec::new(),
        }
    }

    pub fn method<Req: JsonSchema, Resp: JsonSchema>(
        mut self,
        name: &str,
        idempotent: bool,
    ) -> Contract {
        self.methods.push(MethodContract {
            name: name.to_owned(),
            request: schema_of::<Req>(),
            response: schema_of::<Resp>(),
            idempotent,
        });
        self
    }

    pub fn event<T: JsonSchema>(mut self, subject: &str) -> Contract {
        self.events.push(EventContract {
            subject: subject.to_owned(),
            schema: schema_of::<T>(),
        });
        self
    }

    /// The version's major number (`1.4.2` → 1).
    pub fn major(&self) -> Option<u64> {
        major(&self.version)
    }

    /// SHA-256 (first 16 hex digits) of the canonical contract JSON.
    pub fn hash(&self) -> String {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        let d = Sha256::digest(&bytes);
        d.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }

    /// Per-endpoint INFO metadata (schemas as JSON strings).
    pub fn endpoint_metadata(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        self.methods
            .iter()
            .map(|m| {
                let mut md = BTreeMap::new();
                md.insert(META_REQUEST.to_owned(), m.request.to_string());
                md.insert(META_RESPONSE.to_owned(), m.response.to_string());
                md.insert(META_IDEMPOTENT.to_owned(), m.idempotent.to_string());
                (m.name.clone(), md)
            })
            .collect()
    }

    /// Checks that the service described by `info` accepts what this
    /// (client-side) contract sends: same major version, every method
    /// present, every request schema accepted by the service's.
    pub fn check_compatible(&self, info: &InfoResponse) -> Result<(), String> {
        let theirs = info
            .metadata
            .get(META_VERSION)
            .ok_or_else(|| format!("service `{}` publishes no contract", info.name))?;
        if major(theirs) != self.major() {
            return Err(format!(
                "service `{}` speaks contract {theirs}, this client {}",
                info.name, self.version
            ));
        }
        for m in &self.methods {
            let ep = info
                .endpoints
                .iter()
                .find(|e| e.name == m.name)
                .ok_or_else(|| format!("service `{}` has no method `{}`", info.name, m.name))?;
            let schema: Value = ep
                .metadata
                .get(META_REQUEST)
                .and_then(|s| serde_json::from_str(s).ok())
                .ok_or_else(|| format!("method `{}` publishes no request schema", m.name))?;
            accepts(
                &schema,
                &schema,
                &m.request,
                &m.request,
                &format!("{}.request", m.name),
            )?;
        }
        Ok(())
    }
}

fn major(v: &str) -> Option<u64> {
    v.trim_start_matches('v').split('.').next()?.parse().ok()
}

fn resolve<'a>(root: &'a Value, s: &'a Value) -> &'a Value {
    let mut cur = s;
    for _ in 0..32 {
        match cur.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let name = r.rsplit('/').next().unwrap_or("");
                match root
                    .get("$defs")
                    .or_else(|| root.get("definitions"))
                    .and_then(|d| d.get(name))
                {
                    Some(t) => cur = t,
                    None => return cur,
                }
            }
            None => return cur,
        }
    }
    cur
}

fn types(s: &Value) -> Option<Vec<String>> {
    match s.get("type")? {
        Value::String(t) => Some(vec![t.clone()]),
        Value::Array(a) => Some(
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
        ),
        _ => None,
    }
}

/// Whether every value valid under `client` is accepted by `service` —
/// structurally: types agree, the service requires nothing the client may
/// omit, and refuses no property the client sends.
fn accepts(
    sroot: &Value,
    service: &Value,
    croot: &Value,
    client: &Value,
    path: &str,
) -> Result<(), String> {
    let s = resolve(sroot, service);
    let c = resolve(croot, client);
    if s.as_bool() == Some(true) || s.as_object().is_some_and(|o| o.is_empty()) {
        return Ok(());
    }
    if let (Some(st), Some(ct)) = (types(s), types(c)) {
        let ok = ct
            .iter()
            .all(|t| st.contains(t) || (t == "integer" && st.iter().any(|x| x == "number")));
        if !ok {
            return Err(format!(
                "{path}: client sends {ct:?}, service accepts {st:?}"
            ));
        }
    }
    let cprops = c.get("properties").and_then(Value::as_object);
    let sprops = s.get("properties").and_then(Value::as_object);
    let creq: Vec<&str> = c
        .get("required")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if let Some(sreq) = s.get("required").and_then(Value::as_array) {
        for r in sreq.iter().filter_map(Value::as_str) {
            if !creq.contains(&r) {
                return Err(format!(
                    "{path}: service requires `{r}`, which the client may not send"
                ));
            }
        }
    }
    if let Some(cp) = cprops {
        for (k, cv) in cp {
            match sprops.and_then(|sp| sp.get(k)) {
                Some(sv) => accepts(sroot, sv, croot, cv, &format!("{path}.{k}"))?,
                None => {
                    if s.get("additionalProperties") == Some(&Value::Bool(false)) {
                        return Err(format!("{path}: service refuses unknown property `{k}`"));
                    }
                }
            }
        }
    }
    if let (Some(si), Some(ci)) = (s.get("items"), c.get("items")) {
        accepts(sroot, si, croot, ci, &format!("{path}[]"))?;
    }
    Ok(())
}

/// Validates `v` against the subset of JSON Schema that schemars emits
/// (types, required, properties, additionalProperties, enum/const, numeric
/// and length bounds, items, `$ref`, anyOf/oneOf/allOf).
pub fn validate(root: &Value, schema: &Value, v: &Value, path: &str) -> Result<(), String> {
    let s = resolve(root, schema);
    if s.as_bool() == Some(false) {
        return Err(format!("{path}: not allowed"));
    }
    let Some(o) = s.as_object() else {
        return Ok(());
    };
    if let Some(ts) = types(s) {
        let ok = ts.iter().any(|t| match t.as_str() {
            "null" => v.is_null(),
            "boolean" => v.is_boolean(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "string" => v.is_string(),
            "array" => v.is_array(),
            "object" => v.is_object(),
            _ => true,
        });
        if !ok {
            return Err(format!("{path}: expected {}", ts.join(" or ")));
        }
    }
    if let Some(e) = o.get("enum").and_then(Value::as_array)
        && !e.contains(v)
    {
        return Err(format!("{path}: not one of the allowed values"));
    }
    if let Some(c) = o.get("const")
        && c != v
    {
        return Err(format!("{path}: must be {c}"));
    }
    if let Some(n) = v.as_f64() {
        if o.get("minimum")
            .and_then(Value::as_f64)
            .is_some_and(|m| n < m)
        {
            return Err(format!("{path}: below the minimum"));
        }
        if o.get("maximum")
            .and_then(Value::as_f64)
            .is_some_and(|m| n > m)
        {
            return Err(format!("{path}: above the maximum"));
        }
    }
    if let Some(st) = v.as_str() {
        let len = st.chars().count() as u64;
        if o.get("minLength")
            .and_then(Value::as_u64)
            .is_some_and(|m| len < m)
        {
            return Err(format!(
                "{path}: shorter than {} characters",
                o["minLength"]
            ));
        }
        if o.get("maxLength")
            .and_then(Value::as_u64)
            .is_some_and(|m| len > m)
        {
            return Err(format!("{path}: longer than {} characters", o["maxLength"]));
        }
    }
    if let Some(a) = v.as_array() {
        let n = a.len() as u64;
        if o.get("minItems")
            .and_then(Value::as_u64)
            .is_some_and(|m| n < m)
            || o.get("maxItems")
                .and_then(Value::as_u64)
                .is_some_and(|m| n > m)
        {
            return Err(format!("{path}: wrong number of items"));
        }
        if let Some(is) = o.get("items") {
            for (i, x) in a.iter().enumerate() {
                validate(root, is, x, &format!("{path}[{i}]"))?;
            }
        }
    }
    if let Some(obj) = v.as_object() {
        if let Some(req) = o.get("required").and_then(Value::as_array) {
            for r in req.iter().filter_map(Value::as_str) {
                if !obj.contains_key(r) {
                    return Err(format!("{path}.{r}: required"));
                }
            }
        }
        let props = o.get("properties").and_then(Value::as_object);
        for (k, x) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(ps) => validate(root, ps, x, &format!("{path}.{k}"))?,
                None => {
                    if o.get("additionalProperties") == Some(&Value::Bool(false)) {
                        return Err(format!("{path}.{k}: unknown property"));
                    }
                }
            }
        }
    }
    for key in ["allOf"] {
        if let Some(all) = o.get(key).and_then(Value::as_array) {
            for sub in all {
                validate(root, sub, v, path)?;
            }
        }
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(any) = o.get(key).and_then(Value::as_array)
            && !any.iter().any(|sub| validate(root, sub, v, path).is_ok())
        {
            return Err(format!("{path}: matches none of the allowed shapes"));
        }
    }
    Ok(())
}

/// Whether a schema has constraints serde does not already enforce (so
/// validating a payload against it can refuse something decoding accepts).
pub fn has_constraints(s: &Value) -> bool {
    match s {
        Value::Object(o) => o.iter().any(|(k, v)| {
            matches!(
                k.as_str(),
                "minimum"
                    | "maximum"
                    | "minLength"
                    | "maxLength"
                    | "minItems"
                    | "maxItems"
                    | "pattern"
            ) || has_constraints(v)
        }),
        Value::Array(a) => a.iter().any(has_constraints),
        _ => false,
    }
}

/// Decodes a JSON payload (an empty payload reads as `null`).
pub fn decode_json<T: DeserializeOwned>(payload: &[u8]) -> Result<T, Problem> {
    let bytes: &[u8] = if payload.is_empty() { b"null" } else { payload };
    serde_json::from_slice(bytes)
        .map_err(|e| Problem::new(ErrorCode::JsonInvalid, format!("invalid request: {e}")))
}

/// Adapts a typed async function into an endpoint handler: decodes (and
/// validates against `schema` when it has constraints) the request, encodes
/// the response.
pub fn typed_handler<Req, Resp, F, Fut>(schema: Value, f: F) -> BoxHandler
where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
    F: Fn(Ctx, Req) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, Problem>> + Send + 'static,
{
    let schema = has_constraints(&schema).then(|| Arc::new(schema));
    let f = Arc::new(f);
    Arc::new(move |req: Request| {
        let f = f.clone();
        let schema = schema.clone();
        async move {
            let input: Req = match &schema {
                None => decode_json(&req.payload)?,
                Some(s) => {
                    let v: Value = decode_json(&req.payload)?;
                    validate(s, s, &v, "$").map_err(|e| {
                        Problem::new(ErrorCode::JsonInvalid, format!("invalid request: {e}"))
                    })?;
                    serde_json::from_value(v).map_err(|e| {
                        Problem::new(ErrorCode::JsonInvalid, format!("invalid request: {e}"))
                    })?
                }
            };
            let out = f(req.ctx, input).await?;
            let body = serde_json::to_vec(&out).map_err(|_| Problem::internal())?;
            Ok(Reply::new(Bytes::from(body)))
        }
    })
}

/// Implemented by `#[service]` for the annotated type.
pub trait ServiceContract: Send + Sync + Sized + 'static {
    const NAME: &'static str;
    const VERSION: &'static str;
    const DESCRIPTION: &'static str;
    fn contract() -> Contract;
    /// Adds the endpoints (and the contract metadata) to `builder`.
    fn mount(
        self: Arc<Self>,
        builder: crate::server::ServiceBuilder,
    ) -> crate::server::ServiceBuilder;
    /// A builder named and versioned after the contract, with the endpoints.
    fn builder(self) -> crate::server::ServiceBuilder {
        let b = crate::server::ServiceBuilder::new(Self::NAME, Self::VERSION)
            .description(Self::DESCRIPTION)
            .contract(Self::contract());
        Arc::new(self).mount(b)
    }
}

/// Fetches the INFO of a running instance of `contract.name` and checks
/// compatibility (see [`Contract::check_compatible`]).
pub async fn check_service(
    client: &crate::client::Client,
    contract: &Contract,
) -> Result<(), crate::error::ServiceError> {
    use crate::error::ServiceError;
    let d = crate::micro::Discovery::new(client.transport().clone());
    let info = d
        .info_one(&contract.name)
        .await?
        .ok_or_else(|| ServiceError::NoResponders(format!("$SRV.INFO.{}", contract.name)))?;
    contract
        .check_compatible(&info)
        .map_err(ServiceError::Incompatible)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, JsonSchema)]
    struct V1 {
        name: String,
    }

    #[derive(Serialize, Deserialize, JsonSchema)]
    struct V2 {
        name: String,
        #[serde(default)]
        greeting: Option<String>,
    }

    #[derive(Serialize, Deserialize, JsonSchema)]
    struct NeedsMore {
        name: String,
        lang: String,
    }

    #[derive(Serialize, Deserialize, JsonSchema)]
    struct Bounded {
        #[schemars(length(min = 1, max = 5))]
        name: String,
        #[schemars(range(max = 10))]
        n: u32,
    }

    #[test]
    fn evolution_rules() {
        let v1 = schema_of::<V1>();
        let v2 = schema_of::<V2>();
        let more = schema_of::<NeedsMore>();
        // A new optional field: old clients are accepted.
        assert!(accepts(&v2, &v2, &v1, &v1, "$").is_ok());
        // A new required field: refused.
        assert!(accepts(&more, &more, &v1, &v1, "$").is_err());
    }

    #[test]
    fn validation_enforces_bounds() {
        let s = schema_of::<Bounded>();
        assert!(has_constraints(&s));
        assert!(!has_constraints(&schema_of::<V1>()));
        let ok = serde_json::json!({"name": "ab", "n": 3});
        assert!(validate(&s, &s, &ok, "$").is_ok());
        let long = serde_json::json!({"name": "abcdefg", "n": 3});
        assert!(validate(&s, &s, &long, "$").is_err());
        let big = serde_json::json!({"name": "a", "n": 30});
        assert!(validate(&s, &s, &big, "$").is_err());
        let missing = serde_json::json!({"n": 3});
        assert!(validate(&s, &s, &missing, "$").is_err());
    }

    #[test]
    fn hash_changes_with_schema() {
        let a = Contract::new("x", "1.0.0").method::<V1, V1>("m", false);
        let b = Contract::new("x", "1.0.0").method::<V2, V1>("m", false);
        assert_ne!(a.hash(), b.hash());
        assert_eq!(a.hash(), a.clone().hash());
        assert_eq!(a.major(), Some(1));
    }
}
