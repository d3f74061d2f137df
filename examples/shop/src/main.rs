//! `cargo run -p shop -- --nats nats://127.0.0.1:4222 --weir-stream http://127.0.0.1:4437/v1/stream/orders`

use clap::Parser;
use shop::{Shop, ShopConfig};
use weir_bridge::WeirAuth;

/// Runs the shop until Ctrl-C / SIGTERM.
#[derive(Parser, Debug)]
struct Args {
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// PostgreSQL for the saga tables (the database is created if missing).
    #[arg(
        long,
        env = "SHOP_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/weir_shop"
    )]
    database_url: String,
    /// Weir stream to bridge `order.>` to (omit to run without the bridge).
    #[arg(long, env = "SHOP_WEIR_STREAM")]
    weir_stream: Option<String>,
    /// Address of the HTTP gateway (`none` to run without it).
    #[arg(long, env = "SHOP_GATEWAY", default_value = "127.0.0.1:8081")]
    gateway: String,
    /// API key for the Weir server, if it requires one.
    #[arg(long, env = "SHOP_WEIR_API_KEY", hide_env_values = true)]
    weir_api_key: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let a = Args::parse();
    let mut shop = Shop::start(ShopConfig {
        nats_url: a.nats,
        database_url: a.database_url,
        bridge_stream: a.weir_stream,
        bridge_auth: a.weir_api_key.map_or(WeirAuth::None, WeirAuth::ApiKey),
        gateway: match a.gateway.as_str() {
            "none" => None,
            g => Some(
                g.parse()
                    .map_err(|e| anyhow::anyhow!("--gateway `{g}`: {e}"))?,
            ),
        },
    })
    .await?;
    if let Some(g) = shop.gateway {
        println!("gateway: http://{g}");
    }
    tracing::info!("shop running: users, inventory, orders, notifications");
    tokio::select! {
        e = shop.failed() => return Err(e),
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("stopping");
    shop.stop().await
}
