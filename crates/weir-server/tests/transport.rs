//! Transport: HTTP/1.1, h2c, h2 over TLS via ALPN, header-read timeouts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir_server::ServerConfig;
use weir_server::transport::{TlsFiles, TransportConfig};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[tokio::test]
async fn h2c_prior_knowledge_and_http1_share_a_port() {
    let srv = TestServer::start().await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2
        .get(format!("{}/healthz", srv.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let h1 = reqwest::Client::builder().http1_only().build().unwrap();
    let r = h1
        .get(format!("{}/healthz", srv.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    srv.stop().await;
}

#[tokio::test]
async fn tls_negotiates_h2_with_alpn() {
    let tcfg = TransportConfig {
        tls: Some(TlsFiles {
            cert: fixture("cert.pem"),
            key: fixture("key.pem"),
        }),
        ..TransportConfig::default()
    };
    let cfg = ServerConfig {
        tls: true,
        ..ServerConfig::conformance()
    };
    let srv = TestServer::with(cfg, tcfg).await;
    let port = srv.base.rsplit(':').next().unwrap().to_owned();
    let cert = reqwest::Certificate::from_pem(&std::fs::read(fixture("ca.pem")).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(cert.clone())
        .https_only(true)
        .build()
        .unwrap();
    let url = format!("https://localhost:{port}/v1/stream/tls-stream");
    let r = client
        .put(&url)
        .header("content-type", "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 201);
    let loc = r.headers().get("location").unwrap().to_str().unwrap();
    assert!(
        loc.starts_with("https://"),
        "Location {loc} must use the TLS scheme"
    );

    let h1 = reqwest::Client::builder()
        .add_root_certificate(cert)
        .http1_only()
        .build()
        .unwrap();
    let r = h1.get(&url).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert_eq!(r.status(), 200);

    // Plain HTTP to a TLS port does not get served.
    let plain = reqwest::Client::new();
    assert!(
        plain
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .is_err()
    );
    srv.stop().await;
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    let tcfg = TransportConfig {
        header_read_timeout: Duration::from_millis(300),
        ..TransportConfig::default()
    };
    let srv = TestServer::with(ServerConfig::conformance(), tcfg).await;
    let addr = srv.base.trim_start_matches("http://").to_owned();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "server kept a slow-header connection open");
    assert!(started.elapsed() < Duration::from_secs(4));
    srv.stop().await;
}

#[tokio::test]
async fn many_sse_readers_share_one_h2_connection() {
    let srv = TestServer::start().await;
    srv.create("fanout", "text/plain", b"").await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let mut readers = Vec::new();
    for _ in 0..64 {
        let h2 = h2.clone();
        let url = format!("{}?offset=-1&live=sse", srv.url("fanout"));
        readers.push(tokio::spawn(async move {
            let mut r = h2.get(url).send().await.unwrap();
            assert_eq!(r.version(), reqwest::Version::HTTP_2);
            let mut got = String::new();
            while !got.contains("payload") {
                let chunk = tokio::time::timeout(Duration::from_secs(10), r.chunk())
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap();
                got.push_str(&String::from_utf8_lossy(&chunk));
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = srv
        .client
        .post(srv.url("fanout"))
        .header("content-type", "text/plain")
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    for r in readers {
        r.await.unwrap();
    }
    srv.stop().await;
}
