//! Shared harness: a real nats-server (JetStream), an in-process Weir
//! server on 127.0.0.1:0 (memory backend), a bridge task, and helpers to
//! publish events and read the bridged stream back over HTTP.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use tokio::net::TcpListener;
use tokio::sync::watch;
use weir_bridge::{BatchConfig, BridgeConfig, BridgeError, Mapping, WeirAuth};
use weir_server::transport::{self, TransportConfig};
use weir_server::{AppState, ServerConfig, router};
use weir_storage::memory::MemoryStorage;

pub use weir_testkit::NatsServer;

/// A Weir server in this process.
pub struct Weir {
    pub base: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Weir {
    pub async fn start() -> Weir {
        Weir::start_on(TcpListener::bind("127.0.0.1:0").await.unwrap()).await
    }

    /// A server on a listener the caller bound (e.g. a port a bridge is
    /// already retrying against).
    pub async fn start_on(listener: TcpListener) -> Weir {
        let state = AppState::new(
            Arc::new(MemoryStorage::default()),
            ServerConfig::conformance(),
        );
        let app = router(state);
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = transport::serve(listener, app, TransportConfig::default(), async {
                let _ = rx.await;
            })
            .await;
        });
        Weir {
            base: format!("http://{addr}"),
            _stop: tx,
        }
    }

    pub fn stream_url(&self, name: &str) -> String {
        format!("{}/v1/stream/{name}", self.base)
    }
}

/// Every record of a JSON stream, read from the start (all pages).
pub async fn read_all(url: &str) -> Vec<serde_json::Value> {
    let client = reqwest::Client::new();
    let mut offset = "-1".to_owned();
    let mut out = Vec::new();
    loop {
        let r = client
            .get(url)
            .query(&[("offset", &offset)])
            .send()
            .await
            .unwrap();
        if r.status() == 404 {
            return out;
        }
        assert!(r.status().is_success(), "GET {url}: {}", r.status());
        let next = r
            .headers()
            .get("stream-next-offset")
            .map(|v| v.to_str().unwrap().to_owned());
        let done = r.headers().contains_key("stream-up-to-date");
        let body = r.bytes().await.unwrap();
        if !body.is_empty() {
            let page: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
            out.extend(page);
        }
        match next {
            Some(n) if !done && n != offset => offset = n,
            _ => return out,
        }
    }
}

/// Polls `read_all` until it holds at least `n` records (bounded: a stuck
/// bridge fails the test instead of hanging it).
pub async fn wait_for(url: &str, n: usize) -> Vec<serde_json::Value> {
    let start = Instant::now();
    loop {
        let recs = read_all(url).await;
        if recs.len() >= n {
            return recs;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "stream has {} of {n} records after 60 s",
            recs.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn config(nats: &NatsServer, url: &str) -> BridgeConfig {
    BridgeConfig {
        nats_url: nats.url().to_owned(),
        mappings: vec![Mapping::new("orders", "orders.>", url)],
        auth: WeirAuth::None,
        batch: BatchConfig {
            max_events: 16,
            linger: Duration::from_millis(5),
            ..BatchConfig::default()
        },
    }
}

/// A running bridge task with its stop switch.
pub struct Running {
    pub stop: watch::Sender<bool>,
    pub task: tokio::task::JoinHandle<Result<(), BridgeError>>,
}

pub fn spawn(cfg: BridgeConfig) -> Running {
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(weir_bridge::run(cfg, rx));
    Running { stop, task }
}

/// JetStream context on the test server, once the bridge created the
/// capture stream (bounded wait).
pub async fn jetstream_ready(nats: &NatsServer, stream: &str) -> jetstream::Context {
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let start = Instant::now();
    while js.get_stream(stream).await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "capture stream {stream} never appeared"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    js
}

/// Publishes `orders.placed` events `from..to` (payload `{"n": i}`),
/// waiting for JetStream's ack of each.
pub async fn publish(js: &jetstream::Context, from: u64, to: u64) {
    for i in from..to {
        js.publish(
            "orders.placed",
            serde_json::to_vec(&serde_json::json!({ "n": i }))
                .unwrap()
                .into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
}

/// Asserts the stream holds exactly the events `0..n`, once each, in order,
/// with JetStream sequences 1..=n.
pub fn assert_exactly(recs: &[serde_json::Value], n: u64) {
    let got: Vec<u64> = recs
        .iter()
        .map(|r| r["data"]["n"].as_u64().unwrap())
        .collect();
    let want: Vec<u64> = (0..n).collect();
    assert_eq!(got, want, "bridged events differ from the published ones");
    let seqs: Vec<u64> = recs.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>());
    for r in recs {
        assert_eq!(r["subject"], "orders.placed");
        assert!(r["time"].as_str().unwrap().ends_with('Z'));
    }
}
