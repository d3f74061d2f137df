//! `weir services`, `weir call SERVICE.METHOD JSON`, `weir new service NAME`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use weir_service::transport::nats::ConnectConfig;
use weir_service::{Client, Ctx, Discovery, ServiceError, Transport};

/// How to reach NATS (shared by `services` and `call`).
#[derive(Args, Debug, Clone)]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated (`--nats` like the other commands).
    #[arg(
        long,
        visible_alias = "nats",
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub server: String,
    /// A `.creds` file (JWT + NKey seed).
    #[arg(long, env = "NATS_CREDS")]
    pub creds: Option<PathBuf>,
    #[arg(long, env = "NATS_USER")]
    pub user: Option<String>,
    #[arg(long, env = "NATS_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    #[arg(long, env = "NATS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// An NKey seed.
    #[arg(long, env = "NATS_NKEY", hide_env_values = true)]
    pub nkey: Option<String>,
    /// Extra root CA (PEM) for TLS.
    #[arg(long, env = "NATS_CA")]
    pub tls_ca: Option<PathBuf>,
}

impl NatsArgs {
    async fn connect(&self) -> anyhow::Result<Arc<dyn Transport>> {
        let cfg = ConnectConfig {
            servers: self.server.clone(),
            name: Some("weir-cli".into()),
            user: self.user.clone(),
            password: self.password.clone(),
            token: self.token.clone(),
            nkey_seed: self.nkey.clone(),
            creds_file: self.creds.clone(),
            tls_ca: self.tls_ca.clone(),
            ..ConnectConfig::default()
        };
        let t = tokio::time::timeout(Duration::from_secs(10), cfg.connect())
            .await
            .context("timed out connecting to NATS")??;
        Ok(Arc::new(t))
    }
}

#[derive(Args, Debug)]
pub struct ServicesArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Only this service.
    pub name: Option<String>,
    /// Print the raw `$SRV.STATS` answers as JSON.
    #[arg(long)]
    pub json: bool,
    /// How long to wait for answers.
    #[arg(long, default_value = "1000")]
    pub timeout_ms: u64,
}

#[derive(Args, Debug)]
pub struct CallArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// `SERVICE.METHOD` (the endpoint's subject).
    pub target: String,
    /// The JSON request body (default `null`).
    #[arg(default_value = "null")]
    pub body: String,
    /// Deadline of the call.
    #[arg(long, default_value = "5000")]
    pub timeout_ms: u64,
    /// A bearer token (JWT) to forward.
    #[arg(long, env = "WEIR_TOKEN", hide_env_values = true)]
    pub bearer: Option<String>,
    /// Mark the call idempotent (retried on transient errors).
    #[arg(long)]
    pub idempotent: bool,
}

#[derive(Subcommand, Debug)]
pub enum NewCmd {
    /// Scaffold a service crate (service, typed client, test).
    Service(NewServiceArgs),
}

#[derive(Args, Debug)]
pub struct NewServiceArgs {
    /// The crate and service name (`[a-z][a-z0-9_-]*`).
    pub name: String,
    /// Where to create it (default `./NAME`).
    #[arg(long)]
    pub path: Option<PathBuf>,
    /// The Weir checkout whose crates the new crate depends on.
    #[arg(long, env = "WEIR_SOURCE")]
    pub weir_path: Option<PathBuf>,
}

pub fn services(a: ServicesArgs) -> anyhow::Result<()> {
    crate::runtime()?.block_on(async {
        let t = a.nats.connect().await?;
        let mut d = Discovery::new(t);
        d.total = Duration::from_millis(a.timeout_ms);
        d.stall = Duration::from_millis(300.min(a.timeout_ms));
        let mut stats = d.stats(a.name.as_deref()).await?;
        stats.sort_by(|x, y| (&x.name, &x.id).cmp(&(&y.name, &y.id)));
        if a.json {
            println!("{}", serde_json::to_string_pretty(&stats)?);
            return Ok(());
        }
        if stats.is_empty() {
            println!("no services answered");
            return Ok(());
        }
        println!(
            "{:<20} {:<10} {:<24} {:>9} {:>7} {:>10}  ENDPOINTS",
            "NAME", "VERSION", "ID", "REQUESTS", "ERRORS", "AVG"
        );
        for s in &stats {
            let reqs: u64 = s.endpoints.iter().map(|e| e.num_requests).sum();
            let errs: u64 = s.endpoints.iter().map(|e| e.num_errors).sum();
            let nanos: u64 = s.endpoints.iter().map(|e| e.processing_time).sum();
            let avg = Duration::from_nanos(nanos.checked_div(reqs).unwrap_or(0));
            let eps: Vec<&str> = s.endpoints.iter().map(|e| e.subject.as_str()).collect();
            println!(
                "{:<20} {:<10} {:<24} {:>9} {:>7} {:>10}  {}",
                s.name,
                s.version,
                s.id,
                reqs,
                errs,
                format!("{avg:.1?}"),
                eps.join(" ")
            );
        }
        Ok(())
    })
}

pub fn call(a: CallArgs) -> anyhow::Result<()> {
    let body: serde_json::Value =
        serde_json::from_str(&a.body).context("the request body is not valid JSON")?;
    crate::runtime()?.block_on(async {
        let t = a.nats.connect().await?;
        let client = Client::builder(t).without_metrics().build();
        let mut ctx = Ctx::with_timeout(Duration::from_millis(a.timeout_ms));
        if let Some(tok) = &a.bearer {
            ctx = ctx.token(tok.as_str());
        }
        let payload = serde_json::to_vec(&body)?;
        match client
            .request(&ctx, &a.target, payload.into(), a.idempotent)
            .await
        {
            Ok(reply) => {
                match serde_json::from_slice::<serde_json::Value>(&reply) {
                    Ok(v) => println!("{}", serde_json::to_string_pretty(&v)?),
                    Err(_) => println!("{}", String::from_utf8_lossy(&reply)),
                }
                Ok(())
            }
            Err(ServiceError::Remote(p)) => {
                eprintln!("{}", serde_json::to_string_pretty(&p)?);
                bail!("{} answered {} {}", a.target, p.status, p.code)
            }
            Err(e) => bail!("{}: {e}", a.target),
        }
    })
}

pub fn new(cmd: NewCmd) -> anyhow::Result<()> {
    match cmd {
        NewCmd::Service(a) => {
            let dir = a.path.clone().unwrap_or_else(|| PathBuf::from(&a.name));
            let weir = match a.weir_path {
                Some(p) => p,
                None => default_weir_path()?,
            };
            scaffold(&a.name, &dir, &weir)?;
            println!(
                "created {} (cargo test --manifest-path {}/Cargo.toml)",
                dir.display(),
                dir.display()
            );
            Ok(())
        }
    }
}

/// The checkout this binary was built from.
fn default_weir_path() -> anyhow::Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    if root.join("crates/weir-service/Cargo.toml").is_file() {
        return Ok(root.canonicalize()?);
    }
    bail!("cannot find the Weir sources; pass --weir-path /path/to/weir")
}

fn valid_crate_name(n: &str) -> bool {
    n.starts_with(|c: char| c.is_ascii_lowercase())
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// Writes a service crate named `name` into `dir`, depending on the Weir
/// crates under `weir`. Copies Weir's `Cargo.lock` so the new crate builds
/// with the same dependency versions (and reuses a shared target dir).
pub fn scaffold(name: &str, dir: &Path, weir: &Path) -> anyhow::Result<()> {
    if !valid_crate_name(name) {
        bail!("`{name}` is not a valid name: use [a-z][a-z0-9_-]*");
    }
    if dir.exists() && dir.read_dir()?.next().is_some() {
        bail!("{} exists and is not empty", dir.display());
    }
    let weir = weir.canonicalize()?;
    let ident = name.replace('-', "_");
    let ty: String = ident
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    let fill = |s: &str| {
        s.replace("{name}", name)
            .replace("{ident}", &ident)
            .replace("{Type}", &ty)
            .replace("{weir}", &weir.display().to_string())
    };
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::create_dir_all(dir.join("tests"))?;
    std::fs::write(dir.join("Cargo.toml"), fill(CARGO_TOML))?;
    std::fs::write(dir.join("src/lib.rs"), fill(LIB_RS))?;
    std::fs::write(dir.join("tests/service.rs"), fill(TEST_RS))?;
    std::fs::write(dir.join(".gitignore"), "/target\n")?;
    let lock = weir.join("Cargo.lock");
    if lock.is_file() {
        std::fs::copy(lock, dir.join("Cargo.lock"))?;
    }
    Ok(())
}

const CARGO_TOML: &str = r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

# A standalone crate, not a member of an enclosing workspace.
[workspace]

[dependencies]
schemars = { version = "1", default-features = false, features = ["derive", "std"] }
serde = { version = "1", features = ["derive"] }
# The feature set Weir's workspace uses, so a shared target dir reuses its builds.
tokio = { version = "1", features = ["rt-multi-thread", "macros", "sync", "time", "net", "signal", "io-util", "fs", "process"] }
weir-service = { path = "{weir}/crates/weir-service" }

[dev-dependencies]
tokio = { version = "1", features = ["test-util"] }
weir-testkit = { path = "{weir}/crates/weir-testkit" }

# Weir's dev profile (same reason).
[profile.dev]
debug = "line-tables-only"

[profile.dev.package."*"]
debug = false

[profile.dev.package.weir-service]
debug = "line-tables-only"

[profile.dev.package.weir-service-macros]
debug = "line-tables-only"

[profile.dev.package.weir-layer]
debug = "line-tables-only"

[profile.dev.package.weir-testkit]
debug = "line-tables-only"
"#;

const LIB_RS: &str = r#"//! The `{name}` service.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use weir_service::{Ctx, Problem};

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct PingRequest {
    #[schemars(length(max = 256))]
    pub message: String,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct PingReply {
    pub message: String,
}

#[derive(Debug, Default)]
pub struct {Type};

#[weir_service::service(name = "{name}", version = "0.1.0")]
impl {Type} {
    #[weir(idempotent)]
    async fn ping(&self, _ctx: Ctx, req: PingRequest) -> Result<PingReply, Problem> {
        Ok(PingReply { message: req.message })
    }
}
"#;

const TEST_RS: &str = r#"use std::time::Duration;

use weir_service::{Client, Ctx, ServiceContract};
use {ident}::{PingReply, PingRequest, {Type}, {Type}Client};

#[tokio::test(start_paused = true)]
async fn ping_answers() {
    let bus = weir_testkit::in_process();
    let _svc = {Type}.builder().start(bus.clone()).await.unwrap();
    let client = {Type}Client::connect(Client::new(bus)).await.unwrap();
    let ctx = Ctx::with_timeout(Duration::from_secs(1));
    let reply = client.ping(&ctx, PingRequest { message: "hi".into() }).await.unwrap();
    assert_eq!(reply, PingReply { message: "hi".into() });
}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_bad_names_and_non_empty_dirs() {
        let d = tempfile::tempdir().unwrap();
        let weir = default_weir_path().unwrap();
        assert!(scaffold("Bad Name", &d.path().join("x"), &weir).is_err());
        std::fs::write(d.path().join("f"), "x").unwrap();
        assert!(scaffold("ok", d.path(), &weir).is_err());
    }

    fn nats_args(url: &str) -> NatsArgs {
        NatsArgs {
            server: url.to_owned(),
            creds: None,
            user: None,
            password: None,
            token: None,
            nkey: None,
            tls_ca: None,
        }
    }

    /// `weir services` and `weir call` against a real nats-server.
    #[test]
    fn services_and_call_against_nats() {
        let server = weir_testkit::NatsServer::start();
        let url = server.url().to_owned();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let svc_url = url.clone();
        let svc = std::thread::spawn(move || {
            crate::runtime().unwrap().block_on(async move {
                let t = weir_service::NatsTransport::connect(&svc_url)
                    .await
                    .unwrap();
                let h = weir_service::ServiceBuilder::new("echo", "1.0.0")
                    .endpoint("echo", |r: weir_service::Request| async move {
                        if r.payload.as_ref() == b"null" {
                            return Err(weir_service::Problem::new(
                                weir_service::ErrorCode::NotFound,
                                "nothing to echo",
                            ));
                        }
                        Ok(weir_service::Reply::new(r.payload))
                    })
                    .start(Arc::new(t))
                    .await
                    .unwrap();
                ready_tx.send(()).unwrap();
                let _ = stop_rx.await;
                h.drain().await;
            })
        });
        ready_rx.recv().unwrap();
        services(ServicesArgs {
            nats: nats_args(&url),
            name: None,
            json: false,
            timeout_ms: 500,
        })
        .unwrap();
        let args = |body: &str| CallArgs {
            nats: nats_args(&url),
            target: "echo.echo".into(),
            body: body.into(),
            timeout_ms: 2000,
            bearer: None,
            idempotent: false,
        };
        call(args(r#"{"hi":1}"#)).unwrap();
        let err = call(args("null")).unwrap_err().to_string();
        assert!(err.contains("404 not_found"), "{err}");
        assert!(call(args("not json")).is_err());
        stop_tx.send(()).unwrap();
        svc.join().unwrap();
    }

    /// The scaffolded crate builds and passes its test, in the workspace's
    /// target dir (so the Weir crates and their dependencies are reused).
    #[test]
    fn scaffolded_service_builds_and_passes_its_test() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("inventory-svc");
        let weir = default_weir_path().unwrap();
        scaffold("inventory-svc", &dir, &weir).unwrap();
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| weir.join("target"));
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = std::process::Command::new(cargo)
            .args(["test", "--quiet", "--manifest-path"])
            .arg(dir.join("Cargo.toml"))
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .unwrap();
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "scaffolded crate failed:\n{text}");
        assert!(text.contains("1 passed"), "{text}");
    }
}
