#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Connection options against a real nats-server that requires credentials.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use weir_service::transport::nats::ConnectConfig;
use weir_service::{Client, Ctx, Reply, Request, ServiceBuilder, SetupError};
use weir_testkit::NatsServer;

#[tokio::test]
async fn user_password_required_and_used() {
    let server = NatsServer::start_with(&["--user", "svc", "--pass", "s3cret"]);
    let mut cfg = ConnectConfig::new(server.url());
    cfg.user = Some("svc".into());
    cfg.password = Some("wrong".into());
    let r = tokio::time::timeout(Duration::from_secs(10), cfg.connect())
        .await
        .unwrap();
    assert!(matches!(r, Err(SetupError::Connect(_))), "{r:?}");
    cfg.password = Some("s3cret".into());
    cfg.name = Some("weir-test".into());
    let t = Arc::new(cfg.connect().await.unwrap());
    let _svc = ServiceBuilder::new("auth", "1.0.0")
        .endpoint(
            "echo",
            |r: Request| async move { Ok(Reply::new(r.payload)) },
        )
        .start(t.clone())
        .await
        .unwrap();
    let c = Client::new(t);
    let r = c
        .request(
            &Ctx::with_timeout(Duration::from_secs(2)),
            "auth.echo",
            Bytes::from("hi"),
            false,
        )
        .await
        .unwrap();
    assert_eq!(r, Bytes::from("hi"));
}

#[tokio::test]
async fn token_auth() {
    let server = NatsServer::start_with(&["--auth", "t0ken"]);
    let mut cfg = ConnectConfig::new(server.url());
    cfg.token = Some("t0ken".into());
    cfg.connect().await.unwrap();
}
