//! Weir's service gateway: NATS services over HTTP, SSE and WebSocket,
//! behind the same production layer as the streams server (request ids,
//! authentication, rate limits, problem+json errors, per-route metrics).
//!
//! * [`rpc`] — `POST /api/{service}/{endpoint}` for every discovered
//!   endpoint, plus explicit routes from the configuration;
//! * [`openapi`] — `GET /openapi.json`, generated from the contracts;
//! * [`sse`] — `GET /events?subject=…`;
//! * [`ws`] — `GET /ws`, a JSON frame protocol to subscribe and call;
//! * [`catalog`] — the services found through `$SRV.INFO`;
//! * [`access`] — who may subscribe to which subjects, tenancy.
//!
//! See `docs/gateway.md`. Embedding it in a process that already runs
//! services:
//!
//! ```no_run
//! # async fn run(transport: std::sync::Arc<dyn weir_service::Transport>) -> Result<(), Box<dyn std::error::Error>> {
//! use weir_gateway::{Gateway, GatewayConfig};
//!
//! let gateway = Gateway::builder(transport, GatewayConfig::default())
//!     .layer_config(&weir_layer::LayerConfig::default())?
//!     .build()
//!     .await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8081").await?;
//! gateway
//!     .serve(listener, async {
//!         let _ = tokio::signal::ctrl_c().await;
//!     })
//!     .await?;
//! # Ok(()) }
//! ```

pub mod access;
pub mod call;
pub mod catalog;
pub mod config;
pub mod event;
pub mod metrics;
pub mod openapi;
pub mod rpc;
pub mod sse;
pub mod subject;
pub mod ws;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use weir_layer::Production;
use weir_service::{Client, Discovery, Transport};

pub use config::GatewayConfig;

/// The request header carrying the caller's deadline, in milliseconds.
pub const REQUEST_TIMEOUT: &str = "request-timeout";

/// Why the gateway could not be built or served.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("the production layer: {0}")]
    Layer(#[from] weir_layer::LayerConfigError),
    #[error("route `{method} {path}`: {reason}")]
    Route {
        method: String,
        path: String,
        reason: String,
    },
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
}

/// What every handler shares.
pub(crate) struct Shared {
    pub(crate) cfg: GatewayConfig,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) client: Client,
    pub(crate) catalog: Arc<catalog::Catalog>,
    pub(crate) layer: Production,
    pub(crate) in_flight: Arc<Semaphore>,
    /// Flips to `true` when the gateway drains: SSE streams end and
    /// WebSockets close with 1001 so graceful shutdown can finish.
    pub(crate) shutdown: watch::Receiver<bool>,
}

pub(crate) type State = Arc<Shared>;

/// Builds a [`Gateway`].
pub struct GatewayBuilder {
    transport: Arc<dyn Transport>,
    cfg: GatewayConfig,
    layer: Option<Production>,
    discovery: Option<Discovery>,
}

impl std::fmt::Debug for GatewayBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayBuilder")
            .field("cfg", &self.cfg)
            .finish()
    }
}

impl GatewayBuilder {
    /// The production layer to mount (the same value the streams server
    /// would mount: its authenticator, limiter and permission table).
    pub fn layer(mut self, layer: Production) -> Self {
        self.layer = Some(layer);
        self
    }

    /// Builds the production layer from `[auth]`, `[authz]`, `[rate_limit]`
    /// (API keys from the store `auth.api_keys` names are not opened here:
    /// use [`GatewayBuilder::layer`] with a store for those).
    pub fn layer_config(self, cfg: &weir_layer::LayerConfig) -> Result<Self, GatewayError> {
        let layer = Production::build(cfg, None, weir_layer::clock::system())?;
        Ok(self.layer(layer))
    }

    /// Overrides how `$SRV.INFO` is asked (wait times).
    pub fn discovery(mut self, d: Discovery) -> Self {
        self.discovery = Some(d);
        self
    }

    /// Validates the routes, runs a first discovery and starts the
    /// periodic one.
    pub async fn build(self) -> Result<Gateway, GatewayError> {
        for r in &self.cfg.routes {
            rpc::check_route(r)?;
        }
        // `/metrics` renders the layer's recorder; an embedder that already
        // installed another recorder keeps it (and scrapes it itself).
        if let Err(e) = weir_layer::metrics::install() {
            tracing::warn!(error = %e, "the gateway's /metrics will be empty");
        }
        metrics::describe();
        let layer = match self.layer {
            Some(l) => l,
            None => Production::build(
                &weir_layer::LayerConfig::default(),
                None,
                weir_layer::clock::system(),
            )?,
        };
        let discovery = self
            .discovery
            .unwrap_or_else(|| Discovery::new(self.transport.clone()));
        let catalog = Arc::new(catalog::Catalog::new(discovery));
        if let Err(e) = catalog.refresh().await {
            tracing::warn!(error = %e, "first service discovery failed; retrying periodically");
        }
        let refresher = catalog.spawn_refresher(Duration::from_secs(self.cfg.refresh_secs.max(1)));
        let client = Client::builder(self.transport.clone())
            .default_timeout(Duration::from_millis(self.cfg.default_timeout_ms))
            .build();
        let (tx, rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            in_flight: Arc::new(Semaphore::new(self.cfg.max_in_flight.max(1))),
            cfg: self.cfg,
            transport: self.transport,
            client,
            catalog,
            layer,
            shutdown: rx,
        });
        Ok(Gateway {
            shared,
            shutdown: Arc::new(tx),
            refresher: Arc::new(refresher),
        })
    }
}

/// A built gateway: a router to mount or a server to run.
#[derive(Clone)]
pub struct Gateway {
    shared: State,
    shutdown: Arc<watch::Sender<bool>>,
    refresher: Arc<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("catalog", &self.shared.catalog)
            .finish()
    }
}

impl Gateway {
    pub fn builder(transport: Arc<dyn Transport>, cfg: GatewayConfig) -> GatewayBuilder {
        GatewayBuilder {
            transport,
            cfg,
            layer: None,
            discovery: None,
        }
    }

    /// The services currently known.
    pub fn catalog(&self) -> Arc<catalog::Snapshot> {
        self.shared.catalog.snapshot()
    }

    /// Asks `$SRV.INFO` now (tests and the embedding process call it after
    /// starting services, instead of waiting for the timer).
    pub async fn refresh(&self) -> Result<usize, weir_service::ServiceError> {
        self.shared.catalog.refresh().await
    }

    /// The whole HTTP surface with the production layer mounted.
    pub fn router(&self) -> Router {
        let st = self.shared.clone();
        let mut router = Router::new();
        for (i, r) in st.cfg.routes.iter().enumerate() {
            router = rpc::mount_route(router, i, r);
        }
        if st.cfg.auto_routes {
            router = router.route(
                "/api/{service}/{endpoint}",
                axum::routing::post(rpc::auto_route),
            );
        }
        let router = router
            .route("/openapi.json", get(openapi::handler))
            .route("/events", get(sse::handler))
            .route("/ws", get(ws::handler))
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(rpc::ready))
            .route("/metrics", get(weir_layer::http::metrics_handler))
            .fallback(rpc::fallback)
            .layer(DefaultBodyLimit::max(st.cfg.max_body_bytes))
            .layer(axum::middleware::from_fn_with_state(st.clone(), rpc::shed));
        st.layer.apply(router).with_state(st)
    }

    /// Serves on `listener` until `shutdown` completes, then drains:
    /// open SSE streams end, WebSockets close with 1001, in-flight calls
    /// finish.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), GatewayError> {
        let app = self.router();
        let tx = self.shutdown.clone();
        let signal = async move {
            shutdown.await;
            tracing::info!("gateway draining");
            let _ = tx.send(true);
        };
        let res = axum::serve(listener, app)
            .with_graceful_shutdown(signal)
            .await;
        self.refresher.abort();
        res.map_err(GatewayError::Io)
    }

    /// Tells open SSE streams and WebSockets to close (what `serve` does
    /// on shutdown; for embedders that serve [`Gateway::router`] themselves).
    pub fn begin_drain(&self) {
        let _ = self.shutdown.send(true);
    }
}
