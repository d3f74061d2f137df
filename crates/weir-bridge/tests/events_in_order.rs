//! Events published on the subject appear on the Weir stream, in order,
//! once each, as readable JSON records.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_events_become_the_stream() {
    let nats = NatsServer::start();
    let weir = Weir::start().await;
    let url = weir.stream_url("orders");
    let bridge = spawn(config(&nats, &url));
    let js = jetstream_ready(&nats, "WEIR_BRIDGE_ORDERS").await;

    publish(&js, 0, 200).await;
    let recs = wait_for(&url, 200).await;
    assert_exactly(&recs, 200);

    // A non-JSON payload survives as base64.
    js.publish("orders.raw", b"\x00\x01".as_slice().into())
        .await
        .unwrap()
        .await
        .unwrap();
    let recs = wait_for(&url, 201).await;
    assert_eq!(recs[200]["subject"], "orders.raw");
    assert_eq!(recs[200]["data_base64"], "AAE=");

    bridge.stop.send(true).unwrap();
    bridge.task.await.unwrap().unwrap();
    assert_eq!(
        read_all(&url).await.len(),
        201,
        "nothing appended after stop"
    );
}
