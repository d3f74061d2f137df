//! `GET /events?subject=…` — NATS events as Server-Sent Events.
//!
//! Each NATS message becomes one `event: message` whose `data:` is the
//! [`crate::event::event_body`] JSON. Heartbeats are SSE comments. The
//! stream is fed through a bounded queue: a client that stops reading is
//! sent a final `event: error` (a problem, `limit_exceeded`) and cut off,
//! so a slow reader costs at most `sse.outbound_queue` events of memory.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use weir_layer::problem::{ErrorCode, Problem};

use crate::State as St;
use crate::access::{Grant, authorize};
use crate::call::Caller;
use crate::metrics::{self as m, GaugeGuard};

pub(crate) async fn handler(State(st): State<St>, req: Request) -> Response {
    match open(&st, req).await {
        Ok(r) => r,
        Err(p) => p.into_response(),
    }
}

async fn open(st: &St, req: Request) -> Result<Response, Problem> {
    let (parts, _) = req.into_parts();
    let caller = Caller::from_parts(&parts).ok_or_else(Problem::internal)?;
    let subjects: Vec<String> = crate::rpc::query_params(parts.uri.query().unwrap_or(""))
        .into_iter()
        .filter(|(k, _)| k == "subject")
        .map(|(_, v)| v)
        .collect();
    if subjects.is_empty() {
        return Err(Problem::new(
            ErrorCode::HeaderInvalid,
            "give at least one `subject` parameter",
        )
        .extension("field", "subject"));
    }
    if subjects.len() > st.cfg.sse.max_subjects {
        return Err(Problem::new(
            ErrorCode::LimitExceeded,
            format!("at most {} subjects per stream", st.cfg.sse.max_subjects),
        ));
    }
    let grants = subjects
        .iter()
        .map(|s| authorize(&st.cfg.events, &caller.principal, s))
        .collect::<Result<Vec<Grant>, Problem>>()?;

    let (tx, rx) = mpsc::channel::<Event>(st.cfg.sse.outbound_queue.max(1));
    // Set by whichever subscription finds the queue full: every other
    // subscription stops and the stream ends with the error event.
    let (overflow, overflowed) = watch::channel(false);
    let overflow = Arc::new(overflow);
    for grant in grants {
        let sub = st
            .transport
            .subscribe(grant.nats_subject.clone(), None)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "SSE subscription failed");
                Problem::new(
                    ErrorCode::ServiceUnavailable,
                    "the message bus is unavailable",
                )
                .header(http::header::RETRY_AFTER, "1")
            })?;
        tokio::spawn(pump(
            grant,
            sub,
            tx.clone(),
            overflow.clone(),
            st.shutdown.clone(),
        ));
    }
    drop(tx);
    let conn = GaugeGuard::new(m::CONNECTIONS, "sse");
    let stream = futures::stream::unfold(
        (rx, overflowed, Some(conn)),
        |(mut rx, mut overflowed, conn)| async move {
            conn.as_ref()?;
            let next = tokio::select! {
                biased;
                () = until(&mut overflowed, |o| *o) => None,
                ev = rx.recv() => ev,
            };
            match next {
                Some(ev) => Some((Ok::<Event, Infallible>(ev), (rx, overflowed, conn))),
                None if *overflowed.borrow() => {
                    metrics::counter!(m::SLOW_CLOSED, "transport" => "sse").increment(1);
                    let p = Problem::new(
                        ErrorCode::LimitExceeded,
                        "slow consumer: the event queue is full, reconnect",
                    );
                    let ev = Event::default()
                        .event("error")
                        .data(String::from_utf8_lossy(&p.to_json()));
                    // `None` as the guard ends the stream on the next poll.
                    Some((Ok(ev), (rx, overflowed, None)))
                }
                None => None,
            }
        },
    );
    let keep = KeepAlive::new()
        .interval(Duration::from_secs(st.cfg.sse.heartbeat_secs.max(1)))
        .text("heartbeat");
    Ok(Sse::new(stream.boxed()).keep_alive(keep).into_response())
}

/// Moves one subscription's messages into the client's queue until the
/// client goes, the queue overflows, or the gateway drains.
async fn pump(
    grant: Grant,
    mut sub: weir_service::transport::Subscription,
    tx: mpsc::Sender<Event>,
    overflow: Arc<watch::Sender<bool>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let _sub_gauge = GaugeGuard::new(m::SUBSCRIPTIONS, "sse");
    let events = metrics::counter!(m::EVENTS, "transport" => "sse");
    let mut overflowed = overflow.subscribe();
    loop {
        let msg = tokio::select! {
            m = sub.next() => m,
            () = tx.closed() => break,
            () = until(&mut shutdown, |d| *d) => break,
            () = until(&mut overflowed, |o| *o) => break,
        };
        let Some(msg) = msg else { break };
        let body = crate::event::event_body(&grant, &msg);
        let ev = Event::default().event("message").data(body.to_string());
        match tx.try_send(ev) {
            Ok(()) => events.increment(1),
            Err(mpsc::error::TrySendError::Full(_)) => {
                overflow.send_replace(true);
                break;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => break,
        }
    }
    sub.drain().await;
}

/// Waits until the watched value satisfies `f` (or its sender is gone),
/// without holding the watch's read guard across an await.
async fn until<T>(rx: &mut watch::Receiver<T>, f: impl FnMut(&T) -> bool) {
    let _ = rx.wait_for(f).await;
}
