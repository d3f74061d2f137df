//! Routes → RPC over a real nats-server: replies, the service's problems
//! passed through, deadlines, missing services, explicit routes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{Value, json};
use support::{WhoAmI, http, problem, start};
use weir_gateway::GatewayConfig;
use weir_gateway::config::RouteConfig;

fn config() -> GatewayConfig {
    GatewayConfig {
        routes: vec![
            RouteConfig {
                method: "GET".into(),
                path: "/lookup/{id}".into(),
                service: Some("calc".into()),
                endpoint: Some("lookup".into()),
                subject: None,
                idempotent: None,
            },
            RouteConfig {
                method: "POST".into(),
                path: "/nobody".into(),
                service: None,
                endpoint: None,
                subject: Some("nobody.listens.here".into()),
                idempotent: None,
            },
        ],
        ..GatewayConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_over_http() {
    let env = start(config(), weir_layer::LayerConfig::default()).await;
    let c = http();

    // A reply.
    let r = c
        .post(format!("{}/api/calc/divide", env.base))
        .json(&json!({"a": 7, "b": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert!(r.headers().contains_key("x-request-id"));
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"quotient": 3}));

    // The service's own problem: same code, same status, our request id.
    let r = c
        .post(format!("{}/api/calc/divide", env.base))
        .header("x-request-id", "req-divide-by-zero")
        .json(&json!({"a": 1, "b": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let p = problem(r).await;
    assert_eq!(p["code"], "limit_invalid");
    assert_eq!(p["detail"], "division by zero");
    assert_eq!(p["correlation_id"], "req-divide-by-zero");

    // The contract's validation, done by the service, surfaces as its problem.
    let r = c
        .post(format!("{}/api/calc/divide", env.base))
        .json(&json!({"a": "seven", "b": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let p = problem(r).await;
    assert!(p["code"].is_string(), "{p}");

    // Not JSON at all: refused by the gateway.
    let r = c
        .post(format!("{}/api/calc/divide", env.base))
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(problem(r).await["code"], "json_invalid");

    // The caller's deadline travels with the call; a slow handler → 504.
    let r = c
        .post(format!("{}/api/calc/slow", env.base))
        .header("request-timeout", "200")
        .json(&json!({"millis": 5000}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert_eq!(problem(r).await["code"], "deadline_exceeded");

    let r = c
        .post(format!("{}/api/calc/whoami", env.base))
        .header("request-timeout", "1500")
        .header("x-request-id", "req-who")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let who: WhoAmI = r.json().await.unwrap();
    let left = who.deadline_ms.expect("a deadline reached the service");
    assert!(left <= 1500, "{left}");
    assert_eq!(who.correlation_id.as_deref(), Some("req-who"));
    assert_eq!(who.tenant.as_deref(), Some("default"));

    // A malformed deadline.
    let r = c
        .post(format!("{}/api/calc/whoami", env.base))
        .header("request-timeout", "soon")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(problem(r).await["code"], "header_invalid");

    // Unknown endpoint, unknown route.
    let r = c
        .post(format!("{}/api/calc/nothing", env.base))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(problem(r).await["code"], "not_found");
    let r = c
        .get(format!("{}/elsewhere", env.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(problem(r).await["code"], "route_not_found");

    // An explicit route: the path parameter and the query merge into the request.
    let r = c
        .get(format!("{}/lookup/a%20b?verbose=yes", env.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"id": "a b", "verbose": "yes"})
    );

    // Nobody listens: 503 with a stable code.
    let r = c
        .post(format!("{}/nobody", env.base))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(problem(r).await["code"], "service_unavailable");

    // The service stops: its routes answer 503 too.
    env.service.drain().await;
    let r = c
        .post(format!("{}/api/calc/divide", env.base))
        .json(&json!({"a": 1, "b": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(problem(r).await["code"], "service_unavailable");

    // The gateway's own call metrics.
    let m = c
        .get(format!("{}/metrics", env.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("weir_gateway_calls_total{service=\"calc\",endpoint=\"divide\",outcome=\"ok\"}"),
        "{m}"
    );
    assert!(m.contains("outcome=\"timeout\""), "{m}");
}
