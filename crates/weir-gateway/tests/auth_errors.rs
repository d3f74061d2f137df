//! Authentication and authorization through the production layer: no
//! credentials, a bad token, a forbidden subscription — all problem+json
//! with a code and the request id — and the caller's JWT forwarded to the
//! service.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::json;
use support::{WhoAmI, http, jwt_layer, orders_for_clerks, problem, start, token};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_errors_are_problems() {
    let env = start(orders_for_clerks(), jwt_layer()).await;
    let c = http();
    let url = format!("{}/api/calc/whoami", env.base);

    // No credentials.
    let r = c
        .post(&url)
        .header("x-request-id", "req-anon")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    assert_eq!(r.headers()["x-request-id"], "req-anon");
    let p = problem(r).await;
    assert_eq!(p["code"], "unauthorized");
    assert_eq!(p["correlation_id"], "req-anon");

    // A token signed with another key.
    let forged = weir_testkit::jwt::hs256(
        b"not-the-secret-not-the-secret-not",
        json!({"sub": "eve", "tenant": "acme", "exp": 4_000_000_000u64}),
    );
    let r = c
        .post(&url)
        .bearer_auth(forged)
        .header("x-request-id", "req-forged")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let p = problem(r).await;
    assert_eq!(p["code"], "unauthorized");
    assert_eq!(p["correlation_id"], "req-forged");

    // A good token: the call goes through and the service sees the token
    // and the tenant.
    let clerk = token("ana", "acme", &["clerk"]);
    let r = c
        .post(&url)
        .bearer_auth(&clerk)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let who: WhoAmI = r.json().await.unwrap();
    assert!(who.token_forwarded);
    assert_eq!(who.tenant.as_deref(), Some("acme"));

    // Authenticated, but not allowed to subscribe there.
    let r = c
        .get(format!("{}/events?subject=users.>", env.base))
        .bearer_auth(&clerk)
        .header("x-request-id", "req-forbidden")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let p = problem(r).await;
    assert_eq!(p["code"], "forbidden");
    assert_eq!(p["correlation_id"], "req-forbidden");

    // Without the role, not even the allowed pattern.
    let r = c
        .get(format!("{}/events?subject=orders.>", env.base))
        .bearer_auth(token("bob", "acme", &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(problem(r).await["code"], "forbidden");

    // A malformed subject.
    let r = c
        .get(format!("{}/events?subject=orders..x", env.base))
        .bearer_auth(&clerk)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(problem(r).await["code"], "header_invalid");
}
