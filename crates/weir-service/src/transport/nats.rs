//! Core NATS through async-nats.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::{Client, HeaderMap, RequestErrorKind, Subject};
use bytes::Bytes;
use futures::future::BoxFuture;

use super::{
    Message, Subscription, SubscriptionImpl, Transport, TransportError, check_size, message_size,
};
use crate::error::SetupError;

/// How to reach NATS: servers, credentials, TLS, reconnect policy.
#[derive(Clone, Debug, Default)]
pub struct ConnectConfig {
    /// Comma-separated server URLs (`nats://host:4222`, `tls://…`).
    pub servers: String,
    /// Connection name shown by `nats server report connections`.
    pub name: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// An NKey seed (`SU…`).
    pub nkey_seed: Option<String>,
    /// A `.creds` file (JWT + NKey seed).
    pub creds_file: Option<std::path::PathBuf>,
    /// Extra root CA (PEM) for TLS.
    pub tls_ca: Option<std::path::PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub tls_cert: Option<std::path::PathBuf>,
    pub tls_key: Option<std::path::PathBuf>,
    pub require_tls: bool,
    /// Messages buffered while reconnecting (bounded; default 2048).
    pub client_capacity: Option<usize>,
    /// Per-subscription buffer before the server marks us a slow consumer.
    pub subscription_capacity: Option<usize>,
}

impl ConnectConfig {
    pub fn new(servers: impl Into<String>) -> ConnectConfig {
        ConnectConfig {
            servers: servers.into(),
            ..ConnectConfig::default()
        }
    }

    /// Connects, with exponential reconnect backoff (max 8 s) and slow-consumer
    /// and connection events reported to logs and metrics.
    pub async fn connect(&self) -> Result<NatsTransport, SetupError> {
        let mut o = match &self.creds_file {
            Some(path) => async_nats::ConnectOptions::with_credentials_file(path)
                .await
                .map_err(|e| SetupError::Connect(format!("creds file {}: {e}", path.display())))?,
            None => async_nats::ConnectOptions::new(),
        };
        if let (Some(u), Some(p)) = (&self.user, &self.password) {
            o = o.user_and_password(u.clone(), p.clone());
        }
        if let Some(t) = &self.token {
            o = o.token(t.clone());
        }
        if let Some(seed) = &self.nkey_seed {
            o = o.nkey(seed.clone());
        }
        if let Some(ca) = &self.tls_ca {
            o = o.add_root_certificates(ca.clone());
        }
        if let (Some(c), Some(k)) = (&self.tls_cert, &self.tls_key) {
            o = o.add_client_certificate(c.clone(), k.clone());
        }
        if self.require_tls {
            o = o.require_tls(true);
        }
        if let Some(n) = &self.name {
            o = o.name(n.clone());
        }
        o = o
            .client_capacity(self.client_capacity.unwrap_or(2048))
            .subscription_capacity(self.subscription_capacity.unwrap_or(65_536))
            .reconnect_delay_callback(|attempts| {
                crate::error::backoff(
                    Duration::from_millis(50),
                    Duration::from_secs(8),
                    attempts.min(20) as u32,
                )
            })
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::SlowConsumer(sid) => {
                        tracing::warn!(sid, "NATS slow consumer: messages were dropped");
                        metrics::counter!(crate::metrics::SLOW_CONSUMERS).increment(1);
                    }
                    async_nats::Event::Disconnected => {
                        tracing::warn!("NATS disconnected; reconnecting");
                        metrics::counter!(crate::metrics::DISCONNECTS).increment(1);
                    }
                    other => tracing::info!(event = %other, "NATS connection event"),
                }
            });
        let client = o
            .connect(self.servers.as_str())
            .await
            .map_err(|e| SetupError::Connect(e.to_string()))?;
        Ok(NatsTransport::new(client))
    }
}

/// A [`Transport`] over one async-nats client.
#[derive(Clone, Debug)]
pub struct NatsTransport {
    client: Client,
    js: async_nats::jetstream::Context,
    leases: Arc<crate::timer::KvLeases>,
    max_payload: Arc<MaxPayload>,
}

/// The server's `max_payload`, cached per connection.
///
/// `Client::server_info()` clones the whole INFO (a dozen strings and a
/// list of URLs); reading it for every message was the largest single cost
/// of a request. The value only changes when the client (re)connects, so it
/// is cached together with the connection count it was read under and read
/// again when that count moves. A message the cached value refuses is
/// checked against a fresh read before it is refused, so a stale cache can
/// never refuse a message the server would take.
#[derive(Debug)]
struct MaxPayload {
    stats: Arc<async_nats::Statistics>,
    /// `connects` when `value` was read (`u64::MAX`: never read).
    epoch: AtomicU64,
    value: AtomicUsize,
}

impl MaxPayload {
    fn new(client: &Client) -> MaxPayload {
        MaxPayload {
            stats: client.statistics(),
            epoch: AtomicU64::new(u64::MAX),
            value: AtomicUsize::new(0),
        }
    }

    fn get(&self, client: &Client) -> usize {
        let connects = self.stats.connects.load(Ordering::Acquire);
        if self.epoch.load(Ordering::Acquire) == connects {
            return self.value.load(Ordering::Acquire);
        }
        self.refresh(client, connects)
    }

    fn refresh(&self, client: &Client, connects: u64) -> usize {
        let v = client.server_info().max_payload;
        self.value.store(v, Ordering::Release);
        self.epoch.store(connects, Ordering::Release);
        v
    }

    /// [`check_size`] against the cached value, confirmed by a fresh read
    /// before refusing.
    fn check(
        &self,
        client: &Client,
        headers: Option<&HeaderMap>,
        payload: &Bytes,
    ) -> Result<(), TransportError> {
        let size = message_size(headers, payload);
        if size <= self.get(client) {
            return Ok(());
        }
        let fresh = self.refresh(client, self.stats.connects.load(Ordering::Acquire));
        check_size(headers, payload, fresh)
    }
}

impl NatsTransport {
    pub fn new(client: Client) -> NatsTransport {
        let js = async_nats::jetstream::new(client.clone());
        NatsTransport {
            leases: Arc::new(crate::timer::KvLeases::new(js.clone())),
            max_payload: Arc::new(MaxPayload::new(&client)),
            js,
            client,
        }
    }

    /// Connects to `url` without credentials.
    pub async fn connect(url: &str) -> Result<NatsTransport, SetupError> {
        ConnectConfig::new(url).connect().await
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn jetstream(&self) -> &async_nats::jetstream::Context {
        &self.js
    }

    /// [`Transport::request_to`] as an inherent `async fn`.
    pub(crate) async fn send_request(
        &self,
        subject: Subject,
        headers: Option<HeaderMap>,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Message, TransportError> {
        let req = self.request_for(headers, payload, timeout)?;
        self.client
            .send_request(subject, req)
            .await
            .map_err(request_err)
    }

    /// An async-nats request of these parts, after the `max_payload`
    /// check. The client's per-call path sends it itself, so async-nats'
    /// request future is built in place there rather than inside a future
    /// of ours (one copy of over a kilobyte per call less).
    pub(crate) fn request_for(
        &self,
        headers: Option<HeaderMap>,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<async_nats::Request, TransportError> {
        self.max_payload
            .check(&self.client, headers.as_ref(), &payload)?;
        let req = async_nats::Request::new()
            .payload(payload)
            .timeout(Some(timeout));
        Ok(match headers {
            Some(h) => req.headers(h),
            None => req,
        })
    }

    /// The `max_payload` check of a message about to be published (an
    /// endpoint's reply path checks, then calls async-nats directly).
    pub(crate) fn check_size(
        &self,
        headers: Option<&HeaderMap>,
        payload: &Bytes,
    ) -> Result<(), TransportError> {
        self.max_payload.check(&self.client, headers, payload)
    }
}

struct NatsSub(async_nats::Subscriber);

impl futures::Stream for NatsSub {
    type Item = Message;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Message>> {
        std::pin::Pin::new(&mut self.0).poll_next(cx)
    }
}

impl SubscriptionImpl for NatsSub {
    fn drain(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(e) = self.0.drain().await {
                tracing::debug!(error = %e, "drain of a subscription failed");
            }
        })
    }
}

pub(crate) fn conn_err(e: impl std::fmt::Display) -> TransportError {
    TransportError::Connection(e.to_string())
}

pub(crate) fn request_err(e: async_nats::RequestError) -> TransportError {
    match e.kind() {
        RequestErrorKind::TimedOut => TransportError::TimedOut,
        RequestErrorKind::NoResponders => TransportError::NoResponders,
        RequestErrorKind::Other => conn_err(e),
    }
}

#[async_trait::async_trait]
impl Transport for NatsTransport {
    async fn publish(
        &self,
        subject: String,
        reply: Option<String>,
        headers: Option<HeaderMap>,
        payload: Bytes,
    ) -> Result<(), TransportError> {
        self.max_payload
            .check(&self.client, headers.as_ref(), &payload)?;
        // `String` subjects would be copied again by async-nats; as
        // `Subject`s they are moved.
        let subject = Subject::from(subject);
        let r = match (reply, headers) {
            (None, None) => self.client.publish(subject, payload).await,
            (None, Some(h)) => self.client.publish_with_headers(subject, h, payload).await,
            (Some(r), None) => {
                self.client
                    .publish_with_reply(subject, Subject::from(r), payload)
                    .await
            }
            (Some(r), Some(h)) => {
                self.client
                    .publish_with_reply_and_headers(subject, Subject::from(r), h, payload)
                    .await
            }
        };
        r.map_err(conn_err)
    }

    async fn request(
        &self,
        subject: String,
        headers: Option<HeaderMap>,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Message, TransportError> {
        self.send_request(Subject::from(subject), headers, payload, timeout)
            .await
    }

    async fn request_to(
        &self,
        subject: Subject,
        headers: Option<HeaderMap>,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Message, TransportError> {
        self.send_request(subject, headers, payload, timeout).await
    }

    async fn reply(
        &self,
        to: Subject,
        headers: Option<HeaderMap>,
        payload: Bytes,
    ) -> Result<(), TransportError> {
        self.max_payload
            .check(&self.client, headers.as_ref(), &payload)?;
        match headers {
            None => self.client.publish(to, payload).await,
            Some(h) => self.client.publish_with_headers(to, h, payload).await,
        }
        .map_err(conn_err)
    }

    async fn subscribe(
        &self,
        subject: String,
        queue: Option<String>,
    ) -> Result<Subscription, TransportError> {
        let sub = match queue {
            Some(q) => self.client.queue_subscribe(subject, q).await,
            None => self.client.subscribe(subject).await,
        }
        .map_err(conn_err)?;
        Ok(Subscription::new(NatsSub(sub)))
    }

    fn new_inbox(&self) -> String {
        self.client.new_inbox()
    }

    fn max_payload(&self) -> usize {
        self.max_payload.get(&self.client)
    }

    async fn flush(&self) -> Result<(), TransportError> {
        self.client.flush().await.map_err(conn_err)
    }

    fn jetstream(&self) -> Option<async_nats::jetstream::Context> {
        Some(self.js.clone())
    }

    fn leases(&self) -> Option<Arc<dyn crate::timer::LeaseStore>> {
        Some(self.leases.clone())
    }

    fn as_nats(&self) -> Option<&NatsTransport> {
        Some(self)
    }
}
