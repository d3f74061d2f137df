//! `weir`: the command line entry point.

mod admin_cmd;
mod bridge_cmd;
mod config;
mod events_cmd;
mod gateway_cmd;
mod reload;
mod saga_cmd;
mod serve;
mod service_cmd;
mod storage_cmd;

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc's allocator: request handling allocates and
/// frees many small objects across worker threads, and glibc's arena
/// locks and consolidation showed up as ~15% of server CPU in append
/// profiles.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Weir: durable streams and service messaging.
#[derive(Parser, Debug)]
#[command(name = "weir", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the Durable Streams server.
    Serve(config::Overrides),
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Check or back up an embedded-log data directory.
    #[command(subcommand)]
    Storage(storage_cmd::StorageCmd),
    /// Manage API keys (stored hashed in the production layer's database).
    #[command(subcommand)]
    Keys(admin_cmd::KeysCmd),
    /// Apply or roll back the production layer's schema migrations.
    #[command(subcommand)]
    Migrate(admin_cmd::MigrateCmd),
    /// List running services (NATS micro discovery: `$SRV.STATS`).
    Services(service_cmd::ServicesArgs),
    /// Call a service endpoint: `weir call SERVICE.METHOD JSON`.
    Call(service_cmd::CallArgs),
    /// Scaffold a new crate.
    #[command(subcommand)]
    New(service_cmd::NewCmd),
    /// Append NATS subjects to Weir durable streams, exactly once (docs/bridge.md).
    Bridge(bridge_cmd::BridgeArgs),
    /// Inspect saga instances and retry failed ones (docs/sagas.md).
    #[command(subcommand)]
    Saga(saga_cmd::SagaCmd),
    /// Read durable events: `weir events tail SUBJECT` (docs/events.md).
    #[command(subcommand)]
    Events(events_cmd::EventsCmd),
    /// Dead-lettered events: list, show, replay (docs/events.md).
    #[command(subcommand)]
    Dlq(events_cmd::DlqCmd),
    /// Serve NATS services over HTTP, SSE and WebSocket (docs/gateway.md).
    Gateway(gateway_cmd::GatewayArgs),
}

#[derive(Subcommand, Debug)]
enum ConfigCmd {
    /// Validate the configuration (file, WEIR_* variables, flags); exit 1 on errors.
    Check(config::Overrides),
    /// Print the effective configuration as TOML, secrets redacted.
    Print(config::Overrides),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(o) => serve::run(o),
        Command::Config(ConfigCmd::Check(o)) => {
            config::Config::load(&o)?;
            println!("configuration ok");
            Ok(())
        }
        Command::Storage(cmd) => storage_cmd::run(cmd),
        Command::Keys(cmd) => admin_cmd::keys(cmd),
        Command::Migrate(cmd) => admin_cmd::migrate(cmd),
        Command::Services(a) => service_cmd::services(a),
        Command::Call(a) => service_cmd::call(a),
        Command::New(cmd) => service_cmd::new(cmd),
        Command::Bridge(a) => bridge_cmd::run(a),
        Command::Saga(cmd) => saga_cmd::run(cmd),
        Command::Events(cmd) => events_cmd::events(cmd),
        Command::Dlq(cmd) => events_cmd::dlq(cmd),
        Command::Gateway(a) => gateway_cmd::run(a),
        Command::Config(ConfigCmd::Print(o)) => {
            print!("{}", config::Config::load(&o)?.to_toml()?);
            Ok(())
        }
    }
}

/// The runtime of a one-shot CLI command (`weir call`, `weir migrate`, …):
/// one thread is plenty for a request or two, and starts fastest.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Plain logs on stderr filtered by `RUST_LOG` (default `info`), for the
/// long-running commands that have no `[log]` config of their own (`weir
/// bridge`, `weir gateway`); `weir serve` sets up its own (JSON, reloadable).
fn stderr_logs() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}
