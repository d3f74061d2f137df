//! A second bridge instance with the same mapping takes over: the first
//! stops with `Fenced`, and the stream still holds every event once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use weir_bridge::sink::{Appended, WeirSink};
use weir_bridge::{BatchConfig, BridgeError, WeirAuth};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_instance_fences_the_older() {
    let nats = NatsServer::start();
    let weir = Weir::start().await;
    let url = weir.stream_url("orders");
    let first = spawn(config(&nats, &url));
    let js = jetstream_ready(&nats, "WEIR_BRIDGE_ORDERS").await;
    publish(&js, 0, 30).await;
    wait_for(&url, 30).await;

    let second = spawn(config(&nats, &url));
    let err = first.task.await.unwrap().unwrap_err();
    assert!(matches!(err, BridgeError::Fenced { .. }), "{err}");
    assert!(err.to_string().contains("newer bridge instance"));

    publish(&js, 30, 60).await;
    let recs = wait_for(&url, 60).await;
    publish(&js, 60, 61).await;
    let recs2 = wait_for(&url, 61).await;
    assert!(recs.len() <= 61);
    assert_exactly(&recs2, 61);
    second.stop.send(true).unwrap();
    second.task.await.unwrap().unwrap();
}

/// The producer-epoch rule on its own: once a newer producer appended, the
/// older one's next append is refused with `Fenced`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_epoch_is_fenced() {
    let weir = Weir::start().await;
    let url = weir.stream_url("fence");
    let cfg = BatchConfig::default();
    let (_tx, stop) = tokio::sync::watch::channel(false);
    let mut old = WeirSink::new(&url, WeirAuth::None, "p", &cfg).unwrap();
    old.ensure_stream(true).await.unwrap();
    let body = |n: u64| {
        bytes::Bytes::from(format!(
            r#"[{{"subject":"s","seq":{n},"time":"t","data":{n}}}]"#
        ))
    };
    assert_eq!(
        old.append(body(1), 1, 1, &stop).await.unwrap(),
        Appended::Done
    );

    let mut new = WeirSink::new(&url, WeirAuth::None, "p", &cfg).unwrap();
    assert_eq!(
        new.append(body(2), 2, 1, &stop).await.unwrap(),
        Appended::Done
    );
    assert!(new.epoch() > old.epoch());

    let err = old.append(body(3), 3, 1, &stop).await.unwrap_err();
    assert!(matches!(err, BridgeError::Fenced { .. }), "{err}");
    // A batch starting at or before the tail is refused, not duplicated.
    assert_eq!(
        new.append(body(2), 2, 1, &stop).await.unwrap(),
        Appended::Resync
    );
    assert_eq!(new.tail_seq().await.unwrap(), Some(2));
    assert_eq!(read_all(&url).await.len(), 2);
}
