//! `weir bridge`: append NATS subjects to Weir durable streams (see
//! `weir-bridge` and docs/bridge.md).

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use weir_bridge::{BatchConfig, BridgeConfig, Mapping, WeirAuth};

#[derive(Args, Debug)]
pub struct BridgeArgs {
    /// NATS server URL.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats: String,
    /// `SUBJECT=STREAM_URL` or `NAME:SUBJECT=STREAM_URL`, repeatable. NAME
    /// (the consumer and producer name; keep it stable across restarts)
    /// defaults to one derived from the subject (`orders.>` → `orders_all`).
    #[arg(long = "map", required = true, value_name = "[NAME:]SUBJECT=URL")]
    pub maps: Vec<String>,
    /// Weir API key, sent as `X-Api-Key`.
    #[arg(
        long,
        env = "WEIR_BRIDGE_API_KEY",
        hide_env_values = true,
        conflicts_with = "bearer_token"
    )]
    pub api_key: Option<String>,
    /// Bearer token (JWT or API key), sent as `Authorization: Bearer`.
    #[arg(long, env = "WEIR_BRIDGE_TOKEN", hide_env_values = true)]
    pub bearer_token: Option<String>,
    /// Most events per append request.
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// How long to wait for more events before appending a partial batch.
    #[arg(long, default_value_t = 20)]
    pub linger_ms: u64,
    /// JetStream stream to create when none captures the subject (one
    /// mapping only; default `WEIR_BRIDGE_<NAME>`).
    #[arg(long)]
    pub capture_stream: Option<String>,
    /// Fail instead of creating a missing JetStream capture stream.
    #[arg(long)]
    pub no_create_capture_stream: bool,
    /// Fail instead of creating a missing Weir stream.
    #[arg(long)]
    pub no_create_stream: bool,
    /// Serve the bridge's metrics (Prometheus text) at
    /// `http://ADDR/metrics`, e.g. `127.0.0.1:9464`.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

fn parse_map(spec: &str) -> anyhow::Result<Mapping> {
    let Some((left, url)) = spec.split_once('=') else {
        bail!("--map `{spec}`: expected [NAME:]SUBJECT=URL");
    };
    let (name, subject) = match left.split_once(':') {
        Some((n, s)) => (n.to_owned(), s),
        None => (Mapping::name_for_subject(left), left),
    };
    if subject.is_empty() || !(url.starts_with("http://") || url.starts_with("https://")) {
        bail!("--map `{spec}`: expected [NAME:]SUBJECT=http://host:port/v1/stream/NAME");
    }
    if !Mapping::valid_name(&name) {
        bail!("--map `{spec}`: name `{name}` must be 1-64 letters, digits, `-` or `_`");
    }
    Ok(Mapping::new(&name, subject, url))
}

pub fn run(a: BridgeArgs) -> anyhow::Result<()> {
    crate::stderr_logs();
    let mut mappings = a
        .maps
        .iter()
        .map(|m| parse_map(m))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(cs) = &a.capture_stream {
        if mappings.len() != 1 {
            bail!("--capture-stream needs exactly one --map");
        }
        mappings[0].capture_stream = cs.clone();
    }
    for m in &mut mappings {
        m.create_capture_stream = !a.no_create_capture_stream;
        m.create_weir_stream = !a.no_create_stream;
    }
    let auth = match (a.api_key, a.bearer_token) {
        (Some(k), _) => WeirAuth::ApiKey(k),
        (None, Some(t)) => WeirAuth::Bearer(t),
        (None, None) => WeirAuth::None,
    };
    let config = BridgeConfig {
        nats_url: a.nats,
        mappings,
        auth,
        batch: BatchConfig {
            max_events: a.batch_size,
            linger: Duration::from_millis(a.linger_ms),
            ..BatchConfig::default()
        },
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let metrics_listen = a.metrics_listen;
    rt.block_on(async move {
        if let Some(addr) = metrics_listen {
            serve_metrics(addr).await?;
        }
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("stopping: finishing the batch in hand");
            let _ = tx.send(true);
        });
        weir_bridge::run(config, rx).await.context("bridge stopped")
    })
}

/// Installs the Prometheus recorder and serves `GET /metrics` on `addr`.
async fn serve_metrics(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    weir_layer::metrics::install().context("installing the metrics recorder")?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(weir_layer::http::metrics_handler),
    );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics listener {addr}"))?;
    tracing::info!(%addr, "metrics at /metrics");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics listener stopped");
        }
    });
    Ok(())
}

/// SIGTERM or Ctrl-C: the same signals every Weir process drains on.
use weir_service::runner::shutdown_signal;
