//! `cargo run -p hello -- nats://127.0.0.1:4222`: serves the greeter until SIGTERM.

use weir_service::{NatsTransport, Runner, ServiceContract};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt::init();
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let nats = NatsTransport::connect(&url).await?;
    let greeter = hello::Greeter {
        greeting: "Hello".into(),
    };
    Runner::new(std::sync::Arc::new(nats))
        .service(greeter.builder())
        .run()
        .await?;
    Ok(())
}
