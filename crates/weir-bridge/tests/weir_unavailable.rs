//! Weir unreachable: the bridge keeps retrying (events wait in JetStream)
//! and delivers everything once Weir comes up; a stop requested while it
//! is still waiting ends it cleanly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_wait_until_weir_is_back() {
    let nats = NatsServer::start();
    // A port with nothing listening on it (yet).
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let url = format!("http://{addr}/v1/stream/orders");
    let bridge = spawn(config(&nats, &url));

    // The bridge cannot create the capture stream before it reached Weir,
    // so create it the way an application would (the bridge binds to it).
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: "APP_ORDERS".into(),
        subjects: vec!["orders.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    publish(&js, 0, 30).await;
    assert!(
        !bridge.task.is_finished(),
        "the bridge waits for Weir instead of failing"
    );

    let _weir = Weir::start_on(TcpListener::bind(addr).await.unwrap()).await;
    let recs = wait_for(&url, 30).await;
    assert_exactly(&recs, 30);
    bridge.stop.send(true).unwrap();
    bridge.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_while_weir_is_down_returns() {
    let nats = NatsServer::start();
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let bridge = spawn(config(&nats, &format!("http://{addr}/v1/stream/orders")));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    bridge.stop.send(true).unwrap();
    bridge.task.await.unwrap().unwrap();
}
