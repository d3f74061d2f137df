//! The messaging seam: everything the framework needs from a broker.
//!
//! Two implementations ship: [`NatsTransport`] (core NATS through
//! async-nats) and [`InProcess`] (a subject router in memory with the same
//! semantics: wildcards, queue groups, no-responders, `max_payload`). Other
//! brokers (Redis Streams, Kafka) can follow by implementing [`Transport`].

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use futures::Stream;
use futures::future::BoxFuture;
use std::task::{Context, Poll};

pub mod inproc;
pub mod nats;

pub use inproc::InProcess;
pub use nats::NatsTransport;

/// A received message (the async-nats type, also produced by [`InProcess`]).
pub type Message = async_nats::Message;

/// What a transport's subscription implements.
pub trait SubscriptionImpl: Stream<Item = Message> + Send + Unpin {
    /// Stops delivery: messages already buffered are still yielded, then the
    /// stream ends.
    fn drain(&mut self) -> BoxFuture<'_, ()>;
}

/// A stream of messages for one subscription; dropping it unsubscribes.
pub struct Subscription {
    inner: Box<dyn SubscriptionImpl>,
}

impl Subscription {
    pub fn new(inner: impl SubscriptionImpl + 'static) -> Subscription {
        Subscription {
            inner: Box::new(inner),
        }
    }

    /// Stops delivery: buffered messages are still yielded, then the stream ends.
    pub async fn drain(&mut self) {
        self.inner.drain().await
    }
}

impl Stream for Subscription {
    type Item = Message;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        Pin::new(&mut *self.inner).poll_next(cx)
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

/// Why a transport operation failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TransportError {
    #[error("request timed out")]
    TimedOut,
    #[error("no responders")]
    NoResponders,
    #[error("payload of {size} bytes exceeds max_payload of {max} bytes")]
    PayloadTooLarge { size: usize, max: usize },
    #[error("connection: {0}")]
    Connection(String),
}

/// A broker connection.
#[async_trait::async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Publishes a message (optionally with a reply subject).
    async fn publish(
        &self,
        subject: String,
        reply: Option<String>,
        headers: Option<HeaderMap>,
        payload: Bytes,
    ) -> Result<(), TransportError>;

    /// Sends a request and waits up to `timeout` for the first reply.
    async fn request(
        &self,
        subject: String,
        headers: Option<HeaderMap>,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Message, TransportError>;

    /// [`Transport::request`] to a subject already in async-nats form: the
    /// client's per-call path, where NATS takes the subject without another
    /// copy.
    async fn request_to(
        &self,
        subject: Subject,
        headers: Option<HeaderMap>,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Message, TransportError> {
        self.request(subject.into_string(), headers, payload, timeout)
            .await
    }

    /// Publishes a reply to `to` (a received message's reply subject),
    /// without copying the subject on NATS.
    async fn reply(
        &self,
        to: Subject,
        headers: Option<HeaderMap>,
        payload: Bytes,
    ) -> Result<(), TransportError> {
        self.publish(to.into_string(), None, headers, payload).await
    }

    /// Subscribes; with `queue`, each message goes to one member of the group.
    async fn subscribe(
        &self,
        subject: String,
        queue: Option<String>,
    ) -> Result<Subscription, TransportError>;

    /// A fresh unique inbox subject.
    fn new_inbox(&self) -> String;

    /// The largest message (payload + headers) the broker accepts.
    fn max_payload(&self) -> usize;

    /// Waits until everything published so far reached the broker.
    async fn flush(&self) -> Result<(), TransportError>;

    /// The JetStream context, for durable listeners (`None`: this
    /// transport has no JetStream, and a service declaring one fails to start).
    fn jetstream(&self) -> Option<async_nats::jetstream::Context> {
        None
    }

    /// A key-value lease store for exactly-one timers, if the transport has one.
    fn leases(&self) -> Option<Arc<dyn crate::timer::LeaseStore>> {
        None
    }

    /// This transport as core NATS, if it is: the per-message paths (a
    /// client's request, an endpoint's reply) then call its inherent
    /// methods directly, because every `async_trait` method boxes its
    /// future and a request's is large (callgrind: the box, its copy and
    /// its free cost about as much as parsing the reply).
    fn as_nats(&self) -> Option<&NatsTransport> {
        None
    }
}

/// Encoded size of a message as the broker counts it (payload plus headers).
pub fn message_size(headers: Option<&HeaderMap>, payload: &Bytes) -> usize {
    let mut n = payload.len();
    if let Some(h) = headers {
        n += 12; // "NATS/1.0\r\n" + final "\r\n"
        for (k, vs) in h.iter() {
            for v in vs {
                n += AsRef::<str>::as_ref(k).len() + v.as_str().len() + 4;
            }
        }
    }
    n
}

/// Refuses a message over `max` before it is sent.
pub fn check_size(
    headers: Option<&HeaderMap>,
    payload: &Bytes,
    max: usize,
) -> Result<(), TransportError> {
    let size = message_size(headers, payload);
    if size > max {
        return Err(TransportError::PayloadTooLarge { size, max });
    }
    Ok(())
}

/// Collects replies to one request: stops at `max` replies, after `total`,
/// or when no reply came for `stall` after the first one.
pub async fn request_many(
    transport: &dyn Transport,
    subject: String,
    headers: Option<HeaderMap>,
    payload: Bytes,
    total: Duration,
    stall: Duration,
    max: Option<usize>,
) -> Result<Vec<Message>, TransportError> {
    use futures::StreamExt;
    let inbox = transport.new_inbox();
    let mut sub = transport.subscribe(inbox.clone(), None).await?;
    transport
        .publish(subject, Some(inbox), headers, payload)
        .await?;
    let end = tokio::time::Instant::now() + total;
    let mut out = Vec::new();
    loop {
        if max.is_some_and(|m| out.len() >= m) {
            break;
        }
        let wait_until = if out.is_empty() {
            end
        } else {
            end.min(tokio::time::Instant::now() + stall)
        };
        match tokio::time::timeout_at(wait_until, sub.next()).await {
            Ok(Some(m)) => {
                if m.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
                    break;
                }
                out.push(m)
            }
            Ok(None) | Err(_) => break,
        }
    }
    sub.drain().await;
    Ok(out)
}
