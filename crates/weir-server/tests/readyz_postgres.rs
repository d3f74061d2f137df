//! `/readyz` checks the production layer's PostgreSQL store: ready while the
//! database answers, `503 dependency_unavailable` naming PostgreSQL once it
//! is gone, and `weir_dependency_up{dependency="postgres"}` follows. Runs on
//! the machine's PostgreSQL (`WEIR_PG_URL`), in a database of its own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use weir_layer::auth::apikey::ApiKeyConfig;
use weir_layer::secret::Secret;
use weir_layer::store::StoreKind;
use weir_layer::store::postgres::testing::TestDatabase;
use weir_server::transport::TransportConfig;
use weir_server::{AppState, ServerConfig};
use weir_storage::memory::MemoryStorage;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_postgres_store() {
    weir_layer::metrics::install().unwrap();
    let db = TestDatabase::create("readyz")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut layer_cfg = weir_layer::LayerConfig::default();
    layer_cfg.auth.api_keys = ApiKeyConfig {
        enabled: true,
        store: Some(StoreKind::Postgres),
        database_url: Some(Secret::new(db.url())),
        ..Default::default()
    };
    let stores = weir_layer::store::open(&layer_cfg.auth.api_keys)
        .await
        .unwrap();
    let layer = weir_layer::Production::build(
        &layer_cfg,
        Some(stores.keys.clone()),
        weir_layer::clock::system(),
    )
    .unwrap();
    let state = AppState::new(Arc::new(MemoryStorage::default()), ServerConfig::default())
        .with_layer(layer);
    let srv = common::TestServer::with_state(state, TransportConfig::default()).await;
    let base = srv.base.clone();
    let client = reqwest::Client::new();
    let readyz = || async {
        let r = client.get(format!("{base}/readyz")).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };

    let (status, body) = readyz().await;
    assert_eq!(status, 200, "{body}");
    let metrics = weir_layer::metrics::render();
    assert!(
        metrics.contains("weir_dependency_up{dependency=\"postgres\"} 1"),
        "{metrics}"
    );

    // The database goes away under the running server (every connection
    // terminated). The answer is cached for about a second, so poll.
    db.drop_now().await.unwrap();
    let mut down = None;
    for _ in 0..300 {
        let (status, body) = readyz().await;
        if status == 503 {
            down = Some(body);
            break;
        }
        assert_eq!(status, 200, "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = down.expect("/readyz never turned 503 after the database was dropped");
    let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["code"], "dependency_unavailable", "{body}");
    let detail = problem["detail"].as_str().unwrap();
    let health: serde_json::Value = serde_json::from_str(
        detail
            .strip_prefix("production layer not ready: ")
            .unwrap_or_else(|| panic!("{detail}")),
    )
    .unwrap();
    let database = &health["database"];
    assert_eq!(database["dependency"], "postgres", "{detail}");
    assert_eq!(database["up"], false, "{detail}");
    assert!(
        database["error"]
            .as_str()
            .is_some_and(|e| e.contains("key store failure")),
        "the cause is reported: {detail}"
    );
    let metrics = weir_layer::metrics::render();
    assert!(
        metrics.contains("weir_dependency_up{dependency=\"postgres\"} 0"),
        "{metrics}"
    );

    srv.stop().await;
}
