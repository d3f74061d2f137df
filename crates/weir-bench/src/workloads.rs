//! The workloads and their figures.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use futures::StreamExt;
use tokio::sync::Mutex;

use crate::servers::rss_mib;

/// Workload sizes (defaults are the targets).
#[derive(Args, Debug, Clone)]
pub struct Settings {
    /// Seconds each append workload runs.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Concurrent append connections.
    #[arg(long, default_value_t = 75)]
    pub connections: usize,
    /// Append body size in bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Size of the catch-up stream in MiB (0 skips).
    #[arg(long, default_value_t = 256)]
    pub catchup_mib: usize,
    /// Long-poll latency samples (0 skips).
    #[arg(long, default_value_t = 300)]
    pub latency_samples: usize,
    /// SSE fan-out reader counts, comma-separated (`0` skips).
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    pub fanout: Vec<usize>,
    /// Messages appended during each fan-out run.
    #[arg(long, default_value_t = 30)]
    pub fanout_messages: usize,
    /// Milliseconds between fan-out messages.
    #[arg(long, default_value_t = 100)]
    pub fanout_interval_ms: u64,
    /// Sent as `X-Api-Key` on every request (to measure authentication).
    #[arg(long, env = "WEIR_BENCH_API_KEY")]
    pub api_key: Option<String>,
}

/// Results of one server's run; `None` where a workload was skipped.
#[derive(Debug, Default, Clone)]
pub struct Figures {
    pub one_stream: Option<AppendRun>,
    pub many_streams: Option<AppendRun>,
    pub longpoll_p50_ms: Option<f64>,
    pub longpoll_p99_ms: Option<f64>,
    pub catchup_gib_s: Option<f64>,
    pub fanout: Vec<Fanout>,
}

/// One SSE fan-out run.
#[derive(Debug, Default, Clone, Copy)]
pub struct Fanout {
    pub readers: usize,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub rss_mib: Option<f64>,
}

impl Figures {
    /// (row name, value) pairs in display order.
    pub fn rows(&self) -> Vec<(String, Option<f64>)> {
        let mut rows = Vec::new();
        for (label, run) in [
            ("1 stream", self.one_stream),
            ("N streams", self.many_streams),
        ] {
            rows.push((format!("appends/s, {label}"), run.map(|r| r.rps)));
            rows.push((format!("append p50 ms, {label}"), run.map(|r| r.p50_ms)));
            rows.push((format!("append p99 ms, {label}"), run.map(|r| r.p99_ms)));
            rows.push((
                format!("server CPU µs/append, {label}"),
                run.and_then(|r| r.server_cpu_us),
            ));
        }
        rows.extend([
            ("long-poll delivery p50 ms".to_owned(), self.longpoll_p50_ms),
            ("long-poll delivery p99 ms".to_owned(), self.longpoll_p99_ms),
            ("catch-up read GiB/s".to_owned(), self.catchup_gib_s),
        ]);
        for f in &self.fanout {
            rows.push((
                format!("SSE {} readers: delivery p50 ms", f.readers),
                f.p50_ms,
            ));
            rows.push((
                format!("SSE {} readers: delivery p99 ms", f.readers),
                f.p99_ms,
            ));
            rows.push((
                format!("SSE {} readers: server RSS MiB", f.readers),
                f.rss_mib,
            ));
        }
        rows
    }
}

/// A reqwest client; every request carries `X-Api-Key` when the settings
/// give one (to measure the cost of authentication).
fn client_with(api_key: Option<&str>) -> anyhow::Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(k) = api_key {
        headers.insert("x-api-key", reqwest::header::HeaderValue::from_str(k)?);
    }
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .http1_only()
        .pool_max_idle_per_host(usize::MAX)
        .tcp_nodelay(true)
        .build()?)
}

fn describe(r: &AppendRun) -> String {
    let cpu = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
    format!(
        "{:.0} appends/s, p50 {:.2} ms, p99 {:.2} ms, server CPU {} µs/append, load generator {} µs/append",
        r.rps,
        r.p50_ms,
        r.p99_ms,
        cpu(r.server_cpu_us),
        cpu(r.client_cpu_us)
    )
}

/// [`client_with`] the key of `WEIR_BENCH_API_KEY`, for the workloads
/// that do not take settings.
fn client() -> anyhow::Result<reqwest::Client> {
    client_with(std::env::var("WEIR_BENCH_API_KEY").ok().as_deref())
}

/// The `p` quantile (0–1) of already sorted values, by nearest rank.
pub(crate) fn pct(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied()
}

/// The median of unsorted values ([`pct`] at 0.5).
pub(crate) fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    pct(&v, 0.5)
}

fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("bench-{prefix}-{n}")
}

async fn create(c: &reqwest::Client, url: &str, ct: &str) -> anyhow::Result<()> {
    let r = c.put(url).header("content-type", ct).send().await?;
    if !r.status().is_success() {
        bail!("create {url}: {}", r.status());
    }
    Ok(())
}

/// Runs every workload against `base`.
pub async fn run_all(base: &str, s: &Settings, pid: Option<u32>) -> anyhow::Result<Figures> {
    let mut f = Figures::default();
    if s.seconds > 0 {
        let one = appends(base, s, 1, pid).await?;
        eprintln!("  1 stream: {}", describe(&one));
        f.one_stream = Some(one);
        let many = appends(base, s, s.connections, pid).await?;
        eprintln!("  {} streams: {}", s.connections, describe(&many));
        f.many_streams = Some(many);
    }
    if s.latency_samples > 0 {
        let (p50, p99) = longpoll_latency(base, s.latency_samples).await?;
        eprintln!("  long-poll delivery: p50 {p50:.3} ms, p99 {p99:.3} ms");
        f.longpoll_p50_ms = Some(p50);
        f.longpoll_p99_ms = Some(p99);
    }
    if s.catchup_mib > 0 {
        let gib = catchup(base, s.catchup_mib).await?;
        eprintln!("  catch-up: {gib:.2} GiB/s");
        f.catchup_gib_s = Some(gib);
    }
    for &n in s.fanout.iter().filter(|&&n| n > 0) {
        match fanout(
            base,
            n,
            s.fanout_messages,
            Duration::from_millis(s.fanout_interval_ms),
            pid,
        )
        .await
        {
            Ok((p50, p99, rss)) => {
                eprintln!("  SSE fan-out {n}: p50 {p50:.2} ms, p99 {p99:.2} ms, RSS {rss:?} MiB");
                f.fanout.push(Fanout {
                    readers: n,
                    p50_ms: Some(p50),
                    p99_ms: Some(p99),
                    rss_mib: rss,
                });
            }
            Err(e) => {
                eprintln!("  SSE fan-out {n}: failed: {e:#}");
                f.fanout.push(Fanout {
                    readers: n,
                    ..Fanout::default()
                });
            }
        }
    }
    Ok(f)
}

/// What one append workload measured.
#[derive(Debug, Default, Clone, Copy)]
pub struct AppendRun {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Server CPU (user + system) per append, when its pid is known.
    pub server_cpu_us: Option<f64>,
    /// The load generator's own CPU per append.
    pub client_cpu_us: Option<f64>,
}

/// Closed-loop appends of `s.size` bytes from `s.connections` connections
/// to `streams` streams for `s.seconds`, over the lean client in
/// [`crate::raw`].
pub async fn appends(
    base: &str,
    s: &Settings,
    streams: usize,
    pid: Option<u32>,
) -> anyhow::Result<AppendRun> {
    let c = client_with(s.api_key.as_deref())?;
    let prefix = unique("append");
    let root = base.trim_end_matches('/');
    let mut paths = Vec::new();
    for i in 0..streams {
        let path = format!("/v1/stream/{prefix}-{i}");
        create(&c, &format!("{root}{path}"), "application/octet-stream").await?;
        paths.push(path);
    }
    let body = vec![b'x'; s.size];
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..s.connections {
        let mut poster =
            crate::raw::Poster::connect(root, &paths[i % streams], &body, s.api_key.as_deref())
                .await?;
        let (stop, measuring, ok) = (stop.clone(), measuring.clone(), ok.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match poster.post().await {
                    Ok((status, ms)) if (200..300).contains(&status) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        if measuring.load(Ordering::Relaxed) {
                            lat.push(ms);
                        }
                    }
                    Ok((status, _)) => eprintln!("append failed: {status}"),
                    Err(e) => {
                        eprintln!("append error: {e:#}");
                        break;
                    }
                }
            }
            lat
        }));
    }
    // Warm up for a second, then measure.
    tokio::time::sleep(Duration::from_secs(1)).await;
    measuring.store(true, Ordering::Relaxed);
    let start_count = ok.load(Ordering::Relaxed);
    let cpu0 = pid.and_then(crate::raw::cpu_seconds);
    let self0 = crate::raw::cpu_seconds(std::process::id());
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(s.seconds)).await;
    let n = ok.load(Ordering::Relaxed) - start_count;
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu1 = pid.and_then(crate::raw::cpu_seconds);
    let self1 = crate::raw::cpu_seconds(std::process::id());
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await?);
    }
    lat.sort_by(f64::total_cmp);
    let per = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if n > 0 => Some((b - a) * 1e6 / n as f64),
        _ => None,
    };
    Ok(AppendRun {
        rps: n as f64 / elapsed,
        p50_ms: pct(&lat, 0.50).unwrap_or(0.0),
        p99_ms: pct(&lat, 0.99).unwrap_or(0.0),
        server_cpu_us: per(cpu0, cpu1),
        client_cpu_us: per(self0, self1),
    })
}

/// Append → long-poll delivery latency: one reader parked at the tail, one
/// writer appending a numbered message every 10 ms.
async fn longpoll_latency(base: &str, samples: usize) -> anyhow::Result<(f64, f64)> {
    let c = client()?;
    let url = format!("{base}/v1/stream/{}", unique("latency"));
    create(&c, &url, "text/plain").await?;
    let sent: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; samples]));
    let head = c.head(&url).send().await?;
    let mut offset = head
        .headers()
        .get("stream-next-offset")
        .context("no offset")?
        .to_str()?
        .to_owned();
    let reader = {
        let (c, url, sent) = (c.clone(), url.clone(), sent.clone());
        tokio::spawn(async move {
            let mut lat = Vec::new();
            while lat.len() < samples {
                let r = c
                    .get(format!("{url}?offset={offset}&live=long-poll"))
                    .send()
                    .await?;
                let arrived = Instant::now();
                if let Some(o) = r.headers().get("stream-next-offset") {
                    offset = o.to_str()?.to_owned();
                }
                let body = r.text().await?;
                let sent = sent.lock().await;
                for tok in body.split(';').filter(|t| !t.is_empty()) {
                    if let Ok(i) = tok.parse::<usize>()
                        && let Some(Some(t)) = sent.get(i)
                    {
                        lat.push(arrived.duration_since(*t).as_secs_f64() * 1000.0);
                    }
                }
            }
            anyhow::Ok(lat)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..samples {
        sent.lock().await[i] = Some(Instant::now());
        c.post(&url)
            .header("content-type", "text/plain")
            .body(format!("{i};"))
            .send()
            .await?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut lat = tokio::time::timeout(Duration::from_secs(60), reader).await???;
    lat.sort_by(f64::total_cmp);
    Ok((
        pct(&lat, 0.5).unwrap_or(0.0),
        pct(&lat, 0.99).unwrap_or(0.0),
    ))
}

/// Writes `mib` MiB in 1 MiB appends, then times reading it all back from
/// the start by following `Stream-Next-Offset`.
async fn catchup(base: &str, mib: usize) -> anyhow::Result<f64> {
    let c = client()?;
    let url = format!("{base}/v1/stream/{}", unique("catchup"));
    create(&c, &url, "application/octet-stream").await?;
    let chunk = Bytes::from(vec![7u8; 1024 * 1024]);
    for _ in 0..mib {
        let r = c
            .post(&url)
            .header("content-type", "application/octet-stream")
            .body(chunk.clone())
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("catch-up append: {}", r.status());
        }
    }
    let t0 = Instant::now();
    let mut offset = "-1".to_owned();
    let mut total = 0usize;
    loop {
        let r = c.get(format!("{url}?offset={offset}")).send().await?;
        let done = r.headers().contains_key("stream-up-to-date");
        offset = r
            .headers()
            .get("stream-next-offset")
            .context("no next offset")?
            .to_str()?
            .to_owned();
        let mut body = r.bytes_stream();
        while let Some(b) = body.next().await {
            total += b?.len();
        }
        if done {
            break;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    if total != mib * 1024 * 1024 {
        bail!(
            "catch-up read {total} bytes, expected {}",
            mib * 1024 * 1024
        );
    }
    Ok(total as f64 / secs / (1024.0 * 1024.0 * 1024.0))
}

/// `readers` SSE readers on one stream; `messages` timestamped appends.
/// Returns (delivery p50 ms, p99 ms, peak server RSS MiB).
async fn fanout(
    base: &str,
    readers: usize,
    messages: usize,
    interval: Duration,
    pid: Option<u32>,
) -> anyhow::Result<(f64, f64, Option<f64>)> {
    let c = client()?;
    let path = format!("/v1/stream/{}", unique("fanout"));
    let root = base.trim_end_matches('/');
    let url = format!("{root}{path}");
    create(&c, &url, "text/plain").await?;
    let epoch = Instant::now();
    let connected = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    // Readers use the lean raw client: the load generator shares the
    // cores with the server, so its per-event cost must stay small.
    for _ in 0..readers {
        let (root, path, connected) = (root.to_owned(), path.clone(), connected.clone());
        let key = std::env::var("WEIR_BENCH_API_KEY").ok();
        tasks.push(tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let (mut sock, mut buf) = crate::raw::open_stream(
                &root,
                &format!("{path}?offset=now&live=sse"),
                key.as_deref(),
            )
            .await?;
            connected.fetch_add(1, Ordering::Relaxed);
            let mut lat = Vec::with_capacity(messages);
            let mut tmp = vec![0u8; 16 * 1024];
            while lat.len() < messages {
                let n =
                    tokio::time::timeout(Duration::from_secs(30), sock.read(&mut tmp)).await??;
                if n == 0 {
                    break;
                }
                let now = epoch.elapsed().as_micros() as f64;
                buf.extend_from_slice(&tmp[..n]);
                crate::raw::take_markers(&mut buf, |t| lat.push((now - t as f64) / 1000.0));
            }
            anyhow::Ok(lat)
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while (connected.load(Ordering::Relaxed) as usize) < readers {
        if Instant::now() > deadline {
            bail!(
                "only {} of {readers} SSE readers connected",
                connected.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut peak_rss = pid.and_then(rss_mib);
    // Every reader has its head; give the last ones a moment to park.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cpu0 = pid.and_then(crate::raw::cpu_seconds);
    let self0 = crate::raw::cpu_seconds(std::process::id());
    for _ in 0..messages {
        let t = epoch.elapsed().as_micros();
        c.post(&url)
            .header("content-type", "text/plain")
            .body(format!("t={t};"))
            .send()
            .await?;
        tokio::time::sleep(interval).await;
        if let (Some(p), Some(now)) = (pid, pid.and_then(rss_mib)) {
            let _ = p;
            peak_rss = Some(peak_rss.map_or(now, |r: f64| r.max(now)));
        }
    }
    let cpu1 = pid.and_then(crate::raw::cpu_seconds);
    let self1 = crate::raw::cpu_seconds(std::process::id());
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    lat.sort_by(f64::total_cmp);
    let per = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if !lat.is_empty() => format!("{:.1}", (b - a) * 1e6 / lat.len() as f64),
        _ => "-".to_owned(),
    };
    eprintln!(
        "  SSE fan-out {readers}: CPU per delivery: server {} µs, load generator {} µs (includes idle waits)",
        per(cpu0, cpu1),
        per(self0, self1)
    );
    if lat.len() < readers * messages / 2 {
        bail!(
            "only {} of {} deliveries observed",
            lat.len(),
            readers * messages
        );
    }
    Ok((
        pct(&lat, 0.5).unwrap_or(0.0),
        pct(&lat, 0.99).unwrap_or(0.0),
        peak_rss,
    ))
}

/// Creates `n` streams with one append each on a durable server, restarts
/// it on the same directory, and prints restart time and RSS.
pub async fn restart(weir_bin: Option<&std::path::Path>, n: usize) -> anyhow::Result<()> {
    use crate::servers::{ServerKind, Spawned};
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let first = Spawned::start_in(ServerKind::WeirDurable, weir_bin, &data).await?;
    let c = client()?;
    let t0 = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (c, base, next) = (c.clone(), first.url.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= n {
                    return anyhow::Ok(());
                }
                let url = format!("{base}/v1/stream/tenant-{}/s-{i}", i % 100);
                c.put(&url)
                    .header("content-type", "text/plain")
                    .send()
                    .await?;
                c.post(&url)
                    .header("content-type", "text/plain")
                    .body("hello")
                    .send()
                    .await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let created = t0.elapsed();
    let rss_before = rss_mib(first.pid);
    first.stop().await;
    let t1 = Instant::now();
    let second = Spawned::start_in(ServerKind::WeirDurable, weir_bin, &data).await?;
    let restart = t1.elapsed();
    let rss_after = rss_mib(second.pid);
    let r = c
        .get(format!("{}/v1/stream/tenant-7/s-{}", second.url, n - 93))
        .send()
        .await?;
    let ok = r.status().is_success() && r.text().await? == "hello";
    second.stop().await;
    println!(
        "{n} streams: created+appended in {:.1} s; restart (recovery until listening) {:.2} s; RSS before restart {:.0} MiB, after restart {:.0} MiB; data intact: {ok}",
        created.as_secs_f64(),
        restart.as_secs_f64(),
        rss_before.unwrap_or(0.0),
        rss_after.unwrap_or(0.0)
    );
    Ok(())
}
