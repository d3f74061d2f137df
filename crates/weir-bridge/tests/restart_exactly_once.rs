//! The bridge's stream equals the published events after the bridge is
//! killed mid-flow (its task aborted with appends in flight), more events
//! are published while it is down, and it is started again: exactly once,
//! no gaps, in order.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_flow_is_exactly_once() {
    let nats = NatsServer::start();
    let weir = Weir::start().await;
    let url = weir.stream_url("orders");
    let bridge = spawn(config(&nats, &url));
    let js = jetstream_ready(&nats, "WEIR_BRIDGE_ORDERS").await;

    publish(&js, 0, 100).await;
    // Kill it as soon as part of the flow is through, while it is busy.
    wait_for(&url, 10).await;
    bridge.task.abort();
    let _ = bridge.task.await;
    let partial = read_all(&url).await.len();

    // Published while no bridge runs: JetStream keeps them.
    publish(&js, 100, 200).await;

    // Several kill/restart rounds, each while publishing.
    for round in 0..3u64 {
        let b = spawn(config(&nats, &url));
        let base = 200 + round * 50;
        publish(&js, base, base + 50).await;
        wait_for(&url, (base + 25) as usize).await;
        b.task.abort();
        let _ = b.task.await;
    }

    let b = spawn(config(&nats, &url));
    let recs = wait_for(&url, 350).await;
    // Give a duplicate (if any) the chance to show up before comparing.
    publish(&js, 350, 351).await;
    let recs2 = wait_for(&url, 351).await;
    assert!(recs.len() <= 351);
    assert_exactly(&recs2, 351);
    assert!(partial < 351);
    b.stop.send(true).unwrap();
    b.task.await.unwrap().unwrap();
}
