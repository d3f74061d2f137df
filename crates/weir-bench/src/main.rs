//! `weir-bench`: end-to-end load for a Durable Streams server.
//!
//! Runs the workloads of issue 4 against one server (`--target URL`) or, with
//! `compare`, against Weir and the upstream Node reference server started
//! side by side, and prints each figure with its ratio to the reference.
//! The load generator shares the machine's cores with the server, as the
//! targets assume.

mod floor;
mod overhead;
mod profile;
mod raw;
mod servers;
mod workloads;

use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::servers::{ServerKind, Spawned};
use crate::workloads::{Figures, Settings};

#[derive(Parser, Debug)]
#[command(name = "weir-bench", about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the workloads against a running server.
    Run {
        /// Base URL, e.g. http://127.0.0.1:4437
        #[arg(long)]
        target: String,
        /// The server's process id, to report its CPU per append and RSS.
        #[arg(long)]
        pid: Option<u32>,
        #[command(flatten)]
        settings: Settings,
    },
    /// Restart time and resident memory of the durable store with many
    /// streams: creates N streams (one append each), restarts, reports.
    Restart {
        #[arg(long)]
        weir_bin: Option<std::path::PathBuf>,
        #[arg(long, default_value_t = 100_000)]
        streams: usize,
    },
    /// The production layer's overhead on appends: the same weir with the
    /// layer off and fully on (API keys, rate limit, metrics), alternated.
    Overhead {
        #[arg(long)]
        weir_bin: Option<std::path::PathBuf>,
        /// Rounds of (off, on); medians are reported.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Storage backend of both servers: `log` (the durable default) or
        /// `memory` (the layer's cost without the disk's variance).
        #[arg(long, default_value = "log")]
        storage: String,
        #[command(flatten)]
        settings: Settings,
    },
    /// Instructions per append (callgrind) with the layer off, default and
    /// full: reproducible where wall-clock runs on a shared machine are not.
    Profile(profile::ProfileArgs),
    /// Serve the do-nothing reference server (see `floor.rs`) on port 0;
    /// `compare --servers floor` starts it.
    #[command(hide = true)]
    FloorServer {
        /// Make appends durable: group-commit them to a file here.
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
    },
    /// Start Weir and the Node reference server(s), run the same workloads
    /// against each, print ratios.
    Compare {
        /// The weir binary (defaults to the one next to this executable).
        #[arg(long)]
        weir_bin: Option<std::path::PathBuf>,
        /// Directory holding the Node reference server script (bench/node).
        #[arg(long, default_value = "bench/node")]
        node_dir: std::path::PathBuf,
        /// Which servers to run, comma-separated.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "weir-durable,weir-memory,node-memory,node-file,floor-durable,floor"
        )]
        servers: Vec<ServerKind>,
        #[command(flatten)]
        settings: Settings,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Run {
                target,
                pid,
                settings,
            } => {
                let f = workloads::run_all(&target, &settings, pid).await?;
                print_table(&[("server".to_owned(), f)], None);
            }
            Cmd::Overhead {
                weir_bin,
                rounds,
                storage,
                settings,
            } => {
                overhead::run(weir_bin.as_deref(), rounds, &storage, &settings).await?;
            }
            Cmd::Profile(args) => profile::run(&args).await?,
            Cmd::FloorServer { data_dir } => floor::serve(data_dir.as_deref()).await?,
            Cmd::Restart { weir_bin, streams } => {
                workloads::restart(weir_bin.as_deref(), streams).await?;
            }
            Cmd::Compare {
                weir_bin,
                node_dir,
                servers,
                settings,
            } => {
                let mut results = Vec::new();
                for kind in servers {
                    eprintln!("== {kind}");
                    let server = Spawned::start(kind, weir_bin.as_deref(), &node_dir).await?;
                    let f = workloads::run_all(&server.url, &settings, Some(server.pid)).await?;
                    server.stop().await;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    results.push((kind.to_string(), f));
                }
                print_table(&results, Some(0));
            }
        }
        Ok(())
    })
}

/// Prints one row per figure and one column per server, then the first
/// server's figure divided by each other server's (for throughput above 1
/// means the first is faster; for latency and RSS below 1 means it is lower).
fn print_table(results: &[(String, Figures)], reference: Option<usize>) {
    let Some((_, first)) = results.first() else {
        return;
    };
    let names: Vec<String> = first.rows().into_iter().map(|(n, _)| n).collect();
    let value = |f: &Figures, i: usize| f.rows().get(i).and_then(|r| r.1);
    print!("{:<44}", "workload");
    for (name, _) in results {
        print!("{name:>16}");
    }
    println!();
    for (i, row) in names.iter().enumerate() {
        print!("{row:<44}");
        for (_, f) in results {
            match value(f, i) {
                Some(v) => print!("{v:>16.2}"),
                None => print!("{:>16}", "-"),
            }
        }
        println!();
    }
    let Some(r) = reference else { return };
    println!();
    println!("ratio: {} ÷ column", results[r].0);
    for (i, row) in names.iter().enumerate() {
        print!("{row:<44}");
        for (_, f) in results {
            match (value(&results[r].1, i), value(f, i)) {
                (Some(base), Some(v)) if v != 0.0 => print!("{:>16.2}", base / v),
                _ => print!("{:>16}", "-"),
            }
        }
        println!();
    }
}
