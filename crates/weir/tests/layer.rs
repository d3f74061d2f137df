//! The production layer in a real `weir serve`: authentication required,
//! problem+json with correlation ids, request ids echoed, `/metrics`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

const SECRET: &str = "test-secret-test-secret-test-secret!";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_auth_guards_streams_and_errors_carry_correlation_ids() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::config_file(dir.path(), &common::jwt_auth(SECRET));
    let served = common::serve_memory(&cfg).await;
    let (mut child, base) = (served.child, served.base);
    let client = reqwest::Client::new();

    let r = client
        .put(format!("{base}/v1/stream/guarded"))
        .header("x-request-id", "req-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["x-request-id"], "req-123");
    assert!(r.headers().contains_key("www-authenticate"));
    let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(body["code"], "unauthorized");
    assert_eq!(body["correlation_id"], "req-123");

    let token = common::idp_token(
        SECRET,
        serde_json::json!({"sub": "alice", "roles": ["admin"]}),
    );
    let r = client
        .put(format!("{base}/v1/stream/guarded"))
        .bearer_auth(&token)
        .header("content-type", "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert!(
        r.headers().contains_key("x-request-id"),
        "generated ids are echoed too"
    );

    // A problem from the protocol itself carries the correlation id.
    let r = client
        .post(format!("{base}/v1/stream/guarded"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(body["code"], "body_empty");
    assert_eq!(body["correlation_id"], id.as_str());

    let metrics = client
        .get(format!("{base}/metrics"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    assert!(text.contains("weir_http_requests_total"), "{text}");
    // Stream requests skip the route table but keep their route's label.
    let counted = |route: &str, method: &str, status: &str| {
        text.lines().any(|l| {
            l.starts_with("weir_http_requests_total{")
                && l.contains(&format!("route=\"{route}\""))
                && l.contains(&format!("method=\"{method}\""))
                && l.contains(&format!("status=\"{status}\""))
        })
    };
    assert!(counted("/v1/stream/{*path}", "PUT", "201"), "{text}");
    assert!(counted("/v1/stream/{*path}", "POST", "400"), "{text}");
    let _ = child.kill().await;
}

fn weir(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_from_the_cli_authenticate_and_revocation_takes_effect() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("layer.db");
    let cfg = common::config_file(
        dir.path(),
        &format!(
            "[auth]\nmode = \"required\"\n[auth.api_keys]\nenabled = true\nsqlite_path = \"{}\"\ncache_ttl_ms = 0\n",
            db.display()
        ),
    );
    let db_s = db.to_str().unwrap();
    let status = weir(&["migrate", "up", "--db", db_s]);
    assert!(status.contains("api_keys"), "{status}");
    let created = weir(&[
        "keys",
        "create",
        "--db",
        db_s,
        "--tenant",
        "acme",
        "--subject",
        "ci",
        "--roles",
        "admin",
    ]);
    let token = created
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .unwrap()
        .to_owned();
    let id = created
        .lines()
        .find_map(|l| l.strip_prefix("id:    "))
        .unwrap()
        .to_owned();

    let served = common::serve_memory(&cfg).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/stream/keyed", served.base);
    let r = client
        .put(&url)
        .header("x-api-key", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert!(weir(&["keys", "list", "--db", db_s]).contains(&id));
    weir(&["keys", "revoke", &id, "--db", db_s]);
    let r = client
        .get(&url)
        .header("x-api-key", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a revoked key is refused");
}

fn token(tenant: &str, roles: &[&str]) -> String {
    common::idp_token(
        SECRET,
        serde_json::json!({"sub": format!("user-{tenant}"), "tenant": tenant, "roles": roles}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_never_see_each_others_streams() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::config_file(dir.path(), &common::jwt_auth(SECRET));
    let served = common::serve([
        std::ffi::OsStr::new("--config"),
        cfg.as_os_str(),
        std::ffi::OsStr::new("--data-dir"),
        dir.path().join("data").as_os_str(),
    ])
    .await;
    let base = served.base.clone();
    let c = reqwest::Client::new();
    let (a, b, a_reader) = (
        token("alpha", &["admin"]),
        token("beta", &["admin"]),
        token("alpha", &["reader"]),
    );
    let url = |p: &str| format!("{base}/v1/stream/{p}");
    let r = c
        .put(url("secret"))
        .bearer_auth(&a)
        .header("content-type", "text/plain")
        .body("alpha data")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert!(
        r.headers()["location"]
            .to_str()
            .unwrap()
            .ends_with("/v1/stream/secret"),
        "URLs do not show the tenant"
    );

    // Every operation of another tenant on it answers 404, exactly like a missing stream.
    let cases: Vec<(&str, reqwest::RequestBuilder)> = vec![
        ("read", c.get(url("secret")).bearer_auth(&b)),
        ("head", c.head(url("secret")).bearer_auth(&b)),
        (
            "long-poll",
            c.get(format!("{}?offset=-1&live=long-poll", url("secret")))
                .bearer_auth(&b),
        ),
        (
            "sse",
            c.get(format!("{}?offset=-1&live=sse", url("secret")))
                .bearer_auth(&b),
        ),
        (
            "append",
            c.post(url("secret"))
                .bearer_auth(&b)
                .header("content-type", "text/plain")
                .body("x"),
        ),
        (
            "close",
            c.post(url("secret"))
                .bearer_auth(&b)
                .header("stream-closed", "true"),
        ),
        ("delete", c.delete(url("secret")).bearer_auth(&b)),
        (
            "fork",
            c.put(url("stolen"))
                .bearer_auth(&b)
                .header("stream-forked-from", "/v1/stream/secret"),
        ),
    ];
    for (what, req) in cases {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 404, "{what} by another tenant");
    }
    // The same name in another tenant is a different stream.
    let r = c
        .put(url("secret"))
        .bearer_auth(&b)
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "beta's own `secret`");
    let listing: serde_json::Value = serde_json::from_slice(
        &c.get(format!("{base}/_weir/streams"))
            .bearer_auth(&b)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    let names: Vec<&str> = listing["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["secret"]);
    assert_eq!(
        listing["streams"][0]["content_type"], "application/json",
        "beta sees only its own stream"
    );
    // Alpha's data is untouched; a reader of alpha may read but not write.
    let r = c
        .get(url("secret"))
        .bearer_auth(&a_reader)
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "alpha data");
    let r = c
        .post(url("secret"))
        .bearer_auth(&a_reader)
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Subscriptions are tenant-scoped (tests/tenant_subscriptions.rs): a
    // reader may look, and alpha has no subscription `x`.
    let r = c
        .get(url("__ds/subscriptions/x"))
        .bearer_auth(&a_reader)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}
