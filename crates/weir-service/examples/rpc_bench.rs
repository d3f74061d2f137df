//! RPC echo: Weir service + typed-less client (default middleware: deadline,
//! metrics with the Prometheus recorder installed, trace context,
//! correlation id, error mapping; auth and rate limits off) against a raw
//! async-nats request/reply echo carrying the same payload and headers, on
//! one nats-server started by the test kit, in one run.
//!
//! ```sh
//! cargo run --release -p weir-service --example rpc_bench -- [--secs 3] [--levels 1,10,100,1000] [--payload 128] [--rounds 6]
//! ```
//!
//! Closed loop: each of `c` tasks sends a request and waits for its reply.
//! Raw and Weir alternate in `--rounds` slices per level (same total time
//! each), so background load on a shared machine hits both alike; the table
//! shows the median of the rounds' throughputs and of their weir/raw ratios,
//! and the CPU time this process (client and server sides, not nats-server)
//! spent per request.
//!
//! `--count N --only raw|weir` instead makes N sequential calls of one kind
//! and exits: run it under `valgrind --tool=callgrind` with N and 0 to count
//! the instructions one request costs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use weir_service::{Client, Ctx, Reply, Request, ServiceBuilder};

struct Run {
    /// Median over the rounds.
    rps: f64,
    p50: Duration,
    p99: Duration,
    /// Process CPU time per request.
    cpu_us: f64,
}

/// User plus system CPU time of this process so far (`/proc/self/stat`,
/// clock ticks of 10 ms: slices last long enough for that to be fine).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    Duration::from_millis(f.iter().sum::<u64>() * 10)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Runs `concurrency` closed-loop workers for `dur`; returns the latencies (µs).
async fn slice<F, Fut>(concurrency: usize, dur: Duration, f: &F) -> Vec<u32>
where
    F: Fn() -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let end = Instant::now() + dur;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(1024);
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                f().await;
                lat.push(t0.elapsed().as_micros() as u32);
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

fn summarize(mut all: Vec<u32>, rps: Vec<f64>, cpu: Duration) -> Run {
    all.sort_unstable();
    let pct = |p: f64| {
        let i = ((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1));
        Duration::from_micros(u64::from(all.get(i).copied().unwrap_or(0)))
    };
    Run {
        rps: median(rps),
        p50: pct(0.50),
        p99: pct(0.99),
        cpu_us: cpu.as_secs_f64() * 1e6 / all.len().max(1) as f64,
    }
}

/// One timed slice: latencies, throughput, CPU time used.
async fn timed<F, Fut>(concurrency: usize, dur: Duration, f: &F) -> (Vec<u32>, f64, Duration)
where
    F: Fn() -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let (t, c) = (Instant::now(), cpu_time());
    let lat = slice(concurrency, dur, f).await;
    let rps = lat.len() as f64 / t.elapsed().as_secs_f64();
    (lat, rps, cpu_time().saturating_sub(c))
}

/// Both systems at one concurrency, in alternating slices so that
/// background load on a shared machine hits both alike.
async fn compare<R, RF, W, WF>(
    concurrency: usize,
    secs: f64,
    rounds: u32,
    raw: R,
    weir: W,
) -> (Run, Run, f64)
where
    R: Fn() -> RF + Send + Sync + Clone + 'static,
    RF: std::future::Future<Output = ()> + Send,
    W: Fn() -> WF + Send + Sync + Clone + 'static,
    WF: std::future::Future<Output = ()> + Send,
{
    // Warm-up: connections, buffers, metric handles, allocator.
    slice(concurrency, Duration::from_millis(300), &raw).await;
    slice(concurrency, Duration::from_millis(300), &weir).await;
    let d = Duration::from_secs_f64(secs / f64::from(rounds));
    let (mut r, mut w) = (Vec::new(), Vec::new());
    let (mut r_rps, mut w_rps, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut r_cpu, mut w_cpu) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..rounds {
        let (lat, rr, c) = timed(concurrency, d, &raw).await;
        r.extend(lat);
        r_cpu += c;
        let (lat, wr, c) = timed(concurrency, d, &weir).await;
        w.extend(lat);
        w_cpu += c;
        ratios.push(wr / rr);
        r_rps.push(rr);
        w_rps.push(wr);
    }
    (
        summarize(r, r_rps, r_cpu),
        summarize(w, w_rps, w_cpu),
        median(ratios),
    )
}

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_owned())
}

#[tokio::main]
async fn main() {
    let secs: f64 = arg("--secs", "3").parse().unwrap();
    let levels: Vec<usize> = arg("--levels", "1,10,100,1000")
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    let payload = Bytes::from(vec![b'x'; arg("--payload", "128").parse().unwrap()]);
    let rounds: u32 = arg("--rounds", "6").parse().unwrap();
    let count: Option<u64> = std::env::args()
        .any(|a| a == "--count")
        .then(|| arg("--count", "0").parse().unwrap());
    weir_layer::metrics::install().expect("prometheus recorder");

    let server = weir_testkit::NatsServer::start();
    eprintln!("nats-server at {}", server.url());

    // Weir: service and client on their own connections.
    let _svc = ServiceBuilder::new("bench", "1.0.0")
        .endpoint(
            "echo",
            |req: Request| async move { Ok(Reply::new(req.payload)) },
        )
        .start(server.connect().await)
        .await
        .unwrap();
    let weir = Client::new(server.connect().await);

    // Raw: a queue-group echo answering inline, and a raw requester.
    let raw_srv = server.nats().await.client().clone();
    let mut sub = raw_srv
        .queue_subscribe("raw.echo", "q".into())
        .await
        .unwrap();
    let responder = raw_srv.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Some(r) = m.reply {
                let _ = responder.publish(r, m.payload).await;
            }
        }
    });
    let raw = server.nats().await.client().clone();
    raw_srv.flush().await.unwrap();
    // The headers a Weir call carries (deadline and traceparent: a root
    // context's correlation id is its trace id, which travels in the
    // traceparent, not in a header of its own).
    let mut headers = HeaderMap::new();
    Ctx::with_timeout(Duration::from_secs(5)).write_headers(&mut headers, Duration::from_secs(5));

    let (rc, p, h) = (raw.clone(), payload.clone(), headers.clone());
    let raw_call = move || {
        let (raw, p, h) = (rc.clone(), p.clone(), h.clone());
        async move {
            let req = async_nats::Request::new()
                .payload(p)
                .headers(h)
                .timeout(Some(Duration::from_secs(5)));
            raw.send_request("raw.echo", req).await.expect("raw echo");
        }
    };
    let (wc, p) = (weir.clone(), payload.clone());
    let weir_call = move || {
        let (weir, p) = (wc.clone(), p.clone());
        async move {
            let ctx = Ctx::with_timeout(Duration::from_secs(5));
            weir.request(&ctx, "bench.echo", p, false)
                .await
                .expect("weir echo");
        }
    };

    if let Some(n) = count {
        // Fixed work for instruction counting: one warm-up call, then n.
        let only = arg("--only", "weir");
        for i in 0..=n {
            match only.as_str() {
                "raw" => raw_call().await,
                _ => weir_call().await,
            }
            if i == 0 {
                eprintln!("warm");
            }
        }
        return;
    }

    println!(
        "payload {} bytes, {secs} s per system and level in {rounds} alternating rounds, closed loop; \
         rps: median of rounds; weir/raw: median of the rounds' ratios; cpu: this process per request",
        payload.len()
    );
    println!(
        "| concurrency | raw rps | raw p50 | raw p99 | raw cpu | weir rps | weir p50 | weir p99 | weir cpu | weir/raw |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &c in &levels {
        let (r, w, ratio) = compare(c, secs, rounds, raw_call.clone(), weir_call.clone()).await;
        println!(
            "| {c} | {:.0} | {:?} | {:?} | {:.1} µs | {:.0} | {:?} | {:?} | {:.1} µs | {:.0}% |",
            r.rps,
            r.p50,
            r.p99,
            r.cpu_us,
            w.rps,
            w.p50,
            w.p99,
            w.cpu_us,
            100.0 * ratio
        );
    }
    let _ = weir.transport().flush().await;
}
