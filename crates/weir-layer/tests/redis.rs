//! The Redis backend against a real redis-server on a random port: two
//! limiter instances share one limit atomically; Redis going away falls
//! back as configured and is reported; Redis coming back is picked up.
#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_layer::AuthMethod;
use weir_layer::Principal;
use weir_layer::ratelimit::{
    BackendKind, FailMode, KeyBy, Limit, RateLimitConfig, RateLimiter, RequestInfo, Rule, Verdict,
};
use weir_layer::secret::Secret;

/// A redis-server child process (weir-testkit's `RedisServer` can replace
/// this once it exists).
struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    fn binary() -> Option<String> {
        if let Ok(b) = std::env::var("WEIR_REDIS_SERVER") {
            return Some(b);
        }
        let found = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        found.then(|| "redis-server".to_owned())
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn start_on(bin: &str, port: u16) -> RedisServer {
        let child = Command::new(bin)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        RedisServer { child, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn limiter(url: &str, prefix: &str, fail_mode: FailMode) -> Arc<RateLimiter> {
    let rule = Rule {
        name: "shared".into(),
        methods: vec![],
        path_prefix: "/".into(),
        key: KeyBy::Auto,
        cost: 1,
        limits: [(
            "default".to_owned(),
            Limit {
                requests: 10,
                window_secs: 60,
                burst: None,
            },
        )]
        .into_iter()
        .collect(),
    };
    Arc::new(
        RateLimiter::new(
            RateLimitConfig {
                enabled: true,
                backend: BackendKind::Redis,
                redis_url: Some(Secret::new(url)),
                redis_key_prefix: prefix.into(),
                redis_timeout_ms: 500,
                redis_retry_ms: 100,
                fail_mode,
                rules: vec![rule],
                ..Default::default()
            },
            weir_layer::clock::system(),
        )
        .unwrap(),
    )
}

fn user(sub: &str) -> Principal {
    Principal {
        auth_method: AuthMethod::Jwt,
        ..Principal::new(sub, "acme")
    }
}

async fn allowed(l: &RateLimiter, p: &Principal) -> Option<bool> {
    let p = std::sync::Arc::new(p.clone());
    match l
        .check(RequestInfo {
            method: &http::Method::GET,
            path: "/v1/stream/x",
            principal: Some(&p),
            ip: None,
        })
        .await
    {
        Verdict::Allowed(_) => Some(true),
        Verdict::Limited(_) => Some(false),
        Verdict::Unavailable => None,
    }
}

async fn eval_calls(url: &str) -> u64 {
    let client = redis::Client::open(url).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut c)
        .await
        .unwrap();
    // Successful calls: `calls` minus `failed_calls` (the first EVALSHA on a
    // fresh server fails with NOSCRIPT and is retried as EVAL).
    let field = |l: &str, name: &str| -> u64 {
        l.split([':', ','])
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
            .unwrap_or(0)
    };
    info.lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .map(|l| field(l, "calls") - field(l, "failed_calls"))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_limit_and_fall_back_when_redis_is_gone() {
    // Never skipped: scripts/test installs redis-server when it is missing.
    let bin = RedisServer::binary()
        .expect("no redis-server: set WEIR_REDIS_SERVER or run scripts/test, which installs it");
    weir_layer::metrics::install().unwrap();
    let mut server = RedisServer::start_on(&bin, RedisServer::free_port());
    let prefix = format!("t{}:", std::process::id());
    let (a, b) = (
        limiter(&server.url(), &prefix, FailMode::Local),
        limiter(&server.url(), &prefix, FailMode::Local),
    );
    let alice = user("alice");

    // Sequential, alternating between the two nodes: 10 of 12 pass.
    let mut passed = 0;
    for i in 0..12 {
        let node = if i % 2 == 0 { &a } else { &b };
        if allowed(node, &alice).await.unwrap() {
            passed += 1;
        }
    }
    assert_eq!(passed, 10);
    // One script call per check, nothing else.
    assert_eq!(eval_calls(&server.url()).await, 12);

    // Concurrent, 40 requests of a fresh principal over both nodes: exactly 10 pass.
    let bob = user("bob");
    let mut tasks = Vec::new();
    for i in 0..40 {
        let node = if i % 2 == 0 { a.clone() } else { b.clone() };
        let bob = bob.clone();
        tasks.push(tokio::spawn(
            async move { allowed(&node, &bob).await.unwrap() },
        ));
    }
    let mut passed = 0;
    for t in tasks {
        passed += usize::from(t.await.unwrap());
    }
    assert_eq!(passed, 10, "the limit is shared exactly across nodes");
    assert!(a.health().healthy && b.health().healthy);

    // Redis goes away.
    let port = server.port;
    server.stop();
    let closed = limiter(
        &format!("redis://127.0.0.1:{port}/"),
        &prefix,
        FailMode::Closed,
    );
    let open = limiter(
        &format!("redis://127.0.0.1:{port}/"),
        &prefix,
        FailMode::Open,
    );
    // fail_mode = local: per-node limits (alice gets a fresh local budget of 10 on a).
    let mut local_passed = 0;
    for _ in 0..12 {
        if allowed(&a, &alice).await.unwrap() {
            local_passed += 1;
        }
    }
    assert_eq!(local_passed, 10, "local limits apply during the outage");
    let h = a.health();
    assert!(!h.healthy && h.last_error.is_some(), "{h:?}");
    assert_eq!(allowed(&closed, &alice).await, None, "fail closed refuses");
    assert_eq!(allowed(&open, &alice).await, Some(true), "fail open allows");
    let text = weir_layer::metrics::render();
    assert!(
        text.contains("weir_ratelimit_backend_up{backend=\"redis\"} 0"),
        "{text}"
    );
    assert!(text.contains("weir_ratelimit_fallbacks_total{mode=\"local\"}"));
    assert!(text.contains("weir_ratelimit_fallbacks_total{mode=\"closed\"}"));

    // Redis comes back on the same port: the limiter reconnects by itself.
    let server = RedisServer::start_on(&bin, port);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let _ = allowed(&a, &user("carol")).await;
        if a.health().healthy {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "did not reconnect: {:?}",
            a.health()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(eval_calls(&server.url()).await >= 1);
}
