//! The NATS side: the JetStream stream that captures the subject (so
//! events published while the bridge is down wait for it) and the durable
//! pull consumer the bridge reads it with.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};

use crate::config::Mapping;
use crate::error::BridgeError;

/// How long JetStream waits for an ack before redelivering. Long, because
/// a redelivery makes the bridge resynchronise; acks only come after Weir
/// answered, and Weir may be slow or briefly down.
const ACK_WAIT: Duration = Duration::from_secs(300);

/// Finds the stream that captures `mapping.subject` (an existing one, e.g.
/// a service's event stream, is used as is) or creates
/// `mapping.capture_stream` for it. Returns the stream.
pub async fn capture_stream(
    js: &jetstream::Context,
    mapping: &Mapping,
) -> Result<stream::Stream, BridgeError> {
    let err = |detail: String| BridgeError::CaptureStream {
        subject: mapping.subject.clone(),
        detail,
    };
    if let Ok(name) = js.stream_by_subject(mapping.subject.clone()).await {
        return js.get_stream(&name).await.map_err(|e| err(e.to_string()));
    }
    if let Ok(s) = js.get_stream(&mapping.capture_stream).await {
        return Ok(s);
    }
    if !mapping.create_capture_stream {
        return Err(err(format!(
            "no JetStream stream captures it and creating `{}` is disabled",
            mapping.capture_stream
        )));
    }
    js.get_or_create_stream(stream::Config {
        name: mapping.capture_stream.clone(),
        subjects: vec![mapping.subject.clone()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| err(e.to_string()))
}

/// (Re)creates the mapping's durable consumer so it delivers, in order,
/// from JetStream sequence `start`. Deleting the old one first drops any
/// deliveries outstanding from a previous run, which would otherwise be
/// redelivered out of order after `ACK_WAIT`; it is also how a newly
/// started bridge takes over from an older instance (whose pull then
/// fails with "consumer deleted").
pub async fn consumer_from(
    stream: &stream::Stream,
    mapping: &Mapping,
    start: u64,
    max_ack_pending: i64,
) -> Result<consumer::PullConsumer, BridgeError> {
    let nats =
        |e: &dyn std::fmt::Display| BridgeError::Nats(format!("consumer {}: {e}", mapping.name));
    match stream.delete_consumer(&mapping.name).await {
        Ok(_) => {}
        Err(e) if e.to_string().contains("not found") => {}
        Err(e) => {
            if stream
                .get_consumer::<consumer::pull::Config>(&mapping.name)
                .await
                .is_ok()
            {
                return Err(nats(&e));
            }
        }
    }
    stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(mapping.name.clone()),
            description: Some(format!(
                "weir bridge: {} -> {}",
                mapping.subject, mapping.stream_url
            )),
            filter_subject: mapping.subject.clone(),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: start.max(1),
            },
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            max_ack_pending,
            ..Default::default()
        })
        .await
        .map_err(|e| nats(&e))
}
