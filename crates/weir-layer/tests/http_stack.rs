//! The layer mounted on a real axum router: request ids and problem bodies
//! on every response, authentication, authorization, rate-limit responses.
#![cfg(feature = "http")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::body::Body;
use common::*;
use http::{Request, StatusCode};
use serde_json::{Value, json};
use weir_layer::auth::apikey::NewApiKey;

fn jwt(sub: &str, roles: &[&str]) -> String {
    hs256(json!({"sub": sub, "exp": now() + 300, "tenant": "acme", "roles": roles}))
}

#[tokio::test]
async fn every_response_carries_the_request_id_and_problems_carry_it_too() {
    let app = app();
    let user = jwt("u1", &["writer"]);
    let cases: Vec<(Request<Body>, StatusCode)> = vec![
        (get_req("/ok", Some(&user)), StatusCode::OK),
        (
            get_req("/no/such/route", Some(&user)),
            StatusCode::NOT_FOUND,
        ),
        (get_req("/ok", None), StatusCode::UNAUTHORIZED),
        (
            get_req("/ok", Some("not-a-token")),
            StatusCode::UNAUTHORIZED,
        ),
        (get_req("/forbidden", Some(&user)), StatusCode::FORBIDDEN),
        (get_req("/foreign", Some(&user)), StatusCode::CONFLICT),
        (get_req("/limited", Some(&user)), StatusCode::OK),
        (get_req("/limited", Some(&user)), StatusCode::OK),
        (
            get_req("/limited", Some(&user)),
            StatusCode::TOO_MANY_REQUESTS,
        ),
        (
            Request::post("/ok")
                .header("authorization", format!("Bearer {user}"))
                .body(Body::empty())
                .unwrap(),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
    ];
    let mut ids = std::collections::HashSet::new();
    for (req, want) in cases {
        let path = req.uri().path().to_owned();
        let (resp, body) = send(&app.router, req).await;
        assert_eq!(resp.status(), want, "{path}");
        let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(id.len(), 32, "{path}: generated ids are 32 hex digits");
        assert!(ids.insert(id.clone()), "ids are unique");
        let ct = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        if want.is_client_error() && want != StatusCode::METHOD_NOT_ALLOWED {
            assert_eq!(ct, "application/problem+json", "{path}");
        }
        if ct == "application/problem+json" {
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["correlation_id"], id.as_str(), "{path}: {v}");
            assert_eq!(v["status"], want.as_u16());
            assert!(v["code"].is_string() && v["title"].is_string() && v["detail"].is_string());
        }
    }
}

#[tokio::test]
async fn client_ids_and_traceparent_are_used() {
    let app = app();
    let user = jwt("u1", &[]);
    let mut req = get_req("/whoami", Some(&user));
    req.headers_mut()
        .insert("x-request-id", "client-id-1".parse().unwrap());
    let (resp, body) = send(&app.router, req).await;
    assert_eq!(resp.headers()["x-request-id"], "client-id-1");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        v["request_id"], "client-id-1",
        "the handler sees the same id"
    );

    let mut req = get_req("/nope", None);
    req.headers_mut().insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap(),
    );
    let (resp, body) = send(&app.router, req).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        resp.headers()["x-request-id"],
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["correlation_id"], "4bf92f3577b34da6a3ce929d0e0e4736");

    // An id with a control character is replaced, not echoed.
    let mut req = get_req("/ok", Some(&user));
    req.headers_mut().insert(
        "x-request-id",
        http::HeaderValue::from_bytes(b"a\tb").unwrap(),
    );
    let (resp, _) = send(&app.router, req).await;
    assert_ne!(resp.headers()["x-request-id"], "a\tb");
}

#[tokio::test]
async fn unauthorized_answers_bearer_challenge() {
    let app = app();
    for auth in [None, Some("garbage"), Some("wk_0123456789abcdef_00")] {
        let (resp, body) = send(&app.router, get_req("/ok", auth)).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
        assert!(
            resp.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer")
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["code"], "unauthorized");
    }
    let expired = hs256(json!({"sub": "u", "exp": now() - 3600}));
    let (resp, body) = send(&app.router, get_req("/ok", Some(&expired))).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["detail"], "the token has expired");
    // Public paths and CORS preflights pass without credentials.
    let (resp, _) = send(&app.router, get_req("/metrics", None)).await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn api_keys_work_and_revocation_is_immediate() {
    let app = app();
    let keys = app.layer.authenticator.api_keys().unwrap().clone();
    let created = keys
        .create(NewApiKey {
            tenant: "acme".into(),
            subject: "deployer".into(),
            roles: vec!["admin".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let token = created.token.expose().to_owned();
    let (resp, body) = send(&app.router, get_req("/whoami", Some(&token))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["principal"]["subject"], "deployer");
    assert_eq!(v["principal"]["auth_method"], "api_key");
    assert_eq!(v["principal"]["key_id"], created.record.id.as_str());
    // X-Api-Key works as well.
    let req = Request::get("/forbidden")
        .header("x-api-key", &token)
        .body(Body::empty())
        .unwrap();
    let (resp, _) = send(&app.router, req).await;
    assert_eq!(resp.status(), StatusCode::OK, "admin passes require(Admin)");

    keys.revoke(&created.record.id).await.unwrap();
    let (resp, body) = send(&app.router, get_req("/whoami", Some(&token))).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["detail"], "the API key is not valid");
}

#[tokio::test]
async fn rate_limit_headers_and_429() {
    let app = app();
    let user = jwt("rl-user", &[]);
    let (resp, _) = send(&app.router, get_req("/limited", Some(&user))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["ratelimit-policy"],
        "\"limited.default\";q=2;w=60"
    );
    assert_eq!(resp.headers()["ratelimit"], "\"limited.default\";r=1;t=30");
    send(&app.router, get_req("/limited", Some(&user))).await;
    let (resp, body) = send(&app.router, get_req("/limited", Some(&user))).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((29..=30).contains(&retry), "{retry}");
    assert!(
        resp.headers()["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with("\"limited.default\";r=0;t=")
    );
    assert_eq!(
        resp.headers()["ratelimit-policy"],
        "\"limited.default\";q=2;w=60"
    );
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["code"], "rate_limited");
    assert_eq!(v["violated-policies"], json!(["limited.default"]));
    // Another principal has its own budget; unlimited routes carry no headers.
    let other = jwt("rl-other", &[]);
    let (resp, _) = send(&app.router, get_req("/limited", Some(&other))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let (resp, _) = send(&app.router, get_req("/ok", Some(&user))).await;
    assert!(resp.headers().get("ratelimit").is_none());
}

#[test]
fn prometheus_parser_reads_the_text_format() {
    let text = "# HELP x help\n# TYPE x counter\nx 3\ny{a=\"1\",b=\"q\\\"uote\\\\n\"} 2.5\nz{le=\"+Inf\",} 7 1700000000\n";
    let s = parse_prometheus(text);
    assert_eq!(sample(&s, "x", &[]), 3.0);
    assert_eq!(sample(&s, "y", &[("a", "1"), ("b", "q\"uote\\n")]), 2.5);
    assert_eq!(sample(&s, "z", &[("le", "+Inf")]), 7.0);
}
