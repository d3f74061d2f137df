//! The Durable Streams HTTP server.
//!
//! [`router`] builds the axum application: protocol routes under the stream
//! root (default `/v1/stream`), the reserved `__ds` control APIs, health
//! endpoints, and the browser-security/CORS layer every response passes
//! through. [`transport`] serves it over HTTP/1.1 and HTTP/2 (h2c, or h2 over
//! TLS via ALPN) with header-read timeouts and graceful shutdown.
//!
//! Handlers translate headers into `weir-core` requests and storage results
//! into headers; they never touch files or NATS (that is the storage
//! backend's job).

pub mod config;
pub mod error;
mod front;
pub mod headers;
pub mod limits;
mod live;
mod manage;
mod metrics;
mod pieces;
mod query;
mod security;
mod streams;
pub mod subscriptions;
pub mod transport;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{MethodRouter, any, get, post};
use tower::ServiceBuilder;
use weir_storage::Storage;

pub use config::ServerConfig;

/// Shared state of every handler: one `Arc`, so the per-request clones
/// that axum's `State` extractor and `from_fn_with_state` middleware make
/// cost one atomic increment, not one per field.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<StateInner>,
}

/// What [`AppState`] shares.
pub struct StateInner {
    pub storage: Arc<dyn Storage>,
    pub config: Arc<ServerConfig>,
    pub subscriptions: Arc<subscriptions::Subscriptions>,
    /// The production layer (auth, rate limits, request ids, metrics), when
    /// the server runs with one.
    pub layer: Option<Arc<weir_layer::Production>>,
    /// Load-shedding budgets (`config.limits`).
    pub shedder: Arc<limits::Shedder>,
    closing: Arc<tokio::sync::watch::Sender<bool>>,
}

impl std::ops::Deref for AppState {
    type Target = StateInner;
    fn deref(&self) -> &StateInner {
        &self.inner
    }
}

impl AppState {
    /// Builds the state and starts the subscription engine's background work.
    pub fn new(storage: Arc<dyn Storage>, config: ServerConfig) -> AppState {
        let shedder = Arc::new(limits::Shedder::new(&config.limits));
        let config = Arc::new(config);
        let subscriptions = subscriptions::Subscriptions::start(storage.clone(), config.clone());
        AppState {
            inner: Arc::new(StateInner {
                storage,
                config,
                subscriptions,
                layer: None,
                shedder,
                closing: Arc::new(tokio::sync::watch::channel(false).0),
            }),
        }
    }

    /// Runs every request through the production layer: request ids,
    /// metrics, authentication and rate limits (see `weir-layer`).
    pub fn with_layer(self, layer: weir_layer::Production) -> AppState {
        let i = &self.inner;
        metrics::spawn_streams_gauge(&i.storage);
        AppState {
            inner: Arc::new(StateInner {
                storage: i.storage.clone(),
                config: i.config.clone(),
                subscriptions: i.subscriptions.clone(),
                layer: Some(Arc::new(layer)),
                shedder: i.shedder.clone(),
                closing: i.closing.clone(),
            }),
        }
    }

    /// The same server — storage, subscription engine, shutdown signal,
    /// and the load-shedding budgets unless `[limits]` changed them — with
    /// new settings and production layer: what a configuration reload
    /// serves next. Requests admitted under the old budgets release their
    /// permits there; new budgets apply to requests admitted afterwards.
    pub fn reconfigured(
        &self,
        config: ServerConfig,
        layer: Option<weir_layer::Production>,
    ) -> AppState {
        let i = &self.inner;
        let (a, b) = (&i.config.limits, &config.limits);
        let same_budgets = a.max_in_flight_requests == b.max_in_flight_requests
            && a.max_in_flight_body_bytes == b.max_in_flight_body_bytes
            && a.max_live_readers == b.max_live_readers
            && a.retry_after_secs == b.retry_after_secs;
        let shedder = if same_budgets {
            i.shedder.clone()
        } else {
            Arc::new(limits::Shedder::new(&config.limits))
        };
        AppState {
            inner: Arc::new(StateInner {
                storage: i.storage.clone(),
                config: Arc::new(config),
                subscriptions: i.subscriptions.clone(),
                layer: layer.map(Arc::new),
                shedder,
                closing: i.closing.clone(),
            }),
        }
    }

    /// Whether streams are scoped per tenant: when the production layer
    /// authenticates callers, every stream lives under its principal's
    /// tenant (`{tenant}/{name}` in storage) and other tenants' streams are
    /// invisible (404), never forbidden (403).
    pub fn tenancy(&self) -> bool {
        self.layer
            .as_ref()
            .is_some_and(|l| !matches!(l.authenticator.mode(), weir_layer::auth::AuthMode::None))
    }

    /// Whether the tenant comes from the URL (`/t/{tenant}/…`,
    /// `authz.tenant_source = "path"`) rather than from the token.
    pub fn path_tenancy(&self) -> bool {
        self.tenancy()
            && self
                .layer
                .as_ref()
                .is_some_and(|l| l.tenants.source == weir_layer::authz::TenantSource::Path)
    }

    /// Starts a graceful shutdown: parked long-polls answer at once (`204`,
    /// clients simply poll again elsewhere) and SSE streams end after their
    /// last complete event, so clients resume from the last offset they saw.
    pub fn begin_shutdown(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves once a shutdown has begun.
    pub(crate) async fn closing(&self) {
        let mut rx = self.closing.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }
}

/// The application router.
///
/// Every route runs through one stack, outermost first: security/CORS
/// headers, compression, the production layer (request ids, metrics,
/// authentication, rate limits), load shedding, the body limit. It is
/// mounted with a single `Router::layer`: each `Router::layer` call wraps
/// every route in another boxed, cloned-per-request service, and with five
/// of them that plumbing cost more CPU per append than the layers' work.
/// Composed with `ServiceBuilder`, the layers nest as plain values and a
/// request pays one clone of the stack.
///
/// Requests under the stream root skip the route table: [`front`] sends
/// them to the stream handler behind its own copy of the same stack (one
/// production layer, so one set of metrics and limits), and everything
/// else to the router.
pub fn router(state: AppState) -> Router {
    let root = state.config.stream_root.trim_end_matches('/').to_owned();
    let streams = format!("{root}/{{*path}}");
    let mut others: Vec<(String, MethodRouter<AppState>)> = vec![
        ("/_weir/streams".into(), get(manage::list)),
        ("/_weir/batch".into(), post(manage::batch)),
        (
            format!("/t/{{tenant}}{root}/{{*path}}"),
            any(streams::dispatch_in_tenant),
        ),
        (
            "/t/{tenant}/_weir/streams".into(),
            get(manage::list_in_tenant),
        ),
        (
            "/t/{tenant}/_weir/batch".into(),
            post(manage::batch_in_tenant),
        ),
        ("/healthz".into(), get(|| async { "ok" })),
        ("/readyz".into(), get(streams::ready)),
    ];
    // `/metrics` exists with the layer only (shedding passes it by path).
    if state.layer.is_some() {
        others.push(("/metrics".into(), get(weir_layer::http::metrics_handler)));
    }
    let shortcut = front::applies(&root, others.iter().map(|(path, _)| path.as_str()));
    let router = others
        .into_iter()
        .fold(
            Router::new().route(&streams, any(streams::dispatch)),
            |router, (path, handler)| router.route(&path, handler),
        )
        .fallback(streams::fallback);
    let production = state.layer.as_ref().map(|l| {
        // Subscription callbacks, acks and releases carry their own
        // credential (the callback token), which the engine verifies.
        l.authenticator
            .set_self_authenticating(subscriptions::self_authenticating(&root));
        weir_layer::stack::ProductionLayer::new(l.authenticator.clone(), Some(l.limiter.clone()))
    });
    // Compression (text-like bodies of 1 KiB or more) only for requests
    // that accept an encoding; see `security::CompressionLayer`.
    let stack = |production: Option<weir_layer::stack::ProductionLayer>| {
        ServiceBuilder::new()
            .layer(security::SecurityHeadersLayer)
            .layer(security::CompressionLayer::new(state.config.compression))
            .option_layer(production)
            .layer(limits::ShedLayer::new(state.clone()))
            .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
    };
    let routes = router
        .layer(stack(production.clone()))
        .with_state(state.clone());
    if !shortcut {
        return routes;
    }
    // Stream requests skip the route table (see `front`); the router
    // serves the rest, each behind the same stack.
    let prefix: Arc<str> = Arc::from(format!("{root}/"));
    let direct = stack(production.map(|p| p.for_route(&streams)))
        .service(front::Direct::new(state.clone(), prefix.clone()));
    Router::new().fallback_service(front::Front::new(prefix, direct, routes))
}
