//! The production layer's rate limits in front of the routes: 429
//! problem+json with `Retry-After` and the `RateLimit` headers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::json;
use support::{http, problem, start, toml_layer};
use weir_gateway::GatewayConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_calls_are_problems() {
    // Two calls, then one per 30 s: no refill during the test.
    let layer = toml_layer(
        r#"
[rate_limit]
enabled = true

[[rate_limit.rules]]
name = "api"
path_prefix = "/api/"
key = "auto"
limits.default = { requests = 2, window_secs = 60, burst = 2 }
limits.anonymous = { requests = 2, window_secs = 60, burst = 2 }
"#,
    );
    let env = start(GatewayConfig::default(), layer).await;
    let c = http();
    let url = format!("{}/api/calc/divide", env.base);
    for _ in 0..2 {
        let r = c
            .post(&url)
            .json(&json!({"a": 4, "b": 2}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers().contains_key("ratelimit"), "{:?}", r.headers());
    }
    let r = c
        .post(&url)
        .header("x-request-id", "req-limited")
        .json(&json!({"a": 4, "b": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    assert!(r.headers().contains_key("ratelimit"));
    assert!(r.headers().contains_key("ratelimit-policy"));
    let p = problem(r).await;
    assert_eq!(p["code"], "rate_limited");
    assert_eq!(p["correlation_id"], "req-limited");

    // Routes outside the rule are not limited.
    let r = c
        .get(format!("{}/openapi.json", env.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
