#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A durable listener on a transport without JetStream, or with a filter
//! outside its family, fails at start with a configuration error.

use weir_service::durable::{DurableListener, Family};
use weir_service::{Problem, ServiceBuilder, SetupError};

fn listener(filter: &str) -> DurableListener {
    DurableListener::new("l", Family::new("orders"), filter)
        .handler(|_ev| async { Ok::<(), Problem>(()) })
}

#[tokio::test]
async fn no_jetstream_is_a_setup_error() {
    let err = ServiceBuilder::new("svc", "1.0.0")
        .durable(listener("orders.>"))
        .start(weir_testkit::in_process())
        .await
        .unwrap_err();
    match err {
        SetupError::Config(m) => assert!(m.contains("no JetStream"), "{m}"),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn filter_outside_the_family_is_refused() {
    let server = weir_testkit::NatsServer::start();
    let err = ServiceBuilder::new("svc", "1.0.0")
        .durable(listener("payments.>"))
        .start(server.connect().await)
        .await
        .unwrap_err();
    match err {
        SetupError::Config(m) => assert!(m.contains("outside family"), "{m}"),
        other => panic!("unexpected {other:?}"),
    }
}
