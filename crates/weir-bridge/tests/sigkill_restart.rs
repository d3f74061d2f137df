//! The bridge in a child process, killed with SIGKILL while events flow
//! (no graceful anything: in-flight appends, unacked deliveries), events
//! published while it is dead, then restarted — several times. The Weir
//! stream ends up holding every event exactly once, in order.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::process::Stdio;

fn child(nats: &NatsServer, url: &str) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_weir-bridge-test-child"))
        .args([nats.url(), url])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_flow_is_exactly_once() {
    let nats = NatsServer::start();
    let weir = Weir::start().await;
    let url = weir.stream_url("orders");
    let mut bridge = child(&nats, &url);
    let js = jetstream_ready(&nats, "WEIR_BRIDGE_ORDERS").await;

    let mut published = 0u64;
    for _round in 0..4 {
        // Publish a burst in the background and kill the child once part of
        // it is through, so the kill lands while batches are in flight.
        let burst = {
            let js = js.clone();
            let from = published;
            tokio::spawn(async move { publish(&js, from, from + 100).await })
        };
        wait_for(&url, (published + 20) as usize).await;
        bridge.start_kill().unwrap(); // SIGKILL
        bridge.wait().await.unwrap();
        burst.await.unwrap();
        published += 100;
        // More while no bridge runs.
        publish(&js, published, published + 10).await;
        published += 10;
        bridge = child(&nats, &url);
    }

    let recs = wait_for(&url, published as usize).await;
    publish(&js, published, published + 1).await;
    published += 1;
    let recs2 = wait_for(&url, published as usize).await;
    assert!(recs.len() as u64 <= published);
    assert_exactly(&recs2, published);
    bridge.start_kill().unwrap();
    let _ = bridge.wait().await;
}
