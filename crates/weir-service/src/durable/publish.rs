//! The durable publisher: publish-side dedupe and an awaited PubAck.

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;

use super::error::DurableError;
use super::{EVENT_ID, MSG_ID};

/// What the stream answered to a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub stream: String,
    /// The stream sequence the event is stored at (for a duplicate: the
    /// sequence of the copy stored first).
    pub seq: u64,
    /// The broker already had an event with this `Nats-Msg-Id` inside the
    /// family's duplicate window and did not store it again.
    pub duplicate: bool,
    pub event_id: String,
}

/// Publishes events into family streams and waits for the stream's
/// acknowledgement, so a returned `Ok` means the event is stored.
#[derive(Debug, Clone)]
pub struct DurablePublisher {
    js: jetstream::Context,
}

impl DurablePublisher {
    pub fn new(js: jetstream::Context) -> DurablePublisher {
        DurablePublisher { js }
    }

    /// A fresh event id (22 random alphanumerics).
    pub fn new_event_id() -> String {
        crate::server::new_id()
    }

    /// Publishes `value` as JSON under `event_id`. Retrying with the same
    /// id after an error or a lost ack is safe: the broker drops the copy
    /// inside the duplicate window and the ledger or inbox after it.
    pub async fn publish_json<T: serde::Serialize + ?Sized>(
        &self,
        subject: &str,
        event_id: &str,
        value: &T,
    ) -> Result<Published, DurableError> {
        let payload =
            serde_json::to_vec(value).map_err(|e| DurableError::Invalid(e.to_string()))?;
        self.publish(subject, event_id, HeaderMap::new(), Bytes::from(payload))
            .await
    }

    /// Publishes `payload` with `headers`; sets `Nats-Msg-Id` and
    /// `Weir-Event-Id` to `event_id`.
    pub async fn publish(
        &self,
        subject: &str,
        event_id: &str,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<Published, DurableError> {
        self.publish_with_msg_id(subject, event_id, event_id, headers, payload)
            .await
    }

    /// Like [`publish`](Self::publish) with a broker dedupe id different
    /// from the logical event id — what a DLQ replay needs, since the
    /// original's `Nats-Msg-Id` may still be inside the duplicate window.
    pub async fn publish_with_msg_id(
        &self,
        subject: &str,
        event_id: &str,
        msg_id: &str,
        mut headers: HeaderMap,
        payload: Bytes,
    ) -> Result<Published, DurableError> {
        if event_id.is_empty() || msg_id.is_empty() {
            return Err(DurableError::Invalid("empty event id".into()));
        }
        headers.insert(MSG_ID, msg_id);
        headers.insert(EVENT_ID, event_id);
        let fail = |e: &dyn std::fmt::Display| DurableError::Publish {
            subject: subject.to_owned(),
            reason: e.to_string(),
        };
        let ack = self
            .js
            .publish_with_headers(subject.to_owned(), headers, payload)
            .await
            .map_err(|e| fail(&e))?
            .await
            .map_err(|e| fail(&e))?;
        metrics::counter!(crate::metrics::EVENTS_PUBLISHED,
            "duplicate" => if ack.duplicate { "true" } else { "false" })
        .increment(1);
        Ok(Published {
            stream: ack.stream,
            seq: ack.sequence,
            duplicate: ack.duplicate,
            event_id: event_id.to_owned(),
        })
    }
}
