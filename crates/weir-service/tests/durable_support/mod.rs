//! Shared by the durable_* tests: a JetStream server and waiting helpers.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use weir_service::durable::{DeadLetter, DeadLetters};
use weir_service::{NatsTransport, Transport};
use weir_testkit::NatsServer;

/// A bound on how long a condition may take to become true. Not a timing
/// assertion: a loaded machine only makes the test slower.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    loop {
        if f().await {
            return;
        }
        assert!(start.elapsed() < PATIENCE, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub struct Env {
    pub server: NatsServer,
    pub nats: NatsTransport,
    pub transport: Arc<dyn Transport>,
}

pub async fn env() -> Env {
    let server = NatsServer::start();
    let nats = server.nats().await;
    let transport: Arc<dyn Transport> = Arc::new(nats.clone());
    Env {
        server,
        nats,
        transport,
    }
}

/// The state of `consumer` on `stream` (pending and unacknowledged counts).
pub async fn consumer_info(
    js: &async_nats::jetstream::Context,
    stream: &str,
    consumer: &str,
) -> async_nats::jetstream::consumer::Info {
    let mut c: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream(stream)
        .await
        .unwrap()
        .get_consumer(consumer)
        .await
        .unwrap();
    c.info().await.unwrap().clone()
}

/// Waits until `consumer` on `stream` has nothing pending or unacknowledged.
pub async fn eventually_all_acked(
    js: &async_nats::jetstream::Context,
    stream: &str,
    consumer: &str,
) {
    eventually(
        &format!("{consumer} on {stream}: nothing pending"),
        move || async move {
            let i = consumer_info(js, stream, consumer).await;
            i.num_pending == 0 && i.num_ack_pending == 0
        },
    )
    .await;
}

pub async fn dead_letters(js: &async_nats::jetstream::Context) -> Vec<(u64, DeadLetter)> {
    let d = DeadLetters::new(js.clone());
    d.ensure().await.unwrap();
    d.list(1000).await.unwrap()
}
