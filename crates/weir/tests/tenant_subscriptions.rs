//! Tenant-scoped subscriptions (PROTOCOL.md §6–7 under tenancy): a tenant's
//! principal creates, reads, claims and deletes subscriptions in its own
//! namespace; patterns only ever match its own streams; another tenant's
//! subscription answers 404 for every operation; wake events and webhook
//! payloads show unscoped stream names and the tenant's own URLs. Both
//! tenant sources: the token, and the path (`/t/{tenant}/…`). Callbacks,
//! acks and releases authenticate with the subscription's callback token
//! (the production layer passes exactly those through to the engine).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::ffi::OsStr;

use serde_json::{Value, json};
use tokio::sync::mpsc;

const SECRET: &str = "subs-tenant-secret-subs-tenant-secret";

fn token(tenant: &str, role: &str) -> String {
    common::idp_token(
        SECRET,
        json!({"sub": format!("{role}-{tenant}"), "tenant": tenant, "roles": [role]}),
    )
}

/// `weir serve` with JWT auth, the conformance profile (loopback webhooks)
/// and `extra` configuration.
async fn start(dir: &std::path::Path, extra: &str) -> common::Served {
    let cfg = common::config_file(dir, &format!("{}{extra}", common::jwt_auth(SECRET)));
    common::serve([
        OsStr::new("--storage"),
        OsStr::new("memory"),
        OsStr::new("--profile"),
        OsStr::new("conformance"),
        OsStr::new("--config"),
        cfg.as_os_str(),
    ])
    .await
}

/// A webhook receiver on 127.0.0.1:0 answering `{"done": true}`; the
/// payloads it received come out of the channel.
async fn receiver() -> (String, mpsc::UnboundedReceiver<Value>) {
    receiver_answering(json!({"done": true})).await
}

/// [`receiver`] answering `answer` (`{}`: the wake stays open until the
/// receiver calls back).
async fn receiver_answering(answer: Value) -> (String, mpsc::UnboundedReceiver<Value>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let (tx, answer) = (tx.clone(), answer.clone());
            async move {
                let _ = tx.send(serde_json::from_slice::<Value>(&body).unwrap_or_default());
                axum::Json(answer)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), rx)
}

async fn json_of(r: reqwest::RequestBuilder) -> (u16, Value) {
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let bytes = r.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Waits (long-polls) for the first messages of a JSON stream.
async fn first_messages(c: &reqwest::Client, url: &str, bearer: &str) -> Vec<Value> {
    for _ in 0..200 {
        let r = c
            .get(format!("{url}?offset=-1&live=long-poll"))
            .bearer_auth(bearer)
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
            let msgs = v.as_array().cloned().unwrap_or_default();
            if !msgs.is_empty() {
                return msgs;
            }
        }
    }
    panic!("no message on {url}");
}

fn paths(v: &Value) -> Vec<String> {
    v["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["path"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_never_see_or_match_each_others_subscriptions() {
    let dir = tempfile::tempdir().unwrap();
    let served = start(dir.path(), "").await;
    let base = served.base.clone();
    let c = reqwest::Client::new();
    let (a, b, a_reader) = (
        token("alpha", "admin"),
        token("beta", "admin"),
        token("alpha", "reader"),
    );
    let url = |p: &str| format!("{base}/v1/stream/{p}");
    let sub = |id: &str| url(&format!("__ds/subscriptions/{id}"));
    for (who, name, ct) in [
        (&a, "orders/1", "text/plain"),
        (&a, "wake", "application/json"),
        (&b, "wake", "application/json"),
    ] {
        let r = c
            .put(url(name))
            .bearer_auth(who)
            .header("content-type", ct)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{name}");
    }
    let body = json!({"type": "pull-wake", "pattern": "orders/*", "wake_stream": "wake"});

    // Alpha's subscription, in alpha's names.
    let (status, v) = json_of(c.put(sub("s1")).bearer_auth(&a).json(&body)).await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["id"], "s1");
    assert_eq!(v["pattern"], "orders/*");
    assert_eq!(v["wake_stream"], "wake");
    assert_eq!(paths(&v), vec!["orders/1"]);
    let (status, _) = json_of(c.put(sub("s1")).bearer_auth(&a).json(&body)).await;
    assert_eq!(status, 200, "re-confirmed");

    // Beta: alpha's subscription does not exist, whatever the operation.
    let cases: Vec<(&str, reqwest::RequestBuilder)> = vec![
        ("get", c.get(sub("s1"))),
        ("delete", c.delete(sub("s1"))),
        (
            "add streams",
            c.post(format!("{}/streams", sub("s1")))
                .json(&json!({"streams": ["orders/1"]})),
        ),
        (
            "remove stream",
            c.delete(format!("{}/streams/orders%2F1", sub("s1"))),
        ),
        (
            "claim",
            c.post(format!("{}/claim", sub("s1")))
                .json(&json!({"worker": "w"})),
        ),
    ];
    for (what, req) in cases {
        let (status, v) = json_of(req.bearer_auth(&b)).await;
        assert_eq!(status, 404, "{what} by another tenant: {v}");
    }
    // The same id in beta is beta's own subscription, over beta's streams.
    let (status, v) = json_of(c.put(sub("s1")).bearer_auth(&b).json(&body)).await;
    assert_eq!(status, 201, "beta's own s1: {v}");
    assert!(paths(&v).is_empty(), "alpha's orders/1 is not linked: {v}");

    // Permissions: a reader of alpha reads but cannot create or delete.
    let (status, _) = json_of(c.get(sub("s1")).bearer_auth(&a_reader)).await;
    assert_eq!(status, 200);
    let (status, _) = json_of(c.delete(sub("s1")).bearer_auth(&a_reader)).await;
    assert_eq!(status, 403);
    let (status, _) = json_of(c.put(sub("s2")).bearer_auth(&a_reader).json(&body)).await;
    assert_eq!(status, 403);

    // An append to alpha's stream wakes alpha's subscription only, with
    // unscoped names; then beta's own append wakes beta's.
    let r = c
        .post(url("orders/1"))
        .bearer_auth(&a)
        .header("content-type", "text/plain")
        .body("order")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let wakes = first_messages(&c, &url("wake"), &a).await;
    assert_eq!(wakes[0]["type"], "wake");
    assert_eq!(wakes[0]["subscription_id"], "s1");
    assert_eq!(wakes[0]["stream"], "orders/1");
    let r = c
        .put(url("orders/9"))
        .bearer_auth(&b)
        .header("content-type", "text/plain")
        .body("beta order")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = c
        .post(url("orders/9"))
        .bearer_auth(&b)
        .header("content-type", "text/plain")
        .body("more")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let wakes = first_messages(&c, &url("wake"), &b).await;
    assert_eq!(wakes.len(), 1, "{wakes:?}");
    assert_eq!(wakes[0]["stream"], "orders/9");
    // Events are handled in order: alpha's append was seen before beta's.
    let (_, v) = json_of(c.get(sub("s1")).bearer_auth(&b)).await;
    assert_eq!(paths(&v), vec!["orders/9"], "{v}");
    let (_, v) = json_of(c.get(sub("s1")).bearer_auth(&a)).await;
    assert_eq!(paths(&v), vec!["orders/1"], "{v}");

    // Alpha's worker claims with its own credential; the claim shows
    // alpha's names.
    let (status, v) = json_of(
        c.post(format!("{}/claim", sub("s1")))
            .bearer_auth(&a)
            .json(&json!({"worker": "w1"})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(paths(&v), vec!["orders/1"]);

    // A `**` pattern in alpha matches alpha's streams only.
    let (status, v) = json_of(
        c.put(sub("all"))
            .bearer_auth(&a)
            .json(&json!({"type": "pull-wake", "pattern": "**", "wake_stream": "wake"})),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(paths(&v), vec!["orders/1"], "never beta's streams: {v}");

    // Webhooks: payloads show alpha's names and alpha's URLs.
    let (hook, mut rx) = receiver().await;
    let (status, v) = json_of(
        c.put(sub("hook"))
            .bearer_auth(&a)
            .json(&json!({"type": "webhook", "pattern": "events/*", "webhook": {"url": hook}})),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["webhook"]["url"], hook.as_str());
    let r = c
        .put(url("events/1"))
        .bearer_auth(&a)
        .header("content-type", "text/plain")
        .body("event")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let payload = rx.recv().await.unwrap();
    assert_eq!(payload["subscription_id"], "hook");
    assert_eq!(paths(&payload), vec!["events/1"]);
    assert_eq!(
        payload["callback_url"],
        format!("{base}/v1/stream/__ds/subscriptions/hook/callback")
    );

    // Beta deletes its own s1; alpha's survives, and beta cannot delete it.
    let (status, _) = json_of(c.delete(sub("s1")).bearer_auth(&b)).await;
    assert_eq!(status, 204);
    let (status, _) = json_of(c.delete(sub("s1")).bearer_auth(&b)).await;
    assert_eq!(status, 404);
    let (status, _) = json_of(c.get(sub("s1")).bearer_auth(&a)).await;
    assert_eq!(status, 200);
    let (status, _) = json_of(c.delete(sub("s1")).bearer_auth(&a)).await;
    assert_eq!(status, 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_tenants_scope_subscriptions_and_their_urls() {
    let dir = tempfile::tempdir().unwrap();
    let served = start(dir.path(), "[authz]\ntenant_source = \"path\"\n").await;
    let base = served.base.clone();
    let c = reqwest::Client::new();
    let (a, b) = (token("alpha", "admin"), token("beta", "admin"));
    let url = |t: &str, p: &str| format!("{base}/t/{t}/v1/stream/{p}");
    let sub = |t: &str, id: &str| url(t, &format!("__ds/subscriptions/{id}"));
    let (hook, mut rx) = receiver().await;
    let (status, v) = json_of(
        c.put(sub("alpha", "h"))
            .bearer_auth(&a)
            .json(&json!({"type": "webhook", "pattern": "events/*", "webhook": {"url": hook}})),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["pattern"], "events/*");
    assert!(
        v["webhook"]["signing"]["jwks_url"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{base}/t/alpha/v1/stream/__ds/")),
        "{v}"
    );
    // Beta: through its own URL the id is free; through alpha's, 404.
    let (status, _) = json_of(c.get(sub("beta", "h")).bearer_auth(&b)).await;
    assert_eq!(status, 404);
    let (status, _) = json_of(c.get(sub("alpha", "h")).bearer_auth(&b)).await;
    assert_eq!(status, 404);
    let (status, _) = json_of(c.delete(sub("alpha", "h")).bearer_auth(&b)).await;
    assert_eq!(status, 404);
    // Tenant-free subscription routes are not served in path mode.
    let (status, _) = json_of(
        c.get(format!("{base}/v1/stream/__ds/subscriptions/h"))
            .bearer_auth(&a),
    )
    .await;
    assert_eq!(status, 404);

    let r = c
        .put(url("alpha", "events/1"))
        .bearer_auth(&a)
        .header("content-type", "text/plain")
        .body("event")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let payload = rx.recv().await.unwrap();
    assert_eq!(payload["subscription_id"], "h");
    assert_eq!(paths(&payload), vec!["events/1"]);
    assert_eq!(
        payload["callback_url"],
        format!("{base}/t/alpha/v1/stream/__ds/subscriptions/h/callback")
    );
}

/// `POST url` with `Authorization: <auth>` and a JSON body.
async fn post_auth(c: &reqwest::Client, url: &str, auth: &str, body: &Value) -> (u16, Value) {
    json_of(c.post(url).header("authorization", auth).json(body)).await
}

/// The same token with another (well-shaped) signature.
fn forged(token: &str) -> String {
    let (payload, _) = token.split_once('.').unwrap();
    format!("{payload}.{}", "A".repeat(43))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_acks_and_releases_authenticate_with_the_callback_token() {
    let dir = tempfile::tempdir().unwrap();
    let served = start(dir.path(), "").await;
    let base = served.base.clone();
    let c = reqwest::Client::new();
    let (a, b) = (token("alpha", "admin"), token("beta", "admin"));
    let (a_reader, a_writer) = (token("alpha", "reader"), token("alpha", "writer"));
    let url = |p: &str| format!("{base}/v1/stream/{p}");
    let sub = |id: &str| url(&format!("__ds/subscriptions/{id}"));

    // A webhook whose receiver answers `{}`: it acknowledges by callback.
    let (hook, mut rx) = receiver_answering(json!({})).await;
    let (status, v) = json_of(
        c.put(sub("hook"))
            .bearer_auth(&a)
            .json(&json!({"type": "webhook", "pattern": "events/*", "webhook": {"url": hook}})),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    // Beta has a subscription of its own.
    let (status, v) = json_of(
        c.put(sub("bhook"))
            .bearer_auth(&b)
            .json(&json!({"type": "webhook", "pattern": "events/*", "webhook": {"url": hook}})),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let r = c
        .put(url("events/1"))
        .bearer_auth(&a)
        .header("content-type", "text/plain")
        .body("event")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let p = rx.recv().await.unwrap();
    assert_eq!(p["subscription_id"], "hook");
    let callback = p["callback_url"].as_str().unwrap().to_owned();
    assert_eq!(
        callback,
        format!("{base}/v1/stream/__ds/subscriptions/hook/callback")
    );
    let cb_token = p["callback_token"].as_str().unwrap().to_owned();
    let tail = p["streams"][0]["tail_offset"].as_str().unwrap().to_owned();
    let ack = json!({
        "wake_id": p["wake_id"],
        "generation": p["generation"],
        "acks": [{"stream": "events/1", "offset": tail}],
        "done": true,
    });
    let bearer = |t: &str| format!("Bearer {t}");

    // Refusals first (none of them changes the subscription).
    // Not a credential at all: the layer refuses it.
    let (status, v) = post_auth(&c, &callback, "Bearer garbage", &ack).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (401, Some("unauthorized")),
        "{v}"
    );
    // A user JWT the layer cannot verify: refused by the layer, not passed on.
    let bad_jwt = common::idp_token(
        "some-other-secret-some-other-secret",
        json!({"sub": "x", "tenant": "alpha", "roles": ["admin"]}),
    );
    let (status, v) = post_auth(&c, &callback, &bearer(&bad_jwt), &ack).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (401, Some("unauthorized")),
        "{v}"
    );
    // A valid user JWT is verified as the caller's credential: a reader
    // lacks `write`; a writer passes, but is no callback token.
    let (status, v) = post_auth(&c, &callback, &bearer(&a_reader), &ack).await;
    assert_eq!(status, 403, "{v}");
    let (status, v) = post_auth(&c, &callback, &bearer(&a_writer), &ack).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (401, Some("token_invalid")),
        "{v}"
    );
    // A forged token has the shape but not the signature.
    let (status, v) = post_auth(&c, &callback, &bearer(&forged(&cb_token)), &ack).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (401, Some("token_invalid")),
        "{v}"
    );
    // Alpha's token against beta's subscription id: the token names
    // alpha's `hook`, never beta's `bhook`.
    let (status, v) = post_auth(
        &c,
        &format!("{}/callback", sub("bhook")),
        &bearer(&cb_token),
        &ack,
    )
    .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("FENCED")),
        "{v}"
    );
    let (_, v) = json_of(c.get(sub("bhook")).bearer_auth(&b)).await;
    assert!(paths(&v).is_empty(), "{v}");
    // Only callback, ack and release take the token: not claim, not reads.
    let (status, _) = post_auth(
        &c,
        &format!("{}/claim", sub("hook")),
        &bearer(&cb_token),
        &json!({"worker": "w"}),
    )
    .await;
    assert_eq!(status, 401);
    let r = c
        .get(sub("hook"))
        .bearer_auth(&cb_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // The receiver's callback with its token: accepted, and the ack moves
    // the cursor.
    let (status, v) = post_auth(&c, &callback, &bearer(&cb_token), &ack).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v, json!({"ok": true, "next_wake": false}));
    let (_, v) = json_of(c.get(sub("hook")).bearer_auth(&a)).await;
    assert_eq!(v["streams"][0]["acked_offset"], tail.as_str(), "{v}");
    // Replayed after the wake ended: fenced.
    let (status, v) = post_auth(&c, &callback, &bearer(&cb_token), &ack).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("FENCED")),
        "{v}"
    );

    // Pull-wake: the worker claims with its own credential, then
    // heartbeats, releases and acks with the claim token.
    let r = c
        .put(url("wake"))
        .bearer_auth(&a)
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let (status, v) = json_of(
        c.put(sub("pw"))
            .bearer_auth(&a)
            .json(&json!({"type": "pull-wake", "pattern": "jobs/*", "wake_stream": "wake"})),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let r = c
        .put(url("jobs/1"))
        .bearer_auth(&a)
        .header("content-type", "text/plain")
        .body("job")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let wakes = first_messages(&c, &url("wake"), &a).await;
    assert_eq!(wakes[0]["subscription_id"], "pw");
    let claim = |worker: &str| {
        c.post(format!("{}/claim", sub("pw")))
            .bearer_auth(&a_writer)
            .json(&json!({"worker": worker}))
    };
    let (status, v) = json_of(claim("w1")).await;
    assert_eq!(status, 200, "{v}");
    let claim_token = v["token"].as_str().unwrap().to_owned();
    let fence = json!({"wake_id": v["wake_id"], "generation": v["generation"]});
    let ack_url = format!("{}/ack", sub("pw"));
    let (status, v) = post_auth(&c, &ack_url, &bearer(&claim_token), &fence).await;
    assert_eq!(status, 200, "heartbeat: {v}");
    assert_eq!(v["ok"], true);
    let (status, v) = post_auth(
        &c,
        &format!("{}/release", sub("pw")),
        &bearer(&forged(&claim_token)),
        &fence,
    )
    .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (401, Some("token_invalid")),
        "{v}"
    );
    let (status, v) = post_auth(
        &c,
        &format!("{}/release", sub("pw")),
        &bearer(&claim_token),
        &fence,
    )
    .await;
    assert_eq!(status, 204, "release: {v}");
    // Work is still pending: a new wake, claimed and acknowledged.
    let (status, v) = json_of(claim("w2")).await;
    assert_eq!(status, 200, "{v}");
    let claim_token = v["token"].as_str().unwrap().to_owned();
    let tail = v["streams"][0]["tail_offset"].as_str().unwrap().to_owned();
    let done = json!({
        "wake_id": v["wake_id"],
        "generation": v["generation"],
        "acks": [{"stream": "jobs/1", "offset": tail}],
        "done": true,
    });
    let (status, v) = post_auth(&c, &ack_url, &bearer(&claim_token), &done).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v, json!({"ok": true, "next_wake": false}));
    let (_, v) = json_of(c.get(sub("pw")).bearer_auth(&a)).await;
    assert_eq!(v["streams"][0]["acked_offset"], tail.as_str(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_tenant_callbacks_take_the_tenant_from_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let served = start(dir.path(), "[authz]\ntenant_source = \"path\"\n").await;
    let base = served.base.clone();
    let c = reqwest::Client::new();
    let (a, b) = (token("alpha", "admin"), token("beta", "admin"));
    let url = |t: &str, p: &str| format!("{base}/t/{t}/v1/stream/{p}");
    let sub = |t: &str, id: &str| url(t, &format!("__ds/subscriptions/{id}"));
    let (hook, mut rx) = receiver_answering(json!({})).await;
    for (t, who) in [("alpha", &a), ("beta", &b)] {
        let (status, v) =
            json_of(c.put(sub(t, "h")).bearer_auth(who).json(
                &json!({"type": "webhook", "pattern": "events/*", "webhook": {"url": hook}}),
            ))
            .await;
        assert_eq!(status, 201, "{v}");
    }
    let r = c
        .put(url("alpha", "events/1"))
        .bearer_auth(&a)
        .header("content-type", "text/plain")
        .body("event")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let p = rx.recv().await.unwrap();
    let callback = p["callback_url"].as_str().unwrap().to_owned();
    assert_eq!(callback, format!("{}/callback", sub("alpha", "h")));
    let auth = format!("Bearer {}", p["callback_token"].as_str().unwrap());
    let tail = p["streams"][0]["tail_offset"].as_str().unwrap().to_owned();
    let ack = json!({
        "wake_id": p["wake_id"],
        "generation": p["generation"],
        "acks": [{"stream": "events/1", "offset": tail}],
        "done": true,
    });
    // Alpha's token at beta's URL (beta has an `h` too): like a missing id.
    let (status, v) = post_auth(&c, &format!("{}/callback", sub("beta", "h")), &auth, &ack).await;
    assert_eq!(status, 404, "{v}");
    // Tenant-free subscription routes are not served in path mode.
    let (status, v) = post_auth(
        &c,
        &format!("{base}/v1/stream/__ds/subscriptions/h/callback"),
        &auth,
        &ack,
    )
    .await;
    assert_eq!(status, 404, "{v}");
    let (status, _) = post_auth(&c, &callback, "Bearer garbage", &ack).await;
    assert_eq!(status, 401);
    // Beta's subscription is untouched; alpha's callback is accepted.
    let (_, v) = json_of(c.get(sub("beta", "h")).bearer_auth(&b)).await;
    assert!(paths(&v).is_empty(), "{v}");
    let (status, v) = post_auth(&c, &callback, &auth, &ack).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["ok"], true);
    let (_, v) = json_of(c.get(sub("alpha", "h")).bearer_auth(&a)).await;
    assert_eq!(v["streams"][0]["acked_offset"], tail.as_str(), "{v}");
}
