//! `weir serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use tokio::net::TcpListener;
use weir_server::transport::{TlsFiles, TransportConfig};
use weir_server::{AppState, ServerConfig};
use weir_storage::Storage;
use weir_storage::memory::{MemoryOptions, MemoryStorage};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StorageKind {
    /// Everything in RAM; lost on exit.
    Memory,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Profile {
    /// Production-safe defaults.
    Default,
    /// What the official conformance suite needs: 500 ms long-poll, loopback
    /// webhooks, anonymous pull-wake claims. Never use in production.
    Conformance,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Options of `weir serve` (each also settable as a `WEIR_*` variable).
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to bind.
    #[arg(long, env = "WEIR_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to bind (0 picks a free one); 4437 is the protocol's default.
    #[arg(long, env = "WEIR_PORT", default_value_t = 4437)]
    pub port: u16,
    /// Storage backend.
    #[arg(long, env = "WEIR_STORAGE", value_enum, default_value = "memory")]
    pub storage: StorageKind,
    /// Data directory of the embedded log backend.
    #[arg(long, env = "WEIR_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Settings profile.
    #[arg(long, env = "WEIR_PROFILE", value_enum, default_value = "default")]
    pub profile: Profile,
    /// Long-poll timeout in milliseconds (default 20000; 500 in the conformance profile).
    #[arg(long, env = "WEIR_LONG_POLL_TIMEOUT_MS")]
    pub long_poll_timeout_ms: Option<u64>,
    /// Largest request body in bytes.
    #[arg(long, env = "WEIR_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Memory budget of the memory backend, in bytes.
    #[arg(long, env = "WEIR_MEMORY_MAX_BYTES")]
    pub memory_max_bytes: Option<u64>,
    /// Absolute URL clients use to reach this server (for Location, JWKS and callback URLs).
    #[arg(long, env = "WEIR_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Proxy addresses whose X-Forwarded-Proto/-Host headers are trusted (comma-separated).
    #[arg(long, env = "WEIR_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxy: Vec<std::net::IpAddr>,
    /// Seconds a client has to send request headers.
    #[arg(long, env = "WEIR_HEADER_READ_TIMEOUT_SECS", default_value_t = 30)]
    pub header_read_timeout_secs: u64,
    /// PEM certificate chain; enables TLS (h2 and http/1.1 via ALPN).
    #[arg(long, env = "WEIR_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "WEIR_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `weir_server=debug`.
    #[arg(long, env = "WEIR_LOG", default_value = "info")]
    pub log_level: String,
    /// Log line format (logs go to stderr).
    #[arg(long, env = "WEIR_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

fn init_logging(args: &ServeArgs) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .context("invalid --log-level filter")?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

pub fn server_config(args: &ServeArgs) -> ServerConfig {
    let mut cfg = match args.profile {
        Profile::Default => ServerConfig::default(),
        Profile::Conformance => ServerConfig::conformance(),
    };
    if let Some(ms) = args.long_poll_timeout_ms {
        cfg.long_poll_timeout = Duration::from_millis(ms);
    }
    if let Some(n) = args.max_body_bytes {
        cfg.max_body_bytes = n;
    }
    cfg.public_url.clone_from(&args.public_url);
    cfg.trusted_proxies.clone_from(&args.trusted_proxy);
    cfg.tls = args.tls_cert.is_some();
    cfg
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    init_logging(&args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(serve(args))
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let storage: Arc<dyn Storage> = match args.storage {
        StorageKind::Memory => Arc::new(MemoryStorage::new(MemoryOptions {
            max_bytes: args.memory_max_bytes,
        })),
    };
    let config = server_config(&args);
    let state = AppState::new(storage.clone(), config);
    let app = weir_server::router(state.clone());

    let addr: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .with_context(|| format!("invalid --host/--port `{}:{}`", args.host, args.port))?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr()?;
    let scheme = if args.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    // The one line on stdout: scripts and tests parse it to find the port.
    println!("listening on {scheme}://{local}");
    tracing::info!(%local, storage = ?args.storage, profile = ?args.profile, "weir serving");

    let transport = TransportConfig {
        header_read_timeout: Duration::from_secs(args.header_read_timeout_secs.max(1)),
        tls: match (&args.tls_cert, &args.tls_key) {
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
    storage.shutdown().await;
    tracing::info!("weir stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutdown signal received");
}
