//! Durable events: raw JetStream vs Weir, publish → handled.
//!
//! `cargo run --release -p weir-service --example durable_bench [-- EVENTS ROUNDS]`
//!
//! One nats-server (JetStream, file storage, from weir-testkit). At each
//! publisher concurrency, alternating per round:
//! * raw — async-nats publish awaiting the PubAck, a pull consumer
//!   (`messages()`) acking each message;
//! * weir — `DurablePublisher` (Nats-Msg-Id, PubAck) and a durable listener
//!   (KV ledger check + record, ack, metrics).
//!
//! * weir-idem — the same with a listener declared idempotent (no ledger).
//!
//! Prints events/s (first publish → last handled) and p50/p99 latency from
//! publish start to handler, per round, then medians.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::Notify;
use weir_service::durable::{DurableListener, DurableOptions, DurablePublisher, Family};
use weir_service::{Problem, ServiceBuilder, Transport};

static EPOCH: OnceLock<Instant> = OnceLock::new();

fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

struct Sink {
    lat: Mutex<Vec<u64>>,
    want: usize,
    done: Notify,
}

impl Sink {
    fn new(want: usize) -> Arc<Sink> {
        Arc::new(Sink {
            lat: Mutex::new(Vec::with_capacity(want)),
            want,
            done: Notify::new(),
        })
    }
    fn record(&self, payload: &[u8]) {
        let sent = u64::from_le_bytes(payload[..8].try_into().unwrap());
        let mut l = self.lat.lock();
        l.push(now_ns().saturating_sub(sent));
        if l.len() == self.want {
            self.done.notify_one();
        }
    }
}

struct Result1 {
    rate: f64,
    p50_us: f64,
    p99_us: f64,
}

fn summarize(sink: &Sink, elapsed: Duration) -> Result1 {
    let mut l = sink.lat.lock().clone();
    l.sort_unstable();
    let pct = |p: f64| l[((l.len() as f64 * p) as usize).min(l.len() - 1)] as f64 / 1000.0;
    Result1 {
        rate: l.len() as f64 / elapsed.as_secs_f64(),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    }
}

fn payload() -> Bytes {
    let mut b = now_ns().to_le_bytes().to_vec();
    b.extend_from_slice(&[b'x'; 120]);
    Bytes::from(b)
}

async fn publish_all<F, Fut>(n: usize, conc: usize, f: F)
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let mut tasks = Vec::new();
    for w in 0..conc {
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < n {
                f(i).await;
                i += conc;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

async fn raw(js: &jetstream::Context, tag: &str, n: usize, conc: usize) -> Result1 {
    let name = format!("RAW_{tag}");
    let s = js
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("raw{tag}.>")],
            ..Default::default()
        })
        .await
        .unwrap();
    let c: consumer::PullConsumer = s
        .create_consumer(consumer::pull::Config {
            durable_name: Some("c".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let sink = Sink::new(n);
    let s2 = sink.clone();
    let reader = tokio::spawn(async move {
        let mut msgs = c.messages().await.unwrap();
        while let Some(Ok(m)) = msgs.next().await {
            s2.record(&m.payload);
            m.ack().await.unwrap();
        }
    });
    let start = Instant::now();
    let js2 = js.clone();
    let subject = format!("raw{tag}.e");
    publish_all(n, conc, move |_| {
        let js = js2.clone();
        let subject = subject.clone();
        async move {
            js.publish(subject, payload()).await.unwrap().await.unwrap();
        }
    })
    .await;
    sink.done.notified().await;
    let r = summarize(&sink, start.elapsed());
    reader.abort();
    r
}

async fn weir(
    t: &Arc<dyn Transport>,
    tag: &str,
    n: usize,
    conc: usize,
    idempotent: bool,
) -> Result1 {
    let js = t.jetstream().unwrap();
    let family = Family::new(format!("weir{tag}"));
    family.ensure(&js).await.unwrap();
    let sink = Sink::new(n);
    let s2 = sink.clone();
    let svc = ServiceBuilder::new(format!("bench{tag}"), "1.0.0")
        .durable(
            DurableListener::new("h", family.clone(), format!("weir{tag}.>"))
                .options(
                    DurableOptions::default()
                        .concurrency(64)
                        .idempotent(idempotent),
                )
                .handler(move |ev| {
                    let s2 = s2.clone();
                    async move {
                        s2.record(&ev.payload);
                        Ok::<(), Problem>(())
                    }
                }),
        )
        .start(t.clone())
        .await
        .unwrap();
    let p = DurablePublisher::new(js.clone());
    let start = Instant::now();
    let subject = format!("weir{tag}.e");
    let tag = tag.to_owned();
    publish_all(n, conc, move |i| {
        let p = p.clone();
        let subject = subject.clone();
        let id = format!("{tag}-{i}");
        async move {
            p.publish(&subject, &id, async_nats::HeaderMap::new(), payload())
                .await
                .unwrap();
        }
    })
    .await;
    sink.done.notified().await;
    let r = summarize(&sink, start.elapsed());
    svc.drain().await;
    r
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5000);
    let rounds: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3);
    let server = weir_testkit::NatsServer::start();
    let t: Arc<dyn Transport> = server.connect().await;
    let js = t.jetstream().unwrap();
    println!("events per run: {n}, rounds: {rounds}");
    println!(
        "{:<9} {:>5} {:>5} {:>10} {:>10} {:>10}",
        "kind", "conc", "round", "events/s", "p50 µs", "p99 µs"
    );
    let mut table = Vec::new();
    for conc in [1usize, 16, 64] {
        let mut rr = (Vec::new(), Vec::new(), Vec::new());
        let mut wr = (Vec::new(), Vec::new(), Vec::new());
        let mut ir = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            // Alternate which goes first, so drift hits both alike.
            let order = if round % 2 == 0 {
                ["raw", "weir", "weir-idem"]
            } else {
                ["weir-idem", "weir", "raw"]
            };
            for kind in order {
                let tag = format!("{conc}_{round}");
                let r = match kind {
                    "raw" => raw(&js, &tag, n, conc).await,
                    "weir" => weir(&t, &tag, n, conc, false).await,
                    _ => weir(&t, &format!("{tag}i"), n, conc, true).await,
                };
                println!(
                    "{kind:<9} {conc:>5} {round:>5} {:>10.0} {:>10.0} {:>10.0}",
                    r.rate, r.p50_us, r.p99_us
                );
                let acc = match kind {
                    "raw" => &mut rr,
                    "weir" => &mut wr,
                    _ => &mut ir,
                };
                acc.0.push(r.rate);
                acc.1.push(r.p50_us);
                acc.2.push(r.p99_us);
            }
        }
        table.push((conc, rr, wr, ir));
    }
    println!("\nmedians (events/s; latency publish -> handler, µs)");
    println!(
        "{:>5} {:>10} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "conc",
        "raw/s",
        "weir/s",
        "idem/s",
        "raw p50",
        "weir p50",
        "idem p50",
        "raw p99",
        "weir p99",
        "idem p99"
    );
    for (conc, r, w, i) in table {
        println!(
            "{conc:>5} {:>10.0} {:>10.0} {:>10.0} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>9.0}",
            median(r.0),
            median(w.0),
            median(i.0),
            median(r.1),
            median(w.1),
            median(i.1),
            median(r.2),
            median(w.2),
            median(i.2)
        );
    }
}
