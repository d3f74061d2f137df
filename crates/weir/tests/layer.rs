//! The production layer in a real `weir serve`: authentication required,
//! problem+json with correlation ids, request ids echoed, `/metrics`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

const SECRET: &str = "test-secret-test-secret-test-secret!";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_auth_guards_streams_and_errors_carry_correlation_ids() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("weir.toml");
    std::fs::write(
        &cfg,
        format!(
            "[auth]\nmode = \"required\"\n[auth.jwt]\nissuer = \"https://idp.test/\"\naudience = [\"weir\"]\nhs256_secret = \"{SECRET}\"\n"
        ),
    )
    .unwrap();
    let served = common::serve([
        std::ffi::OsStr::new("--storage"),
        std::ffi::OsStr::new("memory"),
        std::ffi::OsStr::new("--config"),
        cfg.as_os_str(),
    ])
    .await;
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

    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 300;
    let claims = serde_json::json!({"sub": "alice", "iss": "https://idp.test/", "aud": "weir", "exp": exp, "roles": ["admin"]});
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
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
    let cfg = dir.path().join("weir.toml");
    std::fs::write(
        &cfg,
        format!(
            "[auth]\nmode = \"required\"\n[auth.api_keys]\nenabled = true\nsqlite_path = \"{}\"\ncache_ttl_ms = 0\n",
            db.display()
        ),
    )
    .unwrap();
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

    let served = common::serve([
        std::ffi::OsStr::new("--storage"),
        std::ffi::OsStr::new("memory"),
        std::ffi::OsStr::new("--config"),
        cfg.as_os_str(),
    ])
    .await;
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
