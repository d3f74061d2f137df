//! Test harness: the real router on a real socket (`127.0.0.1:0`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use tokio::net::TcpListener;
use weir_server::transport::{self, TransportConfig};
use weir_server::{AppState, ServerConfig, router};
use weir_storage::Storage;
use weir_storage::memory::MemoryStorage;

/// A running server.
pub struct TestServer {
    pub base: String,
    pub storage: Arc<dyn Storage>,
    pub client: reqwest::Client,
    pub state: AppState,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::with(ServerConfig::conformance(), TransportConfig::default()).await
    }

    pub async fn with(cfg: ServerConfig, tcfg: TransportConfig) -> TestServer {
        TestServer::with_storage(Arc::new(MemoryStorage::default()), cfg, tcfg).await
    }

    pub async fn with_storage(
        storage: Arc<dyn Storage>,
        cfg: ServerConfig,
        tcfg: TransportConfig,
    ) -> TestServer {
        TestServer::with_state(AppState::new(storage, cfg), tcfg).await
    }

    /// Serves an application state built by the test (a production layer,
    /// a particular backend).
    pub async fn with_state(state: AppState, tcfg: TransportConfig) -> TestServer {
        let storage = state.storage.clone();
        let app = router(state.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            transport::serve(listener, app, tcfg, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        TestServer {
            base: format!("http://{addr}"),
            storage,
            client: reqwest::Client::new(),
            state,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/v1/stream/{path}", self.base)
    }

    /// Creates a stream with a content type and optional body.
    pub async fn create(&self, path: &str, ct: &str, body: &'static [u8]) {
        let r = self
            .client
            .put(self.url(path))
            .header("content-type", ct)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "creating {path}");
    }

    /// Full contents and tail of a stream, via the HTTP API.
    pub async fn snapshot(&self, path: &str) -> (u16, Vec<u8>, Option<String>, Option<String>) {
        let r = self.client.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        let next = r
            .headers()
            .get("stream-next-offset")
            .map(|v| v.to_str().unwrap().to_owned());
        let closed = r
            .headers()
            .get("stream-closed")
            .map(|v| v.to_str().unwrap().to_owned());
        (status, r.bytes().await.unwrap().to_vec(), next, closed)
    }

    pub async fn stop(mut self) {
        self.state.begin_shutdown();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

/// Parses an RFC 9457 problem body and returns its `code`.
pub fn problem_code(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_else(|_| {
        panic!("not JSON: {}", String::from_utf8_lossy(body));
    });
    v["code"].as_str().unwrap_or_default().to_owned()
}
