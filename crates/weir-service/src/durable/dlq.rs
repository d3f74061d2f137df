//! The dead-letter stream: events a consumer gave up on, with everything
//! needed to understand and replay them.

use std::collections::BTreeMap;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use weir_layer::problem::Problem;

use super::error::{DurableError, read, setup};
use super::publish::{DurablePublisher, Published};
use super::{EVENT_ID, MSG_ID, REPLAYED_FROM};

/// The stream every consumer dead-letters into, subjects
/// `weir.dlq.<family>.<consumer>`.
pub const DEAD_LETTER_STREAM: &str = "WEIR_DLQ";

/// One failed delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// The delivery count of this attempt (1 for the first).
    pub delivery: u64,
    /// When it failed, RFC 3339.
    pub at: String,
    /// What the handler returned (or what the framework made of a panic or
    /// a deadline).
    pub error: Problem,
}

impl Attempt {
    pub(crate) fn now(delivery: u64, error: Problem) -> Attempt {
        Attempt {
            delivery,
            at: now_rfc3339(),
            error,
        }
    }
}

pub(crate) fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The body of a dead-letter message (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The durable consumer that gave up.
    pub consumer: String,
    pub family: String,
    /// The family's stream and the original's sequence in it.
    pub stream: String,
    pub stream_seq: u64,
    /// The original subject, headers and payload (base64).
    pub subject: String,
    pub headers: BTreeMap<String, Vec<String>>,
    pub payload: String,
    /// The logical event id (`Weir-Event-Id`, else `Nats-Msg-Id`).
    pub event_id: Option<String>,
    /// The error that decided it (the last attempt's).
    pub error: Problem,
    /// Every failed attempt, oldest first.
    pub attempts: Vec<Attempt>,
    pub dead_lettered_at: String,
}

impl DeadLetter {
    /// The original payload.
    pub fn payload_bytes(&self) -> Result<Vec<u8>, DurableError> {
        base64::engine::general_purpose::STANDARD
            .decode(&self.payload)
            .map_err(|e| DurableError::Decode(e.to_string()))
    }

    pub(crate) fn encode_payload(p: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(p)
    }

    pub(crate) fn headers_of(h: Option<&HeaderMap>) -> BTreeMap<String, Vec<String>> {
        let mut out = BTreeMap::new();
        if let Some(h) = h {
            for (k, vs) in h.iter() {
                out.insert(
                    k.to_string(),
                    vs.iter().map(|v| v.as_str().to_owned()).collect(),
                );
            }
        }
        out
    }
}

/// Reads, writes and replays dead letters.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    js: jetstream::Context,
}

impl DeadLetters {
    pub fn new(js: jetstream::Context) -> DeadLetters {
        DeadLetters { js }
    }

    /// Creates the dead-letter stream if needed (kept until replayed or
    /// removed; a dead letter is never dropped for age).
    pub async fn ensure(&self) -> Result<(), DurableError> {
        self.js
            .get_or_create_stream(stream::Config {
                name: DEAD_LETTER_STREAM.into(),
                subjects: vec!["weir.dlq.>".into()],
                allow_direct: true,
                ..Default::default()
            })
            .await
            .map_err(setup)?;
        Ok(())
    }

    /// Stores `d`; returns its sequence in the dead-letter stream.
    pub async fn put(&self, d: &DeadLetter) -> Result<u64, DurableError> {
        let subject = format!("weir.dlq.{}.{}", d.family, d.consumer);
        let body = serde_json::to_vec(d).map_err(|e| DurableError::Decode(e.to_string()))?;
        let mut h = HeaderMap::new();
        // A crash between this publish and the term of the original makes
        // the next delivery dead-letter it again: the same id drops the copy.
        h.insert(
            MSG_ID,
            format!("{}:{}:{}", d.consumer, d.stream, d.stream_seq).as_str(),
        );
        let ack = self
            .js
            .publish_with_headers(subject.clone(), h, Bytes::from(body))
            .await
            .map_err(|e| DurableError::Publish {
                subject: subject.clone(),
                reason: e.to_string(),
            })?
            .await
            .map_err(|e| DurableError::Publish {
                subject,
                reason: e.to_string(),
            })?;
        Ok(ack.sequence)
    }

    /// The dead letter at `seq`.
    pub async fn get(&self, seq: u64) -> Result<DeadLetter, DurableError> {
        let s = self
            .js
            .get_stream(DEAD_LETTER_STREAM)
            .await
            .map_err(setup)?;
        let m = s
            .get_raw_message(seq)
            .await
            .map_err(|_| DurableError::NotFound(seq))?;
        serde_json::from_slice(&m.payload).map_err(|e| DurableError::Decode(e.to_string()))
    }

    /// Up to `limit` dead letters, oldest first, with their sequences.
    pub async fn list(&self, limit: usize) -> Result<Vec<(u64, DeadLetter)>, DurableError> {
        let mut s = self
            .js
            .get_stream(DEAD_LETTER_STREAM)
            .await
            .map_err(setup)?;
        let state = s.info().await.map_err(read)?.state.clone();
        let mut out = Vec::new();
        if state.messages == 0 {
            return Ok(out);
        }
        let mut seq = state.first_sequence;
        while seq <= state.last_sequence && out.len() < limit {
            // Replayed letters are deleted, leaving gaps: skip them.
            if let Ok(m) = s.get_raw_message(seq).await {
                match serde_json::from_slice(&m.payload) {
                    Ok(d) => out.push((seq, d)),
                    Err(e) => tracing::warn!(seq, error = %e, "undecodable dead letter"),
                }
            }
            seq += 1;
        }
        Ok(out)
    }

    /// Republishes the original of dead letter `seq` to its subject (same
    /// event id, so ledgers and inboxes still recognise it; a fresh
    /// `Nats-Msg-Id`, or the broker would drop it inside the duplicate
    /// window) and removes the dead letter.
    pub async fn replay(&self, seq: u64) -> Result<Published, DurableError> {
        let d = self.get(seq).await?;
        let mut h = HeaderMap::new();
        for (k, vs) in &d.headers {
            if k.eq_ignore_ascii_case(MSG_ID) || k.eq_ignore_ascii_case(EVENT_ID) {
                continue;
            }
            for v in vs {
                h.append(k.as_str(), v.as_str());
            }
        }
        h.insert(REPLAYED_FROM, seq.to_string().as_str());
        let event_id = d
            .event_id
            .clone()
            .unwrap_or_else(|| format!("{}:{}", d.stream, d.stream_seq));
        let published = DurablePublisher::new(self.js.clone())
            .publish_with_msg_id(
                &d.subject,
                &event_id,
                &format!("{event_id}:dlq:{seq}"),
                h,
                Bytes::from(d.payload_bytes()?),
            )
            .await?;
        let s = self
            .js
            .get_stream(DEAD_LETTER_STREAM)
            .await
            .map_err(setup)?;
        s.delete_message(seq).await.map_err(setup)?;
        Ok(published)
    }

    /// Removes dead letter `seq` without replaying it.
    pub async fn remove(&self, seq: u64) -> Result<(), DurableError> {
        let s = self
            .js
            .get_stream(DEAD_LETTER_STREAM)
            .await
            .map_err(setup)?;
        s.delete_message(seq)
            .await
            .map_err(|_| DurableError::NotFound(seq))?;
        Ok(())
    }
}
