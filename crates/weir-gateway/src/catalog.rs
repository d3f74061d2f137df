//! What the gateway knows about the services: endpoints, subjects and
//! schemas, from `$SRV.INFO`, refreshed periodically.
//!
//! Only discovered endpoints are callable through the automatic routes: an
//! HTTP client can never make the gateway send to an arbitrary subject. A
//! miss triggers one refresh (at most one per [`MIN_REFRESH_GAP`]), so a
//! service started a moment ago is served without waiting for the timer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use serde_json::Value;
use tokio::time::Instant;
use weir_service::contract::{META_EVENTS, META_IDEMPOTENT, META_REQUEST, META_RESPONSE};
use weir_service::micro::InfoResponse;
use weir_service::{Discovery, ServiceError};

/// Smallest gap between two on-demand refreshes.
pub const MIN_REFRESH_GAP: Duration = Duration::from_secs(1);

/// One endpoint of one service.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub service: String,
    pub name: String,
    pub subject: String,
    pub request_schema: Option<Value>,
    pub response_schema: Option<Value>,
    pub idempotent: bool,
}

/// One service (the union of what its instances announce).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Service {
    pub name: String,
    pub version: String,
    pub description: String,
    pub endpoints: BTreeMap<String, Endpoint>,
    /// `{subject: schema}` from the `weir.events` metadata.
    pub events: BTreeMap<String, Value>,
}

/// The services, by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub services: BTreeMap<String, Service>,
}

impl Snapshot {
    pub fn endpoint(&self, service: &str, endpoint: &str) -> Option<&Endpoint> {
        self.services.get(service)?.endpoints.get(endpoint)
    }

    /// Builds a snapshot from `$SRV.INFO` answers (newest version wins when
    /// instances disagree, so a rolling upgrade converges).
    pub fn from_infos(infos: &[InfoResponse]) -> Snapshot {
        let mut services: BTreeMap<String, Service> = BTreeMap::new();
        for info in infos {
            let svc = services
                .entry(info.name.clone())
                .or_insert_with(|| Service {
                    name: info.name.clone(),
                    ..Service::default()
                });
            let newer =
                svc.version.is_empty() || version_key(&info.version) > version_key(&svc.version);
            if newer {
                svc.version = info.version.clone();
                svc.description = info.description.clone();
            }
            if let Some(events) = info
                .metadata
                .get(META_EVENTS)
                .and_then(|s| serde_json::from_str::<BTreeMap<String, Value>>(s).ok())
            {
                for (k, v) in events {
                    if newer || !svc.events.contains_key(&k) {
                        svc.events.insert(k, v);
                    }
                }
            }
            for ep in &info.endpoints {
                if !newer && svc.endpoints.contains_key(&ep.name) {
                    continue;
                }
                let schema = |key: &str| {
                    ep.metadata
                        .get(key)
                        .and_then(|s| serde_json::from_str::<Value>(s).ok())
                };
                svc.endpoints.insert(
                    ep.name.clone(),
                    Endpoint {
                        service: info.name.clone(),
                        name: ep.name.clone(),
                        subject: ep.subject.clone(),
                        request_schema: schema(META_REQUEST),
                        response_schema: schema(META_RESPONSE),
                        idempotent: ep
                            .metadata
                            .get(META_IDEMPOTENT)
                            .is_some_and(|v| v == "true"),
                    },
                );
            }
        }
        Snapshot { services }
    }
}

/// `1.10.0` sorts after `1.9.0`; unparsable parts count as 0.
fn version_key(v: &str) -> Vec<u64> {
    v.split(['.', '-', '+'])
        .take(3)
        .map(|p| p.parse().unwrap_or(0))
        .collect()
}

/// The live catalog.
pub struct Catalog {
    discovery: Discovery,
    snapshot: RwLock<Arc<Snapshot>>,
    last_refresh: Mutex<Option<Instant>>,
    refreshing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("services", &self.snapshot.read().services.len())
            .finish()
    }
}

impl Catalog {
    pub fn new(discovery: Discovery) -> Catalog {
        Catalog {
            discovery,
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            last_refresh: Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().clone()
    }

    /// Asks `$SRV.INFO` now. No responders means no services (an empty
    /// catalog), not an error.
    pub async fn refresh(&self) -> Result<usize, ServiceError> {
        let _one_at_a_time = self.refreshing.lock().await;
        let infos = match self.discovery.info(None).await {
            Ok(infos) => infos,
            Err(ServiceError::NoResponders(_)) => Vec::new(),
            Err(e) => return Err(e),
        };
        let snap = Snapshot::from_infos(&infos);
        let n = snap.services.len();
        *self.snapshot.write() = Arc::new(snap);
        *self.last_refresh.lock() = Some(Instant::now());
        metrics::gauge!(crate::metrics::SERVICES).set(n as f64);
        Ok(n)
    }

    /// Looks `service`/`endpoint` up, refreshing once on a miss unless a
    /// refresh happened within [`MIN_REFRESH_GAP`].
    pub async fn find(&self, service: &str, endpoint: &str) -> Option<Endpoint> {
        if let Some(e) = self.snapshot().endpoint(service, endpoint) {
            return Some(e.clone());
        }
        let recent = self
            .last_refresh
            .lock()
            .is_some_and(|t| t.elapsed() < MIN_REFRESH_GAP);
        if recent {
            return None;
        }
        if let Err(e) = self.refresh().await {
            tracing::warn!(error = %e, "service discovery failed");
        }
        self.snapshot().endpoint(service, endpoint).cloned()
    }

    /// Refreshes every `every` until the task is aborted.
    pub fn spawn_refresher(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every.max(MIN_REFRESH_GAP));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = me.refresh().await {
                    tracing::warn!(error = %e, "service discovery failed");
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_service::micro::EndpointInfo;

    fn info(version: &str, eps: &[&str]) -> InfoResponse {
        InfoResponse {
            kind: "io.nats.micro.v1.info_response".into(),
            name: "svc".into(),
            id: version.into(),
            version: version.into(),
            metadata: BTreeMap::new(),
            description: String::new(),
            endpoints: eps
                .iter()
                .map(|e| EndpointInfo {
                    name: (*e).into(),
                    subject: format!("svc.{e}"),
                    queue_group: None,
                    metadata: [(META_REQUEST.to_owned(), "{\"type\":\"object\"}".to_owned())]
                        .into_iter()
                        .collect(),
                })
                .collect(),
        }
    }

    #[test]
    fn union_of_instances_newest_wins() {
        let s = Snapshot::from_infos(&[info("1.9.0", &["a"]), info("1.10.0", &["a", "b"])]);
        let svc = &s.services["svc"];
        assert_eq!(svc.version, "1.10.0");
        assert_eq!(svc.endpoints.len(), 2);
        assert_eq!(
            s.endpoint("svc", "a")
                .and_then(|e| e.request_schema.clone()),
            Some(serde_json::json!({"type": "object"}))
        );
        assert!(s.endpoint("svc", "c").is_none());
    }
}
