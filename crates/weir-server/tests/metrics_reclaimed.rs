//! `/metrics` exports the bytes compaction gave back
//! (`weir_storage_reclaimed_bytes_total`): streams written and deleted over
//! HTTP on the embedded log, checkpoints and compaction runs until segments
//! are removed, then a scrape shows exactly the log's `reclaimed_bytes`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use weir_server::transport::TransportConfig;
use weir_server::{AppState, ServerConfig};
use weir_storage::Storage;
use weir_storage::log::backend::{self, LogOptions, LogStorage};
use weir_storage::log::compact::{self, CompactOptions};
use weir_storage::log::engine::{EngineOptions, SyncMode};

/// The value of an unlabelled sample in Prometheus text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_bytes_compaction_reclaimed() {
    weir_layer::metrics::install().unwrap();
    let dir = std::env::temp_dir().join(format!(
        "weir-metrics-reclaimed-{}-{:08x}",
        std::process::id(),
        rand_suffix()
    ));
    let opts = LogOptions {
        engine: EngineOptions {
            segment_size: 256 * 1024,
            sync: SyncMode::None,
            ..EngineOptions::default()
        },
        min_free_bytes: 0,
        ..LogOptions::default()
    };
    let log: Arc<LogStorage> = Arc::new(backend::open(&dir, opts).unwrap().0);
    let layer = weir_layer::Production::build(
        &weir_layer::LayerConfig::default(),
        None,
        weir_layer::clock::system(),
    )
    .unwrap();
    let state = AppState::new(log.clone(), ServerConfig::default()).with_layer(layer);
    let srv = common::TestServer::with_state(state, TransportConfig::default()).await;
    let base = srv.base.clone();
    let client = reqwest::Client::new();
    let url = |n: &str| format!("{base}/v1/stream/{n}");
    let send = |req: reqwest::RequestBuilder| async move {
        let r = req.send().await.unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    };

    let scrape = || async {
        let r = client.get(format!("{base}/metrics")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    };
    let before = sample(&scrape().await, "weir_storage_reclaimed_bytes_total").unwrap_or(0.0);
    assert_eq!(before, 0.0);

    // About five segments of data in streams that are then deleted.
    send(client.put(url("keep")).header("content-type", "text/plain")).await;
    let chunk = vec![b'x'; 10_000];
    for t in 0..6 {
        let n = format!("trash{t}");
        send(client.put(url(&n)).header("content-type", "text/plain")).await;
        for _ in 0..20 {
            send(
                client
                    .post(url(&n))
                    .header("content-type", "text/plain")
                    .body(chunk.clone()),
            )
            .await;
        }
        send(client.delete(url(&n))).await;
    }

    // Checkpoint + compaction rounds (what `weir serve` runs after every
    // 64 MiB of log), a little new data between them so each checkpoint
    // lands at a new position, until dead segments are removed.
    let opts = CompactOptions {
        max_segments_per_run: 100,
        ..CompactOptions::default()
    };
    for round in 0..10 {
        send(
            client
                .post(url("keep"))
                .header("content-type", "text/plain")
                .body(format!("round {round}")),
        )
        .await;
        weir_storage::log::checkpoint::write(&log).await.unwrap();
        compact::run(&log, &opts).await.unwrap();
        if log.backend().reclaimed_bytes() > 0 {
            break;
        }
    }
    let reclaimed = log.backend().reclaimed_bytes();
    assert!(reclaimed > 0, "compaction removed no segment");

    let text = scrape().await;
    let exported = sample(&text, "weir_storage_reclaimed_bytes_total")
        .unwrap_or_else(|| panic!("no weir_storage_reclaimed_bytes_total in\n{text}"));
    assert_eq!(exported, reclaimed as f64);
    assert!(
        text.contains("# TYPE weir_storage_reclaimed_bytes_total counter"),
        "{text}"
    );

    srv.stop().await;
    log.shutdown().await;
    drop(log);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A little randomness for the data directory's name (no extra dependency).
fn rand_suffix() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish() as u32
}
