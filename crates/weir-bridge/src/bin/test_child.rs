//! A bridge in a child process, for tests/sigkill_restart.rs, which kills
//! it with SIGKILL mid-flow: `weir-bridge-test-child NATS_URL STREAM_URL`.
//! One mapping, `orders` ← `orders.>`, small batches so a kill lands
//! between appends as well as inside one.

use std::time::Duration;

use weir_bridge::{BatchConfig, BridgeConfig, Mapping, WeirAuth};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(nats), Some(url)) = (args.next(), args.next()) else {
        return Err("usage: weir-bridge-test-child NATS_URL STREAM_URL".into());
    };
    let config = BridgeConfig {
        nats_url: nats,
        mappings: vec![Mapping::new("orders", "orders.>", &url)],
        auth: WeirAuth::None,
        batch: BatchConfig {
            max_events: 8,
            linger: Duration::from_millis(2),
            ..BatchConfig::default()
        },
    };
    let (_tx, rx) = tokio::sync::watch::channel(false);
    weir_bridge::run(config, rx).await?;
    Ok(())
}
