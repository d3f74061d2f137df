//! Path tenant mode (`authz.tenant_source = "path"`): URLs carry the tenant,
//! `/t/{tenant}/v1/stream/…`. The tenant in the URL must be the caller's;
//! another tenant's URL answers exactly like a missing stream, `Location`
//! and fork sources use the tenant's URL space, and the tenant-free routes
//! are not served.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

const SECRET: &str = "path-mode-secret-path-mode-secret!!";

fn token(tenant: &str) -> String {
    common::idp_token(
        SECRET,
        serde_json::json!({"sub": format!("user-{tenant}"), "tenant": tenant, "roles": ["manager"]}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenant_comes_from_the_url_and_must_be_the_callers() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::config_file(
        dir.path(),
        &format!(
            "{}[authz]\ntenant_source = \"path\"\n",
            common::jwt_auth(SECRET)
        ),
    );
    let served = common::serve_memory(&cfg).await;
    let base = served.base.clone();
    let c = reqwest::Client::new();
    let (a, b) = (token("alpha"), token("beta"));
    let url = |t: &str, p: &str| format!("{base}/t/{t}/v1/stream/{p}");

    let r = c
        .put(url("alpha", "log"))
        .bearer_auth(&a)
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(
        loc,
        url("alpha", "log"),
        "Location is in the tenant's URL space"
    );
    let r = c.get(&loc).bearer_auth(&a).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "hello");

    // Beta: through alpha's URL the stream does not exist, for every method.
    for m in ["GET", "HEAD", "POST", "DELETE", "PUT"] {
        let r = c
            .request(m.parse().unwrap(), url("alpha", "log"))
            .bearer_auth(&b)
            .header("content-type", "text/plain")
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{m} on a foreign tenant's URL");
    }
    // Through its own URL space beta has no such stream either.
    let r = c
        .get(url("beta", "log"))
        .bearer_auth(&b)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // Listing: own tenant only; a foreign tenant's listing is 404.
    let r = c
        .get(format!("{base}/t/alpha/_weir/streams"))
        .bearer_auth(&a)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    assert!(body.contains("\"log\""), "{body}");
    assert!(!body.contains("alpha/"), "storage names never leak: {body}");
    let r = c
        .get(format!("{base}/t/alpha/_weir/streams"))
        .bearer_auth(&b)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Forks take the source in the tenant's URL space; another tenant's
    // source is unknown.
    let r = c
        .put(url("alpha", "fork"))
        .bearer_auth(&a)
        .header("stream-forked-from", "/t/alpha/v1/stream/log")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = c
        .put(url("beta", "stolen"))
        .bearer_auth(&b)
        .header("stream-forked-from", "/t/alpha/v1/stream/log")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Malformed tenant ids and the tenant-free routes.
    let r = c
        .get(url("Alpha", "log"))
        .bearer_auth(&a)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["code"], "tenant_invalid");
    let r = c
        .get(format!("{base}/v1/stream/log"))
        .bearer_auth(&a)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["code"], "route_not_found");
}
