//! Shutdown drains: open WebSockets are closed with 1001 and SSE streams
//! end, so graceful shutdown finishes instead of waiting on them forever.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::json;
use support::{http, start_until};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use weir_gateway::GatewayConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_streams() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let env = start_until(
        GatewayConfig::default(),
        weir_layer::LayerConfig::default(),
        async move {
            let _ = rx.await;
        },
    )
    .await;
    let url = format!("{}/ws", env.base.replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(Message::Text(
        json!({"op": "subscribe", "id": "s", "subject": "x.>"})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let first = ws.next().await.unwrap().unwrap();
    assert!(first.to_text().unwrap().contains("subscribed"));
    let sse = http()
        .get(format!("{}/events?subject=x.>", env.base))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);

    tx.send(()).unwrap();

    let close = loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("the gateway closes the WebSocket")
        {
            Some(Ok(Message::Close(f))) => break f.expect("a close frame"),
            Some(Ok(_)) => {}
            other => panic!("unexpected end: {other:?}"),
        }
    };
    assert_eq!(close.code, CloseCode::Away);
    // The SSE body ends (heartbeats aside, nothing more comes).
    let mut body = sse.bytes_stream();
    loop {
        match tokio::time::timeout(Duration::from_secs(20), body.next())
            .await
            .expect("the SSE stream ends")
        {
            None => break,
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("stream error: {e}"),
        }
    }
}
