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
use crate::workloads::{Settings, median};

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
        /// Rounds of the append and long-poll workloads. With more than
        /// one, every server is started up front and each round runs those
        /// workloads on all of them, starting with a different server each
        /// time, so every server meets the same drift of a shared machine;
        /// medians and the median of the per-round ratios are printed.
        /// Catch-up and SSE fan-out run once per server, on its own.
        #[arg(long, default_value_t = 1)]
        rounds: usize,
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
                print_table(&[("server".to_owned(), f.rows())], None);
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
                rounds,
                settings,
            } if rounds > 1 => {
                compare_rounds(&servers, weir_bin.as_deref(), &node_dir, rounds, &settings).await?;
            }
            Cmd::Compare {
                weir_bin,
                node_dir,
                servers,
                rounds: _,
                settings,
            } => {
                let mut results = Vec::new();
                for kind in servers {
                    eprintln!("== {kind}");
                    let server = Spawned::start(kind, weir_bin.as_deref(), &node_dir).await?;
                    let f = workloads::run_all(&server.url, &settings, Some(server.pid)).await?;
                    server.stop().await;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    results.push((kind.to_string(), f.rows()));
                }
                print_table(&results, Some(0));
            }
        }
        Ok(())
    })
}

/// One server's figures: (row name, value) in [`Figures::rows`] order.
type Rows = Vec<(String, Option<f64>)>;

/// `compare --rounds N`: catch-up and fan-out once per server (each on its
/// own, as without rounds), then N rounds of the append and long-poll
/// workloads over all servers at once, rotating which goes first.
async fn compare_rounds(
    kinds: &[ServerKind],
    weir_bin: Option<&std::path::Path>,
    node_dir: &std::path::Path,
    rounds: usize,
    settings: &Settings,
) -> anyhow::Result<()> {
    let once = Settings {
        seconds: 0,
        latency_samples: 0,
        ..settings.clone()
    };
    let mut single: Vec<Rows> = Vec::new();
    for &kind in kinds {
        eprintln!("== {kind}: catch-up and fan-out");
        let server = Spawned::start(kind, weir_bin, node_dir).await?;
        let f = workloads::run_all(&server.url, &once, Some(server.pid)).await?;
        server.stop().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        single.push(f.rows());
    }
    let timed = Settings {
        catchup_mib: 0,
        fanout: vec![0],
        ..settings.clone()
    };
    let mut started = Vec::new();
    for &kind in kinds {
        started.push(Spawned::start(kind, weir_bin, node_dir).await?);
    }
    let mut per_round: Vec<Vec<Rows>> = vec![Vec::new(); kinds.len()];
    for round in 0..rounds {
        for j in 0..kinds.len() {
            let i = (round + j) % kinds.len();
            eprintln!("== round {round}: {}", kinds[i]);
            let s = &started[i];
            let f = workloads::run_all(&s.url, &timed, Some(s.pid)).await?;
            per_round[i].push(f.rows());
        }
    }
    for s in started {
        s.stop().await;
    }
    // Each figure: the median over rounds where the rounds measured it,
    // else the single run's.
    let merged: Vec<(String, Rows)> = kinds
        .iter()
        .zip(&per_round)
        .zip(&single)
        .map(|((kind, rounds), single)| {
            let rows = single
                .iter()
                .map(|(name, once)| {
                    let vals: Vec<f64> = rounds.iter().filter_map(|rs| figure(rs, name)).collect();
                    (name.clone(), median(vals).or(*once))
                })
                .collect();
            (kind.to_string(), rows)
        })
        .collect();
    println!("medians of {rounds} rounds (catch-up and fan-out: one run)");
    print_table(&merged, Some(0));
    // The first server's figure over each server's, in the same round.
    println!();
    println!(
        "median of per-round ratios: {} ÷ column (same round)",
        merged[0].0
    );
    let names: Vec<&String> = merged[0].1.iter().map(|(n, _)| n).collect();
    for name in names {
        let paired: Vec<Option<f64>> = per_round
            .iter()
            .map(|rounds| {
                median(
                    per_round[0]
                        .iter()
                        .zip(rounds)
                        .filter_map(|(base, other)| {
                            match (figure(base, name), figure(other, name)) {
                                (Some(b), Some(v)) if v != 0.0 => Some(b / v),
                                _ => None,
                            }
                        })
                        .collect(),
                )
            })
            .collect();
        if paired.iter().all(Option::is_none) {
            continue;
        }
        print!("{name:<44}");
        for v in paired {
            match v {
                Some(v) => print!("{v:>16.2}"),
                None => print!("{:>16}", "-"),
            }
        }
        println!();
    }
    Ok(())
}

/// The figure named `name`, if measured.
fn figure(rows: &Rows, name: &str) -> Option<f64> {
    rows.iter().find(|(n, _)| n == name).and_then(|r| r.1)
}

/// Prints one row per figure and one column per server, then the first
/// server's figure divided by each other server's (for throughput above 1
/// means the first is faster; for latency and RSS below 1 means it is lower).
fn print_table(results: &[(String, Rows)], reference: Option<usize>) {
    let Some((_, first)) = results.first() else {
        return;
    };
    let names: Vec<String> = first.iter().map(|(n, _)| n.clone()).collect();
    let value = |f: &Rows, i: usize| f.get(i).and_then(|r| r.1);
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
