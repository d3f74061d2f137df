//! The NATS micro protocol (ADR-32): `$SRV.PING|INFO|STATS` responses, the
//! discovery client and a TTL registry of live instances.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::error::ServiceError;
use crate::transport::{Transport, TransportError, request_many};

pub const PING_TYPE: &str = "io.nats.micro.v1.ping_response";
pub const INFO_TYPE: &str = "io.nats.micro.v1.info_response";
pub const STATS_TYPE: &str = "io.nats.micro.v1.stats_response";
/// The discovery prefix.
pub const SRV: &str = "$SRV";

/// The verbs of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Ping,
    Info,
    Stats,
}

impl Verb {
    pub const ALL: [Verb; 3] = [Verb::Ping, Verb::Info, Verb::Stats];
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Ping => "PING",
            Verb::Info => "INFO",
            Verb::Stats => "STATS",
        }
    }
}

/// `$SRV.VERB`, `$SRV.VERB.name` or `$SRV.VERB.name.id`.
pub fn subject(verb: Verb, name: Option<&str>, id: Option<&str>) -> String {
    match (name, id) {
        (Some(n), Some(i)) => format!("{SRV}.{}.{n}.{i}", verb.as_str()),
        (Some(n), None) => format!("{SRV}.{}.{n}", verb.as_str()),
        _ => format!("{SRV}.{}", verb.as_str()),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingResponse {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub id: String,
    pub version: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointInfo {
    pub name: String,
    pub subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_group: Option<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InfoResponse {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub id: String,
    pub version: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub endpoints: Vec<EndpointInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointStats {
    pub name: String,
    pub subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_group: Option<String>,
    pub num_requests: u64,
    pub num_errors: u64,
    /// The last error as `"{code}:{description}"`, `""` when none.
    #[serde(default)]
    pub last_error: String,
    /// Total handler time, nanoseconds.
    pub processing_time: u64,
    /// Mean handler time, nanoseconds.
    pub average_processing_time: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsResponse {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub id: String,
    pub version: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// RFC 3339 start time (UTC).
    pub started: String,
    #[serde(default)]
    pub endpoints: Vec<EndpointStats>,
}

/// Asks every matching instance and collects answers: stops after `total`,
/// or when no answer came for `stall` after the first one.
#[derive(Clone)]
pub struct Discovery {
    transport: Arc<dyn Transport>,
    pub total: Duration,
    pub stall: Duration,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("total", &self.total)
            .field("stall", &self.stall)
            .finish()
    }
}

impl Discovery {
    pub fn new(transport: Arc<dyn Transport>) -> Discovery {
        Discovery {
            transport,
            total: Duration::from_secs(2),
            stall: Duration::from_millis(100),
        }
    }

    async fn ask<T: serde::de::DeserializeOwned>(
        &self,
        verb: Verb,
        name: Option<&str>,
        id: Option<&str>,
    ) -> Result<Vec<T>, ServiceError> {
        let msgs = request_many(
            &*self.transport,
            subject(verb, name, id),
            None,
            Bytes::new(),
            self.total,
            self.stall,
            None,
        )
        .await
        .map_err(|e| match e {
            TransportError::NoResponders => ServiceError::NoResponders(verb.as_str().into()),
            other => ServiceError::Transport(other.to_string()),
        })?;
        Ok(msgs
            .iter()
            .filter_map(|m| match serde_json::from_slice(&m.payload) {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::debug!(error = %e, "ignoring malformed $SRV answer");
                    None
                }
            })
            .collect())
    }

    pub async fn ping(&self, name: Option<&str>) -> Result<Vec<PingResponse>, ServiceError> {
        self.ask(Verb::Ping, name, None).await
    }

    pub async fn info(&self, name: Option<&str>) -> Result<Vec<InfoResponse>, ServiceError> {
        self.ask(Verb::Info, name, None).await
    }

    pub async fn stats(&self, name: Option<&str>) -> Result<Vec<StatsResponse>, ServiceError> {
        self.ask(Verb::Stats, name, None).await
    }

    /// INFO of one service, the first instance to answer (waits at most `total`).
    pub async fn info_one(&self, name: &str) -> Result<Option<InfoResponse>, ServiceError> {
        let msgs = request_many(
            &*self.transport,
            subject(Verb::Info, Some(name), None),
            None,
            Bytes::new(),
            self.total,
            self.stall,
            Some(1),
        )
        .await
        .map_err(|e| ServiceError::Transport(e.to_string()))?;
        Ok(msgs
            .first()
            .and_then(|m| serde_json::from_slice(&m.payload).ok()))
    }
}

/// One live instance.
#[derive(Debug, Clone)]
pub struct Instance {
    pub ping: PingResponse,
    pub last_seen: Instant,
}

/// Live instances from periodic PINGs; entries not seen for `ttl` expire.
/// Used for health views and to address one instance (`_WEIR.{id}.{endpoint}`);
/// ordinary calls stay on queue groups.
#[derive(Clone)]
pub struct Registry {
    discovery: Discovery,
    ttl: Duration,
    entries: Arc<Mutex<HashMap<String, Instance>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("ttl", &self.ttl).finish()
    }
}

impl Registry {
    pub fn new(discovery: Discovery, ttl: Duration) -> Registry {
        Registry {
            discovery,
            ttl,
            entries: Arc::default(),
        }
    }

    /// Pings everything once and records who answered.
    pub async fn refresh(&self) -> Result<usize, ServiceError> {
        let pongs = self.discovery.ping(None).await?;
        let now = Instant::now();
        let mut e = self.entries.lock();
        for p in pongs {
            e.insert(
                p.id.clone(),
                Instance {
                    ping: p,
                    last_seen: now,
                },
            );
        }
        let ttl = self.ttl;
        e.retain(|_, i| now.duration_since(i.last_seen) < ttl);
        Ok(e.len())
    }

    /// Refreshes every `every` until the task is dropped.
    pub fn spawn_refresher(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = me.refresh().await {
                    tracing::debug!(error = %e, "registry refresh failed");
                }
                tokio::time::sleep(every).await;
            }
        })
    }

    /// Live instances of `name` (all services with `None`).
    pub fn instances(&self, name: Option<&str>) -> Vec<Instance> {
        let now = Instant::now();
        let mut v: Vec<Instance> = self
            .entries
            .lock()
            .values()
            .filter(|i| now.duration_since(i.last_seen) < self.ttl)
            .filter(|i| name.is_none_or(|n| i.ping.name == n))
            .cloned()
            .collect();
        v.sort_by(|a, b| a.ping.id.cmp(&b.ping.id));
        v
    }

    /// The subject that reaches only instance `id`'s `endpoint`.
    pub fn direct_subject(id: &str, endpoint: &str) -> String {
        format!("_WEIR.{id}.{endpoint}")
    }
}
