//! Shared by the HTTP integration tests: a small app with the whole layer
//! mounted, and a Prometheus text-format parser.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::response::IntoResponse;
use axum::routing::get;
use http::{Request, Response, StatusCode};
use tower::ServiceExt;
use weir_layer::auth::apikey::{ApiKeyStore, MemoryApiKeyStore};
use weir_layer::auth::jwt::JwtConfig;
use weir_layer::auth::{AuthConfig, AuthMode};
use weir_layer::ratelimit::{KeyBy, Limit, RateLimitConfig, Rule};
use weir_layer::secret::Secret;
use weir_layer::{LayerConfig, Principal, Problem, Production, RequestId};

pub const HS_SECRET: &str = "test-secret-0123456789-0123456789";

/// The layer config the HTTP tests use: auth required (API keys + HS256
/// JWTs), a 2-per-minute limit on `/limited`.
pub fn config() -> LayerConfig {
    let mut auth = AuthConfig {
        mode: AuthMode::Required,
        jwt: Some(JwtConfig {
            hs256_secret: Some(Secret::new(HS_SECRET)),
            ..Default::default()
        }),
        ..Default::default()
    };
    auth.api_keys.enabled = true;
    auth.public_paths.push("/metrics".into());
    let rule = Rule {
        name: "limited".into(),
        methods: vec!["GET".into()],
        path_prefix: "/limited".into(),
        key: KeyBy::Auto,
        cost: 1,
        limits: [(
            "default".to_owned(),
            Limit {
                requests: 2,
                window_secs: 60,
                burst: None,
            },
        )]
        .into_iter()
        .collect(),
    };
    LayerConfig {
        auth,
        rate_limit: RateLimitConfig {
            enabled: true,
            rules: vec![rule],
            ..Default::default()
        },
        ..Default::default()
    }
}

pub struct App {
    pub router: Router,
    pub layer: Production,
}

pub fn app() -> App {
    let store: Arc<dyn ApiKeyStore> = Arc::new(MemoryApiKeyStore::default());
    let layer = Production::build(&config(), Some(store), weir_layer::clock::system()).unwrap();
    let routes = Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route("/limited", get(|| async { "ok" }))
        .route(
            "/whoami",
            get(|p: Principal, id: RequestId| async move {
                axum::Json(serde_json::json!({"principal": p, "request_id": id.as_str()}))
            }),
        )
        .route(
            "/forbidden",
            get(|p: Principal| async move {
                weir_layer::require(&p, weir_layer::Permission::Admin).map(|()| "admin")
            }),
        )
        .route(
            // A problem body built outside the layer (like weir-server's ApiError).
            "/foreign",
            get(|| async {
                (
                    StatusCode::CONFLICT,
                    [(http::header::CONTENT_TYPE, "application/problem+json")],
                    r#"{"type":"urn:weir:problem:stream_closed","title":"Conflict","status":409,"code":"stream_closed","detail":"closed"}"#,
                )
                    .into_response()
            }),
        )
        .route("/metrics", get(weir_layer::http::metrics_handler))
        .fallback(|| async {
            Problem::new(weir_layer::ErrorCode::RouteNotFound, "no such route")
        });
    App {
        router: layer.apply(routes),
        layer,
    }
}

pub async fn send(router: &Router, req: Request<Body>) -> (Response<Body>, axum::body::Bytes) {
    let resp = router.clone().oneshot(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    (Response::from_parts(parts, Body::empty()), bytes)
}

pub fn get_req(path: &str, auth: Option<&str>) -> Request<Body> {
    let mut b = Request::get(path);
    if let Some(a) = auth {
        b = b.header(http::header::AUTHORIZATION, format!("Bearer {a}"));
    }
    b.body(Body::empty()).unwrap()
}

pub fn hs256(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(HS_SECRET.as_bytes()),
    )
    .unwrap()
}

pub fn now() -> u64 {
    weir_layer::clock::Clock::unix_secs(&weir_layer::clock::SystemClock)
}

/// One sample: metric name and sorted labels → value.
pub type Samples = BTreeMap<(String, BTreeMap<String, String>), f64>;

/// Parses the Prometheus text exposition format (0.0.4): comments, samples
/// `name{label="value",…} value [timestamp]`, escaped label values.
pub fn parse_prometheus(text: &str) -> Samples {
    let mut out = Samples::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => panic!("bad sample line {line:?}"),
        };
        let mut labels = BTreeMap::new();
        let rest = if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices().peekable();
            let end;
            loop {
                // label name
                let start = chars.peek().unwrap().0;
                let mut eq = start;
                for (i, c) in chars.by_ref() {
                    if c == '=' {
                        eq = i;
                        break;
                    }
                }
                let key = body[start..eq].trim_start_matches(',').trim().to_owned();
                assert_eq!(chars.next().map(|c| c.1), Some('"'), "in {line:?}");
                let mut value = String::new();
                while let Some((_, c)) = chars.next() {
                    match c {
                        '\\' => match chars.next().unwrap().1 {
                            'n' => value.push('\n'),
                            other => value.push(other),
                        },
                        '"' => break,
                        c => value.push(c),
                    }
                }
                labels.insert(key, value);
                match chars.next() {
                    Some((i, '}')) => {
                        end = i + 1;
                        break;
                    }
                    Some((_, ',')) => {
                        if matches!(chars.peek(), Some((_, '}'))) {
                            end = chars.next().unwrap().0 + 1;
                            break;
                        }
                    }
                    other => panic!("bad labels in {line:?}: {other:?}"),
                }
            }
            &body[end..]
        } else {
            rest
        };
        let value = rest.split_whitespace().next().expect("sample value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        out.insert((name.to_owned(), labels), value);
    }
    out
}

/// The value of `name` with exactly these labels (0 if absent).
pub fn sample(s: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    let key: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    s.get(&(name.to_owned(), key)).copied().unwrap_or(0.0)
}
