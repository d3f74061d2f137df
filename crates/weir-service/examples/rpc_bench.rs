//! RPC echo: Weir service + typed-less client (default middleware: deadline,
//! metrics with the Prometheus recorder installed, trace context,
//! correlation id, error mapping; auth and rate limits off) against a raw
//! async-nats request/reply echo carrying the same payload and headers, on
//! one nats-server started by the test kit, in one run.
//!
//! ```sh
//! cargo run --release -p weir-service --example rpc_bench -- [--secs 3] [--levels 1,10,100,1000] [--payload 128]
//! ```
//!
//! Closed loop: each of `c` tasks sends a request and waits for its reply.
//! Raw and Weir alternate in six slices per level (same total time each).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use weir_service::{Client, Ctx, Reply, Request, ServiceBuilder};

struct Run {
    rps: f64,
    p50: Duration,
    p99: Duration,
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

fn summarize(mut all: Vec<u32>, secs: f64) -> Run {
    all.sort_unstable();
    let pct = |p: f64| {
        let i = ((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1));
        Duration::from_micros(u64::from(all.get(i).copied().unwrap_or(0)))
    };
    Run {
        rps: all.len() as f64 / secs,
        p50: pct(0.50),
        p99: pct(0.99),
    }
}

/// Both systems at one concurrency, in alternating slices so that
/// background load on a shared machine hits both alike.
async fn compare<R, RF, W, WF>(concurrency: usize, secs: f64, raw: R, weir: W) -> (Run, Run)
where
    R: Fn() -> RF + Send + Sync + Clone + 'static,
    RF: std::future::Future<Output = ()> + Send,
    W: Fn() -> WF + Send + Sync + Clone + 'static,
    WF: std::future::Future<Output = ()> + Send,
{
    const SLICES: u32 = 6;
    slice(concurrency, Duration::from_millis(200), &raw).await;
    slice(concurrency, Duration::from_millis(200), &weir).await;
    let d = Duration::from_secs_f64(secs / f64::from(SLICES));
    let (mut r, mut w) = (Vec::new(), Vec::new());
    let (mut rt, mut wt) = (0.0, 0.0);
    for _ in 0..SLICES {
        let t = Instant::now();
        r.extend(slice(concurrency, d, &raw).await);
        rt += t.elapsed().as_secs_f64();
        let t = Instant::now();
        w.extend(slice(concurrency, d, &weir).await);
        wt += t.elapsed().as_secs_f64();
    }
    (summarize(r, rt), summarize(w, wt))
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
    // The headers a Weir call carries.
    let mut headers = HeaderMap::new();
    Ctx::with_timeout(Duration::from_secs(5)).write_headers(&mut headers, Duration::from_secs(5));

    println!(
        "payload {} bytes, {secs} s per system and level in 6 alternating slices, closed loop",
        payload.len()
    );
    println!(
        "| concurrency | raw rps | raw p50 | raw p99 | weir rps | weir p50 | weir p99 | weir/raw |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &c in &levels {
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
        let (r, w) = compare(c, secs, raw_call, weir_call).await;
        println!(
            "| {c} | {:.0} | {:?} | {:?} | {:.0} | {:?} | {:?} | {:.0}% |",
            r.rps,
            r.p50,
            r.p99,
            w.rps,
            w.p50,
            w.p99,
            100.0 * w.rps / r.rps
        );
    }
    let _ = weir.transport().flush().await;
}
