//! `weir-bench overhead`: what the production layer costs on appends.
//!
//! Starts the same `weir` binary twice on the durable default store: once
//! with `server.production_layer = false`, once with the full layer on —
//! API-key authentication required (SQLite key store), a local rate limit
//! that checks every request (set high enough never to refuse), request
//! ids and Prometheus metrics. Runs the append workloads against each —
//! `--connections` connections to one stream and to as many streams (both
//! saturate the server), and one connection sending one append at a time
//! (the latency of an append on an otherwise idle server). Each workload
//! runs on both servers back to back, in an order that alternates every
//! round, so drift on a shared machine hits both alike; it prints medians,
//! the median of the per-round ratios and their quartiles.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{Context, bail};

use crate::servers::Spawned;
use crate::workloads::{AppendRun, Settings, appends, median, pct};

const ON_TOML: &str = r#"
[auth]
mode = "required"

[auth.api_keys]
enabled = true
sqlite_path = "@DB@"

[rate_limit]
enabled = true
backend = "local"

[[rate_limit.rules]]
name = "global"
key = "auto"
limits.default = { requests = 100000000, window_secs = 1, burst = 100000000 }
"#;

pub(crate) async fn create_key(weir: &Path, db: &Path) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(weir)
        .args(["keys", "create", "--tenant", "bench", "--subject", "bench"])
        .args(["--roles", "manager", "--db"])
        .arg(db)
        .output()
        .await
        .context("running weir keys create")?;
    if !out.status.success() {
        bail!(
            "weir keys create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout)?
        .lines()
        .find_map(|l| l.strip_prefix("token:"))
        .map(|t| t.trim().to_owned())
        .context("no token in the output of weir keys create")
}

/// The layer-on configuration with its key database at `db`.
pub(crate) fn on_toml(db: &Path) -> String {
    ON_TOML.replace("@DB@", &db.display().to_string())
}

/// Reads one figure of a run.
type Getter = fn(&AppendRun) -> f64;

pub async fn run(
    weir_bin: Option<&Path>,
    rounds: usize,
    storage: &str,
    s: &Settings,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let weir = crate::servers::weir_bin(weir_bin);
    let db = dir.path().join("layer.db");
    let key = create_key(&weir, &db).await?;
    let off_cfg = dir.path().join("off.toml");
    let on_cfg = dir.path().join("on.toml");
    std::fs::write(&off_cfg, "[server]\nproduction_layer = false\n")?;
    std::fs::write(&on_cfg, on_toml(&db))?;
    let args = |cfg: &Path, data: &str| -> Vec<OsString> {
        vec![
            "--config".into(),
            cfg.into(),
            "--data-dir".into(),
            dir.path().join(data).into(),
            "--storage".into(),
            storage.into(),
        ]
    };
    let off = Spawned::weir(&weir, args(&off_cfg, "data-off")).await?;
    let on = Spawned::weir(&weir, args(&on_cfg, "data-on")).await?;
    let on_settings = Settings {
        api_key: Some(key),
        ..s.clone()
    };
    let off_settings = Settings {
        api_key: None,
        ..s.clone()
    };
    // [layer off, layer on] × [1 stream, N streams, 1 connection]. The
    // first two saturate the server (their latency is mostly queueing:
    // connections ÷ throughput); the third sends one append at a time,
    // so its latency is one append's own round trip.
    let mut runs: [[Vec<AppendRun>; 3]; 2] = Default::default();
    for round in 0..rounds {
        // Each workload's two runs are back to back (seconds apart), in
        // an order that alternates every round: this machine's speed
        // drifts by tens of percent over minutes, and a pair this close
        // sees the same machine.
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        // (streams, connections): one stream and as many streams as
        // connections, both saturating; then one append at a time.
        let workloads = [(1, s.connections), (s.connections, s.connections), (1, 1)];
        for (k, (streams, connections)) in workloads.into_iter().enumerate() {
            for which in order {
                let (srv, set) = if which == 0 {
                    (&off, &off_settings)
                } else {
                    (&on, &on_settings)
                };
                let set = Settings {
                    connections,
                    ..set.clone()
                };
                let r = appends(&srv.url, &set, streams, Some(srv.pid)).await?;
                eprintln!(
                    "round {round} layer {} {streams:>3} streams, {:>3} connections: {:.0}/s p50 {:.3} ms p99 {:.3} ms cpu {:.1} µs",
                    if which == 0 { "off" } else { "on " },
                    set.connections,
                    r.rps,
                    r.p50_ms,
                    r.p99_ms,
                    r.server_cpu_us.unwrap_or(0.0)
                );
                runs[which][k].push(r);
            }
        }
    }
    off.stop().await;
    on.stop().await;
    // Two estimates of each ratio: of the medians, and the median of each
    // round's own ratio (its two runs are seconds apart, so drift of the
    // shared machine cancels out of it), with that ratio's quartiles.
    println!(
        "{:<36}{:>12}{:>12}{:>12}{:>14}{:>18}",
        "median of rounds", "layer off", "layer on", "on ÷ off", "per-round ÷", "quartiles"
    );
    for (k, label) in [(0, "1 stream"), (1, "N streams"), (2, "1 connection")] {
        let rows: [(&str, Getter); 4] = [
            ("appends/s", |r| r.rps),
            ("append p50 ms", |r| r.p50_ms),
            ("append p99 ms", |r| r.p99_ms),
            ("server CPU µs/append", |r| r.server_cpu_us.unwrap_or(0.0)),
        ];
        for (name, get) in rows {
            let a = median(runs[0][k].iter().map(get).collect()).unwrap_or(0.0);
            let b = median(runs[1][k].iter().map(get).collect()).unwrap_or(0.0);
            let ratio = if a == 0.0 { 0.0 } else { b / a };
            let mut paired: Vec<f64> = runs[0][k]
                .iter()
                .zip(&runs[1][k])
                .filter(|(off, _)| get(off) != 0.0)
                .map(|(off, on)| get(on) / get(off))
                .collect();
            paired.sort_by(f64::total_cmp);
            let q = |p: f64| pct(&paired, p).unwrap_or(0.0);
            println!(
                "{:<36}{a:>12.3}{b:>12.3}{ratio:>12.3}{:>14.3}{:>18}",
                format!("{name}, {label}"),
                q(0.5),
                format!("{:.3}–{:.3}", q(0.25), q(0.75)),
            );
        }
    }
    Ok(())
}
