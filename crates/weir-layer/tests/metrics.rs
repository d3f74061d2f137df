//! `/metrics` scraped and parsed: counters move by exactly what the test did.
//! (Its own test binary: the Prometheus recorder is process-global.)
#![cfg(feature = "http")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use http::StatusCode;
use serde_json::json;
use weir_layer::metrics::names;

async fn scrape(app: &App) -> Samples {
    let (resp, body) = send(&app.router, get_req("/metrics", None)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    parse_prometheus(std::str::from_utf8(&body).unwrap())
}

#[tokio::test]
async fn counters_move_by_the_expected_amounts() {
    weir_layer::metrics::install().unwrap();
    // Idempotent.
    weir_layer::metrics::install().unwrap();
    let app = app();
    let user = hs256(json!({"sub": "m", "exp": now() + 300}));
    let before = scrape(&app).await;

    for _ in 0..5 {
        assert_eq!(
            send(&app.router, get_req("/ok", Some(&user)))
                .await
                .0
                .status(),
            200
        );
    }
    for _ in 0..3 {
        assert_eq!(
            send(&app.router, get_req("/ok", None)).await.0.status(),
            401
        );
    }
    assert_eq!(
        send(&app.router, get_req("/ok", Some("bad.token.x")))
            .await
            .0
            .status(),
        401
    );
    assert_eq!(
        send(&app.router, get_req("/nope", Some(&user)))
            .await
            .0
            .status(),
        404
    );
    for _ in 0..4 {
        send(&app.router, get_req("/limited", Some(&user))).await;
    }

    let after = scrape(&app).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        sample(&after, name, labels) - sample(&before, name, labels)
    };
    let ok = [("route", "/ok"), ("method", "GET"), ("status", "200")];
    assert_eq!(delta(names::HTTP_REQUESTS, &ok), 5.0);
    assert_eq!(
        delta(
            names::HTTP_REQUESTS,
            &[("route", "/ok"), ("method", "GET"), ("status", "401")]
        ),
        4.0
    );
    assert_eq!(
        delta(
            names::HTTP_REQUESTS,
            &[("route", "unmatched"), ("method", "GET"), ("status", "404")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            names::HTTP_REQUESTS,
            &[("route", "/limited"), ("method", "GET"), ("status", "429")]
        ),
        2.0
    );
    // The latency histogram saw every /ok request (9), each in the +Inf bucket.
    let hist = format!("{}_count", names::HTTP_DURATION);
    assert_eq!(delta(&hist, &[("route", "/ok"), ("method", "GET")]), 9.0);
    let inf = format!("{}_bucket", names::HTTP_DURATION);
    assert_eq!(
        delta(&inf, &[("route", "/ok"), ("method", "GET"), ("le", "+Inf")]),
        9.0
    );
    assert_eq!(
        delta(
            names::AUTH_FAILURES,
            &[("method", "none"), ("reason", "missing")]
        ),
        3.0
    );
    assert_eq!(
        delta(
            names::AUTH_FAILURES,
            &[("method", "jwt"), ("reason", "malformed")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            names::RATELIMIT_REJECTIONS,
            &[("policy", "limited.default")]
        ),
        2.0
    );
    assert_eq!(
        sample(&after, names::HTTP_IN_FLIGHT, &[]),
        1.0,
        "the scrape itself is in flight"
    );
    assert!(after.keys().any(|(n, _)| n == names::RATELIMIT_BACKEND_UP));
}
