//! Starts the whole shop in one process: the four services, the saga
//! orchestrator, the gateway, and (given a Weir stream URL) the bridge that appends
//! `order.>` to it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use weir_bridge::{BatchConfig, BridgeConfig, Mapping, WeirAuth};
use weir_gateway::config::{EventsConfig, SubscribeRule};
use weir_gateway::{Gateway, GatewayConfig};
use weir_saga::{Orchestrator, Registry, SagaStore};
use weir_service::durable::{DurablePublisher, Family};
use weir_service::{Client, NatsTransport, ServiceContract, ServiceHandle, Transport};

use crate::{Inventory, Notifications, Orders, Users, orders};

/// Where the shop's dependencies are.
#[derive(Clone, Debug)]
pub struct ShopConfig {
    pub nats_url: String,
    /// PostgreSQL database for the saga tables (created if missing).
    pub database_url: String,
    /// Weir stream the bridge appends `order.>` to; no bridge when `None`.
    pub bridge_stream: Option<String>,
    pub bridge_auth: WeirAuth,
    /// Where the gateway serves the services over HTTP (SSE, WebSocket,
    /// OpenAPI); no gateway when `None`.
    pub gateway: Option<std::net::SocketAddr>,
}

/// The gateway: every service endpoint as `POST /api/{service}/{endpoint}`,
/// `GET /openapi.json`, and the order events over SSE (`GET
/// /events?subject=order.>`) and WebSocket, behind the production layer
/// (here with its defaults: no authentication).
async fn start_gateway(
    transport: &Arc<dyn Transport>,
    addr: std::net::SocketAddr,
    mut stop: watch::Receiver<bool>,
    tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>,
) -> anyhow::Result<std::net::SocketAddr> {
    let config = GatewayConfig {
        events: EventsConfig {
            rules: vec![SubscribeRule {
                subjects: "order.>".into(),
                roles: Vec::new(),
                scopes: Vec::new(),
            }],
            ..EventsConfig::default()
        },
        ..GatewayConfig::default()
    };
    let gateway = Gateway::builder(transport.clone(), config)
        .layer_config(&weir_layer::LayerConfig::default())?
        .build()
        .await?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the gateway to {addr}"))?;
    let local = listener.local_addr()?;
    tasks.spawn(async move {
        gateway
            .serve(listener, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
            .context("gateway")
    });
    tracing::info!(addr = %local, "gateway listening");
    Ok(local)
}

/// The running shop.
pub struct Shop {
    pub services: Vec<ServiceHandle>,
    pub orchestrator: Orchestrator,
    pub transport: Arc<dyn Transport>,
    /// The gateway's address once it listens.
    pub gateway: Option<std::net::SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: tokio::task::JoinSet<anyhow::Result<()>>,
}

impl Shop {
    pub async fn start(cfg: ShopConfig) -> anyhow::Result<Shop> {
        let nats = NatsTransport::connect(&cfg.nats_url)
            .await
            .with_context(|| format!("connecting to NATS at {}", cfg.nats_url))?;
        let js = nats.jetstream().clone();
        let transport: Arc<dyn Transport> = Arc::new(nats);

        // The event family first: the bridge then reads the same JetStream
        // stream instead of creating one of its own. It is `order`, not
        // `orders`: a family captures `{name}.>`, and `orders.>` would
        // swallow the orders service's requests (`orders.place`).
        let family = Family::new("order");
        family
            .ensure(&js)
            .await
            .context("creating the orders event stream")?;

        crate::db::ensure_database(&cfg.database_url).await?;
        let store = SagaStore::new(&cfg.database_url).context("saga store")?;
        store.migrate().await.context("saga migrations")?;
        let client = Client::new(transport.clone());
        let saga = orders::saga(client, DurablePublisher::new(js), store.clone());
        let orchestrator = Orchestrator::builder(store, Registry::new().with(saga)?).build();

        let mut services = Vec::new();
        for b in [
            Users::default().builder(),
            Inventory::default().builder(),
            Notifications::default().with_consumer(family),
            Orders {
                orchestrator: orchestrator.clone(),
                wait: Duration::from_secs(20),
            }
            .builder(),
        ] {
            services.push(b.start(transport.clone()).await?);
        }

        let (stop, rx) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        {
            let (orch, mut rx) = (orchestrator.clone(), rx.clone());
            tasks.spawn(async move {
                orch.run(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await
                .context("saga orchestrator")
            });
        }
        if let Some(url) = &cfg.bridge_stream {
            let config = BridgeConfig {
                nats_url: cfg.nats_url.clone(),
                mappings: vec![Mapping::new("shop_orders", "order.>", url)],
                auth: cfg.bridge_auth.clone(),
                batch: BatchConfig::default(),
            };
            tasks.spawn(async move { weir_bridge::run(config, rx).await.context("bridge") });
        }
        let gateway = match cfg.gateway {
            Some(addr) => {
                Some(start_gateway(&transport, addr, stop.subscribe(), &mut tasks).await?)
            }
            None => None,
        };
        Ok(Shop {
            services,
            orchestrator,
            transport,
            gateway,
            stop,
            tasks,
        })
    }

    /// Waits until a background task (orchestrator, bridge) fails.
    pub async fn failed(&mut self) -> anyhow::Error {
        while let Some(r) = self.tasks.join_next().await {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return e,
                Err(e) => return anyhow::anyhow!("task panicked: {e}"),
            }
        }
        std::future::pending().await
    }

    /// Drains the services, lets the orchestrator and the bridge finish
    /// what they hold, and waits for them.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        for s in &self.services {
            s.drain().await;
        }
        let _ = self.stop.send(true);
        while let Some(r) = self.tasks.join_next().await {
            r??;
        }
        Ok(())
    }
}
