//! `GET /ws`: subscribe (events published on NATS arrive), call (reply and
//! error frames), unsubscribe, and a slow client closed with 1008.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::start;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use weir_gateway::GatewayConfig;
use weir_gateway::config::WsConfig;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(base: &str) -> Ws {
    let url = format!("{}/ws", base.replace("http://", "ws://"));
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// The next JSON frame (a generous bound so a broken gateway fails the
/// test instead of hanging it).
async fn next(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("a frame")
            .expect("the connection is open")
            .unwrap();
        if let Message::Text(t) = m {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_and_call() {
    let env = start(GatewayConfig::default(), weir_layer::LayerConfig::default()).await;
    let mut ws = connect(&env.base).await;

    send(
        &mut ws,
        json!({"op": "subscribe", "id": "s1", "subject": "orders.*"}),
    )
    .await;
    assert_eq!(
        next(&mut ws).await,
        json!({"type": "subscribed", "id": "s1", "subject": "orders.*"})
    );

    // The gateway's NATS subscription may reach the server a moment after
    // the ack: publish until the event comes back.
    let bus = env.bus.clone();
    let publisher = tokio::spawn(async move {
        loop {
            bus.publish(
                "orders.created".into(),
                None,
                None,
                Bytes::from_static(br#"{"order":42}"#),
            )
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let ev = next(&mut ws).await;
    publisher.abort();
    assert_eq!(
        ev,
        json!({"type": "event", "id": "s1", "subject": "orders.created", "data": {"order": 42}})
    );

    // A call and its reply, while events may still be arriving.
    send(
        &mut ws,
        json!({"op": "call", "id": "c1", "service": "calc", "endpoint": "divide", "body": {"a": 9, "b": 3}}),
    )
    .await;
    send(
        &mut ws,
        json!({"op": "call", "id": "c2", "service": "calc", "endpoint": "divide", "body": {"a": 9, "b": 0}}),
    )
    .await;
    send(
        &mut ws,
        json!({"op": "call", "id": "c3", "service": "calc", "endpoint": "slow", "body": {"millis": 5000}, "timeout_ms": 100}),
    )
    .await;
    send(
        &mut ws,
        json!({"op": "call", "id": "c4", "service": "nope", "endpoint": "x"}),
    )
    .await;
    send(&mut ws, json!({"op": "launch", "id": "c5"})).await;
    let mut got = std::collections::BTreeMap::new();
    while got.len() < 5 {
        let f = next(&mut ws).await;
        if f["type"] == "event" {
            continue;
        }
        got.insert(f["id"].as_str().unwrap().to_owned(), f);
    }
    assert_eq!(
        got["c1"],
        json!({"type": "reply", "id": "c1", "body": {"quotient": 3}})
    );
    assert_eq!(got["c2"]["type"], "error");
    assert_eq!(got["c2"]["problem"]["code"], "limit_invalid");
    assert_eq!(got["c2"]["problem"]["status"], 400);
    assert_eq!(got["c3"]["problem"]["code"], "deadline_exceeded");
    assert_eq!(got["c3"]["problem"]["status"], 504);
    assert_eq!(got["c4"]["problem"]["code"], "not_found");
    assert_eq!(got["c5"]["problem"]["code"], "json_invalid");

    send(&mut ws, json!({"op": "unsubscribe", "id": "s1"})).await;
    loop {
        let f = next(&mut ws).await;
        if f["type"] == "event" {
            continue;
        }
        assert_eq!(f, json!({"type": "unsubscribed", "id": "s1"}));
        break;
    }
    send(&mut ws, json!({"op": "unsubscribe", "id": "s1"})).await;
    let f = next(&mut ws).await;
    assert_eq!(f["problem"]["code"], "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_is_closed() {
    let cfg = GatewayConfig {
        ws: WsConfig {
            outbound_queue: 4,
            max_subscriptions: 1,
            ..WsConfig::default()
        },
        ..GatewayConfig::default()
    };
    let env = start(cfg, weir_layer::LayerConfig::default()).await;
    let mut ws = connect(&env.base).await;
    send(
        &mut ws,
        json!({"op": "subscribe", "id": "s", "subject": "flood"}),
    )
    .await;
    assert_eq!(next(&mut ws).await["type"], "subscribed");
    send(
        &mut ws,
        json!({"op": "subscribe", "id": "t", "subject": "other"}),
    )
    .await;
    assert_eq!(next(&mut ws).await["problem"]["code"], "limit_exceeded");

    // Far more than socket buffers hold, while the client reads nothing.
    let payload = Bytes::from(format!("{{\"pad\":\"{}\"}}", "x".repeat(16 * 1024)));
    for _ in 0..6000 {
        env.bus
            .publish("flood".into(), None, None, payload.clone())
            .await
            .unwrap();
    }
    env.bus.flush().await.unwrap();
    // Now read: events that made it, then the close frame with the reason.
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("the gateway closes the connection")
        {
            Some(Ok(Message::Close(f))) => break f,
            Some(Ok(_)) => {}
            other => panic!("unexpected end: {other:?}"),
        }
    };
    let close = close.expect("a close frame with a reason");
    assert_eq!(close.code, CloseCode::Policy);
    assert!(close.reason.contains("slow consumer"), "{}", close.reason);
}
