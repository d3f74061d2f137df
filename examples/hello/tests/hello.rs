#![allow(clippy::unwrap_used)]
//! In-process, under tokio's paused clock: no NATS server needed.

use std::time::Duration;

use hello::{Greeter, GreeterClient, HelloReply, HelloRequest};
use weir_service::{Client, Ctx, ErrorCode, ServiceContract, ServiceError};

#[tokio::test(start_paused = true)]
async fn greets_and_refuses() {
    let bus = weir_testkit::in_process();
    let _svc = Greeter {
        greeting: "Hi".into(),
    }
    .builder()
    .start(bus.clone())
    .await
    .unwrap();
    let greeter = GreeterClient::connect(Client::new(bus)).await.unwrap();
    let ctx = Ctx::with_timeout(Duration::from_secs(1));

    let reply = greeter
        .hello(&ctx, HelloRequest { name: "Ada".into() })
        .await
        .unwrap();
    assert_eq!(
        reply,
        HelloReply {
            greeting: "Hi, Ada!".into()
        }
    );

    let err = greeter
        .hello(
            &ctx,
            HelloRequest {
                name: "nobody".into(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound));
    let err = greeter
        .hello(
            &ctx,
            HelloRequest {
                name: String::new(),
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ServiceError::Remote(p) if p.code == ErrorCode::JsonInvalid));
}
