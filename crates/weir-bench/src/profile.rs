//! `weir-bench profile`: instructions per append, by callgrind.
//!
//! Wall-clock figures on a shared two-core machine drift by tens of
//! percent; instruction counts do not. For each configuration this starts
//! `valgrind --tool=callgrind weir serve --storage memory` (or, with
//! `--storage log`, on the durable log in a fresh directory), creates one
//! stream, sends a warm-up of appends, zeroes the counters
//! (`callgrind_control -z`), sends `--count` appends of `--size` bytes over
//! `--connections` keep-alive connections with the raw client of
//! [`crate::raw`], dumps the counters (`callgrind_control -d`), stops the
//! server with SIGTERM and prints the dumped instruction total divided by
//! the count. Valgrind runs the server's threads one at a time; that
//! changes timing, not the instructions an append takes.
//!
//! Configurations: `off` (`server.production_layer = false`), `default`
//! (no configuration file: the layer with auth mode `none`), `full` (the
//! `overhead` bench's: API keys required, a local rate limit on every
//! request, metrics, request ids). The dumps stay in `--out` for
//! `callgrind_annotate --inclusive=yes <file>`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::servers::Spawned;

/// One configuration to profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Config {
    /// `server.production_layer = false`.
    Off,
    /// No configuration file.
    Default,
    /// API keys required + local rate limit (the `overhead` bench's layer).
    Full,
}

impl Config {
    fn name(self) -> &'static str {
        match self {
            Config::Off => "off",
            Config::Default => "default",
            Config::Full => "full",
        }
    }
}

/// What `profile` measures.
#[derive(clap::Args, Debug, Clone)]
pub struct ProfileArgs {
    /// The weir binary (defaults to the one next to this executable).
    #[arg(long)]
    pub weir_bin: Option<PathBuf>,
    /// Configurations, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "off,default,full")]
    pub configs: Vec<Config>,
    /// Measured appends per configuration.
    #[arg(long, default_value_t = 20_000)]
    pub count: usize,
    /// Appends before the counters are zeroed.
    #[arg(long, default_value_t = 2_000)]
    pub warmup: usize,
    /// Keep-alive connections the appends are spread over.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Append body size in bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Streams the connections append to (connection `i` writes stream
    /// `i mod streams`): the compare bench's "1 stream" and "N streams".
    #[arg(long, default_value_t = 1)]
    pub streams: usize,
    /// Storage backend: `memory`, or `log` (the durable default; its
    /// committer thread's instructions count too).
    #[arg(long, default_value = "memory", value_parser = ["memory", "log"])]
    pub storage: String,
    /// Where the callgrind files go (kept); default: a new temp directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub async fn run(a: &ProfileArgs) -> anyhow::Result<()> {
    let weir = crate::servers::weir_bin(a.weir_bin.as_deref());
    let tmp = tempfile::tempdir()?;
    let out = match &a.out {
        Some(d) => d.clone(),
        None => tempfile::Builder::new()
            .prefix("weir-profile-")
            .tempdir()?
            .keep(),
    };
    std::fs::create_dir_all(&out)?;
    let mut rows = Vec::new();
    for &cfg in &a.configs {
        let (config, key) = setup(&weir, tmp.path(), cfg).await?;
        let file = out.join(format!("callgrind.{}.out", cfg.name()));
        eprintln!(
            "== {} ({} appends, warm-up {})",
            cfg.name(),
            a.count,
            a.warmup
        );
        let ir = measure(&weir, config.as_deref(), key.as_deref(), &file, a).await?;
        let per = ir as f64 / a.count.max(1) as f64;
        eprintln!("   {ir} Ir, {per:.0} per append");
        rows.push((cfg, per));
    }
    let off = rows
        .iter()
        .find(|(c, _)| *c == Config::Off)
        .map(|(_, v)| *v);
    println!("{:<10}{:>16}{:>12}", "config", "Ir/append", "÷ off");
    for (c, v) in &rows {
        let ratio = off.map_or("-".to_owned(), |o| format!("{:.3}", v / o));
        println!("{:<10}{v:>16.0}{ratio:>12}", c.name());
    }
    println!("callgrind files in {}", out.display());
    println!("attribute with: callgrind_annotate --inclusive=yes <file>.1 | head -80");
    Ok(())
}

/// The configuration file (if any) and API key (if any) of `cfg`.
async fn setup(
    weir: &Path,
    dir: &Path,
    cfg: Config,
) -> anyhow::Result<(Option<PathBuf>, Option<String>)> {
    Ok(match cfg {
        Config::Default => (None, None),
        Config::Off => {
            let p = dir.join("off.toml");
            std::fs::write(&p, "[server]\nproduction_layer = false\n")?;
            (Some(p), None)
        }
        Config::Full => {
            let db = dir.join("layer.db");
            let key = crate::overhead::create_key(weir, &db).await?;
            let p = dir.join("full.toml");
            std::fs::write(&p, crate::overhead::on_toml(&db))?;
            (Some(p), Some(key))
        }
    })
}

/// Runs one server under callgrind and returns the instructions of the
/// measured appends.
async fn measure(
    weir: &Path,
    config: Option<&Path>,
    key: Option<&str>,
    file: &Path,
    a: &ProfileArgs,
) -> anyhow::Result<u64> {
    let _ = std::fs::remove_file(file);
    let dump = dump_file(file);
    let _ = std::fs::remove_file(&dump);
    let data = tempfile::tempdir()?;
    let mut c = tokio::process::Command::new("valgrind");
    c.arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", file.display()))
        .arg(weir)
        .args(["serve", "--host", "127.0.0.1", "--port", "0"])
        .args(["--log-level", "warn", "--storage", &a.storage]);
    if a.storage == "log" {
        c.arg("--data-dir").arg(data.path());
    }
    if let Some(cfg) = config {
        c.arg("--config").arg(cfg);
    }
    let server = Spawned::command(c, "weir under callgrind", Duration::from_secs(300)).await?;
    let result = drive(&server, key, a).await;
    server.stop_within(Duration::from_secs(120)).await;
    result?;
    let text = std::fs::read_to_string(&dump)
        .with_context(|| format!("reading the callgrind dump {}", dump.display()))?;
    total_ir(&text).with_context(|| format!("no totals in {}", dump.display()))
}

/// `callgrind_control -d` writes `{file}.1` (the first dump).
fn dump_file(file: &Path) -> PathBuf {
    let mut s: OsString = file.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
}

async fn drive(server: &Spawned, key: Option<&str>, a: &ProfileArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::builder().http1_only().build()?;
    let streams = a.streams.clamp(1, a.connections.max(1));
    let paths: Vec<String> = (0..streams)
        .map(|i| format!("/v1/stream/profile-append-{i}"))
        .collect();
    for path in &paths {
        let mut put = client
            .put(format!("{}{path}", server.url))
            .header("content-type", "application/octet-stream");
        if let Some(k) = key {
            put = put.header("x-api-key", k);
        }
        let r = put.send().await?;
        if !r.status().is_success() {
            bail!("creating the stream: {}", r.status());
        }
    }
    let body = vec![b'x'; a.size];
    let mut posters = Vec::new();
    for i in 0..a.connections.max(1) {
        let path = &paths[i % streams];
        posters.push(crate::raw::Poster::connect(&server.url, path, &body, key).await?);
    }
    let posters = send(posters, a.warmup).await?;
    control(&["-z"], server.pid).await?;
    send(posters, a.count).await?;
    control(&["-d"], server.pid).await?;
    Ok(())
}

/// Sends `n` appends spread over the connections (closed loop each).
async fn send(
    posters: Vec<crate::raw::Poster>,
    n: usize,
) -> anyhow::Result<Vec<crate::raw::Poster>> {
    let k = posters.len();
    let mut tasks = Vec::new();
    for (i, mut p) in posters.into_iter().enumerate() {
        let share = n / k + usize::from(i < n % k);
        tasks.push(tokio::spawn(async move {
            for _ in 0..share {
                let (status, _) = p.post().await?;
                if !(200..300).contains(&status) {
                    bail!("append answered {status}");
                }
            }
            anyhow::Ok(p)
        }));
    }
    let mut back = Vec::new();
    for t in tasks {
        back.push(t.await??);
    }
    Ok(back)
}

async fn control(args: &[&str], pid: u32) -> anyhow::Result<()> {
    let st = tokio::process::Command::new("callgrind_control")
        .args(args)
        .arg(pid.to_string())
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .context("running callgrind_control")?;
    if !st.success() {
        bail!("callgrind_control {args:?} failed: {st}");
    }
    Ok(())
}

/// The `summary:` (or `totals:`) instruction count of a callgrind file.
fn total_ir(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}
