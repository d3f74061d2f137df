//! Load shedding and limits on the real server: past each budget the server
//! answers `503 overloaded` with `Retry-After` (or the limit's own 4xx),
//! changes nothing, and admits work again once the budget frees up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weir_server::ServerConfig;
use weir_server::limits::Limits;
use weir_server::transport::TransportConfig;
use weir_storage::memory::{MemoryOptions, MemoryStorage};

async fn server(limits: Limits) -> TestServer {
    let cfg = ServerConfig {
        limits,
        max_body_bytes: 1024 * 1024,
        ..ServerConfig::conformance()
    };
    TestServer::with(cfg, TransportConfig::default()).await
}

/// Starts a POST whose body never finishes: it holds its request slot and
/// its body reservation until the socket is dropped.
async fn stalled_upload(ts: &TestServer, path: &str, declared: usize) -> TcpStream {
    let addr = ts.base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/stream/{path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: text/plain\r\ncontent-length: {declared}\r\n\r\npartial"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // Let the server admit it before the test goes on.
    tokio::time::sleep(Duration::from_millis(100)).await;
    s
}

async fn assert_overloaded(r: reqwest::Response, reason: &str) {
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(
        r.headers()["content-type"],
        "application/problem+json",
        "shed responses are problem+json"
    );
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "overloaded");
    assert!(body["detail"].as_str().unwrap().contains(reason), "{body}");
}

#[tokio::test]
async fn live_readers_past_the_budget_are_shed_and_slots_come_back() {
    let ts = server(Limits {
        max_live_readers: 2,
        ..Limits::default()
    })
    .await;
    ts.create("live", "text/plain", b"x").await;
    let url = format!("{}?offset=now&live=sse", ts.url("live"));
    let a = ts.client.get(&url).send().await.unwrap();
    let b = ts.client.get(&url).send().await.unwrap();
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    assert_overloaded(ts.client.get(&url).send().await.unwrap(), "live_readers").await;
    // Long-polls share the budget.
    let lp = format!("{}?offset=now&live=long-poll", ts.url("live"));
    assert_overloaded(ts.client.get(&lp).send().await.unwrap(), "live_readers").await;
    // Catch-up reads and appends are not live and still pass.
    assert_eq!(
        ts.client.get(ts.url("live")).send().await.unwrap().status(),
        200
    );
    drop(a);
    let mut ok = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let r = ts.client.get(&url).send().await.unwrap();
        if r.status() == 200 {
            ok = true;
            break;
        }
    }
    assert!(ok, "a closed SSE reader gives its slot back");
    drop(b);
}

#[tokio::test]
async fn requests_in_flight_past_the_budget_are_shed() {
    let ts = server(Limits {
        max_in_flight_requests: 1,
        ..Limits::default()
    })
    .await;
    ts.create("r", "text/plain", b"").await;
    let held = stalled_upload(&ts, "r", 100).await;
    assert_overloaded(ts.client.get(ts.url("r")).send().await.unwrap(), "requests").await;
    // Health and readiness stay answerable under overload.
    for p in ["/healthz", "/readyz"] {
        let r = ts
            .client
            .get(format!("{}{p}", ts.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{p}");
    }
    drop(held);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, body, _, _) = ts.snapshot("r").await;
    assert_eq!(
        (status, body),
        (200, Vec::new()),
        "the stalled upload wrote nothing"
    );
}

#[tokio::test]
async fn body_bytes_in_flight_are_reserved_before_reading() {
    let ts = server(Limits {
        max_in_flight_body_bytes: 64 * 1024,
        ..Limits::default()
    })
    .await;
    ts.create("b", "text/plain", b"").await;
    // One upload declares 60 KiB and stalls: 4 KiB of budget are left.
    let held = stalled_upload(&ts, "b", 60 * 1024).await;
    let r = ts
        .client
        .post(ts.url("b"))
        .header("content-type", "text/plain")
        .body(vec![b'a'; 8 * 1024])
        .send()
        .await
        .unwrap();
    assert_overloaded(r, "body_bytes").await;
    // A small one fits.
    let r = ts
        .client
        .post(ts.url("b"))
        .header("content-type", "text/plain")
        .body(vec![b'a'; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    drop(held);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = ts
        .client
        .post(ts.url("b"))
        .header("content-type", "text/plain")
        .body(vec![b'a'; 8 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        204,
        "the budget is back once the stalled upload is gone"
    );
    let (_, body, _, _) = ts.snapshot("b").await;
    assert_eq!(body.len(), 9 * 1024, "exactly the two admitted appends");
}

#[tokio::test]
async fn messages_over_the_limit_are_refused_whole() {
    let ts = server(Limits {
        max_message_bytes: 10,
        ..Limits::default()
    })
    .await;
    ts.create("t", "text/plain", b"").await;
    ts.create("j", "application/json", b"").await;
    let post = |path: &str, ct: &'static str, body: &'static str| {
        ts.client
            .post(ts.url(path))
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let r = post("t", "text/plain", "12345678901").await.unwrap();
    assert_eq!(r.status(), 413);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "message_too_large");
    assert_eq!(
        post("t", "text/plain", "1234567890")
            .await
            .unwrap()
            .status(),
        204
    );
    // JSON mode: the limit is per value; one big value refuses the batch.
    let r = post("j", "application/json", r#"[1, "this one is too long"]"#)
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(
        post("j", "application/json", "[1,2,3]")
            .await
            .unwrap()
            .status(),
        204
    );
    // Creating with an initial body obeys the limit too.
    let r = ts
        .client
        .put(ts.url("big"))
        .header("content-type", "text/plain")
        .body("12345678901")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(ts.snapshot("t").await.1, b"1234567890");
    assert_eq!(ts.snapshot("j").await.1, b"[1,2,3]");
    assert_eq!(ts.snapshot("big").await.0, 404, "nothing was created");
}

#[tokio::test]
async fn stream_quota_refuses_new_streams_but_not_recreates() {
    let ts = server(Limits {
        max_streams_per_tenant: Some(3),
        ..Limits::default()
    })
    .await;
    for p in ["q1", "q2", "q3"] {
        ts.create(p, "text/plain", b"").await;
    }
    let put = |p: &'static str| {
        ts.client
            .put(ts.url(p))
            .header("content-type", "text/plain")
            .send()
    };
    let r = put("q4").await.unwrap();
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "stream_quota_exceeded");
    assert_eq!(
        put("q1").await.unwrap().status(),
        200,
        "idempotent re-create"
    );
    assert_eq!(
        ts.client
            .delete(ts.url("q2"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        put("q4").await.unwrap().status(),
        201,
        "a deleted stream frees quota"
    );
}

#[tokio::test]
async fn memory_budget_refuses_appends_with_507_and_keeps_data() {
    let storage = Arc::new(MemoryStorage::new(MemoryOptions {
        max_bytes: Some(64 * 1024),
    }));
    let ts = TestServer::with_storage(
        storage.clone(),
        ServerConfig::conformance(),
        TransportConfig::default(),
    )
    .await;
    ts.create("m", "application/octet-stream", b"").await;
    let mut accepted = 0usize;
    let mut refused = false;
    for _ in 0..100 {
        let r = ts
            .client
            .post(ts.url("m"))
            .header("content-type", "application/octet-stream")
            .body(vec![7u8; 4096])
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            204 => accepted += 4096,
            507 => {
                let body: serde_json::Value = r.json().await.unwrap();
                assert_eq!(body["code"], "storage_full");
                refused = true;
                break;
            }
            s => panic!("unexpected status {s}"),
        }
    }
    assert!(refused, "the budget must be enforced");
    assert!(storage.used_bytes() <= 64 * 1024);
    let (_, body, _, _) = ts.snapshot("m").await;
    assert_eq!(
        body.len(),
        accepted,
        "every accepted append is there, nothing else"
    );
}

#[tokio::test]
async fn raw_overload_answer_is_complete_http() {
    // A client that ignores the status still gets a well-formed response
    // with a body it can show.
    let ts = server(Limits {
        max_in_flight_requests: 1,
        ..Limits::default()
    })
    .await;
    ts.create("h", "text/plain", b"").await;
    let _held = stalled_upload(&ts, "h", 100).await;
    let addr = ts.base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET /v1/stream/h HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 1"),
        "{text}"
    );
    assert!(text.contains("\"overloaded\""), "{text}");
}
