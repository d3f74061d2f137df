//! `weir gateway`: NATS services over HTTP, SSE and WebSocket (see
//! `weir-gateway` and docs/gateway.md).
//!
//! The configuration file shares `[auth]`, `[authz]` and `[rate_limit]`
//! with `weir serve` (the same production layer, the same keys) and adds
//! `[gateway]`. Other sections (`[server]`, `[storage]`, …) are ignored, so
//! one file can configure both.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use weir_gateway::{Gateway, GatewayConfig};

#[derive(Args, Debug)]
pub struct GatewayArgs {
    /// NATS server URL.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats: String,
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, env = "WEIR_GATEWAY_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
    /// TOML file with `[gateway]`, `[auth]`, `[authz]`, `[rate_limit]`.
    #[arg(long, env = "WEIR_GATEWAY_CONFIG")]
    pub config: Option<PathBuf>,
}

/// The sections `weir gateway` reads.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct GatewayFile {
    gateway: GatewayConfig,
    auth: weir_layer::auth::AuthConfig,
    authz: weir_layer::authz::AuthzConfig,
    rate_limit: weir_layer::ratelimit::RateLimitConfig,
}

impl GatewayFile {
    fn load(path: Option<&PathBuf>) -> anyhow::Result<GatewayFile> {
        let mut fig = Figment::from(Serialized::defaults(GatewayFile::default()));
        if let Some(path) = path {
            if !path.exists() {
                anyhow::bail!("configuration file {} does not exist", path.display());
            }
            fig = fig.merge(Toml::file(path));
        }
        fig.extract().context("invalid gateway configuration")
    }

    fn layer(&self) -> weir_layer::LayerConfig {
        weir_layer::LayerConfig {
            auth: self.auth.clone(),
            authz: self.authz.clone(),
            rate_limit: self.rate_limit.clone(),
        }
    }
}

pub fn run(a: GatewayArgs) -> anyhow::Result<()> {
    crate::stderr_logs();
    let file = GatewayFile::load(a.config.as_ref())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(serve(a, file))
}

async fn serve(a: GatewayArgs, file: GatewayFile) -> anyhow::Result<()> {
    let layer_cfg = file.layer();
    // API keys live in the layer's store, shared with `weir serve` when
    // both point at the same database.
    let stores = if layer_cfg.auth.api_keys.enabled {
        Some(
            weir_layer::store::open(&layer_cfg.auth.api_keys)
                .await
                .context("opening the layer's store (API keys)")?,
        )
    } else {
        None
    };
    let layer = weir_layer::Production::build(
        &layer_cfg,
        stores.as_ref().map(|s| s.keys.clone()),
        weir_layer::clock::system(),
    )
    .context("building the production layer")?;
    let transport = weir_service::NatsTransport::connect(&a.nats)
        .await
        .with_context(|| format!("connecting to NATS at {}", a.nats))?;
    let gateway = Gateway::builder(Arc::new(transport), file.gateway)
        .layer(layer)
        .build()
        .await
        .context("starting the gateway")?;
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("binding {}", a.listen))?;
    // The one line on stdout: scripts and tests parse it to find the port.
    println!("gateway listening on http://{}", listener.local_addr()?);
    gateway
        .serve(listener, shutdown_signal())
        .await
        .context("serving")?;
    tracing::info!("gateway stopped");
    Ok(())
}

/// SIGTERM or Ctrl-C: the same signals every Weir process drains on.
use weir_service::runner::shutdown_signal;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// `[gateway]` next to the shared layer sections and `weir serve`'s own
    /// sections, which the gateway ignores.
    #[test]
    fn reads_gateway_and_layer_sections() {
        let dir = std::env::temp_dir().join(format!("weir-gw-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("weir.toml");
        std::fs::write(
            &path,
            r#"
[server]
port = 4437

[auth]
mode = "required"
[auth.jwt]
hs256_secret = "a-secret-long-enough-for-the-hs256-check"

[rate_limit]
enabled = true

[gateway]
default_timeout_ms = 1500

[[gateway.routes]]
method = "GET"
path = "/users/{id}"
service = "users"
endpoint = "get"

[gateway.events]
tenancy = true
rules = [{ subjects = "orders.>", roles = ["clerk"] }]
"#,
        )
        .unwrap();
        let f = GatewayFile::load(Some(&path)).unwrap();
        assert_eq!(f.gateway.default_timeout_ms, 1500);
        assert_eq!(f.gateway.routes[0].path, "/users/{id}");
        assert!(f.gateway.events.tenancy);
        assert_eq!(f.gateway.events.rules[0].roles, vec!["clerk"]);
        assert_eq!(f.auth.mode, weir_layer::auth::AuthMode::Required);
        assert!(f.layer().rate_limit.enabled);
        // A typo inside [gateway] is an error, not a silent default.
        std::fs::write(&path, "[gateway]\ndefault_timeout = 5\n").unwrap();
        assert!(GatewayFile::load(Some(&path)).is_err());
        assert!(GatewayFile::load(Some(&dir.join("missing.toml"))).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
