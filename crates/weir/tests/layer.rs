//! The production layer in a real `weir serve`: authentication required,
//! problem+json with correlation ids, request ids echoed, `/metrics`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

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
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args([
            "serve",
            "--port",
            "0",
            "--log-level",
            "warn",
            "--storage",
            "memory",
            "--config",
        ])
        .arg(&cfg)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .expect("server started");
    let base = line.trim_start_matches("listening on ").to_owned();
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
