//! The pump: JetStream batch in, one Weir append, acks out — per mapping.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::consumer::pull::MessagesErrorKind;
use async_nats::jetstream::{self, AckKind, Message};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::watch;

use crate::config::{BatchConfig, BridgeConfig, Mapping};
use crate::error::BridgeError;
use crate::record::Record;
use crate::sink::{Appended, Backoff, WeirSink};
use crate::{metrics, source};

/// Runs every mapping until `stop` turns true (graceful: the batch in
/// hand is appended first) or one of them fails; the first failure stops
/// the others and is returned.
pub async fn run(config: BridgeConfig, stop: watch::Receiver<bool>) -> Result<(), BridgeError> {
    if config.mappings.is_empty() {
        return Err(BridgeError::Config("no mappings".into()));
    }
    for m in &config.mappings {
        if !Mapping::valid_name(&m.name) {
            return Err(BridgeError::Config(format!(
                "mapping name `{}`: use 1-64 letters, digits, `-` or `_`",
                m.name
            )));
        }
    }
    if config.batch.max_events == 0 {
        return Err(BridgeError::Config("batch size must be at least 1".into()));
    }
    let client = async_nats::connect(&config.nats_url)
        .await
        .map_err(|e| BridgeError::Nats(format!("connect {}: {e}", config.nats_url)))?;
    let js = jetstream::new(client);
    // One internal stop signal: the caller's, or the first failure.
    let (tx, rx) = watch::channel(false);
    let mut outer = stop.clone();
    let mut tasks = tokio::task::JoinSet::new();
    for m in config.mappings.clone() {
        let (js, auth, batch, rx) = (
            js.clone(),
            config.auth.clone(),
            config.batch.clone(),
            rx.clone(),
        );
        tasks.spawn(async move {
            let sink = WeirSink::new(&m.stream_url, auth, &m.name, &batch)?;
            run_mapping(js, m, sink, batch, rx).await
        });
    }
    let mut result = Ok(());
    loop {
        tokio::select! {
            done = tasks.join_next() => match done {
                None => break,
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => {
                    let _ = tx.send(true);
                    if result.is_ok() { result = Err(e); }
                }
                Some(Err(e)) => {
                    let _ = tx.send(true);
                    if result.is_ok() { result = Err(BridgeError::Config(format!("bridge task failed: {e}"))); }
                }
            },
            _ = outer.wait_for(|s| *s) => { let _ = tx.send(true); }
        }
    }
    result
}

/// One mapping's loop. Each pass of the outer loop (a *resync*) reads the
/// last bridged JetStream sequence from the Weir stream and restarts the
/// consumer right after it.
pub async fn run_mapping(
    js: jetstream::Context,
    mapping: Mapping,
    mut sink: WeirSink,
    batch: BatchConfig,
    stop: watch::Receiver<bool>,
) -> Result<(), BridgeError> {
    let Some(()) = or_stop(&stop, sink.ensure_stream(mapping.create_weir_stream)).await? else {
        return Ok(());
    };
    let Some(stream) = or_stop(&stop, source::capture_stream(&js, &mapping)).await? else {
        return Ok(());
    };
    let max_ack_pending = i64::try_from(batch.max_events.saturating_mul(4)).unwrap_or(i64::MAX);
    let mut backoff = Backoff::new(batch.max_backoff);
    let mut first_pass = true;
    'resync: loop {
        if *stop.borrow() {
            return Ok(());
        }
        let Some(tail) = or_stop(&stop, sink.tail_seq()).await? else {
            return Ok(());
        };
        let mut last = tail.unwrap_or(0);
        let start = source::consumer_from(&stream, &mapping, last + 1, max_ack_pending);
        let Some(consumer) = or_stop(&stop, start).await? else {
            return Ok(());
        };
        tracing::info!(mapping = %mapping.name, resume_after = last, epoch = sink.epoch(), first_pass, "bridging");
        first_pass = false;
        let mut msgs = match consumer
            .stream()
            .max_messages_per_batch(batch.max_events)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
        {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(mapping = %mapping.name, error = %e, "pull failed; resynchronising");
                backoff.wait_or_stop(&stop).await;
                continue 'resync;
            }
        };
        loop {
            let (held, more) = match collect(&mut msgs, &batch, &stop).await {
                Collected::Batch(h) => (h, true),
                Collected::Stopping(h) => (h, false),
                Collected::Failed(kind, e) => {
                    if kind == MessagesErrorKind::ConsumerDeleted {
                        return Err(BridgeError::Fenced {
                            mapping: mapping.name.clone(),
                            detail: "the JetStream consumer was deleted (another instance started)"
                                .into(),
                        });
                    }
                    tracing::warn!(mapping = %mapping.name, error = %e, "consumer failed; resynchronising");
                    backoff.wait_or_stop(&stop).await;
                    continue 'resync;
                }
            };
            // Events Weir already holds (redeliveries) are acked and dropped;
            // a redelivery past `last` means order is no longer certain.
            let mut fresh = Vec::with_capacity(held.len());
            let mut skipped = 0;
            let mut pending = None;
            for m in held {
                let Ok(info) = m.info() else {
                    // Not a JetStream delivery: cannot be placed in order.
                    continue;
                };
                let (seq, delivered) = (info.stream_sequence, info.delivered);
                pending = Some(info.pending);
                if seq <= last {
                    skipped += 1;
                    let _ = m.ack().await;
                } else if delivered > 1 {
                    tracing::info!(mapping = %mapping.name, seq, "redelivery past the tail; resynchronising");
                    continue 'resync;
                } else {
                    fresh.push((seq, m));
                }
            }
            if skipped > 0 {
                metrics::skipped(&mapping.name, skipped);
            }
            if let Some(p) = pending {
                metrics::lag(&mapping.name, p);
            }
            if let Some((first, _)) = fresh.first() {
                let first = *first;
                let body = encode(&fresh);
                match sink.append(body, first, fresh.len(), &stop).await? {
                    Appended::Done => {
                        backoff = Backoff::new(batch.max_backoff);
                        for (seq, m) in &fresh {
                            last = *seq;
                            // Best effort: a lost ack is a redelivery that
                            // the `seq <= last` check above drops.
                            let _ = m.ack().await;
                        }
                    }
                    Appended::Resync => continue 'resync,
                    Appended::Interrupted => {
                        for (_, m) in &fresh {
                            let _ = m.ack_with(AckKind::Nak(None)).await;
                        }
                        return Ok(());
                    }
                }
            }
            if !more {
                return Ok(());
            }
        }
    }
}

/// Runs `f` unless stop is requested first (`None`): the set-up steps
/// retry for as long as Weir or NATS are unreachable, and a shutdown must
/// not wait for them. They only read or create, so dropping them is safe.
async fn or_stop<T>(
    stop: &watch::Receiver<bool>,
    f: impl std::future::Future<Output = Result<T, BridgeError>>,
) -> Result<Option<T>, BridgeError> {
    let mut stop = stop.clone();
    tokio::select! {
        r = f => r.map(Some),
        _ = stop.wait_for(|s| *s) => Ok(None),
    }
}

enum Collected {
    Batch(Vec<Message>),
    Stopping(Vec<Message>),
    Failed(MessagesErrorKind, String),
}

/// Waits for one message, then gathers more until the batch is full (by
/// count or bytes) or `linger` has passed. Stop wins only while nothing
/// is in hand, or ends the linger early.
async fn collect(
    msgs: &mut async_nats::jetstream::consumer::pull::Stream,
    batch: &BatchConfig,
    stop: &watch::Receiver<bool>,
) -> Collected {
    let mut stop = stop.clone();
    let mut held: Vec<Message> = Vec::new();
    let mut bytes = 0usize;
    let first = tokio::select! {
        m = msgs.next() => m,
        _ = stop.wait_for(|s| *s) => return Collected::Stopping(held),
    };
    match first {
        Some(Ok(m)) => {
            bytes += m.payload.len();
            held.push(m);
        }
        Some(Err(e)) => return Collected::Failed(e.kind(), e.to_string()),
        None => return Collected::Failed(MessagesErrorKind::Other, "message stream ended".into()),
    }
    let deadline = tokio::time::Instant::now() + batch.linger;
    while held.len() < batch.max_events && bytes < batch.max_bytes {
        let next = tokio::select! {
            m = tokio::time::timeout_at(deadline, msgs.next()) => m,
            _ = stop.wait_for(|s| *s) => return Collected::Stopping(held),
        };
        match next {
            Ok(Some(Ok(m))) => {
                bytes += m.payload.len();
                held.push(m);
            }
            // Errors surface on the next call, after this batch is appended.
            Ok(Some(Err(_))) | Ok(None) | Err(_) => break,
        }
    }
    Collected::Batch(held)
}

/// The batch as one JSON array: Weir stores each element as a message.
fn encode(batch: &[(u64, Message)]) -> Bytes {
    let mut out = Vec::with_capacity(batch.iter().map(|(_, m)| m.payload.len() + 96).sum());
    out.push(b'[');
    for (i, (seq, m)) in batch.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let published = m
            .info()
            .map(|i| i.published)
            .unwrap_or_else(|_| time::OffsetDateTime::now_utc());
        let mut headers = BTreeMap::new();
        if let Some(h) = &m.headers {
            for (name, values) in h.iter() {
                headers.insert(name.as_ref(), values.iter().map(|v| v.as_str()).collect());
            }
        }
        let rec = Record::new(m.subject.as_str(), *seq, published, headers, &m.payload);
        // Serialising borrowed strings and a validated RawValue cannot fail.
        if serde_json::to_writer(&mut out, &rec).is_err() {
            out.extend_from_slice(b"null");
        }
    }
    out.push(b']');
    Bytes::from(out)
}
