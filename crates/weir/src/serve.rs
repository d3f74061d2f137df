//! `weir serve`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use weir_server::transport::{TlsFiles, TransportConfig};
use weir_server::{AppState, ServerConfig};
use weir_storage::Storage;
use weir_storage::memory::{MemoryOptions, MemoryStorage};

use weir_storage::log::backend::LogOptions;
use weir_storage::log::engine::{EngineOptions, SyncMode};

use crate::config::{Config, LogFormat, Overrides, Profile, StorageKind, SyncKind};

/// Logs to stderr (text, or one JSON object per line whose `span` holds the
/// request's `request_id`, `tenant` and `principal`), plus OpenTelemetry
/// trace export when `[telemetry]` or `OTEL_EXPORTER_OTLP_ENDPOINT` names a
/// collector. The log filter applies to log lines only: request spans reach
/// the exporter whatever `log.level` says.
fn init_logging(
    cfg: &Config,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<(
    Option<weir_layer::telemetry::Telemetry>,
    crate::reload::LogFilter,
)> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log.level)
        .context("invalid log level filter")?;
    // Behind a reload handle so a configuration reload can change it.
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match cfg.log.format {
        LogFormat::Text => fmt.with_filter(filter).boxed(),
        LogFormat::Json => fmt.json().with_filter(filter).boxed(),
    };
    let (otel, telemetry) = match weir_layer::telemetry::init(&cfg.telemetry, rt.handle().clone())
        .context("starting trace export")?
    {
        Some((layer, t)) => (
            Some(layer.with_filter(tracing_subscriber::filter::LevelFilter::INFO)),
            Some(t),
        ),
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .context("installing the log subscriber")?;
    let set_filter: crate::reload::LogFilter = std::sync::Arc::new(move |level: &str| {
        let f = tracing_subscriber::EnvFilter::try_new(level).context("invalid log.level")?;
        handle.reload(f).context("replacing the log filter")
    });
    Ok((telemetry, set_filter))
}

/// The HTTP layer's settings for a configuration.
pub fn server_config(c: &Config) -> ServerConfig {
    let mut cfg = match c.profile {
        Profile::Default => ServerConfig::default(),
        Profile::Conformance => ServerConfig::conformance(),
    };
    if let Some(ms) = c.server.long_poll_timeout_ms {
        cfg.long_poll_timeout = Duration::from_millis(ms);
    }
    cfg.limits = c.limits.to_limits();
    if let Some(n) = c.server.max_body_bytes {
        cfg.max_body_bytes = n;
    }
    cfg.public_url.clone_from(&c.server.public_url);
    cfg.trusted_proxies.clone_from(&c.server.trusted_proxies);
    cfg.tls = c.server.tls_cert.is_some();
    cfg.compression = c.server.compression;
    cfg
}

/// [`server_config`] plus what the production layer implies: with
/// authentication on, responses depend on the caller's credentials.
pub fn http_config(c: &Config) -> ServerConfig {
    let mut cfg = server_config(c);
    if !matches!(c.auth.mode, weir_layer::auth::AuthMode::None) {
        cfg.cache_visibility = weir_server::config::CacheVisibility::Private;
    }
    cfg
}

pub fn run(o: Overrides) -> anyhow::Result<()> {
    let cfg = Config::load(&o)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (telemetry, log_filter) = init_logging(&cfg, &rt)?;
    let result = rt.block_on(serve(cfg, o, log_filter));
    if let Some(t) = telemetry {
        // The runtime still runs: the last batch of spans goes out.
        t.shutdown();
    }
    result
}

async fn serve(
    cfg: Config,
    overrides: Overrides,
    log_filter: crate::reload::LogFilter,
) -> anyhow::Result<()> {
    // Before storage opens: metric handles bind to the recorder present
    // when first used (the log's committer registers its sync histograms).
    weir_layer::metrics::install().context("installing the metrics recorder")?;
    let mut log_store: Option<Arc<weir_storage::log::backend::LogStorage>> = None;
    let storage: Arc<dyn Storage> = match cfg.storage.backend {
        StorageKind::Memory => Arc::new(MemoryStorage::new(MemoryOptions {
            max_bytes: cfg.storage.memory_max_bytes,
        })),
        StorageKind::Log => {
            let st = &cfg.storage;
            let opts = LogOptions {
                engine: EngineOptions {
                    segment_size: st.segment_mib * 1024 * 1024,
                    sync: match st.sync {
                        SyncKind::Data => SyncMode::Data,
                        SyncKind::None => SyncMode::None,
                    },
                    zero_ahead: st.zero_ahead,
                },
                min_free_bytes: st.min_free_mib * 1024 * 1024,
                ..LogOptions::default()
            };
            let started = std::time::Instant::now();
            let (log, report) = weir_storage::log::backend::open(&st.data_dir, opts)
                .with_context(|| format!("opening the log in {}", st.data_dir.display()))?;
            tracing::info!(
                dir = %st.data_dir.display(),
                records = report.records,
                segments = report.segments,
                torn = ?report.torn,
                dropped_segments = report.dropped_segments,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "log recovered"
            );
            let log = Arc::new(log);
            // Checkpoint every 64 MiB of log so restarts replay little.
            weir_storage::log::checkpoint::spawn_periodic(log.clone(), 64 * 1024 * 1024);
            log_store = Some(log.clone());
            log
        }
    };
    let layer_cfg = cfg.layer();
    // The layer's store (API keys, audit log): opened and migrated when
    // keys are on or the admin listener records actions.
    let stores = if layer_cfg.auth.api_keys.enabled || cfg.admin.listen.is_some() {
        Some(
            weir_layer::store::open(&layer_cfg.auth.api_keys)
                .await
                .context("opening the layer's store (API keys, audit log)")?,
        )
    } else {
        None
    };
    let key_store = stores.as_ref().map(|s| s.keys.clone());
    let layer =
        weir_layer::Production::build(&layer_cfg, key_store.clone(), weir_layer::clock::system())
            .context("building the production layer")?;
    let state = AppState::new(storage.clone(), http_config(&cfg));
    let state = if cfg.server.production_layer {
        state.with_layer(layer.clone())
    } else {
        tracing::warn!("the production layer is off: no authentication, rate limits or metrics");
        state
    };
    let admin = match (cfg.admin.listen, &stores) {
        (Some(_), Some(stores)) => Some(weir_layer::admin::Admin::new(
            layer.authenticator.clone(),
            stores.audit.clone(),
            &cfg.admin,
            weir_layer::clock::system(),
        )),
        _ => None,
    };
    // The listeners serve swappable routers: SIGHUP or
    // `POST /admin/v1/reload` re-reads the configuration and swaps them.
    let reloader = crate::reload::Reloader::start(crate::reload::Parts {
        overrides,
        cfg: cfg.clone(),
        state: state.clone(),
        layer: layer.clone(),
        clock: weir_layer::clock::system(),
        key_store,
        audit: stores.as_ref().map(|s| s.audit.clone()),
        admin,
        log_filter: Some(log_filter),
    });
    #[cfg(unix)]
    crate::reload::on_sighup(&reloader)?;
    let app = reloader.main();

    let addr: SocketAddr = format!("{}:{}", cfg.server.host, cfg.server.port)
        .parse()
        .with_context(|| {
            format!(
                "invalid host/port `{}:{}`",
                cfg.server.host, cfg.server.port
            )
        })?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr()?;
    let scheme = if cfg.server.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    // The one line on stdout: scripts and tests parse it to find the port.
    println!("listening on {scheme}://{local}");
    let admin_task = match (cfg.admin.listen, reloader.admin_router()) {
        (Some(addr), Some(admin_app)) => {
            let (local, task) = weir_layer::admin::spawn_router(addr, admin_app)
                .await
                .with_context(|| format!("binding the admin listener {addr}"))?;
            // A second line, only with `admin.listen`; a reader that has
            // stopped reading after the first one must not stop the server.
            let _ = std::io::Write::write_fmt(
                &mut std::io::stdout(),
                format_args!("admin listening on http://{local}\n"),
            );
            Some(task)
        }
        _ => None,
    };
    tracing::info!(%local, storage = ?cfg.storage.backend, profile = ?cfg.profile, "weir serving");

    let transport = TransportConfig {
        header_read_timeout: Duration::from_secs(cfg.server.header_read_timeout_secs.max(1)),
        tls: match (&cfg.server.tls_cert, &cfg.server.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        },
        ..TransportConfig::default()
    };
    let shutdown = async move {
        shutdown_signal().await;
        state.begin_shutdown();
    };
    weir_server::transport::serve(listener, app, transport, shutdown).await?;
    if let Some(t) = admin_task {
        t.abort();
    }
    if let Some(log) = &log_store {
        // A checkpoint at shutdown makes the next start instant.
        match weir_storage::log::checkpoint::write(log).await {
            Ok(lsn) => tracing::info!(lsn, "checkpoint written"),
            Err(e) => tracing::warn!(error = %e, "checkpoint at shutdown failed"),
        }
    }
    storage.shutdown().await;
    tracing::info!("weir stopped");
    Ok(())
}

/// SIGTERM or Ctrl-C: the same signals every Weir process drains on.
use weir_service::runner::shutdown_signal;
