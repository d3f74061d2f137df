//! `GET /ws` — one WebSocket per client, JSON text frames both ways.
//!
//! Client → gateway (`op`): `subscribe {id, subject}`,
//! `unsubscribe {id}`, `call {id, service, endpoint, body, timeout_ms?}`.
//! Gateway → client (`type`): `subscribed`, `unsubscribed`,
//! `event {id, subject, data | data_base64}`, `reply {id, body}`,
//! `error {id, problem}` (`id` null when the frame itself was unreadable).
//!
//! The connection is authenticated once, at the upgrade, by the production
//! layer; it is closed (1008) when the credential expires. Everything
//! towards the client goes through one bounded queue: a client that stops
//! reading is closed with 1008 "slow consumer" instead of buffering without
//! bound. Calls and subscriptions per connection are bounded too.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use weir_layer::problem::{ErrorCode, Problem};

use crate::State as St;
use crate::access::{Grant, authorize};
use crate::call::{Caller, Target, invoke};
use crate::metrics::{self as m, GaugeGuard};

/// A frame from the client.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    Subscribe {
        id: String,
        subject: String,
    },
    Unsubscribe {
        id: String,
    },
    Call {
        id: String,
        service: String,
        endpoint: String,
        #[serde(default)]
        body: Option<Value>,
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
}

pub(crate) async fn handler(State(st): State<St>, req: Request) -> Response {
    let (mut parts, _) = req.into_parts();
    let Some(caller) = Caller::from_parts(&parts) else {
        return Problem::internal().into_response();
    };
    let upgrade =
        match <WebSocketUpgrade as axum::extract::FromRequestParts<St>>::from_request_parts(
            &mut parts, &st,
        )
        .await
        {
            Ok(u) => u,
            Err(rejection) => {
                return Problem::new(
                    ErrorCode::HeaderInvalid,
                    format!("not a WebSocket upgrade: {rejection}"),
                )
                .into_response();
            }
        };
    let max = st.cfg.ws.max_frame_bytes;
    upgrade
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| Connection::run(st, caller, socket))
}

/// Why the gateway closes a connection (sent as the close frame).
#[derive(Debug, Clone)]
struct Closing {
    code: u16,
    reason: &'static str,
}

/// One connection's state, owned by its reader loop.
struct Connection {
    st: St,
    caller: Arc<Caller>,
    out: mpsc::Sender<Message>,
    kill: Arc<watch::Sender<Option<Closing>>>,
    subs: HashMap<String, JoinHandle<()>>,
    calls: Arc<Semaphore>,
}

impl Connection {
    async fn run(st: St, caller: Caller, socket: WebSocket) {
        let _conn = GaugeGuard::new(m::CONNECTIONS, "ws");
        let (mut sink, mut stream) = socket.split();
        let (out, mut rx) = mpsc::channel::<Message>(st.cfg.ws.outbound_queue.max(1));
        let (kill, mut killed) = watch::channel::<Option<Closing>>(None);
        let kill = Arc::new(kill);

        // The writer: queued frames in order; a kill sends the close frame
        // at once (it does not wait behind a full queue).
        let mut writer_killed = killed.clone();
        let writer = tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    () = until(&mut writer_killed, Option::is_some) => break,
                    msg = rx.recv() => match msg {
                        Some(msg) => {
                            if sink.send(msg).await.is_err() {
                                return;
                            }
                        }
                        None => break,
                    },
                }
            }
            let closing = writer_killed.borrow().clone();
            if let Some(c) = closing {
                let _ = sink
                    .send(Message::Close(Some(CloseFrame {
                        code: c.code,
                        reason: c.reason.into(),
                    })))
                    .await;
            }
            let _ = sink.close().await;
        });

        let mut conn = Connection {
            calls: Arc::new(Semaphore::new(st.cfg.ws.max_in_flight_calls.max(1))),
            st: st.clone(),
            caller: Arc::new(caller),
            out,
            kill: kill.clone(),
            subs: HashMap::new(),
        };
        let expiry = conn
            .caller
            .principal
            .expires_at
            .map(|at| tokio::time::Instant::now() + until_unix(at));
        let mut shutdown = st.shutdown.clone();
        loop {
            let frame = tokio::select! {
                biased;
                () = until(&mut killed, Option::is_some) => break,
                () = until(&mut shutdown, |d| *d) => {
                    conn.close(close_code::AWAY, "the gateway is shutting down");
                    break;
                }
                () = sleep_opt(expiry) => {
                    conn.close(close_code::POLICY, "credentials expired");
                    break;
                }
                f = stream.next() => f,
            };
            match frame {
                Some(Ok(Message::Text(t))) => conn.on_text(t.as_str()).await,
                Some(Ok(Message::Binary(_))) => conn.send_error(
                    None,
                    Problem::new(ErrorCode::JsonInvalid, "frames are JSON text, not binary"),
                ),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
            }
        }
        for (_, h) in conn.subs.drain() {
            h.abort();
        }
        // Closing the queue lets the writer flush what is left and finish.
        drop(conn);
        let _ = writer.await;
    }

    fn close(&self, code: u16, reason: &'static str) {
        self.kill.send_if_modified(|k| {
            if k.is_none() {
                *k = Some(Closing { code, reason });
                true
            } else {
                false
            }
        });
    }

    async fn on_text(&mut self, text: &str) {
        let frame = match serde_json::from_str::<ClientFrame>(text) {
            Ok(f) => f,
            Err(e) => {
                // Keep the id when there is one, so the client can match.
                let id = serde_json::from_str::<Value>(text)
                    .ok()
                    .and_then(|v| v.get("id").and_then(Value::as_str).map(str::to_owned));
                return self.send_error(
                    id.as_deref(),
                    Problem::new(ErrorCode::JsonInvalid, format!("unreadable frame: {e}")),
                );
            }
        };
        match frame {
            ClientFrame::Subscribe { id, subject } => self.subscribe(id, subject).await,
            ClientFrame::Unsubscribe { id } => match self.subs.remove(&id) {
                Some(h) => {
                    h.abort();
                    self.send(json!({"type": "unsubscribed", "id": id}));
                }
                None => self.send_error(
                    Some(&id),
                    Problem::not_found(format!("no subscription `{id}`")),
                ),
            },
            ClientFrame::Call {
                id,
                service,
                endpoint,
                body,
                timeout_ms,
            } => self.call(id, service, endpoint, body, timeout_ms),
        }
    }

    async fn subscribe(&mut self, id: String, subject: String) {
        self.subs.retain(|_, h| !h.is_finished());
        if self.subs.contains_key(&id) {
            return self.send_error(
                Some(&id),
                Problem::new(
                    ErrorCode::HeaderInvalid,
                    format!("subscription id `{id}` is in use"),
                ),
            );
        }
        if self.subs.len() >= self.st.cfg.ws.max_subscriptions {
            return self.send_error(
                Some(&id),
                Problem::new(
                    ErrorCode::LimitExceeded,
                    format!(
                        "at most {} subscriptions per connection",
                        self.st.cfg.ws.max_subscriptions
                    ),
                ),
            );
        }
        let grant = match authorize(&self.st.cfg.events, &self.caller.principal, &subject) {
            Ok(g) => g,
            Err(p) => return self.send_error(Some(&id), p),
        };
        let sub = match self
            .st
            .transport
            .subscribe(grant.nats_subject.clone(), None)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "WebSocket subscription failed");
                return self.send_error(
                    Some(&id),
                    Problem::new(
                        ErrorCode::ServiceUnavailable,
                        "the message bus is unavailable",
                    ),
                );
            }
        };
        // Acknowledged before any event can be queued for it.
        self.send(json!({"type": "subscribed", "id": id, "subject": subject}));
        let task = tokio::spawn(pump(
            id.clone(),
            grant,
            sub,
            self.out.clone(),
            self.kill.clone(),
        ));
        self.subs.insert(id, task);
    }

    fn call(
        &self,
        id: String,
        service: String,
        endpoint: String,
        body: Option<Value>,
        timeout_ms: Option<u64>,
    ) {
        let Ok(permit) = self.calls.clone().try_acquire_owned() else {
            return self.send_error(
                Some(&id),
                Problem::new(
                    ErrorCode::LimitExceeded,
                    format!(
                        "at most {} calls in flight per connection",
                        self.st.cfg.ws.max_in_flight_calls
                    ),
                ),
            );
        };
        let st = self.st.clone();
        let caller = self.caller.clone();
        let out = self.out.clone();
        let kill = self.kill.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let frame = match call_once(&st, &caller, service, endpoint, body, timeout_ms).await {
                Ok(body) => json!({"type": "reply", "id": id, "body": body}),
                Err(p) => error_frame(Some(&id), p),
            };
            queue(&out, &kill, frame);
        });
    }

    fn send(&self, v: Value) {
        queue(&self.out, &self.kill, v);
    }

    fn send_error(&self, id: Option<&str>, p: Problem) {
        self.send(error_frame(id, p));
    }
}

async fn call_once(
    st: &St,
    caller: &Caller,
    service: String,
    endpoint: String,
    body: Option<Value>,
    timeout_ms: Option<u64>,
) -> Result<Value, Problem> {
    let Some(ep) = st.catalog.find(&service, &endpoint).await else {
        return Err(Problem::new(
            ErrorCode::NotFound,
            format!("no endpoint `{endpoint}` on service `{service}`"),
        ));
    };
    let timeout = Duration::from_millis(
        timeout_ms
            .unwrap_or(st.cfg.default_timeout_ms)
            .clamp(1, st.cfg.max_timeout_ms),
    );
    let payload = serde_json::to_vec(&body.unwrap_or_else(|| json!({})))
        .map(Bytes::from)
        .map_err(|_| Problem::internal())?;
    let target = Target {
        subject: ep.subject,
        service,
        endpoint,
        idempotent: ep.idempotent,
    };
    let reply = invoke(&st.client, caller, &target, payload, timeout).await?;
    serde_json::from_slice::<Value>(&reply).map_err(|_| {
        tracing::warn!(subject = %target.subject, "a service answered non-JSON");
        Problem::internal()
    })
}

fn error_frame(id: Option<&str>, mut p: Problem) -> Value {
    p.headers.clear();
    json!({"type": "error", "id": id, "problem": p})
}

/// Queues a frame, or closes the connection when the client is not
/// reading fast enough.
fn queue(out: &mpsc::Sender<Message>, kill: &watch::Sender<Option<Closing>>, v: Value) -> bool {
    match out.try_send(Message::Text(v.to_string().into())) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            let first = kill.send_if_modified(|k| {
                if k.is_none() {
                    *k = Some(Closing {
                        code: close_code::POLICY,
                        reason: "slow consumer: outbound queue full",
                    });
                    true
                } else {
                    false
                }
            });
            if first {
                metrics::counter!(m::SLOW_CLOSED, "transport" => "ws").increment(1);
            }
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

/// Moves one subscription's events into the connection's queue.
async fn pump(
    id: String,
    grant: Grant,
    mut sub: weir_service::transport::Subscription,
    out: mpsc::Sender<Message>,
    kill: Arc<watch::Sender<Option<Closing>>>,
) {
    let _gauge = GaugeGuard::new(m::SUBSCRIPTIONS, "ws");
    let events = metrics::counter!(m::EVENTS, "transport" => "ws");
    while let Some(msg) = sub.next().await {
        let mut body = crate::event::event_body(&grant, &msg);
        if let Value::Object(o) = &mut body {
            o.insert("type".into(), "event".into());
            o.insert("id".into(), id.clone().into());
        }
        if !queue(&out, &kill, body) {
            break;
        }
        events.increment(1);
    }
}

/// Time from now until the unix second `at` (zero when past).
fn until_unix(at: u64) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Duration::from_secs(at).saturating_sub(now)
}

async fn sleep_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Waits until the watched value satisfies `f` (or its sender is gone),
/// without holding the watch's read guard across an await.
async fn until<T>(rx: &mut watch::Receiver<T>, f: impl FnMut(&T) -> bool) {
    let _ = rx.wait_for(f).await;
}
