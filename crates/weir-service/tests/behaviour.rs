#![allow(clippy::unwrap_used, clippy::expect_used)]

//! Behaviour tests, each run twice: on a real nats-server (started by the
//! test kit on a random port with a temp JetStream store) and on the
//! in-process transport.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use weir_service::client::BreakerLayer;
use weir_service::micro::{self, Verb};
use weir_service::middleware::{AuthLayer, BulkheadLayer, RateLimitLayer};
use weir_service::transport::request_many;
use weir_service::{
    BreakerConfig, CircuitState, Client, Ctx, Delivery, ErrorCode, Problem, Reply, Request,
    RetryPolicy, ServiceBuilder, ServiceContract, ServiceError, TimerMode, Transport,
};
use weir_testkit::NatsServer;

#[derive(Clone)]
enum Env {
    Nats(Arc<NatsServer>),
    Mem(Arc<dyn Transport>),
}

impl Env {
    fn nats() -> Env {
        Env::Nats(Arc::new(NatsServer::start()))
    }
    fn mem() -> Env {
        Env::Mem(weir_testkit::in_process())
    }
    /// A new connection (NATS) or the shared broker (in-process).
    async fn conn(&self) -> Arc<dyn Transport> {
        match self {
            Env::Nats(s) => s.connect().await,
            Env::Mem(t) => t.clone(),
        }
    }
    async fn client(&self) -> Client {
        Client::new(self.conn().await)
    }
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn nats() {
                super::$name(super::Env::nats()).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn in_process() {
                super::$name(super::Env::mem()).await
            }
        }
    )*};
}

both!(
    rpc_spreads_over_queue_group,
    deadline_cancels_across_two_hops,
    retries_only_idempotent,
    breaker_opens_and_recovers,
    bulkhead_rejects,
    srv_follows_adr32,
    contract_compatibility_checked_at_startup,
    graceful_drain_finishes_in_flight,
    exactly_one_timer_fails_over,
    events_fan_out_and_compete,
    max_payload_refused_before_send,
    auth_propagates_and_rate_limits_per_caller,
);

fn echo(
    counter: Arc<AtomicUsize>,
) -> impl Fn(Request) -> futures::future::Ready<Result<Reply, Problem>> + Send + Sync + 'static {
    move |req: Request| {
        counter.fetch_add(1, Ordering::SeqCst);
        futures::future::ready(Ok(Reply::new(req.payload)))
    }
}

async fn rpc_spreads_over_queue_group(env: Env) {
    let counters: Vec<Arc<AtomicUsize>> = (0..3).map(|_| Arc::default()).collect();
    let mut handles = Vec::new();
    for c in &counters {
        handles.push(
            ServiceBuilder::new("echo", "1.0.0")
                .endpoint("echo", echo(c.clone()))
                .start(env.conn().await)
                .await
                .unwrap(),
        );
    }
    let client = env.client().await;
    let ctx = Ctx::with_timeout(Duration::from_secs(5));
    for i in 0..300 {
        let body = Bytes::from(format!("m{i}"));
        let r = client
            .request(&ctx, "echo.echo", body.clone(), false)
            .await
            .unwrap();
        assert_eq!(r, body);
    }
    let counts: Vec<usize> = counters.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    // Exactly once each (queue group), spread over all three.
    assert_eq!(counts.iter().sum::<usize>(), 300, "{counts:?}");
    assert!(
        counts.iter().all(|&c| c >= 30),
        "load not spread: {counts:?}"
    );
}

/// Sets a flag when dropped: proves the handler's future was dropped.
struct DropFlag(Arc<AtomicBool>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

async fn deadline_cancels_across_two_hops(env: Env) {
    let dropped = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(AtomicBool::new(false));
    let inner_deadline = Arc::new(parking_lot::Mutex::new(None::<Duration>));
    let (d, f, idl) = (dropped.clone(), finished.clone(), inner_deadline.clone());
    let _back = ServiceBuilder::new("back", "1.0.0")
        .endpoint("slow", move |req: Request| {
            let (d, f) = (d.clone(), f.clone());
            *idl.lock() = req.ctx.remaining();
            async move {
                let _guard = DropFlag(d);
                tokio::time::sleep(Duration::from_secs(10)).await;
                f.store(true, Ordering::SeqCst);
                Ok(Reply::new("late"))
            }
        })
        .start(env.conn().await)
        .await
        .unwrap();
    let front_client = env.client().await;
    let _front = ServiceBuilder::new("front", "1.0.0")
        .endpoint("call", move |req: Request| {
            let c = front_client.clone();
            async move {
                let r = c.request(&req.ctx, "back.slow", req.payload, false).await?;
                Ok(Reply::new(r))
            }
        })
        .start(env.conn().await)
        .await
        .unwrap();
    let client = env.client().await;
    let start = std::time::Instant::now();
    let r = client
        .request(
            &Ctx::with_timeout(Duration::from_millis(300)),
            "front.call",
            Bytes::new(),
            false,
        )
        .await;
    assert!(matches!(r, Err(ServiceError::DeadlineExceeded)), "{r:?}");
    assert!(start.elapsed() < Duration::from_secs(2));
    // The inner handler saw less than the caller's budget and was dropped.
    let seen = inner_deadline.lock().expect("inner handler ran");
    assert!(seen <= Duration::from_millis(300), "{seen:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        dropped.load(Ordering::SeqCst),
        "inner handler was not cancelled"
    );
    assert!(!finished.load(Ordering::SeqCst));
}

async fn retries_only_idempotent(env: Env) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let _svc = ServiceBuilder::new("flaky", "1.0.0")
        .endpoint("op", move |_req: Request| {
            // Fails twice out of three.
            let n = h.fetch_add(1, Ordering::SeqCst);
            async move {
                if n % 3 < 2 {
                    Err(Problem::new(ErrorCode::Overloaded, "try again"))
                } else {
                    Ok(Reply::new("ok"))
                }
            }
        })
        .start(env.conn().await)
        .await
        .unwrap();
    let client = Client::builder(env.conn().await)
        .retry(Some(RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(5),
            ..RetryPolicy::default()
        }))
        .build();
    let ctx = Ctx::with_timeout(Duration::from_secs(5));
    let r = client.request(&ctx, "flaky.op", Bytes::new(), true).await;
    assert_eq!(r.unwrap(), Bytes::from("ok"));
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    hits.store(0, Ordering::SeqCst);
    let r = client.request(&ctx, "flaky.op", Bytes::new(), false).await;
    assert!(
        matches!(&r, Err(ServiceError::Remote(p)) if p.code == ErrorCode::Overloaded),
        "{r:?}"
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "a non-idempotent call was retried"
    );
}

async fn breaker_opens_and_recovers(env: Env) {
    let healthy = Arc::new(AtomicBool::new(false));
    let hits = Arc::new(AtomicUsize::new(0));
    let (hl, ht) = (healthy.clone(), hits.clone());
    let _svc = ServiceBuilder::new("fragile", "1.0.0")
        .endpoint("op", move |_req: Request| {
            ht.fetch_add(1, Ordering::SeqCst);
            let ok = hl.load(Ordering::SeqCst);
            async move {
                if ok {
                    Ok(Reply::new("ok"))
                } else {
                    Err(Problem::internal())
                }
            }
        })
        .start(env.conn().await)
        .await
        .unwrap();
    let breaker = BreakerLayer::new(BreakerConfig {
        failure_threshold: 3,
        open_for: Duration::from_millis(800),
    });
    let client = Client::builder(env.conn().await)
        .layer(breaker.clone())
        .build();
    let ctx = Ctx::with_timeout(Duration::from_secs(5));
    for _ in 0..3 {
        let r = client
            .request(&ctx, "fragile.op", Bytes::new(), false)
            .await;
        assert!(matches!(r, Err(ServiceError::Remote(_))), "{r:?}");
    }
    assert_eq!(breaker.state("fragile.op"), CircuitState::Open);
    let r = client
        .request(&ctx, "fragile.op", Bytes::new(), false)
        .await;
    assert!(matches!(r, Err(ServiceError::CircuitOpen(_))), "{r:?}");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        3,
        "an open circuit let a call through"
    );
    // Half-open probe fails: open again.
    tokio::time::sleep(Duration::from_millis(850)).await;
    assert_eq!(breaker.state("fragile.op"), CircuitState::HalfOpen);
    let r = client
        .request(&ctx, "fragile.op", Bytes::new(), false)
        .await;
    assert!(matches!(r, Err(ServiceError::Remote(_))));
    assert_eq!(breaker.state("fragile.op"), CircuitState::Open);
    // Recovery through half-open.
    healthy.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(850)).await;
    assert_eq!(breaker.state("fragile.op"), CircuitState::HalfOpen);
    client
        .request(&ctx, "fragile.op", Bytes::new(), false)
        .await
        .unwrap();
    assert_eq!(breaker.state("fragile.op"), CircuitState::Closed);
    client
        .request(&ctx, "fragile.op", Bytes::new(), false)
        .await
        .unwrap();
}

async fn bulkhead_rejects(env: Env) {
    let _svc = ServiceBuilder::new("narrow", "1.0.0")
        .layer(BulkheadLayer {
            max_concurrent: 1,
            max_queue: 1,
        })
        .endpoint("op", |_req: Request| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok(Reply::new("ok"))
        })
        .start(env.conn().await)
        .await
        .unwrap();
    let client = env.client().await;
    let ctx = Ctx::with_timeout(Duration::from_secs(5));
    let calls = (0..4).map(|_| client.request(&ctx, "narrow.op", Bytes::new(), false));
    let results = futures::future::join_all(calls).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let rejected = results
        .iter()
        .filter(|r| matches!(r, Err(ServiceError::Remote(p)) if p.code == ErrorCode::Overloaded && p.status == 503))
        .count();
    assert_eq!((ok, rejected), (2, 2), "{results:?}");
}

async fn srv_follows_adr32(env: Env) {
    let svc = ServiceBuilder::new("adr", "1.2.3")
        .description("checks ADR-32")
        .metadata("team", "weir")
        .endpoint("ok", |_r: Request| async { Ok(Reply::new("{}")) })
        .endpoint("fail", |_r: Request| async {
            Err(Problem::new(ErrorCode::NotFound, "no such thing"))
        })
        .start(env.conn().await)
        .await
        .unwrap();
    let t = env.conn().await;
    let client = Client::new(t.clone());
    let ctx = Ctx::with_timeout(Duration::from_secs(5));
    client
        .request(&ctx, "adr.ok", Bytes::new(), false)
        .await
        .unwrap();
    // Error replies: ADR-32 headers, problem body, no internals.
    let m = t
        .request(
            "adr.fail".into(),
            None,
            Bytes::new(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let hm = m.headers.as_ref().unwrap();
    assert_eq!(hm.get("Nats-Service-Error-Code").unwrap().as_str(), "404");
    assert_eq!(
        hm.get("Nats-Service-Error").unwrap().as_str(),
        "no such thing"
    );
    let body: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(body["code"], "not_found");
    let ask = |subject: String| {
        let t = t.clone();
        async move {
            let ms = request_many(
                &*t,
                subject,
                None,
                Bytes::new(),
                Duration::from_secs(2),
                Duration::from_millis(200),
                None,
            )
            .await
            .unwrap();
            ms.iter()
                .map(|m| serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap())
                .filter(|v| v["name"] == "adr")
                .collect::<Vec<_>>()
        }
    };
    for (verb, kind) in [
        (Verb::Ping, "io.nats.micro.v1.ping_response"),
        (Verb::Info, "io.nats.micro.v1.info_response"),
        (Verb::Stats, "io.nats.micro.v1.stats_response"),
    ] {
        for subject in [
            micro::subject(verb, None, None),
            micro::subject(verb, Some("adr"), None),
            micro::subject(verb, Some("adr"), Some(svc.id())),
        ] {
            let answers = ask(subject.clone()).await;
            assert_eq!(answers.len(), 1, "{subject}: {answers:?}");
            let v = &answers[0];
            assert_eq!(v["type"], kind);
            assert_eq!(v["id"], svc.id());
            assert_eq!(v["version"], "1.2.3");
            assert_eq!(v["metadata"]["team"], "weir");
        }
    }
    let info = &ask(micro::subject(Verb::Info, Some("adr"), None)).await[0];
    assert_eq!(info["description"], "checks ADR-32");
    let eps = info["endpoints"].as_array().unwrap();
    assert_eq!(eps.len(), 2);
    assert_eq!(eps[0]["subject"], "adr.ok");
    assert_eq!(eps[0]["queue_group"], "q");
    let stats = &ask(micro::subject(Verb::Stats, Some("adr"), None)).await[0];
    let started = stats["started"].as_str().unwrap();
    time::OffsetDateTime::parse(started, &time::format_description::well_known::Rfc3339).unwrap();
    for e in stats["endpoints"].as_array().unwrap() {
        assert!(e["num_requests"].is_u64() && e["num_errors"].is_u64());
        assert!(
            e["processing_time"].is_u64() && e["average_processing_time"].is_u64(),
            "{e}"
        );
        assert!(e["last_error"].is_string());
        assert_eq!(e["num_requests"], 1);
    }
    let fail = stats["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "fail")
        .unwrap();
    assert_eq!(fail["num_errors"], 1);
    assert!(fail["last_error"].as_str().unwrap().contains("404"));
    // The typed discovery client and the registry see it too.
    let d = weir_service::Discovery::new(t.clone());
    assert!(
        d.ping(Some("adr"))
            .await
            .unwrap()
            .iter()
            .any(|p| p.id == svc.id())
    );
    let reg = weir_service::Registry::new(d, Duration::from_secs(5));
    reg.refresh().await.unwrap();
    let inst = reg.instances(Some("adr"));
    assert_eq!(inst.len(), 1);
    // A call addressed to that one instance.
    let direct = weir_service::Registry::direct_subject(&inst[0].ping.id, "ok");
    client
        .request(&ctx, &direct, Bytes::new(), false)
        .await
        .unwrap();
}

// --- typed contracts -----------------------------------------------------------

#[derive(Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct HelloRequest {
    #[schemars(length(min = 1, max = 20))]
    pub name: String,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct HelloReply {
    pub greeting: String,
}

pub struct Greeter;

#[weir_service::service(name = "greeter", version = "1.3.0", description = "says hello")]
impl Greeter {
    #[weir(idempotent)]
    async fn hello(&self, _ctx: Ctx, req: HelloRequest) -> Result<HelloReply, Problem> {
        Ok(HelloReply {
            greeting: format!("hello, {}", req.name),
        })
    }
}

mod v2 {
    use super::*;
    pub struct Greeter;
    #[weir_service::service(name = "greeter", version = "2.0.0")]
    impl Greeter {
        async fn hello(&self, _ctx: Ctx, req: HelloRequest) -> Result<HelloReply, Problem> {
            Ok(HelloReply { greeting: req.name })
        }
    }
}

mod loose {
    use super::*;
    /// A 1.x client whose request lacks `name`.
    #[derive(Debug, Serialize, Deserialize, JsonSchema)]
    pub struct Anonymous {
        #[serde(default)]
        pub nick: Option<String>,
    }
    pub struct Greeter;
    #[weir_service::service(name = "greeter", version = "1.0.0")]
    impl Greeter {
        async fn hello(&self, _ctx: Ctx, _req: Anonymous) -> Result<HelloReply, Problem> {
            Err(Problem::internal())
        }
    }
}

async fn contract_compatibility_checked_at_startup(env: Env) {
    let _svc = Greeter.builder().start(env.conn().await).await.unwrap();
    let client = env.client().await;
    let g = GreeterClient::connect(client.clone()).await.unwrap();
    let ctx = Ctx::with_timeout(Duration::from_secs(5));
    let r = g
        .hello(&ctx, HelloRequest { name: "ana".into() })
        .await
        .unwrap();
    assert_eq!(r.greeting, "hello, ana");
    // Payload validation against the published schema.
    let r = g
        .hello(
            &ctx,
            HelloRequest {
                name: String::new(),
            },
        )
        .await;
    assert!(
        matches!(&r, Err(ServiceError::Remote(p)) if p.code == ErrorCode::JsonInvalid),
        "{r:?}"
    );
    // Another major version: refused.
    let r = v2::GreeterClient::connect(client.clone()).await;
    assert!(
        matches!(&r, Err(ServiceError::Incompatible(m)) if m.contains("2.0.0")),
        "{r:?}"
    );
    // Same major, but a request the service's schema does not accept.
    let r = loose::GreeterClient::connect(client.clone()).await;
    assert!(
        matches!(&r, Err(ServiceError::Incompatible(m)) if m.contains("name")),
        "{r:?}"
    );
    // INFO carries the schemas and the hash.
    let info = weir_service::Discovery::new(client.transport().clone())
        .info_one("greeter")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        info.metadata["weir.contract.hash"],
        Greeter::contract().hash()
    );
    assert!(info.endpoints[0].metadata["weir.schema.request"].contains("minLength"));
}

async fn graceful_drain_finishes_in_flight(env: Env) {
    let started = Arc::new(AtomicUsize::new(0));
    let s = started.clone();
    let svc = ServiceBuilder::new("drainer", "1.0.0")
        .endpoint("op", move |_r: Request| {
            s.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok(Reply::new("done"))
            }
        })
        .start(env.conn().await)
        .await
        .unwrap();
    let client = env.client().await;
    let ctx = Ctx::with_timeout(Duration::from_secs(5));
    let calls: Vec<_> = (0..5)
        .map(|_| {
            let (c, ctx) = (client.clone(), ctx.clone());
            tokio::spawn(async move { c.request(&ctx, "drainer.op", Bytes::new(), false).await })
        })
        .collect();
    while started.load(Ordering::SeqCst) < 5 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(svc.in_flight(), 5);
    assert!(svc.drain().await, "drain timed out");
    assert!(!svc.is_ready());
    assert_eq!(svc.in_flight(), 0);
    for c in calls {
        assert_eq!(c.await.unwrap().unwrap(), Bytes::from("done"));
    }
    let r = client
        .request(&ctx, "drainer.op", Bytes::new(), false)
        .await;
    assert!(matches!(r, Err(ServiceError::NoResponders(_))), "{r:?}");
}

async fn exactly_one_timer_fails_over(env: Env) {
    let runs: Vec<Arc<AtomicUsize>> = (0..3).map(|_| Arc::default()).collect();
    let mut handles = Vec::new();
    for r in &runs {
        let r = r.clone();
        handles.push(
            ServiceBuilder::new("ticker", "1.0.0")
                .timer(
                    "tick",
                    Duration::from_millis(50),
                    TimerMode::ExactlyOne {
                        lease_ttl: Some(Duration::from_millis(400)),
                    },
                    move || {
                        let r = r.clone();
                        async move {
                            r.fetch_add(1, Ordering::SeqCst);
                        }
                    },
                )
                .start(env.conn().await)
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let counts: Vec<usize> = runs.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    let leaders: Vec<usize> = (0..3).filter(|&i| counts[i] > 0).collect();
    assert_eq!(
        leaders.len(),
        1,
        "more than one instance ran the timer: {counts:?}"
    );
    let leader = leaders[0];
    // Kill the leader (no drain: its lease is abandoned, not released).
    handles[leader].abort();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before: Vec<usize> = runs.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let after: Vec<usize> = runs.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    assert_eq!(
        after[leader], before[leader],
        "the killed leader kept running"
    );
    let new_leaders: Vec<usize> = (0..3)
        .filter(|&i| i != leader && after[i] > before[i])
        .collect();
    assert_eq!(
        new_leaders.len(),
        1,
        "no single successor: {before:?} -> {after:?}"
    );
    for h in &handles {
        h.drain().await;
    }
}

async fn events_fan_out_and_compete(env: Env) {
    let fan = Arc::new(AtomicUsize::new(0));
    let comp = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for _ in 0..2 {
        let (f, c) = (fan.clone(), comp.clone());
        handles.push(
            ServiceBuilder::new("audit", "1.0.0")
                .listener("all", "orders.>", Delivery::FanOut, move |_e| {
                    f.fetch_add(1, Ordering::SeqCst);
                    async { Ok(()) }
                })
                .listener("work", "orders.*.placed", Delivery::Competing, move |e| {
                    c.fetch_add(1, Ordering::SeqCst);
                    let ok =
                        e.json::<serde_json::Value>().is_ok() && e.ctx.correlation_id().is_some();
                    async move { if ok { Ok(()) } else { Err(Problem::internal()) } }
                })
                .start(env.conn().await)
                .await
                .unwrap(),
        );
    }
    let t = env.conn().await;
    let catcher = weir_testkit::EventCatcher::start(&t, "orders.>").await;
    let client = Client::new(t);
    let ctx = Ctx::new();
    for i in 0..10 {
        client
            .publish(
                &ctx,
                &format!("orders.{i}.placed"),
                &serde_json::json!({"order": i}),
            )
            .await
            .unwrap();
    }
    client.transport().flush().await.unwrap();
    catcher.wait_for(10, Duration::from_secs(5)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while (fan.load(Ordering::SeqCst) < 20 || comp.load(Ordering::SeqCst) < 10)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fan.load(Ordering::SeqCst), 20, "fan-out: every instance");
    assert_eq!(
        comp.load(Ordering::SeqCst),
        10,
        "competing: one instance each"
    );
    assert_eq!(catcher.json::<serde_json::Value>().len(), 10);
}

async fn max_payload_refused_before_send(env: Env) {
    let hits = Arc::new(AtomicUsize::new(0));
    let _svc = ServiceBuilder::new("big", "1.0.0")
        .endpoint("echo", echo(hits.clone()))
        .start(env.conn().await)
        .await
        .unwrap();
    let client = env.client().await;
    let max = client.transport().max_payload();
    let ctx = Ctx::with_timeout(Duration::from_secs(5));
    let r = client
        .request(&ctx, "big.echo", Bytes::from(vec![b'x'; max + 1]), false)
        .await;
    assert!(
        matches!(r, Err(ServiceError::PayloadTooLarge { max: m, .. }) if m == max),
        "{r:?}"
    );
    let r = client.publish(&ctx, "big.event", &"x".repeat(max)).await;
    assert!(
        matches!(r, Err(ServiceError::PayloadTooLarge { .. })),
        "{r:?}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    client
        .request(&ctx, "big.echo", Bytes::from(vec![b'x'; max / 2]), false)
        .await
        .unwrap();
}

const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

fn token(sub: &str) -> String {
    weir_testkit::jwt::hs256(
        SECRET.as_bytes(),
        serde_json::json!({"sub": sub, "tenant": "acme"}),
    )
}

async fn auth_propagates_and_rate_limits_per_caller(env: Env) {
    let cfg: weir_layer::auth::jwt::JwtConfig =
        serde_json::from_value(serde_json::json!({"hs256_secret": SECRET})).unwrap();
    let verifier = Arc::new(
        weir_layer::auth::jwt::JwtVerifier::new(
            cfg,
            Arc::default(),
            "default",
            weir_layer::clock::system(),
        )
        .unwrap(),
    );
    let _back = ServiceBuilder::new("vault", "1.0.0")
        .layer(AuthLayer {
            verifier: verifier.clone(),
            required: true,
        })
        .layer(RateLimitLayer {
            // Two calls, then one more every 30 s: no refill during the test.
            limit: weir_layer::ratelimit::gcra::Limit {
                requests: 2,
                window_secs: 60,
                burst: Some(2),
            },
            ..RateLimitLayer::per_second(1)
        })
        .endpoint("whoami", |r: Request| async move {
            let p = r.ctx.principal().cloned().ok_or_else(Problem::internal)?;
            Ok(Reply::new(format!("{}@{}", p.subject, p.tenant)))
        })
        .start(env.conn().await)
        .await
        .unwrap();
    let fc = env.client().await;
    let _front = ServiceBuilder::new("portal", "1.0.0")
        .endpoint("me", move |r: Request| {
            let fc = fc.clone();
            async move {
                Ok(Reply::new(
                    fc.request(&r.ctx, "vault.whoami", r.payload, false).await?,
                ))
            }
        })
        .start(env.conn().await)
        .await
        .unwrap();
    let client = Client::builder(env.conn().await).retry(None).build();
    let ctx = Ctx::with_timeout(Duration::from_secs(5));
    // No token: refused by the inner hop.
    let r = client.request(&ctx, "portal.me", Bytes::new(), false).await;
    assert!(
        matches!(&r, Err(ServiceError::Remote(p)) if p.code == ErrorCode::Unauthorized),
        "{r:?}"
    );
    // The token travels through the front service to the back one.
    let ana = ctx.clone().token(token("ana"));
    let r = client
        .request(&ana, "portal.me", Bytes::new(), false)
        .await
        .unwrap();
    assert_eq!(r, Bytes::from("ana@acme"));
    client
        .request(&ana, "portal.me", Bytes::new(), false)
        .await
        .unwrap();
    let r = client.request(&ana, "portal.me", Bytes::new(), false).await;
    assert!(
        matches!(&r, Err(ServiceError::Remote(p)) if p.code == ErrorCode::RateLimited),
        "{r:?}"
    );
    // Another caller has its own budget.
    let bo = ctx.clone().token(token("bo"));
    client
        .request(&bo, "portal.me", Bytes::new(), false)
        .await
        .unwrap();
    // A forged token is refused.
    let forged = ctx.clone().token(format!("{}x", token("eve")));
    let r = client
        .request(&forged, "portal.me", Bytes::new(), false)
        .await;
    assert!(
        matches!(&r, Err(ServiceError::Remote(p)) if p.code == ErrorCode::Unauthorized),
        "{r:?}"
    );
}
