//! The Weir stream is closed (or deleted) under the bridge: it stops with
//! an error that says so instead of retrying forever or recreating it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use weir_bridge::BridgeError;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_stream_stops_the_bridge() {
    let nats = NatsServer::start();
    let weir = Weir::start().await;
    let url = weir.stream_url("orders");
    let bridge = spawn(config(&nats, &url));
    let js = jetstream_ready(&nats, "WEIR_BRIDGE_ORDERS").await;
    publish(&js, 0, 5).await;
    wait_for(&url, 5).await;

    let r = reqwest::Client::new()
        .post(&url)
        .header("stream-closed", "true")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    publish(&js, 5, 6).await;
    let err = bridge.task.await.unwrap().unwrap_err();
    assert!(matches!(err, BridgeError::StreamClosed { .. }), "{err}");
    assert_eq!(read_all(&url).await.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_stream_stops_the_bridge() {
    let nats = NatsServer::start();
    let weir = Weir::start().await;
    let url = weir.stream_url("orders");
    let bridge = spawn(config(&nats, &url));
    let js = jetstream_ready(&nats, "WEIR_BRIDGE_ORDERS").await;
    publish(&js, 0, 5).await;
    wait_for(&url, 5).await;

    let r = reqwest::Client::new().delete(&url).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    publish(&js, 5, 6).await;
    let err = bridge.task.await.unwrap().unwrap_err();
    assert!(matches!(err, BridgeError::StreamGone { .. }), "{err}");
}
