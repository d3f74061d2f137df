//! The `[gateway]` configuration section.
//!
//! Every key has a default so an empty section serves every discovered
//! endpoint under `/api/{service}/{endpoint}` and refuses every event
//! subscription (subscriptions are opt-in: a subject pattern nobody
//! listed could leak another service's events).

use serde::{Deserialize, Serialize};

/// Everything the gateway reads from `[gateway]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Serve every discovered endpoint as `POST /api/{service}/{endpoint}`.
    pub auto_routes: bool,
    /// Deadline of a call whose request has no `Request-Timeout` header.
    pub default_timeout_ms: u64,
    /// Upper bound of a caller's `Request-Timeout` (longer ones are cut to it).
    pub max_timeout_ms: u64,
    /// How often `$SRV.INFO` is asked for the services and their contracts.
    pub refresh_secs: u64,
    /// Largest accepted request body (the streams server's policy:
    /// `413 payload_too_large` past it).
    pub max_body_bytes: usize,
    /// Requests served at once; past it `503 overloaded` with `Retry-After`.
    pub max_in_flight: usize,
    /// Explicit routes, matched before the automatic ones.
    pub routes: Vec<RouteConfig>,
    pub events: EventsConfig,
    pub ws: WsConfig,
    pub sse: SseConfig,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            auto_routes: true,
            default_timeout_ms: 5_000,
            max_timeout_ms: 60_000,
            refresh_secs: 10,
            max_body_bytes: 1024 * 1024,
            max_in_flight: 1024,
            routes: Vec::new(),
            events: EventsConfig::default(),
            ws: WsConfig::default(),
            sse: SseConfig::default(),
        }
    }
}

/// One explicit route: `method path` → an endpoint or a subject.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// `GET`, `POST`, `PUT`, `PATCH` or `DELETE`.
    pub method: String,
    /// An axum path template; `{name}` segments are merged into the request
    /// object as string members (`/users/{id}` → `{"id": "…", …body}`).
    pub path: String,
    /// The target: `service` + `endpoint` (resolved through discovery, so
    /// the OpenAPI document shows its schemas) …
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub endpoint: Option<String>,
    /// … or a raw NATS subject (no schemas known).
    #[serde(default)]
    pub subject: Option<String>,
    /// Whether retrying is safe; default: the endpoint's contract says, or
    /// `true` for `GET`.
    #[serde(default)]
    pub idempotent: Option<bool>,
}

/// Who may subscribe to what (SSE and WebSocket share these rules).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// With tenancy on, a principal's subjects live under its tenant: a
    /// subscription to `orders.>` listens on `{tenant}.orders.>` and events
    /// are delivered with the tenant token removed. Principals holding the
    /// `admin` permission are not exempt: tenancy is about whose data it is.
    pub tenancy: bool,
    /// A subscription is allowed when one rule's pattern covers the whole
    /// requested pattern and the principal holds one of the rule's roles or
    /// scopes (a rule with neither admits every authenticated principal).
    /// `admin` principals may subscribe to anything.
    pub rules: Vec<SubscribeRule>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscribeRule {
    /// A NATS subject pattern (`orders.*`, `notifications.>`).
    pub subjects: String,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WsConfig {
    /// Subscriptions one connection may hold.
    pub max_subscriptions: usize,
    /// Frames queued towards one client; a client that lets it fill up is
    /// closed (1008, "slow consumer") instead of growing memory.
    pub outbound_queue: usize,
    /// Calls one connection may have in flight; more are refused with
    /// `limit_exceeded` error frames.
    pub max_in_flight_calls: usize,
    /// Largest accepted client frame.
    pub max_frame_bytes: usize,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            max_subscriptions: 32,
            outbound_queue: 256,
            max_in_flight_calls: 16,
            max_frame_bytes: 256 * 1024,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SseConfig {
    /// Seconds between `: heartbeat` comments (keeps proxies from closing
    /// an idle stream and lets the client notice a dead one).
    pub heartbeat_secs: u64,
    /// Subjects one `/events` request may name.
    pub max_subjects: usize,
    /// Events queued towards one client before it is cut off with a final
    /// `error` event.
    pub outbound_queue: usize,
}

impl Default for SseConfig {
    fn default() -> Self {
        SseConfig {
            heartbeat_secs: 15,
            max_subjects: 8,
            outbound_queue: 256,
        }
    }
}
