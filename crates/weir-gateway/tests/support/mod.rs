//! Shared by the scenario files: a real nats-server, a small service built
//! with `weir_service`, and the gateway on 127.0.0.1:0.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use weir_gateway::config::{EventsConfig, SubscribeRule};
use weir_gateway::{Gateway, GatewayConfig};
use weir_service::{Ctx, ErrorCode, Problem, ServiceContract, ServiceHandle, Transport};
use weir_testkit::NatsServer;

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct DivideRequest {
    pub a: i64,
    pub b: i64,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct DivideReply {
    pub quotient: i64,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct SlowRequest {
    pub millis: u64,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Empty {}

#[derive(Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct WhoAmI {
    pub tenant: Option<String>,
    pub token_forwarded: bool,
    pub correlation_id: Option<String>,
    pub deadline_ms: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct LookupRequest {
    pub id: String,
    #[serde(default)]
    pub verbose: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct LookupReply {
    pub id: String,
    pub verbose: Option<String>,
}

pub struct Calc;

#[weir_service::service(
    name = "calc",
    version = "1.2.0",
    description = "Arithmetic for the gateway tests"
)]
impl Calc {
    #[weir(idempotent)]
    async fn divide(&self, _ctx: Ctx, req: DivideRequest) -> Result<DivideReply, Problem> {
        if req.b == 0 {
            return Err(Problem::new(ErrorCode::LimitInvalid, "division by zero"));
        }
        Ok(DivideReply {
            quotient: req.a / req.b,
        })
    }

    async fn slow(&self, _ctx: Ctx, req: SlowRequest) -> Result<Empty, Problem> {
        tokio::time::sleep(Duration::from_millis(req.millis)).await;
        Ok(Empty {})
    }

    async fn whoami(&self, ctx: Ctx, _req: Empty) -> Result<WhoAmI, Problem> {
        Ok(WhoAmI {
            tenant: ctx.tenant_id().map(str::to_owned),
            token_forwarded: ctx.bearer_token().is_some(),
            correlation_id: ctx.correlation_id().map(str::to_owned),
            deadline_ms: ctx.remaining().map(|d| d.as_millis() as u64),
        })
    }

    async fn lookup(&self, _ctx: Ctx, req: LookupRequest) -> Result<LookupReply, Problem> {
        Ok(LookupReply {
            id: req.id,
            verbose: req.verbose,
        })
    }
}

/// A running environment: keep it alive for the test's duration.
pub struct Env {
    pub nats: NatsServer,
    pub bus: Arc<dyn Transport>,
    pub service: ServiceHandle,
    pub gateway: Gateway,
    pub base: String,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// nats-server, the calc service, and a gateway with `cfg` and `layer`.
pub async fn start(cfg: GatewayConfig, layer: weir_layer::LayerConfig) -> Env {
    start_until(cfg, layer, std::future::pending()).await
}

/// Same, serving until `shutdown` completes (then the gateway drains).
pub async fn start_until(
    cfg: GatewayConfig,
    layer: weir_layer::LayerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Env {
    let nats = NatsServer::start();
    let bus = nats.connect().await;
    let service = Calc.builder().start(bus.clone()).await.unwrap();
    let gateway = Gateway::builder(nats.connect().await, cfg)
        .layer_config(&layer)
        .unwrap()
        .build()
        .await
        .unwrap();
    // The service is up before the gateway's first discovery, but be
    // explicit: the catalog must know it.
    gateway.refresh().await.unwrap();
    assert!(gateway.catalog().endpoint("calc", "divide").is_some());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let g = gateway.clone();
    let server = tokio::spawn(async move {
        g.serve(listener, shutdown).await.unwrap();
    });
    Env {
        nats,
        bus,
        service,
        gateway,
        base,
        server,
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::new()
}

pub const SECRET: &str = "a-gateway-test-secret-long-enough-for-hs256";

/// A JWT for `sub` in `tenant` with `roles`, signed with [`SECRET`].
pub fn token(sub: &str, tenant: &str, roles: &[&str]) -> String {
    weir_testkit::jwt::hs256(
        SECRET.as_bytes(),
        serde_json::json!({"sub": sub, "tenant": tenant, "roles": roles}),
    )
}

/// `[auth]` requiring JWTs signed with [`SECRET`].
pub fn jwt_layer() -> weir_layer::LayerConfig {
    toml_layer(&format!(
        "[auth]\nmode = \"required\"\n[auth.jwt]\nhs256_secret = \"{SECRET}\"\n[authz.roles]\nclerk = [\"read\"]\nadmin = [\"admin\"]\n"
    ))
}

/// Events with tenancy on: `orders.>` (in the caller's tenant) for the
/// `clerk` role only.
pub fn orders_for_clerks() -> GatewayConfig {
    GatewayConfig {
        events: EventsConfig {
            tenancy: true,
            rules: vec![SubscribeRule {
                subjects: "orders.>".into(),
                roles: vec!["clerk".into()],
                scopes: vec![],
            }],
        },
        ..GatewayConfig::default()
    }
}

pub fn toml_layer(s: &str) -> weir_layer::LayerConfig {
    toml::from_str(s).unwrap()
}

/// The problem body of a response, after checking its media type.
pub async fn problem(resp: reqwest::Response) -> serde_json::Value {
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(ct, "application/problem+json");
    resp.json().await.unwrap()
}
