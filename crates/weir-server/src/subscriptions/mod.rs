//! Reserved subscription APIs (PROTOCOL.md §6–7): durable cursors over sets
//! of streams that wake workers — by signed webhook or by a wake event on a
//! pull-wake stream — when linked streams have unprocessed data.
//!
//! State lives in the storage backend's versioned key/value space
//! (`sub/{id}` documents, `sys/subscription-keys`), updated with
//! compare-and-set, so it is as durable as the streams and safe for several
//! nodes sharing one backend. An in-memory index of subscription patterns
//! turns each stream event into the few subscriptions it concerns. See
//! docs/subscriptions.md for the state machine.

mod model;
mod security;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header};
use parking_lot::RwLock;
use rand::Rng;
use serde::Deserialize;
use serde_json::json;
use weir_core::append::{AppendRequest, Body};
use weir_core::{Offset, StreamName};
use weir_storage::{Storage, StorageError, StreamEvent, StreamEventKind};

use self::model::{
    Config, CreateBody, Kind, Link, State, Wake, scope_paths, stream_paths, stream_views,
};
use self::security::{
    KeyMaterial, TokenClaims, WebhookKey, check_webhook_url, looks_like_token, sign_token,
    verify_token,
};
use crate::AppState;
use crate::config::ServerConfig;
use crate::error::ApiError;
use crate::streams::{PathTenant, base_url, body_bytes, peer_ip, tenant_of, url_prefix};

const KEYS_KEY: &str = "sys/subscription-keys";
const SUB_PREFIX: &str = "sub/";
/// Offset a link starts at when the stream does not exist yet.
const ZERO_OFFSET: &str = "0000000000000000_0000000000000000";
/// Tokens outlive any lease; fencing is done by generation and wake id.
const TOKEN_LIFETIME_MS: i64 = 24 * 3600 * 1000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn format_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            ))
            .ok()
        })
        .unwrap_or_default()
}

/// A subscription failure, rendered as problem+json that also carries the
/// protocol's `{"error":{"code":…}}` member; the two bodies the protocol
/// fixes exactly (`FENCED`, `ALREADY_CLAIMED`) are rendered verbatim.
#[derive(Debug)]
enum SubError {
    Api(ApiError, &'static str),
    Fenced,
    AlreadyClaimed { holder: String, generation: u64 },
}

impl SubError {
    fn new(
        status: StatusCode,
        code: &'static str,
        upper: &'static str,
        detail: impl Into<String>,
    ) -> SubError {
        SubError::Api(ApiError::new(status, code, detail), upper)
    }
    fn bad(detail: impl Into<String>) -> SubError {
        SubError::new(
            StatusCode::BAD_REQUEST,
            "subscription_invalid",
            "INVALID_REQUEST",
            detail,
        )
    }
    fn not_found() -> SubError {
        SubError::new(
            StatusCode::NOT_FOUND,
            "subscription_not_found",
            "NOT_FOUND",
            "no such subscription",
        )
    }
}

impl From<StorageError> for SubError {
    fn from(e: StorageError) -> SubError {
        SubError::Api(ApiError::from(e), "STORAGE_ERROR")
    }
}

impl IntoResponse for SubError {
    fn into_response(self) -> Response {
        let json_resp = |status: StatusCode, body: serde_json::Value| {
            let mut r = (status, body.to_string()).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        };
        match self {
            SubError::Fenced => {
                json_resp(StatusCode::CONFLICT, json!({"error": {"code": "FENCED"}}))
            }
            SubError::AlreadyClaimed { holder, generation } => json_resp(
                StatusCode::CONFLICT,
                json!({"error": {"code": "ALREADY_CLAIMED", "current_holder": holder, "generation": generation}}),
            ),
            SubError::Api(e, upper) => {
                let title = e.status.canonical_reason().unwrap_or("Error");
                let body = json!({
                    "type": format!("urn:weir:problem:{}", e.code),
                    "title": title,
                    "status": e.status.as_u16(),
                    "code": e.code,
                    "detail": e.detail,
                    "error": {"code": upper, "message": e.detail},
                });
                let mut r = (e.status, body.to_string()).into_response();
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/problem+json"),
                );
                if e.status == StatusCode::UNAUTHORIZED {
                    r.headers_mut()
                        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                }
                r
            }
        }
    }
}

/// What the engine remembers about a subscription to route events to it.
#[derive(Clone)]
struct IndexEntry {
    pattern: Option<String>,
    explicit: Vec<String>,
    wake_stream: Option<String>,
    /// Earliest time a timer (lease expiry, retry) needs attention.
    deadline: Option<i64>,
}

impl IndexEntry {
    fn of(s: &State) -> IndexEntry {
        let lease = s.wake.as_ref().map(|w| w.lease_expires_ms);
        let deadline = match (lease, s.next_attempt_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        IndexEntry {
            pattern: s.config.pattern.clone(),
            explicit: s
                .links
                .iter()
                .filter(|(_, l)| l.explicit)
                .map(|(p, _)| p.clone())
                .collect(),
            wake_stream: s.config.wake_stream.clone(),
            deadline,
        }
    }

    fn wants(&self, stream: &str) -> (bool, bool) {
        if self.wake_stream.as_deref() == Some(stream) {
            // Never wake a subscription on its own wake events.
            return (false, false);
        }
        let explicit = self.explicit.iter().any(|e| e == stream);
        let glob = self
            .pattern
            .as_deref()
            .is_some_and(|p| weir_core::glob::matches(p, stream));
        (explicit, glob)
    }
}

/// Something to do after a state change is saved.
enum Action {
    Webhook {
        body: Bytes,
        url: String,
        generation: u64,
        wake_id: String,
    },
    WakeEvent {
        wake_stream: String,
        body: Bytes,
    },
}

/// The next stream event, or never while the engine holds no feed.
async fn next_event(
    events: &mut Option<tokio::sync::broadcast::Receiver<StreamEvent>>,
) -> Result<StreamEvent, tokio::sync::broadcast::error::RecvError> {
    match events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The subscription engine.
pub struct Subscriptions {
    storage: Arc<dyn Storage>,
    config: Arc<ServerConfig>,
    keys: tokio::sync::OnceCell<Keys>,
    index: RwLock<HashMap<String, IndexEntry>>,
    locks: parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    http: reqwest::Client,
    /// The engine follows the stream-event feed only while some
    /// subscription exists: with none (the common case) an append wakes
    /// nothing. See [`Subscriptions::index_insert`] and `run`.
    feed: parking_lot::Mutex<Feed>,
    /// Tells the engine a receiver is waiting in `feed`.
    feed_ready: Arc<tokio::sync::Notify>,
}

/// Who holds the event feed.
#[derive(Default)]
struct Feed {
    /// The engine holds a receiver.
    active: bool,
    /// A receiver made by whoever added the first subscription, for the
    /// engine to take: it exists before the subscription is indexed, so no
    /// event about the subscription's streams is missed.
    pending: Option<tokio::sync::broadcast::Receiver<StreamEvent>>,
}

struct Keys {
    signing: Vec<WebhookKey>,
    token_secret: Vec<u8>,
}

impl Subscriptions {
    /// Starts the engine: loads subscriptions and follows stream events.
    pub fn start(storage: Arc<dyn Storage>, config: Arc<ServerConfig>) -> Arc<Subscriptions> {
        let http = reqwest::Client::builder()
            .timeout(config.subscriptions.webhook_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        let subs = Arc::new(Subscriptions {
            storage,
            config,
            keys: tokio::sync::OnceCell::new(),
            index: RwLock::new(HashMap::new()),
            locks: parking_lot::Mutex::new(HashMap::new()),
            http,
            feed: parking_lot::Mutex::new(Feed::default()),
            feed_ready: Arc::new(tokio::sync::Notify::new()),
        });
        let weak = Arc::downgrade(&subs);
        let ready = subs.feed_ready.clone();
        tokio::spawn(async move { Subscriptions::run(weak, ready).await });
        subs
    }

    async fn run(weak: std::sync::Weak<Subscriptions>, ready: Arc<tokio::sync::Notify>) {
        if let Some(s) = weak.upgrade() {
            s.load_index().await;
        }
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut events = None;
        loop {
            {
                let Some(s) = weak.upgrade() else { return };
                s.follow_feed(&mut events);
            }
            tokio::select! {
                () = ready.notified() => {}
                ev = next_event(&mut events) => {
                    let Some(s) = weak.upgrade() else { return };
                    match ev {
                        Ok(ev) => s.on_event(ev).await,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!(missed = n, "subscription engine lagged behind stream events; re-scanning");
                            s.rescan().await;
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
                _ = tick.tick() => {
                    let Some(s) = weak.upgrade() else { return };
                    s.on_tick().await;
                }
            }
        }
    }

    async fn keys(&self) -> Result<&Keys, SubError> {
        self.keys
            .get_or_try_init(|| async {
                loop {
                    if let Some((raw, _)) = self.storage.kv_get(KEYS_KEY).await? {
                        let m: KeyMaterial = serde_json::from_slice(&raw)
                            .map_err(|_| SubError::bad("corrupt subscription key material"))?;
                        let signing = m
                            .keys()
                            .ok_or_else(|| SubError::bad("corrupt signing keys"))?;
                        let token_secret = m
                            .token_secret()
                            .ok_or_else(|| SubError::bad("corrupt token secret"))?;
                        return Ok(Keys {
                            signing,
                            token_secret,
                        });
                    }
                    let m = KeyMaterial::generate();
                    let raw = Bytes::from(serde_json::to_vec(&m).unwrap_or_default());
                    match self.storage.kv_put(KEYS_KEY, raw, None).await {
                        Ok(_) | Err(StorageError::VersionConflict) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
            })
            .await
    }

    /// Takes the receiver an indexer left, or lets go of the feed once no
    /// subscription is left. Decided under the feed lock, which indexers
    /// hold while they add to the index, so the feed is never dropped just
    /// as a subscription arrives.
    fn follow_feed(&self, events: &mut Option<tokio::sync::broadcast::Receiver<StreamEvent>>) {
        let mut feed = self.feed.lock();
        if events.is_none() {
            if let Some(rx) = feed.pending.take() {
                *events = Some(rx);
                feed.active = true;
            }
        } else if self.index.read().is_empty() {
            *events = None;
            feed.active = false;
        }
    }

    /// Adds a subscription to the index, subscribing to stream events
    /// first if the engine does not follow them.
    fn index_insert(&self, id: String, entry: IndexEntry) {
        {
            let mut feed = self.feed.lock();
            if !feed.active && feed.pending.is_none() {
                feed.pending = Some(self.storage.events());
            }
            self.index.write().insert(id, entry);
        }
        self.feed_ready.notify_one();
    }

    async fn load_index(&self) {
        let Ok(keys) = self.storage.kv_list(SUB_PREFIX).await else {
            return;
        };
        for k in keys {
            if let Ok(Some((raw, _))) = self.storage.kv_get(&k).await
                && let Ok(s) = serde_json::from_slice::<State>(&raw)
                && !s.deleted
            {
                self.index_insert(s.id.clone(), IndexEntry::of(&s));
            }
        }
    }

    fn lock_for(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks.lock().entry(id.to_owned()).or_default().clone()
    }

    async fn load(&self, id: &str) -> Result<Option<(State, u64)>, SubError> {
        match self.storage.kv_get(&format!("{SUB_PREFIX}{id}")).await? {
            None => Ok(None),
            Some((raw, v)) => serde_json::from_slice::<State>(&raw)
                .map(|s| Some((s, v)))
                .map_err(|_| SubError::bad("corrupt subscription state")),
        }
    }

    async fn save(&self, s: &State, expected: Option<u64>) -> Result<(), SubError> {
        let raw = Bytes::from(serde_json::to_vec(s).unwrap_or_default());
        self.storage
            .kv_put(&format!("{SUB_PREFIX}{}", s.id), raw, expected)
            .await?;
        if s.deleted {
            self.index.write().remove(&s.id);
        } else {
            self.index_insert(s.id.clone(), IndexEntry::of(s));
        }
        Ok(())
    }

    /// Loads, changes and saves a live subscription under its lock, with
    /// compare-and-set against other nodes. `f` returns the response value
    /// and whether to look for new work afterwards.
    async fn update<T>(
        &self,
        id: &str,
        mut f: impl FnMut(&mut State, i64) -> Result<T, SubError>,
    ) -> Result<(T, Vec<Action>), SubError> {
        let lock = self.lock_for(id);
        let _guard = lock.lock().await;
        loop {
            let (mut s, v) = match self.load(id).await? {
                Some((s, _)) if s.deleted => return Err(SubError::not_found()),
                Some(x) => x,
                None => return Err(SubError::not_found()),
            };
            let now = now_ms();
            let out = f(&mut s, now)?;
            let actions = self.maybe_wake(&mut s, now).await?;
            match self.save(&s, Some(v)).await {
                Ok(()) => return Ok((out, actions)),
                Err(SubError::Api(e, _)) if e.code == "version_conflict" => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Current tails of the linked streams; links to deleted streams go.
    async fn tails(&self, s: &mut State) -> BTreeMap<String, String> {
        let mut tails = BTreeMap::new();
        let mut gone = Vec::new();
        for path in s.links.keys() {
            let Ok(name) = StreamName::new(path) else {
                continue;
            };
            match self.storage.head(&name).await {
                Ok(info) => {
                    tails.insert(path.clone(), info.tail.to_string());
                }
                Err(StorageError::NotFound | StorageError::Gone) => {
                    if !s.links.get(path).is_some_and(|l| l.explicit) {
                        gone.push(path.clone());
                    }
                }
                Err(_) => {}
            }
        }
        for p in gone {
            s.links.remove(&p);
        }
        tails
    }

    /// Issues a new wake if there is pending work and none in flight.
    async fn maybe_wake(&self, s: &mut State, now: i64) -> Result<Vec<Action>, SubError> {
        if s.deleted || s.wake.is_some() || s.next_attempt_ms.is_some_and(|t| t > now) {
            return Ok(Vec::new());
        }
        let tails = self.tails(s).await;
        if !s.pending(&tails) {
            return Ok(Vec::new());
        }
        s.next_attempt_ms = None;
        s.generation += 1;
        let wake_id = format!("w_{:016x}", rand::thread_rng().r#gen::<u64>());
        let snapshot: BTreeMap<String, String> = tails;
        s.wake = Some(Wake {
            wake_id: wake_id.clone(),
            holder: None,
            lease_expires_ms: now + i64::try_from(s.config.lease_ttl_ms).unwrap_or(i64::MAX),
            snapshot: snapshot.clone(),
        });
        match s.config.kind {
            Kind::Webhook => {
                let keys = self.keys().await?;
                let token = sign_token(
                    &keys.token_secret,
                    &TokenClaims {
                        sub: s.id.clone(),
                        generation: s.generation,
                        wake_id: wake_id.clone(),
                        exp: now + TOKEN_LIFETIME_MS,
                    },
                )
                .map_err(|e| SubError::bad(e.to_string()))?;
                let body = json!({
                    "subscription_id": s.client_id(),
                    "wake_id": wake_id,
                    "generation": s.generation,
                    "streams": stream_views(s, Some(&snapshot)),
                    "callback_url": format!(
                        "{}/__ds/subscriptions/{}/callback",
                        self.root_url(&s.base_url, &s.url_prefix),
                        s.client_id()
                    ),
                    "callback_token": token,
                });
                Ok(vec![Action::Webhook {
                    body: Bytes::from(body.to_string()),
                    url: s.config.webhook_url.clone().unwrap_or_default(),
                    generation: s.generation,
                    wake_id,
                }])
            }
            Kind::PullWake => {
                let stream = s
                    .links
                    .iter()
                    .find(|(p, l)| {
                        snapshot
                            .get(*p)
                            .is_some_and(|t| t.as_str() > l.acked.as_str())
                    })
                    .map(|(p, _)| s.unscoped(p).to_owned())
                    .unwrap_or_default();
                let body = json!({
                    "type": "wake",
                    "subscription_id": s.client_id(),
                    "stream": stream,
                    "generation": s.generation,
                    "ts": now,
                });
                Ok(vec![Action::WakeEvent {
                    wake_stream: s.config.wake_stream.clone().unwrap_or_default(),
                    body: Bytes::from(body.to_string()),
                }])
            }
        }
    }

    /// The stream-root URL for callback/JWKS URLs (`prefix`: `/t/{tenant}`
    /// in path tenant mode; `fallback` already carries it).
    fn root_url(&self, fallback: &str, prefix: &str) -> String {
        match &self.config.public_url {
            Some(p) => format!(
                "{}{prefix}{}",
                p.trim_end_matches('/'),
                self.config.stream_root.trim_end_matches('/')
            ),
            None => fallback.to_owned(),
        }
    }

    fn perform(self: &Arc<Self>, id: &str, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Webhook {
                    body,
                    url,
                    generation,
                    wake_id,
                } => {
                    let this = self.clone();
                    let id = id.to_owned();
                    tokio::spawn(
                        async move { this.deliver(id, url, body, generation, wake_id).await },
                    );
                }
                Action::WakeEvent { wake_stream, body } => {
                    let this = self.clone();
                    tokio::spawn(async move { this.write_wake_event(&wake_stream, body).await });
                }
            }
        }
    }

    async fn write_wake_event(&self, wake_stream: &str, body: Bytes) {
        let Ok(name) = StreamName::new(wake_stream) else {
            return;
        };
        let Ok(info) = self.storage.head(&name).await else {
            tracing::warn!(
                wake_stream,
                "pull-wake stream does not exist; wake event not written"
            );
            return;
        };
        let body = if info.content_type.is_json() {
            Body::Json(Ok(vec![body]))
        } else {
            Body::Bytes(body)
        };
        let req = AppendRequest {
            content_type: Some(info.content_type),
            body,
            close: false,
            stream_seq: None,
            producer: None,
        };
        match self.storage.append(&name, req).await {
            Ok(out) if out.result.is_ok() => {}
            Ok(out) => tracing::warn!(wake_stream, result = ?out.result, "wake event refused"),
            Err(e) => tracing::warn!(wake_stream, error = %e, "wake event not written"),
        }
    }

    /// Sends one webhook and records the outcome.
    async fn deliver(
        self: Arc<Self>,
        id: String,
        url: String,
        body: Bytes,
        generation: u64,
        wake_id: String,
    ) {
        let result = self.post_webhook(&url, body).await;
        let outcome = self
            .update(&id, |s, now| {
                let current = s.generation == generation
                    && s.wake.as_ref().is_some_and(|w| w.wake_id == wake_id);
                if !current {
                    return Ok(());
                }
                match &result {
                    Ok(done) => {
                        s.failures = 0;
                        s.next_attempt_ms = None;
                        s.last_error = None;
                        if *done && let Some(w) = s.wake.take() {
                            // `{"done": true}`: ack the snapshot and release.
                            for (path, tail) in w.snapshot {
                                if let Some(l) = s.links.get_mut(&path)
                                    && tail > l.acked
                                {
                                    l.acked = tail;
                                }
                            }
                        }
                    }
                    Err(e) => {
                        s.wake = None;
                        s.failures = s.failures.saturating_add(1);
                        s.next_attempt_ms = Some(now + retry_delay_ms(s.failures));
                        s.last_error = Some(e.clone());
                    }
                }
                Ok(())
            })
            .await;
        match outcome {
            Ok(((), actions)) => self.perform(&id, actions),
            Err(SubError::Api(e, _)) if e.status == StatusCode::NOT_FOUND => {}
            Err(e) => {
                tracing::warn!(subscription = %id, error = ?e, "recording webhook outcome failed")
            }
        }
    }

    /// POSTs a signed webhook. `Ok(true)` when the receiver answered
    /// `{"done": true}`.
    async fn post_webhook(&self, url: &str, body: Bytes) -> Result<bool, String> {
        let parsed = check_webhook_url(url, self.config.subscriptions.allow_loopback_webhooks)
            .map_err(|e| e.to_string())?;
        let client = if self.config.subscriptions.allow_loopback_webhooks {
            self.http.clone()
        } else {
            // Resolve now and pin the vetted address: a DNS answer that
            // changed since creation cannot steer us into the network.
            let host = parsed.host_str().ok_or("no host")?.to_owned();
            let port = parsed.port_or_known_default().unwrap_or(443);
            let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|e| format!("resolving {host}: {e}"))?
                .collect();
            let addr = addrs
                .iter()
                .find(|a| !security::is_private(a.ip()))
                .copied()
                .ok_or_else(|| format!("{host} resolves only to private addresses"))?;
            reqwest::Client::builder()
                .timeout(self.config.subscriptions.webhook_timeout)
                .redirect(reqwest::redirect::Policy::none())
                .resolve(&host, addr)
                .build()
                .map_err(|e| e.to_string())?
        };
        let keys = self.keys().await.map_err(|e| format!("{e:?}"))?;
        let key = keys.signing.last().ok_or("no signing key")?;
        let sig = security::signature_header(key, now_ms() / 1000, &body);
        let span = tracing::info_span!(
            "webhook",
            otel.kind = "client",
            request_id = tracing::field::Empty
        );
        let (traceparent, request_id) = security::delivery_headers(&span);
        let send = client
            .post(parsed)
            .header(header::CONTENT_TYPE, "application/json")
            .header("webhook-signature", sig)
            .header("traceparent", traceparent)
            .header("x-request-id", request_id)
            .body(body)
            .send();
        let resp = tracing::Instrument::instrument(send, span)
            .await
            .map_err(|e| format!("webhook request failed: {e}"))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("webhook answered {status}"));
        }
        let raw = resp.bytes().await.unwrap_or_default();
        let done = serde_json::from_slice::<serde_json::Value>(&raw)
            .ok()
            .and_then(|v| v.get("done").and_then(serde_json::Value::as_bool))
            .unwrap_or(false);
        Ok(done)
    }

    /// Links new streams and wakes subscriptions with pending work.
    async fn on_event(self: &Arc<Self>, ev: StreamEvent) {
        // Every append lands here; with no subscriptions (the common case)
        // it must cost no more than a read lock.
        let (name, concerned) = {
            let index = self.index.read();
            if index.is_empty() {
                return;
            }
            let name = ev.name.to_string();
            let concerned: Vec<(String, bool, bool)> = index
                .iter()
                .filter_map(|(id, e)| {
                    let (explicit, glob) = e.wants(&name);
                    (explicit || glob).then(|| (id.clone(), explicit, glob))
                })
                .collect();
            (name, concerned)
        };
        for (id, explicit, glob) in concerned {
            let r = self
                .update(&id, |s, _| {
                    if ev.kind == StreamEventKind::Deleted {
                        if !explicit {
                            s.links.remove(&name);
                        }
                        return Ok(());
                    }
                    let link = s.links.entry(name.clone()).or_insert_with(|| Link {
                        explicit,
                        glob,
                        // Discovered by this change: linked just before it.
                        acked: ev.prev.to_string(),
                    });
                    link.glob |= glob;
                    Ok(())
                })
                .await;
            match r {
                Ok(((), actions)) => self.perform(&id, actions),
                Err(e) => tracing::debug!(subscription = %id, error = ?e, "event not applied"),
            }
        }
    }

    /// After lost events: re-link pattern matches and re-evaluate every
    /// subscription.
    async fn rescan(self: &Arc<Self>) {
        let ids: Vec<String> = self.index.read().keys().cloned().collect();
        for id in ids {
            let pattern = self.index.read().get(&id).and_then(|e| e.pattern.clone());
            let found = match &pattern {
                Some(p) => self.backfill(p).await,
                None => Vec::new(),
            };
            if let Ok(((), actions)) = self
                .update(&id, |s, _| {
                    for (path, tail) in &found {
                        s.links.entry(path.clone()).or_insert_with(|| Link {
                            explicit: false,
                            glob: true,
                            acked: tail.clone(),
                        });
                    }
                    Ok(())
                })
                .await
            {
                self.perform(&id, actions);
            }
        }
    }

    /// Lease expiry and retry schedule.
    async fn on_tick(self: &Arc<Self>) {
        let now = now_ms();
        let due: Vec<String> = self
            .index
            .read()
            .iter()
            .filter(|(_, e)| e.deadline.is_some_and(|d| d <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            let r = self
                .update(&id, |s, now| {
                    if s.wake.as_ref().is_some_and(|w| w.lease_expires_ms <= now) {
                        // Lease lapsed: clear holder and token; pending work re-wakes.
                        s.wake = None;
                    }
                    if s.next_attempt_ms.is_some_and(|t| t <= now) {
                        s.next_attempt_ms = None;
                    }
                    Ok(())
                })
                .await;
            if let Ok(((), actions)) = r {
                self.perform(&id, actions);
            }
        }
    }

    /// Existing streams matching a pattern, at their current tails.
    async fn backfill(&self, pattern: &str) -> Vec<(String, String)> {
        let prefix = weir_core::glob::literal_prefix(pattern);
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let Ok(page) = self.storage.list(&prefix, after.as_deref(), 1000).await else {
                break;
            };
            let done = page.len() < 1000;
            for info in &page {
                let n = info.name.to_string();
                if weir_core::glob::matches(pattern, &n) {
                    out.push((n, info.tail.to_string()));
                }
            }
            after = page.last().map(|i| i.name.to_string());
            if done || after.is_none() {
                break;
            }
        }
        out
    }

    async fn current_tail(&self, path: &str) -> String {
        match StreamName::new(path) {
            Ok(n) => match self.storage.head(&n).await {
                Ok(info) => info.tail.to_string(),
                Err(_) => ZERO_OFFSET.to_owned(),
            },
            Err(_) => ZERO_OFFSET.to_owned(),
        }
    }

    async fn view(&self, s: &State, root: &str) -> Result<serde_json::Value, SubError> {
        let keys = self.keys().await?;
        let webhook = match (&s.config.kind, &s.config.webhook_url) {
            (Kind::Webhook, Some(url)) => json!({
                "url": url,
                "signing": {
                    "alg": "ed25519",
                    "kid": keys.signing.last().map(|k| k.kid.clone()).unwrap_or_default(),
                    "jwks_url": format!("{root}/__ds/jwks.json"),
                },
            }),
            _ => serde_json::Value::Null,
        };
        Ok(json!({
            "id": s.client_id(),
            "subscription_id": s.client_id(),
            "type": s.config.kind,
            "pattern": s.config.pattern.as_deref().map(|p| s.unscoped(p)),
            "streams": stream_views(s, None),
            "webhook": webhook,
            "wake_stream": s.config.wake_stream.as_deref().map(|w| s.unscoped(w)),
            "lease_ttl_ms": s.config.lease_ttl_ms,
            "created_at": format_ms(s.created_at_ms),
            "status": s.status(),
            "description": s.config.description,
            "generation": s.generation,
        }))
    }
}

/// Webhook retry delay: 1 s doubling to 60 s, ±20% jitter.
fn retry_delay_ms(failures: u32) -> i64 {
    let base = 1000i64
        .saturating_mul(1i64 << failures.saturating_sub(1).min(6))
        .min(60_000);
    let jitter = rand::thread_rng().gen_range(-0.2..=0.2);
    (base as f64 * (1.0 + jitter)) as i64
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= model::MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.~:".contains(&b))
}

fn json_ok(status: StatusCode, v: serde_json::Value) -> Response {
    let mut r = (status, v.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn bearer(h: &http::HeaderMap) -> Option<&str> {
    h.get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

#[derive(Deserialize)]
struct AckBody {
    wake_id: String,
    generation: u64,
    #[serde(default)]
    acks: Vec<AckItem>,
    #[serde(default)]
    done: bool,
}

#[derive(Deserialize)]
struct AckItem {
    stream: String,
    offset: String,
}

#[derive(Deserialize)]
struct ClaimBody {
    worker: String,
}

#[derive(Deserialize)]
struct StreamsBody {
    streams: Vec<String>,
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, SubError> {
    serde_json::from_slice(body).map_err(|e| SubError::bad(format!("invalid request body: {e}")))
}

/// Whose subscriptions a request acts on: with tenancy, the caller's
/// tenant's (ids and stream names live in its namespace; another tenant's
/// subscription is indistinguishable from a missing one); without, all.
#[derive(Clone, Debug, Default)]
struct Scope {
    tenant: Option<String>,
    /// `/t/{tenant}` in path tenant mode.
    url_prefix: String,
}

impl Scope {
    /// The stored id of the client's subscription id.
    fn id(&self, id: &str) -> String {
        match &self.tenant {
            Some(t) => weir_layer::authz::scoped_name(t, id),
            None => id.to_owned(),
        }
    }
}

/// The permission a subscription request needs: reading its state needs
/// `read`; a worker's callback, ack, release and claim `write`; creating,
/// deleting and changing its streams `manage`.
fn permission_for(method: &Method, path: &str) -> weir_layer::Permission {
    use weir_layer::Permission;
    let last = path.rsplit('/').next().unwrap_or("");
    match *method {
        Method::GET | Method::HEAD => Permission::Read,
        Method::POST if matches!(last, "callback" | "ack" | "release" | "claim") => {
            Permission::Write
        }
        _ => Permission::Manage,
    }
}

/// The routes whose credential is the subscription's callback/claim token
/// (PROTOCOL.md §7, §12.9): `POST {root}/__ds/subscriptions/:id/`
/// `{callback,ack,release}`, also under `/t/{tenant}`. `root` is the
/// stream root without its trailing `/`.
fn is_token_route(root: &str, method: &Method, path: &str) -> bool {
    fn under(root: &str, path: &str) -> bool {
        let Some(rest) = path
            .strip_prefix(root)
            .and_then(|p| p.strip_prefix("/__ds/subscriptions/"))
        else {
            return false;
        };
        match rest.split_once('/') {
            Some((id, action)) => {
                !id.is_empty() && matches!(action, "callback" | "ack" | "release")
            }
            None => false,
        }
    }
    // Every token route ends in its action: any other request (every
    // append, every read) is turned away by its last bytes, before the
    // prefixes are taken apart — the hook runs on each authenticated
    // request.
    if *method != Method::POST
        || !(path.ends_with("/callback") || path.ends_with("/ack") || path.ends_with("/release"))
    {
        return false;
    }
    let in_tenant = path
        .strip_prefix("/t/")
        .and_then(|p| p.find('/').filter(|&i| i > 0).map(|i| &p[i..]));
    under(root, path) || in_tenant.is_some_and(|p| under(root, p))
}

/// The production layer's [`weir_layer::auth::SelfAuthenticating`] hook: a
/// request on a token route (see [`is_token_route`]) whose
/// `Authorization: Bearer` is shaped like a callback token is passed
/// through unverified, because [`dispatch`] verifies the token itself (HMAC,
/// constant time) and takes the tenant from it. Any other credential on
/// those routes — a user's JWT or API key, garbage — is verified by the
/// layer as usual.
pub fn self_authenticating(stream_root: &str) -> weir_layer::auth::SelfAuthenticating {
    let root = stream_root.trim_end_matches('/').to_owned();
    Arc::new(move |method, path, headers| {
        is_token_route(&root, method, path) && bearer(headers).is_some_and(looks_like_token)
    })
}

/// The tenant of a request the production layer passed through as
/// self-authenticating: the one in the verified token's subscription id
/// (`{tenant}/{id}`). In path mode it must be the URL's tenant; a token of
/// another tenant, like an unscoped (pre-tenancy) subscription's, answers
/// `404` as a foreign id does. A bad token is `401 token_invalid`.
async fn token_tenant(
    st: &AppState,
    path: &str,
    method: &Method,
    headers: &http::HeaderMap,
    path_tenant: Option<&str>,
) -> Result<String, SubError> {
    let last = path.rsplit('/').next().unwrap_or("");
    if *method != Method::POST || !matches!(last, "callback" | "ack" | "release") {
        // The layer's hook matches only these; anything else was not
        // authenticated at all.
        return Err(SubError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "UNAUTHORIZED",
            "authentication required",
        ));
    }
    if st.path_tenancy() && path_tenant.is_none() {
        return Err(SubError::new(
            StatusCode::NOT_FOUND,
            "route_not_found",
            "NOT_FOUND",
            "this server takes the tenant from the URL: /t/{tenant}/…",
        ));
    }
    let claims = st.subscriptions.verified_token(headers).await?;
    let Some((tenant, _)) = claims.sub.split_once('/') else {
        return Err(SubError::not_found());
    };
    if path_tenant.is_some_and(|t| t != tenant) {
        return Err(SubError::not_found());
    }
    Ok(tenant.to_owned())
}

/// Routes `__ds/...` requests, in the caller's tenant when streams are
/// tenant-scoped.
pub async fn dispatch(st: AppState, path: &str, req: Request) -> Response {
    let self_authenticated = st.tenancy()
        && req
            .extensions()
            .get::<weir_layer::auth::SelfAuthenticated>()
            .is_some();
    let tenant = if self_authenticated {
        let path_tenant = req
            .extensions()
            .get::<PathTenant>()
            .map(|PathTenant(t)| t.clone());
        let (method, headers) = (req.method(), req.headers());
        match token_tenant(&st, path, method, headers, path_tenant.as_deref()).await {
            Ok(t) => Some(t),
            Err(e) => return e.into_response(),
        }
    } else {
        match tenant_of(&st, &req, permission_for(req.method(), path)) {
            Ok(t) => t,
            Err(r) => return *r,
        }
    };
    let scope = Scope {
        url_prefix: if tenant.is_some() {
            url_prefix(req.extensions())
        } else {
            String::new()
        },
        tenant,
    };
    match route(&st, &scope, path, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn route(
    st: &AppState,
    scope: &Scope,
    path: &str,
    req: Request,
) -> Result<Response, SubError> {
    let subs = st.subscriptions.clone();
    let root = format!(
        "{}{}{}",
        base_url(st, req.headers(), peer_ip(&req)),
        scope.url_prefix,
        st.config.stream_root.trim_end_matches('/')
    );
    let root = subs.root_url(&root, &scope.url_prefix);
    let method = req.method().clone();
    let rest = path.strip_prefix("__ds/").unwrap_or("");
    if rest == "jwks.json" {
        if method != Method::GET && method != Method::HEAD {
            return Err(SubError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "METHOD_NOT_ALLOWED",
                "use GET",
            ));
        }
        let keys = subs.keys().await?;
        let jwks = json!({ "keys": keys.signing.iter().map(security::jwk).collect::<Vec<_>>() });
        let mut r = json_ok(StatusCode::OK, jwks);
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/jwk-set+json"),
        );
        r.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=300"),
        );
        return Ok(r);
    }
    let Some(rest) = rest.strip_prefix("subscriptions/") else {
        return Err(SubError::new(
            StatusCode::NOT_FOUND,
            "route_not_found",
            "NOT_FOUND",
            "no such control API",
        ));
    };
    let (id, tail) = rest.split_once('/').unwrap_or((rest, ""));
    if !valid_id(id) {
        return Err(SubError::bad(
            "subscription ids are 1-256 characters of [A-Za-z0-9-_.~:]",
        ));
    }
    let id = scope.id(id);
    let headers = req.headers().clone();
    let (_, body) = body_bytes(64 * 1024, req)
        .await
        .map_err(|e| SubError::Api(e, "INVALID_REQUEST"))?;
    match (method, tail) {
        (Method::PUT, "") => create(&subs, scope, &id, &root, &body).await,
        (Method::GET, "") => match subs.load(&id).await? {
            Some((s, _)) if !s.deleted => Ok(json_ok(StatusCode::OK, subs.view(&s, &root).await?)),
            _ => Err(SubError::not_found()),
        },
        (Method::DELETE, "") => {
            let lock = subs.lock_for(&id);
            let _g = lock.lock().await;
            match subs.load(&id).await? {
                Some((mut s, v)) if !s.deleted => {
                    s.deleted = true;
                    s.wake = None;
                    s.links.clear();
                    s.next_attempt_ms = None;
                    subs.save(&s, Some(v)).await?;
                    Ok(StatusCode::NO_CONTENT.into_response())
                }
                _ => Err(SubError::not_found()),
            }
        }
        (Method::POST, "streams") => {
            let b: StreamsBody = parse(&body)?;
            let paths = stream_paths(&b.streams)
                .and_then(|p| scope_paths(&p, scope.tenant.as_deref()))
                .map_err(|e| SubError::bad(e.to_string()))?;
            let mut tails = Vec::new();
            for p in &paths {
                tails.push((p.clone(), subs.current_tail(p).await));
            }
            let ((), actions) = subs
                .update(&id, |s, _| {
                    for (p, t) in &tails {
                        s.links
                            .entry(p.clone())
                            .or_insert_with(|| Link {
                                explicit: true,
                                glob: false,
                                acked: t.clone(),
                            })
                            .explicit = true;
                    }
                    Ok(())
                })
                .await?;
            subs.perform(&id, actions);
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (Method::DELETE, t) if t.starts_with("streams/") => {
            let raw = &t["streams/".len()..];
            let p = percent_encoding::percent_decode_str(raw)
                .decode_utf8_lossy()
                .into_owned();
            let p = match &scope.tenant {
                Some(t) => weir_layer::authz::scoped_name(t, &p),
                None => p,
            };
            let ((), actions) = subs
                .update(&id, |s, _| {
                    if let Some(l) = s.links.get_mut(&p) {
                        l.explicit = false;
                        if !l.glob {
                            s.links.remove(&p);
                        }
                    }
                    Ok(())
                })
                .await?;
            subs.perform(&id, actions);
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (Method::POST, "callback" | "ack") => {
            let b: AckBody = parse(&body)?;
            let claims = subs.token_claims(&headers, &id).await?;
            let pull = tail == "ack";
            let (next_wake, actions) = subs
                .update(&id, |s, now| {
                    fence(s, &claims, b.generation, &b.wake_id)?;
                    if pull != (s.config.kind == Kind::PullWake) {
                        return Err(SubError::bad(format!(
                            "{tail} is not used by {:?} subscriptions",
                            s.config.kind
                        )));
                    }
                    for a in &b.acks {
                        Offset::parse(&a.offset)
                            .map_err(|_| SubError::bad(format!("invalid offset `{}`", a.offset)))?;
                        let stream = s.scoped(&a.stream);
                        if let Some(l) = s.links.get_mut(&stream)
                            && a.offset > l.acked
                        {
                            l.acked.clone_from(&a.offset);
                        }
                    }
                    if b.done {
                        s.wake = None;
                    } else if let Some(w) = &mut s.wake {
                        w.lease_expires_ms =
                            now + i64::try_from(s.config.lease_ttl_ms).unwrap_or(i64::MAX);
                    }
                    Ok(b.done)
                })
                .await?;
            let next = next_wake && !actions.is_empty();
            subs.perform(&id, actions);
            Ok(json_ok(
                StatusCode::OK,
                json!({"ok": true, "next_wake": next}),
            ))
        }
        (Method::POST, "release") => {
            #[derive(Deserialize)]
            struct ReleaseBody {
                wake_id: String,
                generation: u64,
            }
            let b: ReleaseBody = parse(&body)?;
            let claims = subs.token_claims(&headers, &id).await?;
            let ((), actions) = subs
                .update(&id, |s, _| {
                    fence(s, &claims, b.generation, &b.wake_id)?;
                    s.wake = None;
                    Ok(())
                })
                .await?;
            subs.perform(&id, actions);
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (Method::POST, "claim") => {
            // With tenancy the production layer has verified the worker's
            // credential (and `tenant_of` its `write` permission).
            if scope.tenant.is_none() && !st.config.subscriptions.allow_anonymous_claim {
                // No worker credential verifier is configured yet: claims
                // need one (the production layer provides it).
                if bearer(&headers).is_none() {
                    return Err(SubError::new(
                        StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        "UNAUTHORIZED",
                        "claiming requires a bearer credential",
                    ));
                }
                return Err(SubError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "UNAUTHORIZED",
                    "worker credentials cannot be verified: no authentication is configured",
                ));
            }
            let b: ClaimBody = parse(&body)?;
            if b.worker.is_empty() || b.worker.len() > 256 {
                return Err(SubError::bad("worker must be 1-256 characters"));
            }
            claim(&subs, &id, &b.worker).await
        }
        _ => Err(SubError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "METHOD_NOT_ALLOWED",
            "unsupported method for this path",
        )),
    }
}

fn fence(s: &State, claims: &TokenClaims, generation: u64, wake_id: &str) -> Result<(), SubError> {
    let current = s.wake.as_ref();
    let ok = claims.sub == s.id
        && claims.generation == s.generation
        && generation == s.generation
        && current.is_some_and(|w| w.wake_id == wake_id && w.wake_id == claims.wake_id);
    if ok { Ok(()) } else { Err(SubError::Fenced) }
}

impl Subscriptions {
    async fn token_claims(&self, h: &http::HeaderMap, id: &str) -> Result<TokenClaims, SubError> {
        let claims = self.verified_token(h).await?;
        if claims.sub != id {
            return Err(SubError::Fenced);
        }
        Ok(claims)
    }

    /// The claims of the request's bearer token, if it is valid.
    async fn verified_token(&self, h: &http::HeaderMap) -> Result<TokenClaims, SubError> {
        let token = bearer(h).ok_or_else(|| {
            SubError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "UNAUTHORIZED",
                "a bearer token is required",
            )
        })?;
        let keys = self.keys().await?;
        let claims = verify_token(&keys.token_secret, token, now_ms()).map_err(|e| {
            SubError::new(
                StatusCode::UNAUTHORIZED,
                "token_invalid",
                "TOKEN_INVALID",
                e.to_string(),
            )
        })?;
        Ok(claims)
    }
}

async fn create(
    subs: &Arc<Subscriptions>,
    scope: &Scope,
    id: &str,
    root: &str,
    body: &[u8],
) -> Result<Response, SubError> {
    let req: CreateBody = parse(body)?;
    let config: Config = req
        .into_config()
        .and_then(|c| c.in_tenant(scope.tenant.as_deref()))
        .map_err(|e| SubError::bad(e.to_string()))?;
    if let Some(url) = &config.webhook_url {
        check_webhook_url(url, subs.config.subscriptions.allow_loopback_webhooks).map_err(|e| {
            SubError::new(
                StatusCode::BAD_REQUEST,
                "webhook_url_rejected",
                "WEBHOOK_URL_REJECTED",
                e.to_string(),
            )
        })?;
    }
    let hash = config.hash();
    let lock = subs.lock_for(id);
    let guard = lock.lock().await;
    let existing = subs.load(id).await?;
    if let Some((s, _)) = &existing
        && !s.deleted
    {
        if s.config_hash == hash {
            let v = subs.view(s, root).await?;
            return Ok(json_ok(StatusCode::OK, v));
        }
        return Err(SubError::new(
            StatusCode::CONFLICT,
            "subscription_config_mismatch",
            "SUBSCRIPTION_EXISTS",
            "a subscription with this id exists with a different configuration",
        ));
    }
    // Link explicit streams and existing pattern matches at their tails.
    let mut links = BTreeMap::new();
    for p in &config.streams {
        links.insert(
            p.clone(),
            Link {
                explicit: true,
                glob: false,
                acked: subs.current_tail(p).await,
            },
        );
    }
    if let Some(p) = &config.pattern {
        for (path, tail) in subs.backfill(p).await {
            if config.wake_stream.as_deref() == Some(path.as_str()) {
                continue;
            }
            links
                .entry(path)
                .or_insert(Link {
                    explicit: false,
                    glob: true,
                    acked: tail,
                })
                .glob = true;
        }
    }
    let generation = existing.as_ref().map_or(0, |(s, _)| s.generation);
    let state = State {
        id: id.to_owned(),
        config,
        config_hash: hash,
        created_at_ms: now_ms(),
        base_url: root.to_owned(),
        links,
        generation,
        wake: None,
        failures: 0,
        next_attempt_ms: None,
        last_error: None,
        deleted: false,
        tenant: scope.tenant.clone(),
        url_prefix: scope.url_prefix.clone(),
    };
    subs.save(&state, existing.map(|(_, v)| v)).await?;
    drop(guard);
    let v = subs.view(&state, root).await?;
    Ok(json_ok(StatusCode::CREATED, v))
}

async fn claim(subs: &Arc<Subscriptions>, id: &str, worker: &str) -> Result<Response, SubError> {
    let worker = worker.to_owned();
    let granted = subs
        .update(id, |s, now| {
            if s.config.kind != Kind::PullWake {
                return Err(SubError::bad("only pull-wake subscriptions are claimed"));
            }
            if let Some(w) = &s.wake
                && let Some(h) = &w.holder
                && w.lease_expires_ms > now
            {
                return Err(SubError::AlreadyClaimed {
                    holder: h.clone(),
                    generation: s.generation,
                });
            }
            if s.wake.as_ref().is_some_and(|w| w.holder.is_some()) {
                // The previous holder's lease lapsed.
                s.wake = None;
            }
            Ok(())
        })
        .await?;
    subs.perform(id, granted.1);
    // Take the wake in flight (issued by the engine, or just now above).
    let keys = subs.keys().await?;
    let (resp, actions) = subs
        .update(id, |s, now| {
            let lease = i64::try_from(s.config.lease_ttl_ms).unwrap_or(i64::MAX);
            let generation = s.generation;
            let Some(w) = &mut s.wake else {
                return Err(SubError::new(
                    StatusCode::CONFLICT,
                    "no_pending_work",
                    "NO_PENDING_WORK",
                    "the subscription has no pending work to claim",
                ));
            };
            if let Some(h) = &w.holder
                && w.lease_expires_ms > now
            {
                return Err(SubError::AlreadyClaimed {
                    holder: h.clone(),
                    generation,
                });
            }
            w.holder = Some(worker.clone());
            w.lease_expires_ms = now + lease;
            let token = sign_token(
                &keys.token_secret,
                &TokenClaims {
                    sub: s.id.clone(),
                    generation,
                    wake_id: w.wake_id.clone(),
                    exp: now + TOKEN_LIFETIME_MS,
                },
            )
            .map_err(|e| SubError::bad(e.to_string()))?;
            let snapshot = w.snapshot.clone();
            let wake_id = w.wake_id.clone();
            Ok(json!({
                "wake_id": wake_id,
                "generation": generation,
                "token": token,
                "streams": stream_views(s, Some(&snapshot)),
                "lease_ttl_ms": s.config.lease_ttl_ms,
            }))
        })
        .await?;
    subs.perform(id, actions);
    Ok(json_ok(StatusCode::OK, resp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_schedule_is_bounded() {
        for f in 1..20 {
            let d = retry_delay_ms(f);
            assert!((800..=72_000).contains(&d), "{f}: {d}");
        }
        assert!(retry_delay_ms(1) <= 1200);
    }

    #[test]
    fn ids() {
        assert!(valid_id("sub-1"));
        assert!(!valid_id(""));
        assert!(!valid_id("a/b"));
        assert!(!valid_id(&"x".repeat(300)));
    }

    #[test]
    fn token_routes_are_exact() {
        let post = Method::POST;
        for yes in [
            "/v1/stream/__ds/subscriptions/s1/callback",
            "/v1/stream/__ds/subscriptions/s1/ack",
            "/v1/stream/__ds/subscriptions/s1/release",
            "/t/alpha/v1/stream/__ds/subscriptions/s1/ack",
        ] {
            assert!(is_token_route("/v1/stream", &post, yes), "{yes}");
        }
        for no in [
            "/v1/stream/__ds/subscriptions/s1/claim",
            "/v1/stream/__ds/subscriptions/s1",
            "/v1/stream/__ds/subscriptions/s1/streams",
            "/v1/stream/__ds/subscriptions//ack",
            "/v1/stream/__ds/subscriptions/s1/ack/x",
            "/v1/stream/orders/__ds/subscriptions/s1/ack",
            "/v1/stream/__ds/jwks.json",
            "/t//v1/stream/__ds/subscriptions/s1/ack",
            "/x/v1/stream/__ds/subscriptions/s1/ack",
            "/_weir/batch",
        ] {
            assert!(!is_token_route("/v1/stream", &post, no), "{no}");
        }
        assert!(!is_token_route(
            "/v1/stream",
            &Method::PUT,
            "/v1/stream/__ds/subscriptions/s1/ack"
        ));
    }
}
