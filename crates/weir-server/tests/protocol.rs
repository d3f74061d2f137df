//! Protocol behaviours beyond the official suite: incarnations, derived
//! URLs, read chunking of JSON streams, live-read wake-ups.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::TestServer;
use weir_server::ServerConfig;

fn hdr(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn recreated_stream_is_a_new_incarnation() {
    let srv = TestServer::start().await;
    srv.create("inc", "text/plain", b"old data").await;
    let r = srv.client.get(srv.url("inc")).send().await.unwrap();
    let old_tail = hdr(&r, "stream-next-offset").unwrap();
    let old_etag = hdr(&r, "etag").unwrap();
    assert_eq!(
        srv.client
            .delete(srv.url("inc"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    srv.create("inc", "text/plain", b"new data").await;
    let r = srv.client.get(srv.url("inc")).send().await.unwrap();
    let new_tail = hdr(&r, "stream-next-offset").unwrap();
    assert_ne!(
        old_tail, new_tail,
        "same length, different incarnation: offsets differ"
    );
    assert!(
        new_tail > old_tail,
        "new incarnation sorts after the old one"
    );
    // An offset of the old incarnation is refused, not silently reinterpreted.
    let r = srv
        .client
        .get(format!("{}?offset={old_tail}", srv.url("inc")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // The old ETag does not match the new incarnation's identical range.
    let r = srv
        .client
        .get(srv.url("inc"))
        .header("if-none-match", &old_etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "new data");
    srv.stop().await;
}

#[tokio::test]
async fn location_uses_public_url_or_trusted_proxy_headers() {
    let cfg = ServerConfig {
        public_url: Some("https://streams.example.com/".into()),
        ..ServerConfig::conformance()
    };
    let srv = TestServer::with(cfg, Default::default()).await;
    let r = srv.client.put(srv.url("a/b c")).send().await.unwrap();
    assert_eq!(
        hdr(&r, "location").unwrap(),
        "https://streams.example.com/v1/stream/a/b%20c"
    );
    srv.stop().await;

    let cfg = ServerConfig {
        trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
        ..ServerConfig::conformance()
    };
    let srv = TestServer::with(cfg, Default::default()).await;
    let r = srv
        .client
        .put(srv.url("p"))
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "edge.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(
        hdr(&r, "location").unwrap(),
        "https://edge.example.com/v1/stream/p"
    );
    srv.stop().await;

    // Untrusted peers cannot spoof the URL.
    let srv = TestServer::start().await;
    let r = srv
        .client
        .put(srv.url("p"))
        .header("x-forwarded-host", "evil.example.com")
        .send()
        .await
        .unwrap();
    let loc = hdr(&r, "location").unwrap();
    assert!(loc.starts_with("http://127.0.0.1:"), "{loc}");
    srv.stop().await;
}

#[tokio::test]
async fn json_reads_are_chunked_on_message_boundaries() {
    let cfg = ServerConfig {
        max_read_bytes: 64,
        ..ServerConfig::conformance()
    };
    let srv = TestServer::with(cfg, Default::default()).await;
    srv.create("j", "application/json", b"").await;
    let mut expected = Vec::new();
    for i in 0..50 {
        let msg = serde_json::json!({ "i": i, "pad": "x".repeat(i % 7) });
        expected.push(msg.clone());
        let r = srv
            .client
            .post(srv.url("j"))
            .header("content-type", "application/json")
            .body(msg.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    let mut got: Vec<serde_json::Value> = Vec::new();
    let mut offset = "-1".to_owned();
    let mut rounds = 0;
    loop {
        rounds += 1;
        let r = srv
            .client
            .get(format!("{}?offset={offset}", srv.url("j")))
            .send()
            .await
            .unwrap();
        let done = hdr(&r, "stream-up-to-date").is_some();
        offset = hdr(&r, "stream-next-offset").unwrap();
        let page: Vec<serde_json::Value> =
            serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        got.extend(page);
        if done {
            break;
        }
    }
    assert!(rounds > 5, "small read budget must paginate");
    assert_eq!(got, expected);
    srv.stop().await;
}

#[tokio::test]
async fn long_poll_wakes_on_append_and_times_out_with_cursor() {
    let srv = TestServer::start().await; // 500 ms long-poll
    srv.create("lp", "text/plain", b"").await;
    let r = srv.client.head(srv.url("lp")).send().await.unwrap();
    let tail = hdr(&r, "stream-next-offset").unwrap();

    let started = Instant::now();
    let r = srv
        .client
        .get(format!("{}?offset={tail}&live=long-poll", srv.url("lp")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(started.elapsed() >= Duration::from_millis(450));
    assert!(hdr(&r, "stream-cursor").is_some());
    assert_eq!(hdr(&r, "stream-up-to-date").as_deref(), Some("true"));

    let url = format!("{}?offset={tail}&live=long-poll", srv.url("lp"));
    let client = srv.client.clone();
    let waiter = tokio::spawn(async move { client.get(url).send().await.unwrap() });
    tokio::time::sleep(Duration::from_millis(100)).await;
    srv.client
        .post(srv.url("lp"))
        .header("content-type", "text/plain")
        .body("wake")
        .send()
        .await
        .unwrap();
    let r = waiter.await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "wake");

    // Deleting the stream ends a parked long-poll with 404, not a hang.
    let r = srv.client.head(srv.url("lp")).send().await.unwrap();
    let tail = hdr(&r, "stream-next-offset").unwrap();
    let url = format!("{}?offset={tail}&live=long-poll", srv.url("lp"));
    let client = srv.client.clone();
    let waiter = tokio::spawn(async move { client.get(url).send().await.unwrap() });
    tokio::time::sleep(Duration::from_millis(100)).await;
    srv.client.delete(srv.url("lp")).send().await.unwrap();
    assert_eq!(waiter.await.unwrap().status(), 404);
    srv.stop().await;
}

#[tokio::test]
async fn ttl_streams_expire_and_can_be_recreated() {
    let srv = TestServer::start().await;
    let r = srv
        .client
        .put(srv.url("ttl"))
        .header("content-type", "text/plain")
        .header("stream-ttl", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = srv.client.head(srv.url("ttl")).send().await.unwrap();
    assert_eq!(hdr(&r, "stream-ttl").as_deref(), Some("1"));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        srv.client
            .get(srv.url("ttl"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let r = srv
        .client
        .put(srv.url("ttl"))
        .header("content-type", "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    srv.stop().await;
}

#[tokio::test]
async fn shutdown_ends_live_reads_cleanly() {
    let cfg = ServerConfig {
        long_poll_timeout: Duration::from_secs(30),
        ..ServerConfig::conformance()
    };
    let srv = TestServer::with(cfg, Default::default()).await;
    srv.create("sd", "text/plain", b"abc").await;
    let r = srv.client.head(srv.url("sd")).send().await.unwrap();
    let tail = hdr(&r, "stream-next-offset").unwrap();
    let mut sse = srv
        .client
        .get(format!("{}?offset=-1&live=sse", srv.url("sd")))
        .send()
        .await
        .unwrap();
    let first = sse.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("data:abc"));
    let lp_url = format!("{}?offset={tail}&live=long-poll", srv.url("sd"));
    let client = srv.client.clone();
    let lp = tokio::spawn(async move { client.get(lp_url).send().await.unwrap() });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    srv.stop().await;
    let lp = lp.await.unwrap();
    assert_eq!(
        lp.status(),
        204,
        "a parked long-poll is answered, not cut off"
    );
    // The SSE body ends without a transport error: the client resumes from
    // the last control event's offset.
    let mut rest = Vec::new();
    while let Some(c) = sse.chunk().await.unwrap() {
        rest.extend_from_slice(&c);
    }
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn text_like_responses_are_compressed_on_request() {
    let srv = TestServer::start().await;
    let big: Vec<serde_json::Value> = (0..200)
        .map(|i| serde_json::json!({"i": i, "msg": "hello hello hello"}))
        .collect();
    let body = serde_json::to_vec(&big).unwrap();
    let r = srv
        .client
        .put(srv.url("cj"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    srv.create("cb", "application/octet-stream", &[0u8; 4096])
        .await;
    for enc in ["gzip", "br", "zstd"] {
        let r = srv
            .client
            .get(srv.url("cj"))
            .header("accept-encoding", enc)
            .send()
            .await
            .unwrap();
        assert_eq!(hdr(&r, "content-encoding").as_deref(), Some(enc));
        assert!(
            hdr(&r, "stream-next-offset").is_some(),
            "protocol headers survive compression"
        );
    }
    let r = srv.client.get(srv.url("cj")).send().await.unwrap();
    assert_eq!(hdr(&r, "content-encoding"), None, "only when asked");
    let r = srv
        .client
        .get(srv.url("cb"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(
        hdr(&r, "content-encoding"),
        None,
        "binary streams are not compressed"
    );
    let mut r = srv
        .client
        .get(format!("{}?offset=-1&live=sse", srv.url("cj")))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(
        hdr(&r, "content-encoding"),
        None,
        "SSE is never buffered by a compressor"
    );
    let _ = r.chunk().await.unwrap();
    srv.stop().await;
}

#[tokio::test]
async fn cors_headers_go_to_browsers_and_to_cacheable_reads() {
    let srv = TestServer::start().await;
    // A write, from a browser (it always sends Origin on writes) or not.
    let write = |method: reqwest::Method, stream: &str, browser: bool| {
        let mut req = srv
            .client
            .request(method, srv.url(stream))
            .header("content-type", "text/plain")
            .body("x");
        if browser {
            req = req.header("origin", "https://app.example");
        }
        req.send()
    };
    let cors = |r: &reqwest::Response| {
        (
            hdr(r, "access-control-allow-origin"),
            hdr(r, "access-control-expose-headers")
                .is_some_and(|v| v.contains("stream-next-offset")),
        )
    };

    let r = write(reqwest::Method::PUT, "cors", true).await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(cors(&r), (Some("*".into()), true));
    let r = write(reqwest::Method::POST, "cors", true).await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(cors(&r), (Some("*".into()), true));
    // Errors to a browser carry CORS too, so it can read them.
    let r = write(reqwest::Method::POST, "missing", true).await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(cors(&r), (Some("*".into()), true));

    // A server-to-server write: the security headers, no CORS.
    let r = write(reqwest::Method::POST, "cors", false).await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(cors(&r), (None, false));
    assert_eq!(
        hdr(&r, "x-content-type-options").as_deref(),
        Some("nosniff")
    );
    assert_eq!(
        hdr(&r, "cross-origin-resource-policy").as_deref(),
        Some("cross-origin")
    );
    assert!(hdr(&r, "stream-next-offset").is_some());

    // Reads can be cached and served to a browser later: always CORS.
    for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
        let r = srv
            .client
            .request(method.clone(), format!("{}?offset=-1", srv.url("cors")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{method}");
        assert_eq!(cors(&r), (Some("*".into()), true), "{method}");
    }
    srv.stop().await;
}
