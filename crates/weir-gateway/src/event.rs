//! The JSON shape of an event delivered to a client (SSE `data:` and the
//! WebSocket `event` frame share it).

use base64::Engine;
use serde_json::{Value, json};
use weir_service::transport::Message;

use crate::access::Grant;

/// `{"subject", "data"}` when the payload is JSON (the framework's events
/// always are), `{"subject", "data_base64"}` otherwise, so a non-JSON
/// publisher never breaks the stream.
pub fn event_body(grant: &Grant, msg: &Message) -> Value {
    let subject = grant.visible_subject(msg.subject.as_str());
    match serde_json::from_slice::<Value>(&msg.payload) {
        Ok(data) => json!({"subject": subject, "data": data}),
        Err(_) => json!({
            "subject": subject,
            "data_base64": base64::engine::general_purpose::STANDARD.encode(&msg.payload),
        }),
    }
}
