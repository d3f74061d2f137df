//! Subscriptions over real HTTP: webhook signing and delivery, callbacks
//! and fencing, pull-wake leases, production URL/credential rules, and
//! state that survives a restart on the same storage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use common::TestServer;
use ed25519_dalek::Verifier;
use parking_lot::Mutex;
use serde_json::{Value, json};
use weir_server::ServerConfig;
use weir_server::transport::TransportConfig;
use weir_storage::Storage;
use weir_storage::memory::MemoryStorage;

/// A webhook receiver on 127.0.0.1:0 that records requests and answers
/// with a configurable status and body.
/// A received webhook: its signature header and raw body.
type Delivery = (Option<String>, Vec<u8>);

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Delivery>>>,
    /// Every delivery's headers, in order.
    headers: Arc<Mutex<Vec<http::HeaderMap>>>,
    reply: Arc<Mutex<(u16, Value)>>,
}

impl Receiver {
    async fn start(status: u16, reply: Value) -> (Receiver, String) {
        let r = Receiver::default();
        *r.reply.lock() = (status, reply);
        let app =
            Router::new()
                .route(
                    "/hook",
                    post(
                        |State(r): State<Receiver>,
                         headers: http::HeaderMap,
                         body: bytes::Bytes| async move {
                            let sig = headers
                                .get("webhook-signature")
                                .map(|v| v.to_str().unwrap().to_owned());
                            r.headers.lock().push(headers.clone());
                            r.got.lock().push((sig, body.to_vec()));
                            let (status, reply) = r.reply.lock().clone();
                            (
                                http::StatusCode::from_u16(status).unwrap(),
                                reply.to_string(),
                            )
                        },
                    ),
                )
                .with_state(r.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://127.0.0.1:{}/hook", l.local_addr().unwrap().port());
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        (r, url)
    }

    async fn wait(&self, n: usize) -> (Option<String>, Value, Vec<u8>) {
        for _ in 0..200 {
            if let Some((sig, body)) = self.got.lock().get(n - 1).cloned() {
                return (sig, serde_json::from_slice(&body).unwrap(), body);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("webhook #{n} never arrived");
    }
}

async fn json_of(r: reqwest::Response) -> (u16, Value) {
    let s = r.status().as_u16();
    let b = r.bytes().await.unwrap();
    (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

async fn put_sub(srv: &TestServer, id: &str, body: Value) -> (u16, Value) {
    json_of(
        srv.client
            .put(srv.url(&format!("__ds/subscriptions/{id}")))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn get_sub(srv: &TestServer, id: &str) -> (u16, Value) {
    json_of(
        srv.client
            .get(srv.url(&format!("__ds/subscriptions/{id}")))
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn post_json(srv: &TestServer, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut req = srv
        .client
        .post(srv.url(path))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    json_of(req.send().await.unwrap()).await
}

#[tokio::test]
async fn production_rules_refuse_unsafe_webhooks_and_anonymous_claims() {
    let srv = TestServer::with(ServerConfig::default(), TransportConfig::default()).await;
    for url in [
        "http://10.0.0.1/hook",
        "http://hooks.example.com/x",
        "http://127.0.0.1:9/h",
        "https://localhost/h",
        "https://169.254.169.254/",
    ] {
        let (status, body) = put_sub(
            &srv,
            "s1",
            json!({"type": "webhook", "pattern": "a/*", "webhook": {"url": url}}),
        )
        .await;
        assert_eq!(status, 400, "{url}");
        assert_eq!(body["error"]["code"], "WEBHOOK_URL_REJECTED", "{url}");
        assert_eq!(body["code"], "webhook_url_rejected");
    }
    let (status, _) = put_sub(&srv, "s2", json!({"type": "webhook", "pattern": "a/*", "webhook": {"url": "https://hooks.example.com/x"}})).await;
    assert_eq!(status, 201);
    let (status, _) = put_sub(
        &srv,
        "p",
        json!({"type": "pull-wake", "pattern": "a/*", "wake_stream": "w"}),
    )
    .await;
    assert_eq!(status, 201);
    let (status, body) = post_json(
        &srv,
        "__ds/subscriptions/p/claim",
        None,
        json!({"worker": "w1"}),
    )
    .await;
    assert_eq!(status, 401, "claims need credentials by default: {body}");
    srv.stop().await;
}

/// Each webhook POST carries a well-formed W3C `traceparent` (a fresh
/// trace when traces are not exported) and an `X-Request-Id`.
#[tokio::test]
async fn webhooks_carry_trace_context_and_a_request_id() {
    let srv = TestServer::start().await;
    let (rx, url) = Receiver::start(200, json!({"done": true})).await;
    let (status, _) = put_sub(
        &srv,
        "traced",
        json!({"type": "webhook", "pattern": "tr/*", "webhook": {"url": url}}),
    )
    .await;
    assert_eq!(status, 201);
    srv.create("tr/one", "text/plain", b"a").await;
    rx.wait(1).await;
    srv.create("tr/two", "text/plain", b"b").await;
    rx.wait(2).await;
    let seen: Vec<(weir_layer::request_id::TraceParent, String)> = rx
        .headers
        .lock()
        .iter()
        .map(|h| {
            let tp = h
                .get("traceparent")
                .expect("traceparent header")
                .to_str()
                .unwrap();
            let parsed = weir_layer::request_id::TraceParent::parse(tp)
                .unwrap_or_else(|| panic!("malformed traceparent {tp:?}"));
            assert_eq!(parsed.version, 0, "{tp}");
            assert_eq!(tp.len(), 55, "{tp}");
            let id = h
                .get("x-request-id")
                .expect("x-request-id header")
                .to_str()
                .unwrap()
                .to_owned();
            assert!(weir_layer::RequestId::parse(&id).is_some(), "{id:?}");
            (parsed, id)
        })
        .collect();
    assert!(seen.len() >= 2);
    assert_ne!(
        seen[0].0.trace_id, seen[1].0.trace_id,
        "one trace per delivery"
    );
    assert_ne!(seen[0].1, seen[1].1, "one request id per delivery");
    srv.stop().await;
}

#[tokio::test]
async fn webhooks_are_signed_and_fenced() {
    let srv = TestServer::start().await;
    let (rx, url) = Receiver::start(200, json!({})).await;
    let (status, created) = put_sub(&srv, "hook", json!({"type": "webhook", "pattern": "ev/*", "webhook": {"url": url}, "lease_ttl_ms": 5000})).await;
    assert_eq!(status, 201);
    assert_eq!(created["webhook"]["signing"]["alg"], "ed25519");
    let jwks: Value = serde_json::from_slice(
        &srv.client
            .get(created["webhook"]["signing"]["jwks_url"].as_str().unwrap())
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    srv.create("ev/one", "text/plain", b"hello").await;
    let (sig, body, raw) = rx.wait(1).await;
    // Verify `t=..,kid=..,ed25519=..` over "<t>.<raw body>" with the JWKS key.
    let sig = sig.unwrap();
    let parts: Vec<&str> = sig.split(',').collect();
    let t = parts[0].strip_prefix("t=").unwrap();
    let kid = parts[1].strip_prefix("kid=").unwrap();
    let s = parts[2].strip_prefix("ed25519=").unwrap();
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .unwrap();
    let x: [u8; 32] = B64URL
        .decode(key["x"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&x).unwrap();
    let signature = ed25519_dalek::Signature::from_slice(&B64URL.decode(s).unwrap()).unwrap();
    let mut msg = format!("{t}.").into_bytes();
    msg.extend_from_slice(&raw);
    vk.verify(&msg, &signature).expect("signature verifies");
    let mut tampered = msg.clone();
    *tampered.last_mut().unwrap() ^= 1;
    assert!(vk.verify(&tampered, &signature).is_err());

    let stream = body["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["path"] == "ev/one")
        .unwrap()
        .clone();
    assert_eq!(
        stream["acked_offset"], "0000000000000000_0000000000000000",
        "linked before its first data"
    );
    assert_eq!(stream["has_pending"], true);
    let token = body["callback_token"].as_str().unwrap();
    let callback = body["callback_url"]
        .as_str()
        .unwrap()
        .trim_start_matches(&format!("{}/v1/stream/", srv.base))
        .to_owned();
    let ack = json!({"wake_id": body["wake_id"], "generation": body["generation"], "acks": [{"stream": "ev/one", "offset": stream["tail_offset"]}], "done": false});
    // A forged token is refused; a wrong generation is fenced.
    let (status, _) = post_json(&srv, &callback, Some("forged.token"), ack.clone()).await;
    assert_eq!(status, 401);
    let mut stale = ack.clone();
    stale["generation"] = json!(body["generation"].as_u64().unwrap() - 1);
    let (status, fenced) = post_json(&srv, &callback, Some(token), stale).await;
    assert_eq!(
        (status, fenced),
        (409, json!({"error": {"code": "FENCED"}}))
    );
    // Heartbeat, then done.
    let (status, r) = post_json(&srv, &callback, Some(token), ack.clone()).await;
    assert_eq!((status, r), (200, json!({"ok": true, "next_wake": false})));
    let mut done = ack.clone();
    done["done"] = json!(true);
    let (status, _) = post_json(&srv, &callback, Some(token), done.clone()).await;
    assert_eq!(status, 200);
    let (status, _) = post_json(&srv, &callback, Some(token), done).await;
    assert_eq!(status, 409, "a finished wake cannot be replayed");
    let (_, view) = get_sub(&srv, "hook").await;
    assert_eq!(view["streams"][0]["acked_offset"], stream["tail_offset"]);

    // New data → a new generation.
    srv.client
        .post(srv.url("ev/one"))
        .header("content-type", "text/plain")
        .body("more")
        .send()
        .await
        .unwrap();
    let (_, body2, _) = rx.wait(2).await;
    assert!(body2["generation"].as_u64() > body["generation"].as_u64());
    // Deleting the subscription fails in-flight callbacks without advancing cursors.
    assert_eq!(
        srv.client
            .delete(srv.url("__ds/subscriptions/hook"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    let ack2 = json!({"wake_id": body2["wake_id"], "generation": body2["generation"], "acks": [], "done": true});
    let (status, _) = post_json(
        &srv,
        &callback,
        Some(body2["callback_token"].as_str().unwrap()),
        ack2,
    )
    .await;
    assert!(status == 404 || status == 409, "{status}");
    assert_eq!(get_sub(&srv, "hook").await.0, 404);
    srv.stop().await;
}

#[tokio::test]
async fn failed_webhooks_retry_with_backoff() {
    let srv = TestServer::start().await;
    let (rx, url) = Receiver::start(500, json!({})).await;
    put_sub(
        &srv,
        "retry",
        json!({"type": "webhook", "streams": ["r/x"], "webhook": {"url": url}}),
    )
    .await;
    srv.create("r/x", "text/plain", b"data").await;
    rx.wait(1).await;
    let mut failed = false;
    for _ in 0..40 {
        if get_sub(&srv, "retry").await.1["status"] == "failed" {
            failed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(failed, "a failed delivery schedules a retry");
    *rx.reply.lock() = (200, json!({"done": true}));
    let (_, body, _) = rx.wait(2).await;
    let tail = body["streams"][0]["tail_offset"].clone();
    let mut acked = false;
    for _ in 0..80 {
        let (_, v) = get_sub(&srv, "retry").await;
        if v["streams"][0]["acked_offset"] == tail && v["status"] == "active" {
            acked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(acked, "the retried delivery auto-acked");
    srv.stop().await;
}

#[tokio::test]
async fn pull_wake_leases_expire_and_rewake() {
    let srv = TestServer::start().await;
    srv.create("pool", "application/json", b"[]").await;
    let (status, _) = put_sub(&srv, "pw", json!({"type": "pull-wake", "pattern": "jobs/*", "wake_stream": "pool", "lease_ttl_ms": 1000})).await;
    assert_eq!(status, 201);
    let (status, _) = post_json(
        &srv,
        "__ds/subscriptions/pw/claim",
        None,
        json!({"worker": "w1"}),
    )
    .await;
    assert_eq!(status, 409, "nothing to claim yet");
    srv.create("jobs/1", "text/plain", b"job").await;
    let mut woke = false;
    for _ in 0..80 {
        let events: Value = serde_json::from_slice(&srv.snapshot("pool").await.1).unwrap();
        if events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["subscription_id"] == "pw" && e["stream"] == "jobs/1")
        {
            woke = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(woke, "a wake event lands on the wake stream");
    let (status, c1) = post_json(
        &srv,
        "__ds/subscriptions/pw/claim",
        None,
        json!({"worker": "w1"}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, busy) = post_json(
        &srv,
        "__ds/subscriptions/pw/claim",
        None,
        json!({"worker": "w2"}),
    )
    .await;
    assert_eq!(status, 409);
    assert_eq!(busy["error"]["code"], "ALREADY_CLAIMED");
    assert_eq!(busy["error"]["current_holder"], "w1");
    // Let the lease lapse: the holder is cleared and the work is claimable again.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (status, c2) = post_json(
        &srv,
        "__ds/subscriptions/pw/claim",
        None,
        json!({"worker": "w2"}),
    )
    .await;
    assert_eq!(status, 200, "{c2}");
    assert!(c2["generation"].as_u64() > c1["generation"].as_u64());
    // The old holder is fenced.
    let stale =
        json!({"wake_id": c1["wake_id"], "generation": c1["generation"], "acks": [], "done": true});
    let (status, _) = post_json(
        &srv,
        "__ds/subscriptions/pw/ack",
        Some(c1["token"].as_str().unwrap()),
        stale,
    )
    .await;
    assert_eq!(status, 409);
    let tail = c2["streams"][0]["tail_offset"].clone();
    let ack = json!({"wake_id": c2["wake_id"], "generation": c2["generation"], "acks": [{"stream": "jobs/1", "offset": tail}], "done": true});
    let (status, r) = post_json(
        &srv,
        "__ds/subscriptions/pw/ack",
        Some(c2["token"].as_str().unwrap()),
        ack,
    )
    .await;
    assert_eq!((status, r), (200, json!({"ok": true, "next_wake": false})));
    srv.stop().await;
}

#[tokio::test]
async fn subscription_state_survives_a_restart() {
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::default());
    let srv = TestServer::with_storage(
        storage.clone(),
        ServerConfig::conformance(),
        TransportConfig::default(),
    )
    .await;
    let (rx, url) = Receiver::start(200, json!({"done": true})).await;
    let (_, created) = put_sub(
        &srv,
        "keep",
        json!({"type": "webhook", "pattern": "k/*", "webhook": {"url": url}}),
    )
    .await;
    let kid = created["webhook"]["signing"]["kid"].clone();
    srv.create("k/a", "text/plain", b"x").await;
    let (_, body, _) = rx.wait(1).await;
    let tail = body["streams"][0]["tail_offset"].clone();
    for _ in 0..80 {
        if get_sub(&srv, "keep").await.1["streams"][0]["acked_offset"] == tail {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    srv.stop().await;

    let srv = TestServer::with_storage(
        storage,
        ServerConfig::conformance(),
        TransportConfig::default(),
    )
    .await;
    let (status, v) = get_sub(&srv, "keep").await;
    assert_eq!(status, 200);
    assert_eq!(v["streams"][0]["acked_offset"], tail, "cursors persist");
    assert_eq!(v["webhook"]["signing"]["kid"], kid, "signing keys persist");
    // The restarted engine keeps delivering.
    srv.client
        .post(srv.url("k/a"))
        .header("content-type", "text/plain")
        .body("y")
        .send()
        .await
        .unwrap();
    let (_, body2, _) = rx.wait(2).await;
    assert!(body2["generation"].as_u64() > body["generation"].as_u64());
    srv.stop().await;
}
