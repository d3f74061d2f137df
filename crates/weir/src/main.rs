//! `weir`: the command line entry point.

mod serve;

use clap::{Parser, Subcommand};

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
    Serve(serve::ServeArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::run(args),
    }
}
